"""The supernet: skipping executor == dense masked computation; FLOPs counted == analytic cost."""
import pytest
import torch

from routespace.evaluators.cost import cell_cost, edge_cost, gate_cost, space_cost, stem_cost, decoder_cost
from routespace.spaces.space import RoutingSpace, preset
from routespace.spaces.supernet import GATE_EPS, DynamicNet, budget_loss, body_flops_all_open

torch.set_num_threads(2)


def _net(space, seed=0):
    torch.manual_seed(seed)
    net = DynamicNet(space)
    # give BN non-trivial statistics so biases matter (a node without input would emit them)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


def _random_gates(net, n, gen, p_closed=0.4, close_nodes=(), close_layers=()):
    gates = {}
    for node, keys in net.out_keys.items():
        g = torch.rand(n, len(keys), generator=gen) * 0.99 + 0.005
        g[torch.rand(n, len(keys), generator=gen) < p_closed] = 0.0
        if node in close_nodes or node[0] in close_layers:
            g[:] = 0.0
        gates[node] = g
    return gates


def _hand_count(space, size, gates):
    """Independent count of what must run per image, from the analytic per-part costs."""
    n = next(iter(gates.values())).shape[0]
    body = torch.zeros(n, dtype=torch.float64)
    gate_total = torch.zeros(n, dtype=torch.float64)
    alive = {(0, 0): torch.ones(n, dtype=torch.bool)}
    for node in space.nodes():
        a = alive.get(node, torch.zeros(n, dtype=torch.bool))
        g = gates[node] * a[:, None]
        gate_total += a * gate_cost(space, node, size, "paper")[0]
        if node[0] > 0:
            body += (g.max(1).values > 0) * cell_cost(space, node, space.cell, size, "paper")[0]
        for i, e in enumerate(space.out_edges(node)):
            on = g[:, i] > 0
            body += on * edge_cost(space, e, size, "paper")[0]
            tgt = (e[0], e[2])
            alive[tgt] = alive.get(tgt, torch.zeros(n, dtype=torch.bool)) | on
    fixed = stem_cost(space, size, "paper")[0] + decoder_cost(space, 3, size, "paper")[0]
    return body, body + gate_total + fixed


CASES = [
    dict(seed=1),
    dict(seed=2, close_nodes=[(3, 1), (4, 2), (2, 0)]),
    dict(seed=3, close_layers=[5]),  # a whole layer closed: nothing reaches the decoder
    dict(seed=4, close_layers=[0]),  # the stem closed
    dict(seed=5, p_closed=0.8),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_skipping_equals_dense_and_counts_exactly(case, size):
    space = preset("tiny")
    net = _net(space, seed=case["seed"])
    gen = torch.Generator().manual_seed(case["seed"])
    gates = _random_gates(net, 5, gen, case.get("p_closed", 0.4), case.get("close_nodes", ()), case.get("close_layers", ()))
    x = torch.randn(5, 3, *size, generator=gen)
    dense = net(x, gate_override=gates)
    skip = net.forward_skipping(x, gate_override=gates)
    assert torch.allclose(dense.logits, skip.logits, atol=1e-5), (dense.logits - skip.logits).abs().max()
    body, total = _hand_count(space, size, gates)
    assert torch.equal(skip.realised_body_flops.double(), body)
    assert torch.equal(skip.realised_flops.double(), total)
    assert torch.equal(dense.realised_body_flops.double(), body)
    for node in space.nodes():
        assert torch.equal(dense.alive[node], skip.alive[node])
        assert torch.equal(dense.cell_ran[node], skip.cell_ran[node])
    if case.get("close_layers"):
        assert (skip.realised_body_flops < body_flops_all_open(space, size)).all()


def test_learned_gates_skipping_equals_dense():
    space = preset("tiny")
    net = _net(space, seed=7)
    with torch.no_grad():  # spread the gate biases so some gates close on their own
        for g in net.gates.values():
            g.fc.bias.uniform_(-1.0, 1.5)
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    dense, skip = net(x), net.forward_skipping(x)
    assert torch.allclose(dense.logits, skip.logits, atol=1e-5)
    assert torch.equal(dense.realised_flops, skip.realised_flops)
    assert any((g == 0).any() for g in dense.edge_gates.values()), "test needs some closed gates"


def test_all_open_expected_flops_equal_foundation_all_open_cost():
    space = RoutingSpace(layers=5, base_channels=8, num_classes=3, input_size=(64, 64), name="t")
    net = _net(space)
    ones = {n: torch.ones(2, len(k)) for n, k in net.out_keys.items()}
    out = net(torch.randn(2, 3, 64, 96), gate_override=ones)
    with_gates = space_cost(space, (64, 96), gates=True)
    assert torch.allclose(out.expected_flops.double(), torch.tensor(float(with_gates.flops), dtype=torch.float64))
    assert torch.allclose(out.expected_body_flops.double(), torch.tensor(float(with_gates.body_flops), dtype=torch.float64))
    assert with_gates.body_flops == body_flops_all_open(space, (64, 96))


def test_gates_threshold_and_range():
    space = preset("tiny")
    net = _net(space)
    out = net(torch.randn(3, 3, 64, 64))
    for g in out.edge_gates.values():
        assert ((g == 0) | ((g >= GATE_EPS) & (g < 1))).all()


def test_budget_loss_gradient_reaches_gates_and_realised_estimator_matches_realised_flops():
    space = preset("tiny")
    torch.manual_seed(0)
    net = DynamicNet(space).train()
    out = net(torch.randn(2, 3, 64, 64))
    assert torch.allclose(out.budget_body_flops.detach(), out.realised_body_flops)
    loss = budget_loss(out, body_flops_all_open(space, (64, 64)), mu=0.1, lam=1.0)
    loss.backward()
    grads = [g.fc.bias.grad for g in net.gates.values()]
    assert all(gr is not None for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0
    # pushing towards a small budget lowers the gate biases (positive gradient)
    assert float(net.gates["1_0"].fc.bias.grad.sum()) > 0


def test_paper_preset_forward_at_256x512_and_all_open_cost():
    """The paper supernet runs on CPU at 256x512; with every gate open its expected FLOPs are the
    foundation's all-open cost (with gate heads) at that size."""
    space = preset("paper")
    torch.manual_seed(0)
    net = DynamicNet(space).eval()
    ones = {n: torch.ones(1, len(k)) for n, k in net.out_keys.items()}
    with torch.no_grad():
        out = net(torch.randn(1, 3, 256, 512), gate_override=ones)
    assert out.logits.shape == (1, 19, 256, 512)
    expected = space_cost(space, (256, 512), gates=True)
    assert float(out.expected_flops[0]) == pytest.approx(expected.flops, rel=1e-6)
    assert float(out.realised_flops[0]) == pytest.approx(expected.flops, rel=1e-6)
