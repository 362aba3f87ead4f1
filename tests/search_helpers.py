"""Shared helpers of the search tests that run `routespace search` as processes: the command line, polling
a study from outside, and a throwaway PostgreSQL server (optionally password-protected) that a test may
restart."""
from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from routespace.evaluators.cost import architecture_cost
from routespace.search.budget import cheapest_architecture
from routespace.search.storage import open_storage
from routespace.spaces.space import preset

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
TINY = preset("tiny")
BUDGET = round(architecture_cost(cheapest_architecture(TINY)).gflops * 1.35, 6)
CLI = [sys.executable, "-m", "routespace.cli.main", "search"]


def search_args(out, *extra, trials: int = 6, study: str = "kill", steps: int = 20, step_seconds: float = 0.1) -> list[str]:
    """A random search of the tiny space with the synthetic evaluator: ``steps * step_seconds`` of simulated
    training a trial (2 s by default: a trial seen mid-training is still running when a fault lands),
    heartbeat 1 s, grace 2 s."""
    return [*CLI, "--preset", "tiny", "--space", "path", "--strategy", "random", "--max-gflops", str(BUDGET),
            "--trials", str(trials), "--evaluator", "synthetic", "--sim-steps", str(steps),
            "--sim-step-seconds", str(step_seconds), "--heartbeat", "1", "--grace", "2", "--study", study,
            "--out", str(out), "--no-progress", *extra]


def cli_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)


def study_exists(url: str, study: str) -> bool:
    """Read-only look into a SQLite file, so polling never races the search's own schema creation."""
    import sqlite3

    path = url[len("sqlite:///"):]
    if not os.path.exists(path):
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return bool(db.execute("SELECT 1 FROM studies WHERE study_name = ?", (study,)).fetchone())
    except sqlite3.Error:
        return False


_storages: dict[str, Any] = {}


def load_trials(url: str, study: str) -> list:
    """The trials of ``study`` at ``url``; KeyError while it does not exist. One storage per URL is kept
    (polling a server must not open a connection pool per look)."""
    if url.startswith("sqlite:///") and not study_exists(url, study):
        raise KeyError(study)
    if url not in _storages:
        _storages[url] = open_storage(url, 1, 2)
    return optuna.load_study(study_name=study, storage=_storages[url]).get_trials(deepcopy=False)


def wait_for(cond: Callable[[], Any], timeout: float = 90.0, what: str = "condition", poll: float = 0.2) -> Any:
    """Poll ``cond`` until it returns something true; generous by default (the box may be loaded)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            value = cond()
        except (KeyError, ValueError):  # the study is not there yet
            value = None
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def running_in(url: str, study: str, pid: int, min_complete: int = 1):
    """A trial of worker ``pid`` that is mid-training, once that worker completed ``min_complete`` trials."""
    trials = load_trials(url, study)
    mine = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{pid}")]
    if sum(t.state.name == "COMPLETE" for t in mine) < min_complete:
        return None
    for t in mine:
        if t.state.name == "RUNNING" and "spec" in t.user_attrs and "miou" not in t.user_attrs:
            return t
    return None


def check_final(url: str, study: str, n: int, killed) -> list:
    """Exactly ``n`` completed trials, the killed one(s) failed and re-run once with their parameters, no
    architecture trained twice, nothing over budget, nothing left running or waiting."""
    trials = load_trials(url, study)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == n
    for k in killed if isinstance(killed, list) else [killed]:
        dead = [t for t in trials if t.number == k.number][0]
        assert dead.state.name == "FAIL"
        retries = [t for t in complete if t.user_attrs.get("retry_of") == k.number]
        assert len(retries) == 1 and retries[0].params == k.params  # the killed trial was re-run
    originals = [t.user_attrs["spec_key"] for t in complete if "duplicate_of" not in t.user_attrs]
    assert len(originals) == len(set(originals))  # no architecture trained twice
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    for t in complete:
        assert t.user_attrs["gflops"] <= BUDGET
    return complete


def completed_snapshot(trials) -> dict[int, tuple]:
    """What a completed trial holds (params, values, user attributes), by number: compared before and after
    a fault to show that nothing already written was lost or changed."""
    return {t.number: (t.params, t.values, dict(t.user_attrs)) for t in trials if t.state.name == "COMPLETE"}


# --- PostgreSQL -------------------------------------------------------------------------------------------
def _initdb() -> str | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return os.path.realpath(found) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_dir() -> str | None:
    """/dev/shm where it has room to spare (a server's files there cost no disk writes, and removing them
    is instant; on disk that took ~4 s after a test); else the usual temp folder."""
    try:
        return "/dev/shm" if shutil.disk_usage("/dev/shm").free > 2**30 and os.access("/dev/shm", os.W_OK) else None
    except OSError:
        return None


class PostgresServer:
    """A throwaway PostgreSQL server: initdb (as the postgres user when root) into a temp dir, ``pg_ctl -w``
    on 127.0.0.1 and a free port, database ``routespace``. Without ``password``: trust auth, user postgres.
    With it: TCP connections need a password (``auth`` scram-sha-256 or md5 in pg_hba.conf) and the database
    belongs to role ``searcher`` with that password; setup goes through the Unix socket (trust).

    ``available()`` says whether the binaries are installed; use as a context manager (stopped and removed
    at exit); ``restart()`` restarts the server mid-test."""

    def __init__(self, password: str | None = None, auth: str = "scram-sha-256") -> None:
        self.password, self.auth = password, auth
        self.initdb = _initdb()
        self.base = self.data = ""
        self.port = 0
        self.prefix: list[str] = []

    @staticmethod
    def available() -> bool:
        return _initdb() is not None

    @property
    def user(self) -> str:
        return "searcher" if self.password else "postgres"

    def url(self, with_password: bool = True) -> str:
        from urllib.parse import quote

        secret = f":{quote(self.password, safe='')}" if self.password and with_password else ""
        return f"postgresql://{self.user}{secret}@127.0.0.1:{self.port}/routespace"

    def _run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        full = self.prefix + ([shlex.join(cmd)] if self.prefix[:1] == ["su"] else cmd)
        return subprocess.run(full, check=check, capture_output=True, timeout=120)

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        # -l: the server's output goes to a file, never to the pipe this call reads (it would never close)
        self._run([f"{os.path.dirname(self.initdb)}/pg_ctl", "-w", "-D", self.data, "-l", os.path.join(self.base, "log"),
                   *args], check=check)

    def __enter__(self) -> "PostgresServer":
        assert self.initdb is not None, "initdb not found: apt-get install -y postgresql"
        bindir = os.path.dirname(self.initdb)
        self.base = tempfile.mkdtemp(prefix="routespace-pg-", dir=_memory_dir())
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self.prefix = (["runuser", "-u", "postgres", "--"] if shutil.which("runuser")
                           else ["su", "postgres", "-s", "/bin/sh", "-c"])
        self.data, self.port = os.path.join(self.base, "data"), _free_port()
        auth = ["-A", "trust"]
        if self.password:
            pwfile = os.path.join(self.base, "superuser-password")
            with open(pwfile, "w") as fh:
                fh.write(os.urandom(12).hex() + "\n")  # the superuser's, never used over TCP
            if self.prefix:
                shutil.chown(pwfile, "postgres")
            auth = ["--auth-local=trust", f"--auth-host={self.auth}", f"--pwfile={pwfile}"]
        self._run([f"{bindir}/initdb", "-D", self.data, *auth, "-U", "postgres", "--no-sync"])
        self._pg_ctl("-o", f"-p {self.port} -h 127.0.0.1 -k {self.base} -F", "start")
        try:
            self._setup()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _setup(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=self.base, port=self.port, user="postgres", dbname="postgres", autocommit=True) as conn:
            if self.password:
                conn.execute(sql.SQL("SET password_encryption = {}").format(
                    sql.Literal("md5" if self.auth == "md5" else "scram-sha-256")))
                conn.execute(sql.SQL("CREATE ROLE searcher LOGIN PASSWORD {}").format(sql.Literal(self.password)))
                conn.execute("CREATE DATABASE routespace OWNER searcher")
            else:
                conn.execute("CREATE DATABASE routespace")

    def restart(self, mode: str = "fast") -> None:
        """Stop (``fast``: clients disconnected; ``immediate``: as after a crash) and start again."""
        self._pg_ctl("-m", mode, "restart")

    def __exit__(self, *exc) -> None:
        if self.data:
            self._pg_ctl("-m", "immediate", "stop", check=False)
        shutil.rmtree(self.base, ignore_errors=True)
