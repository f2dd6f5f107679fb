"""From an image file to an exported network's input, as the network's evaluation made it.

An export's facts.json carries `preprocess` (written by `export` from the data the network
was trained on, `data.Splits.preprocess`) and `classes`; `deploy.Runner` on an export folder
and `oqat predict` read them here, so a user classifies image files without knowing the
data's normalisation. The steps are those of evaluation: grey or RGB; for data of in-memory
images (Fashion-MNIST, CIFAR) a resize to their native size, for image folders a resize of
the shorter side then a centre crop; [0, 1] pixels normalised by mean and std; a bilinear
resize to the network's resolution where it differs.
"""
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..nets.calibrate import resize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class Preprocess:
    channels: int  # 1: grey, 3: RGB
    resize: int  # side the image is resized to (the shorter side where `crop` is set)
    crop: int | None  # centre crop after the resize, or None
    size: int  # the network's input side
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Preprocess":
        """A checked Preprocess from its JSON form (`where` names the file in errors)."""
        try:
            p = cls(int(d["channels"]), int(d["resize"]), None if d["crop"] is None else int(d["crop"]),
                    int(d["size"]), tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: preprocess must hold channels, resize, crop, size, mean and std "
                             f"({err})") from None
        if p.channels not in (1, 3) or len(p.mean) != p.channels or len(p.std) != p.channels or min(p.std) <= 0 \
                or min(p.resize, p.size, p.crop or 1) < 1:
            raise ValueError(f"{where}: preprocess {d} is not a valid image pipeline")
        return p

    def to_dict(self) -> dict:
        return {"channels": self.channels, "resize": self.resize, "crop": self.crop, "size": self.size,
                "mean": list(self.mean), "std": list(self.std)}

    def __call__(self, images: list) -> np.ndarray:
        """float32 N x C x size x size from image files (paths) or PIL images."""
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms import functional as tf

        batch = []
        for image in images:
            if not isinstance(image, Image.Image):
                try:
                    with Image.open(image) as f:
                        image = f.convert("L" if self.channels == 1 else "RGB")
                except (OSError, UnidentifiedImageError) as err:
                    raise ValueError(f"'{image}' is not an image file this can read ({err})") from None
            image = image.convert("L" if self.channels == 1 else "RGB")
            if self.crop is None:
                image = tf.resize(image, [self.resize, self.resize])
            else:
                image = tf.center_crop(tf.resize(image, self.resize), [self.crop, self.crop])
            batch.append(tf.normalize(tf.to_tensor(image), self.mean, self.std))
        return resize(torch.stack(batch), self.size).numpy()


def image_files(paths: list[str]) -> list[str]:
    """The image files among `paths`, a folder standing for the images in it (sorted)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                raise ValueError(f"folder '{p}' holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise ValueError(f"image '{p}' not found")
    return out
