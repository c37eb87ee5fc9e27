"""What each encoder speed option buys and what it costs, against exact fp32, on real images.

For every combination of ``--precision`` (fp32, bf16, fp16) and ``--decode`` (full, draft) this
prints images/s, the top-1 agreement of zero-shot EmotionROI-6 predictions with exact fp32 (full
decoding), and the minimum and mean cosine between their image features. The model is loaded once per
precision; decode modes share it (``Backbone.with_decode``).

    python benchmarks/fast_options.py --limit 240       # Emotion6 (640x480 photos: draft decodes them at 1/2)

Last line: the cost of the precision `auto` picks here and of draft decoding, e.g.
auto=fp32 bf16_top1_agreement=0.996 bf16_min_cosine=0.99987 draft_top1_agreement=... cpu=KIND
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

MODEL = "ViT-B-32"
EMOTION6 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "emotion6" / "images"
VARIANTS = (("fp32", "full"), ("fp32", "draft"), ("bf16", "full"), ("bf16", "draft"), ("fp16", "full"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default=str(EMOTION6))
    parser.add_argument("--limit", type=int, default=240)
    args = parser.parse_args()

    import torch

    from emoclip import ZeroShotClassifier, load_backbone, load_taxonomy
    from emoclip.core.files import collect_images
    from emoclip.core.hardware import cpu_info, describe
    from emoclip.encoder.cache import compute_features
    from emoclip.encoder.precision import resolved_for_this_machine

    paths = collect_images([args.images])
    paths = paths[:: max(1, len(paths) // args.limit)][: args.limit]  # spread over the classes
    print(f"{len(paths)} images from {args.images}, {MODEL} (random weights), CPU, no cache")
    print(describe())
    backbones = {}
    results = {}
    for precision, decode in VARIANTS:
        if precision not in backbones:
            backbones[precision] = load_backbone(MODEL, "random", "cpu", precision=precision)
        backbone = backbones[precision].with_decode(decode)
        compute_features(backbone, paths[:16], None)  # warm-up: kernels, weight reorders
        started = time.perf_counter()
        table = compute_features(backbone, paths, None)
        seconds = time.perf_counter() - started
        features = torch.from_numpy(table.features)
        top1 = ZeroShotClassifier(backbone, load_taxonomy("emotionroi6")).logits(features).argmax(1)
        results[precision, decode] = (len(paths) / seconds, features, top1)

    base_rate, base_features, base_top1 = results["fp32", "full"]
    costs = {}
    for (precision, decode), (rate, features, top1) in results.items():
        agreement = (top1 == base_top1).float().mean().item()
        cosine = (features * base_features).sum(1)
        costs[precision, decode] = (agreement, cosine.min().item())
        print(f"--precision {precision} --decode {decode:<5} {rate:6.2f} images/s ({rate / base_rate:.2f}x)  "
              f"top-1 agreement {100 * agreement:5.1f}%  feature cosine to exact: min {cosine.min():.5f} "
              f"mean {cosine.mean():.5f}")
    auto = resolved_for_this_machine("auto", "cpu")
    (bf16_agree, bf16_cos), (draft_agree, draft_cos) = costs["bf16", "full"], costs["fp32", "draft"]
    print(f"auto={auto} bf16_top1_agreement={bf16_agree:.3f} bf16_min_cosine={bf16_cos:.5f} "
          f"draft_top1_agreement={draft_agree:.3f} draft_min_cosine={draft_cos:.5f} cpu={cpu_info().kind}")

if __name__ == "__main__":
    main()
