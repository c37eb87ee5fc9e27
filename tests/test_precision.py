"""--precision: the choice follows the CPU's capability *and* a measurement; bf16 stays close to fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emoclip.core.errors import EmoclipError
from emoclip.core.hardware import CpuInfo
from emoclip.encoder.backbone import load_backbone
from emoclip.encoder.precision import REQUIRED_SPEEDUP, bf16_speedup, resolve_precision

AMX = CpuInfo("Fake Xeon with AMX", frozenset({"avx512f", "amx_bf16", "amx_tile", "avx512_bf16"}), 2, "AVX512")
AVX512_BF16 = CpuInfo("Fake Xeon, AMX hidden", frozenset({"avx512f", "avx512_bf16"}), 2, "AVX512")
EPYC = CpuInfo("Fake EPYC", frozenset({"avx2", "fma"}), 2, "AVX2")

# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per value); through a transformer the errors
# partly cancel. Measured on the tiny model: cosine >= 0.9995 to fp32; on ViT-B/32 with random
# weights >= 0.9999 (README). 0.995 leaves an order of magnitude of margin and is still far above
# the cosine between features of two different images (~0.9 or less on the tiny model).
BF16_MIN_COSINE = 0.995


def never_measured(_info):
    raise AssertionError("a CPU without native bf16 must not even be measured")


def test_auto_is_fp32_without_native_bf16():
    assert resolve_precision("auto", "cpu", EPYC, never_measured) == "fp32"


@pytest.mark.parametrize("cpu", [AMX, AVX512_BF16], ids=["amx", "avx512_bf16"])
def test_auto_is_bf16_where_native_and_measured_faster(cpu):
    assert resolve_precision("auto", "cpu", cpu, lambda _: 6.0) == "bf16"


@pytest.mark.parametrize("speedup", [0.5, 1.0, REQUIRED_SPEEDUP - 0.01])
def test_auto_falls_back_to_fp32_when_bf16_is_not_faster(speedup):
    # e.g. a VM that reports avx512_bf16 but hides AMX: bf16 matmul measured at ~0.5-0.7x fp32
    assert resolve_precision("auto", "cpu", AVX512_BF16, lambda _: speedup) == "fp32"


def test_auto_on_cuda_is_half_precision_and_explicit_choices_are_kept():
    assert resolve_precision("auto", "cuda", EPYC, never_measured) == "fp16"
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, "cpu", EPYC, never_measured) == explicit
    assert resolve_precision("int8", "cpu", EPYC, never_measured) == "int8"  # OpenVINO (encoder/int8.py)
    with pytest.raises(EmoclipError, match="int8 runs on the CPU"):
        resolve_precision("int8", "cuda", EPYC)
    with pytest.raises(EmoclipError, match="unknown precision 'int4'"):
        resolve_precision("int4", "cpu", EPYC)


def test_the_measurement_is_remembered_per_machine(tmp_path):
    path = tmp_path / "precision.json"
    calls = []

    def measure():
        calls.append(1)
        return 2.5

    assert bf16_speedup(AMX, measure, path) == 2.5
    assert bf16_speedup(AMX, measure, path) == 2.5
    assert len(calls) == 1  # second time from the file
    assert bf16_speedup(AVX512_BF16, lambda: 0.6, path) == 0.6  # another CPU (flags): measured anew
    memory = json.loads(path.read_text())
    assert sorted(e["bf16_speedup"] for e in memory.values()) == [0.6, 2.5]
    path.write_text("{not json")
    assert bf16_speedup(AMX, measure, path) == 2.5 and len(calls) == 2  # a damaged file is measured over


def unit_features(backbone, pixels):
    return backbone.encode_pixels(pixels).numpy()


def test_bf16_runs_the_image_tower_in_bf16_and_stays_close_to_fp32(tiny):
    bf16 = load_backbone("tiny", "random", "cpu", precision="bf16")
    assert bf16.spec.precision == "bf16" and tiny.spec.precision == "fp32"
    assert {p.dtype for p in bf16.model.visual.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in bf16.model.transformer.parameters()} == {torch.float32}  # text tower as trained
    pixels = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    exact, fast = unit_features(tiny, pixels), unit_features(bf16, pixels)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    cosine = (exact * fast).sum(1)
    assert cosine.min() >= BF16_MIN_COSINE, cosine
    between_images = exact @ exact.T
    assert between_images[~np.eye(8, dtype=bool)].max() < cosine.min()  # closer than any other image
    texts = ["a photo seems to express a feeling of awe"]
    assert torch.equal(bf16.encode_texts(texts), tiny.encode_texts(texts))


def test_build_tagger_defaults_to_auto_and_evaluation_to_exact():
    from emoclip.tagging.config import TaggerConfig

    assert TaggerConfig().precision == "auto" and TaggerConfig().decode == "draft"
    with pytest.raises(EmoclipError, match="unknown decode mode"):
        TaggerConfig(decode="fast")
