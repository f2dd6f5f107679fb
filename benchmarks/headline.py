"""The paper's headline comparison at our scale: the best 2-bit OQAT subnet of a run
against a hand-designed net of similar cost from the same space, trained alone at 2 bits
with LSQ for the same number of 2-bit epochs.

The hand-designed net is MobileNetV3-like: the same kernel, expand ratio and depth in
every stage, preferring the space's largest blocks, scaled (depth, resolution, then
blocks) to the BitOPs of the OQAT subnet.

    python benchmarks/headline.py runs/fashion-mnist [--bits 2]
"""
import argparse
import dataclasses
import itertools
import json
import math
import os

from oqat import config, data
from oqat.cost import cost
from oqat.evaluate import evaluate, prepare_subnet
from oqat.files import load_supernet
from oqat.experiment import ExperimentConfig
from oqat.space import Arch
from oqat.train import train


def hand_designed(space, target_bitops: float, bits: int) -> Arch:
    """The uniform architecture closest in BitOPs to the target, larger blocks first on ties."""
    best, key = None, None
    for k, e, d, r in itertools.product(space.kernel_sizes, space.expand_ratios, space.depths, space.resolutions):
        n = space.num_blocks
        arch = Arch(ks=[k] * n, e=[e] * n, d=[d] * len(space.stages), r=r, space=space.name)
        gap = abs(math.log(cost(arch, space, bits)["bitops"] / target_bitops))
        candidate = (round(gap, 2), -k * e, -r)
        if key is None or candidate < key:
            best, key = arch, candidate
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--bits", type=int, default=2)
    args = p.parse_args()
    cfg = config.load(ExperimentConfig, os.path.join(args.run_dir, "config.yaml"))
    with open(os.path.join(args.run_dir, "results.json")) as f:
        results = json.load(f)
    best = results["best"][str(args.bits)]
    epochs = sum(s.epochs for s in cfg.stages if s.bits == args.bits)
    lr = next(s.lr for s in cfg.stages if s.bits == args.bits) or cfg.train.lr
    supernet, ckpt = load_supernet(os.path.join(args.run_dir, results["stages"][-1]["supernet"]))
    data_cfg = ckpt["data"]
    space = supernet.space
    hand = hand_designed(space, best["bitops"], args.bits)
    folder = os.path.join(args.run_dir, "baseline", hand.to_str().replace(":", "_"))
    if not os.path.isfile(os.path.join(folder, "supernet.pt")):
        # From scratch at the target bits with LSQ step init, like the paper's 2-bit MobileNetV3.
        tcfg = dataclasses.replace(cfg.train, bits=args.bits, epochs=epochs, lr=lr, arch=hand.to_str(),
                                   init_from=None, reinit_steps=None)
        train(dataclasses.replace(cfg, train=tcfg, run=dataclasses.replace(cfg.run, dir=folder, quiet=True)))
    trained, _ = load_supernet(os.path.join(folder, "supernet.pt"))
    splits = data.load_splits(data_cfg)
    sub = prepare_subnet(trained, hand, data_cfg, splits, cfg.search.calib_images, 0)
    hand_top1 = evaluate(sub, data.eval_batches(splits.test, data_cfg))["top1"]
    hand_cost = cost(hand, space, args.bits)
    rows = [("OQAT best (" + best["arch"] + ")", best["test_top1"], best["bitops"], best["macs"]),
            ("hand-designed (" + hand.to_str() + ")", hand_top1, hand_cost["bitops"], hand_cost["macs"])]
    print(f"{args.bits}-bit, {epochs} epoch(s) at {args.bits} bits; test top-1 on {len(splits.test)} images")
    for name, top1, bitops, macs in rows:
        print(f"  {top1:6.2f}%  {bitops / 1e6:8.2f} M BitOPs  {macs / 1e6:6.2f} M MACs  {name}")
    print(f"  OQAT - hand-designed: {rows[0][1] - rows[1][1]:+.2f} points at "
          f"{100 * (rows[0][2] / rows[1][2] - 1):+.0f}% BitOPs")
    with open(os.path.join(args.run_dir, "baseline", "headline.json"), "w") as f:
        json.dump({"oqat": rows[0], "hand": rows[1], "epochs": epochs, "bits": args.bits}, f, indent=1)


if __name__ == "__main__":
    main()
