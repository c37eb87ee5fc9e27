"""The guard that ends the local Ray an emoclip driver started, however the driver ends.

``ray.init()`` without an address starts a whole local cluster as child processes of the driver
(GCS server, raylet, dashboard and runtime-env agents, workers). A driver that returns calls
``ray.shutdown()``; a driver killed with SIGKILL cannot, and some of those processes (the agents,
in 2 of 10 trials) then run on forever. So before starting Ray the driver starts this small
process (``python -m emoclip.tagging.ray_reaper``, in its own session so a terminal's Ctrl-C does
not reach it), sends it ``pid create_time`` of each process Ray started, and keeps the pipe open.
When the pipe closes — the driver exited, normally or not — the guard stops those processes and
everything they started (SIGTERM, then SIGKILL after a grace period), checking each process's
start time so a reused PID is never touched. It imports only psutil (a dependency of Ray).
"""

from __future__ import annotations

import contextlib
import sys

GRACE_S = 3.0


def _targets(lines: list[str]) -> list:
    import psutil

    found: dict[int, psutil.Process] = {}
    for line in lines:
        try:
            pid_text, created_text = line.split()
            process = psutil.Process(int(pid_text))
            if abs(process.create_time() - float(created_text)) > 0.01:
                continue  # the PID now belongs to another process
            for p in [process, *process.children(recursive=True)]:
                found[p.pid] = p
        except (ValueError, psutil.Error):
            continue
    return list(found.values())


def reap(lines: list[str]) -> int:
    """Stop the listed processes and their descendants; how many were still running."""
    import psutil

    targets = _targets(lines)
    for process in targets:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(targets, timeout=GRACE_S)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=GRACE_S)
    return len(targets)


def main() -> None:
    lines = [line for line in sys.stdin if line.strip()]  # until the driver's end closes the pipe
    reap(lines)


if __name__ == "__main__":
    main()
