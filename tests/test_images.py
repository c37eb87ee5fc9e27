"""Robust decoding: every awkward file either decodes correctly or gets a one-line reason."""

from __future__ import annotations

import numpy as np
import pytest

from emoclip.core.errors import ImageDecodeError
from emoclip.encoder.decode import load_rgb
from emoclip.encoder.pipeline import iter_encoded

SHOULD_DECODE = ["good", "png_named_jpg", "gif_named_jpg", "cmyk", "sixteen_bit", "palette_alpha", "exif_rotated"]
SHOULD_FAIL = {"truncated": "truncated", "zero_bytes": "empty", "not_an_image": "not an image",
               "bomb": "too large"}


@pytest.mark.parametrize("name", SHOULD_DECODE)
def test_decodable_files_become_rgb(awkward_images, name):
    img = load_rgb(awkward_images[name])
    assert img.mode == "RGB"
    assert min(img.size) > 0


@pytest.mark.parametrize(("name", "reason"), SHOULD_FAIL.items())
def test_undecodable_files_raise_with_reason(awkward_images, name, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        load_rgb(awkward_images[name])


def test_sixteen_bit_is_rescaled_not_clipped(awkward_images):
    pixels = np.asarray(load_rgb(awkward_images["sixteen_bit"]))
    assert pixels[0, 0].tolist() == [255, 255, 255]  # 65535 → 255
    assert pixels[0, -1].tolist() == [128, 128, 128]  # 32768 → 128, not clipped to 255


def test_palette_transparency_is_flattened_on_white(awkward_images):
    assert np.asarray(load_rgb(awkward_images["palette_alpha"]))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(awkward_images):
    assert load_rgb(awkward_images["exif_rotated"]).size == (40, 80)  # stored 80×40, viewed upright


def test_cmyk_colours_survive(awkward_images):
    from PIL import Image

    original = np.asarray(Image.open(awkward_images["cmyk"]).convert("RGB"), dtype=float)
    assert np.abs(np.asarray(load_rgb(awkward_images["cmyk"]), dtype=float) - original).max() == 0


def test_bomb_limit_is_adjustable(awkward_images):
    assert load_rgb(awkward_images["bomb"], max_pixels=None).size == (10_000, 10_000)


def test_a_bad_file_never_sinks_the_batch(tiny, awkward_images):
    paths = list(awkward_images.values())
    batches = list(iter_encoded(tiny, paths, batch_size=4, workers=2))
    ok = [b.paths[i].stem for b in batches for i in b.ok]
    failed = {b.paths[i].stem: reason for b in batches for i, reason in b.errors.items()}
    assert sorted(ok) == sorted(SHOULD_DECODE)
    assert set(failed) == set(SHOULD_FAIL)
    assert sum(len(b.paths) for b in batches) == len(paths)
    for b in batches:
        assert b.features.shape == (len(b.ok), tiny.feature_dim)
