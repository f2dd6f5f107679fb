"""In-memory datasets: uint8 NCHW tensors (an `ArrayDataset`, 1 byte per pixel), normalized and
augmented per batch, with the fixed per-channel statistics and crop padding of each in-memory dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

# Per-channel statistics of the training sets, fixed so normalization never depends on the split.
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


PAD = {"fashion-mnist": 2, "cifar10": 4, "cifar100": 4, "synthetic": 2}  # random-crop padding


@dataclass(eq=False)
class ArrayDataset:
    images: Tensor  # uint8, N x C x H x W; kept uint8 so a dataset costs 1 byte per pixel
    labels: Tensor  # int64, N
    mean: tuple[float, ...]  # per-channel mean in [0, 1] units, subtracted per batch
    std: tuple[float, ...]  # per-channel std in [0, 1] units, divided per batch
    pad: int  # random-crop padding for training augmentation

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: Tensor) -> ArrayDataset:
        return ArrayDataset(self.images[index], self.labels[index], self.mean, self.std, self.pad)
