"""The default path is OpenAI's CLIP: checked against an independent implementation.

Hugging Face ``transformers``' ``CLIPModel`` (``hidden_act="quick_gelu"``, OpenAI's activation) is
given the very weights emoclip loads, converted into its own layout here, and must produce the same
image and text features to 1e-5 (FEATURE_ATOL: two different computations agree only to rounding).
A control builds the same weights with GELU and shows the comparison sees the difference. The
default preprocessing (resize the shorter side bicubically, centre-crop, normalise with OpenAI's
mean/std) is compared with ``CLIPImageProcessor`` on real Emotion6 images.

The weights are random (no trained weights can be downloaded here), served through the weights
path a user's file takes: a safetensors file loaded by ``load_backbone``. ``tiny`` runs always;
the full ViT-B/32 (600 MB) runs when EMOCLIP_FULL_SIZE=1.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from emoclip.encoder.backbone import load_backbone, register_model_configs
from tests.conftest import EMOTION6, FEATURE_ATOL, assert_close_features, noise_image

TEXTS = ["a photo seems to express a feeling of joy", "sadness", "an angry crowd in the rain", ""]


def to_hf_layout(state: dict[str, torch.Tensor], layers_v: int, layers_t: int) -> dict[str, torch.Tensor]:
    """open_clip's CLIP state dict in transformers' CLIPModel names (q/k/v split, projections transposed)."""
    out = {
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].T,
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].T,
        "logit_scale": state["logit_scale"],
    }
    for ours, theirs, count in (("visual.transformer", "vision_model.encoder", layers_v),
                                ("transformer", "text_model.encoder", layers_t)):
        for i in range(count):
            src, dst = f"{ours}.resblocks.{i}", f"{theirs}.layers.{i}"
            for kind in ("weight", "bias"):
                q, k, v = state[f"{src}.attn.in_proj_{kind}"].chunk(3)
                out |= {f"{dst}.self_attn.q_proj.{kind}": q, f"{dst}.self_attn.k_proj.{kind}": k,
                        f"{dst}.self_attn.v_proj.{kind}": v,
                        f"{dst}.self_attn.out_proj.{kind}": state[f"{src}.attn.out_proj.{kind}"],
                        f"{dst}.layer_norm1.{kind}": state[f"{src}.ln_1.{kind}"],
                        f"{dst}.layer_norm2.{kind}": state[f"{src}.ln_2.{kind}"],
                        f"{dst}.mlp.fc1.{kind}": state[f"{src}.mlp.c_fc.{kind}"],
                        f"{dst}.mlp.fc2.{kind}": state[f"{src}.mlp.c_proj.{kind}"]}
    return {k: v.contiguous().clone() for k, v in out.items()}


def hf_clip(name: str, state: dict[str, torch.Tensor], act: str):
    """transformers' CLIPModel of open_clip architecture ``name`` with ``state``'s weights and activation ``act``."""
    from transformers import CLIPConfig, CLIPModel

    cfg = open_clip.get_model_config(name)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    v_width, t_width = vision["width"], text["width"]
    v_heads = v_width // vision.get("head_width", 64)
    config = CLIPConfig(
        projection_dim=cfg["embed_dim"],
        vision_config={"hidden_size": v_width, "intermediate_size": int(v_width * vision.get("mlp_ratio", 4.0)),
                       "num_hidden_layers": vision["layers"], "num_attention_heads": v_heads,
                       "image_size": vision["image_size"], "patch_size": vision["patch_size"], "hidden_act": act,
                       "layer_norm_eps": 1e-5},
        text_config={"hidden_size": t_width, "intermediate_size": int(t_width * text.get("mlp_ratio", 4.0)),
                     "num_hidden_layers": text["layers"], "num_attention_heads": text["heads"],
                     "max_position_embeddings": text["context_length"], "vocab_size": text["vocab_size"],
                     "hidden_act": act, "layer_norm_eps": 1e-5, "eos_token_id": 49407, "bos_token_id": 49406,
                     "pad_token_id": 0})
    model = CLIPModel(config).eval()
    missing, unexpected = model.load_state_dict(to_hf_layout(state, vision["layers"], text["layers"]), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return model


def _weights_file(name: str, folder: Path) -> Path:
    """Random weights (seed 7) for ``name`` in a safetensors file, with the open_clip config a hub snapshot has."""
    import json

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = open_clip.create_model(name, pretrained=None)
    path = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    return path


ARCHS = ["tiny"] + (["ViT-B-32"] if os.environ.get("EMOCLIP_FULL_SIZE") == "1" else [])


@pytest.fixture(scope="module", params=ARCHS)
def loaded(request, tmp_path_factory):
    register_model_configs()
    path = _weights_file(request.param, tmp_path_factory.mktemp(request.param))
    backbone = load_backbone(request.param, str(path), "cpu", precision="fp32")
    state = {k: v.detach().clone() for k, v in backbone.model.state_dict().items() if k != "attn_mask"}
    return request.param, backbone, state


def _unit(output) -> torch.Tensor:
    """L2-normalised projected features (transformers 5 returns them as the output's ``pooler_output``)."""
    return torch.nn.functional.normalize(getattr(output, "pooler_output", output), dim=-1)


def _pixels(backbone, count: int = 3) -> torch.Tensor:
    return torch.stack([backbone.preprocess(noise_image(96, 80, seed=s)) for s in range(count)])


def test_default_path_equals_transformers_clip_with_quick_gelu(loaded):
    name, backbone, state = loaded
    assert backbone.spec.activation == "quick_gelu"
    reference = hf_clip(name, state, "quick_gelu")
    pixels = _pixels(backbone)
    tokens = backbone.tokenize(TEXTS)
    with torch.no_grad():
        image = _unit(reference.get_image_features(pixel_values=pixels))
        text = _unit(reference.get_text_features(input_ids=tokens))
    assert_close_features(backbone.encode_pixels(pixels).numpy(), image.numpy())
    assert_close_features(backbone.encode_texts(TEXTS).numpy(), text.numpy())


def test_control_a_gelu_model_is_detected(loaded):
    """The same weights with GELU differ by far more than the tolerance: the comparison above can fail."""
    name, backbone, state = loaded
    gelu = hf_clip(name, state, "gelu")
    pixels = _pixels(backbone)
    with torch.no_grad():
        image = _unit(gelu.get_image_features(pixel_values=pixels))
    gap = np.abs(backbone.encode_pixels(pixels).numpy() - image.numpy()).max()
    assert gap > 10 * FEATURE_ATOL, gap  # random weights: ~7e-4 on tiny; trained ones differ far more


def test_default_preprocessing_equals_clip_image_processor_on_emotion6():
    """emoclip's default ViT-B/32 preprocessing against transformers' CLIPImageProcessor (OpenAI's recipe)."""
    images = sorted((EMOTION6 / "images").rglob("*.jpg"))[::200]
    if not images:
        pytest.skip(f"Emotion6 not found at {EMOTION6} (set EMOCLIP_EMOTION6)")
    from PIL import Image
    from transformers import CLIPImageProcessor

    from emoclip.encoder.backbone import _build, make_preprocess

    cfg = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    with torch.device("meta"):  # the architecture as the default path builds it, without allocating weights
        model = _build("ViT-B-32", True, preprocess=dict(cfg), device="meta")
    ours = make_preprocess(model.visual.preprocess_cfg)  # what load_backbone gives the default path
    # OpenAI's reference recipe (clip/clip.py `_transform`), written with torchvision as OpenAI wrote it
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    openai = Compose([Resize(224, interpolation=InterpolationMode.BICUBIC), CenterCrop(224), ToTensor(),
                      Normalize(cfg["mean"], cfg["std"])])
    hf = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                            resample=Image.BICUBIC, image_mean=list(cfg["mean"]), image_std=list(cfg["std"]))
    one_level = 1 / 255 / min(cfg["std"]) + 1e-6  # one uint8 step after normalisation
    compared_hf = 0
    for path in images:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        a = ours(rgb).numpy()
        assert a.shape == (3, 224, 224)
        np.testing.assert_allclose(a, openai(rgb).numpy(), rtol=0, atol=1e-5, err_msg=str(path))
        # transformers floors the centre-crop offset where torchvision rounds it: compare where they agree
        long_side = int(224 * max(rgb.size) / min(rgb.size))
        if (long_side - 224) % 2 == 0:
            b = hf(images=rgb, return_tensors="np")["pixel_values"][0]
            assert np.abs(a - b).max() <= one_level, path  # its bicubic rounds a few pixels one step apart
            compared_hf += 1
    assert compared_hf >= 3
