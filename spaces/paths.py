"""Path logic over a space's layered graph, as pure functions: pruning an edge set to a valid subgraph,
and the best single stem-to-last-layer path under any additive or bottleneck score."""
from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

from .space import Edge, Node, RoutingSpace

V = TypeVar("V")


def prune_edges(space: RoutingSpace, edges: Iterable[Edge]) -> frozenset[Edge]:
    """Keep only the edges on some stem -> last-layer path (pure; edges not in the space are dropped).

    An edge survives when its source is reached from the stem and its target reaches the last layer
    through the given edges; the survivors form the largest valid subgraph inside ``edges`` (possibly
    empty).
    """
    edges = {tuple(e) for e in edges if space.has_edge(tuple(e))}
    by_layer = sorted(edges)
    reached: set[Node] = {(0, 0)}
    for layer, src, dst in by_layer:
        if (layer - 1, src) in reached:
            reached.add((layer, dst))
    reaching: set[Node] = {(space.layers, s) for s in space.scales_at(space.layers)}
    for layer, src, dst in reversed(by_layer):
        if (layer, dst) in reaching:
            reaching.add((layer - 1, src))
    return frozenset(e for e in edges if (e[0] - 1, e[1]) in reached and (e[0], e[2]) in reaching)


def best_path(
    space: RoutingSpace,
    gain: Callable[[Edge], Any],
    combine: Callable[[V, Any], V],
    start: V,
    key: Callable[[V], Any] = lambda v: v,
    finish: Callable[[Node, V], V] | None = None,
) -> tuple[V, list[Edge]]:
    """The single stem-to-last-layer path whose value has the largest ``key`` (dynamic programming).

    A path's value starts at ``start`` and takes ``combine(value, gain(edge))`` along each edge (sum for
    costs and log-likelihoods, min for bottlenecks); ``finish(last_node, value)`` adds what the last node
    contributes (e.g. its decoder cost). To minimise, give ``key=lambda v: -v``. Ties go to the first
    option: the smaller source scale, and at the end the smaller last scale. Returns (value, sorted edges).
    """
    best: dict[Node, tuple[Any, Edge | None]] = {(0, 0): (start, None)}
    for layer in range(1, space.layers + 1):
        for dst in space.scales_at(layer):
            choice = None
            for e in space.in_edges((layer, dst)):
                value = combine(best[(layer - 1, e[1])][0], gain(e))
                if choice is None or key(value) > key(choice[0]):
                    choice = (value, e)
            best[(layer, dst)] = choice
    end = None
    for s in space.scales_at(space.layers):
        node = (space.layers, s)
        value = finish(node, best[node][0]) if finish else best[node][0]
        if end is None or key(value) > key(end[0]):
            end = (value, node)
    value, node = end
    path = []
    while node != (0, 0):
        edge = best[node][1]
        path.append(edge)
        node = (edge[0] - 1, edge[1])
    return value, sorted(path)
