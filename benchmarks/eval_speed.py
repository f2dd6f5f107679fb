"""Subnet evaluation (extract + BN recalibration + validation) against a plain inference pass.

The search, the analysis, the training's validation and the export all evaluate a subnet
the same way: extract it from the supernet, recalibrate its BN statistics on a fixed
subset of training images, then run the validation images. This times that path against a
plain inference pass of the already extracted subnet over the same images (the
calibration ones, then the validation ones), interleaved in one process, for the largest,
a random and the smallest subnet of a 4-bit `mini` supernet (steps set from data) on
Fashion-MNIST (synthetic images of the same size where it is absent). Times are this
process's CPU time (a shared machine's waiting left out). Target: <= 1.2x.

    python benchmarks/eval_speed.py [--calib 500] [--val 2000] [--repeats 7] [--tiny]
"""
import argparse
import os
import random
import statistics
import time

import torch

from oqat.data.batches import calib_batches, eval_batches
from oqat.data.config import DataConfig
from oqat.data.splits import load_splits
from oqat.nets.supernet import Supernet
from oqat.space.builtin import MINI
from oqat.train.evaluate import evaluate, inputs


def plain_pass(net, batches, r: int) -> None:
    with torch.inference_mode():
        for x, _ in batches:
            net(inputs(net, x, r))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", type=int, default=500)
    p.add_argument("--val", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tiny", action="store_true", help="1 repeat of 32 + 64 synthetic images")
    args = p.parse_args(argv)
    if args.tiny:
        args.calib, args.val, args.repeats = 32, 64, 1
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = DataConfig(val_size=args.val)
    if args.tiny or not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        cfg = DataConfig(name="synthetic", val_size=args.val, synthetic_train=args.val + args.calib + 1)
    splits = load_splits(cfg)
    calib = calib_batches(splits.train, cfg, args.calib, 0)
    val = list(eval_batches(splits.val, cfg))
    torch.manual_seed(0)
    supernet = Supernet(MINI.with_data(splits.in_channels, splits.num_classes), 4).eval()
    supernet.init_steps_(torch.cat([x for x, _ in calib]))
    archs = {"largest": MINI.largest(), "random": MINI.sample(random.Random(0)), "smallest": MINI.smallest()}
    print(f"threads={torch.get_num_threads()} data={cfg.name} calib={args.calib} (batch {cfg.batch_size}) "
          f"val={args.val} (batch {cfg.eval_batch_size}), {args.repeats} interleaved repeats; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    ratios = []
    for name, arch in archs.items():
        net = supernet.extract(arch, calib)
        times = {"plain": [], "eval": []}
        for i in range(args.repeats + 1):  # the first round warms up
            for kind in (("plain", "eval") if i % 2 == 0 else ("eval", "plain")):
                start = time.process_time()
                if kind == "plain":
                    plain_pass(net, calib + val, arch.r)
                else:
                    evaluate(supernet.extract(arch, calib), val)
                if i:
                    times[kind].append(time.process_time() - start)
        plain, full = statistics.median(times["plain"]), statistics.median(times["eval"])
        ratios.append(full / plain)
        print(f"{name:<9} {arch}: plain pass {plain * 1e3:.0f} CPU ms, evaluation {full * 1e3:.0f} CPU ms, "
              f"ratio {full / plain:.3f} (best {min(times['eval']) / min(times['plain']):.3f})")
    print(f"load average after: {os.getloadavg()[0]:.2f}; worst ratio {max(ratios):.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
