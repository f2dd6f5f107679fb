"""A quantized static subnet's eval-mode forward by the rule of `requant.py`: each quantized
conv summed exactly on integer codes, every full-precision reduction once in float64, so that
its codes and logits do not depend on the thread count, the CPU's vector width or the runtime.

`Subnet.forward` takes this path in eval mode (evaluation, search, validation, export parity);
training keeps the fake-quantized float forward of `layers.py`. BN recalibration runs it too
(`calibrate.recalibrate_bn`), each BN normalising with its batch's statistics, which for a
quantized conv come from exact integer sums: no reduction there depends on the order either.
"""
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..quant import requant
from ..quant.lsq import FULL_PRECISION, qrange
from .layers import ConvBNAct, QConv2d

# Called with (bn, mean, biased var, images) of each batch BN recalibration forwards.
BatchStats = Callable[[nn.BatchNorm2d, torch.Tensor, torch.Tensor, int], None]


def quantized(conv: nn.Module) -> bool:
    return isinstance(conv, QConv2d) and conv.wq.bits != FULL_PRECISION


@torch.no_grad()
def forward(net: nn.Module, x: torch.Tensor, batch_stats: BatchStats | None = None) -> torch.Tensor:
    """Logits of a quantized `Subnet` on x; with `batch_stats`, each BN normalises with its
    batch's mean and variance and reports them there (BN recalibration)."""
    x = _layer(net.stem, x, batch_stats)
    for b in net.blocks:
        h = x if b.expand is None else _layer(b.expand, x, batch_stats)
        h = _layer(b.dw, h, batch_stats)
        if b.se is not None:
            h = _se(b.se, h)
        x = _layer(b.project, h, batch_stats, x if b.residual else None)
    for h in net.space.head_layers():
        x = requant.mean_pool(x) if h is None else _layer(getattr(net, h.name), x, batch_stats)
    return requant.reduce64(F.linear, x.flatten(1), net.classifier.weight, net.classifier.bias)


def _layer(m: ConvBNAct, x: torch.Tensor, batch_stats: BatchStats | None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """conv -> BN -> (+ residual) -> activation as one epilogue of the conv's sum."""
    conv = m.conv
    if quantized(conv):
        q = requant.codes(x, conv.aq.step, *qrange(conv.aq.bits, conv.aq.signed))
        fan_in = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        bound = requant.sum_bound(fan_in, qrange(conv.aq.bits, conv.aq.signed), qrange(conv.wq.bits, True))
        acc = requant.integer_conv(q, requant.weight_codes(conv.weight, conv.wq.step, conv.wq.bits),
                                   conv.stride[0], conv.groups, bound)
        s_a, s_w = conv.aq.step.item(), conv.wq.step.item()
    else:  # the stem: a full-precision reduction, its BN an epilogue with unit steps
        acc = requant.reduce64(F.conv2d, x, conv.weight, conv.bias, conv.stride, conv.padding, 1, conv.groups)
        s_a = s_w = 1.0
    stats = None
    if batch_stats is not None and m.bn is not None:
        stats = _batch_moments(acc, quantized(conv), abs(s_a) * abs(s_w))
        batch_stats(m.bn, *stats, x.shape[0])
    scale, shift = requant.fold(s_a, s_w, m.bn, acc.shape[1], stats)
    return requant.epilogue(acc, torch.from_numpy(scale).to(acc.device), torch.from_numpy(shift).to(acc.device),
                            residual, requant.act_name(m.act))


def _batch_moments(acc: torch.Tensor, integer: bool, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, biased variance) per channel of s * acc, in float64. Integer sums are summed in
    int64, exactly, so the moments do not depend on the summation order; the stem's float32
    outputs are summed in float64 (what remains: a difference in the last of 53 bits, rounded
    away when the statistics become float32 buffers)."""
    m = acc.numel() // acc.shape[1]
    if integer:
        a = acc.to(torch.int64)
        mean, square = a.sum((0, 2, 3)).double() / m, (a * a).sum((0, 2, 3)).double() / m
        return s * mean, s * s * (square - mean * mean)
    a = acc.double()
    mean = a.mean((0, 2, 3))
    return mean, (a - mean.view(1, -1, 1, 1)).square().mean((0, 2, 3))


def _se(se: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = requant.reduce64(F.conv2d, requant.mean_pool(x), se.reduce.weight, se.reduce.bias).clamp_min_(0)
    return x * requant.gate(requant.reduce64(F.conv2d, y, se.expand.weight, se.expand.bias))
