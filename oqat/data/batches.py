"""Deterministic batch orders: every epoch order, shard and augmentation is a pure function of
(`cfg.seed`, epoch, batch index), so training resumes exactly mid-epoch and any number of
ranks sees the single-process batches.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from .arrays import ArrayDataset
from .config import DataConfig, DataError
from .image_folders import FolderSubset
from .splits import Dataset, subset


def _seed(*parts: int) -> int:
    # A stable 63-bit seed per (seed, epoch, batch); Python's hash() is not stable for this.
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def _normalize(images: Tensor, ds: ArrayDataset) -> Tensor:
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return (images.float().div_(255) - mean).div_(std)


def _augment(images: Tensor, pad: int, dy: Tensor, dx: Tensor, flip: Tensor) -> Tensor:
    """Crop at offsets (dy, dx) of the zero-padded images, then flip where ``flip``."""
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy, dx = dy.view(b, 1), dx.view(b, 1)
    rows = (dy + torch.arange(h)).view(b, 1, h, 1)
    cols = torch.arange(w).expand(b, w)
    cols = (torch.where(flip.view(b, 1), cols.flip(-1), cols) + dx).view(b, 1, 1, w)
    return padded[torch.arange(b).view(b, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]


def num_train_batches(ds: Dataset, cfg: DataConfig, world: int = 1) -> int:
    """Full batches per rank per epoch (the remainder of the epoch is dropped)."""
    if cfg.batch_size < world:
        raise DataError(f"data.batch_size={cfg.batch_size} is smaller than the {world} ranks")
    return len(ds) // (cfg.batch_size // world * world)


def _epoch_batches(ds: Dataset, cfg: DataConfig, epoch: int, rank: int, world: int,
                   start: int) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(batch index, global batch indices, this rank's indices) from ``start`` on."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside 0..{world - 1}")
    per, count = cfg.batch_size // world, num_train_batches(ds, cfg, world)
    if not 0 <= start <= count:
        raise ValueError(f"start={start} is outside 0..{count} batches")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(_seed(cfg.seed, epoch)))
    for b in range(start, count):
        whole = perm[b * per * world:(b + 1) * per * world]
        yield b, whole, whole[rank * per:(rank + 1) * per]


def train_batches(ds: Dataset, cfg: DataConfig, epoch: int, rank: int = 0, world: int = 1,
                  start: int = 0, sizes: Callable[[int], int] | None = None,
                  with_index: bool = False) -> Iterator[tuple]:
    """Shuffled, augmented, normalized training batches of rank ``rank`` out of ``world``.

    Each rank gets ``cfg.batch_size // world`` images per batch and the same number of
    batches; together the ranks see exactly the single-process batch of that size
    times ``world``. ``start`` skips batches already done, for exact resume. Augmentation
    of in-memory data is drawn per (seed, epoch, batch) for the whole global batch, so it
    does not depend on ``world`` or ``start``. For imagefolder the order is exact but the
    crops come from the DataLoader workers' RNG, and ``sizes(b)``, the resolution batch ``b``
    will run at, is what its images are cropped to (the authors' random-resized-crop straight
    at the sampled resolution); in-memory batches come at their native size. ``with_index``:
    (x, y, the images' positions in ``ds``) for in-memory data, (x, y, None) for folders.
    """
    if isinstance(ds, FolderSubset):
        batches = [[(i, sizes(b)) if sizes else i for i in idx.tolist()]
                   for b, _, idx in _epoch_batches(ds, cfg, epoch, rank, world, start)]
        for x, y in torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=cfg.workers,
                                                pin_memory=torch.cuda.is_available()):
            yield (x, y, None) if with_index else (x, y)
        return
    for b, whole, mine in _epoch_batches(ds, cfg, epoch, rank, world, start):
        x = ds.images[mine]
        if cfg.augment and ds.pad:
            # Drawn for the whole global batch, then this rank's share is taken.
            g = torch.Generator().manual_seed(_seed(cfg.seed, epoch, b))
            dy, dx = torch.randint(0, 2 * ds.pad + 1, (2, len(whole)), generator=g)
            flip = torch.rand(len(whole), generator=g) < 0.5
            share = slice(rank * len(mine), (rank + 1) * len(mine))
            x = _augment(x, ds.pad, dy[share], dx[share], flip[share])
        yield (_normalize(x, ds), ds.labels[mine]) + ((mine,) if with_index else ())


def eval_batches(ds: Dataset, cfg: DataConfig, resolution: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Every sample in order, normalized, ``cfg.eval_batch_size`` at a time; image folders
    decoded at ``resolution`` (default: their size), in-memory images at their native size."""
    size = cfg.eval_batch_size
    if isinstance(ds, FolderSubset):
        ds = ds if resolution is None else ds.at(resolution)
        yield from torch.utils.data.DataLoader(ds, batch_size=size, num_workers=cfg.workers,
                                               pin_memory=torch.cuda.is_available())
        return
    for i in range(0, len(ds), size):
        yield _normalize(ds.images[i:i + size], ds), ds.labels[i:i + size]


def calib_batches(ds: Dataset, cfg: DataConfig, n: int, seed: int,
                  resolution: int | None = None) -> list[tuple[Tensor, Tensor]]:
    """A fixed seeded ``n`` training samples in batches of ``cfg.calib_batch_size`` (default
    ``cfg.batch_size``), to re-estimate the BatchNorm statistics of a sub-network. Image
    folders are decoded at ``resolution``, with the training augmentation if
    ``cfg.calib_augment`` (as the authors: 2000 images, batch 100), its draws seeded by ``seed``.
    """
    picked = subset(ds, n, seed)
    if isinstance(picked, FolderSubset):
        picked = picked.at(resolution or picked.size, augment=cfg.calib_augment)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return list(eval_batches(picked, replace(cfg, eval_batch_size=cfg.calib_batch_size or cfg.batch_size)))
