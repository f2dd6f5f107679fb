"""Bit inheritance: a trained b-bit supernet becomes the starting point at B < b bits.

Every weight, BN statistic and kernel matrix is copied; every weight and activation
step is multiplied by 2^(b-B), which keeps each quantizer's clipping range close to the
one it learned. The ablation re-initialises the steps per LSQ from data instead (the
next training stage does that, as it needs data): the file is marked for it.

A mixed-precision supernet inherits from the whole chain: the weights of its last supernet,
and each width's steps from the supernet that trained at that width (or, for a width the
chain never trained, the last supernet's own steps carried to it as above).
"""
from ..core import typed
from ..files import checkpoints
from ..nets.supernet import Supernet
from ..quant.lsq import FULL_PRECISION, ElasticLSQ, check_precision, inherit_step, set_bits_
from ..quant.precision import Precision

REINIT_KEY = "reinit_steps"  # set in a supernet file whose steps the next stage must init from data


def inherit(net: Supernet, bits: int) -> Supernet:
    """Lower `net` (in place) to `bits`, scaling its steps; returns it."""
    if net.bits == FULL_PRECISION:
        raise ValueError("bit inheritance starts from a quantized supernet; a full-precision one has no "
                         "steps to inherit (train it at the target bits with step init instead)")
    if not bits < net.bits:
        raise ValueError(f"--bits must be lower than the source's {net.bits} bits, got {bits}")
    for q in net.quantizers():
        q.step.data.copy_(inherit_step(q.step.data, net.bits, bits))
    set_bits_(net, bits)
    return net


def inherit_file(src: str, bits: int, out: str, reinit_steps: bool = False) -> Supernet:
    """`oqat inherit`: read a supernet file, write it at `bits`."""
    net, ckpt = checkpoints.load_supernet(src)
    source_bits = net.bits
    inherit(net, bits)
    extra = {k: v for k, v in ckpt.items() if k not in {"format", "space", "bits", "elastic", "state_dict", REINIT_KEY}}
    extra["data"] = typed.to_dict(ckpt["data"])
    extra["inherited_from"] = {"file": src, "bits": source_bits}
    if reinit_steps:
        extra[REINIT_KEY] = True
    checkpoints.save_supernet(net, out, extra)
    return net


def mixed_file(src: str, widths, chain: dict[int, str], out: str) -> Supernet:
    """Write the mixed-precision supernet over `widths` that starts from the supernet file `src`
    (weights, BN, its steps carried to every width) with each width's steps taken from
    chain[width], the supernet file that trained at that width, where there is one."""
    net, ckpt = checkpoints.load_supernet(src)
    if (start := Precision.of(net.bits)).full or start.mixed:
        raise ValueError(f"'{src}' is a {start} supernet; a mixed supernet starts from a quantized one")
    source_bits, widths = net.bits, check_precision(widths)
    net.to_mixed_(widths)
    steps = {}
    for b in widths:
        if b in chain:
            other = checkpoints.load_supernet(chain[b])[0]
            if other.bits != b or other.space.with_bits(widths) != net.space:
                raise ValueError(f"'{chain[b]}' is not a {b}-bit supernet of the space of '{src}'")
            steps[b] = chain[b]
            for name, q in net.named_modules():
                if isinstance(q, ElasticLSQ):
                    q.steps[str(b)].data.copy_(other.get_submodule(name).step.data)
    extra = {k: v for k, v in ckpt.items() if k not in {"format", "space", "bits", "elastic", "state_dict", REINIT_KEY}}
    extra["data"] = typed.to_dict(ckpt["data"])
    extra["inherited_from"] = {"file": src, "bits": source_bits, "steps": steps}
    checkpoints.save_supernet(net, out, extra)
    return net
