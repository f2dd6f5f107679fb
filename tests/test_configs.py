"""The shipped configs load and validate (no training)."""
import os

import pytest

from oqat.config.settings import ExperimentConfig
from oqat.core import typed
from oqat.space.builtin import get_space

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


@pytest.mark.parametrize("name", sorted(os.listdir(CONFIGS)))
def test_config_loads_and_describes_a_valid_pipeline(name):
    cfg = typed.load(ExperimentConfig, os.path.join(CONFIGS, name))
    get_space(cfg.model.space)
    bits = [s.bits for s in cfg.stages if isinstance(s.bits, int)]  # a mixed stage takes every width
    assert bits and all(b <= a for a, b in zip(bits, bits[1:])), "stages must not raise bits"
    assert typed.to_dict(typed.from_dict(ExperimentConfig, typed.to_dict(cfg))) == typed.to_dict(cfg)


def test_imagenet_recipe_is_the_papers_setting():
    cfg = typed.load(ExperimentConfig, os.path.join(CONFIGS, "imagenet-mbv3.yaml"))
    assert (cfg.data.name, cfg.model.space) == ("imagefolder", "mbv3")
    assert [s.bits for s in cfg.stages] == [4, 3, 2] and all(s.init == "previous" for s in cfg.stages)
    assert cfg.train.calib_images == 2000 and cfg.train.sandwich_random >= 1 and cfg.train.distill


def test_the_mixed_config_is_the_main_job_plus_a_mixed_stage():
    main, mixed = (typed.load(ExperimentConfig, os.path.join(CONFIGS, f)) for f in
                   ("fashion-mnist.yaml", "fashion-mnist-mixed.yaml"))
    assert mixed.stages[:-1] == main.stages and mixed.stages[-1].bits == [2, 3, 4]
    assert typed.to_dict(mixed) == {**typed.to_dict(main), "stages": typed.to_dict(mixed)["stages"]}
