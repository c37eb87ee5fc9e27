"""How fast the registries list without torch: `emoclip methods` and `emoclip.list_methods()`.

Target (issue 20): `emoclip methods` under 3 s, importing neither torch, open_clip nor transformers.
Each is run in a fresh interpreter (a cold import, as a user's shell would), a few times; the best
time and the peak memory are reported. Prints one summary line last.

    .venv/bin/python benchmarks/listing.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PROBE = """
import json, resource, sys, time
started = time.perf_counter()
{code}
seconds = time.perf_counter() - started
heavy = [m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules]
print(json.dumps({{"seconds": seconds, "heavy": heavy,
                   "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}), file=sys.stderr)
"""
CASES = {
    "emoclip methods": "from emoclip.cli.main import main\ntry:\n    main(['methods'])\nexcept SystemExit:\n    pass",
    "emoclip.list_methods()": "import emoclip\ncards = emoclip.list_methods()",
}


def measure(code: str) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], capture_output=True, text=True,
                          check=True)
    wall = time.perf_counter() - started
    return {**json.loads(done.stderr.strip().splitlines()[-1]), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cpu = subprocess.run([sys.executable, "-m", "emoclip.core.hardware"], capture_output=True, text=True).stdout
    print(cpu.strip())
    results = {}
    for name, code in CASES.items():
        runs = [measure(code) for _ in range(args.runs)]
        best = min(runs, key=lambda r: r["wall"])
        results[name] = best
        print(f"{name}: best {best['wall']:.2f} s wall of {args.runs} (in-process {best['seconds']:.2f} s), "
              f"{best['rss_mb']:.0f} MB, heavy modules imported: {', '.join(best['heavy']) or 'none'}")
    listing = results["emoclip methods"]
    ok = listing["wall"] < 3 and not any(r["heavy"] for r in results.values())
    print(f"listing: emoclip methods {listing['wall']:.2f} s (target < 3 s), list_methods() "
          f"{results['emoclip.list_methods()']['wall']:.2f} s, torch imported: "
          f"{'yes' if any(r['heavy'] for r in results.values()) else 'no'} — {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
