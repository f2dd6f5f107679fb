"""A dataset's train / val / test splits: the val split carved from the training set with a
seeded permutation (what search looks at), the test split only for final reports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .arrays import ArrayDataset
from .cifar import cifar_classes, cifar_files, load_cifar
from .config import DataConfig, DataError
from .fashion_mnist import fmnist_folder, load_fmnist
from .image_folders import IMAGENET_MEAN, IMAGENET_STD, FolderSubset, check_folders, load_folders
from .synthetic import load_synthetic

Dataset = ArrayDataset | FolderSubset


@dataclass
class Splits:
    train: Dataset  # training images (val removed, train_size applied)
    val: Dataset  # held-out training images, for search and model selection
    test: Dataset  # official test split, for final reports only
    num_classes: int  # number of labels
    in_channels: int  # image channels
    image_size: int  # side of the (square) network input
    mean: tuple[float, ...]  # normalization mean per channel
    std: tuple[float, ...]  # normalization std per channel
    classes: tuple[str, ...] | None = None  # the name of each label, where the data names them

    def preprocess(self, resolution: int) -> dict:
        """How an image file becomes this data's network input at `resolution` px, as
        `oqat.deploy.preprocess.Preprocess` reads it: the evaluation transform of `eval_batches`."""
        folder = isinstance(self.test, FolderSubset)
        return {"channels": self.in_channels, "resize": math.ceil(resolution / 0.875) if folder else self.image_size,
                "crop": resolution if folder else None, "size": resolution, "mean": list(self.mean),
                "std": list(self.std)}


def check_source(cfg: DataConfig) -> None:
    """Fail fast (DataError) unless ``cfg``'s data is there or can be downloaded; reads nothing."""
    if cfg.name == "fashion-mnist":
        fmnist_folder(cfg)
    elif cfg.name in ("cifar10", "cifar100"):
        cifar_files(cfg)
    elif cfg.name == "imagefolder":
        check_folders(cfg)


def load_splits(cfg: DataConfig) -> Splits:
    """Load ``cfg.name`` and split it into train / val (carved from train) / test."""
    if cfg.name == "fashion-mnist":
        train, test = load_fmnist(cfg)
    elif cfg.name in ("cifar10", "cifar100"):
        train, test = load_cifar(cfg)
    elif cfg.name == "synthetic":
        train, test = load_synthetic(cfg)
    else:
        train, test = load_folders(cfg)
    n = len(train)
    if cfg.val_size >= n:
        raise DataError(f"data.val_size={cfg.val_size} leaves no training images out of {n} "
                        f"in {cfg.name}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    val_idx, train_idx = perm[:cfg.val_size].sort().values, perm[cfg.val_size:]
    if cfg.train_size is not None:
        if cfg.train_size > len(train_idx):
            raise DataError(f"data.train_size={cfg.train_size} but only {len(train_idx)} "
                            f"{cfg.name} training images remain after the val split")
        train_idx = train_idx[:cfg.train_size]
    is_folder = isinstance(train, FolderSubset)
    val = train.take(val_idx, evaluation=True) if is_folder else train.take(val_idx)
    train = train.take(train_idx.sort().values)
    if is_folder:
        return Splits(train, val, test, len(train.folder.classes), 3, cfg.image_size or 224,
                      IMAGENET_MEAN, IMAGENET_STD, tuple(train.folder.classes))
    size = train.images.shape[-1]
    if cfg.image_size not in (None, size):
        raise DataError(f"data.image_size={cfg.image_size} but {cfg.name} images are {size} px; "
                        "leave it unset")
    classes = {"synthetic": cfg.synthetic_classes, "cifar100": 100}.get(cfg.name, 10)
    names = cifar_classes(cfg) if cfg.name in ("cifar10", "cifar100") else None
    if cfg.name == "fashion-mnist":
        from torchvision.datasets import FashionMNIST
        names = tuple(FashionMNIST.classes)
    if names is not None and len(names) != classes:
        raise DataError(f"{cfg.name}'s meta file names {len(names)} classes; expected {classes}")
    return Splits(train, val, test, classes, train.images.shape[1], size, train.mean, train.std, names)


def subset(ds: Dataset, n: int, seed: int) -> Dataset:
    """A seeded random ``n`` samples of ``ds`` (kept in their original order)."""
    if not 0 <= n <= len(ds):
        raise DataError(f"cannot take {n} samples from a dataset of {len(ds)}")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return ds.take(idx.sort().values)
