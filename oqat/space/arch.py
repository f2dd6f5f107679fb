"""The architecture value `Arch` and its text forms.

An `Arch` is an immutable choice within a named space: `ks` and `e` (one per elastic block),
`d` (one per stage with a depth choice), `r` (resolution), and in a space with elastic bits
(`bit_widths`, mixed precision) `b`: the bit-width of the first block, of each elastic block and
of the head (weights and inputs of their quantized convs). The parsers return architectures
checked by their space. Compact form: `mbv3:r160:k3e4.k5e6-k7e3.k3e3.k5e4-...`, one `kKeE` per
active block, stages separated by `-`; with elastic bits `mini:r28:b4:k3e4b2.k5e3b3-...:b2`, the
first block's bits before the blocks, each block's after its expand ratio, the head's at the end.
An export folder's architecture is read by `oqat.files.architectures.read_arch`, which knows its layout.
"""
import dataclasses
import json
import os
import re
from dataclasses import dataclass

from ..core.io import read_json
from .builtin import get_space
from .structure import SearchSpace


@dataclass(frozen=True)
class Arch:
    """A choice of kernel and expand ratio per elastic block, depth per elastic stage and
    resolution, in the space named `space`. Construction only checks types: the space
    validates (`space.check(arch)`, which the parsers and samplers call)."""
    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    r: int
    space: str = "mbv3"
    b: tuple[int, ...] = ()  # with elastic bits: first block, each elastic block, head; else ()
    # The space object that checked it, set by `space.check` and not part of its value: lets
    # an arch of any space print itself, and spares a second check. `dataclasses.replace`
    # drops it (not an init field), so a changed arch is checked again.
    checked_in: "SearchSpace | None" = dataclasses.field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self):
        for name in ("ks", "e", "d", "b"):
            if isinstance(getattr(self, name), list):  # lists from JSON; tuples keep it hashable
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_str(self) -> str:
        layout = (self.checked_in or get_space(self.space)).layout
        b = self.b or None
        stages = [".".join(f"k{self.ks[i]}e{self.e[i]}" + (f"b{b[i + 1]}" if b else "")
                           for i in range(start, start + (m if di is None else self.d[di])))
                  for start, m, di in layout]
        if b:
            return f"{self.space}:r{self.r}:b{b[0]}:{'-'.join(stages)}:b{b[-1]}"
        return f"{self.space}:r{self.r}:{'-'.join(stages)}"

    __str__ = to_str

    @classmethod
    def from_str(cls, text: str, space: "SearchSpace | None" = None) -> "Arch":
        m = re.fullmatch(r"\s*([\w.-]+?):r(\d+):(?:b(\d+):)?([k\deb.\-]+?)(?::b(\d+))?\s*", text)
        if not m or (m.group(3) is None) != (m.group(5) is None):
            raise ValueError(f"architecture string {text!r} is not of the form "
                             "SPACE:rRES:kKeE.kKeE-kKeE... (stages separated by '-'), or with bits "
                             "SPACE:rRES:bB:kKeEbB.kKeEbB-...:bB")
        mixed = m.group(3) is not None
        sp = _space_for(m.group(1), space, [int(x) for x in re.findall(r"b(\d+)", text)] if mixed else ())
        stages = m.group(4).split("-")
        if len(stages) != len(sp.stages):
            raise ValueError(f"architecture string {text!r} has {len(stages)} stages; "
                             f"space '{sp.name}' has {len(sp.stages)}")
        ks, e, d, b = [], [], [], [int(m.group(3))] if mixed else []
        for stage, (_, most, di) in zip(stages, sp.layout):
            blocks = [re.fullmatch(r"k(\d+)e(\d+)b(\d+)" if mixed else r"k(\d+)e(\d+)", x) for x in stage.split(".")]
            if not all(blocks):
                form = "kKeEbB.kKeEbB..." if mixed else "kKeE.kKeE..."
                raise ValueError(f"architecture string {text!r}: stage {stage!r} is not {form}")
            if len(blocks) > most:
                raise ValueError(f"architecture string {text!r}: stage {stage!r} has more than {most} blocks")
            if di is None and len(blocks) != most:
                raise ValueError(f"architecture string {text!r}: stage {stage!r} must have {most} "
                                 f"blocks in space '{sp.name}'")
            pad = most - len(blocks)
            ks += [int(b.group(1)) for b in blocks] + [min(sp.kernel_sizes)] * pad
            e += [int(b.group(2)) for b in blocks] + [min(sp.expand_ratios)] * pad
            if mixed:
                b += [int(x.group(3)) for x in blocks] + [min(sp.bit_widths or (0,))] * pad
            if di is not None:
                d.append(len(blocks))
        if mixed:
            b.append(int(m.group(5)))
        return sp.check(cls(ks=ks, e=e, d=d, r=int(m.group(2)), space=sp.name, b=b))

    def to_dict(self) -> dict:
        out = {"space": self.space, "ks": list(self.ks), "e": list(self.e), "d": list(self.d), "r": self.r}
        return {**out, "b": list(self.b)} if self.b else out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict, space: "SearchSpace | None" = None) -> "Arch":
        """Also reads the authors' form {ks, e, d, r} (space: `space`, else mbv3; r may be a
        one-item list)."""
        unknown = set(d) - {"space", "ks", "e", "d", "r", "b", "bits"}  # bits: an export's network's (arch_bits)
        missing = {"ks", "e", "d", "r"} - set(d)
        if unknown or missing:
            problem = f"unknown: {', '.join(sorted(unknown))}" if unknown else f"missing: {', '.join(sorted(missing))}"
            raise ValueError(f"architecture JSON needs keys ks, e, d, r (and optionally space, b); {problem}")
        sp = _space_for(d.get("space", space.name if space else "mbv3"), space, d.get("b") or ())
        r = d["r"][0] if isinstance(d["r"], list) and len(d["r"]) == 1 else d["r"]
        return sp.check(cls(ks=d["ks"], e=d["e"], d=d["d"], r=r, space=sp.name, b=d.get("b", ())))

    @classmethod
    def from_json(cls, text: str, space: "SearchSpace | None" = None) -> "Arch":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"architecture JSON is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError("architecture JSON must be an object with keys ks, e, d, r")
        return cls.from_dict(data, space)

    @classmethod
    def parse(cls, text: str, space: "SearchSpace | None" = None) -> "Arch":
        """An architecture from a JSON file path, a JSON string or the compact string, checked
        against `space` (default: the built-in space it names)."""
        text = text.strip()
        if text.startswith("{"):
            return cls.from_json(text, space)
        if text.endswith(".json") or os.path.isfile(text):
            data = read_json(text, "architecture file")
            if not isinstance(data, dict):
                raise ValueError(f"architecture file '{text}' must hold a JSON object with keys ks, e, d, r")
            try:
                return cls.from_dict(data, space)
            except ValueError as err:
                raise ValueError(f"architecture file '{text}': {err}") from None
        return cls.from_str(text, space)


def as_arch(arch: "Arch | str | dict", space: SearchSpace | None = None) -> Arch:
    """An architecture given in any of its forms (an `Arch`, its compact string, a JSON string
    or file, its dict), checked by `space` (default: the built-in space it names): what every
    function taking an architecture accepts."""
    if isinstance(arch, Arch):
        return (space or get_space(arch.space)).check(arch)
    if isinstance(arch, str):
        return Arch.parse(arch, space)
    if isinstance(arch, dict):
        return Arch.from_dict(arch, space)
    raise TypeError(f"an architecture is an Arch, its compact string, a JSON string or file, or its dict; "
                    f"got {type(arch).__name__}")


def _space_for(name: str, space: SearchSpace | None, bits=()) -> SearchSpace:
    """`space` if given (the name must match), else the built-in space called `name`, with the
    widths `bits` uses where it has per-block bits (a mixed arch read without its supernet's space)."""
    if not isinstance(name, str):
        raise ValueError(f"arch field 'space' must be a space name, got {name!r:.40}")
    if space is None:
        sp = get_space(name)
        widths = sorted({b for b in bits if isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 8})
        return sp.with_bits(widths) if widths else sp
    if name != space.name:
        raise ValueError(f"architecture is from space '{name}', not '{space.name}'")
    return space
