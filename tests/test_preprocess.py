"""The split preprocessing (picture half per image, arithmetic per batch) gives the very pixels of
open_clip's per-image transform: same elementwise float32 operations in the same order, so this is
asserted bit for bit (a feature must not depend on which path made it). A control shows the
comparison can fail."""

from __future__ import annotations

import pytest
import torch
from torchvision import transforms

from emoclip.encoder.backbone import make_preprocess
from emoclip.encoder.decode import load_rgb
from emoclip.encoder.preprocess import split_preprocess
from tests.conftest import EMOTION6, noise_image

CONFIGS = [
    {"size": (224, 224), "mode": "RGB", "mean": (0.48145466, 0.4578275, 0.40821073),
     "std": (0.26862954, 0.26130258, 0.27577711), "interpolation": "bicubic", "resize_mode": "shortest",
     "fill_color": 0},
    {"size": (64, 64), "mode": "RGB", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear",
     "resize_mode": "squash", "fill_color": 0},
]


def images():
    made = [noise_image(97, 61, seed=1), noise_image(40, 300, seed=2), noise_image(64, 64, seed=3).convert("L"),
            noise_image(120, 90, seed=4).convert("RGBA"), noise_image(33, 33, seed=5).convert("P")]
    folder = EMOTION6 / "images"
    real = sorted(folder.rglob("*.jpg"))[:12] if folder.is_dir() else []
    return made + [load_rgb(p) for p in real]


@pytest.mark.parametrize("config", CONFIGS, ids=["openai", "squash"])
def test_split_preprocess_gives_the_transforms_pixels_bit_for_bit(config):
    transform = make_preprocess(config)
    split = split_preprocess(transform)
    assert split is not None
    pictures = images()
    expected = torch.stack([transform(img) for img in pictures])
    actual = split.batch([split.pixels(img) for img in pictures])
    assert actual.dtype == torch.float32 and actual.is_contiguous() and actual.shape == expected.shape
    assert torch.equal(actual, expected)
    # control: the comparison notices a change of one rounding step in one pixel
    changed = actual.clone()
    changed[0, 0, 0, 0] = torch.nextafter(changed[0, 0, 0, 0], torch.tensor(2.0))
    assert not torch.equal(changed, expected)


def test_a_transform_of_another_shape_is_not_split():
    assert split_preprocess(transforms.Compose([transforms.ToTensor()])) is None
    assert split_preprocess(transforms.Compose([transforms.Resize(8), transforms.ToTensor(),
                                                transforms.Normalize((0.5,) * 3, (0.5,) * 3),
                                                transforms.Lambda(lambda t: t)])) is None
    assert split_preprocess(lambda img: img) is None
