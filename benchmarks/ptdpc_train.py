"""One PT-DPC training epoch: emoclip vs a faithful naive loop, same data, order, seed and optimiser.

The naive loop does what the PT-DPC release does: every step decodes, preprocesses and encodes
its images again, and runs the text encoder on all 77 positions. emoclip trains on features
encoded once (the feature cache; the one-time encoding is reported separately) and runs the text
encoder on the positions the prompts need. Both use ViT-B-32 with random weights.

    python benchmarks/ptdpc_train.py --limit 64

The last line: speedup_vs_naive=X max_abs_logit_diff=D (the two trained models' logits on the
same features after the epoch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SPLIT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "emotion6" / "split_70_30.tsv"
MODEL = "ViT-B-32"
OPTIONS = {"template": "a photo seems to express a feeling of {}", "weight": "cos", "loss": "ce"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split-file", default=str(SPLIT))
    parser.add_argument("--limit", type=int, default=64, help="training images in the epoch (default 64)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.002)
    args = parser.parse_args()

    import torch

    from emoclip import load_backbone, load_taxonomy
    from emoclip.datasets.dataset import open_dataset
    from emoclip.encoder.cache import compute_features
    from emoclip.encoder.decode import load_rgb
    from emoclip.methods import create_method
    from emoclip.training.trainer import TrainConfig, train

    split = Path(args.split_file)
    if not split.is_file():
        sys.exit(f"{split} not found: this benchmark reads the Emotion6 split in ../shared/datasets")
    taxonomy = load_taxonomy("emotionroi6")
    data = open_dataset(split.parent / "images", split).split("train")
    data = data.subset(list(range(0, len(data), max(1, len(data) // args.limit)))[: args.limit])
    labels = torch.from_numpy(data.label_indices(taxonomy))
    backbone = load_backbone(MODEL, "random", "cpu")
    config = TrainConfig(epochs=1, batch_size=args.batch_size, optimizer="sgd", lr=args.lr, val_fraction=0)
    print(f"{len(data)} Emotion6 training images, {MODEL} (random weights), batch {args.batch_size}, "
          f"{len(taxonomy)} classes, CPU fp32")

    # emoclip: encode once, then train on features with trimmed prompts
    started = time.perf_counter()
    features = torch.from_numpy(compute_features(backbone, data.paths, None).features)
    encode_seconds = time.perf_counter() - started
    fast = create_method("ptdpc", backbone, taxonomy, OPTIONS)
    started = time.perf_counter()
    train(fast, (features, labels), (features[:0], labels[:0]), config, Path(__file__).parent / ".ptdpc_bench",
          progress=False)
    fast_seconds = time.perf_counter() - started

    # naive: re-encode every step, 77 positions, otherwise the same
    slow = create_method("ptdpc", backbone, taxonomy, {**OPTIONS, "trim": False})
    optimizer = torch.optim.SGD(slow.trainable_parameters(), lr=config.lr, momentum=config.momentum)
    torch.manual_seed(config.seed)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(config.seed * 100_003))
    started = time.perf_counter()
    for start in range(0, len(order), config.batch_size):
        index = order[start:start + config.batch_size]
        pixels = torch.stack([backbone.preprocess(load_rgb(data.paths[i])) for i in index.tolist()])
        batch_features = backbone.encode_pixels(pixels)
        loss = slow.loss(slow(batch_features), labels[index], {})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    slow_seconds = time.perf_counter() - started

    diff = (fast.logits(features) - slow.logits(features)).abs().max().item()
    print(f"emoclip: one-time encoding {encode_seconds:.1f} s, epoch {fast_seconds:.1f} s "
          f"(text context {fast.encoder.length} positions)")
    print(f"naive:   epoch {slow_seconds:.1f} s (images re-encoded each step, {slow.encoder.length} positions)")
    print(f"speedup_vs_naive={slow_seconds / fast_seconds:.2f} max_abs_logit_diff={diff:.2e}")


if __name__ == "__main__":
    main()
