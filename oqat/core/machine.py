"""The machine a timing was measured on, in one line: a speed claim is a claim about a CPU."""
import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def cpu_model() -> str:
    """The CPU model (Linux) or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _isa() -> str:
    """The widest vector extensions the CPU has that torch and oneDNN choose kernels by."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown ISA"
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE/other"
    return isa + (" VNNI" if "avx512_vnni" in flags or "avx_vnni" in flags else "")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def summary() -> str:
    """e.g. 'AMD EPYC, AVX2, 2 CPUs, torch 2.14.1 (kernels AVX2, 2 threads), onnxruntime 1.32.0'."""
    parts = [cpu_model(), _isa(), f"{os.cpu_count()} CPUs",
             f"torch {torch.__version__.split('+')[0]} (kernels {torch.backends.cpu.get_cpu_capability()}, "
             f"{torch.get_num_threads()} threads)"]
    parts += [f"{p} {v}" for p in ("onnxruntime", "openvino") if (v := _version(p))]
    return ", ".join(parts)


def median_ms(fn: Callable[[], object], runs: int, warmup: int) -> float:
    """Median wall time of fn() in milliseconds over `runs` calls, after `warmup` calls."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)
