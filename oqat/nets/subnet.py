"""A static subnet: the deployable network of one architecture at one bit-width, or at the
bit-width each of its blocks chose (a mixed-precision architecture, `arch.b`).

Nothing elastic runs in its forward. It is rebuilt from its own file (space, arch, bits,
weights), without the supernet.
"""
import torch
from torch import nn

from ..quant.lsq import FULL_PRECISION, Bits, bits_of, set_bits_
from ..space.arch import Arch
from ..space.builtin import get_space
from ..space.structure import Block, SearchSpace, mid_channels
from . import exact
from .layers import ConvBNAct, Cost, MBConv, QConv2d, batch_norm, bn_cost, conv_cost, pool


def make_stem(space: SearchSpace) -> ConvBNAct:
    bn = (space.bn_momentum, space.bn_eps)
    conv = nn.Conv2d(space.in_channels, space.stem_width, 3, space.stem_stride, 1, bias=False)
    return ConvBNAct(conv, batch_norm(space.stem_width, *bn), space.stem_act)


def add_head(net: nn.Module, space: SearchSpace) -> None:
    """The space's head convs (quantized 1x1, optional BN, activation) as modules of `net`
    under their names, then dropout and the full-precision classifier."""
    c = space.stages[-1].width
    for i, h in enumerate(space.head):
        bn = batch_norm(h.width, space.bn_momentum, space.bn_eps) if h.bn else None
        # The first head conv reads the last block's linear output.
        signed = i == 0 and space.signed_inputs
        net.add_module(h.name, ConvBNAct(QConv2d(c, h.width, 1, signed_input=signed), bn, h.act))
        c = h.width
    net.dropout = nn.Dropout(space.dropout)
    net.classifier = nn.Linear(c, space.num_classes)


def head_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for h in net.space.head_layers():
        x = pool(x) if h is None else getattr(net, h.name)(x)
    return net.classifier(net.dropout(x.flatten(1)))


def stem_cost(space: SearchSpace, r: int) -> tuple[Cost, int]:
    """Cost of the stem at resolution r, and its output size."""
    stem, h = conv_cost(space.in_channels, space.stem_width, 3, space.stem_stride, r)
    return stem + bn_cost(space.stem_width), h


def head_cost(space: SearchSpace, h: int) -> Cost:
    total, c = Cost(), space.stages[-1].width
    for conv in space.head_layers():
        if conv is None:  # global pooling
            h = 1
            continue
        total = total + conv_cost(c, conv.width, 1, 1, h, quantized=True)[0]
        total = total + (bn_cost(conv.width) if conv.bn else Cost())
        c = conv.width
    return total + Cost(macs_fp=c * space.num_classes, params_fp=(c + 1) * space.num_classes)


def set_arch_bits_(net: nn.Module, blocks: list[nn.Module], arch: Arch) -> None:
    """The quantizers of each active block (`blocks`, in the order of `space.active_blocks`) at
    its entry of arch.b, the head's at the last entry: where a mixed-precision arch puts its bits."""
    for block, (i, _, _) in zip(blocks, net.space.active_blocks(arch)):
        set_bits_(block, arch.b[i])
    for h in net.space.head:
        set_bits_(getattr(net, h.name), arch.b[-1])


def make_block(block: Block, k: int, e: int, space: SearchSpace) -> MBConv:
    return MBConv(block.c_in, block.c_out, mid_channels(block.c_in, e), k, block.stride, block.act, block.se,
                  (space.bn_momentum, space.bn_eps), block.signed_input)


class Subnet(nn.Module):
    def __init__(self, space: SearchSpace | str, arch: Arch, bits: Bits = FULL_PRECISION):
        """`arch`: any form `space.check` reads; in a space with elastic bits each block takes
        its bits from the arch, and `bits` must be the space's widths."""
        super().__init__()
        space = get_space(space)
        self.space, self.arch = space, space.check(arch)
        self.stem = make_stem(space)
        self.blocks = nn.Sequential(*[make_block(space.blocks[i], k, e, space)
                                      for i, k, e in space.active_blocks(self.arch)])
        add_head(self, space)
        if space.bit_widths:
            if bits != space.bit_widths:
                raise ValueError(f"a subnet of a space with elastic bits {space.bit_widths} takes its bits from "
                                 f"its architecture; got bits={bits}")
            set_arch_bits_(self, list(self.blocks), self.arch)
        else:
            set_bits_(self, bits)

    @property
    def bits(self) -> Bits:
        """The quantizers' bit-width (they own it; `quant.set_bits_` changes it), or the widths
        its blocks chose from (`arch.b` says which block has which)."""
        return self.space.bit_widths or bits_of(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training: the fake-quantized float forward. Eval mode, quantized: the exact forward of
        `exact.py`, whose codes and logits are the same on every thread count, CPU and runtime."""
        if not self.training and bits_of(self) != FULL_PRECISION:
            return exact.forward(self, x)
        return head_forward(self, self.blocks(self.stem(x)))
