"""Inline SVG charts for report.html, drawn from numbers: no JavaScript, no external files.

Every string that reaches the SVG goes through `esc`: stage names and labels come from user configs and data.
"""

from __future__ import annotations

import math
from html import escape

from slimtune import units
from slimtune.report.view import Confusion, Stage

PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d"]
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def esc(text: object) -> str:
    return escape(str(text), quote=True)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 5 times a power of ten apart)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value < high + step * 0.999:
        ticks.append(round(value, 12))
        value += step
    return ticks


def tick_label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


class Labels:
    """Places point labels beside their points, moving each up or down until it overlaps none placed before it
    (widths estimated from the text length: good enough for a handful of points). A label that would cross
    `limit` goes to the left of its point."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.boxes: list[tuple[float, float, float, float]] = []

    def place(self, x: float, y: float, r: float, text: str) -> tuple[float, float, str]:
        """Where to draw `text` for a point at (x, y) of radius r: (x, y, text-anchor)."""
        width, height = 6.8 * len(text), 13.0
        right = x + r + 4 + width <= self.limit
        start = x + r + 4 if right else x - r - 4 - width
        for shift in (0, 13, -13, 26, -26, 39, -39, 52, -52, 65, -65):
            box = (start, y + 4 + shift - height + 3, start + width, y + 4 + shift + 3)
            if not any(
                box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in self.boxes
            ):
                break
        self.boxes.append(box)
        return (x + r + 4 if right else x - r - 4), y + 4 + shift, "start" if right else "end"


class Plot:
    """A plot area with linear axes; maps data coordinates to SVG pixels."""

    def __init__(
        self,
        width: int,
        height: int,
        xs: list[float],
        ys: list[float],
        *,
        left: int = 64,
        right: int = 24,
        top: int = 36,
        bottom: int = 52,
        y_from_zero: bool = False,
        x_from_zero: bool = False,
        pad: int = 0,
    ):
        self.pad = pad  # pixels between the axes and the outermost ticks
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = left, width - right, top, height - bottom
        low_y = 0.0 if y_from_zero else min(ys)
        low_x = 0.0 if x_from_zero else min(xs)
        self.x_ticks = nice_ticks(low_x, max(xs))
        self.y_ticks = nice_ticks(low_y, max(ys))
        self.x0, self.x1 = self.x_ticks[0], self.x_ticks[-1]
        self.y0, self.y1 = self.y_ticks[0], self.y_ticks[-1]

    def x(self, value: float) -> float:
        inner = self.right - self.left - 2 * self.pad
        return self.left + self.pad + (value - self.x0) / ((self.x1 - self.x0) or 1) * inner

    def y(self, value: float) -> float:
        inner = self.bottom - self.top - 2 * self.pad
        return self.bottom - self.pad - (value - self.y0) / ((self.y1 - self.y0) or 1) * inner

    def axes(self, x_label: str, y_label: str, x_format=tick_label, y_format=tick_label) -> list[str]:
        out = [f'<g class="axes" {FONT} fill="#374151">']
        for t in self.y_ticks:
            y = self.y(t)
            out.append(
                f'<line x1="{self.left}" x2="{self.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            )
            out.append(
                f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(y_format(t))}</text>'
            )
        for t in self.x_ticks:
            x = self.x(t)
            out.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.bottom}" y2="{self.bottom + 5}" stroke="#6b7280"/>'
            )
            out.append(
                f'<text x="{x:.1f}" y="{self.bottom + 18}" text-anchor="middle">{esc(x_format(t))}</text>'
            )
        out.append(
            f'<line x1="{self.left}" x2="{self.right}" y1="{self.bottom}" y2="{self.bottom}" stroke="#6b7280"/>'
        )
        out.append(
            f'<line x1="{self.left}" x2="{self.left}" y1="{self.top}" y2="{self.bottom}" stroke="#6b7280"/>'
        )
        middle_x, middle_y = (self.left + self.right) / 2, (self.top + self.bottom) / 2
        out.append(
            f'<text x="{middle_x:.1f}" y="{self.height - 10}" text-anchor="middle" font-weight="600">'
            f"{esc(x_label)}</text>"
        )
        out.append(
            f'<text transform="translate(16 {middle_y:.1f}) rotate(-90)" text-anchor="middle" '
            f'font-weight="600">{esc(y_label)}</text>'
        )
        out.append("</g>")
        return out


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{esc(title)}"><title>{esc(title)}</title>'
        f'<text x="{width / 2:.0f}" y="20" text-anchor="middle" font-family="system-ui, sans-serif" '
        f'font-size="14" font-weight="600" fill="#111827">{esc(title)}</text>' + "".join(body) + "</svg>"
    )


def loss_chart(title: str, train: list[tuple[float, float]], evaluation: list[tuple[float, float]]) -> str:
    """Training loss (solid) and eval loss (dashed, dots) against the optimizer step."""
    points = train + evaluation
    plot = Plot(640, 320, [p[0] for p in points], [p[1] for p in points], y_from_zero=True, x_from_zero=True)
    body = plot.axes("step", "loss")
    for series, colour, dash, name in (
        (train, PALETTE[0], "", "train loss"),
        (evaluation, PALETTE[1], ' stroke-dasharray="6 4"', "eval loss"),
    ):
        if not series:
            continue
        path = " ".join(f"{plot.x(x):.1f},{plot.y(y):.1f}" for x, y in series)
        body.append(
            f'<polyline class="series" data-series="{esc(name)}" points="{path}" fill="none" '
            f'stroke="{colour}" stroke-width="2"{dash}/>'
        )
        for x, y in series:
            body.append(
                f'<circle cx="{plot.x(x):.1f}" cy="{plot.y(y):.1f}" r="3" fill="{colour}">'
                f"<title>{esc(name)} at step {x:g}: {y:.4g}</title></circle>"
            )
    legend_x = plot.right - 120
    for i, (colour, name, series) in enumerate(
        ((PALETTE[0], "train loss", train), (PALETTE[1], "eval loss", evaluation))
    ):
        if not series:
            continue
        y = plot.top + 10 + i * 18
        dash = ' stroke-dasharray="6 4"' if i else ""
        body.append(
            f'<line x1="{legend_x}" x2="{legend_x + 22}" y1="{y}" y2="{y}" stroke="{colour}" '
            f'stroke-width="2"{dash}/>'
            f'<text x="{legend_x + 28}" y="{y + 4}" {FONT} fill="#374151">{esc(name)}</text>'
        )
    return _svg(plot.width, plot.height, title, body)


def _heat(share: float) -> tuple[str, str]:
    """Cell fill from white to deep blue, and a text colour that stays readable on it."""
    share = min(max(share, 0.0), 1.0)
    start, end = (248, 250, 252), (30, 64, 175)
    rgb = tuple(round(a + (b - a) * share) for a, b in zip(start, end, strict=True))
    return f"rgb{rgb}", "#ffffff" if share > 0.5 else "#111827"


def confusion_chart(confusion: Confusion) -> str:
    """Rows: true label; columns: predicted label (and `invalid`); colour by the share of the row."""
    cell = 64
    label_width = max(90, 8 * max(len(x) for x in confusion.labels) + 24)
    left, top = label_width + 28, 72
    width = left + cell * len(confusion.columns) + 24
    height = top + cell * len(confusion.labels) + 48
    body = [f"<g {FONT}>"]
    body.append(
        f'<text x="{left + cell * len(confusion.columns) / 2:.0f}" y="{top - 34}" text-anchor="middle" '
        f'font-weight="600" fill="#374151">predicted</text>'
    )
    body.append(
        f'<text transform="translate(16 {top + cell * len(confusion.labels) / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle" font-weight="600" fill="#374151">true label</text>'
    )
    for j, name in enumerate(confusion.columns):
        body.append(
            f'<text x="{left + j * cell + cell / 2:.0f}" y="{top - 10}" text-anchor="middle" '
            f'fill="#374151">{esc(name)}</text>'
        )
    for i, (name, row) in enumerate(zip(confusion.labels, confusion.matrix, strict=True)):
        y = top + i * cell
        body.append(
            f'<text x="{left - 8}" y="{y + cell / 2 + 4:.0f}" text-anchor="end" fill="#374151">'
            f"{esc(name)}</text>"
        )
        total = sum(row) or 1
        for j, count in enumerate(row):
            fill, ink = _heat(count / total)
            diagonal = ' stroke="#111827" stroke-width="1.5"' if j == i else ' stroke="#ffffff"'
            body.append(
                f'<rect class="cell" x="{left + j * cell}" y="{y}" width="{cell}" height="{cell}" '
                f'fill="{fill}"{diagonal}><title>true {esc(name)}, predicted {esc(confusion.columns[j])}: '
                f"{count}</title></rect>"
            )
            body.append(
                f'<text x="{left + j * cell + cell / 2:.0f}" y="{y + cell / 2 + 5:.0f}" text-anchor="middle" '
                f'font-size="15" fill="{ink}">{count}</text>'
            )
    body.append(
        f'<text x="{left}" y="{height - 14}" fill="#6b7280">colour: share of the true label\'s rows; '
        f"outlined: correct</text>"
    )
    body.append("</g>")
    return _svg(width, height, f"Confusion matrix: {confusion.stage}", body)


def _label(at: tuple[float, float, str], x: float, y: float, text: str, colour: str) -> str:
    lx, ly, anchor = at
    leader = ""
    if abs(ly - (y + 4)) > 1:  # moved off its point: a thin line shows whose label it is
        leader = f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{lx:.1f}" y2="{ly - 4:.1f}" stroke="#9ca3af" stroke-width="0.8"/>'
    return f'{leader}<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" {FONT} fill="{colour}">{esc(text)}</text>'


def tradeoff_chart(stages: list[Stage], candidates: list[dict]) -> str:
    """Accuracy against p50 latency; a point's area grows with model size. Candidates from a search in grey,
    their Pareto front outlined."""
    points = [s for s in stages if s.accuracy is not None and s.p50_ms is not None]
    xs = [s.p50_ms for s in points] + [c["p50"] for c in candidates]
    ys = [s.accuracy * 100 for s in points] + [c["accuracy"] * 100 for c in candidates]
    sizes = [s.size_bytes for s in points if s.size_bytes] + [c["size"] for c in candidates if c.get("size")]
    biggest = max(sizes, default=0.0)
    plot = Plot(
        720, 420, xs, [min(ys + [100.0]), max(ys + [0.0])], x_from_zero=True, left=64, right=150, pad=14
    )
    body = plot.axes("latency p50 (ms, end to end)", "accuracy (%)")

    def radius(size: float | None) -> float:
        # area proportional to size: r = sqrt(size / biggest) * r_max, with a floor so a point stays visible
        return 5.0 if not size or not biggest else max(4.0, math.sqrt(size / biggest) * 26)

    stage_labels = []
    labels = Labels(plot.right + 8)
    for s in points:  # stage labels first: they matter more than candidates' when space runs out
        r = radius(s.size_bytes)
        stage_labels.append(labels.place(plot.x(s.p50_ms), plot.y(s.accuracy * 100), r, s.label))
    for c in sorted(candidates, key=lambda c: -(c.get("size") or 0)):
        x, y, r = plot.x(c["p50"]), plot.y(c["accuracy"] * 100), radius(c.get("size"))
        ring = ' stroke="#111827" stroke-width="2.5"' if c["pareto"] else ' stroke="#9ca3af"'
        body.append(
            f'<circle class="candidate" cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="#9ca3af" '
            f'fill-opacity="0.35"{ring}><title>{esc(c["title"])}</title></circle>'
        )
        body.append(_label(labels.place(x, y, r, c["name"]), x, y, c["name"], "#6b7280"))
    order = sorted(range(len(points)), key=lambda i: -(points[i].size_bytes or 0))  # big circles below small
    for i in order:
        s, colour = points[i], PALETTE[i % len(PALETTE)]
        x, y, r = plot.x(s.p50_ms), plot.y(s.accuracy * 100), radius(s.size_bytes)
        body.append(
            f'<circle class="stage" cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{colour}" '
            f'fill-opacity="0.55" stroke="{colour}" stroke-width="1.5"><title>{esc(s.label)}: '
            f"{s.accuracy * 100:.1f}%, p50 {s.p50_ms:.1f} ms, size {units.fmt_bytes(s.size_bytes or 0)}"
            f"</title></circle>"
        )
        body.append(_label(stage_labels[i], x, y, s.label, "#111827"))
    legend_x, legend_y = plot.right + 16, plot.top + 8
    body.append(
        f'<g {FONT} fill="#374151"><text x="{legend_x}" y="{legend_y}" font-weight="600">point area = size'
        f"</text>"
    )
    if biggest:
        for k, share in enumerate((1.0, 0.25)):
            r = radius(biggest * share)
            cy = legend_y + 22 + k * 60 + r
            body.append(
                f'<circle cx="{legend_x + 26}" cy="{cy:.1f}" r="{r:.1f}" fill="none" stroke="#6b7280"/>'
                f'<text x="{legend_x + 58}" y="{cy + 4:.1f}">{units.fmt_bytes(biggest * share)}</text>'
            )
    if candidates:
        y = legend_y + 160
        body.append(
            f'<circle cx="{legend_x + 10}" cy="{y}" r="6" fill="#9ca3af" fill-opacity="0.35" '
            f'stroke="#9ca3af"/><text x="{legend_x + 22}" y="{y + 4}">candidate</text>'
            f'<circle cx="{legend_x + 10}" cy="{y + 20}" r="6" fill="#9ca3af" fill-opacity="0.35" '
            f'stroke="#111827" stroke-width="2.5"/><text x="{legend_x + 22}" y="{y + 24}">Pareto front</text>'
        )
    body.append("</g>")
    return _svg(plot.width, plot.height, "Accuracy vs latency (area: model size)", body)
