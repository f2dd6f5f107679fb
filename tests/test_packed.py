import io
import os

import pytest
import torch
from test_export import make_subnet

from oqat.core.io import CheckpointError, load, save
from oqat.files import checkpoints
from oqat.files.checkpoints import load_packed
from oqat.nets import packed
from oqat.quant.lsq import qrange

pytestmark = pytest.mark.usefixtures("one_thread")


def test_codes_are_packed_little_endian_at_their_width():
    assert packed.pack(torch.tensor([-2, -1, 0, 1], dtype=torch.int8), 2).tolist() == [0b11100100]
    assert packed.pack(torch.tensor([-8, 7, 0], dtype=torch.int8), 4).tolist() == [0xF0, 0x08]
    # 3 bits: a stream across bytes; codes 0..7 stored as q + 4
    assert packed.pack(torch.arange(-4, 4, dtype=torch.int8), 3).tolist() == [0b10001000, 0b11000110, 0b11111010]
    assert [packed.code_width(b) for b in (1, 2, 3, 4, 8)] == [2, 2, 3, 4, 8]  # 1-bit sign has 3 levels


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_pack_unpack_round_trip(bits):
    qn, qp = qrange(bits, signed=True)
    codes = torch.randint(qn, qp + 1, (7, 3, 5, 5), generator=torch.Generator().manual_seed(bits)).to(torch.int8)
    data = packed.pack(codes, bits)
    assert data.dtype == torch.uint8 and data.numel() == -(-codes.numel() * packed.code_width(bits) // 8)
    assert torch.equal(packed.unpack(data, tuple(codes.shape), bits), codes)


@pytest.mark.parametrize("bits", [3, 2])
def test_packed_file_rebuilds_a_bit_identical_subnet(bits, tmp_path):
    net = make_subnet(bits)
    path = str(tmp_path / "w.oqpk")
    checkpoints.save_packed(net, path)
    loaded = load_packed(path)
    assert not loaded.training and loaded.arch == net.arch and loaded.bits == bits
    x = torch.randn(16, 1, net.arch.r, net.arch.r)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    for name, conv in packed.quantized_convs(loaded).items():
        assert torch.equal(packed.weight_codes(conv), packed.weight_codes(packed.quantized_convs(net)[name]))
    # Quantized weights take b bits; the fp32 rest (SE, stem, BN, classifier) dominates what is left.
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, buf)
    fp32 = buf.tell()
    q_params = sum(c.weight.numel() for c in packed.quantized_convs(net).values())
    assert os.path.getsize(path) < fp32 - q_params * (32 - bits) / 8 + 64 * 1024


def test_packed_file_that_does_not_match_its_architecture_is_refused(tmp_path):
    net = make_subnet(2)
    path = str(tmp_path / "w.oqpk")
    checkpoints.save_packed(net, path)
    ckpt = load(path, checkpoints.PACKED)
    ckpt["packed"]["blocks.0.dw.conv"]["bits"] = 3
    save(path, ckpt)
    with pytest.raises(CheckpointError, match="blocks.0.dw.conv is packed at 3 bits"):
        load_packed(path)
    del ckpt["packed"]["blocks.0.dw.conv"]
    save(path, ckpt)
    with pytest.raises(CheckpointError, match="do not match"):
        load_packed(path)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("size", ["smallest", "largest"])
def test_the_packed_file_is_smaller_than_the_onnx_graph(bits, size, tmp_path):
    from oqat.deploy.export import build_onnx
    from oqat.space.builtin import MINI
    net = make_subnet(bits, getattr(MINI, size)())
    checkpoints.save_packed(net, str(tmp_path / "w.oqpk"))
    assert os.path.getsize(tmp_path / "w.oqpk") < len(build_onnx(net).SerializeToString())
    back = load_packed(str(tmp_path / "w.oqpk"))
    x = torch.randn(2, 1, net.arch.r, net.arch.r)
    assert torch.equal(back(x), net(x))
