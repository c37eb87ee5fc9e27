"""`emoclip train` end to end: shipped configs, checkpoints that evaluate and predict, resume, errors."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from emoclip.cli.main import main
from emoclip.recipes import RECIPES_DIR
from emoclip.training.experiment import read_configs
from tests.conftest import EMOTIONS, make_split_data
from tests.conftest import TINY_CLI as TINY
from tests.conftest import run_cli as run

CONFIGS = RECIPES_DIR  # the shipped recipes (configs/ links here in a checkout)



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_split_data(tmp_path_factory.mktemp("train"), per_class=6)


@pytest.mark.slow
@pytest.mark.parametrize("method_config", sorted(p.name for p in (CONFIGS / "methods").glob("*.yaml")))
def test_every_shipped_method_config_trains_and_its_checkpoint_evaluates_and_predicts(data, tmp_path, method_config,
                                                                                    request):
    root, split = data
    out = tmp_path / "run"
    offline_bart = ["--set", f"bart={request.getfixturevalue('tiny_bart')}"] if method_config == "ugrie.yaml" else []
    result = run("train", "--config", CONFIGS / "datasets" / "emotionroi6.yaml", "--config",
                 CONFIGS / "methods" / method_config, "--root", root, "--split-file", split, *TINY, *offline_bart,
                 "--epochs", 1, "--no-progress", "--out", out)
    assert result.exit_code == 0, result.output
    assert "test accuracy=" in result.stdout
    for name in ("model.safetensors", "model.json", "config.yaml", "log.jsonl", "metrics.json", "report.md"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "model.json").read_text())
    assert meta["taxonomy"]["name"] == "emotionroi6" and meta["backbone"]["weights"] == "random-seed0"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 12 and "polarity" in metrics["coarse"]
    # the checkpoint alone is enough: no --model/--pretrained/--taxonomy needed
    evaluated = run("evaluate", "--checkpoint", out, "--root", root, "--split-file", split, "--out", tmp_path / "ev")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]
    predicted = run("predict", "--checkpoint", out, root / "joy", "--format", "csv")
    assert predicted.exit_code == 0
    rows = list(csv.DictReader(predicted.stdout.splitlines()))
    assert len(rows) == 6 and rows[0]["label"] in EMOTIONS


def test_emotionroi2_trains_polarity_from_emotion_labels(data, tmp_path):
    root, split = data
    result = run("train", "--config", CONFIGS / "datasets" / "emotionroi2.yaml", "--method", "clipe-ce",
                 "--root", root, "--split-file", split, *TINY, "--epochs", 2, "--no-progress", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["level"] == "polarity" and metrics["classes"] == ["positive", "negative"]


def test_command_line_overrides_config_and_set_reaches_the_method(data, tmp_path):
    root, split = data
    result = run("train", "--config", CONFIGS / "methods" / "ptdpc-paper.yaml", "--set", "weight=cos01",
                 "--set", "normalize=true", "-t", "emotionroi6", "--root", root, "--split-file", split, *TINY,
                 "--epochs", 1, "--lr", 0.01, "--no-progress", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["config"]["weight"] == "cos01" and meta["config"]["normalize"] is True
    assert meta["train_config"]["lr"] == 0.01 and meta["train_config"]["optimizer"] == "sgd"


def test_resume_continues_an_interrupted_run(data, tmp_path):
    root, split = data
    args = ["train", "--method", "clipe-ce", "-t", "emotionroi6", "--root", root, "--split-file", split, *TINY,
            "--no-progress", "--out", tmp_path]
    assert run(*args, "--epochs", 2).exit_code == 0
    assert run(*args, "--epochs", 4, "--resume").exit_code == 0
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


def test_checkpoint_with_a_taxonomy_it_cannot_predict_is_refused(data, tmp_path):
    root, split = data
    assert run("train", "--method", "clipe-ce", "-t", "emotionroi6", "--root", root, "--split-file", split, *TINY,
               "--epochs", 1, "--no-progress", "--out", tmp_path).exit_code == 0
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(tmp_path), str(root / "joy"), "-t", "mikels8"])
    assert result.exit_code == 2 and "cannot predict 'mikels8'" in result.stderr
    other = CliRunner().invoke(main, ["predict", "--checkpoint", str(tmp_path), str(root / "joy"),
                                      "--model", "ViT-B-32", "--pretrained", "random"])
    assert other.exit_code == 2 and "checkpoint was trained on tiny" in other.stderr


def test_bad_configs_and_methods_are_clear(tmp_path):
    (tmp_path / "c.yaml").write_text("method: ptdpc\nepochs: 3\n")
    with pytest.raises(Exception, match="unknown section epochs"):
        read_configs([tmp_path / "c.yaml"])
    result = CliRunner().invoke(main, ["train", "--method", "nope", "--root", str(tmp_path), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown method 'nope'" in result.stderr
    assert "ptdpc" in run("methods").stdout and "instance_specific" in run("methods").stdout
