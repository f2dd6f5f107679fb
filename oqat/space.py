"""Search spaces (pure data) and the architecture value `Arch`.

A space describes a MobileNetV3-style supernet: a fixed stem and first block, elastic
stages of MBConv blocks (kernel, expand ratio per block; depth per stage), a head, and
the input resolutions. Adding a space means adding a `SearchSpace` value, not code.

An `Arch` is an immutable choice within a named space: `ks` and `e` (one per elastic
block), `d` (one per stage), `r` (resolution). Kernel and expand entries of blocks beyond
a stage's depth do not change the network, so they are normalised to the space's
smallest choice: equal networks compare (and hash) equal.
Compact form: `mbv3:r160:k3e4.k5e6-k7e3.k3e3.k5e4-...`, one `kKeE` per active block,
stages separated by `-`.
"""
import dataclasses
import json
import os
import random
import re
from dataclasses import dataclass

from .checkpoint import read_json


def make_divisible(v: float, divisor: int = 8) -> int:
    """OFA's rounding of channel counts (never more than 10% below v)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


@dataclass(frozen=True)
class Stage:
    width: int  # output channels of every block in the stage
    stride: int  # stride of the stage's first block
    act: str  # "relu" or "h_swish"
    se: bool  # squeeze-and-excite after the depthwise conv


@dataclass(frozen=True)
class SearchSpace:
    name: str
    stem_width: int  # full-precision 3x3 stem conv output channels
    stem_stride: int
    first_block: Stage  # fixed MBConv: expand 1, kernel 3
    stages: tuple[Stage, ...]
    kernel_sizes: tuple[int, ...]
    expand_ratios: tuple[int, ...]
    depths: tuple[int, ...]
    resolutions: tuple[int, ...]
    final_expand: int  # 1x1 conv + BN + h_swish after the last stage
    feature_mix: int  # 1x1 conv + h_swish after global pooling (no BN)
    in_channels: int = 3
    num_classes: int = 1000
    dropout: float = 0.1  # before the classifier, training only
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5

    def __post_init__(self):
        for name in ("stages", "kernel_sizes", "expand_ratios", "depths", "resolutions"):
            value = getattr(self, name)
            if name == "stages":
                value = tuple(s if isinstance(s, Stage) else Stage(**s) for s in value)
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.first_block, dict):
            object.__setattr__(self, "first_block", Stage(**self.first_block))
        for k in self.kernel_sizes:
            if k % 2 == 0:
                raise ValueError(f"space {self.name}: kernel sizes must be odd, got {k}")
        # The widest expand buffer is round(in * e_max); every active mid must fit in it.
        for c_in, stage in zip(self.stage_inputs(), self.stages):
            for c in {c_in, stage.width}:
                for e in self.expand_ratios:
                    if self.mid_channels(c, e) > round(c * max(self.expand_ratios)):
                        raise ValueError(f"space {self.name}: width {c} x {e} does not fit its buffer")

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    @property
    def num_blocks(self) -> int:
        return len(self.stages) * self.max_depth

    @staticmethod
    def mid_channels(c_in: int, e: int) -> int:
        return c_in if e == 1 else make_divisible(round(c_in * e), 8)

    def stage_inputs(self) -> list[int]:
        widths = [self.first_block.width] + [s.width for s in self.stages]
        return widths[:-1]

    def block_input(self, i: int) -> tuple[int, int]:
        """(input channels, stride) of elastic block i: a stage's first block takes the
        previous width and the stride, the others keep the width and stride 1."""
        s, j = divmod(i, self.max_depth)
        if j == 0:
            return self.stage_inputs()[s], self.stages[s].stride
        return self.stages[s].width, 1

    def with_data(self, in_channels: int, num_classes: int) -> "SearchSpace":
        return dataclasses.replace(self, in_channels=in_channels, num_classes=num_classes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSpace":
        return cls(**d)

    def largest(self) -> "Arch":
        n = self.num_blocks
        return self._arch([max(self.kernel_sizes)] * n, [max(self.expand_ratios)] * n,
                          [self.max_depth] * len(self.stages), max(self.resolutions))

    def smallest(self) -> "Arch":
        n = self.num_blocks
        return self._arch([min(self.kernel_sizes)] * n, [min(self.expand_ratios)] * n,
                          [min(self.depths)] * len(self.stages), min(self.resolutions))

    def sample(self, rng: random.Random) -> "Arch":
        """A uniformly random architecture; `rng` is an explicit, seeded generator."""
        n = self.num_blocks
        return self._arch([rng.choice(self.kernel_sizes) for _ in range(n)],
                          [rng.choice(self.expand_ratios) for _ in range(n)],
                          [rng.choice(self.depths) for _ in self.stages],
                          rng.choice(self.resolutions))

    def _arch(self, ks, e, d, r) -> "Arch":
        return Arch(ks=ks, e=e, d=d, r=r, space=self.name)


def _grid(lo: int, hi: int, step: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, step))


MBV3 = SearchSpace(
    name="mbv3",
    stem_width=16, stem_stride=2,
    first_block=Stage(16, 1, "relu", False),
    stages=(Stage(24, 2, "relu", False), Stage(40, 2, "relu", True), Stage(80, 2, "h_swish", False),
            Stage(112, 1, "h_swish", True), Stage(160, 2, "h_swish", True)),
    kernel_sizes=(3, 5, 7), expand_ratios=(3, 4, 6), depths=(2, 3, 4),
    resolutions=_grid(128, 224, 4),
    final_expand=960, feature_mix=1280,
)

# Sized for 28-32 px images on 2 CPU cores: stride-2 stem and two stride-2 stages
# (28 -> 14 -> 7 -> 4), expand ratios 2-4 and depths 1-3; the same block types, SE
# placement and head shape as mbv3. Largest subnet about 7 M MACs at 28 px, smallest 1.3 M.
MINI = SearchSpace(
    name="mini",
    stem_width=16, stem_stride=2,
    first_block=Stage(16, 1, "relu", False),
    stages=(Stage(24, 2, "relu", False), Stage(32, 1, "relu", True), Stage(48, 2, "h_swish", False),
            Stage(64, 1, "h_swish", True)),
    kernel_sizes=(3, 5, 7), expand_ratios=(2, 3, 4), depths=(1, 2, 3),
    resolutions=(24, 28, 32),
    final_expand=256, feature_mix=512,
    in_channels=1, num_classes=10,
)

SPACES: dict[str, SearchSpace] = {s.name: s for s in (MBV3, MINI)}


def get_space(space: "str | SearchSpace") -> SearchSpace:
    """A space, given as itself or by name."""
    if isinstance(space, SearchSpace):
        return space
    if not isinstance(space, str):
        raise TypeError(f"a search space is a SearchSpace or its name ({', '.join(SPACES)}), "
                        f"got {type(space).__name__}")
    if space not in SPACES:
        raise ValueError(f"unknown search space '{space}' (known: {', '.join(SPACES)})")
    return SPACES[space]


def register_space(space: SearchSpace) -> None:
    """Make a space (e.g. one read from a checkpoint) known to `Arch` validation."""
    known = SPACES.get(space.name)
    if known is not None and known.with_data(space.in_channels, space.num_classes) != space:
        raise ValueError(f"a different search space named '{space.name}' is already registered")
    SPACES.setdefault(space.name, space)


@dataclass(frozen=True)
class Arch:
    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    r: int
    space: str = "mbv3"

    def __post_init__(self):
        sp = get_space(self.space)
        n, nstages = sp.num_blocks, len(sp.stages)
        fields = {"ks": (self.ks, n, sp.kernel_sizes), "e": (self.e, n, sp.expand_ratios),
                  "d": (self.d, nstages, sp.depths)}
        for name, (value, length, allowed) in fields.items():
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise ValueError(f"arch field '{name}' must be a list of {length} integers, got {value!r}")
            value = tuple(value)
            if len(value) != length:
                raise ValueError(f"arch field '{name}' needs {length} entries for space '{sp.name}', "
                                 f"got {len(value)}")
            bad = [v for v in value if v not in allowed or isinstance(v, bool)]
            if bad:
                raise ValueError(f"arch field '{name}' has {bad[0]!r}, not in space '{sp.name}' "
                                 f"(allowed: {', '.join(map(str, allowed))})")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if isinstance(self.r, bool) or self.r not in sp.resolutions:
            lo, hi = min(sp.resolutions), max(sp.resolutions)
            raise ValueError(f"arch field 'r' is {self.r!r}, not a resolution of space '{sp.name}' "
                             f"(allowed: {', '.join(map(str, sp.resolutions)) if len(sp.resolutions) <= 8 else f'{lo}..{hi} step {sp.resolutions[1] - lo}'})")
        object.__setattr__(self, "r", int(self.r))
        ks, e = list(self.ks), list(self.e)
        for i in range(n):
            if i % sp.max_depth >= self.d[i // sp.max_depth]:
                ks[i], e[i] = min(sp.kernel_sizes), min(sp.expand_ratios)
        object.__setattr__(self, "ks", tuple(ks))
        object.__setattr__(self, "e", tuple(e))

    def active_blocks(self) -> list[tuple[int, int, int, int]]:
        """(stage, block index within all elastic blocks, kernel, expand) of each running block."""
        m = get_space(self.space).max_depth
        return [(s, s * m + j, self.ks[s * m + j], self.e[s * m + j])
                for s, depth in enumerate(self.d) for j in range(depth)]

    def to_str(self) -> str:
        m = get_space(self.space).max_depth
        stages = [".".join(f"k{self.ks[s * m + j]}e{self.e[s * m + j]}" for j in range(depth))
                  for s, depth in enumerate(self.d)]
        return f"{self.space}:r{self.r}:{'-'.join(stages)}"

    __str__ = to_str

    @classmethod
    def from_str(cls, text: str) -> "Arch":
        m = re.fullmatch(r"\s*([\w.-]+?):r(\d+):([k\de.\-]+)\s*", text)
        if not m:
            raise ValueError(f"architecture string {text!r} is not of the form "
                             "SPACE:rRES:kKeE.kKeE-kKeE... (stages separated by '-')")
        sp = get_space(m.group(1))
        stages = m.group(3).split("-")
        if len(stages) != len(sp.stages):
            raise ValueError(f"architecture string {text!r} has {len(stages)} stages; "
                             f"space '{sp.name}' has {len(sp.stages)}")
        ks, e, d = [], [], []
        for stage in stages:
            blocks = [re.fullmatch(r"k(\d+)e(\d+)", b) for b in stage.split(".")]
            if not all(blocks):
                raise ValueError(f"architecture string {text!r}: stage {stage!r} is not kKeE.kKeE...")
            if len(blocks) > sp.max_depth:
                raise ValueError(f"architecture string {text!r}: stage {stage!r} has more than "
                                 f"{sp.max_depth} blocks")
            pad = sp.max_depth - len(blocks)
            ks += [int(b.group(1)) for b in blocks] + [min(sp.kernel_sizes)] * pad
            e += [int(b.group(2)) for b in blocks] + [min(sp.expand_ratios)] * pad
            d.append(len(blocks))
        return cls(ks=ks, e=e, d=d, r=int(m.group(2)), space=sp.name)

    def to_dict(self) -> dict:
        return {"space": self.space, "ks": list(self.ks), "e": list(self.e), "d": list(self.d), "r": self.r}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "Arch":
        """Also reads the authors' form {ks, e, d, r} (space mbv3; r may be a one-item list)."""
        unknown = set(d) - {"space", "ks", "e", "d", "r"}
        missing = {"ks", "e", "d", "r"} - set(d)
        if unknown or missing:
            raise ValueError(f"architecture JSON needs keys ks, e, d, r (and optionally space); "
                             f"{'unknown: ' + ', '.join(sorted(unknown)) if unknown else 'missing: ' + ', '.join(sorted(missing))}")
        r = d["r"][0] if isinstance(d["r"], list) and len(d["r"]) == 1 else d["r"]
        return cls(ks=d["ks"], e=d["e"], d=d["d"], r=r, space=d.get("space", "mbv3"))

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"architecture JSON is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError("architecture JSON must be an object with keys ks, e, d, r")
        return cls.from_dict(data)

    @classmethod
    def parse(cls, text: str) -> "Arch":
        """An architecture from a JSON file path, a JSON string or the compact string."""
        text = text.strip()
        if text.startswith("{"):
            return cls.from_json(text)
        if text.endswith(".json") or os.path.isfile(text):
            data = read_json(text, "architecture file")
            if not isinstance(data, dict):
                raise ValueError(f"architecture file '{text}' must hold a JSON object with keys ks, e, d, r")
            try:
                return cls.from_dict(data)
            except ValueError as err:
                raise ValueError(f"architecture file '{text}': {err}") from None
        return cls.from_str(text)
