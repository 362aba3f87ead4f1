"""The fast paths of the skipping executor (issue 14): at batch 1, and at batch > 1 when every image takes
the same decisions, it runs with no gather/scatter at all, and it still equals the dense forward (1e-5)
and counts the FLOPs an independent simulation counts, on gate patterns with pass-through nodes, closed
layers and dead scales; its per-node plan is built once per input size."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from test_supernet import CASES, _hand_count, _hooked_flops, _net, _random_gates

from routespace.spaces.space import preset

INDEXING = ("index_select", "index_add", "index_put", "index_copy", "index.Tensor", "gather", "scatter", "nonzero")


class _OpLog(TorchDispatchMode):
    """Records the name of every aten op dispatched."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _indexing(ops):
    return [o for o in ops if any(k in o for k in INDEXING)]


def _check(net, x, gates, size):
    with torch.no_grad():
        dense = net(x, gate_override=gates)
    log = _OpLog()
    with log:
        skip, hooked = _hooked_flops(net, lambda: net.forward_skipping(x, gate_override=gates))
    _assert_skipping_equals_dense(net, dense, skip, hooked, size, gates)
    return skip, log.ops


def _assert_skipping_equals_dense(net, dense, skip, hooked, size, gates) -> None:
    """Logits within 1e-5, realised FLOPs equal to the hand count and to what the hooks saw, and the same
    alive/cell-ran flags and gates as the dense forward."""
    assert (dense.logits - skip.logits).abs().max() <= 1e-5 * max(1.0, float(dense.logits.abs().max()))
    body, total, heads = _hand_count(net.space, size, net, gates)
    assert torch.equal(skip.realised_body_flops, body) and torch.equal(skip.realised_flops, total)
    assert hooked == int(skip.realised_flops.sum() - heads.sum())
    for node in net.space.nodes():
        assert torch.equal(dense.alive[node], skip.alive[node])
        assert torch.equal(dense.cell_ran[node], skip.cell_ran[node])
    for key, g in dense.edge_gates.items():
        assert torch.equal(g, skip.edge_gates[key])


@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("size,gate_resolution", [((64, 64), "full"), ((96, 160), "quarter")])
def test_batch1_fast_path_equals_dense_without_indexing(case, size, gate_resolution):
    net = _net(preset("tiny"), seed=case["seed"], gate_resolution=gate_resolution)
    gen = torch.Generator().manual_seed(case["seed"])
    gates = _random_gates(net, 1, gen, case.get("p_closed", 0.4), case.get("close_nodes", ()),
                          case.get("close_layers", ()), case.get("close_edges", ()))
    x = torch.randn(1, 3, *size, generator=gen, dtype=torch.float64)
    skip, ops = _check(net, x, gates, size)
    assert _indexing(ops) == []
    if case.get("close_layers"):
        assert any(skip.passed(n).any() for n in net.space.nodes() if n[0] == case["close_layers"][0])
    if case.get("close_edges"):
        assert not any(skip.alive[n].any() for n in net.space.nodes() if n[1] == 3)


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: str(c))
def test_uniform_decisions_at_batch_4_need_no_indexing(case):
    """Four images, different gate values, the same open/closed pattern: the whole batch goes through
    every open op together (no gather/scatter), and still equals the dense forward."""
    net = _net(preset("tiny"), seed=case["seed"])
    gen = torch.Generator().manual_seed(case["seed"])
    one = _random_gates(net, 1, gen, case.get("p_closed", 0.4), case.get("close_nodes", ()), case.get("close_layers", ()))
    gates = {n: (g > 0) * (torch.rand(4, g.shape[1], generator=gen, dtype=torch.float64) * 0.9 + 0.05)
             for n, g in one.items()}
    x = torch.randn(4, 3, 64, 64, generator=gen, dtype=torch.float64)
    _, ops = _check(net, x, gates, (64, 64))
    assert _indexing(ops) == []


def test_mixed_decisions_and_learned_gates_in_float32():
    """Batch 6 where images decide differently (gathers needed) and the gates are the net's own (the
    heads' batched activation), float32: equal to dense, gates bit-identical."""
    net = _net(preset("tiny"), seed=7, double=False, gate_resolution="quarter")
    with torch.no_grad():
        for g in net.gates.values():
            g.fc.bias.uniform_(-1.0, 1.5)
    x = torch.randn(6, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = net(x)
    skip, hooked = _hooked_flops(net, lambda: net.forward_skipping(x))
    assert hooked == int(skip.realised_flops.sum())
    assert (dense.logits - skip.logits).abs().max() <= 1e-5 * max(1.0, float(dense.logits.abs().max()))
    assert torch.equal(dense.realised_flops, skip.realised_flops)
    for key, g in dense.edge_gates.items():
        assert torch.equal(g, skip.edge_gates[key])
    assert any(skip.passed(n).any() for n in net.space.nodes())
    ran = [skip.cell_ran[n] for n in net.space.nodes()]
    assert any(r.any() and not r.all() for r in ran), "test needs images that decide differently"


def test_plan_is_built_once_per_input_size():
    net = _net(preset("tiny"), seed=1, double=False)
    x = torch.randn(1, 3, 64, 64)
    net.forward_skipping(x)
    plan = net._plans[(64, 64)]
    net.forward_skipping(torch.randn(2, 3, 64, 64))
    assert net._plans[(64, 64)] is plan
    net.forward_skipping(torch.randn(1, 3, 64, 96))
    assert set(net._plans) == {(64, 64), (64, 96)}


def test_gate_override_of_the_wrong_shape_is_refused():
    from routespace.spaces.errors import RoutespaceError

    net = _net(preset("tiny"), seed=1, double=False)
    bad = {(0, 0): torch.ones(2, len(net.out_keys[(0, 0)]))}
    with pytest.raises(RoutespaceError, match="must have shape"):
        net.forward_skipping(torch.randn(1, 3, 64, 64), gate_override=bad)


@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c))
def test_group_routes_equals_dense(case):
    """``group_routes``: images split where they first decide differently and run on alone; same logits,
    gates, flags and FLOPs as the dense forward, and what ran is what was counted."""
    net = _net(preset("tiny"), seed=case["seed"], gate_resolution="quarter")
    gen = torch.Generator().manual_seed(case["seed"])
    gates = _random_gates(net, 5, gen, case.get("p_closed", 0.4), case.get("close_nodes", ()),
                          case.get("close_layers", ()), case.get("close_edges", ()))
    x = torch.randn(5, 3, 96, 160, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        dense = net(x, gate_override=gates)
    skip, hooked = _hooked_flops(net, lambda: net.forward_skipping(x, gate_override=gates, group_routes=True))
    _assert_skipping_equals_dense(net, dense, skip, hooked, (96, 160), gates)


def test_group_routes_with_two_routes_gathers_only_where_they_split():
    """Images 0, 2 take one route, 1, 3 another: one split (an index_select per live tensor of that
    layer), no scatter-adds, an index_copy_ per group putting its logits back."""
    net = _net(preset("tiny"), seed=3)
    gen = torch.Generator().manual_seed(3)
    a, b = (_random_gates(net, 1, gen, 0.5) for _ in range(2))
    gates = {n: torch.cat([a[n], b[n], a[n], b[n]]) for n in a}
    x = torch.randn(4, 3, 64, 64, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        dense = net(x, gate_override=gates)
    log = _OpLog()
    with log:
        skip = net.forward_skipping(x, gate_override=gates, group_routes=True)
    assert (dense.logits - skip.logits).abs().max() <= 1e-5 * max(1.0, float(dense.logits.abs().max()))
    assert torch.equal(dense.realised_flops, skip.realised_flops)
    ops = _indexing(log.ops)
    assert not [o for o in ops if "index_add" in o or "index_put" in o]
    assert sum("index_copy" in o for o in ops) == 2
    assert 0 < sum("index_select" in o for o in ops)
