"""Evaluating one subnet: BN recalibration and accuracy.

A subnet's BN statistics are not those of the supernet (whose running stats mix every
subnet it trained), so, as the authors do, each subnet forwards a fixed seeded subset of
training images in train mode with its quantizers on, and its running mean and variance
become the batch-size-weighted average of the per-batch statistics.
"""
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import data
from .data import DataConfig, Splits
from .space import Arch
from .subnet import Subnet
from .supernet import Supernet


def resize(x: torch.Tensor, r: int) -> torch.Tensor:
    """A batch at r x r pixels (bilinear); unchanged when it already is."""
    if x.shape[-2:] == (r, r):
        return x
    return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters(), torch.empty(0)).device


def _inputs(net: nn.Module, x: torch.Tensor, r: int) -> torch.Tensor:
    x = resize(x.to(_device(net)), r)
    # Channels-last input for a channels-last net (2-3x faster depthwise convs on CPU).
    conv = next((p for p in net.parameters() if p.dim() == 4), None)
    if conv is not None and conv.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Set every BN's running mean/var to the batch-size-weighted average of the per-batch
    mean and biased variance of its input over `batches` (forwarded in train mode, quantizers
    on, at `net.arch.r`). BNs that see fewer channels than they hold (the supernet's elastic
    BNs) update only the channels they see. The modules' modes are restored."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    sums: dict[nn.Module, list] = {}  # bn -> [sum of n * mean, sum of n * var, n]

    def record(bn, inputs):
        x = inputs[0]
        mean = x.mean((0, 2, 3))
        var = x.var((0, 2, 3), unbiased=False)
        n = x.shape[0]
        acc = sums.setdefault(bn, [0.0, 0.0, 0])
        acc[0], acc[1], acc[2] = acc[0] + n * mean, acc[1] + n * var, acc[2] + n

    modes = {m: m.training for m in net.modules()}
    hooks = [bn.register_forward_pre_hook(record) for bn in bns]
    tracked = {bn: bn.num_batches_tracked.clone() for bn in bns if bn.num_batches_tracked is not None}
    try:
        net.train()
        for m in net.modules():
            if isinstance(m, nn.Dropout):
                m.eval()  # no effect on BN inputs; keeps the global RNG untouched
        for x, _ in batches:
            net(_inputs(net, x, net.arch.r))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    if not sums:
        raise ValueError("recalibrate_bn got no batches")
    for bn, (mean_sum, var_sum, n) in sums.items():
        c = mean_sum.shape[0]
        bn.running_mean[:c] = mean_sum / n
        bn.running_var[:c] = var_sum / n
    for bn, count in tracked.items():  # the train-mode forwards counted batches: undo that
        bn.num_batches_tracked.copy_(count)


@torch.no_grad()
def evaluate(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             resolution: int | None = None) -> dict:
    """{top1, top5 (percent), loss (mean cross-entropy), n} of `net` in eval mode, inputs
    resized to `resolution` (default `net.arch.r`). The module's mode is restored."""
    r = resolution or net.arch.r
    training = net.training
    net.eval()
    correct1 = correct5 = loss = n = 0
    try:
        for x, y in batches:
            logits = net(_inputs(net, x, r)).float()
            y = y.to(logits.device)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top == y[:, None]
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(1).sum().item()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            n += len(y)
    finally:
        net.train(training)
    if n == 0:
        raise ValueError("evaluate got no batches")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss / n, "n": n}


def calibrated_subnet(supernet: Supernet, arch: Arch, calib: list[tuple[torch.Tensor, torch.Tensor]]) -> Subnet:
    """The subnet of `arch` with BN recalibrated on `calib`, in eval mode on the supernet's device."""
    net = supernet.extract(arch).to(_device(supernet))
    if _device(supernet).type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    recalibrate_bn(net, calib)
    return net.eval()


def prepare_subnet(supernet: Supernet, arch: Arch, data_cfg: DataConfig, splits: Splits,
                   calib_images: int = 2000, seed: int = 0) -> Subnet:
    """The subnet of `arch`, its BN recalibrated on a fixed seeded subset of the training
    split (at most the whole split), in eval mode on the supernet's device."""
    n = min(calib_images, len(splits.train))
    return calibrated_subnet(supernet, arch, data.calib_batches(splits.train, data_cfg, n, seed, arch.r))
