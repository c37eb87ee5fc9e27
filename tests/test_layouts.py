"""Every dataset layout as shipped, on synthetic fixtures made here: folds of any name, label tables,
EmotionROI, EmoSet, FI, ArtPhoto, Abstract, k-fold split files, vote tables on any layout."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from emoclip.core.errors import EmoclipError
from emoclip.datasets.dataset import few_shot, open_dataset, stratified_folds
from emoclip.labels.taxonomy import load_taxonomy
from tests.conftest import noise_image
from tests.conftest import run_cli as run

MIKELS = ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness")


def image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(24, 24, seed=seed).save(path)
    return path


def make_partitions(root, names, per_fold=4, header=True, relative=False):
    """Fold folders of bare images (the Twitter benchmarks as shipped) and one label table beside them."""
    rows = []
    for k, name in enumerate(names, 1):
        for i in range(per_fold):
            label = "positive" if i % 2 == 0 else "negative"
            file = image(root / name / f"img{k}_{i}.jpg", seed=10 * k + i)
            rows.append((f"{name}/{file.name}" if relative else file.name, label))
    table = root.parent / "labels.txt"
    table.write_text(("Image\tSentiment\n" if header else "") + "".join(f"{a}\t{b}\n" for a, b in rows))
    return table


@pytest.mark.parametrize("names", [
    [f"fold{k}" for k in range(1, 6)], [f"partition{k}" for k in range(1, 6)], [f"part_{k}" for k in range(1, 6)],
    [f"split{k}" for k in range(1, 6)], [str(k) for k in range(1, 6)], [f"Fold-{k}" for k in range(1, 6)]],
    ids=lambda names: names[0])
def test_fold_folders_of_any_common_name_with_a_label_table(tmp_path, names):
    table = make_partitions(tmp_path / "data", names)
    data = open_dataset(tmp_path / "data", label_file=table, fold=3)
    assert data.extra["fold"] == 3 and data.extra["folds"] == 5 and data.extra["layout"] == "kfold"
    test = data.split("test")
    assert len(test) == 4 and all(s.path.parent.name == names[2] for s in test.samples)
    assert len(data.split("train")) == 16
    assert Counter(data.labels) == {"positive": 10, "negative": 10}
    assert data.label_indices(load_taxonomy("polarity")).tolist().count(0) == 10


def test_label_table_with_relative_paths_and_no_header(tmp_path):
    table = make_partitions(tmp_path / "data", ["partition1", "partition2"], header=False, relative=True)
    data = open_dataset(tmp_path / "data", label_file=table, fold=2)
    assert len(data.split("test")) == 4 and len(data.split("train")) == 4


def test_fold_folders_with_class_subfolders(tmp_path):
    for k in range(1, 4):
        for c in ("positive", "negative"):
            image(tmp_path / "tw" / f"partition_{k}" / c / f"{k}.jpg", seed=k)
    data = open_dataset(tmp_path / "tw", fold=1)
    assert len(data.split("test")) == 2 and len(data.split("train")) == 4


def test_fold_folders_without_labels_say_to_give_the_label_file(tmp_path):
    make_partitions(tmp_path / "data", ["partition1", "partition2"])
    with pytest.raises(EmoclipError, match="--label-file"):
        open_dataset(tmp_path / "data")


def test_label_table_aliases_resolve_through_the_taxonomy(tmp_path):
    image(tmp_path / "web" / "a.jpg")
    image(tmp_path / "web" / "b.jpg", 1)
    (tmp_path / "labels.csv").write_text("a.jpg,cheerfullness\nb.jpg,Irritabilty\n")
    data = open_dataset(tmp_path / "web", label_file=tmp_path / "labels.csv")
    tax = load_taxonomy("webemo25")
    assert [tax.names[i] for i in data.label_indices(tax)] == ["cheerfulness", "irritability"]
    assert tax.mapping_to("webemo6")[data.label_indices(tax)].tolist() == [2, 0]  # joy, anger


def test_split_refuses_fold_folders_as_labels_and_says_the_fix(tmp_path):
    for k in (1, 2):
        for c in ("a", "b"):
            image(tmp_path / "d" / f"partition{k}" / c / "x.jpg")
    result = run("split", tmp_path / "d", "--layout", "folders", "-o", tmp_path / "s.tsv")
    assert result.exit_code == 2 and "partition1" in result.stderr and "--label-file" in result.stderr
    assert not (tmp_path / "s.tsv").exists()


def test_split_refuses_folder_names_outside_the_taxonomy(tmp_path):
    for c in ("joy", "grumpy"):
        image(tmp_path / "d" / c / "x.jpg")
    result = run("split", tmp_path / "d", "-t", "emotionroi6", "-o", tmp_path / "s.tsv")
    assert result.exit_code == 2 and "grumpy" in result.stderr and "-t" in result.stderr


def test_split_folds_are_stratified_and_open_with_fold(tmp_path):
    for c in ("joy", "fear", "sadness"):
        for i in range(10):
            image(tmp_path / "d" / c / f"{i}.jpg", seed=i)
    out = tmp_path / "folds.tsv"
    result = run("split", tmp_path / "d", "--folds", 5, "--seed", 2, "-o", out)
    assert result.exit_code == 0, result.output
    data = open_dataset(tmp_path / "d", out, fold=4)
    test = data.split("test")
    assert data.name.endswith("-fold4") and len(test) == 6 and Counter(test.labels) == dict.fromkeys(
        ("joy", "fear", "sadness"), 2)
    folds = [{s.path for s in open_dataset(tmp_path / "d", out, fold=k).split("test").samples} for k in range(1, 6)]
    assert sum(len(f) for f in folds) == 30 and len(set().union(*folds)) == 30  # a partition
    again = stratified_folds(open_dataset(tmp_path / "d"), 5, seed=2)
    written = [line.split("\t")[2] for line in out.read_text().splitlines()[1:]]
    assert [s.split for s in again.samples] == written  # the file is the function's result


def test_emotionroi_release_layout(tmp_path):
    root = tmp_path / "EmotionROI"
    for c in ("anger", "joy"):
        for i in range(3):
            image(root / "images" / c / f"{i}.jpg", seed=i)
    (root / "training_testing_split").mkdir()
    (root / "training_testing_split" / "training.txt").write_text("anger/0.jpg\nanger/1.jpg\njoy/0.jpg\njoy/1.jpg\n")
    (root / "training_testing_split" / "testing.txt").write_text("anger/2.jpg\njoy/2.jpg\n")
    data = open_dataset(root)
    assert data.extra["layout"] == "emotionroi"
    assert [(s.label, s.path.name) for s in data.split("test").samples] == [("anger", "2.jpg"), ("joy", "2.jpg")]
    assert len(data.split("train")) == 4


def test_emoset_release_layout_keeps_info_json_label_order(tmp_path):
    root = tmp_path / "EmoSet"
    order = ["amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"]
    (root).mkdir()
    (root / "info.json").write_text(json.dumps({"label2idx": {n: i for i, n in enumerate(order)}}))
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        entries = []
        for i in range(n):
            rel = f"image/awe/awe_{split}{i}.jpg"
            image(root / rel, seed=i)
            entries.append(["awe", f"awe_{split}{i}", rel, f"annotation/awe/awe_{split}{i}.json"])
        (root / f"{split}.json").write_text(json.dumps(entries))
    data = open_dataset(root)
    assert data.extra["layout"] == "emoset" and data.extra["label_order"] == order
    assert (len(data.split("train")), len(data.split("val")), len(data.split("test"))) == (3, 1, 2)
    assert set(data.labels) == {"awe"}


def test_fi_release_layout_gets_the_seeded_80_5_15_split(tmp_path):
    root = tmp_path / "FI"
    for c in ("amusement", "fear"):
        for i in range(20):
            image(root / "emotion_dataset" / c / f"{c}_{i}.jpg", seed=i)
    data = open_dataset(root)
    counts = Counter((s.label, s.split) for s in data.samples)
    assert all(counts[(c, "train")] == 16 and counts[(c, "val")] == 1 and counts[(c, "test")] == 3
               for c in ("amusement", "fear"))
    assert [s.split for s in open_dataset(root).samples] == [s.split for s in data.samples]  # same seed, same split
    assert [s.split for s in open_dataset(root, split_seed=1).samples] != [s.split for s in data.samples]


def test_artphoto_labels_from_file_names(tmp_path):
    root = tmp_path / "ArtPhoto"
    for name in ("amusement_1.jpg", "content_2.jpg", "sad_13.jpg", "fear_4.jpg"):
        image(root / name)
    data = open_dataset(root)
    tax = load_taxonomy("mikels8")
    assert data.extra["layout"] == "artphoto"
    assert sorted(tax.names[i] for i in data.label_indices(tax)) == ["amusement", "contentment", "fear", "sadness"]


def test_abstract_votes_give_the_label_and_ties_are_dropped(tmp_path):
    root = tmp_path / "Abstract"
    for i in range(3):
        image(root / f"abstract_{i}.jpg", seed=i)
    (root / "ABSTRACT_groundTruth.csv").write_text(
        "'','Amusement','Anger','Awe','Content','Disgust','Excitement','Fear','Sad'\n"
        "'abstract_0.jpg',5,0,1,0,0,0,0,0\n"
        "'abstract_1.jpg',0,0,0,2,0,0,0,2\n"     # tie: dropped
        "'abstract_2.jpg',0,0,0,0,0,0,1,3\n")
    data = open_dataset(root)
    assert data.extra["layout"] == "abstract" and data.extra["dropped_ties"] == 1
    tax = load_taxonomy("mikels8")
    assert [tax.names[i] for i in data.label_indices(tax)] == ["amusement", "sadness"]
    assert np.allclose(data.votes[1], [0, 0, 0, 0, 0, 0, 0.25, 0.75])
    assert [tax.index(c) for c in data.vote_classes] == list(range(8))


def test_votes_file_on_a_copied_split_matches_bare_names_and_paths(tmp_path):
    root = tmp_path / "images"
    for c in ("joy", "fear"):
        image(root / c / f"{c}1.jpg")
    (tmp_path / "copied.tsv").write_text("image\tlabel\tsplit\njoy/joy1.jpg\tjoy\ttest\nfear/fear1.jpg\tfear\ttest\n")
    (tmp_path / "votes.txt").write_text(
        "[image_filename]\t[valence]\t[prob. anger]\t[prob. joy]\t[prob. fear]\t[prob. neutral]\n"
        "joy/joy1.jpg\t7\t0\t0.6\t0.2\t0.2\nfear1.jpg\t2\t0.5\t0\t0.5\t0\n")
    data = open_dataset(root, tmp_path / "copied.tsv", votes=tmp_path / "votes.txt")
    assert data.vote_classes == ("anger", "joy", "fear")
    assert np.allclose(data.votes, [[0, 0.75, 0.25], [0.5, 0, 0.5]])


def test_few_shot_is_seeded_per_class_and_keeps_short_classes(tmp_path):
    for c, n in (("joy", 10), ("fear", 10), ("sadness", 2)):
        for i in range(n):
            image(tmp_path / "d" / c / f"{i}.jpg", seed=i)
    data = open_dataset(tmp_path / "d")
    picked, record = few_shot(data, 4, seed=1)
    assert Counter(picked.labels) == {"joy": 4, "fear": 4, "sadness": 2}
    assert record == {"shots": 4, "seed": 1, "images": 10, "classes_with_fewer": {"sadness": 2}}
    assert few_shot(data, 4, seed=1)[0].paths == picked.paths
    assert few_shot(data, 4, seed=2)[0].paths != picked.paths
    assert set(few_shot(data, 4, seed=1)[0].paths) <= set(data.paths)


def test_label_table_of_ids_without_suffix_and_no_header(tmp_path):
    for i in (101, 102):
        image(tmp_path / "imgs" / f"{i}.jpg", seed=i)
    (tmp_path / "labels.tsv").write_text("101\tpositive\n102\tnegative\n")
    data = open_dataset(tmp_path / "imgs", label_file=tmp_path / "labels.tsv")
    assert data.extra["layout"] == "labelled" and sorted(data.labels) == ["negative", "positive"]


def test_a_layout_without_splits_says_how_to_make_one(tmp_path):
    image(tmp_path / "art" / "fear_1.jpg")
    with pytest.raises(EmoclipError, match=r"emoclip split ROOT -o split.tsv.*--split all"):
        open_dataset(tmp_path / "art").split("test")
