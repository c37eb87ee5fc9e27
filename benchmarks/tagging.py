"""End-to-end tagging throughput: emoclip vs the plain open_clip loop, side by side.

Both variants decode, preprocess, encode with ViT-B-32 (random weights: the compute is the same
as pretrained) and write one CSV row per image, each in a fresh process (so each has its own peak
memory) and without the feature cache (a cache would make the comparison meaningless).

    python benchmarks/tagging.py --images ../shared/datasets/emotion6/images --limit 200

The last line: speedup_vs_naive=X images_per_s=Y gflops_fraction=Z peak_rss_mb=M, where
gflops_fraction is the achieved model FLOP/s over the best fp32 GEMM FLOP/s measured in this run.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import best_gemm_gflops, image_encoder_flops, in_fresh_process, peak_rss_mb

MODEL = "ViT-B-32"
TEMPLATE = "a photo seems to express a feeling of {}"


def naive(paths: list[str], out: str) -> dict:
    """What a user writes with open_clip alone: one image at a time."""
    import open_clip
    import torch
    from PIL import Image

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL)
    classes = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
    with torch.no_grad():
        text = model.encode_text(tokenizer([TEMPLATE.format(c) for c in classes]), normalize=True)
    started = time.perf_counter()
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        for path in paths:
            image = preprocess(Image.open(path).convert("RGB")).unsqueeze(0)
            with torch.no_grad():
                feature = model.encode_image(image, normalize=True)
                probs = (100.0 * feature @ text.T).softmax(-1)[0]
            writer.writerow([path, classes[int(probs.argmax())], float(probs.max())])
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


def emoclip_tagging(paths: list[str], out: str, options: dict) -> dict:
    """emoclip's own path (the one `emoclip predict` runs), without the cache."""
    from emoclip import Tagger, ZeroShotClassifier, load_backbone, load_taxonomy
    from emoclip.output import open_writer

    backbone = load_backbone(MODEL, "random", "cpu", **options.get("backbone", {}))
    taxonomy = load_taxonomy("emotionroi6")
    tagger = Tagger(backbone, ZeroShotClassifier(backbone, taxonomy, TEMPLATE), batch_size=options.get("batch"))
    started = time.perf_counter()
    with open_writer("csv", out, taxonomy.names, {}) as writer:
        for row in tagger.tag(paths):
            writer.write(row)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="a folder of images (searched recursively)")
    parser.add_argument("--limit", type=int, default=200, help="how many images (default 200)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: emoclip's (16 on the CPU)")
    args = parser.parse_args()
    from emoclip.data.files import collect_images

    paths = [str(p) for p in collect_images([args.images])][: args.limit]
    if not paths:
        sys.exit(f"no images under {args.images}")
    out = tempfile.mkdtemp()
    print(f"{len(paths)} images from {args.images}, {MODEL} (random weights), fp32, CPU")
    fast = in_fresh_process(emoclip_tagging, paths, f"{out}/emoclip.csv", {"batch": args.batch_size})
    slow = in_fresh_process(naive, paths, f"{out}/naive.csv")

    import open_clip

    flops = image_encoder_flops(open_clip.create_model(MODEL, pretrained=None).eval(), 224)
    gemm = best_gemm_gflops()
    rate, naive_rate = len(paths) / fast["seconds"], len(paths) / slow["seconds"]
    achieved = rate * flops / 1e9
    print(f"naive open_clip loop: {naive_rate:.2f} images/s, peak RSS {slow['peak_rss_mb']:.0f} MB")
    print(f"emoclip:              {rate:.2f} images/s, peak RSS {fast['peak_rss_mb']:.0f} MB")
    print(f"model: {flops / 1e9:.2f} GFLOP/image → {achieved:.1f} GFLOP/s achieved; best fp32 GEMM here "
          f"{gemm:.1f} GFLOP/s (ceiling {gemm * 1e9 / flops:.1f} images/s)")
    print(f"speedup_vs_naive={rate / naive_rate:.2f} images_per_s={rate:.1f} gflops_fraction={achieved / gemm:.2f} "
          f"peak_rss_mb={fast['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
