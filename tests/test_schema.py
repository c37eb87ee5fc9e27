"""The typed option schema: one declaration per option reaches configs, --set, flags, grids and listings.

Contract tests run over every method card and every schema class; the CLI tests use the tiny random
model and refuse bad values before any image is encoded.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from emoclip.core.errors import EmoclipError
from emoclip.core.options import check_options, describe, load_value, spec_of
from emoclip.schema import EXACT, TAGGING, DataOptions, EncoderOptions, RunRecord, TrainConfig
from emoclip.schema.methods import METHOD_CARDS, method_card
from tests.conftest import EMOTIONS, make_split_data
from tests.conftest import TINY_CLI as TINY
from tests.conftest import run_cli as run


def _tagger_config():
    from emoclip.tagging.config import TaggerConfig

    return TaggerConfig


SCHEMA_CLASSES = [EncoderOptions, DataOptions, TrainConfig, RunRecord, _tagger_config(),
                  *(c.config for c in METHOD_CARDS.values())]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_split_data(tmp_path_factory.mktemp("schema"), per_class=3)


# -- the declarations --------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", SCHEMA_CLASSES, ids=lambda c: c.__name__)
def test_every_option_has_help_and_its_default_is_valid(cls):
    for f in dataclasses.fields(cls):
        assert spec_of(f).help.strip(), f"{cls.__name__}.{f.name} has no help"
    infos = describe(cls)
    assert [i.name for i in infos] == [f.name for f in dataclasses.fields(cls)]
    defaults = {i.name: i.default for i in infos if i.default is not dataclasses.MISSING}
    if cls is not RunRecord:  # the record's required fields have no default
        assert check_options(cls, defaults, cls.__name__) == {
            k: (list(v) if isinstance(v, list) else v) for k, v in defaults.items()}


@pytest.mark.parametrize("name", sorted(METHOD_CARDS))
def test_every_card_matches_its_implementation(name):
    from emoclip.methods.base import list_methods

    card = METHOD_CARDS[name]
    json.dumps(card.to_dict(), allow_nan=False, default=str)  # listable as strict JSON
    implementations = list_methods()
    if not card.trainable:
        assert name not in implementations
        return
    cls = implementations[name]
    assert cls.Config is card.config and cls.summary == card.summary and cls.card is card
    assert cls.train_defaults == card.train_defaults and cls.multi_taxonomy == card.multi_taxonomy
    module, _, attr = card.implementation.partition(":")
    assert getattr(__import__(module, fromlist=[attr]), attr) is cls
    TrainConfig.from_dict(card.train_defaults)  # the recipe itself is valid
    if card.recipe:
        from emoclip.recipes import list_recipes

        assert card.recipe in list_recipes()


def test_every_registered_method_has_a_card():
    from emoclip.methods.base import list_methods

    assert set(list_methods()) == {n for n, c in METHOD_CARDS.items() if c.trainable}
    assert method_card("zeroshot").name == "zero-shot"  # one name per method
    with pytest.raises(EmoclipError, match="unknown method 'nope'.*ptdpc"):
        method_card("nope")


def test_every_recipe_is_a_valid_experiment():
    from emoclip.recipes import list_recipes
    from emoclip.schema.experiment import check_experiment, read_config
    from emoclip.training.sweep import read_grid

    recipes = list_recipes("methods")
    assert recipes
    for name, path in recipes.items():
        checked = check_experiment(read_config(path), f"recipe {name}")
        assert method_card(checked["method"]).trainable
    for name, path in {**list_recipes("datasets"), **list_recipes("unified")}.items():
        assert read_config(path), name  # known sections only
    for name, path in list_recipes("sweeps").items():
        assert read_grid(path)["methods"], name


def test_tagger_config_refuses_what_the_flags_refuse():
    from emoclip.tagging.config import TaggerConfig

    with pytest.raises(EmoclipError, match="tagging option top_k must be at least 1, got 0"):
        TaggerConfig(top_k=0)
    assert TaggerConfig(also=["polarity"]).also == ("polarity",)  # kept as the field's container


def test_trainer_registries_are_the_schema_choices():
    from emoclip.schema.training import OPTIMIZERS, SCHEDULERS
    from emoclip.training.trainer import OPTIMIZERS as optimizers
    from emoclip.training.trainer import SCHEDULERS as schedulers

    assert tuple(optimizers) == OPTIMIZERS and tuple(schedulers) == SCHEDULERS


def test_tagging_defaults_are_one_set_for_config_cli_and_api():
    import inspect

    from emoclip.api import create_tagger
    from emoclip.cli.tag import predict
    from emoclip.tagging.config import TaggerConfig

    config = TaggerConfig()
    assert (config.precision, config.decode, config.device) == (TAGGING.precision, TAGGING.decode, TAGGING.device)
    flags = {p.name: p.default for p in predict.params}
    assert (flags["precision"], flags["decode"]) == (TAGGING.precision, TAGGING.decode)
    signature = inspect.signature(create_tagger).parameters
    assert (signature["precision"].default, signature["decode"].default) == (TAGGING.precision, TAGGING.decode)
    assert (EXACT.precision, EXACT.decode) == ("fp32", "full")


# -- values as users write them ----------------------------------------------------------------------
def test_numbers_parse_as_written():
    assert load_value("1e-6") == 1e-6 and isinstance(load_value("1e-6"), float)
    assert load_value("[1e-3, 2]") == [1e-3, 2] and load_value("abc") == "abc" and load_value("true") is True
    config = TrainConfig.from_dict({"lr": "1e-3", "lr_grid": ["1e-2", 0.1]})  # a YAML 1.1 file's strings
    assert config.lr == 1e-3 and config.lr_grid == [1e-2, 0.1]


@pytest.mark.parametrize(("method", "setting", "pattern"), [
    ("ptdpc", "n_ctx=-4", r"option n_ctx must be 0 or more, got -4"),
    ("clipe-ce", "hidden=-5", r"option hidden must be at least 1, got -5"),
    ("clipe-ce", "hidden=0", r"option hidden must be at least 1, got 0"),
    ("clipe-contrastive", "init_temperature=0", r"option init_temperature must be above 0, got 0"),
    ("linear-probe", "max_iter=0", r"option max_iter must be at least 1, got 0"),
    ("linear-probe", "l2=-0.5", r"option l2 must be -1 \(choose on validation\) or 0 or more"),
    ("ptdpc", "weight=sin", r"option weight must be one of cos, cos01, got 'sin'"),
    ("ptdpc", "train.lr_grid=5", r"training option lr_grid must be a list of numbers, got 5"),
])
def test_set_values_are_range_checked_in_one_line(data, tmp_path, method, setting, pattern):
    root, split = data
    result = run("train", "--method", method, "--set", setting, "--root", root, "--split-file", split, *TINY,
                 "--no-progress", "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emoclip: error: "), result.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_set_l2_in_exponent_form_fixes_the_strength_and_skips_the_grid(data, tmp_path):
    root, split = data
    result = run("train", "--method", "linear-probe", "--set", "l2=1e-6", "--root", root, "--split-file", split,
                 *TINY, "--no-progress", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["config"]["l2"] == 1e-6
    summary = json.loads((tmp_path / "summary.json").read_text())
    fit = summary["training"]["fit"]
    assert fit["l2"] == 1e-6 and fit["l2_source"] == "given" and "val_accuracy_by_l2" not in fit  # no search


def test_scheduler_cosine_and_a_taxonomy_file_are_accepted_by_train(data, tmp_path):
    root, split = data
    taxonomy = tmp_path / "mine.yaml"
    taxonomy.write_text("name: mine\nclasses: [" + ", ".join(EMOTIONS) + "]\n")
    result = run("train", "--method", "clipe-ce", "-t", taxonomy, "--scheduler", "cosine", "--epochs", 1,
                 "--root", root, "--split-file", split, *TINY, "--no-progress", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["taxonomy"]["name"] == "mine"
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "scheduler: cosine" in config


def test_lr_turns_the_recipe_grid_off_and_help_says_so():
    from emoclip.api import experiment_config

    assert "lr_grid" not in (experiment_config(method="ptdpc").get("train") or {})  # the recipe's grid stays
    assert experiment_config(method="ptdpc", train={"lr": 0.05})["train"] == {"lr": 0.05, "lr_grid": []}
    result = run("train", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "turns off the recipe's lr grid" in text and "cosine" in text
    from emoclip.cli.info import methods
    from emoclip.cli.train import aggregate, sweep, train_command

    for command in (train_command, sweep, aggregate, methods):
        for param in command.params:
            if isinstance(param, __import__("click").Option):
                assert param.help, f"{command.name} --{param.name} has no help"


# -- grids -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "pattern"), [
    ("methods: coop\n", r"'methods' must be a list"),
    ("methods: [coop]\nseeds: 5\n", r"'seeds' must be a list of whole numbers"),
    ("methods: [coop]\nout: 5\n", r"'out' must be a folder name"),
    ("methods: [coop]\nset: [1, 2]\n", r"'set' must be a mapping"),
    ("methods: [{name: ../../X, config: ../m.yaml}]\n", r"must be one plain folder name"),
    ("methods: [{name: /abs, method: coop}]\n", r"must be one plain folder name"),
    ("methods: [ptdpc]\nset: {options: {n_ctx: -4}}\n", r"option n_ctx must be 0 or more"),
])
def test_bad_grids_are_refused_in_one_line(tmp_path, body, pattern):
    (tmp_path / "m.yaml").write_text("method: coop\n")
    grid = tmp_path / "g" / "grid.yaml"
    grid.parent.mkdir()
    grid.write_text(body)
    result = run("sweep", grid, "--dry-run")
    assert result.exit_code == 2, result.output
    import re

    assert re.search(pattern, result.stderr), result.stderr
    assert not (tmp_path / "X").exists()


def test_grid_paths_are_relative_to_the_grid_and_root_set_out_override(tmp_path, monkeypatch):
    from emoclip.training.sweep import plan, read_grid

    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "m.yaml").write_text("method: coop\noptions: {n_ctx: 2}\n")
    grid = tmp_path / "grids" / "grid.yaml"
    grid.write_text("out: runs\nmethods: [zero-shot, m.yaml, ptdpc-paper]\nset: {data: {root: data}}\n")
    monkeypatch.chdir(tmp_path)  # somewhere else than the grid
    runs = plan(read_grid(grid))
    assert {r.folder.parent.parent for r in runs} == {tmp_path / "grids" / "runs"}
    assert {r.config["data"]["root"] for r in runs} == {str(tmp_path / "grids" / "data")}
    assert [r.label for r in runs] == ["zero-shot", "m", "ptdpc-paper"]
    assert runs[1].config["options"] == {"n_ctx": 2} and runs[2].config["method"] == "ptdpc"
    runs = plan(read_grid(grid), root="elsewhere", sets=["train.epochs=2", "backbone.model=tiny"])
    assert {r.config["data"]["root"] for r in runs} == {str(tmp_path / "elsewhere")}
    assert runs[1].config["train"]["epochs"] == 2 and {r.config["backbone"]["model"] for r in runs} == {"tiny"}
    with pytest.raises(EmoclipError, match="method 'zero-shot' has no option n_ctx"):  # checked for every run
        plan(read_grid(grid), sets=["options.n_ctx=3"])
    result = run("sweep", grid, "--dry-run", "--set", "epochs=2")
    assert result.exit_code == 2 and "name the section" in result.stderr
    result = run("sweep", grid, "--dry-run", "--out", tmp_path / "mine")
    assert result.exit_code == 0 and str(tmp_path / "mine" / "zero-shot") in result.stdout


# -- no torch for listings ---------------------------------------------------------------------------
@pytest.mark.parametrize("code", [
    "import emoclip; cards = emoclip.list_methods(); assert 'ugrie' in cards and cards['ptdpc'].options()",
    "from emoclip.cli.main import main; main(['methods'])",
    "from emoclip.cli.main import main; main(['methods', '--json'])",
    "from emoclip.schema import check_experiment; check_experiment({'method': 'ptdpc', 'options': {'n_ctx': 4}})",
])
def test_listing_and_checking_import_no_torch(code):
    probe = (f"import sys\ntry:\n    {code}\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "heavy = [m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules]\n"
             "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]


def test_train_recipe_flag_runs_a_named_recipe(data, tmp_path):
    root, split = data
    result = run("train", "--recipe", "clipe-ce", "-t", "emotionroi6", "--epochs", 1, "--root", root, "--split-file",
                 split, *TINY, "--no-progress", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "model.json").read_text())["method"] == "clipe-ce"
    refused = run("train", "--recipe", "nope", "--out", tmp_path / "other")
    assert refused.exit_code == 2 and "unknown recipe 'nope'; the shipped recipes: clipe-ce" in refused.stderr
