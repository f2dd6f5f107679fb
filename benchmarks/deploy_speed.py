"""Deployed speed: oqat's runtime and OpenVINO on the export against the same network in fp32.

For mbv3 S, M and L (three of the authors' published 2-bit Pareto architectures, at r224) and
mini L (28 px), at batch 1 and 16, on 1 and 2 threads: the median latency of the fp32 network
in PyTorch, onnxruntime and OpenVINO, and of its export at each bit-width in oqat's runtime
(model.oqrt) and in OpenVINO (the integer ONNX graph, int8 convolutions), then each export's
speed-up over the fastest fp32. The runners take turns (a few calls each, round after round),
so a drift of the machine's speed hits all alike. Weights are random with steps and BN
statistics set from data: speed does not depend on them.

    python benchmarks/deploy_speed.py [--rounds 8] [--bits 2 3 4] [--threads 1 2] [--batches 1 16]
    python benchmarks/deploy_speed.py --tiny    # mini only, a few calls: what the test suite runs
"""
import argparse
import copy
import dataclasses
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from oqat.core import machine
from oqat.deploy import runners  # noqa: E402
from oqat.deploy.export import build_onnx, fp32_graph  # noqa: E402
from oqat.nets.supernet import Supernet  # noqa: E402
from oqat.quant.lsq import FULL_PRECISION, set_bits_  # noqa: E402
from oqat.runtime import model_file as runtime_file  # noqa: E402
from oqat.runtime.binding import Model  # noqa: E402
from oqat.space.arch import Arch
from oqat.space.builtin import MBV3, MINI  # noqa: E402
from oqat.train.evaluate import recalibrate_bn  # noqa: E402


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


def fp32_runners(net: torch.nn.Module, threads: int) -> dict:
    """name -> callable on one float32 batch: the network with its quantizers off, in each engine."""
    fp32 = set_bits_(copy.deepcopy(net), FULL_PRECISION).to(memory_format=torch.channels_last)

    def torch_fp32(x):  # channels-last: PyTorch's fast CPU layout for depthwise convs
        with torch.no_grad():
            return fp32(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))

    return {"torch fp32": torch_fp32, **runners.export_runners(fp32_graph(net), None, threads, "fp32")}


def export_runners(net: torch.nn.Module, bits: int, threads: int) -> dict:
    """name -> callable: the `bits`-bit export in oqat's runtime and in OpenVINO, where here."""
    out = {}
    if "oqat" in runners.runtimes():
        out[f"oqat {bits}bit"] = runners.Runner(runtime_file.to_bytes(net), "oqat", threads)
    if "openvino" in runners.runtimes():
        out[f"openvino {bits}bit"] = runners.Runner(build_onnx(net), "openvino", threads)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--calls", type=int, default=3, help="calls per runner per round")
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--subnets", nargs="+", default=list(SUBNETS), choices=list(SUBNETS))
    p.add_argument("--profile", action="store_true", help="also print where oqat's runtime spends a batch of 1 "
                                                           "on one thread, by op type")
    p.add_argument("--tiny", action="store_true", help="mini L only, 2 rounds of 1 call, 1 thread")
    args = p.parse_args(argv)
    if args.tiny:
        args.subnets, args.rounds, args.calls, args.threads, args.profile = ["mini L"], 2, 1, [1], True
    print(f"machine: {machine.summary()}")
    print(f"median ms of {args.rounds} rounds x {args.calls} calls, runners interleaved; "
          "ratio = fastest fp32 / this export")
    results = {}
    for name in args.subnets:
        arch = SUBNETS[name]
        nets = {b: random_subnet(arch, b) for b in args.bits}
        for threads in args.threads:
            torch.set_num_threads(threads)
            fns = fp32_runners(nets[args.bits[0]], threads)
            for b, net in nets.items():
                fns.update(export_runners(net, b, threads))
            for batch in args.batches:
                x = torch.randn(batch, nets[args.bits[0]].space.in_channels,
                                arch.r, arch.r, generator=torch.Generator().manual_seed(1)).numpy()
                ms = runners.interleaved_ms(fns, dict.fromkeys(fns, x), args.rounds, args.calls)
                fastest_fp32 = min(v for k, v in ms.items() if k.endswith("fp32"))
                ratios = {k: fastest_fp32 / v for k, v in ms.items() if not k.endswith("fp32")}
                results[(name, threads, batch)] = {"ms": ms, "speedup": ratios}
                cells = "  ".join(f"{k} {v:.3f}" for k, v in ms.items())
                gains = "  ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
                print(f"{name} r{arch.r} b{batch} t{threads}: {cells}\n    speed-up over fp32: {gains}", flush=True)
        if args.profile and "oqat" in runners.runtimes():
            for b, net in nets.items():
                print(f"    oqat {b}bit, batch 1, 1 thread: {profile(net, args.rounds)}", flush=True)
    return results


def profile(net: torch.nn.Module, rounds: int) -> str:
    """ms of each op type of one run of `net` in oqat's runtime, largest first."""
    model = Model(data=runtime_file.to_bytes(net), threads=1)
    ops = model.profile(np.random.default_rng(0).standard_normal((1, *model.input_shape), dtype=np.float32), rounds)
    by_type = {}
    for op in ops:
        by_type[op["type"]] = by_type.get(op["type"], 0.0) + op["ms"]
    total = sum(by_type.values())
    return f"{total:.3f} ms = " + ", ".join(f"{t} {ms:.3f} ({100 * ms / total:.0f}%)" for t, ms in
                                            sorted(by_type.items(), key=lambda kv: -kv[1]))


if __name__ == "__main__":
    main()
