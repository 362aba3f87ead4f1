"""One-shot scoring: the forced route of the supernet is the built static net carrying its weights."""
from __future__ import annotations

import pytest
import torch

from routespace.search.dynamic.oneshot import (
    OneShotEvaluator, check_representable, forced_gates, kendall_tau, recalibrate_bn, static_from_supernet,
)
from routespace.spaces.architecture import Architecture
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.space import RoutingSpace
from routespace.spaces.supernet import DynamicNet

SPACE = RoutingSpace(layers=4, base_channels=8, num_classes=3, input_size=(64, 64), name="micro")


def _archs():
    path = Architecture.from_path(SPACE, [1, 2, 1, 0])
    branchy = Architecture(SPACE, frozenset({(1, 0, 0), (1, 0, 1), (2, 0, 0), (2, 1, 1), (3, 1, 0), (3, 0, 0),
                                              (4, 0, 0), (4, 0, 1)}))
    ident = Architecture(SPACE, Architecture.from_path(SPACE, [0, 0, 1, 1]).edges, (((1, 0), "identity"), ((3, 1), "identity")))
    return [path, branchy, ident]


@pytest.mark.parametrize("index", range(3))
def test_forced_route_equals_the_static_net_with_copied_weights_after_the_same_recalibration(index):
    arch = _archs()[index]
    torch.manual_seed(index)
    net = DynamicNet(SPACE).double()
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 3, 64, 64, generator=gen, dtype=torch.float64) for _ in range(3)]
    x = torch.randn(3, 3, 64, 64, generator=gen, dtype=torch.float64)
    recalibrate_bn(net, calib, lambda b: net(b, gate_override=forced_gates(net, arch, b.shape[0])))
    static = static_from_supernet(net, arch).double()
    net.eval(), static.eval()
    with torch.no_grad():
        forced = net(x, gate_override=forced_gates(net, arch, 3)).logits
        assert torch.allclose(forced, static(x), rtol=1e-9, atol=1e-9)
    # recalibrating the static net on the same batches gives the same statistics, hence the same function
    fresh = static_from_supernet(net, arch).double()
    recalibrate_bn(fresh, calib)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), forced, rtol=1e-9, atol=1e-9)
    # and the forced route costs what the static architecture costs (its body; gates are forced, not run)
    from routespace.evaluators.cost import architecture_cost

    with torch.no_grad():
        out = net.forward_skipping(x, gate_override=forced_gates(net, arch, 3))
    assert float(out.realised_body_flops[0]) == architecture_cost(arch, (64, 64)).body_flops


def test_unrepresentable_candidates_are_refused():
    net = DynamicNet(SPACE)
    other = RoutingSpace(layers=5, base_channels=8, num_classes=3, input_size=(64, 64))
    with pytest.raises(RoutespaceError, match="is not the supernet's"):
        check_representable(net, Architecture.from_path(other, [0] * 5))
    arch = Architecture.from_path(SPACE, [0, 1, 1, 1])
    with pytest.raises(RoutespaceError, match="non-keep out edge"):
        check_representable(net, Architecture(SPACE, arch.edges, (((1, 0), "identity"),)))
    with pytest.raises(RoutespaceError, match="cell 'basic'"):
        check_representable(net, Architecture(SPACE, arch.edges, (((2, 1), "basic"),)))


def test_evaluator_scores_and_reports_its_cost():
    torch.manual_seed(0)
    net = DynamicNet(SPACE)
    gen = torch.Generator().manual_seed(2)
    calib = [torch.randn(4, 3, 64, 64, generator=gen) for _ in range(2)]
    val = [(torch.randn(4, 3, 64, 64, generator=gen), torch.randint(0, 3, (4, 64, 64), generator=gen))]
    ev = OneShotEvaluator(net, calib, val)
    results = [ev(a) for a in _archs()]
    assert all(0 <= r.miou <= 1 and r.extra["evaluator"] == "oneshot" and r.train_steps == 0 for r in results)
    assert all(r.train_images == 8 and r.extra["val_images"] == 4 for r in results)
    assert ev(_archs()[0]).miou == results[0].miou  # deterministic: same calibration, same score


def _dense_forced_miou(net, arch, calibration, validation) -> float:
    """The independent computation: the supernet's dense masked forward with the route forced, BN recalibrated
    on the same batches (or left as trained when there are none), mIoU over the validation batches."""
    from routespace.evaluators.metrics import ConfusionMatrix

    if calibration:
        recalibrate_bn(net, calibration, lambda b: net(b, gate_override=forced_gates(net, arch, b.shape[0])))
    net.eval()
    cm = ConfusionMatrix(net.space.num_classes)
    with torch.no_grad():
        for images, labels in validation:
            cm.update(net(images, gate_override=forced_gates(net, arch, images.shape[0])).logits.argmax(1), labels)
    return float(cm.summary()["miou"])


@pytest.mark.parametrize("calibration_batches", [0, 2])
def test_evaluator_score_is_the_dense_forced_route_score(calibration_batches):
    """The evaluator runs only the route (the static net with shared weights, the stem computed once); its score
    equals the supernet's dense forced forward after the same recalibration, and it leaves the supernet's
    weights and BN statistics as they were."""
    import copy

    torch.manual_seed(5)
    net = DynamicNet(SPACE)
    net.train()
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():  # give BN running statistics that differ from a fresh net's (as a trained one has)
        for _ in range(3):
            net(torch.randn(4, 3, 64, 64, generator=gen) * 2 + 0.5)
    calib = [torch.randn(4, 3, 64, 64, generator=gen) for _ in range(calibration_batches)]
    val = [(torch.randn(6, 3, 64, 64, generator=gen), torch.randint(0, 3, (6, 64, 64), generator=gen)) for _ in range(2)]
    before = copy.deepcopy(net.state_dict())
    ev = OneShotEvaluator(net, calib, val)
    scores = [ev(a).miou for a in _archs()]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    for arch, score in zip(_archs(), scores):
        reference = copy.deepcopy(net)
        assert score == pytest.approx(_dense_forced_miou(reference, arch, calib, val), abs=1e-12)
    assert ev(_archs()[1]).extra["calibration_batches"] == calibration_batches


def test_kendall_tau_against_the_pair_count_and_scipy():
    # hand count: pairs (0,1) C, (0,2) C, (1,2) D -> (2 - 1) / 3
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 1, 1], [1, 2, 3]) != kendall_tau([1, 1, 1], [1, 2, 3])  # NaN: one side constant
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randint(0, 6, (17,), generator=gen).tolist()  # ties on both sides
        y = torch.randint(0, 6, (17,), generator=gen).tolist()
        assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_uniform_supernet_and_a_oneshot_search_from_the_cli(tmp_path, capsys):
    """`train --sampling uniform` trains a supernet whose steps draw one path per image; `search --evaluator
    oneshot --supernet RUN` scores candidates with it: every trial records the one-shot evaluator, its mIoU
    and cost, and no proxy training."""
    import json
    from pathlib import Path

    import optuna

    from routespace.cli.main import main
    from routespace.search.dynamic.sampling import UniformPathNet

    net = UniformPathNet(SPACE).train()
    torch.manual_seed(3)
    gates = net.sample_gates(5)
    paths = set()
    for i in range(5):  # each image's forced gates are one valid single path: one open edge per layer
        open_edges = [k for n, ks in net.out_keys.items() for j, k in enumerate(ks) if gates[n][i, j] > 0 and k[0] != "out"]
        assert sorted(e[0] for e in open_edges) == list(range(1, SPACE.layers + 1))
        paths.add(tuple(sorted(open_edges)))
    assert len(paths) == 1  # one path per step for the whole batch (SPOS)
    draws = {tuple(sorted((n, j) for n, g in net.sample_gates(1).items() for j in range(g.shape[1]) if g[0, j] > 0))
             for _ in range(40)}
    assert len(draws) > 5  # and different paths in different steps

    sup = tmp_path / "sup"
    assert main(["train", "--out", str(sup), "--preset", "tiny", "--steps", "2", "--batch-size", "2", "--size", "32x32",
                 "--sampling", "uniform", "--threads", "1"]) == 0
    manifest = json.loads((sup / "manifest.json").read_text())
    assert manifest["spec"]["sampling"] == "uniform" and manifest["extra"]["cli"]["budget"] is None
    out = tmp_path / "search"
    argv = ["search", "--out", str(out), "--preset", "tiny", "--evaluator", "oneshot", "--supernet", str(sup),
            "--strategy", "evolution", "--strategy-option", "population_size=2", "--trials", "3", "--max-gflops", "0.004",
            "--proxy-val-images", "4", "--calibration-batches", "1", "--threads", "1", "--retrain-top", "2",
            "--retrain-steps", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state.name == "COMPLETE" and "miou" in t.user_attrs]
    assert len(done) >= 3
    for t in done:
        assert t.user_attrs["evaluator"]["evaluator"] == "oneshot" and t.user_attrs["train_steps"] == 0
        assert 0 <= t.user_attrs["miou"] <= 1 and t.user_attrs["gflops"] <= 0.004 and "spec" in t.user_attrs
        assert t.user_attrs["eval_seconds"] > 0
    # --retrain-top 2: the two best distinct trials, retrained from scratch as static nets on the supernet's data
    ranked = sorted((t for t in done if "duplicate_of" not in t.user_attrs), key=lambda t: (-t.user_attrs["miou"], t.user_attrs["gflops"], t.number))
    table = json.loads((out / "retrain.json").read_text())
    assert [r["trial"] for r in table["rows"]] == [t.number for t in ranked[:2]]
    assert table["data"] == "synthetic" and table["size"] == [32, 32]
    from routespace.evaluators.datasets import load_dataset
    from routespace.evaluators.evaluate import evaluate, load_run_model

    for row, trial in zip(table["rows"], ranked):
        assert row["search_score"] == trial.user_attrs["miou"]
        run = json.loads((tmp_path / "search" / "retrain" / row["spec_key"] / "manifest.json").read_text())
        assert run["kind"] == "static" and run["step"] == 1 and run["status"] == "done"
        assert Architecture.from_dict(run["spec"]["architecture"]) == Architecture.from_json(trial.user_attrs["spec"])
        model, _, _ = load_run_model(row["run"])
        again = evaluate(model, load_dataset("synthetic", "val", size=(32, 32)), latency_repeats=0)["miou"]
        assert row["standalone_miou"] == pytest.approx(again, abs=1e-12)
    assert "stand-alone mIoU" in printed and "stand-alone mIoU" in (out / "retrain.md").read_text()
    # the same command again: the search is complete and the finished retrainings are reused, not redone
    final = Path(table["rows"][0]["run"]) / "checkpoints" / "final.pt"
    stamp = final.stat().st_mtime_ns
    assert main(argv) == 0
    assert final.stat().st_mtime_ns == stamp
    assert json.loads((out / "retrain.json").read_text())["rows"] == table["rows"]
