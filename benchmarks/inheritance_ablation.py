"""Bit inheritance, measured fairly: the 2-bit supernet of a finished `oqat run`
(stages ... -> 3 -> 2 bits) obtained four ways, each for every seed:

- inherit, steps doubled: the 3-bit supernet, every step x2 (the paper), then the 2-bit stage;
- inherit, steps from data: the same weights, LSQ steps re-initialised from data;
- scratch, same epochs: a new supernet trained at 2 bits for the 2-bit stage's epochs;
- scratch, chain's epochs: as many 2-bit epochs as the whole chain has epochs.

The 2-bit stage learns by in-place distillation in all four, also where the run's has a teacher.
Scratch runs take the best of `--lrs` (picked on the validation split with the first seed,
at the short length; the long runs use the same lr), with the run's warm-up and clipping; a
run that diverges takes the next lr of that ranking, and the table says which lr each used.
Seed 0 reuses the run's own stages up to 3 bits when the run was trained with seed 0;
other seeds train that chain again. Test top-1 of the largest, middle and smallest subnet
(BN recalibrated), mean and spread over seeds.

    python benchmarks/inheritance_ablation.py RUN_DIR [--seeds 0 1] [--lrs 0.05 0.1 0.2]

The stages from the first mixed one on are left out; `--tiny` trains one seed.
"""
import argparse
import dataclasses
import json
import os
import statistics

import torch

from oqat.config.settings import ExperimentConfig
from oqat.core import typed
from oqat.data.batches import eval_batches
from oqat.data.splits import load_splits
from oqat.files.checkpoints import load_supernet
from oqat.files.layout import RunLayout
from oqat.run.pipeline import run_stages
from oqat.space.arch import Arch
from oqat.train.evaluate import evaluate, prepare_subnet
from oqat.train.trainer import DivergedError, keep_freed_memory_on_cpu

VARIANTS = ("inherit, steps doubled", "inherit, steps from data", "scratch, same epochs", "scratch, chain's epochs")


def middle(space) -> Arch:
    n, pick = space.num_blocks, lambda xs: sorted(xs)[len(xs) // 2]
    return space.arch([pick(space.kernel_sizes)] * n, [pick(space.expand_ratios)] * n,
                      [pick(space.depths)] * len(space.elastic_stages), pick(space.resolutions))


def stages_run(cfg: ExperimentConfig, stages, seed: int, folder: str) -> str:
    """`stages` trained in `folder` with `seed` (resumable); the last supernet file."""
    run = dataclasses.replace(cfg, stages=stages, train=dataclasses.replace(cfg.train, seed=seed),
                              run=dataclasses.replace(cfg.run, dir=folder, quiet=True))
    return os.path.join(folder, run_stages(run)[-1]["supernet"])


def scores(path: str, split: str, calib: int) -> dict[str, float]:
    net, ckpt = load_supernet(path)
    data_cfg = ckpt["data"]
    splits = load_splits(data_cfg)
    archs = {"largest": net.space.largest(), "middle": middle(net.space), "smallest": net.space.smallest()}
    return {k: evaluate(prepare_subnet(net, a, data_cfg, splits, calib, 0),
                        eval_batches(getattr(splits, split), data_cfg))["top1"] for k, a in archs.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--lrs", type=float, nargs=3, default=[0.05, 0.1, 0.2])
    p.add_argument("--tiny", action="store_true", help="one seed (run it on a tiny run)")
    args = p.parse_args(argv)
    if args.tiny:
        args.seeds = args.seeds[:1]
    keep_freed_memory_on_cpu()  # it trains, as `oqat run` does
    torch.manual_seed(0)
    cfg = typed.load(ExperimentConfig, RunLayout(args.run_dir).config)
    mixed = next((i for i, s in enumerate(cfg.stages) if isinstance(s.bits, list)), len(cfg.stages))
    cfg = dataclasses.replace(cfg, stages=cfg.stages[:mixed])
    bits = [s.bits for s in cfg.stages]
    if len(bits) < 2 or bits[-2:] != [3, 2]:
        raise SystemExit("the run's stages (before a mixed one) must end 3 -> 2 bits")
    out = os.path.join(args.run_dir, "ablation")
    two = dataclasses.replace(cfg.stages[-1], teacher=None)  # in-place distillation: inheritance is what differs
    chain_epochs = sum(s.epochs for s in cfg.stages)
    calib = cfg.train.calib_images
    inherit = [dataclasses.replace(two, reinit_steps=False), dataclasses.replace(two, reinit_steps=True)]
    def scratch(lr, epochs):
        return [dataclasses.replace(two, lr=lr, epochs=epochs, init="scratch", reinit_steps=True)]

    # The scratch lr: the best of three on val (mean of the three subnets), first seed, short length.
    s0 = args.seeds[0]
    by_lr = {lr: statistics.mean(scores(stages_run(cfg, scratch(lr, two.epochs), s0,
                                                   os.path.join(out, f"seed{s0}", f"scratch-lr{lr:g}")),
                                        "val", calib).values()) for lr in args.lrs}
    lr = max(by_lr, key=by_lr.get)
    print("scratch lr on val (mean of largest, middle, smallest): "
          + ", ".join(f"{k:g}: {v:.2f}" for k, v in by_lr.items()) + f" -> {lr:g}")

    rows, lrs_used = {v: [] for v in VARIANTS}, {}
    for seed in args.seeds:
        folder = os.path.join(out, f"seed{seed}")
        if seed == cfg.train.seed:  # the run's own chain up to 3 bits
            three = RunLayout(args.run_dir).stage(len(bits) - 2, 3).supernet
        else:
            three = stages_run(cfg, cfg.stages[:-1], seed, os.path.join(folder, "chain"))
        for name, stage in zip(VARIANTS[:2], inherit):
            sub = os.path.join(folder, "inherit-reinit" if stage.reinit_steps else "inherit-doubled")
            # The 3-bit supernet as the chain's first stage (one epoch, never run: its file is there).
            link = RunLayout(sub).stage(0, 3).supernet
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if not os.path.exists(link):
                os.symlink(os.path.abspath(three), link)
            three_stage = dataclasses.replace(cfg.stages[-2], teacher=None)  # never trained here: its file is there
            rows[name].append(scores(stages_run(cfg, [three_stage, stage], seed, sub), "test", calib))
        for name, epochs, prefix in ((VARIANTS[2], two.epochs, "scratch"), (VARIANTS[3], chain_epochs, "scratch-long")):
            # A run that diverges takes the next lr in the validation ranking (and says so).
            for x in sorted(by_lr, key=by_lr.get, reverse=True):
                try:
                    path = stages_run(cfg, scratch(x, epochs), seed, os.path.join(folder, f"{prefix}-lr{x:g}"))
                    break
                except DivergedError as err:
                    print(f"{name}, seed {seed}, lr {x:g} diverged ({err}); trying the next lr")
            rows[name].append(scores(path, "test", calib))
            lrs_used.setdefault(name, []).append(x)

    print(f"2-bit supernets: test top-1 (%), mean ± spread/2 over seeds {args.seeds}; 2-bit stage "
          f"{two.epochs} epoch(s), chain {chain_epochs} epoch(s), scratch lr per seed {lrs_used}")
    print("| variant | largest | middle | smallest | mean |")
    print("|---|---|---|---|---|")
    summary = {}
    for name, runs in rows.items():
        cols = {k: [r[k] for r in runs] for k in ("largest", "middle", "smallest")}
        cols["mean"] = [statistics.mean(r.values()) for r in runs]
        summary[name] = {k: {"values": v, "mean": statistics.mean(v), "spread": max(v) - min(v)}
                         for k, v in cols.items()}
        print(f"| {name} | "
              + " | ".join(f"{s['mean']:.2f} ± {s['spread'] / 2:.2f}" for s in summary[name].values()) + " |")
    with open(os.path.join(out, "ablation.json"), "w") as f:
        json.dump({"seeds": args.seeds, "scratch_lr_by_val": by_lr, "scratch_lr": lr, "scratch_lrs_used": lrs_used,
                   "rows": summary}, f, indent=1)


if __name__ == "__main__":
    main()
