"""Every bad input of the table (tests/bad_inputs.py) gets exit 2, one stderr line holding the expected
text, no stdout and no file written; docs/bad-inputs.md is the table rendered from the same cases."""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import pytest
import torch
from bad_inputs import ASSUMPTIONS, CASES, FIXTURES, Case, render_markdown, set_case_env
from routespace.cli.main import main
from routespace.evaluators import memory

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"
REGENERATE = "python tests/bad_inputs.py > docs/bad-inputs.md"


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``folder`` (folders as None), to prove a failed command wrote nothing."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input_gets_one_line_exit_2_and_writes_nothing(case: Case, tmp_path, monkeypatch):
    if "no-cuda" in case.assumes and torch.cuda.is_available():
        pytest.skip("assumes a machine without CUDA; this one has it")
    if "small-memory" in case.assumes:  # the refusal must not depend on how much memory this machine has
        monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 16 * 2**30)
    work = tmp_path / "work"
    work.mkdir()
    for name in case.needs:
        FIXTURES[name][1](work)
    before = _snapshot(work)
    monkeypatch.chdir(work)  # anything written to a relative path would land here, and be seen
    set_case_env(case, monkeypatch)
    argv = [a.replace("{dir}", str(work)) for a in case.argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(argv)
    stderr = err.getvalue()
    # outside pytest a warning is one more stderr line
    assert not caught, [f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught]
    assert rc == 2, f"exit {rc}; stderr: {stderr[-1000:]}"
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    assert lines[0].startswith("routespace: error: ")
    expected = case.expect.replace("{dir}", str(work))
    assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"
    assert out.getvalue() == ""
    assert _snapshot(work) == before, "a refused command changed files"
    assert not [p for p in tmp_path.iterdir() if p.name != "work"], "a refused command wrote beside its folder"


def test_cases_are_distinct_and_fixtures_exist():
    assert len({c.what for c in CASES}) == len(CASES)
    assert len({(c.argv, c.needs) for c in CASES}) == len(CASES)
    for case in CASES:
        assert set(case.needs) <= set(FIXTURES), case
        assert set(case.assumes) <= set(ASSUMPTIONS), case
    assert len(CASES) >= 18


def test_docs_table_is_generated_from_the_cases():
    text = render_markdown()
    if os.environ.get("ROUTESPACE_REGENERATE_DOCS") == "1":
        DOC.write_text(text)
    assert DOC.is_file(), f"docs/bad-inputs.md is missing: run `{REGENERATE}`"
    assert DOC.read_text() == text, (
        f"docs/bad-inputs.md is out of date with tests/bad_inputs.py: run `{REGENERATE}` "
        "(or ROUTESPACE_REGENERATE_DOCS=1 pytest tests/test_bad_inputs.py) and commit it"
    )
    for i, case in enumerate(CASES, 1):
        assert f"| {i} | {case.what} |" in text.replace("\\|", "|")
