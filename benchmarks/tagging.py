"""End-to-end tagging throughput, side by side in one run: the plain open_clip loop, emoclip's
defaults, emoclip exact, and each other runtime of the encoder.

- naive: what a user writes with open_clip alone — fp32, every pixel decoded, one image at a time;
- emoclip defaults: ``build_tagger(TaggerConfig(...))`` as `emoclip predict` runs it (precision
  ``auto``: bf16 only where this CPU measurably runs it faster; JPEG draft decoding);
- emoclip exact: the same with ``precision=fp32, decode=full``;
- emoclip bf16 (CPUs with native bf16) and emoclip int8 (OpenVINO + NNCF, the ``int8`` extra;
  calibrated on the run's own images as `emoclip predict` does, quantized once before timing, in a
  fresh int8 cache), both with draft decoding like the defaults.

The ceiling of item "pipeline at its ceiling" is ``1 / (encoder + decode / cores)``: the encoder's
time per image at batch 16 in the layout it runs in (encoder/layout.py: lanes x threads, all cores
busy) plus the decoding time per image (one thread, as the pipeline decodes) shared over the cores,
both measured in this run for a row's precision and decode mode; ``ceiling_fraction`` is the
default path's images/s over its ceiling, ``int8_ceiling_fraction`` the int8 row's.

Each runs in a fresh process (its own peak memory), ViT-B-32 with random weights (the compute of
the pretrained model), without the feature cache (a cache would make the comparison meaningless).

    python benchmarks/tagging.py                 # Emotion6 (../shared/datasets/emotion6/images), 200 images
    python benchmarks/tagging.py --photos 48     # 48 synthesised 12-megapixel JPEGs (what phones write)

Agreement is the share of images whose top-1 label under the defaults (or int8) equals exact
fp32's; the minimum cosine is between their image features. The last line:
speedup_vs_naive=X images_per_s=Y top1_agreement=A peak_rss_mb=M precision=P decode=D
layout=LxT int8_vs_best=R int8_top1_agreement=A int8_min_cosine=C ceiling_fraction=F
int8_ceiling_fraction=F runtime=… cpu=KIND
(int8_vs_best: int8 images/s over the best non-int8 row of the run.)
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


def emoclip_tagging(paths: list[str], out: str, device: str, options: dict, int8_cache: str | None = None) -> dict:
    """emoclip's own path: build_tagger(TaggerConfig) and Tagger.tag, as `emoclip predict` runs it."""
    import torch

    from emoclip.tagging.config import TaggerConfig, build_tagger, with_calibration
    from emoclip.tagging.writers import open_writer

    if int8_cache:
        os.environ["EMOCLIP_INT8_CACHE"] = int8_cache
    config = TaggerConfig(model=MODEL, pretrained="random", device=device, taxonomy="emotionroi6",
                          templates=TEMPLATE, no_cache=True, **options)
    config = with_calibration(config, paths)  # int8: the job's own images calibrate, as in `emoclip predict`
    built = time.perf_counter()
    tagger = build_tagger(config)
    build_seconds = time.perf_counter() - built
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
    report = tagger.backbone.int8_report
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "labels": labels, "precision": spec.precision,
            "decode": spec.decode, "features": torch.cat(recording.features).numpy(), "build_seconds": build_seconds,
            "int8": report.to_dict() if report else None}


def profile(paths: list[str], device: str, precisions: list[str], int8_cache: str | None = None) -> dict:
    """Where the time goes, per stage (ms per image), each as the pipeline runs it: decoding and
    preprocessing one image at a time in each mode (all of ``paths``; the per-batch arithmetic
    included), and the image encoder alone at the CPU batch size in each precision, in the layout
    (lanes x threads) it runs in here, all lanes busy (best of 5 after 6 warm-up calls; int8 from the model
    the int8 row quantized). ``layout_<precision>`` names the layout, ``encode_<precision>_1lane_ms``
    the one-lane figure for comparison."""
    from emoclip.encoder.backbone import load_backbone
    from emoclip.encoder.layout import encoder_layout, run_lanes, single_lane
    from emoclip.encoder.pipeline import CPU_BATCH_SIZE, _decode
    from emoclip.encoder.preprocess import split_preprocess

    if int8_cache:
        os.environ["EMOCLIP_INT8_CACHE"] = int8_cache
    result: dict = {}
    backbone = load_backbone(MODEL, "random", device)
    split = split_preprocess(backbone.preprocess)
    for mode, draft in (("full", None), ("draft", backbone.spec.input_size)):
        started = time.perf_counter()
        pixels = [_decode(backbone, split, p, None, draft) for p in paths]
        batches = [split.batch(pixels[i:i + CPU_BATCH_SIZE]) for i in range(0, len(pixels), CPU_BATCH_SIZE)]
        result[f"decode_{mode}_ms"] = 1000 * (time.perf_counter() - started) / len(paths)
    batch = batches[0]
    for precision in precisions:
        if precision == "fp32":
            encoder = backbone
        else:
            from emoclip.tagging.config import TaggerConfig, load_backbone_for, with_calibration

            config = with_calibration(TaggerConfig(model=MODEL, pretrained="random", device=device,
                                                   precision=precision, decode="draft"), paths)
            encoder = load_backbone_for(config)
        chosen = encoder_layout(encoder, len(batch))
        for name, layout in ((f"encode_{precision}_ms", chosen), (f"encode_{precision}_1lane_ms", single_lane())):
            laid = encoder.for_layout(layout)
            for _ in range(6):  # warm-up: kernels, weight reorders (OpenVINO needs more than one call)
                run_lanes(laid.encode_pixels, batch, layout)
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                run_lanes(laid.encode_pixels, batch, layout)
                best = min(best, (time.perf_counter() - started) / layout.lanes)
            result[name] = 1000 * best / len(batch)
        result[f"layout_{precision}"] = str(chosen)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default=str(EMOTION6), help="a folder of images (default: Emotion6)")
    parser.add_argument("--limit", type=int, default=200, help="how many of --images (default 200)")
    parser.add_argument("--photos", type=int, default=None, metavar="N",
                        help="instead, synthesise N 12-megapixel JPEGs in a temporary folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="leave out the int8 row")
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

    import importlib.util

    has_int8 = args.int8 and all(importlib.util.find_spec(m) for m in ("openvino", "nncf"))
    int8_cache = f"{work}/int8"  # a fresh cache: the int8 row quantizes once, before its timing starts
    slow = in_fresh_process(naive, paths, f"{work}/naive.csv", args.device)
    fast = in_fresh_process(emoclip_tagging, paths, f"{work}/defaults.csv", args.device, {})
    exact = in_fresh_process(emoclip_tagging, paths, f"{work}/exact.csv", args.device,
                             {"precision": "fp32", "decode": "full"})
    runs = {"naive": slow, "defaults": fast, "exact": exact}
    if args.device == "cpu" and cpu_info().native_bf16 and fast["precision"] != "bf16":
        runs["bf16"] = in_fresh_process(emoclip_tagging, paths, f"{work}/bf16.csv", args.device,
                                        {"precision": "bf16", "decode": "draft"})
    if has_int8 and args.device == "cpu":
        runs["int8"] = in_fresh_process(emoclip_tagging, paths, f"{work}/int8.csv", args.device,
                                        {"precision": "int8", "decode": "draft"}, int8_cache)
    precisions = sorted({"fp32", fast["precision"], *(r["precision"] for r in runs.values() if "precision" in r)})
    stages = in_fresh_process(profile, paths, args.device, precisions, int8_cache)

    n = len(paths)
    rates = {name: n / run["seconds"] for name, run in runs.items()}
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
    for name in ("bf16", "int8"):
        if name in runs:
            run = runs[name]
            agree = sum(a == b for a, b in zip(run["labels"], exact["labels"], strict=True)) / n
            print(f"emoclip {name} ({run['decode']} decode):{' ' * 31}{rates[name]:6.2f} images/s "
                  f"({rates[name] / rates['naive']:.2f}x), peak RSS {run['peak_rss_mb']:.0f} MB, top-1 agreement "
                  f"with exact {100 * agree:.1f}%, min feature cosine "
                  f"{float((run['features'] * exact['features']).sum(1).min()):.5f}")
    int8_fields = "int8_vs_best=n/a int8_top1_agreement=n/a int8_min_cosine=n/a"
    if "int8" in runs:
        run = runs["int8"]
        best_other = max(rate for name, rate in rates.items() if name != "int8")
        report = run["int8"]
        print(f"int8 quantization: {run['build_seconds']:.1f} s to build the tagger (quantizing once on "
              f"{report['calibration_images']} of the run's images); held-out ({report['holdout_images']} images) "
              f"min cosine {report['min_cosine']:.5f}, top-1 agreement {report['top1_agreement']}")
        int8_agree = sum(a == b for a, b in zip(run["labels"], exact["labels"], strict=True)) / n
        int8_cos = float((run["features"] * exact["features"]).sum(1).min())
        int8_fields = (f"int8_vs_best={rates['int8'] / best_other:.2f} int8_top1_agreement={int8_agree:.3f} "
                       f"int8_min_cosine={int8_cos:.5f}")
    elif args.int8:
        print("no int8 row: OpenVINO/NNCF are not installed (pip install 'emoclip[int8]')")
    times = {k[:-3]: v for k, v in stages.items() if k.endswith("_ms")}
    layouts = {k[len("layout_"):]: v for k, v in stages.items() if k.startswith("layout_")}
    print("profile, ms per image: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
          + " (decoding one image at a time, as the pipeline does; encoder at batch 16 in its layout, all lanes "
            "busy, best of 5 after 6 warm-up calls); layouts (lanes x threads): "
          + ", ".join(f"{k} {v}" for k, v in layouts.items()))
    cores = os.cpu_count() or 1

    def ceiling(run: dict) -> float:
        """1 / (encoder + decode / cores) for a row's precision and decode mode, from this run's profile."""
        return 1000 / (times[f"encode_{run['precision']}"] + times[f"decode_{run['decode']}"] / cores)

    fractions = {name: rates[name] / ceiling(run) for name, run in runs.items() if "precision" in run}
    encode_ms, decode_ms = times[f"encode_{fast['precision']}"], times[f"decode_{fast['decode']}"]
    print(f"ceiling of the default path ({fast['precision']}, {fast['decode']}, layout {layouts[fast['precision']]}): "
          f"1 / (encoder {encode_ms:.1f} ms + decode {decode_ms:.1f} ms / {cores} cores) = "
          f"{ceiling(fast):.1f} images/s; share of its ceiling each row reached: "
          + ", ".join(f"{name} {f:.2f}" for name, f in fractions.items()))
    kind = cpu_info().kind if args.device == "cpu" else args.device
    runtime = "openvino" if fast["precision"] == "int8" else "torch"
    int8_fraction = f"{fractions['int8']:.2f}" if "int8" in fractions else "n/a"
    print(f"speedup_vs_naive={rates['defaults'] / rates['naive']:.2f} images_per_s={rates['defaults']:.1f} "
          f"top1_agreement={agreement:.3f} peak_rss_mb={fast['peak_rss_mb']:.0f} precision={fast['precision']} "
          f"decode={fast['decode']} layout={layouts[fast['precision']]} {int8_fields} "
          f"ceiling_fraction={fractions['defaults']:.2f} int8_ceiling_fraction={int8_fraction} "
          f"runtime={runtime} cpu={kind}")


if __name__ == "__main__":
    main()
