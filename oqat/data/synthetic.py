"""The synthetic set: seeded random images with learnable labels, for tests and demos without data.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .arrays import PAD, ArrayDataset
from .config import DataConfig


def load_synthetic(cfg: DataConfig) -> tuple[ArrayDataset, ArrayDataset]:
    g = torch.Generator().manual_seed(cfg.seed)
    k, c, s = cfg.synthetic_classes, cfg.synthetic_channels, cfg.synthetic_size
    # Smooth, left-right symmetric class patterns: they survive crop and flip augmentation.
    coarse = torch.rand(k, c, 4, 4, generator=g)
    protos = F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    protos = (protos + protos.flip(-1)) / 2
    out = []
    for n in (cfg.synthetic_train, cfg.synthetic_test):
        labels = torch.randint(0, k, (n,), generator=g)
        x = protos[labels] * 0.6 + 0.2 + 0.15 * torch.randn(n, c, s, s, generator=g)
        out.append(((x.clamp(0, 1) * 255).round().to(torch.uint8), labels))
    train = out[0][0].float() / 255
    mean = tuple(train.mean(dim=(0, 2, 3)).tolist())
    std = tuple(train.std(dim=(0, 2, 3)).tolist())
    return tuple(ArrayDataset(x, y, mean, std, PAD["synthetic"]) for x, y in out)
