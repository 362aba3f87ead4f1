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
    values below ``GATE_EPS`` set to exactly 0."""

    def __init__(self, channels: int, outputs: int):
        super().__init__()
        half = channels // 2
        self.reduce = nn.Sequential(nn.Conv2d(channels, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.fc = nn.Conv2d(half, outputs, 1, bias=True)
        nn.init.constant_(self.fc.bias, GATE_BIAS_INIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.reduce(x), 1)
        g = torch.relu(torch.tanh(self.fc(pooled).flatten(1)))
        return g * (g >= GATE_EPS)


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
                alive = torch.stack([g > 0 for _, g in parts]).any(0)
            g = self._gate(node, inp, gate_override) * alive[:, None].to(x.dtype)
            alive_f = alive.to(x.dtype)
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
        is open (gather/scatter). Realised FLOPs are counted from what actually ran."""
        if self.training:
            raise RoutespaceError("forward_skipping is for inference: call model.eval() first")
        n_img = x.shape[0]
        dev = x.device
        sizes = self._sizes(x)
        table = cost_table(self.space, (x.shape[-2], x.shape[-1]))
        real_body = torch.zeros(n_img, dtype=torch.float64, device=dev)
        real_gate = torch.zeros(n_img, dtype=torch.float64, device=dev)
        # per node: list of (global image indices, tensor) contributions
        incoming: dict[Node, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        edge_gates: dict[GateKey, torch.Tensor] = {}
        alive_map: dict[Node, torch.Tensor] = {}
        ran_map: dict[Node, torch.Tensor] = {}
        last: list = [None] * 4
        everyone = torch.arange(n_img, device=dev)
        for node in self.nodes_:
            layer, scale = node
            alive = torch.zeros(n_img, dtype=torch.bool, device=dev)
            cell_on = torch.zeros(n_img, dtype=torch.bool, device=dev)
            gates_full = x.new_zeros(n_img, len(self.out_keys[node]))
            if layer == 0:
                idx, inp = everyone, self.stem(x)
            else:
                idx, inp = _gather_sum(incoming.pop(node, []), n_img)
            if idx.numel():
                alive[idx] = True
                real_gate[idx] += table.gate[node]
                sub_override = None
                if gate_override is not None and node in gate_override:
                    sub_override = {node: gate_override[node][idx]}
                g = self._gate(node, inp, sub_override)
                gates_full[idx] = g
                open_rows = (g.max(1).values > 0).nonzero().flatten()
                if open_rows.numel():
                    rows_idx = idx[open_rows]
                    cell_on[rows_idx] = True
                    h = _take(inp, open_rows)
                    g_open = g[open_rows]
                    if layer > 0:
                        h = self._cell(node, h)
                        real_body[rows_idx] += table.cell[node]
                    for i, key in enumerate(self.out_keys[node]):
                        sel = (g_open[:, i] > 0).nonzero().flatten()
                        if not sel.numel():
                            continue
                        gi = g_open[sel, i][:, None, None, None]
                        target_idx = rows_idx[sel]
                        if key[0] == "out":
                            feat = x.new_zeros(n_img, *h.shape[1:])
                            feat[target_idx] = _take(h, sel) * gi
                            last[scale] = feat
                            continue
                        real_body[target_idx] += table.edge[key]
                        y = self.transitions[_edge_key(key)](_take(h, sel), sizes[key[2]]) * gi
                        incoming.setdefault((key[0], key[2]), []).append((target_idx, y))
            for i, key in enumerate(self.out_keys[node]):
                edge_gates[key] = gates_full[:, i]
            alive_map[node], ran_map[node] = alive, cell_on
        logits = self._decode(last, sizes, x)
        fixed = float(table.stem + table.decoder)
        body = real_body.to(x.dtype)
        return RoutingOutput(
            logits=logits,
            edge_gates=edge_gates,
            expected_body_flops=body,
            expected_flops=(real_body + real_gate).to(x.dtype) + fixed,
            realised_body_flops=body,
            realised_flops=(real_body + real_gate).to(x.dtype) + fixed,
            budget_body_flops=body,
            alive=alive_map,
            cell_ran=ran_map,
        )


def _take(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of ``t`` (no copy when all rows are taken in order)."""
    if rows.numel() == t.shape[0]:
        return t
    return t.index_select(0, rows)


def _gather_sum(parts: list[tuple[torch.Tensor, torch.Tensor]], n_img: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum contributions given on different image subsets: returns (sorted image indices, summed rows)."""
    if not parts:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    if len(parts) == 1:
        return parts[0]
    idx = torch.unique(torch.cat([p[0] for p in parts]))
    if all(p[0].numel() == idx.numel() for p in parts):
        total = parts[0][1]
        for _, t in parts[1:]:
            total = total + t
        return idx, total
    pos = torch.full((n_img,), -1, dtype=torch.long, device=idx.device)
    pos[idx] = torch.arange(idx.numel(), device=idx.device)
    first = parts[0][1]
    total = first.new_zeros(idx.numel(), *first.shape[1:])
    for rows, t in parts:
        total.index_add_(0, pos[rows], t)
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
