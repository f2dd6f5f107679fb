"""Image folders (ImageNet's layout: train/<class>/*.jpg, val/<class>/*.jpg), read through
torchvision and decoded per item at the resolution a batch asks for, with the authors'
preprocessing; an unreadable file is skipped with one warning.
"""
from __future__ import annotations

import math
import os
import sys

import torch
from torch import Tensor

from .config import DataConfig, DataError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def folder_transform(size: int, augment: bool):
    """The authors' ImageNet preprocessing (OFA's provider in their release) at `size` pixels.
    Training: random-resized-crop straight to `size` (scale 0.08-1), flip, OFA's "tf" colour
    jitter. Evaluation: resize to ceil(size / 0.875), centre-crop `size` (224 from 256)."""
    from torchvision import transforms as t

    norm = [t.ToTensor(), t.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if augment:
        return t.Compose([t.RandomResizedCrop(size, scale=(0.08, 1.0)), t.RandomHorizontalFlip(),
                          t.ColorJitter(brightness=32 / 255, saturation=0.5), *norm])
    return t.Compose([t.Resize(math.ceil(size / 0.875)), t.CenterCrop(size), *norm])


class FolderSubset(torch.utils.data.Dataset):
    """Some samples of a torchvision ImageFolder, decoded at `size` pixels by `folder_transform`.
    An item may also be (index, size): a training batch decoded straight at its drawn resolution."""

    def __init__(self, folder, indices: Tensor, size: int, augment: bool):
        self.folder, self.indices, self.size, self.augment = folder, indices, size, augment
        self._transforms: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item):
        """Sample `item`; a file that does not decode is skipped with a warning naming it, the
        next readable sample of this subset taking its place: one bad file in millions should
        not end a long run, and batches keep their size and their replay on resume."""
        i, size = item if isinstance(item, tuple) else (item, self.size)
        if size not in self._transforms:
            self._transforms[size] = folder_transform(size, self.augment)
        for k in range(len(self.indices)):
            path, label = self.folder.samples[int(self.indices[(i + k) % len(self.indices)])]
            try:
                image = self.folder.loader(path)
            except Exception as err:  # whatever a broken file makes PIL raise
                _warn_unreadable(path, err)
                continue
            return self._transforms[size](image), label
        raise DataError(f"imagefolder: none of the {len(self.indices)} images of a split under "
                        f"'{self.folder.root}' can be read")

    def take(self, index: Tensor, evaluation: bool = False) -> FolderSubset:
        return FolderSubset(self.folder, self.indices[index], self.size, self.augment and not evaluation)

    def at(self, size: int, augment: bool | None = None) -> FolderSubset:
        """The same samples decoded at `size` (augmented or not; default: as now)."""
        return FolderSubset(self.folder, self.indices, size, self.augment if augment is None else augment)


_unreadable: set[str] = set()


def _warn_unreadable(path: str, err: Exception) -> None:
    if path not in _unreadable:  # once per file and process, not once per epoch
        _unreadable.add(path)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"oqat: warning: skipping unreadable image '{path}' ({first}); the next image of its split "
              "stands in for it", file=sys.stderr, flush=True)


def check_folders(cfg: DataConfig) -> str:
    root = os.path.expanduser(cfg.root)
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise DataError(f"imagefolder: '{os.path.join(root, split)}' not found; data.root "
                            "must hold train/<class>/*.jpg and val/<class>/*.jpg (as ImageNet)")
    return root


def load_folders(cfg: DataConfig) -> tuple[FolderSubset, FolderSubset]:
    from torchvision import datasets

    root, size = check_folders(cfg), cfg.image_size or 224
    try:
        train, test = (datasets.ImageFolder(os.path.join(root, split)) for split in ("train", "val"))
    except FileNotFoundError as err:  # a class folder without one image file
        raise DataError(f"imagefolder '{root}': {str(err).splitlines()[0]}") from None
    if test.classes != train.classes:
        raise DataError(f"imagefolder: val/ classes differ from train/ classes in '{root}'")
    return (FolderSubset(train, torch.arange(len(train.samples)), size, cfg.augment),
            FolderSubset(test, torch.arange(len(test.samples)), size, False))
