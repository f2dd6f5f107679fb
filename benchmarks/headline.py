"""The paper's headline at our scale: each OQATNet (S, M, L) of a finished `oqat run`
against the uniform MobileNetV3-like network of the same space with the highest BitOPs
within the same budget, trained alone.

OQAT's subnet is the run's family member as it is: taken from the supernet, BN
recalibrated, not retrained (one training for all three). The baseline has one kernel,
expand ratio and depth everywhere; it is trained alone, on labels (no teacher, where the run's
stages have one), with LSQ through the run's own stage sequence (same bit-widths, epochs,
lr and inheritance per stage), once
per seed. Both are scored on the whole test split. With `--distill`, the baselines keep the
run's stage teachers instead: a stage taught by an earlier stage learns from the baseline's own
network of that stage (e.g. the 2-bit one from its full-precision self), the usual
distillation baseline for QAT. A run trained under torchrun has its baselines trained the same
way by launching this script under torchrun:

    [torchrun --standalone --nproc_per_node 2] benchmarks/headline.py RUN_DIR [--bits 2] [--seeds 0 1] [--distill]

The baselines go through the run's stages up to its last stage of `--bits` (a mixed stage after
it is left out); `--tiny` trains one seed.
"""
import argparse
import dataclasses
import itertools
import json
import os
import statistics

import torch

from oqat.config.settings import ExperimentConfig
from oqat.core import distributed, typed
from oqat.data.batches import eval_batches
from oqat.data.splits import load_splits
from oqat.files.checkpoints import load_supernet
from oqat.files.layout import RunLayout
from oqat.nets.cost import arch_metrics
from oqat.run.pipeline import run_stages
from oqat.space.arch import Arch
from oqat.space.structure import SearchSpace
from oqat.train.evaluate import evaluate, prepare_subnet
from oqat.train.trainer import keep_freed_memory_on_cpu


def uniform_within(space: SearchSpace, budget: float, bits: int) -> Arch:
    """The uniform architecture (one k, e, d everywhere) with the highest BitOPs <= budget."""
    n, stages = space.num_blocks, len(space.elastic_stages)
    archs = [space.arch([k] * n, [e] * n, [d] * stages, r)
             for k, e, d, r in itertools.product(space.kernel_sizes, space.expand_ratios, space.depths,
                                                 space.resolutions)]
    within = [(arch_metrics(a, space, bits)["bitops"], a.to_str(), a) for a in archs]
    within = [w for w in within if w[0] <= budget]
    if not within:
        raise SystemExit(f"no uniform architecture within {budget:g} BitOPs")
    return max(within)[2]


def train_alone(cfg: ExperimentConfig, arch: Arch, seed: int, folder: str, d: distributed.Dist,
                distill: bool = False) -> str:
    """The config's stages with only `arch` trained (no sandwich; labels, or with `distill` its
    stages' teachers, its own earlier stages); the last supernet file."""
    tcfg = dataclasses.replace(cfg.train, arch=arch.to_str(), seed=seed, teacher_file=None)
    stages = cfg.stages if distill else [dataclasses.replace(s, teacher=None) for s in cfg.stages]
    alone = dataclasses.replace(cfg, train=tcfg, stages=stages,
                                run=dataclasses.replace(cfg.run, dir=folder, quiet=True))
    stages = run_stages(alone, d)
    return os.path.join(folder, stages[-1]["supernet"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--distill", action="store_true", help="baselines learn from the run's stage teachers (their own)")
    p.add_argument("--tiny", action="store_true", help="one seed (run it on a tiny run)")
    args = p.parse_args(argv)
    if args.tiny:
        args.seeds = args.seeds[:1]
    keep_freed_memory_on_cpu()  # it trains baselines, as `oqat run` does
    torch.manual_seed(0)
    run = RunLayout(args.run_dir)
    cfg = typed.load(ExperimentConfig, run.config)
    last = max((i for i, s in enumerate(cfg.stages) if s.bits == args.bits), default=None)
    if last is None:
        raise SystemExit(f"the run has no {args.bits}-bit stage")
    cfg = dataclasses.replace(cfg, stages=cfg.stages[:last + 1])
    with open(run.results) as f:
        results = json.load(f)
    family = results["family"][str(args.bits)]
    supernet, ckpt = load_supernet(os.path.join(args.run_dir, results["stages"][last]["supernet"]))
    data_cfg = ckpt["data"]
    space, splits = supernet.space, load_splits(data_cfg)
    largest = arch_metrics(space.largest(), space, args.bits)["bitops"]
    nets = [(name, member, fraction * largest, uniform_within(space, fraction * largest, args.bits))
            for (name, member), fraction in zip(family.items(), cfg.search.family)]
    trained = {}
    with distributed.group() as d:  # under torchrun (as the run was) every rank trains; rank 0 scores
        for _, _, _, base in nets:
            for seed in args.seeds:
                name = f"{base.to_str().replace(':', '_')}-seed{seed}{'-distill' if args.distill else ''}"
                trained[base, seed] = train_alone(cfg, base, seed, os.path.join(args.run_dir, "baseline", name), d,
                                                  args.distill)
    if not d.main:
        return
    rows = []
    for name, member, budget, base in nets:
        tops = []
        for seed in args.seeds:
            net, _ = load_supernet(trained[base, seed])
            sub = prepare_subnet(net, base, data_cfg, splits, cfg.train.calib_images, 0)
            tops.append(evaluate(sub, eval_batches(splits.test, data_cfg))["top1"])
        rows.append({"net": name, "budget_bitops": budget,
                     "oqat": None if member is None
                     else {k: member[k] for k in ("arch", "bitops", "macs", "test_top1")},
                     "baseline": {"arch": base.to_str(), "bitops": arch_metrics(base, space, args.bits)["bitops"],
                                  "macs": arch_metrics(base, space, args.bits)["macs"], "seeds": args.seeds,
                                  "test_top1": tops, "mean": statistics.mean(tops),
                                  "spread": max(tops) - min(tops)}})
    epochs = " -> ".join(f"{'fp' if s.bits == 32 else s.bits}:{s.epochs}" for s in cfg.stages)
    print(f"{args.bits}-bit, test top-1 on {len(splits.test)} images; stages (bits:epochs) {epochs}; "
          f"baseline seeds {args.seeds}, {'distilled from their stage teachers' if args.distill else 'on labels'}")
    print("| net | budget (M BitOPs) | OQAT subnet | BitOPs (M) | test top-1 | uniform baseline | BitOPs (M) "
          "| test top-1 (mean ± spread/2) | OQAT - baseline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, b = r["oqat"], r["baseline"]
        oqat = (("none", "-", float("nan")) if o is None
                else (f"`{o['arch']}`", f"{o['bitops'] / 1e6:.1f}", o["test_top1"]))
        print(f"| {r['net']} | {r['budget_bitops'] / 1e6:.1f} | {oqat[0]} | {oqat[1]} | {oqat[2]:.2f} | "
              f"`{b['arch']}` | {b['bitops'] / 1e6:.1f} | {b['mean']:.2f} ± {b['spread'] / 2:.2f} | "
              f"{oqat[2] - b['mean']:+.2f} |")
    out = os.path.join(args.run_dir, "baseline", f"headline{'-distill' if args.distill else ''}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"bits": args.bits, "stages": typed.to_dict(cfg)["stages"], "distill": args.distill, "rows": rows},
                  f, indent=1)


if __name__ == "__main__":
    main()
