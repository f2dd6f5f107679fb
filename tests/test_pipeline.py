"""`oqat run` survives a kill anywhere: SIGKILLed in a training stage, in a search and in the
export, then run again, it ends with the results of a run never interrupted."""
import json
import os
import signal
import subprocess
import sys

import pytest
from processes import TINY_RUN, paused, resume, start

pytestmark = pytest.mark.slow  # whole runs in subprocesses, killed and resumed

TIMING = {"wall_s", "wall_s_this_invocation", "seconds", "speed"}  # speed: an export's measured ms


def _killed(proc: subprocess.Popen) -> str:
    """SIGKILL the paused `proc`; what it printed."""
    proc.kill()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out  # killed, not finished
    return out


def _numbers(results: dict) -> dict:
    """results.json without what legitimately differs between two runs: times and the run folder."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in TIMING}
        return [strip(v) for v in x] if isinstance(x, list) else x
    out = strip(results)
    del out["config"]["run"]["dir"]
    return out


@pytest.mark.signals
def test_kill_anywhere_then_rerun_gives_the_uninterrupted_results(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = start(whole)  # runs beside the victim
    last = killed / "stages" / "1-2bit" / "checkpoints" / "last.pt"
    proc = start(killed, pause_at="checkpoint")
    assert paused(proc)
    while not last.exists():  # in the 2-bit stage, once it has checkpointed at least once
        resume(proc)
        assert paused(proc)
    _killed(proc)
    assert last.exists() and not (killed / "stages" / "1-2bit" / "supernet.pt").exists()
    proc = start(killed, pause_at="search-generation")
    assert paused(proc)  # after the first generation of the 4-bit search
    out = _killed(proc)
    assert "stage 0:" not in out and "stage 1:" in out  # the finished stage is not redone; the killed one resumed
    assert not (killed / "search" / "4bit" / "pareto.json").exists()
    proc = start(killed, pause_at="export")
    assert paused(proc)
    resume(proc)  # the 4-bit S exports
    assert paused(proc)  # mid-export: the next member is about to
    out = _killed(proc)
    assert "stage " not in out and "export: 4-bit S" in out  # both stages done: the killed search starts over
    final = start(killed)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert "export: 4-bit S" not in out  # what was done stays done
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, killed))
    assert _numbers(a) == _numbers(b)
    assert a["family"]["4"]["L"] and a["export"]["4"]
    leftovers = [os.path.join(d, f) for d, _, names in os.walk(killed) for f in names if f.startswith(".tmp-")]
    assert not leftovers  # a kill mid-write leaves no temp file behind once the run is done


def _image_folder(root, classes: int = 2, train: int = 6, val: int = 2) -> None:
    """A few JPEGs per class in ImageNet's layout (train/<class>/, val/<class>/)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.random((48, 64, 3)) * 80 + 120 * c  # classes apart in brightness
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.jpg", quality=85)


def test_the_imagenet_mbv3_config_runs_end_to_end_on_a_tiny_image_folder(tmp_path):
    """The paper-scale path on every commit: configs/imagenet-mbv3.yaml (mbv3, image folder,
    4 -> 3 -> 2 bits by inheritance) with one step per stage, then search, export and report."""
    root, run = tmp_path / "imagenet", tmp_path / "run"
    _image_folder(root)
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "imagenet-mbv3.yaml")
    exe = os.path.join(os.path.dirname(sys.executable), "oqat")
    done = subprocess.run(
        [exe, "run", config, f"data.root={root}", f"run.dir={run}", "data.val_size=4", "data.batch_size=8",
         "data.eval_batch_size=8", "data.workers=0", "train.calib_images=4", "train.checkpoint_every=0",
         "train.log_every=1",
         "stages=[{bits: 4, epochs: 1}, {bits: 3, epochs: 1, lr: 0.2}, {bits: 2, epochs: 1, lr: 0.2}]",
         "search.population=2", "search.generations=0", "search.val_images=4", "search.calib_images=4",
         "export.test_images=4", "export.speed_rounds=0", "--quiet"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["model"]["space"] == "mbv3" and results["config"]["data"]["name"] == "imagefolder"
    assert [s["bits"] for s in results["stages"]] == [4, 3, 2]
    assert [s["metrics"]["step"] for s in results["stages"]] == [1, 1, 1]  # one step per stage
    for i, bits in ((1, 3), (2, 2)):  # bit inheritance 4 -> 3 -> 2
        assert (run / "stages" / f"{i}-{bits}bit" / "inherited.pt").is_file()
    for bits in ("4", "3", "2"):
        members = {m["arch"] for m in results["family"][bits].values() if m}
        assert members and all(a.startswith("mbv3:r") for a in members)
        for facts in results["export"][bits].values():
            assert (run / facts["dir"] / "model.onnx").stat().st_size > 100_000
            r = int(facts["arch"].split(":")[1].removeprefix("r"))
            assert facts["input"] == [3, r, r] and facts["bits"] == int(bits)
    assert (run / "report.md").read_text().startswith("# OQAT run")


def test_the_first_stage_starts_from_train_init_from(tmp_path):
    import torch

    from oqat.config.settings import ExperimentConfig
    from oqat.core import typed
    from oqat.files import checkpoints
    from oqat.nets.supernet import Supernet
    from oqat.run.pipeline import run_stages
    torch.set_num_threads(1)
    start = tmp_path / "s4.pt"
    checkpoints.save_supernet(Supernet("mini", 4), str(start))
    overrides = [*TINY_RUN[:8], "stages=[{bits: 2, epochs: 1}]", f"train.init_from={start}",
                 f"run.dir={tmp_path / 'run'}", "run.quiet=true"]
    cfg = typed.load(ExperimentConfig, None, overrides)
    stages = run_stages(cfg)
    inherited = tmp_path / "run" / "stages" / "0-2bit" / "inherited.pt"  # 4 -> 2 bits by inheritance
    assert checkpoints.load_supernet(str(inherited))[1]["inherited_from"] == {"file": str(start), "bits": 4}
    assert stages[0]["bits"] == 2 and stages[0]["metrics"]["step"] == 8


def test_run_under_torchrun_trains_on_every_rank_and_reports_once(tmp_path):
    """`torchrun -m oqat run` (gloo on CPU here): both ranks train each stage,
    rank 0 alone inherits, searches, exports and reports."""
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "oqat", "run", f"run.dir={run}", *TINY_RUN, "--quiet"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[oqat run] stage 1:") == 1 and done.stdout.count("[oqat run] done:") == 1
    results = json.loads((run / "results.json").read_text())
    assert [s["bits"] for s in results["stages"]] == [4, 2] and results["family"]["2"]["L"]
    metrics = [json.loads(line) for line in (run / "stages" / "0-4bit" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 8  # 256 training images in global batches of 32 (16 per rank), as one process
