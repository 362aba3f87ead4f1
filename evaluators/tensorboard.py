"""TensorBoard event files of a run (``RUN/tb/``), written with torch's SummaryWriter when tensorboard is
installed (``pip install -e '.[tensorboard]'``); without it, one note on stderr and nothing is written.

``open_writer(RUN)`` gives a :class:`Writer` with ``scalar(tag, value, step)``, ``histogram(tag, values,
step)``, ``image(tag, chw, step)``, ``flush()`` and ``close()`` (also a context manager). Nothing is
imported or created until the first value is written: torch.utils.tensorboard is imported then, and the
event file is made. Event files are append-only logs (each record framed and checksummed), not
rewritten, so they are not written through a temp file: a crash leaves every record written so far
readable. View them with ``tensorboard --logdir RUN/tb`` (or a folder above several runs).

:func:`log_evaluation` writes the figures of an ``evaluators.evaluate.evaluate`` result.
"""
from __future__ import annotations

import importlib.util
import math
import operator
import sys
from pathlib import Path
from typing import Any, Mapping

TB_DIR = "tb"
INSTALL_HINT = "pip install -e '.[tensorboard]'"

_noted: set[str] = set()


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (which torch.utils.tensorboard needs) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def note_once(key: str, text: str) -> None:
    """Print ``routespace: note: TEXT`` on stderr, once per process for each ``key``."""
    if key not in _noted:
        _noted.add(key)
        print(f"routespace: note: {text}", file=sys.stderr)


class Writer:
    """The writer API; this base class writes nothing (no tensorboard, ``--no-tensorboard``)."""

    enabled = False
    logdir: Path | None = None

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One scalar (a float, or a one-element tensor / array) at ``step``."""

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        """``scalar(prefix + key, value, step)`` for each entry (None values are left out)."""
        for key, value in values.items():
            if value is not None:
                self.scalar(prefix + key, value, step)

    def histogram(self, tag: str, values: Any, step: int) -> None:
        """A histogram of ``values`` (sequence, array or tensor; non-finite values left out)."""

    def image(self, tag: str, chw: Any, step: int) -> None:
        """An image, (C, H, W) with C in 1, 3, 4: uint8 0-255 or float 0-1 (array or tensor)."""

    def flush(self) -> None:
        """Push what was written to disk."""

    def close(self) -> None:
        """Flush and close the event file (a later write opens a new one)."""

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorBoardWriter(Writer):
    """Writes into ``logdir`` with ``torch.utils.tensorboard.SummaryWriter``, created at the first write.

    ``purge_step`` (a resumed run: the step it resumes from) makes TensorBoard drop the events at and after
    that step from earlier files, so the steps a killed run logged past its last checkpoint are not doubled."""

    enabled = True

    def __init__(self, logdir: str | Path, filename_suffix: str = "", purge_step: int | None = None) -> None:
        self.logdir = Path(logdir)
        self.filename_suffix = filename_suffix
        self.purge_step = None if purge_step is None else _as_step(purge_step)
        self._summary: Any = None
        self._failed = False

    def _writer(self):
        """The SummaryWriter, made at the first call; None (after one note) if it cannot be made, so a
        training does not die of its logs."""
        if self._summary is None and not self._failed:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._summary = SummaryWriter(log_dir=str(self.logdir), filename_suffix=self.filename_suffix,
                                              purge_step=self.purge_step)
            except (ImportError, OSError) as exc:
                self._failed = True
                note_once(f"tensorboard-failed:{self.logdir}",
                          f"no TensorBoard events in {self.logdir}: {type(exc).__name__}: {str(exc)[:200]}")
        return self._summary

    def scalar(self, tag: str, value: float, step: int) -> None:
        value, step = _as_float(value, tag), _as_step(step)
        if self._writer() is not None:
            self._summary.add_scalar(tag, value, global_step=step)

    def histogram(self, tag: str, values: Any, step: int) -> None:
        import numpy as np

        data = _as_numpy(values).astype(np.float64).ravel()
        data = data[np.isfinite(data)]
        step = _as_step(step)
        if data.size and self._writer() is not None:  # an empty histogram is not representable: left out
            self._summary.add_histogram(tag, data, global_step=step)

    def image(self, tag: str, chw: Any, step: int) -> None:
        import numpy as np

        data = _as_numpy(chw)
        if data.ndim != 3 or data.shape[0] not in (1, 3, 4) or 0 in data.shape:
            raise ValueError(f"image {tag!r}: expected (C, H, W) with C in 1, 3, 4, got shape {tuple(data.shape)}")
        if data.shape[0] == 1:
            data = np.repeat(data, 3, axis=0)
        if data.dtype != np.uint8:
            data = (np.clip(data.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        step = _as_step(step)
        if self._writer() is not None:
            self._summary.add_image(tag, data, global_step=step, dataformats="CHW")

    def flush(self) -> None:
        if self._summary is not None:
            self._summary.flush()

    def close(self) -> None:
        if self._summary is not None:
            self._summary.close()
            self._summary = None


def open_writer(run_dir: str | Path, enabled: bool = True, *, subdir: str = TB_DIR, filename_suffix: str = "",
                purge_step: int | None = None) -> Writer:
    """The writer for ``run_dir/subdir``: a :class:`TensorBoardWriter`, or the no-op :class:`Writer` when
    ``enabled`` is False or tensorboard is not installed (then a one-line note, once per process).
    ``purge_step``: see :class:`TensorBoardWriter` (pass the resumed-from step when resuming)."""
    if not enabled:
        return Writer()
    if not tensorboard_available():
        note_once("tensorboard-missing", f"tensorboard is not installed, so no TensorBoard events are written "
                  f"({INSTALL_HINT}, or --no-tensorboard to silence this)")
        return Writer()
    return TensorBoardWriter(Path(run_dir) / subdir, filename_suffix=filename_suffix, purge_step=purge_step)


# --- what evaluation logs ------------------------------------------------------------------------------
EVAL_SCALARS = ("miou", "pixel_accuracy", "gflops", "params_m", "gflops_mean", "gflops_min", "gflops_max",
                "body_gflops_mean", "gflops_all_open", "gate_entropy_mean", "edges_varying_fraction", "latency_ms",
                "latency_ms_all_open")


def log_evaluation(writer: Writer, result: Mapping[str, Any], step: int, prefix: str = "eval/") -> None:
    """The figures of an ``evaluate`` result: ``eval/miou`` and the other scalars present, the per-class
    IoU as ``eval/iou/CLASS``, and for dynamic nets the histogram ``eval/per_image_gflops``."""
    writer.scalars({k: result[k] for k in EVAL_SCALARS if _is_number(result.get(k))}, step, prefix)
    iou = result.get("iou") or {}
    for name, value in (iou.items() if isinstance(iou, Mapping) else enumerate(iou)):
        if _is_number(value):  # None / NaN: the class is absent from the data
            writer.scalar(f"{prefix}iou/{name}", value, step)
    if result.get("per_image_gflops"):
        writer.histogram(f"{prefix}per_image_gflops", result["per_image_gflops"], step)


# --- what training logs --------------------------------------------------------------------------------
# A step record's key -> its tag; other numeric keys go to train/KEY, "gate_open/..." keys as they are.
TRAIN_TAGS = {
    "loss": "train/loss", "ce": "train/ce", "extra": "train/extra", "budget_loss": "train/budget_loss",
    "lr": "train/lr", "realised_gflops": "train/realised_gflops", "body_ratio": "budget/realised_ratio",
    "expected_body_ratio": "budget/expected_ratio", "lambda": "budget/lambda", "budget_weight": "budget/weight",
}


def log_train_step(writer: Writer, record: Mapping[str, Any], step: int, budget_target: float | None = None) -> None:
    """One training step's record (``loss``, ``ce``, ``lr``, the budget loss's ``body_ratio``, ``lambda``,
    ...; see TRAIN_TAGS) at ``step``, and ``budget/target`` (mu) when given; ``step`` itself is not logged."""
    for key, value in record.items():
        if key != "step" and _is_number(value):
            writer.scalar(TRAIN_TAGS.get(key, key if key.startswith("gate_open/") else f"train/{key}"), value, step)
    if budget_target is not None:
        writer.scalar("budget/target", budget_target, step)


def gate_open_rates(edge_gates: Mapping[Any, Any]) -> dict[str, float]:
    """Per scale, the fraction of (edge gate, image) pairs that are open (> 0), over the gates of the
    nodes at that scale (``edge_gates``: a dynamic net's {(layer, src, dst) or ("out", layer, scale):
    per-image gate values}); keys ``gate_open/stride4`` ... ``gate_open/stride32``, for the step record."""
    import numpy as np

    opened: dict[int, float] = {}
    counted: dict[int, int] = {}
    for key, gates in edge_gates.items():
        scale = int(key[2] if key[0] == "out" else key[1])
        values = _as_numpy(gates).ravel()
        opened[scale] = opened.get(scale, 0.0) + float(np.count_nonzero(values > 0))
        counted[scale] = counted.get(scale, 0) + values.size
    return {f"gate_open/stride{4 * 2 ** s}": opened[s] / counted[s] for s in sorted(counted) if counted[s]}


def figure_to_chw(fig) -> Any:
    """A matplotlib Figure rendered to a (3, H, W) uint8 array (for :meth:`Writer.image`); closes it."""
    import matplotlib.pyplot as plt
    import numpy as np

    try:
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())
        return np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1))
    finally:
        plt.close(fig)


# --- helpers ---------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _as_numpy(values: Any):
    import numpy as np

    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _as_float(value: Any, tag: str) -> float:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        raise ValueError(f"scalar {tag!r}: {value!r} is not a number") from None


def _as_step(step: Any) -> int:
    try:
        value = operator.index(step)  # ints, numpy integers; not floats
    except TypeError:
        value = -1
    if isinstance(step, bool) or value < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    return value
