"""benchmarks/gpu_check.py, where there is no GPU: the no-CUDA path (one line, exit 0), its arguments, and
each check run on the CPU with the tiny preset (gloo for the DDP check), so the script a CUDA machine runs
is known to work up to the device."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
CPU = torch.device("cpu")


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # spawned DDP ranks import the module by name, from this path
    import gpu_check

    return gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run its checks")
def test_without_cuda_it_prints_one_line_and_exits_0(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and proc.stderr == ""
    assert json.loads(lines[0])["cuda"] is False and "no CUDA device" in lines[0]


def test_arguments(gpu_check):
    a = gpu_check.parse_args([])
    assert (a.device, a.train_size, a.batch_size, a.latency_size, a.no_ddp) == ("auto", "768x768", 2, "1024x2048", False)
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--repeats", "0"])


def test_checks_run_on_the_cpu(gpu_check):
    train = gpu_check.check_training(CPU, (64, 64), 2, 1, space_name="tiny")
    assert train["finite"] and train["step"]["n"] == 1 and train["memory"]["estimate_bytes"] > 0
    skip = gpu_check.check_skipping(CPU, (64, 64), 4, space_name="tiny")
    assert skip["distinct_routes"] >= 2 and skip["flops_equal"]
    assert skip["tf32_off"]["rel_diff"] <= 1e-5 and skip["tf32_default"]["rel_diff"] <= 1e-5
    lat = gpu_check.check_latency(CPU, (64, 64), 2, 1, space_name="tiny")
    nets = lat["nets"]
    assert set(nets) == {"dense", "skipping_all_open", "skipping_routed", "static_deeplabv3"}
    assert all(v["n"] == 2 and v["min_ms"] <= v["median_ms"] <= v["max_ms"] for v in nets.values())
    assert nets["skipping_routed"]["gflops"] < nets["skipping_all_open"]["gflops"] == nets["dense"]["gflops"]


def test_ddp_check_with_gloo(gpu_check):
    out = gpu_check.check_ddp(2, world=2, backend="gloo")
    assert (out["backend"], out["world_size"], out["steps"]) == ("gloo", 2, 2)
    assert out["ranks_identical"]
    assert out["max_rel_diff_vs_single_process"] <= 1e-5  # DDP's averaged gradient is the whole batch's
