"""Static layers of an extracted subnet, each with its cost formula next to its forward.

Costs follow the authors' accounting: MACs of every Conv2d and Linear (c_in * output
elements * k*k / groups; in * out), params = every trainable parameter (step sizes
included); quantized convs are tallied apart so BitOPs and model size can weight them.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.lsq import ACTIVATIONS_FOLDED, FULL_PRECISION, LSQ
from ..space.structure import make_divisible


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


def conv2d(x: torch.Tensor, w: torch.Tensor, stride: int, groups: int) -> torch.Tensor:
    """F.conv2d with 'same' padding; a depthwise kxk conv (k > 3) that is trained on CPU
    takes `_DepthwiseConv`, whose weight gradient is 2-4x faster."""
    k = w.shape[-1]
    if k > 3 and groups == x.shape[1] == w.shape[0] and x.device.type == "cpu" and w.requires_grad \
            and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu") and x.dtype == torch.float32:
        return _DepthwiseConv.apply(x, w, stride)
    return F.conv2d(x, w, None, stride, k // 2, 1, groups)


class _DepthwiseConv(torch.autograd.Function):
    """A depthwise conv whose weight gradient is computed as a forward conv. oneDNN (torch
    2.14) has a fast depthwise weight-gradient kernel for 3x3 only; a 5x5 or 7x7 one takes a
    generic path that cost a third of a CPU training step of the mini space. dW[c, i, j] =
    sum over n, h, w of x_pad[n, c, s*h + i, s*w + j] * g[n, c, h, w] is a depthwise forward
    conv of x with each (n, c) plane as its own channel and g as its kernel (dilated by the
    stride), summed over n: a kernel oneDNN runs fast."""

    @staticmethod
    def forward(ctx, x, w, stride):
        ctx.save_for_backward(x, w)
        ctx.stride = stride
        return F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, x.shape[1])

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        s, (n, c, h, wd), k = ctx.stride, x.shape, w.shape[-1]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(g, x, w, None, [s, s], [k // 2, k // 2], [1, 1], False,
                                                         [0, 0], c, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            planes = x.contiguous().view(1, n * c, h, wd)
            kernels = g.contiguous().view(n * c, 1, *g.shape[-2:])
            grad_w = F.conv2d(planes, kernels, None, 1, k // 2, s, n * c)[..., :k, :k]
            grad_w = grad_w.reshape(n, c, k, k).sum(0).unsqueeze(1)
        return grad_x, grad_w, None


class QConv2d(nn.Conv2d):
    """Conv2d (no bias, 'same' padding) whose weight and input each pass an LSQ quantizer.

    Subclassing Conv2d keeps the state-dict keys plain (`weight`, `wq.step`, `aq.step`).
    """

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
                 signed_input: bool = False):
        super().__init__(c_in, c_out, k, stride, k // 2, groups=groups, bias=False)
        self.wq = LSQ(signed=True)  # off until `quant.set_bits_` sets the network's bits
        self.aq = LSQ(signed=signed_input)

    def qconv(self, x: torch.Tensor, weight: torch.Tensor, groups: int, act: str | None = None) -> torch.Tensor:
        """The conv of the quantized act(x) (x if act is None; the input quantizer applies act)."""
        return conv2d(self.aq(x, act), self.wq(weight), self.stride[0], groups)

    def forward(self, x: torch.Tensor, act: str | None = None) -> torch.Tensor:
        return self.qconv(x, self.weight, self.groups, act)


class ConvBNAct(nn.Module):
    """conv -> optional BN -> optional activation; extra forward args go to the conv
    (the elastic convs take their active width or kernel that way)."""

    def __init__(self, conv: nn.Module, bn: nn.Module | None, act: str | None):
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.act = make_act(act)

    def forward(self, x: torch.Tensor, *conv_args, act_in: str | None = None, act: bool = True) -> torch.Tensor:
        """`act_in`: the activation x still needs, which the conv's quantizer applies; `act=False`:
        leave out the activation (the next conv's quantizer applies it)."""
        x = self.conv(x, *conv_args, act=act_in) if act_in else self.conv(x, *conv_args)
        if self.bn is not None:
            x = self.bn(x)
        return x if self.act is None or not act else self.act(x)


def pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling. Not x.mean: its gradient is NCHW, and a BN backward given an
    NCHW gradient for a channels-last input is 6x slower on CPU than with matching layouts."""
    return F.avg_pool2d(x, x.shape[-2:])


def se_forward(x, w_reduce, b_reduce, w_expand, b_expand):
    y = pool(x)
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


FOLDABLE = {ACTIVATIONS[name]: name for name in ACTIVATIONS_FOLDED}  # module type -> the name LSQ takes


def folded_act(block: nn.Module) -> str | None:
    """The activation a block leaves to the quantizers of the convs it feeds, or None. ReLU
    then an unsigned LSQ equals the LSQ alone (its clamp at 0 is the ReLU, forward and
    backward), and the CPU kernel computes h_swish in its own passes: either way the
    activation's two passes are saved, and no bit changes. The block input is a linear BN
    output plus the shortcut, and stays as it is: the expand conv quantizes it unsigned,
    clipping it at 0 (the authors' quirk), but nothing is folded there."""
    return FOLDABLE.get(type(block.dw.act)) if block.dw.conv.aq.bits != FULL_PRECISION else None


def mbconv_forward(block: nn.Module, x: torch.Tensor, expand_args=(), dw_args=(), project_args=()) -> torch.Tensor:
    """[1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project [+ x], for the static and the
    elastic block alike (the args select the elastic block's active width and kernel)."""
    fold = folded_act(block)
    h = x if block.expand is None else block.expand(x, *expand_args, act=fold is None)
    # An SE reads the activation's output itself, so the depthwise activation folds only without SE.
    h = block.dw(h, *dw_args, act_in=fold if block.expand is not None else None,
                 act=fold is None or block.se is not None)
    if block.se is not None:
        h = block.se(h)
    h = block.project(h, *project_args, act_in=fold if block.se is None else None)
    return x + h if block.residual else h


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project, all convs quantized."""

    def __init__(self, c_in: int, c_out: int, mid: int, k: int, stride: int, act: str, se: bool,
                 bn=(0.1, 1e-5), signed_input: bool = False):
        super().__init__()
        self.expand = None
        if mid != c_in:
            self.expand = ConvBNAct(QConv2d(c_in, mid, 1, signed_input=signed_input),
                                    batch_norm(mid, *bn), act)
        self.dw = ConvBNAct(QConv2d(mid, mid, k, stride, groups=mid), batch_norm(mid, *bn), act)
        self.se = SqueezeExcite(mid) if se else None
        self.project = ConvBNAct(QConv2d(mid, c_out, 1), batch_norm(c_out, *bn), None)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return mbconv_forward(self, x)

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
