import pytest
import torch
from processes import TINY_RUN


@pytest.fixture
def one_thread():
    """One torch thread for tiny nets: on a busy 2-core machine two contending threads make
    them 10-100x slower. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# Stages 3 -> 2 bits, then a mixed stage of both: what every command and run-reading benchmark needs.
TINY_MIXED_STAGES = "stages=[{bits: 3, epochs: 1}, {bits: 2, epochs: 1, lr: 0.05}, {bits: [2, 3], epochs: 1, lr: 0.05}]"


@pytest.fixture(scope="session")
def tiny_mixed_run(tmp_path_factory) -> str:
    """A finished tiny `oqat run` (about 10 s) with a mixed stage: its folder, shared by the tests
    that only read it."""
    from oqat.cli import main
    folder = str(tmp_path_factory.mktemp("tiny-mixed-run"))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # The tiny 3-bit supernet predicts one class; a 2-bit smallest's gradients explode without clipping.
        code = main(["run", f"run.dir={folder}", *TINY_RUN, TINY_MIXED_STAGES, "train.grad_clip=5", "--quiet"])
    finally:
        torch.set_num_threads(previous)
    assert code == 0
    return folder
