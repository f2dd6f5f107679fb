import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for tiny nets: on a busy 2-core machine two contending threads make
    them 10-100x slower. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
