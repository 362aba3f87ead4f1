"""Training schedules as pure functions of the step: learning rate, budget-loss weight, drop-path rate.

Steps are counted from 0; ``step`` is the index of the optimisation step about to be taken, and
``total`` the number of steps in the run.
"""
from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup_steps: int = 0, power: float = 0.9) -> float:
    """Poly decay ``(1 - step/total) ** power`` times a linear warm-up ``(step+1)/warmup_steps``.

    The factor multiplies each parameter group's base learning rate (as in detectron2's
    ``WarmupPolyLR``); it is positive for every step in ``0..total-1``.
    """
    if total <= 0:
        return 1.0
    poly = max(0.0, 1.0 - step / total) ** power
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * poly


def budget_weight(step: int, total: int, warmup: float = 0.4, ramp: float = 0.2) -> float:
    """Weight in [0, 1] of the budget loss: 0 for the first ``warmup`` fraction of training, then a
    linear ramp over the next ``ramp`` fraction, then 1 (DESIGN §5: switched on after 40 %, then ramped)."""
    if total <= 0:
        return 1.0
    start = warmup * total  # in steps, so that round fractions give exact weights
    if step < start:
        return 0.0
    if ramp <= 0:
        return 1.0
    return min(1.0, (step - start) / (ramp * total))


def drop_path_rate(step: int, total: int, max_rate: float) -> float:
    """Scheduled drop-path: the rate grows linearly from 0 to ``max_rate`` over training (NASNet)."""
    if max_rate <= 0 or total <= 0:
        return 0.0
    return max_rate * min(1.0, step / total)


# --- the budget loss of a dynamic net ----------------------------------------------------------------
class BudgetLoss:
    """``extra_loss`` for :func:`routespace.evaluators.train.fit`: the supernet's budget loss
    ``lam * (FLOPs_body / FLOPs_body_all_open - mu)^2`` times :func:`budget_weight` of the step.

    The body FLOPs are the straight-through *realised* count (``supernet.budget_loss``): its value is
    what will really run, its gradient the soft gates'.

    ``adaptive=True`` (default) makes ``lam`` a dual variable: once the loss is on, every step multiplies
    it by ``exp(rate * (r - mu) / mu)``, ``r`` the batch's realised body ratio (averaged over processes),
    kept in ``[lam_init, lam_max]``. A fixed weight is a compromise that a short run on one data set cannot
    tune (measured on the tiny preset: lambda 0.5 left the body at 0.56 for mu 0.4, the adaptive weight
    reached 0.43); the dual weight grows until the realised cost comes down to the target. Its state is
    saved in checkpoints (``state_dict``), so a resumed run continues exactly.

    ``mu`` below what a connected route can cost (``floor``: the cheapest single path's share of the
    all-open body) cannot be met without cutting images off from the decoder; the target is then raised
    to ``floor`` (``target`` holds the value used) and the caller should say so.
    """

    def __init__(
        self,
        all_open_body: float,
        mu: float,
        lam: float,
        warmup: float = 0.4,
        ramp: float = 0.2,
        adaptive: bool = True,
        floor: float = 0.0,
        rate: float = 0.02,
        lam_max: float = 1000.0,
    ) -> None:
        from routespace.spaces.errors import RoutespaceError

        check_mu(mu)
        if not lam >= 0:
            raise RoutespaceError(f"budget lambda must be >= 0, got {lam}")
        if not (0 <= warmup <= 1 and 0 <= ramp <= 1):
            raise RoutespaceError(f"budget warm-up and ramp are fractions of training in [0, 1], got {warmup} and {ramp}")
        self.all_open_body, self.mu, self.lam, self.warmup, self.ramp = float(all_open_body), float(mu), float(lam), warmup, ramp
        self.adaptive, self.rate, self.lam_max = adaptive, float(rate), float(lam_max)
        self.target = max(float(mu), float(floor))
        self.lam_now = float(lam)

    def __call__(self, output, step: int, total: int):
        from routespace.spaces.supernet import budget_loss

        weight = budget_weight(step, total, self.warmup, self.ramp)
        if self.adaptive and weight > 0 and self.lam > 0:
            ratio = _mean_over_processes(float(output.realised_body_flops.mean()) / self.all_open_body)
            step_factor = math.exp(self.rate * (ratio - self.target) / self.target)
            self.lam_now = min(self.lam_max, max(self.lam, self.lam_now * step_factor))
        return budget_loss(output, self.all_open_body, self.target, self.lam_now * weight)

    def state_dict(self) -> dict:
        return {"lam_now": self.lam_now}

    def load_state_dict(self, state: dict) -> None:
        self.lam_now = float(state["lam_now"])


def make_budget_loss(space, size: tuple[int, int], mu: float, lam: float, warmup: float = 0.4, ramp: float = 0.2,
                     adaptive: bool = True, quiet: bool = False) -> BudgetLoss:
    """The budget loss of a dynamic net over ``space`` at ``size``, its target raised to the reachable
    floor when ``mu`` is below it (a note on stderr says so unless ``quiet``)."""
    import sys

    from routespace.spaces.supernet import body_flops_all_open, route_floor

    floor = route_floor(space, size)
    loss = BudgetLoss(body_flops_all_open(space, size), mu, lam, warmup, ramp, adaptive=adaptive, floor=floor)
    if loss.target > mu and not quiet:
        print(f"note: budget mu {mu:g} is below the cheapest route that still reaches the decoder ({floor:.3f} of the "
              f"all-open body at {size[0]}x{size[1]}); targeting {floor:.3f} instead", file=sys.stderr)
    return loss


def _mean_over_processes(value: float) -> float:
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / dist.get_world_size()
    return value


def check_mu(mu: float) -> float:
    """``mu`` is the body-FLOPs target as a fraction of the all-open body: in (0, 1]."""
    from routespace.spaces.errors import RoutespaceError

    if not (isinstance(mu, (int, float)) and 0 < mu <= 1):
        raise RoutespaceError(f"budget mu must be in (0, 1] (a fraction of the all-open body FLOPs), got {mu}")
    return float(mu)


def mu_for_gflops(space, size: tuple[int, int], gflops: float) -> float:
    """The ``mu`` for a total target of ``gflops`` (paper convention) at ``size``.

    Stem, decoder and gate heads are not switched off by routing; they are taken at their all-open
    cost (an upper bound: gates of dead nodes do not run), so
    ``mu = (gflops - fixed) / body_all_open``."""
    from routespace.spaces.errors import RoutespaceError

    from .cost import space_cost

    report = space_cost(space, size, "paper", gates=True)
    fixed = (report.flops - report.body_flops) / 1e9
    body = report.body_flops / 1e9
    mu = (gflops - fixed) / body
    if not 0 < mu <= 1:
        raise RoutespaceError(
            f"a budget of {gflops:g} GFLOPs at {size[0]}x{size[1]} is outside what routing can reach: stem, decoder and "
            f"gates cost {fixed:.4g} GFLOPs and the all-open body {body:.4g}; give a value in ({fixed:.4g}, {fixed + body:.4g}]"
        )
    return mu
