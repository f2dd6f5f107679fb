"""Images/s of the demo's training step (configs/fashion-mnist.yaml) at each stage's bits.

Runs `Trainer.train_step` (the sandwich of the demo config's train section: the largest, the
smallest and random subnets, in-place distillation, SGD) on the demo's data and batch for a few
steps per bit-width, after one warm-up step, and prints the median images per CPU second
of each (CPU time of this process: a shared machine's waiting left out), or with `--wall`
per second of wall time (what more threads buy; OMP_NUM_THREADS sets them). To
compare two checkouts side by side, alternate them in one shell loop, e.g.

    for i in 1 2 3; do for tree in /tmp/before $PWD; do
        PYTHONPATH=$tree python benchmarks/demo_rate.py --steps 6; done; done
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator

import torch

from oqat import config
from oqat.data import train_batches
from oqat.experiment import ExperimentConfig
from oqat.train import Trainer


def warm_trainer(config_path: str, bits: int, run_dir: str) -> tuple[Trainer, Iterator]:
    """A demo-config Trainer at `bits` with its steps initialised and one step taken, and
    the rest of epoch 0's batches."""
    cfg = config.load(ExperimentConfig, config_path, [f"run.dir={run_dir}", f"train.bits={bits}"])
    t = Trainer(cfg)
    t.net.train()
    batches = train_batches(t.splits.train, cfg.data, 0)
    x, y = next(batches)
    t.init_steps(x)
    t.train_step(x, y)  # warm-up
    return t, batches


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2])
    p.add_argument("--wall", action="store_true", help="wall time instead of this process's CPU time")
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "fashion-mnist.yaml"))
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rates, clock = {}, time.perf_counter if args.wall else time.process_time
    with tempfile.TemporaryDirectory() as tmp:
        for bits in args.bits:
            t, batches = warm_trainer(args.config, bits, tmp)
            times = []
            for t.step in range(1, args.steps + 1):
                x, y = next(batches)
                start = clock()
                t.train_step(x, y)
                times.append(clock() - start)
            rates[bits] = len(y) / statistics.median(times)
    print(f"{sys.modules['oqat'].__file__.rsplit('/oqat/', 1)[0]}: " +
          "  ".join(f"{b}-bit {r:.0f} img/s" for b, r in rates.items()) +
          f"{' (wall)' if args.wall else ''}  (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
