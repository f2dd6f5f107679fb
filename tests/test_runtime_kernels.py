"""The runtime's compute kernels: every ISA path bit for bit against the scalar reference.

Builds oqat/runtime/tests/kernel_test.c with the kernel files (each ISA file with its own flags,
-Wall -Wextra -Werror), once plainly and once with AddressSanitizer and UBSan, and runs it with
OQAT_RT_ISA set to each path; a path this CPU cannot run is skipped with the program's reason.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "oqat" / "runtime" / "src"
TEST = ROOT / "oqat" / "runtime" / "tests" / "kernel_test.c"
FLAGS = ["-std=c11", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror"]
ISA_FLAGS = {
    "kernels_ref.c": [],
    "dispatch.c": [],
    "kernels_avx2.c": ["-mavx2", "-mfma"],
    "kernels_avx512.c": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavxvnni"],
}
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
PATHS = ["scalar", "avx2", "avx512vnni"]

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or not sys.platform.startswith("linux"),
                                reason="needs a C compiler on Linux")
X86 = os.uname().machine in ("x86_64", "AMD64")


def _build(out: Path, extra: list[str]) -> Path:
    objs = []
    files = ISA_FLAGS if X86 else {k: v for k, v in ISA_FLAGS.items() if not v}
    for name, isa in files.items():
        obj = out / (name + ".o")
        subprocess.run(["cc", *FLAGS, *extra, *isa, "-c", str(SRC / name), "-o", str(obj)], check=True)
        objs.append(str(obj))
    exe = out / "kernel_test"
    subprocess.run(["cc", *FLAGS, *extra, f"-I{SRC}", str(TEST), *objs, "-lm", "-o", str(exe)], check=True)
    return exe


@pytest.fixture(scope="module")
def binaries(tmp_path_factory):
    plain = _build(tmp_path_factory.mktemp("plain"), [])
    sanitized = _build(tmp_path_factory.mktemp("asan"), SANITIZE)
    return {"plain": plain, "sanitized": sanitized}


@pytest.mark.parametrize("build", ["plain", "sanitized"])
@pytest.mark.parametrize("path", PATHS)
def test_path_matches_scalar(binaries, build, path):
    if path != "scalar" and not X86:
        pytest.skip(f"{path} is an x86-64 path")
    env = dict(os.environ, OQAT_RT_ISA=path, ASAN_OPTIONS="detect_leaks=1")
    run = subprocess.run([str(binaries[build])], env=env, capture_output=True, text=True, timeout=120)
    if run.returncode == 77:
        pytest.skip(run.stdout.strip())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 mismatches" in run.stdout


def test_unknown_path_is_refused(binaries):
    env = dict(os.environ, OQAT_RT_ISA="no-such-isa")
    run = subprocess.run([str(binaries["plain"])], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "unknown kernel path" in run.stdout


@pytest.mark.skipif(not X86, reason="the benchmark's fp32 GEMMs are x86-64 code")
def test_benchmark_tiny_runs():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_speed.py"), "--tiny", "--bits", "2,4",
                          "--no-torch"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "GMAC/s" in run.stdout and "all (MAC-weighted)" in run.stdout
