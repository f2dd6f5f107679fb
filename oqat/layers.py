"""Static layers of an extracted subnet, each with its cost formula next to its forward.

Costs follow the authors' accounting: MACs of every Conv2d and Linear (c_in * output
elements * k*k / groups; in * out), params = every trainable parameter (step sizes
included); quantized convs are tallied apart so BitOPs and model size can weight them.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .quant import FULL_PRECISION, LSQ
from .space import make_divisible


@dataclass(frozen=True)
class Cost:
    macs_q: int = 0  # MACs of quantized convs
    macs_fp: int = 0  # MACs of full-precision layers
    params_q: int = 0  # quantized weights
    params_fp: int = 0  # every other trainable parameter but the steps (BN, biases, fp layers)

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.macs_q + other.macs_q, self.macs_fp + other.macs_fp,
                    self.params_q + other.params_q, self.params_fp + other.params_fp)


def conv_out(h: int, k: int, stride: int) -> int:
    return (h + 2 * (k // 2) - k) // stride + 1


def conv_cost(c_in: int, c_out: int, k: int, stride: int, h: int, groups: int = 1,
              bias: bool = False, quantized: bool = False) -> tuple[Cost, int]:
    """Cost of a conv with 'same' padding on an h x h input, and its output size."""
    h_out = conv_out(h, k, stride)
    macs = c_in * c_out * k * k // groups * h_out * h_out
    weights = c_out * c_in // groups * k * k
    extra = c_out if bias else 0
    if quantized:
        return Cost(macs_q=macs, params_q=weights, params_fp=extra), h_out
    return Cost(macs_fp=macs, params_fp=weights + extra), h_out


def bn_cost(c: int) -> Cost:
    return Cost(params_fp=2 * c)


ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "h_swish": nn.Hardswish}


def make_act(name: str | None) -> nn.Module | None:
    if name is None:
        return None
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}' (known: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name](inplace=True)


class QConv2d(nn.Conv2d):
    """Conv2d (no bias, 'same' padding) whose weight and input each pass an LSQ quantizer.

    Subclassing Conv2d keeps the state-dict keys plain (`weight`, `wq.step`, `aq.step`).
    """

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
                 bits: int = FULL_PRECISION, signed_input: bool = False):
        super().__init__(c_in, c_out, k, stride, k // 2, groups=groups, bias=False)
        self.wq = LSQ(signed=True, bits=bits)
        self.aq = LSQ(signed=signed_input, bits=bits)

    def qconv(self, x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
        k = weight.shape[-1]
        return F.conv2d(self.aq(x), self.wq(weight), None, self.stride, k // 2, 1, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qconv(x, self.weight, self.groups)


class ConvBNAct(nn.Module):
    """conv -> optional BN -> optional activation; extra forward args go to the conv
    (the elastic convs take their active width or kernel that way)."""

    def __init__(self, conv: nn.Module, bn: nn.Module | None, act: str | None):
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.act = make_act(act)

    def forward(self, x: torch.Tensor, *conv_args) -> torch.Tensor:
        x = self.conv(x, *conv_args)
        if self.bn is not None:
            x = self.bn(x)
        return x if self.act is None else self.act(x)


def se_forward(x, w_reduce, b_reduce, w_expand, b_expand):
    y = x.mean((2, 3), keepdim=True)
    y = F.relu(F.conv2d(y, w_reduce, b_reduce), inplace=True)
    return x * F.hardsigmoid(F.conv2d(y, w_expand, b_expand), inplace=True)


def se_mid(c: int) -> int:
    return make_divisible(c // 4, 8)


class SqueezeExcite(nn.Module):
    """Full-precision SE: pool, 1x1 reduce + relu, 1x1 expand + h_sigmoid, rescale."""

    def __init__(self, c: int):
        super().__init__()
        self.reduce = nn.Conv2d(c, se_mid(c), 1)
        self.expand = nn.Conv2d(se_mid(c), c, 1)

    def forward(self, x):
        return se_forward(x, self.reduce.weight, self.reduce.bias, self.expand.weight, self.expand.bias)

    @staticmethod
    def cost(c: int) -> Cost:
        return conv_cost(c, se_mid(c), 1, 1, 1, bias=True)[0] + conv_cost(se_mid(c), c, 1, 1, 1, bias=True)[0]


def batch_norm(c: int, momentum: float, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=eps, momentum=momentum)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project, all convs quantized."""

    def __init__(self, c_in: int, c_out: int, mid: int, k: int, stride: int, act: str, se: bool,
                 bits: int, bn=(0.1, 1e-5), signed_input: bool = False):
        super().__init__()
        self.expand = None
        if mid != c_in:
            self.expand = ConvBNAct(QConv2d(c_in, mid, 1, bits=bits, signed_input=signed_input),
                                    batch_norm(mid, *bn), act)
        self.dw = ConvBNAct(QConv2d(mid, mid, k, stride, groups=mid, bits=bits), batch_norm(mid, *bn), act)
        self.se = SqueezeExcite(mid) if se else None
        self.project = ConvBNAct(QConv2d(mid, c_out, 1, bits=bits), batch_norm(c_out, *bn), None)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        h = x if self.expand is None else self.expand(x)
        h = self.dw(h)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        return x + h if self.residual else h

    @staticmethod
    def cost(c_in: int, c_out: int, mid: int, k: int, stride: int, se: bool, h: int) -> tuple[Cost, int]:
        total = Cost()
        if mid != c_in:
            total = conv_cost(c_in, mid, 1, 1, h, quantized=True)[0] + bn_cost(mid)
        dw, h = conv_cost(mid, mid, k, stride, h, groups=mid, quantized=True)
        total = total + dw + bn_cost(mid)
        if se:
            total = total + SqueezeExcite.cost(mid)
        return total + conv_cost(mid, c_out, 1, 1, h, quantized=True)[0] + bn_cost(c_out), h
