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


def inputs(net: nn.Module, x: torch.Tensor, r: int) -> torch.Tensor:
    """A batch ready for `net`: on its device, at r x r pixels, and channels-last when the
    net is (2-3x faster depthwise convs on CPU)."""
    x = resize(x.to(_device(net)), r)
    conv = next((p for p in net.parameters() if p.dim() == 4), None)
    if conv is not None and conv.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.inference_mode()
def recalibrate_bn(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Set every BN's running mean/var to the batch-size-weighted average of the per-batch
    mean and biased variance of its input over `batches` (forwarded at `net.arch.r` with
    quantizers on, each BN normalising with its batch's statistics as in training). BNs that
    see fewer channels than they hold (the supernet's elastic BNs) update only the channels
    they see. An inference pass: the statistics come from the pass that normalises with
    them, nothing records autograd state, the modules' modes are untouched."""
    sums: dict[nn.Module, list] = {}  # bn -> [sum of n * mean, sum of n * var, n]

    def batch_stats_forward(bn: nn.BatchNorm2d):
        def forward(x: torch.Tensor) -> torch.Tensor:
            n, c = x.shape[0], x.shape[1]
            # Training-mode BN with momentum 1 leaves the batch's mean and unbiased variance
            # in its buffers: one fused kernel, 10-20x faster on CPU than torch.var_mean.
            mean, var = x.new_zeros(c), x.new_ones(c)
            out = F.batch_norm(x, mean, var, bn.weight[:c], bn.bias[:c], True, 1.0, bn.eps)
            m = x.numel() // c
            acc = sums.setdefault(bn, [0.0, 0.0, 0])
            acc[0], acc[1], acc[2] = acc[0] + n * mean, acc[1] + n * var * ((m - 1) / m), acc[2] + n
            return out
        return forward

    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    modes = {m: m.training for m in net.modules()}
    try:
        net.eval()  # dropout off; BN normalises as in training through its stand-in forward
        for bn in bns:
            bn.forward = batch_stats_forward(bn)
        for x, _ in batches:
            net(inputs(net, x, net.arch.r))
    finally:
        for bn in bns:
            del bn.forward
        for m, training in modes.items():
            m.training = training
    if not sums:
        raise ValueError("recalibrate_bn got no batches")
    for bn, (mean_sum, var_sum, n) in sums.items():
        c = mean_sum.shape[0]
        bn.running_mean[:c] = mean_sum / n
        bn.running_var[:c] = var_sum / n


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
        for x, y in batches:
            logits = net(inputs(net, x, r)).float()
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
