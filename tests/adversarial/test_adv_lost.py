"""Lost images in evaluate and train: scores over fewer images are never silent — the run says how
many were lost, metrics.json and summary.json count them, and the exit status is 1."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.adversarial.conftest import TINY, assert_no_traceback, assert_refused, cli, tree_digest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def damaged(labelled, tmp_path) -> tuple[Path, Path, list[str]]:
    """The labelled data with one test image truncated and another deleted."""
    root, split = labelled
    copy = tmp_path / "images"
    shutil.copytree(root, copy)
    rows = list(csv.reader(split.read_text().splitlines(), delimiter="\t"))[1:]
    test = [r[0] for r in rows if r[2] == "test"]
    (copy / test[0]).write_bytes((copy / test[0]).read_bytes()[:100])
    (copy / test[1]).unlink()
    return copy, split, test[:2]


def test_evaluate_counts_unreadable_and_missing_images_and_exits_1(damaged, tmp_path):
    root, split, lost = damaged
    outcome = cli("evaluate", "--root", root, "--split-file", split, *TINY, "-t", "emotionroi6", "--no-cache",
                  "--out", tmp_path / "run")
    assert_no_traceback(outcome)
    assert outcome.status == 1
    assert "2 of 6 images unreadable" in outcome.stdout
    assert "emoclip: 2 of 6 images could not be read and were left out of the scores" in outcome.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["n_failed"] == 2
    assert sorted(Path(p).relative_to(root).as_posix() for p in metrics["failed"]) == sorted(lost)
    rows = list(csv.DictReader((tmp_path / "run" / "predictions.csv").open(newline="")))
    assert len(rows) == 6 and sum(bool(r["error"]) for r in rows) == 2
    assert "## Unreadable files" in (tmp_path / "run" / "report.md").read_text()


def test_evaluate_with_every_image_unreadable_is_refused_and_keeps_the_previous_run(labelled, tmp_path):
    root, split = labelled
    args = ["evaluate", "--root", root, "--split-file", split, *TINY, "-t", "emotionroi6", "--no-cache"]
    assert cli(*args, "--out", tmp_path / "run").status == 0
    before = tree_digest(tmp_path / "run")
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    for image in broken.rglob("*.jpg"):
        image.write_bytes(b"not a jpeg")
    outcome = cli("evaluate", "--root", broken, "--split-file", split, *TINY, "-t", "emotionroi6", "--no-cache",
                  "--out", tmp_path / "run")
    assert_refused(outcome, r"none of the 6 images of .* could be read \(first: .*not an image", status=1)
    assert tree_digest(tmp_path / "run") == before


def test_train_counts_lost_images_in_summary_and_exits_1(damaged, tmp_path):
    root, split, _ = damaged
    outcome = cli("train", "--method", "clipe-ce", "-t", "emotionroi6", "--root", root, "--split-file", split, *TINY,
                  "--epochs", 1, "--no-progress", "--no-cache", "--out", tmp_path / "run")
    assert_no_traceback(outcome)
    assert outcome.status == 1, outcome.stderr
    assert "emoclip: 2 of 18 images could not be read" in outcome.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["lost"] == {"train": 0, "val": 0, "test": 2} and sum(summary["listed"].values()) == 18
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_failed"] == 2


def test_train_with_every_image_unreadable_is_refused(labelled, tmp_path):
    root, split = labelled
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    for image in broken.rglob("*.jpg"):
        image.write_bytes(b"")
    outcome = cli("train", "--method", "clipe-ce", "-t", "emotionroi6", "--root", broken, "--split-file", split,
                  *TINY, "--epochs", 1, "--no-progress", "--no-cache", "--out", tmp_path / "run")
    assert_refused(outcome, r"none of the 12 training images could be read .*empty file", status=1)
