"""Budgets: the architecture's (hard limits on GFLOPs, params, latency) and the search's (trials, time,
training steps).

Architecture limits are checked before any training: GFLOPs and params analytically
(:mod:`routespace.evaluators.cost`), latency by measuring the built model (batch 1, CPU, the number of
torch threads stated) only for candidates that already pass the analytic limits. A limit below the
cheapest architecture of the space is a user error that names the cheapest architecture.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from ..evaluators.cost import architecture_cost, cell_cost, decoder_cost, edge_cost
from ..spaces.architecture import Architecture
from ..spaces.errors import RoutespaceError
from ..spaces.paths import best_path
from ..spaces.space import STRIDES, Node, RoutingSpace


@dataclass(frozen=True)
class ArchBudget:
    """Hard limits on an architecture; ``None`` = no limit. Costs at ``size`` (default: the space's)."""

    max_gflops: float | None = None
    max_params_m: float | None = None
    max_latency_ms: float | None = None
    size: tuple[int, int] | None = None
    convention: str = "paper"
    latency_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("max_gflops", "max_params_m", "max_latency_ms"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise RoutespaceError(f"--{name.replace('_', '-')} must be a positive number, got {value!r}")
        if self.size is not None:
            object.__setattr__(self, "size", tuple(int(v) for v in self.size))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        return d


@dataclass
class Verdict:
    """Outcome of a budget check. ``constraints``: value minus limit per limited quantity (<= 0 is
    feasible), in the limit's own unit; what Optuna's constrained samplers read."""

    ok: bool
    gflops: float
    params_m: float
    latency_ms: float | None = None
    constraints: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def measure_latency_ms(arch: Architecture, size: tuple[int, int] | None = None, threads: int = 1,
                       repeats: int = 5, warmup: int = 2) -> float:
    """Median wall-clock of one forward pass (batch 1, eval mode, no grad) on the CPU, in ms, on ``threads``
    torch threads (timed by :func:`routespace.evaluators.evaluate.median_latency_ms`)."""
    import torch

    from ..evaluators.evaluate import median_latency_ms
    from ..spaces.builder import build

    size = size or arch.space.input_size
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = build(arch).eval()
        x = torch.randn(1, 3, *size)
        return median_latency_ms(model, [x], repeats, torch.device("cpu"), warmup)
    finally:
        torch.set_num_threads(old)


class BudgetChecker:
    """Checks candidates against an :class:`ArchBudget`; measured latencies are cached per architecture."""

    def __init__(self, budget: ArchBudget, latency_fn: Callable[[Architecture], float] | None = None):
        self.budget = budget
        self._latency_fn = latency_fn
        self._latency: dict[Architecture, float] = {}

    def latency_ms(self, arch: Architecture) -> float:
        if arch not in self._latency:
            fn = self._latency_fn or (
                lambda a: measure_latency_ms(a, self.budget.size, self.budget.latency_threads)
            )
            self._latency[arch] = fn(arch)
        return self._latency[arch]

    def check(self, arch: Architecture) -> Verdict:
        b = self.budget
        report = architecture_cost(arch, b.size, b.convention)
        v = Verdict(True, report.gflops, report.params_m)
        over = []
        if b.max_gflops is not None:
            v.constraints["gflops"] = v.gflops - b.max_gflops
            if v.gflops > b.max_gflops:
                over.append(f"{v.gflops:.4g} GFLOPs > {b.max_gflops:g}")
        if b.max_params_m is not None:
            v.constraints["params_m"] = v.params_m - b.max_params_m
            if v.params_m > b.max_params_m:
                over.append(f"{v.params_m:.4g} M params > {b.max_params_m:g}")
        if b.max_latency_ms is not None and not over:  # measure only what passed the analytic limits
            v.latency_ms = self.latency_ms(arch)
            v.constraints["latency_ms"] = v.latency_ms - b.max_latency_ms
            if v.latency_ms > b.max_latency_ms:
                over.append(f"{v.latency_ms:.4g} ms > {b.max_latency_ms:g} ms")
        if over:
            v.ok = False
            v.reason = "over budget: " + ", ".join(over)
        return v


# --- the cheapest architecture ---------------------------------------------------------------------
def cheapest_architecture(space: RoutingSpace, cells: tuple[str, ...] = (), size: tuple[int, int] | None = None,
                          convention: str = "paper", key: str = "flops") -> Architecture:
    """The architecture with the fewest FLOPs (``key='flops'``) or params (``key='params'``).

    Exact: every valid architecture contains a stem-to-decoder path, and that path alone costs no more
    (costs are non-negative and the decoder cost grows with its top scale), so the minimum is a single
    path, found by dynamic programming over (layer, scale) with the cheapest offered cell per node.
    """
    size = tuple(size) if size else space.input_size
    idx = 0 if key == "flops" else 1
    cells = cells or (space.cell,)

    def node_cost(node: Node) -> tuple[float, str]:
        return min((cell_cost(space, node, c, size, convention)[idx], c) for c in cells)

    _, path = best_path(
        space,
        lambda e: edge_cost(space, e, size, convention)[idx] + node_cost((e[0], e[2]))[0],
        lambda v, c: v + c,
        0.0,
        key=lambda v: -v,
        finish=lambda node, v: v + decoder_cost(space, node[1], size, convention)[idx],
    )
    edges = frozenset(path)
    cell_map = tuple(((e[0], e[2]), node_cost((e[0], e[2]))[1]) for e in path)
    return Architecture(space, edges, cell_map, name=f"cheapest-{key}")


def describe_path(arch: Architecture) -> str:
    scales = [d for _, _, d in arch.sorted_edges]
    return "path of strides [" + ",".join(str(STRIDES[s]) for s in scales) + "]"


def check_feasible(space: RoutingSpace, budget: ArchBudget, cells: tuple[str, ...] = (),
                   checker: BudgetChecker | None = None) -> None:
    """Raise a :class:`RoutespaceError` naming the cheapest architecture if no architecture fits."""
    size = budget.size or space.input_size
    h, w = size
    limits = (
        (budget.max_gflops, "flops", "gflops", "--max-gflops", "cheapest", "at {:.4g} GFLOPs ({h}x{w})"),
        (budget.max_params_m, "params", "params_m", "--max-params-m", "smallest", "with {:.4g} M params"),
    )
    for limit, key, attr, flag, word, unit in limits:
        if limit is None:
            continue
        arch = cheapest_architecture(space, cells, size, budget.convention, key)
        value = getattr(architecture_cost(arch, size, budget.convention), attr)
        if value > limit:
            raise RoutespaceError(
                f"{flag} {limit:g} is below the {word} architecture of space '{space.name}': "
                f"{describe_path(arch)} {unit.format(value, h=h, w=w)}; raise the budget to at least that"
            )
    if budget.max_latency_ms is not None:
        arch = cheapest_architecture(space, cells, size, budget.convention, "flops")
        lat = (checker or BudgetChecker(budget)).latency_ms(arch)
        if lat > budget.max_latency_ms:
            raise RoutespaceError(
                f"--max-latency-ms {budget.max_latency_ms:g} is below the measured latency of the cheapest "
                f"architecture of space '{space.name}' ({describe_path(arch)}): {lat:.3g} ms at {h}x{w}, batch 1, "
                f"{budget.latency_threads} thread(s); raise the budget"
            )


@dataclass(frozen=True)
class SearchBudget:
    """The search's own compute: completed trials, wall time of this run (s), total training steps of
    the study, and a cap on rejected (over-budget) candidates."""

    trials: int = 20
    timeout_s: float | None = None
    max_train_steps: int | None = None
    max_rejected: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise RoutespaceError(f"--trials must be a positive integer, got {self.trials!r}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise RoutespaceError(f"--timeout must be a positive number of seconds, got {self.timeout_s!r}")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise RoutespaceError(f"--max-train-steps must be positive, got {self.max_train_steps!r}")

    @property
    def rejected_cap(self) -> int:
        """Rejections allowed before the search gives up (analytic rejections cost microseconds)."""
        return self.max_rejected if self.max_rejected is not None else max(2000, 100 * self.trials)
