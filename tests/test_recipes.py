"""The shipped method configs carry the published recipes exactly (numbers from the papers and releases)."""

from __future__ import annotations

import pytest

from emoclip.methods import list_methods
from emoclip.recipes import RECIPES_DIR
from emoclip.training.experiment import read_config
from emoclip.training.trainer import TrainConfig

METHODS = RECIPES_DIR / "methods"  # the recipes ship inside the package (configs/ links here in a checkout)

PAPER_TRAIN = {"optimizer": "sgd", "momentum": 0.9, "lr_grid": [0.1, 0.01, 0.001], "scheduler": "step",
               "step_size": 3, "gamma": 0.9, "batch_size": 64, "epochs": 10, "monitor": "val_accuracy"}
PAPER_OPTIONS = {"template": "a photo seems to express a feeling of {}", "instance_specific": True,
                 "class_specific": True, "weight": "cos", "normalize": False, "learn_sot": False, "loss": "ce"}
CLIPE_TRAIN = {"optimizer": "adam", "lr": 0.001, "scheduler": "plateau", "gamma": 0.1, "epochs": 15,
               "monitor": "val_loss"}

# file: (method, options that must hold, train settings that must hold)
RECIPES = {
    "ptdpc-paper.yaml": ("ptdpc", PAPER_OPTIONS, PAPER_TRAIN),
    "ptdpc-paper-template-image.yaml": (
        "ptdpc", {**PAPER_OPTIONS, "template": "an image to express a feeling like {}"}, PAPER_TRAIN),
    "ptdpc-paper-template-picture.yaml": (
        "ptdpc", {**PAPER_OPTIONS, "template": "a picture seems to express some feelings like {}"}, PAPER_TRAIN),
    "ptdpc-ablation-none.yaml": ("ptdpc", {**PAPER_OPTIONS, "instance_specific": False, "class_specific": False},
                                 PAPER_TRAIN),
    "ptdpc-ablation-cs.yaml": ("ptdpc", {**PAPER_OPTIONS, "instance_specific": False, "class_specific": True},
                               PAPER_TRAIN),
    "ptdpc-ablation-is.yaml": ("ptdpc", {**PAPER_OPTIONS, "instance_specific": True, "class_specific": False},
                               PAPER_TRAIN),
    "ptdpc-release.yaml": ("ptdpc", {"template": "a photo of {}", "weight": "cos01", "normalize": False,
                                     "learn_sot": True, "loss": "softmax-ce"},
                           {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01, "scheduler": "step",
                            "step_size": 6, "gamma": 0.1, "batch_size": 64, "epochs": 25, "seed": 1,
                            "monitor": "val_accuracy"}),
    "clipe-ce.yaml": ("clipe-ce", {"hidden": 512}, {**CLIPE_TRAIN, "batch_size": 32}),
    "clipe-contrastive.yaml": ("clipe-contrastive", {"hidden": 512, "synonyms": True},
                               {**CLIPE_TRAIN, "batch_size": 8}),
    "coop.yaml": ("coop", {"n_ctx": 16, "class_specific": False},
                  {"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 0.0005, "scheduler": "cosine",
                   "warmup_epochs": 1, "warmup_lr": 0.00001, "batch_size": 32, "epochs": 200}),
    "linear-probe.yaml": ("linear-probe", {}, {}),
    # no recipe is published for UGRIE (abstract only): emoclip's own choices, stated in the README
    "ugrie.yaml": ("ugrie", {"tune": "full", "prefix_length": 8, "length_norm": "token-mean"},
                   {"optimizer": "adamw", "lr": 0.0001, "weight_decay": 0.01, "batch_size": 16, "epochs": 10}),
}


def test_every_shipped_method_config_has_a_recipe_check():
    assert sorted(p.name for p in METHODS.glob("*.yaml")) == sorted(RECIPES)


@pytest.mark.parametrize("file", sorted(RECIPES))
def test_shipped_config_carries_the_published_numbers(file):
    method, options, train = RECIPES[file]
    text = (METHODS / file).read_text()
    assert text.startswith("# "), "each recipe opens with a comment citing its source"
    config = read_config(METHODS / file)
    assert config["method"] == method
    assert {k: config.get("options", {}).get(k) for k in options} == options
    assert {k: config.get("train", {}).get(k) for k in train} == train
    TrainConfig.from_dict(config.get("train") or {})  # every key is a real training option
    assert method in list_methods()


@pytest.mark.parametrize("method, file", [
    ("ptdpc", "ptdpc-paper.yaml"), ("coop", "coop.yaml"), ("clipe-ce", "clipe-ce.yaml"),
    ("clipe-contrastive", "clipe-contrastive.yaml"), ("ugrie", "ugrie.yaml")])
def test_method_defaults_are_their_published_recipe(method, file):
    """`emoclip train --method X` without a config trains with the same recipe the shipped file states."""
    defaults = TrainConfig.from_dict(list_methods()[method].train_defaults)
    shipped = TrainConfig.from_dict({**list_methods()[method].train_defaults, **read_config(METHODS / file)["train"]})
    assert defaults == shipped


@pytest.mark.parametrize("grid", sorted(p.name for p in (METHODS.parent / "sweeps").glob("*.yaml")))
def test_shipped_sweeps_plan_from_the_shipped_configs(grid, monkeypatch, tmp_path):
    from emoclip.training.sweep import plan, read_grid

    monkeypatch.chdir(tmp_path)  # the sweeps name recipes, found from any folder (as after a pip install)
    runs = plan(read_grid(METHODS.parent / "sweeps" / grid))
    assert runs and len({r.folder for r in runs}) == len(runs)  # every run has its own folder
    assert {r.config["method"] for r in runs} >= {"zero-shot", "ptdpc", "clipe-ce", "linear-probe"}
