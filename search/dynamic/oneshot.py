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
    """The built static net of ``arch`` carrying the supernet's weights (and BN statistics)."""
    from ...spaces.builder import build

    check_representable(net, arch)
    static = build(arch).to(next(net.parameters()).dtype)  # the supernet's precision, so the copy is exact
    source = net.state_dict()
    mapped = {}
    for key in static.state_dict():
        if key not in source:
            raise RoutespaceError(f"the supernet has no weights for {key!r}")
        mapped[key] = source[key]
    static.load_state_dict(mapped)
    return static


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

    ``calibration``: the fixed training batches BN is recalibrated on for every candidate; ``validation``:
    the fixed (images, labels) batches mIoU is measured on."""

    net: DynamicNet
    calibration: list
    validation: list
    steps_per_trial: int = 0

    @classmethod
    def from_run(cls, run, data: str | None = None, calibration_batches: int = DEFAULT_CALIBRATION_BATCHES,
                 batch_size: int = 8, val_images: int = 64, seed: int = 0) -> "OneShotEvaluator":
        from ...evaluators.datasets import load_dataset
        from ...evaluators.evaluate import load_run_model

        model, manifest, _ = load_run_model(run)
        if not isinstance(model, DynamicNet):
            raise RoutespaceError(f"{run} is not a dynamic (supernet) run: one-shot scoring needs `routespace train` "
                                  "without --arch (e.g. --sampling uniform)")
        cli = manifest.get("extra", {}).get("cli", {})
        data = data or cli.get("data") or "synthetic"
        size = tuple(cli["size"]) if cli.get("size") else None
        train_set, val_set = load_dataset(data, "train", size=size), load_dataset(data, "val", size=size)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train_set), generator=gen)[: calibration_batches * batch_size].tolist()
        calibration = [torch.stack([train_set[i][0] for i in order[b:b + batch_size]])
                       for b in range(0, len(order), batch_size)]
        idx = list(range(min(val_images, len(val_set))))
        validation = [(torch.stack([val_set[i][0] for i in idx[b:b + batch_size]]),
                       torch.stack([val_set[i][1] for i in idx[b:b + batch_size]])) for b in range(0, len(idx), batch_size)]
        return cls(model, calibration, validation)

    def __call__(self, arch: Architecture, seed: int = 0) -> EvalResult:
        from ...evaluators.metrics import ConfusionMatrix

        check_representable(self.net, arch)
        t0 = time.perf_counter()
        recalibrate_bn(self.net, self.calibration,
                       lambda x: self.net(x, gate_override=forced_gates(self.net, arch, x.shape[0])))
        t1 = time.perf_counter()
        self.net.eval()
        cm = ConfusionMatrix(self.net.space.num_classes)
        with torch.no_grad():
            for images, labels in self.validation:
                out = self.net(images, gate_override=forced_gates(self.net, arch, images.shape[0]))
                cm.update(out.logits.argmax(1), labels)
        t2 = time.perf_counter()
        return EvalResult(miou=float(cm.summary()["miou"]), train_steps=0,
                          train_images=sum(x.shape[0] for x in self.calibration), train_seconds=t1 - t0,
                          eval_seconds=t2 - t1,
                          extra={"evaluator": "oneshot", "calibration_batches": len(self.calibration),
                                 "val_images": sum(x.shape[0] for x, _ in self.validation)})
