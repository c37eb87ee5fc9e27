"""Loading CLIP the way users expect: tags, local files, random weights; fast, clear failures."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from emoclip.core.errors import EmoclipError, WeightsUnavailableError
from emoclip.encoder.backbone import load_backbone

OFFLINE_BOUND_S = 10.0


def test_encoders_are_frozen(tiny):
    assert not tiny.model.training
    assert all(not p.requires_grad for p in tiny.model.parameters())


def test_random_weights_are_seeded_and_announced(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="emoclip"):
        again = load_backbone("tiny", "random", "cpu")
    assert "predictions are meaningless" in caplog.text
    for (name, a), (_, b) in zip(tiny.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert again.identity() == tiny.identity()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_state_dict_files_load(tiny, tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = load_backbone("tiny", str(path), "cpu")
    assert loaded.weights.kind == "file" and loaded.weights_id.startswith("sha256:")
    texts = ["a photo seems to express a feeling of awe"]
    assert torch.equal(loaded.encode_texts(texts), tiny.encode_texts(texts))  # same weights, same call


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_openai_style_torchscript_archive_loads(tiny, tmp_path):
    source = open_clip.create_model("tiny", force_quick_gelu=True)
    source.load_state_dict(tiny.model.state_dict())
    traced = torch.jit.trace(source, (torch.randn(1, 3, 32, 32), tiny.tokenize(["hi"])), strict=False)
    traced.save(str(tmp_path / "tiny_openai.pt"))
    loaded = load_backbone("tiny", str(tmp_path / "tiny_openai.pt"), "cpu")
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), tiny.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_weights_that_do_not_fit_the_model_are_refused(tmp_path):
    other = open_clip.create_model("RN50").state_dict()
    save_file({k: v.contiguous() for k, v in list(other.items())[:5]}, str(tmp_path / "rn50.safetensors"))
    with pytest.raises(WeightsUnavailableError, match="does not fit model tiny"):
        load_backbone("tiny", str(tmp_path / "rn50.safetensors"), "cpu")


def test_missing_file_unknown_tag_and_unknown_model_are_clear():
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_backbone("tiny", "/no/such/weights.pt", "cpu")
    with pytest.raises(WeightsUnavailableError, match="neither a pretrained tag of ViT-B-32.*openai"):
        load_backbone("ViT-B-32", "not-a-tag", "cpu")
    with pytest.raises(EmoclipError, match="unknown model 'ViT-Q-99'"):
        load_backbone("ViT-Q-99", "random", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present, so --device cuda is valid")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(EmoclipError, match="no CUDA GPU"):
        load_backbone("tiny", "random", "cuda")


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:9"], ids=["default-hub", "refused-endpoint"])
def test_offline_without_weights_stops_fast_with_a_fix(tmp_path, awkward_images, endpoint):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "EMOCLIP_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "emoclip", "predict", str(awkward_images["good"]),
                           "--model", "ViT-B-32", "--pretrained", "openai", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.perf_counter() - started
    if done.returncode == 0:
        pytest.skip("the hub is reachable from here, so the weights downloaded")
    assert done.returncode == 2
    assert elapsed < OFFLINE_BOUND_S, f"took {elapsed:.1f}s"
    message = done.stderr.strip().splitlines()[-1]
    assert "--pretrained PATH" in message and "EMOCLIP_PRETRAINED" in message
    assert "Traceback" not in done.stderr
