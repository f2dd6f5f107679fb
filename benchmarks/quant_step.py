"""What quantization adds to a training step: the 4-bit sandwich step against the same step at 32 bits.

One sandwich step (the largest, a middle and the smallest subnet, each forward and backward,
the middle and smallest distilled from the largest, then one SGD step and the step guard),
in the training layout (channels-last) and allocator setting (`keep_freed_memory`), for mbv3
(batch 32, r128, 3 channels, 1000 classes) and mini (batch 128, 28 px, 1 channel, 10 classes).
Both bit-widths run interleaved in one process, alternating which goes first; times are this
process's CPU time (user + system, so page faults count), which waiting for a core on a shared
machine does not inflate. The ratio of the medians and of the best times is printed with the
load average. Target: <= 1.10.

With --mixed 2 3 4 it measures elastic bits instead: the mixed-precision supernet's sandwich
step (largest at 4 bits, smallest at 2, the middle with its blocks' bits drawn from the widths)
against the uniform step at the largest width on the same architectures. Target: <= 1.0x
plus noise (an elastic quantizer selects its step; nothing else changes).

    python benchmarks/quant_step.py [--space mbv3 mini] [--repeats 15] [--bits 4] [--mixed 2 3 4] [--tiny]
"""
import argparse
import os
import random
import statistics
import time
from dataclasses import replace

import torch

from oqat.core import machine
from oqat.nets.supernet import Supernet
from oqat.quant.lsq import guard_steps_, set_bits_, step_values
from oqat.quant.precision import Precision
from oqat.space.builtin import SPACES
from oqat.space.structure import SearchSpace
from oqat.train.trainer import keep_freed_memory, sandwich_step

SETTINGS = {"mbv3": (32, 128), "mini": (128, 28)}  # batch, resolution


def middle_arch(space: SearchSpace, r: int):
    mid = lambda choices: sorted(choices)[len(choices) // 2]  # noqa: E731
    n = space.num_blocks
    return replace(space.largest(), ks=(mid(space.kernel_sizes),) * n, e=(mid(space.expand_ratios),) * n,
                   d=(mid(space.depths),) * len(space.stages), r=r)


def build(space: SearchSpace, bits, x: torch.Tensor):
    """The supernet at `bits` (an int, or mixed widths) with its steps from data."""
    torch.manual_seed(0)
    net = Supernet(space, bits if isinstance(bits, tuple) else 32).train().to(memory_format=torch.channels_last)
    if isinstance(bits, int):
        set_bits_(net, bits)
    if bits != 32:
        net.init_steps_(x)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    return net, opt


def step(net, opt, archs, x, y) -> float:
    start = time.process_time()
    opt.zero_grad(set_to_none=True)
    sandwich_step(net, archs, x, y)
    before = step_values(net)
    opt.step()
    guard_steps_(net, before)
    return time.process_time() - start


def sandwich(space: SearchSpace, r: int, widths: tuple[int, ...]) -> list:
    """Largest, middle, smallest at r; with `widths`, each with per-block bits (most, drawn, fewest)."""
    archs = [replace(space.largest(), r=r), middle_arch(space, r), replace(space.smallest(), r=r)]
    if not widths:
        return archs
    rng, n = random.Random(0), space.num_blocks + 2
    space = space.with_bits(widths)
    return [space.check(replace(a, b=b)) for a, b in zip(archs, [(max(widths),) * n,
                                                                  tuple(rng.choice(widths) for _ in range(n)),
                                                                  (min(widths),) * n])]


def run(name: str, reference, measured, repeats: int) -> dict:
    """Interleaved sandwich steps of the supernet at `measured` bits against `reference` bits."""
    space = SPACES[name]
    batch, r = SETTINGS[name]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, space.in_channels, r, r, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, space.num_classes, (batch,), generator=gen)
    nets = {b: build(space, b, x) for b in (reference, measured)}
    archs = {b: sandwich(space, r, b if isinstance(b, tuple) else ()) for b in nets}
    times = {b: [] for b in nets}
    for b, (net, opt) in nets.items():
        step(net, opt, archs[b], x, y)  # warm-up (and, on CPU, the quantizer's one-off compile)
    for i in range(repeats):
        for b in (list(nets) if i % 2 == 0 else list(nets)[::-1]):
            times[b].append(step(*nets[b], archs[b], x, y))
    ref, q = times[reference], times[measured]
    return {f"{Precision.of(reference)} median CPU ms": statistics.median(ref) * 1e3,
            f"{Precision.of(measured)} median CPU ms": statistics.median(q) * 1e3,
            "ratio (medians)": statistics.median(q) / statistics.median(ref), "ratio (best)": min(q) / min(ref)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", nargs="+", default=["mbv3", "mini"], choices=list(SETTINGS))
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--mixed", type=int, nargs="+", help="widths of elastic bits, measured against the largest")
    p.add_argument("--tiny", action="store_true", help="mini only, 1 repeat")
    args = p.parse_args(argv)
    if args.tiny:
        args.space, args.repeats = ["mini"], 1
    reference, measured = (max(args.mixed), tuple(sorted(set(args.mixed)))) if args.mixed else (32, args.bits)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    keep_freed_memory()  # as `oqat train` does on CPU
    print(f"machine: {machine.summary()}")
    print(f"threads={torch.get_num_threads()} channels_last, sandwich = largest + middle + smallest, "
          f"{args.repeats} interleaved repeats; load average before: {os.getloadavg()[0]:.2f}")
    for name in args.space:
        res = run(name, reference, measured, args.repeats)
        batch, r = SETTINGS[name]
        print(f"{name:<5} batch {batch} r{r}: " + "  ".join(f"{k} {v:.3f}" if "ratio" in k else f"{k} {v:.0f}"
                                                          for k, v in res.items()))
    print(f"load average after: {os.getloadavg()[0]:.2f} (target: ratio <= {1.0 if args.mixed else 1.10:.2f})")


if __name__ == "__main__":
    main()
