"""An independent re-implementation of the authors' (LaVieEnRoseSMZ/OQA) evaluation network,
written from their code's semantics with their module tree and state-dict key names. It
computes the active subnet directly (their extracted subnet computes the same thing) and
shares no code with oqat, so a test can check oqat's loader and extraction against it.

`calibrate(net, x, arch, seed)` gives a randomly initialised net non-trivial state: BN
statistics from the batch, steps from the data (jittered), non-identity kernel transforms.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (24, 40, 80, 112, 160)
STRIDES = (2, 2, 2, 1, 2)
ACTS = ("relu", "relu", "h_swish", "h_swish", "h_swish")
SE = (False, True, False, True, True)
MAX_EXPAND, KERNELS = 6, (3, 5, 7)


def make_divisible(v, divisor=8):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def h_swish(x):
    return x * F.relu6(x + 3.0) / 6.0


def h_sigmoid(x):
    return F.relu6(x + 3.0) / 6.0


def activation(name, x):
    return F.relu(x) if name == "relu" else h_swish(x)


def gradscale(x, scale):
    return (x - x * scale).detach() + x * scale


def roundpass(x):
    return (x.round() - x).detach() + x


def signpass(x):
    return (x.sign() - x).detach() + x


def quantize(v, s, p, is_activation):
    if is_activation:
        qn, qp = 0, 2**p - 1
    else:
        qn, qp = (-1, 1) if p == 1 else (-(2 ** (p - 1)), 2 ** (p - 1) - 1)
    s = gradscale(s, 1.0 / math.sqrt(v.numel() * qp))
    v = F.hardtanh(v / s.abs(), qn, qp)
    vbar = signpass(v) if p == 1 and not is_activation else roundpass(v)
    return vbar * s.abs()


class LsqConv(nn.Conv2d):
    """Their LsqConv: weight, sa (activation step), sw (weight step)."""

    def __init__(self, c_in, c_out, k, stride=1, groups=1):
        super().__init__(c_in, c_out, k, stride, k // 2, groups=groups, bias=False)
        self.sa = nn.Parameter(torch.ones(1))
        self.sw = nn.Parameter(torch.ones(1))
        self.bits = 32
        self.calibrating = False

    def qconv(self, x, weight, groups):
        if self.calibrating:
            qa, qw = 2**self.bits - 1, 2 ** (self.bits - 1) - 1 or 1
            with torch.no_grad():
                self.sa.copy_(2 * x.abs().mean() / math.sqrt(qa) * (0.8 + 0.4 * torch.rand(1)))
                self.sw.copy_(2 * weight.abs().mean() / math.sqrt(qw) * (0.8 + 0.4 * torch.rand(1)))
        k = weight.shape[-1]
        return F.conv2d(quantize(x, self.sa, self.bits, True), quantize(weight, self.sw, self.bits, False),
                        None, self.stride, k // 2, 1, groups)

    def forward(self, x):
        return self.qconv(x, self.weight, self.groups)


class DynamicBN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
        self.calibrating = False

    def forward(self, x):
        c, bn = x.shape[1], self.bn
        if self.calibrating:
            with torch.no_grad():
                bn.running_mean[:c] = x.mean((0, 2, 3))
                bn.running_var[:c] = x.var((0, 2, 3))
        return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                            False, 0.0, bn.eps)


class DynamicPointConv(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = LsqConv(c_in, c_out, 1)

    def forward(self, x, c_out):
        return self.conv.qconv(x, self.conv.weight[:c_out, :x.shape[1]], 1)


class DynamicSepConv(nn.Module):
    """Depthwise conv with OFA's kernel transform matrices `7to5_matrix`, `5to3_matrix`."""

    def __init__(self, c, stride):
        super().__init__()
        self.conv = LsqConv(c, c, max(KERNELS), stride, groups=c)
        for src, target in ((5, 3), (7, 5)):
            self.register_parameter(f"{src}to{target}_matrix", nn.Parameter(torch.eye(target * target)))

    def active_filter(self, c, k):
        filters = self.conv.weight[:c, :c]
        src = max(KERNELS)
        for target in sorted(KERNELS, reverse=True)[1:]:
            if src <= k:
                break
            start = src // 2 - target // 2
            sub = filters[:, :, start:start + target, start:start + target].contiguous()
            sub = sub.view(sub.size(0) * sub.size(1), target * target)
            sub = F.linear(sub, getattr(self, f"{src}to{target}_matrix"))
            filters = sub.view(c, 1, target, target)
            src = target
        return filters

    def forward(self, x, k):
        c = x.shape[1]
        return self.conv.qconv(x, self.active_filter(c, k), c)


class DynamicSE(nn.Module):
    def __init__(self, c):
        super().__init__()
        mid = make_divisible(c // 4)
        self.fc = nn.ModuleDict({"reduce": nn.Conv2d(c, mid, 1), "expand": nn.Conv2d(mid, c, 1)})

    def forward(self, x):
        c = x.shape[1]
        m = make_divisible(c // 4)
        reduce, expand = self.fc["reduce"], self.fc["expand"]
        y = x.mean((2, 3), keepdim=True)
        y = F.relu(F.conv2d(y, reduce.weight[:m, :c], reduce.bias[:m]))
        y = h_sigmoid(F.conv2d(y, expand.weight[:c, :m], expand.bias[:c]))
        return x * y


class Part(nn.Module):
    """A `conv` + `bn` (+ `se`) pair, as OFA's nn.Sequential parts of an MBConv."""

    def __init__(self, conv, bn, se=None):
        super().__init__()
        self.conv, self.bn = conv, bn
        if se is not None:
            self.se = se


class StaticMBConv(nn.Module):
    """blocks.0: depthwise k3 16->16 (expand 1, no SE), project 16->16; relu."""

    def __init__(self, c):
        super().__init__()
        self.depth_conv = Part(LsqConv(c, c, 3, 1, groups=c), nn.BatchNorm2d(c))
        self.point_linear = Part(LsqConv(c, c, 1), nn.BatchNorm2d(c))

    def forward(self, x):
        h = F.relu(self.depth_conv.bn(self.depth_conv.conv(x)))
        return self.point_linear.bn(self.point_linear.conv(h))


class DynamicMBConv(nn.Module):
    def __init__(self, c_in, c_out, stride, act, se):
        super().__init__()
        mid = round(c_in * MAX_EXPAND)
        self.c_out, self.act = c_out, act
        self.inverted_bottleneck = Part(DynamicPointConv(c_in, mid), DynamicBN(mid))
        self.depth_conv = Part(DynamicSepConv(mid, stride), DynamicBN(mid), DynamicSE(mid) if se else None)
        self.point_linear = Part(DynamicPointConv(mid, c_out), DynamicBN(c_out))

    def forward(self, x, k, e):
        mid = make_divisible(round(x.shape[1] * e), 8)
        h = activation(self.act, self.inverted_bottleneck.bn(self.inverted_bottleneck.conv(x, mid)))
        h = activation(self.act, self.depth_conv.bn(self.depth_conv.conv(h, k)))
        if hasattr(self.depth_conv, "se"):
            h = self.depth_conv.se(h)
        return self.point_linear.bn(self.point_linear.conv(h, self.c_out))


class Block(nn.Module):
    def __init__(self, conv, residual):
        super().__init__()
        self.mobile_inverted_conv = conv
        self.residual = residual

    def forward(self, x, *args):
        h = self.mobile_inverted_conv(x, *args)
        return x + h if self.residual else h


class OQANet(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.first_conv = Part(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16))
        blocks = [Block(StaticMBConv(16), True)]
        c = 16
        for width, stride, act, se in zip(WIDTHS, STRIDES, ACTS, SE):
            for g in range(4):
                s = stride if g == 0 else 1
                blocks.append(Block(DynamicMBConv(c, width, s, act, se), s == 1 and c == width))
                c = width
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer = Part(LsqConv(160, 960, 1), nn.BatchNorm2d(960))
        self.feature_mix_layer = nn.Module()
        self.feature_mix_layer.conv = LsqConv(960, 1280, 1)
        self.classifier = nn.Module()
        self.classifier.linear = nn.Linear(1280, num_classes)

    def set_bits(self, bits):
        for m in self.modules():
            if isinstance(m, LsqConv):
                m.bits = bits

    def forward(self, x, arch):
        """arch: the authors' dict {ks: 20, e: 20, d: 5, ...}."""
        x = h_swish(self.first_conv.bn(self.first_conv.conv(x)))
        x = self.blocks[0](x)
        for stage, depth in enumerate(arch["d"]):
            for g in range(depth):
                i = stage * 4 + g
                x = self.blocks[1 + i](x, arch["ks"][i], arch["e"][i])
        x = h_swish(self.final_expand_layer.bn(self.final_expand_layer.conv(x)))
        x = x.mean((2, 3), keepdim=True)
        x = h_swish(self.feature_mix_layer.conv(x))
        return self.classifier.linear(x.flatten(1))


def randomise(net, seed):
    """Random weights, BN affine parameters and non-identity kernel transforms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("_matrix"):
                p.copy_(torch.eye(p.shape[0]) + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".weight") and p.dim() == 4:
                fan_out = p.shape[0] * p.shape[2] * p.shape[3] // (p.shape[0] if p.shape[1] == 1 else 1)
                p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(2.0 / fan_out))
            elif name.endswith(".weight") and p.dim() == 1:  # BN scale
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".weight"):  # classifier
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)


def _static_bn_stats(bn, inputs):
    x = inputs[0]
    bn.running_mean.copy_(x.mean((0, 2, 3)))
    bn.running_var.copy_(x.var((0, 2, 3)))


def calibrate(net, x, arch, bits, seed):
    """Set every BN's statistics and every step (jittered) from one forward of `arch`; use
    the largest architecture so that every channel is covered."""
    torch.manual_seed(seed)
    net.set_bits(bits)
    flags = [m for m in net.modules() if isinstance(m, (LsqConv, DynamicBN))]
    for m in flags:
        m.calibrating = True
    # the static BNs run their own forward (the dynamic ones call F.batch_norm on their buffers)
    hooks = [m.register_forward_pre_hook(_static_bn_stats) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        net.eval()(x, arch)
    for m in flags:
        m.calibrating = False
    for h in hooks:
        h.remove()
