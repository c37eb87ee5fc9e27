"""What the opt-in speed options buy and what they cost, against exact fp32, on real images.

For each option (``--fast-decode``: reduced-size JPEG decoding; ``--int8``: dynamic int8
quantisation of the image encoder) this prints images/s, the top-1 agreement of zero-shot
EmotionROI-6 predictions with fp32, and the largest difference between normalised features.

    python benchmarks/fast_options.py --images ../shared/datasets/emotion6/images --limit 120
"""

from __future__ import annotations

import argparse
import time

MODEL = "ViT-B-32"


def run(paths, fast_decode: bool, int8: bool):
    from emoclip import ZeroShotClassifier, load_backbone, load_taxonomy
    from emoclip.data.cache import compute_features

    backbone = load_backbone(MODEL, "random", "cpu", int8=int8)
    started = time.perf_counter()
    table = compute_features(backbone, paths, None, fast_decode=fast_decode)
    seconds = time.perf_counter() - started
    import torch

    features = torch.from_numpy(table.features)
    top1 = ZeroShotClassifier(backbone, load_taxonomy("emotionroi6")).logits(features).argmax(1)
    return len(paths) / seconds, features, top1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True)
    parser.add_argument("--limit", type=int, default=120)
    args = parser.parse_args()
    from emoclip.data.files import collect_images

    paths = collect_images([args.images])
    paths = paths[:: max(1, len(paths) // args.limit)][: args.limit]  # spread over the classes
    print(f"{len(paths)} images, {MODEL} (random weights), CPU")
    base_rate, base_features, base_top1 = run(paths, False, False)
    print(f"{'fp32 (default)':<22} {base_rate:6.2f} images/s")
    for name, fast_decode, int8 in (("--fast-decode", True, False), ("--int8", False, True),
                                    ("--fast-decode --int8", True, True)):
        rate, features, top1 = run(paths, fast_decode, int8)
        agreement = (top1 == base_top1).float().mean().item()
        diff = (features - base_features).abs().max().item()
        cosine = (features * base_features).sum(1).min().item()
        print(f"{name:<22} {rate:6.2f} images/s ({rate / base_rate:.2f}x)  top-1 agreement {100 * agreement:.1f}%  "
              f"max |feature diff| {diff:.4f}  min cosine to fp32 {cosine:.4f}")


if __name__ == "__main__":
    main()
