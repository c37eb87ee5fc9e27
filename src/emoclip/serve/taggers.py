"""The loaded tagger, and its twins for the taxonomies and label sets requests ask for.

A request may name a built-in taxonomy (``taxonomy=``) or its own labels (``labels=``) where the
method can predict under another taxonomy (zero-shot, and trained methods with ``for_taxonomy``).
Each twin is built by ``tagging.build_tagger`` on the backbone loaded at start, so it costs only
the text encoding of its prompts, and is kept in a small least-recently-used table (label sets
come from clients: an unbounded table would be a memory leak).

``choose`` runs on the event loop and only validates; ``get`` builds and runs on the model thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from emoclip.core.errors import EmoclipError
from emoclip.labels.taxonomy import builtin_taxonomies
from emoclip.serve.uploads import UploadRejected
from emoclip.tagging.config import TaggerConfig, build_tagger
from emoclip.tagging.tagger import Tagger

MAX_LABEL_CHARS = 100
TaxonomyKey = tuple[str, Hashable] | None   # None: the tagger the service was started with


def _retargetable(tagger: Tagger, config: TaggerConfig) -> bool:
    if not config.checkpoint:
        return True  # zero-shot: any taxonomy is a set of prompts
    method = getattr(tagger.classifier, "method", tagger.classifier)  # a taxonomy view wraps its method
    return hasattr(method, "for_taxonomy")


class TaggerPool:
    """The service's tagger, and per-taxonomy twins sharing its backbone (LRU of ``capacity``)."""

    def __init__(self, config: TaggerConfig, tagger: Tagger, capacity: int = 16, max_labels: int = 64) -> None:
        self.config = config
        self.default = tagger
        self.capacity = max(1, capacity)
        self.max_labels = max_labels
        self.retargetable = _retargetable(tagger, config)
        self._twins: OrderedDict[TaxonomyKey, Tagger] = OrderedDict()
        self.hits = 0     # requests whose classifier was already built
        self.builds = 0   # classifiers built (each costs the text encoding of its prompts)

    def is_built(self, key: TaxonomyKey) -> bool:
        """Whether ``key``'s classifier is loaded (a request for it costs no build)."""
        return key is None or key in self._twins

    def feature_cache_counts(self) -> tuple[int, int]:
        """(hits, misses) of the feature caches of the tagger and its twins (0, 0 with the cache off)."""
        caches = {id(t.cache): t.cache for t in (self.default, *self._twins.values()) if t.cache is not None}
        return sum(c.hits for c in caches.values()), sum(c.misses for c in caches.values())

    def describe(self) -> dict:
        described: dict = getattr(self.default.classifier, "describe", lambda: {})()
        return {"method": described.get("method", type(self.default.classifier).__name__),
                "taxonomy": self.default.taxonomy.name, "classes": self.default.taxonomy.names,
                "per_request_taxonomy": self.retargetable, "backbone": self.default.backbone.identity(),
                "random_weights": self.default.backbone.weights.is_random}

    def choose(self, taxonomy: str | None, labels: str | None) -> TaxonomyKey:
        """Validate a request's ``taxonomy=`` / ``labels=`` (cheap; no model work) into a key for ``get``."""
        taxonomy, labels = (taxonomy or "").strip(), (labels or "").strip()
        if not taxonomy and not labels:
            return None
        if taxonomy and labels:
            raise UploadRejected(422, "bad_taxonomy", "give taxonomy= or labels=, not both")
        if not self.retargetable:
            raise UploadRejected(422, "fixed_taxonomy", f"this service's checkpoint predicts "
                                 f"{self.default.taxonomy.name} only; leave out taxonomy= and labels=")
        if taxonomy:
            if taxonomy not in builtin_taxonomies():
                raise UploadRejected(422, "bad_taxonomy", f"unknown taxonomy '{taxonomy}'; GET /v1/taxonomies "
                                     "lists the built-in ones (the service never reads files named in a request)")
            key: TaxonomyKey = ("taxonomy", taxonomy)
            same = taxonomy == self.default.taxonomy.name and not self.config.labels
        else:
            names = tuple(part.strip() for part in labels.split(",") if part.strip())
            if not 2 <= len(names) <= self.max_labels or len(set(names)) != len(names):
                raise UploadRejected(422, "bad_labels", f"labels= needs 2 to {self.max_labels} different "
                                     "comma-separated labels, e.g. calm,tense,joyful")
            if any(len(name) > MAX_LABEL_CHARS for name in names):
                raise UploadRejected(422, "bad_labels", f"a label is over {MAX_LABEL_CHARS} characters")
            key = ("labels", names)
            same = self.config.labels == names
        return None if same else key

    def get(self, key: TaxonomyKey) -> Tagger:
        """The tagger for ``key``, built on first use (model thread only: it encodes prompts)."""
        if key is None:
            self.hits += 1
            return self.default
        twin = self._twins.get(key)
        if twin is not None:
            self.hits += 1
        else:
            kind, value = key
            changes = {"taxonomy": value, "labels": None} if kind == "taxonomy" else {"labels": value,
                                                                                    "taxonomy": None}
            try:
                twin = build_tagger(self.config.replace(**changes, also=None), backbone=self.default.backbone)
            except EmoclipError as exc:
                raise UploadRejected(422, "bad_taxonomy", str(exc)) from None
            self._twins[key] = twin
            self.builds += 1
            while len(self._twins) > self.capacity:
                self._twins.popitem(last=False)
        self._twins.move_to_end(key)
        return twin
