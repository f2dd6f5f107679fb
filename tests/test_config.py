import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from oqat.core import typed
from oqat.core.typed import ConfigError


@dataclass
class Budget:
    metric: str = "bitops"  # what is limited
    limit: float = 1e6  # upper bound


@dataclass
class Train:
    lr: float = 0.1  # peak learning rate
    epochs: int = 10  # passes over the data
    nesterov: bool = True  # momentum flavour
    warmup: int | None = None  # warm-up epochs; None: no warm-up
    milestones: list[int] = field(default_factory=lambda: [5, 8])  # lr drops
    betas: tuple[float, float] = (0.9, 0.99)  # fixed-length tuple
    bits: tuple[int, ...] = (2, 3, 4)  # variable-length tuple

    def __post_init__(self):
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.warmup is not None and self.warmup >= self.epochs:
            raise ValueError(f"warmup={self.warmup} must be below epochs={self.epochs}")


@dataclass
class Root:
    name: str = "run"  # run name
    mode: Literal["fast", "slow"] = "fast"  # speed preset
    stages: list[int] = field(default_factory=lambda: [2, 2])  # blocks per stage
    train: Train = field(default_factory=Train)  # training section
    budgets: list[Budget] = field(default_factory=list)  # search constraints
    tags: list[str] = field(default_factory=list)  # free labels
    rate: float | None = None  # optional float


@dataclass
class Child(Root):
    extra: int = 1  # a field added by a subclass


@dataclass
class Required:
    size: int  # no default on purpose


def test_from_dict_defaults_and_nested():
    cfg = typed.from_dict(Root, {"train": {"lr": 1, "milestones": [3]}, "budgets": [{"limit": 5}]})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.milestones == [3] and cfg.train.epochs == 10
    assert cfg.budgets == [Budget("bitops", 5.0)]
    assert cfg.stages == [2, 2] and cfg.mode == "fast"
    assert typed.from_dict(Root, {}) == Root()


def test_tuples_are_converted_and_checked():
    cfg = typed.from_dict(Train, {"betas": [0.5, 1], "bits": [8]})
    assert cfg.betas == (0.5, 1.0) and cfg.bits == (8,)
    with pytest.raises(ConfigError, match=r"field 'betas' expects 2 items"):
        typed.from_dict(Train, {"betas": [0.5]})
    with pytest.raises(ConfigError, match=r"field 'bits\[1\]' expects int, got 'x'"):
        typed.from_dict(Train, {"bits": [1, "x"]})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"lrr": 1}}, r"^unknown field 'train.lrr' \(valid: lr, epochs, nesterov, "),
        ({"train": {"lr": "abc"}}, r"^field 'train.lr' expects float, got 'abc'$"),
        ({"train": {"epochs": 2.5}}, r"^field 'train.epochs' expects int, got 2.5$"),
        ({"train": {"epochs": True}}, r"^field 'train.epochs' expects int, got True$"),
        ({"train": {"nesterov": 1}}, r"^field 'train.nesterov' expects bool, got 1$"),
        ({"train": {"warmup": "x"}}, r"^field 'train.warmup' expects int \| None, got 'x'$"),
        ({"name": 3}, r"^field 'name' expects str, got 3$"),
        ({"mode": "medium"}, r"^field 'mode' expects one of 'fast', 'slow', got 'medium'$"),
        ({"stages": 3}, r"^field 'stages' expects list\[int\], got 3$"),
        ({"budgets": [{"limit": "big"}]}, r"^field 'budgets\[0\].limit' expects float"),
        ({"train": [1]}, r"^section 'train' expects a mapping, got \[1\]$"),
        ({"train": {"epochs": 0}}, r"^invalid 'train': epochs must be positive, got 0$"),
    ],
)
def test_from_dict_errors_are_one_line(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        typed.from_dict(Root, data)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_long_values_are_shortened_in_errors():
    with pytest.raises(ConfigError) as info:
        typed.from_dict(Root, {"name": list(range(1000))})
    assert len(str(info.value)) < 120


def test_missing_required_field():
    with pytest.raises(ConfigError, match="missing required field 'size'"):
        typed.from_dict(Required, {})
    assert typed.from_dict(Required, {"size": 3}).size == 3


def test_to_dict_round_trips_through_yaml():
    cfg = typed.from_dict(Root, {"budgets": [{"metric": "size", "limit": 2.0}], "rate": 0.5})
    plain = typed.to_dict(cfg)
    assert plain["train"]["betas"] == [0.9, 0.99]
    text = yaml.safe_dump(plain)
    assert typed.from_dict(Root, yaml.safe_load(text)) == cfg


def test_apply_overrides():
    base = Root()
    cfg = typed.apply_overrides(
        base,
        [
            "train.lr=0.5",
            "train.warmup=null",
            "mode=slow",
            "stages=[4,3]",
            "budgets=[{metric: bitops, limit: 1e6}]",
            "train.lr=1e-4",  # YAML 1.1 reads this as a string; float fields accept it
            "name=001",  # str fields keep the text as typed
            "tags=[a, b]",
        ],
    )
    assert cfg.train.lr == 1e-4 and cfg.mode == "slow" and cfg.stages == [4, 3]
    assert cfg.budgets == [Budget("bitops", 1e6)] and cfg.name == "001" and cfg.tags == ["a", "b"]
    assert base == Root(), "overrides must not mutate the input"
    assert typed.apply_overrides(base, ["train={epochs: 3}"]).train == Train(epochs=3)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=abc", r"^field 'train.epochs' expects int, got 'abc'$"),
        ("train.lr", r"must look like key=value"),
        ("=3", r"must look like key=value"),
        ("train..lr=1", r"empty part"),
        ("trian.lr=1", r"^unknown field 'trian' \(valid: name, mode, stages, train, budgets, "),
        ("train.lrr=1", r"^unknown field 'train.lrr' \(valid: lr, epochs, "),
        ("train.lr.x=1", r"^field 'train.lr' is not a section, cannot set 'train.lr.x'$"),
        ("stages=[4,", r"^override 'stages=\[4,' is not valid YAML"),
        ("train.epochs=-1", r"^invalid 'train': epochs must be positive, got -1$"),
    ],
)
def test_override_errors(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        typed.apply_overrides(Root(), [override])
    assert "\n" not in str(info.value)


def test_fields_checked_together_can_be_overridden_in_any_order(tmp_path):
    cfg = typed.apply_overrides(Root(), ["train.warmup=20", "train.epochs=30"])
    assert (cfg.train.warmup, cfg.train.epochs) == (20, 30)
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  warmup: 20\n")
    assert typed.load(Root, str(path), ["train.epochs=30"]).train.epochs == 30
    with pytest.raises(ConfigError, match=r"^config file .*: invalid 'train': warmup=20 must"):
        typed.load(Root, str(path))
    with pytest.raises(ConfigError, match=r"^invalid 'train': warmup=20 must be below epochs=10$"):
        typed.apply_overrides(Root(), ["train.warmup=20"])


def test_load_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.2\nstages: [1, 2, 3]\n")
    cfg = typed.load(Root, str(path), ["train.epochs=4"])
    assert cfg.train.lr == 0.2 and cfg.train.epochs == 4 and cfg.stages == [1, 2, 3]
    assert typed.load(Root, None, ["mode=slow"]) == Root(mode="slow")
    (tmp_path / "empty.yaml").write_text("")
    assert typed.load(Root, str(tmp_path / "empty.yaml")) == Root()


def test_a_file_extends_its_base(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.2\n  epochs: 5\nstages: [1, 2, 3]\n")
    (tmp_path / "sub").mkdir()
    top = tmp_path / "sub" / "top.yaml"
    top.write_text("base: ../base.yaml\ntrain:\n  epochs: 7\nstages: [4]\n")
    cfg = typed.load(Root, str(top), ["mode=slow"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.stages, cfg.mode) == (0.2, 7, [4], "slow")  # merged; lists replaced
    (tmp_path / "base.yaml").write_text("base: sub/top.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        typed.load(Root, str(top))
    top.write_text("base: 3\n")
    with pytest.raises(ConfigError, match="base must be the path"):
        typed.load(Root, str(top))
    top.write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml' not found"):
        typed.load(Root, str(top))


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"^config file '.*x.yaml' not found$"):
        typed.load(Root, str(tmp_path / "x.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.1\n bad: [\n")
    with pytest.raises(ConfigError, match=r"^config file '.*bad.yaml' line 3: invalid") as info:
        typed.load(Root, str(bad))
    assert "\n" not in str(info.value)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"typo.yaml': unknown field 'train.lrr'"):
        typed.load(Root, str(typo))
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"expects a mapping"):
        typed.load(Root, str(listy))


def test_dump_is_atomic_and_loadable(tmp_path):
    cfg = typed.apply_overrides(Root(), ["train.lr=0.3", "budgets=[{limit: 2}]"])
    path = tmp_path / "cfg.yaml"
    path.write_text("old")
    typed.dump(cfg, str(path))
    assert typed.load(Root, str(path)) == cfg
    assert os.listdir(tmp_path) == ["cfg.yaml"], "no temporary file may be left behind"


def test_dump_failure_keeps_old_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("old")

    @dataclass
    class Bad:
        value: object = dataclasses.field(default_factory=object)

    with pytest.raises(yaml.YAMLError):
        typed.dump(Bad(), str(path))
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["cfg.yaml"]


def test_describe_has_defaults_and_comments():
    text = typed.describe(Root)
    assert "lr: 0.1  # peak learning rate" in text
    assert "train:  # training section" in text
    assert "  milestones: [5, 8]  # lr drops" in text
    assert "rate: null  # optional float" in text
    assert yaml.safe_load(text) == typed.to_dict(Root())


def test_describe_includes_base_class_comments():
    comments = typed.field_comments(Child)
    assert comments["extra"] == "a field added by a subclass"
    assert comments["name"] == "run name"
