"""Peak-memory estimate (evaluators/memory.py) against the measured peak RSS of one training step, and the
refusal of what cannot fit."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from routespace.evaluators import memory
from routespace.evaluators.memory import (
    SAFETY_FACTOR,
    activation_elements,
    available_memory,
    check_fits,
    check_training_memory,
    estimate_training_memory,
    format_bytes,
    parameter_count,
)
from routespace.spaces.architecture import Architecture
from routespace.spaces.builder import build
from routespace.spaces.classics import classic
from routespace.spaces.errors import RoutespaceError
from routespace.spaces.space import RoutingSpace, preset
from routespace.spaces.supernet import DynamicNet

SIZE = (128, 128)

# One AdamW training step in a fresh process. The baseline RSS is taken after a warm-up step of a micro net
# (so one-off library set-up is not counted) and before the measured net is built, where the peak mark is
# reset (/proc/self/clear_refs); the peak is then VmHWM, less the growth of file-backed (library) pages.
MEASURE = r'''
import json, resource, sys
import torch
torch.set_num_threads(1)
import torch.nn.functional as F
from routespace.spaces.architecture import Architecture
from routespace.spaces.builder import build
from routespace.spaces.classics import classic
from routespace.spaces.space import RoutingSpace, preset
from routespace.spaces.supernet import DynamicNet
from routespace.evaluators.train import logits_of

kind, batch, h, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def status(field):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(field + ":"))
micro = RoutingSpace(layers=2, base_channels=4, num_classes=3, input_size=(64, 64))
for net in (DynamicNet(micro), build(Architecture.from_path(micro, [1, 1]))):
    opt = torch.optim.AdamW(net.parameters())
    F.cross_entropy(logits_of(net(torch.randn(2, 3, 64, 64))), torch.zeros(2, 64, 64, dtype=torch.long)).backward()
    opt.step()
    del net, opt
torch.manual_seed(0)
with open("/proc/self/clear_refs", "w") as fh:  # reset the peak-RSS mark (imports, warm-up)
    fh.write("5")
base, base_file = status("VmRSS"), status("RssFile")
space = preset("tiny")
model = DynamicNet(space) if kind == "dynamic" else build(classic(kind, space))
opt = torch.optim.AdamW(model.parameters())
x = torch.randn(batch, 3, h, w)
y = torch.randint(0, space.num_classes, (batch, h, w))
F.cross_entropy(logits_of(model(x)), y).backward()
opt.step()
peak = status("VmHWM")
# VmHWM, not ru_maxrss: Linux keeps in ru_maxrss the high-water mark of the image before exec, which for a
# child of a large test process is the parent's RSS at fork (seen: +25 MB, more than a whole step).
# Library pages mapped during the step count in RSS too, and how many depends on the page cache (the
# kernel maps cached neighbours of a touched page); they stay mapped, so their growth is taken off.
print(json.dumps({"growth": peak - base - (status("RssFile") - base_file),
                  "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base}))
'''


def _measure_all(jobs: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """Peak-RSS growth of each (kind, batch), two fresh processes at a time."""
    # a fixed mmap threshold: large tensors are mapped and unmapped on free, so RSS follows live memory
    # instead of what glibc's heap happens to keep from the warm-up (which moved results by ~20 MB)
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072")
    out = {}
    for i in range(0, len(jobs), 2):
        procs = {job: subprocess.Popen([sys.executable, "-c", MEASURE, job[0], str(job[1]), str(SIZE[0]), str(SIZE[1])],
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for job in jobs[i:i + 2]}
        for job, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, stderr[-2000:]
            out[job] = json.loads(stdout.strip().splitlines()[-1])["growth"]
    return out


def _target(kind: str):
    space = preset("tiny")
    return space if kind == "dynamic" else classic(kind, space)


def test_estimate_within_2x_of_measured_peak_and_linear_in_batch():
    jobs = [("dynamic", 2), ("dynamic", 8), ("unet", 2), ("unet", 8)]
    measured = _measure_all(jobs)
    for kind in ("dynamic", "unet"):
        est = {b: estimate_training_memory(_target(kind), b, SIZE, dynamic=kind == "dynamic", optimizer="adamw") for b in (2, 8)}
        for b in (2, 8):
            ratio = est[b] / measured[(kind, b)]
            print(f"{kind} batch {b}: estimate {format_bytes(est[b])}, measured {format_bytes(measured[(kind, b)])}, ratio {ratio:.2f}")
            # within 2x, and not below the measurement by more than 10 % (an underestimate lets a run die)
            assert 0.9 <= ratio <= 2.0, (kind, b, est[b], measured[(kind, b)])
        # the estimate's per-image slope matches the measured one within 2x
        slope_est = (est[8] - est[2]) / 6
        slope_meas = (measured[(kind, 8)] - measured[(kind, 2)]) / 6
        assert slope_meas > 0 and 0.5 <= slope_est / slope_meas <= 2.0, (kind, slope_est, slope_meas)


def test_estimate_is_linear_in_batch_and_grows_with_size():
    space = preset("tiny")
    for target, dyn in ((space, True), (classic("hrnetv2", space), False)):
        e = [estimate_training_memory(target, b, SIZE, dyn) for b in (1, 2, 3, 5)]
        per = e[1] - e[0]
        assert per > 0
        assert abs((e[2] - e[1]) - per) <= 1 and abs((e[3] - e[0]) - 4 * per) <= 4
        ratio = activation_elements(target, (256, 256), dyn) / activation_elements(target, SIZE, dyn)
        assert 3.9 < ratio <= 4.0  # every feature map has 4x the pixels (the gates' pooled outputs do not grow)
    # the dynamic net holds more than any static net of its space
    assert estimate_training_memory(space, 4, SIZE, True) > estimate_training_memory(Architecture.all_open(space), 4, SIZE, False)


def test_parameter_count_and_activation_elements_match_the_modules():
    space = preset("tiny")
    assert parameter_count(space, True) == sum(p.numel() for p in DynamicNet(space).parameters())
    arch = classic("unet", space)
    assert parameter_count(arch, False) == sum(p.numel() for p in build(arch).parameters())
    # known answer: a 1-layer keep path on a 64x64 input, C=4, 2 classes, sepconv cells
    tiny = RoutingSpace(layers=1, base_channels=4, num_classes=2, input_size=(64, 64))
    one = Architecture.from_path(tiny, [0])
    stem = 3 * 4 * 32 * 32 + 4 * 4 * 32 * 32 + 4 * 4 * 16 * 16  # conv/BN/ReLU at stride 2 (x3, x4 with dw+pw) and stride 4
    cells = 2 * 7 * 4 * 16 * 16  # nodes (0, 0) and (1, 0): dw, pw, BN, ReLU, dw, pw, BN
    sums = 2 * 4 * 16 * 16  # their residual sums (one input each: no input sum)
    edges = 2 * 4 * 16 * 16  # the keep edge's ReLU and the decoder edge's ReLU
    decoder = 3 * 4 * 16 * 16 + 2 * 16 * 16 + 2 * 64 * 64  # conv1x1+BN+ReLU at stride 4, head conv, x4 upsampling
    loss = 2 * 64 * 64
    assert activation_elements(one, (64, 64), dynamic=False) == stem + cells + sums + edges + decoder + loss
    # an identity node runs no cell and its edges carry the input unchanged
    ident = Architecture(tiny, one.edges, (((1, 0), "identity"),))
    assert activation_elements(ident, (64, 64), dynamic=False) == stem + cells // 2 + sums // 2 + edges // 2 + decoder + loss


SMALL_MACHINE = 24 * 2**30  # what the refusal tests report as available: a 24 GiB machine, whatever this one has


@pytest.fixture
def small_machine(monkeypatch):
    """The host's memory readings replaced by SMALL_MACHINE (MemAvailable; no cgroup limit), so a refusal does
    not depend on this machine's RAM; ``available_memory`` itself still runs (its reading is tested below)."""
    monkeypatch.setattr(memory, "_meminfo_available", lambda: SMALL_MACHINE)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: None)
    return SMALL_MACHINE


def test_paper_preset_full_size_batch_8_is_refused_with_the_estimate(small_machine):
    space = preset("paper")
    est = estimate_training_memory(space, 8, (1024, 2048), dynamic=True, optimizer="sgd")
    avail = available_memory("cpu")
    assert avail == small_machine  # the readings are the fixture's
    assert avail < 2**40 and est > avail  # 24 GiB reported; the estimate is hundreds of GiB
    with pytest.raises(RoutespaceError) as info:
        check_training_memory(space, 8, (1024, 2048), dynamic=True, optimizer="sgd", what="training the paper dynamic net")
    msg = str(info.value)
    assert "\n" not in msg
    assert format_bytes(est) in msg and format_bytes(avail)[-3:] in msg
    assert "--batch-size" in msg and "--size" in msg and "tiny" in msg
    # the tiny preset's defaults fit
    assert check_training_memory(preset("tiny"), 8, (64, 64), dynamic=True) < avail


def test_available_memory_is_meminfo_or_less():
    with open("/proc/meminfo") as fh:
        meminfo = next(int(l.split()[1]) * 1024 for l in fh if l.startswith("MemAvailable:"))
    got = available_memory()
    assert 0 < got <= meminfo * 1.05 + 2**26


def test_check_fits_and_skip_switch(monkeypatch):
    check_fits(10, 11, "x")
    with pytest.raises(RoutespaceError, match=r"search needs about 2\.0 GiB at peak \(estimate\) but only 1\.0 GiB"):
        check_fits(2 * 2**30, 2**30, "search")
    monkeypatch.setenv("ROUTESPACE_SKIP_MEMORY_CHECK", "1")
    assert check_training_memory(preset("paper"), 8, (1024, 2048), dynamic=True) > 100 * 2**30
    with pytest.raises(RoutespaceError, match="batch size"):
        estimate_training_memory(preset("tiny"), 0, SIZE, True)
    assert SAFETY_FACTOR >= 1


def test_processes_multiply_and_advice_is_the_commands_own(small_machine):
    tiny = preset("tiny")
    one = check_training_memory(tiny, 8, (64, 64), dynamic=False)
    assert check_training_memory(tiny, 8, (64, 64), dynamic=False, processes=3) == 3 * one
    with pytest.raises(RoutespaceError, match=r"lower --proxy-batch or use --preset tiny \(ROUTESPACE_SKIP"):
        check_training_memory(preset("paper"), 8, (1024, 2048), dynamic=False, what="search", processes=4,
                              advice="lower --proxy-batch or use --preset tiny")
