"""Shared fixtures: a tiny random-weight CLIP (offline, fast) and a folder of awkward images."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emoclip.encoder.backbone import load_backbone

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
# Tests never touch the user's feature cache; subprocesses inherit this.
os.environ["EMOCLIP_CACHE_DIR"] = tempfile.mkdtemp(prefix="emoclip-test-cache-")
os.environ["EMOCLIP_PRECISION_CACHE"] = os.path.join(os.environ["EMOCLIP_CACHE_DIR"], "precision.json")

TINY_CLI = ["--model", "tiny", "--pretrained", "random", "--device", "cpu"]
EMOTIONS = ("anger", "disgust", "fear", "joy", "sadness", "surprise")

EMOTION6 = Path(os.environ.get("EMOCLIP_EMOTION6", SHARED_DATASETS / "emotion6"))

# Tolerance for two *different* computations of the same features (another batch shape, thread
# count, kernel or code path). fp32 matrix-multiply kernels pick their blocking by CPU and by shape,
# so such results agree only to rounding: about 1e-7 on unit-length features on the machines seen.
# 1e-5 leaves two orders of margin and is still far below any real change (another image or other
# weights move a feature by more than 1e-2). Bit-identity is asserted only where it holds by
# construction: a cache hit returns the stored bytes, frozen weights are untouched, the same call
# repeated on the same inputs.
FEATURE_ATOL = 1e-5
# Batch sizes and thread counts the numerics-sensitive tests run at ("shaking" the kernels), so a
# test that passes only by luck of one CPU's kernel fails here, not on someone else's machine.
SHAKE_BATCH_SIZES = (1, 3, 16)
SHAKE_THREADS = (1, 2)


def assert_close_features(actual, expected, atol: float = FEATURE_ATOL) -> None:
    """Features from two different computations agree within ``atol`` (see FEATURE_ATOL)."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=0, atol=atol)


@pytest.fixture(params=[(b, t) for t in SHAKE_THREADS for b in SHAKE_BATCH_SIZES],
                ids=lambda p: f"batch{p[0]}-threads{p[1]}")
def shake(request):
    """A (batch size, thread count) to run a numerics-sensitive test under; torch's threads are set."""
    import torch

    batch_size, threads = request.param
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield batch_size
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny():
    """The tiny architecture with seeded random weights, on the CPU."""
    return load_backbone("tiny", "random", "cpu")


@pytest.fixture(scope="session")
def tiny_other(tiny, tmp_path_factory):
    """The tiny architecture with other weights (loaded from a file): another backbone identity."""
    from safetensors.torch import save_file

    state = {k: v.clone().contiguous() for k, v in tiny.model.state_dict().items()}
    state["visual.proj"] += 0.01
    path = tmp_path_factory.mktemp("other") / "other.safetensors"
    save_file(state, str(path))
    return load_backbone("tiny", str(path), "cpu")


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory) -> Path:
    """A tiny random BART (from a BartConfig) and a word-level tokenizer built offline from emoclip's words."""
    from emoclip.methods.ugrie.random_bart import save_random_bart

    return save_random_bart(tmp_path_factory.mktemp("bart") / "tiny", "tiny")


def noise_image(width: int = 96, height: int = 64, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    array = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode=mode)


def make_awkward_images(folder: Path) -> dict[str, Path]:
    """Files a real collection contains; the names say what each one is."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def path(name: str) -> Path:
        files[name.split(".")[0]] = folder / name
        return folder / name

    noise_image(seed=1).save(path("good.jpg"), quality=90)
    jpeg = io.BytesIO()
    noise_image(400, 300, seed=2).save(jpeg, format="JPEG", quality=95)
    path("truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    path("zero_bytes.jpg").write_bytes(b"")
    path("not_an_image.jpg").write_text("this is a text file, not a photo\n")
    noise_image(seed=3).save(path("png_named_jpg.jpg"), format="PNG")
    noise_image(seed=4).convert("P").save(path("gif_named_jpg.jpg"), format="GIF")
    noise_image(seed=5).convert("CMYK").save(path("cmyk.jpg"), format="JPEG")
    deep = np.full((40, 50), 32768, dtype=np.uint16)
    deep[:, :25] = 65535
    Image.fromarray(deep).save(path("sixteen_bit.png"))
    palette = Image.new("P", (40, 30), 0)
    palette.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    palette.info["transparency"] = 0
    palette.save(path("palette_alpha.png"), transparency=0)
    rotated = noise_image(80, 40, seed=6)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    rotated.save(path("exif_rotated.jpg"), exif=exif)
    Image.new("1", (10_000, 10_000)).save(path("bomb.png"), optimize=True)
    return files


@pytest.fixture(scope="session")
def awkward_images(tmp_path_factory) -> dict[str, Path]:
    return make_awkward_images(tmp_path_factory.mktemp("awkward"))


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    (folder / "nested").mkdir()
    for i in range(5):
        noise_image(seed=10 + i).save(folder / ("nested" if i % 2 else "") / f"photo{i}.jpg")
    return folder


def run_cli(*args):
    """Invoke the emoclip CLI in-process; arguments may be paths or numbers."""
    from click.testing import CliRunner

    from emoclip.cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def make_split_data(folder: Path, per_class: int) -> tuple[Path, Path]:
    """Six emotion class folders of noise images and a 2:1 split file made by `emoclip split`."""
    from tests.test_dataset import make_class_folders

    root = make_class_folders(folder / "images", per_class=per_class, classes=EMOTIONS)
    split = folder / "split.tsv"
    assert run_cli("split", root, "--ratios", "2,1", "-o", split).exit_code == 0
    return root, split


def separable_task(backbone, n_train: int, n_val: int):
    """Six classes whose features cluster around random directions (seeded): a task any method should
    learn; ((train features, labels), (val features, labels))."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(6, backbone.feature_dim, generator=g), dim=-1)

    def make(n):
        y = torch.arange(n) % 6
        return F.normalize(centers[y] + 0.15 * torch.randn(n, backbone.feature_dim, generator=g), dim=-1), y

    return make(n_train), make(n_val)
