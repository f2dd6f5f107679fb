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

from . import deploy, files
from .deploy import median_ms
from .export import build_onnx, fp32_graph
from .layout import ExportLayout
from .subnet import Subnet
from .supernet import Supernet


def measure_latency(net: Subnet, batches: list[int], runs: int = 50, warmup: int = 10, threads: int = 1,
                    onnx_path: str | None = None) -> dict[str, dict[int, float]]:
    """{engine: {batch: median ms}} of `net`: "torch" (its fake-quant forward, channels-last,
    `net` moved in place), and in each runtime here "<runtime> export" (the deployed graph:
    `onnx_path` if given, else the one `build_onnx(net)` writes) and "<runtime> fp32" (the
    same network with its quantizers off)."""
    net = net.eval().to(memory_format=torch.channels_last)  # the fast CPU layout for depthwise convs
    graphs = {"export": onnx.load(onnx_path) if onnx_path else build_onnx(net), "fp32": fp32_graph(net)}
    runners = {f"{r} {kind}": deploy.Runner(m, r, threads) for kind, m in graphs.items() for r in deploy.runtimes()}
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


def deployed_engine() -> str:
    """The engine whose batch-1 time a latency table holds: the export in the preferred runtime."""
    return f"{deploy.runtimes()[0]} export"


def load_for_latency(source: str, arch: str | None) -> tuple[Subnet, str | None]:
    """(subnet, its .onnx file or None) from an exported folder, a subnet file, or a
    supernet file and `arch` (extracted as is: BN statistics do not change latency)."""
    net, _ = files.load_model(source)
    arch = files.subnet_arch(net, arch, source)
    if isinstance(net, Supernet):
        return net.extract(arch, keep_bn=True).eval(), None
    onnx_path = ExportLayout(source).onnx
    return net, onnx_path if os.path.isfile(onnx_path) else None

