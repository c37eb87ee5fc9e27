"""Contracts every registered method keeps, checked over the whole registry (UGRIE included):

- the seed reaches every initialisation: two seeds give different initial weights, one seed the same;
- an interrupted and resumed run ends bit-identical to an uninterrupted one (same computation, same
  seeded generators: equality holds by construction, so it is asserted exactly).

A method added to the registry without an entry in ``RANDOM_INIT`` fails here until someone says how
its initialisation depends on the seed.
"""

from __future__ import annotations

import pytest
import torch

from emoclip.labels.taxonomy import load_taxonomy
from emoclip.methods import create_method, list_methods
from emoclip.training.trainer import TrainConfig, train
from tests.conftest import separable_task

METHODS = sorted(list_methods())
# The options under which each method's initial weights are random, or None where they are fixed by
# construction (then the seed must change nothing, which is asserted too).
RANDOM_INIT: dict[str, dict | None] = {
    "clipe-ce": {},
    "clipe-contrastive": {},
    "coop": {"n_ctx": 2},             # context from template words is deterministic; random context is seeded
    "ptdpc": {"n_ctx": 2},
    "linear-probe": None,             # zero weights: the problem is convex (the seed moves the validation part)
    "ugrie": {"tune": "lora"},        # mapping network and LoRA adapters (full tuning: the mapping only)
}


@pytest.fixture(scope="module")
def six():
    return load_taxonomy("emotionroi6")


@pytest.fixture
def options_for(request):
    """UGRIE reads the tiny offline BART, on one thread (its many tiny products crawl when threads fight)."""
    threads = torch.get_num_threads()

    def options(name: str, extra: dict | None = None) -> dict:
        if name != "ugrie":
            return dict(extra or {})
        torch.set_num_threads(1)
        return {"bart": str(request.getfixturevalue("tiny_bart")), **(extra or {})}
    yield options
    torch.set_num_threads(threads)


def test_every_registered_method_says_how_its_initialisation_depends_on_the_seed():
    assert sorted(RANDOM_INIT) == METHODS


def _weights(method) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


@pytest.mark.parametrize("name", METHODS)
def test_two_seeds_give_different_initial_weights_and_one_seed_the_same(tiny, six, name, options_for):
    options = options_for(name, RANDOM_INIT[name] or {})
    first, again, other = (_weights(create_method(name, tiny, six, options, seed=s)) for s in (1, 1, 2))
    assert first.keys() == again.keys() == other.keys() and first
    for key in first:
        torch.testing.assert_close(again[key], first[key], rtol=0, atol=0)  # same seed: the same draw
    differs = [k for k in first if not torch.equal(first[k], other[k])]
    if RANDOM_INIT[name] is None:
        assert differs == []  # fixed by construction
    else:
        assert differs, f"{name}: seeds 1 and 2 start from identical weights"


@pytest.fixture(scope="module")
def separable(tiny):
    return separable_task(tiny, 36, 12)


def _config(name: str) -> TrainConfig:
    """Three epochs with a scheduler and momentum/Adam state, so resuming has optimiser state to restore."""
    base = {"epochs": 3, "batch_size": 12, "optimizer": "adam", "lr": 1e-3, "seed": 3}
    if name in ("ptdpc", "coop"):
        base.update(optimizer="sgd", lr=0.05, scheduler="step", step_size=1, gamma=0.5)
    if name.startswith("clipe"):
        base.update(scheduler="plateau", patience=0, monitor="val_loss")
    return TrainConfig(**base)


@pytest.mark.parametrize("name", METHODS)
def test_killed_after_an_epoch_then_resumed_equals_uninterrupted(tiny, six, separable, tmp_path, name, options_for):
    """Stopping after epoch 1 and resuming (a fresh process would build the method anew) ends with the very
    same weights as a straight run; for UGRIE this is the state whose saved config (JSON: string keys in
    bart_config.id2label) must compare equal to the in-memory one (int keys)."""
    train_xy, val_xy = separable
    config = _config(name)
    options = options_for(name, RANDOM_INIT[name] or {})

    def fresh():
        return create_method(name, tiny, six, options, seed=config.seed)

    straight = fresh()
    train(straight, train_xy, val_xy, config, tmp_path / "a", progress=False)
    interrupted = fresh()
    train(interrupted, train_xy, val_xy, config, tmp_path / "b", progress=False, stop_after=1)
    resumed = fresh()
    summary = train(resumed, train_xy, val_xy, config, tmp_path / "b", resume=True, progress=False)
    expected = straight.state_dict()
    assert resumed.state_dict().keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    if summary.get("epochs"):  # the loop's methods: the log holds every epoch once
        assert [r["epoch"] for r in summary["history"]] == [1, 2, 3]


def test_the_seed_draws_the_validation_part_and_the_few_shot_images():
    """What every method shares: the validation part carved from train and the few-shot draw follow the seed."""
    from pathlib import Path

    from emoclip.datasets.dataset import Dataset, Sample, few_shot
    from emoclip.training.common import train_val

    data = Dataset("d", [Sample(Path(f"/d/{c}{i}.jpg"), c, "train") for c in ("joy", "fear") for i in range(20)])

    def val_part(seed):
        return sorted(str(p) for p in train_val(data, 0.25, seed)[1].paths)

    def draw(seed):
        return sorted(str(p) for p in few_shot(data, 4, seed)[0].paths)

    assert val_part(1) == val_part(1) and val_part(1) != val_part(2)
    assert draw(1) == draw(1) and draw(1) != draw(2)
