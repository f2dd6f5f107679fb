"""Cost of an architecture, computed analytically (no network is built).

Names: a `Cost` (`layers.py`) holds MACs and parameters, quantized and full-precision apart;
each `*_cost` gives one (`arch_cost`: an architecture's; `part_costs`: its parts'). `cost_metrics`
turns a Cost at given bits into the cost metrics (METRICS); `arch_metrics` gives an architecture's.

The walk reads the space's block list, as `Subnet` does, and adds the formulas that sit next to each
layer (`layers.py`, `subnet.py`). Block costs are memoised, so costing 10,000
architectures takes well under a second.
"""
from functools import lru_cache

from ..quant.lsq import FULL_PRECISION, check_bits
from ..space.arch import Arch, as_arch
from ..space.builtin import get_space
from ..space.structure import SearchSpace, mid_channels
from .layers import Cost, MBConv
from .subnet import head_cost, stem_cost

METRICS = ("macs", "params", "bitops", "flops_q", "size_bits")


@lru_cache(maxsize=None)
def _block_costs(space: SearchSpace):
    """The space's memoised block cost, keyed by plain ints: hashing a space (a nested
    dataclass) once per architecture rather than once per block halves the cost of costing."""
    @lru_cache(maxsize=None)
    def block_cost(i: int, k: int, e: int, h: int) -> tuple[Cost, int]:
        b = space.blocks[i]
        return MBConv.cost(b.c_in, b.c_out, mid_channels(b.c_in, e), k, b.stride, b.se, h)
    return block_cost


@lru_cache(maxsize=None)
def _stem_cost(space: SearchSpace, r: int) -> tuple[Cost, int]:
    return stem_cost(space, r)


@lru_cache(maxsize=None)
def _head_cost(space: SearchSpace, h: int) -> Cost:
    return head_cost(space, h)


def _arch_space(arch, space) -> tuple[Arch, SearchSpace]:
    if not isinstance(arch, Arch):  # an Arch is taken as checked: this is the hot path of search
        arch = as_arch(arch, space and get_space(space))
    return arch, get_space(space or arch.space)


def arch_cost(arch: Arch | str | dict, space: SearchSpace | str | None = None) -> Cost:
    """MACs and parameters of `arch` (any form `space.as_arch` reads), split into quantized and
    full-precision parts. `space`: the arch's space (default: the built-in one it names)."""
    arch, space = _arch_space(arch, space)
    total, h = _stem_cost(space, arch.r)
    mq, mf, pq, pf = total.macs_q, total.macs_fp, total.params_q, total.params_fp
    block_cost = _block_costs(space)
    for i, k, e in space.active_blocks(arch):  # plain ints: this loop is the hot path of search
        block, h = block_cost(i, k, e, h)
        mq, mf, pq, pf = mq + block.macs_q, mf + block.macs_fp, pq + block.params_q, pf + block.params_fp
    return Cost(mq, mf, pq, pf) + _head_cost(space, h)


def part_costs(arch: Arch | str | dict, space: SearchSpace | str | None = None) -> list[tuple[Cost, int]]:
    """(cost, bits) of each part of a mixed-precision `arch` that has its own bit-width: the stem
    (full precision), each active block at its entry of arch.b, the head at the last."""
    arch, space = _arch_space(arch, space)
    stem, h = _stem_cost(space, arch.r)
    out, block_cost = [(stem, FULL_PRECISION)], _block_costs(space)
    for i, k, e in space.active_blocks(arch):
        block, h = block_cost(i, k, e, h)
        out.append((block, arch.b[i]))
    return out + [(_head_cost(space, h), arch.b[-1])]


def cost_metrics(c: Cost, bits: int | tuple[int, int]) -> dict[str, float]:
    """The authors' accounting: BitOPs = quantized MACs * b_w * b_a, FLOPs_q = BitOPs / 64 +
    full-precision MACs, size = quantized weights * b_w + other parameters * 32."""
    bw, ba = (bits, bits) if isinstance(bits, int) else bits
    check_bits(bw), check_bits(ba)
    bitops = c.macs_q * bw * ba
    return {"macs": c.macs_q + c.macs_fp, "params": c.params_q + c.params_fp, "bitops": bitops,
            "flops_q": bitops / 64 + c.macs_fp, "size_bits": c.params_q * bw + c.params_fp * FULL_PRECISION}


def arch_metrics(arch: Arch | str | dict, space: SearchSpace | str | None = None,
                 bits: int | tuple[int, int] = 4) -> dict[str, float]:
    """{macs, params, bitops, flops_q, size_bits} of `arch` at `bits` (weights, activations);
    an arch with per-block bits (`arch.b`) counts each part at its own, and `bits` is not read."""
    arch, space = _arch_space(arch, space)
    if not arch.b:
        return cost_metrics(arch_cost(arch, space), bits)
    total = dict.fromkeys(METRICS, 0)
    for part, b in part_costs(arch, space):  # each metric is a sum over layers at their own bits
        for name, value in cost_metrics(part, b).items():
            total[name] += value
    return total
