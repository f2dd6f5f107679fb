"""The elastic quantized supernet: one set of weights for every architecture of a space.

`set_arch(arch)` is the only way to choose the active subnet; the forward passes each
block its kernel and expand ratio explicitly. Every quantized conv owns one weight step
and one activation step, used by every subnet. `extract(arch)` returns the static
`Subnet` with the sliced (and kernel-transformed) weights and the shared steps.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .layers import ConvBNAct, MBConv, QConv2d, se_forward, se_mid
from .quant import FULL_PRECISION, LSQ, check_bits
from .space import Arch, SearchSpace, get_space
from .subnet import Subnet, head_forward, make_head, make_stem

FORMAT = "oqat-supernet"


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

    def forward(self, x, out_channels: int):
        return self.qconv(x, self.weight[:out_channels, :x.shape[1]], 1)


class ElasticDepthwise(QConv2d):
    """Depthwise quantized conv with OFA's elastic kernel: a smaller kernel is the centre
    of the next larger one passed through a learned (identity-initialised) k^2 x k^2 matrix."""

    def __init__(self, channels: int, kernel_sizes: tuple[int, ...], stride: int, bits: int):
        super().__init__(channels, channels, max(kernel_sizes), stride, groups=channels, bits=bits)
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

    def forward(self, x, k: int):
        c = x.shape[1]
        return self.qconv(x, self.active_weight(c, k), c)


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

    def __init__(self, c_in: int, c_out: int, kernel_sizes, expand_ratios, stride: int, act: str, se: bool,
                 bits: int, bn=(0.1, 1e-5)):
        super().__init__()
        self.c_in, self.c_out, self.stride, self.act_name, self.use_se = c_in, c_out, stride, act, se
        mid_max = round(c_in * max(expand_ratios))
        self.expand = None
        if max(expand_ratios) > 1:
            self.expand = ConvBNAct(ElasticPointwise(c_in, mid_max, 1, bits=bits),
                                    ElasticBatchNorm2d(mid_max, momentum=bn[0], eps=bn[1]), act)
        self.dw = ConvBNAct(ElasticDepthwise(mid_max, kernel_sizes, stride, bits),
                            ElasticBatchNorm2d(mid_max, momentum=bn[0], eps=bn[1]), act)
        self.se = ElasticSE(mid_max) if se else None
        self.project = ConvBNAct(ElasticPointwise(mid_max, c_out, 1, bits=bits),
                                 ElasticBatchNorm2d(c_out, momentum=bn[0], eps=bn[1]), None)
        self.residual = stride == 1 and c_in == c_out
        self.bn = bn

    def forward(self, x, k: int, e: int):
        h = x if self.expand is None else self.expand(x, SearchSpace.mid_channels(self.c_in, e))
        h = self.dw(h, k)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h, self.c_out)
        return x + h if self.residual else h

    def extract(self, k: int, e: int, bits: int) -> MBConv:
        mid = SearchSpace.mid_channels(self.c_in, e)
        block = MBConv(self.c_in, self.c_out, mid, k, self.stride, self.act_name, self.use_se, bits, self.bn)
        source = self.state_dict()
        with torch.no_grad():
            state = {}
            for key, target in block.state_dict().items():
                if key == "dw.conv.weight":
                    state[key] = self.dw.conv.active_weight(mid, k)
                else:  # every other tensor is the leading slice of the elastic one
                    state[key] = source[key][tuple(slice(0, n) for n in target.shape)]
            block.load_state_dict(state)
        return block


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
    def __init__(self, space: SearchSpace | str, bits: int = FULL_PRECISION):
        super().__init__()
        self.space = space = get_space(space)
        bn = (space.bn_momentum, space.bn_eps)
        self.stem = make_stem(space)
        fb = space.first_block
        self.first_block = ElasticMBConv(space.stem_width, fb.width, (3,), (1,), fb.stride, fb.act, fb.se, bits, bn)
        blocks = []
        for i in range(space.num_blocks):
            c_in, stride = space.block_input(i)
            st = space.stages[i // space.max_depth]
            blocks.append(ElasticMBConv(c_in, st.width, space.kernel_sizes, space.expand_ratios, stride,
                                        st.act, st.se, bits, bn))
        self.blocks = nn.ModuleList(blocks)
        self.final_expand, self.feature_mix, self.classifier = make_head(space, bits)
        self.dropout = nn.Dropout(space.dropout)
        init_weights(self)
        self.bits = FULL_PRECISION
        self.set_bits(bits)
        self.set_arch(space.largest())

    def set_arch(self, arch: Arch) -> None:
        if arch.space != self.space.name:
            raise ValueError(f"architecture is from space '{arch.space}', the supernet from '{self.space.name}'")
        self.arch = arch
        self._active = [(self.blocks[i], k, e) for _, i, k, e in arch.active_blocks()]

    def set_bits(self, bits: int) -> None:
        self.bits = check_bits(bits)
        for m in self.quantizers():
            m.bits = bits

    def quantizers(self) -> list[LSQ]:
        return [m for m in self.modules() if isinstance(m, LSQ)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_block(self.stem(x), 3, 1)
        for block, k, e in self._active:
            x = block(x, k, e)
        return head_forward(self, x)

    def extract(self, arch: Arch | None = None) -> Subnet:
        """The static subnet of `arch` (default: the active one), in the supernet's mode."""
        arch = arch or self.arch
        if arch.space != self.space.name:
            raise ValueError(f"architecture is from space '{arch.space}', the supernet from '{self.space.name}'")
        net = Subnet(self.space, arch, self.bits)
        with torch.no_grad():
            net.stem.load_state_dict(self.stem.state_dict())
            blocks = [self.first_block.extract(3, 1, self.bits)]
            blocks += [self.blocks[i].extract(k, e, self.bits) for _, i, k, e in arch.active_blocks()]
            for mine, theirs in zip(net.blocks, blocks):
                mine.load_state_dict(theirs.state_dict())
            for name in ("final_expand", "feature_mix", "classifier"):
                getattr(net, name).load_state_dict(getattr(self, name).state_dict())
        return net.train(self.training)

    def save(self, path: str, extra: dict | None = None) -> None:
        checkpoint.save(path, {"format": FORMAT, "space": self.space.to_dict(), "bits": self.bits,
                               "state_dict": self.state_dict(), **(extra or {})})
