"""The Pareto front of (GFLOPs, mIoU) points: fewer GFLOPs and higher mIoU are better (pure, torch-free).

One implementation for every caller: a search's exported front (``search.export``) and the Pareto plot
(``evaluators.plots``)."""
from __future__ import annotations

from typing import Sequence


def pareto_indices(points: Sequence[tuple[float, float]], keep_ties: bool = True) -> list[int]:
    """Indices of the non-dominated ``(gflops, miou)`` points, sorted by (GFLOPs, -mIoU, index).

    A point is dominated when another has no more GFLOPs and no less mIoU, and is strictly better in one.
    Equal points do not dominate each other: all of them are on the front, unless ``keep_ties=False``,
    which keeps only the first (lowest index) of equal points.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        gflops, miou = points[i]
        if miou > best:
            front.append(i)
            best = miou
        elif keep_ties and front and miou == best and tuple(points[front[-1]]) == (gflops, miou):
            front.append(i)  # equal to the last point of the front: not dominated by it
    return front
