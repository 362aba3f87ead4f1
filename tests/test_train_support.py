"""Shared helpers of the training tests (no tests here): a micro space, a fast seeded data set, and a
worker script for the subprocess / torchrun tests."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from routespace.spaces.architecture import Architecture
from routespace.spaces.builder import build
from routespace.spaces.space import RoutingSpace

MICRO = RoutingSpace(layers=2, base_channels=4, num_classes=3, input_size=(32, 32), name="micro")
REPO = Path(__file__).resolve().parents[1]


class NoiseSegmentation(torch.utils.data.Dataset):
    """Seeded images whose labels are a fixed function of the pixels (learnable), with an ignored border."""

    num_classes = 3

    def __init__(self, n: int = 32, size: int = 32, delay: float = 0.0) -> None:
        self.n, self.size, self.delay = n, size, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        gen = torch.Generator().manual_seed(1000 + i)
        x = torch.randn(3, self.size, self.size, generator=gen)
        y = (x[0] > 0).long() + (x[1] > 0.5).long()
        y[0, :] = 255
        if self.delay:
            import time

            time.sleep(self.delay)
        return x, y


def micro_net(seed: int = 0):
    torch.manual_seed(seed)
    return build(Architecture.from_path(MICRO, [1, 1]))


def param_digest(model: torch.nn.Module, buffers: bool = True) -> str:
    """sha256 over the parameters (and, by default, the buffers such as BN statistics)."""
    h = hashlib.sha256()
    items = model.state_dict().items() if buffers else model.named_parameters()
    for name, t in sorted(items):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes (to check that a failed command touched nothing)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


# Run as a script: python WORKER '{"out": ..., "steps": ..., ...}'. Exit 2 with one line on a RoutespaceError.
WORKER = r'''
import json, os, sys
import torch
torch.set_num_threads(1)
from test_train_support import NoiseSegmentation, micro_net, param_digest
from routespace.evaluators.train import TrainConfig, fit
from routespace.spaces.errors import RoutespaceError

args = json.loads(sys.argv[1])
from test_train_support import worker_config
net = micro_net(args.get("init_seed", 0))
data = NoiseSegmentation(args.get("images", 32), delay=args.get("delay", 0.0))
cfg = worker_config(args)
try:
    fit(net, data, cfg, out_dir=args.get("out"), resume=args.get("resume", False), progress=False)
except RoutespaceError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
if args.get("digest"):
    rank = os.environ.get("RANK", "0")
    with open(f"{args['digest']}.{rank}", "w") as fh:
        fh.write(param_digest(net, buffers=False))
'''


def worker_config(args: dict):
    """The TrainConfig of the worker script (also used in-process for reference runs)."""
    from routespace.evaluators.train import TrainConfig

    return TrainConfig(steps=args["steps"], batch_size=args.get("batch_size", 4), lr=0.05,
                       checkpoint_every=args.get("checkpoint_every", 0), keep_checkpoints=0, seed=3)


def write_worker(folder: Path) -> Path:
    path = folder / "train_worker.py"
    path.write_text(WORKER)
    return path


PYTHON = sys.executable
