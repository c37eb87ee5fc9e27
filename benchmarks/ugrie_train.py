"""UGRIE training time per epoch on Emotion6: ViT-B/32 features, the BART-base architecture with random weights.

Real BART weights cannot be downloaded here, and the compute does not depend on their values: the
BART is built offline from a ``BartConfig`` with facebook/bart-base's architecture (6+6 layers, width
768, the 50,265-entry output layer; ``BartConfig()``'s bare defaults are bart-large's) with a
word-level tokenizer of emoclip's words (``emoclip.methods.ugrie.random_bart``).
Image features come from ViT-B/32 with random weights through the feature cache (encoded once; the
one-time encoding is reported apart, as every epoch reads the cache), or ``--features random``
(unit vectors of the same width: the same epoch compute without the encoding).

Each mode trains one epoch with emoclip's one trainer exactly as ``emoclip train`` does (batches of
16, AdamW, the validation part scored at the end of the epoch) and reports the trainer's epoch
seconds, split into training steps and validation scoring.

    python benchmarks/ugrie_train.py                                   # whole train split, full fine-tuning
    python benchmarks/ugrie_train.py --limit 160 --modes full:fp32,full:bf16,lora:fp32,mapping:fp32

The last line: ugrie_epoch_s=… (the first mode, on the whole epoch or extrapolated from --limit),
one figure per mode, the image counts and the CPU kind.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SPLIT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "emotion6" / "split_70_30.tsv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split-file", default=str(SPLIT))
    parser.add_argument("--limit", type=int, default=0, help="training images (default 0: the whole train part)")
    parser.add_argument("--modes", default="full:fp32", help="tune:precision list (tune full|lora|mapping; "
                                                             "precision fp32|bf16)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--features", choices=["cache", "random"], default="cache")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import torch.nn.functional as F

    from emoclip import load_backbone, load_taxonomy
    from emoclip.core.hardware import cpu_info, describe
    from emoclip.datasets.dataset import open_dataset
    from emoclip.encoder.cache import FeatureCache, compute_features, default_cache_dir
    from emoclip.methods import create_method
    from emoclip.methods.ugrie.random_bart import save_random_bart
    from emoclip.training.common import train_val
    from emoclip.training.trainer import TrainConfig, train

    taxonomy = load_taxonomy("emotionroi6")
    config = TrainConfig(epochs=1, batch_size=args.batch_size, optimizer="adamw", lr=1e-4, weight_decay=0.01)
    data = open_dataset(Path(args.split_file).parent / "images", args.split_file)
    train_part, val_part = train_val(data, config.val_fraction, config.seed)
    full_train = len(train_part)
    if args.limit:
        train_part = train_part.subset(list(range(0, len(train_part), max(1, len(train_part) // args.limit)))
                                       [:args.limit])
        val_part = val_part.subset(list(range(min(len(val_part), max(1, args.limit // 9)))))
    backbone = load_backbone("ViT-B-32", "random", "cpu")
    started = time.perf_counter()
    if args.features == "cache":
        cache = FeatureCache(default_cache_dir(), backbone)
        tables = [compute_features(backbone, part.paths, cache) for part in (train_part, val_part)]
        x, vx = (torch.from_numpy(t.features) for t in tables)
    else:
        g = torch.Generator().manual_seed(0)
        x = F.normalize(torch.randn(len(train_part), backbone.feature_dim, generator=g), dim=-1)
        vx = F.normalize(torch.randn(len(val_part), backbone.feature_dim, generator=g), dim=-1)
    encode_s = time.perf_counter() - started
    y = torch.from_numpy(train_part.label_indices(taxonomy))
    vy = torch.from_numpy(val_part.label_indices(taxonomy))
    print(f"features: {args.features}, {len(y)} train + {len(vy)} val images in {encode_s:.1f} s (one-time)")

    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        bart = save_random_bart(Path(tmp) / "bart-base", "base")
        for mode in args.modes.split(","):
            tune, precision = mode.split(":")
            method = create_method("ugrie", backbone, taxonomy, {"bart": str(bart), "tune": tune,
                                                                  "precision": precision, "generate": False})
            trainable = sum(p.numel() for p in method.trainable_parameters())
            val_started = time.perf_counter()
            method.accuracy(vx, vy)
            val_s = time.perf_counter() - val_started  # the validation scoring the trainer runs every epoch
            result = train(method, (x, y), (vx, vy), config, Path(tmp) / mode.replace(":", "-"), progress=False)
            epoch_s = result["history"][0]["seconds"]
            steps_s = max(epoch_s - val_s, 0.0)
            whole = (epoch_s if not args.limit else  # else: steps per image × train images + the validation part
                     steps_s * full_train / len(y) + val_s * (full_train / 9) / max(len(vy), 1))
            figures[mode] = whole
            print(f"{mode}: {trainable / 1e6:.1f} M trained parameters; epoch {epoch_s:.1f} s on {len(y)} images "
                  f"(steps {steps_s:.1f} s = {1000 * steps_s / len(y):.0f} ms/image, validation {val_s:.1f} s on "
                  f"{len(vy)}); whole Emotion6 epoch ({full_train} train images) "
                  f"{'measured' if not args.limit else 'extrapolated'}: {whole:.0f} s")
            del method
    print(describe())
    per_mode = " ".join(f"{m.replace(':', '_')}_epoch_s={v:.0f}" for m, v in figures.items())
    first = next(iter(figures.values()))
    print(f"ugrie_epoch_s={first:.0f} {per_mode} train_images={full_train} measured_images={len(y)} "
          f"features={args.features} cpu_kind={cpu_info().kind}")


if __name__ == "__main__":
    main()
