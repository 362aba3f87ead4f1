"""`routespace search` as users run it: separate processes, SIGKILL, resume, shared JournalFile and
PostgreSQL studies, and one-line errors for bad input. Trials use the synthetic evaluator with a
simulated training time (``--sim-steps``/``--sim-step-seconds``) so a kill lands mid-trial."""
from __future__ import annotations

import hashlib
import signal
import subprocess
import time

import pytest
from search_helpers import CLI, PostgresServer, check_final, cli_env, load_trials, running_in, search_args, wait_for


def test_sigkilled_search_resumed_with_the_same_command(tmp_path):
    out = tmp_path / "out"
    url = f"sqlite:///{out / 'study.db'}"
    proc = subprocess.Popen(search_args(out), env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = wait_for(lambda: running_in(url, "kill", proc.pid, 2), what="a trial mid-training")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(search_args(out), env=cli_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    complete = check_final(url, "kill", 6, killed)
    assert "trial budget reached (6 completed trials)" in done.stdout
    assert (out / "best" / "rank-1.json").exists()
    # resuming a finished study does nothing more
    again = subprocess.run(search_args(out, "--resume"), env=cli_env(), capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert len([t for t in load_trials(url, "kill") if t.state.name == "COMPLETE"]) == len(complete)


def test_workers_option_runs_worker_processes(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(search_args(out, "--workers", "2", trials=8, study="pool"), env=cli_env(), capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    trials = load_trials(f"sqlite:///{out / 'study.db'}", "pool")
    assert sum(t.state.name == "COMPLETE" for t in trials) == 8
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["worker_exit_codes"] == [0]


def _two_workers_one_killed(tmp_path, url):
    outs = [tmp_path / "a", tmp_path / "b"]
    a = subprocess.Popen(search_args(outs[0], "--storage", url, trials=8, study="shared"), env=cli_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.0)
    b = subprocess.Popen(search_args(outs[1], "--storage", url, trials=8, study="shared"), env=cli_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        killed = wait_for(lambda: running_in(url, "shared", a.pid, 1), what="worker A mid-trial")
        a.send_signal(signal.SIGKILL)
        a.wait()
        _, err = b.communicate(timeout=180)
        assert b.returncode == 0, err.decode()[-2000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    complete = check_final(url, "shared", 8, killed)
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in complete}
    assert workers == {str(a.pid), str(b.pid)}  # both processes completed trials of the one study
    retry = [t for t in complete if t.user_attrs.get("retry_of") == killed.number][0]
    assert retry.user_attrs["worker"].endswith(f":{b.pid}")  # the survivor re-ran the dead worker's trial


def test_two_processes_share_a_journal_study_and_a_killed_workers_trial_is_rerun(tmp_path):
    _two_workers_one_killed(tmp_path, f"journal:{tmp_path / 'study.log'}")


# --- PostgreSQL -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server with trust auth (search_helpers.PostgresServer), for this module."""
    if not PostgresServer.available():
        pytest.skip("initdb not found: apt-get install -y postgresql")
    with PostgresServer() as server:
        yield server.url()


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
    line = _bad(search_args(out, "--storage", f"sqlite:///{tmp_path}/no/such/dir/x.db"), capsys)
    assert "cannot open storage" in line
    line = _bad(search_args(out, "--storage", "postgresql://nobody@127.0.0.1:1/none"), capsys)
    assert "cannot open storage postgresql://nobody@127.0.0.1:1/none" in line
    line = _bad([*search_args(out)[:-1], "--max-gflops", "0.0001", "--no-progress"], capsys)
    assert "cheapest" in line and "GFLOPs" in line
    assert not out.exists()  # nothing created for a request that cannot be met
    line = _bad([*CLI, "--strategy", "hillclimb", "--out", str(out)], capsys)
    assert "unknown strategy 'hillclimb'" in line
    # a real study, then --resume of a study that is not there: the storage is left as it was
    done = subprocess.run(search_args(out, trials=2, study="real"), env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    db = out / "study.db"
    before = hashlib.sha1(db.read_bytes()).hexdigest()
    line = _bad(search_args(out, "--resume", study="ghost"), capsys)
    assert "no study 'ghost'" in line and "real" in line
    assert hashlib.sha1(db.read_bytes()).hexdigest() == before
    line = _bad(search_args(tmp_path / "empty", "--resume", study="ghost"), capsys)
    assert "no storage" in line and not (tmp_path / "empty" / "study.db").exists()
    # the real process: one line on stderr, exit 2, no traceback
    r = subprocess.run([*CLI, "--strategy", "hillclimb", "--out", str(out)], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
