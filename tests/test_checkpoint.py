"""Checkpoint files: RNG round trip, weights_only loading, one-line errors for corrupt or foreign files."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from routespace.evaluators.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from routespace.spaces.errors import RoutespaceError


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(1).tolist(), [random.random() for _ in range(3)], random.gauss(0, 1)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    random.gauss(0, 1)  # and in Python's
    path = save_checkpoint(tmp_path / "c.pt", {"rng": capture_rng(), "step": 0})
    expected = _draws()
    _draws()  # move every generator on
    state = torch.load(path, weights_only=True)
    restore_rng(state["rng"])
    assert _draws() == expected


def test_save_is_atomic_and_tagged(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 5, "model": {"w": torch.arange(3)}, "optimizer": {}, "scheduler": {},
                           "rng": capture_rng(), "sampler": {}, "config": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temp file left behind
    state = load_checkpoint(path)
    assert state["format"] == "routespace-checkpoint" and state["step"] == 5
    assert torch.equal(state["model"]["w"], torch.arange(3))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "corrupt or not a routespace checkpoint"),
        (b"PK\x03\x04 truncated zip", "corrupt or not a routespace checkpoint"),
        ("module", "corrupt or not a routespace checkpoint"),
        ("dict", "not a routespace checkpoint"),
        ("incomplete", "lacks"),
    ],
)
def test_bad_files_raise_one_line(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content == "module":
        torch.save(torch.nn.Linear(1, 1), path)
    elif content == "dict":
        torch.save({"model": {}}, path)
    elif content == "incomplete":
        torch.save({"format": "routespace-checkpoint", "version": 1, "step": 3}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(RoutespaceError, match=message) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    with pytest.raises(RoutespaceError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
