"""The faults of a real machine (docs/faults.md): a full disk, an unusable run folder, SIGTERM
and Ctrl-C, two runs on one folder, damaged data, a diverging run. Process tests drive a real
`oqat` through OQAT_PAUSE_AT events (tests/processes.py), never through timing."""
import errno
import io
import os
import pickle
import re
import shutil
import signal
import subprocess

import numpy as np
import pytest
import torch
from processes import TINY_RUN, paused, resume, start
from test_data import write_cifar, write_idx

from oqat.cli import main
from oqat.config.settings import ExperimentConfig
from oqat.core import faults, typed
from oqat.core.io import load
from oqat.data import config, image_folders
from oqat.data.batches import eval_batches, train_batches
from oqat.data.splits import load_splits
from oqat.files import checkpoints
from oqat.train.trainer import DivergedError, Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")

ONE_STAGE = "stages=[{bits: 4, epochs: 1}]"  # half of TINY_RUN's time, for tests of one stage, search and export
TINY_TRAIN = [*TINY_RUN[:9], "train.checkpoint_every=3", "train.epochs=1"]  # 8 steps: checkpoints at 3, 6 and 8


def temp_files(folder) -> list[str]:
    return [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names if f.startswith(".tmp-")]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs folder, unmounted afterwards; skips where mounting is not allowed."""
    mounted = []

    def make(options: str):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=True)


# --- a full disk ---------------------------------------------------------------------------
class _FullDisk(io.RawIOBase):
    """A file on a disk that fills after `room` bytes, as a real one: part of the data lands."""

    def __init__(self, fd: int, room: int):
        self.file, self.room = io.FileIO(fd, "wb"), room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        b = memoryview(b).cast("B")
        if len(b) > self.room:
            self.file.write(b[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.file.write(b)

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()
        super().close()


def fill_disk_for(monkeypatch, name: str, after: int = 0) -> None:
    """The disk is full for the (after+1)-th and later writes of a file called `name`."""
    real, seen = os.fdopen, []

    def fdopen(fd, *args, **kw):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".tmp-{name}"):
            seen.append(fd)
            if len(seen) > after:
                return _FullDisk(fd, room=100)
        return real(fd, *args, **kw)

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    proc = start(run, ONE_STAGE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return run


def _rerun(run, tmp_path, forget: str | None = None) -> tuple[list[str], object]:
    """A copy of the finished run with `forget` deleted, and `oqat run`'s arguments for it."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    if forget:
        os.unlink(copy / forget)
    return ["run", f"run.dir={copy}", *TINY_RUN, ONE_STAGE, "--quiet"], copy


@pytest.mark.slow
@pytest.mark.parametrize("output, after", [("last.pt", 1), ("supernet.pt", 0), ("model.onnx", 0),
                                           ("results.json", 0)])
def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_previous_one(
        output, after, tmp_path, monkeypatch, capsys, request):
    if output in ("last.pt", "supernet.pt"):  # a training's checkpoint (the second) and its supernet
        args, run = ["train", *TINY_TRAIN, f"run.dir={tmp_path}", "--quiet"], tmp_path
        target = run / ("checkpoints/last.pt" if output == "last.pt" else "supernet.pt")
    else:  # a rerun that exports the 4-bit S again, or writes its report again
        forget = "export/4bit-S/facts.json" if output == "model.onnx" else None
        args, run = _rerun(request.getfixturevalue("finished_run"), tmp_path, forget)
        target = run / ("export/4bit-S/model.onnx" if output == "model.onnx" else "results.json")
    fill_disk_for(monkeypatch, output, after)
    before = target.read_bytes() if target.exists() else None
    assert main(args) == 2
    kept = "its previous version is kept" if before is not None or after else "nothing was written"
    assert one_line(capsys) == f"oqat {args[0]}: error: cannot write '{target}': No space left on device; {kept}"
    if before is not None:
        assert target.read_bytes() == before
    if output == "last.pt":  # the first checkpoint, whole
        assert checkpoints.load_training(str(target))["step"] == 3
    if output == "supernet.pt":
        assert not target.exists() and checkpoints.load_training(str(run / "checkpoints/last.pt"))["step"] == 8
    assert not temp_files(run)


@pytest.mark.slow
@pytest.mark.signals
def test_a_full_tmpfs_mid_training_keeps_the_last_checkpoint_and_the_rerun_finishes(tmp_path, mount):
    disk = mount("size=64m")
    run, last = disk / "run", disk / "run" / "stages" / "0-4bit" / "checkpoints" / "last.pt"
    proc = start(run, ONE_STAGE, pause_at="checkpoint")
    assert paused(proc)
    while not last.exists():
        resume(proc)
        assert paused(proc)
    good = last.read_bytes()  # the step-2 checkpoint; the step-4 one is next
    filler = disk / "filler"
    with open(filler, "wb") as f:
        stat = os.statvfs(disk)
        os.posix_fallocate(f.fileno(), 0, stat.f_bavail * stat.f_frsize)
    resume(proc)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert err.strip().splitlines() == [
        f"oqat run: error: cannot write '{last}': No space left on device; its previous version is kept"]
    assert last.read_bytes() == good and not temp_files(run)
    filler.unlink()
    proc = start(run, ONE_STAGE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert (run / "results.json").is_file() and not temp_files(run)


# --- an unusable run folder --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "under a file", "read-only"])
def test_an_unusable_run_dir_is_refused_before_any_work(kind, tmp_path, mount, capsys):
    if kind == "read-only":
        run = mount("ro,size=1m") if os.geteuid() == 0 else tmp_path / "ro"
        if os.geteuid() != 0:
            run.mkdir()
            run.chmod(0o555)
        expected = f"run.dir '{run}' cannot be written: " + ("Read-only file system" if os.geteuid() == 0
                                                              else "Permission denied")
    else:
        (tmp_path / "f").write_text("not a folder")
        run = tmp_path / "f/sub" if kind == "under a file" else tmp_path / "f"
        expected = (f"run.dir '{run}' cannot be written: Not a directory" if kind == "under a file"
                    else f"run.dir '{run}' is a file; expected a folder (or a path to create one at)")
    before = sorted(os.listdir(tmp_path))
    for command in ("run", "train"):
        assert main([command, f"run.dir={run}", *TINY_RUN, "--quiet"]) == 2
        assert one_line(capsys) == f"oqat {command}: error: {expected}"
    assert sorted(os.listdir(tmp_path)) == before and (kind != "file" or (tmp_path / "f").read_text() == "not a folder")


# --- SIGTERM and Ctrl-C ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.signals
def test_sigterm_and_ctrl_c_in_training_search_and_export_stop_cleanly_and_the_rerun_finishes(tmp_path):
    run = tmp_path / "run"
    last = run / "stages" / "0-4bit" / "checkpoints" / "last.pt"
    stops = [("checkpoint", signal.SIGTERM, "SIGTERM"), ("search-generation", signal.SIGINT, "SIGINT (Ctrl-C)"),
             ("export", signal.SIGTERM, "SIGTERM")]
    for event, sig, name in stops:
        proc = start(run, ONE_STAGE, pause_at=event)
        assert paused(proc)
        while event == "checkpoint" and not last.exists():  # in training, once there is a checkpoint to keep
            resume(proc)
            assert paused(proc)
        resume(proc, sig)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + sig, err
        assert err == f"oqat run: stopped by {name}; run it again to resume\n"
        assert out.rstrip().endswith(f"[oqat] paused at {event}") and not temp_files(run)
        assert checkpoints.load_training(str(last))["step"] >= 2  # a whole checkpoint to resume from
    assert not (run / "export" / "4bit-S" / "facts.json").exists()  # stopped before the first export
    proc = start(run, ONE_STAGE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "stage " not in out and "search:" not in out  # what was done stays done
    assert (run / "results.json").is_file() and not temp_files(run)


@pytest.mark.slow
@pytest.mark.signals
def test_sigterm_in_oqat_train_keeps_its_checkpoint_and_the_rerun_finishes(tmp_path):
    proc = start(tmp_path, "train.epochs=1", command="train", pause_at="checkpoint")
    assert paused(proc)
    resume(proc)
    assert paused(proc)  # before the second checkpoint (step 4)
    resume(proc, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err == "oqat train: stopped by SIGINT (Ctrl-C); run it again to resume\n"
    assert checkpoints.load_training(str(tmp_path / "checkpoints" / "last.pt"))["step"] == 2
    proc = start(tmp_path, "train.epochs=1", command="train")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert checkpoints.load_supernet(str(tmp_path / "supernet.pt"))[1]["val"]["step"] == 8


# --- two writers -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.signals
def test_a_second_run_or_train_on_a_busy_run_dir_is_refused_and_a_crash_frees_it(tmp_path):
    run = tmp_path / "run"
    first = start(run, ONE_STAGE, pause_at="checkpoint")
    assert paused(first)
    snapshot = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    for command, extra in (("run", []), ("train", ["train.epochs=1"])):  # a run refuses train.epochs
        second = start(run, *extra, command=command)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2 and err == (
            f"oqat {command}: error: run.dir '{run}' is in use by another oqat process (pid {first.pid}); "
            "wait for it to end or use another run.dir\n")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == snapshot  # the refused wrote nothing
    first.kill()  # a crash: no chance to release anything
    first.wait(timeout=60)
    with faults.run_dir_lock(str(run)):  # the kernel dropped the lock with its process
        assert (run / faults.LOCK_FILE).read_text() == f"{os.getpid()}\n"


# --- damaged data ----------------------------------------------------------------------------
def _fmnist(root, damage: str) -> str:
    rng = np.random.default_rng(0)
    for kind, n in (("train", 40), ("t10k", 10)):
        images = rng.integers(0, 256, (n, 28, 27 if damage == "wrong size" and kind == "train" else 28), np.uint8)
        write_idx(root / f"{kind}-images-idx3-ubyte", images)
        write_idx(root / f"{kind}-labels-idx1-ubyte", rng.integers(0, 10, n + (damage == "labels"), np.uint8))
    images = root / "train-images-idx3-ubyte"
    if damage == "truncated":
        images.write_bytes(images.read_bytes()[:1000])
        return f"'{images}' has 984 data bytes, header (40, 28, 28) says 31360: truncated or corrupt"
    shape = "(40, 28, 27)" if damage == "wrong size" else "(40, 28, 28)"
    return (f"Fashion-MNIST '{images}' and its labels are inconsistent: images {shape}, "
            f"{40 + (damage == 'labels')} labels (max 9); expected N x 28 x 28 and N labels in 0..9")


def _cifar(root, damage: str) -> str:
    write_cifar(root, "cifar10")
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    if damage == "truncated":
        batch.write_bytes(batch.read_bytes()[:5000])
        return f"cannot read CIFAR batch '{batch}': pickle data was truncated"
    rows = pickle.loads(batch.read_bytes(), encoding="bytes")
    if damage == "wrong size":
        rows[b"data"] = rows[b"data"][:, :3000]
    else:
        rows[b"labels"][1] = 10
    batch.write_bytes(pickle.dumps(rows, protocol=2))
    return (f"'{batch}' is not a CIFAR batch: expected b'data' uint8 N x 3072 and b'labels' with N labels"
            if damage == "wrong size" else f"'{batch}' has labels {min(rows[b'labels'])}..10; cifar10 labels are 0..9")


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
@pytest.mark.parametrize("damage", ["truncated", "wrong size", "labels"])
def test_a_damaged_dataset_file_is_one_line_naming_it(name, damage, tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    expected = (_fmnist if name == "fashion-mnist" else _cifar)(root, damage)
    args = [*TINY_RUN[4:9], f"data.name={name}", f"data.root={root}", "data.val_size=4", "data.batch_size=4"]
    assert main(["train", *args, f"run.dir={tmp_path / 'run'}", "--quiet"]) == 2
    assert one_line(capsys) == f"oqat train: error: {expected}"


def _jpegs(root, names: dict[str, int]) -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    for name, n in names.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), np.uint8)).save(root / name / f"{i}.jpg")


def test_an_unreadable_image_is_skipped_with_one_warning_naming_it(tmp_path, capsys):
    from torchvision.datasets import ImageFolder
    _jpegs(tmp_path / "train", {"a": 4, "b": 4})
    _jpegs(tmp_path / "val", {"a": 2, "b": 2})
    text, cut = tmp_path / "train" / "a" / "1.jpg", tmp_path / "train" / "b" / "2.jpg"
    text.write_text("not an image")
    cut.write_bytes(cut.read_bytes()[:200])
    cfg = config.DataConfig(name="imagefolder", root=str(tmp_path), batch_size=3, eval_batch_size=8, workers=0)
    images = image_folders.FolderSubset(ImageFolder(str(tmp_path / "train")), torch.arange(8), 8, augment=False)
    for _ in range(2):  # two epochs, one warning a file
        (x, y), = eval_batches(images, cfg)
        assert len(y) == 8 and torch.isfinite(x).all()
        assert [len(y) for _, y in train_batches(images, cfg, 0)] == [3, 3]
    warned = capsys.readouterr().err.splitlines()
    assert len(warned) == 2 and all(w.startswith("oqat: warning: skipping unreadable image '") for w in warned)
    assert {w.split("'")[1] for w in warned} == {str(text), str(cut)}
    assert torch.equal(images[1][0], images[2][0]) and images[1][1] == 0  # the next image stands in, with its label
    with pytest.raises(config.DataError, match=r"none of the 2 images .* can be read"):
        image_folders.FolderSubset(images.folder, torch.tensor([1, 6]), 8, augment=False)[0]
    (tmp_path / "train" / "c").mkdir()  # a class folder without one image
    with pytest.raises(config.DataError, match=r"imagefolder '.*': Found no valid file for the classes c\."):
        load_splits(cfg)


# --- divergence ------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_diverging_run_stops_saying_so_and_what_to_try_and_saves_no_nonfinite_weights(tmp_path, capsys):
    assert main(["run", f"run.dir={tmp_path}", *TINY_RUN, "train.lr=1e6", "--quiet"]) == 2
    err = one_line(capsys)
    # Which shows first, a non-finite loss or non-finite weights, depends on the thread count and on
    # what ran before in the process (seen both ways): either stops the run, saying so.
    assert re.match(r"oqat run: error: training diverged: non-finite (loss at|weights after) step ", err)
    assert "try a lower lr (this stage's is 1e+06) or train.grad_clip, in a new run.dir" in err
    assert not list(tmp_path.rglob("supernet.pt"))
    for path in tmp_path.rglob("*.pt"):  # the checkpoints kept are all finite
        state = load(str(path))["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_nonfinite_weights_after_a_finite_loss_are_never_saved(tmp_path, monkeypatch):
    cfg = typed.load(ExperimentConfig, None, [*TINY_TRAIN, f"run.dir={tmp_path}", "run.quiet=true"])
    validate = Trainer.validate

    def overflowed(self):  # the last step's update overflowed: the loss saw the weights before it
        result = validate(self)
        self.net.classifier.weight.data[0, 0] = float("inf")
        return result

    monkeypatch.setattr(Trainer, "validate", overflowed)
    with pytest.raises(DivergedError, match=r"non-finite weights after step 8 \(classifier\.weight\); try a "
                                            r"lower lr .* \(the last good checkpoint is '.*last\.pt'\)"):
        train(cfg)
    assert not (tmp_path / "supernet.pt").exists()
    assert checkpoints.load_training(str(tmp_path / "checkpoints" / "last.pt"))["step"] == 6
