"""CLIP-E caption tables are data: one format (the label table's), matched to the training images before
training, 0 matched refused with the fix, a partial match warned, what matched recorded."""

from __future__ import annotations

import logging

import pytest

from emoclip.core.errors import EmoclipError
from emoclip.labels.taxonomy import load_taxonomy
from emoclip.methods import create_method


@pytest.fixture
def images(tmp_path):
    paths = []
    for sub, name in (("partition1", "a.jpg"), ("partition1", "b.jpg"), ("partition2", "c.jpg"),
                      ("partition2", "d.png")):
        path = tmp_path / "root" / sub / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # matching reads names only
        paths.append(str(path))
    return paths


def bind(tiny, tmp_path, text, images):
    table = tmp_path / "captions.tsv"
    table.write_text(text)
    method = create_method("clipe-contrastive", tiny, load_taxonomy("polarity"), {"image_captions": str(table)})
    return method, method.bind_training_images(images)


@pytest.mark.parametrize("text", [
    "a.jpg\ta red car\nb.jpg\ta dog\nc.jpg\tsnow\nd\tgrey sky\n",                       # bare names (d: its stem)
    "image,caption\npartition1/a.jpg,a red car\npartition1/b.jpg,a dog\npartition2/c.jpg,snow\npartition2/d.png,sky\n",
    "root/partition1/a.jpg\ta red car\nroot/partition1/b.jpg\ta dog\nroot/partition2/c.jpg\tsnow\n"
    "root/partition2/d.png\tsky\n",                                                       # relative to the table
])
def test_bare_names_and_relative_paths_match_like_the_label_table(tiny, tmp_path, images, text):
    method, record = bind(tiny, tmp_path, text, images)
    captions = record["image_captions"]
    assert captions["matched"] == captions["train_images"] == 4 and captions["rows"] == 4
    assert len(captions["sha256"]) == 64
    assert sorted(method.image_captions.values())[0] in ("a dog", "a red car")


def test_a_table_matching_no_training_image_is_refused_with_the_fix(tiny, tmp_path, images):
    with pytest.raises(EmoclipError, match="none of its 2 rows names one of the 4 training images.*as in --label-file"):
        bind(tiny, tmp_path, "x.jpg\tone\ny.jpg\ttwo\n", images)


def test_a_partial_match_is_warned_and_counted(tiny, tmp_path, images, caplog):
    with caplog.at_level(logging.WARNING, logger="emoclip"):
        _, record = bind(tiny, tmp_path, "a.jpg\tone\nzzz.jpg\tnone of ours\n", images)
    assert record["image_captions"]["matched"] == 1 and record["image_captions"]["rows"] == 2
    assert "1 of 4 training images have a caption" in caplog.text


def test_an_ambiguous_bare_name_is_refused(tiny, tmp_path, images):
    twin = tmp_path / "root" / "partition2" / "a.jpg"
    twin.write_bytes(b"")
    with pytest.raises(EmoclipError, match="matches 2 training images.*relative to --root"):
        bind(tiny, tmp_path, "a.jpg\tone\n", [*images, str(twin)])


def test_a_missing_table_says_which_option(tiny, tmp_path, images):
    method = create_method("clipe-contrastive", tiny, load_taxonomy("polarity"),
                           {"image_captions": str(tmp_path / "nope.tsv")})
    with pytest.raises(EmoclipError, match="does not exist; fix --set image_captions"):
        method.bind_training_images(images)
