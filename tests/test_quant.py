import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from oqat.quant.lsq import LSQ, _backward_closed_form, check_bits, inherit_step, init_step, lsq, qrange


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("bits,signed,expected", [
    (4, True, (-8, 7)), (3, True, (-4, 3)), (2, True, (-2, 1)), (1, True, (-1, 1)),
    (4, False, (0, 15)), (3, False, (0, 7)), (2, False, (0, 3)), (1, False, (0, 1)),
])
def test_qrange(bits, signed, expected):
    assert qrange(bits, signed) == expected


@pytest.mark.parametrize("bits,signed,v,step,expected", [
    # 4-bit weights: round then clip to [-8, 7] steps
    (4, True, t(0.26, -0.26, 0.74, 1.9, -2.5, 0.0), 0.25, t(0.25, -0.25, 0.75, 1.75, -2.0, 0.0)),
    # 3-bit weights: [-4, 3]
    (3, True, t(0.5, 1.4, -1.4, 3.0, -9.0), 0.5, t(0.5, 1.5, -1.5, 1.5, -2.0)),
    # 2-bit weights: [-2, 1]
    (2, True, t(0.4, 1.6, -0.6, -5.0), 1.0, t(0.0, 1.0, -1.0, -2.0)),
    # 1-bit weights: sign times |s|
    (1, True, t(0.01, -3.0, 0.7, -0.2), 0.5, t(0.5, -0.5, 0.5, -0.5)),
    # unsigned activations clip negatives to 0
    (4, False, t(-1.0, 0.33, 0.95, 100.0), 0.2, t(0.0, 0.4, 1.0, 3.0)),
    (2, False, t(-0.1, 0.6, 1.2, 2.0), 0.5, t(0.0, 0.5, 1.0, 1.5)),
    (1, False, t(-0.4, 0.2, 0.8, 3.0), 1.0, t(0.0, 0.0, 1.0, 1.0)),
    # a negative step quantizes with |s|
    (4, True, t(0.26, -0.26, 0.74, 1.9), -0.25, t(0.25, -0.25, 0.75, 1.75)),
    (2, False, t(-0.1, 0.6, 1.2, 2.0), -0.5, t(0.0, 0.5, 1.0, 1.5)),
])
def test_lsq_forward_values(bits, signed, v, step, expected):
    out = lsq(v, t(step), bits, signed)
    assert torch.equal(out, expected)


def test_a_quantizer_applies_only_the_activations_it_can():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="applies only relu, h_swish"):
        LSQ(signed=False, bits=4)(x, "relu6")
    with pytest.raises(ValueError, match="folds only into an unsigned"):
        LSQ(signed=True, bits=4)(x, "relu")
    # off: the activation alone
    assert torch.equal(LSQ(signed=True)(x.clone(), "h_swish"), torch.nn.functional.hardswish(x))


def test_full_precision_is_identity_and_off_by_default():
    x = torch.randn(2, 3, 4, 4)
    q = LSQ(signed=True)
    assert q.bits == 32
    assert q(x) is x
    q.bits = 4
    assert not torch.equal(q(x), x)


def closed_form(v, s, g, bits, signed):
    """The LSQ gradients written out elementwise: (dL/dv, dL/ds)."""
    qn, qp = qrange(bits, signed)
    a = abs(s)
    x = v / a
    inside = (x > qn) & (x < qp)
    q = x.clamp(qn, qp)
    q = q.sign() if signed and bits == 1 else q.round()
    grad_v = torch.where(inside, g, torch.zeros_like(g))
    dq = torch.where(inside, q - x, q)
    grad_s = (g * dq).sum() / math.sqrt(v.numel() * qp) * math.copysign(1.0, s)
    return grad_v, grad_s


@pytest.mark.parametrize("bits", [4, 3, 2, 1])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("s", [0.3, -0.3])
def test_lsq_gradients_match_closed_form(bits, signed, s):
    gen = torch.Generator().manual_seed(bits * 10 + signed)
    v = (torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64) * 1.5).requires_grad_()
    step = torch.tensor([s], dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64)
    lsq(v, step, bits, signed).backward(g)
    want_v, want_s = closed_form(v.detach(), s, g, bits, signed)
    assert torch.allclose(v.grad, want_v)
    assert step.grad.shape == (1,)
    assert step.grad.item() == pytest.approx(want_s.item(), rel=1e-9, abs=1e-12)
    # the test would be vacuous if nothing were clipped or nothing passed
    assert 0 < (want_v == 0).sum() < v.numel()


def test_gradient_zero_exactly_at_the_clipping_bounds():
    """Straight-through strictly inside the range, as hardtanh's gradient."""
    v = t(-2.0, -1.999, 1.0, 0.999).requires_grad_()
    lsq(v, t(1.0), 2, True).sum().backward()  # range [-2, 1]
    assert v.grad.tolist() == [0.0, 1.0, 0.0, 1.0]


# The authors' autograd formulation (gradscale / roundpass / hardtanh), as a reference.
from oqa_reference import quantize as authors_quantize  # noqa: E402


@pytest.mark.parametrize("bits", [4, 2, 1])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU"))])  # the CUDA backward takes its own path
def test_lsq_matches_authors_autograd(bits, signed, layout, device):
    gen = torch.Generator().manual_seed(7 * bits + signed)
    base = torch.randn(4, 6, 7, 5, generator=gen).to(device)
    g = torch.randn(4, 6, 7, 5, generator=gen).to(device).contiguous(memory_format=layout)
    grads = []
    for fn in (lambda v, s: lsq(v, s, bits, signed), lambda v, s: authors_quantize(v, s, bits, not signed)):
        v = base.clone().contiguous(memory_format=layout).requires_grad_()
        s = torch.tensor([-0.21], device=device).requires_grad_()
        out = fn(v, s)
        out.backward(g)
        grads.append((out.detach(), v.grad, s.grad))
    (o1, v1, s1), (o2, v2, s2) = grads
    assert torch.allclose(o1, o2, atol=1e-6)
    assert torch.allclose(v1, v2, atol=1e-6)
    assert torch.allclose(s1, s2, rtol=1e-4, atol=1e-7)
    assert s1.abs().item() > 0


def test_init_step_formula():
    v = t(1.0, -3.0, 2.0, -2.0)  # mean |v| = 2
    assert init_step(v, 4, True).tolist() == pytest.approx([2 * 2 / math.sqrt(7)])
    assert init_step(v, 4, False).tolist() == pytest.approx([2 * 2 / math.sqrt(15)])
    assert init_step(v, 1, True).tolist() == pytest.approx([4.0])
    assert init_step(v, 2, True).shape == (1,)


def test_init_pending_sets_step_from_next_input_once():
    q = LSQ(signed=False, bits=2)
    q.init_pending = True
    x = torch.tensor([[0.5, 1.5, 3.0, 1.0]])  # mean |x| = 1.5
    q(x)
    assert q.step.item() == pytest.approx(2 * 1.5 / math.sqrt(3))
    assert not q.init_pending
    q(x * 10)
    assert q.step.item() == pytest.approx(2 * 1.5 / math.sqrt(3))


def test_inherit_step_doubles_per_bit():
    s = t(0.1)
    assert inherit_step(s, 4, 3).item() == pytest.approx(0.2)
    assert inherit_step(s, 4, 2).item() == pytest.approx(0.4)
    assert inherit_step(s, 3, 3).item() == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [0, 9, 16, -1, 4.0, "4", None, True])
def test_bits_validation(bad):
    with pytest.raises(ValueError, match="bits must be"):
        check_bits(bad)
    with pytest.raises(ValueError, match="bits must be"):
        LSQ(signed=True, bits=bad)


@pytest.mark.parametrize("good", [1, 2, 3, 4, 5, 8, 32])
def test_bits_accepted(good):
    assert check_bits(good) == good


@pytest.mark.parametrize("bits,signed", [(4, False), (4, True), (2, False), (1, True)])
def test_accelerator_backward_matches_closed_form_in_float32(bits, signed):
    """The CUDA backward's formula, run on CPU float32 tensors: 1e-6 relative, what
    benchmarks/gpu_check.py demands of it on a GPU."""
    gen = torch.Generator().manual_seed(bits)
    v = torch.randn(8, 32, 16, 16, generator=gen) * 1.5
    g = torch.randn(8, 32, 16, 16, generator=gen)
    s = 0.3
    qn, qp = qrange(bits, signed)
    grad_v, grad_a = _backward_closed_form(g, v, torch.tensor([s]), qn, qp, signed and bits == 1)
    want_v, want_s = closed_form(v.double(), s, g.double(), bits, signed)
    assert torch.equal(grad_v, want_v.float())
    assert (grad_a / math.sqrt(v.numel() * qp)).item() == pytest.approx(want_s.item(), rel=1e-6)


# The CPU kernel (oqat/quant/lsq_cpu.cpp) against the closed form in torch ops, which the tests above pin.
from oqat.quant import lsq as lsq_module  # noqa: E402


def kernel_or_skip():
    kernel = lsq_module.cpu_kernel()
    if kernel is None:
        pytest.skip("the CPU LSQ kernel could not be built here (see the warning)")
    return kernel


def both_paths(v, s, g, bits, signed, hardswish=False):
    """(v_hat, dL/dv, dL/ds) from the kernel and from the torch ops, on the same inputs."""
    results = []
    for use_kernel in (True, False):
        vv = v.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        ss = torch.tensor([s], requires_grad=True)
        qn, qp = qrange(bits, signed)
        scale = 1.0 / math.sqrt(v.numel() * qp)
        if use_kernel:
            out = kernel_or_skip().lsq(vv, ss, qn, qp, scale, hardswish)
        else:
            out = lsq_module._LSQFunction.apply(F.hardswish(vv) if hardswish else vv, ss, qn, qp, scale, False)
        out.backward(g)
        results.append((out.detach(), vv.grad, ss.grad))
    return results


@pytest.mark.parametrize("bits,signed", [(4, False), (4, True), (3, True), (2, False), (2, True), (8, False)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("s", [0.25, -0.5, 0.21])
def test_cpu_kernel_equals_the_torch_ops(bits, signed, layout, s):
    gen = torch.Generator().manual_seed(bits + 10 * signed)
    v = torch.randn(8, 40, 9, 7, generator=gen) * 2
    v.view(-1)[:200] = torch.arange(-100, 100) * (abs(s) / 2)  # ties (exact for |s| = 2^-k): half to even
    v = v.contiguous(memory_format=layout)
    g = torch.randn(8, 40, 9, 7, generator=gen).contiguous(memory_format=layout)
    (o1, v1, s1), (o2, v2, s2) = both_paths(v, s, g, bits, signed)
    assert torch.equal(o1, o2)  # bit for bit, ties included
    assert o1.stride() == v.stride()
    assert torch.equal(v1, v2)  # the same straight-through mask
    assert 0 < (v1 == 0).sum() < v.numel()
    # dL/ds is a sum with cancellation: both paths within 1e-6 of the sum of its terms' sizes
    want, size = step_gradient_and_size(v, s, g, bits, signed)
    assert abs(s1.item() - want) < 1e-6 * size and abs(s2.item() - want) < 1e-6 * size


def step_gradient_and_size(v, s, g, bits, signed):
    """dL/ds summed in float64 over the float32 terms (x = v / |s| in float32, as both paths)."""
    qn, qp = qrange(bits, signed)
    x = v / abs(s)
    q = x.clamp(qn, qp).round()
    dq = torch.where((x > qn) & (x < qp), q - x, q)
    terms = g.double() * dq.double() / math.sqrt(v.numel() * qp) * math.copysign(1.0, s)
    return terms.sum().item(), terms.abs().sum().item()


def test_cpu_kernel_takes_gradients_and_weights_in_any_layout():
    """A gradient in another layout than v is reordered; a sliced (non-dense) weight is copied
    in its own layout; a 1x1 kernel's NCHW gradient matches its NHWC weight as it is."""
    gen = torch.Generator().manual_seed(3)
    full = torch.randn(16, 12, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
    cases = [(torch.randn(4, 6, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last),
              torch.randn(4, 6, 5, 5, generator=gen)),  # NHWC input, NCHW gradient
             (full[:8, :6, 1:4, 1:4], torch.randn(8, 6, 3, 3, generator=gen)),  # a sliced weight
             (full[:8, :6, 2:3, 2:3], torch.randn(8, 6, 1, 1, generator=gen))]  # a 1x1 center
    for v, g in cases:
        (o1, v1, s1), (o2, v2, s2) = both_paths(v, 0.4, g, 4, True)
        assert torch.equal(o1, o2) and torch.equal(v1, v2)
        assert s1.item() == pytest.approx(s2.item(), rel=2e-6)
    assert both_paths(*cases[1][:1], 0.4, cases[1][1], 4, True)[0][0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("signed", [False, True])
def test_cpu_kernel_applies_h_swish_as_torch_does(signed):
    """h_swish folded into the kernel = torch's hardswish then the quantizer, bit for bit
    (values and input gradients), including inputs past +-3 and the vector tail."""
    gen = torch.Generator().manual_seed(5)
    v = (torch.randn(4, 24, 7, 7, generator=gen) * 3).contiguous(memory_format=torch.channels_last)
    g = torch.randn(4, 24, 7, 7, generator=gen).contiguous(memory_format=torch.channels_last)
    (o1, v1, s1), (o2, v2, s2) = both_paths(v, 0.05, g, 4, signed, hardswish=True)
    assert torch.equal(o1, o2) and torch.equal(v1, v2)
    assert s1.item() == pytest.approx(s2.item(), rel=2e-6)
    assert (v.abs() > 3).any() and ((v1 != 0) & (v1 != g)).any()  # h_swish's slope was applied somewhere


def test_cpu_kernel_gives_the_same_results_on_two_threads():
    """Split over threads (four grains' worth of elements), each thread's partial dL/ds
    adds up to the one-thread sum; values and dL/dv do not change at all."""
    gen = torch.Generator().manual_seed(11)
    v = torch.randn(4 * 16384 + 37, generator=gen)
    g = torch.randn(v.shape, generator=gen)
    previous, results = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(both_paths(v, 0.3, g, 3, True)[0])
    finally:
        torch.set_num_threads(previous)
    (o1, v1, s1), (o2, v2, s2) = results
    assert torch.equal(o1, o2) and torch.equal(v1, v2)
    want, size = step_gradient_and_size(v, 0.3, g, 3, True)
    assert abs(s1.item() - want) < 1e-6 * size and abs(s2.item() - want) < 1e-6 * size


def test_lsq_uses_the_kernel_on_cpu_float32_only(monkeypatch):
    kernel_or_skip()
    calls = []
    monkeypatch.setattr(lsq_module._LSQFunction, "apply", lambda *a: calls.append(a[0].dtype) or a[0])
    lsq(torch.randn(4, 4), torch.tensor([0.1]), 4, True)
    lsq(torch.randn(4, 4, dtype=torch.float64), torch.tensor([0.1]), 4, True)
    lsq(torch.randn(4, 4), torch.tensor([0.1]), 1, True)  # 1-bit sign: the torch ops
    assert calls == [torch.float64, torch.float32]


def test_kernel_build_failure_warns_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(lsq_module, "_KERNEL_SOURCE", str(tmp_path / "missing.cpp"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with pytest.warns(UserWarning, match="could not build the CPU LSQ kernel"):
        assert lsq_module.cpu_kernel.__wrapped__() is None
    monkeypatch.setenv("OQAT_CPU_KERNEL", "0")
    assert lsq_module.cpu_kernel.__wrapped__() is None


CAPABILITIES = ["DEFAULT", "AVX2", "AVX512"]  # torch's CPU capabilities, each implying the ones before


@pytest.mark.slow
@pytest.mark.parametrize("capability", CAPABILITIES)
def test_each_isa_build_of_the_kernel_equals_the_torch_ops(capability):
    """The kernel is compiled for the capability torch runs at (ATEN_CPU_CAPABILITY lowers it):
    every build this CPU can run passes the kernel tests above, in its own process."""
    top = torch.backends.cpu.get_cpu_capability()
    if top not in CAPABILITIES or CAPABILITIES.index(capability) > CAPABILITIES.index(top):
        pytest.skip(f"this CPU runs at most {top}")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability.lower(), "OMP_NUM_THREADS": "1"}
    probe = ("import torch; from oqat.quant import lsq; "
             "print(torch.backends.cpu.get_cpu_capability(), lsq.cpu_kernel() is not None)")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == [capability, "True"], out.stderr[-2000:]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          "cpu_kernel and not isa_build"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-3000:]
