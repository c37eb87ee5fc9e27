"""The encoder spec: one immutable value that the pipeline, the cache key and the records share."""

from __future__ import annotations

import dataclasses

import pytest

from emoclip.core.errors import EmoclipError
from emoclip.encoder.backbone import load_backbone
from emoclip.encoder.cache import FeatureCache, compute_features
from emoclip.encoder.spec import EncoderSpec


def test_spec_is_frozen_resolved_and_hashable(tiny):
    spec = tiny.spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.decode = "draft"
    assert {spec, spec.replace()} == {spec}
    assert spec.identity()["preprocess"] == tiny.preprocess_config and spec.input_size == 32
    with pytest.raises(EmoclipError, match="resolved precision"):
        spec.replace(precision="auto")
    with pytest.raises(EmoclipError, match="unknown decode mode"):
        EncoderSpec.create("tiny", "random-seed0", {}, decode="fast")


def test_every_field_of_the_spec_separates_the_cache(tiny, tiny_other, tmp_path):
    bf16 = load_backbone("tiny", "random", "cpu", precision="bf16")
    variants = {"plain": tiny, "other weights": tiny_other, "draft": tiny.with_decode("draft"), "bf16": bf16,
                "bf16 draft": bf16.with_decode("draft")}
    dirs = {name: FeatureCache(tmp_path, b).dir for name, b in variants.items()}
    assert len(set(dirs.values())) == len(variants), dirs
    assert FeatureCache(tmp_path, load_backbone("tiny", "random", "cpu")).dir == dirs["plain"]  # same spec, same key
    assert FeatureCache(tmp_path, tiny).spec.identity()["precision"] == "fp32"


def test_a_cache_of_another_spec_is_refused(tiny, photo_folder, tmp_path):
    cache = FeatureCache(tmp_path, tiny)
    with pytest.raises(ValueError, match="another encoder spec"):
        compute_features(tiny.with_decode("draft"), sorted(photo_folder.rglob("*.jpg")), cache)


def test_checkpoints_and_reports_record_the_spec(tmp_path):
    from tests.conftest import make_split_data, run_cli

    root, split = make_split_data(tmp_path, per_class=3)
    tiny = ["--model", "tiny", "--pretrained", "random", "--device", "cpu", "--no-cache"]
    done = run_cli("train", "--method", "linear-probe", "--split-file", split, "--root", root, *tiny,
                   "--precision", "bf16", "--out", tmp_path / "run")
    assert done.exit_code == 0, done.output
    import json

    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["backbone"]["precision"] == "bf16" and meta["backbone"]["decode"] == "full"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["run"]["backbone"]["precision"] == "bf16"
    done = run_cli("evaluate", "--split-file", split, "--root", root, *tiny, "-t", "emotionroi6",
                   "--out", tmp_path / "eval")
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["run"]["backbone"]["precision"] == "fp32"
