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
  pooling, the classifier) sums in float64 and rounds to float32 once, then goes on in float32.

The PyTorch evaluation, the exporters and the C runtime (`oqat/runtime`) all compute this.
"""
import numpy as np
import torch
from torch import nn

ACTS = ("relu", "relu6", "h_swish")  # the activations an epilogue applies, by the space's names


def act_name(act: nn.Module | None) -> str | None:
    """The rule's name of an activation module (None for none)."""
    if act is None:
        return None
    names = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "h_swish"}
    if type(act) not in names:
        raise ValueError(f"no epilogue activation for {type(act).__name__}")
    return names[type(act)]


def fold(step_a: float, step_w: float, bn: nn.BatchNorm2d | None, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of a quantized conv's epilogue, float32 [channels] each, folded in float64."""
    s = abs(float(step_a)) * abs(float(step_w))
    if bn is None:
        return np.full(channels, s, np.float32), np.zeros(channels, np.float32)
    k = bn.weight.detach().double()[:channels] / torch.sqrt(bn.running_var.detach().double()[:channels] + bn.eps)
    shift = bn.bias.detach().double()[:channels] - k * bn.running_mean.detach().double()[:channels]
    return (s * k).float().cpu().numpy(), shift.float().cpu().numpy()


def activate(y: torch.Tensor, act: str | None) -> torch.Tensor:
    """The activation as the rule computes it, operation by operation in y's dtype."""
    if act is None:
        return y
    if act == "relu":
        return y.clamp_min(0)
    if act == "relu6":
        return y.clamp(0, 6)
    if act == "h_swish":
        return y * (y + 3).clamp(0, 6) / 6
    raise ValueError(f"unknown activation {act!r} (known: {', '.join(ACTS)})")


def epilogue(acc: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, residual: torch.Tensor | None = None,
             act: str | None = None) -> torch.Tensor:
    """float32 output of an exact integer sum `acc` (N, C, H, W; integer-valued floats), the
    folded per-channel `scale` and `shift` ([C]), an optional residual and the activation."""
    y = acc.float() * scale.view(1, -1, 1, 1)
    y = y + shift.view(1, -1, 1, 1)
    if residual is not None:
        y = y + residual
    return activate(y, act)


def codes(y: torch.Tensor, step: float | torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """The next quantizer's integer codes of y (as float32): round_half_even(clamp(y / |s|))."""
    s = step.detach().abs().float() if isinstance(step, torch.Tensor) else torch.tensor(abs(step), dtype=torch.float32)
    return torch.round(torch.clamp(y / s.to(y.device), qn, qp))


def reduce64(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """fn (a full-precision reduction such as F.conv2d or F.linear) computed in float64 on
    float64 copies of `tensors`, rounded to float32 once."""
    return fn(*(t.double() if isinstance(t, torch.Tensor) else t for t in tensors)).float()


def mean_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling (N, C, 1, 1) as the rule computes it: a float64 mean, rounded once."""
    return x.double().mean((2, 3), keepdim=True).float()

