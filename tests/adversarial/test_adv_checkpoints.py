"""Damaged, hostile and mismatched checkpoints, weights files and training states: each is refused
with one line (exit 2), never a traceback, never torch's advice to disable weights_only, and no
code inside a pickle ever runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.adversarial.conftest import TINY, assert_refused, cli, good_jpeg

pytestmark = pytest.mark.timeout(120)
MARKER_NAME = "pickle-code-ran"


class _Evil:
    """Unpickling this runs a command: emoclip must never do it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(labelled, tmp_path_factory) -> Path:
    root, split = labelled
    out = tmp_path_factory.mktemp("ckpt") / "run"
    outcome = cli("train", "--method", "clipe-ce", "-t", "emotionroi6", "--root", root, "--split-file", split, *TINY,
                  "--epochs", 2, "--no-progress", "--out", out)
    assert outcome.status == 0, outcome.stderr
    return out


@pytest.fixture
def image(tmp_path) -> Path:
    return good_jpeg(tmp_path / "x.jpg")


def _copy(trained: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(trained, target)
    return target


def _edit_meta(folder: Path, change) -> None:
    meta = json.loads((folder / "model.json").read_text())
    change(meta)
    (folder / "model.json").write_text(json.dumps(meta))


def _evil_pickle(path: Path, legacy: bool = False) -> None:
    torch.save({"weight": torch.zeros(2), "payload": _Evil(path.parent / MARKER_NAME)}, path,
               _use_new_zipfile_serialization=not legacy)


def _damage_weights(kind: str, folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if kind == "garbage":
        weights.write_bytes(os.urandom(0) + bytes(range(256)) * 4)
    elif kind == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        weights.write_bytes(b"")
    elif kind == "header_claims_huge":
        weights.write_bytes((1 << 60).to_bytes(8, "little") + data[8:])
    elif kind == "pickle":
        _evil_pickle(weights)
    elif kind == "nan":
        tensors = load_file(weights)
        first = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[first] = torch.full_like(tensors[first], float("nan"))
        save_file(tensors, weights, metadata={"format": "emoclip", "method": "clipe-ce"})
    elif kind == "wrong_shape":
        tensors = load_file(weights)
        first = next(iter(tensors))
        tensors[first] = torch.zeros(3, 3)
        save_file(tensors, weights)
    elif kind == "unknown_tensor":
        tensors = load_file(weights)
        tensors["surprise"] = torch.zeros(1)
        save_file(tensors, weights)
    elif kind == "epoch_mismatch":
        tensors = load_file(weights)
        save_file(tensors, weights, metadata={"format": "emoclip", "method": "clipe-ce", "epoch": "7"})


WEIGHTS = {
    "garbage": r"damaged or not a safetensors file",
    "truncated": r"damaged or not a safetensors file",
    "empty": r"damaged or not a safetensors file",
    "header_claims_huge": r"damaged or not a safetensors file",
    "pickle": r"damaged or not a safetensors file",
    "nan": r"NaN or infinite weights",
    "wrong_shape": r"does not fit method clipe-ce",
    "unknown_tensor": r"does not fit method clipe-ce",
    "epoch_mismatch": r"half-written \(weights of epoch 7, metadata of epoch \d\).*--resume",
}


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
def test_damaged_checkpoint_weights_are_refused(trained, tmp_path, image, kind):
    folder = _copy(trained, tmp_path)
    _damage_weights(kind, folder)
    assert_refused(cli("predict", image, "--checkpoint", folder, "--no-cache"), WEIGHTS[kind])
    assert not (folder / MARKER_NAME).exists()


META = {
    "invalid_json": (lambda f: (f / "model.json").write_text('{"method": "clipe-ce", '), r"cannot parse checkpoint"),
    "empty_object": (lambda f: (f / "model.json").write_text("{}"), r"'method' is missing"),
    "list": (lambda f: (f / "model.json").write_text("[1, 2]"), r"it is not a JSON object"),
    "latin1": (lambda f: (f / "model.json").write_bytes(b'{"method": "caf\xe9"}'), r"not UTF-8 text"),
    "binary": (lambda f: (f / "model.json").write_bytes(b"\x00" * 32), r"binary file"),
    "deep_nesting": (lambda f: (f / "model.json").write_text("[" * 100_000 + "]" * 100_000),
                     r"more than the 1,048,576|nested too deeply"),
    "no_backbone_model": (lambda f: _edit_meta(f, lambda m: m["backbone"].pop("model")),
                          r"'backbone.model' is missing"),
    "backbone_not_mapping": (lambda f: _edit_meta(f, lambda m: m.update(backbone="tiny")), r"'backbone' is missing"),
    "unknown_method": (lambda f: _edit_meta(f, lambda m: m.update(method="nope")), r"unknown method 'nope'"),
    "config_wrong_type": (lambda f: _edit_meta(f, lambda m: m["config"].update(hidden="abc")),
                          r"option hidden must be a whole number"),
    "config_unknown_key": (lambda f: _edit_meta(f, lambda m: m["config"].update(colour=1)), r"has no option colour"),
    "taxonomy_one_class": (lambda f: _edit_meta(f, lambda m: m["taxonomy"].update(classes=["calm"])),
                           r"has 1 class"),
    "taxonomy_null_names": (lambda f: _edit_meta(f, lambda m: m["taxonomy"].update(classes=[None, None])),
                            r"must be a non-empty text"),
    "taxonomy_not_mapping": (lambda f: _edit_meta(f, lambda m: m.update(taxonomy=[1])), r"'taxonomy' is missing"),
    "future_format": (lambda f: _edit_meta(f, lambda m: m.update(format_version=99)), r"upgrade emoclip"),
    "format_text": (lambda f: _edit_meta(f, lambda m: m.update(format_version="x")), r"'format_version' is not"),
    "huge": (lambda f: (f / "model.json").write_text(" " * (2 << 20) + "{}"), r"more than the 1,048,576"),
    "missing": (lambda f: (f / "model.json").unlink(), r"not an emoclip checkpoint \(expected model.json"),
    "folder_instead": (lambda f: ((f / "model.json").unlink(), (f / "model.json").mkdir()),
                       r"not an emoclip checkpoint"),
}


@pytest.mark.parametrize("case", sorted(META))
def test_damaged_checkpoint_metadata_is_refused(trained, tmp_path, image, case):
    damage, pattern = META[case]
    folder = _copy(trained, tmp_path)
    damage(folder)
    assert_refused(cli("predict", image, "--checkpoint", folder, "--no-cache"), pattern)


# -- --pretrained weights files --------------------------------------------------------------------------------
def _tiny_state() -> dict[str, torch.Tensor]:
    from emoclip.encoder.backbone import load_backbone

    return {k: v.clone().contiguous() for k, v in load_backbone("tiny", "random", "cpu").model.state_dict().items()}


def _weights_file(kind: str, folder: Path) -> Path:
    if kind == "garbage.safetensors":
        (folder / kind).write_bytes(bytes(range(256)) * 8)
    elif kind == "truncated.safetensors":
        save_file(_tiny_state(), folder / "full.safetensors")
        (folder / kind).write_bytes((folder / "full.safetensors").read_bytes()[:5000])
    elif kind == "wrong_shapes.safetensors":
        save_file({"visual.proj": torch.zeros(3, 3)}, folder / kind)
    elif kind == "evil_pickle.safetensors":
        _evil_pickle(folder / kind)
    elif kind == "garbage.pt":
        (folder / kind).write_bytes(b"\x80\x02garbage" * 50)
    elif kind == "evil_pickle.pt":
        _evil_pickle(folder / kind)
    elif kind == "evil_legacy_pickle.pth":
        _evil_pickle(folder / kind, legacy=True)
    elif kind == "truncated.pt":
        torch.save(_tiny_state(), folder / "full.pt")
        (folder / kind).write_bytes((folder / "full.pt").read_bytes()[:4000])
    elif kind == "empty.bin":
        (folder / kind).write_bytes(b"")
    elif kind == "text.bin":
        (folder / kind).write_text("not weights\n")
    return folder / kind


PRETRAINED = {
    "garbage.safetensors": r"cannot load weights file .*(safetensors|damaged)",
    "truncated.safetensors": r"cannot load weights file",
    "wrong_shapes.safetensors": r"does not fit model tiny|cannot load weights file",
    "evil_pickle.safetensors": r"cannot load weights file",
    "garbage.pt": r"cannot load weights file|does not fit",
    "evil_pickle.pt": r"never runs code from a file",
    "evil_legacy_pickle.pth": r"never runs code from a file",
    "truncated.pt": r"cannot load weights file|does not fit",
    "empty.bin": r"cannot load weights file|does not fit",
    "text.bin": r"cannot load weights file|does not fit",
}


@pytest.mark.parametrize("kind", sorted(PRETRAINED))
def test_bad_weights_file_is_refused_and_no_pickle_code_runs(tmp_path, image, kind):
    path = _weights_file(kind, tmp_path)
    outcome = cli("predict", image, "--model", "tiny", "--pretrained", path, "--device", "cpu", "--no-cache")
    line = assert_refused(outcome, PRETRAINED[kind])
    assert "weights_only" not in line
    assert not (tmp_path / MARKER_NAME).exists()


# -- training state ----------------------------------------------------------------------------------------------
def _resume(labelled, out, *extra, method="clipe-ce"):
    root, split = labelled
    return cli("train", "--method", method, "-t", "emotionroi6", "--root", root, "--split-file", split, *TINY,
               "--epochs", 3, "--no-progress", "--no-cache", "--out", out, "--resume", *extra)


def test_resume_from_damaged_state_is_refused(labelled, trained, tmp_path):
    folder = _copy(trained, tmp_path)
    state = folder / "last.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    assert_refused(_resume(labelled, folder), r"training state .* is damaged")


def test_resume_from_state_with_inconsistent_epoch_is_refused(labelled, trained, tmp_path):
    folder = _copy(trained, tmp_path)
    from safetensors import safe_open

    with safe_open(str(folder / "last.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    metadata["epoch"] = "5"
    save_file(load_file(folder / "last.safetensors"), folder / "last.safetensors", metadata=metadata)
    assert_refused(_resume(labelled, folder), r"training state .* is damaged; delete it")


def test_resume_into_another_methods_folder_is_refused(labelled, trained, tmp_path):
    folder = _copy(trained, tmp_path)
    before = (folder / "model.safetensors").read_bytes()
    assert_refused(_resume(labelled, folder, method="clipe-contrastive"), r"holds a clipe-ce run")
    assert (folder / "model.safetensors").read_bytes() == before


def test_resume_with_other_options_is_refused(labelled, trained, tmp_path):
    folder = _copy(trained, tmp_path)
    assert_refused(_resume(labelled, folder, "--lr", "0.5"), r"trained with other lr.*only --epochs may change")
