"""Random search: the baseline every other strategy has to beat (uniform over the encoding)."""
from __future__ import annotations

from .strategy import OptunaStrategy


class RandomStrategy(OptunaStrategy):
    name = "random"

    def make_sampler(self, seed: int):
        import optuna

        return optuna.samplers.RandomSampler(seed=seed)
