import json
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from oqat import export, packed
from oqat.cli import main
from oqat.config import to_dict
from oqat.data import DataConfig, eval_batches, load_splits, subset
from oqat.evaluate import recalibrate_bn, resize
from oqat.files import load_packed
from oqat.layers import QConv2d
from oqat.quant import set_bits_
from oqat.space import MINI, Arch, get_space
from oqat.subnet import Subnet
from oqat.supernet import Supernet

# Every block kind: expand or not, SE, residual, kernels 3 and 5.
ARCH = Arch.parse("mini:r24:k3e2-k5e3.k3e4-k5e2-k3e3")


pytestmark = pytest.mark.usefixtures("one_thread")


def make_subnet(bits: int, arch: Arch = ARCH, seed: int = 0, calib: torch.Tensor | None = None) -> Subnet:
    """A random supernet's subnet with LSQ steps initialised from data and BN recalibrated
    (on `calib`, images at arch.r, else random ones): what an export sees, untrained."""
    torch.manual_seed(seed)
    sn = Supernet(get_space(arch.space), bits)
    for q in sn.quantizers():
        q.init_pending = True
    sn.set_arch(arch)
    x = calib if calib is not None else torch.randn(64, 1, arch.r, arch.r)
    with torch.no_grad():
        sn.train()(x[:32])
    net = sn.extract(arch)
    recalibrate_bn(net, [(x, None)])
    return net.eval()


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_onnx_quantizes_every_conv_with_an_explicit_b_bit_range():
    net = make_subnet(3)
    model = export.build_onnx(net)  # runs onnx.checker with full_check
    inits = initializers(model)
    convs = packed.quantized_convs(net)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == len(convs) and ops.count("DequantizeLinear") == 2 * len(convs)
    se_blocks = sum(b.se is not None for b in net.blocks)
    assert se_blocks > 0 and ops.count("Conv") == len(convs) + 1 + 2 * se_blocks  # stem and SE stay fp32
    used, signed_inputs = set(), 0
    for name, conv in convs.items():
        codes = inits[f"{name}.w_codes"]
        assert codes.dtype == np.int8 and codes.min() >= -4 and codes.max() <= 3
        used |= set(codes.ravel().tolist())
        s_a = conv.aq.step.detach().abs().float()
        # mini quantizes linear inputs (expand convs, the first head conv) signed, the others unsigned.
        lo, hi, zero = (-4, 3, np.int8) if conv.aq.signed else (0, 7, np.uint8)
        assert inits[f"{name}.a_min"] == np.float32(lo) * s_a.numpy()
        assert inits[f"{name}.a_max"] == np.float32(hi) * s_a.numpy()
        assert inits[f"{name}.a_scale"] == s_a.numpy() and inits[f"{name}.a_zero"].dtype == zero
        signed_inputs += conv.aq.signed
        # The DQ weight is exactly what the PyTorch quantizer computes.
        w_hat = torch.tensor(codes).float() * conv.wq.step.detach().abs()
        assert torch.equal(w_hat, conv.wq(conv.weight).detach())
    assert used == set(range(-4, 4))  # the whole 3-bit range occurs
    expands = sum(b.expand is not None for b in net.blocks)
    assert signed_inputs == expands + 1 and expands > 0  # + final_expand


@pytest.mark.parametrize("step", [0.03125, 0.0371])
def test_onnx_activation_quantizer_computes_exactly_what_lsq_does(step):
    """Values at and one float either side of k + 0.5 steps, and beyond the clip; a power-of-two
    step makes the ties exact, another one checks that x / s is a division, as in LSQ."""
    conv = set_bits_(QConv2d(1, 1, 1), 4)
    conv.aq.step.data.fill_(-step)  # the sign of a step is ignored
    s = np.float32(step)
    ks = np.arange(-2, 20, dtype=np.float32) + np.float32(0.5)
    x = ks * s
    x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))])
    g = export._Graph()
    out = export._quantize_input(g, "input", conv, "q")
    graph = onnx.helper.make_graph(g.nodes, "q", [onnx.helper.make_tensor_value_info("input", 1, [len(x)])],
                                   [onnx.helper.make_tensor_value_info(out, 1, [len(x)])], g.inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", export.OPSET)])
    model.ir_version = 8
    got = export.onnx_session(model).run(None, {"input": x})[0]
    want = conv.aq(torch.from_numpy(x)).detach().numpy()
    assert np.array_equal(got, want)
    if step == 0.03125:  # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2: half to even
        assert want[2] == 0 and want[3] == want[4] == 2 * s


def assert_parity(p: dict) -> None:
    """Most images match to float precision. An activation within a float ulp of a rounding
    boundary may round the other way in one engine (they sum convs and apply BN in different
    orders, and torch's BN uses FMA); in these untrained, chaotic nets the step it moves
    grows through the layers, so a few images in a thousand differ visibly (trained nets:
    see the report). A wrong rounding mode, scale or clip would move nearly every image."""
    assert p["gaps"].median() <= 1e-5
    assert p["within_1e-3"] >= 0.99
    assert p["top1_agreement"] >= 0.99
    assert len(p["torch_logits"].argmax(1).unique()) >= 3  # not a constant prediction


@pytest.mark.parametrize("bits", [4, 2])
def test_onnxruntime_matches_pytorch_on_synthetic_images(bits):
    net = make_subnet(bits)
    x = torch.randn(1000, 1, ARCH.r, ARCH.r, generator=torch.Generator().manual_seed(1))
    assert_parity(export.parity(net, export.onnx_session(export.build_onnx(net)), x))


FMNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="no Fashion-MNIST on this machine")
def test_onnxruntime_matches_pytorch_on_1000_fashion_mnist_test_images():
    cfg = DataConfig(root=FMNIST, download=False, val_size=100)
    splits = load_splits(cfg)
    calib = resize(next(eval_batches(subset(splits.train, 256, 0), cfg))[0], ARCH.r)
    net = make_subnet(4, calib=calib)
    x = resize(torch.cat([x for x, _ in eval_batches(subset(splits.test, 1000, 0), cfg)]), ARCH.r)
    assert_parity(export.parity(net, export.onnx_session(export.build_onnx(net)), x))


def synthetic_supernet(tmp_path, with_data: bool = True) -> str:
    cfg = DataConfig(name="synthetic", val_size=64, synthetic_train=256, synthetic_test=64, batch_size=64)
    torch.manual_seed(0)
    sn = Supernet(MINI, 4)
    for q in sn.quantizers():
        q.init_pending = True
    with torch.no_grad():
        sn.train()(torch.randn(16, 1, 32, 32))
    path = str(tmp_path / "supernet.pt")
    sn.save(path, {"data": to_dict(cfg)} if with_data else {})
    return path


def test_export_cli_writes_a_deployable_folder(tmp_path, capsys):
    out = tmp_path / "deploy"
    code = main(["export", synthetic_supernet(tmp_path), "--arch", ARCH.to_str(), "--out", str(out),
                 "--calib-images", "64", "--test-images", "64"])
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir(out)) == sorted([export.ONNX_FILE, export.PACKED_FILE, export.ARCH_FILE, export.CARD_FILE])
    with open(out / export.ARCH_FILE) as f:
        assert Arch.from_dict(json.load(f)) == ARCH
    card = (out / export.CARD_FILE).read_text()
    assert "test top-1 on 64 test images" in card
    assert "BitOPs" in card and f"N x 1 x {ARCH.r} x {ARCH.r}" in card
    # The folder alone deploys: the ONNX model and the packed subnet agree.
    net = load_packed(str(out / export.PACKED_FILE))
    x = torch.randn(32, 1, ARCH.r, ARCH.r)
    assert export.parity(net, export.onnx_session(str(out / export.ONNX_FILE)), x)["gaps"].median() <= 1e-5
    assert os.path.getsize(out / export.PACKED_FILE) < export.state_dict_bytes(net) / 2
    assert "at 4 bits" in capsys.readouterr().out


def test_export_cli_explains_what_is_missing(tmp_path, capsys):
    path = synthetic_supernet(tmp_path, with_data=False)
    assert main(["export", path, "--out", str(tmp_path / "a")]) == 2
    assert "give --arch" in capsys.readouterr().err
    assert main(["export", path, "--arch", ARCH.to_str(), "--out", str(tmp_path / "b")]) == 2
    assert "no data config" in capsys.readouterr().err
