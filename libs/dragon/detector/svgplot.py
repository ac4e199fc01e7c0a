"""Self-contained SVG plots, standard library only, so they work on a broker without matplotlib.

:class:`Frame` maps steps and values to pixels for every plot (the bench's score plot too);
:func:`write_loss_svg` draws a GON's training curve (``dragon-detector train --plot``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

WIDTH, HEIGHT, MARGIN = 640, 320, 48


@dataclass(frozen=True)
class Frame:
    """Maps (step, value) to SVG pixels: ``steps`` along x, ``lo``..``hi`` up the y axis."""

    width: int
    height: int
    margin: int
    steps: int
    lo: float
    hi: float

    def x(self, step: float) -> float:
        return self.margin + (self.width - 2 * self.margin) * step / max(self.steps - 1, 1)

    def y(self, value: float) -> float:
        span = self.hi - self.lo if self.hi > self.lo else 1.0
        return self.height - self.margin - (self.height - 2 * self.margin) * (value - self.lo) / span


SERIES = (("train_loss", "training", "#2166ac"), ("val_loss", "validation", "#b2182b"))


def write_loss_svg(path: str | Path, history: dict, title: str) -> None:
    """Plot ``history["train_loss"]`` and ``history["val_loss"]`` (one value per epoch).

    The best epoch (the weights kept) is marked with a vertical line.
    """
    curves = {key: [float(v) for v in history.get(key, []) if v is not None] for key, _, _ in SERIES}
    values = [v for curve in curves.values() for v in curve]
    if not values:
        raise ValueError("the training history has no losses to plot")
    epochs = max(len(curve) for curve in curves.values())
    lo, hi = min(values), max(values)
    frame = Frame(WIDTH, HEIGHT, MARGIN, epochs, lo, hi)
    px, py = frame.x, frame.y

    lines = "".join(
        f'<polyline points="{_points(curves[key], px, py)}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        f'<text x="{WIDTH - MARGIN}" y="{20 + 14 * i}" text-anchor="end" fill="{colour}">{label}</text>'
        for i, (key, label, colour) in enumerate(SERIES)
        if curves[key]
    )
    best = history.get("best_epoch")
    marker = (
        f'<line x1="{px(best):.1f}" x2="{px(best):.1f}" y1="{MARGIN}" y2="{HEIGHT - MARGIN}" '
        f'stroke="#555" stroke-dasharray="3 3"/>'
        if isinstance(best, int)
        else ""
    )
    Path(path).write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">'
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>{marker}{lines}'
        f'<text x="{MARGIN}" y="20">{escape(title)}: loss per epoch (dashed: best epoch, weights kept)</text>'
        f'<text x="{MARGIN}" y="{HEIGHT - 14}">epoch 0</text>'
        f'<text x="{WIDTH - MARGIN}" y="{HEIGHT - 14}" text-anchor="end">epoch {epochs - 1}</text>'
        f'<text x="{MARGIN - 4}" y="{py(hi) + 4:.1f}" text-anchor="end">{hi:.3g}</text>'
        f'<text x="{MARGIN - 4}" y="{py(lo) + 4:.1f}" text-anchor="end">{lo:.3g}</text>'
        "</svg>\n"
    )


def _points(curve: Sequence[float], px, py) -> str:
    return " ".join(f"{px(epoch):.1f},{py(value):.1f}" for epoch, value in enumerate(curve))


def write_host_heatmap_svg(path: str | Path, scores, threshold: float, faulty, title: str) -> None:
    """One row per host, one column per interval: how far each score is from the threshold.

    ``scores`` and ``faulty`` are (T, m). A cell's blue deepens as its score nears the
    threshold; a cell at or above it is red (an alarm); a labelled cell is outlined in black,
    so found faults are outlined red cells and false alarms red cells without an outline.
    """
    steps, hosts = len(scores), len(scores[0]) if len(scores) else 0
    if steps == 0 or hosts == 0:
        raise ValueError("nothing to plot: the scores are empty")
    cell_w = max(2.0, min(14.0, (WIDTH * 1.5 - 2 * MARGIN) / steps))
    cell_h = 14.0
    width, height = 2 * MARGIN + cell_w * steps, 2 * MARGIN + cell_h * hosts
    cells = []
    for t in range(steps):
        for h in range(hosts):
            x, y = MARGIN + t * cell_w, MARGIN + h * cell_h
            score = float(scores[t][h])
            if score >= threshold:
                fill = "#d6604d"
            else:
                share = max(0.0, score / threshold) if threshold > 0 else 0.0
                fill = _blend("#f7fbff", "#2166ac", share)
            outline = ' stroke="black" stroke-width="1.2"' if faulty[t][h] else ""
            cells.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell_w:.1f}" height="{cell_h:.1f}" fill="{fill}"{outline}/>'
            )
    labels = "".join(
        f'<text x="{MARGIN - 4}" y="{MARGIN + (h + 0.75) * cell_h:.1f}" text-anchor="end">{h}</text>'
        for h in range(hosts)
    )
    Path(path).write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="11">'
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>{"".join(cells)}{labels}'
        f'<text x="{MARGIN}" y="20">{escape(title)}</text>'
        f'<text x="{MARGIN}" y="34">rows: hosts; columns: intervals; blue: score / threshold {threshold:.3g}; '
        "red: alarm; outlined: injected fault</text>"
        f'<text x="{MARGIN}" y="{height - 14:.0f}">interval 0</text>'
        f'<text x="{width - MARGIN:.0f}" y="{height - 14:.0f}" text-anchor="end">interval {steps - 1}</text>'
        "</svg>\n"
    )


def _blend(low: str, high: str, share: float) -> str:
    """The colour ``share`` (0..1) of the way from ``low`` to ``high`` (#rrggbb)."""
    share = min(max(share, 0.0), 1.0)
    a, b = (tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in (low, high))
    return "#" + "".join(f"{round(x + (y - x) * share):02x}" for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class Interval:
    """One row of :func:`write_intervals_svg`: a value against the range chance gives it."""

    label: str
    observed: float
    low: float
    high: float
    significant: bool


def write_intervals_svg(path: str | Path, panels: dict[str, Sequence[Interval]], title: str) -> None:
    """One panel per metric, one row per score: the chance range as a grey bar, the observed value
    as a dot, filled red where it stands out of chance (``significant``), hollow where it does not.

    Every panel spans 0..1 (ROC-AUC, PR-AUC); the rows of all panels are in the same order.
    """
    rows = max((len(intervals) for intervals in panels.values()), default=0)
    if rows == 0:
        raise ValueError("nothing to plot: no intervals")
    label_w, panel_w, row_h, top = 150, 220, 24, 56
    gap = MARGIN  # between panels, so one's "1" and the next one's "0" do not meet
    width = label_w + len(panels) * (panel_w + gap)
    height = top + rows * row_h + 30
    parts = []
    for p, (metric, intervals) in enumerate(panels.items()):
        left = label_w + p * (panel_w + gap)

        def px(value: float, left: int = left) -> float:
            return left + panel_w * min(max(value, 0.0), 1.0)

        parts.append(f'<text x="{left + panel_w / 2:.0f}" y="{top - 8}" text-anchor="middle">{escape(metric)}</text>')
        for tick in (0.0, 0.5, 1.0):
            parts.append(
                f'<line x1="{px(tick):.1f}" x2="{px(tick):.1f}" y1="{top}" y2="{top + rows * row_h}" stroke="#ddd"/>'
                f'<text x="{px(tick):.1f}" y="{top + rows * row_h + 14}" text-anchor="middle">{tick:g}</text>'
            )
        for r, interval in enumerate(intervals):
            y = top + (r + 0.5) * row_h
            fill = "#d6604d" if interval.significant else "white"
            parts.append(
                f'<line x1="{px(interval.low):.1f}" x2="{px(interval.high):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                f'stroke="#aaa" stroke-width="8"/>'
                f'<circle cx="{px(interval.observed):.1f}" cy="{y:.1f}" r="4.5" fill="{fill}" stroke="#b2182b"/>'
            )
    first = next(iter(panels.values()))
    labels = "".join(
        f'<text x="{label_w - 8}" y="{top + (r + 0.5) * row_h + 4:.1f}" text-anchor="end">{escape(i.label)}</text>'
        for r, i in enumerate(first)
    )
    Path(path).write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">'
        f'<rect width="{width}" height="{height}" fill="white"/>{"".join(parts)}{labels}'
        f'<text x="8" y="18">{escape(title)}</text>'
        '<text x="8" y="34" font-size="11">grey: 95 % of what shifted labels give; dot: the true labels '
        "(filled: above chance)</text>"
        "</svg>\n"
    )
