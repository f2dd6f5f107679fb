"""Evaluating one subnet: accuracy, and the subnet of a supernet ready for it (BN
recalibrated by `calibrate.recalibrate_bn`, whose names are this module's too)."""
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..config.settings import SearchConfig
from ..data.batches import calib_batches
from ..data.config import DataConfig
from ..data.splits import Splits
from ..nets.calibrate import inputs, recalibrate_bn, resize  # noqa: F401  (re-exported)
from ..nets.subnet import Subnet
from ..nets.supernet import Supernet
from ..quant.lsq import FULL_PRECISION
from ..runtime import Model, RuntimeUnavailable, model_file
from ..space.arch import Arch


@torch.inference_mode()
def evaluate(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             resolution: int | None = None) -> dict:
    """{top1, top5 (percent), loss (mean cross-entropy), n} of `net` in eval mode, inputs
    resized to `resolution` (default `net.arch.r`). The module's mode is restored."""
    r = resolution or net.arch.r
    training = net.training
    net.eval()
    totals, n = None, 0
    try:
        forward = _runtime_forward(net, r) or net
        for x, y in batches:
            logits = forward(inputs(net, x, r)).float()
            y = y.to(logits.device)
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
            batch = torch.stack([hits[:, 0].sum().double(), hits.any(1).sum().double(),
                                 F.cross_entropy(logits, y, reduction="sum").double()])
            totals = batch if totals is None else totals + batch
            n += len(y)
    finally:
        net.train(training)
    if n == 0:
        raise ValueError("evaluate got no batches")
    correct1, correct5, loss = totals.tolist()  # one host sync for the whole pass
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss / n, "n": n}


def _runtime_forward(net: nn.Module, r: int):
    """The forward of a quantized Subnet on the CPU in oqat's runtime, or None where it cannot
    take it (another device or resolution, full precision, no C compiler). The runtime computes
    the exact forward's rule bit for bit (tests/test_runtime.py) at a fraction of its time: the
    exact forward runs each epilogue as separate torch passes."""
    if not isinstance(net, Subnet) or r != net.arch.r or net.bits == FULL_PRECISION or \
            next(net.parameters()).device.type != "cpu":
        return None
    try:
        model = Model(data=model_file.to_bytes(net), threads=torch.get_num_threads())
    except (RuntimeUnavailable, ValueError):
        return None
    return lambda x: torch.from_numpy(model(x.contiguous().numpy()))


def prepare_subnet(supernet: Supernet, arch: Arch | str | dict, data_cfg: DataConfig, splits: Splits,
                   calib_images: int = SearchConfig.calib_images, seed: int = SearchConfig.seed) -> Subnet:
    """The subnet of `arch` (any form `space.check` reads), its BN recalibrated on a fixed
    seeded subset of the training split (at most the whole split), in eval mode on the
    supernet's device."""
    arch = supernet.space.check(arch)
    n = min(calib_images, len(splits.train))
    return supernet.extract(arch, calib_batches(splits.train, data_cfg, n, seed, arch.r))
