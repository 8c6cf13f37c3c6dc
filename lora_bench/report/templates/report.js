// Sortable tables (click a header; click again to reverse) and the experiments filter. No dependencies.
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v !== null && v !== "" && !isNaN(Number(v))) return { n: Number(v) };
    return { s: cell.textContent.trim().toLowerCase() };
  }
  function compare(a, b) {
    if (a.n !== undefined && b.n !== undefined) return a.n - b.n;
    if (a.n !== undefined) return -1;
    if (b.n !== undefined) return 1;
    return a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var c = compare(key(r1.cells[col]), key(r2.cells[col]));
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var input = document.getElementById("filter");
  var status = document.getElementById("status-filter");
  var table = document.getElementById("experiments");
  var count = document.getElementById("shown");
  function apply() {
    if (!table) return;
    var terms = (input ? input.value : "").toLowerCase().split(/\s+/).filter(Boolean);
    var want = status ? status.value : "";
    var shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var text = row.textContent.toLowerCase();
      var ok = terms.every(function (t) { return text.indexOf(t) >= 0; }) &&
               (!want || row.getAttribute("data-status") === want);
      row.style.display = ok ? "" : "none";
      if (ok) shown += 1;
    });
    if (count) count.textContent = shown + " of " + table.tBodies[0].rows.length + " shown";
  }
  if (input) input.addEventListener("input", apply);
  if (status) status.addEventListener("change", apply);
  apply();
})();
