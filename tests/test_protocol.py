"""The benchmark protocol end to end on the tiny model: few-shot, vote targets, copied splits with --votes,
validation-loss early stopping, lr selection, the sweep, and the CLI's protocol flags."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emoclip.labels.taxonomy import load_taxonomy
from emoclip.methods.base import create_method
from emoclip.training.trainer import TrainConfig, train
from tests.conftest import EMOTIONS, make_split_data, noise_image
from tests.conftest import TINY_CLI as TINY
from tests.conftest import run_cli as run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_split_data(tmp_path_factory.mktemp("protocol"), per_class=9)


def write_votes(root, path, seed=0):
    """An Emotion6-style vote table for every image under root (with a neutral column, one all-neutral image)."""
    rng = np.random.default_rng(seed)
    lines = ["[image_filename]\t[valence]\t" + "\t".join(f"[prob. {e}]" for e in EMOTIONS) + "\t[prob. neutral]"]
    images = sorted(root.rglob("*.jpg"))
    for n, p in enumerate(images):
        votes = np.zeros(7) if n else np.eye(7)[6]  # the first image: all neutral
        if n:
            votes[:6] = rng.dirichlet(np.ones(6))
            votes[EMOTIONS.index(p.parent.name)] += 1.0
        lines.append(f"{p.relative_to(root).as_posix()}\t5\t" + "\t".join(f"{v:.4f}" for v in votes))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_shots_train_and_are_recorded_in_model_json(data, tmp_path):
    root, split = data
    out = tmp_path / "run"
    result = run("train", "--method", "clipe-ce", "--shots", 4, "--seed", 3, "--root", root, "--split-file", split,
                 "-t", "emotionroi6", *TINY, "--epochs", 2, "--no-progress", "--out", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "model.json").read_text())
    assert meta["train_config"]["shots"] == 4 and meta["train_config"]["seed"] == 3
    assert meta["data"]["few_shot"] == {"shots": 4, "seed": 3, "images": 24, "classes_with_fewer": {}}
    assert meta["data"]["train"] == 24
    run_meta = json.loads((out / "metrics.json").read_text())["run"]
    assert run_meta["shots"] == 4


def test_target_votes_trains_on_the_distribution_and_is_recorded(data, tmp_path):
    root, split = data
    votes = write_votes(root, tmp_path / "votes.txt")
    out = tmp_path / "run"
    result = run("train", "--method", "clipe-ce", "--target", "votes", "--votes", votes, "--root", root,
                 "--split-file", split, "-t", "emotionroi6", *TINY, "--epochs", 2, "--no-progress", "--out", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "model.json").read_text())
    assert meta["train_config"]["target"] == "votes"
    n_train = meta["data"]["train"]
    assert meta["data"]["votes"]["trained_on"] == n_train and "neutral" in meta["data"]["votes"]["note"]
    distribution = json.loads((out / "metrics.json").read_text())["distribution"]
    assert distribution is not None and distribution["n"] > 0


def test_without_votes_target_votes_says_how_to_give_them(data, tmp_path):
    root, split = data
    result = run("train", "--method", "clipe-ce", "--target", "votes", "--root", root, "--split-file", split,
                 "-t", "emotionroi6", *TINY, "--epochs", 1, "--no-progress", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "--votes FILE" in result.stderr


@pytest.mark.parametrize("method", ["clipe-ce", "ptdpc", "coop"])
def test_soft_targets_of_one_hot_votes_equal_the_hard_label_loss(tiny, method):
    """Vote training is the same loss: a distribution that puts all mass on one class gives its label's loss.
    (The contrastive head draws each image's caption class from its votes instead.)"""
    tax = load_taxonomy("emotionroi6")
    model = create_method(method, tiny, tax)
    x = F.normalize(torch.randn(5, tiny.feature_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    y = torch.tensor([0, 3, 5, 1, 1])
    batch = lambda: {"features": x, "generator": torch.Generator().manual_seed(1), "index": torch.arange(5),  # noqa: E731
                     "paths": None}
    hard = model.loss(model(x), y, batch())
    soft = model.loss(model(x), F.one_hot(y, len(tax)).float(), batch())
    assert torch.allclose(hard, soft, atol=1e-6)


def test_copied_split_with_votes_gets_label_distribution_metrics(data, tmp_path):
    root, split = data
    copied = tmp_path / "elsewhere" / "split.tsv"  # no ground_truth.txt beside it
    copied.parent.mkdir()
    shutil.copy(split, copied)
    votes = write_votes(root, tmp_path / "gt.txt")
    plain = run("evaluate", "--root", root, "--split-file", copied, "-t", "emotionroi6", *TINY, "--out", tmp_path / "a")
    with_votes = run("evaluate", "--root", root, "--split-file", copied, "--votes", votes, "-t", "emotionroi6", *TINY,
                     "--out", tmp_path / "b")
    assert plain.exit_code == 0 and with_votes.exit_code == 0, with_votes.output
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["distribution"] is None
    dist = json.loads((tmp_path / "b" / "metrics.json").read_text())["distribution"]
    assert set(dist) >= {"kl_divergence", "chebyshev", "cosine", "intersection"} and dist["n"] > 0


def test_early_stopping_on_validation_loss_keeps_the_best_epoch(tiny, tmp_path):
    """Validation labels are the opposite of training's: every epoch of learning raises the validation loss,
    so the first epoch is the best and training stops `early_stopping` epochs later."""
    tax = load_taxonomy("polarity")
    g = torch.Generator().manual_seed(0)
    centre = F.normalize(torch.randn(tiny.feature_dim, generator=g), dim=0)
    x = F.normalize(torch.cat([centre + 0.1 * torch.randn(20, tiny.feature_dim, generator=g),
                               -centre + 0.1 * torch.randn(20, tiny.feature_dim, generator=g)]), dim=-1)
    y = torch.tensor([0] * 20 + [1] * 20)
    method = create_method("clipe-ce", tiny, tax)
    config = TrainConfig(epochs=15, batch_size=8, optimizer="adam", lr=1e-2, monitor="val_loss", early_stopping=2)
    summary = train(method, (x, y), (x, 1 - y), config, tmp_path)
    assert summary["stopped_early"] and summary["best_epoch"] == 1 and summary["epochs"] == 3
    losses = [h["val_loss"] for h in summary["history"]]
    assert losses == sorted(losses)  # rising: learning the training labels hurts the swapped validation labels


def test_lr_grid_trains_each_lr_and_keeps_the_best_on_validation(data, tmp_path):
    root, split = data
    config = tmp_path / "grid.yaml"
    config.write_text("method: clipe-ce\ntrain: {lr_grid: [0.5, 0.001], epochs: 2, optimizer: adam}\n")
    out = tmp_path / "run"
    result = run("train", "--config", config, "--root", root, "--split-file", split, "-t", "emotionroi6", *TINY,
                 "--no-progress", "--out", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "model.json").read_text())
    by_lr = meta["lr_selection"]["by_lr"]
    assert set(by_lr) == {"0.5", "0.001"} and meta["lr_selection"]["chosen"] in (0.5, 0.001)
    chosen = meta["lr_selection"]["chosen"]
    assert meta["lr_selection"]["monitor"] == "val_loss"  # CLIP-E's recipe: the lowest validation loss wins
    assert by_lr[f"{chosen:g}"] == min(by_lr.values())
    assert (out / "model.safetensors").read_bytes() == (out / f"lr-{chosen:g}" / "model.safetensors").read_bytes()
    assert "chosen on validation" in result.stdout


def make_kfold(root, folds=2, per_class=3):
    for k in range(1, folds + 1):
        for c in ("positive", "negative"):
            for i in range(per_class):
                path = root / f"partition{k}" / c / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                noise_image(24, 24, seed=100 * k + 10 * (c == "positive") + i).save(path)
    return root


def test_sweep_runs_the_grid_then_only_what_is_missing(tmp_path):
    root = make_kfold(tmp_path / "tw", per_class=6)  # enough to hold out validation: the probe chooses on it
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"""
out: {tmp_path / 'runs'}
methods: [zero-shot, linear-probe]
seeds: [0, 1]
folds: [1, 2]
set:
  taxonomy: polarity
  data: {{root: {root}}}
  backbone: {{model: tiny, pretrained: random}}
""")
    first = run("sweep", grid, "--device", "cpu", "--no-progress")
    assert first.exit_code == 0, first.output
    assert "6 runs, 0 finished, 6 to run" in first.stdout  # zero-shot: once per fold; linear probe: 2 × 2
    table = json.loads((tmp_path / "runs" / "table.json").read_text())
    assert table["linear-probe"]["tw [polarity]"]["n"] == 4
    assert table["linear-probe"]["tw [polarity]"]["folds"] == [1, 2]
    assert table["zero-shot"]["tw [polarity]"]["n"] == 2
    again = run("sweep", grid, "--device", "cpu", "--no-progress")
    assert "6 finished, 0 to run" in again.stdout
    (tmp_path / "runs" / "linear-probe" / "fold-2" / "seed-1" / "summary.json").unlink()
    third = run("sweep", grid, "--device", "cpu", "--no-progress")
    assert "5 finished, 1 to run" in third.stdout and "linear-probe/fold-2/seed-1" in third.stdout
    grid.write_text(grid.read_text().replace("taxonomy: polarity", "taxonomy: polarity\n  also: [polarity]"))
    edited = run("sweep", grid, "--device", "cpu", "--dry-run")
    assert "6 finished runs were made with another config" in edited.stdout


def test_train_takes_label_taxonomy_and_verbose_prints_no_raw_dicts(data, tmp_path):
    root, split = data
    result = run("-v", "train", "--method", "linear-probe", "-t", "polarity", "--label-taxonomy", "emotionroi6",
                 "--root", root, "--split-file", split, *TINY, "--no-progress", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "INFO:root" not in result.output and "{" not in result.stdout
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["level"] == "polarity"


def test_methods_lists_zero_shot_first():
    result = run("methods")
    assert result.exit_code == 0 and result.stdout.splitlines()[0].startswith("zero-shot:")


def test_predict_multi_lists_every_label_above_the_threshold(data):
    root, _ = data
    result = run("predict", root / "joy", "-t", "emotionroi6", *TINY, "--multi", 0.1, "--format", "jsonl")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows and all([m["label"] for m in r["multi"]] == [k for k, v in sorted(
        r["distribution"].items(), key=lambda kv: -kv[1]) if v >= 0.1] for r in rows)
    as_csv = run("predict", root / "joy", "-t", "emotionroi6", *TINY, "--multi", 0.1, "--format", "csv")
    first = next(csv.DictReader(as_csv.stdout.splitlines()))
    assert first["multi"].split("|")[0].split(":")[0] == first["label"]
    plain = run("predict", root / "joy", "-t", "emotionroi6", *TINY, "--format", "csv")
    assert "multi" not in plain.stdout.splitlines()[0]


# -- protocol guards (issue 19 item 7, issue 21's split hardening) ------------------------------------
@pytest.fixture(scope="module")
def folds_root(tmp_path_factory):
    return make_kfold(tmp_path_factory.mktemp("official") / "tw", folds=3, per_class=2)


@pytest.mark.parametrize(("args", "says"), [
    (["--ratios", "nan,0.5"], "one positive ratio per split name"),
    (["--ratios", "inf,0.5"], "one positive ratio per split name"),
    (["--names", ","], "split names must be non-empty"),
    (["--names", "train,train"], "split names must differ"),
    (["--folds", "400"], "more folds than the 12 images"),
])
def test_bad_split_requests_are_one_clear_line(folds_root, tmp_path, args, says):
    result = run("split", folds_root, *args, "-o", tmp_path / "s.tsv")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if "error" in line]
    assert len(errors) == 1 and says in errors[0] and errors[0].startswith("emoclip: error:")
    assert not (tmp_path / "s.tsv").exists()


def test_split_folds_on_official_partitions_warns(folds_root, tmp_path):
    result = run("split", folds_root, "--folds", 3, "-o", tmp_path / "s.tsv")
    assert result.exit_code == 0, result.output
    assert "already has 3 official folds" in result.output and "not comparable" in result.output
    assert "no --fold given" not in result.output  # split reassigns every image: no default fold to speak of


def test_a_default_fold_is_said_and_label_rows_without_images_are_counted(tmp_path):
    root = tmp_path / "tw"
    rows = []
    for k in (1, 2):
        for c in ("positive", "negative"):
            for i in range(3):
                path = root / f"partition{k}" / f"{k}{c}{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                noise_image(24, 24, seed=10 * k + i + (c == "positive")).save(path)
                rows.append(f"{path.name}\t{c}")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join([*rows, "lost1.jpg\tpositive", "lost2.jpg\tnegative"]) + "\n")
    result = run("evaluate", "--root", root, "--label-file", labels, "-t", "polarity", *TINY,
                 "--out", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    assert "no --fold given: fold 1 of 2" in result.output and "pass --fold K" in result.output
    assert "2 of 14 rows of" in result.output and "name no image" in result.output
    chosen = run("evaluate", "--root", root, "--label-file", labels, "--fold", 2, "-t", "polarity", *TINY,
                 "--out", tmp_path / "ev2")
    assert chosen.exit_code == 0 and "no --fold given" not in chosen.output
