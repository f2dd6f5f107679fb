import pytest
import torch

from oqat.cli import main
from oqat.core import io
from oqat.core.typed import to_dict
from oqat.data.config import DataConfig
from oqat.files.checkpoints import load_supernet, save_supernet
from oqat.nets.supernet import Supernet
from oqat.space.builtin import MINI
from oqat.train.inherit import REINIT_KEY, inherit


def _supernet(tmp_path, bits=4):
    torch.manual_seed(0)
    net = Supernet(MINI, bits)
    for i, q in enumerate(net.quantizers()):
        q.step.data.fill_(0.01 * (i + 1))
    path = tmp_path / f"s{bits}.pt"
    save_supernet(net, str(path), {"data": {"name": "synthetic", "val_size": 100}})
    return net, path


def test_inherit_copies_everything_and_scales_steps_per_bit(tmp_path):
    net, path = _supernet(tmp_path)
    assert main(["inherit", str(path), "--bits", "2", "--out", str(tmp_path / "s2.pt")]) == 0
    ckpt = io.load(str(tmp_path / "s2.pt"), "oqat-supernet")
    low = load_supernet(str(tmp_path / "s2.pt"))[0]
    assert low.bits == 2 and all(q.bits == 2 for q in low.quantizers())
    src, dst = net.state_dict(), low.state_dict()
    for key, value in src.items():
        if key.endswith(".step"):
            assert torch.allclose(dst[key], value * 4)  # 4 -> 2 bits: x 2^2
        else:
            assert torch.equal(dst[key], value)  # weights, BN statistics, kernel matrices
    assert ckpt["data"] == to_dict(DataConfig(name="synthetic", val_size=100)) and ckpt["inherited_from"]["bits"] == 4
    assert REINIT_KEY not in ckpt


def test_reinit_option_marks_the_file_for_step_init(tmp_path):
    _, path = _supernet(tmp_path)
    assert main(["inherit", str(path), "--bits", "3", "--out", str(tmp_path / "r.pt"), "--reinit-steps"]) == 0
    assert io.load(str(tmp_path / "r.pt"), "oqat-supernet")[REINIT_KEY] is True


def test_inherit_errors_are_one_line(tmp_path, capsys):
    _, path = _supernet(tmp_path)
    assert main(["inherit", str(path), "--bits", "4", "--out", str(tmp_path / "x.pt")]) == 2
    assert "lower than the source's 4 bits" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    torch.save({"format": "oqat-subnet"}, junk)
    assert main(["inherit", str(junk), "--bits", "2", "--out", str(tmp_path / "y.pt")]) == 2
    err = capsys.readouterr().err
    assert "expected oqat-supernet" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


def test_full_precision_has_no_steps_to_inherit():
    with pytest.raises(ValueError, match="full-precision"):
        inherit(Supernet(MINI, 32), 2)
