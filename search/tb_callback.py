"""TensorBoard events of a search: each trial's score, cost and constraint values, at step = trial number.

:class:`TrialLogger` is an Optuna callback (``callback(study, frozen_trial)``, what ``study.optimize``
calls after each trial) over a :class:`routespace.evaluators.tensorboard.Writer`. Per finished trial:

- ``search/miou`` (completed trials: the score) and ``search/best_miou`` (best so far);
- ``search/gflops``, ``search/params_m`` (every trial whose cost was computed, rejected ones included);
- ``search/constraint/NAME`` (value minus limit, > 0 = over budget) and ``search/rejected`` (1 or 0).

routespace's search engine runs its own ask/tell loop, so ``routespace search`` calls :func:`log_search`
when the search ends (also after a resume): it replays every finished trial of the study through a
TrialLogger into one new event file ``OUT/tb/events.out.tfevents.*.search``, which replaces the one an
earlier run of the same folder wrote, so resuming never doubles a point.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..evaluators.tensorboard import TB_DIR, Writer, open_writer

SUFFIX = ".search"  # event files of log_search end in this


class TrialLogger:
    """Optuna callback: log each finished trial once (a trial seen again is skipped)."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.best: float | None = None
        self._seen: set[int] = set()

    def __call__(self, study: Any, trial: Any) -> None:
        if trial.state.name not in ("COMPLETE", "PRUNED") or trial.number in self._seen:
            return  # running, or failed (a killed worker's trial: its retry is logged)
        self._seen.add(trial.number)
        step, attrs = trial.number, trial.user_attrs
        if trial.state.name == "COMPLETE":
            miou = attrs.get("miou", trial.values[0] if trial.values else None)
            if miou is not None:
                self.writer.scalar("search/miou", miou, step)
                self.best = miou if self.best is None else max(self.best, miou)
                self.writer.scalar("search/best_miou", self.best, step)
        for key in ("gflops", "params_m", "latency_ms"):
            if attrs.get(key) is not None:
                self.writer.scalar(f"search/{key}", attrs[key], step)
        for name, value in sorted(getattr(trial, "constraints", {}).items()):
            self.writer.scalar(f"search/constraint/{name}", value, step)
        if "gflops" in attrs:
            self.writer.scalar("search/rejected", 1.0 if "rejected" in attrs else 0.0, step)


def log_trials(trials: list, writer: Writer) -> TrialLogger:
    """Feed ``trials`` (FrozenTrials) in trial-number order through a new TrialLogger on ``writer``."""
    logger = TrialLogger(writer)
    for trial in sorted(trials, key=lambda t: t.number):
        logger(None, trial)
    return logger


def log_search(storage_url: str, study_name: str, out_dir: str | os.PathLike, enabled: bool = True) -> Path | None:
    """Write every finished trial of the study into ``out_dir/tb`` as one event file, replacing the
    earlier one; the file's path, or None when disabled or tensorboard is missing."""
    import optuna

    from .storage import open_storage

    out, tb = Path(out_dir), Path(out_dir) / TB_DIR
    if not open_writer(tb, enabled).enabled:  # disabled, or tensorboard missing (then noted once)
        return None
    trials = optuna.load_study(study_name=study_name, storage=open_storage(storage_url)).get_trials(deepcopy=False)
    # Staged beside tb/ (TensorBoard would list a folder inside it as a run), then renamed into it.
    staging = Path(tempfile.mkdtemp(prefix=".tb-search-", dir=out))
    try:
        with open_writer(staging, subdir=".", filename_suffix=SUFFIX) as writer:
            log_trials(trials, writer)
        made = next(staging.glob(f"events.out.tfevents.*{SUFFIX}"), None)
        if made is None:  # no finished trial: nothing to show
            return None
        tb.mkdir(exist_ok=True)
        earlier = list(tb.glob(f"events.out.tfevents.*{SUFFIX}"))
        final = tb / made.name
        os.replace(made, final)
        for path in earlier:
            if path != final:
                path.unlink(missing_ok=True)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
