"""Validation of a trained net: mIoU, and for dynamic nets what really ran per image and how long it took.

For a dynamic net (a model with ``forward_skipping``) every validation image goes through the
skipping executor, so the mIoU is that of the computation that is really run, and the realised FLOPs
come per image from what ran. Latency is measured in the same call, batch 1, on the same images:
``latency_ms`` times ``forward_skipping``; ``latency_ms_all_open`` times the dense ``forward``, which
computes every cell and edge (the all-open net with its gates). The two are timed interleaved (per
repeat and image, one after the other), after a warm-up; medians with quartiles, torch threads stated. FLOPs use the paper convention (a multiply-add is one FLOP).
"""
from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .evalrecord import Evaluation
from .metrics import ConfusionMatrix
from .timing import interleaved_latency_ms, spread
from .train import logits_of, resolve_device

if TYPE_CHECKING:
    from .tensorboard import Writer


def binary_entropy_bits(g: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of an on/off decision taken with probability ``g`` (0 at g in {0, 1})."""
    g = g.double().clamp(0.0, 1.0)
    ent = torch.zeros_like(g)
    inside = (g > 0) & (g < 1)
    p = g[inside]
    ent[inside] = -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))
    return ent


@torch.inference_mode()
def median_latency_ms(fn, images: list[torch.Tensor], repeats: int, device: torch.device, warmup: int = 2) -> float:
    """Median wall-clock milliseconds of ``fn(image)`` over ``repeats`` passes over ``images`` (batch 1)."""
    return statistics.median(interleaved_latency_ms({"fn": fn}, images, repeats, device, warmup)["fn"])


def _num_classes(model: nn.Module, val_set: Any) -> int | None:
    for source in (val_set, getattr(model, "space", None), getattr(getattr(model, "arch", None), "space", None)):
        n = getattr(source, "num_classes", None)
        if isinstance(n, int):
            return n
    return None


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    val_set: torch.utils.data.Dataset,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    latency_repeats: int = 10,
    latency_images: int = 4,
    num_workers: int = 0,
    writer: Writer | None = None,
    step: int = 0,
) -> Evaluation:
    """Evaluate ``model`` on ``val_set``: an :class:`~routespace.evaluators.evalrecord.Evaluation`
    (``.to_dict()`` is the JSON; also written, at ``step``, to ``writer``, a
    ``evaluators.tensorboard.Writer``, when one is given: see ``tensorboard.log_evaluation``).

    Always: ``miou``, ``pixel_accuracy``, ``images``, ``size`` [H, W], ``device``, ``torch_threads``,
    ``latency_ms`` (batch 1 median; ``latency_repeats=0`` skips latency). Static nets with an ``arch``:
    ``gflops``, ``params_m``. Dynamic nets: ``gflops_mean/min/max/std`` (realised, total per image),
    ``body_gflops_mean/min/max``, ``body_gflops_all_open``, ``gflops_all_open`` (all open, with gates,
    from ``space_cost``), ``latency_ms_all_open``, ``gate_entropy_mean`` (bits per gate, 0 = decisive),
    ``edges_varying_fraction`` (gates open for some images and closed for others), ``per_image_gflops``,
    ``route_scale_spearman`` (per-image GFLOPs vs mean object size; None on data without object sizes).
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model = model.to(dev).eval()
    dynamic = hasattr(model, "forward_skipping")
    loader = torch.utils.data.DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    classes = _num_classes(model, val_set)
    cm = None
    flops, body = [], []
    entropy_sum, entropy_count = 0.0, 0
    ever_open: dict = {}
    ever_closed: dict = {}
    size = None
    latency_inputs: list[torch.Tensor] = []
    for images, labels in loader:
        images, labels = images.to(dev), labels.to(dev)
        size = list(images.shape[-2:])
        if len(latency_inputs) < latency_images:
            latency_inputs.extend(images[i:i + 1] for i in range(min(latency_images - len(latency_inputs), len(images))))
        out = model.forward_skipping(images) if dynamic else model(images)
        logits = logits_of(out)
        if cm is None:
            cm = ConfusionMatrix(classes or logits.shape[1])
        cm.update(logits.argmax(1), labels)
        if dynamic:
            flops.append(out.realised_flops.detach().double().cpu())
            body.append(out.realised_body_flops.detach().double().cpu())
            for key, g in out.edge_gates.items():
                g = g.detach().double().cpu()
                ent = binary_entropy_bits(g)
                entropy_sum += float(ent.sum())
                entropy_count += ent.numel()
                ever_open[key] = ever_open.get(key, False) or bool((g > 0).any())
                ever_closed[key] = ever_closed.get(key, False) or bool((g <= 0).any())
    if cm is None:
        raise ValueError("the validation set is empty")
    summary = cm.summary()
    fields: dict[str, Any] = {
        "miou": summary["miou"], "pixel_accuracy": summary["pixel_accuracy"], "iou": summary["iou"],
        "images": len(val_set), "size": size, "device": str(dev), "torch_threads": torch.get_num_threads(),
    }
    if dynamic:
        fields.update(_dynamic_figures(model, size, torch.cat(flops), torch.cat(body)), dynamic=True)
        fields["route_scale_spearman"] = route_scale_spearman(fields["per_image_gflops"], val_set)
        fields["gate_entropy_mean"] = entropy_sum / entropy_count if entropy_count else math.nan
        fields["edges_varying_fraction"] = (
            sum(ever_open[k] and ever_closed[k] for k in ever_open) / len(ever_open) if ever_open else math.nan
        )
    elif hasattr(model, "arch"):
        from .cost import architecture_cost

        report = architecture_cost(model.arch, tuple(size))
        fields.update(gflops=report.gflops, params_m=report.params_m)
    if latency_repeats > 0:
        fns = {"latency_ms": model.forward_skipping if dynamic else model}
        if dynamic:
            fns["latency_ms_all_open"] = model  # the dense forward, timed interleaved with the skipping one
        times = interleaved_latency_ms(fns, latency_inputs, latency_repeats, dev)  # evaluate runs in inference mode
        for key, samples in times.items():
            s = spread(samples)
            fields[key], fields[f"{key}_iqr"] = s["median"], [s["q1"], s["q3"]]
        fields.update(latency_batch=1, latency_images=len(latency_inputs), latency_repeats=latency_repeats,
                      latency_interleaved=True)
    result = Evaluation(**fields)
    if writer is not None:
        from .tensorboard import log_evaluation

        log_evaluation(writer, result, step)
    return result


def route_scale_spearman(per_image_gflops: list[float], val_set) -> float | None:
    """Rank correlation between each image's realised GFLOPs and its mean object size (px), on data that
    records object sizes (``mean_object_px``); None elsewhere (and nan when either side is constant)."""
    if not hasattr(val_set, "mean_object_px") or len(per_image_gflops) < 2:
        return None
    from .metrics import spearman

    sizes = [float(val_set.mean_object_px(i)) for i in range(len(per_image_gflops))]
    return spearman(per_image_gflops, sizes)


def _dynamic_figures(model: nn.Module, size: list[int], flops: torch.Tensor, body: torch.Tensor) -> dict:
    from routespace.spaces.supernet import body_flops_all_open

    from .cost import space_cost

    all_open = space_cost(model.space, tuple(size), "paper", gates=True, gate_resolution=model.gate_resolution)
    gf, bgf = flops / 1e9, body / 1e9
    return {
        "gflops_mean": float(gf.mean()),
        "gflops_min": float(gf.min()),
        "gflops_max": float(gf.max()),
        "gflops_std": float(gf.std(unbiased=False)),
        "body_gflops_mean": float(bgf.mean()),
        "body_gflops_min": float(bgf.min()),
        "body_gflops_max": float(bgf.max()),
        "body_gflops_all_open": body_flops_all_open(model.space, tuple(size)) / 1e9,
        "gflops_all_open": all_open.gflops,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "per_image_gflops": [float(v) for v in gf],
    }


def load_run_model(run, checkpoint=None) -> tuple[nn.Module, dict, dict]:
    """Rebuild a run's model and load its final checkpoint (or ``checkpoint``): (model, manifest, state).

    Works for runs of kind 'dynamic' (spec: the space) and 'static' (spec: the architecture)."""
    from pathlib import Path

    from routespace.spaces.errors import RoutespaceError

    from . import runfolder
    from .checkpoint import load_checkpoint, load_model_state

    run = Path(run)
    manifest = runfolder.read_manifest(run) if run.is_dir() else None
    if manifest is None:
        raise RoutespaceError(f"{run} is not a training run folder (no {runfolder.MANIFEST}): give the --out folder of `routespace train`")
    path = Path(checkpoint) if checkpoint else runfolder.final_checkpoint_path(run)
    if not path.is_file():
        raise RoutespaceError(
            f"run {run} has no final checkpoint (status {manifest.get('status')} at step {manifest.get('step')}): "
            f"finish it first with: routespace train --out {run} --resume"
        )
    state = load_checkpoint(path)
    model = build_model(manifest.get("kind"), manifest.get("spec") or {}, run)
    load_model_state(model, state["model"], path)
    return model, manifest, state


def build_model(kind: str | None, spec: dict, source="run") -> nn.Module:
    """An untrained model of a run's ``kind`` from its manifest ``spec``."""
    from routespace.spaces.errors import RoutespaceError

    if kind == "dynamic":
        from routespace.spaces.space import RoutingSpace
        from routespace.spaces.supernet import DynamicNet

        return DynamicNet(RoutingSpace.from_dict(spec.get("space")), gate_resolution=spec.get("gate_resolution", "full"))
    if kind == "static":
        from routespace.spaces.architecture import Architecture
        from routespace.spaces.builder import build

        return build(Architecture.from_dict(spec.get("architecture")))
    raise RoutespaceError(f"{source} holds a model of kind {kind!r}, which routespace cannot rebuild (only dynamic and static)")
