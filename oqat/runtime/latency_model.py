"""A latency model of the deployed network: what each part of a subnet costs in oqat's runtime
on this machine, measured once, so that a search can price any architecture of the space in
milliseconds without running it.

A network's run is the sum of its ops (the runtime runs them one after another) plus a small
fixed cost per run. Each op belongs to one part: the stem; block i (its input quantizer, its
convs, SE and the epilogue that writes its output); the head (final expand, pool, feature mix,
classifier). A part's time depends on what the architecture chooses for it and on little else:
block i's on its kernel k, expand ratio e, the input resolution r and its bit-width b, and on
whether it ends its stage (then its last conv writes the next block's codes itself; inside a
stage it writes floats that the next block's residual adds and its input quantizer reads).
So the model is a table of parts, each measured in whole networks chosen to cover every entry
(for each width, measured resolution and (k, e): one network per stage-depth pattern), read
from the runtime's per-op timer. A resolution between two measured ones is interpolated
linearly in pixel count; a mixed-precision network adds each part at its own width.

The file (`save` / `load`, JSON) records the space, the device, the runtime and its kernel
path, the threads and batch size the times hold for, and the parts; `load` refuses a file
measured elsewhere, where its times would say nothing.
"""
import itertools
import os
import re
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from ..core.io import read_json, write_json
from ..core.machine import cpu_model, median_ms
from ..nets.supernet import Supernet
from ..space.arch import Arch
from ..space.structure import SearchSpace
from . import binding, model_file as runtime_file

FORMAT = "oqat-latency-model"
VERSION = 1
RUNTIME = "oqat"


class LatencyModelError(ValueError):
    pass


class Part(NamedTuple):
    """One part of a network's run: "stem", "head" or "block" i at kernel k, expand e and
    `bits`, ending its stage or not (the stem and head take only what they use)."""
    kind: str
    bits: int = 0
    i: int = 0
    k: int = 0
    e: int = 0
    ends: bool = False

    def key(self, r: int) -> str:
        """Its name in the model's table at resolution r, e.g. `block3:k5e4:r28:b2:end`."""
        if self.kind == "stem":
            return f"stem:r{r}"
        if self.kind == "head":
            return f"head:r{r}:b{self.bits}"
        return f"block{self.i}:k{self.k}e{self.e}:r{r}:b{self.bits}" + (":end" if self.ends else "")


def arch_parts(space: SearchSpace, arch: Arch, bits: int | None) -> list[Part]:
    """Each part `arch` runs: the stem, each active block and the head. `bits`: the network's
    width (not read for an arch with per-block widths)."""
    def width(i):
        return arch.b[i] if arch.b else bits

    active = space.active_blocks(arch)
    stage_of = {}  # block index -> its stage, to know which block ends a stage
    for s, (start, m, _) in enumerate(space.layout):
        stage_of.update({start + j + 1: s for j in range(m)})
    parts = [Part("stem")]
    for n, (i, k, e) in enumerate(active):
        ends = n + 1 == len(active) or stage_of.get(active[n + 1][0]) != stage_of.get(i)
        parts.append(Part("block", width(i), i, k, e, ends))
    return parts + [Part("head", width(-1))]


@dataclass
class LatencyModel:
    """Per-part median ms at the measured resolutions; `predict(arch)` prices any architecture."""
    space: SearchSpace
    bits: tuple[int, ...]  # the widths measured (a uniform supernet's one, or a mixed one's all)
    device: str
    isa: str  # the runtime's kernel path the times were measured on
    threads: int
    batch: int
    resolutions: tuple[int, ...]  # measured; others are interpolated between the nearest two
    parts: dict[str, float] = field(default_factory=dict)  # Part.key(r) -> median ms
    overhead_ms: float = 0.0  # a run's time outside its ops (one per run)

    def check_precision(self, bits, space: SearchSpace) -> None:
        """Refuse to price networks of another space, or of a width it did not measure."""
        if (space.name, space.blocks) != (self.space.name, self.space.blocks):
            raise LatencyModelError(f"the latency model is of space '{self.space.name}', not '{space.name}'")
        missing = sorted(set(bits if isinstance(bits, tuple) else (bits,)) - set(self.bits))
        if missing:
            raise LatencyModelError(f"the latency model measured {', '.join(map(str, self.bits))} bits, not "
                                    f"{', '.join(map(str, missing))}: build one with them (oqat latency-model)")

    def describe(self) -> str:
        return (f"{RUNTIME} runtime ({self.isa}) on {self.device}, {self.threads} thread(s), batch {self.batch}")

    def _part_ms(self, part: Part, r: int) -> float:
        lo = max((m for m in self.resolutions if m <= r), default=None)
        hi = min((m for m in self.resolutions if m >= r), default=None)
        if lo is None or hi is None:
            raise LatencyModelError(f"resolution {r} is outside the latency model's {self.resolutions[0]}-"
                                    f"{self.resolutions[-1]} px")
        try:
            a, b = self.parts[part.key(lo)], self.parts[part.key(hi)]
        except KeyError as err:
            raise LatencyModelError(f"the latency model has no time for {err.args[0]} (measured widths: "
                                    f"{', '.join(map(str, self.bits))})") from None
        if hi == lo:
            return a
        t = (r * r - lo * lo) / (hi * hi - lo * lo)  # a part's work grows with its pixels
        return a + t * (b - a)

    def breakdown(self, arch: Arch, bits: int | None = None) -> list[tuple[str, float]]:
        """(part's key, ms) of each part of `arch` (a checked Arch of the model's space, uniform or
        with per-block widths) and ("overhead", ms): the prediction is their sum."""
        if not arch.b and bits is None:
            if len(self.bits) != 1:
                raise LatencyModelError("the latency model holds several widths: give the bits or an arch with b")
            bits = self.bits[0]
        parts = [(part.key(arch.r), self._part_ms(part, arch.r)) for part in arch_parts(self.space, arch, bits)]
        return parts + [("overhead", self.overhead_ms)]

    def predict(self, arch: Arch, bits: int | None = None) -> float:
        """Predicted median ms of one run of `arch` (at `bits` unless it has per-block widths)."""
        return float(sum(ms for _, ms in self.breakdown(arch, bits)))

    # --- the file -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "runtime": RUNTIME, "space": self.space.to_dict(),
                "bits": list(self.bits), "device": self.device, "isa": self.isa, "threads": self.threads,
                "batch": self.batch, "resolutions": list(self.resolutions), "overhead_ms": self.overhead_ms,
                "parts": self.parts}

    def save(self, path: str) -> None:
        write_json(path, self.to_dict())


def from_dict(d, where: str) -> LatencyModel:
    """A latency model from its JSON form, checked field by field."""
    def bad(what):
        return LatencyModelError(f"latency model '{where}': {what}")

    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise bad(f"not a latency model (expected a JSON object with format '{FORMAT}', as "
                  "`oqat latency-model` writes)")
    if d.get("version") != VERSION:
        raise bad(f"version {d.get('version')!r}, this oqat reads version {VERSION}")
    if d.get("runtime") != RUNTIME:
        raise bad(f"measured in runtime {d.get('runtime')!r}; this oqat models its own ({RUNTIME!r})")
    for name, kind in [("device", str), ("isa", str), ("threads", int), ("batch", int), ("overhead_ms", (int, float)),
                       ("bits", list), ("resolutions", list), ("parts", dict), ("space", dict)]:
        if not isinstance(d.get(name), kind) or isinstance(d.get(name), bool):
            raise bad(f"field '{name}' is missing or not a {getattr(kind, '__name__', 'number')}")
    try:
        space = SearchSpace.from_dict(d["space"])
    except (TypeError, ValueError, KeyError) as err:
        raise bad(f"its space does not read: {err}") from None
    ints = d["bits"] + d["resolutions"]
    if not d["bits"] or not d["resolutions"] or not all(type(v) is int and v > 0 for v in ints):
        raise bad("bits and resolutions must be non-empty lists of positive integers")
    if d["resolutions"] != sorted(set(d["resolutions"])):
        raise bad("resolutions must increase")
    if not all(isinstance(k, str) and type(v) in (int, float) and v >= 0 for k, v in d["parts"].items()):
        raise bad("parts must map part names to non-negative milliseconds")
    if d["threads"] < 1 or d["batch"] < 1:
        raise bad("threads and batch must be at least 1")
    return LatencyModel(space, tuple(d["bits"]), d["device"], d["isa"], d["threads"], d["batch"],
                        tuple(d["resolutions"]), dict(d["parts"]), float(d["overhead_ms"]))


def load(path: str, space: SearchSpace | None = None, here: bool = True) -> LatencyModel:
    """The latency model at `path`; with `here`, refused unless it was measured on this CPU in
    the kernel path oqat's runtime takes here; with `space`, unless it models that space."""
    model = from_dict(read_json(path, "latency model"), path)
    if here:
        isa = binding.default_isa()
        if model.device != cpu_model() or model.isa != isa:
            raise LatencyModelError(f"latency model '{path}' was measured on {model.device} ({model.isa}); this is "
                                    f"{cpu_model()} ({isa}): build one here with `oqat latency-model`")
    if space is not None and (space.name, space.blocks) != (model.space.name, model.space.blocks):
        raise LatencyModelError(f"latency model '{path}' models space '{model.space.name}', not '{space.name}'")
    return model




# --- measuring ----------------------------------------------------------------------------------
def _depth_patterns(space: SearchSpace) -> list[tuple[int, ...]]:
    """Stage depths such that each stage takes every allowed depth once across the patterns:
    every block position then runs once ending its stage and once inside it (where it can)."""
    n, ds = len(space.elastic_stages), space.depths
    return [tuple(ds[(s + j) % len(ds)] for s in range(n)) for j in range(len(ds))]


def plan(space: SearchSpace, widths: tuple[int, ...], resolutions: tuple[int, ...]) -> list[tuple[int, Arch]]:
    """The (bits, arch) networks whose ops cover every part of the model: at each width,
    resolution and (k, e), one network per stage-depth pattern."""
    n = space.num_blocks
    return [(bits, space.check(space.arch([k] * n, [e] * n, list(d), r)))
            for bits, r, k, e in itertools.product(widths, resolutions, space.kernel_sizes, space.expand_ratios)
            for d in _depth_patterns(space)]


def default_resolutions(space: SearchSpace) -> tuple[int, ...]:
    """Every resolution of a space with few, else about every 16 px from the smallest to the largest."""
    rs = space.resolutions
    if len(rs) <= 4:
        return tuple(rs)
    picks = np.linspace(0, len(rs) - 1, num=max(4, round((rs[-1] - rs[0]) / 16) + 1))
    return tuple(sorted({rs[round(i)] for i in picks}))


def _op_part(name: str) -> tuple[str, int]:
    """The part an op of the runtime belongs to, by its module name (`blocks.3.dw`: the fourth
    active block)."""
    m = re.match(r"blocks\.(\d+)\.", name)
    return ("block", int(m.group(1))) if m else ("stem", 0) if name == "stem" else ("head", 0)


def measure_network(net: Supernet, arch: Arch, bits: int, threads: int, batch: int,
                    rounds: int) -> tuple[dict[str, float], float, float]:
    """({part key: ms}, overhead ms, whole-run ms) of one network measured in the runtime: the
    parts from the runtime's per-op timer, the whole run as `oqat latency` times it."""
    sub = net.extract(arch, keep_bn=True).eval()
    model = binding.Model(data=runtime_file.to_bytes(sub), threads=threads)
    x = np.random.default_rng(0).random((batch, *model.input_shape), dtype=np.float32)
    ms = model.op_ms(x, rounds)
    parts = arch_parts(net.space, arch, bits)  # the subnet's blocks.n is the n-th active block
    keys = {("stem", 0): parts[0].key(arch.r), ("head", 0): parts[-1].key(arch.r),
            **{("block", n): p.key(arch.r) for n, p in enumerate(parts[1:-1])}}
    per_part: dict[str, float] = {}
    for op, t in zip(model.ops, ms[:-1]):
        key = keys[_op_part(op["name"])]
        per_part[key] = per_part.get(key, 0.0) + float(t)
    whole = median_ms(lambda: model(x), rounds, 1)  # as a caller sees a run, call and output included
    return per_part, whole - float(ms[:-1].sum()), whole


def build(space: SearchSpace, widths: tuple[int, ...], threads: int = 1, batch: int = 1, rounds: int = 7,
          resolutions: tuple[int, ...] | None = None, partial: str | None = None, progress=None) -> LatencyModel:
    """Measure the latency model of `space` at each of `widths` on this machine (random weights:
    the runtime's time does not depend on their values). `partial`: a file where the
    measurements so far are kept, so a stopped build resumes where it was."""
    space = space.with_bits(())  # each width measured on its own; a mixed network adds them up
    resolutions = tuple(resolutions or default_resolutions(space))
    todo = plan(space, widths, resolutions)
    setting = [threads, batch, list(widths), list(resolutions)]
    done = read_json(partial, "latency model progress") if partial and os.path.exists(partial) else {}
    if not isinstance(done, dict) or done.get("setting") != setting or not isinstance(done.get("networks"), dict):
        done = {"setting": setting, "networks": {}}  # another setting's progress: start again
    nets = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # extracting networks, not timing them
    try:
        for n, (bits, arch) in enumerate(todo):
            name = f"{bits}:{arch.to_str()}"
            if name not in done["networks"]:
                if bits not in nets:
                    nets[bits] = Supernet(space, bits).eval()
                parts, overhead, _ = measure_network(nets[bits], arch, bits, threads, batch, rounds)
                done["networks"][name] = {"parts": parts, "overhead": overhead}
                if partial and (n % 10 == 9 or n == len(todo) - 1):
                    write_json(partial, done)
            if progress:
                progress(n + 1, len(todo))
    finally:
        torch.set_num_threads(previous)
    samples: dict[str, list[float]] = {}
    for rec in done["networks"].values():
        for key, ms in rec["parts"].items():
            samples.setdefault(key, []).append(ms)
    overhead = float(np.median([rec["overhead"] for rec in done["networks"].values()]))
    return LatencyModel(space, tuple(widths), cpu_model(), binding.default_isa(), threads, batch, resolutions,
                        {k: float(np.median(v)) for k, v in sorted(samples.items())}, max(overhead, 0.0))
