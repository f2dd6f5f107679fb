"""Costing speed: seconds to cost random architectures of the mbv3 space (`arch_metrics` at 4
bits), the search's hot path. Block costs are memoised, so 10,000 take well under a second;
tests/test_cost.py checks the memoisation by its work, this times it.

    python benchmarks/cost_speed.py [--archs 10000]
"""
import argparse
import random
import time

from oqat.core import machine
from oqat.nets import cost
from oqat.space.builtin import MBV3


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", type=int, default=10_000)
    p.add_argument("--tiny", action="store_true", help="100 architectures")
    args = p.parse_args(argv)
    n = 100 if args.tiny else args.archs
    rng = random.Random(3)
    archs = [MBV3.sample(rng) for _ in range(n)]
    cost._block_costs.cache_clear()  # from cold memos, as a fresh search starts
    start = time.perf_counter()
    for arch in archs:
        cost.arch_metrics(arch, "mbv3", 4)
    elapsed = time.perf_counter() - start
    print(f"machine: {machine.summary()}")
    print(f"costed {n:,} mbv3 archs in {elapsed:.3f} s")
    return elapsed


if __name__ == "__main__":
    main()
