"""Training schedules as pure functions of the step: learning rate, budget-loss weight, drop-path rate
(torch-free).

Steps are counted from 0; ``step`` is the index of the optimisation step about to be taken, and
``total`` the number of steps in the run.
"""
from __future__ import annotations


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


def budget_weight(step: int, total: int, warmup: float = 0.4, ramp: float = 0.02) -> float:
    """Weight in [0, 1] of the budget loss: 0 for the first ``warmup`` fraction of training, then a
    linear ramp over the next ``ramp`` fraction, then 1 (DESIGN §5: switched on after 40 %, ramped over 2 %)."""
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
