"""The real download path, through a stand-in hub on 127.0.0.1 (tests/hub_stub.py).

A tag's weights are fetched in the hub's own repository layout, verified against the digest the hub
publishes, built with the activation the tag was trained with, and then work offline; a damaged
cache or download is detected and never used; an interrupted download resumes; a proxy is honoured.
The weights are the tiny architecture's (random), registered as a QuickGELU-trained tag 'openai'
served from ``timm/vit_base_patch32_clip_224.openai`` — the layout of the default model's repository.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save

from emoclip.core.errors import WeightsUnavailableError
from emoclip.encoder import hub as hub_module
from emoclip.encoder.backbone import file_activation, load_backbone, register_model_configs
from tests.conftest import assert_close_features, noise_image, run_cli
from tests.hub_stub import CLIP_REPO, LoopbackProxy, StubHub, clip_repo

TAG = "openai"
register_model_configs()


def reference_model(path: str | Path, quick_gelu: bool) -> torch.nn.Module:
    """open_clip's own model from the served file (what `ViT-B-32-quickgelu` is to the default path)."""
    model = open_clip.create_model("tiny", pretrained=None, quick_gelu=quick_gelu)
    open_clip.load_checkpoint(model, str(path), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def weights_bytes() -> bytes:
    """Tiny random weights, not the seeded 'random' ones (so nothing can pass by loading those)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = open_clip.create_model("tiny", pretrained=None)
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def _point_at(monkeypatch, endpoint: str, cache: Path) -> None:
    """Make huggingface_hub (already imported) and emoclip use ``endpoint`` and a fresh cache."""
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("EMOCLIP_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    close_session()  # a fresh HTTP client reads the proxy variables again


def go_offline(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def stub(monkeypatch, tmp_path, weights_bytes):
    """The stand-in hub serving the default model's repository layout, with 'tiny' + 'openai' registered."""
    from open_clip import pretrained

    server = StubHub({CLIP_REPO: clip_repo(weights_bytes, open_clip.get_model_config("tiny"))}).start()
    tags = {TAG: {"hf_hub": CLIP_REPO + "/", "quick_gelu": True, "mean": (0.48145466, 0.4578275, 0.40821073),
                  "std": (0.26862954, 0.26130258, 0.27577711), "interpolation": "bicubic", "resize_mode": "shortest"}}
    monkeypatch.setitem(pretrained._PRETRAINED, "tiny", tags)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "NO_PROXY",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    _point_at(monkeypatch, server.url, tmp_path / "hf-cache")
    yield server
    server.stop()
    from huggingface_hub.utils import close_session

    close_session()


def _features(backbone, seed: int = 0) -> np.ndarray:
    pixels = backbone.preprocess(noise_image(64, 48, seed=seed)).unsqueeze(0)
    return backbone.encode_pixels(pixels).numpy()


def test_first_use_downloads_verifies_and_then_works_offline(stub, weights_bytes, monkeypatch):
    backbone = load_backbone("tiny", TAG, "cpu")
    digest = hashlib.sha256(weights_bytes).hexdigest()
    assert backbone.spec.activation == "quick_gelu"  # the tag's training activation, not the config's GELU
    assert backbone.spec.weights == f"sha256:{digest}"  # the bytes' identity, not the tag's name
    source = backbone.record()["source"]
    assert source["revision"] == stub.repos[CLIP_REPO].commit and source["repo"] == CLIP_REPO
    assert len(stub.gets("open_clip_model.safetensors")) == 1

    with torch.no_grad():
        pixels = backbone.preprocess(noise_image(64, 48, seed=0)).unsqueeze(0)
        quick = torch.nn.functional.normalize(reference_model(source_path(backbone), True).encode_image(pixels), dim=-1)
        gelu = torch.nn.functional.normalize(reference_model(source_path(backbone), False).encode_image(pixels), dim=-1)
    assert_close_features(_features(backbone), quick.numpy())
    assert np.abs(quick.numpy() - gelu.numpy()).max() > 1e-4  # the control: the activation is visible

    before = len(stub.requests)
    go_offline(monkeypatch)
    again = load_backbone("tiny", TAG, "cpu")
    assert len(stub.requests) == before  # nothing asked of the hub
    assert again.spec == backbone.spec
    np.testing.assert_array_equal(_features(again), _features(backbone))  # same file, same computation


def source_path(backbone) -> str:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(CLIP_REPO, "open_clip_model.safetensors")
    assert isinstance(path, str)
    return path


def _blob(repo: str = CLIP_REPO, name: str = "open_clip_model.safetensors") -> Path:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo, name)
    assert isinstance(path, str)
    return Path(path).resolve()


def _damage(blob: Path) -> None:
    data = bytearray(blob.read_bytes())
    data[-100:] = bytes(100)  # the same size: huggingface_hub's size check cannot see it
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))


def test_damaged_cache_offline_stops_with_one_line_naming_the_file(stub, monkeypatch):
    load_backbone("tiny", TAG, "cpu")
    blob = _blob()
    _damage(blob)
    go_offline(monkeypatch)
    with pytest.raises(WeightsUnavailableError) as caught:
        load_backbone("tiny", TAG, "cpu")
    message = str(caught.value)
    assert "\n" not in message and str(blob) in message and "damaged" in message
    assert not blob.exists()  # never used again: the next online run downloads it afresh


def test_damaged_cache_online_is_downloaded_again(stub, weights_bytes):
    first = load_backbone("tiny", TAG, "cpu")
    _damage(_blob())
    second = load_backbone("tiny", TAG, "cpu")
    assert len(stub.gets("open_clip_model.safetensors")) == 2
    assert second.spec == first.spec
    assert hashlib.sha256(_blob().read_bytes()).hexdigest() == hashlib.sha256(weights_bytes).hexdigest()


def test_corrupt_download_is_refetched_and_persistent_corruption_refused(stub, monkeypatch):
    stub.faults["corrupt"]["open_clip_model.safetensors"] = 1
    backbone = load_backbone("tiny", TAG, "cpu")
    assert len(stub.gets("open_clip_model.safetensors")) == 2
    assert backbone.spec.activation == "quick_gelu"

    _point_at(monkeypatch, stub.url, Path(str(_blob().parents[3])) / "fresh")  # an empty cache
    stub.faults["corrupt"]["open_clip_model.safetensors"] = 5
    with pytest.raises(WeightsUnavailableError, match="damaged twice"):
        load_backbone("tiny", TAG, "cpu")


def test_interrupted_download_resumes_or_restarts_cleanly(stub, weights_bytes):
    stub.faults["short"]["open_clip_model.safetensors"] = 1  # the body stops halfway once
    backbone = load_backbone("tiny", TAG, "cpu")
    gets = stub.gets("open_clip_model.safetensors")
    assert len(gets) == 2  # the second request completes it (from byte 0, or with a Range from where it stopped)
    assert gets[1][2] is None or gets[1][2].startswith("bytes=")
    assert backbone.spec.weights == "sha256:" + hashlib.sha256(weights_bytes).hexdigest()


def test_verified_digest_is_remembered(stub, monkeypatch):
    load_backbone("tiny", TAG, "cpu")
    calls = []
    real = hub_module.sha256_of
    monkeypatch.setattr(hub_module, "sha256_of", lambda path: calls.append(path) or real(path))
    load_backbone("tiny", TAG, "cpu")
    assert calls == []  # hashed once, on the first use


def test_proxy_is_honoured(stub, monkeypatch, tmp_path):
    """An endpoint only reachable through the proxy (127.0.0.2: nothing listens there) still downloads."""
    port = stub.server.server_address[1]
    proxy = LoopbackProxy(f"127.0.0.1:{port}")
    try:
        endpoint = f"http://127.0.0.2:{port}"
        _point_at(monkeypatch, endpoint, tmp_path / "via-proxy")
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        from huggingface_hub.utils import close_session

        close_session()
        backbone = load_backbone("tiny", TAG, "cpu")
        assert backbone.spec.activation == "quick_gelu"
        assert any(url.endswith("/open_clip_model.safetensors") for url in proxy.seen)
    finally:
        proxy.stop()


def test_default_commands_through_the_hub(stub, tmp_path, monkeypatch):
    """`emoclip predict` with no --pretrained: downloads, tags, saves features equal to open_clip's QuickGELU
    model from the served file; the second run works offline; a damaged cache stops with one line."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        noise_image(64, 48, seed=i).save(folder / f"p{i}.png")
    out = tmp_path / "out"
    args = ["predict", folder, "--model", "tiny", "--device", "cpu", "--precision", "fp32", "--decode", "full",
            "--save-features", "--output-dir", out, "--no-cache"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    features, names = _saved_features(out)
    model = reference_model(source_path(None), True)
    backbone = load_backbone("tiny", TAG, "cpu")
    with torch.no_grad():
        from PIL import Image

        pixels = torch.stack([backbone.preprocess(Image.open(n).convert("RGB")) for n in names])
        expected = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1).numpy()
    assert features.shape == expected.shape
    assert_close_features(features, expected)

    go_offline(monkeypatch)
    result = run_cli(*[*args[:-3], "--output-dir", tmp_path / "out2", "--no-cache"])
    assert result.exit_code == 0, result.output
    _damage(_blob())
    result = run_cli(*[*args[:-3], "--output-dir", tmp_path / "out3"])
    assert result.exit_code != 0
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("emoclip: error:") and "damaged" in last and "Traceback" not in result.output


def _saved_features(out: Path) -> tuple[np.ndarray, list[str]]:
    """The feature column of predict's parquet parts, and the image paths of its rows."""
    import pyarrow.parquet as pq

    rows = [r for part in sorted(out.glob("part-*.parquet")) for r in pq.read_table(part).to_pylist()]
    assert rows and all(not r["error"] for r in rows)
    return np.array([r["feature"] for r in rows], dtype=np.float32), [r["path"] for r in rows]


# -- local files: the activation is known, or the ambiguous case is refused --------------------------------

def test_local_file_activation_is_known_or_refused(tmp_path, weights_bytes):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(weights_bytes)
    assert file_activation("tiny", str(path)) is False  # tiny exists only with GELU: unambiguous
    assert file_activation("ViT-B-32-quickgelu", str(path)) is True  # the name says it
    with pytest.raises(WeightsUnavailableError) as caught:
        file_activation("ViT-B-32", str(path))  # OpenAI's are QuickGELU, LAION's GELU: refuse, never guess
    assert "ViT-B-32-quickgelu" in str(caught.value) and "open_clip_config.json" in str(caught.value)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    assert file_activation("ViT-B-32", str(path)) is True
    assert file_activation("tiny", str(path)) is True  # the config beside the file wins


def test_hub_snapshot_file_as_pretrained_path(stub, monkeypatch):
    """The cache's snapshot file (a symlink to a blob without suffix) loads as a file, QuickGELU from its config."""
    tagged = load_backbone("tiny", TAG, "cpu")
    path = source_path(tagged)
    as_file = load_backbone("tiny", path, "cpu")
    assert as_file.spec == tagged.spec  # same bytes, same activation: the same identity (and cache entries)
    assert (Path(path).parent / "open_clip_config.json").is_file()  # fetched with the weights: they say QuickGELU

    from open_clip import pretrained

    monkeypatch.delitem(pretrained._PRETRAINED, "tiny")  # tiny back to GELU-only: its config decides
    as_blob = load_backbone("tiny", str(_blob()), "cpu")
    assert as_blob.spec.weights == tagged.spec.weights  # read by content, not refused as a pickle
    assert as_blob.spec.activation == "gelu"


def test_activation_keys_the_encoder_spec(tiny):
    quick = tiny.spec.replace(activation="quick_gelu")
    assert quick.key() != tiny.spec.key()


def test_torchscript_detection_reads_the_whole_directory(tmp_path):
    import zipfile

    from emoclip.encoder.weights import is_torchscript_archive

    path = tmp_path / "late.pt"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(300):
            archive.writestr(f"late/data/{i}", b"x")
        archive.writestr("late/code/__torch__.py", b"")
    assert is_torchscript_archive(path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"")
    (tmp_path / "plain.pt").write_bytes(buffer.getvalue())
    assert not is_torchscript_archive(tmp_path / "plain.pt")


# -- checkpoints record both revisions and load from anywhere ----------------------------------------------

def test_checkpoints_record_revisions_and_load_from_another_folder(stub, tiny_bart, tmp_path, monkeypatch):
    """PT-DPC and UGRIE trained through the hub (CLIP and BART both downloaded) record the resolved revisions
    and digests in model.json and metrics.json; a relative --set bart is stored absolute; --bart overrides it."""
    from tests.conftest import make_split_data
    from tests.hub_stub import BART_REPO, bart_repo

    stub.repos[BART_REPO] = bart_repo(tiny_bart)
    root, split = make_split_data(tmp_path / "data", per_class=3)
    clip_revision = stub.repos[CLIP_REPO].commit
    common = ["--root", root, "--split-file", split, "--model", "tiny", "--device", "cpu", "--epochs", 1,
              "--no-progress"]
    ptdpc = tmp_path / "ptdpc"
    result = run_cli("train", "--method", "ptdpc", *common, "--out", ptdpc)
    assert result.exit_code == 0, result.output
    meta = json.loads((ptdpc / "model.json").read_text())
    assert meta["backbone"]["source"]["revision"] == clip_revision
    assert meta["backbone"]["activation"] == "quick_gelu"
    metrics = json.loads(next(ptdpc.rglob("metrics.json")).read_text())
    assert json.dumps(metrics).count(clip_revision) >= 1

    ugrie = tmp_path / "ugrie"
    result = run_cli("train", "--method", "ugrie", *common, "--out", ugrie)  # BART: facebook/bart-base, via the hub
    assert result.exit_code == 0, result.output
    meta = json.loads((ugrie / "model.json").read_text())
    bart_revision = stub.repos[BART_REPO].commit
    assert meta["bart"]["revision"] == bart_revision and meta["backbone"]["source"]["revision"] == clip_revision
    assert bart_revision in meta["config"]["bart_weights"] and "sha256:" in meta["config"]["bart_weights"]
    assert bart_revision in next(ugrie.rglob("metrics.json")).read_text()

    # a relative BART folder is stored absolute, so the checkpoint works from any working directory
    monkeypatch.chdir(tiny_bart.parent)
    local = tmp_path / "ugrie-local"
    result = run_cli("train", "--method", "ugrie", *common, "--set", f"bart={tiny_bart.name}", "--out", local)
    assert result.exit_code == 0, result.output
    assert json.loads((local / "model.json").read_text())["config"]["bart"] == str(tiny_bart.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for checkpoint in (ptdpc, ugrie, local):
        predicted = run_cli("predict", "--checkpoint", checkpoint, root / "joy", "--device", "cpu")
        assert predicted.exit_code == 0, predicted.output
    moved = tmp_path / "moved-bart"
    tiny_bart.rename(moved)
    try:
        result = run_cli("predict", "--checkpoint", local, root / "joy", "--device", "cpu")
        assert result.exit_code != 0 and "does not exist" in result.output
        result = run_cli("predict", "--checkpoint", local, root / "joy", "--device", "cpu", "--bart", moved)
        assert result.exit_code == 0, result.output
    finally:
        moved.rename(tiny_bart)


def test_messages_fit_online_and_offline(stub, monkeypatch):
    """Online, a failure says the download failed (not 'offline'); offline, that nothing is cached."""
    stub.repos.clear()
    with pytest.raises(WeightsUnavailableError) as online:
        load_backbone("tiny", TAG, "cpu")
    assert "download failed" in str(online.value) and "offline" not in str(online.value)
    go_offline(monkeypatch)
    with pytest.raises(WeightsUnavailableError) as offline:
        load_backbone("tiny", TAG, "cpu")
    assert "offline" in str(offline.value) and "--pretrained PATH" in str(offline.value)
    for message in (str(online.value), str(offline.value)):
        assert "\n" not in message


def test_long_messages_are_cut_at_a_word_boundary():
    from emoclip.core.errors import shorten

    cut = shorten("the weights file " + "abcdefgh " * 40, 60)
    assert len(cut) <= 60 and cut.endswith("…") and cut[:-1].split()[-1] == "abcdefgh"
