import json
import warnings

import pytest
import torch

from oqat.cli import main
from oqat.config.settings import AnalysisConfig
from oqat.core.typed import to_dict
from oqat.data.config import DataConfig
from oqat.files import checkpoints
from oqat.nets.supernet import Supernet
from oqat.search import analysis
from oqat.search.analysis import rank_corr
from oqat.space.builtin import MINI

DATA = to_dict(DataConfig(name="synthetic", val_size=64, synthetic_train=256))
SETTINGS = ["--samples", "10", "--calib-images", "32", "--val-images", "32", "--bootstrap", "50"]


def make_run(root, stages) -> str:
    """A run directory of untrained supernets (steps set by hand), one per (bits, elastic) stage."""
    for i, (bits, elastic) in enumerate(stages):
        torch.manual_seed(0)  # one set of weights at every bit-width, as bit inheritance gives
        net = Supernet(MINI, bits, elastic)
        for q in net.quantizers():
            q.step.data.fill_(0.1)
        checkpoints.save_supernet(net, str(root / "stages" / f"{i}-{bits}bit" / "supernet.pt"), {"data": DATA})
    return str(root)


@pytest.fixture(scope="module")
def demo_shaped(tmp_path_factory):
    """The demo's stages: the fp largest alone, then 4, 3 and 2 bits varying kernel, expand and depth;
    analysed once through the CLI."""
    run = make_run(tmp_path_factory.mktemp("run"), [(32, ())] + [(b, ("ks", "e", "d")) for b in (4, 3, 2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["analyze", run, *SETTINGS])
    return run, code, caught


def test_rank_corr_of_monotone_data_is_one_with_interval_and_p():
    c = rank_corr(range(20), [x * x for x in range(20)], n_boot=200, seed=0)
    assert c["rho"] == pytest.approx(1.0) and c["lo"] <= c["rho"] <= c["hi"] and c["p"] < 1e-6
    assert rank_corr(range(20), [1.0] * 20, n_boot=10, seed=0)["rho"] is None


def test_demo_shaped_run_compares_with_the_highest_precision_that_trained_the_subnets(demo_shaped):
    run, code, caught = demo_shaped
    assert code == 0
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    result = json.loads(open(f"{run}/analysis/analysis.json").read())
    s, rows = result["summary"], result["rows"]
    assert s["reference"] == 4 and not s["largest_only"] and s["bits"] == [3, 2]
    # Resolution was held at 28 px: it is no trait of these samples.
    assert s["traits"] == ["depth", "mean_expand", "mean_kernel"]
    assert len({r["arch"] for r in rows}) == 10 and all(r["resolution"] == 28 for r in rows)
    for r in rows:
        assert set(r["top1"]) == {"4", "3", "2"}
        assert r["loss"]["2"] == pytest.approx(r["top1"]["4"] - r["top1"]["2"])
    for bits in ("3", "2"):
        for c in s["correlations"][bits].values():
            assert c["n"] == 10 and (c["rho"] is None or (-1 <= c["rho"] <= 1 and 0 <= c["p"] <= 1))
    md = open(f"{run}/analysis/analysis.md").read()
    assert "10 distinct sampled subnets" in md and "each subnet at 4 bits" in md
    assert "| depth |" in md and "3-bit (mean loss" in md and "| resolution |" not in md


def test_analyze_is_deterministic(demo_shaped, tmp_path):
    run = demo_shaped[0]
    again = analysis.analyze(run, AnalysisConfig(samples=10, calib_images=32, val_images=32, bootstrap=50),
                             str(tmp_path))
    first = json.loads(open(f"{run}/analysis/analysis.json").read())
    assert json.loads(json.dumps(again["rows"])) == first["rows"]


def test_a_run_with_one_quantized_bit_width_measures_loss_from_the_fp_largest(tmp_path, capsys):
    run = make_run(tmp_path, [(32, ()), (2, ("ks", "e", "d"))])
    assert main(["analyze", run, *SETTINGS]) == 0
    out = capsys.readouterr().out
    assert "the largest subnet at full precision, one accuracy for every architecture" in out
    s = json.loads(open(f"{run}/analysis/analysis.json").read())["summary"]
    assert s["reference"] == 32 and s["largest_only"] and s["bits"] == [2] and s["reference_top1"] is not None


def test_analyze_takes_its_settings_from_the_run_config(tmp_path, capsys):
    run = make_run(tmp_path, [(4, ()), (2, ())])
    (tmp_path / "config.yaml").write_text("analysis: {samples: 3}\n")
    assert main(["analyze", run]) == 2
    assert "samples must be >= 10, got 3" in capsys.readouterr().err


def test_too_few_trained_architectures_are_refused(tmp_path, capsys):
    run = make_run(tmp_path, [(4, ()), (2, ())])
    assert main(["analyze", run, *SETTINGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds 1 distinct architecture(s); the analysis needs at least 10" in err


def test_analyze_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["analyze", str(tmp_path)]) == 2
    assert "not an oqat run directory" in capsys.readouterr().err
