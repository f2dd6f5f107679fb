"""docs/own-data.md cannot rot: its commands run, as written, on a small generated image folder.

The tutorial's ```yaml blocks whose first line is `# FILE` are written to FILE; its ```bash
blocks run in order in one shell, in a scratch folder holding `my-images/`. Only the sizes
shrink: the `oqat run`, `oqat search` and `oqat export` lines get the overrides below, which
keep every stage and step of the tutorial but train and score on a handful of images.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # runs the whole pipeline in subprocesses

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "own-data.md")
TINY = {
    "oqat run": ["data.val_size=4", "data.batch_size=8", "data.eval_batch_size=8", "train.calib_images=4",
                 "train.checkpoint_every=0", "train.log_every=1", "search.population=2", "search.generations=0",
                 "search.val_images=4", "search.calib_images=4", "export.test_images=4", "export.speed_rounds=0",
                 "stages=[{bits: 32, epochs: 1, elastic: []}, {bits: 4, epochs: 1, sandwich_random: 1},"
                 " {bits: 3, epochs: 1, reinit_steps: true, sandwich_random: 1},"
                 " {bits: 2, epochs: 1, reinit_steps: true, teacher: 0}]"],
    "oqat search": ["--population", "2", "--generations", "0", "--val-images", "4", "--calib-images", "4"],
    "oqat export": ["--calib-images", "4", "--test-images", "4", "--speed-rounds", "0"],
}


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def shrink(line: str) -> str:
    for prefix, extra in TINY.items():
        if line.startswith(prefix + " "):
            return line + " " + " ".join(f"'{a}'" for a in extra)
    return line


def image_folder(root, classes=("cat", "dog"), train=12, test=3) -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", test)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.random((32, 32, 3)) * 80 + 120 * c  # classes apart in brightness
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.jpg", quality=90)


def test_the_tutorial_runs_as_written(tmp_path):
    text = open(DOC).read()
    configs = [b for b in blocks(text, "yaml") if b.startswith("# ")]
    assert configs, "the tutorial writes no config file"
    for body in configs:
        (tmp_path / body.splitlines()[0][2:].strip()).write_text(body)
    commands = [shrink(line) for b in blocks(text, "bash") for line in b.splitlines() if line.strip()]
    assert any(c.startswith("oqat run ") for c in commands)
    image_folder(tmp_path / "my-images")
    bindir = os.path.dirname(sys.executable)  # the environment's oqat and python
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    run = tmp_path / "runs" / "my-data"
    results = json.loads((run / "results.json").read_text())
    assert sorted(results["export"]) == ["2", "3", "4", "best"]  # best: the family from every front
    for members in results["export"].values():  # S and M only where the tiny search found one
        assert "L" in members
        assert all((run / m["dir"] / "model.onnx").is_file() for m in members.values())
    assert (tmp_path / "my-net" / "model.onnx").is_file() and (tmp_path / "my-net" / "weights.oqpk").is_file()
