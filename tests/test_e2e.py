"""End to end: the real `oqat` console script runs the whole pipeline on a small slice of
Fashion-MNIST, then resumes it (nothing is redone)."""
import json
import os
import subprocess
import sys

import pytest

from oqat.data.config import DataConfig, DataError
from oqat.data.splits import load_splits
from oqat.nets.cost import arch_metrics
from oqat.space.builtin import get_space

FMNIST = "/usr/share/datasets/fashion-mnist"


def _has_fmnist() -> bool:
    try:
        load_splits(DataConfig(root=FMNIST, download=False, val_size=100, train_size=100))
        return True
    except DataError:
        return False


NO_FMNIST = "Fashion-MNIST not installed (scripts/setup.sh installs it)"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not _has_fmnist(), reason=NO_FMNIST)]

OVERRIDES = [
    f"data.root={FMNIST}", "data.download=false", "data.val_size=200", "data.train_size=640", "data.batch_size=64",
    "train.calib_images=128", "train.sandwich_random=1", "train.log_every=5", "train.checkpoint_every=5",
    "stages=[{bits: 4, epochs: 1, lr: 0.1}, {bits: 2, epochs: 1, lr: 0.1, reinit_steps: true}]",  # as the demo
    "search.population=4", "search.generations=1", "search.val_images=100", "search.calib_images=64",
    "export.test_images=100",
]


def _oqat(*args: str) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "oqat")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)


def test_pipeline_runs_end_to_end_and_resumes(tmp_path):
    run = tmp_path / "run"
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "fashion-mnist.yaml")
    proc = _oqat("run", config, f"run.dir={run}", *OVERRIDES, "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert [s["bits"] for s in results["stages"]] == [4, 2]
    assert set(results["family"]) == {"4", "2"}
    for bits in ("4", "2"):
        fam = results["family"][bits]
        assert list(fam) == ["S", "M", "L"]
        largest = arch_metrics(get_space("mini").largest(), "mini", int(bits))["bitops"]
        front_best = max(p["val_top1"] for p in results["fronts"][bits])
        assert fam["L"]["val_top1"] == front_best  # L: the most accurate within 100% of the largest's BitOPs
        for name, member in fam.items():
            if member is not None:
                assert 0 <= member["test_top1"] <= 100 and member["bitops"] > 0 and member["arch"]
                assert (run / results["export"][bits][name]["dir"] / "model.onnx").stat().st_size > 10_000
        for name, fraction in zip("SML", results["config"]["search"]["family"]):
            assert fam[name] is None or fam[name]["bitops"] <= fraction * largest
    assert (run / "stages" / "1-2bit" / "inherited.pt").is_file()  # 4 -> 2 by bit inheritance
    assert (run / "report.md").read_text().startswith("# OQAT run")
    assert (run / "fronts.png").stat().st_size > 1000
    # Running again finds every step done and only rewrites the report.
    again = _oqat("run", config, f"run.dir={run}", *OVERRIDES, "--quiet")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stage 0" not in again.stdout and "search:" not in again.stdout


def test_run_rejects_a_bad_config_field_in_one_line(tmp_path):
    proc = _oqat("run", os.path.join(os.path.dirname(__file__), "..", "configs", "fashion-mnist.yaml"),
                 f"run.dir={tmp_path}", "train.lrr=0.1")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "train.lrr" in proc.stderr
