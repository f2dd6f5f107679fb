"""Mixed against uniform precision at equal BitOPs, over runs of configs/fashion-mnist-mixed.yaml
(one per supernet seed): each run's table (results.json "mixed_vs_uniform": the best mixed
and the best uniform front member within each budget) and the goal's count.

    python benchmarks/mixed_vs_uniform.py runs/seed0 runs/seed1
"""
import argparse
import json

from oqat.files.layout import RunLayout


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders of configs/fashion-mnist-mixed.yaml")
    args = p.parse_args(argv)
    tables = []
    for run in args.runs:
        with open(RunLayout(run).results) as f:
            results = json.load(f)
        if not results.get("mixed_vs_uniform"):
            raise SystemExit(f"'{run}' has no mixed-precision front (run configs/fashion-mnist-mixed.yaml)")
        tables.append(results["mixed_vs_uniform"])
    def show(q):
        return "-" if q is None else f"{q['val_top1']:.2f} ({q['test_top1']:.2f}) at {q['bitops'] / 1e6:.1f} M"

    for run, rows in zip(args.runs, tables):
        print(f"\n{run}\n\n| budget (M BitOPs) | mixed: val (test) | uniform: val (test) "
              "| mixed - uniform: val (test) |")
        print("|---|---|---|---|")
        gaps = {"val": [], "test": []}
        for row in rows:
            m, u = row["mixed"], row["uniform"]
            for split in gaps if m and u else ():
                gaps[split].append(m[f"{split}_top1"] - u[f"{split}_top1"])
            gap = f"{gaps['val'][-1]:+.2f} ({gaps['test'][-1]:+.2f})" if m and u else "-"
            print(f"| {row['bitops'] / 1e6:.1f} | {show(m)} | {show(u)} | {gap} |")
        for split, g in gaps.items():
            print(f"{split}: mixed at or above uniform at {sum(x >= 0 for x in g)} of {len(g)} budgets, "
                  f">= +0.5 at {sum(x >= 0.5 for x in g)}; gaps {min(g):+.2f} to {max(g):+.2f}")

if __name__ == "__main__":
    main()
