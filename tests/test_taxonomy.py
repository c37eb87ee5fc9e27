"""Taxonomies as data: built-ins, user files, parent maps, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emoclip.core.errors import TaxonomyError
from emoclip.labels.taxonomy import builtin_taxonomies, load_taxonomy, taxonomy_from_labels


def test_builtins_have_the_published_classes():
    assert set(builtin_taxonomies()) >= {"mikels8", "emotionroi6", "parrott2", "parrott6", "parrott25", "polarity"}
    assert load_taxonomy("mikels8").names == ["amusement", "anger", "awe", "contentment", "disgust",
                                              "excitement", "fear", "sadness"]
    assert load_taxonomy("emotionroi6").names == ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
    assert [len(load_taxonomy(f"parrott{n}")) for n in (2, 6, 25)] == [2, 6, 25]


def test_mikels_maps_to_polarity():
    tax = load_taxonomy("mikels8")
    mapped = dict(zip(tax.names, np.array(tax.parent.names)[tax.mapping_to("polarity")], strict=True))
    assert [k for k, v in mapped.items() if v == "positive"] == ["amusement", "awe", "contentment", "excitement"]


def test_emotionroi_binary_variant_matches_the_benchmark():
    tax = load_taxonomy("emotionroi6")
    positives = [n for n, p in zip(tax.names, tax.mapping_to("polarity"), strict=True) if p == 0]
    assert positives == ["joy", "surprise"]


def test_parrott_levels_chain_through_two_steps():
    fine = load_taxonomy("parrott25")
    assert [t.name for t in fine.ancestors()] == ["parrott6", "parrott2"]
    to_two = fine.mapping_to("parrott2")
    via_six = fine.parent.mapping_to("parrott2")[fine.mapping_to("parrott6")]
    assert to_two.tolist() == via_six.tolist()
    assert fine.aggregation_matrix("parrott6").sum(axis=0).tolist() == [3, 7, 1, 6, 6, 2]


def test_synonyms_and_case_resolve_to_their_class():
    tax = load_taxonomy("mikels8")
    assert tax.index("Sadness") == tax.index("grief") == 7


def test_unknown_label_names_the_known_ones():
    with pytest.raises(TaxonomyError, match=r"unknown label 'joyful'.*amusement"):
        load_taxonomy("mikels8").index("joyful")


def test_unknown_taxonomy_lists_builtins():
    with pytest.raises(TaxonomyError, match="unknown taxonomy 'nope'.*mikels8"):
        load_taxonomy("nope")


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_user_file_in_each_format_works_like_a_builtin(tmp_path, suffix):
    data = {"name": "mood", "parent": "polarity",
            "classes": [{"name": "calm", "parent": "positive", "synonyms": ["serene"]},
                        {"name": "tense", "parent": "negative"}]}
    path = tmp_path / f"mood{suffix}"
    if suffix == ".toml":
        lines = ['name = "mood"', 'parent = "polarity"']
        for c in data["classes"]:
            lines += ["[[classes]]", f'name = "{c["name"]}"', f'parent = "{c["parent"]}"']
        path.write_text("\n".join(lines))
    else:
        path.write_text(json.dumps(data))  # JSON is valid YAML too
    tax = load_taxonomy(str(path))
    assert tax.names == ["calm", "tense"]
    assert tax.mapping_to("polarity").tolist() == [0, 1]


def test_parent_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nparent: b.yaml\nclasses: [{name: x, parent: y}]\n")
    (tmp_path / "b.yaml").write_text("name: b\nparent: a.yaml\nclasses: [{name: y, parent: x}]\n")
    with pytest.raises(TaxonomyError, match="cycle"):
        load_taxonomy(str(tmp_path / "a.yaml"))


def test_class_without_required_parent_is_an_error(tmp_path):
    (tmp_path / "t.yaml").write_text("name: t\nparent: polarity\nclasses: [{name: calm, parent: positive}, tense]\n")
    with pytest.raises(TaxonomyError, match="class 'tense'.*has no parent"):
        load_taxonomy(str(tmp_path / "t.yaml"))


def test_parent_that_is_not_a_coarse_class_is_an_error(tmp_path):
    (tmp_path / "t.yaml").write_text("name: t\nparent: polarity\n"
                                     "classes: [{name: calm, parent: neutral}, {name: tense, parent: negative}]\n")
    with pytest.raises(TaxonomyError, match="parent 'neutral'.*positive, negative"):
        load_taxonomy(str(tmp_path / "t.yaml"))


def test_duplicate_classes_and_bad_files_are_errors(tmp_path):
    (tmp_path / "dup.yaml").write_text("name: d\nclasses: [a, b, a]\n")
    with pytest.raises(TaxonomyError, match="more than once"):
        load_taxonomy(str(tmp_path / "dup.yaml"))
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(TaxonomyError, match="cannot parse"):
        load_taxonomy(str(tmp_path / "broken.yaml"))
    with pytest.raises(TaxonomyError, match="does not exist"):
        load_taxonomy(str(tmp_path / "missing.yaml"))


def test_coarse_level_that_is_not_an_ancestor_is_an_error():
    with pytest.raises(TaxonomyError, match="does not map into 'parrott6'"):
        load_taxonomy("mikels8").mapping_to("parrott6")


def test_ad_hoc_labels():
    assert taxonomy_from_labels(["calm", " tense "]).names == ["calm", "tense"]
    with pytest.raises(TaxonomyError, match="at least two"):
        taxonomy_from_labels(["alone"])


def test_round_trip_through_dict():
    from emoclip.labels.taxonomy import taxonomy_from_dict

    tax = load_taxonomy("parrott25")
    again = taxonomy_from_dict(tax.to_dict())
    assert again == tax and again.mapping_to("parrott2").tolist() == tax.mapping_to("parrott2").tolist()
