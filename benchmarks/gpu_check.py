"""The CUDA path of routespace, checked on a machine with a GPU in well under 5 minutes (issues 14 and 16).

1. ``--device auto`` picks CUDA (``evaluators.train.resolve_device``).
2. A training step of the paper preset's dynamic supernet (L=16, C=64, small gate, Dynamic-A's budget loss
   in realised mode) at 768x768, batch 2, SGD: forward + backward + step time (median of timed steps), and
   the CUDA memory estimate (``evaluators.memory.estimate_training_memory``) against the measured peak
   (``torch.cuda.max_memory_allocated``).
3. Skipping == dense on CUDA: ``forward_skipping`` against the dense masked ``forward`` of the paper net with
   random gate weights (so images take different routes), max |difference| / max |logit|, with TF32 off
   and with torch's default TF32 settings.
4. Batch-1 latency at 1024x2048: the dense forward, ``forward_skipping`` (all gates open, and routed) and a
   static Common-like net (the classic DeepLabV3 of the paper preset, ``spaces.builder.build``), timed in
   one interleaved round-robin loop after a warm-up, ``torch.cuda.synchronize`` around every pass; median,
   interquartile range, min and max.
5. DDP with nccl on every device present: ``torch.cuda.device_count()`` processes (``torch.multiprocessing``),
   a few SGD steps of the tiny supernet, each rank on its own shard; the parameters after the steps equal
   a single-process run on the whole batch (BN in eval mode, so the shards' batch statistics do not enter).

Run: ``python benchmarks/gpu_check.py [--device auto|cuda|cuda:N] [--repeats 20] [--no-ddp]``. Progress lines,
then one JSON object as the last line. Without CUDA it prints one JSON line saying so and exits 0. The checks
are plain functions that also run on the CPU (gloo instead of nccl, no memory figures), so
``tests/test_gpu_check.py`` runs them on the tiny preset where there is no GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cuda or cuda:N")
    p.add_argument("--train-size", default="768x768", help="training crop HxW (768x768)")
    p.add_argument("--batch-size", type=int, default=2, help="training batch (2)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps, after 2 warm-up steps (5)")
    p.add_argument("--latency-size", default="1024x2048", help="batch-1 latency input HxW (1024x2048)")
    p.add_argument("--repeats", type=int, default=20, help="interleaved latency repeats per net (20)")
    p.add_argument("--warmup", type=int, default=3, help="latency warm-up passes per net (3)")
    p.add_argument("--no-ddp", action="store_true", help="skip the nccl DDP check")
    p.add_argument("--ddp-steps", type=int, default=3, help="SGD steps of the DDP check (3)")
    args = p.parse_args(argv)
    for name in ("batch_size", "steps", "repeats", "ddp_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def say(text: str) -> None:
    print(f"gpu_check: {text}", flush=True)


def stats_ms(times: list[float]) -> dict[str, Any]:
    """Median, interquartile range, min, max and count of a list of milliseconds."""
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_ms": round(statistics.median(times), 3), "iqr_ms": [round(q[0], 3), round(q[2], 3)],
            "min_ms": round(min(times), 3), "max_ms": round(max(times), 3), "n": len(times)}


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def diverse_images(batch: int, size: tuple[int, int], device, seed: int):
    """Noise images of different contrast and brightness, so globally pooled gate inputs differ per image."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *size, generator=g)
    scale = torch.linspace(0.3, 3.0, batch)[:, None, None, None]
    shift = torch.linspace(-1.0, 1.0, batch)[:, None, None, None]
    return (x * scale + shift).to(device)


def _routed(net, seed: int = 1) -> None:
    """Random gate weights and biases: the gates differ from image to image (untrained ones are all open)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for gate in net.gates.values():
        w = torch.randn(gate.fc.weight.shape, generator=g) / gate.fc.weight.shape[1] ** 0.5 * 3
        gate.fc.weight.data.copy_(w)
        gate.fc.bias.data.copy_(torch.randn(gate.fc.bias.shape, generator=g) * 0.5)


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    import torch

    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# --- 2. a paper-preset training step ------------------------------------------------------------------------
def check_training(device, size: tuple[int, int], batch: int, steps: int, space_name: str = "paper") -> dict:
    import torch
    import torch.nn.functional as F

    from routespace.evaluators.memory import estimate_training_memory
    from routespace.search.dynamic.budget import make_budget_loss
    from routespace.search.dynamic.settings import SETTINGS
    from routespace.spaces.space import preset
    from routespace.spaces.supernet import DynamicNet

    space = preset(space_name)
    a = SETTINGS["A"]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    torch.manual_seed(0)
    net = DynamicNet(space, gate_resolution=a.gate_resolution).to(device).train()
    budget = make_budget_loss(space, size, a.mu, a.lam, "realised", warmup=0.0, ramp=0.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    x = diverse_images(batch, size, device, seed=0)
    y = torch.randint(0, space.num_classes, (batch, *size), generator=torch.Generator().manual_seed(0)).to(device)
    times, losses = [], []
    for step in range(2 + steps):
        sync(device)
        t0 = time.perf_counter()
        out = net(x)
        loss = F.cross_entropy(out.logits, y) + budget(out, step, 2 + steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sync(device)
        if step >= 2:
            times.append((time.perf_counter() - t0) * 1e3)
        losses.append(float(loss.detach()))
    estimate = estimate_training_memory(space, batch, size, dynamic=True, optimizer="sgd")
    memory: dict[str, Any] = {"estimate_bytes": estimate}
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - base
        memory.update(measured_peak_bytes=peak, estimate_over_measured=round(estimate / peak, 3) if peak else None)
    del net, opt, out, loss
    if cuda:
        torch.cuda.empty_cache()
    return {"preset": space_name, "size": list(size), "batch": batch, "step": stats_ms(times),
            "losses": [round(v, 4) for v in losses], "finite": all(math.isfinite(v) for v in losses), "memory": memory}


# --- 3. skipping == dense -----------------------------------------------------------------------------------
def check_skipping(device, size: tuple[int, int], batch: int = 4, space_name: str = "paper") -> dict:
    import torch

    from routespace.spaces.space import preset
    from routespace.spaces.supernet import DynamicNet

    torch.manual_seed(0)
    net = DynamicNet(preset(space_name), gate_resolution="quarter")
    _routed(net)
    net = net.to(device).eval()
    x = diverse_images(batch, size, device, seed=1)
    result: dict[str, Any] = {"preset": space_name, "size": list(size), "batch": batch}
    for label, off in (("tf32_off", True), ("tf32_default", False)):
        with torch.no_grad(), (tf32(False) if off else nullcontext()):
            dense = net(x)
            skip = net.forward_skipping(x)
        scale = float(dense.logits.abs().max())
        result[label] = {"max_abs_diff": float((dense.logits - skip.logits).abs().max()),
                         "rel_diff": float((dense.logits - skip.logits).abs().max()) / scale, "logit_scale": scale}
    routes = {frozenset(k for k, v in skip.edge_gates.items() if float(v[i]) > 0) for i in range(batch)}
    result["distinct_routes"] = len(routes)
    result["open_edge_fraction"] = round(sum(float((v > 0).float().mean()) for v in skip.edge_gates.values())
                                         / len(skip.edge_gates), 3)
    result["realised_gflops"] = [float(f"{float(v) / 1e9:.4g}") for v in skip.realised_flops]
    result["flops_equal"] = bool(torch.allclose(dense.realised_flops.double(), skip.realised_flops.double(), rtol=1e-6))
    return result


# --- 4. batch-1 latency -------------------------------------------------------------------------------------
def interleaved_ms(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, device) -> dict[str, dict]:
    """Each fn timed ``repeats`` times in round-robin order (reversed every other round), CUDA synchronised
    before and after every pass, after ``warmup`` passes of each."""
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        names = list(fns)
        for r in range(repeats):
            for k in (names if r % 2 == 0 else names[::-1]):
                sync(device)
                t0 = time.perf_counter()
                fns[k]()
                sync(device)
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: stats_ms(v) for k, v in times.items()}


def check_latency(device, size: tuple[int, int], repeats: int, warmup: int, space_name: str = "paper") -> dict:
    import torch

    from routespace.evaluators.cost import architecture_cost
    from routespace.spaces.builder import build
    from routespace.spaces.classics import classic
    from routespace.spaces.space import preset
    from routespace.spaces.supernet import DynamicNet

    space = preset(space_name)
    torch.manual_seed(0)
    open_net = DynamicNet(space, gate_resolution="quarter")
    for gate in open_net.gates.values():  # every gate tanh(1.5): all open, and the gate heads still run
        gate.fc.weight.data.zero_()
    open_net = open_net.to(device).eval()
    torch.manual_seed(0)
    routed = DynamicNet(space, gate_resolution="quarter")
    _routed(routed)
    routed = routed.to(device).eval()
    arch = classic("deeplabv3", space)
    static = build(arch).to(device).eval()
    x = diverse_images(1, size, device, seed=2)
    fns = {
        "dense": lambda: open_net(x),
        "skipping_all_open": lambda: open_net.forward_skipping(x),
        "skipping_routed": lambda: routed.forward_skipping(x),
        "static_deeplabv3": lambda: static(x),
    }
    timing = interleaved_ms(fns, repeats, warmup, device)
    with torch.no_grad():
        gflops = {"dense": float(open_net(x).realised_flops[0]) / 1e9,
                  "skipping_all_open": float(open_net.forward_skipping(x).realised_flops[0]) / 1e9,
                  "skipping_routed": float(routed.forward_skipping(x).realised_flops[0]) / 1e9,
                  "static_deeplabv3": architecture_cost(arch, size).gflops}
    for k in timing:
        timing[k]["gflops"] = float(f"{gflops[k]:.4g}")
    saving_t = 1 - timing["skipping_routed"]["median_ms"] / timing["skipping_all_open"]["median_ms"]
    saving_f = 1 - gflops["skipping_routed"] / gflops["skipping_all_open"]
    return {"preset": space_name, "size": list(size), "batch": 1, "repeats": repeats, "warmup": warmup, "nets": timing,
            "routed_time_saving_over_flops_saving": round(saving_t / saving_f, 3) if saving_f > 0 else None}


# --- 5. DDP with nccl ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_net():
    import torch

    from routespace.spaces.space import preset
    from routespace.spaces.supernet import DynamicNet

    torch.manual_seed(0)
    return DynamicNet(preset("tiny"), gate_resolution="quarter")


def _ddp_data(world: int, per_rank: int = 2):
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randn(world * per_rank, 3, 64, 64, generator=g), torch.randint(0, 5, (world * per_rank, 64, 64), generator=g)


def _sgd_steps(model, params, images, labels, steps: int) -> list[float]:
    import torch
    import torch.nn.functional as F

    params = list(params)
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(images).logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the untrained net's logits are large
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _ddp_worker(rank: int, world: int, port: int, steps: int, backend: str, out_path: str) -> None:
    """One rank: a few DDP SGD steps on its shard; rank 0 also runs the single-process reference.
    ``backend`` nccl: rank r on cuda:r; gloo: on the CPU (the test of this script)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    cuda = backend == "nccl"
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    else:
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    dist.init_process_group(backend, rank=rank, world_size=world, **({"device_id": device} if cuda else {}))
    try:
        net = _ddp_net().to(device).eval()  # eval: BN running statistics, so a shard's gradient is the batch's
        ddp = DDP(net, device_ids=[rank] if cuda else None, find_unused_parameters=True)
        images, labels = _ddp_data(world)
        shard = slice(2 * rank, 2 * rank + 2)
        losses = _sgd_steps(ddp, ddp.parameters(), images[shard].to(device), labels[shard].to(device), steps)
        flat = torch.cat([p.detach().flatten() for p in net.parameters()])
        copies = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(copies, flat)
        seconds = time.perf_counter() - t0
        if rank == 0:
            ref = _ddp_net().to(device).eval()
            _sgd_steps(ref, ref.parameters(), images.to(device), labels.to(device), steps)
            ref_flat = torch.cat([p.detach().flatten() for p in ref.parameters()])
            scale = float(ref_flat.abs().max())
            result = {"backend": dist.get_backend(), "world_size": world, "steps": steps, "seconds": round(seconds, 2),
                      "losses_rank0": [round(v, 4) for v in losses],
                      "ranks_identical": all(torch.equal(c, copies[0]) for c in copies),
                      "max_rel_diff_between_ranks": max(float((c - copies[0]).abs().max()) for c in copies) / scale,
                      "max_rel_diff_vs_single_process": float((flat - ref_flat).abs().max()) / scale}
            with open(out_path, "w") as fh:
                json.dump(result, fh)
    finally:
        dist.destroy_process_group()


def check_ddp(steps: int, world: int | None = None, backend: str = "nccl") -> dict:
    """DDP over ``world`` processes (default: one per CUDA device) with ``backend``."""
    import torch
    import torch.multiprocessing as mp

    world = world or torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ddp.json")
        mp.spawn(_ddp_worker, args=(world, _free_port(), steps, backend, out), nprocs=world, join=True)
        with open(out) as fh:
            return json.load(fh)


# --- main ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"gpu_check": "skipped", "cuda": False, "torch": torch.__version__,
                          "note": "no CUDA device on this machine: nothing checked"}))
        return 0
    from routespace.evaluators.train import resolve_device
    from routespace.spaces.errors import RoutespaceError
    from routespace.spaces.space import parse_size

    try:
        train_size, latency_size = parse_size(args.train_size), parse_size(args.latency_size)
        device = resolve_device(args.device)
    except RoutespaceError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    report: dict[str, Any] = {
        "gpu_check": "ran", "cuda": True, "torch": torch.__version__, "cuda_version": torch.version.cuda,
        "device": str(device), "device_name": torch.cuda.get_device_name(device),
        "device_count": torch.cuda.device_count(), "auto_device": str(resolve_device("auto")),
        "auto_picks_cuda": resolve_device("auto").type == "cuda",
    }
    say(f"{report['device_name']} x{report['device_count']}, torch {torch.__version__}, --device auto -> {report['auto_device']}")
    sections = [("training", lambda: check_training(device, train_size, args.batch_size, args.steps)),
                ("skipping_vs_dense", lambda: check_skipping(device, (512, 1024))),
                ("latency", lambda: check_latency(device, latency_size, args.repeats, args.warmup))]
    if not args.no_ddp:
        sections.append(("ddp", lambda: check_ddp(args.ddp_steps)))
    for name, run in sections:
        t0 = time.perf_counter()
        try:
            report[name] = run()
        except Exception as exc:  # report and go on: one failing check must not hide the others
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            report[name] = {"error": f"{type(exc).__name__}: {first}"}
        report[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        say(f"{name}: {json.dumps(report[name])[:400]}")
    report["total_seconds"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
