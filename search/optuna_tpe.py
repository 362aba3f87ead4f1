"""TPE (the default strategy): Optuna's TPESampler over the encoding's categorical parameters.

Over-budget candidates are recorded as pruned trials with their constraint values
(``trial.set_constraint``); TPE reads those and ranks infeasible trials below every feasible one, so
it learns to avoid the over-budget region instead of being fed a made-up score.
"""
from __future__ import annotations

from .strategy import OptunaStrategy


class TPEStrategy(OptunaStrategy):
    name = "tpe"

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ("n_startup_trials", "multivariate", "constant_liar")

    def make_sampler(self, seed: int):
        import warnings

        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate / constant_liar are "experimental"
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=int(self.options.get("n_startup_trials", 10)),
                multivariate=bool(self.options.get("multivariate", True)),
                constant_liar=bool(self.options.get("constant_liar", True)),  # several workers
            )
