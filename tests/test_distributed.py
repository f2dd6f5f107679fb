import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from oqat.config.settings import ExperimentConfig
from oqat.core import distributed, typed
from oqat.train.trainer import Trainer

pytestmark = pytest.mark.slow  # spawns two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # 192 training images, global batch 16 (8 per rank): 12 steps.
    cfg = typed.load(ExperimentConfig, None, [
        "data.name=synthetic", "data.val_size=32", "data.synthetic_train=224", "data.batch_size=16",
        "train.epochs=1", "train.sandwich_random=1", "train.calib_images=32", "train.checkpoint_every=5",
        f"run.dir={folder}/run", "run.quiet=true"])
    d = distributed.init()
    try:
        trainer = Trainer(cfg, d)
        if rank == 1:  # a rank that starts different must still end identical
            with torch.no_grad():
                next(trainer.net.parameters()).add_(1.0)
        trainer.run()
        torch.save({k: v.cpu() for k, v in trainer.net.state_dict().items()}, f"{folder}/rank{rank}.pt")
        distributed.barrier(d)
    finally:
        distributed.close(d)


def test_two_gloo_ranks_end_identical(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)  # parameters and BN statistics
    first = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert any(k.endswith("step") and v.item() != 1.0 for k, v in first.items())  # steps were initialised
    # Only rank 0 wrote the run's files; its checkpoint has all 12 steps.
    assert (tmp_path / "run" / "supernet.pt").exists()
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] == 12
