"""LSQ: learned step size quantization with the OQA release's semantics.

For a tensor v, step s and b bits: v_hat = round(clamp(v / |s|, Qn, Qp)) * |s|, with a
straight-through round and the gradient reaching s scaled by 1 / sqrt(N * Qp).
Weights are signed, activations unsigned; 1-bit weights use sign instead of round.
"""
import math

import torch
from torch import nn

FULL_PRECISION = 32  # bits meaning "quantizer off"
STEP_EPS = 1e-6  # smallest |step| kept after an update; a zero step would divide by zero


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """(Qn, Qp) for `bits`: signed [-2^(b-1), 2^(b-1)-1] (b=1: [-1, 1]), unsigned [0, 2^b-1]."""
    if signed:
        return (-1, 1) if bits == 1 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return 0, 2**bits - 1


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not (isinstance(bits, int) and (1 <= bits <= 8 or bits == FULL_PRECISION)):
        raise ValueError(f"bits must be an integer in 1..8, or 32 for full precision; got {bits!r}")
    return bits


class _LSQFunction(torch.autograd.Function):
    """Fused LSQ: about 3x faster than the autograd chain of detach tricks. Forward: three
    elementwise passes; backward: `_backward_cpu` or `_backward_on_device`. (torch.compile'd
    one-pass kernels measured no faster in the CPU training step: the per-call overhead of
    a compiled region ate the saved passes.)"""

    @staticmethod
    def forward(ctx, v, step, qn, qp, grad_scale, use_sign):
        a = step.abs()
        q = (v / a).clamp_(qn, qp)
        q = q.sign_() if use_sign else q.round_()
        out = q.mul_(a)
        ctx.save_for_backward(v, out, step)
        ctx.consts = qn, qp, grad_scale, use_sign
        return out

    @staticmethod
    def backward(ctx, grad):
        v, out, step = ctx.saved_tensors
        qn, qp, grad_scale, use_sign = ctx.consts
        if v.dtype != grad.dtype:  # under autocast v may be bf16 while v_hat (and its gradient) are float32
            v = v.to(grad.dtype)
        if v.is_cuda:
            grad_v, grad_a = _backward_on_device(grad, v, step.abs(), qn, qp, use_sign)
            grad_step = (grad_a * grad_scale * step.sign()).reshape(1).to(step.dtype)
        else:  # scalars on the host: a quantizer's backward is a few microseconds of Python per op
            s = step.item()
            grad_v, grad_a = _backward_cpu(grad, v, out, abs(s), qn, qp)
            grad_step = (grad_a * (grad_scale * ((s > 0) - (s < 0)))).reshape(1).to(step.dtype)
        return grad_v, grad_step, None, None, None, None


def _backward_cpu(grad, v, out, a: float, qn, qp):
    """(dL/dv, dL/d|s|) in three passes, the fewest on CPU: the straight-through mask via
    hardtanh's own backward kernel (strictly inside the range, as the authors' hardtanh),
    and d v_hat / d|s| (q - v/|s| inside, q = Qn or Qp outside) as two dot products.
    Their difference cancels: float32 error up to about 2e-5 relative on 65k elements."""
    grad_v = torch.ops.aten.hardtanh_backward(grad, v, qn * a, qp * a)
    return grad_v, (_dot(grad, out) - _dot(grad_v, v)) / a


def _backward_on_device(grad, v, a, qn, qp, use_sign):
    """The closed form as written, for accelerators, where extra elementwise passes are
    cheap: no host sync per quantizer (tensor bounds), and the step gradient as one masked
    sum accumulated in float64 (no cancellation; matches the closed form to 1e-6)."""
    x = v / a
    inside = (x > qn) & (x < qp)
    q = x.clamp(qn, qp)
    q = q.sign_() if use_sign else q.round_()
    grad_a = torch.where(inside, grad * (q - x), grad * q).sum(dtype=torch.float64)
    return torch.where(inside, grad, 0.0), grad_a.to(grad.dtype)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of a * b over same-shaped tensors without copies: flattened in memory order when
    both are contiguous, in NHWC order otherwise (a view for channels-last tensors)."""
    if a.dim() == 4 and not (a.is_contiguous() and b.is_contiguous()):
        a, b = a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)
    return torch.dot(a.reshape(-1), b.reshape(-1))


def lsq(v: torch.Tensor, step: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Fake-quantize v with step; N for the gradient scale is v.numel() (the active tensor)."""
    qn, qp = qrange(bits, signed)
    grad_scale = 1.0 / math.sqrt(v.numel() * qp)
    return _LSQFunction.apply(v, step, qn, qp, grad_scale, signed and bits == 1)


def init_step(v: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """LSQ's data-driven initial step, 2 * mean(|v|) / sqrt(Qp), as a [1] tensor."""
    _, qp = qrange(bits, signed)
    return (2.0 * v.detach().abs().mean() / math.sqrt(qp)).reshape(1).float()


def inherit_step(step: torch.Tensor, bits_from: int, bits_to: int) -> torch.Tensor:
    """Bit inheritance: each bit dropped doubles the step, keeping the clipping range close."""
    return step * 2.0 ** (bits_from - bits_to)


class LSQ(nn.Module):
    """One learned step for one tensor (a conv's weight or its input); off at 32 bits.

    `bits` is a plain attribute, not state: the network's bit-width lives in its checkpoint
    metadata, as in the authors' release, whose state dicts hold only the steps. Set it for
    a whole network with `set_bits_`.
    """

    def __init__(self, signed: bool, bits: int = FULL_PRECISION):
        super().__init__()
        self.signed = signed
        self.bits = check_bits(bits)
        self.step = nn.Parameter(torch.ones(1))
        self.init_pending = False  # when set, the next forward sets the step from its input

    def forward(self, v: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """v_hat of v; with `relu`, of relu(v) (unsigned only), for which the clamp at 0 does
        the ReLU in both passes: a ReLU before the quantizer is then one pass each way for nothing."""
        if self.bits == FULL_PRECISION:
            return v.relu_() if relu else v
        if relu and self.signed:
            raise ValueError("a ReLU folds only into an unsigned quantizer")
        if self.init_pending:
            with torch.no_grad():
                self.step.copy_(init_step(v.relu() if relu else v, self.bits, self.signed))
            self.init_pending = False
        return lsq(v, self.step, self.bits, self.signed)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"


def set_bits_(net: nn.Module, bits: int) -> nn.Module:
    """Every quantizer of `net` to `bits` (32: off), in place, as torchao's `quantize_`."""
    check_bits(bits)
    for m in net.modules():
        if isinstance(m, LSQ):
            m.bits = bits
    return net


def bits_of(net: nn.Module) -> int:
    """The bit-width of `net`'s quantizers (32 when it has none)."""
    return next((m.bits for m in net.modules() if isinstance(m, LSQ)), FULL_PRECISION)


def steps_of(net: nn.Module) -> list[nn.Parameter]:
    """The learned steps of `net`'s quantizers that are on."""
    return [m.step for m in net.modules() if isinstance(m, LSQ) and m.bits != FULL_PRECISION]


@torch.no_grad()
def step_values(net: nn.Module) -> torch.Tensor:
    """A copy of every step of `net` (the state `guard_steps_` compares against)."""
    steps = steps_of(net)
    return torch.cat([p.reshape(1) for p in steps]) if steps else torch.zeros(0)


@torch.no_grad()
def guard_steps_(net: nn.Module, before: torch.Tensor) -> tuple[int, int]:
    """Keep every |step| >= STEP_EPS with its sign, in place, after an optimizer update;
    returns (steps clamped, sign changes since `before`). LSQ quantizes with |s|, so a flip
    is harmless to the forward but means an update jumped across zero: worth logging."""
    steps = steps_of(net)
    if not steps:
        return 0, 0
    s = torch.cat([p.reshape(1) for p in steps])
    sign = torch.where(s < 0, -1.0, 1.0)
    flips = int((sign != torch.where(before < 0, -1.0, 1.0)).sum())
    small = s.abs() < STEP_EPS
    clamps = int(small.sum())
    if clamps:
        for p, fix in zip(steps, torch.where(small, sign * STEP_EPS, s)):
            p.fill_(fix)
    return clamps, flips
