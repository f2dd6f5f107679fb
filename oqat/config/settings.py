"""Every setting of every workflow, in one typed config: one YAML file describes a whole run.

One dataclass per workflow (`train`, `search`, `export`, `analysis`, ...); `oqat run`
reads them all, and each sub-command (`oqat train`, `oqat search`, `oqat export`,
`oqat analyze`, ...) takes its options from the same dataclass, so every setting has one
default, listed with its comment by `oqat config show`. Each dataclass checks its own
fields; `ExperimentConfig` checks what spans sections (stages against each other), so a
bad config is refused as it is loaded, before any data is read or any step runs.

Sections are added, never reshaped, and a renamed field is read under its old name too
(`TrainConfig.upgrade`), so older configs keep loading. This module imports
no workflow module (train, pipeline, search...): they import it.
"""
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal

from ..data.config import DataConfig
from ..data.splits import check_source
from ..files.architectures import read_arch
from ..files.layout import RunLayout
from ..nets.budget import LATENCY, Budget, check_metric
from ..quant.precision import Precision
from ..space.builtin import get_space
from ..space.structure import ArchField


def _at_least(obj, minimum, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclass
class ModelConfig:
    space: str = "mini"  # search space name; its input channels and classes follow the data

    def __post_init__(self):
        get_space(self.space)


@dataclass
class RunConfig:
    dir: str = "runs/default"  # run directory, laid out as oqat.files.layout says (oqat train: supernet.pt, metrics.jsonl, ...)
    quiet: bool = False  # no progress bar, one line per epoch (for log files)


@dataclass
class TrainConfig:
    epochs: int = 3  # passes over the training split
    lr: float = 0.2  # peak lr (SGD, batch 128): best of 0.03-0.4 in a 1-epoch 4-bit FMNIST run; cosine to zero
    warmup: float = 0.3  # linear warm-up length in epochs (fractions allowed)
    momentum: float = 0.9  # SGD momentum (nesterov), OFA's choice
    weight_decay: float = 4e-5  # on conv and linear weights only: not BN, biases, steps, kernel matrices
    label_smoothing: float = 0.1  # for the largest subnet's label loss
    sandwich_random: int = 2  # random subnets per step besides the largest and the smallest
    distill: bool = True  # the other subnets learn from the largest's soft predictions (else labels)
    teacher_file: str | None = None  # supernet file whose largest subnet every subnet (the largest too) learns from, fixed; None: the largest teaches (in-place). oqat run: the teacher of the stages that name none
    bits: int | list[int] = 4  # weight and activation bits of this stage; 32 = full precision; a list (e.g. [2, 3, 4]): mixed precision, each block's bits searched with the architecture (oqat run: each stage's own)
    init_from: str | None = None  # supernet file to start from (oqat run: its first stage's start); None: from scratch
    reinit_steps: bool = False  # LSQ steps from data at the start even where init_from has steps at these bits (an ablation); else only where it has none (oqat run: each stage's own)
    checkpoint_every: int = 200  # also write last.pt every N steps (0: only at epoch ends)
    calib_images: int = 2000  # training images for BN recalibration before each validation
    log_every: int = 20  # steps between metrics.jsonl / TensorBoard entries
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # NHWC layout: 2-3x faster depthwise convs on CPU
    seed: int = 0  # weights init, subnet and resolution draws, dropout
    arch: str | None = None  # train only this architecture, on labels (no sandwich): a standalone baseline
    grad_clip: float = 0.0  # max global gradient norm (0: off); clips the spikes low-bit BN can give a degenerate net. The measured recipes ran without it
    elastic: list[ArchField] = field(default_factory=lambda: ["ks", "e", "d", "r"])  # Arch fields the sandwich varies; the others stay the largest's ([] trains the largest alone: OFA's progressive shrinking starts so). The supernet file keeps them, and a search explores only them

    @staticmethod
    def upgrade(data: dict) -> dict:
        """Configs written before `teacher` was `teacher_file` and `reinit_steps` took null for false."""
        data = dict(data)
        if "teacher" in data:
            data.setdefault("teacher_file", data.pop("teacher"))
        if "reinit_steps" in data and data["reinit_steps"] is None:
            data["reinit_steps"] = False
        return data

    def __post_init__(self):
        self.bits = Precision.of(self.bits).config
        _at_least(self, 1, "epochs", "calib_images", "log_every")
        _at_least(self, 0, "warmup", "weight_decay", "sandwich_random", "checkpoint_every", "grad_clip")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not (0 <= self.momentum < 1 and 0 <= self.label_smoothing < 1):
            raise ValueError("momentum and label_smoothing must be in [0, 1)")
        if self.teacher_file is not None and not self.distill:
            raise ValueError("teacher_file is set but distill is false: a teacher is distillation (set distill: true)")


@dataclass
class StageConfig:
    bits: int | list[int] = 4  # weight and activation bits; 32 = full precision; a list (e.g. [2, 3, 4]): mixed precision, each block's bits searched with the architecture, starting from the chain's supernets
    epochs: int = 1  # training epochs of this stage
    lr: float | None = None  # peak learning rate; None: train.lr
    init: str = "previous"  # "previous": start from the last stage (the first: train.init_from), inheriting when bits drop; "scratch"
    reinit_steps: bool = False  # ablation: LSQ steps from data instead of inherited (doubled) ones (see train.reinit_steps)
    elastic: list[ArchField] | None = None  # Arch fields the sandwich varies in this stage (see train.elastic); None: train.elastic
    sandwich_random: int | None = None  # random subnets per step in this stage (see train.sandwich_random); None: train's
    teacher: int | None = None  # index of an earlier stage whose final supernet's largest subnet teaches this stage; None: train.teacher_file

    def __post_init__(self):
        self.bits = Precision.of(self.bits).config
        if self.init not in ("previous", "scratch"):
            raise ValueError(f"init must be 'previous' or 'scratch', got {self.init!r}")
        _at_least(self, 1, "epochs")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0 (or null for train.lr), got {self.lr}")
        _at_least(self, 0, "sandwich_random")


@dataclass
class SearchConfig:
    budgets: list[Budget] = field(default_factory=list)  # METRIC<=VALUE each, e.g. bitops<=3e7 (quote it in a shell: --budget 'bitops<=3e7'); empty: the whole front
    metric: str | None = None  # cost objective; None: the first budget's metric, else bitops
    population: int = 16  # NSGA-II population
    generations: int = 4  # offspring rounds after the first population
    val_images: int | None = 2000  # val images scoring each candidate (None: the whole val split)
    calib_images: int = 500  # BN recalibration images per subnet (search, eval, sample and export alike)
    seed: int = 0  # seeds the BN calibration subset (eval, export, sample, search) and the search's draws
    predictor: bool = False  # pre-screen candidates with the accuracy predictor
    family: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])  # S, M, L budgets: fractions of the largest subnet's BitOPs (the paper's OQATNets), or of its ms (family_by)
    family_by: Literal["bitops", "latency"] = "bitops"  # what the family's fractions are of: BitOPs (the paper's) or the latency model's ms
    latency_model: str | None = None  # latency model file (oqat latency-model) pricing any architecture in ms in oqat's runtime here, for latency budgets; in oqat run, "build" measures one as a step

    def __post_init__(self):
        f = self.family
        if len(f) != 3 or not all(a < b for a, b in zip([0.0, *f], f)) or f[-1] > 1:
            raise ValueError(f"family must be 3 increasing fractions in (0, 1] (S, M, L), got {f}")
        if self.metric is not None:
            check_metric(self.metric)
        _at_least(self, 2, "population")
        _at_least(self, 0, "generations")
        _at_least(self, 1, "val_images", "calib_images")
        if self.family_by == LATENCY and self.latency_model is None:
            raise ValueError("family_by: latency needs a latency model (search.latency_model: a file, or build)")

    def check_metrics(self, latency: bool) -> None:
        """Its budgets' metrics and `metric` can be computed: latency only with a latency model
        (`latency_model`) or, in `oqat search`, a latency table."""
        for metric in [b.metric for b in self.budgets] + ([self.metric] if self.metric else []):
            check_metric(metric, latency or self.latency_model is not None)


@dataclass
class ExportConfig:
    enabled: bool = True  # export the S/M/L family of each bit-width
    test_images: int = 10000  # test images for the model card's accuracy and parity (all of a smaller test split, as the report's tables)
    speed_rounds: int = 5  # rounds of timing the export against its fp32 self, batch 1 and 16, in each runtime (0: skip)

    def __post_init__(self):
        _at_least(self, 0, "test_images")
        _at_least(self, 0, "speed_rounds")


@dataclass
class AnalysisConfig:
    samples: int = 40  # architectures sampled; 40 gives usable rank correlations in a few minutes
    seed: int = 0  # seeds sampling and the bootstrap
    calib_images: int = 500  # BN recalibration images per subnet
    val_images: int = 2000  # held-out validation images each subnet is scored on
    bootstrap: int = 1000  # resamples for the confidence intervals
    bands: int = 3  # cost bands (quantiles of MACs) for the matched-cost comparison

    def __post_init__(self):
        _at_least(self, 10, "samples")  # fewer gives rank correlations too coarse to read (analysis.MIN_ARCHS)
        _at_least(self, 1, "calib_images", "val_images", "bootstrap", "bands")


def _default_stages() -> list[StageConfig]:
    return [StageConfig(4), StageConfig(3), StageConfig(2)]


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)  # dataset, splits, batches
    model: ModelConfig = field(default_factory=ModelConfig)  # the supernet
    train: TrainConfig = field(default_factory=TrainConfig)  # one training stage (oqat train; oqat run's stages start from it)
    run: RunConfig = field(default_factory=RunConfig)  # outputs
    stages: list[StageConfig] = field(default_factory=_default_stages)  # oqat run: training stages in order (bit inheritance between them)
    search: SearchConfig = field(default_factory=SearchConfig)  # oqat run and oqat search/eval/sample: Pareto search
    export: ExportConfig = field(default_factory=ExportConfig)  # oqat run and oqat export: the S/M/L family
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)  # oqat analyze: quantization-friendly traits

    def __post_init__(self):
        if not self.stages:
            raise ValueError("stages is empty: oqat run needs at least one training stage")
        previous = None
        for i, st in enumerate(self.stages):
            # Bit inheritance doubles steps going down; going up has no rule (steps would shrink).
            # A mixed stage takes each width's steps from the chain's stages, so it may follow any.
            bits = Precision.of(st.bits)
            if st.init == "previous" and previous is not None and previous.mixed and not bits.mixed:
                raise ValueError(f"stages[{i}] trains {st.bits} bits from the mixed-precision stage before it; "
                                 "a mixed stage ends the chain (use init: scratch to start anew)")
            if st.init == "previous" and previous is not None and previous.mixed and bits.mixed:
                raise ValueError(f"stages[{i}]: a mixed-precision stage after another one is not supported "
                                 "(give both widths in one stage)")
            if st.init == "previous" and previous is not None and not previous.mixed and not previous.full \
                    and not bits.mixed and bits.bits > previous.bits:
                raise ValueError(f"stages[{i}] trains {st.bits} bits from the {previous} stage before it; "
                                 "inheritance goes only to fewer bits (use init: scratch to start anew)")
            previous = bits
            if st.teacher is not None and not 0 <= st.teacher < i:
                raise ValueError(f"stages[{i}].teacher={st.teacher}: a teacher is an earlier stage, one of 0..{i - 1}")
            if st.teacher is not None and not self.train.distill:
                raise ValueError(f"stages[{i}].teacher is set but train.distill is false: a teacher is distillation")
        if self.train.arch is not None:
            try:
                arch = read_arch(self.train.arch)
            except ValueError as err:
                raise ValueError(f"train.arch: {err}") from None
            if arch.space != self.model.space:
                raise ValueError(f"train.arch is from space '{arch.space}', model.space is '{self.model.space}'")


def check_inputs(cfg: ExperimentConfig) -> None:
    """What a config needs from outside, checked before any work (`oqat run`, `oqat train`,
    `oqat config check`): its data is there or can be fetched, its start file exists."""
    check_source(cfg.data)
    for name in ("init_from", "teacher_file"):
        path = getattr(cfg.train, name)
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"train.{name} '{path}' not found")


STAGE_SETS = ("bits", "epochs", "reinit_steps")  # train fields every stage of oqat run sets for itself
STAGE_MAY_SET = ("lr", "elastic", "sandwich_random")  # stage fields that replace train's where the stage sets them


def stage_train_config(cfg: ExperimentConfig, i: int) -> TrainConfig:
    """Stage i's training settings as `oqat run` trains it: train's, with the stage's
    STAGE_SETS, and its STAGE_MAY_SET where it sets them. It starts from the previous stage's
    supernet (the first stage: train.init_from), or from scratch (init: scratch); it learns
    from the supernet of the stage its `teacher` names, else from train.teacher_file. Where
    the start has more bits, or the stage is mixed-precision, the run trains instead from the
    start inherited to the stage's bits (`layout.TrainingLayout.inherited`; a mixed stage takes
    each width's steps from the chain's stages)."""
    st, run = cfg.stages[i], RunLayout(cfg.run.dir)

    def supernet(j: int) -> str:
        return run.stage(j, cfg.stages[j].bits).supernet

    start = None if st.init == "scratch" else cfg.train.init_from if i == 0 else supernet(i - 1)
    teacher = cfg.train.teacher_file if st.teacher is None else supernet(st.teacher)
    return dataclasses.replace(cfg.train, init_from=start, teacher_file=teacher,
                               **{f: getattr(st, f) for f in STAGE_SETS},
                               **{f: getattr(st, f) for f in STAGE_MAY_SET if getattr(st, f) is not None})


def check_run_fields(cfg: ExperimentConfig) -> None:
    """No train field that `oqat run` would not read is set: those its stages set for themselves
    (STAGE_SETS, set to other than their defaults), and a start file for a first stage from scratch."""
    default = TrainConfig()
    for name in STAGE_SETS:
        if getattr(cfg.train, name) != getattr(default, name):
            raise ValueError(f"train.{name} is set, but oqat run's stages set {name} (stages[i].{name}): "
                             "set it there, or remove it from train")
    if cfg.train.init_from is not None and cfg.stages[0].init == "scratch":
        raise ValueError("train.init_from is set, but stages[0] starts from scratch (init: scratch): "
                         "remove one of them")
