"""No secret leaves the process: a search against a password-protected PostgreSQL server (scram-sha-256,
started by the test) writes the password into no file under its output folders, no study or trial
attribute (every row of every table of the database is read back), and no output (stdout and stderr,
progress bars included), whichever way the password is given: in a URL held by an environment variable
(``--storage-env``), libpq's ``PGPASSWORD``, libpq's password file, or a URL typed on the command line."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from urllib.parse import quote, quote_plus

import optuna
import pytest
from search_helpers import PostgresServer, cli_env, search_args

# ':', '@' and '/' must be percent-encoded in a URL: the masking must catch the encoded form too
PASSWORD = "rs.S3cret@pg:42/x"
FORMS = sorted({PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD), quote_plus(PASSWORD)})


@pytest.fixture(scope="module")
def server():
    if not PostgresServer.available():
        pytest.skip("initdb not found: apt-get install -y postgresql")
    with PostgresServer(password=PASSWORD, auth="scram-sha-256") as pg:
        yield pg


def leaks(text: str | bytes) -> list[str]:
    """The forms of the password found in ``text``."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "backslashreplace")
    return [f for f in FORMS if f.encode() in data]


def files_with_password(folder: Path, skip: Path) -> list[str]:
    """Files under ``folder`` (but not under ``skip``) that hold the password, with the forms found."""
    return [f"{p}: {leaks(p.read_bytes())}" for p in sorted(folder.rglob("*"))
            if p.is_file() and skip not in p.parents and leaks(p.read_bytes())]


def database_dump(server: PostgresServer) -> str:
    """Every row of every table of the study database, as JSON text (studies, trials, attributes, heartbeats)."""
    import psycopg

    with psycopg.connect(host=server.base, port=server.port, user="postgres", dbname="routespace") as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        rows = [f"{t}: {r[0]}" for t in tables
                for r in conn.execute(f'SELECT row_to_json(x)::text FROM "{t}" AS x')]  # noqa: S608 (names from pg_tables)
    return "\n".join(rows)


class _Search:
    """A search with the progress bar on (it goes to stderr), started at once; ``proxy``: the real proxy
    evaluator at its smallest instead of the synthetic one. ``result()`` waits for it and checks the exit
    status. (Searches that do not depend on each other run side by side: each costs mostly its imports.)"""

    def __init__(self, out: Path, *flags: str, env: dict | None = None, trials: int = 3, study: str = "secret",
                 expect: int = 0, proxy: bool = False) -> None:
        args = [a for a in search_args(out, *flags, trials=trials, study=study, steps=2) if a != "--no-progress"]
        if proxy:
            args += ["--evaluator", "proxy", "--proxy-steps", "1", "--proxy-batch", "1", "--proxy-val-images", "2"]
        self.expect = expect
        self.proc = subprocess.Popen(args, env=cli_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def result(self) -> subprocess.CompletedProcess:
        try:
            stdout, stderr = self.proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        r = subprocess.CompletedProcess(self.proc.args, self.proc.returncode, stdout, stderr)
        assert r.returncode == self.expect, r.stderr[-3000:]
        return r


def _search(out: Path, *flags: str, **kwargs) -> subprocess.CompletedProcess:
    """A search run to its end (see :class:`_Search`)."""
    return _Search(out, *flags, **kwargs).result()


def test_password_is_in_no_file_attribute_or_output(server, tmp_path):
    assert leaks(server.url()) and leaks(PASSWORD)  # the check can fail: the URL given carries the password
    home = tmp_path / "home"  # the user's own secrets: the environment and libpq's password file
    home.mkdir()
    pgpass = home / "pgpass"
    escaped = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
    pgpass.write_text(f"127.0.0.1:{server.port}:routespace:searcher:{escaped}\n")
    pgpass.chmod(0o600)
    bare = server.url(with_password=False)
    # Beside the chain below, the searches that depend on no other: refused, a database that does not exist
    # (one-line error), started now; and one typed on the command line (in shell history then, but routespace
    # itself writes it nowhere), another study with the real proxy, started once the first search has made the
    # database's tables (two processes making them at once could collide)
    wrong = _Search(tmp_path / "wrong", "--storage-env", "RS_STORAGE", expect=2,
                    env={"RS_STORAGE": server.url().replace("routespace", "nosuchdb")})
    inline = None
    try:
        # one study, each search resuming the one before it, in order
        # the URL, password included, in an environment variable; two worker processes
        chain = [_search(tmp_path / "env", "--storage-env", "RS_STORAGE", "--workers", "2", env={"RS_STORAGE": server.url()})]
        inline = _Search(tmp_path / "inline", "--storage", server.url(), study="inline", trials=2, proxy=True)
        chain += [
            # libpq's PGPASSWORD with a URL without password: --resume reads the stored (masked) config
            _search(tmp_path / "pgpassword", "--storage", bare, "--resume", env={"PGPASSWORD": PASSWORD}, trials=4),
            # libpq's password file
            _search(tmp_path / "pgpass", "--storage", bare, "--resume", env={"PGPASSFILE": str(pgpass)}, trials=5),
        ]
        runs = [*chain, inline.result(), wrong.result()]
    finally:
        for s in (inline, wrong):
            if s is not None and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
    assert "cannot open storage postgresql://searcher:***@127.0.0.1" in runs[-1].stderr
    assert not (tmp_path / "wrong").exists()
    for r in runs:
        assert leaks(r.stdout) == [] and leaks(r.stderr) == [], (r.args, r.stdout, r.stderr)
    assert "search" in runs[0].stderr and "trial" in runs[0].stderr  # the progress bar was there, and read
    # the search really happened with that server: 5 + 2 trials completed
    storage = optuna.storages.RDBStorage(server.url().replace("postgresql://", "postgresql+psycopg://"))
    counts = {s.study_name: sum(t.state.name == "COMPLETE" for t in optuna.load_study(study_name=s.study_name,
                                                                                       storage=storage).trials)
              for s in storage.get_all_studies()}
    assert counts == {"secret": 5, "inline": 2}
    # files: nothing under any output folder (summary.json, trials.csv, specs) holds the password
    assert files_with_password(tmp_path, skip=home) == []
    assert len(list(tmp_path.rglob("*.json"))) >= 8  # summaries and specs of four searches were looked at
    masked = f"postgresql://searcher:***@127.0.0.1:{server.port}/routespace"
    assert json.loads((tmp_path / "env" / "summary.json").read_text())["config"]["storage"] == masked
    assert json.loads((tmp_path / "inline" / "summary.json").read_text())["config"]["storage"] == masked
    # the database: study and trial attributes (user and system), heartbeats, everything
    dump = database_dump(server)
    assert "trial_user_attributes" in dump and masked in dump  # the stored config is there, masked
    assert leaks(dump) == []
    storage.remove_session()


def test_refused_storage_settings_never_show_the_secret(tmp_path, monkeypatch, capsys):
    """The bad-input cases about the storage (tests/bad_inputs.py) carry a password in the variable or the
    flag; the one-line error shows it masked or not at all."""
    from bad_inputs import CASES, set_case_env

    from routespace.cli.main import main

    cases = [c for c in CASES if "hunter22" in repr(c.argv) + repr(c.env)]
    assert len(cases) >= 3
    for case in cases:
        set_case_env(case, monkeypatch)
        assert main([a.replace("{dir}", str(tmp_path)) for a in case.argv]) == 2
        captured = capsys.readouterr()
        assert "hunter22" not in captured.err + captured.out and captured.err.startswith("routespace: error: ")
