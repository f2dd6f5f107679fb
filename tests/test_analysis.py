import json

import pytest
import torch

from oqat import analysis
from oqat.analysis import pareto, rank_corr
from oqat.cli import main
from oqat.config import to_dict
from oqat.data import DataConfig
from oqat.experiment import AnalysisConfig
from oqat.space import MINI
from oqat.supernet import Supernet


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A run directory with an untrained 4-bit and 2-bit supernet (steps set by hand)."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    data = to_dict(DataConfig(name="synthetic", val_size=64, synthetic_train=256))
    for i, bits in enumerate((4, 2)):
        net = Supernet(MINI, bits)
        for q in net.quantizers():
            q.step.data.fill_(0.1)
        net.save(str(run / "stages" / f"{i}-{bits}bit" / "supernet.pt"), {"data": data})
    return run


def test_pareto_keeps_only_non_dominated_points():
    pts = [(1, 50), (2, 40), (2, 60), (3, 55), (4, 70)]
    assert [pts[i] for i in pareto(pts)] == [(1, 50), (2, 60), (4, 70)]


def test_rank_corr_of_monotone_data_is_one_with_interval():
    c = rank_corr(range(20), [x * x for x in range(20)], n_boot=200, seed=0)
    assert c["rho"] == pytest.approx(1.0) and c["lo"] <= c["rho"] <= c["hi"]


def test_analyze_writes_report_and_is_deterministic(fake_run, tmp_path):
    cfg = AnalysisConfig(samples=6, calib_images=32, val_images=32, bootstrap=50)
    a = analysis.analyze(str(fake_run), cfg, str(tmp_path / "a"))
    b = analysis.analyze(str(fake_run), cfg, str(tmp_path / "b"))
    assert a["rows"] == b["rows"]
    assert len({r["arch"] for r in a["rows"]}) == 6
    assert set(a["rows"][0]["top1"]) == {4, 2}
    md = (tmp_path / "a" / "analysis.md").read_text()
    assert "rho" in md and "matched cost" in md
    assert (tmp_path / "a" / "analysis_accuracy_vs_bitops.png").stat().st_size > 1000
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())["summary"]["drop_from"] == 4


def test_analyze_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["analyze", str(tmp_path)]) == 2
    assert "not an oqat run directory" in capsys.readouterr().err
