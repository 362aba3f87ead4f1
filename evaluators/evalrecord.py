"""The typed result of an evaluation (torch-free): what ``evaluate`` measured and, from
``evaluate_run``, which run it was. ``to_dict()`` is the JSON of `routespace evaluate --json` and of
``RUN/evaluation.json``; ``from_dict`` reads one back and refuses what it cannot read. It is also a read-only mapping of those
JSON keys (``record["miou"]``, ``record.get(key)``), for readers written against the JSON."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ..spaces.errors import RoutespaceError
from .runrecord import read_schema

SCHEMA = 1

# the groups of keys, each written only when it applies (dynamic figures may hold None, e.g. spearman)
_BASE = ("miou", "pixel_accuracy", "iou", "images", "size", "device", "torch_threads")
_STATIC = ("gflops", "params_m")
_DYNAMIC = ("gflops_mean", "gflops_min", "gflops_max", "gflops_std", "body_gflops_mean", "body_gflops_min",
            "body_gflops_max", "body_gflops_all_open", "gflops_all_open", "params_m", "per_image_gflops",
            "route_scale_spearman", "gate_entropy_mean", "edges_varying_fraction")
_LATENCY = ("latency_ms", "latency_ms_iqr", "latency_ms_all_open", "latency_ms_all_open_iqr", "latency_batch",
            "latency_images", "latency_repeats", "latency_interleaved")
_RUN = ("run", "kind", "data", "step")


@dataclass(frozen=True)
class Evaluation(Mapping):
    """mIoU and cost of one net on one validation set. Dynamic nets: realised GFLOPs per image (total and
    body), all-open references, gate statistics and ``route_scale_spearman``; static nets: analytic
    ``gflops`` and ``params_m``. Latency (batch 1, median ms with its quartiles) when it was measured; for
    dynamic nets skipping and all-open are timed interleaved in one loop."""

    miou: float
    pixel_accuracy: float
    iou: Any  # class name -> IoU (None: the class is absent from the data)
    images: int
    size: list
    device: str
    torch_threads: int
    dynamic: bool = False
    gflops: float | None = None
    params_m: float | None = None
    gflops_mean: float | None = None
    gflops_min: float | None = None
    gflops_max: float | None = None
    gflops_std: float | None = None
    body_gflops_mean: float | None = None
    body_gflops_min: float | None = None
    body_gflops_max: float | None = None
    body_gflops_all_open: float | None = None
    gflops_all_open: float | None = None
    per_image_gflops: list | None = None
    route_scale_spearman: float | None = None
    gate_entropy_mean: float | None = None
    edges_varying_fraction: float | None = None
    latency_ms: float | None = None
    latency_ms_iqr: list | None = None
    latency_ms_all_open: float | None = None
    latency_ms_all_open_iqr: list | None = None
    latency_batch: int | None = None
    latency_images: int | None = None
    latency_repeats: int | None = None
    latency_interleaved: bool | None = None
    # the run evaluated (evaluate_run)
    run: str | None = None
    kind: str | None = None
    data: str | None = None
    step: int | None = None
    budget: dict | None = None

    def with_run(self, run: str, kind: str | None, data: str, step: int, budget: dict | None) -> "Evaluation":
        return replace(self, run=run, kind=kind, data=data, step=step, budget=budget)

    def to_dict(self) -> dict:
        keys = list(_BASE)
        if self.dynamic:
            keys += _DYNAMIC
        elif self.gflops is not None or self.params_m is not None:
            keys += _STATIC
        if self.latency_ms is not None:
            keys += [k for k in _LATENCY if not (k.startswith("latency_ms_all_open") and not self.dynamic)]
        if self.run is not None:
            keys += _RUN
        if self.budget is not None:
            keys.append("budget")
        out = {k: getattr(self, k) for k in dict.fromkeys(keys)}
        out["schema"] = SCHEMA
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "evaluation") -> "Evaluation":
        read_schema(data, SCHEMA, source, "evaluation")
        missing = [k for k in ("miou", "images", "size") if k not in data]
        if missing:
            raise RoutespaceError(f"{source}: not an evaluation result (no {', '.join(missing)})")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("pixel_accuracy", float("nan"))
        values.setdefault("iou", [])
        values.setdefault("device", "")
        values.setdefault("torch_threads", 0)
        values["dynamic"] = "gflops_mean" in data
        return cls(**values)

    # the JSON mapping's read interface, for readers of the documented keys
    def __getitem__(self, key: str) -> Any:
        d = self.to_dict()
        if key not in d:
            raise KeyError(key)
        return d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
