"""What data a run reads (`DataConfig`, the `data` section of a run's config) and the one
error a data problem raises (`DataError`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args


class DataError(ValueError):
    """Missing, corrupt or inconsistent data; the message is one line."""


DatasetName = Literal["fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic"]


@dataclass
class DataConfig:
    name: DatasetName = "fashion-mnist"  # dataset; Fashion-MNIST is small and packaged by Debian
    root: str | None = None  # data folder; None: Debian's Fashion-MNIST if present, else cache_dir
    download: bool = True  # fetch Fashion-MNIST when missing (other datasets are never downloaded)
    cache_dir: str = "~/.cache/oqat"  # where downloads go and the other datasets are looked for
    val_size: int = 5000  # training images held out for search; about a tenth of CIFAR/FMNIST
    train_size: int | None = None  # keep only N training images after the val split (demos)
    batch_size: int = 128  # global training batch, split evenly across ranks; 128 suits one GPU
    eval_batch_size: int = 500  # evaluation batch; no gradients, so larger than training
    workers: int = 0  # DataLoader worker processes (imagefolder only); 0 loads in the main process
    augment: bool = True  # random crop and horizontal flip for training batches
    seed: int = 0  # seeds the val split, epoch order and augmentation
    synthetic_classes: int = 10  # classes of the synthetic set
    synthetic_size: int = 28  # side in pixels of synthetic images; 28 matches Fashion-MNIST
    synthetic_channels: int = 1  # channels of synthetic images
    synthetic_train: int = 512  # synthetic training images, val included; small for tests
    synthetic_test: int = 128  # synthetic test images
    image_size: int | None = None  # imagefolder size where no resolution is given (None: 224); others: native or None
    calib_augment: bool = False  # imagefolder: BN recalibration with the training augmentation (the authors: true)
    calib_batch_size: int | None = None  # BN recalibration batch (None: batch_size; the authors: 100)

    def __post_init__(self):
        if self.name not in get_args(DatasetName):
            names = ", ".join(get_args(DatasetName))
            raise ValueError(f"name must be one of {names}, got {self.name!r}")
        if self.name == "imagefolder" and self.root is None:
            raise ValueError("imagefolder needs root: a folder with train/ and val/ subfolders")
        for name in ("val_size", "workers", "synthetic_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "eval_batch_size", "synthetic_classes", "synthetic_size",
                     "synthetic_channels", "synthetic_train", "train_size", "image_size", "calib_batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.name == "synthetic" and self.val_size >= self.synthetic_train:
            raise ValueError(f"val_size={self.val_size} leaves no training images out of "
                             f"synthetic_train={self.synthetic_train}; set val_size lower")
