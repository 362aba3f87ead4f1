"""`routespace export` and `routespace show`: results, and bad input -> one line, exit 2, no partial file."""
from __future__ import annotations

import json
import os

import pytest
import torch

from routespace.cli.main import main
from routespace.spaces.architecture import Architecture, load_architecture
from routespace.spaces.classics import classic
from routespace.spaces.exports import from_node_link_json
from routespace.spaces.space import preset


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("routespace: error: "), err
    return err


def test_export_json_nodelink_graphml_round_trip(tmp_path, capsys):
    arch = classic("hrnetv2", preset("tiny"))
    assert main(["export", "hrnetv2", "--preset", "tiny", "--format", "json", "-o", str(tmp_path / "a.json")]) == 0
    assert load_architecture(str(tmp_path / "a.json")) == arch
    assert main(["export", str(tmp_path / "a.json"), "--format", "nodelink", "-o", str(tmp_path / "b.json")]) == 0
    assert from_node_link_json((tmp_path / "b.json").read_text()) == arch
    # a node-link file is itself a valid SPEC argument
    assert main(["export", str(tmp_path / "b.json"), "--format", "graphml", "-o", str(tmp_path / "c.graphml")]) == 0
    assert main(["export", str(tmp_path / "c.graphml"), "--format", "json", "-o", str(tmp_path / "d.json")]) == 0
    assert (tmp_path / "d.json").read_text() == arch.to_json()
    assert "wrote" in capsys.readouterr().out


def test_export_state_dict_then_torchscript_keeps_weights(tmp_path):
    assert main(["export", "fcn32s", "--preset", "tiny", "--format", "state_dict", "--seed", "3", "-o", str(tmp_path / "w.pt")]) == 0
    assert main(["export", str(tmp_path / "w.pt"), "--format", "torchscript", "-o", str(tmp_path / "m.pt")]) == 0
    from routespace.spaces.exports import load_state_dict

    net = load_state_dict(tmp_path / "w.pt")
    ts = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ts(x) - net(x)).abs().max() <= 1e-5


def test_export_program_from_state_dict_keeps_weights(tmp_path, capsys):
    assert main(["export", "fcn32s", "--preset", "tiny", "--format", "state_dict", "--seed", "5", "-o", str(tmp_path / "w.pt")]) == 0
    assert main(["export", str(tmp_path / "w.pt"), "--format", "export", "-o", str(tmp_path / "m.pt2")]) == 0
    assert "torch.export" in capsys.readouterr().out
    from routespace.spaces.exports import load_state_dict

    net = load_state_dict(tmp_path / "w.pt")
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    for h, w in ((64, 64), (128, 32)):
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            assert torch.equal(program(x), net(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2", "w.pt"]  # no temp file left


def test_cli_format_choices_are_the_registry():
    from routespace.cli.main import make_parser
    from routespace.spaces.exports import FORMATS, SUFFIXES

    export_parser = make_parser()._subparsers._group_actions[0].choices["export"]
    (action,) = [a for a in export_parser._actions if a.dest == "format"]
    assert tuple(action.choices) == tuple(FORMATS) and "export" in FORMATS
    assert SUFFIXES["export"] == ".pt2" and all(f.kind in ("graph", "model") for f in FORMATS.values())


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "argv, words",
    [
        (["export", "NOTSPEC", "--format", "json"], "not valid JSON"),
        (["export", "OTHERJSON", "--format", "json"], "not a routespace spec"),
        (["export", "unet", "--format", "yaml"], "invalid choice"),
        (["export", "nosuchnet", "--format", "json"], "neither a spec file nor a classic"),
        (["export", "missing.json", "--format", "json"], "does not exist"),
        (["show", "NOTSPEC"], "not valid JSON"),
        (["show", "unet", "--what", "pareto"], "as 'grid' only"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_file(tmp_path, capsys, argv, words):
    (tmp_path / "notspec.json").write_text("this is not json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    argv = [{"NOTSPEC": str(tmp_path / "notspec.json"), "OTHERJSON": str(tmp_path / "other.json"),
             "missing.json": str(tmp_path / "missing.json")}.get(a, a) for a in argv]
    before = _listing(tmp_path)
    out = tmp_path / ("out.png" if argv[0] == "show" else "out.json")
    assert main(argv + ["-o", str(out)]) == 2
    assert words in _err(capsys)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("cmd", ["export", "show"])
def test_unwritable_outputs(tmp_path, capsys, monkeypatch, cmd):
    fmt = ["--format", "onnx"] if cmd == "export" else []
    suffix = ".onnx" if cmd == "export" else ".png"
    (tmp_path / "afile").write_text("x")
    for target, words in (
        (tmp_path / "missing" / f"o{suffix}", "does not exist"),
        (tmp_path / "afile" / f"o{suffix}", "is a file, not a folder"),
        (tmp_path, "is a folder" if cmd == "export" else "end the file name in .png"),
    ):
        assert main([cmd, "unet", "--preset", "tiny", *fmt, "-o", str(target)]) == 2
        assert words in _err(capsys)
    # no write permission: root ignores mode bits, so deny through os.access (what fileio checks)
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if (str(p) == str(locked) and mode & os.W_OK) else real(p, mode, *a, **k))
    assert main([cmd, "unet", "--preset", "tiny", *fmt, "-o", str(locked / f"o{suffix}")]) == 2
    assert "no write permission" in _err(capsys)
    assert _listing(locked) == [] and _listing(tmp_path) == ["afile", "locked"]


def test_failure_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.jit, "save", broken_save)
    assert main(["export", "fcn32s", "--preset", "tiny", "--format", "torchscript", "-o", str(tmp_path / "m.pt")]) == 2
    assert "No space left on device" in _err(capsys)
    assert _listing(tmp_path) == []


def test_show_writes_png_and_svg(tmp_path, capsys):
    assert main(["show", "hrnetv2", "--preset", "tiny", "-o", str(tmp_path / "h.png")]) == 0
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    spec = tmp_path / "a.json"
    spec.write_text(classic("unet", preset("tiny")).to_json())
    assert main(["show", str(spec), "-o", str(tmp_path / "u.svg")]) == 0
    assert b"<svg" in (tmp_path / "u.svg").read_bytes()[:500]
    assert main(["show", "unet", "-o", str(tmp_path / "u.jpg")]) == 2
    assert ".png, .svg" in _err(capsys)


def test_show_results_file_and_static_run(tmp_path):
    results = [{"label": "a", "gflops": 1.0, "miou": 0.3, "group": "classic"}, {"label": "b", "gflops": 2.0, "miou": 0.5}]
    (tmp_path / "r.json").write_text(json.dumps({"results": results}))
    assert main(["show", str(tmp_path / "r.json"), "-o", str(tmp_path / "p.png")]) == 0
    run = tmp_path / "run"
    run.mkdir()
    arch = Architecture.from_path(preset("tiny"), [0, 1, 2, 3, 3, 2, 1, 0])
    (run / "manifest.json").write_text(json.dumps({"format": "routespace-run", "kind": "static",
                                                   "spec": {"architecture": arch.to_dict()}}))
    assert main(["show", str(run), "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
