"""Process-group helpers for `torchrun`: init from the environment, flat collectives.

Training does not wrap the model in DistributedDataParallel. A sandwich step runs
several subnets (different parameter subsets) forward and backward before one optimizer
step; DDP's per-backward gradient hooks would need `no_sync()` on all but the last
backward and `find_unused_parameters=True`, whose unused-parameter search costs a graph
walk per backward. Instead each rank accumulates its gradients locally and one
flattened all-reduce averages them before the step: one collective per step, and
correct whatever subset of parameters the step's subnets touched (every rank draws the
same subnets, so the set of parameters with gradients is the same on every rank).
"""
import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0  # this process's rank
    world: int = 1  # number of processes
    device: torch.device = torch.device("cpu")  # where this rank computes

    @property
    def main(self) -> bool:
        """Rank 0: the only rank that writes files and shows progress."""
        return self.rank == 0


def device() -> torch.device:
    """Where this process computes: its GPU (torchrun's LOCAL_RANK) when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init() -> Dist:
    """A process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT) on `device()`: NCCL with one GPU per rank when CUDA is present, else
    gloo. Without WORLD_SIZE > 1 it is a single process and no group is made."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    here = device()
    cuda = here.type == "cuda"
    if cuda:
        torch.cuda.set_device(here)
    if world <= 1:
        return Dist(0, 1, here)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    return Dist(dist.get_rank(), dist.get_world_size(), here)


@contextlib.contextmanager
def group():
    """`init`'s Dist for a block of work, closed after it if this call made the group: a
    training stage joins the group its caller (`oqat run`, a benchmark) already has."""
    made = not (dist.is_available() and dist.is_initialized())
    d = init()
    try:
        yield d
    finally:
        if made:
            close(d)


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def close(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean_(tensors: list[torch.Tensor], world: int) -> None:
    """Average `tensors` (float, same dtype and device) over ranks, in place, with one
    collective on a flat buffer: gloo and NCCL both pay per call, not per byte, for the
    many small tensors of a network."""
    if world <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    _unflatten(flat / world, tensors)


def broadcast_(tensors: list[torch.Tensor], world: int) -> None:
    """Copy rank 0's `tensors` to every rank (start from identical weights)."""
    if world <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.broadcast(flat, 0)
    _unflatten(flat, tensors)


def _unflatten(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
