"""The training forward with ``skip_closed`` (issue 14): work closed for every image of the batch is not
computed, the values are the dense ones, the gradients too when gates are not revivable, and what it
leaves out is exactly the batch-closed cells, edges and unreached gate heads."""
import pytest
import torch
import torch.nn.functional as F
from test_supernet import _hooked_flops, _net, _random_gates

from routespace.spaces.space import preset
from routespace.spaces.supernet import DynamicNet, cost_table


def _batch_closed_gates(net, n, seed):
    """Gate patterns with nodes, a layer and a whole scale closed for every image, others mixed."""
    gen = torch.Generator().manual_seed(seed)
    return _random_gates(net, n, gen, p_closed=0.5, close_nodes=[(3, 1), (2, 0), (6, 2)], close_layers=[5],
                         close_edges=[(l, 2, 3) for l in range(3, 9)])


def _step(net, x, y, gates, skip):
    net.zero_grad(set_to_none=True)
    out = net(x, gate_override=gates, skip_closed=skip)
    loss = F.cross_entropy(out.logits, y) + out.budget_body_flops.mean() * 1e-7
    loss.backward()
    grads = {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in net.named_parameters()}
    return out, loss.detach(), grads


def _train_net(seed, revivable, spread_bias=False):
    net = _net(preset("tiny"), seed=seed, gate_resolution="quarter").train()
    for g in net.gates.values():
        g.revivable = revivable
    if spread_bias:
        with torch.no_grad():
            for g in net.gates.values():
                g.fc.bias.uniform_(-2.0, 1.5)
    return net


def _data(n, seed, size=(64, 64)):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, *size, generator=gen, dtype=torch.float64),
            torch.randint(0, 5, (n, *size), generator=gen))


@pytest.mark.parametrize("learned", [False, True], ids=["override", "learned"])
def test_without_revivable_gates_skipping_is_exact_in_loss_and_every_gradient(learned):
    net = _train_net(11, revivable=False, spread_bias=learned)
    x, y = _data(4, 1)
    gates = None if learned else _batch_closed_gates(net, 4, 1)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    dense, loss_d, grads_d = _step(net, x, y, gates, skip=False)
    net.load_state_dict(state)
    skip, loss_s, grads_s = _step(net, x, y, gates, skip=True)
    assert torch.equal(loss_d, loss_s)
    assert torch.equal(dense.logits, skip.logits)
    assert torch.equal(dense.realised_flops, skip.realised_flops)
    assert torch.equal(dense.expected_body_flops, skip.expected_body_flops)
    for key, g in dense.edge_gates.items():
        assert torch.equal(g, skip.edge_gates[key])
    for node in net.space.nodes():
        assert torch.equal(dense.alive[node], skip.alive[node]) and torch.equal(dense.cell_ran[node], skip.cell_ran[node])
    for k in grads_d:
        assert torch.allclose(grads_d[k], grads_s[k], rtol=1e-9, atol=1e-12), k
    closed_everywhere = [n for n in net.space.nodes() if not dense.cell_ran[n].any()]
    assert closed_everywhere, "test needs work closed for the whole batch"


def test_with_revivable_gates_the_loss_and_decoder_gradients_are_unchanged():
    net = _train_net(12, revivable=True)
    x, y = _data(4, 2)
    gates = _batch_closed_gates(net, 4, 2)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    _, loss_d, grads_d = _step(net, x, y, gates, skip=False)
    net.load_state_dict(state)
    _, loss_s, grads_s = _step(net, x, y, gates, skip=True)
    assert torch.equal(loss_d, loss_s)
    for k in grads_d:
        if k.startswith("decoder."):
            assert torch.allclose(grads_d[k], grads_s[k], rtol=1e-9, atol=1e-12), k


def test_skipped_work_is_exactly_the_batch_closed_cells_edges_and_unreached_heads():
    net = _train_net(13, revivable=True, spread_bias=True)
    x, _ = _data(4, 3)
    n = x.shape[0]
    dense, hooked_dense = _hooked_flops(net, lambda: net(x, skip_closed=False))
    skip, hooked_skip = _hooked_flops(net, lambda: net(x, skip_closed=True))
    table = cost_table(net.space, (64, 64), net.gate_resolution)
    saved = 0
    for node in net.space.nodes():
        if not dense.cell_ran[node].any():
            saved += table.cell[node]
        if not dense.alive[node].any():
            saved += table.gate[node]
        for key in net.out_keys[node]:
            if not (dense.edge_gates[key] > 0).any():
                saved += table.edge_of(key)
    assert saved > 0, "test needs batch-closed work"
    assert hooked_dense - hooked_skip == n * saved
    assert torch.equal(dense.logits, skip.logits)


def test_the_attribute_sets_the_default_and_all_open_skips_nothing():
    assert DynamicNet(preset("tiny")).skip_closed is False
    net = _train_net(14, revivable=True)
    net.skip_closed = True
    x, _ = _data(2, 4)
    ones = {k: torch.ones(2, len(v), dtype=torch.float64) for k, v in net.out_keys.items()}
    _, a = _hooked_flops(net, lambda: net(x, gate_override=ones))
    _, b = _hooked_flops(net, lambda: net(x, gate_override=ones, skip_closed=False))
    assert a == b
