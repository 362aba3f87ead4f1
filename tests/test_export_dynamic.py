"""Exports of the dynamic-routing supernet: `routespace export` of a dynamic state dict (or run folder) to
torch.export (.pt2) and ONNX writes the dense masked forward with its gates, logits only; loaded where
routespace cannot be imported (torch.export.load, onnxruntime) it equals eager ``forward_skipping`` on
images whose routes differ."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_export_model import run_without_routespace

from routespace.cli.main import main
from routespace.evaluators.evaluate import load_run_model
from routespace.spaces.exports import export, load_state_dict
from routespace.spaces.exports.dynamic import SPEC_FILE, STATE_DICT_FORMAT
from routespace.spaces.space import RoutingSpace
from routespace.spaces.supernet import DynamicNet

# 3 layers reach every scale (layer l has scales 0..min(l, 3): a route can end at stride 4, 8, 16 or 32); the
# fewest that do, since the export time grows with the supernet's edges (15 here, 25 at 4 layers)
SPACE = RoutingSpace(layers=3, base_channels=8, num_classes=5, input_size=(64, 64))
SIZES = [(64, 64), (96, 128), (32, 96)]
BATCH = 6


def _routed_net(seed: int = 0) -> DynamicNet:
    """A supernet with random BN statistics and random gate weights and biases, so the gates differ from
    image to image (untrained gates, bias 1.5, are open everywhere)."""
    torch.manual_seed(seed)
    net = DynamicNet(SPACE, gate_resolution="quarter")
    g = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    for gate in net.gates.values():
        gate.fc.weight.data.normal_(0.0, 1.0, generator=g)
        gate.fc.bias.data.normal_(0.0, 0.5, generator=g)
    return net.eval()


def _routes(out, n: int) -> tuple[list[frozenset], list[int], int]:
    """Per image: its set of open edges and its coarsest last-layer scale; and the number of pass-throughs."""
    opened = [frozenset(k for k, v in out.edge_gates.items() if v[i] > 0) for i in range(n)]
    last = [(SPACE.layers, s) for s in range(SPACE.scales) if (SPACE.layers, s) in out.alive]
    top = [max(s for (_, s) in last if out.alive[(SPACE.layers, s)][i]) for i in range(n)]
    passed = sum(int(out.passed(node).sum()) for node in out.alive)
    return opened, top, passed


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The net's state-dict export, its .pt2 and .onnx written by the CLI from it, and inputs with eager
    ``forward_skipping`` logits at SIZES as .npy."""
    root = tmp_path_factory.mktemp("dynamic")
    net = _routed_net()
    export(net, "state_dict", root / "dyn.pt")
    for fmt, name in (("export", "dyn.pt2"), ("onnx", "dyn.onnx")):
        assert main(["export", str(root / "dyn.pt"), "--format", fmt, "-o", str(root / name)]) == 0
    routes = []
    for k, (h, w) in enumerate(SIZES):
        x = torch.randn(BATCH, 3, h, w, generator=torch.Generator().manual_seed(k))
        with torch.no_grad():
            out = net.forward_skipping(x)
            dense = net(x).logits
        assert torch.allclose(dense, out.logits, rtol=0, atol=1e-5 * float(out.logits.abs().max()))
        routes.append(_routes(out, BATCH))
        np.save(root / f"x{k}.npy", x.numpy())
        np.save(root / f"y{k}.npy", out.logits.numpy())
    return root, routes


def test_routes_differ_between_images(exported):
    """The check below is only meaningful if the images really take different routes."""
    _, routes = exported
    for opened, top, _ in routes[::2]:  # 64x64 and 32x96 (at 96x128 these gates happen to agree)
        assert len(set(opened)) >= 2
        assert len(set(top)) >= 2  # the decoder starts at different scales: its per-image masking is exercised
    assert sum(p for _, _, p in routes) > 0  # closed nodes passing their input on


RUNNER = """
    import numpy as np, onnx, onnxruntime as ort, torch
    torch.set_num_threads(1)
    root, sizes = sys.argv[1], int(sys.argv[2])
    extra = {"routespace_dynamic_spec.json": ""}
    program = torch.export.load(f"{root}/dyn.pt2", extra_files=extra).module()
    sess = ort.InferenceSession(f"{root}/dyn.onnx", providers=["CPUExecutionProvider"])
    model = onnx.load(f"{root}/dyn.onnx")
    out = {"export": [], "onnx": [], "abs": {"export": 0.0, "onnx": 0.0},
           "spec": json.loads(extra["routespace_dynamic_spec.json"]),
           "dims": [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                    for v in (model.graph.input[0], model.graph.output[0])]}
    for k in range(sizes):
        x, y = np.load(f"{root}/x{k}.npy"), np.load(f"{root}/y{k}.npy")
        with torch.no_grad():
            res = {"export": program(torch.from_numpy(x)).numpy()}
        res["onnx"] = sess.run(["logits"], {"image": x})[0]
        for fmt, r in res.items():
            err = float(np.abs(r - y).max()) if r.shape == y.shape else 1e9
            out[fmt].append(err / float(np.abs(y).max()))
            out["abs"][fmt] = max(out["abs"][fmt], err)
"""


def test_dynamic_exports_run_without_routespace_and_equal_skipping(exported, tmp_path):
    root, _ = exported
    out = run_without_routespace(RUNNER, [str(root), str(len(SIZES))], tmp_path)
    print("dynamic net, max |export - forward_skipping| / max |logits|:",
          {f: max(out[f]) for f in ("export", "onnx")}, "abs:", out["abs"])
    assert len(out["export"]) == len(out["onnx"]) == len(SIZES)
    assert max(out["export"]) <= 1e-6, out["export"]
    assert max(out["onnx"]) <= 1e-5, out["onnx"]
    assert out["dims"] == [["N", 3, "H", "W"], ["N", SPACE.num_classes, "H", "W"]]  # logits only, N/H/W symbolic
    assert out["spec"] == {"space": SPACE.to_dict(), "gate_resolution": "quarter"}
    assert SPEC_FILE == "routespace_dynamic_spec.json"


def test_dynamic_state_dict_round_trip(tmp_path):
    net = _routed_net(seed=5)
    export(net, "state_dict", tmp_path / "d.pt")
    payload = torch.load(tmp_path / "d.pt", weights_only=True)
    assert payload["format"] == STATE_DICT_FORMAT and json.loads(payload["spec"]) == net.spec()
    back = load_state_dict(tmp_path / "d.pt")
    assert isinstance(back, DynamicNet) and not back.training
    x = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    assert torch.equal(back.forward_skipping(x).logits, net.forward_skipping(x).logits)


def test_export_of_a_dynamic_run_folder_carries_its_trained_weights(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--setting", "A", "--steps", "2", "--batch-size", "2", "--size", "32x32",
                 "--out", str(run), "--no-tensorboard"]) == 0
    assert main(["export", str(run), "--format", "state_dict", "-o", str(tmp_path / "run.pt")]) == 0
    assert "dynamic net spec and weights" in capsys.readouterr().out
    manifest = json.loads((run / "manifest.json").read_text())
    ref = torch.load(run / "checkpoints" / "final.pt", weights_only=True)["model"]  # the checkpoint, read directly
    payload = torch.load(tmp_path / "run.pt", weights_only=True)
    assert payload["format"] == STATE_DICT_FORMAT and json.loads(payload["spec"]) == manifest["spec"]
    assert set(payload["state_dict"]) == set(ref)
    assert all(torch.equal(v, ref[k]) for k, v in payload["state_dict"].items())
    back = load_state_dict(tmp_path / "run.pt")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(back.forward_skipping(x).logits, load_run_model(run)[0].eval().forward_skipping(x).logits)
