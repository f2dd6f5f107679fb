"""The exact evaluation (oqat/nets/exact.py, by the rule of oqat/quant/requant.py): a quantized subnet in eval
mode computes the same codes and logits on every thread count and ISA, and those are the rule's,
operation by operation."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oqat.nets import exact
from oqat.nets.calibrate import recalibrate_bn
from oqat.nets.layers import ConvBNAct
from oqat.nets.packed import quantized_convs
from oqat.nets.subnet import head_forward
from oqat.nets.supernet import Supernet
from oqat.quant import requant
from oqat.quant.lsq import qrange
from oqat.space.arch import Arch
from oqat.space.builtin import MINI

# Every block kind of mini: expand or not, SE, residual, kernels 3, 5 and 7, both head convs.
ARCH = "mini:r24:k3e2.k7e4-k5e3.k3e4-k7e2.k3e3-k5e4.k3e2"

pytestmark = pytest.mark.usefixtures("one_thread")


def make_subnet(bits: int, seed: int = 0):
    """A random mini supernet's subnet, its steps set from data and BN recalibrated, in eval mode:
    what evaluation sees, untrained (images: a seeded smooth pattern, not noise, so that BN
    statistics and steps look like a trained net's)."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.randn(96, 1, 32, 32, generator=g), 5, 1)[..., :24, :24] * 3
    torch.manual_seed(seed)
    sn = Supernet(MINI, bits).eval()
    sn.set_arch(Arch.parse(ARCH, MINI))
    sn.init_steps_(x[:32])
    net = sn.extract(sn.arch, calib=[(x[:48], None), (x[48:], None)])
    return net, x


def reference_forward(net, x: torch.Tensor) -> tuple[torch.Tensor, list[np.ndarray]]:
    """The rule of requant.py written out plainly in numpy: integer sums in int64 (by a float64
    conv of codes, exact far below 2^53), each float32 operation on its own. Returns the logits
    and the codes of every quantized conv's input, in forward order."""
    f32, codes = np.float32, []

    def conv64(v, w, b, stride, pad, groups):
        return F.conv2d(torch.from_numpy(v).double(), torch.from_numpy(w).double(),
                        None if b is None else torch.from_numpy(b).double(), stride, pad, 1, groups).numpy()

    def act(y, name):
        if name == "relu":
            return np.maximum(y, f32(0))
        if name == "h_swish":
            return (y * np.minimum(np.maximum(y + f32(3), f32(0)), f32(6))) / f32(6)
        assert name is None
        return y

    def layer(m: ConvBNAct, v, residual=None):
        conv, bn = m.conv, m.bn
        if exact.quantized(conv):
            s_a = float(conv.aq.step.detach().abs())
            qn, qp = qrange(conv.aq.bits, conv.aq.signed)
            q = np.round(np.clip(v / f32(s_a), qn, qp))  # numpy rounds half to even
            codes.append(q)
            w = requant.weight_codes(conv.weight, conv.wq.step, conv.wq.bits).numpy()
            acc = conv64(q, w, None, conv.stride[0], conv.padding[0], conv.groups)
            assert np.array_equal(acc, np.round(acc))  # integers: the sum was exact
            acc, s = acc.astype(f32), s_a * float(conv.wq.step.detach().abs())
        else:
            acc, s = conv64(v, conv.weight.detach().numpy(), None, conv.stride[0], conv.padding[0], 1).astype(f32), 1.0
        if bn is None:
            scale, shift = np.full(acc.shape[1], s), np.zeros(acc.shape[1])
        else:
            k = bn.weight.double().detach().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
            scale, shift = s * k, bn.bias.double().detach().numpy() - k * bn.running_mean.double().numpy()
        y = acc * scale.astype(f32)[:, None, None] + shift.astype(f32)[:, None, None]
        if residual is not None:
            y = y + residual
        return act(y, requant.act_name(m.act))

    def pool(v):
        return v.astype(np.float64).mean((2, 3), keepdims=True).astype(f32)

    v = layer(net.stem, x.numpy())
    for b in net.blocks:
        h = v if b.expand is None else layer(b.expand, v)
        h = layer(b.dw, h)
        if b.se is not None:
            r = np.maximum(conv64(pool(h), b.se.reduce.weight.detach().numpy(), b.se.reduce.bias.detach().numpy(),
                                  1, 0, 1).astype(f32), f32(0))
            e = conv64(r, b.se.expand.weight.detach().numpy(), b.se.expand.bias.detach().numpy(), 1, 0, 1).astype(f32)
            h = h * (np.minimum(np.maximum(e + f32(3), f32(0)), f32(6)) / f32(6))
        v = layer(b.project, h, v if b.residual else None)
    for h in net.space.head_layers():
        v = pool(v) if h is None else layer(getattr(net, h.name), v)
    c = net.classifier
    w, b = c.weight.double().detach().numpy(), c.bias.double().detach().numpy()
    logits = v.reshape(len(v), -1).astype(np.float64) @ w.T + b
    return torch.from_numpy(logits.astype(f32)), codes


def recorded(net, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits of the exact path and the codes it computed, in forward order."""
    codes, rule = [], requant.codes
    exact.requant.codes = lambda *args: codes.append(rule(*args)) or codes[-1]
    try:
        with torch.inference_mode():
            return net(x), codes
    finally:
        exact.requant.codes = rule


@pytest.mark.parametrize("bits", [2, 4])
def test_the_exact_path_computes_the_rule_op_by_op(bits):
    net, x = make_subnet(bits)
    logits, codes = recorded(net, x[:16])
    ref_logits, ref_codes = reference_forward(net, x[:16].contiguous())
    assert len(codes) == len(ref_codes) == len(quantized_convs(net))
    for q, ref in zip(codes, ref_codes):
        assert np.array_equal(q.numpy(), ref)
    assert torch.equal(logits, ref_logits)
    assert len({int(v) for q in codes for v in q.unique()}) > 2  # the codes use their range


def test_the_exact_path_is_the_float_path_up_to_rounding():
    net, x = make_subnet(4)
    with torch.inference_mode():
        ours, theirs = net(x), head_forward(net, net.blocks(net.stem(x)))  # training's arithmetic, BN in eval
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() >= 0.9
    assert (ours - theirs).abs().max() < 0.1 * (theirs.max() - theirs.min())


def test_sums_past_2_24_are_taken_in_float64_and_rounded_once():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (1, 1024, 3, 3), generator=g).float()  # 8-bit unsigned codes
    w = torch.randint(-128, 128, (4, 1024, 1, 1), generator=g).float()
    bound = requant.sum_bound(1024, qrange(8, False), qrange(8, True))
    assert bound > requant.FLOAT32_EXACT
    exact_sum = (q.double()[:, None] * w.double()[None, :, :, 0, 0, None, None]).sum(2)
    assert torch.equal(requant.integer_conv(q, w, 1, 1, bound), exact_sum.float())
    assert requant.sum_bound(960, qrange(4, False), qrange(4, True)) <= requant.FLOAT32_EXACT  # mbv3's widest at 4 bits


def test_recalibration_takes_exact_integer_statistics():
    net, x = make_subnet(2)
    conv, bn = net.blocks[1].expand.conv, net.blocks[1].expand.bn
    seen, integer_conv = [], requant.integer_conv

    def spy(q, w, stride, groups, bound):
        acc = integer_conv(q, w, stride, groups, bound)
        if w.shape == conv.weight.shape:
            seen.append(acc.double())
        return acc
    exact.requant.integer_conv = spy
    try:
        recalibrate_bn(net, [(x[:48], None), (x[48:], None)])
    finally:
        exact.requant.integer_conv = integer_conv
    s = float(conv.aq.step.abs()) * float(conv.wq.step.abs())
    means = [s * a.mean((0, 2, 3)) for a in seen]
    variances = [s * s * a.var((0, 2, 3), unbiased=False) for a in seen]
    torch.testing.assert_close(bn.running_mean.double(), (48 * means[0] + 48 * means[1]) / 96, rtol=1e-6, atol=0)
    torch.testing.assert_close(bn.running_var.double(), (48 * variances[0] + 48 * variances[1]) / 96,
                               rtol=1e-5, atol=0)


WORKER = """
import sys, torch
from oqat.nets.calibrate import recalibrate_bn
from oqat.space.builtin import MINI
from oqat.nets.subnet import Subnet
sys.path.insert(0, {tests!r})
from test_exact import recorded
out = {{}}
for bits, (state, x) in torch.load({path!r}).items():
    net = Subnet(MINI, {arch!r}, bits)
    net.load_state_dict(state)
    recalibrate_bn(net, [(x[:48], None), (x[48:], None)])
    out[bits] = recorded(net.eval(), x), {{k: v for k, v in net.state_dict().items() if "running" in k}}
torch.save(out, {path!r} + "." + {name!r})
"""


@pytest.mark.slow  # starts a process per thread count and ISA
def test_codes_logits_and_bn_statistics_are_the_same_on_every_thread_count_and_isa(tmp_path):
    """The same networks (made here: steps set from data by training's float arithmetic, which
    the thread count may change) recalibrated and evaluated each in its own process, where the
    thread count and the ISA are fixed when torch starts."""
    path = str(tmp_path / "nets.pt")
    torch.save({bits: (net.state_dict(), x) for bits in (2, 4) for net, x in [make_subnet(bits)]}, path)
    envs = {"1 thread": {"OMP_NUM_THREADS": "1"}, "2 threads": {"OMP_NUM_THREADS": "2"}}
    if torch.backends.cpu.get_cpu_capability() == "AVX512":
        envs["avx2"] = {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "avx2"}
    runs = {}
    for name, env in envs.items():
        code = WORKER.format(tests=os.path.dirname(__file__), path=path, arch=ARCH, name=name)
        subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), check=True, timeout=120)
        runs[name] = torch.load(f"{path}.{name}")
    (ref_name, ref), *others = runs.items()
    for name, run in others:
        for bits in (2, 4):
            ((logits, codes), stats), ((ref_logits, ref_codes), ref_stats) = run[bits], ref[bits]
            assert all(torch.equal(stats[k], ref_stats[k]) for k in ref_stats), f"{name}: BN statistics"
            assert all(torch.equal(a, b) for a, b in zip(codes, ref_codes)), f"{name}: codes at {bits} bits"
            assert torch.equal(logits, ref_logits), f"{name}: logits at {bits} bits"
