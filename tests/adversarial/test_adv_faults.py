"""Faults: full and read-only disks, failing caches, odd output targets, stale temporaries, signals,
and a kill at every write step of train and evaluate. Nothing a user already had is lost or
changed, nothing is left half-written, and resumed training is bit-identical to an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.adversarial.conftest import (
    TINY,
    assert_no_traceback,
    assert_refused,
    assert_usage_error,
    cli,
    cli_process,
    good_jpeg,
    temporaries,
    tree_digest,
)

pytestmark = pytest.mark.timeout(180)
LABELS = ("--labels", "calm,tense")


# -- disks that fail -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _tmpfs(where: Path, size: str = "1m", readonly: bool = False):
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()[:80]}); needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system of ``folder`` up to ``leave`` bytes."""
    with open(folder / "filler", "wb") as handle, contextlib.suppress(OSError):
        while True:
            free = shutil.disk_usage(folder).free
            if free <= leave:
                break
            handle.write(b"\0" * min(1 << 16, max(1, free - leave)))
            handle.flush()


@pytest.fixture
def images(tmp_path) -> list[Path]:
    return [good_jpeg(tmp_path / "in" / f"{i}.jpg", seed=i) for i in range(4)]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_output_on_a_full_disk_is_refused_and_the_previous_file_kept(tmp_path, images, fmt):
    with _tmpfs(tmp_path / "disk") as disk:
        target = disk / f"tags.{fmt}"
        target.write_bytes(b"previous results\n")
        _fill(disk)
        outcome = cli("predict", *images, *TINY, *LABELS, "--no-cache", "-o", target)
        assert_refused(outcome, rf"No space left on device: {target}; free some space")
        assert target.read_bytes() == b"previous results\n"
        assert temporaries(disk) == []


def test_run_folder_on_a_full_disk_is_refused_and_the_previous_run_kept(labelled, tmp_path):
    root, split = labelled
    with _tmpfs(tmp_path / "disk", size="4m") as disk:
        args = ["evaluate", "--root", root, "--split-file", split, *TINY, "-t", "emotionroi6", "--no-cache",
                "--out", disk / "run"]
        assert cli(*args, "--name", "old").status == 0
        before = tree_digest(disk / "run")
        _fill(disk)
        assert_refused(cli(*args, "--name", "new"), r"No space left on device")
        assert tree_digest(disk / "run") == before
        (disk / "filler").unlink()
        assert cli(*args, "--name", "new").status == 0
        assert temporaries(disk) == []


def test_training_on_a_full_disk_is_refused_in_one_line(labelled, tmp_path):
    root, split = labelled
    with _tmpfs(tmp_path / "disk") as disk:
        _fill(disk, leave=2048)
        outcome = cli("train", "--method", "clipe-ce", "-t", "emotionroi6", "--root", root, "--split-file", split,
                      *TINY, "--epochs", 1, "--no-progress", "--no-cache", "--out", disk / "run")
        assert_refused(outcome, r"No space left on device")


def test_output_in_a_read_only_folder_is_refused(tmp_path, images):
    with _tmpfs(tmp_path / "ro", readonly=True) as ro:
        assert_refused(cli("predict", *images, *TINY, *LABELS, "-o", ro / "t.csv"),
                       r"Read-only file system: .*t\.csv; the file system is read-only")


@pytest.mark.parametrize("place", ["full", "read_only", "under_a_file"])
def test_failing_cache_degrades_to_one_warning_and_the_run_completes(tmp_path, images, place):
    if place == "under_a_file":
        (tmp_path / "file").write_text("not a folder")
        context = contextlib.nullcontext(tmp_path / "file" / "cache")
    else:
        context = _tmpfs(tmp_path / "cache", size="64k", readonly=place == "read_only")
    with context as cache:
        if place == "full":
            _fill(cache)
        outcome = cli("predict", *images, *TINY, *LABELS, "--cache-dir", cache)
        assert_no_traceback(outcome)
        assert outcome.status == 0, outcome.stderr
        assert len(outcome.rows()) == len(images) and all(r["error"] is None for r in outcome.rows())
        assert outcome.stderr.count("cannot be written") == 1


@pytest.mark.parametrize("poison", ["nan", "inf", "short", "long", "empty"])
def test_poisoned_cache_entry_is_a_miss(tmp_path, images, poison):
    cache = tmp_path / "cache"
    fresh = cli("predict", images[0], *TINY, *LABELS, "--no-cache").rows()[0]
    assert cli("predict", images[0], *TINY, *LABELS, "--cache-dir", cache).status == 0
    [entry] = [p for p in cache.rglob("*.f32")]
    values = np.fromfile(entry, dtype=np.float32)
    damaged = {"nan": np.full_like(values, np.nan), "inf": np.full_like(values, np.inf), "short": values[:-1],
               "long": np.concatenate([values, values]), "empty": values[:0]}[poison]
    damaged.tofile(entry)
    outcome = cli("-v", "predict", images[0], *TINY, *LABELS, "--cache-dir", cache)
    row = outcome.rows()[0]
    # Exact by construction: the same one image, encoded by the same command in a batch of one on the same
    # machine each time (the poisoned entry is a miss, re-encoded and stored whole).
    assert outcome.status == 0 and row["probability"] == fresh["probability"]
    assert np.array_equal(np.fromfile(entry, dtype=np.float32), values)


# -- output targets ----------------------------------------------------------------------------------------------
def test_output_through_a_symlink_writes_the_target_and_keeps_the_link(tmp_path, images):
    real = tmp_path / "real.csv"
    real.write_text("old\n")
    os.symlink(real, tmp_path / "link.csv")
    outcome = cli("predict", *images, *TINY, *LABELS, "-o", tmp_path / "link.csv")
    assert outcome.status == 0
    assert (tmp_path / "link.csv").is_symlink() and real.read_text().startswith("path,")
    assert temporaries(tmp_path) == []


def test_output_to_dev_stdout_writes_the_rows(tmp_path, images):
    child = ForkedCli(["predict", *images, *TINY, *LABELS, "-o", "/dev/stdout"], stdout_pipe=True)
    status, stderr = child.wait()
    assert status == 0, stderr
    assert len([json.loads(line) for line in child.stdout.decode().splitlines()]) == len(images)
    assert Path("/dev/stdout").is_symlink()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_output_files_respect_the_umask(tmp_path, images, umask, mode):
    previous = os.umask(umask)
    try:
        assert cli("predict", *images, *TINY, *LABELS, "-o", tmp_path / "t.csv").status == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "t.csv").stat().st_mode) == mode


def test_replaced_output_keeps_its_mode(tmp_path, images):
    (tmp_path / "t.csv").write_text("old")
    os.chmod(tmp_path / "t.csv", 0o640)
    assert cli("predict", *images, *TINY, *LABELS, "-o", tmp_path / "t.csv").status == 0
    assert stat.S_IMODE((tmp_path / "t.csv").stat().st_mode) == 0o640


@pytest.mark.parametrize(("target", "pattern"), [("file.txt/t.csv", r"Not a directory|not a folder"),
                                                 ("file.txt/sub/t.csv", r"Not a directory|not a folder"),
                                                 ("folder", r"is a directory"),
                                                 ("run_as_file", r"is a file")])
def test_output_where_a_file_or_folder_is_in_the_way_is_refused(labelled, tmp_path, images, target, pattern):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "run_as_file").write_text("x")
    if target == "run_as_file":
        root, split = labelled
        outcome = cli("evaluate", "--root", root, "--split-file", split, *TINY, "-t", "emotionroi6",
                      "--out", tmp_path / target)
    else:
        outcome = cli("predict", *images, *TINY, *LABELS, "-o", tmp_path / target)
    if target.startswith("file.txt"):
        assert_refused(outcome, pattern)
    else:  # click refuses these itself, before emoclip runs, in emoclip's one-line form
        assert_usage_error(outcome, pattern)
    assert (tmp_path / "file.txt").read_text() == "x" and (tmp_path / "run_as_file").read_text() == "x"


# -- stale temporaries -------------------------------------------------------------------------------------------
DEAD_PID = 4_000_000  # above any pid_max: never a live process


def test_stale_output_temporary_of_a_killed_run_is_removed(tmp_path, images):
    stale = tmp_path / f".t.csv.{DEAD_PID}.abc123.tmp"
    stale.write_text("half")
    alive = tmp_path / f".t.csv.{os.getpid()}.def456.tmp"  # a live process may still be writing this one
    alive.write_text("busy")
    assert cli("predict", *images, *TINY, *LABELS, "-o", tmp_path / "t.csv").status == 0
    assert not stale.exists() and alive.exists()


def test_stale_run_folder_staging_is_removed(labelled, tmp_path):
    root, split = labelled
    stale = tmp_path / f".run.{DEAD_PID}.abc123.tmp"
    stale.mkdir()
    (stale / "metrics.json").write_text("{}")
    outcome = cli("evaluate", "--root", root, "--split-file", split, *TINY, "-t", "emotionroi6", "--out",
                  tmp_path / "run")
    assert outcome.status == 0 and not stale.exists()


def test_half_switched_run_folder_is_put_back(labelled, tmp_path):
    """A run killed between the two renames of a switch (no RENAME_EXCHANGE) left the old folder aside."""
    root, split = labelled
    args = ["evaluate", "--root", root, "--split-file", split, *TINY, "-t", "emotionroi6", "--out", tmp_path / "run"]
    assert cli(*args, "--name", "old").status == 0
    before = tree_digest(tmp_path / "run")
    os.rename(tmp_path / "run", tmp_path / f".run.{DEAD_PID}.abc123.old.tmp")
    from emoclip.core.atomic import remove_stale_temporaries

    remove_stale_temporaries(tmp_path / "run")
    assert tree_digest(tmp_path / "run") == before and temporaries(tmp_path) == []


def test_stale_cache_temporary_is_removed(tmp_path, images):
    cache = tmp_path / "cache"
    assert cli("predict", images[0], *TINY, *LABELS, "--cache-dir", cache).status == 0
    [tmp_folder] = list(cache.glob("*/tmp"))
    stale = tmp_folder / f".{'ab' * 16}.{DEAD_PID}.xyz.tmp"
    stale.write_bytes(b"half")
    assert cli("predict", images[0], *TINY, *LABELS, "--cache-dir", cache).status == 0
    assert not stale.exists()


# -- signals -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    for i in range(600):
        good_jpeg(folder / f"{i:03d}.jpg", seed=i, size=(96, 96))
    return folder


class ForkedCli:
    """The CLI in a forked child of this (already warmed-up) process: a real process to signal, without
    paying the seconds-long torch import of a fresh interpreter. ``wait`` gives (exit status, stderr)."""

    def __init__(self, args: list, stdout_pipe: bool = False) -> None:
        err_read, err_write = os.pipe()
        out_read, out_write = os.pipe() if stdout_pipe else (None, None)
        self.pid = os.fork()
        if self.pid == 0:
            code = 99
            try:
                os.close(err_read)
                if out_write is not None:
                    os.dup2(out_write, 1)
                torch.set_num_threads(1)
                from click.testing import CliRunner

                from emoclip.cli.main import main

                result = CliRunner().invoke(main, [str(a) for a in args])
                os.write(err_write, result.stderr.encode("utf-8", "backslashreplace"))
                code = result.exit_code
            finally:
                os._exit(code)
        os.close(err_write)
        if out_write is not None:
            os.close(out_write)
        self.err, self.out, self.stdout = err_read, out_read, b""

    def running(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def wait(self) -> tuple[int, str]:
        if self.out is not None:
            with os.fdopen(self.out, "rb") as handle:
                self.stdout = handle.read()
        with os.fdopen(self.err, "rb") as handle:
            stderr = handle.read().decode()
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status), stderr


def _signal_when(pid: int, running, ready, sig: int, limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        assert running(), "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.01)
    os.kill(pid, sig)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_predict_exits_130_and_keeps_the_previous_output(tmp_path, many_images, sig):
    target = tmp_path / "tags.jsonl"
    target.write_text("previous\n")
    child = ForkedCli(["predict", many_images, *TINY, *LABELS, "--no-cache", "--batch-size", 1, "--workers", 1,
                       "-o", target])
    _signal_when(child.pid, child.running, lambda: any(p.stat().st_size > 0 for p in temporaries(tmp_path)), sig)
    status, stderr = child.wait()
    assert status == 130, stderr
    assert "emoclip: interrupted" in stderr and "Traceback" not in stderr
    assert target.read_text() == "previous\n" and temporaries(tmp_path) == []


@pytest.mark.slow
def test_sigterm_to_the_installed_command_exits_130(tmp_path, many_images):
    """The real entry point in a fresh interpreter (click's standalone mode turns Ctrl-C into exit 1 by itself)."""
    target = tmp_path / "tags.jsonl"
    process = cli_process("predict", many_images, *TINY, *LABELS, "--no-cache", "--batch-size", 1, "--workers", 1,
                          "-o", target)
    _signal_when(process.pid, lambda: process.poll() is None, lambda: bool(temporaries(tmp_path)), signal.SIGTERM,
                 limit=150)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr and not target.exists() and temporaries(tmp_path) == []


@pytest.mark.slow
def test_sigkill_leaves_a_temporary_that_the_next_run_removes(tmp_path, many_images):
    target = tmp_path / "tags.jsonl"
    child = ForkedCli(["predict", many_images, *TINY, *LABELS, "--no-cache", "--batch-size", 1, "--workers", 1,
                       "-o", target])
    _signal_when(child.pid, child.running, lambda: bool(temporaries(tmp_path)), signal.SIGKILL)
    child.wait()
    assert not target.exists() and len(temporaries(tmp_path)) == 1
    outcome = cli("predict", good_jpeg(tmp_path / "one.jpg"), *TINY, *LABELS, "-o", target)
    assert outcome.status == 0 and temporaries(tmp_path) == []


@pytest.mark.slow
def test_sigterm_during_evaluate_keeps_the_previous_run_folder(labelled, tmp_path):
    root, split = labelled
    args = ["evaluate", "--root", root, "--split-file", split, *TINY, "-t", "emotionroi6", "--out", tmp_path / "run"]
    assert cli(*args, "--name", "old").status == 0
    before = tree_digest(tmp_path / "run")
    child = ForkedCli([*args, "--name", "new", "--no-cache"])
    _signal_when(child.pid, child.running, lambda: any(p.is_dir() for p in temporaries(tmp_path)), signal.SIGTERM)
    status, stderr = child.wait()
    assert status == 130, stderr
    assert tree_digest(tmp_path / "run") == before and temporaries(tmp_path) == []


# -- a kill at every write step ------------------------------------------------------------------------------------
def _in_staging(path) -> bool:
    return any(part.startswith(".") and part.endswith(".tmp") for part in Path(os.fsdecode(path)).parent.parts)


def run_forked(args: list, kill_before: int | None = None, kill_after: int | None = None) -> tuple[int, int]:
    """The CLI in a forked child that dies like SIGKILL (``os._exit``: no cleanup, no finally) just before or
    just after its k-th write commit (a rename into place). Returns (exit status, commits seen)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 99
        try:
            os.close(read_end)
            torch.set_num_threads(1)
            from click.testing import CliRunner

            import emoclip.core.atomic as atomic
            from emoclip.cli.main import main

            count = [0]

            def commit(real):
                def wrapped(*a, **k):
                    target = a[1]
                    if _in_staging(target) and real is not atomic._exchange:
                        return real(*a, **k)
                    count[0] += 1
                    os.write(write_end, b".")
                    if count[0] == kill_before:
                        os._exit(137)
                    result = real(*a, **k)
                    if count[0] == kill_after:
                        os._exit(137)
                    return result
                return wrapped

            os.replace, os.rename = commit(os.replace), commit(os.rename)
            atomic._exchange = commit(atomic._exchange)
            code = CliRunner().invoke(main, [str(a) for a in args]).exit_code
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        seen = len(handle.read())
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen


TRAIN_STEPS = 11  # config.yaml; 2 epochs × (state, model weights, model.json, log); the run folder switch; summary


@pytest.fixture(scope="module")
def train_args(labelled):
    root, split = labelled
    return ["train", "--method", "clipe-ce", "-t", "emotionroi6", "--root", root, "--split-file", split, *TINY,
            "--epochs", 2, "--val-fraction", 0, "--no-progress", "--no-cache"]


@pytest.fixture(scope="module")
def uninterrupted(train_args, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    status, seen = run_forked([*train_args, "--out", out])
    assert status == 0 and seen == TRAIN_STEPS, (status, seen)
    return out


def _same_tensors(a: Path, b: Path) -> None:
    left, right = load_file(a), load_file(b)
    assert left.keys() == right.keys()
    for key in left:
        # bit-identical by construction: both runs train on this machine, in this test, over the same seeded
        # batches with the same kernels; resume restores every tensor and generator state exactly
        assert torch.equal(left[key], right[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("point", [f"before{k}" for k in range(1, TRAIN_STEPS + 1)] + ["after2", "after6"])
def test_training_killed_at_any_write_step_resumes_bit_identically(train_args, uninterrupted, tmp_path, point):
    out = tmp_path / "run"
    k = int(point.removeprefix("before").removeprefix("after"))
    kill = {"kill_before": k} if point.startswith("before") else {"kill_after": k}
    status, _ = run_forked([*train_args, "--out", out], **kill)
    assert status == 137
    if (out / "model.json").exists() and (out / "model.safetensors").exists():
        # a half-updated model is refused, never used: either whole or the one-line refusal
        outcome = cli("predict", good_jpeg(tmp_path / "x.jpg"), "--checkpoint", out, "--no-cache")
        assert_no_traceback(outcome)
        assert outcome.status == 0 or "half-written" in outcome.stderr
    resumed = cli(*train_args, "--out", out, "--resume")
    assert_no_traceback(resumed)
    assert resumed.status == 0, resumed.stderr
    _same_tensors(out / "model.safetensors", uninterrupted / "model.safetensors")
    _same_tensors(out / "last.safetensors", uninterrupted / "last.safetensors")
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == json.loads((uninterrupted / "metrics.json").read_text())["accuracy"]
    assert temporaries(tmp_path) == []


EVAL_STEPS = 6  # metrics.json, predictions.csv, confusion.png, per_class.png, report.md (staged); the switch


@pytest.mark.slow
@pytest.mark.parametrize("point", [f"before{k}" for k in range(1, EVAL_STEPS + 1)] + [f"after{EVAL_STEPS}"])
def test_evaluate_killed_at_any_write_step_leaves_the_old_run_or_the_new_one_whole(labelled, tmp_path, point):
    root, split = labelled
    args = ["evaluate", "--root", root, "--split-file", split, *TINY, "-t", "emotionroi6", "--no-cache",
            "--mistakes", 0, "--out", tmp_path / "run"]
    assert cli(*args, "--name", "old").status == 0
    old = tree_digest(tmp_path / "run")
    k = int(point.removeprefix("before").removeprefix("after"))
    kill = {"kill_before": k} if point.startswith("before") else {"kill_after": k}

    # every write counts here, the staged ones too: a kill among them must leave the old run whole
    status, _ = _run_counting_staged([*args, "--name", "new"], **kill)
    assert status == 137
    run = tmp_path / "run"
    name = json.loads((run / "metrics.json").read_text())["run"]["name"]
    assert f"# Evaluation: {name}" in (run / "report.md").read_text()  # never new metrics beside an old report
    if point.startswith("before"):
        assert tree_digest(run) == old
    else:
        assert name == "new"
    assert cli(*args, "--name", "again").status == 0
    assert temporaries(tmp_path) == []


def _run_counting_staged(args, kill_before=None, kill_after=None):
    """Like ``run_forked`` but counting staged writes too (each is a step of evaluate)."""
    global _in_staging
    original = _in_staging
    _in_staging = lambda path: False  # noqa: E731 - count every rename
    try:
        return run_forked(args, kill_before, kill_after)
    finally:
        _in_staging = original
