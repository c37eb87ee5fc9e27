"""Draft (reduced-DCT) decoding: only JPEGs at least twice the model input, and only when the spec says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from emoclip.encoder.decode import load_rgb
from emoclip.encoder.pipeline import iter_encoded

MODEL_INPUT = 224


def smooth_image(width: int, height: int) -> Image.Image:
    """Photo-like smooth content (a JPEG of noise would not survive any resize unchanged)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / width * 6.0) * np.cos(y / height * 4.0)
    g = 128 + 90 * np.cos((x + y) / (width + height) * 9.0)
    b = 128 + 80 * np.sin(y / height * 7.0)
    return Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize(("size", "fmt", "expected"), [
    ((1000, 700), "JPEG", (500, 350)),   # >= 2x the input: 1/2 scale (1/4 would go below 224)
    ((3000, 2000), "JPEG", (375, 250)),  # a large photo: 1/8 scale
    ((440, 440), "JPEG", (440, 440)),    # under twice the input: exact
    ((1000, 700), "PNG", (1000, 700)),   # not a JPEG: exact
])
def test_draft_applies_only_to_large_jpegs(tmp_path, size, fmt, expected):
    path = tmp_path / f"image.{fmt.lower()}"
    smooth_image(*size).save(path, format=fmt)
    assert load_rgb(path, draft=MODEL_INPUT).size == expected
    assert load_rgb(path).size == size  # without draft: every pixel


def test_draft_keeps_exif_orientation(tmp_path):
    img = smooth_image(1200, 600)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees to view
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(tmp_path / "rotated.jpg", draft=MODEL_INPUT).size == (300, 600)  # 1/2 scale, upright


def test_the_pipeline_decodes_as_its_spec_says(tiny, tmp_path):
    small, large = tmp_path / "small.jpg", tmp_path / "large.jpg"
    smooth_image(60, 40).save(small, quality=95)    # under twice tiny's 32-pixel input
    smooth_image(800, 600).save(large, quality=95)  # draft-decoded at 1/8 (100x75)
    full = next(iter_encoded(tiny, [small, large])).features
    draft = next(iter_encoded(tiny.with_decode("draft"), [small, large])).features
    assert torch.equal(full[0], draft[0])  # same pixels, same batch: the same call
    assert not torch.equal(full[1], draft[1])
    # smooth content: DCT-domain downscaling then the model's resize lands near the exact resize
    assert float(full[1] @ draft[1]) > 0.99
