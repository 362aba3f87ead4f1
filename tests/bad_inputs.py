"""The table of bad inputs: each case is a command a user might type, and the fragment of the one-line
error routespace must answer with (exit code 2, nothing written).

``tests/test_bad_inputs.py`` runs every case and checks that docs/bad-inputs.md is this table rendered.
Regenerate the document after changing the cases::

    python tests/bad_inputs.py > docs/bad-inputs.md

In a case's argv, ``{dir}`` is a fresh folder holding the files the case ``needs`` (see FIXTURES).
"""
from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    what: str  # the mistake, in the user's words
    argv: tuple[str, ...]  # the command after `routespace`
    expect: str  # a fragment of the error line
    needs: tuple[str, ...] = ()  # fixture names (FIXTURES) created in {dir} first
    env: tuple[tuple[str, str | None], ...] = ()  # environment variables set for the command (None: unset)
    # what the case assumes of the machine (see ASSUMPTIONS): the test skips it, or makes it hold, elsewhere
    assumes: tuple[str, ...] = ()


ASSUMPTIONS = {
    "no-cuda": "a machine without CUDA (the case is skipped where CUDA is available)",
    "small-memory": "less memory than the estimate (the test reports 16 GiB available, whatever the machine has)",
}


# --- fixtures: small files and folders a case needs ------------------------------------------------------
def _spec(**changes) -> dict:
    """The tiny preset's FCN-32s spec with some fields changed."""
    from routespace.spaces.classics import classic
    from routespace.spaces.space import preset

    spec = classic("fcn32s", preset("tiny")).to_dict()
    spec.update(changes)
    return spec


def _write_spec(name: str, **changes) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        (folder / name).write_text(json.dumps(_spec(**changes)))
    return make


def _edges_plus(*extra) -> list:
    return _spec()["edges"] + [list(e) for e in extra]


def _malformed(folder: Path) -> None:
    (folder / "malformed.json").write_text(json.dumps(_spec())[:70])


def _latin1(folder: Path) -> None:
    (folder / "latin1.json").write_bytes(json.dumps(_spec(name="réseau"), ensure_ascii=False).encode("latin-1"))


def _huge(folder: Path) -> None:
    (folder / "huge.json").write_text(json.dumps(_spec(name="x" * 150, edges=_spec()["edges"] * 40000)))


def _layers(folder: Path) -> None:
    spec = _spec()
    spec["space"]["layers"] = 100000
    (folder / "layers.json").write_text(json.dumps(spec))


def _not_a_run(folder: Path) -> None:
    (folder / "notes").mkdir()
    (folder / "notes" / "todo.txt").write_text("not a run\n")


def _static_run(folder: Path) -> None:
    """The manifest of a static-net training run (what `routespace train --arch unet` writes)."""
    run = folder / "static-run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({
        "format": "routespace-run", "version": 1, "kind": "static", "status": "done", "step": 4,
        "spec": {"architecture": _spec()}, "config": {}, "extra": {}, "command": "routespace train --arch fcn32s",
    }))


def _other_space_supernet(folder: Path) -> None:
    """The manifest of a dynamic run of a space with 5 layers (the tiny preset has 8)."""
    run = folder / "supernet-5"
    run.mkdir()
    space = dict(_spec()["space"], layers=5)
    (run / "manifest.json").write_text(json.dumps({
        "format": "routespace-run", "version": 1, "kind": "dynamic", "status": "done", "step": 4,
        "spec": {"space": space, "gate_resolution": "full"}, "config": {}, "extra": {}, "command": "routespace train",
    }))


_TEMPLATE: list[Path] = []


def trained_run_template() -> Path:
    """A finished 2-step static run (FCN-32s, 32x32), trained once per process and copied by fixtures."""
    if not _TEMPLATE:
        import contextlib
        import io
        import tempfile

        from routespace.cli.main import main

        run = Path(tempfile.mkdtemp(prefix="routespace-bad-inputs-")) / "run"
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main(["train", "--out", str(run), "--arch", "fcn32s", "--steps", "2", "--batch-size", "2",
                       "--size", "32x32", "--checkpoint-every", "1", "--seed", "0"])
        if rc != 0:
            raise RuntimeError(f"could not train the template run: {err.getvalue()}")
        _TEMPLATE.append(run)
    return _TEMPLATE[0]


def _run_with_checkpoint(data: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        import shutil

        run = folder / "run"
        shutil.copytree(trained_run_template(), run)
        (run / "checkpoints" / "final.pt").unlink()  # an unfinished run: --resume takes the newest step file that loads
        for path in sorted((run / "checkpoints").glob("step-*.pt")):  # every one damaged: nothing to resume from
            data(path)
    return make


def _finished_run(folder: Path) -> None:
    import shutil

    shutil.copytree(trained_run_template(), folder / "finished-run")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _pickle_with_code(path: Path) -> None:
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path.write_bytes(pickle.dumps({"format": "routespace-checkpoint", "model": Payload()}))


def _other_comparison(folder: Path) -> None:
    out = folder / "comparison"
    out.mkdir()
    (out / "comparison-manifest.json").write_text(json.dumps({"settings": {"preset": "tiny", "steps": 999}, "status": "done"}))


def _text(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def _dynamic_state_dict(folder: Path) -> None:
    """A dynamic net's state-dict export (a 2-layer supernet, untrained)."""
    import torch

    from routespace.spaces.exports import export
    from routespace.spaces.space import RoutingSpace
    from routespace.spaces.supernet import DynamicNet

    torch.manual_seed(0)
    export(DynamicNet(RoutingSpace(layers=2, base_channels=4, num_classes=3, input_size=(64, 64))), "state_dict",
           folder / "dynamic.pt")


FIXTURES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "malformed.json": ("a spec cut off after 70 characters", _malformed),
    "latin1.json": ("a spec saved as Latin-1 (not UTF-8)", _latin1),
    "huge.json": ("a spec of more than 1 MB (the edge list repeated)", _huge),
    "version99.json": ('a spec with `"version": 99`', _write_spec("version99.json", version=99)),
    "no-format.json": ("a JSON object without the `format` field", lambda f: (f / "no-format.json").write_text('{"edges": []}')),
    "jump.json": ("a spec with an edge from scale 0 to scale 2", _write_spec("jump.json", edges=_edges_plus([[0, 0], [1, 2]]))),
    "skip.json": ("a spec with an edge from layer 0 to layer 2", _write_spec("skip.json", edges=_edges_plus([[0, 0], [2, 0]]))),
    "unreachable.json": ("a spec with a branch starting at node (layer 1, scale 0), which nothing feeds",
                         _write_spec("unreachable.json", edges=_edges_plus([[1, 0], [2, 1]], [[2, 1], [3, 2]], [[3, 2], [4, 3]]))),
    "dead-end.json": ("a spec with an edge into node (layer 2, scale 1), which leads nowhere",
                      _write_spec("dead-end.json", edges=_edges_plus([[1, 1], [2, 1]]))),
    "bad-cell.json": ('a spec with `"cells": {"3,3": "transformer"}`', _write_spec("bad-cell.json", cells={"3,3": "transformer"})),
    "layers.json": ("a spec whose space has 100000 layers", _layers),
    "notes/": ("a folder holding a text file", _not_a_run),
    "static-run/": ("the run folder of a static net (`train --arch`)", _static_run),
    "supernet-5/": ("the run folder of a dynamic net of a 5-layer space", _other_space_supernet),
    "run/ (truncated checkpoint)": ("an unfinished training run whose checkpoints were all cut in half",
                                    _run_with_checkpoint(_truncate)),
    "run/ (checkpoint with code)": ("an unfinished training run whose checkpoints pickle a call to os.system",
                                    _run_with_checkpoint(_pickle_with_code)),
    "comparison/": ("a comparison folder made with other settings (`--steps 999`)", _other_comparison),
    "finished-run/": ("a finished 2-step training run (`train --arch fcn32s`)", _finished_run),
    "typo.yaml": ("a config with the key `stepz: 10`", _text("typo.yaml", "preset: tiny\nstepz: 10\n")),
    "train-typo.yaml": ("a config whose `train` section has `stepz: 10`", _text("train-typo.yaml", "train:\n  stepz: 10\n")),
    "steps-ten.yaml": ("a config with `train: {steps: ten}`", _text("steps-ten.yaml", "train:\n  steps: ten\n")),
    "mu-high.yaml": ("a config with `budget: {mu: high}`", _text("mu-high.yaml", "setting: A\nbudget:\n  mu: high\n")),
    "steps-zero.yaml": ("a config with `train: {steps: 0}`", _text("steps-zero.yaml", "train:\n  steps: 0\n")),
    "broken.yaml": ("a config with an unclosed bracket (`preset: [tiny`)", _text("broken.yaml", "preset: [tiny\nsetting: A\n")),
    "list.yaml": ("a config that is a YAML list", _text("list.yaml", "- preset: tiny\n- setting: A\n")),
    "empty.yaml": ("an empty config file", _text("empty.yaml", "")),
    "twice.yaml": ("a config giving `preset` twice", _text("twice.yaml", "preset: tiny\nsetting: A\npreset: paper\n")),
    "raw.yaml": ("a config with `setting: raw`", _text("raw.yaml", "setting: raw\n")),
    "arch-and-setting.yaml": ("a config with both `arch: unet` and `setting: A`",
                              _text("arch-and-setting.yaml", "arch: unet\nsetting: A\n")),
    "dynamic.pt": ("a dynamic net's state-dict export (`export RUN --format state_dict`)", _dynamic_state_dict),
}

# --- the cases ----------------------------------------------------------------------------------------------
CASES: list[Case] = [
    # spec files
    Case("malformed JSON spec", ("flops", "{dir}/malformed.json"), "spec is not valid JSON", ("malformed.json",)),
    Case("spec that is not UTF-8", ("flops", "{dir}/latin1.json"), "spec is not valid JSON", ("latin1.json",)),
    Case("spec larger than 1 MB", ("flops", "{dir}/huge.json"), "is too large for a spec", ("huge.json",)),
    Case("unknown spec format version", ("flops", "{dir}/version99.json"), "unknown spec format version 99", ("version99.json",)),
    Case("JSON that is not a routespace spec", ("flops", "{dir}/no-format.json"), "not a routespace spec", ("no-format.json",)),
    Case("edge jumping two scales", ("flops", "{dir}/jump.json"), "jumps 2 scales: edges move at most one scale", ("jump.json",)),
    Case("edge skipping a layer", ("flops", "{dir}/skip.json"), "skips a layer: edges connect layer l-1 to layer l", ("skip.json",)),
    Case("unreachable node", ("flops", "{dir}/unreachable.json"), "node (layer 1, scale 0) is not reachable from the stem",
         ("unreachable.json",)),
    Case("node that reaches no output", ("flops", "{dir}/dead-end.json"), "node (layer 2, scale 1) does not reach the decoder",
         ("dead-end.json",)),
    Case("unknown cell type in a spec", ("flops", "{dir}/bad-cell.json"), "unknown cell type 'transformer'", ("bad-cell.json",)),
    Case("space beyond the size limits", ("flops", "{dir}/layers.json"), "space field 'layers' must be an integer in 1..64",
         ("layers.json",)),
    Case("spec file that does not exist", ("flops", "{dir}/nothere.json"), "spec file {dir}/nothere.json does not exist"),
    Case("folder given as a spec", ("flops", "{dir}/notes"), "is a folder, not a spec file", ("notes/",)),
    # sizes, names, formats, paths
    Case("size not divisible by 32", ("flops", "--classic", "unet", "--size", "1000x2000"),
         "input size 1000x2000 is not divisible by 32: use e.g. 992x1984"),
    Case("size over the limit", ("flops", "--classic", "unet", "--size", "16384x16384"), "is too large: at most 8192 a side"),
    Case("size that is not HxW", ("flops", "--classic", "unet", "--size", "big"), "is not of the form HxW"),
    Case("unknown classic", ("flops", "--classic", "vgg16"), "unknown classic 'vgg16'"),
    Case("unknown preset", ("flops", "--classic", "unet", "--preset", "huge"), "unknown preset 'huge': choose one of paper, tiny"),
    Case("unknown subcommand", ("fit",), "invalid choice: 'fit'"),
    Case("unknown export format", ("export", "unet", "--format", "tflite", "-o", "{dir}/unet.tflite"), "invalid choice: 'tflite'"),
    Case("output in a missing folder", ("export", "unet", "--format", "json", "-o", "{dir}/missing/unet.json"),
         "folder {dir}/missing does not exist (create it first)"),
    Case("output path that is a folder", ("export", "unet", "--format", "json", "-o", "{dir}/notes"), "it is a folder; give a file name",
         ("notes/",)),
    # training
    Case("budget mu above 1", ("train", "--out", "{dir}/run", "--budget-mu", "1.5"), "budget mu must be in (0, 1]"),
    Case("budget mu of 0", ("train", "--out", "{dir}/run", "--budget-mu", "0"), "budget mu must be in (0, 1]"),
    Case("budget flags with a static net", ("train", "--out", "{dir}/run", "--arch", "unet", "--budget-mu", "0.3"),
         "budget, setting and gate flags apply to the dynamic net only"),
    Case("unknown dynamic setting for train", ("train", "--out", "{dir}/run", "--setting", "D"), "unknown dynamic setting 'D'"),
    Case("unknown budget mode", ("train", "--out", "{dir}/run", "--budget-mode", "soft"), "unknown budget mode 'soft'"),
    Case("unknown gate resolution", ("train", "--out", "{dir}/run", "--gate-resolution", "half"), "unknown gate resolution 'half'"),
    Case("--skip-closed with a static net", ("train", "--out", "{dir}/run", "--arch", "unet", "--skip-closed"),
         "apply to the dynamic net only"),
    Case("--skip-closed with uniform sampling", ("train", "--out", "{dir}/run", "--sampling", "uniform", "--skip-closed"),
         "--skip-closed applies to the gated dynamic net"),
    Case("--budget-anneal with the paper mode", ("train", "--out", "{dir}/run", "--budget-mode", "paper", "--budget-anneal", "0.3"),
         "--budget-anneal applies to the realised mode"),
    Case("setting raw (no budget) with a budget target", ("train", "--out", "{dir}/run", "--setting", "raw", "--budget-mu", "0.3"),
         "--setting raw has no budget, so --budget-mu is ambiguous"),
    Case("a budgeted setting with --no-budget", ("train", "--out", "{dir}/run", "--setting", "A", "--no-budget"),
         "--no-budget conflicts with --setting A"),
    Case("a budget mode with --no-budget", ("train", "--out", "{dir}/run", "--budget-mode", "paper", "--no-budget"),
         "--no-budget conflicts with --budget-mode"),
    Case("a setting with a static net", ("train", "--out", "{dir}/run", "--arch", "unet", "--setting", "A"),
         "apply to the dynamic net only"),
    Case("zero training steps", ("train", "--out", "{dir}/run", "--steps", "0"), "'steps' must be at least 1"),
    Case("zero torch threads", ("train", "--out", "{dir}/run", "--threads", "0"), "--threads: must be a positive integer"),
    Case("learning rate that is not a number", ("train", "--out", "{dir}/run", "--lr", "nan"), "'lr' must be a finite number"),
    Case("unknown data set", ("train", "--out", "{dir}/run", "--data", "imagenet:/data"), "unknown data set 'imagenet:/data'"),
    Case("Cityscapes folder that does not exist", ("train", "--out", "{dir}/run", "--data", "cityscapes:{dir}/cityscapes"),
         "missing folder {dir}/cityscapes"),
    Case("CUDA asked for on a machine without it", ("train", "--out", "{dir}/run", "--device", "cuda"), "CUDA is not available",
         assumes=("no-cuda",)),
    Case("--resume with nothing to resume", ("train", "--out", "{dir}/run", "--resume"), "nothing to resume in {dir}/run"),
    Case("new run into a folder holding a run", ("train", "--out", "{dir}/run", "--arch", "fcn32s", "--steps", "2", "--size", "32x32",
                                                 "--batch-size", "2"), "already holds a training run: resume it (--resume)",
         ("run/ (truncated checkpoint)",)),
    Case("corrupt checkpoint for --resume", ("train", "--out", "{dir}/run", "--resume"), "is corrupt or not a routespace checkpoint",
         ("run/ (truncated checkpoint)",)),
    Case("checkpoint that carries code", ("train", "--out", "{dir}/run", "--resume"), "which could run code when loaded, so it was refused",
         ("run/ (checkpoint with code)",)),
    # evaluation and extraction
    Case("evaluate a folder that is not a run", ("evaluate", "{dir}/notes"), "is not a training run folder", ("notes/",)),
    Case("evaluate an unfinished run", ("evaluate", "{dir}/run"), "has no final checkpoint", ("run/ (truncated checkpoint)",)),
    Case("extract from a non-dynamic run", ("extract", "{dir}/static-run", "-o", "{dir}/common.json"),
         "holds a static net, not a dynamic one", ("static-run/",)),
    Case("extract with tau outside (0, 1]", ("extract", "{dir}/static-run", "-o", "{dir}/common.json", "--tau", "1.5"),
         "--tau must be in (0, 1]", ("static-run/",)),
    # comparison
    Case("compare with tau outside (0, 1]", ("compare", "--out", "{dir}/comparison", "--tau", "0"), "tau must be in (0, 1]"),
    Case("compare into a folder holding a different run", ("compare", "--out", "{dir}/comparison", "--steps", "4"),
         "already holds a different comparison", ("comparison/",)),
    Case("compare into a folder holding other files", ("compare", "--out", "{dir}/notes", "--steps", "4"),
         "is not empty and holds no comparison", ("notes/",)),
    Case("unknown dynamic setting", ("compare", "--out", "{dir}/comparison", "--dynamic", "D"), "unknown dynamic setting 'D'"),
    Case("compare with an unknown protocol", ("compare", "--out", "{dir}/cmp", "--protocol", "fast"), "unknown protocol 'fast'"),
    Case("compare with an unknown budget mode", ("compare", "--out", "{dir}/cmp", "--budget-mode", "soft"),
         "unknown budget mode 'soft'"),
    Case("compare with a seed given twice", ("compare", "--out", "{dir}/cmp", "--seeds", "0", "0"), "repeat a seed"),
    Case("compare with a dynamic setting given twice", ("compare", "--out", "{dir}/cmp", "--dynamic", "A", "A"),
         "named twice"),
    Case("compare adding a folder that is not a run", ("compare", "--out", "{dir}/cmp", "--add", "{dir}/notes"),
         "is not a training run folder", ("notes/",)),
    Case("compare adding an unfinished run", ("compare", "--out", "{dir}/cmp", "--add", "{dir}/static-run"),
         "is not finished (no final checkpoint)", ("static-run/",)),
    Case("compare adding a run under a row's name", ("compare", "--out", "{dir}/cmp", "--add", "unet={dir}/finished-run"),
         "a row is already called 'unet'", ("finished-run/",)),
    Case("compare adding a run of another size", ("compare", "--out", "{dir}/cmp", "--add", "{dir}/finished-run"),
         "is evaluated at 32x32, the comparison at 64x64", ("finished-run/",)),
    # config files (`train --config`, `config dump`)
    Case("unknown key in a config", ("train", "--out", "{dir}/run", "--config", "{dir}/typo.yaml"),
         "config {dir}/typo.yaml: unknown key 'stepz': allowed are preset, data", ("typo.yaml",)),
    Case("unknown training setting in a config", ("train", "--out", "{dir}/run", "--config", "{dir}/train-typo.yaml"),
         "unknown key 'stepz' in train: allowed are steps, batch_size", ("train-typo.yaml",)),
    Case("config value of the wrong type", ("train", "--out", "{dir}/run", "--config", "{dir}/steps-ten.yaml"),
         "train.steps must be an integer, got 'ten'", ("steps-ten.yaml",)),
    Case("config budget that is not a number", ("train", "--out", "{dir}/run", "--config", "{dir}/mu-high.yaml"),
         "budget.mu must be a number, got 'high'", ("mu-high.yaml",)),
    Case("config value out of range", ("train", "--out", "{dir}/run", "--config", "{dir}/steps-zero.yaml"),
         "train: training setting 'steps' must be at least 1", ("steps-zero.yaml",)),
    Case("config that is not YAML", ("train", "--out", "{dir}/run", "--config", "{dir}/broken.yaml"),
         "config {dir}/broken.yaml is not valid YAML (line 2", ("broken.yaml",)),
    Case("config that is not a mapping", ("train", "--out", "{dir}/run", "--config", "{dir}/list.yaml"),
         "is not a mapping of settings but a list", ("list.yaml",)),
    Case("empty config", ("train", "--out", "{dir}/run", "--config", "{dir}/empty.yaml"), "config {dir}/empty.yaml is empty",
         ("empty.yaml",)),
    Case("config giving a key twice", ("train", "--out", "{dir}/run", "--config", "{dir}/twice.yaml"),
         "key 'preset' is given twice (line 3)", ("twice.yaml",)),
    Case("config file that does not exist", ("train", "--out", "{dir}/run", "--config", "{dir}/nothere.yaml"),
         "config file {dir}/nothere.yaml does not exist, and no bundled config is called so (bundled: paper-dynamic-A"),
    Case("config that is a folder", ("train", "--out", "{dir}/run", "--config", "{dir}/notes"), "is a folder: give a YAML file",
         ("notes/",)),
    Case("budget flag on a config with setting raw", ("train", "--out", "{dir}/run", "--config", "{dir}/raw.yaml",
                                                      "--budget-mu", "0.3"),
         "has setting raw (no budget), so --budget-mu is ambiguous: add --setting A, B or C", ("raw.yaml",)),
    Case("config with a static arch and a dynamic setting", ("train", "--out", "{dir}/run", "--config",
                                                             "{dir}/arch-and-setting.yaml"),
         "arch (a static net) and setting (the dynamic net's) exclude each other", ("arch-and-setting.yaml",)),
    Case("config dump of a folder that is not a run", ("config", "dump", "{dir}/notes"), "is not a training run folder",
         ("notes/",)),
    Case("config dump of a run without train settings", ("config", "dump", "{dir}/static-run"),
         "was not made by `routespace train`", ("static-run/",)),
    Case("config show of an unknown bundled name", ("config", "show", "paper-dynamic-D"),
         "config file paper-dynamic-D does not exist, and no bundled config is called so"),
    # dynamic-net exports
    Case("dynamic net exported as a graph", ("export", "{dir}/dynamic.pt", "--format", "json", "-o", "{dir}/d.json"),
         "the dynamic net has no single architecture to write as a graph", ("dynamic.pt",)),
    Case("dynamic net exported as TorchScript", ("export", "{dir}/dynamic.pt", "--format", "torchscript", "-o", "{dir}/d.pt"),
         "not TorchScript: use --format export or onnx", ("dynamic.pt",)),
    Case("dynamic net drawn as an architecture", ("show", "{dir}/dynamic.pt", "-o", "{dir}/d.png"),
         "holds a dynamic net, which has no single architecture", ("dynamic.pt",)),
    # search
    Case("unknown search strategy", ("search", "--out", "{dir}/search", "--strategy", "bayes"), "unknown strategy 'bayes'"),
    Case("search budget below the cheapest architecture", ("search", "--out", "{dir}/search", "--max-gflops", "0.000001",
                                                           "--evaluator", "synthetic"), "is below the cheapest architecture"),
    Case("negative search budget", ("search", "--out", "{dir}/search", "--max-gflops", "-1"), "--max-gflops must be a positive number"),
    Case("zero trials", ("search", "--out", "{dir}/search", "--trials", "0"), "--trials must be a positive integer"),
    Case("one-shot search without a supernet", ("search", "--out", "{dir}/search", "--evaluator", "oneshot"),
         "--evaluator oneshot needs --supernet RUN"),
    Case("one-shot supernet folder that does not exist", ("search", "--out", "{dir}/search", "--evaluator", "oneshot",
         "--supernet", "{dir}/nothing"), "is not a training run folder"),
    Case("one-shot supernet that is a static net", ("search", "--out", "{dir}/search", "--evaluator", "oneshot",
         "--supernet", "{dir}/static-run"), "holds a static net, not a dynamic supernet", needs=("static-run/",)),
    Case("one-shot supernet of another space", ("search", "--out", "{dir}/search", "--preset", "tiny", "--evaluator", "oneshot",
         "--supernet", "{dir}/supernet-5"), "is a supernet of another space", needs=("supernet-5/",)),
    Case("negative --calibration-batches", ("search", "--out", "{dir}/search", "--evaluator", "oneshot", "--supernet",
         "{dir}/supernet-5", "--calibration-batches", "-1"), "--calibration-batches must be >= 0", needs=("supernet-5/",)),
    Case("negative --retrain-top", ("search", "--out", "{dir}/search", "--evaluator", "synthetic", "--retrain-top", "-1"),
         "--retrain-top must be >= 0"),
    Case("--retrain-steps without --retrain-top", ("search", "--out", "{dir}/search", "--evaluator", "synthetic",
         "--retrain-steps", "5"), "--retrain-steps applies to --retrain-top K only"),
    Case("evolution with a population of one", ("search", "--out", "{dir}/search", "--evaluator", "synthetic",
         "--strategy", "evolution", "--strategy-option", "population_size=1"), "population_size must be an integer >= 2"),
    Case("--supernet without the one-shot evaluator", ("search", "--out", "{dir}/search", "--supernet", "{dir}/x"),
         "--supernet and --calibration-batches apply to --evaluator oneshot only"),
    Case("storage URL that cannot be opened (SQLite in a missing folder)",
         ("search", "--out", "{dir}/search", "--storage", "sqlite:///{dir}/missing/study.db", "--evaluator", "synthetic"),
         "cannot open storage sqlite:///{dir}/missing/study.db"),
    Case("storage URL of an unknown kind", ("search", "--out", "{dir}/search", "--storage", "mongodb://localhost/db",
                                            "--evaluator", "synthetic"), "cannot open storage mongodb://localhost/db"),
    Case("search --resume with nothing to resume", ("search", "--out", "{dir}/search", "--resume", "--evaluator", "synthetic"),
         "nothing to resume"),
    Case("--storage-env naming an environment variable that is not set",
         ("search", "--out", "{dir}/search", "--storage-env", "ROUTESPACE_STORAGE"),
         "environment variable ROUTESPACE_STORAGE is not set", env=(("ROUTESPACE_STORAGE", None),)),
    Case("--storage-env naming an empty environment variable", ("search", "--out", "{dir}/search", "--storage-env", "RS_EMPTY"),
         "environment variable RS_EMPTY is empty", env=(("RS_EMPTY", ""),)),
    Case("--storage-env variable holding no URL (a bare password)",
         ("search", "--out", "{dir}/search", "--storage-env", "RS_PASSWORD"),
         "does not hold a storage URL (its value is not shown)", env=(("RS_PASSWORD", "hunter22"),)),
    Case("--storage-env given the URL itself instead of a variable name",
         ("search", "--out", "{dir}/search", "--storage-env", "postgresql://searcher:hunter22@db/rs"),
         "takes the name of an environment variable holding the storage URL, not 'postgresql://searcher:***@db/rs'"),
    Case("both --storage and --storage-env", ("search", "--out", "{dir}/search", "--storage", "sqlite:///{dir}/study.db",
                                              "--storage-env", "RS_URL"),
         "either by --storage or by --storage-env, not both", env=(("RS_URL", "sqlite:///study.db"),)),
    Case("--storage-env URL that cannot be opened (its password is masked)",
         ("search", "--out", "{dir}/search", "--storage-env", "RS_DB", "--evaluator", "synthetic"),
         "cannot open storage postgresql://nobody:***@127.0.0.1:1/none",
         env=(("RS_DB", "postgresql://nobody:hunter22@127.0.0.1:1/none"),)),
    Case("training that does not fit in memory", ("train", "--out", "{dir}/run", "--preset", "paper", "--size", "1024x2048", "--batch-size", "8"), "at peak (estimate)",
         assumes=("small-memory",)),
]


def set_case_env(case: Case, monkeypatch) -> None:
    """Set (or unset) the case's environment variables through pytest's ``monkeypatch``."""
    for name, value in case.env:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def command_text(case: Case) -> str:
    """The case's command as a user would type it (fixture folder left out), its environment in front."""
    env = "".join(f"env -u {name} " if value is None else f"{name}={shlex.quote(value)} " for name, value in case.env)
    return env + "routespace " + shlex.join(a.replace("{dir}/", "") for a in case.argv)


def render_markdown(cases: list[Case] = CASES) -> str:
    """docs/bad-inputs.md: the cases as a table, and the files they use."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "# Bad inputs and what routespace answers",
        "",
        "Every row is a test case (`tests/bad_inputs.py`, run by `tests/test_bad_inputs.py`): the command",
        "exits with code 2, prints exactly one line `routespace: error: ...` on stderr that contains the",
        "quoted text, and writes no file. Any other exception is a bug and keeps its traceback: please report",
        "it with the command and the traceback.",
        "",
        "Generated from the test cases; do not edit by hand. Regenerate with",
        "`python tests/bad_inputs.py > docs/bad-inputs.md`.",
        "",
        "| # | Bad input | Command | The error line contains |",
        "|---|---|---|---|",
    ]
    for i, case in enumerate(cases, 1):
        expect = case.expect.replace("{dir}/", "")
        lines.append(f"| {i} | {cell(case.what)} | `{cell(command_text(case))}` | {cell(expect)} |")
    used = sorted({n for c in cases for n in c.needs}, key=list(FIXTURES).index)
    lines += ["", "Files the commands above refer to:", ""]
    lines += [f"- `{name}`: {FIXTURES[name][0]}" for name in used]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
