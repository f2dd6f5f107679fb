import inspect
import json
import random

import numpy as np
import pytest
from test_evaluate import DATA, TINY, run_cli, tiny_run

from oqat.config.settings import SearchConfig
from oqat.data.splits import load_splits
from oqat.files.checkpoints import load_supernet
from oqat.files.records import load_latency_table
from oqat.nets.budget import Budget, BudgetError, check_metric
from oqat.nets.cost import METRICS, arch_metrics
from oqat.search import front, nsga, scoring, search
from oqat.space.arch import Arch
from oqat.train.evaluate import prepare_subnet

pytestmark = pytest.mark.usefixtures("one_thread")


def median_bitops() -> float:
    rng = random.Random(0)
    return float(np.median([arch_metrics(TINY.sample(rng), TINY, 4)["bitops"] for _ in range(200)]))


def non_dominated(points: list[dict], metric: str) -> bool:
    return front.dominated(points, points, metric) == 0


def test_pareto_indices_keep_the_non_dominated_points_by_cost():
    cost_, acc = np.array([1, 2, 2, 3, 4, 4]), np.array([50, 40, 60, 55, 70, 70])
    # (2, 40) and (3, 55) are beaten; of two equal points neither beats the other, so both stay.
    assert front.pareto_indices(acc, cost_) == [0, 2, 4, 5]
    assert front.pareto_indices(np.array([]), np.array([])) == []


def test_genome_round_trip_and_canonical_form():
    rng = random.Random(0)
    for _ in range(20):
        arch = TINY.sample(rng)
        assert nsga.decode(nsga.encode(arch, TINY), TINY) == arch
    x = nsga.encode(Arch.parse("evaltiny:r12:k3e2-k3e2", TINY), TINY)
    y = x.copy()
    y[1] = 1  # kernel of the inactive second block of stage 1: same network
    assert nsga.decode(y, TINY) == nsga.decode(x, TINY) and not np.array_equal(x, y)
    assert np.array_equal(nsga.encode(nsga.decode(y, TINY), TINY), x)


def test_smallest_architecture_minimises_every_metric():
    least = arch_metrics(TINY.smallest(), TINY, 4)
    rng = random.Random(1)
    for arch in [TINY.sample(rng) for _ in range(100)] + [TINY.largest()]:
        c = arch_metrics(arch, TINY, 4)
        assert all(least[m] <= c[m] for m in METRICS)


def test_search_front_is_feasible_non_dominated_and_nothing_is_evaluated_twice(monkeypatch):
    calls = []
    real_evaluate = scoring.evaluate
    monkeypatch.setattr(scoring, "evaluate", lambda *a, **k: calls.append(1) or real_evaluate(*a, **k))
    net, _ = load_supernet(tiny_run())
    limit = median_bitops()
    budgets = [Budget.parse(f"bitops<={limit}"), Budget.parse("params<=1e9")]
    cfg = SearchConfig(budgets, population=8, generations=4, seed=0, calib_images=128)
    result = search(net, DATA, load_splits(DATA), cfg, log=lambda _: None)
    archs = [p["arch"] for p in result.evaluated]
    assert len(archs) == len(set(archs)) == result.evaluations
    assert 8 <= result.evaluations <= 8 * 5
    assert len(calls) == result.evaluations + len(result.front)  # + one test evaluation per front member
    assert all(p["bitops"] <= limit for p in result.evaluated)  # over-budget candidates are never evaluated
    assert result.front and all("test_top1" in p and p["bitops"] <= limit for p in result.front)
    assert non_dominated(result.front, "bitops")
    on_front = {p["arch"] for p in result.front}
    rest = [p for p in result.evaluated if p["arch"] not in on_front]
    assert front.dominated(result.front, rest, "bitops") == len(rest)  # duplicates of front values aside
    assert [p["bitops"] for p in result.front] == sorted(p["bitops"] for p in result.front)
    assert result.front[0]["arch"] == TINY.smallest().to_str()  # seeded into the first population
    again = search(net, DATA, load_splits(DATA), cfg, test=False, log=lambda _: None)
    assert [p["arch"] for p in again.evaluated] == archs  # seeded: the same search


def test_search_explores_only_what_the_supernet_was_trained_on():
    net, _ = load_supernet(tiny_run())
    net.set_elastic_(("ks", "e", "d"))  # trained at the largest resolution only
    result = search(net, DATA, load_splits(DATA), SearchConfig(population=6, generations=1, calib_images=64),
                      test=False, log=lambda _: None)
    r = {Arch.parse(p["arch"], TINY).r for p in result.evaluated}
    assert r == {max(TINY.resolutions)} and result.evaluations >= 6


def test_search_with_predictor_confirms_the_front(monkeypatch):
    net, _ = load_supernet(tiny_run())
    cfg = SearchConfig(population=8, generations=3, seed=1, calib_images=128, predictor=True)
    result = search(net, DATA, load_splits(DATA), cfg, test=False, log=lambda _: None)
    assert result.predicted > 0 and result.metric == "bitops"
    really = {p["arch"] for p in result.evaluated}
    assert all(p["arch"] in really for p in result.front)
    assert non_dominated(result.front, "bitops")


def test_budget_errors():
    least = arch_metrics(TINY.smallest(), TINY, 4)["bitops"]
    costs = scoring.CostMetrics(TINY, 4)
    with pytest.raises(BudgetError, match=rf"smallest achievable bitops is {least:g} \(evaltiny:r12:k3e2-k3e2"):
        costs.check([Budget.parse(f"bitops<={least - 1}")])
    costs.check([Budget.parse(f"bitops<={least}")])
    with pytest.raises(BudgetError, match="unknown budget metric 'flops'; valid: macs, params, bitops, "
                                            "flops_q, size_bits, latency$"):
        Budget.parse("flops<=3")
    with pytest.raises(BudgetError, match="unknown budget metric 'latency'; valid: macs, params, bitops, "
                                            "flops_q, size_bits .latency needs a latency model"):
        check_metric("latency", latency=False)
    check_metric("latency", latency=True)
    assert Budget.parse("latency <= 2.5") == Budget("latency", 2.5)
    for bad in ("bitops=3", "bitops<=x", "bitops<=0"):
        with pytest.raises(BudgetError, match="bitops"):
            Budget.parse(bad)
    for limit in (3e7, 2.5, 123456789.0, 0.1):  # the text a config dumps reads back as the same budget
        budget = Budget("bitops", limit)
        assert Budget.parse(str(budget)) == budget
    assert str(Budget("bitops", 3e7)) == "bitops<=3e+07"


def latency_table(path, ms: dict, bits: int = 4) -> dict:
    path.write_text(json.dumps({"bits": bits, "device": "test cpu", "threads": 1, "ms": ms}))
    return load_latency_table(str(path), TINY, bits)["ms"]


def test_latency_table(tmp_path):
    small, big = TINY.smallest(), TINY.largest()
    path = tmp_path / "lat.json"
    table = latency_table(path, {small.to_str(): 1.5, big.to_str(): 4.0})
    costs = scoring.CostMetrics(TINY, 4, table)
    assert costs(big)["latency"] == 4.0 and "latency" not in costs(TINY.sample(random.Random(3)))
    with pytest.raises(BudgetError, match=r"smallest achievable latency is 1.5 \(evaltiny:r12"):
        costs.check([Budget("latency", 1.0)])
    latency_table(path, {big.to_str(): 4.0}, bits=2)
    with pytest.raises(ValueError, match="holds 2-bit timings; the supernet is 4-bit"):
        load_latency_table(str(path), TINY, 4)
    path.write_text(json.dumps({big.to_str(): 4.0}))  # no bits, device, threads: refused
    with pytest.raises(ValueError, match="with bits, device, threads and ms"):
        load_latency_table(str(path), TINY)
    with pytest.raises(ValueError, match="from space 'mini', not 'evaltiny'"):
        latency_table(path, {"mini:r28:k3e2-k3e2-k3e2-k3e2": 1.0})


def test_a_latency_search_scores_every_table_entry_within_budget(tmp_path):
    archs = list(dict.fromkeys(TINY.sample(random.Random(i)) for i in range(6)))
    table = latency_table(tmp_path / "lat.json", {a.to_str(): 0.25 * (i + 1) for i, a in enumerate(archs)})
    net, _ = load_supernet(tiny_run())
    cfg = SearchConfig([Budget("latency", 0.25 * (len(archs) - 1))], population=4, generations=0, calib_images=64)
    result = search(net, DATA, load_splits(DATA), cfg, latency=table, test=False, log=lambda _: None)
    # Every entry but the slowest is within budget, and each is evaluated, however small the population.
    assert sorted(p["arch"] for p in result.evaluated) == sorted(a.to_str() for a in archs[:-1])
    assert result.front[0]["latency"] == min(p["latency"] for p in result.evaluated)


def test_search_cli_outputs_and_errors(capsys, tmp_path):
    out = tmp_path / "s"
    code, stdout, _ = run_cli(capsys, "search", tiny_run(), "--budget", f"bitops<={median_bitops()}",
                              "--population", 6, "--generations", 1, "--calib-images", 64, "--out", out)
    assert code == 0 and "pareto.json" in stdout
    pareto = json.loads((out / "pareto.json").read_text())
    evaluated = json.loads((out / "evaluated.json").read_text())
    assert pareto["metric"] == "bitops" and pareto["evaluations"] == len(evaluated) > 0
    assert pareto["front"] and all({"arch", "bitops", "macs", "val_top1", "test_top1"} <= set(p)
                                   for p in pareto["front"])
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run_cli(capsys, "search", tiny_run(), "--budget", "bitops<=10", "--out", out)
    assert code == 2 and "smallest achievable bitops is" in err
    code, _, err = run_cli(capsys, "search", tiny_run(), "--budget", "latency<=10", "--out", out)
    assert code == 2 and "valid: macs, params, bitops, flops_q, size_bits" in err
    code, _, err = run_cli(capsys, "search", tiny_run(), "--metric", "energy", "--out", out)
    assert code == 2 and "unknown budget metric 'energy'" in err


def test_the_library_searches_as_oqat_search_and_oqat_run_do_by_default():
    # One default per setting: SearchConfig's (search(cfg=None) takes SearchConfig()).
    defaults = SearchConfig()
    assert inspect.signature(search).parameters["cfg"].default is None
    for fn, name, field in ((prepare_subnet, "calib_images", "calib_images"), (prepare_subnet, "seed", "seed"),
                            (scoring.Scorer, "calib_images", "calib_images"),
                            (scoring.Scorer, "val_images", "val_images"),
                            (scoring.Scorer, "calib_seed", "seed")):
        assert inspect.signature(fn).parameters[name].default == getattr(defaults, field)


def test_the_recommended_family_is_three_distinct_networks_spanning_the_costs():
    from oqat.search.front import recommended
    # The demo's trap: the 2-bit largest fits S's and M's BitOPs but has the largest MACs.
    largest = {"bitops": 100.0, "macs": 10.0}
    points = [{"bits": 2, "arch": "L", "bitops": 25.0, "macs": 10.0, "val_top1": 88.0},
              {"bits": 2, "arch": "S", "bitops": 5.0, "macs": 2.0, "val_top1": 86.0},
              {"bits": 3, "arch": "S", "bitops": 7.0, "macs": 2.0, "val_top1": 86.5},
              {"bits": 3, "arch": "M", "bitops": 30.0, "macs": 5.0, "val_top1": 87.5},
              {"bits": 4, "arch": "L", "bitops": 100.0, "macs": 10.0, "val_top1": 90.0}]
    fam = recommended(points, largest, [0.25, 0.5, 1.0])
    assert [(m["bits"], m["arch"]) for m in fam.values()] == [(3, "S"), (3, "M"), (4, "L")]
    assert recommended(points[:1], largest, [0.25, 0.5, 1.0]) == {"S": None, "M": None, "L": points[0]}
