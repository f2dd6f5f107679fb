"""How well the latency model (oqat/runtime/latency_model.py) predicts whole networks in oqat's runtime:
for each space, one model of a random-weight supernet with widths 2, 3 and 4 (one build covers
uniform and mixed networks), then `--n` random architectures per precision (each width
uniform, and mixed), each timed end to end (median of `--rounds` plain runs) against its
prediction. Prints the mean and worst relative error and Spearman's rank correlation.

    python benchmarks/latency_model_check.py [--spaces mini mbv3] [--n 30] [--threads 1] [--batch 1]
    python benchmarks/latency_model_check.py --tiny      # mini at 28 px, 2 bits, 3 archs: what the suite runs

mbv3 is modelled and checked at 160-224 px (`--mbv3-resolutions`), mini at all of 20-28 px.
"""
import argparse
import dataclasses
import random
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from oqat.core import machine
from oqat.core.machine import median_ms
from oqat.nets.supernet import Supernet
from oqat.runtime import binding, latency_model, model_file as runtime_file
from oqat.space.builtin import get_space


def check(space_name: str, precisions: list, n: int, resolutions: tuple[int, ...], threads: int, batch: int,
          rounds: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    space = get_space(space_name).with_bits((2, 3, 4))  # uniform networks are the mixed space's b = (w, ..., w)
    net = Supernet(space, space.bit_widths).eval()
    start = time.perf_counter()
    model = latency_model.build(space, space.bit_widths, threads, batch, rounds, resolutions)
    built = time.perf_counter() - start
    print(f"{space_name}: model of {len(model.parts)} parts built in {built:.0f} s ({model.describe()})")
    rng = random.Random(seed)
    rows = []
    for precision in precisions:
        pred, meas = [], []
        for _ in range(n):
            arch = space.sample(rng)
            b = arch.b if precision == "mixed" else (precision,) * len(arch.b)
            arch = space.check(dataclasses.replace(arch, r=rng.choice(resolutions), b=b))
            m = binding.Model(data=runtime_file.to_bytes(net.extract(arch, keep_bn=True).eval()), threads=threads)
            x = np.random.default_rng(0).random((batch, *m.input_shape), dtype=np.float32)
            meas.append(median_ms(lambda m=m, x=x: m(x), rounds, 2))
            pred.append(model.predict(arch))
        pred, meas = np.array(pred), np.array(meas)
        err = np.abs(pred - meas) / meas
        rho = spearmanr(pred, meas).statistic if n > 2 else float("nan")
        rows.append({"space": space_name, "precision": precision, "n": n, "ms": (meas.min(), meas.max()),
                     "mean": err.mean(), "bias": ((pred - meas) / meas).mean(), "worst": err.max(), "rho": rho})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--spaces", nargs="+", default=["mini", "mbv3"])
    p.add_argument("--precisions", nargs="+", default=["2", "3", "4", "mixed"])
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--mbv3-resolutions", default="160,176,192,208,224")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="mini at 28 px, 2 bits, 3 archs, 3 rounds")
    a = p.parse_args(argv)
    if a.tiny:
        a.spaces, a.precisions, a.n, a.rounds = ["mini"], ["2"], 3, 3
    precisions = [q if q == "mixed" else int(q) for q in a.precisions]
    print(machine.summary())
    rows = []
    for name in a.spaces:
        rs = tuple(int(r) for r in a.mbv3_resolutions.split(",")) if name == "mbv3" else get_space(name).resolutions
        rs = rs[-1:] if a.tiny else rs
        rows += check(name, precisions, a.n, rs, a.threads, a.batch, a.rounds, a.seed)
    print("\n| space | bits | archs | measured ms | mean error | worst error | mean signed | Spearman rho |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['space']} | {r['precision']} | {r['n']} | {r['ms'][0]:.3f}-{r['ms'][1]:.3f} | "
              f"{100 * r['mean']:.1f}% | {100 * r['worst']:.1f}% | {100 * r['bias']:+.1f}% | {r['rho']:.3f} |")


if __name__ == "__main__":
    main()
