"""NSGA-II: a two-objective search, mIoU (maximised) against GFLOPs (minimised); the result is the
Pareto front of the completed trials.

Over-budget children are recorded as pruned trials with their constraint values; NSGA-II builds its
parent population from completed trials only, so a rejected child never reproduces.
"""
from __future__ import annotations

from .strategy import OptunaStrategy


class NSGA2Strategy(OptunaStrategy):
    name = "nsga2"
    objectives = ("miou", "gflops")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ("population_size", "mutation_prob", "crossover_prob")

    def make_sampler(self, seed: int):
        import optuna

        kwargs = {"population_size": int(self.options.get("population_size", 8))}
        if "mutation_prob" in self.options:
            kwargs["mutation_prob"] = float(self.options["mutation_prob"])
        if "crossover_prob" in self.options:
            kwargs["crossover_prob"] = float(self.options["crossover_prob"])
        return optuna.samplers.NSGAIISampler(seed=seed, **kwargs)
