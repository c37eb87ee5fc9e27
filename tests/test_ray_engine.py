"""--engine ray on a local Ray (2 CPUs): the same rows as the single-process engine, and kill -9 + rerun."""

from __future__ import annotations

import contextlib
import time

import pytest

from emoclip.tagging.config import TaggerConfig
from emoclip.tagging.inputs import collect_inputs
from emoclip.tagging.shards import run_sharded
from tests.conftest import TINY_CLI, run_cli
from tests.test_shards import COMMITS, assert_identical, cli_command, forty, kill_after_first_shard, read_dir  # noqa: F401

ray = pytest.importorskip("ray")
pd = pytest.importorskip("pandas")
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # Ray Data's own, about its own settings
              pytest.mark.slow]  # starts Ray

# Ray actors run torch with one thread per reserved CPU, this process with all of them: the same
# encoder batches, but other kernel blockings, so rows agree to float rounding. Rows are rounded to
# 6 digits; 1e-6 allows one unit of that rounding to fall the other way.
PROBABILITY_ATOL = 1e-6
CONFIG = TaggerConfig(model="tiny", pretrained="random", device="cpu", precision="fp32", no_cache=True, batch_size=2)
JOB = {"shard_size": 3, "save_features": True, "progress": False}
RAY_OPTIONS = {"actors": 2, "cpus_per_actor": 0.5}  # 2 actors + the read tasks fit in 2 CPUs


def test_a_killed_driver_leaves_no_ray_process_behind(forty, tmp_path):  # noqa: F811
    """kill -9 of a driver that started its own local Ray: every process it started ends (ray_reaper).
    First in the module, before the shared local Ray exists, so the driver starts its own."""
    import os
    import signal
    import subprocess

    psutil = pytest.importorskip("psutil")
    out = tmp_path / "out"
    command = cli_command("predict", forty, *TINY_CLI, "--precision", "fp32", "--no-cache", "--shard-size", "3",
                          "--engine", "ray", "--ray-actors", "1", "--ray-cpus-per-actor", "1", "--output-dir", out)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    started: list = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if (out / COMMITS).exists() and (out / COMMITS).read_bytes().endswith(b"\n"):
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read()
        started = [(p, _command_line(p)) for p in psutil.Process(process.pid).children(recursive=True)]
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    assert any("raylet" in line for _, line in started), "the driver must have run its own Ray"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_running(p) for p, _ in started):
        time.sleep(0.5)
    alive = [line[:80] for p, line in started if _running(p)]
    for p, _ in started:  # never leave them to the next test, whatever the outcome
        with contextlib.suppress(psutil.Error):
            p.kill()
    assert not alive, f"still running after the driver was killed: {alive}"


def _command_line(process) -> str:
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _running(process) -> bool:
    """Alive and not a zombie (a zombie has ended; in a container nobody may reap it)."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (it takes seconds to start), shut down after it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_output(local_ray, forty, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ray") / "out"
    summary = run_sharded(CONFIG, collect_inputs([str(forty)]), out, engine="ray", **JOB, **RAY_OPTIONS)
    assert summary.rows == 41 and summary.errors == 1 and summary.computed == summary.shards == 14
    return out


def test_ray_rows_match_the_single_process_engine(ray_output, forty, tmp_path):  # noqa: F811
    local = tmp_path / "local"
    run_sharded(CONFIG, collect_inputs([str(forty)]), local, engine="local", **JOB)
    a, b = read_dir(ray_output), read_dir(local)
    assert list(a.columns) == list(b.columns)
    numbers = [c for c in a.columns if a[c].dtype.kind == "f"]
    text = [c for c in a.columns if c not in numbers and c not in ("feature", "top_k")]
    pd.testing.assert_frame_equal(a[text], b[text])
    pd.testing.assert_frame_equal(a[numbers], b[numbers], check_exact=False, rtol=0, atol=PROBABILITY_ATOL)
    assert a.error.str.len().gt(0).sum() == 1  # the broken file is an error row, not a failed task


def test_ray_kill_9_then_rerun_equals_an_uninterrupted_run(local_ray, ray_output, forty, tmp_path):  # noqa: F811
    out = tmp_path / "resumed"
    command = cli_command("predict", forty, *TINY_CLI, "--precision", "fp32", "--no-cache", "--batch-size", "2",
                          "--shard-size", "3",
                          "--save-features", "--engine", "ray", "--ray-address", local_ray, "--ray-actors", "2",
                          "--ray-cpus-per-actor", "0.5", "--output-dir", out)
    kill_after_first_shard(command, out)
    # rerun: the same command (here in-process, on the same Ray cluster)
    again = run_cli(*command[3:])
    assert again.exit_code == 1 and "resumed" in again.output, again.output
    assert_identical(read_dir(out), read_dir(ray_output))


def test_actor_pool_arguments_follow_the_ray_api_generation(monkeypatch):
    from ray.data import ActorPoolStrategy

    import emoclip.tagging.ray_engine as engine

    def map_batches(fn, *, batch_size=None, compute=None, concurrency=None):
        """Both keywords, as in Ray 2.9 to 2.60; which one to use depends on the version."""

    def map_batches_without_concurrency(fn, *, batch_size=None, compute=None):
        """A later Ray that dropped `concurrency`."""

    monkeypatch.setattr(engine.importlib.metadata, "version", lambda name: "2.40.0")
    assert engine.actor_pool_arguments(3, map_batches) == {"concurrency": 3}
    monkeypatch.setattr(engine.importlib.metadata, "version", lambda name: "2.60.0")
    for signature in (map_batches, map_batches_without_concurrency):
        compute = engine.actor_pool_arguments(3, signature)["compute"]
        assert isinstance(compute, ActorPoolStrategy) and compute.min_size == compute.max_size == 3
