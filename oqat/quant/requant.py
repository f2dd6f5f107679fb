"""The one arithmetic rule by which a trained quantized network is evaluated and deployed.

Training computes a quantized conv on fake-quantized floats, whose float32 sums round
differently with the summation order (thread count, CPU, runtime); near a rounding boundary a
whole class of activations then flips code. At evaluation and in every runtime oqat follows
this rule instead, in which every reduction is exact or done once in float64:

- a quantized conv sums the products of its integer codes exactly: acc = sum q_a * q_w;
- its epilogue, per output channel c, in float32, one rounding per operation (no FMA):
  y = float(acc) * scale_c, then y + shift_c, then y + residual (when the block adds one),
  then the activation (`act`), where scale_c = |s_a| * |s_w| * gamma_c / sqrt(var_c + eps)
  and shift_c = beta_c - gamma_c / sqrt(var_c + eps) * mean_c are computed in float64 and
  rounded to float32 once (`fold`);
- the next quantizer: q = round_half_even(clamp(y / |s|, Qn, Qp)), a true division;
- a full-precision reduction (the stem conv, SE's pooling and its two 1x1 convs, the global
  pooling, the classifier) sums in float64 and rounds to float32 once, then goes on in float32:
  the stem's BN and activation are an epilogue with |s_a| = |s_w| = 1; SE multiplies its input
  by `gate` (relu6(y + 3) / 6, operation by operation) of its expand conv's output, after a ReLU
  on its reduce conv's.

Weight codes are LSQ's (`weight_codes`). A conv's sums are exact in float32 while no partial sum
can pass 2^24 (`sum_bound`, from the fan-in and the code ranges); past it `integer_conv` sums in
float64 (exact to 2^53) and float(acc) rounds once, as the rule says.

The PyTorch evaluation, the exporters and the C runtime (`oqat/runtime`) all compute this.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .lsq import qrange

ACTS = ("relu", "relu6", "h_swish")  # the activations an epilogue applies, by the space's names
FLOAT32_EXACT = 2**24  # every integer up to this magnitude is a float32


def act_name(act: nn.Module | None) -> str | None:
    """The rule's name of an activation module (None for none)."""
    if act is None:
        return None
    names = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "h_swish"}
    if type(act) not in names:
        raise ValueError(f"no epilogue activation for {type(act).__name__}")
    return names[type(act)]


def fold(step_a: float, step_w: float, bn: nn.BatchNorm2d | None, channels: int,
         stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of a quantized conv's epilogue, float32 [channels] each, folded in float64
    from BN's running statistics, or from `stats` = (mean, biased var) of a batch (BN
    recalibration normalises each batch with its own)."""
    s = abs(float(torch.as_tensor(step_a).detach())) * abs(float(torch.as_tensor(step_w).detach()))
    if bn is None:
        return np.full(channels, s, np.float32), np.zeros(channels, np.float32)
    mean, var = stats if stats is not None else (bn.running_mean[:channels], bn.running_var[:channels])
    k = bn.weight.detach().double()[:channels] / torch.sqrt(var.detach().double() + bn.eps)
    shift = bn.bias.detach().double()[:channels] - k * mean.detach().double()
    return (s * k).float().cpu().numpy(), shift.float().cpu().numpy()


def weight_codes(weight: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """The integer codes (as float32) of a weight by LSQ's arithmetic: round_half_even(clamp(w / |s|)),
    its sign at 1 bit."""
    qn, qp = qrange(bits, signed=True)
    q = (weight.detach().float() / step.detach().abs().float()).clamp_(qn, qp)
    return q.sign_() if bits == 1 else q.round_()


def sum_bound(fan_in: int, act_range: tuple[int, int], weight_range: tuple[int, int]) -> int:
    """The largest |partial sum| a conv of `fan_in` products of codes in these ranges can reach."""
    return fan_in * max(map(abs, act_range)) * max(map(abs, weight_range))


def integer_conv(codes: torch.Tensor, w_codes: torch.Tensor, stride: int, groups: int, bound: int) -> torch.Tensor:
    """acc = sum q_a * q_w of a 'same'-padded conv, exactly, as float32: summed in float32 where
    `bound` (`sum_bound`) keeps every partial sum under 2^24, else in float64 and rounded once."""
    pad = w_codes.shape[-1] // 2
    if bound <= FLOAT32_EXACT:
        return F.conv2d(codes, w_codes, None, stride, pad, 1, groups)
    return F.conv2d(codes.double(), w_codes.double(), None, stride, pad, 1, groups).float()


def activate(y: torch.Tensor, act: str | None) -> torch.Tensor:
    """The activation as the rule computes it, operation by operation in y's dtype."""
    if act is None:
        return y
    if act == "relu":
        return y.clamp_min(0)
    if act == "relu6":
        return y.clamp(0, 6)
    if act == "h_swish":
        return y * (y + 3).clamp_(0, 6) / 6
    raise ValueError(f"unknown activation {act!r} (known: {', '.join(ACTS)})")


def epilogue(acc: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, residual: torch.Tensor | None = None,
             act: str | None = None) -> torch.Tensor:
    """float32 output of an exact integer sum `acc` (N, C, H, W; integer-valued floats), the
    folded per-channel `scale` and `shift` ([C]), an optional residual and the activation."""
    y = acc.float() * scale.view(1, -1, 1, 1)  # a new tensor: the in-place ops below touch no input
    y.add_(shift.view(1, -1, 1, 1))
    if residual is not None:
        y.add_(residual)
    return activate(y, act)


def codes(y: torch.Tensor, step: float | torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """The next quantizer's integer codes of y (as float32): round_half_even(clamp(y / |s|))."""
    s = step.detach().abs().float() if isinstance(step, torch.Tensor) else torch.tensor(abs(step), dtype=torch.float32)
    return (y / s.to(y.device)).clamp_(qn, qp).round_()


def gate(y: torch.Tensor) -> torch.Tensor:
    """SE's gate, h_sigmoid(y) = relu6(y + 3) / 6, operation by operation in y's dtype."""
    return (y + 3).clamp_(0, 6) / 6


def reduce64(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """fn (a full-precision reduction such as F.conv2d or F.linear) computed in float64 on
    float64 copies of `tensors`, rounded to float32 once."""
    return fn(*(t.double() if isinstance(t, torch.Tensor) else t for t in tensors)).float()


def mean_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling (N, C, 1, 1) as the rule computes it: a float64 mean, rounded once."""
    return x.double().mean((2, 3), keepdim=True).float()

