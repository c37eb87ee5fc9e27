"""Trainable methods, proven by construction on the tiny backbone (parametrised over the registry)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from emoclip.core.errors import EmoclipError
from emoclip.encoder.backbone import load_backbone
from emoclip.encoder.prompt_encoder import PromptTextEncoder
from emoclip.labels.taxonomy import load_taxonomy
from emoclip.methods import create_method, list_methods
from emoclip.methods.checkpoint import load_checkpoint, save_checkpoint
from emoclip.methods.zeroshot import ZeroShotClassifier
from emoclip.training.trainer import TrainConfig, train
from tests.conftest import separable_task

TEMPLATE = "a photo seems to express a feeling of {}"
METHODS = sorted(list_methods())


@pytest.fixture(scope="module")
def six():
    return load_taxonomy("emotionroi6")


@pytest.fixture(scope="module")
def separable(tiny):
    """Six classes whose features cluster around random directions: a task any method should learn."""
    return separable_task(tiny, 180, 60)


@pytest.fixture
def options_for(request):
    """Each method's options for the registry-wide tests: ugrie reads the tiny offline BART (on one thread:
    its hundreds of tiny matrix products run ~30× slower when two threads fight a busy machine's cores)."""
    threads = torch.get_num_threads()

    def options(name: str) -> dict:
        if name != "ugrie":
            return {}
        torch.set_num_threads(1)
        return {"bart": str(request.getfixturevalue("tiny_bart"))}
    yield options
    torch.set_num_threads(threads)


def quick_config(name: str, **overrides) -> TrainConfig:
    base = {"epochs": 6, "batch_size": 30, "optimizer": "adam", "lr": 0.03 if name in ("ptdpc", "coop") else 1e-3}
    if name == "ugrie":  # the tiny random BART needs ~60 steps before it reads the image prefix at all
        base.update(batch_size=10, lr=1e-2)
    return TrainConfig(**{**base, **overrides})


@pytest.mark.parametrize("name", METHODS)
def test_every_method_learns_a_separable_task_far_above_chance(tiny, six, separable, name, tmp_path, options_for):
    (train_x, train_y), (val_x, val_y) = separable
    method = create_method(name, tiny, six, options_for(name))
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    result = train(method, (train_x, train_y), (val_x, val_y), quick_config(name), tmp_path, progress=False)
    accuracy = (method.logits(val_x).argmax(1) == val_y).float().mean().item()
    assert accuracy >= 0.5, f"{name}: {accuracy:.2f} (chance is 0.17)"
    assert result["val_accuracy"] >= 0.5
    for key, value in tiny.model.state_dict().items():  # the backbone is untouched, bit for bit
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("name", METHODS)
def test_only_declared_parameters_get_gradients(tiny, six, separable, name, options_for):
    method = create_method(name, tiny, six, options_for(name))
    (x, y), _ = separable
    batch = {"features": x[:12], "generator": torch.Generator().manual_seed(0), "index": torch.arange(12)}
    method.loss(method(x[:12]), y[:12], batch).backward()
    declared = {id(p) for p in method.trainable_parameters()}
    assert declared
    for p in method.trainable_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.model.parameters())
    assert all(p.grad is None for p in method.parameters() if id(p) not in declared)


@pytest.mark.parametrize("name", METHODS)
def test_save_then_load_gives_identical_logits(tiny, six, separable, name, tmp_path, options_for):
    (x, y), val = separable
    method = create_method(name, tiny, six, options_for(name))
    train(method, (x, y), val, quick_config(name, epochs=1), tmp_path / "run", progress=False)
    save_checkpoint(tmp_path / "ckpt", method)
    loaded = load_checkpoint(tmp_path / "ckpt", backbone=tiny)
    assert torch.equal(loaded.logits(x[:20]), method.logits(x[:20]))
    meta = json.loads((tmp_path / "ckpt" / "model.json").read_text())
    assert meta["method"] == name and meta["backbone"]["model"] == "tiny"
    assert (tmp_path / "ckpt" / "model.safetensors").stat().st_size < 2_000_000


def test_checkpoint_refuses_another_backbone(tiny, tiny_other, six, tmp_path):
    save_checkpoint(tmp_path, create_method("clipe-ce", tiny, six))
    with pytest.raises(EmoclipError, match="checkpoint was trained on tiny with weights random-seed0"):
        load_checkpoint(tmp_path, backbone=tiny_other)
    with pytest.raises(EmoclipError, match="not an emoclip checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


# -- PT-DPC by construction ------------------------------------------------------------------------
def test_normalised_ptdpc_at_initialisation_is_zero_shot_with_its_template(tiny, six, shake):
    # shaken: `shake` images at once, at 1 and 2 threads. PT-DPC's text encoding and zero-shot's are
    # different computations, so logits (scale x cosine) agree to 1e-4, i.e. cosines to about 1e-6.
    feats = F.normalize(torch.randn(shake, tiny.feature_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    zero_shot = ZeroShotClassifier(tiny, six, TEMPLATE).logits(feats)
    for weight in ("cos01", "cos"):
        method = create_method("ptdpc", tiny, six, {"template": TEMPLATE, "normalize": True, "weight": weight})
        torch.testing.assert_close(method.logits(feats), zero_shot, rtol=0, atol=1e-4)
    for switches in ({"instance_specific": False}, {"class_specific": False}):
        method = create_method("ptdpc", tiny, six, {"template": TEMPLATE, "normalize": True, **switches})
        torch.testing.assert_close(method.logits(feats), zero_shot, rtol=0, atol=1e-4)


def test_prompt_text_encoder_at_initialisation_equals_encode_text(tiny, six, shake):
    # another computation than encode_text (embeddings injected, context trimmed): 1e-5 on unit vectors
    for learn_sot in (False, True):
        encoder = PromptTextEncoder(tiny, six.names, TEMPLATE)
        classes = torch.arange(len(six))
        block = encoder.initial_block(learn_sot).expand(len(six), -1, -1)
        with torch.no_grad():
            ours = encoder.encode(block, classes, learn_sot)
            direct = F.normalize(tiny.model.encode_text(tiny.tokenize([TEMPLATE.format(c) for c in six.names])), dim=-1)
        torch.testing.assert_close(ours, direct, rtol=0, atol=1e-5)


def test_trimmed_context_equals_full_77_positions(tiny, six, shake):
    # 12 vs 77 positions are different matmul shapes: equal to 1e-5 on unit vectors, at 1 and 2 threads
    trimmed = PromptTextEncoder(tiny, six.names, TEMPLATE, trim=True)
    full = PromptTextEncoder(tiny, six.names, TEMPLATE, trim=False)
    assert trimmed.length < 20 and full.length == 77
    g = torch.Generator().manual_seed(2)
    block = torch.randn(12, trimmed.n_ctx, trimmed.width, generator=g) * 0.05
    classes = torch.arange(12) % len(six)
    with torch.no_grad():
        torch.testing.assert_close(trimmed.encode(block, classes, False), full.encode(block, classes, False),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("weight", ["cos", "cos01"])
@pytest.mark.parametrize("normalize", [False, True])
def test_composition_equals_equation_3_computed_directly(tiny, six, weight, normalize):
    method = create_method("ptdpc", tiny, six, {"weight": weight, "normalize": normalize})
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        method.prompts.copy_(torch.randn(method.prompts.shape, generator=g))
    feats = F.normalize(torch.randn(4, tiny.feature_dim, generator=g), dim=-1)
    P = method.prompts.detach()
    expected = torch.zeros(4, P.shape[1], P.shape[2])
    for n in range(4):
        for j in range(P.shape[1]):
            w = torch.stack([torch.dot(P[k, j], feats[n]) / P[k, j].norm() for k in range(P.shape[0])])
            w = (w + 1) / 2 if weight == "cos01" else w
            w = w / w.sum() if normalize else w
            expected[n, j] = sum(w[k] * P[k, j] for k in range(P.shape[0]))
    torch.testing.assert_close(method.compose(feats).detach(), expected, rtol=1e-4, atol=1e-5)


def test_ablation_rows_are_switches_of_one_model(tiny, six):
    shapes = {}
    for instance in (False, True):
        for cls in (False, True):
            m = create_method("ptdpc", tiny, six, {"instance_specific": instance, "class_specific": cls})
            shapes[(instance, cls)] = tuple(m.prompts.shape)
    assert shapes[(False, False)][0] == shapes[(True, False)][0] == 1
    assert shapes[(False, True)][0] == shapes[(True, True)][0] == len(six)
    coop = create_method("coop", tiny, six)
    assert type(coop).__mro__[1] is type(create_method("ptdpc", tiny, six)).__mro__[1]  # one implementation


def test_release_loss_is_a_double_softmax(tiny, six):
    method = create_method("ptdpc", tiny, six, {"loss": "softmax-ce"})
    logits, targets = torch.randn(3, 6), torch.tensor([0, 2, 5])
    expected = F.cross_entropy(torch.softmax(logits, -1), targets)
    torch.testing.assert_close(method.loss(logits, targets, {}), expected)


def test_token_width_other_than_feature_width_is_a_clear_error(tmp_path, six):
    config = json.loads(open_clip.get_model_config("tiny").__repr__().replace("'", '"').replace("False", "false"))
    config["embed_dim"] = 48
    (tmp_path / "tiny-proj48.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(tmp_path / "tiny-proj48.json"))
    backbone = load_backbone("tiny-proj48", "random", "cpu")
    with pytest.raises(EmoclipError, match="token width == feature width.*64 vs 48"):
        create_method("ptdpc", backbone, six)
    assert create_method("ptdpc", backbone, six, {"instance_specific": False}).prompts.shape[-1] == 64


# -- CLIP-E contrastive: any taxonomy ------------------------------------------------------------
def test_contrastive_head_predicts_under_other_taxonomies(tiny, six, separable):
    (x, _), _ = separable
    method = create_method("clipe-contrastive", tiny, six)
    polarity = method.for_taxonomy(load_taxonomy("polarity")).logits(x[:7])
    assert polarity.shape == (7, 2)
    texts, owners = method.captions_for(load_taxonomy("polarity"))
    fine_joy = texts.index("a photo that seems to express joy")
    assert owners[fine_joy] == 0  # joy's caption counts for 'positive'
    assert owners[texts.index("a photo that seems to express delight")] == 0  # a synonym of joy
    mikels = method.for_taxonomy(load_taxonomy("mikels8")).logits(x[:7])
    assert mikels.shape == (7, 8)


def test_unknown_method_and_option_are_clear(tiny, six):
    with pytest.raises(EmoclipError, match="unknown method 'nope'"):
        create_method("nope", tiny, six)
    with pytest.raises(EmoclipError, match="has no option colour"):
        create_method("ptdpc", tiny, six, {"colour": "red"})


# -- the loop --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "overrides"), [
    ("ptdpc", {"optimizer": "sgd", "lr": 0.05, "scheduler": "step", "step_size": 2}),
    ("clipe-contrastive", {"scheduler": "plateau", "patience": 0, "batch_size": 8}),
])
def test_interrupted_and_resumed_training_equals_uninterrupted(tiny, six, separable, tmp_path, name, overrides):
    (x, y), val = separable
    data = ((x[:90], y[:90]), (val[0][:30], val[1][:30]))
    config = quick_config(name, epochs=4, **overrides)
    straight = create_method(name, tiny, six)
    train(straight, *data, config, tmp_path / "a", progress=False)
    interrupted = create_method(name, tiny, six)
    train(interrupted, *data, config, tmp_path / "b", progress=False, stop_after=2)
    resumed = create_method(name, tiny, six)
    train(resumed, *data, config, tmp_path / "b", resume=True, progress=False)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]


@pytest.mark.parametrize("learn_sot", [False, True])
def test_shared_prefix_equals_running_every_prompt_in_full(tiny, six, learn_sot, shake):
    # the shared prefix runs once per image instead of once per class: other shapes, so 1e-5, shaken
    encoder = PromptTextEncoder(tiny, six.names, TEMPLATE)
    assert encoder.shared_prefix_ok
    g = torch.Generator().manual_seed(4)
    width = encoder.n_ctx + (1 if learn_sot else 0)
    blocks = torch.randn(3, width, encoder.width, generator=g) * 0.05
    groups = torch.arange(3).repeat_interleave(len(six))
    classes = torch.arange(len(six)).repeat(3)
    with torch.no_grad():
        shared = encoder.encode(blocks, classes, learn_sot, groups)
        plain = encoder.encode(blocks[groups], classes, learn_sot)
        full = PromptTextEncoder(tiny, six.names, TEMPLATE, trim=False).encode(blocks[groups], classes, learn_sot)
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(shared, full, rtol=0, atol=1e-5)
