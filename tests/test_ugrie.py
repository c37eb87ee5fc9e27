"""UGRIE proven by construction on a tiny random BART with a tokenizer built offline (conftest ``tiny_bart``)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from emoclip.core.errors import EmoclipError
from emoclip.labels.taxonomy import load_taxonomy, taxonomy_from_labels
from emoclip.methods import create_method
from emoclip.methods.checkpoint import load_checkpoint, save_checkpoint
from emoclip.methods.ugrie.templates import EmotionTemplates, load_templates
from emoclip.training.trainer import TrainConfig, train
from tests.conftest import TINY_CLI, make_split_data
from tests.conftest import run_cli as run

# Two computations of the same log-likelihood with other batch shapes (all pairs at once vs one
# sentence at a time) agree to fp32 rounding: ~1e-6 on per-token log-probs of magnitude < 10,
# summed over ~15 tokens. 1e-4 leaves a wide margin and is far below any real change of a score.
SCORE_ATOL = 1e-4
# Enough steps for the tiny random BART to read the image prefix: small batches, a high rate.
FAST = {"epochs": 5, "batch_size": 10, "optimizer": "adam", "lr": 1e-2}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny BART's hundreds of small matrix products run ~30× slower when two threads fight a busy
    machine's cores; one thread keeps this module fast everywhere (results do not depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def six():
    return load_taxonomy("emotionroi6")


def clusters(dim: int, n_classes: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features around ``n_classes`` random directions (train n, validation n // 3): a separable task."""
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)

    def make(count):
        y = torch.arange(count) % n_classes
        return F.normalize(centers[y] + 0.15 * torch.randn(count, dim, generator=g), dim=-1), y

    return (*make(n), make(n // 3))


def ugrie(tiny, taxonomy, bart, **options):
    return create_method("ugrie", tiny, taxonomy, {"bart": str(bart), **options})


def test_templates_spell_the_parent_chain():
    templates = load_templates(None)
    mikels, parrott, polarity = load_taxonomy("mikels8"), load_taxonomy("parrott25"), load_taxonomy("polarity")
    assert templates.sentence_for(mikels, mikels.index("awe")) == "this image evokes awe, a positive feeling"
    assert (templates.sentence_for(parrott, parrott.index("zest"))
            == "this image evokes zest, a kind of joy, a positive feeling")
    assert templates.sentences(polarity) == ["this image evokes a positive feeling",
                                             "this image evokes a negative feeling"]
    assert templates.task_text(polarity) == "emotion model polarity: positive, negative"
    with pytest.raises(EmoclipError, match="exactly one"):
        EmotionTemplates.from_dict({**templates.to_dict(), "sentence": "no slot here"})


def test_class_scores_equal_summed_token_logprobs_recomputed_one_sentence_at_a_time(tiny, tiny_bart, shake):
    # shaken: `shake` images scored at once (every image × class pair in one decoder batch), at 1 and 2
    # threads, against BART's own forward on one (image, sentence) at a time: see SCORE_ATOL.
    # Labels of different token lengths (unknown words read as <unk>), a taxonomy never trained on.
    taxonomy = taxonomy_from_labels(["calm", "deeply tense mood", "joy"], name="mood")
    six = load_taxonomy("emotionroi6")
    summed, averaged = (ugrie(tiny, six, tiny_bart, length_norm=norm).eval() for norm in ("sum", "token-mean"))
    x = F.normalize(torch.randn(shake, tiny.feature_dim, generator=torch.Generator().manual_seed(1)), dim=-1)

    bart, tok, cfg = summed.bart, summed.tokenizer, summed.bart.config
    templates = load_templates(None)

    def ids(text):
        return torch.tensor([[cfg.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"], cfg.eos_token_id]])

    task = ids(templates.task_text(taxonomy))
    expected = torch.zeros(shake, len(taxonomy))
    lengths = torch.zeros(len(taxonomy))
    for c, sentence in enumerate(templates.sentences(taxonomy)):
        labels = ids(sentence)
        lengths[c] = labels.shape[1]
        decoder_input = torch.cat([torch.tensor([[cfg.decoder_start_token_id]]), labels[:, :-1]], 1)
        for n in range(shake):
            with torch.no_grad():
                embeds = torch.cat([summed.mapping(x[n:n + 1]), bart.get_input_embeddings()(task)], 1)
                logp = bart(inputs_embeds=embeds, decoder_input_ids=decoder_input).logits.log_softmax(-1)
            expected[n, c] = logp[0, torch.arange(labels.shape[1]), labels[0]].sum()
    assert len(set(lengths.tolist())) > 1
    torch.testing.assert_close(summed.for_taxonomy(taxonomy).logits(x), expected, rtol=0, atol=SCORE_ATOL)
    torch.testing.assert_close(averaged.for_taxonomy(taxonomy).logits(x), expected / lengths * lengths.mean(),
                               rtol=0, atol=SCORE_ATOL)


@pytest.fixture(scope="module")
def unified(tiny, tiny_bart, six, tmp_path_factory):
    """One model trained on two synthetic datasets with different taxonomies (6 and 2 separable classes)."""
    polarity = load_taxonomy("polarity")
    x6, y6, val6 = clusters(tiny.feature_dim, 6, 90, seed=2)
    x2, y2, val2 = clusters(tiny.feature_dim, 2, 30, seed=3)
    method = ugrie(tiny, six, tiny_bart, taxonomies=["emotionroi6", "polarity"])
    clip_before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    targets = torch.cat([method.target_index(six, y6), method.target_index(polarity, y2)])
    val = (torch.cat([val6[0], val2[0]]),
           torch.cat([method.target_index(six, val6[1]), method.target_index(polarity, val2[1])]))
    out = tmp_path_factory.mktemp("unified")
    result = train(method, (torch.cat([x6, x2]), targets), val, TrainConfig(**FAST), out, progress=False)
    return {"method": method, "result": result, "out": out, "val6": val6, "val2": val2, "clip_before": clip_before}


def test_trained_on_separable_features_it_writes_the_right_filled_template(unified, six):
    (vx6, vy6), (vx2, vy2) = unified["val6"], unified["val2"]
    polarity = load_taxonomy("polarity")
    for taxonomy, x, y in ((six, vx6, vy6), (polarity, vx2, vy2)):
        scores, texts = unified["method"].logits_and_texts(x, taxonomy)
        sentences = load_templates(None).sentences(taxonomy)
        written = sum(text == sentences[c] for text, c in zip(texts, y.tolist(), strict=True)) / len(y)
        accuracy = (scores.argmax(1) == y).float().mean().item()
        chance = 1 / len(taxonomy)
        assert written >= chance + 0.4 and accuracy >= chance + 0.4, (taxonomy.name, written, accuracy, texts[:3])


def test_frozen_clip_is_untouched_by_training(unified, tiny):
    for key, value in tiny.model.state_dict().items():
        assert torch.equal(value, unified["clip_before"][key]), key


def test_one_model_trained_on_two_taxonomies_predicts_under_both_after_loading(unified, tiny, six):
    assert unified["result"]["val_accuracy"] >= 0.6
    loaded = load_checkpoint(unified["out"], backbone=tiny)
    assert [t.name for t in loaded.tasks] == ["emotionroi6", "polarity"]
    (vx6, vy6), (vx2, vy2) = unified["val6"], unified["val2"]
    six_accuracy = (loaded.logits(vx6).argmax(1) == vy6).float().mean().item()
    polarity_accuracy = (loaded.for_taxonomy(load_taxonomy("polarity")).logits(vx2).argmax(1) == vy2).float().mean()
    assert six_accuracy >= 0.6 and polarity_accuracy >= 0.9, (six_accuracy, polarity_accuracy)  # chance 1/6, 1/2


@pytest.mark.parametrize("tune", ["full", "lora", "mapping"])
def test_save_then_load_gives_identical_scores_and_keeps_only_what_was_trained(tiny, tiny_bart, six, tmp_path, tune):
    method = ugrie(tiny, six, tiny_bart, tune=tune)
    x, y, _ = clusters(tiny.feature_dim, 6, 12, seed=4)
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-2)
    for _ in range(2):  # move every trained tensor away from its initial value (LoRA's B starts at zero)
        optimizer.zero_grad()
        method.loss(None, y, {"features": x}).backward()
        optimizer.step()
    save_checkpoint(tmp_path, method)
    loaded = load_checkpoint(tmp_path, backbone=tiny)
    polarity = load_taxonomy("polarity")
    assert torch.equal(loaded.logits(x), method.logits(x))
    assert torch.equal(loaded.for_taxonomy(polarity).logits(x), method.for_taxonomy(polarity).logits(x))
    saved = set(load_file(str(tmp_path / "model.safetensors")))
    trained = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trained <= saved
    if tune != "full":
        assert saved == trained and all(k.startswith("mapping.") or "lora_" in k for k in saved)
    meta = json.loads((tmp_path / "model.json").read_text())["config"]
    assert meta["bart"] == str(tiny_bart) and meta["bart_config"]["d_model"] == 32
    assert meta["templates"]["sentence"] == "this image evokes {chain}" and meta["bart_weights"].startswith("sha256:")


def test_bf16_autocast_scores_stay_close_to_fp32(tiny, tiny_bart, six):
    x, _, _ = clusters(tiny.feature_dim, 6, 6, seed=5)
    exact = ugrie(tiny, six, tiny_bart).logits(x)
    bf16 = ugrie(tiny, six, tiny_bart, precision="bf16").logits(x)
    # bf16 keeps 8 bits of mantissa: per-token log-probs move by ~1e-2 relative
    torch.testing.assert_close(bf16, exact, rtol=0.05, atol=0.5)


def test_bad_options_are_one_line_errors(tiny, tiny_bart, six, tmp_path):
    with pytest.raises(EmoclipError, match="tune must be one of full, lora, mapping"):
        ugrie(tiny, six, tiny_bart, tune="half")
    with pytest.raises(EmoclipError, match="BART folder .* does not exist"):
        create_method("ugrie", tiny, six, {"bart": str(tmp_path / "missing")})


@pytest.mark.slow
def test_offline_without_bart_stops_within_10_s_with_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf")}
    (tmp_path / "ckpt").mkdir()
    meta = {"method": "ugrie", "config": {"bart": "facebook/bart-base"}}
    (tmp_path / "ckpt" / "model.json").write_text(json.dumps(meta))
    commands = [["train", "--method", "ugrie", "--root", str(tmp_path), "--out", str(tmp_path / "run")],
                ["predict", "--checkpoint", str(tmp_path / "ckpt"), str(tmp_path)]]
    for command in commands:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "emoclip", *command], env=env, capture_output=True,
                                text=True, timeout=120)
        seconds = time.perf_counter() - started
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("emoclip: error: cannot get BART weights 'facebook/bart-base'")
        assert "--set bart=PATH" in lines[0]
        assert seconds < 10, f"{command[0]}: {seconds:.1f} s"


@pytest.mark.slow
def test_unified_train_over_two_taxonomies_then_predict_and_evaluate_under_each(tiny_bart, tmp_path):
    root, split = make_split_data(tmp_path / "data", per_class=6)
    config = tmp_path / "unified.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "method": "ugrie",
        "datasets": [
            {"name": "six", "taxonomy": "emotionroi6", "data": {"root": str(root), "split_file": str(split)},
             "also": ["polarity"]},
            {"name": "two", "taxonomy": "polarity", "label_taxonomy": "emotionroi6",
             "data": {"root": str(root), "split_file": str(split)}}]}))
    out = tmp_path / "run"
    result = run("train", "--config", config, "--set", f"bart={tiny_bart}", *TINY_CLI, "--epochs", 1, "--shots", 3,
                 "--no-progress", "--out", out)
    assert result.exit_code == 0, result.output
    assert "six_accuracy=" in result.stdout and "two_accuracy=" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    datasets = summary["data"]["datasets"]
    assert datasets["two"]["taxonomy"] == "polarity" and datasets["six"]["taxonomy"] == "emotionroi6"
    assert datasets["six"]["train"] == datasets["two"]["train"] == 6 * 3  # the few-shot protocol, per dataset
    assert summary["data"]["train"] == 2 * 6 * 3
    assert json.loads((out / "six" / "metrics.json").read_text())["level"] == "emotionroi6"
    assert json.loads((out / "two" / "metrics.json").read_text())["level"] == "polarity"
    record = json.loads((out / "six" / "metrics.json").read_text())["run"]  # a 2-shot and a full run never merge
    assert record["shots"] == 3 and record["target"] == "labels" and record["data_source"] == str(split)
    assert "fold" in record and record["setting"]["shots"] == 3 and record["setting"]["unified_with"] == ["six", "two"]

    rows = [json.loads(line) for line in run("predict", "--checkpoint", out, root / "joy").stdout.splitlines()]
    assert len(rows) == 6 and rows[0]["label"] in load_taxonomy("emotionroi6").names
    assert set(rows[0]["polarity"]["distribution"]) == {"positive", "negative"}
    assert isinstance(rows[0]["generated"], str)
    polar = run("predict", "--checkpoint", out, root / "joy", "-t", "polarity", "--format", "csv")
    table = list(csv.DictReader(polar.stdout.splitlines()))
    assert polar.exit_code == 0 and table[0]["label"] in ("positive", "negative") and "generated" in table[0]
    cross = ["-t", "polarity", "--label-taxonomy", "emotionroi6"]
    for flags, level in ((["--also", "polarity"], "emotionroi6"), (cross, "polarity")):
        evaluated = run("evaluate", "--checkpoint", out, "--root", root, "--split-file", split, *flags,
                        "--out", tmp_path / level)
        assert evaluated.exit_code == 0, evaluated.output
        assert json.loads((tmp_path / level / "metrics.json").read_text())["level"] == level
