"""Hostile shard folders: damaged shards, manifests and commit logs, and merges into their own input.

Each class of damage is generated in code on a copy of one finished job. The rules checked:
a resume relies only on shards whose file matches its commit (size and SHA-256) and recomputes the
rest, so its rows equal the undamaged job's bit for bit (the same computation, in this process);
``merge`` refuses, in one line naming the shard, anything incomplete or changed; a damaged
manifest or commit log is one line whose fix is ``--overwrite``, and ``--overwrite`` recovers;
``merge`` never writes inside the folder it reads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.adversarial.conftest import TINY, assert_no_traceback, assert_refused, cli, good_jpeg, tree_digest

pd = pytest.importorskip("pandas")
pytestmark = pytest.mark.timeout(120)

MANIFEST = "_emoclip_manifest.json"
COMMITS = "_emoclip_commits.jsonl"
JOB = [*TINY, "--no-cache", "--shard-size", "2", "--batch-size", "2", "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("adv-shard-images")
    for i in range(7):
        good_jpeg(folder / f"{i}.jpg", seed=300 + i)
    return folder


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> Path:
    """The undamaged job: 7 images in 4 shards."""
    out = tmp_path_factory.mktemp("adv-shard-ref") / "out"
    outcome = cli("predict", images, *JOB, "--output-dir", out)
    assert outcome.status == 0, outcome.stderr
    return out


@pytest.fixture
def job(reference, tmp_path) -> Path:
    copy = tmp_path / "job"
    shutil.copytree(reference, copy)
    return copy


def rows(folder: Path):
    return pd.read_parquet(folder)


def shard(folder: Path, index: int) -> Path:
    return folder / f"part-{index:05d}.parquet"


# -- damaged shard files: a resume recomputes them, merge refuses them ---------------------------------
def _other_job_shard(folder: Path, images: Path) -> None:
    other = folder.parent / "other"
    assert cli("predict", images, *JOB, "--labels", "happy,sad", "--output-dir", other).status == 0
    shutil.copy(shard(other, 1), shard(folder, 1))  # a shard of another taxonomy, other columns


SHARD_DAMAGE: dict[str, Callable[[Path, Path], None]] = {
    "deleted": lambda f, _: shard(f, 1).unlink(),
    "truncated": lambda f, _: shard(f, 1).write_bytes(shard(f, 1).read_bytes()[:200]),
    "emptied": lambda f, _: shard(f, 1).write_bytes(b""),
    "replaced by a sibling": lambda f, _: shutil.copy(shard(f, 2), shard(f, 1)),
    "one byte flipped": lambda f, _: shard(f, 1).write_bytes(
        (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:])(shard(f, 1).read_bytes())),
    "from another taxonomy": _other_job_shard,
    "last shard deleted": lambda f, _: shard(f, 3).unlink(),
}


@pytest.mark.parametrize("damage", SHARD_DAMAGE, ids=list(SHARD_DAMAGE))
def test_merge_refuses_a_damaged_shard_naming_it(damage, job, images, tmp_path):
    SHARD_DAMAGE[damage](job, images)
    before = tree_digest(job)
    outcome = cli("merge", job, "-o", tmp_path / "all.parquet")
    assert_refused(outcome, r"part-0000[13]\.parquet")
    assert not (tmp_path / "all.parquet").exists() and tree_digest(job) == before


@pytest.mark.parametrize("damage", SHARD_DAMAGE, ids=list(SHARD_DAMAGE))
def test_resume_recomputes_a_damaged_shard(damage, job, images, reference, tmp_path):
    SHARD_DAMAGE[damage](job, images)
    outcome = cli("predict", images, *JOB, "--output-dir", job)
    assert_no_traceback(outcome)
    assert outcome.status == 0, outcome.stderr
    assert "1 computed now" in outcome.stderr, outcome.stderr
    pd.testing.assert_frame_equal(rows(job), rows(reference), check_exact=True)
    assert cli("merge", job, "-o", tmp_path / "all.csv").status == 0


# -- damaged manifests and commit logs: one line with the fix, and --overwrite recovers -----------------
def _edit_manifest(**changes) -> Callable[[Path, Path], None]:
    def edit(folder: Path, _: Path) -> None:
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest.update(changes)
        (folder / MANIFEST).write_text(json.dumps(manifest))
    return edit


def _write(name: str, data: bytes) -> Callable[[Path, Path], None]:
    return lambda folder, _: (folder / name).write_bytes(data)


def _log_lines(edit: Callable[[list[str]], list[str]]) -> Callable[[Path, Path], None]:
    def change(folder: Path, _: Path) -> None:
        lines = (folder / COMMITS).read_text().splitlines(keepends=True)
        (folder / COMMITS).write_text("".join(edit(lines)))
    return change


def _claim(field: str, value) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        record = json.loads(lines[0])
        record[field] = value
        return [json.dumps(record) + "\n", *lines[1:]]
    return edit


BOOKKEEPING_DAMAGE: dict[str, Callable[[Path, Path], None]] = {
    "manifest empty": _write(MANIFEST, b""),
    "manifest []": _write(MANIFEST, b"[]"),
    "manifest null": _write(MANIFEST, b"null"),
    "manifest {}": _write(MANIFEST, b"{}"),
    "manifest not UTF-8": _write(MANIFEST, b"\xff\xfe\x00{"),
    "manifest truncated": lambda f, _: (f / MANIFEST).write_bytes((f / MANIFEST).read_bytes()[:40]),
    "manifest shard count edited": _edit_manifest(shards=1999),
    "manifest shard size edited": _edit_manifest(shard_size=1),
    "manifest input count edited": _edit_manifest(inputs={"fingerprint": "x", "count": 3}),
    "manifest of an older format": _edit_manifest(emoclip_shards=1),
    "manifest deleted": lambda f, _: (f / MANIFEST).unlink(),
    "log line not JSON": _log_lines(lambda lines: [lines[0], "{oops\n", *lines[1:]]),
    "log claims more rows": _log_lines(_claim("rows", 5)),
    "log names shard 999": _log_lines(_claim("shard", 999)),
    "log names another file": _log_lines(_claim("file", "../../etc/passwd")),
    "log is a list": _log_lines(lambda lines: ["[]\n", *lines]),
}


@pytest.mark.parametrize("damage", BOOKKEEPING_DAMAGE, ids=list(BOOKKEEPING_DAMAGE))
def test_damaged_bookkeeping_is_one_line_and_overwrite_recovers(damage, job, images, reference, tmp_path):
    BOOKKEEPING_DAMAGE[damage](job, images)
    assert_refused(cli("merge", job, "-o", tmp_path / "all.parquet"), r"damaged|not an emoclip|older emoclip")
    before = tree_digest(job)
    assert_refused(cli("predict", images, *JOB, "--output-dir", job), r"--overwrite")
    assert tree_digest(job) == before  # a refusal touches nothing
    recovered = cli("predict", images, *JOB, "--output-dir", job, "--overwrite")
    assert recovered.status == 0, recovered.stderr
    pd.testing.assert_frame_equal(rows(job), rows(reference), check_exact=True)


LOG_LOSS: dict[str, Callable[[Path, Path], None]] = {
    "torn last line": lambda f, _: (f / COMMITS).write_bytes((f / COMMITS).read_bytes()[:-30]),
    "log emptied": _write(COMMITS, b""),
    "log deleted": lambda f, _: (f / COMMITS).unlink(),
}


@pytest.mark.parametrize("loss", LOG_LOSS, ids=list(LOG_LOSS))
def test_lost_commits_are_recomputed_never_trusted(loss, job, images, reference, tmp_path):
    """A kill during an append tears the last line; a lost log loses the commits: those shards are
    recomputed (their files are not believed without a commit) and the rows are the same."""
    LOG_LOSS[loss](job, images)
    assert_refused(cli("merge", job, "-o", tmp_path / "all.parquet"), r"not complete")
    outcome = cli("predict", images, *JOB, "--output-dir", job)
    assert outcome.status == 0, outcome.stderr
    pd.testing.assert_frame_equal(rows(job), rows(reference), check_exact=True)
    assert cli("merge", job, "-o", tmp_path / "all.parquet").status == 0


# -- merge never writes inside its input -----------------------------------------------------------------
INSIDE = ["all.parquet", MANIFEST, COMMITS, "part-00000.parquet", "sub/all.csv", "../job/all.jsonl"]


@pytest.mark.parametrize("target", INSIDE)
def test_merge_refuses_an_output_inside_its_input(target, job):
    before = tree_digest(job)
    assert_refused(cli("merge", job, "-o", f"{job}/{target}"), r"inside the shard folder")
    assert tree_digest(job) == before and not (job / "sub").exists()


def test_merge_writes_every_row_once_in_input_order(job, images, tmp_path):
    assert cli("merge", job, "-o", tmp_path / "all.jsonl").status == 0
    merged = [json.loads(line)["path"] for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert merged == [str(images / f"{i}.jpg") for i in range(7)]


NO_TORCH = """
import sys
from emoclip.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
assert "torch" not in sys.modules and "open_clip" not in sys.modules, "torch was imported"
sys.exit(code)
"""


@pytest.mark.parametrize("case", ["merge", "refused resume", "damaged manifest"])
def test_merge_and_refusals_never_import_torch(case, job, images, tmp_path):
    """`merge`, a refused resume and a damaged-folder refusal answer before the seconds-long torch import."""
    import subprocess
    import sys

    if case == "damaged manifest":
        (job / MANIFEST).write_text("[]")
    args = {"merge": ["merge", job, "-o", tmp_path / "all.parquet"],
            "refused resume": ["predict", images, *JOB, "--top-k", "1", "--output-dir", job],
            "damaged manifest": ["predict", images, *JOB, "--output-dir", job]}[case]
    done = subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == (0 if case == "merge" else 2), done.stderr
    assert "Traceback" not in done.stderr
