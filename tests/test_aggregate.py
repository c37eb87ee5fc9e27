"""`emoclip aggregate`: seeds and folds form one cell; other backbones, weights, precision, shots or data never
merge silently."""

from __future__ import annotations

import json

import pytest

from emoclip.core.errors import EmoclipError
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


# -- the run record is the identity of a result ------------------------------------------------------
def with_setting(acc, fold, seed=0, name="ptdpc", train=None, options=None, inputs=None, file=None):
    from emoclip.evaluation.aggregate import run_setting

    recipe = {"epochs": 10, "lr": 0.01, "seed": seed, **(train or {})}
    setting = run_setting({"method": name, **(options or {})}, recipe, {"root": "data/tw", "fold": fold}, "data/tw",
                          0, "labels", "polarity", "polarity", TINY, inputs)
    record = metrics(acc, name=name, seed=seed, fold=fold, setting=setting)
    return {**record, "_file": file} if file else record


def test_runs_that_differ_in_the_lr_grid_or_an_option_never_share_a_cell():
    runs = [with_setting(0.5 + 0.01 * f, f) for f in (1, 2, 3)]
    runs += [with_setting(0.6 + 0.01 * f, f, train={"lr_grid": [0.1, 0.01]}) for f in (1, 2, 3)]
    runs += [with_setting(0.7, f, options={"weight": "cos01"}) for f in (1, 2, 3)]
    table = aggregate(runs)
    assert set(table) == {"ptdpc (weight=none; lr_grid=0.1/0.01)", "ptdpc (weight=cos01; lr_grid=none)",
                          "ptdpc (weight=none; lr_grid=none)"}
    assert all(cell["n"] == 3 for row in table.values() for cell in row.values())


def test_lr_turned_off_by_an_empty_grid_is_the_same_setting_as_no_grid():
    runs = [with_setting(0.5, 1, train={"lr_grid": []}), with_setting(0.6, 2, train={"lr_grid": None})]
    assert [cell["n"] for cell in aggregate(runs)["ptdpc"].values()] == [2]


def test_same_caption_path_with_other_content_is_another_row():
    runs = [with_setting(0.5, f, name="clipe-contrastive", options={"image_captions": "c.tsv"},
                         inputs={"image_captions": {"sha256": digest}}) for f in (1, 2) for digest in ("aa", "bb")]
    table = aggregate(runs)
    assert sorted(table) == ["clipe-contrastive (image_captions=sha256:aa)",
                             "clipe-contrastive (image_captions=sha256:bb)"]


def test_a_duplicate_run_is_refused_naming_both_files():
    runs = [with_setting(0.5, 1, file="a/metrics.json"), with_setting(0.5, 2, file="b/metrics.json"),
            with_setting(0.5, 1, file="c/metrics.json")]
    with pytest.raises(EmoclipError, match="a/metrics.json and c/metrics.json are the same run"):
        aggregate(runs)
    legacy = [metrics(0.5, fold=1), metrics(0.6, fold=1)]  # records without a setting: the same rule
    with pytest.raises(EmoclipError, match="counted twice"):
        aggregate(legacy)


def test_a_cell_of_one_run_shows_no_spread():
    runs = [metrics(0.5, dataset="emotion6", source="e6"), metrics(0.6, fold=1), metrics(0.7, fold=2)]
    text = markdown_table(aggregate(runs), "accuracy")
    assert "50.00 (n=1)" in text and "± 0.00" not in text and "65.00 ± 7.07 (n=2)" in text


def test_a_missing_seed_fold_combination_is_marked():
    runs = [metrics(0.5, seed=s, fold=f) for s, f in ((1, 1), (1, 2), (2, 1))]
    text = markdown_table(aggregate(runs), "accuracy")
    assert "(n=3) †" in text and "not every seed × fold combination" in text


def test_zeroshot_of_evaluate_and_zero_shot_of_sweep_are_one_method():
    table = aggregate([metrics(0.5, name="zeroshot", fold=1), metrics(0.6, name="zero-shot", fold=2)])
    assert list(table) == ["zero-shot"] and table["zero-shot"]["twitter1 [polarity]"]["n"] == 2


def test_a_non_finite_figure_is_refused():
    with pytest.raises(EmoclipError, match="not a number"):
        aggregate([metrics(float("nan"))])


def test_run_setting_leaves_out_seed_and_fold_and_makes_paths_absolute(tmp_path, monkeypatch):
    from emoclip.evaluation.aggregate import run_setting

    monkeypatch.chdir(tmp_path)
    one = run_setting({"method": "zeroshot"}, {"seed": 1, "lr": 0.1}, {"root": "d", "fold": 1}, "d-fold1", 0,
                      "labels", "p", "p", TINY)
    two = run_setting({"method": "zero-shot"}, {"seed": 2, "lr": 0.1}, {"root": str(tmp_path / "d"), "fold": 2},
                      "d-fold2", 0, "labels", "p", "p", TINY)
    assert one == two and "seed" not in one["train"] and "fold" not in one["data"]
