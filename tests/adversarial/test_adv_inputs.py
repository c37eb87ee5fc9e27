"""Hostile taxonomies, configs, templates, split files and option values: each is refused with one
line that says what is wrong and how to fix it (exit 2), quickly, and never accepted silently."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.adversarial.conftest import (
    TINY,
    assert_no_traceback,
    assert_refused,
    assert_usage_error,
    cli,
    good_jpeg,
)

pytestmark = pytest.mark.timeout(120)


def _alias_bomb(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nname: bomb\nclasses: *l{levels - 1}\n"


TAXONOMIES: dict[str, tuple[str | bytes, str]] = {
    "yaml_alias_bomb.yaml": (_alias_bomb(), r"expands to more than"),
    "recursive_alias.yaml": ("name: r\nclasses: &c [a, b, *c]\n", r"refers to itself|class name .* must be"),
    "latin1.yaml": ("name: t\nclasses: [caf\xe9, th\xe9]\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe9"),
    "binary.yaml": (b"\x00\x01\x02PK\x03\x04" * 10, r"binary file"),
    "duplicate_case.yaml": ("name: t\nclasses: [Calm, calm, tense]\n", r"Calm, calm more than once"),
    "one_class.yaml": ("name: t\nclasses: [calm]\n", r"has 1 class; list at least two"),
    "no_classes.yaml": ("name: t\nclasses: []\n", r"has 0 classes"),
    "classes_missing.yaml": ("name: t\n", r"needs a 'classes:' list"),
    "null_name.yaml": ("name: t\nclasses: [{name: null}, {name: calm}]\n", r"class name .* must be a non-empty text"),
    "number_name.yaml": ("name: t\nclasses: [1, 2]\n", r"must be a non-empty text, got 1"),
    "bool_name.yaml": ("name: t\nclasses: [yes, no]\n", r"must be a non-empty text, got True"),
    "list_name.yaml": ("name: t\nclasses: [{name: [a, b]}, calm]\n", r"must be a non-empty text"),
    "empty_name.yaml": ("name: t\nclasses: ['  ', calm]\n", r"must be a non-empty text"),
    "control_char_name.yaml": ('name: t\nclasses: ["a\\x1bb", calm]\n', r"must be printable"),
    "long_name.yaml": ("name: t\nclasses: [" + "x" * 5000 + ", calm]\n", r"at most 200 characters"),
    "unknown_key.yaml": ("name: t\nclasses: [{name: a, colour: red}, b]\n", r"unknown key 'colour'"),
    "synonyms_mapping.yaml": ("name: t\nclasses: [{name: a, synonyms: {x: 1}}, b]\n", r"must be a list of words"),
    "top_level_list.yaml": ("[a, b]\n", r"must hold a mapping"),
    "scalar.yaml": ("just words\n", r"must hold a mapping"),
    "broken_yaml.yaml": ("name: [unclosed\n", r"cannot parse taxonomy file"),
    "deep_nesting.yaml": ("[" * 5000 + "]" * 5000 + "\n", r"nested too deeply|cannot parse"),
    "broken.json": ('{"name": "t", "classes": [', r"cannot parse taxonomy file"),
    "broken.toml": ("name = \n", r"cannot parse taxonomy file"),
    "parent_cycle.yaml": ("name: a\nparent: {name: b, parent: parent_cycle.yaml, classes: [x, y]}\n"
                          "classes: [{name: p, parent: x}, {name: q, parent: y}]\n", r"parents form a cycle"),
    "wrong_parent.yaml": ("name: t\nparent: polarity\nclasses: [{name: a, parent: up}, {name: b, parent: positive}]\n",
                          r"parent 'up', which is not a class"),
    "huge.yaml": ("name: t\nclasses: [a, b]\n# " + "x" * (1 << 20) + "\n", r"more than the 1,048,576 allowed"),
}


@pytest.mark.parametrize("name", sorted(TAXONOMIES))
def test_hostile_taxonomy_is_refused_in_one_short_line(tmp_path, name):
    content, pattern = TAXONOMIES[name]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    started = time.perf_counter()
    outcome = cli("predict", good_jpeg(tmp_path / "x.jpg"), *TINY, "--no-cache", "-t", path)
    assert_refused(outcome, pattern)
    assert time.perf_counter() - started < 30
    assert outcome.stdout == ""


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder"])
def test_taxonomy_that_is_not_a_regular_file_is_refused_without_hanging(tmp_path, kind):
    if kind == "fifo":
        os.mkfifo(tmp_path / "t.yaml")
        path = tmp_path / "t.yaml"
    elif kind == "folder":
        (tmp_path / "t.yaml").mkdir()
        path = tmp_path / "t.yaml"
    else:
        path = Path("/dev/zero")
    outcome = cli("predict", good_jpeg(tmp_path / "x.jpg"), *TINY, "-t", path)
    assert_refused(outcome, r"not a regular file|does not exist|unknown taxonomy")


# -- labels and templates --------------------------------------------------------------------------------------
LABELS = {
    "empty": ("", r"give at least two labels"),
    "only_commas": (",,,", r"give at least two labels"),
    "one": ("calm", r"give at least two labels"),
    "case_duplicates": ("Calm,calm", r"Calm, calm more than once"),
    "control_char": ("calm,te\x07nse", r"must be printable"),
}


@pytest.mark.parametrize("case", sorted(LABELS))
def test_bad_labels_are_refused(tmp_path, case):
    labels, pattern = LABELS[case]
    assert_refused(cli("predict", good_jpeg(tmp_path / "x.jpg"), *TINY, "--labels", labels), pattern)


def test_labels_with_taxonomy_is_refused(tmp_path):
    outcome = cli("predict", good_jpeg(tmp_path / "x.jpg"), *TINY, "--labels", "a,b", "-t", "mikels8")
    assert_refused(outcome, r"either --labels or --taxonomy, not both")


TEMPLATES = {
    "stray_open_brace": ("a {} photo {", r"needs exactly one '\{\}'"),
    "stray_close_brace": ("a {} photo }", r"needs exactly one '\{\}'"),
    "named_field": ("a {} {mood} photo", r"needs exactly one '\{\}'"),
    "two_slots": ("{} and {}", r"needs exactly one '\{\}'"),
    "no_slot_not_a_set": ("just words", r"unknown template set"),
}


@pytest.mark.parametrize("case", sorted(TEMPLATES))
def test_bad_template_is_refused(tmp_path, case):
    template, pattern = TEMPLATES[case]
    outcome = cli("predict", good_jpeg(tmp_path / "x.jpg"), *TINY, "--templates", template)
    assert_refused(outcome, pattern)


@pytest.mark.parametrize("content", [b"a photo of {}\n\xff\xfe\n", b"\x00\x00{}"], ids=["latin1", "binary"])
def test_bad_template_file_is_refused(tmp_path, content):
    (tmp_path / "t.txt").write_bytes(content)
    outcome = cli("predict", good_jpeg(tmp_path / "x.jpg"), *TINY, "--templates", tmp_path / "t.txt")
    assert_refused(outcome, r"template file .* (not UTF-8|binary)")


def test_unknown_output_suffix_is_refused(tmp_path):
    outcome = cli("predict", good_jpeg(tmp_path / "x.jpg"), *TINY, "-o", tmp_path / "out.xml")
    assert_refused(outcome, r"cannot tell the format of .*out\.xml")
    assert not (tmp_path / "out.xml").exists()


@pytest.mark.parametrize(("option", "value"), [("--top-k", 0), ("--max-pixels", 0), ("--batch-size", 0),
                                               ("--workers", 0)])
def test_predict_option_out_of_range_is_refused(tmp_path, option, value):
    assert_usage_error(cli("predict", good_jpeg(tmp_path / "x.jpg"), *TINY, option, value), r"Invalid value")


# -- training options and configs ------------------------------------------------------------------------------
TRAIN_FLAGS = {
    "epochs_zero": (["--epochs", "0"], r"Invalid value for '--epochs'"),
    "val_fraction_negative": (["--val-fraction", "-0.5"], r"Invalid value for '--val-fraction'"),
    "val_fraction_one": (["--val-fraction", "1"], r"Invalid value for '--val-fraction'"),
    "batch_size_zero": (["--batch-size", "0"], r"Invalid value for '--batch-size'"),
    "lr_negative": (["--lr", "-1"], r"Invalid value for '--lr'"),
    "lr_zero": (["--lr", "0"], r"Invalid value for '--lr'"),
    "weight_decay_negative": (["--weight-decay", "-1"], r"Invalid value for '--weight-decay'"),
}
TRAIN_REFUSALS = {
    "set_n_ctx_text": (["--method", "ptdpc", "--set", "n_ctx=abc"], r"option n_ctx must be a whole number, got 'abc'"),
    "set_int_float": (["--set", "hidden=1.5"], r"option hidden must be a whole number, got 1.5"),
    "set_bool_text": (["--method", "ptdpc", "--set", "normalize=maybe"], r"option normalize must be true or false"),
    "set_unknown": (["--set", "colour=red"], r"has no option colour"),
    "set_no_equals": (["--set", "hidden"], r"--set needs KEY=VALUE"),
    "set_bad_yaml": (["--set", "hidden=[1"], r"not valid YAML"),
    "unknown_method": (["--method", "nope"], r"unknown method 'nope'"),
}
CONFIGS = {
    "lr_text": ("train: {lr: fast}\n", r"training option lr must be a number, got 'fast'"),
    "epochs_zero": ("train: {epochs: 0}\n", r"training option epochs must be at least 1"),
    "val_fraction_negative": ("train: {val_fraction: -0.5}\n", r"val_fraction must be in \[0, 1\)"),
    "momentum_one": ("train: {momentum: 1.0}\n", r"momentum must be in \[0, 1\)"),
    "optimizer_unknown": ("train: {optimizer: rmsprop}\n", r"optimizer must be one of sgd, adam, adamw, got 'rmsprop'"),
    "unknown_train_key": ("train: {lr_typo: 1}\n", r"unknown training option lr_typo"),
    "unknown_section": ("trian: {}\n", r"unknown section trian"),
    "list": ("- a\n- b\n", r"is not a mapping of sections"),
    "alias_bomb": (_alias_bomb(), r"expands to more than"),
    "broken_yaml": ("train: {lr: [\n", r"cannot parse config"),
    "nan_lr": ("train: {lr: .nan}\n", r"lr must be a number, got nan"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_FLAGS))
def test_train_flag_out_of_range_is_refused(labelled, tmp_path, case):
    root, split = labelled
    flags, pattern = TRAIN_FLAGS[case]
    outcome = cli("train", "--method", "clipe-ce", "--root", root, "--split-file", split, *TINY, *flags,
                  "--out", tmp_path / "run")
    assert_usage_error(outcome, pattern)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", sorted(TRAIN_REFUSALS))
def test_train_option_of_wrong_type_is_refused(labelled, tmp_path, case):
    root, split = labelled
    flags, pattern = TRAIN_REFUSALS[case]
    if "--method" not in flags:
        flags = ["--method", "clipe-ce", *flags]
    outcome = cli("train", *flags, "--root", root, "--split-file", split, *TINY, "--no-cache",
                  "--out", tmp_path / "run")
    assert_refused(outcome, pattern)
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_hostile_config_is_refused(labelled, tmp_path, case):
    root, split = labelled
    content, pattern = CONFIGS[case]
    (tmp_path / "c.yaml").write_text(content)
    outcome = cli("train", "--config", tmp_path / "c.yaml", "--method", "clipe-ce", "--root", root, "--split-file",
                  split, *TINY, "--no-cache", "--out", tmp_path / "run")
    assert_refused(outcome, pattern)


@pytest.mark.parametrize("content", [b"train: {lr: 0.1}\n# caf\xe9\n", b"\x00" * 64], ids=["latin1", "binary"])
def test_undecodable_config_is_refused(labelled, tmp_path, content):
    root, split = labelled
    (tmp_path / "c.yaml").write_bytes(content)
    outcome = cli("train", "--config", tmp_path / "c.yaml", "--method", "clipe-ce", "--root", root, "--split-file",
                  split, *TINY, "--out", tmp_path / "run")
    assert_refused(outcome, r"config .* (not UTF-8|binary)")


# -- split files -----------------------------------------------------------------------------------------------
SPLITS = {
    "absolute_path": ("image\tlabel\tsplit\n/etc/hostname\tjoy\ttest\n", r"is absolute; list images relative"),
    "parent_escape": ("image\tlabel\tsplit\n../../etc/hostname\tjoy\ttest\n", r"climbs out of --root"),
    "inner_escape": ("image\tlabel\tsplit\njoy/../../x.jpg\tjoy\ttest\n", r"climbs out of --root"),
    "home_path": ("image\tlabel\tsplit\n~/x.jpg\tjoy\ttest\n", r"is absolute"),
    "empty_file": ("", r"is empty"),
    "blank_lines": ("\n\n  \n", r"is empty"),
    "header_only": ("image\tlabel\tsplit\n", r"lists no images"),
    "one_column": ("image\tlabel\tsplit\njoy/0.jpg\n", r"expected image, label and split columns"),
    "empty_image": ("image\tlabel\tsplit\n\tjoy\ttest\n", r"an image path is empty"),
    "unknown_label": ("image\tlabel\tsplit\njoy/0.jpg\tgrumpy\ttest\n", r"label 'grumpy' .* not in taxonomy"),
    "no_test_split": ("image\tlabel\tsplit\njoy/0.jpg\tjoy\ttrain\n", r"has no 'test' split"),
    "unclosed_quote": ('image,label,split\n"joy/0.jpg,joy,test\n', r"cannot read table|expected image"),
    "latin1": (b"image\tlabel\tsplit\ncaf\xe9.jpg\tjoy\ttest\n", r"not UTF-8 text"),
    "binary": (b"PK\x03\x04\x00\x00" * 20, r"binary file"),
    "all_missing": ("image\tlabel\tsplit\nnope/1.jpg\tjoy\ttest\n", r"listed images do not exist"),
}


@pytest.mark.parametrize("case", sorted(SPLITS))
def test_hostile_split_file_is_refused(labelled, tmp_path, case):
    root, _ = labelled
    content, pattern = SPLITS[case]
    split = tmp_path / "split.tsv"
    split.write_bytes(content if isinstance(content, bytes) else content.encode())
    outcome = cli("evaluate", "--root", root, "--split-file", split, *TINY, "-t", "emotionroi6", "--no-cache",
                  "--out", tmp_path / "run")
    assert_refused(outcome, pattern)
    assert not (tmp_path / "run").exists()


def test_split_file_that_is_a_fifo_is_refused_without_hanging(labelled, tmp_path):
    root, _ = labelled
    os.mkfifo(tmp_path / "split.tsv")
    outcome = cli("evaluate", "--root", root, "--split-file", tmp_path / "split.tsv", *TINY, "--out", tmp_path / "r")
    assert_refused(outcome, r"not a regular file|does not exist")


def test_hostile_names_round_trip_through_split_and_evaluate(tmp_path):
    root = tmp_path / "data"
    names = ["a\rb.jpg", os.fsdecode(b"caf\xe9.jpg"), "back\\slash.jpg", "tab\there.jpg", 'q"uote,.jpg', "plain.jpg"]
    for label in ("joy", "fear"):
        for i, name in enumerate(names):
            good_jpeg(root / label / name, seed=i + (10 if label == "joy" else 0))
    split = tmp_path / "split.tsv"
    made = cli("split", root, "--ratios", "1,1", "-o", split)
    assert made.status == 0, made.stderr
    assert split.read_bytes().decode("utf-8").count("\n") == 1 + 2 * len(names)
    outcome = cli("evaluate", "--root", root, "--split-file", split, *TINY, "-t", "emotionroi6", "--no-cache",
                  "--split", "all", "--out", tmp_path / "run")
    assert_no_traceback(outcome)
    assert outcome.status == 0, outcome.stderr
    import json

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n"] == 2 * len(names) and metrics["n_failed"] == 0


# -- the one error path ------------------------------------------------------------------------------------------
def test_debug_shows_the_traceback_of_a_refusal(tmp_path):
    (tmp_path / "t.yaml").write_text("name: t\nclasses: [calm]\n")
    outcome = cli("--debug", "predict", good_jpeg(tmp_path / "x.jpg"), *TINY, "-t", tmp_path / "t.yaml")
    from emoclip.core.errors import TaxonomyError

    assert isinstance(outcome.exception, TaxonomyError)


def test_a_bug_is_one_line_with_exit_3_and_a_pointer_to_debug(tmp_path, monkeypatch):
    import emoclip.core.files

    def broken(inputs, **kwargs):
        raise TypeError("simulated bug")

    monkeypatch.setattr(emoclip.core.files, "collect_images", broken)
    outcome = cli("predict", good_jpeg(tmp_path / "x.jpg"), *TINY)
    assert_refused(outcome, r"internal error \(TypeError: simulated bug\); rerun with `emoclip --debug", status=3)


@pytest.mark.parametrize(("error", "pattern"), [
    (OSError(28, "No space left on device", "/x/out.csv"), r"No space left on device: /x/out.csv; free some space"),
    (OSError(13, "Permission denied", "/x"), r"Permission denied: /x; check the permissions"),
    (MemoryError(), r"out of memory; use a smaller --batch-size"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), r"not UTF-8 text \(byte 0xff"),
])
def test_world_failures_become_one_line(tmp_path, monkeypatch, error, pattern):
    import emoclip.core.files

    def failing(inputs, **kwargs):
        raise error

    monkeypatch.setattr(emoclip.core.files, "collect_images", failing)
    assert_refused(cli("predict", good_jpeg(tmp_path / "x.jpg"), *TINY), pattern)
