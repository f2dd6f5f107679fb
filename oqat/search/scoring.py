"""How the search scores an architecture: its costs and budget violations (`CostMetrics`, latency
from a latency model or a measured table), and its validation top-1 (`Scorer`: BN recalibrated, cached by `Arch`,
so no architecture is evaluated twice).
"""
import random
from collections.abc import Iterable

from ..config.settings import SearchConfig
from ..data.batches import calib_batches, eval_batches
from ..data.config import DataConfig
from ..data.image_folders import FolderSubset
from ..data.splits import Splits, subset
from ..nets.budget import LATENCY, Budget, BudgetError
from ..nets.cost import arch_metrics
from ..nets.supernet import Supernet
from ..quant.precision import Precision
from ..runtime.latency_model import LatencyModel
from ..space.arch import Arch
from ..space.structure import SearchSpace
from ..train.evaluate import evaluate


class CostMetrics:
    """Cost metrics of architectures at one precision, plus latency in ms: predicted by a latency
    model for every architecture, or read from a measured table for its entries only."""

    def __init__(self, space: SearchSpace, bits, latency: LatencyModel | dict[str, float] | None = None):
        self.space, self.bits, self.latency = space, bits, latency
        if isinstance(latency, LatencyModel):
            latency.check_precision(bits, space)

    def __call__(self, arch: Arch) -> dict[str, float]:
        c = arch_metrics(arch, self.space, self.bits)
        if isinstance(self.latency, LatencyModel):
            c[LATENCY] = self.latency.predict(arch, None if arch.b else self.bits)
        elif self.latency is not None and arch.to_str() in self.latency:
            c[LATENCY] = self.latency[arch.to_str()]
        return c

    def smallest(self, metric: str) -> tuple[float, str]:
        """The least achievable value of `metric`, and where it is reached."""
        if metric == LATENCY and isinstance(self.latency, dict):
            best = min(self.latency, key=self.latency.get)
            return self.latency[best], best
        # The smallest choice of every field (resolution too) minimises every cost metric, latency too.
        arch = self.space.smallest()
        return self(arch)[metric], arch.to_str()

    def check(self, budgets: list[Budget]) -> None:
        for b in budgets:
            least, where = self.smallest(b.metric)
            if least > b.limit:
                raise BudgetError(f"budget {b} cannot be met: the smallest achievable {b.metric} is "
                                  f"{least:g} ({where}, {Precision.of(self.bits).label})")


class Scorer:
    """Validation top-1 of architectures, each extracted, BN-recalibrated and evaluated once."""

    def __init__(self, supernet: Supernet, data_cfg: DataConfig, splits: Splits,
                 calib_images: int = SearchConfig.calib_images, val_images: int | None = SearchConfig.val_images,
                 calib_seed: int = SearchConfig.seed):
        self.supernet = supernet.eval()
        self.n_calib, self.calib_seed = min(calib_images, len(splits.train)), calib_seed
        self.val = splits.val if val_images is None else subset(splits.val, min(val_images, len(splits.val)), 0)
        self.data_cfg, self.splits = data_cfg, splits
        # In-memory images are the same at every resolution (the network's input resizes them):
        # their batches are made once. Image folders are decoded anew at each subnet's resolution.
        self.fixed = None
        if not isinstance(splits.train, FolderSubset):
            calib, val = self.batches(None)
            self.fixed = calib, list(val)
        self.scores: dict[Arch, float] = {}  # every real evaluation, in order

    def batches(self, r: int | None) -> tuple[list, Iterable]:
        """(BN calibration batches, validation batches) at resolution r."""
        if self.fixed is not None:
            return self.fixed
        calib = calib_batches(self.splits.train, self.data_cfg, self.n_calib, self.calib_seed, r)
        return calib, eval_batches(self.val, self.data_cfg, r)

    def __call__(self, arch: Arch) -> float:
        if arch not in self.scores:
            calib, val = self.batches(arch.r)
            self.scores[arch] = evaluate(self.supernet.extract(arch, calib), val)["top1"]
        return self.scores[arch]

    def subnet(self, arch: Arch):
        return self.supernet.extract(arch, self.batches(arch.r)[0])

    def test_top1(self, arch: Arch) -> float:
        return evaluate(self.subnet(arch), eval_batches(self.splits.test, self.data_cfg, arch.r))["top1"]


def sample_points(scorer: Scorer, n: int, seed: int) -> list[dict]:
    """`n` distinct uniformly random architectures (seeded) with their costs and val top-1."""
    space = scorer.supernet.trained_space
    archs = space.sample_distinct(random.Random(seed), n)
    costs = CostMetrics(space, scorer.supernet.bits)
    return [{"arch": a.to_str(), **costs(a), "val_top1": scorer(a)} for a in archs]
