"""Images/s of the supernet training step: the 4-bit sandwich step against a plain
full-precision step of the largest subnet, on the mini space at the demo's settings.

Both run through `Trainer.train_step` on the same synthetic Fashion-MNIST-sized batches
(28 px, batch 128), interleaved so that machine noise hits them alike. The sandwich step
forwards and backwards 2 + sandwich_random subnets, so it is expected to be several times
slower per image than one plain step; the ratio shows what the sandwich rule costs.

    python benchmarks/train_throughput.py [--iters 5] [--batch 128] [--random 2] [--tiny]
"""
import argparse
import statistics
import tempfile
import time

import torch

from oqat.config.settings import ExperimentConfig
from oqat.core import typed
from oqat.data.batches import train_batches
from oqat.train.trainer import Trainer, keep_freed_memory


def trainer(folder: str, overrides: list[str]) -> Trainer:
    cfg = typed.load(ExperimentConfig, None, [f"run.dir={folder}", *overrides])
    t = Trainer(cfg)
    t.net.train()
    return t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--random", type=int, default=2, help="random subnets per sandwich step")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--tiny", action="store_true", help="1 step of batch 16, 1 random subnet")
    args = p.parse_args(argv)
    if args.tiny:
        args.iters, args.batch, args.random = 1, 16, 1
    keep_freed_memory()  # its Trainers train on the CPU, as `oqat train` does there
    data = ["data.name=synthetic", "data.val_size=64", f"data.synthetic_train={args.batch * 4 + 64}",
            f"data.batch_size={args.batch}"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            f"sandwich {args.bits}-bit (2+{args.random} subnets)": trainer(
                tmp, [*data, f"train.bits={args.bits}", f"train.sandwich_random={args.random}"]),
            # Largest only at the largest resolution: sandwich_random=0 with the smallest dropped.
            "plain fp32, largest subnet": trainer(tmp, [*data, "train.bits=32", "train.sandwich_random=0"]),
        }
        plain = runs["plain fp32, largest subnet"]
        largest = plain.space.largest()
        plain.archs = lambda step: [largest]
        x, y = next(iter(train_batches(plain.splits.train, plain.cfg.data, 0)))
        for t in runs.values():
            if t.cfg.train.bits != 32:
                t.init_steps(x)
            t.train_step(x, y)  # warm-up
        times = {name: [] for name in runs}
        for i in range(args.iters):
            for name, t in runs.items():
                t.step = i  # the sandwich draws its resolution and subnets per step
                start = time.perf_counter()
                t.train_step(x, y)
                times[name].append(time.perf_counter() - start)
    print(f"threads={torch.get_num_threads()} batch={args.batch} mini space, synthetic 28 px, "
          f"median of {args.iters} steps")
    rates = {}
    for name, ts in times.items():
        rates[name] = args.batch / statistics.median(ts)
        print(f"  {name:<36} {rates[name]:8.1f} img/s  ({statistics.median(ts) * 1e3:.0f} ms/step)")
    a, b = rates.values()
    print(f"  plain / sandwich: {b / a:.2f}x")


if __name__ == "__main__":
    main()
