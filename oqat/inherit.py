"""Bit inheritance: a trained b-bit supernet becomes the starting point at B < b bits.

Every weight, BN statistic and kernel matrix is copied; every weight and activation
step is multiplied by 2^(b-B), which keeps each quantizer's clipping range close to the
one it learned. The ablation re-initialises the steps per LSQ from data instead (the
next training stage does that, as it needs data): the file is marked for it.
"""
from . import config, files
from .quant import FULL_PRECISION, inherit_step, set_bits_
from .supernet import Supernet

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
    net, ckpt = files.load_supernet(src)
    source_bits = net.bits
    inherit(net, bits)
    extra = {k: v for k, v in ckpt.items() if k not in {"format", "space", "bits", "elastic", "state_dict", REINIT_KEY}}
    extra["data"] = config.to_dict(ckpt["data"])
    extra["inherited_from"] = {"file": src, "bits": source_bits}
    if reinit_steps:
        extra[REINIT_KEY] = True
    net.save(out, extra)
    return net
