"""Optuna storages chosen by URL, all with a heartbeat so that a killed worker's trial is failed and retried.

- ``sqlite:///PATH`` (the default, a file in the output folder): Optuna's RDB storage.
- ``postgresql://user@host:port/db`` (many machines): RDB storage through psycopg 3 (the URL is
  rewritten to ``postgresql+psycopg://``). A URL without a password is fine: libpq then reads
  ``PGPASSWORD`` or its password file (``~/.pgpass``, ``PGPASSFILE``) itself.
- ``journal:PATH`` or any path ending in ``.log`` (several local processes): Optuna's JournalFile
  storage. It has no heartbeat of its own, so :class:`HeartbeatJournalStorage` adds one: each running
  trial carries a wall-clock timestamp in its system attribute ``routespace:heartbeat``, renewed every
  interval, and ``_get_stale_trial_ids`` reports RUNNING trials whose timestamp (or, before the first
  beat, whose start) is older than the grace period. Optuna's own ``fail_stale_trials`` and
  ``RetryHeartbeatStaleTrialCallback`` then work on it exactly as on the RDB storage.

Gaps of Optuna's heartbeat/retry (Optuna 5.0) that routespace closes:

1. heartbeats are only sent inside ``study.optimize``; routespace runs trials with ask/tell, so its
   :class:`Heartbeat` thread beats (first beat synchronously, right after ``ask``);
2. stale trials are only failed when ``optimize`` starts a trial; the engine calls :func:`fail_stale`
   before every trial and while it waits for other workers;
3. the RDB storage never reports a RUNNING trial that has no heartbeat row, so a worker killed between
   ``ask`` and its first beat (which follows ``ask`` at once) left a trial that was never retried.
   :class:`HeartbeatRDBStorage` also reports RUNNING trials without a heartbeat row whose start is older
   than the grace period (the journal storage does the same). A trial's start is written with the
   asking machine's clock, so machines sharing a study need clocks that agree to well within the grace
   period (NTP gives milliseconds);
4. ``RetryHeartbeatStaleTrialCallback`` copies the dead trial's system and user attributes into the
   retry (heartbeat timestamp, constraint values, partial results); :func:`retry_callback` drops them;
5. a worker that reached ``--trials`` would stop and leave a stale trial un-retried; the engine counts
   other workers' RUNNING trials against the budget and waits for them (or their retries) to finish,
   so a study ends with exactly ``--trials`` completed trials;
6. a worker declared stale while still alive gets ``UpdateFinishedTrialError`` on ``tell``; the engine
   drops its result (the retry stands);
7. a lost connection (the server restarted, a failover) ends the process with ``StorageInternalError``,
   even between two queries of one read; every RDB call here reconnects and retries for up to
   :data:`OUTAGE_SECONDS` instead.

Secrets: :func:`mask_url` is the one function through which every storage URL (and every message that may
hold one) passes before routespace writes or prints it: ``summary.json``, the study's stored config,
trial attributes, progress output and error messages. ``--storage-env VAR`` (:func:`storage_url_from_env`)
reads the URL from an environment variable so that it is neither in the command line nor in shell history.
"""
from __future__ import annotations

import functools
import re
import threading
import time
import warnings
from typing import Any

from ..spaces.errors import RoutespaceError

HEARTBEAT_ATTR = "routespace:heartbeat"


MASK = "***"
# The password of a URL's user info, as SQLAlchemy and libpq read it: after "scheme://user:" up to the last
# "@" of the URL (a stray "@" in a password hides the rest rather than showing it).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#:@'\"<>]*:)[^\s'\"<>]*@")
# Secret-bearing parameters of a URL query (?password=...) or a libpq connection string (password=...).
_SECRET_PARAM = re.compile(
    r"(?i)(?P<key>\b(?:ssl)?pass(?:word|wd)?|\bpwd|\b[\w-]*secret[\w-]*|\b[\w-]*token|\bapi[_-]?key|\baccess[_-]?key)"
    r"(?P<eq>\s*=\s*)(?:'[^']*'|[^\s&;'\"<>,)]+)"
)
_known_secrets: set[str] = set()


def mask_url(text: str) -> str:
    """``text`` (a URL, or any message holding URLs) with every secret replaced by ``***``: the password of
    ``scheme://user:PASSWORD@host``, the values of ``password=``/``secret``/``token`` parameters, and any
    password of a storage opened in this process (:func:`remember_secrets`) wherever it appears.

    The one masking function of routespace: use it on anything derived from a storage URL before it is
    written to a file, a study attribute, a log line, a progress bar or an error message.
    """
    out = str(text)
    for secret in sorted(_known_secrets, key=len, reverse=True):
        out = out.replace(secret, MASK)
    out = _USERINFO.sub(lambda m: m.group("head") + MASK + "@", out)
    return _SECRET_PARAM.sub(lambda m: m.group("key") + m.group("eq") + MASK, out)


def remember_secrets(url: str) -> None:
    """Record the password of ``url`` (as written and percent-decoded) so that :func:`mask_url` hides it
    even where it appears outside a URL, e.g. in a driver's message."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    try:
        parts = urlsplit(url)
        found = [parts.password or ""] + [v for k, v in parse_qsl(parts.query) if _SECRET_PARAM.match(f"{k}=x")]
    except ValueError:  # not a URL: nothing to remember
        return
    raw = _USERINFO.match(url)
    if raw:
        found.append(raw.group(0)[len(raw.group("head")):-1])
    for secret in found:
        for form in (secret, unquote(secret)):
            if len(form) >= 4:  # shorter ones would mask ordinary text; the patterns still catch them in URLs
                _known_secrets.add(form)


def storage_url_from_env(name: str) -> str:
    """The storage URL held by environment variable ``name`` (``--storage-env``); one-line errors that never
    show the variable's value."""
    import os

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or ""):
        raise RoutespaceError(
            f"--storage-env takes the name of an environment variable holding the storage URL, not "
            f"{mask_url(name)!r}: e.g. export ROUTESPACE_STORAGE=postgresql://USER@HOST/DB; --storage-env ROUTESPACE_STORAGE"
        )
    value = os.environ.get(name)
    if value is None:
        raise RoutespaceError(f"--storage-env {name}: environment variable {name} is not set (export it with the storage URL)")
    value = value.strip()
    if not value:
        raise RoutespaceError(f"--storage-env {name}: environment variable {name} is empty (it should hold the storage URL)")
    if "://" not in value and not is_journal_url(value) and not value.startswith("sqlite:"):
        raise RoutespaceError(
            f"--storage-env {name}: environment variable {name} does not hold a storage URL (its value is not shown): "
            "expected sqlite:///PATH, postgresql://USER[:PASSWORD]@HOST:PORT/DB or journal:PATH"
        )
    return value


def _journal_storage_class():
    import optuna
    from optuna.storages._heartbeat import BaseHeartbeat  # pinned: optuna 4.x/5.0 layout

    class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
        """JournalStorage with a heartbeat kept in each running trial's system attributes."""

        def __init__(self, backend, heartbeat_interval: int, grace_period: int, callback=None) -> None:
            super().__init__(backend)
            self.heartbeat_interval = heartbeat_interval
            self.grace_period = grace_period
            self._stale_callback = callback

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            stale = []
            for t in self.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                beat = t.system_attrs.get(HEARTBEAT_ATTR)
                if beat is None and t.datetime_start is not None:
                    beat = t.datetime_start.timestamp()
                if beat is not None and now - float(beat) > self.grace_period:
                    stale.append(t._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self):
            return self._stale_callback

        def get_failed_trial_callback(self):  # the pre-5.0 name
            return self._stale_callback

        def __getstate__(self):  # never pickled with its lock
            raise TypeError("HeartbeatJournalStorage is not picklable: open it by URL in each process")

    return HeartbeatJournalStorage


# How long a storage call keeps retrying while the database server is unreachable (a restart, a failover).
OUTAGE_SECONDS = 60.0
# RDBStorage methods that talk to the database: the public API and the private ones that Optuna's
# ``_CachedStorage`` calls directly. Only the outermost call of a thread retries (they call each other).
_DB_METHODS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials",
    "_get_trials", "get_best_trial", "record_heartbeat", "_get_stale_trial_ids",
)


def is_connection_loss(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) means the database connection was lost or
    refused, as opposed to a bad query or a conflict: retrying the call after a reconnect can succeed."""
    from sqlalchemy import exc as sa_exc

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sa_exc.PendingRollbackError):
            return True
        if isinstance(exc, sa_exc.DBAPIError) and (exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _retrying(method):
    """``method`` retried with back-off for up to :data:`OUTAGE_SECONDS` while the connection is lost.

    A call whose transaction never reached the server is simply run again. One caveat: if the server
    committed a write and the connection died before the acknowledgement, the retry writes again; for
    attribute and heartbeat writes that is harmless, for ``create_new_trial`` it may add a trial, which
    the stale-trial sweep then fails after the grace period (no result is lost or counted twice)."""
    import functools

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        local = self._outage_local
        if getattr(local, "depth", 0) or self.engine.dialect.name == "sqlite":  # a file: no connection to lose
            return method(self, *args, **kwargs)
        deadline, wait = time.monotonic() + OUTAGE_SECONDS, 0.2
        while True:
            local.depth = 1
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if not is_connection_loss(exc) or time.monotonic() + wait > deadline:
                    raise
            finally:
                local.depth = 0
            self.scoped_session.remove()  # a session left mid-transaction by the lost connection
            self.engine.dispose()  # pooled connections to the old server process are dead
            time.sleep(wait)
            wait = min(2 * wait, 2.0)

    return call


@functools.lru_cache(maxsize=1)
def _rdb_storage_class():
    """The RDB storage class with the heartbeat sweep and the retry layer, built once per process."""
    import optuna
    from optuna.storages._rdb import models  # pinned: optuna 4.x/5.0 layout
    from optuna.storages._rdb.storage import _create_scoped_session

    class HeartbeatRDBStorage(optuna.storages.RDBStorage):
        """RDBStorage whose stale-trial sweep also reports RUNNING trials that never beat.

        Optuna skips a RUNNING trial without a heartbeat row, so a worker killed between ``ask`` and its
        first beat left a trial that was never failed nor retried. Such a trial is stale here once its
        start (``datetime_start``, in UTC by the asking process's clock) is older than the grace period.
        Every call that talks to the server retries through a lost connection (see :func:`_retrying`).
        """

        def __init__(self, *args, **kwargs) -> None:
            self._outage_local = threading.local()
            super().__init__(*args, **kwargs)

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            from datetime import datetime, timedelta, timezone

            stale = super()._get_stale_trial_ids(study_id)
            grace = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
            # the column holds naive UTC (optuna 5.0)
            started_before = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=grace)
            with _create_scoped_session(self.scoped_session) as session:
                never_beat = (
                    session.query(models.TrialModel.trial_id)
                    .filter(models.TrialModel.study_id == study_id)
                    .filter(models.TrialModel.state == optuna.trial.TrialState.RUNNING)
                    .filter(~models.TrialModel.heartbeats.any())
                    .filter(models.TrialModel._datetime_start_utc < started_before)
                    .all()
                )
            return stale + [row[0] for row in never_beat if row[0] not in stale]

    for name in _DB_METHODS:
        setattr(HeartbeatRDBStorage, name, _retrying(getattr(HeartbeatRDBStorage, name)))
    return HeartbeatRDBStorage


def retry_callback(max_retry: int | None = 3):
    """Optuna's ``RetryHeartbeatStaleTrialCallback``, minus what it should not copy into the retry.

    Optuna copies the failed trial's system attributes into the retried (WAITING) trial. That would carry
    the dead trial's heartbeat timestamp (so the retry looks stale the moment it is popped) and its
    constraint values (so ``set_constraint`` on the retry is ignored); it also copies user attributes
    (the dead trial's partial results). All three are dropped here; params, distributions and the retry
    history are kept.
    """
    import copy
    import warnings

    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental

        class RetryStale(RetryHeartbeatStaleTrialCallback):
            def __call__(self, study, trial) -> None:
                trial = copy.deepcopy(trial)
                trial.system_attrs = {
                    k: v for k, v in trial.system_attrs.items()
                    if k != HEARTBEAT_ATTR and not k.startswith("constraints")
                }
                trial.user_attrs = {}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    super().__call__(study, trial)

        return RetryStale(max_retry=max_retry)


def is_journal_url(url: str) -> bool:
    return url.startswith("journal:") or (url.endswith(".log") and "://" not in url)


def open_storage(url: str, heartbeat_interval: int = 10, grace_period: int | None = None):
    """Open (creating if needed) the storage at ``url``; errors are one-line :class:`RoutespaceError`."""
    import optuna

    if not isinstance(heartbeat_interval, int) or heartbeat_interval < 1:
        raise RoutespaceError(f"heartbeat interval must be a whole number of seconds >= 1, got {heartbeat_interval!r}")
    grace = grace_period if grace_period is not None else 3 * heartbeat_interval
    if grace <= heartbeat_interval:
        raise RoutespaceError(f"heartbeat grace period ({grace} s) must be longer than the interval ({heartbeat_interval} s)")
    retry = retry_callback(max_retry=3)
    remember_secrets(url)
    shown = mask_url(url)
    if is_journal_url(url):
        from optuna.storages.journal import JournalFileBackend

        path = url[len("journal:"):] if url.startswith("journal:") else url
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise RoutespaceError("journal storage needs a file: journal:PATH, e.g. journal:out/study.log")
        try:
            with open(path, "ab"):  # fail early on a missing folder or no permission
                pass
            storage = _journal_storage_class()(JournalFileBackend(path), heartbeat_interval, grace, retry)
            storage.get_all_studies()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RoutespaceError(f"cannot open storage {shown}: {_first_line(exc)}") from None
        return storage
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    elif url.startswith("sqlite:"):
        engine_kwargs["creator"] = _sqlite_creator(url)
    elif "://" not in url:
        raise RoutespaceError(
            f"storage {shown!r} is not a URL: use sqlite:///PATH, postgresql://USER@HOST:PORT/DB or journal:PATH"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval is "experimental"
            return _rdb_storage_class()(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=retry,
            )
    except Exception as exc:  # sqlalchemy raises many types; all mean "cannot open"
        raise RoutespaceError(f"cannot open storage {shown}: {_first_line(exc)}") from None


def _sqlite_creator(url: str):
    """Connections in WAL mode with ``synchronous=NORMAL``: a commit is safe against a killed process
    (only a power cut can lose the last commits), and costs ~2 ms instead of an fsync's ~20 ms here.
    WAL needs a local file system; use PostgreSQL across machines."""
    import sqlite3

    from sqlalchemy.engine import make_url

    path = make_url(url).database or ":memory:"

    def creator():
        conn = sqlite3.connect(path, timeout=60, check_same_thread=False)
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return creator


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return mask_url(msg)[:300]


def fail_stale(study) -> None:
    """Fail RUNNING trials whose heartbeat is older than the grace period and enqueue their retries."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fail_stale_trials is experimental"
        optuna.storages.fail_stale_trials(study)


class Heartbeat:
    """Context manager: beat once now, then every interval from a thread, until exit."""

    def __init__(self, storage, trial_id: int) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        try:
            self.storage.record_heartbeat(self.trial_id)
        except Exception:  # the trial may have been finished by another worker; never kill the trial for it
            pass

    def __enter__(self) -> "Heartbeat":
        if self.interval:
            self._beat()
            self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{self.trial_id}")
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


