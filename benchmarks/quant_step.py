"""Training-step cost of the 4-bit mbv3 supernet against the same supernet at 32 bits.

One full step (forward, backward, SGD step) at batch 32, resolution 128, on CPU, for the
largest, a middle and the smallest subnet; both bit-widths timed interleaved in one run so
machine noise hits them alike. Target: 4-bit / 32-bit <= 1.15.

    python benchmarks/quant_step.py [--iters 6] [--batch 32] [--res 128]
"""
import argparse
import random
import statistics
import time

import torch

from oqat.space import MBV3, Arch
from oqat.supernet import Supernet


def middle_arch(r: int) -> Arch:
    n = MBV3.num_blocks
    return Arch(ks=[5] * n, e=[4] * n, d=[3] * len(MBV3.stages), r=r, space="mbv3")


def step_time(net, opt, x, y) -> float:
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC layout (2-3x faster depthwise convs on CPU)")
    args = p.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    nets = {bits: Supernet(MBV3, bits=bits).train().to(memory_format=fmt) for bits in (32, 4)}
    opts = {b: torch.optim.SGD(n.parameters(), lr=1e-3, momentum=0.9, nesterov=True) for b, n in nets.items()}
    x = torch.randn(args.batch, 3, args.res, args.res).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch,))
    archs = {"largest": MBV3.largest(), "middle": middle_arch(args.res), "smallest": MBV3.smallest()}
    print(f"threads={torch.get_num_threads()} batch={args.batch} res={args.res} channels_last={args.channels_last}")
    print(f"{'subnet':<10}{'fp32 ms':>10}{'4-bit ms':>10}{'ratio':>8}")
    ratios = []
    for name, arch in archs.items():
        arch = Arch(ks=arch.ks, e=arch.e, d=arch.d, r=args.res, space="mbv3")
        times = {32: [], 4: []}
        for bits, net in nets.items():
            net.set_arch(arch)
            step_time(net, opts[bits], x, y)  # warm-up
        for _ in range(args.iters):
            for bits, net in nets.items():
                times[bits].append(step_time(net, opts[bits], x, y))
        fp, q = statistics.median(times[32]), statistics.median(times[4])
        ratios.append(q / fp)
        print(f"{name:<10}{fp * 1e3:>10.1f}{q * 1e3:>10.1f}{q / fp:>8.3f}")
    print(f"mean ratio 4-bit/fp32: {statistics.mean(ratios):.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
