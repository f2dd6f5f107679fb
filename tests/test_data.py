import functools
import gzip
import hashlib
import http.server
import os
import pickle
import socket
import threading

import numpy as np
import pytest
import torch

from oqat.core import typed
from oqat.core.typed import ConfigError
from oqat.data import arrays, fashion_mnist, image_folders
from oqat.data.batches import _augment, calib_batches, eval_batches, num_train_batches, train_batches
from oqat.data.config import DataConfig, DataError
from oqat.data.splits import load_splits, subset

FMNIST = fashion_mnist.SYSTEM_FASHION_MNIST
needs_fmnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FMNIST, "train-labels-idx1-ubyte.gz")),
    reason="Debian's dataset-fashion-mnist is not installed",
)


def indexed(n: int, pad: int = 2) -> arrays.ArrayDataset:
    """A dataset whose label is the sample index, to follow samples through the loaders."""
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    return arrays.ArrayDataset(images.to(torch.uint8), torch.arange(n), (0.5,), (0.25,), pad)


def synthetic(**kw) -> DataConfig:
    return DataConfig(**{"name": "synthetic", "val_size": 64, "batch_size": 32, **kw})


# ---------------------------------------------------------------- config


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"^field 'name' expects one of 'fashion-mnist', "):
        typed.from_dict(DataConfig, {"name": "mnist"})
    with pytest.raises(ConfigError, match=r"^invalid 'data': val_size must be >= 0, got -1$"):
        typed.from_dict(DataConfig, {"val_size": -1}, "data")
    with pytest.raises(ValueError, match="val_size=5000 leaves no training images"):
        DataConfig(name="synthetic")
    with pytest.raises(ValueError, match="imagefolder needs root"):
        DataConfig(name="imagefolder")
    assert "val_size: 5000  # training images held out" in typed.describe(DataConfig)
    cfg = typed.apply_overrides(DataConfig(), ["name=synthetic", "val_size=64"])
    assert (cfg.name, cfg.val_size) == ("synthetic", 64)


# ---------------------------------------------------------------- Fashion-MNIST


@needs_fmnist
def test_read_idx_real_files():
    labels = fashion_mnist.read_idx(os.path.join(FMNIST, "train-labels-idx1-ubyte.gz"), 1)
    assert labels.shape == (60000,) and np.bincount(labels).tolist() == [6000] * 10
    images = fashion_mnist.read_idx(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz"), 3)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8


@needs_fmnist
def test_load_fashion_mnist_splits():
    splits = load_splits(DataConfig(train_size=1000))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1000, 5000, 10000)
    assert splits.train.images.shape[1:] == (1, 28, 28) and splits.train.images.dtype == torch.uint8
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, 28)
    assert splits.test.labels.min() == 0 and splits.test.labels.max() == 9


def write_idx(path, array: np.ndarray, magic: bytes = b"\x00\x00\x08"):
    head = magic + bytes([array.ndim]) + np.array(array.shape, ">u4").tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(head + array.astype(np.uint8).tobytes())


def test_read_idx_raw_and_gz(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", array)
    write_idx(tmp_path / "a.gz", array)
    assert (fashion_mnist.read_idx(str(tmp_path / "a"), 3) == array).all()
    assert (fashion_mnist.read_idx(str(tmp_path / "a.gz"), 3) == array).all()


def test_read_idx_rejects_bad_files(tmp_path):
    write_idx(tmp_path / "magic", np.zeros((2, 2)), magic=b"\x00\x00\x0d")
    with pytest.raises(DataError, match=r"'.*magic' is not an IDX file"):
        fashion_mnist.read_idx(str(tmp_path / "magic"), 2)
    with pytest.raises(DataError, match="is not an IDX file of 3-d"):
        fashion_mnist.read_idx(str(tmp_path / "magic"), 3)
    write_idx(tmp_path / "short", np.zeros((2, 2)))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(DataError, match=r"'.*short' has 3 data bytes, header \(2, 2\) says 4"):
        fashion_mnist.read_idx(str(tmp_path / "short"), 2)
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8bnot gzip at all")
    with pytest.raises(DataError, match=r"cannot read '.*bad.gz'"):
        fashion_mnist.read_idx(str(tmp_path / "bad.gz"), 2)


def test_missing_fashion_mnist_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as info:
        load_splits(DataConfig(root=str(tmp_path), download=False))
    message = str(info.value)
    assert str(tmp_path) in message and "apt-get install dataset-fashion-mnist" in message
    assert "data.download=true" in message and "\n" not in message


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(quiet, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def table(folder) -> dict:
    out = {}
    for name in fashion_mnist.FASHION_MNIST_FILES:
        blob = (folder / name).read_bytes()
        out[name] = (len(blob), hashlib.md5(blob).hexdigest())
    return out


@needs_fmnist
def test_download_verifies_and_loads(server, tmp_path, monkeypatch):
    served, url = server
    for name in fashion_mnist.FASHION_MNIST_FILES:
        os.symlink(os.path.join(FMNIST, name), served / name)
    # Debian's copies are re-gzipped, so the test serves them under their own checksums.
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_URL", url)
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_FILES", table(served))
    dest = tmp_path / "dest"
    dest.mkdir()  # a data.root must exist: a missing one is refused as a typo
    splits = load_splits(DataConfig(root=str(dest), val_size=100, train_size=10))
    assert len(splits.test) == 10000
    assert sorted(os.listdir(dest)) == sorted(fashion_mnist.FASHION_MNIST_FILES)
    for name in fashion_mnist.FASHION_MNIST_FILES:
        assert (dest / name).read_bytes() == (served / name).read_bytes()


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path):
    served, url = server
    good = b"\x00" * 100
    (served / "good.gz").write_bytes(good)
    (served / "bad.gz").write_bytes(b"\x01" + good[1:])  # same size, other md5
    files = {name: (100, hashlib.md5(good).hexdigest()) for name in ("good.gz", "bad.gz")}
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=r"download of .*bad.gz failed verification .*nothing was"):
        fashion_mnist.download_fashion_mnist(str(dest), url, files)
    assert os.listdir(dest) == ["good.gz"], "only the verified file may be kept"
    (served / "long.gz").write_bytes(good + b"extra")
    with pytest.raises(DataError, match=r"expected 100 bytes, md5 \w+; got 10\d bytes"):
        fashion_mnist.download_fashion_mnist(str(dest), url, {"long.gz": files["good.gz"]})
    with pytest.raises(DataError, match=r"could not download .*absent.gz.*apt-get install"):
        fashion_mnist.download_fashion_mnist(str(dest), url, {"absent.gz": (1, "0" * 32)})
    assert os.listdir(dest) == ["good.gz"]


def test_official_table_is_torchvisions():
    from torchvision.datasets import FashionMNIST

    assert fashion_mnist.FASHION_MNIST_URL == FashionMNIST.mirrors[0]
    assert {name: md5 for name, (_, md5) in fashion_mnist.FASHION_MNIST_FILES.items()} == dict(FashionMNIST.resources)


@needs_fmnist
def test_official_table_matches_debian_repack():
    """Debian's copies are the official ones minus the file name stored in the gzip header."""
    for name, (size, _) in fashion_mnist.FASHION_MNIST_FILES.items():
        stored = len(name.removesuffix(".gz")) + 1  # the name and its NUL terminator
        assert os.path.getsize(os.path.join(FMNIST, name)) + stored == size


# ---------------------------------------------------------------- CIFAR


def write_cifar(root, name: str, per_file: int = 4) -> dict:
    """Python-format CIFAR files as the originals: dicts with bytes keys, pickle protocol 2."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, key = root / "cifar-10-batches-py", b"labels"
        files = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    else:
        folder, key, files = root / "cifar-100-python", b"fine_labels", ["train", "test"]
    folder.mkdir(parents=True)
    written = {}
    for f in files:
        batch = {
            b"batch_label": b"fake",
            b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            key: rng.integers(0, 10, per_file).tolist(),
            b"filenames": [b"x.png"] * per_file,
        }
        (folder / f).write_bytes(pickle.dumps(batch, protocol=2))
        written[f] = batch
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_format(tmp_path, name):
    written = write_cifar(tmp_path, name)
    splits = load_splits(DataConfig(name=name, root=str(tmp_path), val_size=2))
    n_train = 20 if name == "cifar10" else 4
    assert (len(splits.train), len(splits.val), len(splits.test)) == (n_train - 2, 2, 4)
    assert (splits.in_channels, splits.image_size) == (3, 32)
    assert splits.num_classes == (10 if name == "cifar10" else 100)
    test = written["test_batch" if name == "cifar10" else "test"]
    # The 3072 bytes of a row are the red, green and blue planes, each 32 x 32 row-major.
    assert (splits.test.images[1, 2].numpy() == test[b"data"][1, 2048:].reshape(32, 32)).all()
    key = b"labels" if name == "cifar10" else b"fine_labels"
    assert splits.test.labels.tolist() == test[key]
    assert splits.classes is None  # a copy without its meta file


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_class_names_come_from_its_meta_file(tmp_path, name):
    write_cifar(tmp_path, name)
    n, (folder, meta, key) = (10, ("cifar-10-batches-py", "batches.meta", b"label_names")) if name == "cifar10" else \
        (100, ("cifar-100-python", "meta", b"fine_label_names"))
    names = [f"class {i}".encode() for i in range(n)]
    (tmp_path / folder / meta).write_bytes(pickle.dumps({key: names, b"num_vis": 3072}, protocol=2))
    cfg = DataConfig(name=name, root=str(tmp_path), val_size=2)
    assert load_splits(cfg).classes == tuple(f"class {i}" for i in range(n))
    (tmp_path / folder / meta).write_bytes(pickle.dumps({key: names[:3]}, protocol=2))
    with pytest.raises(DataError, match=f"meta file names 3 classes; expected {n}"):
        load_splits(cfg)
    (tmp_path / folder / meta).write_bytes(pickle.dumps(Evil(tmp_path / "pwned")))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_splits(cfg)
    assert not (tmp_path / "pwned").exists()


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(pickle.dumps({b"data": Evil(marker), b"labels": []}, protocol=2))
    refused = r"refusing to unpickle (posix|os)\.system from '.*_batch_3'"
    with pytest.raises(DataError, match=refused):
        load_splits(DataConfig(name="cifar10", root=str(tmp_path), val_size=2))
    assert not marker.exists()


def test_bad_and_missing_cifar(tmp_path):
    write_cifar(tmp_path, "cifar100")
    (tmp_path / "cifar-100-python" / "test").write_bytes(pickle.dumps({b"data": [1]}, protocol=2))
    with pytest.raises(DataError, match=r"'.*test' is not a CIFAR batch"):
        load_splits(DataConfig(name="cifar100", root=str(tmp_path), val_size=2))
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match=r"cannot read CIFAR batch '.*test'"):
        load_splits(DataConfig(name="cifar100", root=str(tmp_path), val_size=2))
    with pytest.raises(DataError, match=r"cifar10 not found: .*cifar-10-python.tar.gz"):
        load_splits(DataConfig(name="cifar10", root=str(tmp_path / "none")))


# ---------------------------------------------------------------- synthetic and splits


def test_synthetic_is_deterministic_and_learnable():
    a, b = load_splits(synthetic()), load_splits(synthetic())
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    other = load_splits(synthetic(seed=1))
    assert not torch.equal(a.train.images, other.train.images)
    assert (a.num_classes, a.in_channels, a.image_size, len(a.test)) == (10, 1, 28, 128)
    # A nearest-class-mean classifier must do well: there is signal to learn.
    x, y = a.train.images.flatten(1).float(), a.train.labels
    means = torch.stack([x[y == k].mean(0) for k in range(10)])
    guess = torch.cdist(a.test.images.flatten(1).float(), means).argmin(1)
    assert (guess == a.test.labels).float().mean() > 0.9


def image_keys(ds) -> set:
    return {bytes(img.numpy().tobytes()) for img in ds.images}


def test_val_split_is_disjoint_and_stable():
    splits = load_splits(synthetic())
    train, val = image_keys(splits.train), image_keys(splits.val)
    assert len(val) == 64 and len(train) == 512 - 64 and not train & val
    again = load_splits(synthetic())
    assert image_keys(again.val) == val
    reseeded = load_splits(synthetic(seed=3))
    assert len(image_keys(reseeded.val)) == 64
    small = load_splits(synthetic(train_size=100))
    assert len(small.train) == 100 and image_keys(small.train) <= train
    assert image_keys(small.val) == val, "train_size must not move the val split"


def test_split_errors():
    with pytest.raises(DataError, match="train_size=1000 but only 448"):
        load_splits(synthetic(train_size=1000))
    with pytest.raises(DataError, match="image_size=32 but synthetic images are 28 px"):
        load_splits(synthetic(image_size=32))


# ---------------------------------------------------------------- loaders


def labels_of(batches) -> list[list[int]]:
    return [y.tolist() for _, y in batches]


def test_train_batches_are_deterministic():
    ds, cfg = indexed(100), synthetic(batch_size=16)
    first = list(train_batches(ds, cfg, epoch=0))
    again = list(train_batches(ds, cfg, epoch=0))
    assert len(first) == num_train_batches(ds, cfg) == 6
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert first[0][0].dtype == torch.float32 and first[0][0].shape == (16, 1, 8, 8)
    assert labels_of(first) != labels_of(train_batches(ds, cfg, epoch=1))
    reseeded = synthetic(batch_size=16, seed=1)
    assert labels_of(first) != labels_of(train_batches(ds, reseeded, 0))
    seen = sum(labels_of(first), [])
    assert len(set(seen)) == 96, "an epoch visits each sample at most once"


def test_sharding_splits_the_global_batch():
    ds, cfg = indexed(100), synthetic(batch_size=16)
    whole = list(train_batches(ds, cfg, 0))
    ranks = [list(train_batches(ds, cfg, 0, rank=r, world=2)) for r in range(2)]
    assert num_train_batches(ds, cfg, world=2) == len(ranks[0]) == len(ranks[1]) == 6
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *ranks):
        assert len(y0) == len(y1) == 8 and not set(y0.tolist()) & set(y1.tolist())
        # Same images and same augmentation as one process with the global batch.
        assert torch.equal(torch.cat([y0, y1]), y) and torch.equal(torch.cat([x0, x1]), x)


def test_uneven_batch_size_per_rank():
    ds, cfg = indexed(100), synthetic(batch_size=10)
    batches = list(train_batches(ds, cfg, 0, rank=2, world=3))
    assert num_train_batches(ds, cfg, world=3) == len(batches) == 100 // 9
    assert all(len(y) == 3 for _, y in batches)
    with pytest.raises(DataError, match="batch_size=10 is smaller than the 11 ranks"):
        num_train_batches(ds, cfg, world=11)


def test_resume_with_start_gives_the_remaining_batches():
    ds, cfg = indexed(100), synthetic(batch_size=16)
    full = list(train_batches(ds, cfg, epoch=2, rank=1, world=2))
    rest = list(train_batches(ds, cfg, epoch=2, rank=1, world=2, start=4))
    assert len(rest) == 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[4:], rest))
    with pytest.raises(ValueError, match="start=7 is outside 0..6"):
        next(train_batches(ds, cfg, epoch=0, start=7))


def test_augmentation_crops_and_flips():
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    one = torch.ones(1, dtype=torch.long)
    same = _augment(images, 2, one * 2, one * 2, torch.tensor([False]))
    assert torch.equal(same, images)
    flipped = _augment(images, 2, one * 2, one * 2, torch.tensor([True]))
    assert torch.equal(flipped, images.flip(-1))
    down = _augment(images, 2, one * 0, one * 2, torch.tensor([False]))
    assert torch.equal(down[0, 0, 2:], images[0, 0, :2]) and down[0, 0, :2].sum() == 0
    ds, cfg = indexed(64), synthetic(batch_size=64)
    plain = next(train_batches(ds, synthetic(batch_size=64, augment=False), 0))[0]
    assert not torch.equal(next(train_batches(ds, cfg, 0))[0], plain)


def test_eval_batches_cover_everything_in_order():
    ds, cfg = indexed(23), synthetic(eval_batch_size=10)
    batches = list(eval_batches(ds, cfg))
    assert [len(y) for _, y in batches] == [10, 10, 3]
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(23))
    x = torch.cat([x for x, _ in batches])
    assert torch.allclose(x, (ds.images.float() / 255 - 0.5) / 0.25)


def test_calib_batches_and_subset():
    ds, cfg = indexed(100), synthetic(batch_size=16)
    calib = calib_batches(ds, cfg, n=40, seed=5)
    assert [len(y) for _, y in calib] == [16, 16, 8]
    assert labels_of(calib) == labels_of(calib_batches(ds, cfg, n=40, seed=5))
    assert labels_of(calib) != labels_of(calib_batches(ds, cfg, n=40, seed=6))
    picked = torch.cat([y for _, y in calib])
    expected = (ds.images[picked].float() / 255 - 0.5) / 0.25
    assert torch.allclose(torch.cat([x for x, _ in calib]), expected)
    small = subset(ds, 10, seed=1)
    assert len(small) == 10 and small.labels.tolist() == sorted(set(small.labels.tolist()))
    with pytest.raises(DataError, match="cannot take 101 samples from a dataset of 100"):
        subset(ds, 101, seed=0)


# ---------------------------------------------------------------- image folders


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), image_size=8, val_size=2,
                     batch_size=4, eval_batch_size=3)
    splits = load_splits(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 4)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (2, 3, 8)
    batches = list(train_batches(splits.train, cfg, 0, rank=1, world=2, start=1))
    assert len(batches) == 1 and batches[0][0].shape == (2, 3, 8, 8)
    assert [len(y) for _, y in eval_batches(splits.test, cfg)] == [3, 1]
    calib = calib_batches(splits.train, cfg, n=3, seed=0)
    assert torch.equal(calib[0][0], calib_batches(splits.train, cfg, n=3, seed=0)[0][0])
    with pytest.raises(DataError, match=r"imagefolder: '.*train/train' not found"):
        load_splits(DataConfig(name="imagefolder", root=str(tmp_path / "train")))


def test_imagefolder_preprocessing_is_the_authors(tmp_path):
    """Evaluation at r: resize to ceil(r / 0.875), centre-crop r; training crops straight to
    each batch's resolution; BN calibration optionally with the training augmentation."""
    import math

    from PIL import Image
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(1)
    for split, count in (("train", 4), ("val", 1)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), val_size=2, batch_size=2, eval_batch_size=2,
                     calib_batch_size=3)
    splits = load_splits(cfg)
    (x, _), = eval_batches(splits.test, cfg, 12)
    image = Image.open(splits.test.folder.samples[0][0]).convert("RGB")
    mean = torch.tensor(image_folders.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(image_folders.IMAGENET_STD)[:, None, None]

    def centre(side: int) -> torch.Tensor:
        return (TF.to_tensor(TF.center_crop(TF.resize(image, side), 12)) - mean) / std

    assert math.ceil(12 / 0.875) == 14 and int(12 / 0.875) == 13
    assert torch.allclose(x[0], centre(14), atol=1e-6) and not torch.allclose(x[0], centre(13), atol=1e-3)
    sizes = {0: 8, 1: 16, 2: 12}
    shapes = [x.shape[-1] for x, _ in train_batches(splits.train, cfg, 0, sizes=sizes.__getitem__)]
    assert shapes == [8, 16, 12]
    plain = calib_batches(splits.train, cfg, n=4, seed=0, resolution=10)
    assert [len(y) for _, y in plain] == [3, 1] and plain[0][0].shape[-1] == 10
    aug_cfg = DataConfig(**{**vars(cfg), "calib_augment": True})
    aug = calib_batches(splits.train, aug_cfg, n=4, seed=0, resolution=10)
    assert torch.equal(aug[0][0], calib_batches(splits.train, aug_cfg, n=4, seed=0, resolution=10)[0][0])
    assert not torch.allclose(aug[0][0], plain[0][0])


def test_a_stalled_server_ends_the_download_with_an_error(tmp_path, monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    monkeypatch.setattr(fashion_mnist, "DOWNLOAD_TIMEOUT_S", 0.5)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    try:
        with pytest.raises(DataError, match=r"could not download .*x.gz.*timed out"):
            fashion_mnist.download_fashion_mnist(str(tmp_path / "dest"), url, {"x.gz": (1, "0" * 32)})
    finally:
        listener.close()
    assert socket.getdefaulttimeout() is None and os.listdir(tmp_path / "dest") == []
