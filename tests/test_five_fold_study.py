"""The study of issue 19, end to end on the tiny model: five partition folders and one label table of bare
file names (the standard 5-fold release), six settings × five folds, one table.

It must come out as exactly one cell per setting with n = 5 (PT-DPC with and without its lr grid, and
CLIP-E with and without image captions, are different settings), a duplicate run must be refused,
and every file the runs wrote must be JSON a strict parser reads (no NaN, no Infinity).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from emoclip.core.errors import EmoclipError
from emoclip.core.strict_json import loads
from emoclip.evaluation.aggregate import aggregate, load_runs, markdown_table
from emoclip.training.experiment import run_experiment
from tests.conftest import noise_image
from tests.conftest import run_cli as run

FOLDS = (1, 2, 3, 4, 5)
PER_CLASS = 4  # per class and fold: 32 training images per run, a stratified tenth held out for validation
TINY = {"model": "tiny", "pretrained": "random"}


def make_partitions(root: Path) -> tuple[Path, Path, Path]:
    """ROOT/partition{1..5}/<bare images> + labels.txt (bare names) + captions.tsv (bare names)."""
    rows, captions = [], []
    for k in FOLDS:
        for c, label in enumerate(("positive", "negative")):
            for i in range(PER_CLASS):
                name = f"p{k}_{label[:3]}{i}.jpg"
                path = root / f"partition{k}" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                noise_image(24, 24, seed=1000 * k + 100 * c + i).save(path)
                rows.append(f"{name}\t{label}")
                captions.append(f"{name}\ta {'bright' if c == 0 else 'grey'} scene number {i}")
    rows.append("gone_missing.jpg\tpositive")  # a label row whose image is not there: counted, said
    labels = root.parent / "labels.txt"
    labels.write_text("\n".join(rows) + "\n")
    caption_file = root.parent / "captions.tsv"
    caption_file.write_text("image\tcaption\n" + "\n".join(captions) + "\n")
    return root, labels, caption_file


SETTINGS = {
    "zero-shot": {"method": "zero-shot"},
    "linear-probe": {"method": "linear-probe", "options": {"l2_grid": [1e-4, 1e-2], "max_iter": 50}},
    "ptdpc-grid": {"method": "ptdpc", "train": {"epochs": 1, "lr_grid": [0.1, 0.01]}},
    "ptdpc-lr": {"method": "ptdpc", "train": {"epochs": 1, "lr": 0.01, "lr_grid": []}},  # what --lr gives
    "clipe": {"method": "clipe-contrastive", "train": {"epochs": 1}},
    "clipe-captions": {"method": "clipe-contrastive", "train": {"epochs": 1}},  # + the caption table
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    root, labels, captions = make_partitions(base / "twitter")
    runs = base / "runs"
    cache = str(base / "cache")
    for label, setting in SETTINGS.items():
        for fold in FOLDS:
            config = {**setting, "taxonomy": "polarity", "backbone": TINY,
                      "data": {"root": str(root), "label_file": str(labels), "fold": fold}}
            if label == "clipe-captions":
                config["options"] = {"image_captions": str(captions)}
            run_experiment(config, runs / label / f"fold-{fold}", device="cpu", cache_dir=cache, progress=False)
    return base, runs, root, labels, captions


def test_six_settings_over_five_folds_give_six_cells_of_n_5(study, capsys):
    _, runs, *_ = study
    table = aggregate(load_runs([runs]))
    assert len(table) == len(SETTINGS)
    for row, cells in table.items():
        assert len(cells) == 1, row
        (cell,) = cells.values()
        assert cell["n"] == 5 and cell["folds"] == list(FOLDS) and cell["seeds"] == [0], row
    text = markdown_table(table, "accuracy")
    assert "every cell averages 1 seed (0) × 5 folds (1–5)" in text
    with capsys.disabled():
        print("\n" + text)


def test_the_rows_say_what_sets_them_apart(study):
    _, runs, *_ = study
    rows = sorted(aggregate(load_runs([runs])))
    ptdpc = [r for r in rows if r.startswith("ptdpc")]
    clipe = [r for r in rows if r.startswith("clipe")]
    assert len(ptdpc) == 2 and any("lr_grid=0.1/0.01" in r for r in ptdpc) and any("lr_grid=none" in r for r in ptdpc)
    assert len(clipe) == 2 and any("image_captions=sha256:" in r for r in clipe)
    assert "zero-shot" in rows and "linear-probe" in rows


def test_captions_with_bare_names_match_every_training_image_and_change_training(study):
    _, runs, *_ = study
    record = loads((runs / "clipe-captions" / "fold-1" / "metrics.json").read_text())["run"]
    captions = record["training"]["inputs"]["image_captions"]
    assert captions["matched"] == captions["train_images"] == record["training"]["inputs"]["image_captions"][
        "train_images"] and captions["train_images"] >= 24  # every training image (32 less the validation part)
    assert captions["rows"] == 5 * 2 * PER_CLASS and len(captions["sha256"]) == 64
    assert record["setting"]["inputs"]["image_captions"] == captions["sha256"]
    with_captions = (runs / "clipe-captions" / "fold-1" / "model.safetensors").read_bytes()
    without = (runs / "clipe" / "fold-1" / "model.safetensors").read_bytes()
    assert with_captions != without  # the captions were used, not silently ignored


def test_a_duplicate_run_is_refused_naming_both(study, tmp_path):
    _, runs, *_ = study
    copy = tmp_path / "runs"
    shutil.copytree(runs / "ptdpc-lr", copy / "ptdpc-lr")
    shutil.copytree(runs / "ptdpc-lr" / "fold-1", copy / "again" / "fold-1")
    with pytest.raises(EmoclipError, match="same run") as caught:
        aggregate(load_runs([copy]))
    assert "again/fold-1" in str(caught.value) and "ptdpc-lr/fold-1" in str(caught.value)
    result = run("aggregate", copy)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "counted twice" in result.output


def test_every_file_the_runs_wrote_is_strict_json(study):
    _, runs, *_ = study
    files = [p for p in runs.rglob("*") if p.suffix in (".json", ".jsonl")]
    assert len(files) > 5 * len(SETTINGS) * 3  # metrics.json, summary.json, model.json and the logs
    for path in files:
        text = path.read_text()
        for line in text.splitlines() if path.suffix == ".jsonl" else [text]:
            loads(line)  # raises on NaN / Infinity


@pytest.mark.parametrize("method", ["ptdpc", "clipe-ce", "linear-probe"])
def test_without_validation_every_file_is_strict_json_and_says_why(study, tmp_path, method):
    _, _, root, labels, _ = study
    config = {"method": method, "taxonomy": "polarity", "backbone": TINY,
              "data": {"root": str(root), "label_file": str(labels), "fold": 2},
              "train": {"epochs": 2, "val_fraction": 0.0, "lr_grid": [], "lr": 0.01}}
    out = tmp_path / "run"
    run_experiment(config, out, device="cpu", progress=False)
    for path in out.rglob("*.json*"):
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            loads(line)
    summary = loads((out / "summary.json").read_text())
    assert summary["training"]["val_accuracy"] is None
    assert summary["training"]["validation"].startswith("none: no validation images")
    if method == "linear-probe":  # no strength chosen by accident: the stated default, recorded
        assert summary["training"]["fit"]["l2_source"].startswith("default")


def test_a_finished_run_is_not_replaced_without_overwrite(study, tmp_path):
    _, runs, root, labels, _ = study
    out = tmp_path / "run"
    shutil.copytree(runs / "ptdpc-lr" / "fold-1", out)
    args = ["train", "--method", "clipe-ce", "--root", root, "--label-file", labels, "--fold", 1, "-t", "polarity",
            "--model", "tiny", "--pretrained", "random", "--device", "cpu", "--epochs", 1, "--no-progress",
            "--out", out]
    refused = run(*args)
    assert refused.exit_code == 2 and "holds a finished run" in refused.output and "--overwrite" in refused.output
    replaced = run(*args, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert loads((out / "summary.json").read_text())["method"] == "clipe-ce"
    assert loads((out / "metrics.json").read_text())["run"]["setting"]["method"]["method"] == "clipe-ce"
