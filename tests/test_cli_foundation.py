"""CLI `space` and `flops`: happy paths agree with the API; bad input is one error line, exit 2, no files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from routespace.cli.main import main
from routespace.evaluators.cost import architecture_cost, space_cost
from routespace.spaces.architecture import Architecture
from routespace.spaces.classics import CLASSICS
from routespace.spaces.space import preset

TINY = preset("tiny")


@pytest.fixture
def specs(tmp_path):
    """A folder of spec files (good and bad), apart from the empty working folder the CLI runs in."""
    folder = tmp_path / "specs"
    folder.mkdir()
    good = Architecture.from_path(TINY, [0, 1, 1, 1, 1, 1, 1, 0]).to_dict()

    def write(name: str, data) -> str:
        path = folder / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return str(path)

    return {
        "good": write("good.json", good),
        "malformed": write("malformed.json", '{"format": "routespace.architecture", "version": 1,'),
        "version": write("version.json", {**good, "version": 99}),
        "jump": write("jump.json", {**good, "edges": [[[0, 0], [1, 0]], [[1, 0], [2, 2]]]}),
        "skip": write("skip.json", {**good, "edges": [[[0, 0], [1, 0]], [[1, 0], [3, 0]]]}),
        "unreachable": write("unreachable.json", {**good, "edges": good["edges"] + [[[1, 1], [2, 1]]]}),
        "hrnet": write("hrnet.json", CLASSICS["hrnetv2"](TINY).to_json()),
    }


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


BAD = [
    (["flops", "{malformed}"], "not valid JSON"),
    (["flops", "{version}"], "unknown spec format version 99"),
    (["flops", "{jump}"], "jumps 2 scales"),
    (["flops", "{skip}"], "skips a layer"),
    (["flops", "{unreachable}"], "node (layer 1, scale 1) is not reachable from the stem"),
    (["flops", "--classic", "fcn32s", "--preset", "tiny", "--size", "100x100"], "not divisible by 32"),
    (["flops", "--classic", "segformer"], "unknown classic 'segformer'"),
    (["flops", "--classic", "fcn32s", "--preset", "huge"], "unknown preset 'huge'"),
    (["space", "--preset", "huge"], "unknown preset 'huge'"),
    (["flops", "{good}", "--preset", "huge"], "unknown preset 'huge'"),
    (["flops", "{good}", "--size", "64x65"], "not divisible by 32"),
    (["flops", "{good}", "--convention", "ptflops"], "unknown FLOPs convention 'ptflops'"),
    (["flops", "missing.json"], "spec file missing.json does not exist"),
    (["flops", "/dev/zero"], "too large for a spec"),  # an endless file reports size 0
    (["flops", "a" * 5000 + ".json"], "cannot read spec file"),  # name too long
    (["flops", "--classic", "unet", "--size", "9" * 5000 + "x64"], "not of the form HxW"),
    (["flops"], "give exactly one of"),
    (["flops", "{good}", "--classic", "unet"], "give exactly one of"),
    (["flops", "--classic", "unet", "--no-gates"], "--no-gates only applies with --all-open"),
    (["nonsense"], "invalid choice"),
    ([], "required"),
]


@pytest.mark.parametrize("argv, needle", BAD, ids=[" ".join(a)[:60] or "empty" for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(argv, needle, specs, cwd, capsys):
    argv = [a.format(**specs) for a in argv]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("routespace: error: ")
    assert needle in lines[0]
    assert os.listdir(cwd) == []


def _run_module(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "routespace.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_subprocess_errors_have_no_traceback(specs, cwd):
    cases = [(["flops", specs["unreachable"]], "not reachable from the stem"),
             (["flops", "--classic", "nope", "--preset", "tiny"], "unknown classic 'nope'")]
    procs = [subprocess.Popen([sys.executable, "-m", "routespace.cli.main", *args], cwd=cwd, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args, _ in cases]
    for proc, (_, needle) in zip(procs, cases):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2
        assert out == ""
        assert "Traceback" not in err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("routespace: error: ") and needle in lines[0], err
    assert os.listdir(cwd) == []


def _json(argv: list[str], capsys) -> dict:
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return json.loads(out)


@pytest.mark.parametrize("name", list(CLASSICS))
def test_flops_classic_json(name, cwd, capsys):
    data = _json(["flops", "--classic", name, "--preset", "tiny", "--json"], capsys)
    report = architecture_cost(CLASSICS[name](TINY))
    assert isinstance(data["gflops"], float) and data["gflops"] == pytest.approx(report.gflops, rel=1e-12)
    assert data["params_m"] == pytest.approx(report.params_m, rel=1e-12)
    assert isinstance(data["nodes"], list) and len(data["nodes"]) == len(CLASSICS[name](TINY).nodes)
    assert data["size"] == [64, 64] and data["convention"] == "paper"
    assert os.listdir(cwd) == []


def test_flops_paper_default(cwd, capsys):
    data = _json(["flops", "--classic", "deeplabv3", "--json"], capsys)
    assert data["size"] == [1024, 2048]
    assert data["gflops"] == pytest.approx(architecture_cost(CLASSICS["deeplabv3"](preset("paper"))).gflops)


def test_flops_spec_agrees_with_classic(specs, cwd, capsys):
    from_spec = _json(["flops", specs["hrnet"], "--json"], capsys)
    from_classic = _json(["flops", "--classic", "hrnetv2", "--preset", "tiny", "--json"], capsys)
    assert from_spec == from_classic
    sized = _json(["flops", specs["hrnet"], "--size", "96x160", "--json"], capsys)
    assert sized["size"] == [96, 160] and sized["gflops"] > from_spec["gflops"]


def test_flops_fvcore_convention(cwd, capsys):
    data = _json(["flops", "--classic", "unet", "--preset", "tiny", "--convention", "fvcore", "--json"], capsys)
    assert data["convention"] == "fvcore"
    assert data["gflops"] == pytest.approx(architecture_cost(CLASSICS["unet"](TINY), convention="fvcore").gflops)
    paper = _json(["flops", "--classic", "unet", "--preset", "tiny", "--json"], capsys)
    assert data["gflops"] != paper["gflops"]


def test_flops_all_open_gates(cwd, capsys):
    gated = _json(["flops", "--all-open", "--preset", "tiny", "--json"], capsys)
    plain = _json(["flops", "--all-open", "--preset", "tiny", "--no-gates", "--json"], capsys)
    assert gated["gflops"] > plain["gflops"] and gated["params"] > plain["params"]
    assert gated["gates_gflops"] > 0 and plain["gates_gflops"] == 0
    assert gated["gflops"] == pytest.approx(space_cost(TINY, gates=True).gflops)
    assert plain["gflops"] == pytest.approx(space_cost(TINY, gates=False).gflops)


def test_flops_text_output(cwd, capsys):
    assert main(["flops", "--classic", "fcn32s", "--preset", "tiny"]) == 0
    out, err = capsys.readouterr()
    report = architecture_cost(CLASSICS["fcn32s"](TINY))
    assert err == "" and f"total {report.gflops:.4g} GFLOPs" in out and "64x64" in out  # small figures: 4 digits
    first = report.nodes[0]
    assert f"{first.cell_flops / 1e9:9.4g}" in out.splitlines()[4]
    assert len(out.splitlines()) == 4 + len(report.nodes)


def test_space_command(cwd, capsys):
    assert main(["space", "--preset", "tiny"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "cells per layer: 2,3,4,4,4,4,4,4" in out and "s0=16, s1=32, s2=64, s3=128" in out
    space = _json(["space", "--preset", "tiny", "--json"], capsys)
    assert space["layers"] == 8 and space["base_channels"] == 16 and space["input_size"] == [64, 64]
    assert os.listdir(cwd) == []


def test_subprocess_happy_path(cwd):
    proc = _run_module(["flops", "--classic", "fcn32s", "--preset", "tiny", "--json"], cwd)
    assert proc.returncode == 0 and proc.stderr == ""
    assert json.loads(proc.stdout)["gflops"] == pytest.approx(architecture_cost(CLASSICS["fcn32s"](TINY)).gflops)
