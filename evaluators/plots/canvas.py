"""Figures without pyplot: a ``matplotlib.figure.Figure`` on its own Agg canvas, saved atomically.

Nothing here touches pyplot or rcParams, so drawing never changes the caller's matplotlib state.
"""
from __future__ import annotations

import os
from pathlib import Path

from ...spaces.errors import RoutespaceError

FIGURE_FORMATS = ("png", "svg", "pdf")
FONT = 10  # pt; at 100 dpi this is legible at 100 % zoom
SMALL = 8.5
DPI = 100


def new_figure(width: float, height: float, dpi: int = DPI):
    """A Figure (inches) with an Agg canvas attached; never registered with pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_format(path: str | os.PathLike) -> str:
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise RoutespaceError(f"cannot tell the figure format of {path}: end the file name in .png, .svg or .pdf")
    return fmt


def save_figure(fig, path: str | os.PathLike, dpi: int | None = None) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) through a temp file and rename."""
    from ...spaces.exports.formats import check_output_path
    from ...spaces.fileio import atomic_path

    fmt = figure_format(path)
    path = check_output_path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(str(tmp), format=fmt, dpi=dpi or fig.dpi, metadata=_metadata(fmt), bbox_inches="tight", pad_inches=0.08)
    except OSError as exc:
        raise RoutespaceError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _metadata(fmt: str) -> dict:
    # fixed metadata so the same figure gives the same file (no creation date)
    if fmt == "svg":
        return {"Date": None}
    if fmt == "pdf":
        return {"CreationDate": None, "ModDate": None}
    return {"Software": "routespace"}
