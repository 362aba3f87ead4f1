"""NNI 3.0 behind one adapter: the routing space as an NNI model space, and NNI's regularized evolution
run in-process.

Everything NNI is imported here, lazily (NNI is slow to import and was archived at 3.0). Pinned:
``nni==3.0``. What is used, and why it works without PyTorch Lightning (which NNI's PyTorch NAS path
imports but routespace does not install): NNI's framework shortcut is switched to ``'none'`` before
``nni.nas`` is imported when ``pytorch_lightning`` is missing; the pieces below are framework-free:

- ``nni.mutable``: one ``Categorical`` per encoding parameter (same names and choices as the Optuna
  encoding), and a ``Constraint`` (:class:`_budget_constraint`) that rejects over-budget samples with a
  ``ConstraintViolation`` - NNI's own way to tell a strategy a sample is invalid, so evolution resamples
  instead of training it;
- ``nni.nas.space.BaseModelSpace`` / ``RawFormatModelSpace`` with a ``FunctionalEvaluator``;
- ``nni.nas.execution.SequentialExecutionEngine`` (models run in this process, one after another),
  whose ``budget_available`` is tied to the routespace search budget;
- ``nni.nas.strategy.RegularizedEvolution`` (aging evolution, Real et al. 2019), unchanged.

Each evaluation goes through ``SearchSession.evaluate_params``, so NNI's trials are ordinary Optuna
trials of the study (same storage, heartbeat, de-duplication and user attributes). Resume: the
population (the last ``population_size`` completed evaluations, in trial order) and NNI's
de-duplication history (all earlier proposals) are rebuilt from the study with the strategy's own
``load_state_dict``; the random state is seeded from the seed, worker and the study's trial count.
"""
from __future__ import annotations

import logging
from typing import Any

from .strategy import Strategy


def import_nni() -> dict[str, Any]:
    """Import the NNI pieces used here (framework shortcut off when Lightning is not installed)."""
    import importlib.util

    from nni.common import framework

    if framework.get_default_framework() == "pytorch" and importlib.util.find_spec("pytorch_lightning") is None:
        framework.set_default_framework("none")
    from nni.mutable import Categorical, Constraint, ConstraintViolation, MutableDict
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.space import BaseModelSpace, RawFormatModelSpace
    from nni.nas.strategy import RegularizedEvolution

    for name in ("nni", "nni.nas"):  # NNI logs every individual at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    return dict(Categorical=Categorical, Constraint=Constraint, ConstraintViolation=ConstraintViolation,
                MutableDict=MutableDict, FunctionalEvaluator=FunctionalEvaluator,
                SequentialExecutionEngine=SequentialExecutionEngine, BaseModelSpace=BaseModelSpace,
                RawFormatModelSpace=RawFormatModelSpace, RegularizedEvolution=RegularizedEvolution)


class FrozenRouting:
    """What an NNI sample freezes to: the decoded Architecture and the raw sample (the trial params)."""

    def __init__(self, arch, sample: dict) -> None:
        self.arch = arch
        self.sample = dict(sample)


def routing_model_space(encoding, checker, nni: dict | None = None):
    """The encoding as an NNI model space (Categoricals + a budget Constraint); freezes to FrozenRouting."""
    nni = nni or import_nni()
    names = list(encoding.choices())

    class BudgetConstraint(nni["Constraint"]):
        """Rejects samples whose architecture breaks the architecture budget (analytic, no training)."""

        def __init__(self) -> None:
            self.label = "routespace_budget"
            self.rejected = 0

        def check_contains(self, sample):
            missing = [n for n in names if n not in sample]
            if missing:
                return None  # the categoricals report missing keys themselves
            verdict = checker.check(encoding.decode({n: sample[n] for n in names}))
            if not verdict.ok:
                self.rejected += 1
                return nni["ConstraintViolation"](verdict.reason)
            return None

    class RoutingModelSpace(nni["BaseModelSpace"]):
        def __init__(self) -> None:
            self.mutables = nni["MutableDict"](
                {n: nni["Categorical"](list(c), label=n) for n, c in encoding.choices().items()}
            )
            self.constraint = BudgetConstraint()

        def leaf_mutables(self, is_leaf):
            yield from self.mutables.leaf_mutables(is_leaf)
            yield from self.constraint.leaf_mutables(is_leaf)

        def check_contains(self, sample):
            return self.mutables.check_contains(sample) or self.constraint.check_contains(sample)

        def freeze(self, sample):
            self.validate(sample)
            params = {n: sample[n] for n in names}
            return FrozenRouting(encoding.decode(params), params)

    return RoutingModelSpace()


class NNIEvolutionStrategy(Strategy):
    """NNI's RegularizedEvolution over the encoding, evaluated through the routespace session."""

    name = "nni-evolution"

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ("population_size", "sample_size", "mutation_prob", "crossover")

    def run(self, session) -> None:
        import numpy as np

        from .engine import StopSearch

        nni = import_nni()
        space = routing_model_space(session.encoding, session.checker, nni)
        dims = len(session.encoding.choices())
        pop = int(self.options.get("population_size", 10))
        strategy = nni["RegularizedEvolution"](
            population_size=pop,
            sample_size=int(self.options.get("sample_size", max(2, pop // 3))),
            mutation_prob=float(self.options.get("mutation_prob", max(0.05, 1.5 / dims))),
            crossover=bool(self.options.get("crossover", False)),
            dedup=True,
            seed=session.sampler_seed(),
        )

        def evaluate(frozen: FrozenRouting) -> None:
            import nni as nni_root

            miou = session.evaluate_params(frozen.sample)
            if miou is not None:
                nni_root.report_final_result(float(miou))

        class Engine(nni["SequentialExecutionEngine"]):
            def budget_available(self) -> bool:
                return session.stop_reason() is None

        model_space = nni["RawFormatModelSpace"](space, nni["FunctionalEvaluator"](evaluate))
        engine = Engine(continue_on_failure=False)
        strategy.initialize(model_space, engine)
        strategy.load_state_dict(self._state_from_study(session, pop, np))
        try:
            strategy.run()
        except StopSearch:
            pass

    @staticmethod
    def _state_from_study(session, pop: int, np) -> dict:
        """NNI's evolution state rebuilt from the study (population, dedup history, random state)."""
        from nni.nas.strategy.evolution import Individual
        from nni.nas.strategy.utils import DeduplicationHelper
        from optuna.trial import TrialState

        names = list(session.encoding.choices())
        trials = sorted(session.study.get_trials(deepcopy=False), key=lambda t: t.number)
        population = [
            Individual({n: t.params[n] for n in names}, float(t.user_attrs["miou"]))
            for t in trials
            if t.state == TrialState.COMPLETE and "miou" in t.user_attrs and all(n in t.params for n in names)
        ][-pop:]
        helper = DeduplicationHelper()
        for t in trials:
            if all(n in t.params for n in names):
                helper.dedup({n: t.params[n] for n in names})
        return {
            "population": population,
            "individual_counter": len(trials),
            "random_state": np.random.RandomState(session.sampler_seed()).get_state(),
            "num_running_models": 0,
            **helper.state_dict(),
        }
