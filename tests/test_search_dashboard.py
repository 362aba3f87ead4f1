"""optuna-dashboard on a routespace study: a tiny real search (proxy training of 2 steps), then the study
read through optuna-dashboard's own web API (its WSGI app, ``GET /api/studies/<id>``), the code that
feeds the dashboard's pages. Expected values come from Optuna's own reading of the same storage."""
from __future__ import annotations

import io
import json
import math
from wsgiref.util import setup_testing_defaults

import optuna
import pytest

pytest.importorskip("optuna_dashboard")

from routespace.cli.main import main  # noqa: E402
from routespace.evaluators.cost import architecture_cost  # noqa: E402
from routespace.search.budget import cheapest_architecture  # noqa: E402
from routespace.spaces.space import preset  # noqa: E402

# Tight enough that a random search draws over-budget paths (pruned, constraint > 0) beside feasible ones.
BUDGET = round(architecture_cost(cheapest_architecture(preset("tiny"))).gflops * 1.1, 6)
STUDY = "dash"


def _get(app, path: str) -> dict:
    """One GET through the dashboard's WSGI app, as its web server would call it."""
    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": ""}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO()
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status and status[0].startswith("200"), (path, status, body[:300])
    return json.loads(body)


@pytest.fixture(scope="module")
def study_pages(tmp_path_factory):
    """The search's storage URL, Optuna's trials, and the dashboard's study detail."""
    import optuna_dashboard

    out = tmp_path_factory.mktemp("search")
    assert main(["search", "--preset", "tiny", "--space", "path", "--strategy", "random", "--max-gflops", str(BUDGET),
                 "--trials", "2", "--proxy-steps", "2", "--proxy-batch", "2", "--proxy-val-images", "2",
                 "--study", STUDY, "--seed", "1", "--out", str(out), "--no-progress"]) == 0
    url = f"sqlite:///{out / 'study.db'}"
    trials = optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)
    app = optuna_dashboard.wsgi(url)
    listed = _get(app, "/api/studies")["study_summaries"]
    (summary,) = [s for s in listed if s["study_name"] == STUDY]
    detail = _get(app, f"/api/studies/{summary['study_id']}")
    return trials, summary, detail


def _attrs(serialized_trial: dict) -> dict[str, str]:
    return {a["key"]: a["value"] for a in serialized_trial["user_attrs"]}


def test_dashboard_reads_the_user_attributes(study_pages):
    trials, summary, detail = study_pages
    assert summary["directions"] == ["maximize"]
    by_number = {t["number"]: t for t in detail["trials"]}
    assert sorted(by_number) == [t.number for t in trials]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    rejected = [t for t in trials if t.state.name == "PRUNED"]
    assert len(complete) == 2 and rejected, [t.state.name for t in trials]
    for t in trials:
        shown = _attrs(by_number[t.number])
        assert by_number[t.number]["state"] == t.state.name.capitalize()
        keys = {"spec", "gflops", "params_m"} | ({"miou", "train_steps", "train_seconds"} if t in complete else {"rejected"})
        assert keys <= set(shown), (t.number, sorted(shown))
        for key in keys:  # the dashboard shows strings; numbers as str(value)
            value = t.user_attrs[key]
            assert shown[key] == (value if isinstance(value, str) else str(value)), key
        assert json.loads(shown["spec"])["format"] == "routespace.architecture"
    for t in complete:
        assert float(_attrs(by_number[t.number])["miou"]) == pytest.approx(t.values[0])
        assert int(_attrs(by_number[t.number])["train_steps"]) == 2
    assert {"spec", "gflops", "params_m", "miou"} <= {a["key"] for a in detail["union_user_attrs"]}
    best = max(complete, key=lambda t: t.values[0])
    assert [b["number"] for b in detail["best_trials"]] == [best.number]


def test_dashboard_shows_the_constraint_values(study_pages):
    trials, _, detail = study_pages
    by_number = {t["number"]: t for t in detail["trials"]}
    for t in trials:
        expected = t.constraints["gflops"]  # Optuna's reading: GFLOPs minus the budget
        assert math.isclose(expected, t.user_attrs["gflops"] - BUDGET, rel_tol=1e-9, abs_tol=1e-12)
        assert by_number[t.number]["constraints"] == [expected], t.number
