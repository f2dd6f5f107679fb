"""benchmarks/gpu_check.py before any GPU: its dry run takes every code path on CPU, it runs
without oqat installed, and its checks fail on the faults they are for."""
import os
import subprocess
import sys
import sysconfig

import pytest
import torch

from oqat.space.builtin import MINI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dry_run_passes_every_check_on_cpu(capsys):
    assert gpu_check.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in ("lsq", "bf16 fp net", "bf16 4-bit net", "throughput", "ddp"):
        assert f"\nok: {name} (" in out
    assert "Trainer.train_step of mini" in out and "4-bit / 32-bit step time" in out
    assert "2 gloo ranks (torchrun, env://) end Trainer.run's 2 steps with identical weights" in out
    assert "summary: 5 of 5 checks passed;" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_oqat_installed_or_a_gpu_it_says_why_in_one_line_and_exits_2(tmp_path):
    # -S skips site, so the editable install's .pth is never read: only site-packages'
    # plain packages (torch) are importable, and oqat only by the script's own path.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    python = [sys.executable, "-S"]
    no_oqat = subprocess.run([*python, "-c", "import oqat"], env=env, cwd=tmp_path, capture_output=True)
    assert no_oqat.returncode != 0
    run = subprocess.run([*python, os.path.join(ROOT, "benchmarks", "gpu_check.py")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert len(lines) == 1
    assert f"torch {torch.__version__}" in lines[0]
    if torch.version.cuda is None:
        assert "is a CPU-only build" in lines[0]
    else:
        assert f"no usable CUDA GPU: torch {torch.__version__} built for CUDA {torch.version.cuda} sees 0 devices" \
            in lines[0]


def test_a_cpu_only_torch_build_is_named(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "is a CPU-only build" in gpu_check.cuda_problem()


def test_a_failing_check_is_reported_and_the_others_still_run(capsys):
    def out_of_memory():
        raise RuntimeError("CUDA out of memory.\n Tried to allocate 2.00 GiB")

    def one_gpu():
        raise gpu_check.Skipped("one GPU; DDP needs two")

    assert gpu_check.run_checks([("a", out_of_memory), ("b", lambda: "fine"), ("c", one_gpu)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "FAIL: a: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert out[1].startswith("ok: b (") and out[1].endswith("): fine")
    assert out[3].startswith("summary: 1 of 3 checks passed; FAILED: a; skipped: c (one GPU; DDP needs two);")


def test_lsq_check_catches_a_wrong_step_gradient_and_a_float32_round_trip(monkeypatch):
    real = gpu_check.lsq

    def step_gradient_1pc_high(v, s, bits, signed, hardswish):
        return real(v, s + 0.01 * (s - s.detach()), bits, signed, hardswish=hardswish)

    def round_trip(v, s, bits, signed, hardswish):
        return real(v.float(), s, bits, signed, hardswish=hardswish)

    monkeypatch.setattr(gpu_check, "lsq", step_gradient_1pc_high)
    with pytest.raises(AssertionError, match=r"float32 input, 4 bits, signed, step 0.3: differs from the closed"):
        gpu_check.check_lsq("cpu", (2, 8, 5, 5))
    monkeypatch.setattr(gpu_check, "lsq", round_trip)
    with pytest.raises(AssertionError, match="bfloat16 input, 4 bits.*v_hat is torch.float32, a round trip"):
        gpu_check.check_lsq("cpu", (2, 8, 5, 5))


class SwappedUnderAutocast(gpu_check.Supernet):
    """A broken bf16 path whose losses still look right: each image gets another's logits."""

    def forward(self, x):
        return super().forward(x.flip(0) if torch.is_autocast_enabled(x.device.type) else x)


class DetachedUnderAutocast(gpu_check.Supernet):
    """A broken bf16 path that trains nothing."""

    def forward(self, x):
        out = super().forward(x)
        return out.detach().requires_grad_() if torch.is_autocast_enabled(x.device.type) else out


def test_bf16_checks_catch_swapped_logits_and_lost_gradients(monkeypatch):
    monkeypatch.setattr(gpu_check, "Supernet", SwappedUnderAutocast)
    with pytest.raises(AssertionError, match="bf16 off float32 beyond 30% in logits"):
        gpu_check.check_bf16_fp("cpu", MINI, 4, 24)
    monkeypatch.setattr(gpu_check, "Supernet", DetachedUnderAutocast)
    with pytest.raises(AssertionError, match=r"bf16 gradients 0.00x the size of float32's"):
        gpu_check.check_bf16_quant("cpu", MINI, 4, 24)
