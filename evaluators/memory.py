"""Peak training memory, estimated analytically before a training or search starts, so a run that
cannot fit is refused at once (with the estimate and a suggestion) instead of dying hours in.

The estimate, in bytes, for one process::

    params * 4 * (1 weights + 1 grads + k optimizer state)      k = 2 for AdamW, 1 for SGD (momentum)
  + batch * 4 * SAFETY_FACTOR * (activation elements per image)
  + batch * (input image float32 + label int64)

Activation elements per image are what autograd keeps for backward: the output of every op of the
layout records (``routespace.spaces.layout``: stem, cells, edges, gates, decoder) of the net being
trained, plus the tensors the layout does not list: each node's sum of inputs and residual sum, the
gated copy of every edge (dynamic nets), the decoder's additions and the loss's log-softmax.
``SAFETY_FACTOR`` covers what remains (gradient buffers alive at the start of backward, autograd and
allocator overheads, GPU workspaces). Calibration (CPU, torch 2.13, one AdamW step in a fresh process,
growth of peak RSS over the RSS before the net was built, tiny preset at 128x128, batch 2-8): the estimate
is 1.55-1.66x the growth when glibc unmaps large blocks on free (``MALLOC_MMAP_THRESHOLD_`` fixed, RSS =
live tensors) and 1.4-1.5x with glibc's defaults, for the dynamic net and a static U-Net alike, and it
grows with the batch at the measured rate; so it errs on the safe side. ``tests/test_memory.py`` rechecks it.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

from ..spaces.architecture import Architecture
from ..spaces.errors import RoutespaceError
from ..spaces.layout import (
    Conv,
    Op,
    Pool,
    cell_ops,
    decoder_ops,
    edge_ops,
    feature_size,
    gate_ops,
    gate_outputs,
    out_ops,
    stem_ops,
)
from ..spaces.celltypes import cell_type
from ..spaces.space import RoutingSpace, check_input_size

FLOAT_BYTES = 4
SAFETY_FACTOR = 1.25
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 1}


def _elements(ops: Iterable[Op]) -> int:
    """Output elements per image of a list of op records."""
    total = 0
    for op in ops:
        if isinstance(op, Pool):  # global pooling: (C, 1, 1); its record's sizes are the input's
            total += op.c
        elif isinstance(op, Conv):
            total += op.cout * op.h * op.w
        else:  # BN, ReLU, Upsample: sizes are the output's
            total += op.c * op.h * op.w
    return total


def _net_of(space_or_arch: RoutingSpace | Architecture, dynamic: bool) -> tuple[RoutingSpace, Architecture]:
    if isinstance(space_or_arch, Architecture):
        return space_or_arch.space, (Architecture.all_open(space_or_arch.space) if dynamic else space_or_arch)
    if isinstance(space_or_arch, RoutingSpace):
        return space_or_arch, Architecture.all_open(space_or_arch)
    raise RoutespaceError(f"memory estimate needs a RoutingSpace or an Architecture, got {type(space_or_arch).__name__}")


def activation_elements(space_or_arch: RoutingSpace | Architecture, size: tuple[int, int], dynamic: bool) -> int:
    """Float elements per image saved for backward by one training step (before the safety factor).

    A dynamic net runs every node and edge of its space (the dense masked forward) plus a gate per node;
    a static net only its architecture's; a space given with ``dynamic=False`` means its all-open net."""
    space, arch = _net_of(space_or_arch, dynamic)
    size = check_input_size(tuple(size))
    total = _elements(stem_ops(space, size))
    for node in arch.nodes:
        layer, scale = node
        h, w = feature_size(size, scale)
        here = space.channels(scale) * h * w
        passthrough = not dynamic and cell_type(arch.cell_of(node)).runs_nothing
        fan_in = len(arch.in_edges(node))
        total += here * max(0, fan_in - 1)  # the input sum
        if not passthrough:
            total += _elements(cell_ops(arch.cell_of(node), space.channels(scale), h, w)) + here  # + residual sum
        for edge in arch.out_edges(node):
            total += _elements(edge_ops(space, edge, size, passthrough))
            if dynamic:  # edge tensor x gate (and the pass-through added onto the keep edge)
                dh, dw = feature_size(size, edge[2])
                total += space.channels(edge[2]) * dh * dw * (2 if edge[1] == edge[2] else 1)
        if layer == space.layers:
            total += _elements(out_ops(space, scale, size, passthrough))
        if dynamic:
            total += _elements(gate_ops(space.channels(scale), gate_outputs(space, node), h, w))
            if layer == space.layers:
                total += 2 * here  # the gated output to the decoder, plus the pass-through
    top = max(arch.output_scales()) if not dynamic else space.scales - 1
    total += _elements(decoder_ops(space, [top], size))
    for s in range(top):  # decoder additions at the finer scales
        h, w = feature_size(size, s)
        total += space.channels(s) * h * w
    total += space.num_classes * size[0] * size[1]  # log-softmax of the loss
    return total


def parameter_count(space_or_arch: RoutingSpace | Architecture, dynamic: bool) -> int:
    """Trainable parameters of the net (from the layout records, as the cost model counts them)."""
    from .cost import architecture_cost

    _, arch = _net_of(space_or_arch, dynamic)
    return architecture_cost(arch, arch.space.input_size, gates=dynamic).params


def estimate_training_memory(
    space_or_arch: RoutingSpace | Architecture,
    batch_size: int,
    size: tuple[int, int],
    dynamic: bool,
    optimizer: str = "adamw",
) -> int:
    """Estimated peak bytes of training with batch ``batch_size`` (per process) at crop ``size`` (H, W).

    ``dynamic=True``: the dynamic-routing supernet of the space (of the architecture's space if an
    Architecture is given); else the static net of the Architecture (or a space's all-open net)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RoutespaceError(f"batch size must be a positive integer, got {batch_size!r}")
    if optimizer not in OPTIMIZER_STATES:
        raise RoutespaceError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZER_STATES)}")
    size = check_input_size(tuple(size))
    params = parameter_count(space_or_arch, dynamic)
    fixed = params * FLOAT_BYTES * (2 + OPTIMIZER_STATES[optimizer])
    per_image = activation_elements(space_or_arch, size, dynamic) * FLOAT_BYTES * SAFETY_FACTOR
    per_image += size[0] * size[1] * (3 * FLOAT_BYTES + 8)  # the input image and its int64 labels
    return int(fixed + batch_size * per_image)


# --- what this machine has ------------------------------------------------------------------------------
def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup (v2 or v1) memory limit, if one is set."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as fh:
                raw = fh.read().strip()
            if raw == "max" or int(raw) >= 2**60:
                return None
            with open(usage_file) as fh:
                return max(0, int(raw) - int(fh.read().strip()))
        except (OSError, ValueError):
            continue
    return None


def available_memory(device: str | object = "cpu") -> int:
    """Bytes a new allocation can use: free CUDA memory for a CUDA device, else the host's available
    memory (``MemAvailable``, or psutil), capped by a cgroup limit when there is one."""
    dev = str(device)
    if dev.startswith("cuda") or dev == "auto":
        import torch

        if torch.cuda.is_available():
            index = int(dev.split(":")[1]) if ":" in dev else torch.cuda.current_device()
            free, _ = torch.cuda.mem_get_info(index)
            return int(free)
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if not found:
        try:
            import psutil

            found = [int(psutil.virtual_memory().available)]
        except ImportError:  # no way to tell: do not refuse anything
            return 2**63 - 1
    return min(found)


def format_bytes(n: int | float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


DEFAULT_ADVICE = "lower --batch-size or --size, or use --preset tiny"


def check_fits(estimate: int, available: int, what: str, where: str = "machine", advice: str = DEFAULT_ADVICE) -> None:
    """Raise a one-line :class:`RoutespaceError` when ``estimate`` bytes exceed ``available``."""
    if estimate > available:
        raise RoutespaceError(
            f"{what} needs about {format_bytes(estimate)} at peak (estimate) but only {format_bytes(available)} "
            f"is available on this {where}: {advice} (ROUTESPACE_SKIP_MEMORY_CHECK=1 skips this check)"
        )


def check_training_memory(
    space_or_arch: RoutingSpace | Architecture,
    batch_size: int,
    size: tuple[int, int],
    dynamic: bool,
    optimizer: str = "adamw",
    device: str = "cpu",
    what: str = "training",
    processes: int = 1,
    advice: str = DEFAULT_ADVICE,
) -> int:
    """Estimate, compare with what ``device`` has, refuse what will not fit; returns the estimate.

    ``processes``: how many such trainings share the device at once (search workers, torchrun processes
    on one CPU host); ``advice``: what the user can change, in the command's own flags.
    ``ROUTESPACE_SKIP_MEMORY_CHECK=1`` in the environment skips the refusal."""
    estimate = estimate_training_memory(space_or_arch, batch_size, size, dynamic, optimizer) * max(1, int(processes))
    if os.environ.get("ROUTESPACE_SKIP_MEMORY_CHECK") != "1":
        check_fits(estimate, available_memory(device), what, "GPU" if str(device).startswith("cuda") else "machine", advice)
    return estimate
