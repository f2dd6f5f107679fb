"""A static subnet: the deployable network of one architecture at one bit-width.

Nothing elastic runs in its forward. It is rebuilt from its own file (space, arch, bits,
weights), without the supernet.
"""
import torch
from torch import nn

from . import checkpoint
from .layers import ConvBNAct, Cost, MBConv, QConv2d, batch_norm, bn_cost, conv_cost
from .quant import FULL_PRECISION, check_bits
from .space import Arch, SearchSpace, get_space

FORMAT = "oqat-subnet"


def make_stem(space: SearchSpace) -> ConvBNAct:
    bn = (space.bn_momentum, space.bn_eps)
    conv = nn.Conv2d(space.in_channels, space.stem_width, 3, space.stem_stride, 1, bias=False)
    return ConvBNAct(conv, batch_norm(space.stem_width, *bn), "h_swish")


def make_head(space: SearchSpace, bits: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """final expand (quantized conv, BN, h_swish), feature mix (quantized conv, h_swish), classifier."""
    c = space.stages[-1].width
    final_expand = ConvBNAct(QConv2d(c, space.final_expand, 1, bits=bits),
                             batch_norm(space.final_expand, space.bn_momentum, space.bn_eps), "h_swish")
    feature_mix = ConvBNAct(QConv2d(space.final_expand, space.feature_mix, 1, bits=bits), None, "h_swish")
    return final_expand, feature_mix, nn.Linear(space.feature_mix, space.num_classes)


def head_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.final_expand(x)
    x = net.feature_mix(x.mean((2, 3), keepdim=True))
    return net.classifier(net.dropout(x.flatten(1)))


def stem_cost(space: SearchSpace, r: int) -> tuple[Cost, int]:
    """Cost of the stem at resolution r, and its output size."""
    stem, h = conv_cost(space.in_channels, space.stem_width, 3, space.stem_stride, r)
    return stem + bn_cost(space.stem_width), h


def head_cost(space: SearchSpace, h: int) -> Cost:
    fe = conv_cost(space.stages[-1].width, space.final_expand, 1, 1, h, quantized=True)[0]
    fm = conv_cost(space.final_expand, space.feature_mix, 1, 1, 1, quantized=True)[0]
    cls = Cost(macs_fp=space.feature_mix * space.num_classes,
               params_fp=(space.feature_mix + 1) * space.num_classes)
    return fe + bn_cost(space.final_expand) + fm + cls


class Subnet(nn.Module):
    def __init__(self, space: SearchSpace | str, arch: Arch, bits: int = FULL_PRECISION):
        super().__init__()
        space = get_space(space)
        if not isinstance(arch, Arch):
            raise TypeError(f"arch must be an Arch (see Arch.parse), got {type(arch).__name__}")
        if arch.space != space.name:
            raise ValueError(f"architecture is from space '{arch.space}', the network from '{space.name}'")
        self.space, self.arch, self.bits = space, arch, check_bits(bits)
        bn = (space.bn_momentum, space.bn_eps)
        self.stem = make_stem(space)
        fb = space.first_block
        blocks = [MBConv(space.stem_width, fb.width, space.stem_width, 3, fb.stride, fb.act, fb.se, bits, bn)]
        for s, i, k, e in arch.active_blocks():
            c_in, stride = space.block_input(i)
            st = space.stages[s]
            blocks.append(MBConv(c_in, st.width, space.mid_channels(c_in, e), k, stride, st.act, st.se, bits, bn))
        self.blocks = nn.Sequential(*blocks)
        self.final_expand, self.feature_mix, self.classifier = make_head(space, bits)
        self.dropout = nn.Dropout(space.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return head_forward(self, self.blocks(self.stem(x)))

    def save(self, path: str, extra: dict | None = None) -> None:
        checkpoint.save(path, {"format": FORMAT, "space": self.space.to_dict(), "arch": self.arch.to_dict(),
                               "bits": self.bits, "state_dict": self.state_dict(), **(extra or {})})
