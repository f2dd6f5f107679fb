"""Accuracy predictor: ridge regression from an architecture's encoding to its val top-1.

Features: one-hot kernel and expand ratio of every block (all zero for a block beyond its
stage's depth), one-hot depth per stage, one-hot resolution, and log MACs. A closed-form
ridge on standardised features is enough for the few hundred pairs a search gathers,
fits in milliseconds, and ranks well (Kendall tau is what pre-screening needs).
"""
import math
import random
from dataclasses import dataclass

import numpy as np
from scipy.stats import kendalltau

from ..nets.cost import arch_metrics
from ..space.arch import Arch
from ..space.structure import SearchSpace


def features(arch: Arch, space: SearchSpace) -> np.ndarray:
    parts = []
    active = {i - 1 for i, _, _ in space.active_blocks(arch)[1:]}  # elastic block indices
    for i in range(space.num_blocks):
        on = i in active
        parts += [on and arch.ks[i] == k for k in space.kernel_sizes]
        parts += [on and arch.e[i] == e for e in space.expand_ratios]
    for d in arch.d:
        parts += [d == v for v in space.depths]
    parts += [arch.r == r for r in space.resolutions]
    if arch.b:  # each width of the first block, each active block and the head
        parts += [(i - 1 in active or i in (0, len(arch.b) - 1)) and arch.b[i] == w
                  for i in range(len(arch.b)) for w in space.bit_widths]
        parts.append(math.log(arch_metrics(arch, space)["bitops"]))
    parts.append(math.log(arch_metrics(arch, space, 32)["macs"]))
    return np.array(parts, dtype=np.float64)


@dataclass
class Predictor:
    space: SearchSpace  # the space whose architectures it encodes
    mean: np.ndarray  # feature means of the training pairs
    scale: np.ndarray  # feature standard deviations (1 where constant)
    weights: np.ndarray  # ridge weights on standardised features
    bias: float  # mean val top-1 of the training pairs

    @classmethod
    def fit(cls, archs: list[Arch], top1: list[float], space: SearchSpace, alpha: float = 1.0) -> "Predictor":
        if len(archs) < 2:
            raise ValueError(f"the predictor needs at least 2 (arch, val top-1) pairs, got {len(archs)}")
        X = np.stack([features(a, space) for a in archs])
        y = np.asarray(top1, dtype=np.float64)
        mean, scale = X.mean(0), X.std(0)
        scale[scale == 0] = 1.0
        Z = (X - mean) / scale
        # Dual form: (Z Z^T + alpha I)^-1 y, cheaper than the primal when pairs < features.
        coef = np.linalg.solve(Z @ Z.T + alpha * np.eye(len(Z)), y - y.mean())
        return cls(space, mean, scale, Z.T @ coef, float(y.mean()))

    def predict(self, archs: list[Arch]) -> np.ndarray:
        X = np.stack([features(a, self.space) for a in archs])
        return (X - self.mean) / self.scale @ self.weights + self.bias


def quality(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Kendall tau (ranking agreement) and RMSE (top-1 points) of predictions."""
    tau = kendalltau(predicted, actual).statistic if len(actual) > 1 else float("nan")
    return {"kendall_tau": float(tau), "rmse": float(np.sqrt(np.mean((predicted - actual) ** 2))),
            "n": len(actual)}


def fit_and_score(pairs: list[tuple[Arch, float]], space: SearchSpace, holdout: float = 0.25,
                  seed: int = 0) -> tuple[Predictor, dict[str, float]]:
    """Fit on a seeded (1 - holdout) share of `pairs`, report quality on the rest, then refit
    on every pair (the returned predictor)."""
    if len(pairs) < 4:
        raise ValueError(f"need at least 4 (arch, val top-1) pairs to fit and score a predictor, got {len(pairs)}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = max(2, round(holdout * len(pairs)))
    test, train = [pairs[i] for i in order[:n_test]], [pairs[i] for i in order[n_test:]]
    model = Predictor.fit([a for a, _ in train], [s for _, s in train], space)
    scores = quality(model.predict([a for a, _ in test]), np.array([s for _, s in test]))
    return Predictor.fit([a for a, _ in pairs], [s for _, s in pairs], space), scores

