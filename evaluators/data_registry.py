"""The data-set registry: every ``--data`` kind in one table (torch-free, so the CLI's help reads it without
importing torch).

A data spec is ``KIND`` or ``KIND:ARG`` (``synthetic:small``, ``cityscapes:/data/cityscapes``). Each entry
names its loader as ``'module:attribute'``, imported when a data set is loaded; the loader is called as
``loader(arg, split, size)`` and returns a torch ``Dataset`` of ``(image, label)`` items
(:mod:`routespace.evaluators.datasets` has the conventions). Adding a data set is its loader plus one entry
here; ``load_dataset``, the ``--data`` help of every command and the registry test in tests/test_data.py
read this table.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..spaces.errors import RoutespaceError


@dataclass(frozen=True)
class DataSetKind:
    """``name``: the KIND of a spec; ``loader``: 'module:attribute', called ``(arg, split, size)``; ``forms``:
    how a spec names it (shown in help and errors); ``needs_path``: ARG is a folder and must be given."""

    name: str
    loader: str
    forms: tuple[str, ...]
    description: str
    needs_path: bool = False

    def load(self) -> Callable[..., Any]:
        module, _, attr = self.loader.partition(":")
        return getattr(importlib.import_module(module), attr)


DATASETS: dict[str, DataSetKind] = {d.name: d for d in (
    DataSetKind("synthetic", "routespace.evaluators.datasets:load_synthetic",
                ("synthetic", "synthetic:small", "synthetic:large"),
                "the embedded, generated and seeded set (64x64 unless given a size), log-uniform object sizes; "
                ":small / :large bias them to small / large objects"),
    DataSetKind("cityscapes", "routespace.evaluators.datasets:CityscapesSegmentation", ("cityscapes:PATH",),
                "Cityscapes fine annotations in their folder layout, mapped to the 19 train ids", needs_path=True),
    DataSetKind("voc", "routespace.evaluators.datasets:VOCSegmentation", ("voc:PATH",),
                "Pascal VOC 2012 segmentation (PATH = VOCdevkit/VOC2012), 21 classes", needs_path=True),
)}


def _either(items: list[str] | tuple[str, ...]) -> str:
    """'a, b or c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def data_forms() -> tuple[str, ...]:
    """Every spec form of every registered data set, in table order."""
    return tuple(f for d in DATASETS.values() for f in d.forms)


def data_forms_text() -> str:
    """'synthetic, synthetic:small, ..., cityscapes:PATH or voc:PATH': what errors and help list."""
    return _either(data_forms())


def data_help(default: str | None = "synthetic") -> str:
    """The ``--data`` help text: every form, with ``default`` marked (None: no mark)."""
    forms = [f"{f} (default)" if f == default else f for f in data_forms()]
    return _either(forms)


def data_set_kind(spec: str) -> tuple[DataSetKind, str]:
    """The registry entry a spec names and the spec's ARG ('' when none); unknown kinds are an error."""
    kind, _, arg = spec.partition(":")
    entry = DATASETS.get(kind)
    if entry is None:
        raise RoutespaceError(f"unknown data set {spec!r}: use {data_forms_text()}")
    if entry.needs_path and not arg:
        raise RoutespaceError(f"{kind} needs a folder: {kind}:PATH, e.g. {kind}:/data/{kind}")
    return entry, arg


def forms_of(name: str) -> str:
    """'synthetic, synthetic:small or synthetic:large': one entry's forms."""
    return _either(DATASETS[name].forms)
