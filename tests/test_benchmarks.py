"""Every script in benchmarks/ at its tiny size, so that none rots: its own `--tiny`, or a tiny
run's files where it reads a run (tests/conftest.py's tiny_mixed_run). gpu_check.py and
kernel_speed.py have their own tests (test_gpu_check.py, test_runtime_kernels.py). The numbers
are not checked: only that each runs to the end."""
import importlib
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

pytestmark = pytest.mark.usefixtures("one_thread")

SELF_CONTAINED = {  # script: its arguments
    "cost_speed": ["--tiny"],
    "deploy_speed": ["--tiny"],
    "demo_rate": ["--tiny"],
    "eval_speed": ["--tiny"],
    "latency_model_check": ["--tiny"],
    "profile_step": ["--tiny"],
    "quant_step": ["--tiny"],
    "quant_step --mixed": ["--tiny", "--mixed", "2", "4"],
    "runtime_speed": ["--tiny"],
    "thread_codes": ["--tiny"],
    "train_throughput": ["--tiny"],
}
ON_A_RUN = {  # script: its arguments, RUN standing for the tiny run's folder
    "headline": ["RUN", "--tiny"],
    "inheritance_ablation": ["RUN", "--tiny"],
    "mixed_bn": ["RUN/stages/2-mixed23/supernet.pt", "--tiny"],
    "mixed_vs_uniform": ["RUN"],
    "search_quality": ["RUN/stages/1-2bit/supernet.pt", "--tiny"],
}


def test_every_benchmark_is_here():
    scripts = {f.removesuffix(".py") for f in os.listdir(os.path.join(ROOT, "benchmarks")) if f.endswith(".py")}
    listed = {name.split()[0] for name in {**SELF_CONTAINED, **ON_A_RUN}}
    assert scripts - {"gpu_check", "kernel_speed", "tiny"} == listed


def run(name: str, argv: list[str], monkeypatch) -> None:
    module = importlib.import_module(name.split()[0])
    for setting in ("keep_freed_memory", "keep_freed_memory_on_cpu"):  # process-wide: not in the test process
        if hasattr(module, setting):
            monkeypatch.setattr(module, setting, lambda: None)
    monkeypatch.chdir(ROOT)
    threads = torch.get_num_threads()
    try:
        module.main(argv)
    finally:
        torch.set_num_threads(threads)


SLOW = {"thread_codes"}  # one process per thread count and ISA, even tiny


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SELF_CONTAINED])
def test_a_benchmark_runs_at_its_tiny_size(name, monkeypatch, capsys):
    if name == "runtime_speed":
        from oqat.runtime import RuntimeUnavailable, binding
        try:
            binding.library()
        except RuntimeUnavailable as err:
            pytest.skip(str(err))
    run(name, SELF_CONTAINED[name], monkeypatch)
    assert capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", ON_A_RUN)
def test_a_benchmark_runs_on_a_tiny_run(name, tiny_mixed_run, monkeypatch, capsys):
    run(name, [a.replace("RUN", tiny_mixed_run) for a in ON_A_RUN[name]], monkeypatch)
    assert capsys.readouterr().out
