"""Run a search end to end: check, open the study, run the strategy in K worker processes, export.

``run_search(config, out_dir)`` is the Python API behind ``routespace search``. Worker processes are
started with the ``spawn`` method and rebuild everything from the JSON-able config (the evaluator from
``config.evaluator``); an ``evaluator`` object passed in is used by the calling process only. A worker
ends when the process that started it dies, even by SIGKILL (the same watch as ``compare``'s workers):
its trial is then failed and retried by the rerun, instead of training on into a study being resumed.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..spaces.errors import RoutespaceError
from .budget import BudgetChecker, check_feasible
from .config import SearchConfig
from .engine import SearchSession, StopSearch, open_study
from .strategy import make_strategy, strategy_class


@dataclass
class SearchOutcome:
    summary: dict
    stop_reason: str | None
    evaluated: int
    rejected: int
    duplicates: int
    seconds: float


def default_storage(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir) / 'study.db'}"


def validate(config: SearchConfig) -> None:
    """Everything that can be checked before the storage is touched (bad input never reaches it)."""
    strategy_class(config.strategy)  # unknown strategy -> RoutespaceError
    make_strategy(config.strategy, config.seed, config.strategy_options)  # bad options
    from .evaluator_registry import check_supernet, make_search_evaluator

    if config.evaluator.get("kind") == "oneshot":
        check_supernet(config.evaluator.get("supernet"), config.space)
    else:
        make_search_evaluator(config.evaluator)
    check_feasible(config.space, config.arch_budget, config.make_encoding().cell_choices,
                   BudgetChecker(config.arch_budget))


def run_worker(config: SearchConfig, evaluator=None, worker_index: int = 0,
               progress: Callable | None = None) -> SearchSession:
    """One worker: open the study (it must exist or be creatable), run the strategy until a budget ends."""
    from .evaluator_registry import make_search_evaluator

    study, storage = open_study(config, resume=False)
    session = SearchSession(config, study, storage, evaluator or make_search_evaluator(config.evaluator),
                            worker_index=worker_index, progress=progress)
    strategy = make_strategy(config.strategy, config.seed, config.strategy_options)
    try:
        strategy.run(session)
    except StopSearch as stop:
        session.stop_message = session.stop_message or str(stop)
    if session.stop_message is None:
        session.stop_message = session.stop_reason()
    return session


def _worker_entry(config_dict: dict, worker_index: int, parent: int) -> None:
    import optuna

    from ..spaces.procs import exit_with_parent

    exit_with_parent(parent)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_worker(SearchConfig.from_dict(config_dict), worker_index=worker_index)


def run_search(config: SearchConfig, out_dir: str | Path, evaluator=None, *, resume: bool = False,
               workers: int = 1, progress: bool = False, top_k: int = 5) -> SearchOutcome:
    """Validate, open (or resume) the study, run ``workers`` workers, export into ``out_dir``."""
    from .export import export_results

    if not isinstance(workers, int) or workers < 1:
        raise RoutespaceError(f"--workers must be a positive integer, got {workers!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RoutespaceError(f"--out {out} is a file, not a folder")
    validate(config)
    if not config.storage:
        out.mkdir(parents=True, exist_ok=True)
        config = config.with_(storage=default_storage(out))
    open_study(config, resume=resume)  # create, or check that it may be continued / resumed
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    procs = []
    ctx = mp.get_context("spawn")
    for i in range(1, workers):
        # the whole URL travels through the spawn pipe, never a command line
        p = ctx.Process(target=_worker_entry, args=(config.to_dict(mask_secrets=False), i, os.getpid()), daemon=False)
        p.start()
        procs.append(p)
    bar = _progress_bar(config) if progress else None
    try:
        session = run_worker(config, evaluator, 0, bar.update if bar else None)
        for p in procs:
            while p.is_alive():
                p.join(timeout=0.5)
                if bar:
                    bar.update(session.counts())
    except BaseException:
        for p in procs:
            if p.is_alive():
                p.terminate()
        raise
    finally:
        if bar:
            bar.close()
    failed_workers = [p.exitcode for p in procs if p.exitcode]
    pareto = strategy_class(config.strategy).objectives == ("miou", "gflops")
    summary = export_results(session.study, out, config.to_dict(), pareto, top_k, extra={
        "stop_reason": session.stop_message,
        "workers": workers,
        "worker_exit_codes": [p.exitcode for p in procs],
        "seconds_this_run": time.monotonic() - t0,
    })
    if failed_workers:
        summary["warning"] = f"{len(failed_workers)} worker process(es) exited with an error"
    return SearchOutcome(summary, session.stop_message, session.evaluated, session.rejected, session.duplicates,
                         time.monotonic() - t0)


class _Bar:
    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.tqdm = tqdm(total=total, unit="trial", desc="search", dynamic_ncols=True, leave=True)

    def update(self, counts) -> None:
        self.tqdm.n = min(counts.complete, self.tqdm.total)
        best = "-" if counts.best is None else f"{counts.best:.4f}"
        self.tqdm.set_postfix_str(f"best {best}, rejected {counts.rejected}, running {counts.running}", refresh=False)
        self.tqdm.refresh()

    def close(self) -> None:
        self.tqdm.close()


def _progress_bar(config: SearchConfig) -> _Bar:
    return _Bar(config.search_budget.trials)
