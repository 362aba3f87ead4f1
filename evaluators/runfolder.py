"""A training run's folder: ``manifest.json``, ``history.json`` and ``checkpoints/``.

::

    RUN/manifest.json                  what ran: command, versions, seed, config, kind, spec, status
    RUN/history.json                   per-step loss / lr (rewritten at each checkpoint)
    RUN/checkpoints/step-00000050.pt   periodic checkpoints
    RUN/checkpoints/final.pt           the last step's checkpoint (what ``routespace evaluate`` loads)

Every file is written atomically (``spaces.fileio``). ``status`` is ``running``, ``done`` or
``interrupted``.
"""
from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path
from typing import Any

from routespace.spaces.errors import RoutespaceError
from routespace.spaces.fileio import write_json_atomic

MANIFEST = "manifest.json"
HISTORY = "history.json"
CHECKPOINTS = "checkpoints"
FINAL = "final.pt"
RUN_FORMAT = "routespace-run"
_STEP_FILE = re.compile(r"^step-(\d{8})\.pt$")

# Config fields that may change between a run and its resumption (they do not change the result).
RESUME_FREE = frozenset({"num_workers", "device", "checkpoint_every", "keep_checkpoints", "log_every"})


def versions() -> dict[str, str]:
    import torch

    try:
        from importlib.metadata import version

        rs = version("routespace")
    except Exception:  # not installed (running from a source tree)
        rs = "unknown"
    return {"torch": torch.__version__, "routespace": rs, "python": platform.python_version()}


def checkpoint_dir(run: str | Path) -> Path:
    return Path(run) / CHECKPOINTS


def step_checkpoint_path(run: str | Path, step: int) -> Path:
    return checkpoint_dir(run) / f"step-{step:08d}.pt"


def final_checkpoint_path(run: str | Path) -> Path:
    return checkpoint_dir(run) / FINAL


def step_checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """Periodic checkpoints of a run as (step, path), oldest first."""
    folder = checkpoint_dir(run)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def latest_checkpoint(run: str | Path) -> Path | None:
    """The final checkpoint if there is one, else the periodic one with the highest step, else None."""
    final = final_checkpoint_path(run)
    if final.is_file():
        return final
    steps = step_checkpoints(run)
    return steps[-1][1] if steps else None


def read_manifest(run: str | Path) -> dict | None:
    """The run's manifest, or None when the folder has none; a broken one raises RoutespaceError."""
    path = Path(run) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RoutespaceError(f"{path} is not valid JSON ({exc}): this is not a readable routespace run folder") from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise RoutespaceError(f"{path} is not a routespace run manifest (no format '{RUN_FORMAT}')")
    return data


def write_manifest(run: str | Path, manifest: dict) -> None:
    manifest = dict(manifest, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json_atomic(Path(run) / MANIFEST, manifest)


def new_manifest(
    *, command: str, seed: int, config: dict, kind: str, spec: Any, extra: dict, world_size: int
) -> dict:
    return {
        "format": RUN_FORMAT,
        "version": 1,
        "command": command,
        "versions": versions(),
        "seed": seed,
        "config": config,
        "kind": kind,
        "spec": spec,
        "extra": extra,
        "world_size": world_size,
        "status": "running",
        "step": 0,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def run_differences(old: dict, new: dict) -> list[str]:
    """Settings that differ between a run (manifest-shaped dict) and a resumption, as 'key=old (now new)'."""
    old, new = plain(old), plain(new)
    diffs = []
    old_cfg, new_cfg = old.get("config") or {}, new.get("config") or {}
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if key not in RESUME_FREE and old_cfg.get(key) != new_cfg.get(key):
            diffs.append(f"{key}={_short(old_cfg.get(key))} (now {_short(new_cfg.get(key))})")
    for key in ("kind", "spec", "extra", "world_size"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key}={_short(old.get(key))} (now {_short(new.get(key))})")
    return diffs


def describe_differences(diffs: list[str]) -> str:
    return "; ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")


def check_same_run(manifest: dict, new: dict, run: str | Path) -> None:
    """Raise RoutespaceError naming the settings that differ between a run and its resumption."""
    diffs = run_differences(manifest, new)
    if diffs:
        raise RoutespaceError(
            f"cannot resume {run}: it was started with {describe_differences(diffs)}: "
            "resume with the same settings, or start a new run folder"
        )
