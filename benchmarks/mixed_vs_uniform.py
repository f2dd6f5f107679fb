"""Mixed against uniform precision at equal BitOPs, over runs of configs/fashion-mnist-mixed.yaml
(one per supernet seed): each run's table (results.json "mixed_vs_uniform": the best mixed
and the best uniform front member within each budget) and the goal's count.

    python benchmarks/mixed_vs_uniform.py runs/seed0 runs/seed1
"""
import argparse
import json

from oqat.layout import RunLayout


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders of configs/fashion-mnist-mixed.yaml")
    args = p.parse_args()
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
        print(f"\n{run}\n\n| budget (M BitOPs) | mixed: val (test) | uniform: val (test) | mixed - uniform (val) |")
        print("|---|---|---|---|")
        gaps = []
        for row in rows:
            m, u = row["mixed"], row["uniform"]
            gap = m["val_top1"] - u["val_top1"] if m and u else None
            gaps += [] if gap is None else [gap]
            print(f"| {row['bitops'] / 1e6:.1f} | {show(m)} | {show(u)} | {'-' if gap is None else f'{gap:+.2f}'} |")
        print(f"\nmixed at or above uniform at {sum(g >= 0 for g in gaps)} of {len(gaps)} budgets, "
              f">= +0.5 at {sum(g >= 0.5 for g in gaps)}; val gaps {min(gaps):+.2f} to {max(gaps):+.2f}")

if __name__ == "__main__":
    main()
