"""Deployed speed: oqat's integer export against the same network in full precision.

For mbv3 S, M and L (three of the authors' published 2-bit Pareto architectures, at r224) and
mini L (28 px), at batch 1 and 16, on 1 and 2 threads: the median latency of the fp32 network
in PyTorch, onnxruntime and OpenVINO, and of oqat's export (`oqat.export.build_onnx`) in each
runtime installed, then the ratio of the fastest fp32 to the fastest export. The runners take
turns (a few calls each, round after round), so a drift of the machine's speed hits all alike.
Weights are random with steps and BN statistics set from data: speed does not depend on them.

    python benchmarks/deploy_speed.py [--rounds 8] [--bits 4] [--threads 1 2] [--batches 1 16]
    python benchmarks/deploy_speed.py --tiny    # mini only, a few calls: what the test suite runs
"""
import argparse
import copy
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from oqat import deploy, machine  # noqa: E402
from oqat.evaluate import recalibrate_bn  # noqa: E402
from oqat.export import build_onnx, fp32_graph  # noqa: E402
from oqat.quant import FULL_PRECISION, set_bits_  # noqa: E402
from oqat.space import MBV3, MINI, Arch  # noqa: E402
from oqat.supernet import Supernet  # noqa: E402


def _published(ks: str, e: str, d: str) -> Arch:
    """An architecture of the authors' README (their -ks, -es, -d), at r224."""
    return MBV3.arch(ks=[int(v) for v in ks.split(",")], e=[int(v) for v in e.split(",")],
                     d=[int(v) for v in d.split(",")], r=224)


SUBNETS = {  # the authors' 2-bit front: 59.5, 135.3 and 289.3 M MACs at their own resolutions
    "mbv3 S": _published("7,3,5,3,5,3,3,3,5,5,3,3,5,5,5,5,3,7,7,7", "3,4,3,4,3,3,6,6,4,4,6,6,6,4,4,4,3,4,3,6",
                         "2,2,3,2,2"),
    "mbv3 M": _published("7,5,5,5,7,3,5,5,3,3,3,3,3,7,3,5,7,7,5,3", "4,3,3,4,4,6,4,4,6,3,3,4,6,3,6,6,6,4,4,6",
                         "2,2,2,2,2"),
    "mbv3 L": _published("5,5,5,3,3,7,3,5,5,3,3,5,5,7,5,7,7,5,3,3", "3,3,3,4,6,6,4,6,6,3,4,6,4,4,3,3,6,4,6,4",
                         "3,3,4,4,3"),
    "mini L": dataclasses.replace(MINI.largest(), r=28),
}


def random_subnet(arch: Arch, bits: int) -> torch.nn.Module:
    """A random supernet's subnet with its steps and BN statistics set from random data."""
    torch.manual_seed(0)
    space = MBV3 if arch.space == "mbv3" else MINI
    supernet = Supernet(space, bits)
    for q in supernet.quantizers():
        q.init_pending = True
    supernet.set_arch(arch)
    x = torch.randn(8, space.in_channels, arch.r, arch.r)
    with torch.no_grad():
        supernet.train()(x)
    net = supernet.extract(arch)
    recalibrate_bn(net, [(x, None)])
    return net.eval()


def runners(net: torch.nn.Module, threads: int) -> dict:
    """name -> callable on one float32 batch: the fp32 network in each engine, the export in each runtime."""
    fp32 = set_bits_(copy.deepcopy(net), FULL_PRECISION)
    fp32_cl = fp32.to(memory_format=torch.channels_last)  # PyTorch's fast CPU layout for depthwise convs

    def torch_fp32(x):
        with torch.no_grad():
            return fp32_cl(x.contiguous(memory_format=torch.channels_last))

    out = {"torch fp32": torch_fp32}
    for kind, graph in (("fp32", fp32_graph(net)), ("export", build_onnx(net))):
        out.update({f"{r} {kind}": deploy.Runner(graph, r, threads) for r in deploy.runtimes()})
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--calls", type=int, default=3, help="calls per runner per round")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--subnets", nargs="+", default=list(SUBNETS), choices=list(SUBNETS))
    p.add_argument("--tiny", action="store_true", help="mini L only, 2 rounds of 1 call, 1 thread")
    args = p.parse_args(argv)
    if args.tiny:
        args.subnets, args.rounds, args.calls, args.threads = ["mini L"], 2, 1, [1]
    print(f"machine: {machine.summary()}")
    print(f"{args.bits}-bit export; median ms of {args.rounds} rounds x {args.calls} calls, runners interleaved")
    results = {}
    for name in args.subnets:
        arch = SUBNETS[name]
        net = random_subnet(arch, args.bits)
        for threads in args.threads:
            torch.set_num_threads(threads)
            fns = runners(net, threads)
            for batch in args.batches:
                x = torch.randn(batch, net.space.in_channels, arch.r, arch.r,
                                generator=torch.Generator().manual_seed(1))
                inputs = {name: x if name.startswith("torch") else x.numpy() for name in fns}
                ms = deploy.interleaved_ms(fns, inputs, args.rounds, args.calls)
                fastest_fp32 = min(v for k, v in ms.items() if k.endswith("fp32"))
                fastest_export = min(v for k, v in ms.items() if k.endswith("export"))
                results[(name, threads, batch)] = {**ms, "speedup": fastest_fp32 / fastest_export}
                cells = "  ".join(f"{k} {v:.3f}" for k, v in ms.items())
                print(f"{name} r{arch.r} b{batch} t{threads}: {cells}  -> fastest fp32 / fastest export "
                      f"{fastest_fp32 / fastest_export:.2f}x", flush=True)
    return results


if __name__ == "__main__":
    main()
