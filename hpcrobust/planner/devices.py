"""Devices the plan can time a sweep on: a table of GPUs' dense peak rates, a stated rate, or this CPU measured.

Rates are dense tensor-core peaks from the vendors' data sheets (no sparsity); float32 is the plain FP32 rate,
since torch does not use TF32 for matmuls unless asked. Wall time is actual FLOPs / (rate x utilisation):
actual FLOPs are what the device really multiplies (the prefix cache and the two label rows included), so a
utilisation is a fraction of the peak, comparable across attacks and sizes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from hpcrobust.errors import UserError

DEFAULT_GPU = "h100"
DEFAULT_UTILISATION = 0.3
CONTEXT_GIB = 1.0  # CUDA context and allocator slack that torch.cuda.max_memory_allocated does not show


@dataclass(frozen=True)
class Device:
    name: str
    bf16: float  # FLOP/s, also used for float16
    fp32: float
    memory_gib: float  # 0: unknown (the fit is not checked)
    gpu: bool = True
    note: str = ""

    def rate(self, dtype: str) -> float:
        return self.fp32 if dtype == "float32" else self.bf16

    def usable_bytes(self) -> float:
        return max(0.0, self.memory_gib - (CONTEXT_GIB if self.gpu else 0.0)) * 1024 ** 3


GPUS: dict[str, Device] = {
    "a100": Device("A100 SXM 80GB", 312e12, 19.5e12, 80),
    "a100-40gb": Device("A100 40GB", 312e12, 19.5e12, 40),
    "h100": Device("H100 SXM 80GB", 989e12, 67e12, 80),
    "h100-pcie": Device("H100 PCIe 80GB", 756e12, 51e12, 80),
    "h200": Device("H200 141GB", 989e12, 67e12, 141),
    "l40s": Device("L40S 48GB", 362e12, 91.6e12, 48),
    "a10": Device("A10 24GB", 125e12, 31.2e12, 24),
    "rtx4090": Device("RTX 4090 24GB", 165e12, 82.6e12, 24),
}


def measure_cpu(threads: int, dtype: str = "float32", seconds: float = 0.3) -> float:
    """This machine's matmul rate with `threads` torch threads: the CPU's practical peak."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        dt = torch.float32 if dtype == "float32" else getattr(torch, dtype)
        n = 384
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        return 2 * n ** 3 * reps / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


def cpu_memory_gib() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return 0.0


def cpu_device(threads: int, ranks_per_node: int) -> Device:
    rate = measure_cpu(threads)
    mem = cpu_memory_gib() / max(1, ranks_per_node)
    return Device(f"this CPU ({threads} thread(s) per rank, measured)", rate, rate, mem, gpu=False,
                  note=f"float32 matmul rate measured here: {rate / 1e9:.1f} GFLOP/s per rank")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def pick_device(gpu: str | None, device_flops: float | None, device_memory: float | None, on_gpu: bool,
                threads: int, ranks_per_node: int) -> tuple[Device, str]:
    """The device to time the sweep on, and a sentence saying how it was chosen."""
    if device_flops is not None:
        if device_flops <= 0:
            raise UserError(f"--device-flops: {device_flops:g} is not a positive FLOP/s rate")
        if device_memory is not None and device_memory <= 0:
            raise UserError(f"--device-memory: {device_memory:g} is not a positive size in GB")
        mem = device_memory or 0.0
        return Device("stated device", device_flops, device_flops, mem, gpu=on_gpu), "stated with --device-flops"
    if device_memory is not None:
        raise UserError("--device-memory needs --device-flops (or name a GPU with --gpu)")
    if gpu is not None:
        key = gpu.lower()
        if key == "cpu":
            return cpu_device(threads, ranks_per_node), "--gpu cpu"
        if key not in GPUS:
            raise UserError(f"--gpu: unknown GPU '{gpu}' (known: {', '.join([*GPUS, 'cpu'])}; or give"
                            f" --device-flops F --device-memory GB)")
        return GPUS[key], f"--gpu {key}"
    if on_gpu:
        return GPUS[DEFAULT_GPU], f"assumed: {DEFAULT_GPU}; choose with --gpu NAME or --device-flops"
    return cpu_device(threads, ranks_per_node), "no GPUs in launch.*: this CPU"
