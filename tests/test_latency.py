import json

import pytest
from test_export import ARCH, make_subnet

from oqat.cli import main
from oqat.core import machine
from oqat.deploy import export, runners
from oqat.files import checkpoints
from oqat.files.records import load_latency_table, update_latency_table
from oqat.space.arch import Arch
from oqat.space.builtin import MINI

pytestmark = pytest.mark.usefixtures("one_thread")


def test_median_ms_times_runs_after_warmup(monkeypatch):
    # A clock that advances by the call's number of ms: the 3 timed calls (after 2 untimed)
    # take 3, 4 and 5 ms, so the median is 4 whatever the machine's load.
    calls, now = [], [0.0]
    monkeypatch.setattr(machine.time, "perf_counter", lambda: now[0])
    ms = machine.median_ms(lambda: (calls.append(1), now.__setitem__(0, now[0] + len(calls) / 1e3)),
                           runs=3, warmup=2)
    assert len(calls) == 5 and ms == pytest.approx(4.0)
    with pytest.raises(ValueError, match="runs must be >= 1"):
        machine.median_ms(lambda: None, runs=0, warmup=0)


def run_json(capsys, *argv) -> dict:
    code = main(["latency", *argv, "--runs", "2", "--warmup", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_latency_of_subnet_files_builds_a_table_the_search_reads(tmp_path, capsys):
    table = str(tmp_path / "latency.json")
    other = Arch.parse("mini:r28:k7e4-k3e2-k3e2-k5e3.k5e3")
    for arch in (ARCH, other):
        path = str(tmp_path / f"{arch.r}.pt")
        checkpoints.save_subnet(make_subnet(2, arch), path)
        result = run_json(capsys, path, "--batch", "3", "--table", table)
        assert result["arch"] == arch.to_str() and result["bits"] == 2
        # the deployed graph and its fp32 self in each runtime, and PyTorch's fake-quant forward
        assert set(result["ms"]) == {"torch"} | {f"{r} export" for r in runners.runtimes()} | {
                f"{r} fp32" for r in runners.onnx_runtimes()}
        assert all(set(by_batch) == {"1", "3"} and min(by_batch.values()) > 0 for by_batch in result["ms"].values())
    read = load_latency_table(table, MINI, bits=2)
    assert set(read["ms"]) == {ARCH.to_str(), other.to_str()} and min(read["ms"].values()) > 0
    assert read["device"] == machine.cpu_model() and read["threads"] == 1
    path = str(tmp_path / "3bit.pt")
    checkpoints.save_subnet(make_subnet(3, other), path)
    assert main(["latency", path, "--runs", "1", "--warmup", "0", "--table", table]) == 2
    assert "holds 2-bit timings on" in capsys.readouterr().err


def test_latency_of_an_exported_folder(tmp_path, capsys):
    out = str(tmp_path / "deploy")
    export.export(make_subnet(3), out)
    assert run_json(capsys, out)["arch"] == ARCH.to_str()
    assert main(["latency", out, "--arch", "mini:r20:k3e2-k3e2-k3e2-k3e2"]) == 2
    assert "differs from the subnet in" in capsys.readouterr().err


def test_a_latency_table_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        update_latency_table(str(path), ARCH.to_str(), 1.0, bits=2, device=machine.cpu_model(), threads=1)
