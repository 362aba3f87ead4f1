"""One-shot differentiable search over the edges (DARTS-style), with a FLOPs penalty; registered as
``nni-darts``.

Why not NNI's own ``DARTS`` strategy: in NNI 3.0 every one-shot strategy is a PyTorch Lightning module
(``nni.nas.oneshot.pytorch`` imports ``pytorch_lightning`` at module level) and needs NNI's
``nni.nas.nn.pytorch`` model-space modules. routespace does not depend on Lightning, and NNI 3.0 is
archived, so the same algorithm is written here in plain torch; the name keeps the CLI stable.

Algorithm (first-order DARTS, Liu et al. 2019, with an edge on/off relaxation):

- a supernet holds every node and edge of the space; edge ``e`` carries ``w_e = sigmoid(alpha_e)``
  and a node sums ``w_e * edge_e(x_src)`` over its incoming edges, then ``x + cell(x)``; with a cell
  choice, the cell is the softmax(beta)-weighted mixture of the offered cells;
- expected FLOPs (differentiable) from :mod:`routespace.evaluators.cost` part costs: a node's activity
  ``a(n) = max_e w_e * a(src)`` (the stem is 1), each edge costs ``w_e * a(src) * edge_flops``, each
  cell ``a(n) * sum_c softmax(beta)_c * cell_flops_c``; stem and decoder are constant;
- alternating steps: network weights on a training batch (cross-entropy), architecture weights on a
  held-out batch (cross-entropy + ``penalty * relu(E[GFLOPs] / max_gflops - 1)^2``, plus a small
  ``0.1 * penalty * E[GFLOPs] / all-open GFLOPs`` pull towards cheap nets when no budget is given);
- decoding (pure, deterministic): ``subgraph``: edges with ``w_e >= 0.5``, repaired; while over budget
  the weakest edge is dropped (keeping validity). ``path``: the best path by ``sum log w_e`` under the
  budget (Lagrangian relaxation, bisection on the cost multiplier). Cells: argmax beta. Further
  candidates (for ``--trials`` > 1) are drawn from the learned distribution (seeded), repaired, and
  ordered by their log-probability; every candidate is proxy-evaluated like any other trial.

The learned weights are stored in the study (user attribute ``darts``), so a resumed search decodes
the same candidates without training the supernet again.
"""
from __future__ import annotations

import math
import time

from ..spaces.architecture import Architecture
from ..spaces import paths
from ..spaces.space import Edge, RoutingSpace
from .encoding import on_stem_to_decoder_paths, repair_edges
from .strategy import Strategy

STUDY_ATTR = "darts"


# --- decoding (pure) ------------------------------------------------------------------------------
def best_path(space: RoutingSpace, weights: dict[Edge, float], edge_cost: dict[Edge, float],
              node_cost: dict, lam: float) -> list[Edge]:
    """The stem-to-last-layer path maximising ``sum(log w_e) - lam * cost`` (dynamic programming)."""

    def gain(e: Edge) -> float:
        return math.log(max(weights[e], 1e-9)) - lam * (edge_cost[e] + node_cost[(e[0], e[2])])

    return paths.best_path(space, gain, lambda v, g: v + g, 0.0)[1]


def decode(space: RoutingSpace, kind: str, weights: dict[Edge, float], cells: dict, fits) -> Architecture:
    """The argmax architecture of the learned weights that ``fits`` the budget (``fits(arch) -> bool``)."""
    from ..evaluators.cost import cell_cost, edge_cost

    size = space.input_size
    if kind == "subgraph":
        current = repair_edges(space, [e for e, w in weights.items() if w >= 0.5])
        for e in sorted(current, key=lambda e: (weights[e], e)):
            if fits(Architecture(space, current, _cells_for(current, cells))):
                break
            smaller = on_stem_to_decoder_paths(space, current - {e})
            if smaller:
                current = smaller
        arch = Architecture(space, current, _cells_for(current, cells))
        if fits(arch):
            return arch
    ecost = {e: edge_cost(space, e, size, "paper")[0] / 1e9 for e in space.edges()}
    ncost = {n: cell_cost(space, n, cells.get(n, space.cell), size, "paper")[0] / 1e9
             for n in space.nodes() if n[0] > 0}
    lo, hi = 0.0, 1.0
    path = best_path(space, weights, ecost, ncost, 0.0)
    if fits(Architecture(space, frozenset(path), _cells_for(path, cells))):
        return Architecture(space, frozenset(path), _cells_for(path, cells))
    while not fits(Architecture(space, frozenset(best_path(space, weights, ecost, ncost, hi)), ())) and hi < 1e12:
        hi *= 10
    for _ in range(40):
        mid = (lo + hi) / 2
        if fits(Architecture(space, frozenset(best_path(space, weights, ecost, ncost, mid)), ())):
            hi = mid
        else:
            lo = mid
    path = best_path(space, weights, ecost, ncost, hi)
    arch = Architecture(space, frozenset(path), _cells_for(path, cells))
    return arch if fits(arch) else Architecture(space, frozenset(path), ())


def _cells_for(edges, cells: dict) -> tuple:
    active = {(e[0], e[2]) for e in edges}
    return tuple((n, c) for n, c in cells.items() if n in active)


def sample_candidates(space: RoutingSpace, kind: str, weights: dict[Edge, float], cells: dict, fits, count: int,
                      seed: int, tries: int = 1000) -> list[Architecture]:
    """Distinct architectures drawn from the learned distribution (seeded), repaired, within budget."""
    import random

    rng = random.Random(seed)
    seen, out = set(), []
    for _ in range(tries):
        if len(out) >= count:
            break
        if kind == "subgraph":
            edges = repair_edges(space, [e for e, w in weights.items() if rng.random() < w])
        else:
            node, edges = (0, 0), []
            for layer in range(1, space.layers + 1):
                outs = space.out_edges(node)
                total = sum(weights[e] for e in outs)
                r, acc = rng.random() * total, 0.0
                for e in outs:
                    acc += weights[e]
                    if r <= acc:
                        break
                edges.append(e)
                node = (layer, e[2])
            edges = frozenset(edges)
        arch = Architecture(space, frozenset(edges), _cells_for(edges, cells))
        if arch in seen or not fits(arch):
            continue
        seen.add(arch)
        out.append(arch)
    logp = lambda a: sum(math.log(max(weights[e], 1e-9)) for e in a.edges)  # noqa: E731
    return sorted(out, key=lambda a: (-logp(a), a.sorted_edges))


# --- the bi-level training (the network itself: routespace.spaces.darts_supernet) -------------------
def train_supernet(space: RoutingSpace, cell_types: tuple[str, ...], data: str, steps: int, batch_size: int,
                   max_gflops: float | None, penalty: float, seed: int, size: tuple[int, int] | None = None) -> dict:
    """First-order DARTS on ``data``; returns the learned edge and cell weights (JSON-able) and its cost.

    Its own loop, not :func:`routespace.evaluators.train.fit`: DARTS alternates two optimisers on two data
    streams (weights on training batches, edge/cell weights on held-out ones) and keeps nothing on disk (the
    result is stored in the study), which ``fit``'s one-loss, one-optimiser, run-folder contract does not fit."""
    import torch
    import torch.nn.functional as F

    from ..evaluators.datasets import load_dataset

    from ..spaces.darts_supernet import DartsSupernet

    size = tuple(size or space.input_size)
    torch.manual_seed(seed)
    net = DartsSupernet(space, cell_types, size)
    train = load_dataset(data, "train", size=size)
    val = load_dataset(data, "val", size=size)
    gen = torch.Generator().manual_seed(seed)
    opt_w = torch.optim.AdamW(net.weight_parameters(), lr=3e-3, weight_decay=1e-4)
    opt_a = torch.optim.Adam(net.arch_parameters(), lr=3e-2, betas=(0.5, 0.999))
    budget = max_gflops

    def batch(ds):
        ids = torch.randint(0, len(ds), (batch_size,), generator=gen).tolist()
        items = [ds[i] for i in ids]
        return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])

    t0 = time.perf_counter()
    net.train()
    for _ in range(steps):
        x, y = batch(train)
        opt_w.zero_grad()
        F.cross_entropy(net(x), y, ignore_index=255).backward()
        torch.nn.utils.clip_grad_norm_(net.weight_parameters(), 5.0)
        opt_w.step()
        x, y = batch(val)
        opt_a.zero_grad()
        eg = net.expected_gflops()
        loss = F.cross_entropy(net(x), y, ignore_index=255) + 0.1 * penalty * eg / net.all_open_gflops
        if budget is not None:
            loss = loss + penalty * torch.relu(eg / budget - 1.0) ** 2
        loss.backward()
        opt_a.step()
    seconds = time.perf_counter() - t0
    w = torch.sigmoid(net.alpha).detach().tolist()
    cw = torch.softmax(net.beta, dim=1).detach()
    return {
        "edges": {f"{l},{s},{d}": float(v) for (l, s, d), v in zip(net.edges, w)},
        "cells": {f"{l},{s}": cell_types[int(cw[j].argmax())] for j, (l, s) in enumerate(net.nodes)} if len(cell_types) > 1 else {},
        "expected_gflops": float(net.expected_gflops().detach()),
        "steps": steps,
        "seconds": seconds,
    }


def _parse_weights(stored: dict) -> tuple[dict, dict]:
    edges = {tuple(int(v) for v in k.split(",")): float(w) for k, w in stored["edges"].items()}
    cells = {tuple(int(v) for v in k.split(",")): c for k, c in stored.get("cells", {}).items()}
    return edges, cells


class DartsStrategy(Strategy):
    name = "nni-darts"

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ("search_steps", "batch_size", "penalty", "data")

    def run(self, session) -> None:
        from .engine import StopSearch, spec_key, spec_text

        config = session.config
        stored = session.study.user_attrs.get(STUDY_ATTR)
        if stored is None:
            data = self.options.get("data") or config.evaluator.get("data", "synthetic")
            stored = train_supernet(
                config.space, session.encoding.cell_choices, data,
                steps=int(self.options.get("search_steps", 150)),
                batch_size=int(self.options.get("batch_size", 8)),
                max_gflops=config.arch_budget.max_gflops,
                penalty=float(self.options.get("penalty", 2.0)),
                seed=config.seed,
                size=config.arch_budget.size,
            )
            session.study.set_user_attr(STUDY_ATTR, stored)
        weights, cells = _parse_weights(stored)
        fits = lambda a: session.checker.check(a).ok  # noqa: E731
        first = decode(config.space, session.encoding.kind, weights, cells, fits)
        if session.encoding.kind == "path" and len({e[0] for e in first.edges}) != len(first.edges):
            first = None
        more = sample_candidates(config.space, session.encoding.kind, weights, cells, fits,
                                 2 * config.search_budget.trials + 10, seed=config.seed)
        candidates = ([first] if first is not None else []) + [a for a in more if a != first]
        done = {t.user_attrs.get("spec_key") for t in session.study.get_trials(deepcopy=False)
                if t.state.name in ("COMPLETE", "PRUNED")}
        for arch in candidates:
            if spec_key(spec_text(arch)) in done:
                continue
            try:
                session.evaluate_params(session.encoding.encode(arch))
            except StopSearch:
                return
