"""Report section "Performance": the grid's ratio targets (lora-bench against naive / plain, NF4
against bf16) with their measured values and the GPU that measured them, then the memory
estimator's prediction beside every measured GPU peak."""

from __future__ import annotations

from typing import Any

from .study import Context
from .text import TableCell

ESTIMATE_TOLERANCE = 0.10   # the estimator's promise: within 10% of the measured peak


def _num(value: float | None, fmt: str = ".3g") -> TableCell:
    return ("–", float("nan")) if value is None else (format(value, fmt), value)


def target_rows(verdicts: list[dict[str, Any]]) -> list[list[TableCell]]:
    rows = []
    for v in verdicts:
        verdict = "not measured" if v["passed"] is None else ("met" if v["passed"] else "missed")
        rows.append([v["name"], v["metric"], _num(v.get("baseline_mean")), _num(v.get("candidate_mean")),
                     _num(v.get("ratio"), ".3f"), verdict, v["reason"], ", ".join(v["devices"])])
    return rows


def estimate_rows(frame: Any) -> list[list[TableCell]]:
    rows = []
    measured = frame[frame["predicted_peak_gib"].notna() & (frame.get("peak_memory_kind") == "cuda_max_memory_allocated")]
    for _, r in measured.sort_values("test_id").iterrows():
        error = r["estimate_error"]
        rows.append([r["test_id"], r.get("recipe") or "", _num(r["predicted_peak_gib"], ".2f"),
                     _num(r["peak_memory_gib"], ".2f"), _num(100 * error if error == error else None, "+.1f"),
                     "yes" if abs(error) <= ESTIMATE_TOLERANCE else "no"])
    return rows


def latency_rows(frame: Any) -> list[list[TableCell]]:
    """Batch-1 median latency of the base model, the model with its adapter, and merged."""
    rows = []
    with_base = frame[frame["base_latency_ms"].notna()] if "base_latency_ms" in frame else frame.iloc[:0]
    for _, r in with_base.sort_values("test_id").iterrows():
        base, unmerged, merged = r["base_latency_ms"], r["latency_median_ms"], r.get("merged_latency_ms")
        merged = merged if merged == merged else None
        side_by_side = r.get("merged_base_ratio")
        side_by_side = side_by_side if side_by_side == side_by_side else None
        rows.append([r["test_id"], r.get("bits") or "", _num(base, ".1f"), _num(unmerged, ".1f"),
                     _num(unmerged / base, ".2f"), _num(merged, ".1f"), _num(merged / base if merged else None, ".2f"),
                     _num(side_by_side, ".3f")])
    return rows


def section_performance(ctx: Context) -> Any:
    from .sections import Section, Table

    ex = ctx.ex
    verdicts = ex.targets
    tables = []
    if verdicts:
        tables.append(Table("Ratio targets, measured side by side in the same run",
                            ["target", "metric", "baseline", "candidate", "ratio", "verdict", "detail", "GPU"],
                            target_rows(verdicts)))
    frame = ex.frame
    estimates = estimate_rows(frame) if "predicted_peak_gib" in frame and "peak_memory_kind" in frame else []
    if estimates:
        tables.append(Table("Memory estimator (lora_bench.estimate) against torch.cuda.max_memory_allocated",
                            ["experiment", "recipe", "predicted GiB", "measured GiB", "error %", "within 10%"], estimates))
    latencies = latency_rows(frame)
    if latencies:
        tables.append(Table("Inference at batch 1: base (timed before training), unmerged adapter and merged "
                            "(median ms); the last column times merged and a rebuilt base in alternation after "
                            "training, free of drift between the two phases",
                            ["experiment", "bits", "base", "unmerged", "unmerged / base", "merged", "merged / base",
                             "merged / base, side by side"],
                            latencies))
    met = sum(v["passed"] is True for v in verdicts)
    missed = [v["name"] for v in verdicts if v["passed"] is False]
    parts = []
    if verdicts:
        unmeasured = sum(v["passed"] is None for v in verdicts)
        parts.append(f"{met} of {len(verdicts)} targets met" + (f"; missed: {', '.join(missed)}" if missed else "")
                     + (f"; {unmeasured} not measured in these runs" if unmeasured else ""))
    if estimates:
        within = sum(r[-1] == "yes" for r in estimates)
        parts.append(f"memory estimate within 10% of the measured GPU peak for {within} of {len(estimates)} experiments")
    finding = ("; ".join(parts) or "no performance targets or GPU memory measurements in these runs") + "."
    notes = ["Ratios compare means over seeds of experiments that differ only in what baseline and candidate name; "
             "timings are steady-state medians (training.step_ms_median) or whole pipelines (train + evaluation), "
             "each whole pipeline after an untimed warm-up of its configuration unless --lb-no-warmup."]
    return Section("performance", 8, "Performance", "How fast, how lean, and how well predicted", finding, "",
                   tables, [], notes, {"targets": verdicts, "estimates": len(estimates)})
