"""`emoclip evaluate` and `aggregate` end to end, cross-taxonomy scoring, and a real-data run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from emoclip.cli.main import main
from emoclip.evaluation.evaluate import common_level
from emoclip.evaluation.metrics import classification_metrics
from emoclip.labels.taxonomy import load_taxonomy
from tests.conftest import EMOTION6, make_split_data
from tests.conftest import TINY_CLI as TINY
from tests.conftest import run_cli as run


@pytest.fixture(scope="module")
def six_class_data(tmp_path_factory):
    return make_split_data(tmp_path_factory.mktemp("six"), per_class=3)


def test_evaluate_writes_the_run_folder_and_reuses_the_cache(six_class_data, tmp_path):
    root, split = six_class_data
    args = ["evaluate", "--root", root, "--split-file", split, "-t", "emotionroi6", "--also", "polarity", *TINY,
            "--cache-dir", tmp_path / "cache"]
    first = run(*args, "--out", tmp_path / "r1")
    assert first.exit_code == 0, first.output
    for name in ("metrics.json", "predictions.csv", "confusion.png", "per_class.png", "report.md"):
        assert (tmp_path / "r1" / name).stat().st_size > 0
    m = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert m["n"] == 6 and m["cache"] == {"hits": 0, "misses": 6}
    assert set(m) >= {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "coarse"}
    assert "polarity" in m["coarse"]
    assert "most confident mistakes" in (tmp_path / "r1" / "report.md").read_text().lower()
    assert run(*args, "--out", tmp_path / "r2").exit_code == 0
    second = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert second["cache"] == {"hits": 6, "misses": 0}
    assert second["accuracy"] == m["accuracy"]


def test_coarse_metrics_equal_a_recomputation_from_the_probabilities(six_class_data, tmp_path):
    root, split = six_class_data
    assert run("evaluate", "--root", root, "--split-file", split, "-t", "emotionroi6", "--also", "polarity",
               "--split", "all", *TINY, "--out", tmp_path / "r").exit_code == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    rows = list(csv.DictReader((tmp_path / "r" / "predictions.csv").open()))
    tax = load_taxonomy("emotionroi6")
    probs = np.array([[float(r[f"p_{c}"]) for c in tax.names] for r in rows])
    polarity = probs @ tax.aggregation_matrix("polarity")
    true = tax.mapping_to("polarity")[[tax.index(r["true"]) for r in rows]]
    expected = classification_metrics(true, polarity.argmax(1), ["positive", "negative"])
    assert m["coarse"]["polarity"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert m["coarse"]["polarity"]["confusion_matrix"] == expected["confusion_matrix"]


def test_cross_taxonomy_levels():
    assert common_level(load_taxonomy("mikels8"), load_taxonomy("emotionroi6")).name == "polarity"
    assert common_level(load_taxonomy("parrott25"), load_taxonomy("parrott6")).name == "parrott6"
    with pytest.raises(Exception, match="share no level"):
        common_level(load_taxonomy("mikels8"), load_taxonomy("parrott6"))


def test_cross_dataset_by_parents_and_by_prompts(six_class_data, tmp_path):
    root, split = six_class_data
    base = ["evaluate", "--root", root, "--split-file", split, "-t", "mikels8", "--label-taxonomy", "emotionroi6",
            *TINY]
    assert run(*base, "--out", tmp_path / "p").exit_code == 0
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["level"] == "polarity"
    assert run(*base, "--via", "prompts", "--out", tmp_path / "q").exit_code == 0
    assert json.loads((tmp_path / "q" / "metrics.json").read_text())["level"] == "emotionroi6"


def test_unknown_label_is_a_clear_error(six_class_data, tmp_path):
    root, split = six_class_data
    result = CliRunner().invoke(main, ["evaluate", "--root", str(root), "--split-file", str(split), "-t", "mikels8",
                                       *TINY, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "not in taxonomy 'mikels8'" in result.stderr


def test_aggregate_mean_and_std(tmp_path):
    for seed, acc in enumerate((0.5, 0.7)):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({
            "run": {"name": "ptdpc", "dataset_label": "emotion6"}, "level": "emotionroi6", "accuracy": acc,
            "balanced_accuracy": acc, "macro_f1": acc, "coarse": {"polarity": {"accuracy": 0.9,
                                                                               "balanced_accuracy": 0.9,
                                                                               "macro_f1": 0.9}}}))
    result = run("aggregate", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "table.md")
    assert result.exit_code == 0
    assert "60.00 ± 14.14 (n=2)" in result.stdout and "90.00 ± 0.00 (n=2)" in result.stdout
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["ptdpc"]["emotion6 [emotionroi6]"]["values"] == pytest.approx([50.0, 70.0])


@pytest.mark.skipif(not (EMOTION6 / "split_70_30.tsv").is_file(),
                    reason=f"real data not found at {EMOTION6} (../shared/datasets/emotion6); skipping")
def test_real_emotion6_subset(tmp_path):
    lines = (EMOTION6 / "split_70_30.tsv").read_text().splitlines()
    keep = [lines[0]]
    per_class: dict[str, int] = {}
    for line in lines[1:]:
        label = line.split("\t")[1]
        if line.endswith("test") and per_class.get(label, 0) < 6:
            keep.append(line)
            per_class[label] = per_class.get(label, 0) + 1
    split = EMOTION6 / "split_70_30.tsv"
    subset = tmp_path / "emotion6" / "split.tsv"
    subset.parent.mkdir()
    subset.write_text("\n".join(keep) + "\n")
    (subset.parent / "ground_truth.txt").symlink_to(split.parent / "ground_truth.txt")
    args = ["evaluate", "--root", EMOTION6 / "images", "--split-file", subset, "-t", "emotionroi6", "--also",
            "polarity", *TINY, "--cache-dir", tmp_path / "cache"]
    assert run(*args, "--out", tmp_path / "r").exit_code == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["n"] == 36 and m["n_failed"] == 0
    assert sum(pc["support"] for pc in m["per_class"].values()) == 36
    assert m["distribution"]["n"] > 0 and 0 <= m["distribution"]["intersection"] <= 1
    assert run(*args, "--out", tmp_path / "r2").exit_code == 0
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["cache"]["hits"] == 36
