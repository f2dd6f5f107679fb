"""Packed weights: each quantized weight stored in its b bits.

A quantized conv computes with w_hat = q * |s|, q = round(clamp(w / |s|, Qn, Qp)) (sign at
1 bit), so q and s are all a deployment needs of w. Each q is stored as q - Qn in a
little-endian bit stream of the fewest bits that hold Qp - Qn + 1 levels: b bits for b >= 2
(four codes per byte at 2 bits, two at 4, a stream across bytes at 3) and 2 bits at 1 bit,
whose sign has three levels. Everything else (steps, BN, stem, SE, classifier) stays fp32.

This module is the encoding; the file (`oqat.files.save_packed`, `load_packed`) is an oqat
checkpoint (torch zip, read with weights_only=True) holding uint8 and float tensors and plain
metadata. `load_packed` rebuilds a `Subnet` whose weights are q * |s|; these quantize back to
exactly q, so its outputs equal the original's bit for bit.
"""
import numpy as np
import torch

from ..core import io
from ..quant import requant
from ..quant.lsq import FULL_PRECISION, qrange
from .layers import QConv2d
from .subnet import Subnet


def code_width(bits: int) -> int:
    """Bits per stored weight code: enough for the Qp - Qn + 1 signed levels of `bits`."""
    qn, qp = qrange(bits, signed=True)
    return (qp - qn).bit_length()


def quantized_convs(net: Subnet) -> dict[str, QConv2d]:
    """Every conv whose weight is quantized, by module name."""
    return {name: m for name, m in net.named_modules() if isinstance(m, QConv2d) and m.wq.bits != FULL_PRECISION}


@torch.no_grad()
def weight_codes(conv: QConv2d) -> torch.Tensor:
    """The integers q of conv's quantized weight (int8), by LSQ's own arithmetic."""
    return requant.weight_codes(conv.weight, conv.wq.step, conv.wq.bits).to(torch.int8).contiguous()


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes of `bits`-bit weights as a little-endian bit stream in uint8."""
    qn, _ = qrange(bits, signed=True)
    width = code_width(bits)
    u = (codes.reshape(-1).numpy().astype(np.int16) - qn).astype(np.uint8)
    planes = (u[:, None] >> np.arange(width, dtype=np.uint8)) & 1
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack(data: torch.Tensor, shape: tuple[int, ...], bits: int) -> torch.Tensor:
    """Inverse of `pack`: int8 codes of the given shape."""
    qn, _ = qrange(bits, signed=True)
    width, n = code_width(bits), int(np.prod(shape))
    if data.dtype != torch.uint8 or data.numel() != (n * width + 7) // 8:
        raise io.CheckpointError(f"packed weight of shape {list(shape)} at {bits} bits needs "
                                         f"{(n * width + 7) // 8} uint8 bytes, got {data.numel()} {data.dtype}")
    planes = np.unpackbits(data.numpy(), count=n * width, bitorder="little").reshape(n, width)
    u = (planes.astype(np.int16) << np.arange(width, dtype=np.int16)).sum(1)
    return torch.from_numpy((u + qn).astype(np.int8)).reshape(shape)

