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
