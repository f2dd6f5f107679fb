"""Fashion-MNIST: its IDX files (gzipped or raw), found in Debian's copy or the cache, or
downloaded and checked against the release's sizes and md5s.
"""
from __future__ import annotations

import gzip
import logging
import os
import socket
import tempfile
import zlib

import numpy as np
import torch

from .arrays import PAD, STATS, ArrayDataset
from .config import DataConfig, DataError

log = logging.getLogger(__name__)

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


def fmnist_folder(cfg: DataConfig) -> tuple[str, bool]:
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


def load_fmnist(cfg: DataConfig) -> tuple[ArrayDataset, ArrayDataset]:
    # Not torchvision's FashionMNIST: it reads gunzipped files under root/FashionMNIST/raw only,
    # and Debian's are gzipped, in a folder of their own.
    folder, present = fmnist_folder(cfg)
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
