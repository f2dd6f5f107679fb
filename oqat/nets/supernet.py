"""The elastic quantized supernet: one set of weights for every architecture of a space.

Its modules follow the space's block list (`space.blocks`) and head. `set_arch(arch)`
(checked by the space) is the only way to choose the active subnet; the forward passes each
block its kernel and expand ratio explicitly. Every quantized conv owns one weight step
and one activation step, used by every subnet. `extract(arch)` returns the static
`Subnet` with the sliced (and kernel-transformed) weights and the shared steps.

With elastic bits (mixed precision, `Supernet(space, bits=(2, 3, 4))`) each quantizer holds
one step per width, shared by every architecture that runs it at that width, and the active
architecture's `b` sets each block's width.
"""
import warnings
from collections.abc import Iterable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.lsq import (
    FULL_PRECISION,
    LSQ,
    Bits,
    ElasticLSQ,
    bits_of,
    check_precision,
    elastic_bits_,
    init_step,
    set_bits_,
)
from ..space.arch import Arch
from ..space.builtin import get_space
from ..space.structure import ARCH_FIELDS, FIELD_CHOICES, Block, SearchSpace, mid_channels
from .calibrate import recalibrate_bn
from .layers import ConvBNAct, MBConv, QConv2d, mbconv_forward, se_forward, se_mid
from .subnet import Subnet, add_head, head_forward, make_stem, set_arch_bits_


class UncalibratedWarning(UserWarning):
    """A subnet handed out in eval mode with the supernet's BN statistics instead of its own."""


class UntrainedWarning(UserWarning):
    """A subnet calibrated for evaluation that runs choices its supernet never trained."""


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BN over the first C channels of its buffers, C taken from the input."""

    def forward(self, x):
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        if self.training:
            self.num_batches_tracked.add_(1)
        # Slices are views: training updates the running stats of the first C channels in place.
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, self.momentum, self.eps)


class ElasticPointwise(QConv2d):
    """1x1 quantized conv over the first in/out channels of its weight."""

    def forward(self, x, out_channels: int, act: str | None = None):
        return self.qconv(x, self.weight[:out_channels, :x.shape[1]], 1, act)


class ElasticDepthwise(QConv2d):
    """Depthwise quantized conv with OFA's elastic kernel: a smaller kernel is the centre
    of the next larger one passed through a learned (identity-initialised) k^2 x k^2 matrix."""

    def __init__(self, channels: int, kernel_sizes: tuple[int, ...], stride: int):
        super().__init__(channels, channels, max(kernel_sizes), stride, groups=channels)
        self.kernel_sizes = tuple(sorted(kernel_sizes))
        self.transforms = nn.ParameterDict({
            f"{big}to{small}": nn.Parameter(torch.eye(small * small))
            for small, big in zip(self.kernel_sizes, self.kernel_sizes[1:])})

    def active_weight(self, channels: int, k: int) -> torch.Tensor:
        w = self.weight[:channels]
        for small, big in reversed(list(zip(self.kernel_sizes, self.kernel_sizes[1:]))):
            if big <= k:
                break
            lo = (big - small) // 2
            centre = w[:, :, lo:lo + small, lo:lo + small].reshape(-1, small * small)
            w = F.linear(centre, self.transforms[f"{big}to{small}"]).reshape(channels, 1, small, small)
        return w

    def forward(self, x, k: int, act: str | None = None):
        c = x.shape[1]
        return self.qconv(x, self.active_weight(c, k), c, act)


class ElasticSE(nn.Module):
    """SE over the first C channels; its mid width follows C as in a static SE of C channels."""

    def __init__(self, c_max: int):
        super().__init__()
        self.reduce = nn.Conv2d(c_max, se_mid(c_max), 1)
        self.expand = nn.Conv2d(se_mid(c_max), c_max, 1)

    def forward(self, x):
        c = x.shape[1]
        m = se_mid(c)
        return se_forward(x, self.reduce.weight[:m, :c], self.reduce.bias[:m],
                          self.expand.weight[:c, :m], self.expand.bias[:c])


class ElasticMBConv(nn.Module):
    """MBConv with elastic kernel and expand ratio; module names mirror `MBConv` so that
    extraction is a key-by-key copy."""

    def __init__(self, block: Block, bn: tuple[float, float]):
        super().__init__()
        self.block, self.bn = block, bn
        c_in, c_out, mid_max = block.c_in, block.c_out, block.mid_max
        self.expand = None
        if max(block.expand_ratios) > 1:
            self.expand = ConvBNAct(ElasticPointwise(c_in, mid_max, 1, signed_input=block.signed_input),
                                    ElasticBatchNorm2d(mid_max, momentum=bn[0], eps=bn[1]), block.act)
        self.dw = ConvBNAct(ElasticDepthwise(mid_max, block.kernel_sizes, block.stride),
                            ElasticBatchNorm2d(mid_max, momentum=bn[0], eps=bn[1]), block.act)
        self.se = ElasticSE(mid_max) if block.se else None
        self.project = ConvBNAct(ElasticPointwise(mid_max, c_out, 1),
                                 ElasticBatchNorm2d(c_out, momentum=bn[0], eps=bn[1]), None)
        self.residual = block.stride == 1 and c_in == c_out

    def forward(self, x, k: int, e: int):
        return mbconv_forward(self, x, (mid_channels(self.block.c_in, e),), (k,), (self.block.c_out,))

    def extract(self, block: MBConv, k: int) -> None:
        """Load `block` (the static MBConv of this block at kernel k) with the active weights."""
        mid = block.dw.conv.out_channels
        load_static(block, self, {"dw.conv.weight": lambda: self.dw.conv.active_weight(mid, k)})


@torch.no_grad()
def load_static(target: nn.Module, source: nn.Module, computed: dict | None = None) -> None:
    """Load `target` (a static module) from `source` (its elastic counterpart, same names): each
    tensor the leading slice of the elastic one, the keys in `computed` from their function, and
    each step from an elastic quantizer the step of the width the target's quantizer runs at."""
    state, elastic = source.state_dict(), dict(source.named_modules())
    out = {}
    for key, t in target.state_dict().items():
        owner, _, attr = key.rpartition(".")
        if key in (computed or {}):
            out[key] = computed[key]()
        elif attr == "step" and isinstance(elastic.get(owner), ElasticLSQ):
            out[key] = elastic[owner].steps[str(target.get_submodule(owner).bits)]
        else:
            out[key] = state[key][tuple(slice(0, n) for n in t.shape)]
    target.load_state_dict(out)


def init_weights(net: nn.Module) -> None:
    """OFA's initialisation: He (fan-out) convs, unit BN, small uniform classifier."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / m.in_features ** 0.5
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


class Supernet(nn.Module):
    def __init__(self, space: SearchSpace | str, bits: Bits = FULL_PRECISION,
                 elastic: Iterable[str] = ARCH_FIELDS):
        """`bits`: one width for the whole network, or the widths its blocks choose from (elastic
        bits: the space gets them as `bit_widths`). `elastic`: the Arch fields its training
        varies (`set_elastic_`)."""
        super().__init__()
        space, bits = get_space(space), check_precision(bits)
        if isinstance(bits, tuple):
            space = space.with_bits(bits)
        elif space.bit_widths:
            raise ValueError(f"space '{space.name}' has elastic bits {space.bit_widths}; got bits={bits}")
        self.space = space
        bn = (space.bn_momentum, space.bn_eps)
        self.stem = make_stem(space)
        # The fixed first block keeps its own name: the authors' checkpoints keep it apart too.
        self.first_block, *blocks = [ElasticMBConv(b, bn) for b in space.blocks]
        self.blocks = nn.ModuleList(blocks)
        add_head(self, space)
        init_weights(self)
        if space.bit_widths:
            elastic_bits_(self, space.bit_widths)
        else:
            set_bits_(self, bits)  # the quantizers own the bit-width from here on
        self.set_elastic_(elastic)
        self.set_arch(space.largest())

    def _block(self, i: int) -> ElasticMBConv:
        """Block i of the space's block list."""
        return self.first_block if i == 0 else self.blocks[i - 1]

    def set_arch(self, arch: Arch) -> None:
        self.arch = self.space.check(arch)
        self._active = [(self._block(i), k, e) for i, k, e in self.space.active_blocks(self.arch)]
        if self.arch.b:
            set_arch_bits_(self, [block for block, _, _ in self._active], self.arch)

    def to_mixed_(self, widths) -> "Supernet":
        """This supernet with elastic bits over `widths`, in place: each quantizer gets one step
        per width, each the quantizer's own carried to that width as bit inheritance does."""
        self.space = self.space.with_bits(check_precision(widths))
        elastic_bits_(self, self.space.bit_widths)
        self.set_arch(self.space.largest())
        return self

    def set_elastic_(self, fields) -> "Supernet":
        """This supernet as one whose training varies the Arch `fields`, in place (a stage that
        starts from another stage's supernet trains what it varies itself). Its file keeps them:
        a search explores those, the others held at the largest's choice (`trained_space`)."""
        fields = tuple(fields)
        if not all(isinstance(f, str) and f in ARCH_FIELDS for f in fields) or len(set(fields)) != len(fields):
            raise ValueError(f"elastic must list distinct Arch fields ({', '.join(ARCH_FIELDS)}), got {list(fields)!r}")
        self._elastic = fields
        return self

    @property
    def elastic(self) -> tuple[str, ...]:
        """The Arch fields its training varied."""
        return self._elastic

    @property
    def trained_space(self) -> SearchSpace:
        return self.space.elastic_in(self.elastic)

    @property
    def bits(self) -> Bits:
        """The quantizers' bit-width (they own it; `quant.set_bits_` changes it), or with elastic
        bits the widths they choose from."""
        return self.space.bit_widths or bits_of(self)

    def quantizers(self) -> list[LSQ]:
        return [m for m in self.modules() if isinstance(m, LSQ)]

    @torch.no_grad()
    def init_steps_(self, x: torch.Tensor) -> None:
        """LSQ's data-driven init, in place: each weight step from its whole weight, each
        activation step from its input in one forward of the largest subnet on `x` (whose
        resolution is the caller's choice). The active architecture is kept."""
        arch = self.arch
        convs = [m for m in self.modules() if isinstance(m, QConv2d)]
        try:
            for bits in self.space.bit_widths or [None]:  # with elastic bits, each width's steps
                largest = self.space.largest()
                if bits is not None:
                    largest = replace(largest, b=(bits,) * len(largest.b))
                self.set_arch(largest)
                for conv in convs:
                    conv.wq.step.copy_(init_step(conv.weight, conv.wq.bits, conv.wq.signed))
                    conv.aq.init_pending = True
                self(x)
        finally:
            for conv in convs:  # every conv runs in the largest subnet; be safe all the same
                conv.aq.init_pending = False
            self.set_arch(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block, k, e in self._active:
            x = block(x, k, e)
        return head_forward(self, x)

    def extract(self, arch: Arch | str | dict | None = None, calib: Iterable | None = None,
                keep_bn: bool = False) -> Subnet:
        """The static subnet of `arch` (any form `space.check` reads; default: the active one),
        in the supernet's mode, dtype and device. In eval mode a subnet normalises with running
        BN statistics, and the supernet's mix every subnet it trained (the demo's 2-bit M: 72.9%
        test with them, 86.8% with its own): `calib`, batches of (images, labels) of training
        data (`oqat.data.calib_batches`), recalibrates them and returns the subnet in eval mode,
        ready to evaluate or deploy; `keep_bn=True` keeps the supernet's (training, latency,
        weight checks). An eval-mode supernet given neither warns that the subnet is uncalibrated;
        a subnet calibrated for evaluation warns where it runs choices the supernet never trained."""
        arch = self.arch if arch is None else self.space.check(arch)
        if calib is None and not keep_bn and not self.training:
            warnings.warn(f"{arch}: BN statistics not recalibrated (pass calib=batches of training images, "
                          "or keep_bn=True where they do not matter); its accuracy will be far below the "
                          "subnet's", UncalibratedWarning, stacklevel=2)
        if isinstance(calib, (int, float, str, torch.Tensor)):
            raise TypeError("calib must be batches of (images, labels) of training data, e.g. oqat.data."
                            f"calib_batches(splits.train, data_cfg, 1000, seed=0); got {type(calib).__name__}")
        if calib is not None:
            for choice in self.untrained(arch):
                warnings.warn(f"{arch} runs {choice}, which this supernet never trained: its accuracy says little "
                              "of the supernet", UntrainedWarning, stacklevel=2)
        net = Subnet(self.space, arch, self.bits).to(self.stem.conv.weight)
        for name in ["stem", "classifier"] + [h.name for h in self.space.head]:
            load_static(getattr(net, name), getattr(self, name))
        for block, (i, k, _) in zip(net.blocks, self.space.active_blocks(arch)):
            self._block(i).extract(block, k)
        if calib is None:
            return net.train(self.training)
        if net.stem.conv.weight.device.type == "cpu":
            net = net.to(memory_format=torch.channels_last)  # 2-3x faster depthwise convs on CPU
        recalibrate_bn(net, calib)
        return net.eval()

    def untrained(self, arch: Arch | str | dict) -> list[str]:
        """The choices of `arch` that this supernet's training never ran (its `elastic` fields
        vary, the others stay the largest's), e.g. ["r 20 (trained: 28)"]; only blocks that run count."""
        arch, t = self.space.check(arch), self.trained_space
        used = {"ks": {k for _, k, _ in self.space.active_blocks(arch)[1:]},
                "e": {e for *_, e in self.space.active_blocks(arch)[1:]}, "d": set(arch.d), "r": {arch.r}}
        out = []
        for field, attr in FIELD_CHOICES.items():
            bad = sorted(used[field] - set(getattr(t, attr)))
            if bad:
                out.append(f"{field} {', '.join(map(str, bad))} (trained: {', '.join(map(str, getattr(t, attr)))})")
        return out
