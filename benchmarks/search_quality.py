"""Search quality: does the NSGA-II front dominate random subnets of the same supernet?

    python benchmarks/search_quality.py RUN/supernet.pt [--population 16 --generations 4 ...] [--tiny]

Runs the search (val split only, no test evaluation), then scores `--random` uniformly
random subnets with the same calibration and validation images, and prints how many of
them the front dominates (no costlier in BitOPs and no less accurate, one strictly), the
front's accuracy margin over each at equal or lower BitOPs, the front size and the time.
"""
import argparse
import json
import sys
import time

import numpy as np

from oqat.config.settings import SearchConfig
from oqat.files.checkpoints import open_supernet
from oqat.nets.budget import Budget
from oqat.search import search
from oqat.search.front import dominated
from oqat.search.scoring import Scorer, sample_points


def margin(front: list[dict], point: dict, metric: str) -> float:
    """Best front val top-1 at no more than the point's cost, minus the point's (nan: none that cheap)."""
    cheaper = [f["val_top1"] for f in front if f[metric] <= point[metric]]
    return max(cheaper) - point["val_top1"] if cheaper else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--budget", action="append", default=[], help="METRIC<=VALUE, repeatable (default: none)")
    defaults = SearchConfig()  # the search `oqat search` and `oqat run` make
    p.add_argument("--population", type=int, default=defaults.population)
    p.add_argument("--generations", type=int, default=defaults.generations)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--random", type=int, default=20, help="random subnets to compare with")
    p.add_argument("--calib-images", type=int, default=defaults.calib_images)
    p.add_argument("--val-images", type=int, default=defaults.val_images)
    p.add_argument("--predictor", action="store_true")
    p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE", help="DataConfig override")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--tiny", action="store_true", help="a population of 4 for 1 generation, 2 random, 32 + 64 images")
    args = p.parse_args(argv)
    if args.tiny:
        args.population, args.generations, args.random, args.calib_images, args.val_images = 4, 1, 2, 32, 64
    net, data_cfg, splits = open_supernet(args.checkpoint, args.data)
    budgets = [Budget.parse(b) for b in args.budget]
    metric = budgets[0].metric if budgets else "bitops"
    cfg = SearchConfig(budgets, population=args.population, generations=args.generations, seed=args.seed,
                       calib_images=args.calib_images, val_images=args.val_images, predictor=args.predictor)
    result = search(net, data_cfg, splits, cfg, test=False,
                    log=lambda text: print(f"  {text}", file=sys.stderr, flush=True))
    start = time.time()
    # The search's own scoring settings (calibration subset seeded by the search seed): comparable numbers.
    scorer = Scorer(net, data_cfg, splits, args.calib_images, args.val_images, args.seed)
    randoms = sample_points(scorer, args.random, args.seed + 1)
    random_seconds = time.time() - start
    margins = [margin(result.front, r, metric) for r in randoms]
    summary = {
        "front_size": len(result.front), "evaluations": result.evaluations, "search_seconds": round(result.seconds, 1),
        "random": len(randoms), "dominated": dominated(result.front, randoms, metric),
        "random_seconds": round(random_seconds, 1),
        "median_margin": float(np.nanmedian(margins)) if not all(np.isnan(margins)) else None,
        "best_random_top1": max(r["val_top1"] for r in randoms),
        "best_front_top1": max(f["val_top1"] for f in result.front),
    }
    for f in result.front:
        print(f"  front  {f['arch']:<48} {metric} {f[metric]:>14,.0f}  val {f['val_top1']:6.2f}%")
    for r, m in zip(randoms, margins):
        print(f"  random {r['arch']:<48} {metric} {r[metric]:>14,.0f}  val {r['val_top1']:6.2f}%  "
              f"front margin {m:+.2f}")
    print(f"front of {summary['front_size']} architectures ({summary['evaluations']} evaluated) in "
          f"{summary['search_seconds']} s; it dominates {summary['dominated']} of {summary['random']} random "
          f"subnets at equal {metric} (median margin {summary['median_margin']:+.2f} points)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
