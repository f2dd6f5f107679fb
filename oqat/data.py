"""Datasets and deterministic batch iterators.

Fashion-MNIST, CIFAR-10/100 and the synthetic set live in memory as uint8 NCHW
tensors (an :class:`ArrayDataset`) and are augmented and normalized per batch on
tensors. ``imagefolder`` reads image files through torchvision with a DataLoader.

Every epoch order, shard and augmentation is a pure function of
(``cfg.seed``, epoch, batch index), so training resumes exactly mid-epoch.
A validation split is carved from the training set with a seeded permutation and
is what search looks at; the test split is only for final reports.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import logging
import math
import os
import pickle
import socket
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Missing, corrupt or inconsistent data; the message is one line."""


# torchvision's FashionMNIST.mirrors[0] and the md5s of its FashionMNIST.resources (a test checks
# both), written out so that importing this module does not import torchvision (seconds).
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Byte size and md5 of the files served at FASHION_MNIST_URL (the zalandoresearch release).
# Debian's dataset-fashion-mnist holds the same images re-gzipped without the file name in
# the gzip header, so its copies are smaller and hash differently; they are never checked.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (26421880, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train-labels-idx1-ubyte.gz": (29515, "25c81989df183df01b3e8a0aad5dffbe"),
    "t10k-images-idx3-ubyte.gz": (4422102, "bef4ecab320f06d8554ea6380940ec79"),
    "t10k-labels-idx1-ubyte.gz": (5148, "bb300cfdad3c16e7a12a480ee83cd310"),
}
SYSTEM_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Per-channel statistics of the training sets, fixed so normalization never depends on the split.
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DatasetName = Literal["fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic"]
PAD = {"fashion-mnist": 2, "cifar10": 4, "cifar100": 4, "synthetic": 2}  # random-crop padding


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
        `oqat.preprocess.Preprocess` reads it: the evaluation transform of `eval_batches`."""
        folder = isinstance(self.test, FolderSubset)
        return {"channels": self.in_channels, "resize": math.ceil(resolution / 0.875) if folder else self.image_size,
                "crop": resolution if folder else None, "size": resolution, "mean": list(self.mean),
                "std": list(self.std)}


# ---------------------------------------------------------------- Fashion-MNIST

def read_idx(path: str, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or raw) with ``ndim`` dimensions."""
    # Not torchvision's read_sn3_pascalvincent_tensor: it reads the path as it is, while Debian
    # ships the files gzipped only, and it checks the header with asserts, which name no file
    # and vanish under `python -O`.
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read '{path}': {e}") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise DataError(f"'{path}' is not an IDX file of {ndim}-d unsigned bytes (bad magic)")
    head = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:head], dtype=">u4"))
    if len(raw) != head + int(np.prod(shape)):
        raise DataError(f"'{path}' has {len(raw) - head} data bytes, header {shape} says "
                        f"{int(np.prod(shape))}: truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)


def _find_fmnist(folder: str, stem: str) -> str | None:
    paths = (os.path.join(folder, f"{stem}.gz"), os.path.join(folder, stem))
    return next((p for p in paths if os.path.isfile(p)), None)


DOWNLOAD_TIMEOUT_S = 60  # seconds a download may wait on the server for data


def download_fashion_mnist(dest: str, base_url: str = FASHION_MNIST_URL,
                           files: dict[str, tuple[int, str]] = FASHION_MNIST_FILES) -> None:
    """Fetch the missing files into ``dest`` with torchvision's downloader, verifying byte
    size and md5 of each.

    A file appears in ``dest`` only whole and verified: torchvision's download_url writes
    straight to its target and leaves a file that fails its md5 there, so each file is
    downloaded into a temporary folder in ``dest``, checked, then moved in (os.replace).
    """
    from torchvision.datasets.utils import calculate_md5, download_url

    os.makedirs(dest, exist_ok=True)
    # torchvision's urlopen waits forever on a stalled server; a socket timeout ends it with an error.
    timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        _download_missing(dest, base_url, files, download_url, calculate_md5)
    finally:
        socket.setdefaulttimeout(timeout)


def _download_missing(dest, base_url, files, download_url, calculate_md5) -> None:
    for name, (size, md5) in files.items():
        if _find_fmnist(dest, name.removesuffix(".gz")):
            continue
        url = base_url + name
        log.info("downloading %s", url)
        try:
            with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
                download_url(url, tmp, name)
                part = os.path.join(tmp, name)
                got, digest = os.path.getsize(part), calculate_md5(part)
                if (got, digest) != (size, md5):
                    raise DataError(f"download of {url} failed verification (expected {size} bytes, "
                                    f"md5 {md5}; got {got} bytes, md5 {digest}); nothing was saved")
                os.replace(part, os.path.join(dest, name))
        except OSError as e:  # urllib's URLError and HTTPError included
            raise DataError(f"could not download {url} ({e}); install Fashion-MNIST with "
                            "`apt-get install dataset-fashion-mnist` or copy the files into "
                            f"{dest}") from None


_FMNIST_STEMS = [n.removesuffix(".gz") for n in FASHION_MNIST_FILES]


def _fmnist_folder(cfg: DataConfig) -> tuple[str, bool]:
    """Where Fashion-MNIST is (or is to be downloaded to), and whether every file is there."""
    if cfg.root is not None:
        folder = os.path.expanduser(cfg.root)
        if not os.path.isdir(folder):  # most often a typo: `oqat config check` would pass it, the run fail later
            raise DataError(f"data.root '{cfg.root}' is not a folder; expected the folder that holds Fashion-MNIST, "
                            "or an existing one to download it into")
    elif _find_fmnist(SYSTEM_FASHION_MNIST, "train-images-idx3-ubyte"):
        folder = SYSTEM_FASHION_MNIST
    else:
        folder = os.path.join(os.path.expanduser(cfg.cache_dir), "fashion-mnist")
    if all(_find_fmnist(folder, s) for s in _FMNIST_STEMS):
        return folder, True
    if not cfg.download:
        raise DataError(f"Fashion-MNIST not found in '{folder}' (looked for "
                        f"{', '.join(_FMNIST_STEMS)}, raw or .gz); run `apt-get install "
                        "dataset-fashion-mnist` or set data.download=true")
    return folder, False


def _load_fmnist(cfg: DataConfig) -> tuple[ArrayDataset, ArrayDataset]:
    # Not torchvision's FashionMNIST: it reads gunzipped files under root/FashionMNIST/raw only,
    # and Debian's are gzipped, in a folder of their own.
    folder, present = _fmnist_folder(cfg)
    if not present:
        download_fashion_mnist(folder, FASHION_MNIST_URL, FASHION_MNIST_FILES)
    paths = [_find_fmnist(folder, s) for s in _FMNIST_STEMS]
    arrays = [read_idx(p, 3 if "images" in s else 1) for p, s in zip(paths, _FMNIST_STEMS)]
    mean, std = STATS["fashion-mnist"]
    out = []
    for images, labels, path in ((*arrays[:2], paths[0]), (*arrays[2:], paths[2])):
        if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max(initial=0) > 9:
            raise DataError(f"Fashion-MNIST '{path}' and its labels are inconsistent: images "
                            f"{images.shape}, {len(labels)} labels (max {labels.max(initial=0)}); "
                            "expected N x 28 x 28 and N labels in 0..9")
        x = torch.from_numpy(images.copy()).unsqueeze(1)  # copy: frombuffer is read-only
        y = torch.from_numpy(labels.astype(np.int64))
        out.append(ArrayDataset(x, y, mean, std, PAD["fashion-mnist"]))
    return out[0], out[1]


# ---------------------------------------------------------------- CIFAR

# torchvision's CIFAR10 and CIFAR100 give the files' layout but read them with pickle.load,
# which runs whatever code a file names: a downloaded or shared file is untrusted, so the
# batches are read by this unpickler, which builds numpy arrays and plain containers only.

# numpy's own array-rebuilding function, whatever module path this numpy version gives it.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes pickled by Python 3 at protocol 2
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; anything else is refused."""

    def __init__(self, fh, path: str):
        super().__init__(fh, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise DataError(f"refusing to unpickle {module}.{name} from '{self.path}' "
                            "(a CIFAR batch holds only numpy arrays and lists)")
        return _SAFE_GLOBALS[module, name]


def read_cifar_batch(path: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 3 x 32 x 32 uint8) and labels of one python-format CIFAR batch file."""
    try:
        with open(path, "rb") as fh:
            batch = _SafeUnpickler(fh, path).load()
    except (FileNotFoundError, DataError):
        raise
    except Exception as e:  # a damaged pickle can fail in many ways; all mean "bad file"
        raise DataError(f"cannot read CIFAR batch '{path}': {e}") from None
    batch = batch if isinstance(batch, dict) else {}
    data, labels = batch.get(b"data"), np.asarray(batch.get(label_key, []), dtype=np.int64)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072 and len(labels) == len(data)):
        raise DataError(f"'{path}' is not a CIFAR batch: expected b'data' uint8 N x 3072 "
                        f"and {label_key!r} with N labels")
    return data.reshape(-1, 3, 32, 32), labels


def cifar_classes(cfg: DataConfig) -> tuple[str, ...] | None:
    """The label names in CIFAR's meta file beside its batches (read as safely as they are);
    None where the copy has none."""
    from torchvision.datasets import CIFAR10, CIFAR100

    layout = CIFAR10 if cfg.name == "cifar10" else CIFAR100
    path = os.path.join(os.path.expanduser(cfg.root or cfg.cache_dir), layout.base_folder, layout.meta["filename"])
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as fh:
            names = _SafeUnpickler(fh, path).load()[layout.meta["key"].encode()]
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except DataError:
        raise
    except Exception as e:  # a damaged pickle can fail in many ways; all mean "bad file"
        raise DataError(f"cannot read CIFAR's label names '{path}': {e}") from None


def _cifar_files(cfg: DataConfig) -> tuple[list[str], list[str], bytes]:
    """(training batch files, test batch files, label key): torchvision's CIFAR10 or
    CIFAR100 layout under the root; missing files: DataError."""
    from torchvision.datasets import CIFAR10, CIFAR100

    root = os.path.expanduser(cfg.root or cfg.cache_dir)
    layout, key = (CIFAR10, b"labels") if cfg.name == "cifar10" else (CIFAR100, b"fine_labels")
    paths = [[os.path.join(root, layout.base_folder, f) for f, _ in files]
             for files in (layout.train_list, layout.test_list)]
    missing = next((p for p in paths[0] + paths[1] if not os.path.isfile(p)), None)
    if missing:
        raise DataError(f"{cfg.name} not found: missing '{missing}'; download {layout.url}, extract it "
                        f"into '{root}' (giving {layout.base_folder}/) or set data.root to where it is")
    return paths[0], paths[1], key


def _load_cifar(cfg: DataConfig) -> tuple[ArrayDataset, ArrayDataset]:
    train_files, test_files, key = _cifar_files(cfg)
    out = []
    classes = 10 if cfg.name == "cifar10" else 100
    for files in (train_files, test_files):
        parts = [read_cifar_batch(f, key) for f in files]
        for f, (_, labels) in zip(files, parts):
            if len(labels) and not 0 <= labels.min() <= labels.max() < classes:
                raise DataError(f"'{f}' has labels {labels.min()}..{labels.max()}; {cfg.name} labels are "
                                f"0..{classes - 1}")
        images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        mean, std = STATS[cfg.name]
        out.append(ArrayDataset(images, labels, mean, std, PAD[cfg.name]))
    return out[0], out[1]


# ---------------------------------------------------------------- synthetic

def _load_synthetic(cfg: DataConfig) -> tuple[ArrayDataset, ArrayDataset]:
    g = torch.Generator().manual_seed(cfg.seed)
    k, c, s = cfg.synthetic_classes, cfg.synthetic_channels, cfg.synthetic_size
    # Smooth, left-right symmetric class patterns: they survive crop and flip augmentation.
    coarse = torch.rand(k, c, 4, 4, generator=g)
    protos = F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    protos = (protos + protos.flip(-1)) / 2
    out = []
    for n in (cfg.synthetic_train, cfg.synthetic_test):
        labels = torch.randint(0, k, (n,), generator=g)
        x = protos[labels] * 0.6 + 0.2 + 0.15 * torch.randn(n, c, s, s, generator=g)
        out.append(((x.clamp(0, 1) * 255).round().to(torch.uint8), labels))
    train = out[0][0].float() / 255
    mean = tuple(train.mean(dim=(0, 2, 3)).tolist())
    std = tuple(train.std(dim=(0, 2, 3)).tolist())
    return tuple(ArrayDataset(x, y, mean, std, PAD["synthetic"]) for x, y in out)


# ---------------------------------------------------------------- image folders

def _check_folders(cfg: DataConfig) -> str:
    root = os.path.expanduser(cfg.root)
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise DataError(f"imagefolder: '{os.path.join(root, split)}' not found; data.root "
                            "must hold train/<class>/*.jpg and val/<class>/*.jpg (as ImageNet)")
    return root


def _load_folders(cfg: DataConfig) -> tuple[FolderSubset, FolderSubset]:
    from torchvision import datasets

    root, size = _check_folders(cfg), cfg.image_size or 224
    try:
        train, test = (datasets.ImageFolder(os.path.join(root, split)) for split in ("train", "val"))
    except FileNotFoundError as err:  # a class folder without one image file
        raise DataError(f"imagefolder '{root}': {str(err).splitlines()[0]}") from None
    if test.classes != train.classes:
        raise DataError(f"imagefolder: val/ classes differ from train/ classes in '{root}'")
    return (FolderSubset(train, torch.arange(len(train.samples)), size, cfg.augment),
            FolderSubset(test, torch.arange(len(test.samples)), size, False))


# ---------------------------------------------------------------- splits

def check_source(cfg: DataConfig) -> None:
    """Fail fast (DataError) unless ``cfg``'s data is there or can be downloaded; reads nothing."""
    if cfg.name == "fashion-mnist":
        _fmnist_folder(cfg)
    elif cfg.name in ("cifar10", "cifar100"):
        _cifar_files(cfg)
    elif cfg.name == "imagefolder":
        _check_folders(cfg)


def load_splits(cfg: DataConfig) -> Splits:
    """Load ``cfg.name`` and split it into train / val (carved from train) / test."""
    if cfg.name == "fashion-mnist":
        train, test = _load_fmnist(cfg)
    elif cfg.name in ("cifar10", "cifar100"):
        train, test = _load_cifar(cfg)
    elif cfg.name == "synthetic":
        train, test = _load_synthetic(cfg)
    else:
        train, test = _load_folders(cfg)
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


# ---------------------------------------------------------------- batches

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
