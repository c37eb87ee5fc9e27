"""Zero-shot classifier: by construction equal to open_clip's own text features, and well-formed outputs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from emoclip.labels.distribution import LevelProbabilities, coarsen, softmax
from emoclip.labels.prompts import class_captions, resolve_templates
from emoclip.labels.taxonomy import load_taxonomy
from emoclip.methods.zeroshot import ZeroShotClassifier
from emoclip.tagging.tagger import Tagger

TEMPLATE = "a photo seems to express a feeling of {}"


def test_single_template_weights_equal_open_clip_text_features_exactly(tiny, shake):
    tax = load_taxonomy("mikels8")
    clf = ZeroShotClassifier(tiny, tax, TEMPLATE)
    with torch.no_grad():
        direct = tiny.model.encode_text(tiny.tokenizer([TEMPLATE.format(c) for c in tax.names]))
    # bit-identical by construction: the same eight prompts in one batch, at the same thread count
    assert torch.equal(clf.class_weights, F.normalize(direct, dim=-1))
    with torch.no_grad():  # and, one prompt at a time, equal up to float rounding of batched matmuls
        singles = torch.cat([F.normalize(tiny.model.encode_text(tiny.tokenizer([TEMPLATE.format(c)])), dim=-1)
                             for c in tax.names])
    torch.testing.assert_close(clf.class_weights, singles, rtol=0, atol=1e-6)


def test_ensemble_is_renormalised_mean_of_normalised_features(tiny, shake):
    # the classifier encodes all captions in one batch, the check one class at a time: 1e-6, shaken
    tax = load_taxonomy("emotionroi6")
    templates = resolve_templates("ensemble")
    clf = ZeroShotClassifier(tiny, tax, templates, synonyms=True)
    for i, captions in enumerate(class_captions(tax, templates, synonyms=True)):
        assert len(captions) == len(templates) * (1 + len(tax.classes[i].synonyms))
        with torch.no_grad():
            feats = F.normalize(tiny.model.encode_text(tiny.tokenizer(captions)), dim=-1)
        torch.testing.assert_close(clf.class_weights[i], F.normalize(feats.mean(0), dim=-1), rtol=0, atol=1e-6)


def test_logits_are_scaled_cosines(tiny):
    clf = ZeroShotClassifier(tiny, load_taxonomy("mikels8"))
    feats = F.normalize(torch.randn(5, tiny.feature_dim), dim=-1)
    expected = tiny.model.logit_scale.exp() * feats @ clf.class_weights.T
    torch.testing.assert_close(clf.logits(feats), expected)


def test_distributions_sum_to_one_and_coarse_levels_sum_children(tiny):
    tax = load_taxonomy("parrott25")
    clf = ZeroShotClassifier(tiny, tax)
    feats = F.normalize(torch.randn(7, tiny.feature_dim), dim=-1)
    fine = LevelProbabilities(tax, softmax(clf.logits(feats)))
    np.testing.assert_allclose(fine.probs.sum(1), 1.0, atol=1e-12)
    six = coarsen(fine, "parrott6")
    for j, name in enumerate(six.taxonomy.names):
        children = [i for i, c in enumerate(tax.classes) if c.parent == name]
        np.testing.assert_allclose(six.probs[:, j], fine.probs[:, children].sum(1), atol=1e-12)
    two = coarsen(fine, "parrott2")
    np.testing.assert_allclose(two.probs, coarsen(six, "parrott2").probs, atol=1e-12)


def test_tagger_rows_carry_full_and_coarse_distributions(tiny, photo_folder):
    tax = load_taxonomy("mikels8")
    tagger = Tagger(tiny, ZeroShotClassifier(tiny, tax), top_k=2)
    rows = list(tagger.tag(sorted(photo_folder.rglob("*.jpg"))))
    assert len(rows) == 5 and all(r.ok for r in rows)
    for r in rows:
        assert abs(sum(r.distribution.values()) - 1) < 1e-9
        assert r.label == max(r.distribution, key=r.distribution.get)
        assert [lbl for lbl, _ in r.top_k] == sorted(r.distribution, key=r.distribution.get, reverse=True)[:2]
        positive = sum(p for c, p in r.distribution.items() if tax.classes[tax.index(c)].parent == "positive")
        assert abs(r.levels["polarity"]["positive"] - positive) < 1e-9


def test_batching_does_not_change_predictions(tiny, photo_folder):
    paths = sorted(photo_folder.rglob("*.jpg"))
    clf = ZeroShotClassifier(tiny, load_taxonomy("mikels8"))
    one = [r.distribution for r in Tagger(tiny, clf, batch_size=1).tag(paths)]
    many = [r.distribution for r in Tagger(tiny, clf, batch_size=4).tag(paths)]
    for a, b in zip(one, many, strict=True):
        assert max(abs(a[k] - b[k]) for k in a) < 1e-5


def test_tagger_rows_agree_across_batch_sizes_and_threads(tiny, photo_folder, shake):
    """Rows at any batch size and thread count match a one-image-at-a-time recomputation.

    Batch shape and thread count change the matmul kernels, so the features differ in the last bits:
    probabilities are compared to 1e-5 (features agree to FEATURE_ATOL; the logit scale of 100 can
    amplify 1e-7 feature noise to about 1e-5 in a logit, which softmax shrinks again).
    """
    from emoclip.encoder.decode import load_rgb

    paths = sorted(photo_folder.rglob("*.jpg"))
    clf = ZeroShotClassifier(tiny, load_taxonomy("mikels8"))
    rows = list(Tagger(tiny, clf, batch_size=shake).tag(paths))
    for path, row in zip(paths, rows, strict=True):
        feature = tiny.encode_pixels(tiny.preprocess(load_rgb(path)).unsqueeze(0))
        probs = torch.softmax(clf.logits(feature), dim=-1)[0]
        expected = dict(zip(clf.taxonomy.names, probs.tolist(), strict=True))
        np.testing.assert_allclose([row.distribution[k] for k in expected], list(expected.values()), rtol=0,
                                   atol=1e-5)
