"""The top-level experiment config: one YAML file describes a whole run.

Sections are added, never reshaped, so older configs keep loading: `data`, `model`,
`train`, `run` today; the pipeline adds its own sections beside them.
"""
from dataclasses import dataclass, field

from .data import DataConfig
from .pipeline import ExportSettings, SearchSettings, StageConfig
from .space import get_space
from .train import TrainConfig


@dataclass
class ModelConfig:
    space: str = "mini"  # search space name; its input channels and classes follow the data

    def __post_init__(self):
        get_space(self.space)


@dataclass
class RunConfig:
    dir: str = "runs/default"  # run directory: config.yaml, metrics.jsonl, tb/, checkpoints/, supernet.pt
    quiet: bool = False  # no progress bar, one line per epoch (for log files)


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)  # dataset, splits, batches
    model: ModelConfig = field(default_factory=ModelConfig)  # the supernet
    train: TrainConfig = field(default_factory=TrainConfig)  # one training stage
    run: RunConfig = field(default_factory=RunConfig)  # outputs
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig(4), StageConfig(3), StageConfig(2)])  # oqat run: training stages in order (bit inheritance between them)
    search: SearchSettings = field(default_factory=SearchSettings)  # oqat run: Pareto search of each bit-width
    export: ExportSettings = field(default_factory=ExportSettings)  # oqat run: export of the best subnets
