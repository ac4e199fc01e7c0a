"""The training curve of a GON as a self-contained SVG: training and validation loss per epoch.

Written by ``dragon-detector train --plot``; needs nothing beyond the standard library, so it
works on a broker without matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

WIDTH, HEIGHT, MARGIN = 640, 320, 48
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
    span = hi - lo if hi > lo else 1.0

    def px(epoch: float) -> float:
        return MARGIN + (WIDTH - 2 * MARGIN) * epoch / max(epochs - 1, 1)

    def py(value: float) -> float:
        return HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * (value - lo) / span

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
