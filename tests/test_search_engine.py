"""The search engine in-process: contract over every registered strategy, budgets, de-duplication,
stale-trial recovery on SQLite and JournalFile, resume checks. A cheap injected evaluator keeps it fast."""
from __future__ import annotations

import json
import time
import warnings

import optuna
import pytest

from routespace.evaluators.cost import architecture_cost
from routespace.evaluators.proxy import EvalResult, synthetic_score
from routespace.search.budget import ArchBudget, SearchBudget, cheapest_architecture
from routespace.search.config import SearchConfig
from routespace.search.engine import SearchSession, open_study
from routespace.search.export import pareto_front
from routespace.search.run import run_search
from routespace.search.storage import fail_stale, open_storage
from routespace.search.strategy import STRATEGIES
from routespace.spaces.architecture import Architecture, load_architecture
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.space import preset

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
TINY = preset("tiny")
CHEAPEST = architecture_cost(cheapest_architecture(TINY)).gflops
BUDGET = round(CHEAPEST * 1.35, 6)  # admits a fraction of the space, so rejections happen


class SpyEvaluator:
    """Records every architecture it is asked to train; score = the synthetic closed form."""

    steps_per_trial = 3

    def __init__(self) -> None:
        self.seen: list[Architecture] = []

    def __call__(self, arch, seed=0):
        self.seen.append(arch)
        return EvalResult(synthetic_score(arch), 3, 24, 0.001)


def _config(tmp_path, strategy, encoding="path", trials=4, **kw):
    options = {"search_steps": 1, "batch_size": 2} if strategy == "nni-darts" else {}
    options.update(kw.pop("strategy_options", {}))
    return SearchConfig(space=TINY, encoding=encoding, strategy=strategy, strategy_options=options,
                        arch_budget=ArchBudget(max_gflops=BUDGET), search_budget=SearchBudget(trials=trials),
                        evaluator={"kind": "synthetic"}, storage=f"sqlite:///{tmp_path / 'study.db'}",
                        heartbeat_interval=1, grace_period=2, **kw)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("encoding", ["path", "subgraph"])
def test_contract_every_strategy_gives_valid_architectures_within_budget(tmp_path, strategy, encoding):
    spy = SpyEvaluator()
    outcome = run_search(_config(tmp_path, strategy, encoding), tmp_path / "out", spy)
    study = optuna.load_study(study_name=f"tiny-{encoding}-{strategy}", storage=f"sqlite:///{tmp_path / 'study.db'}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4, outcome.stop_reason
    for t in study.trials:
        arch = Architecture.from_json(t.user_attrs["spec"])
        gflops = architecture_cost(arch).gflops  # independent recomputation
        assert abs(gflops - t.user_attrs["gflops"]) < 1e-12
        if t.state.name == "COMPLETE":
            assert gflops <= BUDGET
            for key in ("spec", "gflops", "params_m", "miou", "train_steps", "train_seconds"):
                assert key in t.user_attrs
        else:
            assert t.state.name == "PRUNED" and gflops > BUDGET and "miou" not in t.user_attrs
            assert t.system_attrs["constraints:gflops"] > 0
    assert all(architecture_cost(a).gflops <= BUDGET for a in spy.seen)  # nothing over budget was trained
    assert len(set(spy.seen)) == len(spy.seen)  # nothing trained twice
    folder = "pareto" if STRATEGIES[strategy].endswith("NSGA2Strategy") else "best"
    files = sorted((tmp_path / "out" / folder).glob("*.json"))
    assert files
    for f in files:
        assert architecture_cost(load_architecture(str(f))).gflops <= BUDGET
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"]["complete"] == 4


@pytest.fixture(scope="module")
def tiny_supernet(tmp_path_factory):
    """A uniform-sampling supernet of the tiny space trained for one step (a valid run), and two one-shot
    evaluators loaded from it: one for the searches, one to re-score their trials (loading a run is the slow part)."""
    from routespace.cli.main import main
    from routespace.search.dynamic.oneshot import OneShotEvaluator

    run = tmp_path_factory.mktemp("supernet") / "sup"
    assert main(["train", "--out", str(run), "--preset", "tiny", "--steps", "1", "--batch-size", "2", "--size", "32x32",
                 "--sampling", "uniform", "--threads", "1", "--no-tensorboard"]) == 0
    load = lambda: OneShotEvaluator.from_run(run, calibration_batches=1, batch_size=2, val_images=2)  # noqa: E731
    return run, load(), load()


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("evaluator", ["proxy", "oneshot"])
def test_contract_every_strategy_with_both_real_evaluators(tmp_path, strategy, evaluator, tiny_supernet):
    """Each strategy drives a real evaluator: a 1-step proxy training (built from the config, as a worker builds
    it), or one-shot scoring through a supernet run. Every completed trial is within budget and records what its
    evaluator did; a one-shot score is reproduced by another evaluator loaded from the same run."""
    run, search_evaluator, fresh = tiny_supernet
    spec = ({"kind": "proxy", "data": "synthetic", "steps": 1, "batch_size": 2, "val_images": 2, "size": [32, 32]}
            if evaluator == "proxy" else
            {"kind": "oneshot", "supernet": str(run), "calibration_batches": 1, "batch_size": 2, "val_images": 2})
    options = {"population_size": 2} if strategy in ("evolution", "nsga2", "nni-evolution") else {}
    config = _config(tmp_path, strategy, trials=3, strategy_options=options).with_(evaluator=spec)
    run_search(config, tmp_path / "out", search_evaluator if evaluator == "oneshot" else None)
    study = optuna.load_study(study_name=f"tiny-path-{strategy}", storage=config.storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    for t in complete:
        arch = Architecture.from_json(t.user_attrs["spec"])
        assert architecture_cost(arch).gflops <= BUDGET and 0 <= t.user_attrs["miou"] <= 1
        if "duplicate_of" in t.user_attrs:
            continue
        if evaluator == "proxy":
            assert t.user_attrs["train_steps"] == 1 and t.user_attrs["train_images"] == 2
        else:
            assert t.user_attrs["train_steps"] == 0 and t.user_attrs["evaluator"]["evaluator"] == "oneshot"
            assert t.user_attrs["miou"] == fresh(arch).miou


def test_duplicates_are_not_trained_again(tmp_path):
    """A sampler that always proposes the same path: trained once, the rest copy its result."""
    config = _config(tmp_path, "random", trials=3)
    study, storage = open_study(config)
    spy = SpyEvaluator()
    session = SearchSession(config, study, storage, spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixed = optuna.samplers.PartialFixedSampler({f"move_{l}": 0 for l in range(1, 9)}, optuna.samplers.RandomSampler(0))
    session.optimize(fixed)
    trials = study.get_trials()
    assert len(spy.seen) == 1
    assert [t.user_attrs.get("duplicate_of") for t in trials] == [None, 0, 0]
    assert [t.user_attrs["train_steps"] for t in trials] == [3, 0, 0]
    assert len({t.value for t in trials}) == 1


def test_tpe_learns_from_rejections(tmp_path):
    """Rejected candidates carry positive constraint values that TPE reads (infeasible ranked last)."""
    config = _config(tmp_path, "tpe", encoding="subgraph", trials=6)
    run_search(config, tmp_path / "out", SpyEvaluator())
    study = optuna.load_study(study_name="tiny-subgraph-tpe", storage=config.storage)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned and all(t.constraints["gflops"] > 0 and t.user_attrs["rejected"].startswith("over budget") for t in pruned)
    feasible = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert all(t.constraints["gflops"] <= 0 for t in feasible)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_stale_trial_is_failed_and_its_params_rerun(tmp_path, kind):
    """A RUNNING trial whose worker died (no heartbeat) is failed after the grace period and re-run."""
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:{tmp_path / 's.log'}"
    config = _config(tmp_path, "random", trials=2).with_(storage=url)
    study, storage = open_study(config)
    dead = study.ask()  # a worker that asked, drew its params, beat once, then was killed
    arch = config.make_encoding().suggest(dead)
    storage.record_heartbeat(dead._trial_id)
    time.sleep(config.grace_period + 1.2)
    spy = SpyEvaluator()
    session = SearchSession(config, study, storage, spy)
    session.optimize(optuna.samplers.RandomSampler(5))
    trials = study.get_trials()
    assert trials[0].state.name == "FAIL"
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == dead.params
    assert spy.seen[0] == arch  # the retry ran first, with the dead trial's architecture
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2


def test_retry_callback_drops_heartbeat_constraints_and_results(tmp_path):
    """Optuna's retry callback copies system and user attributes into the retry; ours keeps params only."""
    from routespace.search.storage import HEARTBEAT_ATTR, retry_callback

    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path / 'r.log'}", 1))
    t = study.ask()
    t.suggest_categorical("move_1", [-1, 0, 1])
    t.set_constraint("gflops", 0.5)
    t.set_user_attr("miou", 0.3)
    study._storage.set_trial_system_attr(t._trial_id, HEARTBEAT_ATTR, 1.0)
    study.tell(t, state=optuna.trial.TrialState.FAIL)
    retry_callback()(study, study.get_trials()[0])
    waiting = study.get_trials()[1]
    assert waiting.state.name == "WAITING" and waiting.params == study.get_trials()[0].params
    assert waiting.system_attrs["failed_trial"] == 0
    assert HEARTBEAT_ATTR not in waiting.system_attrs and not waiting.constraints and not waiting.user_attrs


def test_fresh_heartbeat_is_not_stale(tmp_path):
    config = _config(tmp_path, "random").with_(storage=f"journal:{tmp_path / 'j.log'}")
    study, storage = open_study(config)
    t = study.ask()
    storage.record_heartbeat(t._trial_id)
    fail_stale(study)
    assert study.get_trials()[0].state.name == "RUNNING"


def test_resume_checks(tmp_path):
    config = _config(tmp_path, "random", trials=2)
    with pytest.raises(RoutespaceError, match="no storage"):
        open_study(config, resume=True)
    run_search(config, tmp_path / "out", SpyEvaluator())
    with pytest.raises(RoutespaceError, match="no study 'other'"):
        open_study(config.with_(study="other"), resume=True)
    with pytest.raises(RoutespaceError, match="other settings"):
        open_study(config.with_(seed=7))
    # the same settings continue the study; a larger --trials extends it
    outcome = run_search(config.with_(search_budget=SearchBudget(trials=3)), tmp_path / "out", SpyEvaluator(), resume=True)
    assert outcome.summary["counts"]["complete"] == 3


def test_bad_storage_urls_are_one_line_errors(tmp_path):
    for url in (f"sqlite:///{tmp_path}/missing/dir/x.db", f"journal:{tmp_path}/missing/x.log", "nosuchscheme",
                "postgresql://nobody@127.0.0.1:1/db"):
        with pytest.raises(RoutespaceError, match="storage") as err:
            open_storage(url, 1)
        assert "\n" not in str(err.value)
    (tmp_path / "notadb.db").write_text("hello, not a database\n" * 10)
    before = (tmp_path / "notadb.db").read_bytes()
    with pytest.raises(RoutespaceError, match="cannot open storage"):
        open_storage(f"sqlite:///{tmp_path / 'notadb.db'}", 1)
    assert (tmp_path / "notadb.db").read_bytes() == before


def test_pareto_front_known_answer():
    rec = lambda n, m, g: {"number": n, "state": "COMPLETE", "miou": m, "gflops": g, "duplicate_of": None}  # noqa: E731
    records = [rec(0, 0.5, 1.0), rec(1, 0.6, 2.0), rec(2, 0.55, 2.5), rec(3, 0.7, 3.0), rec(4, 0.4, 0.5)]
    assert [r["number"] for r in pareto_front(records)] == [4, 0, 1, 3]


def test_nni_evolution_resumes_its_population_from_the_study(tmp_path):
    """A resumed NNI search rebuilds population and de-dup history from the study: no proposal repeats."""
    from routespace.search.nni_adapter import NNIEvolutionStrategy

    config = _config(tmp_path, "nni-evolution", encoding="subgraph", trials=4,
                     strategy_options={"population_size": 3})
    run_search(config, tmp_path / "out", SpyEvaluator())
    study, storage = open_study(config)
    session = SearchSession(config, study, storage, SpyEvaluator())
    state = NNIEvolutionStrategy._state_from_study(session, 3, __import__("numpy"))
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert [ind.y for ind in state["population"]] == [t.user_attrs["miou"] for t in done][-3:]
    assert len(state["dedup_history"]) == len({json.dumps(t.params, sort_keys=True) for t in study.get_trials()})
    run_search(config.with_(search_budget=SearchBudget(trials=7)), tmp_path / "out", SpyEvaluator(), resume=True)
    params = [json.dumps(t.params, sort_keys=True) for t in study.get_trials() if t.state.name != "FAIL"]
    assert len(params) == len(set(params))  # NNI never proposed a sample twice across the resume
    assert sum(t.state.name == "COMPLETE" for t in study.get_trials()) == 7


def test_real_proxy_training_a_few_steps(tmp_path):
    """The real proxy: a handful of training steps; seeded (same result twice) and its compute recorded."""
    config = _config(tmp_path, "random", trials=2).with_(
        evaluator={"kind": "proxy", "steps": 3, "batch_size": 2, "val_images": 4})
    run_search(config, tmp_path / "out")
    study = optuna.load_study(study_name="tiny-path-random", storage=config.storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 2
    for t in done:
        u = t.user_attrs
        assert u["train_steps"] == 3 and u["train_images"] == 6 and u["train_seconds"] > 0
        assert 0.0 <= u["miou"] <= 1.0 and u["evaluator"]["evaluator"] == "proxy"
    from routespace.evaluators.proxy import ProxyConfig, ProxyEvaluator

    arch = Architecture.from_json(done[0].user_attrs["spec"])
    again = ProxyEvaluator(ProxyConfig(steps=3, batch_size=2, val_images=4))(arch, seed=0)
    assert again.miou == done[0].user_attrs["miou"]


def test_training_step_and_time_budgets_stop_the_search(tmp_path):
    spy = SpyEvaluator()  # 3 steps per trial
    config = _config(tmp_path, "random", trials=50).with_(search_budget=SearchBudget(trials=50, max_train_steps=7))
    outcome = run_search(config, tmp_path / "out", spy)
    assert len(spy.seen) == 2 and outcome.summary["train_steps_total"] == 6  # a third would need 9 > 7
    assert "training-step budget" in outcome.stop_reason
    config = _config(tmp_path, "random", trials=50).with_(
        study="timed", search_budget=SearchBudget(trials=50, timeout_s=0.05))
    outcome = run_search(config, tmp_path / "out2", SpyEvaluator())
    assert "time budget" in outcome.stop_reason and outcome.summary["counts"]["complete"] < 50


# --- secrets and the ask-before-first-heartbeat gap ---------------------------------------------------------
@pytest.mark.parametrize("text, shown", [
    ("postgresql://searcher:s3cr%40t@db:5432/rs", "postgresql://searcher:***@db:5432/rs"),
    ("postgresql://searcher:pa@ss@db/rs", "postgresql://searcher:***@db/rs"),  # a stray '@' hides the rest
    ("postgresql+psycopg://u:p/w@db/rs?sslmode=require", "postgresql+psycopg://u:***@db/rs?sslmode=require"),
    ("postgresql://u@db/rs?password=hunter22&sslmode=require", "postgresql://u@db/rs?password=***&sslmode=require"),
    ("host=db user=u password=hunter22 dbname=rs", "host=db user=u password=*** dbname=rs"),
    ("cannot open storage 'mysql://root:toor@localhost/x': refused", "cannot open storage 'mysql://root:***@localhost/x': refused"),
    ("postgresql://u@db:5432/rs", "postgresql://u@db:5432/rs"),  # nothing secret: unchanged
    ("postgresql://db:5432/rs", "postgresql://db:5432/rs"),
    ("sqlite:////tmp/out/study.db", "sqlite:////tmp/out/study.db"),
    ("journal:runs/a:b/study.log", "journal:runs/a:b/study.log"),
])
def test_mask_url(text, shown):
    from routespace.search.storage import mask_url

    assert mask_url(text) == shown


def test_a_remembered_password_is_masked_outside_urls_too():
    from routespace.search.storage import mask_url, remember_secrets

    remember_secrets("postgresql://u:Zq%2Fx%40secret9@db/rs")
    assert mask_url("driver said: bad password Zq/x@secret9 (Zq%2Fx%40secret9)") == "driver said: bad password *** (***)"


def test_stored_and_written_config_holds_the_masked_url(tmp_path):
    config = _config(tmp_path, "random").with_(storage="postgresql://searcher:hunter22@db:5432/rs")
    assert config.to_dict()["storage"] == "postgresql://searcher:***@db:5432/rs"
    assert config.to_dict(mask_secrets=False)["storage"] == config.storage  # for this machine's workers only
    assert "hunter22" not in repr(config)
    assert SearchConfig.from_dict(config.to_dict(mask_secrets=False)) == config


def test_a_study_stored_with_a_clear_password_is_masked_when_continued(tmp_path):
    """Studies made before masking held the URL in clear in their stored config: continuing one masks it."""
    from routespace.search.config import CONFIG_ATTR

    url = f"sqlite:///{tmp_path / 'old.db'}?password=hunter22"  # SQLite ignores it; the study stores it
    config = _config(tmp_path, "random").with_(storage=url)
    study, _ = open_study(config)
    study.set_user_attr(CONFIG_ATTR, config.to_dict(mask_secrets=False))  # as an older routespace wrote it
    assert "hunter22" in json.dumps(study.user_attrs)
    study, _ = open_study(config)
    assert "hunter22" not in json.dumps(study.user_attrs)
    assert study.user_attrs[CONFIG_ATTR]["storage"].endswith("?password=***")


def _never_beaten_trial_is_failed_within_grace(config) -> None:
    """A worker killed between ``ask`` and its first heartbeat leaves a RUNNING trial with no heartbeat at
    all: it must be failed once older than the grace period (not before) and re-run with its parameters."""
    study, storage = open_study(config)
    dead = study.ask()
    arch = config.make_encoding().suggest(dead)  # drew its params, then was killed before any beat
    fail_stale(study)
    assert study.get_trials()[0].state.name == "RUNNING"  # younger than the grace period: left alone
    time.sleep(config.grace_period + 0.5)
    fail_stale(study)
    trials = study.get_trials()
    assert trials[0].state.name == "FAIL"
    assert [t.state.name for t in trials[1:]] == ["WAITING"] and trials[1].params == dead.params
    spy = SpyEvaluator()
    SearchSession(config, study, storage, spy).optimize(optuna.samplers.RandomSampler(5))
    trials = study.get_trials()
    assert spy.seen[0] == arch  # the retry ran first
    assert [t.user_attrs.get("retry_of") for t in trials if t.state.name == "COMPLETE"][0] == 0
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_trial_of_a_worker_killed_before_its_first_heartbeat_is_retried(tmp_path, kind):
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:{tmp_path / 's.log'}"
    _never_beaten_trial_is_failed_within_grace(_config(tmp_path, "random", trials=2).with_(storage=url))


def test_of_twins_running_at_once_exactly_one_trains(tmp_path):
    """Trial numbers do not order the workers: here trial 1 reaches its check and starts training before
    trial 0 (asked first, by a slower worker) has even drawn its architecture, the same one. Trial 0 must
    wait for trial 1's result, not train the same net again (it used to: only lower numbers were waited for)."""
    import threading

    config = _config(tmp_path, "random", trials=2)
    same_path = {f"move_{layer}": 0 for layer in range(1, 9)}
    studies = [open_study(config), open_study(config)]  # two workers: a study and a storage each
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for study, _ in studies:
            study.sampler = optuna.samplers.PartialFixedSampler(same_path, optuna.samplers.RandomSampler(0))
    first, second = studies[0][0].ask(), studies[1][0].ask()
    assert (first.number, second.number) == (0, 1)
    release, trained, results = threading.Event(), [], {}

    class SlowSpy(SpyEvaluator):
        def __call__(self, arch, seed=0):
            trained.append(arch)
            release.wait(60)
            return super().__call__(arch, seed)

    def run(index: int, trial) -> None:
        study, storage = studies[index]
        results[index] = SearchSession(config, study, storage, SlowSpy(), poll_s=0.05).run_trial(trial)

    workers = [threading.Thread(target=run, args=(1, second))]
    workers[0].start()
    t0 = time.monotonic()
    while not trained and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    assert trained, "trial 1 never started training"
    workers.append(threading.Thread(target=run, args=(0, first)))
    workers[1].start()
    time.sleep(1.0)
    assert len(trained) == 1  # trial 0 is waiting for trial 1
    release.set()
    for w in workers:
        w.join(60)
    trials = studies[0][0].get_trials()
    assert len(trained) == 1 and results[0] == results[1]
    assert trials[0].user_attrs["duplicate_of"] == 1 and trials[0].user_attrs["train_steps"] == 0
    assert [t.user_attrs.get("claim") for t in trials] == [None, "training"]  # trial 0 never claimed


def test_claim_decisions_between_running_twins(tmp_path):
    """The claim's decision table: a claimant yields to a rival that trains or that claimed with a lower
    number, and waits for higher-numbered claimants to decide (they yield to it, having seen its claim)."""
    import threading

    config = _config(tmp_path, "random", trials=5)
    study, storage = open_study(config)
    trials = [study.ask() for _ in range(3)]
    for t in trials:
        t.set_user_attr("spec_key", "k")
    session = SearchSession(config, study, storage, SpyEvaluator(), poll_s=0.05)
    trials[0].set_user_attr("claim", "claimed")
    trials[1].set_user_attr("claim", "claimed")
    assert session._claim_holds("k", 1) is False  # trial 0 claimed too, with a lower number
    later = threading.Timer(0.5, lambda: trials[1].set_user_attr("claim", "deferred"))
    later.start()
    t0 = time.monotonic()
    assert session._claim_holds("k", 0) is True  # once trial 1 has deferred
    assert time.monotonic() - t0 >= 0.4  # it did wait for that decision
    trials[2].set_user_attr("claim", "training")
    assert session._claim_holds("k", 0) is False  # a rival already trains it
