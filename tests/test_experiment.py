"""The experiment config: every workflow's settings in one place, checked before any work;
the sub-commands' options are its fields."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

import oqat
from oqat.cli.options import settings
from oqat.cli.parser import build_parser, main
from oqat.config.settings import (
    AnalysisConfig,
    ExperimentConfig,
    ExportConfig,
    SearchConfig,
    TrainConfig,
    stage_train_config,
)
from oqat.core import typed
from oqat.nets.budget import Budget
from oqat.space.builtin import MINI

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "fashion-mnist.yaml")
MINI_ARCH = "mini:r28:k3e2-k5e3.k7e4-k3e2-k3e2"


@pytest.mark.parametrize("override,message", [
    ("search.budgets=[bogus]", "budget 'bogus' must look like METRIC<=VALUE"),
    ("search.budgets=['flops<=3']", "unknown budget metric 'flops'"),
    ("search.metric=speed", "unknown budget metric 'speed'"),
    ("search.population=0", "population must be >= 2"),
    ("search.generations=-1", "generations must be >= 0"),
    ("search.val_images=0", "val_images must be >= 1"),
    ("stages=[]", "stages is empty"),
    ("stages=[{bits: 2}, {bits: 4}]", "stages[1] trains 4 bits from the 2-bit stage"),
    ("stages=[{bits: 4, epochs: 0}]", "epochs must be >= 1"),
    ("stages=[{bits: 4, lr: 0}]", "lr must be > 0"),
    ("stages=[{bits: 9}]", "bits must be an integer in 1..8"),
    ("export.test_images=-1", "test_images must be >= 0"),
    ("analysis.samples=3", "samples must be >= 10"),
    ("train.arch=mbv3:r128:k3e3", "train.arch"),
    ("stages=[{bits: 32}, {bits: 2, teacher: 1}]", "stages[1].teacher=1: a teacher is an earlier stage, one of 0..0"),
    ("train.distill=false", "stages[3].teacher is set but train.distill is false"),
    ("data.name=imagefolder", "imagefolder needs root"),
])
@pytest.mark.parametrize("command", ["run", "train"])
def test_a_bad_config_is_refused_before_any_work(command, override, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main([command, CONFIG, f"run.dir={run_dir}", override]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and message in err, err
    assert not run_dir.exists() and out == ""


@pytest.mark.parametrize("overrides,message", [
    (["data.root=/nonexistent", "data.download=false"], "data.root '/nonexistent' is not a folder"),
    (["data.root=/nonexistent"], "data.root '/nonexistent' is not a folder"),  # a typo, not a place to download to
    (["data.root=/nonexistent", "data.name=imagefolder"], "'/nonexistent/train' not found"),
    (["search.budgets=['latency<=3']"], "latency needs a latency model"),
    (["train.init_from=/nonexistent.pt"], "train.init_from '/nonexistent.pt' not found"),
    (["train.teacher_file=/nonexistent.pt"], "train.teacher_file '/nonexistent.pt' not found"),
])
def test_run_checks_its_data_and_budgets_before_any_work(overrides, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = [CONFIG, f"run.dir={run_dir}", *overrides]
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not run_dir.exists()
    if "budgets" not in overrides[0]:  # `oqat train` has no budgets; it checks the rest the same way
        assert main(["train", *argv]) == 2 and message in capsys.readouterr().err
        assert main(["config", "check", *argv]) == 2 and message in capsys.readouterr().err


def test_config_check_refuses_a_run_dir_that_run_refuses(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    for run_dir in (tmp_path / "f", tmp_path / "f" / "sub"):
        for command in (["config", "check"], ["run"]):
            assert main([*command, CONFIG, f"run.dir={run_dir}"]) == 2
            assert f"run.dir '{run_dir}'" in capsys.readouterr().err


def test_each_stage_trains_train_s_settings_with_its_own(tmp_path):
    cfg = typed.load(ExperimentConfig, None, [
        f"run.dir={tmp_path}", "train.lr=0.3", "train.sandwich_random=1", "train.elastic=[ks, e, d]",
        "train.init_from=start.pt", "train.teacher_file=teacher.pt", "train.seed=7",
        "stages=[{bits: 32, epochs: 2, elastic: []}, {bits: 4, epochs: 3, lr: 0.1, sandwich_random: 2},"
        " {bits: 2, reinit_steps: true, teacher: 0}, {bits: 2, init: scratch}]"])
    stage = [os.path.join(tmp_path, "stages", name, "supernet.pt") for name in ("0-fp", "1-4bit", "2-2bit")]
    t = [stage_train_config(cfg, i) for i in range(4)]
    assert [(x.bits, x.epochs, x.lr, x.sandwich_random, x.elastic, x.reinit_steps) for x in t] == [
        (32, 2, 0.3, 1, [], False), (4, 3, 0.1, 2, ["ks", "e", "d"], False),
        (2, 1, 0.3, 1, ["ks", "e", "d"], True), (2, 1, 0.3, 1, ["ks", "e", "d"], False)]
    assert [x.init_from for x in t] == ["start.pt", stage[0], stage[1], None]  # the last from scratch
    assert [x.teacher_file for x in t] == ["teacher.pt", "teacher.pt", stage[0], "teacher.pt"]
    assert {x.seed for x in t} == {7}  # what no stage sets is train's
    assert stage_train_config(cfg, 1) == dataclasses.replace(
        cfg.train, bits=4, epochs=3, lr=0.1, sandwich_random=2, init_from=stage[0])


@pytest.mark.parametrize("override,message", [
    ("train.bits=2", "train.bits is set, but oqat run's stages set bits (stages[i].bits)"),
    ("train.epochs=5", "train.epochs is set, but oqat run's stages set epochs (stages[i].epochs)"),
    ("train.reinit_steps=true", "train.reinit_steps is set, but oqat run's stages set reinit_steps"),
    ("train.init_from=s.pt", "train.init_from is set, but stages[0] starts from scratch"),
])
def test_a_run_refuses_the_train_fields_its_stages_set(override, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", CONFIG, f"run.dir={run_dir}", "stages=[{bits: 4, init: scratch}]", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not run_dir.exists()


def test_budgets_are_parsed_as_the_config_loads_and_dumped_as_text(tmp_path):
    cfg = typed.load(ExperimentConfig, None, ["search.budgets=['bitops<=3e7', 'latency <= 2.5']"])
    assert cfg.search.budgets == [Budget("bitops", 3e7), Budget("latency", 2.5)]
    typed.dump(cfg, tmp_path / "config.yaml")
    assert "- bitops<=3e+07\n" in (tmp_path / "config.yaml").read_text()
    assert typed.load(ExperimentConfig, str(tmp_path / "config.yaml")) == cfg
    assert "budgets: [bitops<=3e+07, latency<=2.5]  #" in typed.describe(cfg)
    cfg.search.check_metrics(latency=True)
    with pytest.raises(ValueError, match="latency needs a latency model"):
        cfg.search.check_metrics(latency=False)
    with pytest.raises(typed.ConfigError, match=r"^field 'search.budgets\[0\]' expects Budget text, got 3$"):
        typed.apply_overrides(cfg, ["search.budgets=[3]"])


def test_a_config_written_before_teacher_file_loads_as_it_meant():
    old = typed.to_dict(ExperimentConfig())
    old["train"] = {k: v for k, v in old["train"].items() if k != "teacher_file"}
    old["train"].update(teacher="t.pt", reinit_steps=None)
    train = typed.from_dict(ExperimentConfig, old).train
    assert train == TrainConfig(teacher_file="t.pt", reinit_steps=False)
    with pytest.raises(typed.ConfigError, match="unknown field 'train.teacher'"):  # today's name on the command line
        typed.apply_overrides(ExperimentConfig(), ["train.teacher=t.pt"])


@pytest.mark.slow
def test_the_console_script_refuses_before_any_work(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "oqat")
    done = subprocess.run([exe, "run", CONFIG, f"run.dir={tmp_path / 'r'}", "stages=[{bits: 2}, {bits: 3}]"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "stages[1]" in done.stderr
    assert not (tmp_path / "r").exists()  # refused from the config alone: no run folder, no data read


@pytest.mark.slow
def test_python_dash_m_oqat_is_the_cli():
    done = subprocess.run([sys.executable, "-m", "oqat", "cost", "--arch", MINI_ARCH, "--json"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == oqat.arch_metrics(oqat.Arch.parse(MINI_ARCH), "mini", 4)


def test_the_api_takes_a_space_by_name():
    net = oqat.Supernet("mini", bits=4)
    assert net.space == MINI and net.bits == 4
    sub = oqat.Subnet("mini", MINI.smallest(), 2)
    assert sub.space == MINI
    with pytest.raises(TypeError, match="SearchSpace or its name"):
        oqat.Supernet(3, 4)
    with pytest.raises(ValueError, match="unknown search space 'nope'"):
        oqat.Supernet("nope")
    assert oqat.Subnet("mini", MINI_ARCH).arch == oqat.Arch.parse(MINI_ARCH)
    with pytest.raises(TypeError, match="an architecture is an Arch, its compact string"):
        oqat.Subnet("mini", 3)
    with pytest.raises(ValueError, match="bits"):
        oqat.Supernet("mini", bits="4")


def test_each_subcommand_option_is_a_config_field_with_its_default(capsys):
    """--population of `oqat search` is search.population: the same default, listed by `oqat config show`."""
    parser = build_parser()
    defaults = ExperimentConfig()
    for argv, section in ((["search", "s.pt"], "search"), (["eval", "s.pt", "--arch", "x"], "search"),
                          (["sample", "s.pt", "--n", "4", "--out", "p"], "search"),
                          (["export", "s.pt", "--out", "o"], "export"), (["analyze", "run"], "analysis")):
        assert getattr(settings(parser.parse_args(argv)), section) == getattr(defaults, section)
    args = parser.parse_args(["search", "s.pt", "--population", "6", "--budget", "bitops<=1e7",
                              "--budget", "macs<=1e6", "--predictor", "--val-images", "null"])
    assert settings(args).search == SearchConfig(population=6, budgets=[Budget("bitops", 1e7), Budget("macs", 1e6)],
                                                   predictor=True, val_images=None)
    args = parser.parse_args(["search", "s.pt", "--population", "1"])
    with pytest.raises(typed.ConfigError, match="population must be >= 2"):
        settings(args)
    assert settings(parser.parse_args(["analyze", "run", "--samples", "12"])).analysis == AnalysisConfig(samples=12)
    assert settings(parser.parse_args(["export", "s.pt", "--out", "o", "--test-images", "5"])).export == \
        ExportConfig(test_images=5)
    assert main(["config", "show"]) == 0
    shown = capsys.readouterr().out
    for section in ("search", "export", "analysis", "train", "stages"):
        assert f"\n{section}:" in shown
    assert "population: 16  # NSGA-II population" in shown and "samples: 40  #" in shown
    assert main(["config", "show", CONFIG, "search.population=7"]) == 0
    assert "population: 7  #" in capsys.readouterr().out
