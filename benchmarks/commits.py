"""Commit cost at 200,000 shards: does committing shard k cost the same whatever k is?

Runs the real commit path (``ShardFolder.prepare`` then ``ShardFolder.commit``: the shard file
written atomically, one line appended to the commit log) for N shards of a small fixed Parquet
payload, with no model. It reports the median time of the first and of the last 1,000 commits, the
total, the one-pass read + verification of the finished folder (``manifest.folder_state``: what a
resume or ``merge`` does), and, for comparison, one rewrite of a manifest listing every shard (what
each commit cost before the commit log).

fsync is what a commit spends most of its time on, and it is the same for every commit (one file,
one folder, one log); with ``--fsync off`` (the default here: 200,000 × ~6 ms of fsync would keep a
shared disk busy for 20 minutes) ``os.fsync`` is a no-op, which measures exactly the part that
could grow with k. ``--fsync on`` keeps it.

    python benchmarks/commits.py --shards 200000

The last line: shards=N first_commit_ms=… last_commit_ms=… total_s=… read_verify_s=…
old_manifest_rewrite_ms=… fsync=on|off cpu=KIND
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def payload() -> bytes:
    """A small Parquet table, the bytes every simulated shard commits."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"row": [0], "path": ["x.jpg"], "label": ["awe"], "probability": [0.5]}), buffer)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=200_000)
    parser.add_argument("--window", type=int, default=1000, help="commits averaged at each end")
    parser.add_argument("--fsync", choices=["on", "off"], default="off")
    parser.add_argument("--dir", default=None, help="where to build the folder (default: a temporary one)")
    args = parser.parse_args()

    from emoclip.tagging import manifest as manifest_module
    from emoclip.tagging.shards import ShardFolder, ShardResult

    if args.fsync == "off":
        os.fsync = lambda fd: None  # the same call count; only the disk wait is left out
    data = payload()
    root = Path(tempfile.mkdtemp(prefix="emoclip-commits-", dir=args.dir))
    try:
        folder = ShardFolder(root / "job")
        plan = {"inputs": {"fingerprint": "simulated", "count": args.shards}, "shard_size": 1,
                "shards": args.shards, "options": {}, "save_features": False}
        folder.prepare(plan, overwrite=False)
        times = []
        started = time.perf_counter()
        for index in range(args.shards):
            t0 = time.perf_counter()
            folder.commit(ShardResult(index, data, 1, 0, 0.0))
            times.append(time.perf_counter() - t0)
        total = time.perf_counter() - started
        folder.close()
        t0 = time.perf_counter()
        state = manifest_module.folder_state(folder.folder)
        read_verify = time.perf_counter() - t0
        assert state.complete and not state.damaged, "every simulated commit must read back verified"
        # what one commit cost before: rewriting a manifest that lists every shard done
        old = {"done": {str(i): {"rows": 1, "errors": 0, "seconds": 0.0} for i in range(args.shards)}}
        t0 = time.perf_counter()
        manifest_module.atomic_write_text(root / "old_manifest.json", json.dumps(old, sort_keys=True) + "\n")
        old_ms = (time.perf_counter() - t0) * 1000
    finally:
        shutil.rmtree(root, ignore_errors=True)
    from emoclip.core.hardware import cpu_info  # imports torch: only after the measurement

    def cpu_kind() -> str:
        return cpu_info().kind

    window = min(args.window, max(1, args.shards // 2))
    first = statistics.median(times[:window]) * 1000  # median: a page-cache writeback stall is not a trend
    last = statistics.median(times[-window:]) * 1000
    print(f"shards={args.shards} first_commit_ms={first:.3f} last_commit_ms={last:.3f} total_s={total:.1f} "
          f"read_verify_s={read_verify:.2f} old_manifest_rewrite_ms={old_ms:.0f} fsync={args.fsync} "
          f"cpu={cpu_kind()}")



if __name__ == "__main__":
    main()
