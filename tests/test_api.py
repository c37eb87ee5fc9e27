"""The public API: every example in docs/python-api.md and in the package docstrings runs, on the
tiny random model and a small generated dataset laid out like the examples' paths."""

from __future__ import annotations

import re
import shutil
import tarfile
from pathlib import Path

import pytest

import emoclip
import emoclip.api
from emoclip.core.errors import EmoclipError
from tests.conftest import EMOTIONS, FEATURE_ATOL, make_split_data, noise_image

DOCS = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
# The examples name the real model; offline tests run them on the tiny random one.
TINY = {'"ViT-B-32"': '"tiny"', '"openai"': '"random"'}


def tiny(code: str) -> str:
    for real, test in TINY.items():
        code = code.replace(real, test)
    return code


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)


def docstring_example(module) -> str:
    """The indented ``::`` block of a module docstring."""
    lines = module.__doc__.split("::", 1)[1].splitlines()
    block = []
    for line in lines[1:]:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """photos/, shards/ and emotion6/{images,split_70_30.tsv} as the examples name them."""
    folder = tmp_path_factory.mktemp("api")
    root, split = make_split_data(folder / "made", per_class=3)
    (folder / "emotion6").mkdir()
    root.rename(folder / "emotion6" / "images")
    text = split.read_text().replace(str(root), str(folder / "emotion6" / "images"))
    (folder / "emotion6" / "split_70_30.tsv").write_text(text)
    (folder / "photos").mkdir()
    for i, name in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        noise_image(40, 30, seed=i).save(folder / "photos" / name)
    (folder / "photos" / "broken.jpg").write_bytes(b"not an image")
    (folder / "shards").mkdir()
    for s in range(2):
        with tarfile.open(folder / "shards" / f"0000{s}.tar", "w") as tar:
            for i in range(2):
                image = folder / f"shard{s}-{i}.jpg"
                noise_image(24, 24, seed=10 * s + i).save(image)
                tar.add(image, arcname=f"sample{s}{i}.jpg")
    return folder


def test_every_doc_example_runs(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    shutil.rmtree(workdir / "runs", ignore_errors=True)  # each example trains into a new run folder
    namespace: dict = {}
    blocks = doc_blocks()
    assert len(blocks) >= 8
    for block in blocks:
        exec(compile(tiny(block), str(DOCS), "exec"), namespace)  # our own documentation
    out = capsys.readouterr().out
    assert "photos/a.jpg" in out and "must be 0 or more, got -4" in out
    assert (workdir / "runs" / "probe" / "model.safetensors").is_file()
    assert (workdir / "runs" / "probe-eval" / "metrics.json").is_file()
    assert not (workdir / "runs" / "bad").exists()  # refused before anything was written
    rows = namespace["rows"]
    assert len(rows) == 4 + 2 + 4 and sum(not r.ok for r in rows) == 1  # glob (with broken.jpg), list, shards


@pytest.mark.parametrize("module", [emoclip, emoclip.api], ids=["emoclip", "emoclip.api"])
def test_package_docstring_examples_run(workdir, monkeypatch, module):
    monkeypatch.chdir(workdir)
    shutil.rmtree(workdir / "runs", ignore_errors=True)  # each example trains into a new run folder
    exec(compile(tiny(docstring_example(module)), module.__name__, "exec"), {})


def test_tag_paths_takes_files_folders_globs_lists_and_shards(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    tagger = emoclip.create_tagger(model="tiny", pretrained="random", taxonomy="emotionroi6", device="cpu")
    folder = list(tagger.tag_paths("photos"))
    assert [Path(r.path).name for r in folder] == ["a.jpg", "b.jpg", "broken.jpg", "c.jpg"]
    assert [r.ok for r in folder] == [True, True, False, True]  # one bad file never sinks the batch
    assert all(r.label in EMOTIONS for r in folder if r.ok)
    one = list(tagger.tag_paths(Path("photos/a.jpg")))
    # the same image in another batch shape: equal up to kernel rounding (conftest.FEATURE_ATOL)
    assert len(one) == 1 and one[0].distribution == pytest.approx(folder[0].distribution, abs=FEATURE_ATOL)
    assert len(list(tagger.tag_paths(["photos/a.jpg", "photos/c.jpg"]))) == 2
    assert len(list(tagger.tag_paths("photos/[ab].jpg"))) == 2
    shards = list(tagger.tag_paths("shards/{00000..00001}.tar"))
    assert len(shards) == 4 and all(r.ok for r in shards)
    with pytest.raises(EmoclipError):
        tagger.tag_paths("nowhere/")  # refused when called, not when first iterated


def test_create_tagger_refuses_unknown_options_and_both_labels_and_taxonomy():
    with pytest.raises(EmoclipError, match="has no option colour"):
        emoclip.create_tagger(model="tiny", pretrained="random", colour="red")
    with pytest.raises(EmoclipError, match="not both"):
        emoclip.create_tagger(model="tiny", pretrained="random", taxonomy="mikels8", labels=["a", "b"])


def test_train_refuses_unknown_settings_before_loading():
    with pytest.raises(EmoclipError, match="unknown option epocs; data options: root"):
        emoclip.train("ptdpc", out="never", epocs=2)


def test_listings():
    assert next(iter(emoclip.list_methods())) == "zero-shot"
    assert "ptdpc-paper" in emoclip.list_recipes() and emoclip.list_recipes()["ptdpc-paper"].is_file()
    assert "mikels8" in emoclip.list_taxonomies()
