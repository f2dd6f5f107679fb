"""LSQ: learned step size quantization with the OQA release's semantics.

For a tensor v, step s and b bits: v_hat = round(clamp(v / |s|, Qn, Qp)) * |s|, with a
straight-through round and the gradient reaching s scaled by 1 / sqrt(N * Qp).
Weights are signed, activations unsigned; 1-bit weights use sign instead of round.
"""
import functools
import logging
import math
import os
import warnings

import torch
import torch.nn.functional as F
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


Bits = int | tuple[int, ...]  # one width for every layer, or the widths its layers choose from (see precision.py)


def check_precision(bits) -> Bits:
    """A network's bits: an integer (`check_bits`), or a list of two or more widths in 1..8 that
    each block chooses from (mixed precision), returned sorted as a tuple."""
    if not isinstance(bits, (list, tuple)):
        return check_bits(bits)
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in bits):  # sorting them would be a TypeError
        raise ValueError(f"mixed bits must be integers, got {list(bits)!r:.60}")
    widths = tuple(sorted(set(bits)))
    if len(widths) < 2 or len(widths) != len(bits) or FULL_PRECISION in widths:
        raise ValueError(f"mixed bits must be two or more distinct widths in 1..8, got {list(bits)}")
    for b in widths:
        check_bits(b)
    return widths


class _LSQFunction(torch.autograd.Function):
    """LSQ as its closed form in torch ops, for what the CPU kernel does not take
    (accelerators, dtypes other than float32, 1-bit sign): no host sync, in any layout.

    It computes in v's dtype, the step cast to it once: under bf16 autocast an fp32 step
    would promote v / |s| to fp32, and the conv after it would cast v_hat back to bf16, a
    round trip through memory per quantized activation. The step gradient is still summed
    in float64 and handed back in the step's dtype."""

    @staticmethod
    def forward(ctx, v, step, qn, qp, grad_scale, use_sign):
        ctx.save_for_backward(v, step)
        ctx.consts = qn, qp, grad_scale, use_sign
        a = step.abs().to(v.dtype)
        q = (v / a).clamp_(qn, qp)
        return (q.sign_() if use_sign else q.round_()).mul_(a)

    @staticmethod
    def backward(ctx, grad):
        v, step = ctx.saved_tensors
        qn, qp, grad_scale, use_sign = ctx.consts
        grad_v, grad_a = _backward_closed_form(grad, v, step.abs().to(v.dtype), qn, qp, use_sign)
        return grad_v, (grad_a * grad_scale * step.sign()).reshape(1).to(step.dtype), None, None, None, None


def _backward_closed_form(grad, v, a, qn, qp, use_sign):
    """(dL/dv, dL/d|s|) as written: the straight-through mask strictly inside the range (the
    authors' hardtanh), and d v_hat / d|s| = q - v/|s| inside, q = Qn or Qp outside, summed in
    float64 (no cancellation; matches the closed form to 1e-6) and returned so, not rounded
    to a bf16 v's precision. Tensor bounds: no host sync."""
    x = v / a
    inside = (x > qn) & (x < qp)
    q = x.clamp(qn, qp)
    q = q.sign_() if use_sign else q.round_()
    grad_a = torch.where(inside, grad * (q - x), grad * q).sum(dtype=torch.float64)
    return torch.where(inside, grad, 0.0), grad_a


_KERNEL_SOURCE = os.path.join(os.path.dirname(__file__), "lsq_cpu.cpp")
# What torch compiles its own kernels with for each CPU capability, so at::vec takes that width.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"],
}


@functools.cache
def cpu_kernel():
    """The LSQ CPU kernel's ops (`torch.ops.oqat_lsq`), built on first use by torch's C++
    extension loader (about 7 s, then cached by torch), or None, with a warning, where it
    cannot be built or OQAT_CPU_KERNEL=0. Either way the values are the same: the kernel
    forward equals the torch ops bit for bit, its gradients to float rounding."""
    if os.environ.get("OQAT_CPU_KERNEL", "1") == "0":
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    # at::parallel_for splits work across threads only when compiled with torch's threading (OpenMP)
    omp = ["-fopenmp"] if torch.backends.openmp.is_available() else []
    flags = ["-O3", *omp, *_ISA_FLAGS.get(capability, [])]
    try:
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" is no news here
        from torch.utils import cpp_extension
        cpp_extension.load(f"oqat_lsq_{capability.lower()}", [_KERNEL_SOURCE], extra_cflags=flags,
                            extra_ldflags=omp, is_python_module=False)
    except Exception as e:  # no compiler, no ninja, an unusual platform: the torch ops still work
        warnings.warn(f"oqat: could not build the CPU LSQ kernel ({type(e).__name__}: {str(e).strip()[:200]}); "
                      "quantized training on CPU takes the slower torch ops", stacklevel=2)
        return None
    return torch.ops.oqat_lsq


def lsq(v: torch.Tensor, step: torch.Tensor, bits: int, signed: bool, hardswish: bool = False) -> torch.Tensor:
    """Fake-quantize v (or h_swish(v)) with step; N for the gradient scale is v.numel() (the active tensor)."""
    qn, qp = qrange(bits, signed)
    grad_scale = 1.0 / math.sqrt(v.numel() * qp)
    use_sign = signed and bits == 1
    if v.device.type == "cpu" and v.dtype == torch.float32 and not use_sign and (kernel := cpu_kernel()) is not None:
        return kernel.lsq(v, step, qn, qp, grad_scale, hardswish)
    return _LSQFunction.apply(F.hardswish(v) if hardswish else v, step, qn, qp, grad_scale, use_sign)


def init_step(v: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """LSQ's data-driven initial step, 2 * mean(|v|) / sqrt(Qp), as a [1] tensor."""
    _, qp = qrange(bits, signed)
    return (2.0 * v.detach().abs().mean() / math.sqrt(qp)).reshape(1).float()


def inherit_step(step: torch.Tensor, bits_from: int, bits_to: int) -> torch.Tensor:
    """Bit inheritance: each bit dropped doubles the step, keeping the clipping range close."""
    return step * 2.0 ** (bits_from - bits_to)


# The activations a quantizer applies to its input itself (`LSQ.forward`'s act).
ACTIVATIONS_FOLDED = {"relu": F.relu, "h_swish": F.hardswish}


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

    def forward(self, v: torch.Tensor, act: str | None = None) -> torch.Tensor:
        """v_hat of act(v), act one of ACTIVATIONS_FOLDED (or None): the activation before a
        quantizer applied by it costs no pass of its own. A ReLU is the unsigned clamp at 0
        (forward and backward); h_swish is computed inside the CPU kernel's two passes."""
        if act is not None and act not in ACTIVATIONS_FOLDED:
            raise ValueError(f"a quantizer applies only {', '.join(ACTIVATIONS_FOLDED)}, not {act!r}")
        if self.bits == FULL_PRECISION:
            return v if act is None else ACTIVATIONS_FOLDED[act](v, inplace=True)
        if act == "relu" and self.signed:
            raise ValueError("a ReLU folds only into an unsigned quantizer")
        if self.init_pending:
            with torch.no_grad():
                self.step.copy_(init_step(v if act is None else ACTIVATIONS_FOLDED[act](v), self.bits, self.signed))
            self.init_pending = False
        return lsq(v, self.step, self.bits, self.signed, hardswish=act == "h_swish")

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"


class ElasticLSQ(LSQ):
    """One learned step per bit-width in `widths`, each shared by every architecture that runs
    this tensor at that width (OQAT's shared step, once per width); `bits` picks the one in use.
    Its state dict holds `steps.{b}` for each width."""

    def __init__(self, signed: bool, widths: tuple[int, ...]):
        nn.Module.__init__(self)  # LSQ.__init__ would register the single `step` this class replaces
        self.signed, self.widths = signed, check_precision(widths)
        self.bits = max(self.widths)
        self.steps = nn.ParameterDict({str(b): nn.Parameter(torch.ones(1)) for b in self.widths})
        self.init_pending = False

    @property
    def step(self) -> nn.Parameter:
        if self.bits not in self.widths:
            raise ValueError(f"this quantizer has steps for {self.widths} bits, not {self.bits}")
        return self.steps[str(self.bits)]

    def extra_repr(self) -> str:
        return f"bits={self.bits} of {self.widths}, signed={self.signed}"


def elastic_bits_(net: nn.Module, widths: tuple[int, ...]) -> nn.Module:
    """Every quantizer of `net` replaced, in place, by an `ElasticLSQ` over `widths`, each width's
    step starting from the quantizer's own step carried to that width as bit inheritance does."""
    widths = check_precision(widths)
    for parent in list(net.modules()):
        for name, q in list(parent.named_children()):
            if isinstance(q, LSQ) and not isinstance(q, ElasticLSQ):
                elastic = ElasticLSQ(q.signed, widths).to(q.step)
                if q.bits != FULL_PRECISION:
                    with torch.no_grad():
                        for b in widths:
                            elastic.steps[str(b)].copy_(inherit_step(q.step, q.bits, b))
                setattr(parent, name, elastic)
    return net


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
    """The learned steps of `net`'s quantizers that are on (every width's, for elastic bits)."""
    out = []
    for m in net.modules():
        if isinstance(m, ElasticLSQ):
            out += list(m.steps.values())
        elif isinstance(m, LSQ) and m.bits != FULL_PRECISION:
            out.append(m.step)
    return out


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
