"""Mixed against uniform precision at equal BitOPs (or at equal latency), over runs of
configs/fashion-mnist-mixed.yaml (one per supernet seed): each run's table (results.json
"mixed_vs_uniform", or "mixed_vs_uniform_latency" where a latency model priced the fronts: the
best mixed and the best uniform front member within each budget) and the goal's count. With
`--measure`, each winner of a latency table is also timed end to end in oqat's runtime (batch 1,
1 thread, median of 30 runs): what the prediction stands for.

    python benchmarks/mixed_vs_uniform.py runs/seed0 runs/seed1 [--metric latency --measure]
"""
import argparse
import json
import os

import numpy as np

from oqat.core.machine import median_ms
from oqat.files.checkpoints import load_supernet
from oqat.files.layout import RunLayout
from oqat.nets.budget import LATENCY
from oqat.quant.precision import Precision
from oqat.runtime import binding, model_file
from oqat.space.arch import Arch


def measured_ms(run: str, results: dict, point: dict, cache: dict) -> float:
    """A front member's median ms in oqat's runtime, from its precision's final supernet."""
    key = next(k for k, front in results["fronts"].items() if any(p["arch"] == point["arch"] for p in front))
    path = next(os.path.join(run, s["supernet"]) for s in reversed(results["stages"])
                if Precision.of(s["bits"]).key == Precision.of(key).key)
    if path not in cache:
        cache[path] = load_supernet(path)[0].eval()
    net = cache[path]
    model = binding.Model(data=model_file.to_bytes(net.extract(Arch.parse(point["arch"], net.space), keep_bn=True)),
                          threads=1)
    x = np.random.default_rng(0).random((1, *model.input_shape), dtype=np.float32)
    return median_ms(lambda: model(x), 30, 5)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders of configs/fashion-mnist-mixed.yaml")
    p.add_argument("--metric", choices=["bitops", LATENCY], default="bitops")
    p.add_argument("--measure", action="store_true", help="time each latency table's winners in oqat's runtime")
    args = p.parse_args(argv)
    key = "mixed_vs_uniform" if args.metric == "bitops" else "mixed_vs_uniform_latency"
    for run in args.runs:
        with open(RunLayout(run).results) as f:
            results = json.load(f)
        if not results.get(key):
            raise SystemExit(f"'{run}' has no {key} table (a mixed stage; for latency, search.latency_model)")
        measure = args.measure and args.metric == LATENCY
        cache: dict = {}

        def show(q):
            if q is None:
                return "-"
            at = f"{q['bitops'] / 1e6:.1f} M" if args.metric == "bitops" else f"{q[LATENCY]:.3f} ms predicted"
            timed = f", {measured_ms(run, results, q, cache):.3f} measured" if measure else ""  # noqa: B023
            return f"{q['val_top1']:.2f} ({q['test_top1']:.2f}) at {at}{timed}"

        unit = "M BitOPs" if args.metric == "bitops" else "ms"
        print(f"\n{run}\n\n| budget ({unit}) | mixed: val (test) | uniform: val (test) | mixed - uniform: val (test) |")
        print("|---|---|---|---|")
        gaps = {"val": [], "test": []}
        for row in results[key]:
            m, u = row["mixed"], row["uniform"]
            for split in gaps if m and u else ():
                gaps[split].append(m[f"{split}_top1"] - u[f"{split}_top1"])
            gap = f"{gaps['val'][-1]:+.2f} ({gaps['test'][-1]:+.2f})" if m and u else "-"
            budget = row[args.metric] / 1e6 if args.metric == "bitops" else row[args.metric]
            print(f"| {budget:.{1 if args.metric == 'bitops' else 3}f} | {show(m)} | {show(u)} | {gap} |")
        for split, g in gaps.items():
            print(f"{split}: mixed at or above uniform at {sum(x >= 0 for x in g)} of {len(g)} budgets, "
                  f">= +0.5 at {sum(x >= 0.5 for x in g)}; gaps {min(g):+.2f} to {max(g):+.2f}")


if __name__ == "__main__":
    main()
