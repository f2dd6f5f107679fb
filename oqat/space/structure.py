"""The structure of a search space (pure data): a MobileNet-style supernet's stem, a fixed
first block, stages of MBConv blocks (kernel, expand ratio per block; depth per stage, elastic or
fixed), a head of 1x1 convs, and the input resolutions. Its block list (`space.blocks`) is what
the supernet, the subnet and the cost walk all build from. A space is also the one authority on
its architectures: `space.check(arch)` validates an `Arch` and normalises the kernel and expand
entries of blocks beyond a stage's depth (they do not change the network) to the smallest choice,
so equal networks compare (and hash) equal.
"""
import dataclasses
import functools
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from ..core import typed

if TYPE_CHECKING:
    from .arch import Arch


ArchField = Literal["ks", "e", "d", "r"]  # the fields of an `Arch` a training stage can hold fixed or vary


ARCH_FIELDS: tuple[str, ...] = get_args(ArchField)


# field -> its space's choices
FIELD_CHOICES = dict(zip(ARCH_FIELDS, ("kernel_sizes", "expand_ratios", "depths", "resolutions")))


def make_divisible(v: float, divisor: int = 8) -> int:
    """OFA's rounding of channel counts (never more than 10% below v)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


@dataclass(frozen=True)
class Stage:
    width: int  # output channels of every block in the stage
    stride: int  # stride of the stage's first block
    act: str  # "relu", "relu6" or "h_swish"
    se: bool  # squeeze-and-excite after the depthwise conv
    fixed_depth: int | None = None  # None: the depth is chosen (an entry of arch.d); else this many blocks


@dataclass(frozen=True)
class HeadConv:
    """A quantized 1x1 conv of the head. Its name is its module's (the authors' checkpoints
    call them final_expand and feature_mix); `pooled` convs run after global pooling."""
    name: str
    width: int
    bn: bool
    act: str
    pooled: bool


def mbv3_head(final_expand: int, feature_mix: int) -> tuple[HeadConv, ...]:
    """MobileNetV3's head: 1x1 expand + BN + h_swish, pool, 1x1 feature mix + h_swish (no BN)."""
    return (HeadConv("final_expand", final_expand, True, "h_swish", False),
            HeadConv("feature_mix", feature_mix, False, "h_swish", True))


@dataclass(frozen=True)
class Block:
    """One MBConv slot of the supernet; the supernet, the subnet and the cost walk all read
    the space's block list, so each block's shape is decided here only."""
    c_in: int
    c_out: int
    stride: int
    act: str
    se: bool
    kernel_sizes: tuple[int, ...]
    expand_ratios: tuple[int, ...]
    signed_input: bool = False  # its expand conv's input (the previous block's linear output) is quantized signed

    @property
    def mid_max(self) -> int:
        """Channels of the widest expand buffer (round(in * e_max), as the authors' supernet)."""
        return round(self.c_in * max(self.expand_ratios))


def mid_channels(c_in: int, e: int) -> int:
    return c_in if e == 1 else make_divisible(round(c_in * e), 8)


_RESERVED = {"stem", "first_block", "blocks", "classifier", "dropout"}


@dataclass(frozen=True)
class SearchSpace:
    name: str
    stem_width: int  # full-precision 3x3 stem conv output channels
    stem_stride: int
    first_block: Stage  # fixed MBConv: expand 1, kernel 3
    stages: tuple[Stage, ...]
    kernel_sizes: tuple[int, ...]
    expand_ratios: tuple[int, ...]
    depths: tuple[int, ...]  # depth choices of every stage without a fixed depth
    resolutions: tuple[int, ...]
    head: tuple[HeadConv, ...]  # quantized 1x1 convs after the last stage, in order
    stem_act: str = "h_swish"  # activation after the stem's BN
    in_channels: int = 3
    num_classes: int = 1000
    dropout: float = 0.1  # before the classifier, training only
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    # Quantize the linear inputs (a block's output, which can be negative) of every expand conv
    # and of the first head conv as signed. False is the authors' rule: unsigned, clipping them at 0.
    signed_inputs: bool = False
    # Elastic bits (mixed precision): the widths each block and the head choose from, an `Arch`
    # field `b` like the kernel; () for a network of one bit-width, which the network holds.
    bit_widths: tuple[int, ...] = ()

    def __post_init__(self):
        def stage(s):
            return s if isinstance(s, Stage) else Stage(**s)
        object.__setattr__(self, "stages", tuple(stage(s) for s in self.stages))
        object.__setattr__(self, "first_block", stage(self.first_block))
        object.__setattr__(self, "head", tuple(h if isinstance(h, HeadConv) else HeadConv(**h) for h in self.head))
        for name in ("kernel_sizes", "expand_ratios", "depths", "resolutions", "bit_widths"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        w = self.bit_widths
        if list(w) != sorted(set(w)) or not all(type(b) is int and 1 <= b <= 8 for b in w):
            raise ValueError(f"space {self.name}: bit_widths must be increasing widths in 1..8, got {list(w)}")
        for k in self.kernel_sizes:
            if k % 2 == 0:
                raise ValueError(f"space {self.name}: kernel sizes must be odd, got {k}")
        names = [h.name for h in self.head]
        if len(set(names)) != len(names) or _RESERVED & set(names) or not all(n.isidentifier() for n in names):
            raise ValueError(f"space {self.name}: head conv names must be distinct identifiers other than "
                             f"{', '.join(sorted(_RESERVED))}; got {', '.join(names)}")
        if [h.pooled for h in self.head] != sorted(h.pooled for h in self.head):
            raise ValueError(f"space {self.name}: pooled head convs must come after the unpooled ones")
        # Every active mid must fit in its block's widest buffer.
        for b in self.blocks:
            for e in b.expand_ratios:
                if mid_channels(b.c_in, e) > b.mid_max:
                    raise ValueError(f"space {self.name}: width {b.c_in} x {e} does not fit its buffer")

    # --- the block list -----------------------------------------------------------------
    @functools.cached_property
    def layout(self) -> tuple[tuple[int, int, int | None], ...]:
        """Per stage: (index of its first elastic block, its most blocks, its entry in arch.d or
        None for a fixed depth)."""
        out, i, nd = [], 0, 0
        for st in self.stages:
            m = max(self.depths) if st.fixed_depth is None else st.fixed_depth
            out.append((i, m, nd if st.fixed_depth is None else None))
            i, nd = i + m, nd + (st.fixed_depth is None)
        return tuple(out)

    @functools.cached_property
    def blocks(self) -> tuple[Block, ...]:
        """Every MBConv of the supernet: the fixed first block, then each stage's most blocks
        (the first takes the previous width and the stride, the others keep both)."""
        fb = self.first_block
        out = [Block(self.stem_width, fb.width, fb.stride, fb.act, fb.se, (3,), (1,))]
        for st, (_, m, _) in zip(self.stages, self.layout):
            for j in range(m):
                out.append(Block(out[-1].c_out, st.width, st.stride if j == 0 else 1, st.act, st.se,
                                 self.kernel_sizes, self.expand_ratios, self.signed_inputs))
        return tuple(out)

    @property
    def num_blocks(self) -> int:
        """Elastic blocks: entries of an architecture's ks and e."""
        return len(self.blocks) - 1

    @property
    def elastic_stages(self) -> list[int]:
        """Stages without a fixed depth: one entry each in an architecture's d."""
        return [s for s, (_, _, di) in enumerate(self.layout) if di is not None]

    def active_blocks(self, arch: "Arch") -> list[tuple[int, int, int]]:
        """(index into `blocks`, kernel, expand) of every block `arch` runs, first block included."""
        if arch.space != self.name:
            raise ValueError(f"architecture is from space '{arch.space}', not '{self.name}'")
        out = [(0, 3, 1)]
        for start, m, di in self.layout:
            out += [(start + j + 1, arch.ks[start + j], arch.e[start + j])
                    for j in range(m if di is None else arch.d[di])]
        return out

    def stage_bits(self, arch: "Arch") -> dict:
        """Where a mixed-precision arch put its bits: the first block's, each stage's active blocks', the head's."""
        arch = self.check(arch)
        stages = [[arch.b[start + j + 1] for j in range(m if di is None else arch.d[di])]
                  for start, m, di in self.layout]
        return {"first_block": arch.b[0], "stages": stages, "head": arch.b[-1]}

    mid_channels = staticmethod(mid_channels)

    def head_layers(self) -> list[HeadConv | None]:
        """The head in order: its convs, None where the global average pooling runs."""
        return [h for h in self.head if not h.pooled] + [None] + [h for h in self.head if h.pooled]

    # --- architectures ------------------------------------------------------------------
    def check(self, arch: "Arch | str | dict") -> "Arch":
        """`arch` validated against this space (one-line ValueError naming the field), with the
        kernel and expand entries of blocks beyond a stage's depth set to the smallest choice,
        so that equal networks compare equal. The one place an architecture is validated: an
        arch this space object returned is returned as it is, so each entry point checks once."""
        from .arch import Arch, as_arch  # at call time: arch.py reads the built-in spaces, values of this class
        if not isinstance(arch, Arch):
            return as_arch(arch, self)
        if arch.checked_in is self:
            return arch
        if arch.space != self.name:
            raise ValueError(f"architecture is from space '{arch.space}', not '{self.name}'")
        n, nd = self.num_blocks, len(self.elastic_stages)
        if self.bit_widths and not arch.b:
            raise ValueError(f"space '{self.name}' has elastic bits ({', '.join(map(str, self.bit_widths))}): "
                             "the architecture needs field 'b'")
        if arch.b and not self.bit_widths:
            raise ValueError(f"arch field 'b' (per-block bits) needs a space with elastic bits; "
                             f"'{self.name}' has one bit-width for the whole network")
        fields = [("ks", n, self.kernel_sizes), ("e", n, self.expand_ratios), ("d", nd, self.depths)]
        for name, length, allowed in fields + ([("b", n + 2, self.bit_widths)] if arch.b else []):
            value = getattr(arch, name)
            if not isinstance(value, tuple) or not all(isinstance(v, int) for v in value):
                raise ValueError(f"arch field '{name}' must be a list of {length} integers, got {value!r}")
            if len(value) != length:
                raise ValueError(f"arch field '{name}' needs {length} entries for space '{self.name}', "
                                 f"got {len(value)}")
            bad = [v for v in value if v not in allowed or isinstance(v, bool)]
            if bad:
                raise ValueError(f"arch field '{name}' has {bad[0]!r}, not in space '{self.name}' "
                                 f"(allowed: {', '.join(map(str, allowed))})")
        if isinstance(arch.r, bool) or arch.r not in self.resolutions:
            lo, hi = min(self.resolutions), max(self.resolutions)
            grid = (", ".join(map(str, self.resolutions)) if len(self.resolutions) <= 8
                    else f"{lo}..{hi} step {self.resolutions[1] - lo}")
            raise ValueError(f"arch field 'r' is {arch.r!r}, not a resolution of space '{self.name}' "
                             f"(allowed: {grid})")
        ks, e = [min(self.kernel_sizes)] * n, [min(self.expand_ratios)] * n
        b = [min(self.bit_widths)] * (n + 1) + list(arch.b[-1:]) if arch.b else []
        for i, k, x in self.active_blocks(arch):
            if i:
                ks[i - 1], e[i - 1] = k, x
            if b:
                b[i] = arch.b[i]
        checked = dataclasses.replace(arch, ks=tuple(ks), e=tuple(e), r=int(arch.r), b=tuple(b))
        object.__setattr__(checked, "checked_in", self)
        return checked

    def arch(self, ks, e, d, r, b=()) -> "Arch":
        from .arch import Arch
        return self.check(Arch(ks=ks, e=e, d=d, r=r, space=self.name, b=b))

    def with_bits(self, widths) -> "SearchSpace":
        """This space with elastic bits over `widths` (() for one bit-width)."""
        return dataclasses.replace(self, bit_widths=tuple(widths))

    def elastic_in(self, fields) -> "SearchSpace":
        """This space with each Arch field not in `fields` held at the largest's choice: the
        part a sandwich that varies only `fields` trains, and so the part worth searching."""
        return dataclasses.replace(self, **{attr: (max(getattr(self, attr)),)
                                            for name, attr in FIELD_CHOICES.items() if name not in fields})

    def with_data(self, in_channels: int, num_classes: int) -> "SearchSpace":
        return dataclasses.replace(self, in_channels=in_channels, num_classes=num_classes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSpace":
        """A space from its dict form (as files hold it), every field type-checked first: a
        wrong one is a one-line ValueError naming it (e.g. "field 'space.stem_width' expects int")."""
        if isinstance(d, dict) and "final_expand" in d:  # files written before the head was data
            d = dict(d)
            d["head"] = [dataclasses.asdict(h) for h in mbv3_head(d.pop("final_expand"), d.pop("feature_mix", None))]
        return typed.from_dict(cls, d, "space")

    def largest(self) -> "Arch":
        """Every choice at its largest, the most bits too."""
        return self._extreme(max)

    def smallest(self) -> "Arch":
        """Every choice at its smallest, the fewest bits too."""
        return self._extreme(min)

    def _extreme(self, pick) -> "Arch":
        n = self.num_blocks
        return self.arch([pick(self.kernel_sizes)] * n, [pick(self.expand_ratios)] * n,
                         [pick(self.depths)] * len(self.elastic_stages), pick(self.resolutions),
                         [pick(self.bit_widths)] * (n + 2) if self.bit_widths else ())

    def sample(self, rng: random.Random) -> "Arch":
        """A uniformly random architecture; `rng` is an explicit, seeded generator."""
        n = self.num_blocks
        return self.arch([rng.choice(self.kernel_sizes) for _ in range(n)],
                         [rng.choice(self.expand_ratios) for _ in range(n)],
                         [rng.choice(self.depths) for _ in self.elastic_stages],
                         rng.choice(self.resolutions),
                         [rng.choice(self.bit_widths) for _ in range(n + 2)] if self.bit_widths else ())

    def sample_distinct(self, rng: random.Random, n: int) -> list["Arch"]:
        """`n` distinct architectures of `sample`, in the order drawn; fewer if 100 * n draws
        do not find them (a small space may hold fewer than `n`)."""
        archs: dict["Arch", None] = {}
        for _ in range(100 * n):
            if len(archs) == n:
                break
            archs.setdefault(self.sample(rng), None)
        return list(archs)
