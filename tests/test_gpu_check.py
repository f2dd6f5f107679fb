"""benchmarks/gpu_check.py: its no-GPU exit, and each check run on CPU (the CUDA run uses the same functions)."""
import os
import subprocess
import sys

import pytest
import torch

from oqat.space import MINI  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # by name: the spawned DDP ranks import it too
import gpu_check  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]


def test_lsq_check_passes_and_catches_a_wrong_gradient(monkeypatch):
    assert "closed form" in gpu_check.check_lsq("cpu", shape=(8, 32, 16, 16), rtol=1e-4)
    real = gpu_check.lsq
    monkeypatch.setattr(gpu_check, "lsq", lambda v, s, bits, signed: real(v, s * 1.0001, bits, signed))
    with pytest.raises(AssertionError, match="differs from the closed form"):
        gpu_check.check_lsq("cpu", shape=(2, 8, 5, 5), rtol=1e-4)


def test_bf16_step_and_throughput_on_cpu():
    assert "within" in gpu_check.check_bf16_step("cpu", MINI, n=8, r=24)
    rates = gpu_check.throughput("cpu", MINI, n=4, r=24, steps=1)
    assert set(rates) == {4, 32} and all(r > 0 for r in rates.values())


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights():
    assert "identical weights" in gpu_check.check_ddp(2, "gloo", MINI, n=4, r=24, steps=2)
