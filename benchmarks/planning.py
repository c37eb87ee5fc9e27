"""Planning a 10-million-path ``--files-from`` job: seconds and memory, no model, no images.

What ``emoclip predict --files-from LIST --output-dir DIR`` does before it loads a model: read the
list (``inputs.collect_inputs``: every path stamped into the input fingerprint), lay out the job
(``shards.run_sharded``'s plan: shard count, manifest) and prepare the folder. The paths need not
exist: a missing file only becomes an error row when its shard is tagged. The list is written in
a temporary folder (about 30 bytes a path).

    python benchmarks/planning.py --paths 10000000

The last line: paths=N plan_s=… list_s=… peak_rss_mb=… rss_per_path_bytes=… shards=… cpu=KIND
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", type=int, default=10_000_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="emoclip-plan-", dir=args.dir))
    try:
        listing = root / "list.txt"
        t0 = time.perf_counter()
        with open(listing, "w", encoding="utf-8") as handle:
            for start in range(0, args.paths, 100_000):
                handle.write("".join(f"/data/img/{i // 10000:04d}/{i:08d}.jpg\n"
                                     for i in range(start, min(args.paths, start + 100_000))))
        list_s = time.perf_counter() - t0
        baseline = rss_mb()

        from emoclip.tagging.config import TaggerConfig
        from emoclip.tagging.inputs import collect_inputs
        from emoclip.tagging.shards import ShardFolder, job_options

        t0 = time.perf_counter()
        inputs = collect_inputs([], str(listing))
        config = TaggerConfig(model="tiny", pretrained="random", device="cpu")
        plan = {"inputs": {"fingerprint": inputs.fingerprint, "count": len(inputs)}, "shard_size": args.shard_size,
                "shards": -(-len(inputs) // args.shard_size), "options": job_options(config),
                "save_features": False}
        folder = ShardFolder(root / "out")
        folder.prepare(plan, overwrite=False)
        todo = folder.todo()
        folder.close()
        plan_s = time.perf_counter() - t0
        peak = rss_mb()
        assert len(inputs) == args.paths and len(todo) == plan["shards"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    from emoclip.core.hardware import cpu_info  # imports torch: after the measurement

    per_path = (peak - baseline) * 1024 * 1024 / max(args.paths, 1)
    print(f"paths={args.paths} plan_s={plan_s:.1f} list_s={list_s:.1f} peak_rss_mb={peak:.0f} "
          f"rss_per_path_bytes={per_path:.0f} shards={plan['shards']} cpu={cpu_info().kind}")


if __name__ == "__main__":
    main()
