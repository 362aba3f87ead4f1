"""The typed record of what `routespace train` ran, kept in a run folder's manifest (``extra.cli``).

``RunSettings.from_manifest(manifest)`` is the one reader (``extract``, ``evaluate``, ``show``, ``config
dump``, a resumed ``train``, ``compare``, one-shot scoring and the benchmarks use it); ``to_dict()`` is the
one writer. The record carries a schema version (``schema``). A manifest written before the version
existed reads as schema 0 and keeps it when resumed, so resuming an older run does not see a changed
record; a record of a newer schema than this routespace knows is refused with a one-line error.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from routespace.spaces.errors import RoutespaceError

SCHEMA = 1  # the record's version; 0 = written before the version was recorded
_KEY = "cli"  # where the record lives in the manifest's 'extra'


@dataclass(frozen=True)
class BudgetRecord:
    """The budget a dynamic run trained under (its setting's values with explicit flags on top)."""

    setting: str | None
    mode: str
    mu: float
    gflops: float | None  # the total-GFLOPs target mu was converted from, if one was given
    lam: float
    warmup: float
    ramp: float
    adaptive: bool | None
    anneal: float = 0.0  # fraction of training over which the realised target falls to mu (0: switched on at mu)

    def to_dict(self) -> dict:
        out = {"setting": self.setting, "mode": self.mode, "mu": self.mu, "gflops": self.gflops, "lambda": self.lam,
               "warmup": self.warmup, "ramp": self.ramp, "adaptive": self.adaptive}
        if self.anneal:  # records of runs without an annealed target stay as they were written
            out["anneal"] = self.anneal
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "run") -> "BudgetRecord":
        try:
            return cls(setting=data.get("setting"), mode=str(data.get("mode", "realised")), mu=float(data["mu"]),
                       gflops=None if data.get("gflops") is None else float(data["gflops"]), lam=float(data["lambda"]),
                       warmup=float(data.get("warmup", 0.4)), ramp=float(data.get("ramp", 0.02)),
                       adaptive=data.get("adaptive"), anneal=float(data.get("anneal") or 0.0))
        except (KeyError, TypeError, ValueError):
            raise RoutespaceError(f"{source}: its budget record {dict(data)!r:.100} lacks a numeric mu or lambda") from None


def read_schema(data: Mapping[str, Any], newest: int, source: str, what: str) -> int:
    """The record's ``schema`` (0 when absent: written before versions were recorded); refused when it is
    not a version number or newer than ``newest``, the last this routespace reads."""
    schema = data.get("schema", 0)
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 0:
        raise RoutespaceError(f"{source}: its {what} has schema {schema!r}, not a version number")
    if schema > newest:
        raise RoutespaceError(f"{source} was written by a newer routespace ({what} schema {schema}, this one "
                              f"reads up to {newest}): upgrade routespace to read it")
    return schema


def _size(value: Any, what: str, source: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise RoutespaceError(f"{source}: its run record has {what} {value!r}, not [height, width]")
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class RunSettings:
    """Every `routespace train` setting that is not a ``TrainConfig`` field (those are the manifest's
    ``config``): the preset, data, sizes, the static architecture or the dynamic net's setting and budget."""

    preset: str = "tiny"
    data: str = "synthetic"
    size: tuple[int, int] | None = None  # training crop
    val_size: tuple[int, int] | None = None  # validation size `routespace evaluate` uses
    budget: BudgetRecord | None = None
    arch: dict | None = None  # the static net's spec (None: the dynamic net)
    setting: str | None = None  # dynamic setting name (A, B, C, raw)
    gate_resolution: str | None = None
    sampling: str | None = None  # 'gates' or 'uniform' (dynamic nets)
    skip_closed: bool = False  # training leaves out work closed for every image of a batch (DynamicNet.forward)
    schema: int = SCHEMA

    @property
    def dynamic(self) -> bool:
        return self.arch is None

    def to_dict(self) -> dict:
        out = {"preset": self.preset, "data": self.data, "size": list(self.size) if self.size else None,
               "val_size": list(self.val_size) if self.val_size else None,
               "budget": self.budget.to_dict() if self.budget is not None else None, "arch": self.arch,
               "setting": self.setting, "gate_resolution": self.gate_resolution, "sampling": self.sampling}
        if self.skip_closed:  # records of runs without it stay as they were written
            out["skip_closed"] = True
        if self.schema:  # a schema-0 record (an older run, resumed) is written back as it was
            out["schema"] = self.schema
        return out

    def extra(self) -> dict:
        """The manifest's ``extra`` mapping holding this record."""
        return {_KEY: self.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "run") -> "RunSettings":
        schema = read_schema(data, SCHEMA, source, "run record")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RoutespaceError(f"{source}: its run record has unknown field(s) {', '.join(unknown)}")
        budget = data.get("budget")
        if budget is not None and not isinstance(budget, Mapping):
            raise RoutespaceError(f"{source}: its run record's budget is {budget!r:.60}, not a mapping")
        arch = data.get("arch")
        if arch is not None and not isinstance(arch, Mapping):
            raise RoutespaceError(f"{source}: its run record's arch is {arch!r:.60}, not a spec mapping")
        return cls(preset=str(data.get("preset") or "tiny"), data=str(data.get("data") or "synthetic"),
                   size=_size(data.get("size"), "size", source), val_size=_size(data.get("val_size"), "val_size", source),
                   budget=BudgetRecord.from_dict(budget, source) if budget is not None else None,
                   arch=dict(arch) if arch is not None else None, setting=data.get("setting"),
                   gate_resolution=data.get("gate_resolution"), sampling=data.get("sampling"),
                   skip_closed=bool(data.get("skip_closed", False)), schema=schema)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], source: str = "run") -> "RunSettings | None":
        """The record of a run's manifest, or None when the run was not made by `routespace train`
        (e.g. by ``fit`` called directly)."""
        record = (manifest.get("extra") or {}).get(_KEY)
        if record is None:
            return None
        if not isinstance(record, Mapping):
            raise RoutespaceError(f"{source}: its manifest's run record is {record!r:.60}, not a mapping")
        return cls.from_dict(record, source)

    @classmethod
    def of(cls, manifest: Mapping[str, Any], source: str = "run") -> "RunSettings":
        """As ``from_manifest``, with the defaults for a run that has no record."""
        return cls.from_manifest(manifest, source) or cls(schema=0)

    def train_size(self, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
        return self.size or default

    def eval_size(self, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
        return self.val_size or self.size or default
