"""Latency of a subnet on this machine, in onnxruntime (CPU) and in PyTorch (eval, no_grad).

Each measurement is the median of `runs` timed forwards after `warmup` untimed ones, on a
random input of the architecture's shape. Both engines get the same thread count (default
1: stable on a shared machine and what a phone core gives; raise it to measure a server).

A latency table is a JSON object {arch string: ms}, one file per device and bit-width,
which `oqat search --latency-table FILE` reads as a budget metric.
"""
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from . import checkpoint, files
from .export import ONNX_FILE, PACKED_FILE, build_onnx, onnx_session
from .space import Arch, SearchSpace, get_space
from .subnet import Subnet
from .supernet import Supernet

ENGINES = ("onnxruntime", "torch")


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


def measure(net: Subnet, batches: list[int], runs: int = 50, warmup: int = 10, threads: int = 1,
            onnx_path: str | None = None) -> dict[str, dict[int, float]]:
    """{engine: {batch: median ms}} of `net` (moved to channels-last in place); onnxruntime
    runs `onnx_path` if given, else the model `build_onnx(net)` writes."""
    net = net.eval().to(memory_format=torch.channels_last)  # the fast CPU layout for depthwise convs
    session = onnx_session(onnx_path or build_onnx(net), threads)
    shape = (net.space.in_channels, net.arch.r, net.arch.r)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    result = {engine: {} for engine in ENGINES}
    try:
        for b in batches:
            x = torch.randn(b, *shape, generator=torch.Generator().manual_seed(b))
            feed = {"input": x.numpy()}
            result["onnxruntime"][b] = median_ms(lambda: session.run(None, feed), runs, warmup)
            xc = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                result["torch"][b] = median_ms(lambda: net(xc), runs, warmup)
    finally:
        torch.set_num_threads(previous)
    return result


def load_for_latency(source: str, arch: str | None) -> tuple[Subnet, str | None]:
    """(subnet, its .onnx file or None) from an exported folder, a subnet file, or a
    supernet file and `arch` (extracted as is: BN statistics do not change latency)."""
    onnx_path = os.path.join(source, ONNX_FILE)
    net = files.load_packed(os.path.join(source, PACKED_FILE)) if os.path.isdir(source) else files.load_model(source)[0]
    arch = Arch.parse(arch, net.space) if arch is not None else None
    if isinstance(net, Supernet):
        if arch is None:
            raise ValueError(f"'{source}' is a supernet: give --arch to choose the subnet")
        return net.extract(arch, keep_bn=True).eval(), None
    if arch is not None and arch != net.arch:
        raise ValueError(f"--arch {arch} differs from the subnet in '{source}' ({net.arch})")
    return net, onnx_path if os.path.isfile(onnx_path) else None


def device_name() -> str:
    """The CPU model (Linux) or platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def update_table(path: str, arch: str, ms: float, space: SearchSpace | None = None) -> dict[str, float]:
    """Set table[arch] = ms in the JSON latency table of `space`'s architectures at `path`
    (created if missing); `space` defaults to the built-in one `arch` names."""
    space = space or get_space(Arch.from_str(arch).space)
    table = files.load_latency_table(path, space) if os.path.exists(path) else {}
    table[arch] = round(ms, 4)
    text = json.dumps(dict(sorted(table.items())), indent=1) + "\n"
    checkpoint.atomic_write(path, lambda f: f.write(text.encode()))
    return table
