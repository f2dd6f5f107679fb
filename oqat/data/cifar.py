"""CIFAR-10/100 from the python release's pickled batches, read by an unpickler that builds
nothing but numpy arrays and plain containers (a batch file cannot run code).
"""
from __future__ import annotations

import codecs
import os
import pickle

import numpy as np
import torch

from .arrays import PAD, STATS, ArrayDataset
from .config import DataConfig, DataError

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


def cifar_files(cfg: DataConfig) -> tuple[list[str], list[str], bytes]:
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


def load_cifar(cfg: DataConfig) -> tuple[ArrayDataset, ArrayDataset]:
    train_files, test_files, key = cifar_files(cfg)
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
