"""The runtime from C: a program classifies images with no Python in the loop, the reader takes
every truncation and damaged or hostile word of a file cleanly, and both run clean under
AddressSanitizer and UndefinedBehaviorSanitizer."""
import os
import random
import subprocess

import numpy as np
import pytest
from test_runtime import MINI, TINY, images, random_net

from oqat.runtime import build, model_file
from oqat.runtime.binding import Model

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime")


def program(name: str, flags: list[str]) -> str:
    try:
        return build.build(tuple(flags), program=os.path.join(HERE, f"{name}.c"))
    except build.RuntimeUnavailable as err:
        pytest.skip(str(err))


def classify(exe: str, model: str, x: np.ndarray, tmp_path, threads: int = 1) -> tuple[np.ndarray, str]:
    """(logits, isa) as the C program prints them."""
    out = subprocess.run([exe, model, _raw(x, tmp_path), str(len(x)), str(threads)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = [[float(v) for v in line.split()] for line in lines[:-1]]
    assert all(int(r[0]) == np.argmax(r[1:]) for r in rows)
    return np.array([r[1:] for r in rows], np.float32), lines[-1].removeprefix("isa ")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A mini network's file and images, and the logits the Python binding gives."""
    tmp = tmp_path_factory.mktemp("small")
    net = random_net(MINI, MINI.sample(random.Random(5)), 3)
    path = str(tmp / "model.oqrt")
    model_file.write(net, path)
    x = images(MINI, net.arch, n=5).numpy()
    return path, x, Model(path, threads=1)(x)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.oqrt")
    model_file.write(random_net(TINY, TINY.sample(random.Random(2)), 2), path)
    return path


def test_a_c_program_classifies_images_without_python(small, tmp_path):
    path, x, want = small
    exe = program("classify", build.STRICT)
    for threads in (1, 2):
        logits, isa = classify(exe, path, x, tmp_path, threads)
        np.testing.assert_array_equal(logits, want)
        assert isa == Model(path).isa
    bad = subprocess.run([exe, os.path.join(tmp_path, "images.f32"), path, "1"], capture_output=True, text=True)
    assert bad.returncode == 1 and "bad magic" in bad.stderr


def test_the_reader_takes_every_damaged_file_cleanly(tiny):
    exe = program("fuzz", build.STRICT)
    out = subprocess.run([exe, tiny], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    counts = dict(zip(*[iter(out.stdout.split())] * 2))
    assert int(counts["truncated"]) == os.path.getsize(tiny) and int(counts["silent"]) == 0
    assert int(counts["loaded"]) > 1  # some damage (a weight's bits) leaves a valid file, which then runs


@pytest.mark.slow  # builds the runtime with sanitizers and runs its programs
def test_sanitizers_find_nothing(small, tiny, tmp_path):
    """The library, the program and the fuzzer built with -fsanitize=address,undefined."""
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
    path, x, want = small
    exe = program("classify", build.SANITIZE)
    for threads in (1, 2):
        out = subprocess.run([exe, path, _raw(x, tmp_path), str(len(x)), str(threads)], capture_output=True,
                             text=True, timeout=120, env=env)
        assert out.returncode == 0 and not out.stderr, out.stderr[-3000:]
        rows = np.array([[float(v) for v in line.split()[1:]] for line in out.stdout.splitlines()[:-1]], np.float32)
        np.testing.assert_array_equal(rows, want)
    out = subprocess.run([program("fuzz", build.SANITIZE), tiny], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0 and "ERROR" not in out.stderr and "runtime error" not in out.stderr, out.stderr[-3000:]


def _raw(x: np.ndarray, tmp_path) -> str:
    path = os.path.join(tmp_path, "images.f32")
    x.astype("<f4").tofile(path)
    return path
