"""Faults of a search, each as users meet them, each checking that nothing already written is lost (every
trial completed before the fault is unchanged after it) and that the run ends with the result it would
have had: PostgreSQL restarted mid-trial (twice: a fast and a crash-like restart), SIGKILL of one of four
workers sharing a PostgreSQL study, SIGKILL of a `search --workers 2` parent (its worker must end with it),
a worker killed between ``ask`` and its first heartbeat on PostgreSQL; and a load test: four workers on one
PostgreSQL study.

Trials use the synthetic evaluator with simulated training time (sleeps: robust on a loaded machine).
``ROUTESPACE_LOAD_TRIALS=N`` sets the load test's trials (default 12, to keep CI short; the issue's figure
is 40)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest
from search_helpers import (
    BUDGET, PostgresServer, check_final, cli_env, completed_snapshot, load_trials, running_in, search_args, wait_for,
)
from test_faults import check_tree, kill_at_random_point

LOAD_TRIALS = int(os.environ.get("ROUTESPACE_LOAD_TRIALS", "12"))
PASSWORD = "faults-Pw-31"


@pytest.fixture(scope="module")
def server():
    if not PostgresServer.available():
        pytest.skip("initdb not found: apt-get install -y postgresql")
    with PostgresServer(password=PASSWORD) as pg:
        yield pg


def _start(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(args, env=cli_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}: {err[-3000:]}"
    return out


def _same_or_grown(before: dict, trials) -> None:
    """Every trial completed before the fault is still there, unchanged."""
    after = completed_snapshot(trials)
    assert {n: after.get(n) for n in before} == before


def _alive(proc: subprocess.Popen) -> bool:
    """True while ``proc`` runs; once it has ended, fail at once with its output (not after a long wait)."""
    if proc.poll() is None:
        return True
    out, err = proc.communicate()
    raise AssertionError(f"the search ended early (exit {proc.returncode}): {out[-1500:]} {err[-3000:]}")


def _no_failures_but_skips(trials) -> None:
    """FAIL only for trials given up because other workers had taken the last places (never an error)."""
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert all("skipped" in t.user_attrs and "error" not in t.user_attrs for t in failed), [t.user_attrs for t in failed]


def test_postgresql_restarted_mid_trial_loses_nothing_and_gives_the_uninterrupted_result(server, tmp_path):
    """A fast and then an immediate (crash-like) restart of the server, each while a trial trains: every
    trial completes, none fails or is retried, and the trials equal those of an uninterrupted run."""
    url = server.url()
    flags = dict(trials=4, study="restart", steps=15, step_seconds=0.2)  # 3 s trials: each restart lands inside one
    ref = _start(search_args(tmp_path / "reference", **flags))  # the same search on SQLite, untouched
    victim = _start(search_args(tmp_path / "victim", "--storage-env", "RS_STORAGE", **flags), RS_STORAGE=url)
    hit = []
    for mode, after in (("fast", 1), ("immediate", 2)):
        trial = wait_for(lambda: _alive(victim) and running_in(url, "restart", victim.pid, after), timeout=180,
                         what=f"a trial mid-training after {after} completed ({mode} restart next)")
        before = completed_snapshot(load_trials(url, "restart"))
        server.restart(mode)
        hit.append(trial.number)
        _same_or_grown(before, load_trials(url, "restart"))
        assert victim.poll() is None, victim.stderr.read()[-3000:]
    out = _finish(victim)
    assert "trial budget reached (4 completed trials)" in out
    trials = load_trials(url, "restart")
    assert [t.state.name for t in trials if t.state.name != "PRUNED"] == ["COMPLETE"] * 4  # 0 failed, 0 retried
    assert all(t.state.name == "COMPLETE" and "retry_of" not in t.user_attrs for t in trials if t.number in hit)
    _finish(ref)
    reference = load_trials(f"sqlite:///{tmp_path / 'reference' / 'study.db'}", "restart")
    assert [(t.state.name, t.params, t.values) for t in trials] == [(t.state.name, t.params, t.values) for t in reference]
    assert json.loads((tmp_path / "victim" / "summary.json").read_text())["counts"]["failed"] == 0


def test_sigkill_of_one_of_four_workers_on_one_postgresql_study(server, tmp_path):
    """Four processes (as on four machines) share a study; one is killed mid-trial. The three others retry
    its trial and end the study with exactly the trials asked for; rerunning the killed command adds none."""
    url, n = server.url(), 12
    commands = [search_args(tmp_path / f"w{i}", "--storage-env", "RS_STORAGE", trials=n, study="four", steps=10)
                for i in range(4)]

    def victim_mid_trial_after_two_completed():
        trial = running_in(url, "four", procs[0].pid, 0)
        return trial if trial and sum(t.state.name == "COMPLETE" for t in load_trials(url, "four")) >= 2 else None

    procs = []
    try:
        for cmd in commands:
            procs.append(_start(cmd, RS_STORAGE=url))
            time.sleep(0.3)
        victim = procs[0]
        killed = wait_for(victim_mid_trial_after_two_completed, timeout=180, what="worker 1 mid-trial")
        before = completed_snapshot(load_trials(url, "four"))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        for p in procs[1:]:
            _finish(p)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    trials = load_trials(url, "four")
    _same_or_grown(before, trials)
    complete = check_final(url, "four", n, killed)
    retry = [t for t in complete if t.user_attrs.get("retry_of") == killed.number][0]
    survivors = {str(p.pid) for p in procs[1:]}
    assert retry.user_attrs["worker"].rsplit(":", 1)[1] in survivors
    assert retry.values == [t for t in complete if t.user_attrs.get("spec_key") == killed.user_attrs["spec_key"]][0].values
    # the killed command, run again, finds the study done: the same result, nothing added
    again = _finish(_start(commands[0], RS_STORAGE=url))
    assert f"trial budget reached ({n} completed trials)" in again
    assert completed_snapshot(load_trials(url, "four")) == completed_snapshot(trials)


def test_search_workers_end_when_the_parent_is_killed(tmp_path):
    """`search --workers 2` SIGKILLed while both workers train: the worker process (and multiprocessing's
    helper) are gone within seconds, no file is damaged, and the same command resumes the study to exactly
    its trials, re-running the two cut short."""
    out, url = tmp_path / "out", f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    cmd = search_args(out, "--workers", "2", trials=6, study="orphans", steps=30)  # 3 s trials

    def both_training():
        running = [t for t in load_trials(url, "orphans") if t.state.name == "RUNNING" and "spec" in t.user_attrs]
        return len({t.user_attrs["worker"] for t in running}) == 2

    proc = _start(cmd)
    wait_for(both_training, timeout=180, what="both workers training")
    kill_at_random_point(proc, lambda: True, random.Random(0), 0.0, "both workers training", grace=5.0)
    trials = load_trials(url, "orphans")
    killed = [t for t in trials if t.state.name == "RUNNING"]
    assert len(killed) == 2
    before = completed_snapshot(trials)
    time.sleep(1.0)
    assert completed_snapshot(load_trials(url, "orphans")) == before  # nobody is still writing
    assert check_tree(out) == []
    _finish(_start(cmd))
    check_final(url, "orphans", 6, killed)
    _same_or_grown(before, load_trials(url, "orphans"))
    assert json.loads((out / "summary.json").read_text())["worker_exit_codes"] == [0]


def test_postgresql_trial_of_a_worker_killed_before_its_first_heartbeat_is_retried(server, tmp_path):
    from test_search_engine import _config, _never_beaten_trial_is_failed_within_grace

    _never_beaten_trial_is_failed_within_grace(_config(tmp_path, "random", trials=2).with_(
        storage=server.url(), study="never-beat"))


def test_load_four_workers_on_one_postgresql_study(server, tmp_path):
    """`search --workers 4` on one PostgreSQL study: exactly N trials complete, no architecture is trained
    twice, no trial is left running or waiting, no trial fails (N = ROUTESPACE_LOAD_TRIALS, default 12)."""
    url, n = server.url(), LOAD_TRIALS
    t0 = time.monotonic()
    out = _finish(_start(search_args(tmp_path / "out", "--storage-env", "RS_STORAGE", "--workers", "4", trials=n,
                                     study=f"load-{n}", steps=10), RS_STORAGE=url), timeout=600)
    seconds = time.monotonic() - t0
    assert f"trial budget reached ({n} completed trials)" in out
    trials = load_trials(url, f"load-{n}")
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == n
    trained = [t.user_attrs["spec_key"] for t in complete if "duplicate_of" not in t.user_attrs]
    assert len(trained) == len(set(trained))  # no architecture evaluated twice
    originals = {t.number for t in complete if "duplicate_of" not in t.user_attrs}
    assert all(t.user_attrs["duplicate_of"] in originals for t in complete if "duplicate_of" in t.user_attrs)
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    _no_failures_but_skips(trials)
    assert all(t.user_attrs["gflops"] <= BUDGET for t in complete)
    assert len({t.user_attrs["worker"] for t in complete}) >= 2  # the study really was shared
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["worker_exit_codes"] == [0, 0, 0] and summary["counts"]["complete"] == n
    per_worker = sorted(sum(t.user_attrs["worker"] == w for t in complete) for w in {t.user_attrs["worker"] for t in complete})
    print(f"load: {n} trials by 4 workers in {seconds:.1f} s: {len(trained)} trained, {n - len(trained)} duplicates, "
          f"{sum(t.state.name == 'PRUNED' for t in trials)} rejected, "
          f"{sum(t.state.name == 'FAIL' for t in trials)} given up (budget taken); completed per worker {per_worker}")


def test_lost_connection_is_retried_and_other_errors_are_not(monkeypatch):
    """The retry layer of the RDB storage, on a hand-made failure sequence: calls that fail because the
    connection was lost run again (after a reconnect) until they succeed; a failing query or a conflict
    raises at once; nested calls do not retry twice."""
    import optuna
    from sqlalchemy import exc as sa_exc

    from routespace.search import storage as st

    lost = optuna.exceptions.StorageInternalError("commit failed")
    lost.__cause__ = sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    conflict = sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
    assert st.is_connection_loss(lost) and st.is_connection_loss(sa_exc.PendingRollbackError("rollback first"))
    assert not st.is_connection_loss(conflict) and not st.is_connection_loss(ValueError("bad value"))

    class Engine:
        dialect = type("Dialect", (), {"name": "postgresql"})()
        disposed = 0

        def dispose(self):
            Engine.disposed += 1

    class Fake:
        def __init__(self, failures):
            self._outage_local, self.failures, self.calls = threading.local(), list(failures), 0
            self.engine, self.scoped_session = Engine(), type("S", (), {"remove": lambda self: None})()

        def op(self):
            self.calls += 1
            if self.failures:
                raise self.failures.pop(0)
            return "done"

        def outer(self):
            return self.op_retrying()

    Fake.op_retrying = st._retrying(Fake.op)
    Fake.outer_retrying = st._retrying(Fake.outer)
    monkeypatch.setattr(st.time, "sleep", lambda s: None)
    f = Fake([lost, lost])
    assert f.op_retrying() == "done" and f.calls == 3 and Engine.disposed == 2
    f = Fake([conflict])
    with pytest.raises(sa_exc.IntegrityError):
        f.op_retrying()
    assert f.calls == 1
    f = Fake([lost])  # the inner call of a retrying call raises; only the outer one retries
    assert f.outer_retrying() == "done" and f.calls == 2
    monkeypatch.setattr(st, "OUTAGE_SECONDS", 0.0)
    f = Fake([lost] * 5)  # an outage longer than OUTAGE_SECONDS ends the call with the error
    with pytest.raises(optuna.exceptions.StorageInternalError):
        f.op_retrying()
