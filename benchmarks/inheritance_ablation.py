"""Bit inheritance ablation: is a 2-bit supernet better inherited (4 -> 3 -> 2, steps
doubled) than re-initialised (same inherited weights, LSQ steps from data) or trained
from scratch at 2 bits, with the same number of 2-bit epochs and the same seeds?

    python benchmarks/inheritance_ablation.py runs/fashion-mnist [--out runs/fashion-mnist/ablation]

Reads a finished `oqat run` directory whose stages end ... -> 3 -> 2 bits, trains the two
alternatives beside it, and prints the test top-1 of the largest, a middle and the
smallest subnet of each (BN recalibrated per subnet).
"""
import argparse
import dataclasses
import json
import os
import statistics
import sys

from oqat import config, data
from oqat.evaluate import evaluate, prepare_subnet
from oqat.files import load_supernet
from oqat.experiment import ExperimentConfig
from oqat.inherit import inherit_file
from oqat.space import Arch
from oqat.train import train


def middle(space) -> Arch:
    n, pick = space.num_blocks, lambda xs: sorted(xs)[len(xs) // 2]
    return Arch(ks=[pick(space.kernel_sizes)] * n, e=[pick(space.expand_ratios)] * n,
                d=[pick(space.depths)] * len(space.stages), r=pick(space.resolutions), space=space.name)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cfg = config.load(ExperimentConfig, os.path.join(args.run_dir, "config.yaml"))
    bits = [s.bits for s in cfg.stages]
    if len(bits) < 2 or bits[-1] != 2:
        sys.exit("the run's last stage must be 2-bit, after a higher-bit stage")
    last = len(bits) - 1
    stage = lambda i: os.path.join(args.run_dir, "stages", f"{i}-{bits[i]}bit")
    out = args.out or os.path.join(args.run_dir, "ablation")
    two = cfg.stages[-1]
    variants = {"inherit (steps x2 per bit)": os.path.join(stage(last), "supernet.pt")}
    for name, init, reinit in (("inherit, steps re-initialised", "reinit", True), ("scratch at 2 bits", None, None)):
        folder = os.path.join(out, init or "scratch")
        if init:
            init = os.path.join(folder, "inherited.pt")
            if not os.path.isfile(init):
                inherit_file(os.path.join(stage(last - 1), "supernet.pt"), 2, init, reinit_steps=True)
        if not os.path.isfile(os.path.join(folder, "supernet.pt")):
            tcfg = dataclasses.replace(cfg.train, bits=2, epochs=two.epochs, lr=two.lr or cfg.train.lr,
                                       init_from=init, reinit_steps=reinit)
            train(dataclasses.replace(cfg, train=tcfg, run=dataclasses.replace(cfg.run, dir=folder, quiet=True)))
        variants[name] = os.path.join(folder, "supernet.pt")
    rows = {}
    for name, path in variants.items():
        net, ckpt = load_supernet(path)
        data_cfg = ckpt["data"]
        splits = data.load_splits(data_cfg)
        archs = {"largest": net.space.largest(), "middle": middle(net.space), "smallest": net.space.smallest()}
        rows[name] = {k: evaluate(prepare_subnet(net, a, data_cfg, splits, cfg.search.calib_images, 0),
                                  data.eval_batches(splits.test, data_cfg))["top1"] for k, a in archs.items()}
    print(f"2-bit supernets, {two.epochs} epoch(s) at 2 bits each; test top-1 (%)")
    print(f"{'variant':<32}{'largest':>9}{'middle':>9}{'smallest':>9}{'mean':>8}")
    for name, r in rows.items():
        print(f"{name:<32}{r['largest']:>9.2f}{r['middle']:>9.2f}{r['smallest']:>9.2f}{statistics.mean(r.values()):>8.2f}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "ablation.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
