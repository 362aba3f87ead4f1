"""Pareto plot of mIoU vs GFLOPs for any labelled results (dynamic, Common, classics, search trials)."""
from __future__ import annotations

from typing import Iterable

from .canvas import FONT, SMALL, new_figure
from .data import ResultPoint, as_points, pareto_front, place_labels

GROUP_STYLES = {  # group -> (marker, colour); other groups cycle through the fallbacks
    "dynamic": ("*", "#D55E00"),
    "common": ("s", "#0072B2"),
    "classic": ("o", "#009E73"),
    "search": (".", "#888888"),
    "random": ("x", "#CC79A7"),
}
_FALLBACK = [("^", "#E69F00"), ("v", "#56B4E9"), ("P", "#F0E442"), ("D", "#000000")]


def group_styles(groups: Iterable[str]) -> dict[str, tuple[str, str]]:
    out, k = {}, 0
    for g in groups:
        if g in out:
            continue
        if g in GROUP_STYLES:
            out[g] = GROUP_STYLES[g]
        else:
            out[g] = _FALLBACK[k % len(_FALLBACK)]
            k += 1
    return out


def plot_pareto(results: Iterable[object], title: str | None = None, label_points: bool = True, max_labels: int = 40):
    """mIoU (y) vs GFLOPs (x); the non-dominated front joined and ringed; points labelled without overlap.

    ``results``: ResultPoint / dict / (label, gflops, miou[, group]). With more than ``max_labels``
    points only the front and non-'search' points are labelled."""
    points: list[ResultPoint] = as_points(results)
    front = pareto_front(points)
    fig = new_figure(7.2, 4.8)
    ax = fig.add_subplot()
    styles = group_styles(p.group for p in points)
    for g, (marker, color) in styles.items():
        pts = [p for p in points if p.group == g]
        ax.scatter([p.gflops for p in pts], [p.miou for p in pts], marker=marker, c=color, s=60 if marker != "." else 40,
                   label=g or "results", zorder=3, linewidths=1.2)
    fp = [points[i] for i in front]
    ax.step([p.gflops for p in fp], [p.miou for p in fp], where="post", color="#C0392B", linewidth=1.2, alpha=0.8,
            zorder=2, label="Pareto front")
    ax.scatter([p.gflops for p in fp], [p.miou for p in fp], s=170, facecolors="none", edgecolors="#C0392B",
               linewidths=1.4, zorder=4)
    style_axes(ax, "GFLOPs", "mIoU", title or "mIoU vs GFLOPs")
    ax.legend(fontsize=SMALL, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0.0)
    _pad_limits(ax, points)
    if label_points and points:
        on_front = set(front)
        chosen = [i for i in range(len(points))
                  if len(points) <= max_labels or i in on_front or points[i].group != "search"]
        # front first, so the most important labels get the nearest spots
        chosen.sort(key=lambda i: (i not in on_front, i))
        label_axes(ax, [(points[i].gflops, points[i].miou) for i in chosen], [points[i].label for i in chosen])
    return fig


def style_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, ticks, a light grid, no top/right spines and a left-aligned title (the plots' common look)."""
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel(ylabel, fontsize=FONT)
    ax.tick_params(labelsize=SMALL)
    ax.grid(alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=FONT + 1, loc="left")


def _pad_limits(ax, points: list[ResultPoint]) -> None:
    if not points:
        return
    xs, ys = [p.gflops for p in points], [p.miou for p in points]
    for setter, lo, hi in ((ax.set_xlim, min(xs), max(xs)), (ax.set_ylim, min(ys), max(ys))):
        span = hi - lo or max(abs(hi) * 0.1, 1e-3)
        setter(lo - 0.15 * span, hi + 0.15 * span)  # room for labels inside the axes


def label_axes(ax, xy: list[tuple[float, float]], labels: list[str]) -> list:
    """Place ``labels`` near data points ``xy`` without overlaps (measured text sizes, greedy rings);
    a thin leader line joins a label that had to move away. Returns the Text artists."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()  # fix the layout (constrained) before measuring positions
    texts = [ax.text(0, 0, s, fontsize=SMALL, zorder=5) for s in labels]
    sizes = []
    for t in texts:
        bb = t.get_window_extent(renderer)
        sizes.append((bb.width + 2, bb.height + 1))
    anchors = [tuple(ax.transData.transform(p)) for p in xy]
    abox = ax.get_window_extent(renderer)
    boxes = place_labels(anchors, sizes, (abox.x0, abox.y0, abox.x1, abox.y1))
    inv = ax.transData.inverted()
    for t, (x0, y0, x1, y1), (ax_, ay), p in zip(texts, boxes, anchors, xy):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        t.set_position(inv.transform((cx, cy)))
        t.set_ha("center")
        t.set_va("center")
        if ((cx - ax_) ** 2 + (cy - ay) ** 2) ** 0.5 > max(x1 - x0, y1 - y0) / 2 + 14:
            # leader from the marker to the nearest point of the label's box
            nx, ny = min(max(ax_, x0), x1), min(max(ay, y0), y1)
            ax.plot(*zip(p, inv.transform((nx, ny))), color="#999999", linewidth=0.6, zorder=1)
    return texts
