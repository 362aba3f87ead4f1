"""Training checkpoints: written atomically, loadable with ``torch.load(..., weights_only=True)``.

A checkpoint is a plain dict of tensors and plain containers::

    {"format": "routespace-checkpoint", "version": 1, "step": int, "total_steps": int,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict,
     "rng": {"torch": uint8 tensor, "cuda": [uint8 tensors], "numpy": {...}, "python": {...}},
     "sampler": {"seed": int, "position": int, "world_size": int, ...}, "config": dict, "meta": dict}

RNG states are stored as tensors (numpy's and Python's state turned into int64 tensors), so nothing
needs unpickling beyond what ``weights_only`` allows.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from routespace.spaces.errors import RoutespaceError
from routespace.spaces.fileio import atomic_path

FORMAT = "routespace-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("step", "model", "optimizer", "scheduler", "rng", "sampler", "config")


# --- RNG states ------------------------------------------------------------------------------------
def capture_rng() -> dict:
    """The torch, CUDA, numpy and Python global RNG states, as tensors and plain values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }


def restore_rng(state: dict) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only where this machine has as many devices)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))


# --- files -----------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format tag) atomically to ``path``.

    A write that fails (a full disk, a quota, a vanished folder) leaves every existing checkpoint as it was,
    removes its temporary file and raises a one-line :class:`RoutespaceError`. The data goes through a
    Python file object: given a path, torch reports a full disk as an opaque ``RuntimeError``
    ("unexpected pos ..."); through a file object it is the ``OSError`` itself.
    """
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(payload, fh)
    except OSError as exc:
        raise RoutespaceError(
            f"cannot write checkpoint {path}: {exc.strerror or exc}; the checkpoints written before are intact: "
            "free some space, then resume the run (--resume)"
        ) from None
    return path


class UnsafeCheckpointError(RoutespaceError):
    """A checkpoint that pickles Python objects other than tensors and plain containers (possibly code)."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a routespace checkpoint; a missing, corrupt or foreign file raises :class:`RoutespaceError`."""
    path = Path(path)
    if not path.is_file():
        raise RoutespaceError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: a second stderr line
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle of foreign objects, not a torch file at all
        if str(exc).startswith("Weights only load failed"):  # it pickles callables/classes: possibly code
            raise UnsafeCheckpointError(
                f"checkpoint {path} is corrupt or not a routespace checkpoint: it pickles Python objects other than "
                f"tensors and plain containers ({_blocked_global(str(exc))}), which could run code when loaded, so it "
                "was refused; delete it to resume from an earlier checkpoint, or start a new run"
            ) from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RoutespaceError(
            f"checkpoint {path} is corrupt or not a routespace checkpoint ({reason[:120]}): "
            f"delete it to resume from an earlier checkpoint, or start a new run"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RoutespaceError(
            f"{path} is not a routespace checkpoint (no '{FORMAT}' tag): "
            f"delete it to resume from an earlier checkpoint, or start a new run"
        )
    if state.get("version") != VERSION:
        raise RoutespaceError(f"checkpoint {path} has format version {state.get('version')!r}; this routespace reads {VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise RoutespaceError(f"checkpoint {path} lacks {', '.join(missing)}: it is incomplete; delete it to resume from an earlier one")
    return state


def load_newest_intact(paths: Sequence[str | Path], note: Callable[[str], None] | None = None,
                       map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest of ``paths`` (given oldest first) that loads, as ``(path, state)``; None for no paths.

    A newer checkpoint that is damaged (truncated or overwritten by a copy, a disk, a crash of something
    other than routespace, whose own writes are atomic) is passed over with a note through ``note`` (default:
    a line on stderr) naming it and the one used instead. A checkpoint that pickles code is refused, never
    passed over: someone put it there. When none loads, the newest one's error is raised.
    """
    import sys

    first_error: RoutespaceError | None = None
    damaged: list[str] = []
    for path in reversed([Path(p) for p in paths]):
        try:
            state = load_checkpoint(path, map_location)
        except UnsafeCheckpointError:
            raise
        except RoutespaceError as exc:
            first_error = first_error or exc
            damaged.append(str(path))
            continue
        if damaged:
            say = note or (lambda text: print(text, file=sys.stderr))
            say(f"note: checkpoint {', '.join(damaged)} is damaged (truncated or not a checkpoint) and was passed over; "
                f"resuming from {path} (step {state['step']})")
        return path, state
    if first_error is not None:
        raise first_error
    return None


def _blocked_global(message: str) -> str:
    """The 'GLOBAL module.name' torch's weights-only unpickler stopped at, from its message."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)", message)
    return f"e.g. {found.group(1)}" if found else "data the safe loader does not accept"


def load_model_state(model: torch.nn.Module, state_dict: dict, source: str | Path) -> None:
    """``model.load_state_dict`` with a one-line :class:`RoutespaceError` when the weights do not fit."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:200]
        raise RoutespaceError(f"checkpoint {source} was made for a different model ({detail})") from None
