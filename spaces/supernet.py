"""The dynamic-routing supernet (Li et al., CVPR 2020), with the released code's semantics (DESIGN §5):
every node and edge of a space, a soft gate per node, differentiable expected FLOPs, and an inference
path that really skips what is closed.

Node (l, s) sums its incoming tensors into ``x``; its gate reads ``x`` (optionally at a quarter of the
resolution, the "small gate") and gives one value per outgoing edge in [0, 1): ``relu(tanh(.))``, values
below ``GATE_EPS`` set to exactly 0, in training and inference alike.

- Open node (some gate > 0 for this image): the cell runs, ``h = x + cell(x)``, and edge i carries
  ``g_i * T_i(h)`` (keep: ReLU; last layer: one gate, its edge to the decoder, ReLU too).
- Closed node (every gate 0): the cell does not run; ``x`` itself goes on along the keep edge (to
  (l+1, s), or to the decoder from the last layer) at no cost; the other edges carry nothing.
- A node that receives nothing (no open edge, no pass-through into it) does not exist for that image:
  no gate, no cost, no pass-through. The decoder starts, per image, at its coarsest present scale.

With every gate closed the stem's stride-4 features reach the decoder through layer 0's pass-through:
body FLOPs 0. ``forward`` is the dense masked computation (training); ``forward_skipping`` runs each
cell and edge only on the images for which it is open and counts the FLOPs of what ran.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .cells import Decoder, Stem, Transition, kaiming_init, make_cell, upsample_to
from .errors import RoutespaceError
from .keys import edge_key, node_key
from .layout import GATE_RESOLUTIONS, gate_input_size, gate_outputs
from .ops import feature_sizes
from .space import Node, RoutingSpace

GATE_EPS = 1e-4
GATE_BIAS_INIT = 1.5

# An outgoing "edge" of a node: a real space edge (layer, src, dst), or ('out', layer, scale) to the decoder.
GateKey = tuple


class SoftGate(nn.Module):
    """[bilinear x0.25,] conv1x1 C -> C/2, BN, ReLU, global average pool, conv1x1 -> k (bias 1.5),
    ``relu(tanh(.))``, values below ``GATE_EPS`` set to exactly 0. With ``revivable`` (default) closed
    gates still receive the gradient of tanh in training (a straight-through relu), so they can reopen."""

    def __init__(self, channels: int, outputs: int, resolution: str = "full", revivable: bool = True):
        super().__init__()
        if resolution not in GATE_RESOLUTIONS:
            raise RoutespaceError(f"unknown gate resolution {resolution!r}: choose one of {', '.join(GATE_RESOLUTIONS)}")
        self.revivable = revivable
        self.resolution = resolution
        half = channels // 2
        self.reduce = kaiming_init(nn.Sequential(nn.Conv2d(channels, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU()))
        self.fc = kaiming_init(nn.Conv2d(half, outputs, 1, bias=True))
        nn.init.constant_(self.fc.bias, GATE_BIAS_INIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resolution != "full":
            x = upsample_to(x, gate_input_size(x.shape[-2], x.shape[-1], self.resolution))
        pooled = F.adaptive_avg_pool2d(self.reduce(x), 1)
        t = torch.tanh(self.fc(pooled).flatten(1))
        g = torch.relu(t)
        g = g * (g >= GATE_EPS)
        if self.revivable and torch.is_grad_enabled():
            # forward value unchanged; backward takes tanh's gradient even where the gate is closed, so
            # the loss can reopen a closed gate (relu(tanh) alone has zero gradient there).
            g = t + (g - t).detach()
        return g


@dataclass
class RoutingOutput:
    """What a forward pass of the supernet returns. FLOPs are per image, shape (N,); "body" = cells and
    edges (what routing switches off), totals add stem, decoder and the gate heads of nodes with input."""

    logits: torch.Tensor
    edge_gates: dict[GateKey, torch.Tensor]
    expected_body_flops: torch.Tensor  # DESIGN §5 formula with soft gates (differentiable)
    expected_flops: torch.Tensor
    realised_body_flops: torch.Tensor  # cells and edges that ran (or, in dense mode, would run)
    realised_flops: torch.Tensor
    budget_body_flops: torch.Tensor  # realised in value, soft in gradient (straight-through)
    alive: dict[Node, torch.Tensor] = field(default_factory=dict)  # node received input, (N,) bool
    cell_ran: dict[Node, torch.Tensor] = field(default_factory=dict)  # node's cell executed, (N,) bool

    def passed(self, node: Node) -> torch.Tensor:
        """(N,) bool: the node was closed and passed its input on along its keep edge."""
        return self.alive[node] & ~self.cell_ran[node]


@dataclass(frozen=True)
class CostTable:
    """Per-part FLOPs of a supernet at one input size (paper convention), from the analytic cost model."""

    stem: int
    decoder: dict  # top scale -> decoder FLOPs starting there
    cell: dict
    edge: dict
    out: dict  # scale -> the last-layer node's edge to the decoder
    gate: dict

    @property
    def body_all_open(self) -> int:
        return sum(self.cell.values()) + sum(self.edge.values()) + sum(self.out.values())

    def edge_of(self, key: GateKey) -> int:
        return self.out[key[2]] if key[0] == "out" else self.edge[key]


@lru_cache(maxsize=64)
def cost_table(space: RoutingSpace, size: tuple[int, int], gate_resolution: str = "full",
               convention: str = "paper") -> CostTable:
    """Costs from the analytic model (``routespace.evaluators.cost``), never a second copy."""
    from ..evaluators import cost

    nodes = list(space.nodes())
    return CostTable(
        stem=cost.stem_cost(space, size, convention)[0],
        decoder={s: cost.decoder_cost(space, s, size, convention)[0] for s in range(space.scales)},
        cell={n: cost.cell_cost(space, n, space.cell, size, convention)[0] for n in nodes},
        edge={e: cost.edge_cost(space, e, size, convention)[0] for e in space.edges()},
        out={s: cost.out_cost(space, s, size, convention)[0] for s in space.scales_at(space.layers)},
        gate={n: cost.gate_cost(space, n, size, convention, gate_resolution)[0] for n in nodes},
    )


def body_flops_all_open(space: RoutingSpace, size: tuple[int, int] | None = None) -> float:
    """FLOPs of the routing body (cells + edges) with everything open, paper convention."""
    return float(cost_table(space, tuple(size or space.input_size)).body_all_open)


def _ste(g: torch.Tensor) -> torch.Tensor:
    """1 where the gate is open, 0 where closed, with the gate's own gradient (straight-through)."""
    return (g > 0).to(g.dtype) + g - g.detach()


def _bool_mask(rows: list[int], n: int, device) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool, device=device)
    m[rows] = True
    return m


class DynamicNet(nn.Module):
    """The supernet over a :class:`RoutingSpace`: all nodes, all edges, a :class:`SoftGate` per node."""

    def __init__(self, space: RoutingSpace, drop_path_prob: float = 0.0, gate_resolution: str = "full"):
        super().__init__()
        if make_cell(space.cell, 8) is None:
            raise RoutespaceError(f"a dynamic net needs a cell that runs something, not {space.cell!r}")
        self.space = space
        self.drop_path_prob = drop_path_prob
        self.gate_resolution = gate_resolution
        self.stem = Stem(space.base_channels)
        self.nodes_ = list(space.nodes())
        self.cells = nn.ModuleDict({node_key(n): make_cell(space.cell, space.channels(n[1])) for n in self.nodes_})
        self.transitions = nn.ModuleDict({edge_key(e): Transition(space, e[1], e[2]) for e in space.edges()})
        self.out_relu = nn.ReLU()  # the last-layer keep edge to the decoder (a module, so hooks see it)
        self.gates = nn.ModuleDict(
            {node_key(n): SoftGate(space.channels(n[1]), gate_outputs(space, n), gate_resolution) for n in self.nodes_}
        )
        self.decoder = Decoder(space, space.scales - 1)
        self.out_keys: dict[Node, list[GateKey]] = {
            n: (list(space.out_edges(n)) or [("out", n[0], n[1])]) for n in self.nodes_
        }
        # position of each node's keep edge in its gate vector (last layer: its only output, the decoder)
        self.keep_index: dict[Node, int] = {
            n: next(i for i, k in enumerate(keys) if k[0] == "out" or k[1] == k[2]) for n, keys in self.out_keys.items()
        }

    def spec(self) -> dict:
        """What rebuilds this net (the run folder's ``spec``)."""
        return {"space": self.space.to_dict(), "gate_resolution": self.gate_resolution}

    # --- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def _sizes(x: torch.Tensor) -> list[tuple[int, int]]:
        return feature_sizes(x.shape[-2], x.shape[-1])

    def _cell(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        y = self.cells[node_key(node)](x)
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
        return self.gates[node_key(node)](x)

    def _table(self, x: torch.Tensor) -> CostTable:
        return cost_table(self.space, (x.shape[-2], x.shape[-1]), self.gate_resolution)

    # --- dense masked computation --------------------------------------------------------------------
    def forward(self, x: torch.Tensor, gate_override: dict | None = None) -> RoutingOutput:
        """Every cell and edge runs on every image; each edge's tensor is multiplied by its gate, and a
        closed node's input is added along its keep edge (the pass-through).

        ``gate_override`` maps nodes to fixed gate values (N, k) (tests, analysis, one-shot scoring)."""
        n_img = x.shape[0]
        sizes = self._sizes(x)
        table = self._table(x)
        zeros = x.new_zeros(n_img)
        exp_body, gate_cost, real_body, budget = zeros, zeros, zeros, zeros
        # per target node: (tensor, gate-like (N,) values: the edge's gate, or the pass-through mask)
        incoming: dict[Node, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        edge_gates: dict[GateKey, torch.Tensor] = {}
        alive_map: dict[Node, torch.Tensor] = {}
        ran_map: dict[Node, torch.Tensor] = {}
        last: list[torch.Tensor | None] = [None] * 4
        present: list[torch.Tensor | None] = [None] * 4
        stem = self.stem(x)
        for node in self.nodes_:
            layer, scale = node
            if layer == 0:
                inp, alive = stem, torch.ones(n_img, dtype=torch.bool, device=x.device)
                alive_f = alive.to(x.dtype)
            else:
                parts = incoming.pop(node)
                inp = parts[0][0]
                for t, _ in parts[1:]:
                    inp = inp + t
                incoming_g = torch.stack([g for _, g in parts])
                alive = (incoming_g > 0).any(0)
                alive_f = alive.to(x.dtype)
                if torch.is_grad_enabled():
                    # straight-through: exactly 0/1 forward, the strongest incoming gate's gradient backward,
                    # so the loss can reopen the edge into a dead node (a cut route could never heal otherwise)
                    soft = incoming_g.max(0).values
                    alive_f = alive_f + soft - soft.detach()
            g = self._gate(node, inp, gate_override) * alive_f[:, None]
            gmax = g.max(1).values
            cell_on = gmax > 0
            closed_f = (alive & ~cell_on).to(x.dtype)
            alive_map[node], ran_map[node] = alive, cell_on
            gate_cost = gate_cost + alive.to(x.dtype) * table.gate[node]
            h = self._cell(node, inp)
            c = table.cell[node]
            exp_body = exp_body + gmax * c
            real_body = real_body + cell_on.to(x.dtype) * c
            budget = budget + _ste(gmax) * c
            for i, key in enumerate(self.out_keys[node]):
                gi = g[:, i]
                edge_gates[key] = gi
                c = table.edge_of(key)
                exp_body = exp_body + gi * c
                real_body = real_body + (gi > 0).to(x.dtype) * c
                budget = budget + _ste(gi) * c
                if key[0] == "out":
                    last[scale] = self.out_relu(h) * gi[:, None, None, None] + inp * closed_f[:, None, None, None]
                    present[scale] = alive
                    continue
                y = self.transitions[edge_key(key)](h, sizes[key[2]]) * gi[:, None, None, None]
                target = (key[0], key[2])
                if key[1] == key[2]:  # keep edge: the pass-through of a closed node rides on it
                    y = y + inp * closed_f[:, None, None, None]
                    incoming.setdefault(target, []).append((y, torch.maximum(gi, closed_f)))
                else:
                    incoming.setdefault(target, []).append((y, gi))
        logits = self.decoder(last, sizes, (x.shape[-2], x.shape[-1]), present=present)
        fixed = table.stem + self._decoder_flops(present, table)
        return RoutingOutput(
            logits=logits,
            edge_gates=edge_gates,
            expected_body_flops=exp_body,
            expected_flops=exp_body + gate_cost + fixed,
            realised_body_flops=real_body.detach(),
            realised_flops=(real_body + gate_cost).detach() + fixed,
            budget_body_flops=budget,
            alive=alive_map,
            cell_ran=ran_map,
        )

    def _decoder_flops(self, present: list[torch.Tensor | None], table: CostTable) -> torch.Tensor:
        """Per image: the decoder's FLOPs from that image's coarsest present last-layer scale."""
        out = None
        covered = None
        for s in range(self.space.scales - 1, -1, -1):
            p = present[s]
            if p is None:
                continue
            new = p if covered is None else p & ~covered
            term = new.to(torch.float32) * table.decoder[s]
            out = term if out is None else out + term
            covered = p if covered is None else covered | p
        return out

    # --- skipping executor ---------------------------------------------------------------------------
    @torch.no_grad()
    def forward_skipping(self, x: torch.Tensor, gate_override: dict | None = None) -> RoutingOutput:
        """Inference that executes only open cells and edges, each on the sub-batch of images whose gate
        is open (gather/scatter); a closed node hands its input rows on along its keep edge. Realised
        FLOPs are counted from what actually ran.

        Bookkeeping (which images are open where) is done on Python lists after one small transfer of
        each gate's values, so per-node overhead stays small at batch 1."""
        if self.training:
            raise RoutespaceError("forward_skipping is for inference: call model.eval() first")
        n_img = x.shape[0]
        dev = x.device
        sizes = self._sizes(x)
        table = self._table(x)
        real_body = [0] * n_img
        real_gate = [0] * n_img
        # per node: contributions (image indices, tensor of those rows)
        incoming: dict[Node, list[tuple[list[int], torch.Tensor]]] = {}
        gate_rows: dict[GateKey, list[float]] = {}
        alive_map: dict[Node, list[int]] = {}
        ran_map: dict[Node, list[int]] = {}
        last: list[list[tuple[list[int], torch.Tensor]]] = [[] for _ in range(4)]
        stem = self.stem(x)
        for node in self.nodes_:
            layer, scale = node
            keys = self.out_keys[node]
            values = [[0.0] * n_img for _ in keys]
            ran: list[int] = []
            if layer == 0:
                idx, inp = list(range(n_img)), stem
            else:
                idx, inp = _gather_sum(incoming.pop(node, []))
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
                closed_rows = [r for r, row in enumerate(g_list) if max(row) <= 0]
                if closed_rows:  # pass-through along the keep edge, at no cost
                    passed = ([idx[r] for r in closed_rows], _take(inp, closed_rows))
                    if layer < self.space.layers:
                        incoming.setdefault((layer + 1, scale), []).append(passed)
                    else:
                        last[scale].append(passed)
                if open_rows:
                    ran = [idx[r] for r in open_rows]
                    h = self._cell(node, _take(inp, open_rows))
                    g_open = _take(g, open_rows)
                    for i in ran:
                        real_body[i] += table.cell[node]
                    for j, key in enumerate(keys):
                        sel = [r for r, orow in enumerate(open_rows) if g_list[orow][j] > 0]
                        if not sel:
                            continue
                        target = [ran[r] for r in sel]
                        gi = _take(g_open, sel)[:, j, None, None, None]
                        for i in target:
                            real_body[i] += table.edge_of(key)
                        if key[0] == "out":
                            last[scale].append((target, self.out_relu(_take(h, sel)) * gi))
                            continue
                        y = self.transitions[edge_key(key)](_take(h, sel), sizes[key[2]]) * gi
                        incoming.setdefault((key[0], key[2]), []).append((target, y))
                for r, i in enumerate(idx):
                    for j in range(len(keys)):
                        values[j][i] = g_list[r][j]
            ran_map[node] = ran
            for j, key in enumerate(keys):
                gate_rows[key] = values[j]
        feats: list[torch.Tensor | None] = [None] * 4
        present: list[torch.Tensor | None] = [None] * 4
        for s, parts in enumerate(last):
            if not parts:
                continue
            rows, rows_sum = _gather_sum(parts)
            present[s] = _bool_mask(rows, n_img, dev)
            if len(rows) == n_img:
                feats[s] = rows_sum
            else:
                feat = x.new_zeros(n_img, *rows_sum.shape[1:])
                feat[torch.tensor(rows, device=dev)] = rows_sum
                feats[s] = feat
        logits = self.decoder(feats, sizes, (x.shape[-2], x.shape[-1]), present=present)
        dec = self._decoder_flops(present, table).tolist()
        body = torch.tensor(real_body, dtype=x.dtype, device=dev)
        total = torch.tensor([b + g + table.stem + d for b, g, d in zip(real_body, real_gate, dec)], dtype=x.dtype, device=dev)
        return RoutingOutput(
            logits=logits,
            edge_gates={k: torch.tensor(v, dtype=x.dtype, device=dev) for k, v in gate_rows.items()},
            expected_body_flops=body,
            expected_flops=total,
            realised_body_flops=body,
            realised_flops=total,
            budget_body_flops=body,
            alive={n: _bool_mask(r, n_img, dev) for n, r in alive_map.items()},
            cell_ran={n: _bool_mask(r, n_img, dev) for n, r in ran_map.items()},
        )


def _take(t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Rows of ``t`` (no copy when all rows are taken, in order)."""
    if len(rows) == t.shape[0]:
        return t
    return t.index_select(0, torch.tensor(rows, device=t.device))


def _gather_sum(parts: list[tuple[list[int], torch.Tensor]]) -> tuple[list[int], torch.Tensor | None]:
    """Sum contributions given on different image subsets: returns (sorted image indices, summed rows)."""
    if not parts:
        return [], None
    if len(parts) == 1:
        rows, t = parts[0]
        if rows == sorted(rows):
            return parts[0]
    idx = sorted(set().union(*(p[0] for p in parts)))
    if all(p[0] == idx for p in parts):  # every part covers the same (sorted) images
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
