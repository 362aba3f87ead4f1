"""Run a dynamic net over a data set and collect what the plots need: edge frequencies, routes, GFLOPs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .data import EdgeKey, edge_frequencies, routes_from_gates


@dataclass(frozen=True)
class DynamicRecord:
    indices: list[int]  # data set indices, in order
    frequencies: dict[EdgeKey, float]
    routes: list[frozenset]
    gflops: np.ndarray  # realised total GFLOPs per image (paper convention)
    body_gflops: np.ndarray


def collect_dynamic(model, dataset, indices: Sequence[int] | None = None, batch_size: int = 8) -> DynamicRecord:
    """Run ``model.forward_skipping`` (eval mode, no grad) over ``indices`` of ``dataset`` (default all)."""
    import torch

    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    model = model.eval()
    gates, flops, body = [], [], []
    with torch.no_grad():
        for start in range(0, len(idx), batch_size):
            images = torch.stack([dataset[i][0] for i in idx[start : start + batch_size]])
            out = model.forward_skipping(images)
            gates.append({k: v.detach().cpu() for k, v in out.edge_gates.items()})
            flops.append(out.realised_flops.detach().double().cpu().numpy())
            body.append(out.realised_body_flops.detach().double().cpu().numpy())
    return DynamicRecord(idx, edge_frequencies(gates), routes_from_gates(gates),
                         np.concatenate(flops) / 1e9, np.concatenate(body) / 1e9)


def predict(model, dataset, indices: Sequence[int]):
    """(images, labels, predicted class ids, routes, GFLOPs) for a few images of ``dataset``."""
    import torch

    images = torch.stack([dataset[i][0] for i in indices])
    labels = [dataset[i][1] for i in indices]
    with torch.no_grad():
        out = model.eval().forward_skipping(images)
    preds = out.logits.argmax(1)
    routes = routes_from_gates({k: v.cpu() for k, v in out.edge_gates.items()})
    return images, labels, preds, routes, out.realised_flops.double().cpu().numpy() / 1e9
