"""A precision as one value: the bits of a network (uniform b bits, full precision, or the
widths of a mixed-precision one), with every way oqat writes, reads and orders it.

    Precision.of(4)          name "4bit"    label "4-bit"          key 4
    Precision.of(32)         name "fp"      label "fp32"           key 32
    Precision.of([2, 3, 4])  name "mixed234" label "mixed 2/3/4-bit" key "mixed234"

`bits` is what networks, files and configs hold (an int, or a sorted tuple of widths), checked
as the quantizers check it (`quant.check_precision`). `name` names folders and graphs; `key` is
how a run's results (results.json) key a precision; `label` is for people; `order` sorts
precisions for reading (full precision, uniform widths down, then mixed). `Precision.of` reads
any of these forms, so a key read back from JSON ("4") or a folder name gives the same value.
"""
import re
from dataclasses import dataclass

from .lsq import FULL_PRECISION, Bits, check_precision


@dataclass(frozen=True)
class Precision:
    bits: Bits

    def __post_init__(self):
        object.__setattr__(self, "bits", check_precision(self.bits))

    @classmethod
    def of(cls, value) -> "Precision":
        """From a Precision, a network's or a config's bits (4, 32, (2, 3, 4), [2, 3, 4]), or
        text: a name, label or key ("4bit", "4-bit", "4", "fp", "fp32", "mixed234", "mixed 2/3/4-bit")."""
        if isinstance(value, Precision):
            return value
        return cls.parse(value) if isinstance(value, str) else cls(value)

    @classmethod
    def parse(cls, text: str) -> "Precision":
        t = text.strip().lower()
        if t in ("fp", "fp32"):
            return cls(FULL_PRECISION)
        if m := re.fullmatch(r"(\d+)(?:-?bits?)?", t):
            return cls(int(m[1]))
        if m := re.fullmatch(r"mixed ?(\d(?:/?\d)+)(?:-?bits?)?", t):
            return cls(tuple(int(c) for c in m[1].replace("/", "")))
        raise ValueError(f"not a precision: {text!r} (e.g. 4, 4bit, fp, mixed234)")

    @property
    def mixed(self) -> bool:
        return isinstance(self.bits, tuple)

    @property
    def full(self) -> bool:
        return self.bits == FULL_PRECISION

    @property
    def widths(self) -> tuple[int, ...]:
        """The widths a layer may have: one, unless mixed."""
        return self.bits if self.mixed else (self.bits,)

    @property
    def name(self) -> str:
        if self.mixed:
            return "mixed" + "".join(map(str, self.bits))
        return "fp" if self.full else f"{self.bits}bit"

    @property
    def label(self) -> str:
        if self.mixed:
            return f"mixed {'/'.join(map(str, self.bits))}-bit"
        return "fp32" if self.full else f"{self.bits}-bit"

    @property
    def key(self) -> int | str:
        """A run's results key: a uniform precision by its width, a mixed one by its name."""
        return self.name if self.mixed else self.bits

    @property
    def config(self) -> int | list[int]:
        """As a YAML config writes it: the width, or the list of widths."""
        return list(self.bits) if self.mixed else self.bits

    @property
    def order(self) -> tuple:
        return (1, self.bits) if self.mixed else (0, -self.bits)

    def __str__(self) -> str:
        return self.label

