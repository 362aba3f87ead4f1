"""The strategy interface and the registry of strategies (one module per strategy, imported lazily).

A strategy decides *which* architectures to evaluate; the :class:`~routespace.search.engine.SearchSession`
it is given does everything else (budgets, storage, heartbeat, de-duplication, evaluation, bookkeeping).
Two kinds exist:

- Optuna strategies return a sampler from :meth:`OptunaStrategy.make_sampler`; the session drives the
  ask/tell loop and the encoding draws the parameters through the sampler.
- Driver strategies (NNI evolution, DARTS) run their own loop in :meth:`Strategy.run` and hand each
  candidate to ``session.evaluate_params(params)``, which returns its mIoU (``None`` when the candidate
  was rejected or the search budget is spent).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from ..spaces.errors import RoutespaceError

if TYPE_CHECKING:  # pragma: no cover
    from .engine import SearchSession

# name -> "module:Class"; modules are imported only when the strategy is used (nni is slow to import).
STRATEGIES: dict[str, str] = {
    "tpe": "routespace.search.optuna_tpe:TPEStrategy",
    "nsga2": "routespace.search.optuna_nsga2:NSGA2Strategy",
    "random": "routespace.search.random_search:RandomStrategy",
    "evolution": "routespace.search.evolution:EvolutionStrategy",
    "nni-evolution": "routespace.search.nni_adapter:NNIEvolutionStrategy",
    "nni-darts": "routespace.search.nni_darts:DartsStrategy",
}


class Strategy(ABC):
    """Base class. ``objectives``: ('miou',) maximised, or ('miou', 'gflops') for a Pareto search."""

    name: ClassVar[str] = ""
    objectives: ClassVar[tuple[str, ...]] = ("miou",)

    def __init__(self, seed: int = 0, **options: Any) -> None:
        self.seed = int(seed)
        unknown = set(options) - set(self.option_names())
        if unknown:
            raise RoutespaceError(
                f"strategy {self.name!r} has no option(s) {sorted(unknown)}; it takes {sorted(self.option_names()) or 'none'}"
            )
        self.options = options

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ()

    @abstractmethod
    def run(self, session: "SearchSession") -> None:
        """Search until ``session.stop_reason()`` is not None."""


class OptunaStrategy(Strategy):
    """A strategy that is an Optuna sampler; the session runs the ask/tell loop."""

    @abstractmethod
    def make_sampler(self, seed: int):
        """The sampler for this worker (``seed`` already differs per worker and per resume)."""

    def run(self, session: "SearchSession") -> None:
        session.optimize(self.make_sampler(session.sampler_seed()))


def strategy_class(name: str) -> type[Strategy]:
    """The class registered under ``name`` (imports its module)."""
    if name not in STRATEGIES:
        raise RoutespaceError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    module, _, cls = STRATEGIES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_strategy(name: str, seed: int = 0, options: dict | None = None) -> Strategy:
    return strategy_class(name)(seed=seed, **(options or {}))
