"""Where every file of a run lives, named once: the writers and the readers of a run folder
(pipeline, train, search, report, analysis, cli) take their paths from these values.

A run folder (`oqat run`; {p}: a precision's name, fp, 4bit, ..., mixed234 for bits [2, 3, 4]):
    config.yaml                  the resolved config
    stages/{i}-{p}/              one training stage, a training folder
    search/{p}/                  a search folder
    export/{p}-{S,M,L}/          an export folder
    export/best-{S,M,L}/         the recommended family's members not exported above
    analysis/                    `oqat analyze`
    latency_model.json           with search.latency_model: build (and .partial while measuring)
    report.md, results.json, fronts.png, training.png
A training folder (`oqat train`'s run.dir; a stage): config.yaml, checkpoints/last.pt,
metrics.jsonl, tb/, supernet.pt; a stage adds inherited.pt (bit inheritance) and stage.json.
A search folder: pareto.json, evaluated.json, pareto.png. An export folder: model.onnx,
model.qonnx.onnx, weights.oqpk, arch.json, MODEL_CARD.md (`export.export`) and facts.json. An
analysis folder: analysis.json, analysis.md, analysis_*.png.
"""
import os
from dataclasses import dataclass
from typing import ClassVar

from ..quant.precision import Precision


@dataclass(frozen=True)
class TrainingLayout:
    root: str

    @property
    def config(self) -> str:
        return os.path.join(self.root, "config.yaml")

    @property
    def last(self) -> str:
        """The checkpoint a stopped training resumes from."""
        return os.path.join(self.root, "checkpoints", "last.pt")

    @property
    def metrics(self) -> str:
        return os.path.join(self.root, "metrics.jsonl")

    @property
    def tb(self) -> str:
        return os.path.join(self.root, "tb")

    @property
    def supernet(self) -> str:
        """The trained supernet, written once the training is done."""
        return os.path.join(self.root, "supernet.pt")

    @property
    def inherited(self) -> str:
        """A stage's start: the previous stage's supernet inherited to this stage's bits."""
        return os.path.join(self.root, "inherited.pt")

    @property
    def timing(self) -> str:
        """A finished stage's wall time."""
        return os.path.join(self.root, "stage.json")


@dataclass(frozen=True)
class SearchLayout:
    root: str

    @property
    def pareto(self) -> str:
        return os.path.join(self.root, "pareto.json")

    @property
    def evaluated(self) -> str:
        return os.path.join(self.root, "evaluated.json")

    @property
    def plot(self) -> str:
        return os.path.join(self.root, "pareto.png")


@dataclass(frozen=True)
class ExportLayout:
    root: str
    ONNX: ClassVar[str] = "model.onnx"  # the integer graph
    RUNTIME: ClassVar[str] = "model.oqrt"  # oqat's runtime's file (`oqat.runtime.model_file`)
    QONNX: ClassVar[str] = "model.qonnx.onnx"
    PACKED: ClassVar[str] = "weights.oqpk"
    ARCH: ClassVar[str] = "arch.json"
    CARD: ClassVar[str] = "MODEL_CARD.md"
    FACTS: ClassVar[str] = "facts.json"  # what the card says, as JSON (`records.write_facts`)

    @property
    def onnx(self) -> str:
        return os.path.join(self.root, self.ONNX)

    @property
    def qonnx(self) -> str:
        return os.path.join(self.root, self.QONNX)

    @property
    def runtime(self) -> str:
        return os.path.join(self.root, self.RUNTIME)

    @property
    def packed(self) -> str:
        return os.path.join(self.root, self.PACKED)

    @property
    def arch(self) -> str:
        return os.path.join(self.root, self.ARCH)

    @property
    def card(self) -> str:
        return os.path.join(self.root, self.CARD)

    @property
    def facts(self) -> str:
        return os.path.join(self.root, self.FACTS)


@dataclass(frozen=True)
class AnalysisLayout:
    root: str

    @property
    def json(self) -> str:
        return os.path.join(self.root, "analysis.json")

    @property
    def markdown(self) -> str:
        return os.path.join(self.root, "analysis.md")

    def plot(self, name: str) -> str:
        return os.path.join(self.root, f"analysis_{name}.png")


BEST = "best"  # the export group of the recommended family, drawn from every precision's front


def _stage_index(name: str) -> int | None:
    """The index of a stage folder's name (`{i}-...`); None for any other name."""
    head = name.split("-")[0]
    return int(head) if head.isdigit() else None


@dataclass(frozen=True)
class RunLayout:
    root: str

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def config(self) -> str:
        return self._path("config.yaml")

    @property
    def report(self) -> str:
        return self._path("report.md")

    @property
    def results(self) -> str:
        return self._path("results.json")

    @property
    def latency_model(self) -> str:
        return self._path("latency_model.json")

    @property
    def fronts_plot(self) -> str:
        return self._path("fronts.png")

    @property
    def training_plot(self) -> str:
        return self._path("training.png")

    @property
    def analysis(self) -> AnalysisLayout:
        return AnalysisLayout(self._path("analysis"))

    @property
    def stages_dir(self) -> str:
        return self._path("stages")

    def stage(self, i: int, bits) -> TrainingLayout:
        return TrainingLayout(self._path("stages", f"{i}-{Precision.of(bits).name}"))

    def stages(self) -> list[TrainingLayout]:
        """The stage folders there are, by index (whatever bits their names say)."""
        if not os.path.isdir(self.stages_dir):
            return []
        names = [n for n in os.listdir(self.stages_dir) if _stage_index(n) is not None]
        return [TrainingLayout(self._path("stages", n)) for n in sorted(names, key=_stage_index)]

    def search(self, precision) -> SearchLayout:
        """`precision`: in any form `Precision.of` reads (its bits, its results key)."""
        return SearchLayout(self._path("search", Precision.of(precision).name))

    def export(self, group, name: str) -> ExportLayout:
        """`group`: a precision (any form) whose family `name` belongs to, or BEST."""
        folder = group if group == BEST else Precision.of(group).name
        return ExportLayout(self._path("export", f"{folder}-{name}"))

    def relative(self, path: str) -> str:
        """`path` as results.json and the log name it: from the run folder."""
        return os.path.relpath(path, self.root)
