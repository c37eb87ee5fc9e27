"""--precision int8: the OpenVINO + NNCF image tower, calibrated, cached, verified, and resumable.

The tiny random-weight architecture stands in for ViT-B/32 (the recipe is the same code path). The
comparisons with fp32 use a stated tolerance (int8 is another computation); bit-identity is asserted
only where it holds by construction: the same cached quantized model run on the same batches.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from emoclip.core.errors import EmoclipError
from emoclip.encoder.backbone import load_backbone
from tests.conftest import TINY_CLI, noise_image, run_cli

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from emoclip.encoder import int8

# int8 features of the tiny model agree with fp32 to a cosine of ~0.998 on noise images; this bound
# is far below that and far above what other weights or another image give (< 0.5).
MIN_COSINE = 0.98


def smooth_image(seed: int, size: int = 48):
    """A picture with structure (noise alone calibrates nothing typical)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BICUBIC)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    for i in range(30):
        smooth_image(seed=i).save(folder / f"c{i:02d}.png")
    (folder / "broken.jpg").write_text("not an image")  # skipped, never fatal
    return sorted(str(p) for p in folder.iterdir())


@pytest.fixture(scope="module")
def quantized_once(calibration, tmp_path_factory):
    """One int8 cache holding the model quantized on ``calibration`` (quantizing takes seconds)."""
    folder = tmp_path_factory.mktemp("int8-once")
    load_backbone("tiny", "random", "cpu", precision="int8", calibration=calibration, int8_cache=str(folder))
    return folder


@pytest.fixture
def int8_cache(tmp_path, monkeypatch, quantized_once):
    """This test's own int8 cache, starting with a copy of the model quantized on ``calibration``."""
    folder = tmp_path / "int8"
    shutil.copytree(quantized_once, folder)
    monkeypatch.setenv(int8.INT8_CACHE_ENV, str(folder))
    return folder


def pixels_of(backbone, count: int = 6) -> torch.Tensor:
    return torch.stack([backbone.preprocess(smooth_image(seed=500 + i).convert("RGB")) for i in range(count)])


def test_int8_agrees_with_fp32_is_cached_and_reused_identically(calibration, int8_cache, monkeypatch):
    fp32 = load_backbone("tiny", "random", "cpu")
    quantized = load_backbone("tiny", "random", "cpu", precision="int8", calibration=calibration)
    report = quantized.int8_report
    assert quantized.spec.precision == "int8" and quantized.spec.quantization == report.key
    assert report.calibration_images + report.holdout_images == 30  # the broken file was skipped
    assert MIN_COSINE <= report.min_cosine <= report.mean_cosine <= 1
    pixels = pixels_of(fp32)
    a, b = fp32.encode_pixels(pixels), quantized.encode_pixels(pixels)
    cosine = (a * b).sum(-1)
    assert float(cosine.min()) >= MIN_COSINE
    assert float((a - b).abs().max()) > 1e-6  # control: it really is another computation
    # int8 and fp32 features never share a cache key; the text tower is untouched
    assert quantized.spec.key() != fp32.spec.key() and "quantization" not in fp32.identity()
    torch.testing.assert_close(quantized.encode_texts(["joy"]), fp32.encode_texts(["joy"]), rtol=0, atol=0)

    def no_quantizing(*args, **kwargs):
        raise AssertionError("a cached int8 model must be reused, not made again")

    monkeypatch.setattr(int8, "_quantize", no_quantizing)
    again = load_backbone("tiny", "random", "cpu", precision="int8", calibration=calibration)
    assert again.spec == quantized.spec
    assert torch.equal(again.encode_pixels(pixels), b)  # the same model file on the same batch


def test_other_calibration_is_another_model(calibration, int8_cache):
    first = load_backbone("tiny", "random", "cpu", precision="int8", calibration=calibration)
    second = load_backbone("tiny", "random", "cpu", precision="int8", calibration=calibration[5:])
    assert first.spec.quantization != second.spec.quantization
    assert len(list(int8_cache.glob("*/model.xml"))) == 2


@pytest.mark.parametrize("damage", ["model.bin", "report.json"])
def test_a_damaged_cached_model_is_made_again_never_used(calibration, int8_cache, damage, caplog):
    good = load_backbone("tiny", "random", "cpu", precision="int8", calibration=calibration)
    entry = int8_cache / good.spec.quantization
    target = entry / damage
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only a digest notices
    target.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="emoclip"):
        again = load_backbone("tiny", "random", "cpu", precision="int8", calibration=calibration)
    assert "damaged" in caplog.text and "quantizing" in caplog.text
    assert again.spec == good.spec
    pixels = pixels_of(good)
    np.testing.assert_allclose(again.encode_pixels(pixels), good.encode_pixels(pixels), rtol=0, atol=1e-6)
    meta = json.loads((entry / "report.json").read_text())
    assert set(meta["sha256"]) == {"model.xml", "model.bin", "holdout.safetensors"}


def test_int8_below_the_agreement_threshold_is_refused(calibration, int8_cache, monkeypatch):
    monkeypatch.setattr(int8, "MIN_COSINE", 1.01)
    with pytest.raises(EmoclipError, match="agree too little.*--precision fp32"):
        load_backbone("tiny", "random", "cpu", precision="int8", calibration=calibration)


def test_int8_needs_calibration_images_and_the_cpu(int8_cache, tmp_path):
    with pytest.raises(EmoclipError, match="--calibration"):
        load_backbone("tiny", "random", "cpu", precision="int8")
    (tmp_path / "one.png").write_bytes(b"")
    with pytest.raises(EmoclipError, match=f"at least {int8.MIN_IMAGES} decodable"):
        load_backbone("tiny", "random", "cpu", precision="int8", calibration=[str(tmp_path / "one.png")])
    from emoclip.encoder.precision import resolve_precision

    with pytest.raises(EmoclipError, match="CPU"):
        resolve_precision("int8", "cuda")


def test_predict_int8_with_calibration_reports_top1_agreement(calibration, int8_cache, tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    for i in range(24):
        smooth_image(seed=900 + i).save(folder / f"j{i:02d}.png")
    out = tmp_path / "rows.jsonl"
    result = run_cli("-v", "predict", folder, *TINY_CLI, "--precision", "int8", "--decode", "full", "--no-cache",
                     "-o", out, "--calibration", str(Path(calibration[0]).parent))
    assert result.exit_code == 0, result.output
    assert "top-1 agreement" in result.output and "quantizing" not in result.output  # the cached model
    assert len(out.read_text().splitlines()) == 24

def test_evaluate_int8_records_the_quantization_and_its_agreement(calibration, int8_cache, tmp_path):
    root = tmp_path / "labelled"
    for label in ("joy", "anger"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            smooth_image(seed=hash(label) % 1000 + i).save(root / label / f"{i}.png")
    run = tmp_path / "run"
    result = run_cli("evaluate", "--root", root, "--split", "all", "-t", "emotionroi6", *TINY_CLI,
                     "--precision", "int8", "--no-cache", "--out", run,
                     "--calibration", str(Path(calibration[0]).parent))
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert '"precision": "int8"' in text and '"top1_agreement"' in text and '"quantization"' in text


def test_predict_int8_killed_and_resumed_is_bit_identical(tmp_path, int8_cache, monkeypatch):
    from tests.test_shards import assert_identical, cli_command, kill_after_first_shard, read_dir

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder = tmp_path / "job"
    folder.mkdir()
    for i in range(40):
        noise_image(48, 40, seed=300 + i).save(folder / f"i{i:02d}.jpg", quality=90)
    job = [*TINY_CLI, "--precision", "int8", "--shard-size", "4", "--batch-size", "2", "--workers", "1",
           "--save-features", "--no-progress", "--no-cache"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    before = set(int8_cache.glob("*/model.xml"))
    done = subprocess.run(cli_command("predict", folder, *job, "--output-dir", reference), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    command = cli_command("predict", folder, *job, "--output-dir", resumed)
    kill_after_first_shard(command, resumed)
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0 and "resumed" in again.stderr, again.stderr
    assert_identical(read_dir(resumed), read_dir(reference))
    assert len(set(int8_cache.glob("*/model.xml")) - before) == 1  # one quantized model served all three runs


def test_int8_without_the_extra_is_one_line_with_the_install_command(monkeypatch, tmp_path):
    real = int8.importlib.util.find_spec
    monkeypatch.setattr(int8.importlib.util, "find_spec", lambda name: None if name == "nncf" else real(name))
    noise_image(seed=1).save(tmp_path / "a.jpg")
    result = run_cli("predict", tmp_path, *TINY_CLI, "--precision", "int8", "--no-cache")
    assert result.exit_code == 2
    assert "emoclip: error: --precision int8 needs nncf; install it with: pip install 'emoclip[int8]'" in result.output


def test_int8_in_two_lanes_runs_two_streams_and_agrees_with_one(calibration, int8_cache):
    from emoclip.encoder.layout import Layout, run_lanes
    from tests.conftest import assert_close_features

    quantized = load_backbone("tiny", "random", "cpu", precision="int8", calibration=calibration)
    two = quantized.for_layout(Layout(2, 1))
    assert two.image_encoder.streams == 2 and quantized.image_encoder.streams == 1
    assert two.spec == quantized.spec  # the layout is speed only: the same encoder identity
    pixels = pixels_of(quantized)
    one = quantized.encode_pixels(pixels)
    for features in run_lanes(two.encode_pixels, pixels, Layout(2, 1)):  # two requests at once
        assert_close_features(features, one)
