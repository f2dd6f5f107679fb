"""Every file oqat reads is checked as a whole (oqat.files), and generated malformed inputs
(architecture strings, config overrides, corrupted checkpoint files) each end in a clean
one-line error: never a traceback, never a half-written output."""
import copy
import functools
import io
import json
import os
import random

import pytest
import torch

from oqat.cli import main
from oqat.core import typed
from oqat.core.io import PNG_DPI, CheckpointError, load, read_json, save, write_json, write_png, write_text
from oqat.data.config import DataConfig
from oqat.files import checkpoints, records
from oqat.nets.supernet import Supernet
from oqat.space.arch import Arch
from oqat.space.builtin import MBV3, MINI, PROXYLESS
from oqat.space.structure import SearchSpace, Stage, mbv3_head
from oqat.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

# A space too small to take time: files of it load in milliseconds.
TINY = SearchSpace(name="files-tiny", stem_width=8, stem_stride=2, first_block=Stage(8, 1, "relu", False),
                   stages=(Stage(16, 2, "relu", False), Stage(16, 1, "h_swish", True)), kernel_sizes=(3, 5),
                   expand_ratios=(2, 3), depths=(1, 2), resolutions=(12, 16), head=mbv3_head(24, 32),
                   in_channels=1, num_classes=3)
DATA = DataConfig(name="synthetic", val_size=16, synthetic_train=64, synthetic_test=16, synthetic_size=16,
                  synthetic_classes=3)
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "fashion-mnist.yaml")


@functools.lru_cache(maxsize=None)
def good_files(folder: str) -> dict[str, str]:
    """One valid file of each checkpoint kind, written once per session."""
    torch.manual_seed(0)
    net = Supernet(TINY, 4)
    for i, q in enumerate(net.quantizers()):
        q.step.data.fill_(0.02 * (i + 1))
    arch = TINY.sample(random.Random(0))
    paths = {kind: os.path.join(folder, f"{kind}.pt") for kind in ("supernet", "subnet", "packed")}
    checkpoints.save_supernet(net, paths["supernet"], {"data": typed.to_dict(DATA)})
    checkpoints.save_subnet(net.extract(arch), paths["subnet"])
    checkpoints.save_packed(net.extract(arch).eval(), paths["packed"])
    run = os.path.join(folder, "train")
    train(typed.load(_experiment(), None, [
        "data.name=synthetic", "data.val_size=16", "data.synthetic_train=80", "data.batch_size=32",
        "train.calib_images=16", "train.epochs=1", "train.sandwich_random=0", f"run.dir={run}", "run.quiet=true"]))
    paths["training"] = os.path.join(run, "checkpoints", "last.pt")
    return paths


def _experiment():
    from oqat.config.settings import ExperimentConfig
    return ExperimentConfig


LOADERS = {"supernet": checkpoints.load_supernet, "subnet": checkpoints.load_subnet, "packed": checkpoints.load_packed,
           "training": checkpoints.load_training}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return good_files(str(tmp_path_factory.mktemp("good")))


def assert_clean(err: Exception, path: str) -> None:
    assert isinstance(err, ValueError), f"{type(err).__name__}: {err}"
    text = str(err)
    assert len(text.splitlines()) == 1 and path in text, text


def test_good_files_load(good):
    net, ckpt = checkpoints.load_supernet(good["supernet"])
    assert net.space == TINY and net.bits == 4 and ckpt["data"] == DATA
    assert checkpoints.load_subnet(good["subnet"]).arch == checkpoints.load_packed(good["packed"]).arch
    assert checkpoints.load_training(good["training"])["step"] > 0


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(space="mbv3"), "field 'space' must be a mapping"),
    (lambda c: c.update(bits="4"), "field 'bits' must be an integer"),
    (lambda c: c.update(bits=9), "bits must be an integer in 1..8"),
    (lambda c: c["space"].update(stem_width="8"), "field 'space.stem_width' expects int"),
    (lambda c: c["space"].update(kernel_sizes=[4]), "kernel sizes must be odd"),
    (lambda c: c["space"].update(colour="red"), "unknown field 'space.colour'"),
    (lambda c: c["state_dict"].pop("classifier.bias"), "missing 1 keys (classifier.bias)"),
    (lambda c: c["state_dict"].update(extra=torch.zeros(1)), "unexpected 1 keys (extra)"),
    (lambda c: c["state_dict"].update({"classifier.bias": torch.zeros(4)}), "classifier.bias (4,) (expected (3,))"),
    (lambda c: c["state_dict"]["classifier.weight"].fill_(float("nan")), "non-finite values in classifier.weight"),
    (lambda c: c["state_dict"].update({"classifier.bias": [0.0] * 3}), "must map names to tensors"),
    (lambda c: c.pop("state_dict"), "must map names to tensors"),
    (lambda c: c.update(data={"name": "cifar"}), "field 'data.name' expects one of"),
    (lambda c: c.update(elastic="r"), "field 'elastic' must be a list of Arch fields"),
    (lambda c: c.update(elastic=["ks", "width"]), "elastic must list distinct Arch fields"),
])
def test_a_wrong_supernet_file_is_one_line_and_nothing_is_written(good, tmp_path, change, message, capsys):
    ckpt = load(good["supernet"])
    change(ckpt)
    bad, out = str(tmp_path / "bad.pt"), tmp_path / "out.pt"
    save(bad, ckpt)
    with pytest.raises(CheckpointError) as err:
        checkpoints.load_supernet(bad)
    assert_clean(err.value, bad)
    assert message in str(err.value)
    assert main(["inherit", bad, "--bits", "2", "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not out.exists()


def test_wrong_subnet_packed_and_training_files(good, tmp_path):
    cases = [("subnet", lambda c: c.update(arch={"ks": [3]}), "architecture JSON needs keys"),
             ("subnet", lambda c: c["arch"].update(r=13), "arch field 'r' is 13"),
             ("packed", lambda c: next(iter(c["packed"].values())).update(bits=3), "is packed at 3 bits"),
             ("packed", lambda c: next(iter(c["packed"].values())).update(shape=[1]), "is packed as [1]"),
             ("packed", lambda c: next(iter(c["packed"].values())).update(data=[1, 2]), "must hold data (tensor)"),
             ("packed", lambda c: next(iter(c["packed"].values())).update(data=torch.zeros(2)), "needs"),
             ("packed", lambda c: c["state_dict"].pop("blocks.0.project.conv.wq.step"), "has no weight step"),
             ("training", lambda c: c.update(step=-1), "field 'step' must be >= 0"),
             ("training", lambda c: c.update(rng={"python": 3}), "field 'rng' is not a saved RNG state"),
             ("training", lambda c: c.update(optimizer={"state": {}}), "is not an optimizer state"),
             ("training", lambda c: c.update(meter=[1]), "field 'meter' must be 3 numbers"),
             ("training", lambda c: c.update(format="oqat-supernet"), "expected oqat-train")]
    for kind, change, message in cases:
        ckpt = load(good[kind])
        change(ckpt)
        bad = str(tmp_path / f"{kind}.pt")
        save(bad, ckpt)
        with pytest.raises(CheckpointError) as err:
            LOADERS[kind](bad)
        assert_clean(err.value, bad)
        assert message in str(err.value), (kind, message, str(err.value))


# --- generated malformed inputs -----------------------------------------------------------------
def _mutate_tree(obj, rng: random.Random):
    """`obj` (a checkpoint dict) with one field, at any depth, removed, retyped or reshaped."""
    junk = ["x", 7, -1, 2.5, float("nan"), None, True, [], [1, "a"], {}, {"a": 1}, torch.zeros(2),
            torch.ones(3, dtype=torch.int64), b"bytes", (1, 2)]
    obj = copy.deepcopy(obj)
    node, path = obj, []
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = rng.choice(keys)
        child = node[key]
        if isinstance(child, (dict, list)) and child and rng.random() < 0.6:
            node, path = child, path + [key]
            continue
        action = rng.choice(["delete", "retype", "reshape", "add"])
        if action == "delete" and isinstance(node, dict):
            del node[key]
        elif action == "reshape" and isinstance(child, torch.Tensor) and child.dim() > 0:
            node[key] = torch.zeros(child.shape[0] + 1, *child.shape[1:], dtype=child.dtype)
        elif action == "add" and isinstance(node, dict):
            node[f"extra_{rng.randrange(100)}"] = rng.choice(junk)
        else:
            node[key] = rng.choice(junk)
        break
    return obj


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _corrupted_files(good: dict, folder: str, n: int, seed: int = 0):
    """(kind, path) of `n` damaged files: truncated, bytes flipped, a field mutated, foreign."""
    rng = random.Random(seed)
    originals = {kind: open(path, "rb").read() for kind, path in good.items()}
    dicts = {kind: load(path) for kind, path in good.items()}
    for i in range(n):
        kind = rng.choice(sorted(good))
        raw, path = originals[kind], os.path.join(folder, f"{i}-{kind}.pt")
        how = rng.choice(["truncate", "flip", "field", "field", "field", "foreign"])
        if how == "truncate":
            data = raw[:rng.randrange(len(raw))]
        elif how == "flip":
            data = bytearray(raw)
            for _ in range(rng.randint(1, 16)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            data = bytes(data)
        elif how == "field":
            buf = io.BytesIO()
            torch.save(_mutate_tree(dicts[kind], rng), buf)
            data = buf.getvalue()
        else:
            buf = io.BytesIO()
            foreign = rng.choice(["bytes", "json", "list", "payload", "empty", "no-format"])
            if foreign in ("list", "payload", "no-format"):
                torch.save({"list": [1, 2], "payload": {"format": "oqat-supernet", "x": _Payload()},
                            "no-format": {"state_dict": {}}}[foreign], buf)
            data = {"bytes": rng.randbytes(rng.randrange(1, 4096)), "json": b'{"format": "oqat-supernet"}',
                    "empty": b""}.get(foreign, buf.getvalue())
        with open(path, "wb") as f:
            f.write(data)
        yield kind, path, how


def test_fuzz_corrupted_checkpoint_files(good, tmp_path):
    """At least 200 damaged files of every kind: each loads as a whole or ends in one line naming it."""
    refused, loaded = {}, 0
    for kind, path, how in _corrupted_files(good, str(tmp_path), 240):
        try:
            LOADERS[kind](path)
            loaded += 1
        except Exception as err:  # noqa: BLE001  anything but a clean ValueError fails the test
            assert_clean(err, path)
            refused[how] = refused.get(how, 0) + 1
    # A file still loads only when the change kept it whole: an extra top-level field (files
    # carry extras such as "source"), a field with a default removed, a number changed.
    assert sum(refused.values()) >= 200 and set(refused) == {"truncate", "flip", "field", "foreign"}, refused
    assert loaded <= 40, loaded


def test_malformed_corrupted_files_through_the_cli_write_nothing(good, tmp_path, capsys):
    for _kind, path, _ in _corrupted_files({"supernet": good["supernet"]}, str(tmp_path), 30, seed=1):
        out = tmp_path / "out.pt"
        code = main(["inherit", path, "--bits", "2", "--out", str(out)])
        err = capsys.readouterr().err
        assert code in (0, 2) and (code == 0) == out.exists()
        if code == 2:
            assert err.count("\n") == 1 and err.startswith("oqat inherit: error:"), err
        out.unlink(missing_ok=True)


def _malformed_arch(rng: random.Random) -> str:
    space = rng.choice([MBV3, MINI, PROXYLESS])
    text = space.sample(rng).to_str()
    kind = rng.randrange(9)
    if kind == 0:  # a character dropped
        i = rng.randrange(len(text))
        return text[:i] + text[i + 1:]
    if kind == 1:  # a character inserted
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice("kre0123456789.:-x {}[]\"é\x00") + text[i:]
    if kind == 2:  # a number out of the space
        return text.replace(f"k{space.kernel_sizes[0]}", f"k{rng.choice([0, 2, 4, 9, 99])}", 1)
    if kind == 3:
        return text.replace(text.split(":")[1], f"r{rng.choice([0, 1, 13, 999, 10**30])}")
    if kind == 4:  # a stage missing or doubled
        parts = text.split("-")
        return "-".join(parts[:-1] if rng.random() < 0.5 else parts + parts[-1:])
    if kind == 5:  # JSON with wrong types or lengths
        d = space.sample(rng).to_dict()
        field = rng.choice(["ks", "e", "d", "r", "space", "extra"])
        d[field] = rng.choice(["abc", 3.5, None, True, [], [3], {"a": 1}, [[3]], "x" * 100])
        return json.dumps(d)
    if kind == 6:
        return rng.choice(["", " ", ":", "::", "mbv3", "mbv3:", "mbv3:r", "{", "[]", "null", "{}", '{"ks": 1}',
                           "nope:r128:k3e3", "x" * 10000, "\x00\x01", "../../etc/passwd", "/", "a.json"])
    if kind == 7:  # an architecture file that is not one
        return rng.choice([os.devnull, "/", "/etc/hostname", __file__, "/nonexistent/arch.json"])
    return text.upper()


def test_fuzz_malformed_architecture_strings(capsys):
    rng, errors = random.Random(0), 0
    for _ in range(260):
        text = _malformed_arch(rng)
        code = main(["cost", "--arch", text])
        out, err = capsys.readouterr()
        assert code in (0, 2), text
        if code == 2:
            errors += 1
            assert err.count("\n") == 1 and err.startswith("oqat cost: error:") and out == "", (text, err)
        else:
            Arch.parse(text)  # accepted only when it is an architecture
    assert errors >= 200


def _config_keys(cls, prefix="") -> list[str]:
    import dataclasses
    keys = []
    for f in dataclasses.fields(cls):
        tp = typed._hints(cls)[f.name]
        keys += _config_keys(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else [prefix + f.name]
    return keys


def test_fuzz_malformed_config_overrides(capsys):
    from oqat.config.settings import ExperimentConfig
    keys = _config_keys(ExperimentConfig)
    values = ["", "[", "{a: 1", "]", "nan", "-1", "-0.5", "0", "1e400", "abc", "[1, 2]", "{}", "{x: 1}", "null",
              "true", "'quoted'", "!!python/object/apply:os.system [echo]", "&a [*a]", "\x00", "é" * 3,
              "[{bits: 2}, {bits: 4}]", "[{bits: 99}]", "[{epochs: 0}]", "[bogus]", "['bitops<=-1']", "1" * 400,
              "{name: imagefolder}", "[ks, zz]", "[0.9, 0.5, 1.0]", "- a\n- b"]
    rng, errors = random.Random(0), 0
    for _ in range(260):
        shape = rng.randrange(6)
        key = rng.choice(keys)
        if shape == 0:  # a misspelt or missing key
            key = rng.choice([key + "x", key.replace(".", "..", 1), "nosuch." + key, key.split(".")[0] + ".zz",
                              key + ".deeper", ".", "=", ""])
        override = rng.choice([f"{key}={rng.choice(values)}", key, f"={rng.choice(values)}"]) if shape == 1 \
            else f"{key}={rng.choice(values)}"
        code = main(["config", "show", CONFIG, override])
        out, err = capsys.readouterr()
        assert code in (0, 2), override
        if code == 2:
            errors += 1
            assert err.count("\n") == 1 and err.startswith("oqat config: error:") and out == "", (override, err)
    assert errors >= 200


def _table(ms: str) -> str:
    return f'{{"bits": 2, "device": "cpu", "threads": 1, "ms": {ms}}}'


@pytest.mark.parametrize("content,message", [
    ("[1, 2]", "must be a JSON object"), ('{"mini:r20:k3e2-k3e2-k3e2-k3e2": 1.0}', "bits, device, threads and ms"),
    (_table("{}"), "not empty"), (_table('{"mini:r28:k3e2": 1.0}'), "has 1 stages"),
    (_table('{"mini:r20:k3e2-k3e2-k3e2-k3e2": "fast"}'), "expected milliseconds"),
    (_table('{"mini:r20:k3e2-k3e2-k3e2-k3e2": -1}'), "expected milliseconds"), ("{'a': 1}", "is not valid JSON"),
    (b"\xff\xfe\x00binary", "is not valid JSON"),
])
def test_a_malformed_latency_table_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "table.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as err:
        records.load_latency_table(str(path), MINI)
    assert_clean(err.value, str(path))
    assert message in str(err.value)


@pytest.mark.parametrize("content,message", [
    ("[1, 2]", "must hold a JSON object"), ("{not json", "is not valid JSON"),
    ('{"ks": "x", "e": [], "d": [], "r": 20, "space": "mini"}', "arch field 'ks'"),
    ('{"ks": [3], "e": [2], "d": [1], "r": 20, "space": {"name": "mini"}}', "arch field 'space' must be a space name"),
])
def test_a_malformed_architecture_file_is_one_line_naming_it(tmp_path, content, message, capsys):
    path = tmp_path / "arch.json"
    path.write_text(content)
    assert main(["cost", "--arch", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and message in err, err


def test_json_and_text_outputs_are_written_whole_and_read_back(tmp_path):
    import numpy as np

    path = tmp_path / "out" / "a.json"
    write_json(str(path), {"x": np.float32(0.5), "n": [1, 2], "t": torch.tensor(2.0)})
    assert path.read_text() == '{\n "x": 0.5,\n "n": [\n  1,\n  2\n ],\n "t": 2.0\n}\n'
    assert read_json(str(path), "points file") == {"x": 0.5, "n": [1, 2], "t": 2.0}
    write_text(str(path), "café {")
    assert path.read_bytes() == "café {".encode("utf-8") and os.listdir(path.parent) == ["a.json"]
    with pytest.raises(ValueError, match=r"^points file '.*a.json' is not valid JSON: "):
        read_json(str(path), "points file")


def test_plots_are_pngs_at_one_resolution(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([1, 2], [3, 4])
    path = tmp_path / "plot.png"
    write_png(str(path), fig)
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and os.listdir(tmp_path) == ["plot.png"]
    size = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # the IHDR chunk
    assert size == (2 * PNG_DPI, PNG_DPI)
