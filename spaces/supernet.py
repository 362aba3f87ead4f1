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
        t = torch.tanh(self.logits(x))
        g = torch.relu(t)
        g = g * (g >= GATE_EPS)
        if self.revivable and torch.is_grad_enabled():
            # forward value unchanged; backward takes tanh's gradient even where the gate is closed, so
            # the loss can reopen a closed gate (relu(tanh) alone has zero gradient there).
            g = t + (g - t).detach()
        return g

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, k) pre-activations: everything before ``relu(tanh(.))`` and the threshold."""
        if self.resolution != "full":
            x = upsample_to(x, gate_input_size(x.shape[-2], x.shape[-1], self.resolution))
        return self.fc(F.adaptive_avg_pool2d(self.reduce(x), 1)).flatten(1)

    @staticmethod
    def activate(z: torch.Tensor) -> torch.Tensor:
        """Inference activation of pre-activations of any shape (several heads' at once, concatenated):
        ``relu(tanh(z))`` with values below ``GATE_EPS`` set to 0, elementwise, so it equals ``forward``."""
        g = torch.relu(torch.tanh(z))
        return g * (g >= GATE_EPS)


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

    def __init__(self, space: RoutingSpace, drop_path_prob: float = 0.0, gate_resolution: str = "full",
                 skip_closed: bool = False):
        super().__init__()
        #: ``forward`` leaves out work closed for every image of the batch (see :meth:`forward`)
        self.skip_closed = skip_closed
        self._plans: dict[tuple[int, int], _Plan] = {}  # skipping executor plans per input size
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
    def forward(self, x: torch.Tensor, gate_override: dict | None = None, skip_closed: bool | None = None) -> RoutingOutput:
        """Every cell and edge runs on every image; each edge's tensor is multiplied by its gate, and a
        closed node's input is added along its keep edge (the pass-through).

        ``gate_override`` maps nodes to fixed gate values (N, k) (tests, analysis, one-shot scoring).

        ``skip_closed`` (default: the net's ``skip_closed`` attribute, False unless set): work that is closed
        for EVERY image of the batch is not computed: the cell of a node whose gates are all 0 for every
        image, an edge whose gate is 0 for every image, and a node that no image reaches (no gate head
        either). So a training step costs what the batch's union of routes costs. The forward values
        (logits, gates, FLOPs) are the dense ones exactly (only exact zeros are left out of sums), and so
        are the gradients of every parameter when the gates are not revivable. What it changes:

        - revivable gates (``SoftGate(revivable=True)``, the default) lose their cross-entropy gradient
          through skipped work: a gate closed for every image of the batch gets no ``dL/dg = <dL/dy, T(h)>``
          (that needs the skipped edge's output), so within such a batch only the budget term reaches
          it, and a node no image reaches passes no straight-through gradient to the gates into it.
          Because gate heads read their node's input, that missing gradient also changes the gradient
          that reaches upstream cells through those heads (the loss itself is unchanged);
        - skipped modules' BatchNorm running statistics are not updated in that step, their parameters
          get no gradient (``None``: an optimizer skips them that step, no momentum or weight decay), and
          drop-path draws no random numbers for a skipped cell."""
        skip = self.skip_closed if skip_closed is None else skip_closed
        n_img = x.shape[0]
        sizes = self._sizes(x)
        table = self._table(x)
        zeros = x.new_zeros(n_img)
        exp_body, gate_cost, real_body, budget = zeros, zeros, zeros, zeros
        # per target node: (tensor or None where skipped, gate-like (N,) values: the edge's gate, or the
        # pass-through mask)
        incoming: dict[Node, list[tuple[torch.Tensor | None, torch.Tensor]]] = {}
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
                tensors = [t for t, _ in parts if t is not None]
                if not tensors:  # skip_closed: no image reaches this node
                    self._absent_node(node, n_img, x, edge_gates, alive_map, ran_map, incoming, present)
                    continue
                inp = tensors[0]
                for t in tensors[1:]:
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
            if skip:  # which edges are open for some image, and whether some image passes through: one transfer
                flags = torch.cat([(g.detach() > 0).any(0), (closed_f > 0).any()[None]]).tolist()
                edge_any, closed_any = flags[:-1], flags[-1]
            else:
                edge_any, closed_any = None, True
            alive_map[node], ran_map[node] = alive, cell_on
            gate_cost = gate_cost + alive.to(x.dtype) * table.gate[node]
            h = self._cell(node, inp) if edge_any is None or any(edge_any) else None
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
                runs = edge_any is None or edge_any[i]
                if key[0] == "out":
                    passed = inp * closed_f[:, None, None, None]
                    last[scale] = self.out_relu(h) * gi[:, None, None, None] + passed if runs else passed
                    present[scale] = alive
                    continue
                target = (key[0], key[2])
                keep = key[1] == key[2]  # keep edge: the pass-through of a closed node rides on it
                y = self.transitions[edge_key(key)](h, sizes[key[2]]) * gi[:, None, None, None] if runs else None
                if keep and closed_any:
                    passed = inp * closed_f[:, None, None, None]
                    y = passed if y is None else y + passed
                incoming.setdefault(target, []).append((y, torch.maximum(gi, closed_f) if keep else gi))
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

    def _absent_node(self, node, n_img, x, edge_gates, alive_map, ran_map, incoming, present) -> None:
        """``skip_closed``: a node no image of the batch reaches: all gates 0 (as the dense forward's value),
        nothing computed; its targets get gate-only entries, so their alive masks are the dense ones."""
        none = torch.zeros(n_img, dtype=torch.bool, device=x.device)
        alive_map[node], ran_map[node] = none, none
        g = x.new_zeros(n_img, len(self.out_keys[node]))
        for i, key in enumerate(self.out_keys[node]):
            edge_gates[key] = g[:, i]
            if key[0] == "out":
                present[node[1]] = none
            else:
                incoming.setdefault((key[0], key[2]), []).append((None, g[:, i]))

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
    def _plan(self, size: tuple[int, int]) -> "_Plan":
        """The per-node plan at an input size (built once per size, then reused by every call)."""
        plan = self._plans.get(size)
        if plan is None:
            plan = _build_plan(self, size)
            if len(self._plans) >= 16:
                self._plans.pop(next(iter(self._plans)))
            self._plans[size] = plan
        return plan

    @torch.no_grad()
    def forward_skipping(self, x: torch.Tensor, gate_override: dict | None = None,
                         group_routes: bool = False) -> RoutingOutput:
        """Inference that executes only open cells and edges, each on the images whose gate is open; a
        closed node hands its input on along its keep edge. Realised FLOPs are counted from what ran.

        Where the overhead goes: the per-node plan (modules, targets, sizes, costs) is computed once per
        input size (:meth:`_plan`); the gate heads of a layer run first and their values cross to the host
        in ONE transfer (their ``relu(tanh)`` and threshold run once, on the layer's concatenated
        pre-activations); decisions are made on Python lists. A tensor that every image of the batch
        takes (always at batch 1) is passed on as it is: no gather, scatter or index tensor; gates
        multiply as Python floats at batch 1. Only images that decide differently are gathered
        (``index_select``) and summed back (``index_add_``). The outputs' per-node and per-edge tensors
        are rows of three tensors built once at the end.

        ``group_routes`` (batch > 1): instead, images are split into groups where they first decide
        differently (after a layer's gates), and each group runs on alone with no gathers at all, down
        to its own decoder; the logits are put back in batch order. Fewer copies, but the per-node
        overhead is paid once per group: it pays where images share routes and tensors are large."""
        if self.training:
            raise RoutespaceError("forward_skipping is for inference: call model.eval() first")
        n_img = x.shape[0]
        plan = self._plan((int(x.shape[-2]), int(x.shape[-1])))
        run = _Run(n_img)
        groups = [_Group(None, {}, [[] for _ in range(self.space.scales)])]
        for layer_steps in plan.layers:
            next_groups = []
            for grp in groups:
                live: list[tuple[_NodeStep, list[int] | None, torch.Tensor]] = []
                for step in layer_steps:
                    if step.node[0] == 0:
                        rows, inp = None, self.stem(x)
                    else:
                        rows, inp = _gather_sum(grp.incoming.pop(step.node, ()), n_img)
                        if inp is None:
                            continue  # received nothing: absent for every image (of the group)
                    live.append((step, rows, inp))
                if not live:
                    next_groups.append(grp)
                    continue
                gates = self._layer_gates(live, gate_override, n_img)
                flat = torch.cat([g.reshape(-1) for g in gates]) if len(gates) > 1 else gates[0].reshape(-1)
                values = flat.tolist()  # the layer's one host transfer
                per_node, off = [], 0
                for (step, rows, _), g in zip(live, gates):
                    size = g.numel()
                    per_node.append(values[off: off + size])
                    off += size
                m = n_img if grp.rows is None else len(grp.rows)
                if group_routes and m > 1:
                    subgroups = _split_by_decisions(live, per_node, m)
                else:
                    subgroups = None
                if subgroups is None:
                    self._run_layer(live, gates, per_node, grp, run, n_img)
                    next_groups.append(grp)
                    continue
                for pos in subgroups:  # each decides alike from here on: slice its rows, run it alone
                    rows = _sub(grp.rows, pos, n_img)
                    sub_live = [(step, rows, _take(inp, pos)) for step, _, inp in live]
                    sub_gates = [_take(g, pos) for g in gates]
                    sub_vals = [[v for p in pos for v in vals[p * s.width: (p + 1) * s.width]]
                                for (s, _, _), vals in zip(live, per_node)]
                    sub = _Group(rows, {}, [[] for _ in range(self.space.scales)])
                    self._run_layer(sub_live, sub_gates, sub_vals, sub, run, n_img)
                    next_groups.append(sub)
            groups = next_groups
        return self._skipping_output(x, plan, groups, run)

    def _run_layer(self, live, gates, per_node, grp: "_Group", run: "_Run", n_img: int) -> None:
        """Run the open cells and edges of one layer's live nodes (gate values known), filling the
        group's contributions to the next layer (or the decoder) and the FLOPs counts."""
        for (step, rows, inp), g, vals in zip(live, gates, per_node):
            k = step.width
            m = n_img if rows is None else len(rows)
            run.gates.setdefault(step.node, []).append((rows, vals))
            run.count(rows, step.gate_cost, heads=True)
            opened = [r for r in range(m) if max(vals[r * k: (r + 1) * k]) > 0]
            if len(opened) < m:  # closed images: pass-through along the keep edge, at no cost
                if opened:
                    is_open = set(opened)
                    closed = [r for r in range(m) if r not in is_open]
                    passed = (_sub(rows, closed, n_img), _take(inp, closed))
                else:
                    passed = (rows, inp)
                (grp.incoming.setdefault(step.keep_target, []) if step.keep_target is not None
                 else grp.last[step.node[1]]).append(passed)
            if not opened:
                run.ran.setdefault(step.node, []).append([])
                continue
            every = len(opened) == m
            o_rows = rows if every else _sub(rows, opened, n_img)
            run.ran.setdefault(step.node, []).append(o_rows)
            run.count(o_rows, step.cell_cost)
            sub = inp if every else _take(inp, opened)
            h = sub + step.cell(sub)
            g_cols = g.t() if m > 1 else None  # (k, m): column j = edge j's gate per image
            for e in step.edges:
                j = e.j
                sel = [q for q, r in enumerate(opened) if vals[r * k + j] > 0]
                if not sel:
                    continue
                whole = len(sel) == len(opened)
                t_rows = o_rows if whole else _sub(o_rows, sel, n_img)
                run.count(t_rows, e.cost)
                hs = h if whole else _take(h, sel)
                if m == 1:
                    mult: float | torch.Tensor = vals[j]
                else:
                    col = g_cols[j]
                    picked = opened if whole else [opened[q] for q in sel]
                    mult = (col if len(picked) == m else _take(col, picked)).view(-1, 1, 1, 1)
                y = (e.module(hs) if e.target is None else e.module(hs, e.size)) * mult
                (grp.incoming.setdefault(e.target, []) if e.target is not None else grp.last[step.node[1]]).append((t_rows, y))

    def _layer_gates(self, live: list, gate_override: dict | None, n_img: int) -> list[torch.Tensor]:
        """Gate values (m, k) of each live node of one layer: the heads' pre-activations concatenated and
        activated once (elementwise, so equal to :class:`SoftGate`), or the overridden values."""
        if gate_override is not None and any(step.node in gate_override for step, _, _ in live):
            out = []
            for step, rows, inp in live:
                if step.node in gate_override:
                    ov = gate_override[step.node]
                    if tuple(ov.shape) != (n_img, step.width):
                        raise RoutespaceError(f"gate override for node {step.node} must have shape (N, {step.width})")
                    ov = (ov if rows is None else ov.index_select(0, torch.tensor(rows, device=ov.device))).to(
                        device=inp.device, dtype=inp.dtype)
                    out.append(ov * (ov >= GATE_EPS))
                else:
                    out.append(SoftGate.activate(step.gate.logits(inp)))
            return out
        z = [step.gate.logits(inp) for step, _, inp in live]
        if len(z) == 1:
            return [SoftGate.activate(z[0])]
        sizes = [t.numel() for t in z]
        act = SoftGate.activate(torch.cat([t.reshape(-1) for t in z]))
        return [a.view(t.shape) for a, t in zip(act.split(sizes), z)]

    def _decode_group(self, x: torch.Tensor, plan: "_Plan", grp: "_Group", dec: list[int]) -> torch.Tensor:
        """The decoder on one group's last-layer features: logits of the group's rows (in order); fills
        each image's decoder FLOPs (from its coarsest present scale) into ``dec``."""
        n_img = x.shape[0]
        dev = x.device
        m = n_img if grp.rows is None else len(grp.rows)
        pos_of = None if grp.rows is None else {img: q for q, img in enumerate(grp.rows)}
        feats: list[torch.Tensor | None] = [None] * self.space.scales
        rows_at: list[list[int] | None | bool] = [False] * self.space.scales  # False: absent for every image
        for s, parts in enumerate(grp.last):
            if not parts:
                continue
            rows, total = _gather_sum(parts, n_img)
            if rows == grp.rows:
                rows = None  # every image of the group
            rows_at[s] = rows
            if rows is None:
                feats[s] = total
            else:
                where = rows if pos_of is None else [pos_of[i] for i in rows]
                feat = total.new_zeros(m, *total.shape[1:])
                feats[s] = feat.index_copy_(0, torch.tensor(where, device=dev), total)
        present = None
        if any(r is not None and r is not False for r in rows_at):  # some scale exists for some images only
            present = [None if r is False else _bool_mask(
                list(range(m)) if r is None else ([pos_of[i] for i in r] if pos_of else r), m, dev) for r in rows_at]
        logits = self.decoder(feats, plan.sizes, (x.shape[-2], x.shape[-1]), present=present)
        group_rows = range(n_img) if grp.rows is None else grp.rows
        covered: set[int] = set()
        for s in range(self.space.scales - 1, -1, -1):
            r = rows_at[s]
            if r is False:
                continue
            for i in (group_rows if r is None else r):
                if i not in covered:
                    covered.add(i)
                    dec[i] = plan.decoder[s]
        return logits

    def _skipping_output(self, x, plan, groups: list["_Group"], run: "_Run") -> RoutingOutput:
        """Decoder(s) on the last-layer features, and the output's tensors from the Python bookkeeping."""
        n_img = x.shape[0]
        dev = x.device
        dec = [0] * n_img
        if len(groups) == 1 and groups[0].rows is None:
            logits = self._decode_group(x, plan, groups[0], dec)
        else:
            parts = [(grp.rows, self._decode_group(x, plan, grp, dec)) for grp in groups]
            logits = parts[0][1].new_empty(n_img, *parts[0][1].shape[1:])
            for rows, t in parts:
                logits.index_copy_(0, torch.tensor(rows, device=dev), t)
        body = [run.body_all + b for b in run.body_img]
        total = [b + run.heads_all + hd + plan.stem + d for b, hd, d in zip(body, run.heads_img, dec)]
        flops = torch.tensor([body, total], dtype=x.dtype, device=dev)
        # every edge's gate per image, every node's alive / ran flags: one tensor each, rows as views
        gate_table: list[list[float]] = []
        flags: list[list[bool]] = []
        for node in self.nodes_:
            k = len(self.out_keys[node])
            cols = [[0.0] * n_img for _ in range(k)]
            for rows, vals in run.gates.get(node, ()):
                for r, i in enumerate(range(n_img) if rows is None else rows):
                    for j in range(k):
                        cols[j][i] = vals[r * k + j]
            gate_table.extend(cols)
            flags.append(_row_flags(run.alive_rows(node), n_img))
            flags.append(_row_flags(run.ran_all(node), n_img))
        gates_t = torch.tensor(gate_table, dtype=x.dtype, device=dev).unbind(0)
        flags_t = torch.tensor(flags, dtype=torch.bool, device=dev).unbind(0)
        keys = [key for node in self.nodes_ for key in self.out_keys[node]]
        body_t, total_t = flops.unbind(0)
        return RoutingOutput(
            logits=logits,
            edge_gates=dict(zip(keys, gates_t)),
            expected_body_flops=body_t,
            expected_flops=total_t,
            realised_body_flops=body_t,
            realised_flops=total_t,
            budget_body_flops=body_t,
            alive={n: flags_t[2 * q] for q, n in enumerate(self.nodes_)},
            cell_ran={n: flags_t[2 * q + 1] for q, n in enumerate(self.nodes_)},
        )


class _Group:
    """Images that run together in the skipping executor (rows None: the whole batch), with their
    pending contributions to the next layer's nodes and to the decoder."""

    __slots__ = ("rows", "incoming", "last")

    def __init__(self, rows: list[int] | None, incoming: dict, last: list):
        self.rows = rows
        self.incoming: dict[Node, list[tuple[list[int] | None, torch.Tensor]]] = incoming
        self.last: list[list[tuple[list[int] | None, torch.Tensor]]] = last


class _Run:
    """The Python bookkeeping of one skipping pass: FLOPs per image (work done on the whole batch is
    counted once, not per image), gate values and which images ran each node's cell."""

    def __init__(self, n: int):
        self.n = n
        self.body_all = 0
        self.body_img = [0] * n
        self.heads_all = 0
        self.heads_img = [0] * n
        # node -> [(rows, flat gate values of those rows)], one entry per group that reached the node
        self.gates: dict[Node, list[tuple[list[int] | None, list[float]]]] = {}
        self.ran: dict[Node, list[list[int] | None]] = {}  # node -> rows that ran its cell, per group

    def count(self, rows: list[int] | None, flops: int, heads: bool = False) -> None:
        if rows is None:
            if heads:
                self.heads_all += flops
            else:
                self.body_all += flops
            return
        per = self.heads_img if heads else self.body_img
        for i in rows:
            per[i] += flops

    def alive_rows(self, node: Node) -> list[int] | None | bool:
        return _union([rows for rows, _ in self.gates.get(node, ())])

    def ran_all(self, node: Node) -> list[int] | None | bool:
        return _union(self.ran.get(node, ()))


def _union(row_sets) -> list[int] | None | bool:
    """Union of row sets (None = every image); False when there are none."""
    row_sets = list(row_sets)
    if not row_sets:
        return False
    if any(r is None for r in row_sets):
        return None
    return sorted(set().union(*row_sets))


def _split_by_decisions(live, per_node, m: int) -> list[list[int]] | None:
    """Positions 0..m-1 grouped by their open/closed pattern over the layer's gates (in first-seen
    order); None when every image decides alike."""
    groups: dict[tuple, list[int]] = {}
    for p in range(m):
        sig = tuple(v > 0 for (step, _, _), vals in zip(live, per_node)
                    for v in vals[p * step.width: (p + 1) * step.width])
        groups.setdefault(sig, []).append(p)
    return None if len(groups) == 1 else list(groups.values())


@dataclass(frozen=True)
class _EdgeStep:
    """One outgoing edge of a node in the plan: its position in the gate vector, module, target node
    (None: the decoder), the target's spatial size and the edge's FLOPs."""

    j: int
    module: nn.Module
    target: Node | None
    size: tuple[int, int]
    cost: int


@dataclass(frozen=True)
class _NodeStep:
    """What the skipping executor needs of one node, resolved once per input size."""

    node: Node
    cell: nn.Module
    gate: SoftGate
    width: int  # number of gates (outgoing edges)
    keep_target: Node | None  # where a closed node's input goes (None: the decoder at its scale)
    edges: tuple[_EdgeStep, ...]
    cell_cost: int
    gate_cost: int


@dataclass(frozen=True)
class _Plan:
    layers: tuple[tuple[_NodeStep, ...], ...]
    sizes: list[tuple[int, int]]
    stem: int
    decoder: dict


def _build_plan(net: "DynamicNet", size: tuple[int, int]) -> _Plan:
    space = net.space
    table = cost_table(space, size, net.gate_resolution)
    sizes = feature_sizes(size[0], size[1])
    layers: list[list[_NodeStep]] = [[] for _ in range(space.layers + 1)]
    for node in net.nodes_:
        layer, scale = node
        edges = []
        for j, key in enumerate(net.out_keys[node]):
            if key[0] == "out":
                edges.append(_EdgeStep(j, net.out_relu, None, sizes[scale], table.edge_of(key)))
            else:
                edges.append(_EdgeStep(j, net.transitions[edge_key(key)], (key[0], key[2]), sizes[key[2]], table.edge_of(key)))
        layers[layer].append(_NodeStep(
            node=node, cell=net.cells[node_key(node)], gate=net.gates[node_key(node)], width=len(net.out_keys[node]),
            keep_target=(layer + 1, scale) if layer < space.layers else None, edges=tuple(edges),
            cell_cost=table.cell[node], gate_cost=table.gate[node],
        ))
    return _Plan(tuple(tuple(ls) for ls in layers), sizes, table.stem, table.decoder)


def _row_flags(rows: list[int] | None | bool, n: int) -> list[bool]:
    if rows is None:
        return [True] * n
    flags = [False] * n
    if rows is not False:
        for i in rows:
            flags[i] = True
    return flags


def _sub(rows: list[int] | None, picks: list[int], n: int) -> list[int] | None:
    """The image indices of positions ``picks`` of a row set (None = every image); None if that is all."""
    if len(picks) == n:
        return None
    return list(picks) if rows is None else [rows[p] for p in picks]


def _take(t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Rows of ``t`` (no copy when all rows are taken, in order)."""
    if len(rows) == t.shape[0]:
        return t
    return t.index_select(0, torch.tensor(rows, device=t.device))


def _gather_sum(parts, n: int) -> tuple[list[int] | None, torch.Tensor | None]:
    """Sum contributions given on different image subsets (rows None = every image): returns (sorted
    image indices or None for every image, the summed rows); (..., None) when there are no parts. The
    parts are added in the order given (the dense forward's order)."""
    if not parts:
        return [], None
    if len(parts) == 1:
        return parts[0]
    first = parts[0][0]
    if all(p[0] == first for p in parts):  # every part covers the same images (always at batch 1)
        total = parts[0][1]
        for _, t in parts[1:]:
            total = total + t
        return first, total
    if any(p[0] is None for p in parts):
        idx = None
        count = n
    else:
        idx = sorted(set().union(*(p[0] for p in parts)))
        count = len(idx)
        if count == n:
            idx = None
    pos = None if idx is None else {img: r for r, img in enumerate(idx)}
    t0 = parts[0][1]
    total = t0.new_zeros(count, *t0.shape[1:])
    for rows, t in parts:
        if rows is None or (idx is not None and len(rows) == count):
            total = total + t
        else:
            where = rows if pos is None else [pos[i] for i in rows]
            total.index_add_(0, torch.tensor(where, device=t.device), t)
    return idx, total
