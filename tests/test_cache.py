"""The feature cache: exact, invalidated by content and backbone, safe with concurrent writers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from emoclip.encoder.cache import FeatureCache, batch_keys, compute_features, content_digest
from tests.conftest import assert_close_features, noise_image


def test_second_run_is_served_from_cache_with_identical_features(tiny, photo_folder, tmp_path):
    paths = sorted(photo_folder.rglob("*.jpg"))
    cold = compute_features(tiny, paths, FeatureCache(tmp_path, tiny))
    warm = compute_features(tiny, paths, FeatureCache(tmp_path, tiny))
    assert (cold.hits, cold.misses) == (0, 5) and (warm.hits, warm.misses) == (5, 0)
    assert np.array_equal(cold.features, warm.features)
    uncached = compute_features(tiny, paths, None)
    assert np.array_equal(uncached.features, cold.features)  # the same call (same batches) repeated


def test_changed_file_is_re_encoded(tiny, tmp_path):
    image = tmp_path / "img" / "a.jpg"
    image.parent.mkdir()
    noise_image(seed=1).save(image)
    cache = FeatureCache(tmp_path / "cache", tiny)
    before = compute_features(tiny, [image], cache)
    noise_image(seed=2).save(image)  # same name, new content
    after = compute_features(tiny, [image], cache)
    assert after.misses == 1
    assert not np.array_equal(before.features, after.features)
    assert np.array_equal(after.features, compute_features(tiny, [image], None).features)  # same call repeated


def test_other_backbone_never_reads_these_features(tiny, tiny_other, photo_folder, tmp_path):
    paths = sorted(photo_folder.rglob("*.jpg"))
    compute_features(tiny, paths, FeatureCache(tmp_path, tiny))
    cache = FeatureCache(tmp_path, tiny_other)  # same architecture and preprocessing, other weights
    assert cache.dir != FeatureCache(tmp_path, tiny).dir
    table = compute_features(tiny_other, paths, cache)
    assert table.misses == len(paths)
    assert np.array_equal(table.features, compute_features(tiny_other, paths, None).features)  # same call


def test_corrupt_or_partial_entries_are_misses(tiny, photo_folder, tmp_path, shake):
    paths = sorted(photo_folder.rglob("*.jpg"))[:2]
    cache = FeatureCache(tmp_path, tiny)
    stored = compute_features(tiny, paths, cache, batch_size=shake)
    first_batch = [content_digest(p) for p in paths[:shake]]
    entry = cache._entry(batch_keys(first_batch, tiny_max_pixels())[0])
    entry.write_bytes(entry.read_bytes()[:10])  # as if cut off mid-write by another tool
    (entry.parent / f".{entry.stem}.123.tmp").write_bytes(b"\0" * 7)  # a killed writer's leftover
    again = compute_features(tiny, paths, FeatureCache(tmp_path, tiny), batch_size=shake)
    # the damaged entry's whole batch is a miss and is encoded again, whole: the same computation
    hit = 1 if shake == 1 else 0
    assert (again.hits, again.misses) == (hit, 2 - hit)
    assert np.array_equal(again.features, stored.features)


@pytest.mark.slow
def test_two_processes_writing_at_once(tiny, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(24):
        noise_image(seed=100 + i).save(folder / f"{i}.png")
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from emoclip.encoder.backbone import load_backbone
        from emoclip.encoder.cache import FeatureCache, compute_features
        b = load_backbone("tiny", "random", "cpu")
        paths = sorted(Path({str(folder)!r}).glob("*.png"))
        t = compute_features(b, paths, FeatureCache({str(tmp_path / "cache")!r}, b), batch_size=4)
        assert t.ok.all()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    paths = sorted(folder.glob("*.png"))
    warm = compute_features(tiny, paths, FeatureCache(tmp_path / "cache", tiny), batch_size=4)
    assert warm.hits == len(paths)
    # the processes encoded the same batches of 4: the same bytes, by construction
    assert np.array_equal(warm.features, compute_features(tiny, paths, None, batch_size=4).features)
    other_batches = compute_features(tiny, paths, FeatureCache(tmp_path / "cache", tiny))
    assert other_batches.hits == 0  # batches of 16 hold other company: never served from batches of 4
    assert_close_features(other_batches.features, warm.features)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def tiny_max_pixels() -> int:
    from emoclip.encoder.decode import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS


def test_copied_file_is_a_hit(tiny, photo_folder, tmp_path):
    source = sorted(photo_folder.rglob("*.jpg"))[0]
    cache = FeatureCache(tmp_path / "cache", tiny)
    compute_features(tiny, [source], cache)
    copy = tmp_path / "copy.jpg"
    shutil.copy(source, copy)
    assert compute_features(tiny, [copy], cache).hits == 1


def test_features_agree_across_batch_sizes_and_threads(tiny, photo_folder, shake):
    """Encoding in batches of 1, 3 or 16 at 1 or 2 threads equals one-at-a-time encoding within FEATURE_ATOL."""
    from emoclip.encoder.decode import load_rgb

    paths = sorted(photo_folder.rglob("*.jpg"))
    table = compute_features(tiny, paths, None, batch_size=shake)
    direct = np.concatenate([tiny.encode_pixels(tiny.preprocess(load_rgb(p)).unsqueeze(0)).numpy() for p in paths])
    assert_close_features(table.features, direct)
