"""A model's preprocessing split in two: the picture work per image, the arithmetic per batch.

open_clip's evaluation transform resizes and crops a PIL image (Pillow, which releases the GIL),
then turns it into a float tensor and normalises it (torch). Run whole in the decoding threads, the
torch half starts an OpenMP team *per decoding thread*: two decoders and the encoder then ran six
threads on two cores, and a pool thread took 4.7 ms an image where the main thread takes 4.0
(measured on Emotion6, ViT-B/32). So the decoders run only the picture half and hand back uint8
pixels (a quarter of the float bytes); the batch is converted and normalised at once, in the thread
that encodes it, with the encoder's own threads.

The batch half applies the same elementwise float32 operations in the same order as
``to_tensor`` + ``Normalize`` (divide by 255, subtract the mean, divide by the standard deviation),
each correctly rounded, so the pixels are the same bit for bit as the per-image transform's and a
feature never depends on which path made it (``tests/test_preprocess.py`` checks it on real and
synthetic images). A transform of another shape is not split: it runs whole, per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision import transforms


@dataclass(frozen=True)
class SplitPreprocess:
    """``batch([pixels(img) for img in images])`` equals ``torch.stack([transform(img) for img in images])``."""

    picture: Callable[[Image.Image], Image.Image]  # resize, crop, colour mode: PIL in, PIL out
    mean: torch.Tensor  # 1 × C × 1 × 1, float32
    std: torch.Tensor

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The picture half: ``image`` resized and cropped, as H × W × 3 uint8 (safe in any thread)."""
        picture = self.picture(image)
        if picture.mode != "RGB":  # the transform ends in convert("RGB"); anything else is not ours to guess
            raise ValueError(f"the preprocessing produced a {picture.mode} picture, not RGB")
        return np.asarray(picture, dtype=np.uint8)

    def batch(self, pixels: Sequence[np.ndarray]) -> torch.Tensor:
        """The arithmetic half for a whole batch: B × 3 × H × W float32, contiguous like ``torch.stack``."""
        stacked = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
        return stacked.to(torch.float32).div_(255).sub_(self.mean).div_(self.std)


def split_preprocess(transform: Callable) -> SplitPreprocess | None:
    """The two halves of ``transform``, or None when it is not PIL transforms then ToTensor then
    Normalize (then it must run whole, per image)."""
    steps = list(getattr(transform, "transforms", []))
    if (len(steps) < 2 or not isinstance(steps[-2], transforms.ToTensor)
            or not isinstance(steps[-1], transforms.Normalize)):
        return None
    normalize = steps[-1]
    mean = torch.as_tensor(normalize.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(normalize.std, dtype=torch.float32).view(1, -1, 1, 1)
    if mean.shape[1] != 3 or std.shape[1] != 3 or bool((std == 0).any()):
        return None
    return SplitPreprocess(picture=transforms.Compose(steps[:-2]), mean=mean, std=std)


__all__ = ["SplitPreprocess", "split_preprocess"]
