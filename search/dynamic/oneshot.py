"""One-shot scoring through a trained supernet (issue 15's evaluator): a candidate Architecture is scored
with the supernet's inherited weights, its edges forced open and every other gate closed, BN statistics
recalibrated on a few fixed training batches, mIoU on a fixed validation subset.

Pass-through makes every route a valid forced pattern: a node on the route whose cell is ``identity`` is a
closed node (all its gates 0), and the supernet then forwards its input along its keep edge exactly as the
static net's identity node does. ``static_from_supernet`` copies the inherited weights into the built
static net; the two compute the same function (tests/test_oneshot.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ...evaluators.proxy import EvalResult
from ...spaces.architecture import Architecture
from ...spaces.celltypes import cell_type
from ...spaces.errors import RoutespaceError
from ...spaces.supernet import DynamicNet

DEFAULT_CALIBRATION_BATCHES = 4


def check_representable(net: DynamicNet, arch: Architecture) -> None:
    """The supernet can run ``arch`` as a forced route: same space (cells aside), every node's cell the
    supernet's or ``identity``, and an identity node leaves only along its keep edge (a closed node passes
    its input on there and nowhere else)."""
    a, b = arch.space, net.space
    if (a.layers, a.base_channels, a.num_classes, a.scales) != (b.layers, b.base_channels, b.num_classes, b.scales):
        raise RoutespaceError(
            f"the candidate's space ({a.layers} layers, C={a.base_channels}, {a.num_classes} classes) is not the "
            f"supernet's ({b.layers} layers, C={b.base_channels}, {b.num_classes} classes): use a supernet of the same space")
    for node in arch.nodes:
        cell = arch.cell_of(node)
        if cell_type(cell).runs_nothing:
            if any(e[1] != e[2] for e in arch.out_edges(node)):
                raise RoutespaceError(f"identity node {node} has a non-keep out edge: a closed supernet node passes its "
                                      "input along its keep edge only")
        elif cell != b.cell:
            raise RoutespaceError(f"node {node} has cell {cell!r}; the supernet's cells are {b.cell!r}")


def forced_gates(net: DynamicNet, arch: Architecture, n: int) -> dict:
    """Gate values (n, k) per node: 1 on the candidate's edges (and on the decoder edge of its last-layer
    nodes), 0 elsewhere; identity nodes closed (all 0)."""
    edges = set(arch.edges)
    nodes = set(arch.nodes)
    gates = {}
    for node, keys in net.out_keys.items():
        row = torch.zeros(len(keys))
        if node in nodes and not cell_type(arch.cell_of(node)).runs_nothing:
            for j, key in enumerate(keys):
                row[j] = 1.0 if (key[0] == "out" or key in edges) else 0.0
        gates[node] = row.expand(n, -1).clone()
    return gates


def static_from_supernet(net: DynamicNet, arch: Architecture) -> nn.Module:
    """The built static net of ``arch`` carrying the supernet's weights (shared, not copied: the net must not
    be trained) and copies of its BN statistics (so recalibrating the static net leaves the supernet alone).
    The net is built on the meta device, so no random initialisation is spent on weights replaced at once."""
    from ...spaces.builder import build

    check_representable(net, arch)
    with torch.device("meta"):
        static = build(arch)
    source = dict(net.named_parameters())
    buffers = dict(net.named_buffers())
    mapped = {}
    for key in static.state_dict():
        if key in source:
            mapped[key] = source[key].detach()
        elif key in buffers:
            mapped[key] = buffers[key].clone()
        else:
            raise RoutespaceError(f"the supernet has no weights for {key!r}")
    static.load_state_dict(mapped, assign=True)
    return static


class _CachedStem(nn.Module):
    """Stands in for a static net's stem: returns the precomputed stem features of the exact tensors it was
    prepared for (the stem comes before any routing, so its output is the same for every candidate)."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.pairs = pairs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for inp, out in self.pairs:
            if inp is x:
                return out
        raise RuntimeError("cached stem called on a tensor it was not prepared for")


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[torch.Tensor], forward=None) -> None:
    """Reset every BN's running statistics and re-estimate them (cumulative average) on ``batches``."""
    forward = forward or model
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        for x in batches:
            forward(x)
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        model.train(was_training)


@dataclass
class OneShotEvaluator:
    """Scores candidates with a trained supernet (an Evaluator for searches: ``__call__(arch, seed)``).

    ``calibration``: the fixed training batches BN is recalibrated on for every candidate (none: the
    supernet's own running statistics are used); ``validation``: the fixed (images, labels) batches mIoU is
    measured on. A candidate runs as its built static net carrying the supernet's weights, which computes
    what the supernet computes with the candidate's route forced (tests/test_oneshot.py) but runs only the
    route; the stem, shared by every candidate, is computed once."""

    net: DynamicNet
    calibration: list
    validation: list
    steps_per_trial: int = 0

    def __post_init__(self) -> None:
        import copy

        self.net.eval()
        stem = copy.deepcopy(self.net.stem)
        with torch.no_grad():
            stem.train()
            calib = [(x, stem(x)) for x in self.calibration]  # train mode: normalised by batch statistics
            if self.calibration:
                recalibrate_bn(stem, self.calibration)
            stem.eval()
            val = [(x, stem(x)) for x, _ in self.validation]
        self._stem = _CachedStem(calib + val)

    @classmethod
    def from_run(cls, run, data: str | None = None, calibration_batches: int = DEFAULT_CALIBRATION_BATCHES,
                 batch_size: int = 8, val_images: int = 64, seed: int = 0, val_batch: int = 64) -> "OneShotEvaluator":
        from ...evaluators.datasets import load_dataset
        from ...evaluators.evaluate import load_run_model

        if calibration_batches < 0:
            raise RoutespaceError(f"calibration batches must be >= 0, got {calibration_batches}")
        model, manifest, _ = load_run_model(run)
        if not isinstance(model, DynamicNet):
            raise RoutespaceError(f"{run} is not a dynamic (supernet) run: one-shot scoring needs `routespace train` "
                                  "without --arch (e.g. --sampling uniform)")
        from ...evaluators.runrecord import RunSettings

        cli = RunSettings.of(manifest, str(run)).to_dict()
        data = data or cli.get("data") or "synthetic"
        size = tuple(cli["size"]) if cli.get("size") else None
        train_set, val_set = load_dataset(data, "train", size=size), load_dataset(data, "val", size=size)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train_set), generator=gen)[: calibration_batches * batch_size].tolist()
        calibration = [torch.stack([train_set[i][0] for i in order[b:b + batch_size]])
                       for b in range(0, len(order), batch_size)]
        idx = list(range(min(val_images, len(val_set))))
        validation = [(torch.stack([val_set[i][0] for i in idx[b:b + val_batch]]),
                       torch.stack([val_set[i][1] for i in idx[b:b + val_batch]])) for b in range(0, len(idx), val_batch)]
        return cls(model, calibration, validation)

    def __call__(self, arch: Architecture, seed: int = 0) -> EvalResult:
        from ...evaluators.metrics import ConfusionMatrix

        t0 = time.perf_counter()
        static = static_from_supernet(self.net, arch)
        static.stem = self._stem
        if self.calibration:
            recalibrate_bn(static, self.calibration)
        t1 = time.perf_counter()
        static.eval()
        cm = ConfusionMatrix(self.net.space.num_classes)
        with torch.inference_mode():
            for images, labels in self.validation:
                cm.update(static(images).argmax(1), labels)
        t2 = time.perf_counter()
        return EvalResult(miou=float(cm.summary()["miou"]), train_steps=0,
                          train_images=sum(x.shape[0] for x in self.calibration), train_seconds=t1 - t0,
                          eval_seconds=t2 - t1,
                          extra={"evaluator": "oneshot", "calibration_batches": len(self.calibration),
                                 "val_images": sum(x.shape[0] for x, _ in self.validation)})


def kendall_tau(xs, ys) -> float:
    """Kendall's tau-b of two equally long sequences (ties in either counted as neither concordant nor
    discordant, normalised by the untied pairs of each); NaN when either is constant or shorter than 2."""
    xs, ys = list(xs), list(ys)
    if len(xs) != len(ys):
        raise ValueError("kendall_tau needs two sequences of the same length")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            dx, dy = (xs[i] > xs[j]) - (xs[i] < xs[j]), (ys[i] > ys[j]) - (ys[i] < ys[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    denom = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denom if denom else float("nan")
