"""Model exports: TorchScript, torch.export (.pt2) and ONNX run without routespace (plain torch /
onnxruntime) and match eager at several sizes; the state dict loads with weights_only=True and rebuilds
the same net."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from routespace.spaces.builder import build
from routespace.spaces.classics import classic
from routespace.spaces.errors import RoutespaceError
from routespace.spaces import cells
from routespace.spaces.exports import ONNX_OPSET, export, load_state_dict
from routespace.spaces.exports import model as export_model
from routespace.spaces.exports.model import state_dict_payload
from routespace.spaces.random_arch import random_architecture
from routespace.spaces.space import RoutingSpace, preset

SIZES = [(64, 64), (96, 128), (32, 96)]  # the example input is 64x64; 32 is the smallest valid side
# Which nets go to which formats: the classic to all three, the random subgraph (res2net/basic cells) to the
# two older ones (each dynamo ONNX export costs ~40 s on one CPU thread).
FORMATS = {"hrnetv2": ("torchscript", "export", "onnx"), "random": ("torchscript", "onnx")}
SUFFIX = {"torchscript": "pt", "export": "pt2", "onnx": "onnx"}
# The exported nets' space: 5 layers reach every scale and carry HRNetV2's exchanges; narrower and shorter
# than the tiny preset, which halves the time of each export (the export path does not depend on depth).
SMALL = RoutingSpace(layers=5, base_channels=8, num_classes=5, input_size=(64, 64), name="small")
# The random subgraph's space: 3 layers, the fewest that reach every scale; its seed-12 subgraph (7 edges, half
# the edges of a 5-layer one, so half the trace) has sepconv, res2net and basic cells, down and up edges, and a
# node at every scale.
SMALL3 = RoutingSpace(layers=3, base_channels=8, num_classes=5, input_size=(64, 64), name="small3")


def _net(arch, seed=0):
    """A built net with random weights and random BN statistics, so eval-mode BN is not an identity."""
    torch.manual_seed(seed)
    net = build(arch)
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two nets (HRNetV2 with up/down exchange; a random subgraph with res2net/basic cells), exported as in
    FORMATS, with inputs and eager outputs at the SIZES saved as .npy."""
    upsample_to = cells.upsample_to
    root = tmp_path_factory.mktemp("models")
    archs = {
        "hrnetv2": classic("hrnetv2", SMALL),
        "random": random_architecture(SMALL3, 12, p=0.5, cell_choices=["sepconv", "res2net", "basic"]),
    }
    cell_types = {archs["random"].cell_of(node) for node in archs["random"].nodes if node[0] > 0}
    assert cell_types == {"sepconv", "res2net", "basic"}, cell_types  # every cell type goes through the exporters
    cases = []
    for name, arch in archs.items():
        net = _net(arch)
        for fmt in FORMATS[name]:
            export(net, fmt, root / f"{name}.{SUFFIX[fmt]}")
        for k, (h, w) in enumerate(SIZES):
            x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(k))
            with torch.no_grad():
                y = net(x)
            assert y.shape == (2, arch.space.num_classes, h, w)
            np.save(root / f"{name}_x{k}.npy", x.numpy())
            np.save(root / f"{name}_y{k}.npy", y.numpy())
            cases.append((name, k))
    assert cells.upsample_to is upsample_to  # torch.export's temporary resampling swap is undone
    return root, cases


# The start of every script that loads exported models: routespace cannot be imported from here on.
BLOCKER = textwrap.dedent(
    """
    import json, sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "routespace" or name.startswith("routespace."):
                raise ImportError("routespace is blocked in this check")
    sys.meta_path.insert(0, _Block())
    try:
        import routespace
        print(json.dumps({"error": "routespace importable"})); sys.exit(3)
    except ImportError:
        pass
    """
)


def run_without_routespace(script_body: str, args: list[str], tmp_path) -> dict:
    """Run BLOCKER + ``script_body`` (which fills a dict ``out``) in a fresh interpreter (``-I``, one thread);
    returns ``out``, after checking that no routespace module was loaded."""
    script = tmp_path / "run_exports.py"
    script.write_text(BLOCKER + textwrap.dedent(script_body) + textwrap.dedent(
        """
        out["routespace_loaded"] = any(m.startswith("routespace") for m in sys.modules)
        print(json.dumps(out))
        """))
    proc = subprocess.run([sys.executable, "-I", str(script), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["routespace_loaded"]
    return out


RUNNER = textwrap.dedent(
    """
    import os
    import numpy as np, onnx, onnxruntime as ort, torch
    torch.set_num_threads(1)
    root, cases = sys.argv[1], json.loads(sys.argv[2])
    # per format, per case: max |exported - eager| / max |eager| (the nets' logits are large: relative)
    out = {"torchscript": [], "export": [], "onnx": [], "abs": {}, "opset": {}, "dims": {}, "spec": {}}
    loaded = {}
    def rel(name, fmt, res, y):
        err = float(np.abs(res - y).max()) if res.shape == y.shape else 1e9
        out[fmt].append(err / float(np.abs(y).max()))
        out["abs"][fmt] = max(out["abs"].get(fmt, 0.0), err)
    for name, k in cases:
        x, y = np.load(f"{root}/{name}_x{k}.npy"), np.load(f"{root}/{name}_y{k}.npy")
        if name not in loaded:
            loaded[name] = {"torchscript": torch.jit.load(f"{root}/{name}.pt"),
                            "onnx": ort.InferenceSession(f"{root}/{name}.onnx", providers=["CPUExecutionProvider"])}
            if os.path.exists(f"{root}/{name}.pt2"):
                extra = {"routespace_spec.json": ""}
                loaded[name]["export"] = torch.export.load(f"{root}/{name}.pt2", extra_files=extra).module()
                out["spec"][name] = json.loads(extra["routespace_spec.json"])["format"]
            model = onnx.load(f"{root}/{name}.onnx")
            out["opset"][name] = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0]
            out["dims"][name] = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                                 for v in (model.graph.input[0], model.graph.output[0])]
            out["single_file"] = not any(f.endswith(".data") for f in os.listdir(root))
        m = loaded[name]
        with torch.no_grad():
            rel(name, "torchscript", m["torchscript"](torch.from_numpy(x)).numpy(), y)
            if "export" in m:
                rel(name, "export", m["export"](torch.from_numpy(x)).numpy(), y)
        (res,) = m["onnx"].run(["logits"], {"image": x})
        rel(name, "onnx", res, y)
    """
)


def test_exports_run_without_routespace(exported, tmp_path):
    root, cases = exported
    out = run_without_routespace(RUNNER, [str(root), json.dumps(cases)], tmp_path)
    print("max |export - eager| / max |eager|:", {f: max(out[f]) for f in SUFFIX}, "abs:", out["abs"])
    assert len(out["torchscript"]) == len(out["onnx"]) == len(cases) == 6 and len(out["export"]) == 3
    assert max(out["torchscript"]) <= 1e-6, out["torchscript"]
    assert max(out["export"]) <= 1e-6, out["export"]
    assert max(out["onnx"]) <= 1e-5, out["onnx"]
    assert set(out["opset"].values()) == {ONNX_OPSET}
    assert out["single_file"]  # weights inside the .onnx, no external .data file beside it
    assert out["spec"] == {"hrnetv2": "routespace.architecture"}  # the .pt2 carries its spec
    for name, (dims_in, dims_out) in out["dims"].items():  # symbolic batch, H and W; channels fixed
        assert dims_in == ["N", 3, "H", "W"], name
        assert dims_out == ["N", 5, "H", "W"], name


def test_onnx_falls_back_to_the_torchscript_exporter(tmp_path, monkeypatch):
    """Without onnxscript the TorchScript-based exporter writes the same contract (opset, names, axes)."""
    import onnx
    import onnxruntime as ort

    monkeypatch.setattr(export_model, "onnx_exporter", lambda: "torchscript")
    net = _net(classic("fcn32s", preset("tiny")))
    detail = export_model.save_onnx(net, tmp_path / "f.onnx")
    assert "TorchScript-based" in detail
    model = onnx.load(tmp_path / "f.onnx")
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [ONNX_OPSET]
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["N", 3, "H", "W"]
    sess = ort.InferenceSession(str(tmp_path / "f.onnx"), providers=["CPUExecutionProvider"])
    for h, w in SIZES[1:]:
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            y = net(x).numpy()
        (res,) = sess.run(["logits"], {"image": x.numpy()})
        assert np.abs(res - y).max() <= 1e-5 * np.abs(y).max()


def test_blocker_really_blocks(tmp_path):
    """The check above would be meaningless if routespace could still be imported under the hook."""
    code = BLOCKER + "print('blocked')\n"
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "blocked"
    probe = subprocess.run([sys.executable, "-I", "-c", "import routespace.spaces; print('ok')"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "ok"  # without the hook it is importable, so the hook is what blocks it


def test_state_dict_export_round_trip(tmp_path):
    arch = random_architecture(preset("tiny"), 5, p=0.4, cell_choices=["sepconv", "basic"], name="sd")
    net = _net(arch, seed=3)
    path = tmp_path / "net.pt"
    export(net, "state_dict", path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "routespace.state_dict" and isinstance(payload["spec"], str)
    assert json.loads(payload["spec"])["format"] == "routespace.architecture"
    back = load_state_dict(path)
    assert back.arch == arch and back.arch.name == "sd"
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    assert set(state_dict_payload(net)["state_dict"]) == set(net.state_dict())


def test_state_dict_mismatch_and_garbage_are_user_errors(tmp_path):
    net = _net(classic("fcn32s", preset("tiny")))
    payload = state_dict_payload(net)
    payload["spec"] = classic("unet", preset("tiny")).to_json()
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(RoutespaceError, match="do not match"):
        load_state_dict(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(RoutespaceError, match="not a routespace state dict"):
        load_state_dict(junk)


def test_export_from_architecture_is_seeded(tmp_path):
    arch = classic("deeplabv3", preset("tiny"))
    export(arch, "state_dict", tmp_path / "a.pt", seed=4)
    export(arch, "state_dict", tmp_path / "b.pt", seed=4)
    a, b = (torch.load(tmp_path / f, weights_only=True)["state_dict"] for f in ("a.pt", "b.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
