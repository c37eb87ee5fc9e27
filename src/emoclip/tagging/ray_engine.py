"""The Ray Data engine (``--engine ray``, ``pip install 'emoclip[ray]'``): the same job on a cluster.

The dataset has one row per shard still to do (``shards.ShardFolder.todo``). Ray tasks read each
shard's inputs — file bytes, or tar members by offset — so I/O scales with the cluster; an actor
pool, each actor holding one model built once by ``tagging.build_tagger(TaggerConfig.from_dict(…))``
and reused for every shard it gets, runs ``shards.tag_shard`` on them: the very function and Tagger
the single-process engine runs, so decoding, preprocessing and classification have one
implementation. Images travel between the read tasks and the actors as their compressed bytes;
the actor decodes them in its Tagger's thread pool, overlapped with encoding, as the CLI does.

The driver builds no model: each actor reports, with every shard, the encoder identity and the
column layout of the model it really runs, and the driver records them in the manifest (first
shard) and refuses a shard of another encoder or layout. It commits each shard with the same
protocol and commit log as the single-process engine, so the resume rules are the same, and a
resumed job may even switch engines. An actor runs torch with one thread per CPU it reserves
(``actor_threads``): more would fight the other actors for cores.

A local Ray started here is guarded (``ray_reaper``): its processes end with the driver even after
``kill -9``. Ray's own Python log lines go to ``DIR/_emoclip_ray.log`` unless ``-v``.

A shard's rows come from one ``Tagger.tag`` call over the same items, in the same fixed batches,
in both engines; they match the single-process rows up to the float rounding of a different torch
thread count inside an actor (tests allow 1e-6 on probabilities).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from emoclip.core.errors import EmoclipError
from emoclip.encoder.decode import ImageBytes
from emoclip.tagging.inputs import Item, load_items
from emoclip.tagging.shards import RAY_LOG_NAME, ShardJob, ShardLayout, ShardProgress, ShardResult, tag_shard

log = logging.getLogger("emoclip")

# Ray ≥ 2.51 deprecates map_batches(concurrency=…) for compute=ActorPoolStrategy(size=…); 2.9–2.50 want concurrency.
COMPUTE_ARGUMENT_SINCE = (2, 51)
# CPUs a read task reserves: reading is I/O, and a distinct reservation keeps Ray from fusing the
# reads into the model actors (they would then wait on storage instead of encoding).
READ_TASK_CPUS = 0.25


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise EmoclipError("--engine ray needs Ray Data; install it with: pip install 'emoclip[ray]'") from None
    return ray


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def actor_pool_arguments(size: int, map_batches: Any = None) -> dict[str, Any]:
    """``map_batches`` keyword arguments for a fixed pool of ``size`` actors, for this Ray's API generation."""
    ray = _import_ray()
    parameters = inspect.signature(map_batches or ray.data.Dataset.map_batches).parameters
    new_api = _version(importlib.metadata.version("ray")) >= COMPUTE_ARGUMENT_SINCE
    if "concurrency" in parameters and not new_api:
        return {"concurrency": size}
    from ray.data import ActorPoolStrategy

    return {"compute": ActorPoolStrategy(size=size)}


def read_shard(row: dict[str, Any]) -> dict[str, Any]:
    """A Ray task: the bytes of one shard's inputs (or, per item, why it cannot be read)."""
    items = [Item.from_dict(d) for d in json.loads(row["items"])]
    loaded = load_items(items, as_bytes=True)
    return {"shard": row["shard"], "items": row["items"],
            "data": [b"" if isinstance(x, str) else cast(ImageBytes, x).data for x in loaded],
            "problem": [x if isinstance(x, str) else "" for x in loaded]}


class ShardTagger:
    """A Ray actor: one Tagger, built once by the shared factory, tagging whole shards."""

    def __init__(self, config: dict[str, Any], extra_columns: list[str], save_features: bool, shard_size: int,
                 threads: int | None = None) -> None:
        if threads:  # before torch starts its thread pool
            os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        from emoclip.tagging.config import TaggerConfig, build_tagger

        if threads:
            torch.set_num_threads(threads)
        self.tagger = build_tagger(TaggerConfig.from_dict(config))
        # The layout and the encoder identity come from the model the actor really runs: the driver
        # never builds one, and records (or checks) what its actors report.
        self.layout = ShardLayout.for_tagger(self.tagger, extra_columns, save_features)
        self.layout_json = json.dumps(self.layout.to_dict(), sort_keys=True)
        self.encoder = json.dumps(self.tagger.backbone.identity(), sort_keys=True)
        self.shard_size = shard_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from emoclip.encoder.decode import ImageBytes

        out: dict[str, list] = {"shard": [], "parquet": [], "rows": [], "errors": [], "seconds": [], "encoder": [],
                                "layout": []}
        for shard, items_json, data, problems in zip(batch["shard"], batch["items"], batch["data"],
                                                     batch["problem"], strict=True):
            items = [Item.from_dict(d) for d in json.loads(items_json)]
            loaded = [problem or ImageBytes(item.name, bytes(blob))
                      for item, blob, problem in zip(items, data, problems, strict=True)]
            result = tag_shard(self.tagger, self.layout, int(shard), items, loaded,
                               first_row=int(shard) * self.shard_size)
            for key in ("parquet", "rows", "errors", "seconds"):
                out[key].append(getattr(result, key))
            out["shard"].append(result.index)
            out["encoder"].append(self.encoder)
            out["layout"].append(self.layout_json)
        return out


def _cluster_plan(ray: Any, config: dict[str, Any], actors: int | None, cpus_per_actor: float
                  ) -> tuple[int, dict[str, Any]]:
    """How many actors and what each holds: one GPU each where the cluster has GPUs (and the device
    allows), otherwise ``cpus_per_actor`` CPUs each."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    use_gpu = gpus > 0 and not str(config.get("device", "auto")).startswith("cpu")
    if use_gpu:
        return actors or gpus, {"num_gpus": 1, "num_cpus": cpus_per_actor}
    spare = resources.get("CPU", 1) - 1  # one CPU left to the read tasks and the driver
    return actors or max(1, int(spare // cpus_per_actor)), {"num_cpus": cpus_per_actor}


def actor_threads(resources: dict[str, Any]) -> int:
    """torch threads in an actor: one per whole CPU it reserves (at least one). More threads than
    reserved cores would fight the other actors for them; fewer would leave reserved cores idle."""
    return max(1, int(resources.get("num_cpus", 1)))


RAY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune")


@contextlib.contextmanager
def ray_logs_to_file(folder: Path) -> Iterator[Path | None]:
    """Ray's own Python log lines (Ray Data prints its plan, and an error-level line at shutdown) go to
    ``DIR/_emoclip_ray.log`` instead of the user's terminal, unless emoclip runs with ``-v``."""
    if log.isEnabledFor(logging.INFO):
        yield None
        return
    path = folder / RAY_LOG_NAME
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    saved = {}
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.propagate)
        logger.handlers[:] = [h for h in logger.handlers if isinstance(h, logging.FileHandler)] + [handler]
        logger.propagate = False
    try:
        yield path
    finally:
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.propagate = propagate
        handler.close()


def _ray_children() -> list[Any]:
    """This process's descendants that belong to Ray (what a local ``ray.init`` started)."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("ray" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


class RayGuard:
    """Starts ``ray_reaper`` before a local Ray and tells it which processes Ray started, so they end
    with the driver even when the driver is killed (the guard outlives it in its own session)."""

    def __init__(self) -> None:
        try:
            import psutil  # noqa: F401 (Ray depends on it; without it there is no guard)
        except ImportError:
            self.process = None
            return
        self.process = subprocess.Popen([sys.executable, "-m", "emoclip.tagging.ray_reaper"], stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                                        start_new_session=True)

    def report(self) -> None:
        """Send the Ray processes running now (called after ``ray.init`` and once the job runs)."""
        if self.process is None or self.process.stdin is None:
            return
        import psutil

        lines = []
        for child in _ray_children():
            if child.pid != self.process.pid:
                with contextlib.suppress(psutil.Error):
                    lines.append(f"{child.pid} {child.create_time()}\n")
        with contextlib.suppress(OSError):
            self.process.stdin.write("".join(lines))
            self.process.stdin.flush()

    def close(self) -> None:
        """After ``ray.shutdown()``: the guard stops whatever is left, then exits."""
        if self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()


def run_ray(job: ShardJob, tagger: Any, progress: ShardProgress, ray_address: str | None = None,
            actors: int | None = None, cpus_per_actor: float = 1, **_: Any) -> None:
    """Run the job's remaining shards on Ray (joining ``ray_address``/RAY_ADDRESS, else a local Ray
    that this run starts, guards and ends).

    The signature is every engine's (``shards.ENGINES``); ``tagger`` is None: the driver builds no
    model, each actor builds its own from ``job.config``."""
    ray = _import_ray()
    with ray_logs_to_file(job.shards.folder) as log_file:
        started_here = not ray.is_initialized()
        guard = None
        if started_here:
            address = ray_address or os.environ.get("RAY_ADDRESS") or None
            log.info("starting Ray (%s)", address or "local")
            if address is None:
                guard = RayGuard()
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=False)
            except Exception as exc:  # e.g. the GCS did not come up in time on an overloaded machine
                if guard:
                    guard.close()
                lines = str(exc).strip().splitlines()
                raise EmoclipError(f"Ray could not start ({lines[-1][:300] if lines else type(exc).__name__}); "
                                   "retry, or start it yourself (`ray start --head`) and pass --ray-address auto"
                                   ) from None
            if guard:
                guard.report()
        try:
            _run_on_ray(ray, job, progress, actors, cpus_per_actor, guard)
        except EmoclipError as exc:
            if log_file is not None and log_file.exists():
                raise EmoclipError(f"{exc} (Ray's own log: {log_file})") from None
            raise
        finally:
            if started_here:
                ray.shutdown()
            if guard:
                guard.close()


def _run_on_ray(ray: Any, job: ShardJob, progress: ShardProgress, actors: int | None, cpus_per_actor: float,
                guard: RayGuard | None) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    config = job.config.to_dict()
    size, resources = _cluster_plan(ray, config, actors, cpus_per_actor)
    actor_kwargs = {"config": config, "extra_columns": list(job.inputs.extra_columns),
                    "save_features": job.save_features, "shard_size": job.shard_size,
                    "threads": actor_threads(resources)}
    log.info("Ray: %d actor(s), each %s", size, resources)
    todo = job.shards.todo()
    rows = [{"shard": i, "items": json.dumps([item.to_dict() for item in job.items(i)])} for i in todo]
    dataset = (ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
               .map(read_shard, num_cpus=READ_TASK_CPUS)
               .map_batches(ShardTagger, batch_size=1, batch_format="numpy", fn_constructor_kwargs=actor_kwargs,
                            **resources, **actor_pool_arguments(size)))
    try:
        reported = False
        for batch in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
            if guard and not reported:  # the actors and Ray Data's own processes exist by now
                guard.report()
                reported = True
            for shard, parquet, count, errors, seconds, encoder, layout in zip(
                    batch["shard"], batch["parquet"], batch["rows"], batch["errors"], batch["seconds"],
                    batch["encoder"], batch["layout"], strict=True):
                job.shards.check_encoder(json.loads(str(encoder)))  # every actor runs the recorded encoder
                job.shards.check_layout(ShardLayout.from_dict(json.loads(str(layout))))
                result = ShardResult(int(shard), bytes(parquet), int(count), int(errors), float(seconds))
                job.shards.commit(result)
                progress.shard(result, images_counted=False)
    except ray.exceptions.RayError as exc:  # e.g. an actor could not load the model on some node
        cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise EmoclipError(f"the Ray job failed ({cause}); the {len(job.shards.done)} committed shards are "
                           "kept: fix the cause and rerun the same command to resume") from None
