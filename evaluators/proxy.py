"""Proxy evaluation for searches: how good is an architecture, for little compute.

An evaluator is a callable ``evaluator(arch, seed) -> EvalResult`` that reports its own compute
(steps, images, seconds). Two exist, both chosen by a JSON-able spec (so worker processes can rebuild
them, see :func:`make_evaluator`):

- :class:`ProxyEvaluator` (``{"kind": "proxy", ...}``): trains the static net from scratch for a few
  hundred steps on the chosen data (the embedded synthetic set by default) with
  :func:`routespace.evaluators.train.fit`, then measures validation mIoU with
  :func:`routespace.evaluators.evaluate.evaluate`. Seeded: the same architecture, seed and settings give
  the same mIoU on the same machine (CPU; data order is a pure function of the seed).
- :class:`SyntheticEvaluator` (``{"kind": "synthetic", ...}``): no training at all; a deterministic
  closed-form score of the architecture's structure, with an optional simulated training time. It is
  for testing and benchmarking the search machinery (budgets, storage, kills, resume), *not* a measure
  of segmentation quality.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

from ..spaces.architecture import Architecture
from ..spaces.errors import RoutespaceError


@dataclass
class EvalResult:
    """What one evaluation gave and cost."""

    miou: float
    train_steps: int
    train_images: int
    train_seconds: float
    eval_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Evaluator(Protocol):
    steps_per_trial: int

    def __call__(self, arch: Architecture, seed: int = 0) -> EvalResult: ...


# --- the cheap stand-in ----------------------------------------------------------------------------
def synthetic_score(arch: Architecture) -> float:
    """A deterministic score in (0, 1) from an architecture's structure (no training).

    It rewards what segmentation nets need - reaching coarse scales for context (``context``), ending
    with a fine-scale output (``detail``) and body capacity with diminishing returns (``capacity``) -
    plus a small fixed per-architecture jitter from the spec's hash, so the landscape is not flat.
    """
    from .cost import architecture_cost, space_cost

    space = arch.space
    scales = [s for (_, s) in arch.nodes]
    context = max(scales) / 3.0
    detail = 1.0 - min(arch.output_scales()) / 3.0
    body = architecture_cost(arch).body_flops / max(space_cost(space, gates=False).body_flops, 1)
    capacity = 1.0 - math.exp(-6.0 * body)
    mid = sum(1 for (l, s) in arch.nodes if s >= 2 and l > space.layers // 2) / max(space.layers, 1)
    digest = hashlib.sha1(arch.to_json().encode()).digest()
    jitter = (digest[0] / 255.0 - 0.5) * 0.04
    return 0.15 + 0.25 * context + 0.2 * detail + 0.25 * capacity + 0.1 * min(mid, 1.0) + jitter


class SyntheticEvaluator:
    """Closed-form score (:func:`synthetic_score`) with ``steps`` simulated steps of ``step_seconds``."""

    def __init__(self, steps: int = 0, step_seconds: float = 0.0) -> None:
        self.steps_per_trial = int(steps)
        self.step_seconds = float(step_seconds)

    def __call__(self, arch: Architecture, seed: int = 0) -> EvalResult:
        t0 = time.perf_counter()
        for _ in range(self.steps_per_trial):
            if self.step_seconds:
                time.sleep(self.step_seconds)
        seconds = time.perf_counter() - t0
        return EvalResult(synthetic_score(arch), self.steps_per_trial, 0, seconds, 0.0, {"evaluator": "synthetic"})


# --- the real proxy --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProxyConfig:
    """Short training on ``data`` (``load_dataset`` spec), validation mIoU on ``val_images`` images."""

    data: str = "synthetic"
    steps: int = 200
    batch_size: int = 8
    val_images: int = 64
    size: tuple[int, int] | None = None  # default: the space's input size
    lr: float | None = None  # default: the preset's training default
    threads: int = 0  # torch threads while training; 0 = leave as is
    device: str = "auto"  # 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.val_images < 1:
            raise RoutespaceError("proxy steps, batch size and validation images must be positive")


class ProxyEvaluator:
    """Train from scratch for ``config.steps`` steps, then validation mIoU (see module docstring)."""

    def __init__(self, config: ProxyConfig = ProxyConfig()) -> None:
        self.config = config
        self.steps_per_trial = config.steps
        self._data: dict = {}

    def _datasets(self, arch: Architecture):
        import torch

        from .datasets import load_dataset

        size = tuple(self.config.size or arch.space.input_size)
        key = (self.config.data, size)
        if key not in self._data:
            train = load_dataset(self.config.data, "train", size=size)
            val = load_dataset(self.config.data, "val", size=size)
            n_val = min(self.config.val_images, len(val))
            self._data[key] = (train, torch.utils.data.Subset(val, range(n_val)))
        return self._data[key]

    def __call__(self, arch: Architecture, seed: int = 0) -> EvalResult:
        import torch

        from ..spaces.builder import build
        from .evaluate import evaluate
        from .train import TRAIN_PRESETS, TrainConfig, fit, preset_config

        cfg = self.config
        old_threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            train_set, val_set = self._datasets(arch)
            overrides = dict(steps=cfg.steps, batch_size=cfg.batch_size, seed=int(seed), lr=cfg.lr,
                             warmup_steps=min(50, cfg.steps // 10), device=cfg.device, checkpoint_every=0)
            if arch.space.name in TRAIN_PRESETS:
                tcfg = preset_config(arch.space.name, **overrides)
            else:
                tcfg = TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
            torch.manual_seed(int(seed))
            model = build(arch)
            try:
                result = fit(model, train_set, tcfg, progress=False)
            except RoutespaceError as exc:
                if str(exc).startswith("interrupted"):  # Ctrl-C / SIGTERM inside fit: the trial is retried
                    raise KeyboardInterrupt from None
                raise
            t0 = time.perf_counter()
            metrics = evaluate(model, val_set, batch_size=cfg.batch_size, device=cfg.device, latency_repeats=0)
            eval_seconds = time.perf_counter() - t0
        finally:
            torch.set_num_threads(old_threads)
        miou = float(metrics.miou)
        if not math.isfinite(miou):
            miou = 0.0
        return EvalResult(
            miou=miou,
            train_steps=int(result.steps - result.start_step),
            train_images=int((result.steps - result.start_step) * cfg.batch_size),
            train_seconds=float(result.seconds),
            eval_seconds=eval_seconds,
            extra={"evaluator": "proxy", "final_loss": float(result.final_loss), "val_images": len(val_set),
                   "pixel_accuracy": float(metrics.get("pixel_accuracy", float("nan")))},
        )


EVALUATOR_KINDS = ("proxy", "synthetic")


def make_evaluator(spec: dict) -> Callable[[Architecture, int], EvalResult]:
    """Build an evaluator from its spec: ``{"kind": "proxy", <ProxyConfig fields>}`` or
    ``{"kind": "synthetic", "steps": N, "step_seconds": S}``."""
    spec = dict(spec)
    kind = spec.pop("kind", "proxy")
    try:
        if kind == "proxy":
            if spec.get("size"):
                spec["size"] = tuple(spec["size"])
            return ProxyEvaluator(ProxyConfig(**spec))
        if kind == "synthetic":
            return SyntheticEvaluator(**spec)
    except TypeError as exc:
        raise RoutespaceError(f"bad evaluator settings {spec}: {exc}") from None
    raise RoutespaceError(f"unknown evaluator {kind!r}: choose one of {', '.join(EVALUATOR_KINDS)}")
