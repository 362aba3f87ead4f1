"""`routespace search` as users run it: separate processes, SIGKILL, resume, shared JournalFile and
PostgreSQL studies, and one-line errors for bad input. Trials use the synthetic evaluator with a
simulated training time (``--sim-steps``/``--sim-step-seconds``) so a kill lands mid-trial."""
from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import optuna
import pytest

from routespace.evaluators.cost import architecture_cost
from routespace.search.budget import cheapest_architecture
from routespace.search.storage import open_storage
from routespace.spaces.space import preset

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
TINY = preset("tiny")
BUDGET = round(architecture_cost(cheapest_architecture(TINY)).gflops * 1.35, 6)
CLI = [sys.executable, "-m", "routespace.cli.main", "search"]


def _args(out, *extra, trials=6, study="kill"):
    return [*CLI, "--preset", "tiny", "--space", "path", "--strategy", "random", "--max-gflops", str(BUDGET),
            # 2 s a trial: long enough that a trial seen mid-training is still running when the SIGKILL lands
            "--trials", str(trials), "--evaluator", "synthetic", "--sim-steps", "20", "--sim-step-seconds", "0.1",
            "--heartbeat", "1", "--grace", "2", "--study", study, "--out", str(out), "--no-progress", *extra]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def _study_exists(url, study):
    """Read-only look into the SQLite file, so polling never races the search's own schema creation."""
    import sqlite3

    path = url[len("sqlite:///"):]
    if not os.path.exists(path):
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return bool(db.execute("SELECT 1 FROM studies WHERE study_name = ?", (study,)).fetchone())
    except sqlite3.Error:
        return False


def _trials(url, study):
    if url.startswith("sqlite:///") and not _study_exists(url, study):
        raise KeyError(study)
    storage = open_storage(url, 1, 2)
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def _wait(cond, timeout=90.0, what="condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            value = cond()
        except (KeyError, ValueError):  # the study is not there yet
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _running_in(url, study, pid, min_complete=1):
    """A trial of worker ``pid`` that is mid-training, once that worker completed ``min_complete`` trials."""
    trials = _trials(url, study)
    mine = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{pid}")]
    if sum(t.state.name == "COMPLETE" for t in mine) < min_complete:
        return None
    for t in trials:
        if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{pid}") and "spec" in t.user_attrs:
            return t
    return None


def _check_final(url, study, n, killed):
    trials = _trials(url, study)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == n
    dead = [t for t in trials if t.number == killed.number][0]
    assert dead.state.name == "FAIL"
    retries = [t for t in complete if t.user_attrs.get("retry_of") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params  # the killed trial was re-run
    originals = [t.user_attrs["spec_key"] for t in complete if "duplicate_of" not in t.user_attrs]
    assert len(originals) == len(set(originals))  # no architecture trained twice
    for t in complete:
        assert t.user_attrs["gflops"] <= BUDGET
    return complete


def test_sigkilled_search_resumed_with_the_same_command(tmp_path):
    out = tmp_path / "out"
    url = f"sqlite:///{out / 'study.db'}"
    proc = subprocess.Popen(_args(out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = _wait(lambda: _running_in(url, "kill", proc.pid, 2), what="a trial mid-training")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(_args(out), env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    complete = _check_final(url, "kill", 6, killed)
    assert "trial budget reached (6 completed trials)" in done.stdout
    assert (out / "best" / "rank-1.json").exists()
    # resuming a finished study does nothing more
    again = subprocess.run(_args(out, "--resume"), env=_env(), capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert len([t for t in _trials(url, "kill") if t.state.name == "COMPLETE"]) == len(complete)


def test_workers_option_runs_worker_processes(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(_args(out, "--workers", "2", trials=8, study="pool"), env=_env(), capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    trials = _trials(f"sqlite:///{out / 'study.db'}", "pool")
    assert sum(t.state.name == "COMPLETE" for t in trials) == 8
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["worker_exit_codes"] == [0]


def _two_workers_one_killed(tmp_path, url):
    outs = [tmp_path / "a", tmp_path / "b"]
    a = subprocess.Popen(_args(outs[0], "--storage", url, trials=8, study="shared"), env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.0)
    b = subprocess.Popen(_args(outs[1], "--storage", url, trials=8, study="shared"), env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        killed = _wait(lambda: _running_in(url, "shared", a.pid, 1), what="worker A mid-trial")
        a.send_signal(signal.SIGKILL)
        a.wait()
        _, err = b.communicate(timeout=180)
        assert b.returncode == 0, err.decode()[-2000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    complete = _check_final(url, "shared", 8, killed)
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in complete}
    assert workers == {str(a.pid), str(b.pid)}  # both processes completed trials of the one study
    retry = [t for t in complete if t.user_attrs.get("retry_of") == killed.number][0]
    assert retry.user_attrs["worker"].endswith(f":{b.pid}")  # the survivor re-ran the dead worker's trial


def test_two_processes_share_a_journal_study_and_a_killed_workers_trial_is_rerun(tmp_path):
    _two_workers_one_killed(tmp_path, f"journal:{tmp_path / 'study.log'}")


# --- PostgreSQL -------------------------------------------------------------------------------------
def _initdb() -> str | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return os.path.realpath(found) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server: initdb (as the postgres user when root) into a temp dir, pg_ctl -w
    on 127.0.0.1 and a free port with trust auth; stopped and removed at the end."""
    initdb = _initdb()
    if initdb is None:
        pytest.skip("initdb not found: apt-get install -y postgresql")
    bindir = os.path.dirname(initdb)
    base = tempfile.mkdtemp(prefix="routespace-pg-")
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else ["su", "postgres", "-s", "/bin/sh", "-c"]
    data, port = os.path.join(base, "data"), _free_port()

    def run(cmd: list[str]) -> None:
        full = prefix + ([" ".join(cmd)] if prefix[:1] == ["su"] else cmd)
        subprocess.run(full, check=True, capture_output=True, timeout=120)

    run([f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"])
    run([f"{bindir}/pg_ctl", "-w", "-D", data, "-l", os.path.join(base, "log"),
         "-o", f"-p {port} -h 127.0.0.1 -k {base} -F", "start"])
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE routespace")
        yield f"postgresql://postgres@127.0.0.1:{port}/routespace"
    finally:
        subprocess.run(prefix + [f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"] if prefix[:1] != ["su"]
                       else prefix + [f"{bindir}/pg_ctl -D {data} -m immediate stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def test_postgresql_two_workers_one_killed_mid_trial(tmp_path, postgres_url):
    _two_workers_one_killed(tmp_path, postgres_url)


# --- bad input --------------------------------------------------------------------------------------
def _bad(args, capsys):
    """In-process run of the CLI entry point (the subprocess path is covered above)."""
    from routespace.cli.main import main

    assert args[:len(CLI)] == CLI
    code = main(args[len(CLI) - 1:])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("routespace: error: "), err
    return lines[0]


def test_bad_input_one_line_exit_2_and_storage_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    line = _bad(_args(out, "--storage", f"sqlite:///{tmp_path}/no/such/dir/x.db"), capsys)
    assert "cannot open storage" in line
    line = _bad(_args(out, "--storage", "postgresql://nobody@127.0.0.1:1/none"), capsys)
    assert "cannot open storage postgresql://nobody@127.0.0.1:1/none" in line
    line = _bad([*_args(out)[:-1], "--max-gflops", "0.0001", "--no-progress"], capsys)
    assert "cheapest" in line and "GFLOPs" in line
    assert not out.exists()  # nothing created for a request that cannot be met
    line = _bad([*CLI, "--strategy", "hillclimb", "--out", str(out)], capsys)
    assert "unknown strategy 'hillclimb'" in line
    # a real study, then --resume of a study that is not there: the storage is left as it was
    done = subprocess.run(_args(out, trials=2, study="real"), env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    db = out / "study.db"
    before = hashlib.sha1(db.read_bytes()).hexdigest()
    line = _bad(_args(out, "--resume", study="ghost"), capsys)
    assert "no study 'ghost'" in line and "real" in line
    assert hashlib.sha1(db.read_bytes()).hexdigest() == before
    line = _bad(_args(tmp_path / "empty", "--resume", study="ghost"), capsys)
    assert "no storage" in line and not (tmp_path / "empty" / "study.db").exists()
    # the real process: one line on stderr, exit 2, no traceback
    r = subprocess.run([*CLI, "--strategy", "hillclimb", "--out", str(out)], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
