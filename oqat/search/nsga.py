"""Pareto search of a trained supernet: NSGA-II (pymoo) over architectures, validation
top-1 against a cost metric, under budgets such as `bitops<=2e8`.

The genome is one choice index per field of an `Arch` (kernel and expand per block, depth
per elastic stage, resolution); a repair maps it to its canonical form (genes of blocks beyond
a stage's depth reset, as `space.check` does), so equal networks have equal genomes and pymoo's
duplicate elimination applies. Costs are analytical, so a candidate over budget is never
evaluated at all (NSGA-II ranks infeasible candidates by constraint violation alone). Only the
validation split is looked at while searching; the final front alone is then scored on the test split.
"""
import math
import random
import time
from collections.abc import Callable

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.evaluator import Evaluator
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.operators.crossover.ux import UniformCrossover
from pymoo.problems.static import StaticProblem

from ..config.settings import SearchConfig
from ..core import faults
from ..data.config import DataConfig
from ..data.splits import Splits
from ..nets.budget import LATENCY, Budget, check_metric
from ..nets.supernet import Supernet
from ..runtime.latency_model import LatencyModel
from ..space.arch import Arch
from ..space.structure import SearchSpace
from .front import SearchResult, pareto_indices
from .predictor import Predictor
from .scoring import CostMetrics, Scorer


def choices(space: SearchSpace) -> list[tuple[int, ...]]:
    """The allowed values of each gene: ks per block, e per block, d per elastic stage, r, and
    with elastic bits b per block (first block, elastic blocks, head)."""
    n, b = space.num_blocks, space.bit_widths
    return [space.kernel_sizes] * n + [space.expand_ratios] * n + \
        [space.depths] * len(space.elastic_stages) + [space.resolutions] + ([b] * (n + 2) if b else [])


def encode(arch: Arch, space: SearchSpace) -> np.ndarray:
    values = list(arch.ks) + list(arch.e) + list(arch.d) + [arch.r] + list(arch.b)
    return np.array([c.index(v) for c, v in zip(choices(space), values)])


def decode(x: np.ndarray, space: SearchSpace) -> Arch:
    v = [c[int(i)] for c, i in zip(choices(space), np.asarray(x).round().astype(int))]
    n, nd = space.num_blocks, len(space.elastic_stages)
    return space.arch(ks=v[:n], e=v[n:2 * n], d=v[2 * n:2 * n + nd], r=v[2 * n + nd], b=v[2 * n + nd + 1:])


class _Canonical(Repair):
    def _do(self, problem, X, **kwargs):
        return np.array([encode(decode(x, problem.space), problem.space) for x in X])


class _FeasibleSampling(Sampling):
    """The smallest and (within budget) the largest architecture, which anchor the two ends
    of the front, then uniform ones, redrawn (a bounded number of times) while over budget."""

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        rng = random.Random(int(random_state.integers(2**63)))
        space = problem.space
        out = [encode(a, space) for a in (space.smallest(), space.largest()) if problem.feasible(a)][:n_samples]
        for _ in range(n_samples - len(out)):
            for _ in range(100):
                arch = space.sample(rng)
                if problem.feasible(arch):
                    break
            out.append(encode(arch, space))
        return np.array(out)


class _ResetMutation(Mutation):
    """Each gene is redrawn uniformly from its choices with probability `prob_var` (0.1, as
    OFA's evolution; pymoo's 1 / genes hardly explores, as genes of unused blocks do nothing)."""

    def __init__(self, prob_var: float = 0.1):
        super().__init__(prob_var=prob_var)

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        X = X.copy()
        mask = random_state.random(X.shape) < self.get_prob_var(problem, size=(len(X), 1))
        draws = random_state.integers(0, np.iinfo(np.int32).max, X.shape) % (problem.xu + 1)
        X[mask] = draws[mask]
        return X


class _ArchProblem(Problem):
    def __init__(self, space: SearchSpace, costs: CostMetrics, budgets: list[Budget]):
        sizes = np.array([len(c) for c in choices(space)])
        super().__init__(n_var=len(sizes), n_obj=2, n_ieq_constr=len(budgets), xl=0, xu=sizes - 1, vtype=int)
        self.space, self.costs, self.budgets = space, costs, budgets

    def violations(self, c: dict[str, float]) -> list[float]:
        # Relative to the limit, so budgets on metrics of different scales weigh alike. An
        # architecture absent from the latency table has no known latency: it meets no latency budget.
        return [min(c.get(b.metric, math.inf) / b.limit - 1.0, 1e9) for b in self.budgets]

    def feasible(self, arch: Arch) -> bool:
        return max(self.violations(self.costs(arch)), default=0.0) <= 0


def search(supernet: Supernet, data_cfg: DataConfig, splits: Splits, cfg: SearchConfig | None = None,
           latency: LatencyModel | dict[str, float] | None = None, pairs: list[tuple[Arch, float]] | None = None,
           test: bool = True, log: Callable[[str], None] = print) -> SearchResult:
    """NSGA-II over the part of `supernet`'s space it was trained on (`trained_space`: the
    fields its training held fixed stay at the largest's), with the settings of `cfg` (default:
    SearchConfig's, as `oqat search` and `oqat run` have them): maximise val top-1, minimise
    cfg.metric (default: the first budget's metric, else bitops), subject to cfg.budgets.
    cfg.generations offspring rounds follow the initial population. With cfg.predictor or
    `pairs`, candidates are scored by an accuracy predictor fitted on the real evaluations so
    far (and `pairs`); only those that reach the current front are evaluated for real, and the
    final front is real. `latency`: a latency model, which prices every architecture in ms for
    the latency metric and budgets; or a measured table ({arch string: ms}), whose entries within
    the trained part and the budgets are then all evaluated instead (latency is known for those
    only)."""
    start = time.time()
    cfg = cfg or SearchConfig()
    budgets, population, generations, seed = cfg.budgets, cfg.population, cfg.generations, cfg.seed
    metric, calib_images, val_images = cfg.metric, cfg.calib_images, cfg.val_images
    use_predictor = cfg.predictor or pairs is not None
    space = supernet.trained_space
    metric = metric or (budgets[0].metric if budgets else "bitops")
    costs = CostMetrics(space, supernet.bits, latency)
    for name in [metric] + [b.metric for b in budgets]:
        check_metric(name, latency is not None)
    costs.check(budgets)
    # Calibration subset seeded as `prepare_subnet(..., seed=seed)`: the front's numbers are reproducible.
    scorer = Scorer(supernet, data_cfg, splits, calib_images, val_images, seed)
    problem = _ArchProblem(space, costs, budgets)
    predictor, predicted, extra = None, set(), list(pairs or [])

    def refit():
        archs = extra + list(scorer.scores.items())
        return Predictor.fit([a for a, _ in archs], [s for _, s in archs], space) if len(archs) >= 8 else None

    def score(pop) -> None:
        F, G = [], []
        for x in pop.get("X"):
            arch = decode(x, space)
            c = costs(arch)
            G.append(problem.violations(c))
            if max(G[-1], default=0.0) > 0:
                # Never evaluated: NSGA-II ranks an infeasible candidate by its violation alone.
                F.append([0.0, c.get(metric, 0.0)])
            elif arch in scorer.scores or predictor is None:
                F.append([-scorer(arch), c[metric]])
            else:
                predicted.add(arch)
                F.append([-float(predictor.predict([arch])[0]), c[metric]])
        Evaluator().eval(StaticProblem(problem, F=np.array(F), G=np.array(G).reshape(len(F), -1)), pop)

    if isinstance(latency, dict) and LATENCY in (metric, *(b.metric for b in budgets)):
        # Latency is known for the table's architectures only, and a table is small: score them all.
        in_part = [space.check(text) for text in latency if not supernet.untrained(text)]
        for arch in in_part:
            if problem.feasible(arch):
                scorer(arch)
        log(f"latency table: {len(latency)} entries, {len(in_part)} in the trained part, "
            f"{len(scorer.scores)} within budget, all evaluated")
    else:
        algorithm = NSGA2(pop_size=population, sampling=_FeasibleSampling(), crossover=UniformCrossover(),
                          mutation=_ResetMutation(), repair=_Canonical(), eliminate_duplicates=True)
        algorithm.setup(problem, termination=("n_gen", generations + 1), seed=seed)
        if use_predictor:
            predictor = refit()
        gen = 0
        while algorithm.has_next():
            pop = algorithm.ask()
            score(pop)
            algorithm.tell(infills=pop)
            if use_predictor:  # confirm the current front by real evaluation, then refit
                for ind in algorithm.opt:
                    arch = decode(ind.X, space)
                    if arch not in scorer.scores and problem.feasible(arch):
                        ind.set("F", np.array([-scorer(arch), ind.F[1]]))
                predictor = refit()
            best = max(scorer.scores.values(), default=float("nan"))
            log(f"generation {gen}/{generations}: {len(scorer.scores)} evaluated, "
                f"{len(predicted - set(scorer.scores))} predicted only, best val top-1 {best:.2f}%")
            faults.pause_point("search-generation")
            gen += 1
    # Only candidates within budget are ever evaluated, so every evaluated point may be on the front.
    evaluated = [{"arch": a.to_str(), **costs(a), "val_top1": s} for a, s in scorer.scores.items()]
    idx = pareto_indices(np.array([p["val_top1"] for p in evaluated]), np.array([p[metric] for p in evaluated]))
    front = [dict(evaluated[i]) for i in idx]
    if test:
        for p in front:
            p["test_top1"] = scorer.test_top1(Arch.parse(p["arch"], supernet.space))
    settings = {"population": population, "generations": generations, "seed": seed, "calib_images": calib_images,
                "val_images": val_images, "predictor": use_predictor}
    return SearchResult(metric, supernet.bits, list(budgets), front, evaluated,
                        len(predicted - set(scorer.scores)), time.time() - start, settings)
