"""The search engine: an ask/tell loop over an Optuna study, shared by every strategy and worker.

Per trial (:meth:`SearchSession.run_trial`), while a heartbeat thread keeps the trial alive:

1. the encoding draws the parameters (through the strategy's sampler) and decodes them into a valid
   Architecture;
2. the architecture budget is checked analytically (GFLOPs, params; latency is measured only for
   candidates that pass those). An over-budget candidate is **never trained**: the trial records its
   constraint values with ``trial.set_constraint`` (value minus limit, > 0 = violated), the reason in
   the user attribute ``rejected``, and ends PRUNED. Constrained samplers (TPE, NSGA-II) read those
   values; no score is made up. Rejected trials do not count towards ``--trials``;
3. an architecture already evaluated in this study is not trained again: the trial completes with the
   earlier result and ``duplicate_of`` (0 training steps). Of twins running at once in several workers
   exactly one trains, by a claim in the user attribute ``claim`` (:meth:`SearchSession._find_twin`); the
   others wait for its result;
4. otherwise the evaluator trains and scores it; the trial stores ``spec``, ``gflops``, ``params_m``,
   ``miou``, ``train_steps``, ``train_images``, ``train_seconds`` as user attributes and completes
   with ``miou`` (and ``gflops`` for two-objective strategies).

Budgets of the search: ``trials`` completed trials in the study (exactly: a worker only starts a
trial when the completed plus the running ones of other workers leave room, and after ``ask`` gives up
its trial if an earlier-numbered one took the last place), ``timeout_s`` wall time of this run (no new
trial starts after it), ``max_train_steps`` summed over the study (no trial starts that would exceed
it), and a cap on rejected candidates per run.

Crash safety: before every trial, stale RUNNING trials (heartbeat older than the grace period: the
worker was killed) are failed and re-enqueued with their parameters (``fail_stale``); the next ``ask``
of any worker pops the retry first. An interrupted trial (Ctrl-C) is failed and re-enqueued at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..spaces.architecture import Architecture
from ..spaces.errors import RoutespaceError
from .budget import BudgetChecker
from .config import CONFIG_ATTR, SearchConfig
from .storage import HEARTBEAT_ATTR, Heartbeat, fail_stale, mask_url, open_storage, retry_callback

RESULT_ATTRS = ("miou", "train_steps", "train_images", "train_seconds", "eval_seconds")
CLAIM_ATTR = "claim"  # claimed | training | deferred: which of several running twins trains (SearchSession._find_twin)


def spec_text(arch: Architecture) -> str:
    """Compact canonical JSON of an architecture (the ``spec`` user attribute)."""
    return json.dumps(arch.to_dict(), sort_keys=True, separators=(",", ":"))


def spec_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class Counts:
    """Trial states of a study, as the engine counts them."""

    complete: int = 0
    running: int = 0
    waiting: int = 0
    rejected: int = 0
    failed: int = 0
    train_steps: int = 0
    running_numbers: list[int] = field(default_factory=list)
    best: float | None = None


def count_trials(trials) -> Counts:
    """Pure: counts from a list of FrozenTrials."""
    from optuna.trial import TrialState

    c = Counts()
    for t in trials:
        if t.state == TrialState.COMPLETE:
            c.complete += 1
            miou = t.user_attrs.get("miou")
            if miou is not None and (c.best is None or miou > c.best):
                c.best = float(miou)
        elif t.state == TrialState.RUNNING:
            c.running += 1
            c.running_numbers.append(t.number)
        elif t.state == TrialState.WAITING:
            c.waiting += 1
        elif t.state == TrialState.PRUNED:
            c.rejected += 1
        elif t.state == TrialState.FAIL:
            c.failed += 1
        c.train_steps += int(t.user_attrs.get("train_steps", 0) or 0)
    return c


def _proposal_sampler():
    """A sampler that returns the parameters a driver strategy (NNI, DARTS) proposed."""
    import optuna

    class ProposalSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.params: dict[str, Any] = {}

        def infer_relative_search_space(self, study, trial):
            return {}

        def sample_relative(self, study, trial, search_space):
            return {}

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.params[param_name]

    return ProposalSampler()


class StopSearch(Exception):
    """Raised inside driver strategies' callbacks when the search budget is spent."""


class SearchSession:
    """One worker's view of a search: the study, the encoding, the budgets and the evaluator."""

    def __init__(self, config: SearchConfig, study, storage, evaluator: Callable, *, worker_index: int = 0,
                 progress: Callable[[Counts], None] | None = None, poll_s: float = 0.25) -> None:
        from .strategy import strategy_class

        self.config = config
        self.study = study
        self.storage = storage
        self.evaluator = evaluator
        self.encoding = config.make_encoding()
        self.checker = BudgetChecker(config.arch_budget)
        self.objectives = strategy_class(config.strategy).objectives
        self.worker_index = worker_index
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.progress = progress
        self.poll_s = poll_s
        self.t0 = time.monotonic()
        self.rejected = 0
        self.evaluated = 0
        self.duplicates = 0
        self.stop_message: str | None = None
        self._trials_at_start = len(study.get_trials(deepcopy=False))
        self._cache: dict[str, Any] = {}

    # --- budgets -----------------------------------------------------------------------------------
    def counts(self) -> Counts:
        return count_trials(self.study.get_trials(deepcopy=False))

    def sampler_seed(self) -> int:
        """Differs per worker and per resume point (so a resumed random search does not replay itself)."""
        return (self.config.seed * 1_000_003 + self.worker_index * 7919 + self._trials_at_start) % (2**31 - 1)

    def stop_reason(self, counts: Counts | None = None) -> str | None:
        c = counts or self.counts()
        b = self.config.search_budget
        if c.complete >= b.trials:
            return f"trial budget reached ({c.complete} completed trials)"
        if b.timeout_s is not None and time.monotonic() - self.t0 >= b.timeout_s:
            return f"time budget reached ({b.timeout_s:g} s)"
        steps = getattr(self.evaluator, "steps_per_trial", 0) or 0
        if b.max_train_steps is not None and c.train_steps + steps > b.max_train_steps:
            return f"training-step budget reached ({c.train_steps} of {b.max_train_steps} steps used)"
        if self.rejected >= b.rejected_cap:
            return (f"{self.rejected} candidates rejected as over budget in this run (cap {b.rejected_cap}): "
                    "the budget admits few architectures of this encoding")
        return None

    def _room(self, c: Counts) -> bool:
        """Whether a new trial is needed: completed plus other workers' running trials leave room."""
        return c.complete + c.running < self.config.search_budget.trials

    def _wait_for_room(self) -> bool:
        """Block until a trial may start (True) or the search is over (False)."""
        while True:
            fail_stale(self.study)
            c = self.counts()
            reason = self.stop_reason(c)
            if reason:
                self.stop_message = reason
                return False
            if self._room(c):
                return True
            self._report(c)
            time.sleep(self.poll_s)

    def _report(self, c: Counts | None = None) -> None:
        if self.progress is not None:
            self.progress(c or self.counts())

    # --- the loops ---------------------------------------------------------------------------------
    def optimize(self, sampler) -> None:
        """The ask/tell loop for Optuna samplers."""
        self.study.sampler = sampler
        while self._wait_for_room():
            self.run_trial(self._ask())
            self._report()

    def evaluate_params(self, params: dict) -> float | None:
        """Evaluate one proposal of a driver strategy; its mIoU, or None if rejected.

        Raises :class:`StopSearch` when the search budget is spent. Queued retries of killed trials are
        run first (they are owed to the study), then the proposal.
        """
        sampler = self._cache.get("proposal") or _proposal_sampler()
        self._cache["proposal"] = sampler
        self.study.sampler = sampler
        while True:
            if not self._wait_for_room():
                raise StopSearch(self.stop_message)
            sampler.params = dict(params)
            trial = self._ask()
            is_retry = "fixed_params" in self.storage.get_trial_system_attrs(trial._trial_id) or \
                "failed_trial" in self.storage.get_trial_system_attrs(trial._trial_id)
            outcome = self.run_trial(trial)
            self._report()
            if not is_retry:
                return outcome

    def _ask(self):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Heartbeat of storage is supposed to be used with Study.optimize"
            return self.study.ask()

    # --- one trial ---------------------------------------------------------------------------------
    def run_trial(self, trial) -> float | None:
        """Run one asked trial to its end; the mIoU, or None when rejected/given up."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        with Heartbeat(self.storage, trial._trial_id):
            try:
                return self._run_trial(trial)
            except UpdateFinishedTrialError:
                # Another worker declared this trial stale (our heartbeat was late) and queued a retry.
                return None
            except KeyboardInterrupt:
                self._fail_and_retry(trial, "interrupted")
                raise
            except BaseException as exc:
                try:
                    trial.set_user_attr("error", mask_url(f"{type(exc).__name__}: {exc}")[:500])
                    self.study.tell(trial, state=TrialState.FAIL)
                except Exception:
                    pass
                raise

    def _fail_and_retry(self, trial, why: str) -> None:
        from optuna.trial import TrialState

        try:
            trial.set_user_attr("error", why)
            self.study.tell(trial, state=TrialState.FAIL)
            retry_callback()(self.study, self.storage.get_trial(trial._trial_id))
        except Exception:
            pass

    def _run_trial(self, trial) -> float | None:
        from optuna.trial import TrialState

        c = self.counts()
        earlier = sum(1 for n in c.running_numbers if n < trial.number)
        if c.complete + earlier >= self.config.search_budget.trials:
            # Another worker took the last place between our check and our ask: give the trial up.
            trial.set_user_attr("skipped", "trial budget already taken by other workers")
            attrs = self.storage.get_trial_system_attrs(trial._trial_id)
            self.study.tell(trial, state=TrialState.FAIL)
            if "failed_trial" in attrs:  # a popped retry must stay queued
                retry_callback(max_retry=None)(self.study, self.storage.get_trial(trial._trial_id))
            return None
        trial.set_user_attr("worker", self.worker)
        failed = self.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        if failed is not None:
            trial.set_user_attr("retry_of", int(failed))
        arch = self.encoding.suggest(trial)
        text = spec_text(arch)
        key = spec_key(text)
        verdict = self.checker.check(arch)
        trial.set_user_attr("spec", text)
        trial.set_user_attr("spec_key", key)
        trial.set_user_attr("gflops", verdict.gflops)
        trial.set_user_attr("params_m", verdict.params_m)
        if verdict.latency_ms is not None:
            trial.set_user_attr("latency_ms", verdict.latency_ms)
        for name, value in verdict.constraints.items():
            trial.set_constraint(name, value)
        if verdict.constraints:  # the list form too: optuna-dashboard (0.21) reads only system_attrs["constraints"]
            self.study._storage.set_trial_system_attr(trial._trial_id, "constraints",
                                                      [float(v) for v in verdict.constraints.values()])
        if not verdict.ok:
            trial.set_user_attr("rejected", verdict.reason)
            self.study.tell(trial, state=TrialState.PRUNED)
            self.rejected += 1
            return None
        twin = self._find_twin(trial, key)
        if twin is not None:
            for name in RESULT_ATTRS:
                if name in twin.user_attrs:
                    trial.set_user_attr(name, twin.user_attrs[name])
            trial.set_user_attr("train_steps", 0)
            trial.set_user_attr("train_images", 0)
            trial.set_user_attr("train_seconds", 0.0)
            trial.set_user_attr("duplicate_of", twin.number)
            miou = float(twin.user_attrs["miou"])
            self.study.tell(trial, values=self._values(miou, verdict.gflops))
            self.duplicates += 1
            return miou
        result = self.evaluator(arch, seed=self.config.seed)
        trial.set_user_attr("miou", float(result.miou))
        trial.set_user_attr("train_steps", int(result.train_steps))
        trial.set_user_attr("train_images", int(result.train_images))
        trial.set_user_attr("train_seconds", float(result.train_seconds))
        trial.set_user_attr("eval_seconds", float(result.eval_seconds))
        if result.extra:
            trial.set_user_attr("evaluator", result.extra)
        self.study.tell(trial, values=self._values(float(result.miou), verdict.gflops))
        self.evaluated += 1
        return float(result.miou)

    def _values(self, miou: float, gflops: float) -> list[float]:
        return [miou, gflops] if self.objectives == ("miou", "gflops") else [miou]

    def _twins(self, key: str, number: int):
        """(the completed original evaluation of ``key`` or None, the other RUNNING trials of ``key``)."""
        from optuna.trial import TrialState

        original, rivals = None, []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if t.number == number or t.user_attrs.get("spec_key") != key:
                continue
            if t.state == TrialState.RUNNING:
                rivals.append(t)
            elif "duplicate_of" not in t.user_attrs and original is None:
                original = t
        return original, rivals

    def _wait_a_poll(self) -> None:
        time.sleep(self.poll_s)
        fail_stale(self.study)  # a rival whose worker died stops counting once it is failed

    def _find_twin(self, trial, key: str):
        """The completed original evaluation of the same architecture to copy, or None once this trial holds
        the claim to train it.

        Trial numbers do not order the workers' checks (a trial asked earlier may set its ``spec_key``
        later, and a queued retry keeps its number while others start), so the trainer is decided by a claim
        in the user attribute ``claim``: a trial that sees no rival claiming writes ``claimed``, reads its
        rivals again and then either yields (``deferred``: a rival is ``training``, or claimed with a lower
        number; it waits for that one's result) or, after every higher-numbered claimant has decided,
        trains (``training``). Two claimants always see at least one of each other's claims, and the
        lower-numbered one waits for the higher one's decision, so exactly one trains; a claimant whose
        worker died is failed as stale and drops out.
        """
        number = trial.number
        while True:
            original, rivals = self._twins(key, number)
            if original is not None:
                return original
            if any(r.user_attrs.get(CLAIM_ATTR) in ("claimed", "training") for r in rivals):
                self._wait_a_poll()  # another trial is deciding, or training this architecture
                continue
            trial.set_user_attr(CLAIM_ATTR, "claimed")
            if self._claim_holds(key, number):
                trial.set_user_attr(CLAIM_ATTR, "training")
                return None
            trial.set_user_attr(CLAIM_ATTR, "deferred")
            self._wait_a_poll()

    def _claim_holds(self, key: str, number: int) -> bool:
        """After writing ``claimed``: whether this trial trains (see :meth:`_find_twin`)."""
        while True:
            original, rivals = self._twins(key, number)
            if original is not None:
                return False
            claims = {r.number: r.user_attrs.get(CLAIM_ATTR) for r in rivals}
            if "training" in claims.values() or any(n < number and c == "claimed" for n, c in claims.items()):
                return False
            if not any(n > number and c == "claimed" for n, c in claims.items()):
                return True
            self._wait_a_poll()  # a higher-numbered claimant that may not have seen this claim decides first


# --- opening a study ---------------------------------------------------------------------------------
def _directions(config: SearchConfig) -> list[str]:
    from .strategy import strategy_class

    objectives = strategy_class(config.strategy).objectives
    return ["maximize", "minimize"] if objectives == ("miou", "gflops") else ["maximize"]


def _storage_exists(url: str) -> bool:
    from .storage import is_journal_url

    if is_journal_url(url):
        path = url[len("journal:"):] if url.startswith("journal:") else url
        return os.path.exists(path)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        return path == ":memory:" or os.path.exists(path)
    return True


def open_study(config: SearchConfig, resume: bool = False):
    """Open the storage and create, continue or (``resume=True``) strictly resume the study.

    Without ``resume`` an existing study of that name is continued only if it was created with the same
    settings (space, encoding, strategy, budgets, evaluator, seed). Returns ``(study, storage)``.
    """
    import optuna

    from .config import identity_mismatch

    url = config.storage
    if resume and not _storage_exists(url):
        raise RoutespaceError(f"--resume: no storage at {mask_url(url)} (nothing to resume; drop --resume to start)")
    storage = open_storage(url, config.heartbeat_interval, config.grace_period)
    names = [s.study_name for s in storage.get_all_studies()]
    if config.study in names:
        study = optuna.load_study(study_name=config.study, storage=storage)
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is None:
            raise RoutespaceError(
                f"study {config.study!r} in {mask_url(url)} was not made by routespace: choose another --study"
            )
        diff = identity_mismatch(stored, config.to_dict())
        if diff:
            hint = "resume it without changing these settings" if resume else "add --resume to continue it with its own settings"
            raise RoutespaceError(
                f"study {config.study!r} in {mask_url(url)} was created with other settings ({diff}): "
                f"{hint}, or choose another --study"
            )
        if stored.get("storage") and mask_url(stored["storage"]) != stored["storage"]:
            # made before URLs were masked: the stored copy held the password in clear
            study.set_user_attr(CONFIG_ATTR, dict(stored, storage=mask_url(stored["storage"])))
        return study, storage
    if resume:
        listed = ", ".join(names[:10]) or "none"
        raise RoutespaceError(f"--resume: no study {config.study!r} in {mask_url(url)} (studies there: {listed})")
    study = optuna.create_study(storage=storage, study_name=config.study, directions=_directions(config),
                                load_if_exists=True)
    if study.user_attrs.get(CONFIG_ATTR) is None:
        study.set_user_attr(CONFIG_ATTR, config.to_dict())
    return study, storage


def stored_config(url: str, study_name: str, heartbeat_interval: int = 10) -> SearchConfig:
    """The config stored in an existing study (for ``--resume`` without repeating every option)."""
    import optuna

    if not _storage_exists(url):
        raise RoutespaceError(f"--resume: no storage at {mask_url(url)} (nothing to resume; drop --resume to start)")
    storage = open_storage(url, heartbeat_interval)
    names = [s.study_name for s in storage.get_all_studies()]
    if study_name not in names:
        listed = ", ".join(names[:10]) or "none"
        raise RoutespaceError(f"--resume: no study {study_name!r} in {mask_url(url)} (studies there: {listed})")
    study = optuna.load_study(study_name=study_name, storage=storage)
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        raise RoutespaceError(f"study {study_name!r} in {mask_url(url)} was not made by routespace")
    return SearchConfig.from_dict(stored)


__all__ = ["SearchSession", "Counts", "count_trials", "open_study", "stored_config", "spec_text", "spec_key",
           "StopSearch", "HEARTBEAT_ATTR"]
