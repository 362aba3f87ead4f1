"""The dynamic-routing supernet (Li et al., CVPR 2020): every node and edge of a space, a soft gate per
node, differentiable expected FLOPs, and an inference path that really skips what is closed.

Each node sums its incoming edges into ``x``; its gate reads ``x`` (so a closed node's cell never has to
run) and gives one value per outgoing edge in [0, 1): ``relu(tanh(.))``, exactly 0 when closed. Values
below ``GATE_EPS`` are set to 0 in training and inference alike, so the dense masked computation
(``forward``) and the skipping executor (``forward_skipping``) agree. A node none of whose incoming
edges is open for an image is dead for that image: its gates are forced to 0 (otherwise BN biases would
make a node without input emit something in training that skipping never computes). Last-layer nodes
have one gate output, their edge to the decoder. The decoder always runs at every scale (a missing
scale is zeros), so its cost is constant.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .cells import Decoder, Stem, Transition, make_cell
from .errors import RoutespaceError
from .layout import gate_outputs
from .space import Edge, Node, RoutingSpace

GATE_EPS = 1e-4
GATE_BIAS_INIT = 1.5

# An outgoing "edge" of a node: a real space edge (layer, src, dst), or ('out', layer, scale) to the decoder.
GateKey = tuple


class SoftGate(nn.Module):
    """conv1x1 C -> C/2, BN, ReLU, global average pool, conv1x1 -> k (bias 1.5), relu(tanh(.)),
    values below ``GATE_EPS`` set to exactly 0. With ``revivable`` (default) closed gates still receive
    the gradient of tanh in training (a straight-through relu), so they can reopen."""

    def __init__(self, channels: int, outputs: int, revivable: bool = True):
        super().__init__()
        self.revivable = revivable
        half = channels // 2
        self.reduce = nn.Sequential(nn.Conv2d(channels, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.fc = nn.Conv2d(half, outputs, 1, bias=True)
        nn.init.constant_(self.fc.bias, GATE_BIAS_INIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.reduce(x), 1)
        t = torch.tanh(self.fc(pooled).flatten(1))
        g = torch.relu(t)
        g = g * (g >= GATE_EPS)
        if self.revivable and torch.is_grad_enabled():
            # forward value unchanged; backward takes tanh's gradient even where the gate is closed, so
            # the loss can reopen a closed gate (relu(tanh) alone has zero gradient there: a gate that
            # closes once stays closed for good, and a budget pressure then collapses whole routes).
            g = t + (g - t).detach()
        return g


def _key(node: Node) -> str:
    return f"{node[0]}_{node[1]}"


def _edge_key(edge: Edge) -> str:
    return f"{edge[0]}_{edge[1]}_{edge[2]}"


@dataclass
class RoutingOutput:
    """What a forward pass of the supernet returns. FLOPs are per image, shape (N,)."""

    logits: torch.Tensor
    edge_gates: dict[GateKey, torch.Tensor]
    expected_body_flops: torch.Tensor  # DESIGN §5 formula with soft gates (differentiable)
    expected_flops: torch.Tensor  # + stem, decoder and the gate heads of nodes with input
    realised_body_flops: torch.Tensor  # cells and edges that ran (or, in dense mode, would run)
    realised_flops: torch.Tensor
    budget_body_flops: torch.Tensor  # realised in value, soft in gradient (straight-through)
    alive: dict[Node, torch.Tensor] = field(default_factory=dict)  # node had an open input, (N,) bool
    cell_ran: dict[Node, torch.Tensor] = field(default_factory=dict)  # node's cell executed, (N,) bool


@dataclass(frozen=True)
class CostTable:
    """Per-part FLOPs of a space at one input size (paper convention), looked up by the supernet."""

    stem: int
    decoder: int
    cell: dict
    edge: dict
    gate: dict

    @property
    def body_all_open(self) -> int:
        return sum(self.cell.values()) + sum(self.edge.values())


@lru_cache(maxsize=64)
def cost_table(space: RoutingSpace, size: tuple[int, int], convention: str = "paper") -> CostTable:
    """Costs from the foundation's analytic model (``routespace.evaluators.cost``), never a second copy."""
    from ..evaluators import cost

    nodes = list(space.nodes())
    return CostTable(
        stem=cost.stem_cost(space, size, convention)[0],
        decoder=cost.decoder_cost(space, space.scales - 1, size, convention)[0],
        cell={n: cost.cell_cost(space, n, space.cell, size, convention)[0] for n in nodes if n[0] > 0},
        edge={e: cost.edge_cost(space, e, size, convention)[0] for e in space.edges()},
        gate={n: cost.gate_cost(space, n, size, convention)[0] for n in nodes},
    )


def body_flops_all_open(space: RoutingSpace, size: tuple[int, int] | None = None) -> float:
    """FLOPs of the routing body (cells + edges) with everything open, paper convention."""
    return float(cost_table(space, tuple(size or space.input_size)).body_all_open)


def route_floor(space: RoutingSpace, size: tuple[int, int] | None = None) -> float:
    """The least body FLOPs an image can cost while still reaching the decoder, as a fraction of the
    all-open body: the cheapest stem-to-last-layer single path (cells + edges), by dynamic programming."""
    from .paths import best_path

    table = cost_table(space, tuple(size or space.input_size))
    cheapest, _ = best_path(space, lambda e: table.edge[e] + table.cell[(e[0], e[2])], lambda v, c: v + c, 0,
                            key=lambda v: -v)
    return cheapest / table.body_all_open


def _ste(g: torch.Tensor) -> torch.Tensor:
    """1 where the gate is open, 0 where closed, with the gate's own gradient (straight-through)."""
    return (g > 0).to(g.dtype) + g - g.detach()


class DynamicNet(nn.Module):
    """The supernet over a :class:`RoutingSpace`: all nodes, all edges, a :class:`SoftGate` per node."""

    def __init__(self, space: RoutingSpace, drop_path_prob: float = 0.0):
        super().__init__()
        self.space = space
        self.drop_path_prob = drop_path_prob
        self.stem = Stem(space.base_channels)
        self.nodes_ = list(space.nodes())
        self.cells = nn.ModuleDict({_key(n): make_cell(space.cell, space.channels(n[1])) for n in self.nodes_ if n[0] > 0})
        self.transitions = nn.ModuleDict({_edge_key(e): Transition(space, e[1], e[2]) for e in space.edges()})
        self.gates = nn.ModuleDict(
            {_key(n): SoftGate(space.channels(n[1]), gate_outputs(space, n)) for n in self.nodes_}
        )
        self.decoder = Decoder(space, space.scales - 1)
        self.out_keys: dict[Node, list[GateKey]] = {
            n: (list(space.out_edges(n)) or [("out", n[0], n[1])]) for n in self.nodes_
        }

    # --- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def _sizes(x: torch.Tensor) -> list[tuple[int, int]]:
        h, w = x.shape[-2], x.shape[-1]
        return [(h // 2 ** (s + 2), w // 2 ** (s + 2)) for s in range(4)]

    def _cell(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        y = self.cells[_key(node)](x)
        if self.training and self.drop_path_prob > 0:
            keep = 1.0 - self.drop_path_prob
            mask = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < keep
            y = y * mask / keep
        return x + y

    def _gate(self, node: Node, x: torch.Tensor, override: dict | None) -> torch.Tensor:
        if override is not None and node in override:
            g = override[node].to(x.dtype)
            if g.shape != (x.shape[0], len(self.out_keys[node])):
                raise RoutespaceError(f"gate override for node {node} must have shape (N, {len(self.out_keys[node])})")
            return g * (g >= GATE_EPS)
        return self.gates[_key(node)](x)

    # --- dense masked computation --------------------------------------------------------------------
    def forward(self, x: torch.Tensor, gate_override: dict | None = None) -> RoutingOutput:
        """Every cell and edge runs on every image; each edge's tensor is multiplied by its gate.

        ``gate_override`` maps nodes to fixed gate values (N, k) (tests and analysis)."""
        n_img = x.shape[0]
        sizes = self._sizes(x)
        table = cost_table(self.space, (x.shape[-2], x.shape[-1]))
        zeros = x.new_zeros(n_img)
        exp_body, exp_gate, real_body, real_gate, budget = zeros, zeros, zeros, zeros, zeros
        incoming: dict[Node, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        edge_gates: dict[GateKey, torch.Tensor] = {}
        alive_map: dict[Node, torch.Tensor] = {}
        ran_map: dict[Node, torch.Tensor] = {}
        last: list = [None] * 4
        for node in self.nodes_:
            layer, scale = node
            if layer == 0:
                h = self.stem(x)
                alive = torch.ones(n_img, dtype=torch.bool, device=x.device)
                inp = h
            else:
                parts = incoming.pop(node)
                inp = parts[0][0]
                for t, _ in parts[1:]:
                    inp = inp + t
                incoming_g = torch.stack([g for _, g in parts])
                alive = (incoming_g > 0).any(0)
            alive_f = alive.to(x.dtype)
            if layer > 0 and torch.is_grad_enabled():
                # straight-through: exactly 0/1 forward, the strongest incoming gate's gradient backward,
                # so the loss can reopen the edge into a dead node (a cut route could never heal otherwise)
                soft = incoming_g.max(0).values
                alive_f = alive_f + soft - soft.detach()
            g = self._gate(node, inp, gate_override) * alive_f[:, None]
            gmax = g.max(1).values
            cell_on = gmax > 0
            alive_map[node], ran_map[node] = alive, cell_on
            exp_gate = exp_gate + alive_f * table.gate[node]
            real_gate = real_gate + alive_f * table.gate[node]
            if layer > 0:
                h = self._cell(node, inp)
                c = table.cell[node]
                exp_body = exp_body + gmax * c
                real_body = real_body + cell_on.to(x.dtype) * c
                budget = budget + _ste(gmax) * c
            for i, key in enumerate(self.out_keys[node]):
                gi = g[:, i]
                edge_gates[key] = gi
                if key[0] == "out":
                    last[scale] = h * gi[:, None, None, None]
                    continue
                c = table.edge[key]
                exp_body = exp_body + gi * c
                real_body = real_body + (gi > 0).to(x.dtype) * c
                budget = budget + _ste(gi) * c
                y = self.transitions[_edge_key(key)](h, sizes[key[2]]) * gi[:, None, None, None]
                incoming.setdefault((key[0], key[2]), []).append((y, gi))
        logits = self._decode(last, sizes, x)
        fixed = float(table.stem + table.decoder)
        return RoutingOutput(
            logits=logits,
            edge_gates=edge_gates,
            expected_body_flops=exp_body,
            expected_flops=exp_body + exp_gate + fixed,
            realised_body_flops=real_body.detach(),
            realised_flops=(real_body + real_gate).detach() + fixed,
            budget_body_flops=budget,
            alive=alive_map,
            cell_ran=ran_map,
        )

    def _decode(self, last: list, sizes: list[tuple[int, int]], x: torch.Tensor) -> torch.Tensor:
        feats = [
            f if f is not None else x.new_zeros(x.shape[0], self.space.channels(s), *sizes[s])
            for s, f in enumerate(last)
        ]
        return self.decoder(feats, sizes, (x.shape[-2], x.shape[-1]))

    # --- skipping executor ---------------------------------------------------------------------------
    @torch.no_grad()
    def forward_skipping(self, x: torch.Tensor, gate_override: dict | None = None) -> RoutingOutput:
        """Inference that executes only open cells and edges, each on the sub-batch of images whose gate
        is open (gather/scatter). Realised FLOPs are counted from what actually ran.

        Bookkeeping (which images are open where) is done on Python lists after one small transfer of
        each gate's values, so per-node overhead stays small at batch 1."""
        if self.training:
            raise RoutespaceError("forward_skipping is for inference: call model.eval() first")
        n_img = x.shape[0]
        dev = x.device
        sizes = self._sizes(x)
        table = cost_table(self.space, (x.shape[-2], x.shape[-1]))
        real_body = [0] * n_img
        real_gate = [0] * n_img
        # per node: list of (image indices as a list, tensor of those rows) contributions
        incoming: dict[Node, list[tuple[list[int], torch.Tensor]]] = {}
        gate_rows: dict[GateKey, list[float]] = {}
        alive_map: dict[Node, list[int]] = {}
        ran_map: dict[Node, list[int]] = {}
        last: list = [None] * 4
        for node in self.nodes_:
            layer, scale = node
            keys = self.out_keys[node]
            values = [[0.0] * n_img for _ in keys]
            ran: list[int] = []
            if layer == 0:
                idx, inp = list(range(n_img)), self.stem(x)
            else:
                idx, inp = _gather_sum(incoming.pop(node, []), n_img)
            alive_map[node] = idx
            if idx:
                for i in idx:
                    real_gate[i] += table.gate[node]
                sub_override = None
                if gate_override is not None and node in gate_override:
                    sub_override = {node: gate_override[node][torch.tensor(idx)]}
                g = self._gate(node, inp, sub_override)
                g_list = g.tolist()
                open_rows = [r for r, row in enumerate(g_list) if max(row) > 0]
                if open_rows:
                    ran = [idx[r] for r in open_rows]
                    h = _take(inp, open_rows)
                    g_open = _take(g, open_rows)
                    if layer > 0:
                        h = self._cell(node, h)
                        for i in ran:
                            real_body[i] += table.cell[node]
                    for j, key in enumerate(keys):
                        sel = [r for r, orow in enumerate(open_rows) if g_list[orow][j] > 0]
                        if not sel:
                            continue
                        target = [ran[r] for r in sel]
                        gi = _take(g_open, sel)[:, j, None, None, None]
                        if key[0] == "out":
                            y = _take(h, sel) * gi
                            if len(target) == n_img:
                                last[scale] = y
                            else:
                                feat = x.new_zeros(n_img, *h.shape[1:])
                                feat[torch.tensor(target, device=dev)] = y
                                last[scale] = feat
                            continue
                        for i in target:
                            real_body[i] += table.edge[key]
                        y = self.transitions[_edge_key(key)](_take(h, sel), sizes[key[2]]) * gi
                        incoming.setdefault((key[0], key[2]), []).append((target, y))
                for r, i in enumerate(idx):
                    for j in range(len(keys)):
                        values[j][i] = g_list[r][j]
            ran_map[node] = ran
            for j, key in enumerate(keys):
                gate_rows[key] = values[j]
        logits = self._decode(last, sizes, x)
        fixed = table.stem + table.decoder

        def as_mask(rows: list[int]) -> torch.Tensor:
            m = torch.zeros(n_img, dtype=torch.bool, device=dev)
            m[rows] = True
            return m

        body = torch.tensor(real_body, dtype=x.dtype, device=dev)
        total = torch.tensor([b + g + fixed for b, g in zip(real_body, real_gate)], dtype=x.dtype, device=dev)
        return RoutingOutput(
            logits=logits,
            edge_gates={k: torch.tensor(v, dtype=x.dtype, device=dev) for k, v in gate_rows.items()},
            expected_body_flops=body,
            expected_flops=total,
            realised_body_flops=body,
            realised_flops=total,
            budget_body_flops=body,
            alive={n: as_mask(r) for n, r in alive_map.items()},
            cell_ran={n: as_mask(r) for n, r in ran_map.items()},
        )


def _take(t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Rows of ``t`` (no copy when all rows are taken, in order)."""
    if len(rows) == t.shape[0]:
        return t
    return t.index_select(0, torch.tensor(rows, device=t.device))


def _gather_sum(parts: list[tuple[list[int], torch.Tensor]], n_img: int) -> tuple[list[int], torch.Tensor | None]:
    """Sum contributions given on different image subsets: returns (sorted image indices, summed rows)."""
    if not parts:
        return [], None
    if len(parts) == 1:
        return parts[0]
    idx = sorted(set().union(*(p[0] for p in parts)))
    if all(len(p[0]) == len(idx) for p in parts):  # every part covers the same (sorted) images
        total = parts[0][1]
        for _, t in parts[1:]:
            total = total + t
        return idx, total
    pos = {img: r for r, img in enumerate(idx)}
    first = parts[0][1]
    total = first.new_zeros(len(idx), *first.shape[1:])
    for rows, t in parts:
        total.index_add_(0, torch.tensor([pos[i] for i in rows], device=t.device), t)
    return idx, total


def budget_loss(
    out: RoutingOutput, all_open_body: float, mu: float, lam: float, estimator: str = "realised"
) -> torch.Tensor:
    """``lam * (E[FLOPs_body] / FLOPs_body_all_open - mu)^2`` averaged over the batch.

    ``estimator='realised'`` (default) uses the straight-through count: its value is the FLOPs that
    will really run (a gate at 0.01 runs its whole edge), its gradient the soft gates'. This keeps the
    realised cost on budget; ``'expected'`` is the paper's soft expectation, which underestimates what
    runs."""
    if estimator == "realised":
        body = out.budget_body_flops
    elif estimator == "expected":
        body = out.expected_body_flops
    else:
        raise RoutespaceError(f"unknown budget estimator {estimator!r}: use 'realised' or 'expected'")
    ratio = body / all_open_body
    return lam * ((ratio - mu) ** 2).mean()
