"""Evolution under the architecture budget (``--strategy evolution``): a genetic search over the encoding's
parameters for the best single objective (mIoU), made for the one-shot evaluator, where thousands of
candidates are affordable.

The sampler is Optuna's ``NSGAIISampler`` run on one objective, where its non-dominated sorting reduces to
ranking by score: each generation of ``population_size`` completed trials breeds the next by uniform
crossover of two parents chosen by binary tournament (``crossover_prob``) and per-parameter mutation to a
random value (``mutation_prob``, default 1 / number of parameters), keeping the elite of parents and children.
Over-budget children are rejected analytically by the engine before any evaluation and recorded as pruned
trials with their constraint values; only completed trials enter a population, so an over-budget candidate
never reproduces. (``nni-evolution`` is NNI's regularized, aging evolution over the same encoding.)
"""
from __future__ import annotations

from ..spaces.errors import RoutespaceError
from .strategy import OptunaStrategy


class EvolutionStrategy(OptunaStrategy):
    name = "evolution"

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ("population_size", "mutation_prob", "crossover_prob")

    def __init__(self, seed: int = 0, **options) -> None:
        super().__init__(seed, **options)
        pop = self.options.get("population_size", 20)
        if not isinstance(pop, int) or isinstance(pop, bool) or pop < 2:
            raise RoutespaceError(f"strategy 'evolution': population_size must be an integer >= 2, got {pop!r}")
        for name in ("mutation_prob", "crossover_prob"):
            value = self.options.get(name, 0.5)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise RoutespaceError(f"strategy 'evolution': {name} must be a probability in [0, 1], got {value!r}")

    def make_sampler(self, seed: int):
        import optuna

        kwargs = {"population_size": self.options.get("population_size", 20),
                  "crossover_prob": float(self.options.get("crossover_prob", 0.9))}
        if "mutation_prob" in self.options:
            kwargs["mutation_prob"] = float(self.options["mutation_prob"])
        return optuna.samplers.NSGAIISampler(seed=seed, **kwargs)
