"""Where a demo training step goes: torch.profiler over a few steps of the demo's 4-bit
stage (configs/fashion-mnist.yaml), time grouped by kind of work.

Each op's self time goes to the group of its nearest ancestor (or itself) that has one:
convs, quantizers (LSQ forward/backward with everything they call), BN, activations,
slicing and kernel transforms, the optimizer; wall time the profiler sees in no op is Python
and framework overhead. Wall time (the profiler's clock): on a shared machine run it when quiet.

    python benchmarks/profile_step.py [--steps 4] [--bits 4] [--tiny]
"""
import argparse
import collections
import os
import tempfile
import time

import tiny  # benchmarks/ is on the path when a benchmark runs as a script
import torch
from demo_rate import warm_trainer
from torch.profiler import ProfilerActivity, profile

from oqat.config.settings import ExperimentConfig
from oqat.core import typed
from oqat.train.trainer import keep_freed_memory

GROUPS = [  # (group, substrings of op names), first match wins
    ("quantizers", ("_LSQFunction", "oqat_lsq", "::LSQ>")),  # the torch-ops path, the CPU kernel and its backward
    ("optimizer", ("Optimizer.", "clip_grad", "_foreach")),
    ("convs", ("convolution", "conv2d", "mkldnn_conv", "DepthwiseConv")),
    ("BN", ("batch_norm",)),
    ("activations", ("relu", "hardswish", "hardsigmoid", "threshold_backward", "sigmoid")),
    ("slicing / kernel transforms", ("slice", "linear", "addmm", "mm", "as_strided", "t_", "Transpose",
                                     "Reshape", "View", "Permute", "index")),
    ("loss / distillation", ("cross_entropy", "log_softmax", "nll_loss", "softmax")),
]


def group(name: str) -> str | None:
    return next((g for g, keys in GROUPS if any(k.lower() in name.lower() for k in keys)), None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "fashion-mnist.yaml"))
    p.add_argument("--tiny", action="store_true", help="1 step on tiny synthetic data")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps = 1
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    keep_freed_memory()  # its Trainer trains on the CPU, as `oqat train` does there
    with tempfile.TemporaryDirectory() as tmp:
        cfg = typed.load(ExperimentConfig, args.config, [f"run.dir={tmp}", *(tiny.DATA if args.tiny else [])])
        stage = next((i for i, s in enumerate(cfg.stages) if s.bits == args.bits), None)
        if stage is None:
            raise SystemExit(f"'{args.config}' has no {args.bits}-bit stage")
        t, batches = warm_trainer(cfg, stage)
        steps = [next(batches) for _ in range(args.steps)]
        wall = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for t.step, (x, y, index) in enumerate(steps, 1):
                t.train_step(x, y, t.teacher and t.teacher(x, index))
        wall = (time.perf_counter() - wall) / args.steps * 1e3
    totals = collections.Counter()
    for e in prof.events():
        node, g = e, None
        while node is not None and g is None:
            g, node = group(node.name), node.cpu_parent
        totals[g or "other ops"] += e.self_cpu_time_total / 1e3 / args.steps
    ops = sum(totals.values())
    print(f"demo step, {args.bits}-bit, batch {t.cfg.data.batch_size}, sandwich of {2 + t.cfg.train.sandwich_random}: "
          f"{wall:.0f} ms per step (profiled; {ops:.0f} ms inside ops)")
    for g, ms in totals.most_common():
        print(f"  {g:<30}{ms:8.1f} ms {100 * ms / wall:5.1f}%")
    print(f"  {'Python / framework overhead':<30}{wall - ops:8.1f} ms {100 * (wall - ops) / wall:5.1f}%")


if __name__ == "__main__":
    main()
