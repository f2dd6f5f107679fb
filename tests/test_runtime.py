"""oqat's C runtime against oqat/quant/requant.py's rule: every code and logit of a network, on every
kernel path this CPU runs; its file format, threads, memory and errors."""
import collections
import concurrent.futures
import dataclasses
import os
import random
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oqat.nets import packed
from oqat.nets.subnet import Subnet
from oqat.quant import requant
from oqat.quant.lsq import LSQ, qrange
from oqat.runtime import build, model_file
from oqat.runtime.binding import Model
from oqat.space.builtin import MINI, get_space
from oqat.space.structure import Stage, mbv3_head

pytestmark = pytest.mark.usefixtures("one_thread")

ISAS = ("scalar", "avx2", "avx512vnni")
# A space small enough to fuzz at every byte: every block kind, SE, h_swish and the mbv3 head.
TINY = dataclasses.replace(MINI, name="tiny", stem_width=8, first_block=Stage(8, 1, "relu", False),
                           stages=(Stage(8, 2, "relu", False), Stage(16, 1, "h_swish", True)), kernel_sizes=(3, 5),
                           expand_ratios=(2,), depths=(1, 2), resolutions=(8,), head=mbv3_head(16, 16), num_classes=4)


@pytest.fixture(scope="session", autouse=True)
def runtime_library():
    try:
        build.build()
    except build.RuntimeUnavailable as err:
        pytest.skip(str(err))


def random_net(space, arch, bits, seed: int = 0) -> Subnet:
    """A subnet with random weights and BN affine, LSQ steps initialised on its own activations,
    and BN running statistics of random data, each perturbed at random: codes over the whole range."""
    torch.manual_seed(seed)
    net = Subnet(space, arch, bits)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, space.in_channels, arch.r, arch.r, generator=g)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.momentum = None  # running statistics: the mean over the batches seen
        for m in net.modules():
            if isinstance(m, LSQ):
                m.init_pending = True
        net.train()(x)
        for m in bns:
            m.reset_running_stats()
        net(x)
        for m in bns:
            m.running_mean.add_(torch.randn(m.num_features, generator=g) * 0.1 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
    return net.eval()


def reference(net: Subnet, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The logits, and each quantized conv's input codes (by module name, N x C x H x W), op by
    op as oqat/quant/requant.py states the rule."""
    codes = {}

    def conv(m, name, h, residual=None):
        c = m.conv
        q = requant.codes(h, c.aq.step, *qrange(c.aq.bits, c.aq.signed))
        codes[name] = q
        acc = F.conv2d(q.double(), packed.weight_codes(c).double(), None, c.stride, c.padding, 1, c.groups)  # exact
        scale, shift = requant.fold(c.aq.step.detach(), c.wq.step.detach(), m.bn, c.out_channels)
        return requant.epilogue(acc, torch.from_numpy(scale), torch.from_numpy(shift), residual,
                                requant.act_name(m.act))

    s = net.stem
    scale, shift = requant.fold(1.0, 1.0, s.bn, s.conv.out_channels)
    acc = requant.reduce64(lambda a, w: F.conv2d(a, w, None, s.conv.stride, s.conv.padding), x, s.conv.weight.detach())
    x = requant.epilogue(acc, torch.from_numpy(scale), torch.from_numpy(shift), None, requant.act_name(s.act))
    for i, b in enumerate(net.blocks):
        h = x if b.expand is None else conv(b.expand, f"blocks.{i}.expand", x)
        h = conv(b.dw, f"blocks.{i}.dw", h)
        if b.se is not None:
            se = b.se
            z = requant.reduce64(F.conv2d, requant.mean_pool(h), se.reduce.weight.detach(), se.reduce.bias.detach())
            g = requant.reduce64(F.conv2d, z.clamp_min(0), se.expand.weight.detach(), se.expand.bias.detach())
            h = h * ((g + 3).clamp(0, 6) / 6)
        x = conv(b.project, f"blocks.{i}.project", h, x if b.residual else None)
    for layer in net.space.head_layers():
        x = requant.mean_pool(x) if layer is None else conv(getattr(net, layer.name), layer.name, x)
    c = net.classifier
    return requant.reduce64(F.linear, x.flatten(1), c.weight.detach(), c.bias.detach()), codes


def runtime_codes(model: Model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each quantized conv's input codes q as the runtime computed them (N x C x H x W)."""
    values = model.trace(x)
    return {op["name"]: values[op["input"]].transpose(0, 3, 1, 2) for op in model.ops
            if op["type"] in ("conv1x1", "dwconv")}


def load(net: Subnet, tmp_path, **kw) -> Model:
    path = os.path.join(tmp_path, "model.oqrt")
    model_file.write(net, path)
    try:
        return Model(path, threads=kw.pop("threads", 1), **kw)
    except ValueError as err:
        if "not supported by this CPU" in str(err):
            pytest.skip(str(err))
        raise


def images(space, arch, n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, space.in_channels, arch.r, arch.r, generator=torch.Generator().manual_seed(seed))


def assert_parity(net: Subnet, model: Model, x: torch.Tensor) -> None:
    """Codes equal on >= 99.99% of activations (a float64 sum in another order can land the other
    side of a float32 rounding), logits within float rounding, top-1 identical."""
    want, codes = reference(net, x)
    got = runtime_codes(model, x.numpy())
    assert set(got) == set(codes)
    moved = sum(int((got[k] != codes[k].numpy()).sum()) for k in codes)
    total = sum(v.numel() for v in codes.values())
    assert moved <= 1e-4 * total, f"{moved} of {total} codes differ"
    for k, v in codes.items():  # the test means something only where codes spread over the range
        qn, qp = qrange(net.get_submodule(k).conv.aq.bits, net.get_submodule(k).conv.aq.signed)
        assert len(np.unique(v.numpy())) >= min(3, qp - qn + 1), k
    logits = model(x.numpy())
    with torch.no_grad():
        evaluated = net.eval()(x).numpy()  # oqat's own exact evaluation (oqat/nets/exact.py)
    for other in (want.numpy(), evaluated):
        np.testing.assert_allclose(logits, other, rtol=1e-5, atol=1e-6)
        assert (logits.argmax(1) == other.argmax(1)).all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [4, 3, 2])
def test_every_code_and_logit_equals_the_rule_in_mini(bits, isa, tmp_path):
    arch = MINI.check(dataclasses.replace(MINI.sample(random.Random(bits)), r=28))
    net = random_net(MINI, arch, bits, seed=bits)
    model = load(net, tmp_path, isa=isa)
    assert model.isa == isa
    assert_parity(net, model, images(MINI, arch))


@pytest.mark.parametrize("space,bits", [("mixed", None), ("mini", 1), ("mini", 8), ("mbv3", 4), ("proxyless", 3),
                                        ("mini-proxyless", 2)])
def test_every_code_and_logit_equals_the_rule_in_each_space(space, bits, tmp_path):
    """Mixed precision (each conv at its block's bits), 1 and 8 bits, and the published spaces at
    a small resolution: unsigned inputs, relu6, a pre-pooling head, a fixed-depth stage."""
    if space == "mixed":
        sp = MINI.with_bits((2, 3, 4))
        bits = sp.bit_widths
    elif space in ("mbv3", "proxyless"):
        sp = dataclasses.replace(get_space(space), resolutions=(32,), num_classes=10)
    else:
        sp = get_space(space)
    arch = sp.sample(random.Random(7))
    net = random_net(sp, arch, bits)
    assert_parity(net, load(net, tmp_path), images(sp, arch, n=4))


def test_threads_and_batch_chunks_give_the_same_bits(tmp_path):
    sp = dataclasses.replace(get_space("mbv3"), resolutions=(64,), num_classes=10)
    net = random_net(sp, sp.largest(), 4)
    model = load(net, tmp_path)
    x = images(sp, net.arch, n=3).numpy()
    one = model(x)
    model.threads = 2
    assert model.threads == 2
    np.testing.assert_array_equal(model(x), one)
    np.testing.assert_array_equal(np.concatenate([model(x[i:i + 1]) for i in range(3)]), one)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # runs of one model from several threads take turns
        np.testing.assert_array_equal(np.concatenate(list(pool.map(lambda i: model(x[i:i + 1]), range(3)))), one)


def test_the_file_holds_the_lowered_network_at_its_bits(tmp_path):
    net = random_net(MINI, MINI.sample(random.Random(3)), 3)
    path = os.path.join(tmp_path, "model.oqrt")
    model_file.write(net, path)
    f = model_file.read(path)
    assert f.in_shape == (1, net.arch.r, net.arch.r) and f.num_classes == 10 and f.meta["arch"] == str(net.arch)
    convs = {op.name: op for op in f.ops if op.type in (model_file.CONV1X1, model_file.DWCONV)}
    assert set(convs) == {n.removesuffix(".conv") for n in packed.quantized_convs(net)}
    for name, op in convs.items():
        conv = net.get_submodule(name).conv
        codes = packed.weight_codes(conv).numpy()
        if op.type == model_file.DWCONV:  # stored [k*k][c], as the kernels read them
            codes = codes.reshape(len(codes), -1).T
        np.testing.assert_array_equal(op.blobs[0], codes.reshape(-1))
    # Codes at their bit width: the file's code bytes are a bit stream of 3 bits per weight.
    n_weights = sum(c.weight.numel() for c in packed.quantized_convs(net).values())
    assert Model(path).memory()["file_code_bytes"] == sum((op.blobs[0].size * 3 + 7) // 8 for op in convs.values())
    assert abs(Model(path).memory()["file_code_bytes"] - n_weights * 3 / 8) < len(convs)
    # A quantizer that is a value's only reader is fused into the value's producer; a value
    # that a residual also reads stays float, quantized by a QUANT op.
    readers = collections.Counter(v for o in f.ops for v in (o.inp, o.res) if v != model_file.NONE)
    assert all(readers[op.inp] >= 2 for op in f.ops if op.type == model_file.QUANT)
    assert sum(op.type == model_file.QUANT for op in f.ops) == 1 + sum(b.residual for b in net.blocks[1:])


def test_resident_weights_stay_near_their_bit_width(tmp_path):
    """The kernels' layout of each bit width against the file's bit stream."""
    sp = dataclasses.replace(get_space("mbv3"), resolutions=(32,), num_classes=1000)
    arch = sp.largest()
    for bits in (2, 4, 8):
        mem = load(random_net(sp, arch, bits), tmp_path).memory()
        ratio = mem["resident_code_bytes"] / mem["file_code_bytes"]
        print(f"mbv3 largest, {bits} bits: {mem}, resident/file codes {ratio:.2f}")
        assert ratio < 8 / bits + 0.25  # at most one byte a weight, whatever the path


def test_errors_are_clean(tmp_path):
    net = random_net(TINY, TINY.sample(random.Random(0)), 2)
    model = load(net, tmp_path)
    with pytest.raises(ValueError, match="input must be float32 N x 1 x 8 x 8"):
        model(np.zeros((1, 1, 9, 8), np.float32))
    with pytest.raises(ValueError, match="threads must be"):
        model.threads = 0
    with pytest.raises(ValueError, match="unknown kernel path 'sse9'"):
        Model(os.path.join(tmp_path, "model.oqrt"), isa="sse9")
    with pytest.raises(ValueError, match="cannot open"):
        Model(os.path.join(tmp_path, "missing.oqrt"))
    full = Subnet(TINY, TINY.sample(random.Random(0)))  # 32 bits
    with pytest.raises(ValueError, match="full precision: the runtime runs quantized networks only"):
        model_file.write(full, os.path.join(tmp_path, "fp.oqrt"))


def hostile_variants(data: bytes, rng: random.Random, n: int):
    """Copies of a model file with a random word or byte changed and the checksum made right."""
    for _ in range(n):
        b = bytearray(data)
        if rng.random() < 0.5:
            i = rng.randrange(0, len(b) - 4) & ~3
            b[i:i + 4] = struct.pack("<I", rng.choice([0, 1, 2, 7, 4097, 8193, 2**31, 2**32 - 1]))
        else:
            b[rng.randrange(0, len(b) - 4)] ^= 1 << rng.randrange(8)
        b[-4:] = struct.pack("<I", model_file.zlib.crc32(bytes(b[:-4])))
        yield bytes(b)


def test_the_python_and_c_readers_accept_the_same_files(tmp_path):
    net = random_net(TINY, TINY.sample(random.Random(1)), 3)
    path = os.path.join(tmp_path, "model.oqrt")
    model_file.write(net, path)
    with open(path, "rb") as f:
        data = f.read()
    accepted = 0
    for variant in hostile_variants(data, random.Random(0), 300):
        try:
            model_file.decode(variant)
            python = None
        except model_file.FormatError as err:
            python = str(err)
        try:
            Model(data=variant, threads=1)
            c = None
        except ValueError as err:
            c = str(err)
            assert c
        assert (python is None) == (c is None), (python, c)
        accepted += c is None
    assert 0 < accepted < 300
