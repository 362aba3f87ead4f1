"""The description of one search: what is searched, under which budgets, with what, stored where.

A :class:`SearchConfig` is plain data (JSON-able) so that worker processes can rebuild everything from
it, and it is stored in the study (user attribute ``routespace``) so that ``--resume`` can check that
a study is continued with the same space, encoding, strategy, budgets and evaluator. What is stored or
written holds the storage URL masked (:func:`~routespace.search.storage.mask_url`); only the dict handed
to this machine's worker processes carries it whole.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from ..spaces.space import RoutingSpace
from .budget import ArchBudget, SearchBudget
from .encoding import Encoding
from .storage import mask_url

CONFIG_ATTR = "routespace"
# Fields a resumed study must share with its stored config (the search budget may change on resume).
IDENTITY_FIELDS = ("space", "encoding", "cells", "strategy", "strategy_options", "arch_budget", "evaluator", "seed")


@dataclass(frozen=True)
class SearchConfig:
    space: RoutingSpace
    encoding: str = "path"
    cells: tuple[str, ...] = ()
    strategy: str = "tpe"
    strategy_options: dict = field(default_factory=dict)
    arch_budget: ArchBudget = ArchBudget()
    search_budget: SearchBudget = SearchBudget()
    evaluator: dict = field(default_factory=lambda: {"kind": "proxy"})
    seed: int = 0
    study: str = ""
    storage: str = field(default="", repr=False)  # may hold a password: never in a repr
    heartbeat_interval: int = 10
    grace_period: int | None = None

    def __post_init__(self) -> None:
        if not self.study:
            object.__setattr__(self, "study", f"{self.space.name}-{self.encoding}-{self.strategy}")
        object.__setattr__(self, "cells", Encoding(self.space, self.encoding, tuple(self.cells)).cells)

    def make_encoding(self) -> Encoding:
        return Encoding(self.space, self.encoding, self.cells)

    def to_dict(self, mask_secrets: bool = True) -> dict:
        """Plain data; the storage URL masked unless ``mask_secrets=False`` (for this machine's workers)."""
        return {
            "space": self.space.to_dict(),
            "encoding": self.encoding,
            "cells": list(self.cells),
            "strategy": self.strategy,
            "strategy_options": dict(self.strategy_options),
            "arch_budget": self.arch_budget.to_dict(),
            "search_budget": {
                "trials": self.search_budget.trials,
                "timeout_s": self.search_budget.timeout_s,
                "max_train_steps": self.search_budget.max_train_steps,
                "max_rejected": self.search_budget.max_rejected,
            },
            "evaluator": dict(self.evaluator),
            "seed": self.seed,
            "study": self.study,
            "storage": mask_url(self.storage) if mask_secrets else self.storage,
            "heartbeat_interval": self.heartbeat_interval,
            "grace_period": self.grace_period,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SearchConfig":
        ab = dict(d.get("arch_budget") or {})
        if ab.get("size"):
            ab["size"] = tuple(ab["size"])
        return cls(
            space=RoutingSpace.from_dict(d["space"]),
            encoding=d.get("encoding", "path"),
            cells=tuple(d.get("cells", ())),
            strategy=d.get("strategy", "tpe"),
            strategy_options=dict(d.get("strategy_options") or {}),
            arch_budget=ArchBudget(**ab),
            search_budget=SearchBudget(**(d.get("search_budget") or {})),
            evaluator=dict(d.get("evaluator") or {"kind": "proxy"}),
            seed=int(d.get("seed", 0)),
            study=d.get("study", ""),
            storage=d.get("storage", ""),
            heartbeat_interval=int(d.get("heartbeat_interval", 10)),
            grace_period=d.get("grace_period"),
        )

    def identity(self) -> dict:
        d = self.to_dict()
        return {k: d[k] for k in IDENTITY_FIELDS}

    def with_(self, **changes: Any) -> "SearchConfig":
        return replace(self, **changes)


def identity_mismatch(stored: dict, current: dict) -> str | None:
    """The first identity field that differs between two config dicts, described; None if equal."""
    for key in IDENTITY_FIELDS:
        a = json.dumps(stored.get(key), sort_keys=True)
        b = json.dumps(current.get(key), sort_keys=True)
        if a != b:
            return f"{key}: stored {a[:120]}, given {b[:120]}"
    return None
