"""Latency as a metric wherever BitOPs is one: a latency model (`oqat latency-model`) prices every
architecture in ms in `oqat cost`, in `oqat search`'s budgets and in `oqat run` (a step that
builds it, fronts in ms, the S/M/L family by latency, the prediction beside the measured time)."""
import json
import os
import sys

import pytest
import torch
from processes import TINY_RUN
from test_evaluate import TINY, run_cli, tiny_run

from oqat.cli import main

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import mixed_vs_uniform  # noqa: E402

from oqat.runtime import latency_model
from oqat.space.arch import Arch
from oqat.space.builtin import get_space

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "fashion-mnist.yaml")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("latency") / "tiny.json")
    assert main(["latency-model", tiny_run(), "--out", path, "--rounds", "2"]) == 0
    return path


def test_the_command_writes_a_model_of_the_supernets_space_and_bits(model_path):
    model = latency_model.load(model_path, TINY)
    assert model.bits == (4,) and model.resolutions == TINY.resolutions and model.threads == model.batch == 1
    assert not os.path.exists(model_path + ".partial")  # the progress file goes once the model is whole
    assert len(model.parts) == len({p.key(r) for r in TINY.resolutions for _, a in latency_model.plan(TINY, (4,), (r,))
                                    for p in latency_model.arch_parts(TINY, a, 4)})


def test_cost_prints_the_prediction_beside_bitops(capsys, tmp_path):
    mini = get_space("mini")
    path = str(tmp_path / "mini.json")
    model = latency_model.build(mini, (2,), rounds=1, resolutions=(28,))
    model.save(path)
    arch = "mini:r28:k5e3.k3e2-k3e3-k7e4.k3e2-k5e2"
    code, out, err = run_cli(capsys, "cost", "--arch", arch, "--bits", 2, "--latency-model", path, "--json")
    assert code == 0, err
    costs = json.loads(out)
    assert costs["latency"] == pytest.approx(model.predict(Arch.parse(arch), 2)) and costs["bitops"] > 0
    code, _, err = run_cli(capsys, "cost", "--arch", arch, "--bits", 4, "--latency-model", path)
    assert code == 2 and "measured 2 bits, not 4" in err


def test_a_search_under_a_latency_budget_prices_every_candidate(capsys, tmp_path, model_path):
    model = latency_model.load(model_path)
    limit = (model.predict(TINY.smallest(), 4) + model.predict(TINY.largest(), 4)) / 2
    out = tmp_path / "s"
    code, stdout, err = run_cli(capsys, "search", tiny_run(), "--budget", f"latency<={limit}", "--latency-model",
                                model_path, "--population", 6, "--generations", 1, "--calib-images", 32, "--out", out)
    assert code == 0, err
    pareto = json.loads((out / "pareto.json").read_text())
    evaluated = json.loads((out / "evaluated.json").read_text())
    assert pareto["metric"] == "latency" and pareto["front"] and len(evaluated) > len(pareto["front"]) - 1
    for p in evaluated:  # every candidate evaluated lies within the budget, priced by the model
        assert p["latency"] <= limit
        assert p["latency"] == pytest.approx(model.predict(Arch.parse(p["arch"], TINY), 4))
    assert " ms " in stdout and "latency model: oqat runtime" in err


def test_latency_without_a_model_or_from_elsewhere_is_one_line(capsys, tmp_path, model_path):
    code, _, err = run_cli(capsys, "search", tiny_run(), "--budget", "latency<=1", "--out", tmp_path / "s")
    assert code == 2 and "latency needs a latency model" in err and len(err.strip().splitlines()) == 1
    d = json.loads(open(model_path).read())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**d, "device": "Some Other CPU"}))
    code, _, err = run_cli(capsys, "search", tiny_run(), "--budget", "latency<=1", "--latency-model", other,
                           "--out", tmp_path / "s")
    assert code == 2 and "measured on Some Other CPU" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "search", tiny_run(), "--latency-model", model_path, "--latency-table", other,
                           "--out", tmp_path / "s")
    assert code == 2 and "not both" in err
    code, _, err = run_cli(capsys, "run", CONFIG, "search.budgets=[latency<=2]",
                           f"run.dir={tmp_path / 'run'}")
    assert code == 2 and "latency needs a latency model" in err and not (tmp_path / "run").exists()
    code, _, err = run_cli(capsys, "run", CONFIG, "search.family_by=latency",
                           f"run.dir={tmp_path / 'run'}")
    assert code == 2 and "family_by: latency needs a latency model" in err


@pytest.mark.slow
def test_a_tiny_run_with_a_latency_budget_builds_its_model_searches_recommends_and_exports(tmp_path, capsys):
    folder = tmp_path / "run"
    stages = "stages=[{bits: 3, epochs: 1}, {bits: 2, epochs: 1, lr: 0.05}, {bits: [2, 3], epochs: 1, lr: 0.05}]"
    previous = torch.get_num_threads()
    try:
        code = main(["run", f"run.dir={folder}", *TINY_RUN, stages, "train.grad_clip=5", "search.latency_model=build",
                     "search.budgets=[latency<=100]", "search.family_by=latency", "export.speed_rounds=1", "--quiet"])
    finally:
        torch.set_num_threads(previous)
    assert code == 0
    model = latency_model.load(str(folder / "latency_model.json"))
    assert model.bits == (2, 3)
    results = json.loads((folder / "results.json").read_text())
    assert set(results["fronts"]) == {"2", "3", "mixed23"}
    for key, front in results["fronts"].items():
        for p in front:
            arch = Arch.parse(p["arch"])
            assert p["latency"] == pytest.approx(model.predict(arch, None if arch.b else int(key)))
    best = [m for m in results["recommended"].values() if m]
    assert len(best) >= 2 and [m["latency"] for m in best] == sorted(m["latency"] for m in best)
    report = (folder / "report.md").read_text()
    assert "## Latency: predicted and measured" in report and "of the largest subnet's predicted ms" in report
    card = next(open(os.path.join(folder, "export", d, "MODEL_CARD.md")).read()
                for d in os.listdir(folder / "export"))
    assert "Predicted by the latency model" in card and "measured above" in card
    rows = results["mixed_vs_uniform_latency"]  # mixed against uniform at equal predicted ms
    assert len(rows) == 5 and all(r[k] is None or r[k]["latency"] <= r["latency"] * (1 + 1e-9)
                                  for r in rows for k in ("mixed", "uniform"))
    assert "## Mixed against uniform precision at equal predicted latency" in report
    mixed_vs_uniform.main([str(folder), "--metric", "latency", "--measure"])
    out = capsys.readouterr().out
    assert out.count(" measured") >= 5 and "budgets" in out
