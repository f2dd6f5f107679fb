"""Images/s of the demo's training step (configs/fashion-mnist.yaml), stage by stage, and the
training time they predict on this machine.

Runs `Trainer.train_step` with each stage's own settings (bits, sandwich, elastic choices; a
stage taught by an earlier one gets a teacher of that stage's bits) on the demo's data and
batch for a few steps, after one warm-up step, and prints a one-line machine summary, the
median images per second of each stage (wall time; OMP_NUM_THREADS sets the threads), and
epochs x training images / rate: the training part of the demo's time here (the searches,
exports and report add a few minutes). With `--cpu` the rate is per CPU second of this
process (a shared machine's waiting left out). To compare two checkouts side by side,
alternate them in one shell loop, e.g.

    for i in 1 2 3; do for tree in /tmp/before $PWD; do
        PYTHONPATH=$tree python benchmarks/demo_rate.py --steps 6; done; done
"""
import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Iterator

import tiny
import torch

from oqat.config.settings import ExperimentConfig, stage_train_config
from oqat.core import machine, typed
from oqat.data.batches import train_batches
from oqat.files import checkpoints
from oqat.nets.supernet import Supernet
from oqat.train.trainer import Trainer, keep_freed_memory


def warm_trainer(cfg: ExperimentConfig, i: int) -> tuple[Trainer, Iterator]:
    """A Trainer of stage i of `cfg` (from scratch, and its teacher, if any, a fresh supernet of
    the teacher stage's bits: speed does not depend on weights) with its steps initialised and
    one step taken, and the rest of epoch 0's batches."""
    train_cfg = dataclasses.replace(stage_train_config(cfg, i), init_from=None)
    if train_cfg.teacher_file is not None:
        teacher = Supernet(cfg.model.space, cfg.stages[cfg.stages[i].teacher].bits)
        checkpoints.save_supernet(teacher, train_cfg.teacher_file)
    t = Trainer(dataclasses.replace(cfg, train=train_cfg))
    t.net.train()
    batches = train_batches(t.splits.train, cfg.data, 0, with_index=True)
    x, y, index = next(batches)
    t.init_steps(x)
    t.train_step(x, y, t.teacher and t.teacher(x, index))  # warm-up
    return t, batches


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--cpu", action="store_true", help="this process's CPU time instead of wall time")
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "fashion-mnist.yaml"))
    p.add_argument("--tiny", action="store_true", help="1 step per stage on tiny synthetic data")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps = 1
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))))
    keep_freed_memory()  # its Trainers train on the CPU, as `oqat train` does there
    print(f"machine: {machine.summary()}")
    clock, total = time.process_time if args.cpu else time.perf_counter, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        cfg = typed.load(ExperimentConfig, args.config, [f"run.dir={tmp}", *(tiny.DATA if args.tiny else [])])
        for i, stage in enumerate(cfg.stages):
            t, batches = warm_trainer(cfg, i)
            times = []
            for t.step in range(1, args.steps + 1):
                x, y, index = next(batches)
                start = clock()
                t.train_step(x, y, t.teacher and t.teacher(x, index))
                times.append(clock() - start)
            rate = len(y) / statistics.median(times)
            seconds = stage.epochs * len(t.splits.train) / rate
            total += seconds
            unit = "img/s (CPU)" if args.cpu else "img/s"
            print(f"stage {i} ({stage.bits}-bit, {stage.epochs} epoch(s)): {rate:.0f} {unit} -> {seconds:.0f} s",
                  flush=True)
    print(f"training: {total / 60:.1f} min predicted (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
