"""End-to-end tagging throughput, side by side in one run: the plain open_clip loop, emoclip's
defaults, and emoclip exact.

- naive: what a user writes with open_clip alone — fp32, every pixel decoded, one image at a time;
- emoclip defaults: ``build_tagger(TaggerConfig(...))`` as `emoclip predict` runs it (precision
  ``auto``: bf16 only where this CPU measurably runs it faster; JPEG draft decoding);
- emoclip exact: the same with ``precision=fp32, decode=full``.

Each runs in a fresh process (its own peak memory), ViT-B-32 with random weights (the compute of
the pretrained model), without the feature cache (a cache would make the comparison meaningless).

    python benchmarks/tagging.py                 # Emotion6 (../shared/datasets/emotion6/images), 200 images
    python benchmarks/tagging.py --photos 48     # 48 synthesised 12-megapixel JPEGs (what phones write)

Agreement is the share of images whose top-1 label under the defaults equals exact fp32's; the
minimum cosine is between their image features. The last line:
speedup_vs_naive=X images_per_s=Y top1_agreement=A peak_rss_mb=M precision=P decode=D cpu=KIND
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import in_fresh_process, peak_rss_mb

MODEL = "ViT-B-32"
TEMPLATE = "a photo seems to express a feeling of {}"
EMOTION6 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "emotion6" / "images"
PHOTO_SIZE = (4000, 3000)  # 12 megapixels, 4:3 like a phone camera
PHOTO_QUALITY = 92


def synthesize_photo(seed: int, size: tuple[int, int] = PHOTO_SIZE):
    """A natural-image-like picture: 1/f-like fractal noise (smooth areas, edges at every scale,
    correlated colour channels) plus sensor grain. Noise alone would defeat JPEG (and draft
    decoding's point); this compresses like a photo (~2 MB at quality 92 for 12 MP)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    small_w, small_h = width // 4, height // 4  # build the structure at 1/4 size, then upscale once
    canvas = np.zeros((small_h, small_w, 3), np.float32)
    for octave, cells in enumerate((3, 6, 12, 24, 48, 96, 192, 384)):
        field = rng.normal(0, 1, (max(2, cells * height // width), cells, 3)).astype(np.float32)
        field[..., 1:] = field[..., :1] + 0.4 * field[..., 1:]  # channels correlate, as in photos
        layer = np.stack([np.asarray(Image.fromarray(field[..., c], mode="F").resize((small_w, small_h),
                                                                                    Image.BICUBIC))
                          for c in range(3)], -1)
        canvas += 70.0 / 2 ** (0.7 * octave) * layer
    canvas += rng.uniform(60, 190, 3).astype(np.float32)
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).resize(size, Image.BICUBIC)
    grain = rng.integers(-5, 6, size=(height, width, 1), dtype=np.int16)
    return Image.fromarray((np.asarray(image, dtype=np.int16) + grain).clip(0, 255).astype(np.uint8))


def synthesize_photos(folder: Path, count: int) -> list[str]:
    def write(i: int) -> str:
        path = folder / f"photo{i:04d}.jpg"
        synthesize_photo(i).save(path, quality=PHOTO_QUALITY)
        return str(path)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # Pillow's resize and encode release the GIL
        return list(pool.map(write, range(count)))


def naive(paths: list[str], out: str, device: str) -> dict:
    """What a user writes with open_clip alone: fp32, full decode, one image at a time."""
    import open_clip
    import torch
    from PIL import Image

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=None)
    model.eval().to(device)
    tokenizer = open_clip.get_tokenizer(MODEL)
    classes = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
    with torch.no_grad():
        text = model.encode_text(tokenizer([TEMPLATE.format(c) for c in classes]).to(device), normalize=True)
    labels = []
    started = time.perf_counter()
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        for path in paths:
            image = preprocess(Image.open(path).convert("RGB")).unsqueeze(0).to(device)
            with torch.no_grad():
                feature = model.encode_image(image, normalize=True)
                probs = (100.0 * feature @ text.T).softmax(-1)[0]
            labels.append(classes[int(probs.argmax())])
            writer.writerow([path, labels[-1], float(probs.max())])
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "labels": labels}


class _Recording:
    """A classifier that remembers the features it is given (to compare them across runs)."""

    def __init__(self, classifier) -> None:
        self.inner, self.taxonomy, self.features = classifier, classifier.taxonomy, []

    def logits(self, features):
        self.features.append(features.clone())
        return self.inner.logits(features)


def emoclip_tagging(paths: list[str], out: str, device: str, options: dict) -> dict:
    """emoclip's own path: build_tagger(TaggerConfig) and Tagger.tag, as `emoclip predict` runs it."""
    import torch

    from emoclip.tagging.config import TaggerConfig, build_tagger
    from emoclip.tagging.writers import open_writer

    config = TaggerConfig(model=MODEL, pretrained="random", device=device, taxonomy="emotionroi6",
                          templates=TEMPLATE, no_cache=True, **options)
    tagger = build_tagger(config)
    recording = _Recording(tagger.classifier)
    tagger.classifier = recording
    labels = []
    started = time.perf_counter()
    with open_writer("csv", out, tagger.taxonomy.names, {}) as writer:
        for row in tagger.tag(paths):
            writer.write(row)
            labels.append(row.label)
    seconds = time.perf_counter() - started
    spec = tagger.backbone.spec
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "labels": labels, "precision": spec.precision,
            "decode": spec.decode, "features": torch.cat(recording.features).numpy()}


def profile(paths: list[str], device: str) -> dict:
    """Where the time goes, per stage (ms per image): decoding+preprocessing one at a time in each
    mode, and the image encoder alone at the CPU batch size in each precision."""
    import torch

    from emoclip.encoder.backbone import load_backbone
    from emoclip.encoder.decode import load_rgb

    sample = paths[: min(len(paths), 16)]
    result = {}
    backbone = load_backbone(MODEL, "random", device)
    for mode, draft in (("full", None), ("draft", backbone.spec.input_size)):
        started = time.perf_counter()
        pixels = [backbone.preprocess(load_rgb(p, draft=draft)) for p in sample]
        result[f"decode_{mode}_ms"] = 1000 * (time.perf_counter() - started) / len(sample)
    batch = torch.stack(pixels)
    for precision in ("fp32", "bf16"):
        encoder = backbone if precision == "fp32" else load_backbone(MODEL, "random", device, precision=precision)
        encoder.encode_pixels(batch)  # warm-up: kernels and weight reorders
        started = time.perf_counter()
        encoder.encode_pixels(batch)
        result[f"encode_{precision}_ms"] = 1000 * (time.perf_counter() - started) / len(batch)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default=str(EMOTION6), help="a folder of images (default: Emotion6)")
    parser.add_argument("--limit", type=int, default=200, help="how many of --images (default 200)")
    parser.add_argument("--photos", type=int, default=None, metavar="N",
                        help="instead, synthesise N 12-megapixel JPEGs in a temporary folder")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from emoclip.core.hardware import cpu_info, describe

    work = tempfile.mkdtemp(prefix="emoclip-bench-")
    if args.photos:
        started = time.perf_counter()
        paths = synthesize_photos(Path(work), args.photos)
        size = sum(os.path.getsize(p) for p in paths) / len(paths) / 1e6
        print(f"{len(paths)} synthesised {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs ({size:.1f} MB each, "
              f"{time.perf_counter() - started:.0f} s to make) in {work}")
    else:
        from emoclip.core.files import collect_images

        paths = [str(p) for p in collect_images([args.images])]
        paths = paths[:: max(1, len(paths) // args.limit)][: args.limit]  # spread over the classes
        if not paths:
            sys.exit(f"no images under {args.images}")
        print(f"{len(paths)} images from {args.images}")
    print(describe())
    print(f"{MODEL} (random weights), device {args.device}, no feature cache; each variant in a fresh process")

    slow = in_fresh_process(naive, paths, f"{work}/naive.csv", args.device)
    fast = in_fresh_process(emoclip_tagging, paths, f"{work}/defaults.csv", args.device, {})
    exact = in_fresh_process(emoclip_tagging, paths, f"{work}/exact.csv", args.device,
                             {"precision": "fp32", "decode": "full"})
    stages = in_fresh_process(profile, paths, args.device)

    n = len(paths)
    rates = {name: n / run["seconds"] for name, run in (("naive", slow), ("defaults", fast), ("exact", exact))}
    agreement = sum(a == b for a, b in zip(fast["labels"], exact["labels"], strict=True)) / n
    exact_vs_naive = sum(a == b for a, b in zip(exact["labels"], slow["labels"], strict=True)) / n
    cosine = float((fast["features"] * exact["features"]).sum(1).min())
    print(f"naive open_clip loop (fp32, full decode, 1 at a time): {rates['naive']:6.2f} images/s, "
          f"peak RSS {slow['peak_rss_mb']:.0f} MB")
    print(f"emoclip exact (fp32, full decode):                      {rates['exact']:6.2f} images/s "
          f"({rates['exact'] / rates['naive']:.2f}x), peak RSS {exact['peak_rss_mb']:.0f} MB, "
          f"top-1 agreement with naive {100 * exact_vs_naive:.1f}%")
    print(f"emoclip defaults ({fast['precision']}, {fast['decode']} decode):                 "
          f"{rates['defaults']:6.2f} images/s ({rates['defaults'] / rates['naive']:.2f}x), "
          f"peak RSS {fast['peak_rss_mb']:.0f} MB, top-1 agreement with exact {100 * agreement:.1f}%, "
          f"min feature cosine {cosine:.5f}")
    print("profile, ms per image: " + ", ".join(f"{k[:-3]} {v:.1f}" for k, v in stages.items())
          + " (decoding one at a time; encoder at batch 16 after a warm-up)")
    kind = cpu_info().kind if args.device == "cpu" else args.device
    print(f"speedup_vs_naive={rates['defaults'] / rates['naive']:.2f} images_per_s={rates['defaults']:.1f} "
          f"top1_agreement={agreement:.3f} peak_rss_mb={fast['peak_rss_mb']:.0f} precision={fast['precision']} "
          f"decode={fast['decode']} cpu={kind}")


if __name__ == "__main__":
    main()
