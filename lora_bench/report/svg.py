"""Charts as inline SVG, written by hand so the report opens offline with nothing fetched: line
charts with error bars, forest (dot-and-whisker) plots, Pareto scatter plots, a heatmap and
stacked bars. Hovering a point shows its exact numbers (SVG <title>)."""

from __future__ import annotations

import html
import itertools
import math
from dataclasses import dataclass
from typing import Sequence

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7",
           "#bab0ac")
GREY = "#c9ccd1"
WIDTH, HEIGHT = 600, 330
_ids = itertools.count()


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def fmt_num(v: float) -> str:
    """Tick labels: 30k, 1.5k, 250, 0.92, 1e-04."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 10000:
        return f"{v / 1000:g}k"
    if a >= 1000:
        return f"{v / 1000:.3g}k"
    if a < 0.001:
        return f"{v:.0e}"
    return f"{v:.4g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= step * m:
            step *= m
            break
    start = math.floor(lo / step + 1e-9) * step
    ticks = []
    v = start
    while v <= hi + step * 0.999:
        ticks.append(round(v, 12))
        v += step
    return ticks


def log_ticks(lo: float, hi: float, levels: Sequence[float] | None = None) -> list[float]:
    """Ticks on a log axis: the data's own levels when there are few, else 1-2-5 steps."""
    if levels is not None and 1 <= len(set(levels)) <= 9:
        return sorted(set(levels))
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        out += [m * 10**e for m in (1, 2, 5) if lo <= m * 10**e <= hi]
    return out or [lo, hi]


@dataclass
class Scale:
    """Data value -> pixel, linear or logarithmic."""

    lo: float
    hi: float
    a: float
    b: float
    log: bool = False

    def __call__(self, v: float) -> float:
        f = math.log if self.log else (lambda x: x)
        lo, hi = f(self.lo), f(self.hi)
        t = 0.5 if hi == lo else (f(v) - lo) / (hi - lo)
        return self.a + t * (self.b - self.a)


def _frame(width: int, height: int, title: str, body: list[str], label: str) -> str:
    return (f'<svg class="chart" role="img" aria-label="{esc(label or title)}" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
            f'<rect class="bg" x="0" y="0" width="{width}" height="{height}" fill="#fff"/>'
            + (f'<text class="ctitle" x="12" y="18">{esc(title)}</text>' if title else "")
            + "".join(body) + "</svg>")


def _axes(x: Scale, y: Scale, x_ticks: list[float], y_ticks: list[float], x_label: str, y_label: str,
          x_names: dict[float, str] | None = None) -> list[str]:
    out = []
    top, bottom = min(y.a, y.b), max(y.a, y.b)
    for t in y_ticks:
        py = y(t)
        out.append(f'<line class="grid" x1="{x.a:.1f}" x2="{x.b:.1f}" y1="{py:.1f}" y2="{py:.1f}"/>'
                   f'<text class="tick" x="{x.a - 6:.1f}" y="{py + 4:.1f}" text-anchor="end">{esc(fmt_num(t))}</text>')
    for t in x_ticks:
        px = x(t)
        name = (x_names or {}).get(t, fmt_num(t))
        out.append(f'<line class="tickmark" x1="{px:.1f}" x2="{px:.1f}" y1="{bottom:.1f}" y2="{bottom + 4:.1f}"/>'
                   f'<text class="tick" x="{px:.1f}" y="{bottom + 16:.1f}" text-anchor="middle">{esc(name)}</text>')
    out.append(f'<line class="axis" x1="{x.a:.1f}" x2="{x.b:.1f}" y1="{bottom:.1f}" y2="{bottom:.1f}"/>'
               f'<line class="axis" x1="{x.a:.1f}" x2="{x.a:.1f}" y1="{top:.1f}" y2="{bottom:.1f}"/>'
               f'<text class="alabel" x="{(x.a + x.b) / 2:.1f}" y="{bottom + 34:.1f}" text-anchor="middle">'
               f'{esc(x_label)}</text>'
               f'<text class="alabel" transform="translate(14 {(top + bottom) / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{esc(y_label)}</text>')
    return out


def _legend(items: list[tuple[str, str]], x0: float, y0: float, marker: str = "line") -> list[str]:
    out = []
    for i, (name, color) in enumerate(items[:14]):
        y = y0 + i * 17
        short = name if len(name) <= 26 else name[:25] + "…"
        sym = (f'<line x1="{x0:.1f}" x2="{x0 + 16:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" stroke-width="2.5"/>'
               if marker == "line" else f'<circle cx="{x0 + 8:.1f}" cy="{y:.1f}" r="5" fill="{color}"/>')
        out.append(f'<g class="legend">{sym}<text x="{x0 + 22:.1f}" y="{y + 4:.1f}"><title>{esc(name)}</title>'
                   f'{esc(short)}</text></g>')
    if len(items) > 14:
        out.append(f'<text class="tick" x="{x0:.1f}" y="{y0 + 14 * 17 + 4:.1f}">+{len(items) - 14} more</text>')
    return out


def _extent(values: list[float], pad: float = 0.06) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or (abs(hi) * 0.1 or 1.0)
    return lo - span * pad, hi + span * pad


@dataclass
class Point:
    """One plotted value: position, optional interval, and the hover text."""

    x: float
    y: float
    lo: float = math.nan
    hi: float = math.nan
    tip: str = ""


def _error_bar(px: float, y: Scale, p: Point, color: str, horizontal: bool = False, x: Scale | None = None) -> str:
    if not (math.isfinite(p.lo) and math.isfinite(p.hi)):
        return ""
    if horizontal and x is not None:
        a, b = x(p.lo), x(p.hi)
        return (f'<path class="err" d="M{a:.1f},{px:.1f}H{b:.1f}M{a:.1f},{px - 4:.1f}V{px + 4:.1f}'
                f'M{b:.1f},{px - 4:.1f}V{px + 4:.1f}" stroke="{color}"/>')
    a, b = y(p.lo), y(p.hi)
    return (f'<path class="err" d="M{px:.1f},{a:.1f}V{b:.1f}M{px - 4:.1f},{a:.1f}H{px + 4:.1f}'
            f'M{px - 4:.1f},{b:.1f}H{px + 4:.1f}" stroke="{color}"/>')


def line_chart(series: list[tuple[str, list[Point]]], x_label: str, y_label: str, title: str = "",
               log_x: bool = False, band: tuple[float, float, str] | None = None) -> str:
    """Lines with error bars, one per series; `band` shades (y0, y1) with a label (the noise floor)."""
    series = [(n, sorted(ps, key=lambda p: p.x)) for n, ps in series if ps]
    if not series:
        return ""
    legend_w = 190 if len(series) > 1 else 0
    left, right, top, bottom = 64, WIDTH - 16 - legend_w, 30, HEIGHT - 48
    xs = [p.x for _, ps in series for p in ps]
    ys = [v for _, ps in series for p in ps for v in (p.y, p.lo, p.hi)] + (list(band[:2]) if band else [])
    if log_x and min(xs) > 0:
        lo, hi = min(xs), max(xs)
        x = Scale(lo / 1.25 if lo != hi else lo / 2, hi * 1.25 if lo != hi else hi * 2, left, right, log=True)
        x_ticks = log_ticks(min(xs), max(xs), xs)
    else:
        x_ticks = nice_ticks(*_extent(xs, 0))
        x = Scale(min(x_ticks[0], min(xs)), max(x_ticks[-1], max(xs)), left, right)
        x_ticks = [t for t in x_ticks if x.lo <= t <= x.hi]
    y_ticks = nice_ticks(*_extent(ys))
    y = Scale(y_ticks[0], y_ticks[-1], bottom, top)
    body = _axes(x, y, x_ticks, y_ticks, x_label, y_label)
    if band:
        y0, y1 = y(max(band[0], y.lo)), y(min(band[1], y.hi))
        body.append(f'<rect class="band" x="{left}" y="{min(y0, y1):.1f}" width="{right - left}" '
                    f'height="{abs(y1 - y0):.1f}"><title>{esc(band[2])}</title></rect>'
                    f'<text class="bandlabel" x="{right - 4}" y="{min(y0, y1) - 3:.1f}" text-anchor="end">'
                    f'{esc(band[2])}</text>')
    for i, (name, points) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{'M' if j == 0 else 'L'}{x(p.x):.1f},{y(p.y):.1f}" for j, p in enumerate(points))
        body.append(f'<g class="series"><path class="line" d="{path}" stroke="{color}"/>')
        for p in points:
            body.append(_error_bar(x(p.x), y, p, color))
            body.append(f'<circle class="pt" cx="{x(p.x):.1f}" cy="{y(p.y):.1f}" r="4" fill="{color}">'
                        f'<title>{esc(p.tip or name)}</title></circle>')
        body.append("</g>")
    if legend_w:
        body += _legend([(n, PALETTE[i % len(PALETTE)]) for i, (n, _) in enumerate(series)], right + 18, top + 6)
    return _frame(WIDTH, HEIGHT, title, body, title or y_label)


def dot_chart(rows: list[str], series: list[tuple[str, dict[str, Point]]], x_label: str, title: str = "") -> str:
    """A forest plot: one row per category, a dot with its interval per series (x = value)."""
    series = [(n, v) for n, v in series if v]
    if not rows or not series:
        return ""
    k = len(series)
    legend_w = 190 if k > 1 else 0
    label_w = min(170, 12 + 7 * max(len(r) for r in rows))
    row_h = max(24, 10 + 12 * k)
    height = 30 + row_h * len(rows) + 50
    left, right, top, bottom = label_w, WIDTH - 20 - legend_w, 30, height - 50
    values = [v for _, d in series for p in d.values() for v in (p.x, p.lo, p.hi)]
    x_ticks = nice_ticks(*_extent(values))
    x = Scale(x_ticks[0], x_ticks[-1], left, right)
    y = Scale(0, 1, bottom, top)
    body = []
    for t in x_ticks:
        body.append(f'<line class="grid" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{bottom}"/>'
                    f'<text class="tick" x="{x(t):.1f}" y="{bottom + 16}" text-anchor="middle">'
                    f'{esc(fmt_num(t))}</text>')
    body.append(f'<line class="axis" x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}"/>'
                f'<text class="alabel" x="{(left + right) / 2:.1f}" y="{bottom + 34}" text-anchor="middle">'
                f'{esc(x_label)}</text>')
    for r, row in enumerate(rows):
        cy = top + row_h * (r + 0.5)
        short = row if len(row) <= 24 else row[:23] + "…"
        body.append(f'<text class="rowlabel" x="{left - 8}" y="{cy + 4:.1f}" text-anchor="end"><title>{esc(row)}'
                    f'</title>{esc(short)}</text>')
        if r:
            body.append(f'<line class="sep" x1="{left}" x2="{right}" y1="{top + row_h * r:.1f}" '
                        f'y2="{top + row_h * r:.1f}"/>')
        for i, (name, data) in enumerate(series):
            if row not in data:
                continue
            p, color = data[row], PALETTE[i % len(PALETTE)]
            py = cy + (i - (k - 1) / 2) * min(12, (row_h - 8) / max(k, 1))
            body.append(_error_bar(py, y, p, color, horizontal=True, x=x))
            body.append(f'<circle class="pt" cx="{x(p.x):.1f}" cy="{py:.1f}" r="4.5" fill="{color}">'
                        f'<title>{esc(p.tip or f"{row} · {name}")}</title></circle>')
    if legend_w:
        body += _legend([(n, PALETTE[i % len(PALETTE)]) for i, (n, _) in enumerate(series)], right + 16, top + 6,
                        marker="dot")
    return _frame(WIDTH, height, title, body, title or x_label)


@dataclass
class ScatterPoint:
    """A configuration on a quality/cost plane: frontier points take their group's colour."""

    x: float
    y: float
    label: str
    group: str
    on_frontier: bool
    tip: str = ""


def pareto_chart(points: list[ScatterPoint], x_label: str, y_label: str, title: str = "", log_x: bool = False,
                 width: int = WIDTH) -> str:
    """Quality (up is better) against a cost (left is better): the frontier as a staircase in colour,
    each frontier point tagged with its label (a short number), dominated configurations greyed."""
    points = [p for p in points if math.isfinite(p.x) and math.isfinite(p.y)]
    if not points:
        return ""
    groups = sorted({p.group for p in points if p.on_frontier})
    colors = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    left, right, top, bottom = 64, width - 16 - 130, 30, HEIGHT - 48
    xs, ys = [p.x for p in points], [p.y for p in points]
    if log_x and min(xs) > 0 and max(xs) / min(xs) > 20:
        x = Scale(min(xs) / 1.3, max(xs) * 1.3, left, right, log=True)
        x_ticks = [t for t in log_ticks(x.lo, x.hi) if x.lo <= t <= x.hi]
    else:
        x_ticks = nice_ticks(*_extent(xs))
        x = Scale(x_ticks[0], x_ticks[-1], left, right)
    y_ticks = nice_ticks(*_extent(ys))
    y = Scale(y_ticks[0], y_ticks[-1], bottom, top)
    body = _axes(x, y, x_ticks, y_ticks, x_label, y_label)
    front = sorted((p for p in points if p.on_frontier), key=lambda p: (p.x, -p.y))
    if len(front) > 1:
        d = f"M{x(front[0].x):.1f},{y(front[0].y):.1f}"
        for p in front[1:]:
            d += f"H{x(p.x):.1f}V{y(p.y):.1f}"
        body.append(f'<path class="frontier" d="{d}"/>')
    for p in sorted(points, key=lambda p: p.on_frontier):
        fill = colors[p.group] if p.on_frontier else GREY
        cls = "pt" if p.on_frontier else "pt dominated"
        body.append(f'<circle class="{cls}" cx="{x(p.x):.1f}" cy="{y(p.y):.1f}" r="{5 if p.on_frontier else 4}" '
                    f'fill="{fill}"><title>{esc(p.tip or p.label)}{"" if p.on_frontier else " (dominated)"}'
                    f'</title></circle>')
    placed: list[tuple[float, float, float, float]] = []
    for p in front:
        body.append(_place_label(p.label, x(p.x), y(p.y), placed))
    legend = [(g, colors[g]) for g in groups]
    if any(not p.on_frontier for p in points):
        legend.append(("dominated", GREY))
    body += _legend(legend, right + 16, top + 6, marker="dot")
    return _frame(width, HEIGHT, title, body, title or f"{y_label} vs {x_label}")


def _place_label(text: str, px: float, py: float, placed: list[tuple[float, float, float, float]]) -> str:
    """A point's tag at the first of four corners that does not cover a tag already placed."""
    w, h = 6.5 * len(text) + 2, 11
    for dx, dy, anchor in ((-7, -7, "end"), (7, -7, "start"), (-7, 15, "end"), (7, 15, "start")):
        x0 = px + dx - (w if anchor == "end" else 0)
        box = (x0, py + dy - h, x0 + w, py + dy)
        if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            break
    placed.append(box)
    return f'<text class="plabel" x="{px + dx:.1f}" y="{py + dy:.1f}" text-anchor="{anchor}">{esc(text)}</text>'


def _viridis(t: float) -> str:
    stops = [(0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)), (0.75, (94, 201, 98)),
             (1.0, (253, 231, 37))]
    t = min(1.0, max(0.0, t))
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return "#" + "".join(f"{round(a + (b - a) * f):02x}" for a, b in zip(c0, c1))
    return "#fde725"


def heatmap(xs: list[float], ys: list[float], values: dict[tuple[float, float], float], x_label: str, y_label: str,
            title: str = "", fmt: str = "{:.3f}", x_names: dict[float, str] | None = None,
            y_names: dict[float, str] | None = None) -> str:
    """A grid of mean values (e.g. rank x data size), coloured on one scale, each cell annotated."""
    if not xs or not ys or not values:
        return ""
    finite = [v for v in values.values() if math.isfinite(v)]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    left, top = 90, 30
    cw = min(90, (WIDTH - left - 90) / len(xs))
    width = int(max(left + cw * len(xs) + 90, 24 + 7 * len(title)))
    ch = min(44, max(24, 240 / len(ys)))
    height = int(top + ch * len(ys) + 56)
    body = []
    for j, yv in enumerate(ys):
        body.append(f'<text class="tick" x="{left - 8}" y="{top + ch * (j + 0.5) + 4:.1f}" text-anchor="end">'
                    f'{esc((y_names or {}).get(yv, fmt_num(yv)))}</text>')
        for i, xv in enumerate(xs):
            v = values.get((xv, yv), math.nan)
            px, py = left + cw * i, top + ch * j
            if not math.isfinite(v):
                body.append(f'<rect x="{px:.1f}" y="{py:.1f}" width="{cw - 2:.1f}" height="{ch - 2:.1f}" '
                            'fill="#f1f2f4"/>')
                continue
            t = 0.5 if vmax == vmin else (v - vmin) / (vmax - vmin)
            text_color = "#111" if t > 0.55 else "#fff"  # as style: the page's CSS would override an attribute
            body.append(f'<g><rect class="hcell" x="{px:.1f}" y="{py:.1f}" width="{cw - 2:.1f}" height="{ch - 2:.1f}" '
                        f'fill="{_viridis(t)}"><title>{esc(y_label)} {esc(fmt_num(yv))}, {esc(x_label)} '
                        f'{esc(fmt_num(xv))}: {esc(fmt.format(v))}</title></rect>'
                        f'<text x="{px + (cw - 2) / 2:.1f}" y="{py + ch / 2 + 3:.1f}" text-anchor="middle" '
                        f'style="fill:{text_color}" class="hval">{esc(fmt.format(v))}</text></g>')
    bottom = top + ch * len(ys)
    for i, xv in enumerate(xs):
        body.append(f'<text class="tick" x="{left + cw * (i + 0.5) - 1:.1f}" y="{bottom + 14:.1f}" '
                    f'text-anchor="middle">{esc((x_names or {}).get(xv, fmt_num(xv)))}</text>')
    body.append(f'<text class="alabel" x="{left + cw * len(xs) / 2:.1f}" y="{bottom + 32:.1f}" text-anchor="middle">'
                f'{esc(x_label)}</text><text class="alabel" transform="translate(14 {(top + bottom) / 2:.1f}) '
                f'rotate(-90)" text-anchor="middle">{esc(y_label)}</text>')
    gid = f"g{next(_ids)}"
    gx = left + cw * len(xs) + 20
    body.append(f'<defs><linearGradient id="{gid}" x1="0" x2="0" y1="1" y2="0">'
                + "".join(f'<stop offset="{t}" stop-color="{_viridis(t)}"/>' for t in (0, 0.25, 0.5, 0.75, 1))
                + f'</linearGradient></defs><rect x="{gx:.1f}" y="{top}" width="12" height="{bottom - top:.1f}" '
                f'fill="url(#{gid})"/><text class="tick" x="{gx + 16:.1f}" y="{top + 9}">{esc(fmt.format(vmax))}</text>'
                f'<text class="tick" x="{gx + 16:.1f}" y="{bottom:.1f}">{esc(fmt.format(vmin))}</text>')
    return _frame(width, height, title, body, title or f"{y_label} by {x_label}")


def stacked_bars(rows: list[str], segments: list[tuple[str, str]], counts: dict[str, list[int]],
                 title: str = "") -> str:
    """Horizontal bars split into segments (e.g. passed / failed / not measured) per row."""
    if not rows:
        return ""
    label_w = min(200, 16 + 7 * max(len(r) for r in rows))
    left, right, top = label_w, WIDTH - 190, 34
    row_h = 28
    height = top + row_h * len(rows) + 20
    total_max = max(sum(counts[r]) for r in rows) or 1
    body = []
    for j, row in enumerate(rows):
        py = top + row_h * j
        body.append(f'<text class="rowlabel" x="{left - 8}" y="{py + 15}" text-anchor="end">{esc(row)}</text>')
        px = float(left)
        for (name, color), count in zip(segments, counts[row]):
            if not count:
                continue
            w = (right - left) * count / total_max
            body.append(f'<g><rect x="{px:.1f}" y="{py + 2}" width="{w:.1f}" height="{row_h - 8}" fill="{color}">'
                        f'<title>{esc(row)}: {count} {esc(name)}</title></rect>'
                        + (f'<text class="barval" x="{px + w / 2:.1f}" y="{py + 15}" text-anchor="middle">'
                           f'{count}</text>' if w > 22 else "") + "</g>")
            px += w
    body += _legend([(n, c) for n, c in segments], right + 16, top + 8, marker="dot")
    return _frame(WIDTH, height, title, body, title or "counts")
