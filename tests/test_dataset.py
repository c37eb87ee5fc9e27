"""Dataset layouts, label checks, votes and deterministic stratified splits."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from emoclip.cli.main import main
from emoclip.core.errors import EmoclipError, TaxonomyError
from emoclip.datasets.dataset import open_dataset, stratified_split
from emoclip.labels.taxonomy import load_taxonomy
from tests.conftest import noise_image

CLASSES = ("joy", "fear", "sadness")


def make_class_folders(root, per_class=4, classes=CLASSES):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise_image(32, 32, seed=hash((c, i)) % 1000).save(root / c / f"{i}.jpg")
    return root


def test_class_folders(tmp_path):
    data = open_dataset(make_class_folders(tmp_path / "d"))
    assert len(data) == 12 and Counter(data.labels) == dict.fromkeys(CLASSES, 4)


def test_split_file_with_votes_next_to_it(tmp_path):
    root = make_class_folders(tmp_path / "e6" / "images", per_class=2)
    (tmp_path / "e6" / "split.tsv").write_text(
        "image\tlabel\tsplit\njoy/0.jpg\tjoy\ttrain\njoy/1.jpg\tjoy\ttest\nfear/0.jpg\tfear\ttest\n")
    (tmp_path / "e6" / "ground_truth.txt").write_text(
        "[image_filename]\t[valence]\t[arousal]\t[prob. anger]\t[prob. disgust]\t[prob. fear]\t[prob. joy]\t"
        "[prob. sadness]\t[prob. surprise]\t[prob. neutral]\n"
        "joy/1.jpg\t8\t4\t0\t0\t0\t0.5\t0\t0\t0.5\nfear/0.jpg\t2\t5\t0\t0\t0\t0\t0\t0\t1\n")
    data = open_dataset(root, tmp_path / "e6" / "split.tsv")
    test = data.split("test")
    assert [s.label for s in test.samples] == ["joy", "fear"]
    assert test.vote_classes == ("anger", "disgust", "fear", "joy", "sadness", "surprise")
    assert test.votes[0].tolist() == [0, 0, 0, 1, 0, 0]  # neutral dropped, renormalised
    assert test.votes[1].sum() == 0  # all-neutral: excluded from distribution metrics
    with pytest.raises(EmoclipError, match="no 'val' split"):
        data.split("val")


def test_split_folders_fi_layout(tmp_path):
    for split in ("train", "val", "test"):
        make_class_folders(tmp_path / "fi" / split, per_class=1)
    data = open_dataset(tmp_path / "fi")
    assert data.splits == ["test", "train", "val"] and len(data.split("val")) == 3


def test_kfold_folders_and_list_files(tmp_path):
    for k in range(1, 4):
        make_class_folders(tmp_path / "tw" / f"fold{k}", per_class=1, classes=("positive", "negative"))
    data = open_dataset(tmp_path / "tw", fold=2)
    assert len(data.split("test")) == 2 and len(data.split("train")) == 4
    lists = tmp_path / "tw2"
    make_class_folders(lists / "imgs", per_class=2, classes=("positive", "negative"))
    (lists / "fold_1.txt").write_text("imgs/positive/0.jpg positive\nimgs/negative/0.jpg negative\n")
    (lists / "fold_2.txt").write_text("imgs/positive/1.jpg positive\nimgs/negative/1.jpg negative\n")
    data = open_dataset(lists, layout="kfold", fold=1)
    assert sorted(s.path.name for s in data.split("test").samples) == ["0.jpg", "0.jpg"]
    with pytest.raises(EmoclipError, match="--fold 7 does not exist"):
        open_dataset(lists, layout="kfold", fold=7)


def test_manifests_emoset_and_dict_forms(tmp_path):
    root = make_class_folders(tmp_path / "emoset", per_class=1)
    (tmp_path / "train.json").write_text(json.dumps([["joy", "joy/0.jpg", "ann/x.json"]]))
    (tmp_path / "all.json").write_text(json.dumps({"images": [{"image": "fear/0.jpg", "label": "fear",
                                                               "split": "test"}]}))
    data = open_dataset(root, manifests=[tmp_path / "train.json", tmp_path / "all.json"])
    assert [(s.label, s.split) for s in data.samples] == [("joy", "train"), ("fear", "test")]


def test_unknown_label_names_label_and_file(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=1, classes=("joy", "grumpy"))
    with pytest.raises(TaxonomyError, match=r"label 'grumpy' of .*grumpy/0\.jpg.*not in taxonomy 'emotionroi6'"):
        open_dataset(root).label_indices(load_taxonomy("emotionroi6"))


def test_missing_images_are_reported(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "s.tsv").write_text("image\tlabel\tsplit\nnope.jpg\tjoy\ttest\n")
    with pytest.raises(EmoclipError, match="do not exist"):
        open_dataset(tmp_path / "imgs", tmp_path / "s.tsv")


def test_stratified_split_is_deterministic_and_stratified(tmp_path):
    data = open_dataset(make_class_folders(tmp_path / "d", per_class=10))
    a = stratified_split(data, [0.7, 0.3], ["train", "test"], seed=3)
    b = stratified_split(data, [0.7, 0.3], ["train", "test"], seed=3)
    c = stratified_split(data, [0.7, 0.3], ["train", "test"], seed=4)
    assert [s.split for s in a.samples] == [s.split for s in b.samples]
    assert [s.split for s in a.samples] != [s.split for s in c.samples]
    counts = Counter((s.label, s.split) for s in a.samples)
    assert all(counts[(c, "train")] == 7 and counts[(c, "test")] == 3 for c in CLASSES)


def test_split_command_writes_a_split_file_that_opens(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=10)
    out = tmp_path / "split.tsv"
    result = CliRunner().invoke(main, ["split", str(root), "--seed", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = open_dataset(root, out)
    assert Counter(s.split for s in data.samples) == {"train": 21, "test": 9}
    assert np.array_equal(data.label_indices(load_taxonomy("emotionroi6")) >= 0, np.ones(30, bool))
