"""Shared helpers for the foundation tests (space, architecture, cost, classics, CLI)."""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import networkx as nx

from routespace.spaces.architecture import Architecture
from routespace.spaces.random_arch import random_architecture
from routespace.spaces.space import RoutingSpace


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: on a loaded 2-core box two OpenMP threads are 10-100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def assert_valid_subgraph(arch: Architecture) -> None:
    """Independent validity check with networkx: edges are space edges, and every active node is reached
    from the stem (0, 0) and reaches a last-layer node."""
    space = arch.space
    g = nx.DiGraph()
    g.add_node((0, 0))
    for layer, src, dst in arch.edges:
        assert space.graph.has_edge((layer - 1, src), (layer, dst)), (layer, src, dst)
        g.add_edge((layer - 1, src), (layer, dst))
    assert set(g.nodes) == set(arch.nodes)
    reached = nx.descendants(g, (0, 0)) | {(0, 0)}
    assert reached == set(g.nodes)
    last = {n for n in g.nodes if n[0] == space.layers}
    assert last, "no last-layer node"
    for node in g.nodes:
        assert node in last or nx.descendants(g, node) & last, node


def random_archs(space: RoutingSpace, count: int, seed: int, cell_choices=None) -> list[Architecture]:
    """``count`` seeded random valid architectures, alternating single paths and repaired subgraphs."""
    rng = random.Random(seed)
    kinds = ("path", "subgraph")
    return [
        random_architecture(space, rng, kind=kinds[i % 2], p=rng.choice((0.2, 0.4, 0.7)), cell_choices=cell_choices,
                            name=f"random-{seed}-{i}")
        for i in range(count)
    ]


def fvcore_flops(model, size: tuple[int, int]) -> int:
    """fvcore's total FLOPs of ``model`` (eval mode) on one zero image of ``size``."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    model.eval()
    with one_thread(), torch.no_grad():
        fa = FlopCountAnalysis(model, torch.zeros(1, 3, *size))
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        fa.tracer_warnings("none")
        return int(fa.total())


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
