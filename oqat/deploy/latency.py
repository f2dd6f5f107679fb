"""Latency of a subnet on this machine: its deployed graph and its fp32 self in each runtime
installed (`oqat.deploy`), and its fake-quant forward in PyTorch (eval, no_grad).

Each measurement is the median of `runs` timed forwards after `warmup` untimed ones, on a
random input of the architecture's shape. Every engine gets the same thread count (default
1: stable on a shared machine and what a phone core gives; raise it to measure a server).

A latency table (`oqat latency --table`; its format: `records.update_latency_table` and
`load_latency_table`) records the bit-width, device and threads it was measured with, and the
ms of each architecture; `oqat search --latency-table FILE` reads it as a budget metric,
refusing a table of other bits.
"""
import os

import onnx
import torch

from ..core.machine import median_ms
from ..files import checkpoints
from ..files.layout import ExportLayout
from ..nets.subnet import Subnet
from ..nets.supernet import Supernet
from ..quant.lsq import FULL_PRECISION
from ..runtime import model_file as runtime_file
from .export import build_onnx, fp32_graph
from .runners import export_runners, runtimes


def measure_latency(net: Subnet, batches: list[int], runs: int = 50, warmup: int = 10, threads: int = 1,
                    folder: str | None = None) -> dict[str, dict[int, float]]:
    """{engine: {batch: median ms}} of `net`: "torch" (its fake-quant forward, channels-last,
    `net` moved in place), and in each runtime here "<runtime> export" (the deployed files of
    the export folder `folder` if given, else those `export` would write) and, in the ONNX
    runtimes, "<runtime> fp32" (the same network with its quantizers off)."""
    net = net.eval().to(memory_format=torch.channels_last)  # the fast CPU layout for depthwise convs
    out = ExportLayout(folder) if folder else None
    graph = onnx.load(out.onnx) if out and os.path.isfile(out.onnx) else build_onnx(net)
    own = out.runtime if out and os.path.isfile(out.runtime) else \
        None if net.bits == FULL_PRECISION else runtime_file.to_bytes(net)
    runners = {**export_runners(graph, own, threads), **export_runners(fp32_graph(net), None, threads,
                                                                                    "fp32")}
    shape = (net.space.in_channels, net.arch.r, net.arch.r)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    result = {engine: {} for engine in ["torch", *runners]}
    try:
        for b in batches:
            x = torch.randn(b, *shape, generator=torch.Generator().manual_seed(b))
            xc, xn = x.contiguous(memory_format=torch.channels_last), x.numpy()
            with torch.no_grad():
                result["torch"][b] = median_ms(lambda: net(xc), runs, warmup)  # noqa: B023 (called right here)
            for name, run in runners.items():
                result[name][b] = median_ms(lambda: run(xn), runs, warmup)  # noqa: B023 (called right here)
    finally:
        torch.set_num_threads(previous)
    return result


def deployed_engine(result: dict[str, dict[int, float]]) -> str:
    """The engine of `measure_latency`'s result whose batch-1 time a latency table holds: the
    export in the preferred runtime that ran it."""
    return next(f"{r} export" for r in runtimes() if f"{r} export" in result)


def load_for_latency(source: str, arch: str | None) -> tuple[Subnet, str | None]:
    """(subnet, its export folder or None) from an exported folder, a subnet file, or a
    supernet file and `arch` (extracted as is: BN statistics do not change latency)."""
    net, _ = checkpoints.load_model(source)
    arch = checkpoints.subnet_arch(net, arch, source)
    if isinstance(net, Supernet):
        return net.extract(arch, keep_bn=True).eval(), None
    return net, source if os.path.isdir(source) else None

