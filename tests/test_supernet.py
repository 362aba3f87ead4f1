"""The supernet with the released semantics: pass-through of closed nodes, skipping == dense, FLOPs counted
== what really ran (hooks), the all-closed known answer, and the paper preset's all-open cost."""
import pytest
import torch
from torch import nn

from routespace.evaluators.cost import cell_cost, decoder_cost, edge_cost, gate_cost, out_cost, space_cost, stem_cost
from routespace.spaces.space import RoutingSpace, preset
from routespace.spaces.supernet import GATE_EPS, DynamicNet, body_flops_all_open


def _net(space, seed=0, gate_resolution="full", double=True):
    torch.manual_seed(seed)
    net = DynamicNet(space, gate_resolution=gate_resolution)
    # non-trivial BN statistics, so that running anything on a node without input would show
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    net = net.eval()
    return net.double() if double else net


def _random_gates(net, n, gen, p_closed=0.4, close_nodes=(), close_layers=(), close_edges=()):
    gates = {}
    for node, keys in net.out_keys.items():
        g = torch.rand(n, len(keys), generator=gen, dtype=torch.float64) * 0.99 + 0.005
        g[torch.rand(n, len(keys), generator=gen) < p_closed] = 0.0
        if node in close_nodes or node[0] in close_layers:
            g[:] = 0.0
        for j, key in enumerate(keys):
            if key in close_edges:
                g[:, j] = 0.0
        gates[node] = g
    return gates


def _hand_count(space, size, net, gates):
    """Independent simulation of DESIGN §5 on the gate values: who is alive, who passes through, what runs;
    costs from the analytic per-part functions. Returns (body, total, gate heads) per image."""
    n = next(iter(gates.values())).shape[0]
    zero = torch.zeros(n, dtype=torch.bool)
    body = torch.zeros(n, dtype=torch.float64)
    total = torch.full((n,), float(stem_cost(space, size, "paper")[0]), dtype=torch.float64)
    heads = torch.zeros(n, dtype=torch.float64)
    alive = {(0, 0): torch.ones(n, dtype=torch.bool)}
    present = {}
    for node in space.nodes():
        a = alive.get(node, zero)
        g = gates[node] * a[:, None]
        opened = g.max(1).values > 0
        heads += a * gate_cost(space, node, size, "paper", net.gate_resolution)[0]
        body += opened * cell_cost(space, node, space.cell, size, "paper")[0]
        for i, key in enumerate(net.out_keys[node]):
            on = g[:, i] > 0
            if key[0] == "out":
                body += on * out_cost(space, node[1], size, "paper")[0]
            else:
                body += on * edge_cost(space, key, size, "paper")[0]
                alive[(key[0], key[2])] = alive.get((key[0], key[2]), zero) | on
        closed = a & ~opened
        if node[0] < space.layers:
            alive[(node[0] + 1, node[1])] = alive.get((node[0] + 1, node[1]), zero) | closed
        else:
            present[node[1]] = a
    for i in range(n):
        top = max(s for s, p in present.items() if p[i])
        total[i] += decoder_cost(space, top, size, "paper")[0]
    return body, body + total + heads, heads


def _hooked_flops(net, fn):
    """FLOPs of what really executed, summed over the batch, recorded by forward hooks on every conv, BN
    and ReLU module (paper convention: conv MACs without bias, BN 2 and ReLU 1 per output element)."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            total[0] += output.numel() * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.BatchNorm2d):
            total[0] += 2 * output.numel()
        elif isinstance(module, nn.ReLU):
            total[0] += output.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU))]
    try:
        out = fn()
    finally:
        for h in handles:
            h.remove()
    return out, total[0]


CASES = [
    dict(seed=1),
    dict(seed=2, close_nodes=[(3, 1), (4, 2), (2, 0), (1, 1)]),  # pass-through nodes
    dict(seed=3, close_layers=[5]),  # a whole layer closed: every alive node of layer 5 passes through
    dict(seed=4, close_layers=[0]),  # the initial node closed: the stem's features go on at stride 4
    dict(seed=5, p_closed=0.8),
    dict(seed=6, close_edges=[(l, 2, 3) for l in range(3, 9)]),  # scale 3 dead: never reached
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("size,gate_resolution", [((64, 64), "full"), ((96, 160), "quarter")])
def test_skipping_equals_dense_and_counts_what_ran(case, size, gate_resolution):
    space = preset("tiny")
    net = _net(space, seed=case["seed"], gate_resolution=gate_resolution)
    gen = torch.Generator().manual_seed(case["seed"])
    gates = _random_gates(net, 5, gen, case.get("p_closed", 0.4), case.get("close_nodes", ()),
                          case.get("close_layers", ()), case.get("close_edges", ()))
    x = torch.randn(5, 3, *size, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        dense = net(x, gate_override=gates)
    skip, hooked = _hooked_flops(net, lambda: net.forward_skipping(x, gate_override=gates))
    assert (dense.logits - skip.logits).abs().max() <= 1e-5 * max(1.0, float(dense.logits.abs().max()))
    body, total, heads = _hand_count(space, size, net, gates)
    assert torch.equal(skip.realised_body_flops, body)
    assert torch.equal(skip.realised_flops, total)
    assert torch.equal(dense.realised_body_flops, body)
    assert torch.equal(dense.realised_flops, total)
    # what the executor counted is what ran (overridden gates skip their heads, which it counts)
    assert hooked == int(skip.realised_flops.sum() - heads.sum())
    for node in space.nodes():
        assert torch.equal(dense.alive[node], skip.alive[node])
        assert torch.equal(dense.cell_ran[node], skip.cell_ran[node])
    if case.get("close_layers"):
        assert any(skip.passed(n).any() for n in space.nodes() if n[0] == case["close_layers"][0])
    if case.get("close_edges"):
        assert not any(skip.alive[n].any() for n in space.nodes() if n[1] == 3)


def test_float32_skipping_equals_dense_with_learned_gates():
    space = preset("tiny")
    net = _net(space, seed=7, double=False)
    with torch.no_grad():  # spread the gate biases so some gates close on their own
        for g in net.gates.values():
            g.fc.bias.uniform_(-1.0, 1.5)
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = net(x)
    skip, hooked = _hooked_flops(net, lambda: net.forward_skipping(x))
    assert hooked == int(skip.realised_flops.sum())  # gate heads included: here they ran
    scale = max(1.0, float(dense.logits.abs().max()))
    assert (dense.logits - skip.logits).abs().max() <= 1e-5 * scale
    assert torch.equal(dense.realised_flops, skip.realised_flops)
    assert any((g == 0).any() for g in dense.edge_gates.values()), "test needs some closed gates"
    assert any(skip.passed(n).any() for n in space.nodes()), "test needs some pass-through"


@pytest.mark.parametrize("gate_resolution", ["full", "quarter"])
def test_all_gates_closed_is_the_stem_feeding_the_decoder(gate_resolution):
    """Known answer: with every gate closed, layer 0 passes the stem's stride-4 features on, every node
    (l, 0) passes them on, and the decoder sees them alone at stride 4. Body FLOPs 0; total = stem +
    decoder from stride 4 + the gate heads of the L+1 nodes at scale 0."""
    space = preset("tiny")
    net = _net(space, seed=3, gate_resolution=gate_resolution)
    x = torch.randn(3, 3, 64, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    closed = {n: torch.zeros(3, len(k), dtype=torch.float64) for n, k in net.out_keys.items()}
    with torch.no_grad():
        expected = net.decoder([net.stem(x), None, None, None], net._sizes(x), (64, 96))
        dense = net(x, gate_override=closed)
        skip = net.forward_skipping(x, gate_override=closed)
    size = (64, 96)
    fixed = (stem_cost(space, size, "paper")[0] + decoder_cost(space, 0, size, "paper")[0]
             + sum(gate_cost(space, (l, 0), size, "paper", gate_resolution)[0] for l in range(space.layers + 1)))
    for out in (dense, skip):
        assert torch.allclose(out.logits, expected, rtol=0, atol=1e-9)
        assert (out.realised_body_flops == 0).all() and (out.expected_body_flops == 0).all()
        assert (out.realised_flops == fixed).all()


def test_all_open_expected_flops_equal_the_analytic_all_open_cost():
    space = RoutingSpace(layers=5, base_channels=8, num_classes=3, input_size=(64, 64), name="t")
    for res in ("full", "quarter"):
        net = _net(space, gate_resolution=res)
        ones = {n: torch.ones(2, len(k), dtype=torch.float64) for n, k in net.out_keys.items()}
        with torch.no_grad():
            out = net(torch.randn(2, 3, 64, 96, dtype=torch.float64), gate_override=ones)
        with_gates = space_cost(space, (64, 96), gates=True, gate_resolution=res)
        assert (out.expected_flops == float(with_gates.flops)).all()
        assert (out.expected_body_flops == float(with_gates.body_flops)).all()
        assert with_gates.body_flops == body_flops_all_open(space, (64, 96))


def test_gates_threshold_and_range():
    net = _net(preset("tiny"), double=False)
    out = net(torch.randn(3, 3, 64, 64))
    for g in out.edge_gates.values():
        assert ((g == 0) | ((g >= GATE_EPS) & (g <= 1))).all()  # tanh rounds to 1.0 in float32 when saturated


def test_budget_gradient_reaches_gates_and_straight_through_value_is_realised():
    space = preset("tiny")
    torch.manual_seed(0)
    net = DynamicNet(space).train()
    out = net(torch.randn(2, 3, 64, 64))
    assert torch.allclose(out.budget_body_flops.detach(), out.realised_body_flops)
    loss = (out.budget_body_flops.mean() / body_flops_all_open(space, (64, 64)) - 0.1) ** 2
    loss.backward()
    grads = [g.fc.bias.grad for g in net.gates.values()]
    assert all(gr is not None for gr in grads) and sum(float(gr.abs().sum()) for gr in grads) > 0
    # pushing towards a small budget lowers the gate biases (positive gradient)
    assert float(net.gates["1_0"].fc.bias.grad.sum()) > 0


def test_paper_preset_forward_at_256x512_and_all_open_cost():
    """The paper supernet runs on CPU at 256x512; with every gate open its expected FLOPs are the
    analytic all-open cost (with gate heads) at that size."""
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
