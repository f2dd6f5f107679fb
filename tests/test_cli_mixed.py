"""Every command on a run with a mixed-precision stage (conftest's tiny_mixed_run: stages 3 ->
2 bits, then mixed 2/3): each ends with status 0 and names the precision as people read it."""
import json
import os

import pytest

from oqat.cli import main
from oqat.files.layout import RunLayout

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TINY_SEARCH = ["--population", "4", "--generations", "1", "--val-images", "32", "--calib-images", "16"]


def oqat(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "(2, 3)" not in out + err and "[2, 3]-bit" not in out + err  # a mixed precision by its label
    return out


def test_every_command_works_on_a_run_with_a_mixed_stage(tiny_mixed_run, tmp_path, capsys):
    run = RunLayout(tiny_mixed_run)
    mixed = run.stage(2, [2, 3]).supernet
    out = oqat(capsys, "search", mixed, *TINY_SEARCH, "--out", tmp_path / "search")
    arch = json.loads((tmp_path / "search" / "pareto.json").read_text())["front"][0]["arch"]
    oqat(capsys, "sample", mixed, "--n", 2, "--val-images", 32, "--calib-images", 16, "--out", tmp_path / "p.json")
    out = oqat(capsys, "eval", mixed, "--arch", arch, "--calib-images", 16)
    assert "mixed 2/3-bit" in out.splitlines()[0]
    out = oqat(capsys, "export", mixed, "--arch", arch, "--out", tmp_path / "x", "--calib-images", 16,
               "--test-images", 16, "--speed-rounds", 0)
    assert "at mixed 2/3-bit" in out
    out = oqat(capsys, "latency", tmp_path / "x", "--runs", 1, "--warmup", 0)
    assert "(mixed 2/3-bit)" in out.splitlines()[0]
    out = oqat(capsys, "cost", "--arch", arch)
    assert "bits per block" in out.splitlines()[0]
    out = oqat(capsys, "analyze", tiny_mixed_run, "--samples", 10, "--val-images", 32, "--calib-images", 16,
               "--bootstrap", 10, "--bands", 1, "--out", tmp_path / "analysis")
    assert "2-bit: mean loss" in out
    os.remove(run.report)
    oqat(capsys, "run", run.config, f"run.dir={tiny_mixed_run}", "--quiet")  # every step done: the report again
    report = open(run.report).read()
    assert "- mixed 2/3-bit: " in report and "- 3-bit: " in report
