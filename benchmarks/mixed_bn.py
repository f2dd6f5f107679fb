"""BN in a mixed-precision supernet: each subnet's own statistics against per-width statistics.

oqat keeps one set of BN layers for every width and recalibrates each subnet's statistics
before it is scored or exported. The alternative is BN statistics kept per width: here, the
statistics of the largest subnet at each uniform width, a block of a mixed subnet reading
those of its width (as separate BN layers per width would hold at the end of training; in
training, BN normalises with the batch's own statistics either way). For random subnets
of the trained space, val top-1 with each, side by side.

    python benchmarks/mixed_bn.py runs/fashion-mnist/stages/4-mixed234/supernet.pt [--subnets 20] [--tiny]
"""
import argparse
import random
import statistics
from dataclasses import replace

import torch

from oqat.core import machine
from oqat.data.batches import calib_batches, eval_batches
from oqat.data.splits import subset
from oqat.files import checkpoints
from oqat.nets.calibrate import recalibrate_bn
from oqat.train.evaluate import evaluate


def bn_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("supernet", help="a mixed-precision supernet file")
    p.add_argument("--subnets", type=int, default=20)
    p.add_argument("--calib-images", type=int, default=1000)
    p.add_argument("--val-images", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="2 subnets, 32 + 64 images")
    args = p.parse_args(argv)
    if args.tiny:
        args.subnets, args.calib_images, args.val_images = 2, 32, 64
    net, cfg, splits = checkpoints.open_supernet(args.supernet)
    if not net.space.bit_widths:
        raise SystemExit(f"'{args.supernet}' is a {net.bits}-bit supernet; this compares BN in mixed-precision ones")
    print(f"machine: {machine.summary()}")
    space = net.trained_space
    val = subset(splits.val, min(args.val_images, len(splits.val)), 0)

    def calib(r):
        return calib_batches(splits.train, cfg, args.calib_images, args.seed, r)

    # Per-width statistics: the largest subnet at each width, recalibrated in the supernet itself.
    per_width, largest = {}, space.largest()
    for w in space.bit_widths:
        net.train()
        net.set_arch(replace(largest, b=(w,) * len(largest.b)))
        recalibrate_bn(net, calib(largest.r))
        per_width[w] = bn_state(net)
    net.eval()
    archs = space.sample_distinct(random.Random(args.seed), args.subnets)
    gaps = []
    for arch in archs:
        own = evaluate(net.extract(arch, calib(arch.r)), eval_batches(val, cfg, arch.r))["top1"]
        sub = net.extract(arch, keep_bn=True)
        widths = [arch.b[0]] + [arch.b[i] for i, _, _ in net.space.active_blocks(arch)] + [arch.b[-1]]
        state = sub.state_dict()
        for w in set(widths):  # each block's statistics from its width's, sliced to its channels
            net.load_state_dict(per_width[w], strict=False)
            of_w = net.extract(arch, keep_bn=True).state_dict()
            for prefix in _prefixes(sub, widths, w):
                state.update({k: v for k, v in of_w.items()
                              if k.startswith(prefix) and k.endswith(("running_mean", "running_var"))})
        sub.load_state_dict(state)
        width = evaluate(sub.eval(), eval_batches(val, cfg, arch.r))["top1"]
        gaps.append(own - width)
        print(f"{arch}  own statistics {own:.2f}  per-width statistics {width:.2f}  gap {own - width:+.2f}")
    print(f"{len(archs)} subnets, val top-1 on {len(val)} images: own - per-width statistics, "
          f"mean {statistics.mean(gaps):+.2f}, median {statistics.median(gaps):+.2f}, "
          f"min {min(gaps):+.2f}, max {max(gaps):+.2f} points")


def _prefixes(sub, widths, w) -> list[str]:
    """State-dict prefixes of the subnet's parts that run at width w: the stem (with the first
    block's), each block, the head convs (with the head's)."""
    names = ["stem."] + [f"blocks.{j}." for j in range(len(sub.blocks))]
    out = [n for n, width in zip(names, widths[:-1]) if width == w]
    return out + ([f"{h.name}." for h in sub.space.head] if widths[-1] == w else [])


if __name__ == "__main__":
    main()
