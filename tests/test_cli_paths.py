"""The paths a user walks after a run: the CLI reproduces the run's numbers, says which
split and how many images each accuracy is on, and points at the right file."""
import json
import os

import pytest
from test_evaluate import DATA, TINY, run_cli, tiny_run

from oqat.cli import main
from oqat.config.settings import ExperimentConfig, SearchConfig
from oqat.core.typed import to_dict
from oqat.data.batches import calib_batches, eval_batches
from oqat.data.splits import load_splits
from oqat.files.checkpoints import load_supernet, save_subnet, save_supernet
from oqat.train.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = "evaltiny:r16:k5e3.k3e2-k3e3"


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> str:
    """tiny_run's supernet as a run writes it: with its config (calibration on 64 images, seed 3),
    trained at 16 px only."""
    net, ckpt = load_supernet(tiny_run())
    net.set_elastic_(("ks", "e", "d"))
    cfg = ExperimentConfig(data=DATA, search=SearchConfig(calib_images=64, seed=3))
    path = str(tmp_path_factory.mktemp("run") / "supernet.pt")
    save_supernet(net, path, {"data": to_dict(DATA), "config": to_dict(cfg)})
    return path


def test_eval_takes_the_runs_calibration_and_says_split_and_images(run_file, capsys):
    code, out, _ = run_cli(capsys, "eval", run_file, "--arch", ARCH, "--json")
    assert code == 0
    got = json.loads(out)
    assert got["calibration"] == "BN recalibrated on 64 training images, seed 3"
    explicit = json.loads(run_cli(capsys, "eval", tiny_run(), "--arch", ARCH, "--json",
                                  "--calib-images", 64, "--seed", 3)[1])
    assert got["top1"] == explicit["top1"]
    code, out, _ = run_cli(capsys, "eval", run_file, "--arch", ARCH, "--split", "test")
    assert code == 0 and f"synthetic test, {DATA.synthetic_test} images" in out.splitlines()[0]
    assert "size (KiB)" in out


def test_eval_warns_on_a_choice_the_supernet_never_trained(run_file, capsys):
    code, _, err = run_cli(capsys, "eval", run_file, "--arch", ARCH.replace("r16", "r12"))
    assert code == 0 and "warning: the architecture runs r 12 (trained: 16)" in err
    assert run_cli(capsys, "eval", run_file, "--arch", ARCH)[2] == ""


def test_eval_of_a_saved_subnet_file(tmp_path, capsys):
    net, _ = load_supernet(tiny_run())
    splits = load_splits(DATA)
    sub = net.extract(ARCH, calib=calib_batches(splits.train, DATA, 64, seed=0))
    path = str(tmp_path / "subnet.pt")
    save_subnet(sub, path, {"data": to_dict(DATA)})
    code, out, _ = run_cli(capsys, "eval", path, "--json")
    assert code == 0
    got = json.loads(out)
    assert got["calibration"] == "BN as saved in the file" and got["arch"] == ARCH
    assert got["top1"] == evaluate(sub, eval_batches(splits.val, DATA))["top1"]


def test_a_run_folder_is_named_with_the_files_to_pass(tmp_path, capsys):
    (tmp_path / "stages" / "1-4bit").mkdir(parents=True)
    (tmp_path / "stages" / "1-4bit" / "supernet.pt").write_bytes(b"")
    for argv in (["eval", str(tmp_path), "--arch", ARCH], ["export", str(tmp_path), "--out", str(tmp_path / "o")]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1
        assert f"is a run folder; pass one of its supernet files: {tmp_path}/stages/1-4bit/supernet.pt" in err


def test_export_writes_facts_names_its_source_and_counts_test_images(run_file, tmp_path, capsys):
    out = tmp_path / "deploy"
    code, printed, _ = run_cli(capsys, "export", run_file, "--arch", ARCH, "--out", out, "--test-images", 32)
    assert code == 0 and "on 32 test images" in printed and "KiB" in printed
    facts = json.loads((out / "facts.json").read_text())
    assert f"speed-up over the fastest fp32 (below 1: slower), {facts['speed']['threads']} thread(s): " in printed
    facts = json.loads((out / "facts.json").read_text())
    assert facts["source"] == run_file and facts["test"]["n"] == 32 and facts["arch"] == ARCH
    assert run_file in (out / "MODEL_CARD.md").read_text()


def test_an_option_typo_shows_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["cost", "--arch", ARCH, "--bogus"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "usage: oqat cost" in err and "unrecognized arguments: --bogus" in err


def test_bare_config_shows_the_defaults(capsys):
    code, out, _ = run_cli(capsys, "config")
    assert code == 0 and "population: 16" in out


def test_latency_search_prints_milliseconds_and_refuses_another_bit_width(tmp_path, capsys):
    table = tmp_path / "lat.json"
    ms = {TINY.smallest().to_str(): 0.354, TINY.largest().to_str(): 1.5}
    table.write_text(json.dumps({"bits": 4, "device": "test cpu", "threads": 1, "ms": ms}))
    code, out, _ = run_cli(capsys, "search", tiny_run(), "--budget", "latency<=1", "--latency-table", table,
                           "--calib-images", 64, "--out", tmp_path / "s")
    assert code == 0 and "0.35 ms" in out and f"val top-1 on {DATA.val_size} val images" in out
    table.write_text(json.dumps({"bits": 2, "device": "test cpu", "threads": 1, "ms": ms}))
    code, _, err = run_cli(capsys, "search", tiny_run(), "--budget", "latency<=1", "--latency-table", table)
    assert code == 2 and "holds 2-bit timings; the supernet is 4-bit" in err


def test_a_small_predictor_sample_carries_a_caveat(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "sample", tiny_run(), "--n", 4, "--calib-images", 64, "--out", tmp_path / "p.json")
    assert code == 0 and "only 2 held-out pairs: too few to judge the predictor" in out
    assert os.path.isfile(tmp_path / "p.json")
