"""`emoclip aggregate`: seeds and folds form one cell; other backbones, weights, precision, shots or data never
merge silently."""

from __future__ import annotations

import json

import pytest

from emoclip.evaluation.aggregate import aggregate, markdown_table
from tests.conftest import run_cli as run

TINY = {"model": "tiny", "weights": "random-seed0"}
VIT = {"model": "ViT-B-32", "weights": "openai"}


def metrics(acc, name="ptdpc", seed=0, fold=None, backbone=TINY, dataset="twitter1", source="data/twitter1",
            shots=0, **run_extra):
    label = f"{dataset}-fold{fold}" if fold else dataset
    return {"run": {"name": name, "seed": seed, "fold": fold, "dataset_label": label, "data_source": source,
                    "split": "test", "backbone": backbone, "shots": shots, **run_extra},
            "level": "polarity", "accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc, "coarse": {}}


def test_five_folds_aggregate_into_one_cell_with_n_5(tmp_path):
    accs = [0.70, 0.72, 0.74, 0.76, 0.78]
    for fold, acc in enumerate(accs, 1):
        d = tmp_path / "runs" / f"fold-{fold}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(metrics(acc, fold=fold)))
    result = run("aggregate", tmp_path / "runs", "--out", tmp_path / "t.md")  # a folder of runs
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "t.json").read_text())
    assert list(table) == ["ptdpc"] and list(table["ptdpc"]) == ["twitter1 [polarity]"]
    cell = table["ptdpc"]["twitter1 [polarity]"]
    assert cell["n"] == 5 and cell["folds"] == [1, 2, 3, 4, 5] and cell["seeds"] == [0]
    assert cell["mean"] == pytest.approx(74.0) and cell["std"] == pytest.approx(3.16227766, abs=1e-6)
    assert "74.00 ± 3.16 (n=5)" in result.stdout and "every cell averages 1 seed (0) × 5 folds (1–5)" in result.stdout


def test_seeds_and_folds_share_a_cell():
    runs = [metrics(0.5 + 0.01 * (s + f), seed=s, fold=f) for s in (1, 2, 3) for f in (1, 2)]
    cell = aggregate(runs)["ptdpc"]["twitter1 [polarity]"]
    assert cell["n"] == 6 and cell["seeds"] == [1, 2, 3] and cell["folds"] == [1, 2]
    assert "3 seeds (1–3) × 2 folds (1, 2)" in markdown_table(aggregate(runs), "accuracy")


def test_other_backbones_are_separate_labelled_rows():
    table = aggregate([metrics(0.2, backbone=TINY), metrics(0.9, backbone=VIT)])
    assert sorted(table) == ["ptdpc (ViT-B-32/openai)", "ptdpc (tiny/random-seed0)"]
    assert all(cell["n"] == 1 for row in table.values() for cell in row.values())


def test_other_precision_or_decode_mode_is_not_averaged_with_exact_fp32():
    table = aggregate([metrics(0.5, backbone={**VIT, "precision": "fp32", "decode": "full"}),
                       metrics(0.6, backbone={**VIT, "precision": "bf16", "decode": "full"}),
                       metrics(0.7, backbone={**VIT, "precision": "fp32", "decode": "draft"})])
    assert sorted(table) == ["ptdpc (ViT-B-32/openai)", "ptdpc (ViT-B-32/openai, bf16)",
                             "ptdpc (ViT-B-32/openai, draft-decode)"]


def test_few_shot_k_and_vote_targets_are_separate_rows():
    table = aggregate([metrics(0.5, shots=4), metrics(0.6, shots=16), metrics(0.7), metrics(0.8, target="votes")])
    assert sorted(table) == ["ptdpc", "ptdpc (16-shot)", "ptdpc (4-shot)", "ptdpc (target votes)"]


def test_other_data_under_one_name_is_a_separate_labelled_column():
    table = aggregate([metrics(0.5, source="a/split.tsv"), metrics(0.6, source="b/split.tsv")])
    assert sorted(table["ptdpc"]) == ["twitter1 (a/split.tsv) [polarity]", "twitter1 (b/split.tsv) [polarity]"]


def test_methods_are_rows_and_datasets_columns():
    table = aggregate([metrics(0.5, name="zero-shot"), metrics(0.6, dataset="emotion6", source="e6"),
                       metrics(0.7)])
    assert set(table) == {"zero-shot", "ptdpc"}
    assert set(table["ptdpc"]) == {"twitter1 [polarity]", "emotion6 [polarity]"}
