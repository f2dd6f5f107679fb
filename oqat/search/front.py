"""What a search leaves: its result, the Pareto front and how many points it dominates, the
S/M/L family picked from it (the paper's OQATNets), and its files (pareto.json, evaluated.json,
pareto.png).
"""
from dataclasses import asdict, dataclass, field

import numpy as np
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from ..core import io
from ..files import records
from ..files.layout import SearchLayout
from ..nets.budget import Budget
from ..quant.precision import Precision


@dataclass
class SearchResult:
    metric: str  # the cost objective
    bits: int  # bit-width of the searched supernet
    budgets: list[Budget]  # constraints every front member meets
    front: list[dict]  # Pareto front by increasing cost: arch, costs, val_top1, test_top1
    evaluated: list[dict]  # every architecture evaluated on val, in evaluation order
    predicted: int = 0  # candidates scored by the predictor only (--predictor)
    seconds: float = 0.0  # wall time of the search (test evaluation included)
    settings: dict = field(default_factory=dict)  # population, generations, seed, ...

    @property
    def evaluations(self) -> int:
        return len(self.evaluated)


def pareto_indices(acc: np.ndarray, cost_: np.ndarray) -> list[int]:
    """Indices of the points not dominated in (max acc, min cost), by increasing cost."""
    if len(acc) == 0:
        return []
    front = NonDominatedSorting().do(np.stack([-acc, cost_], 1), only_non_dominated_front=True)
    return sorted(front.tolist(), key=lambda i: (cost_[i], -acc[i]))


def dominated(front: list[dict], points: list[dict], metric: str) -> int:
    """How many `points` some front member dominates (no costlier, no less accurate, one strictly)."""
    def beats(f, p):
        return (f[metric] <= p[metric] and f["val_top1"] >= p["val_top1"]
                and (f[metric] < p[metric] or f["val_top1"] > p["val_top1"]))
    return sum(any(beats(f, p) for f in front) for p in points)


FAMILY = ("S", "M", "L")


def family(front: list[dict], largest: dict, fractions: list[float], by: str = "bitops") -> dict[str, dict | None]:
    """The paper's OQATNets: for each budget, a fraction of the largest subnet's BitOPs (or of
    another metric `by`, e.g. its latency) (S, M, L by increasing budget), the most accurate
    front member (on val) within it; None where no front member fits."""
    out = {}
    for name, fraction in zip(FAMILY, fractions):
        within = [p for p in front if p[by] <= fraction * largest[by]]
        out[name] = max(within, key=lambda p: p["val_top1"]) if within else None
    return out


def recommended(points: list[dict], largest: dict, fractions: list[float],
                by: str = "bitops") -> dict[str, dict | None]:
    """A family from the fronts of several precisions (each point's "bits" names its own): for
    each budget, a fraction of the largest subnet's BitOPs and of its MACs (`by` "latency": of
    its predicted ms), the most accurate point (on val) within it that costs more than the
    smaller member: three distinct networks spanning the costs; None where none is left.
    BitOPs alone would let the 2-bit largest network be S and M at once, and it runs slower on
    a CPU than the 2-bit S: there the MACs, not the bits, set the time; a latency model prices
    the time itself."""
    limits = ("bitops", "macs") if by == "bitops" else (by,)
    out, floor = {}, -1.0
    for name, fraction in zip(FAMILY, fractions):
        within = [p for p in points if p[by] > floor and all(p[m] <= fraction * largest[m] for m in limits)]
        out[name] = max(within, key=lambda p: p["val_top1"]) if within else None
        floor = out[name][by] if out[name] else floor
    return out


def plot(result: SearchResult, path: str) -> None:
    """The front over every evaluated point, cost on a log axis, budgets as dashed lines."""
    from matplotlib.figure import Figure

    m = result.metric
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.scatter([p[m] for p in result.evaluated], [p["val_top1"] for p in result.evaluated], s=12,
               c="0.6", label=f"evaluated ({result.evaluations})")
    ax.plot([p[m] for p in result.front], [p["val_top1"] for p in result.front], "o-", c="C3", ms=5,
            drawstyle="steps-post", label=f"Pareto front ({len(result.front)})")
    for b in result.budgets:
        if b.metric == m:
            ax.axvline(b.limit, ls="--", c="k", lw=1, label=str(b))
    ax.set_xscale("log")
    ax.set_xlabel(f"{m} ({Precision.of(result.bits).label})")
    ax.set_ylabel("val top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    io.write_png(path, fig)


def write_outputs(result: SearchResult, out_dir: str) -> None:
    """pareto.json (front, settings), evaluated.json (every point), pareto.png."""
    summary = {"metric": result.metric, "bits": result.bits, "budgets": [asdict(b) for b in result.budgets],
               "evaluations": result.evaluations, "predicted": result.predicted,
               "seconds": round(result.seconds, 2), **result.settings, "front": result.front}
    out = SearchLayout(out_dir)
    records.write_search(out.pareto, out.evaluated, summary, result.evaluated)
    plot(result, out.plot)
