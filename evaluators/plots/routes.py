"""Per-image routes: each image, its prediction (and ground truth) and the route its gates chose."""
from __future__ import annotations

from typing import Iterable, Sequence

from ...spaces.space import RoutingSpace
from .canvas import FONT, SMALL, new_figure
from .data import route_rows
from .grid import draw_grid


def plot_routes(
    images: Sequence[object],
    predictions: Sequence[object],
    routes: Sequence[Iterable[object]],
    space: RoutingSpace,
    targets: Sequence[object] | None = None,
    captions: Sequence[str] | None = None,
    title: str | None = None,
):
    """One row per image: image | (ground truth) | prediction | route on the layer x scale grid.

    ``routes[i]`` is image i's set of open edges (see ``data.routes_from_gates``); ``predictions[i]`` is
    (H, W) class ids or (C, H, W) logits; ``captions[i]`` e.g. its realised GFLOPs."""
    rows = route_rows(images, predictions, routes, space, targets, captions)
    n_pics = 3 if targets is not None else 2
    grid_w = 2.2 + 0.3 * (space.layers + 1)
    fig = new_figure(1.9 * n_pics + grid_w, 1.95 * len(rows) + 0.5)
    gs = fig.add_gridspec(len(rows), n_pics + 1, width_ratios=[1.0] * n_pics + [grid_w / 1.9])
    for r, row in enumerate(rows):
        pics = [("image", row.image)]
        if row.target is not None:
            pics.append(("ground truth", row.target))
        pics.append(("prediction", row.prediction))
        for c, (name, pic) in enumerate(pics):
            ax = fig.add_subplot(gs[r, c])
            ax.imshow(pic, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=FONT)
            if c == 0:
                ax.set_ylabel(row.caption, fontsize=SMALL)
        ax = fig.add_subplot(gs[r, n_pics])
        draw_grid(ax, row.grid, legend=r == 0, compact=True)
        if r == 0:
            ax.set_title("route chosen by the gates", fontsize=FONT)
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    return fig
