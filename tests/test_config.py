"""`routespace config dump RUN` -> `routespace train --config FILE` reproduces the run exactly (same weights);
explicit flags override the file; the bundled paper configs load and hold the released settings."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from routespace.cli.config_cmd import apply_config, bundled_names, read_config
from routespace.cli.main import main, make_parser
from routespace.evaluators.train import TRAIN_PRESETS, TrainConfig
from routespace.search.dynamic.settings import SETTINGS
from routespace.spaces.errors import RoutespaceError

TINY_RUN = ["--steps", "3", "--batch-size", "2", "--size", "32x32", "--no-tensorboard"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "final.pt", weights_only=True)["model"]


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _dump(run: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["config", "dump", str(run)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dump_then_train_config_reproduces_a_dynamic_run(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", "--preset", "tiny", "--setting", "B", "--budget-mode", "paper", "--gate-resolution", "full",
                 "--seed", "3", "--lr", "0.01", "--out", str(first), *TINY_RUN]) == 0
    text = _dump(first, capsys)
    cfg = yaml.safe_load(text)
    manifest = _manifest(first)
    cli = manifest["extra"]["cli"]
    assert cfg["train"] == manifest["config"] and list(cfg["train"]) == [f for f in TrainConfig.__dataclass_fields__]
    assert (cfg["setting"], cfg["gate_resolution"], cfg["size"], cfg["val_size"]) == ("B", "full", "32x32", "32x32")
    assert cfg["budget"] == {k: v for k, v in cli["budget"].items() if k != "setting"}
    assert (cfg["budget"]["mu"], cfg["budget"]["lambda"]) == (SETTINGS["B"].mu, SETTINGS["B"].lam)
    (tmp_path / "run.yaml").write_text(text)

    again = tmp_path / "again"
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--out", str(again)]) == 0
    assert _same(_weights(again), _weights(first))  # the same weights after 3 steps
    assert _dump(again, capsys).splitlines()[1:] == text.splitlines()[1:]  # the same settings (header names the run)

    # an explicit flag overrides the file, and a field without a flag can be set by editing the file
    cfg["train"]["poly_power"] = 0.5
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(cfg))
    varied = tmp_path / "varied"
    assert main(["train", "--config", str(tmp_path / "edited.yaml"), "--seed", "4", "--out", str(varied)]) == 0
    got = _manifest(varied)["config"]
    assert (got["seed"], got["poly_power"], got["lr"], got["steps"]) == (4, 0.5, 0.01, 3)
    assert not _same(_weights(varied), _weights(first))  # the comparison above can tell runs apart
    # resuming a finished run started from a file needs no file: its settings are the run folder's
    assert main(["train", "--out", str(varied), "--resume"]) == 0
    assert "already complete" in capsys.readouterr().out


def test_dump_then_train_config_reproduces_a_static_run(tmp_path, capsys):
    first = tmp_path / "static"
    assert main(["train", "--arch", "fcn32s", "--seed", "2", "--out", str(first), *TINY_RUN]) == 0
    text = _dump(first, capsys)
    cfg = yaml.safe_load(text)
    assert cfg["arch"] == _manifest(first)["extra"]["cli"]["arch"] and cfg["setting"] is None and cfg["budget"] is None
    (tmp_path / "static.yaml").write_text(text)
    again = tmp_path / "again"
    assert main(["train", "--config", str(tmp_path / "static.yaml"), "--out", str(again)]) == 0
    assert _manifest(again)["kind"] == "static"
    assert _same(_weights(again), _weights(first))


def _args(tmp_path: Path, text: str, *flags: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    args = make_parser().parse_args(["train", "--out", str(tmp_path / "r"), "--config", str(path), *flags])
    apply_config(args)
    return args


FILE_A = """
preset: tiny
setting: A
gate_resolution: quarter
budget: {mode: realised, mu: 0.1, gflops: null, lambda: 0.8, warmup: 0.4, ramp: 0.02, adaptive: false}
train: {steps: 7, lr: 5e-3, momentum: 0.8}
"""


def test_flags_override_the_file(tmp_path):
    a = _args(tmp_path, FILE_A)
    assert (a.setting, a.gate_resolution, a.budget_mode, a.budget_mu, a.budget_lambda) == ("A", "quarter", "realised", 0.1, 0.8)
    assert (a.steps, a.lr, a.momentum, a.fixed_lambda) == (7, 0.005, 0.8, True)  # 5e-3 (a string to YAML 1.1) read as a number
    b = _args(tmp_path, FILE_A, "--steps", "9", "--budget-lambda", "0.3")
    assert (b.steps, b.budget_lambda, b.budget_mu) == (9, 0.3, 0.1)
    # --setting replaces the file's setting together with its budget and gate
    c = _args(tmp_path, FILE_A, "--setting", "C")
    assert (c.setting, c.budget_mu, c.budget_lambda, c.gate_resolution) == ("C", None, None, None)
    # one budget target replaces the other
    d = _args(tmp_path, FILE_A, "--budget-gflops", "0.002")
    assert (d.budget_gflops, d.budget_mu) == (0.002, None)
    # a static net from the command line drops the file's dynamic settings; a dynamic flag drops the file's arch
    e = _args(tmp_path, FILE_A, "--arch", "unet")
    assert (e.arch, e.setting, e.budget_mu) == ("unet", None, None)
    f = _args(tmp_path, "arch: unet\ntrain: {steps: 2}\n", "--setting", "B")
    assert (f.arch, f.setting, f.steps) == (None, "B", 2)
    g = _args(tmp_path, "arch: unet\n")
    assert g.arch == "unet"


def test_bundled_configs_load_and_hold_the_released_settings(tmp_path, capsys):
    names = bundled_names()
    assert names == ["paper-dynamic-A", "paper-dynamic-B", "paper-dynamic-C", "paper-dynamic-raw"]
    paper = TrainConfig(**TRAIN_PRESETS["paper"])
    for name in names:
        cfg, source = read_config(name)  # the function `train --config NAME` reads it with
        assert source == f"{name} (bundled)"
        key = name.rsplit("-", 1)[1]
        named = SETTINGS[key]
        assert (cfg["preset"], cfg["size"], cfg["val_size"]) == ("paper", "768x768", "1024x2048")
        assert cfg["data"].startswith("cityscapes:")
        assert (cfg["setting"], cfg["gate_resolution"]) == (key, named.gate_resolution)
        if named.budgeted:
            b = cfg["budget"]
            assert (b["mu"], b["lambda"], b["mode"], b["warmup"], b["ramp"]) == (named.mu, named.lam, "paper", 0.4, 0.02)
        else:
            assert "budget" not in cfg
        train = TrainConfig(**cfg["train"])
        for field in ("steps", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "poly_power", "warmup_steps",
                      "grad_clip", "gate_lr_mult", "drop_path", "seed"):
            assert getattr(train, field) == getattr(paper, field), (name, field)
        assert main(["config", "show", name]) == 0
        assert yaml.safe_load(capsys.readouterr().out) is not None
        # the command line a GPU user types: the data path and the flags on top of the file
        args = make_parser().parse_args(["train", "--config", name, "--data", "cityscapes:/mnt/cs", "--out", "r"])
        apply_config(args)
        assert (args.preset, args.data, args.size, args.setting, args.steps) == ("paper", "cityscapes:/mnt/cs", "768x768", key, 190000)
    assert main(["config", "list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(names)


def test_a_bundled_name_or_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paper-dynamic-A.yaml").write_text("preset: tiny\n")  # a file of that name wins over the bundled one
    assert read_config("paper-dynamic-A.yaml")[0] == {"preset": "tiny"}
    assert read_config("paper-dynamic-A")[0]["preset"] == "paper"
    with pytest.raises(RoutespaceError, match="no bundled config is called so"):
        read_config("paper-dynamic-Z")


def test_arch_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    from routespace.spaces.classics import classic
    from routespace.spaces.space import preset

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "net.json").write_text(classic("unet", preset("tiny")).to_json())
    (tmp_path / "cfg" / "c.yaml").write_text("arch: net.json\n")
    monkeypatch.chdir(tmp_path)
    assert read_config("cfg/c.yaml")[0]["arch"] == str(tmp_path / "cfg" / "net.json")
