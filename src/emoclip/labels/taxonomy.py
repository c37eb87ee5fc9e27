"""Emotion taxonomies as data.

A taxonomy is an ordered list of classes; each class may carry synonyms (used by prompt ensembles
and contrastive captions) and a parent in a coarser taxonomy (fine → coarse, emotion → polarity).
Built-ins live as YAML files in ``emoclip/taxonomies``; a user file in YAML, TOML or JSON of the same
shape works everywhere a built-in name does.

File shape::

    name: mikels8
    parent: polarity            # optional: the coarser taxonomy the classes map into
    classes:
      - {name: amusement, parent: positive, synonyms: [fun, humor]}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from emoclip.core.errors import TaxonomyError, short_repr
from emoclip.core.userfiles import parse_document, read_text

_BUILTIN_PACKAGE = "emoclip.labels.taxonomies"
_FILE_SUFFIXES = (".yaml", ".yml", ".toml", ".json")
MAX_NAME_CHARS = 200  # a class name or synonym is a word or a short phrase inside a CLIP prompt


@dataclass(frozen=True)
class EmotionClass:
    """One class: its name, the words that mean the same, and its parent class in a coarser taxonomy.

    ``aliases`` are other spellings of the name that datasets use for their labels (WEBEmo's folders
    say "cheerfullness"); they resolve to the class when labels are read but, unlike synonyms, never
    appear in prompts or captions.
    """

    name: str
    synonyms: tuple[str, ...] = ()
    parent: str | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Taxonomy:
    """An ordered set of emotion classes, optionally mapped into a coarser taxonomy."""

    name: str
    classes: tuple[EmotionClass, ...]
    parent: Taxonomy | None = None
    description: str = ""
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.classes]
        if len(names) < 2:
            raise TaxonomyError(f"taxonomy '{self.name}' has {len(names)} class{'es' * (len(names) != 1)}; "
                                "list at least two under 'classes:' (one class cannot be told from anything)")
        folded = [n.casefold() for n in names]
        duplicates = sorted({n for n in names if folded.count(n.casefold()) > 1})
        if duplicates:
            raise TaxonomyError(f"taxonomy '{self.name}' lists {', '.join(duplicates[:6])} more than once "
                                "(labels are matched ignoring case); give each class once")
        if self.parent is not None:
            self._check_parents()

    def _check_parents(self) -> None:
        assert self.parent is not None
        known = set(self.parent.names)
        for c in self.classes:
            if c.parent is None:
                raise TaxonomyError(
                    f"class '{c.name}' of taxonomy '{self.name}' has no parent, but the taxonomy maps into "
                    f"'{self.parent.name}'; add 'parent: <one of {', '.join(self.parent.names)}>'")
            if c.parent not in known:
                raise TaxonomyError(
                    f"class '{c.name}' of taxonomy '{self.name}' has parent '{c.parent}', which is not a class "
                    f"of '{self.parent.name}'; use one of {', '.join(self.parent.names)}")

    # -- lookup -------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, label: str) -> int:
        """Position of ``label``; synonyms and case differences resolve to their class."""
        table = self._lookup()
        key = label.strip().lower()
        if key not in table:
            raise TaxonomyError(f"unknown label '{label}' for taxonomy '{self.name}'; "
                                f"known labels: {', '.join(self.names)}")
        return table[key]

    def _lookup(self) -> dict[str, int]:
        table: dict[str, int] = {}
        for i, c in enumerate(self.classes):
            for word in (*c.aliases, *c.synonyms):
                table.setdefault(word.lower(), i)
        for i, c in enumerate(self.classes):  # a class name always wins over a synonym
            table[c.name.lower()] = i
        return table

    # -- hierarchy ----------------------------------------------------------------------------------
    def ancestors(self) -> list[Taxonomy]:
        """Coarser taxonomies reachable through parents, nearest first."""
        chain: list[Taxonomy] = []
        node = self.parent
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain

    def find_ancestor(self, name: str) -> Taxonomy:
        for t in self.ancestors():
            if t.name == name:
                return t
        coarser = ", ".join(t.name for t in self.ancestors()) or "none"
        raise TaxonomyError(f"taxonomy '{self.name}' does not map into '{name}'; "
                            f"its coarser levels are: {coarser}")

    def mapping_to(self, coarse: Taxonomy | str) -> np.ndarray:
        """Index array ``m`` with ``m[i]`` = the coarse class of fine class ``i``."""
        target = self.find_ancestor(coarse if isinstance(coarse, str) else coarse.name)
        mapping = np.arange(len(self))
        level: Taxonomy = self
        while level.name != target.name:
            assert level.parent is not None
            step = np.array([level.parent.index(c.parent or "") for c in level.classes])
            mapping = step[mapping]
            level = level.parent
        return mapping

    def aggregation_matrix(self, coarse: Taxonomy | str) -> np.ndarray:
        """0/1 matrix (fine × coarse): fine probabilities @ matrix = coarse probabilities."""
        target = self.find_ancestor(coarse if isinstance(coarse, str) else coarse.name)
        matrix = np.zeros((len(self), len(target)), dtype=np.float32)
        matrix[np.arange(len(self)), self.mapping_to(target)] = 1.0
        return matrix

    def to_dict(self) -> dict:
        """A plain dict that ``taxonomy_from_dict`` rebuilds (used in checkpoint metadata)."""
        return {
            "name": self.name,
            "description": self.description,
            "parent": self.parent.to_dict() if self.parent else None,
            "classes": [{"name": c.name, "synonyms": list(c.synonyms), "parent": c.parent,
                         **({"aliases": list(c.aliases)} if c.aliases else {})} for c in self.classes],
        }


# -- loading -------------------------------------------------------------------------------------
def builtin_taxonomies() -> list[str]:
    """Names of the taxonomies shipped with emoclip."""
    files = resources.files(_BUILTIN_PACKAGE).iterdir()
    return sorted(Path(f.name).stem for f in files if f.name.endswith(".yaml"))


def _read_mapping(text: str, suffix: str, origin: str) -> dict:
    data = parse_document(text, suffix, origin, "taxonomy file", TaxonomyError)
    if not isinstance(data, dict):
        raise TaxonomyError(f"taxonomy file {origin} must hold a mapping with 'name' and 'classes'; "
                            "write it as name: …, classes: [calm, tense, …]")
    return data


def _word(value: object, what: str, origin: str) -> str:
    """A class name, synonym or parent: a non-empty string (YAML's null, numbers, yes/no are refused
    rather than turned into classes named 'None', '1' or 'True')."""
    if not isinstance(value, str) or not value.strip():
        raise TaxonomyError(f"{what} in {origin} must be a non-empty text, got {short_repr(value)}; "
                            "quote it in YAML")
    if len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise TaxonomyError(f"{what} {short_repr(value)} in {origin} must be printable and at most "
                            f"{MAX_NAME_CHARS} characters; rename it")
    return value.strip()


def _word_list(entry: dict, key: str, name: str, origin: str) -> list | tuple:
    """A class's ``synonyms``/``aliases``: one word or a list of words (each checked by ``_word`` later)."""
    words = entry.get(key) or ()
    if isinstance(words, str):
        words = [words]
    if not isinstance(words, list | tuple):
        raise TaxonomyError(f"{key} of '{name}' in {origin} must be a list of words, got {short_repr(words)}; "
                            f"write {key}: [word, …]")
    return words


def _parse_class(entry: object, origin: str) -> EmotionClass:
    if not isinstance(entry, dict | list):  # a bare name (and a null, number or yes/no is refused there)
        return EmotionClass(name=_word(entry, "a class name", origin))
    if not isinstance(entry, dict) or "name" not in entry:
        raise TaxonomyError(f"each class in {origin} must be a name or a mapping with 'name', "
                            f"got {short_repr(entry)}; write - calm or - {{name: calm}}")
    unknown = sorted(str(k) for k in entry if k not in ("name", "synonyms", "parent", "aliases"))
    if unknown:
        raise TaxonomyError(f"class {short_repr(entry.get('name'))} in {origin} has unknown key "
                            f"{short_repr(unknown[0])}; a class has name, synonyms, aliases and parent")
    name = _word(entry["name"], "a class name", origin)
    synonyms = _word_list(entry, "synonyms", name, origin)
    aliases = _word_list(entry, "aliases", name, origin)
    parent = entry.get("parent")
    return EmotionClass(name=name, synonyms=tuple(_word(w, f"a synonym of '{name}'", origin) for w in synonyms),
                        parent=None if parent is None else _word(parent, f"the parent of '{name}'", origin),
                        aliases=tuple(_word(a, f"an alias of '{name}'", origin) for a in aliases))


def taxonomy_from_dict(data: dict, origin: str = "<dict>", _seen: tuple[str, ...] = (),
                       _base_dir: Path | None = None) -> Taxonomy:
    """Build a taxonomy from its mapping form; ``parent`` may be a name, a file path or a mapping."""
    name = _word(data["name"], "the taxonomy name", origin) if data.get("name") is not None else Path(origin).stem
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise TaxonomyError(f"the description in {origin} must be text, got {short_repr(description)}; quote it")
    if name in _seen:
        cycle = " → ".join((*_seen, name))
        raise TaxonomyError(f"taxonomy parents form a cycle ({cycle}); a coarser level cannot map back")
    raw_classes = data.get("classes")
    if not isinstance(raw_classes, list):
        raise TaxonomyError(f"taxonomy {origin} needs a 'classes:' list; add classes: [calm, tense, …]")
    parent_ref = data.get("parent")
    parent: Taxonomy | None = None
    if isinstance(parent_ref, dict):
        parent = taxonomy_from_dict(parent_ref, origin, (*_seen, name), _base_dir)
    elif parent_ref is not None:
        parent = _load(_word(parent_ref, "the parent taxonomy", origin), (*_seen, name), _base_dir)
    return Taxonomy(name=name, classes=tuple(_parse_class(e, origin) for e in raw_classes), parent=parent,
                    description=description, source=origin)


def _load(ref: str, seen: tuple[str, ...], base_dir: Path | None) -> Taxonomy:
    candidate = Path(ref).expanduser()
    if base_dir is not None and not candidate.is_absolute() and (base_dir / candidate).is_file():
        candidate = base_dir / candidate
    if candidate.suffix.lower() in _FILE_SUFFIXES or candidate.is_file():
        if not candidate.is_file():
            raise TaxonomyError(f"taxonomy file '{ref}' does not exist; give a built-in name "
                                f"({', '.join(builtin_taxonomies())}) or an existing YAML/TOML/JSON file")
        data = _read_mapping(read_text(candidate, "taxonomy file"), candidate.suffix.lower(), str(candidate))
        return taxonomy_from_dict(data, str(candidate), seen, candidate.parent)
    if ref in builtin_taxonomies():
        text = resources.files(_BUILTIN_PACKAGE).joinpath(f"{ref}.yaml").read_text(encoding="utf-8")
        return taxonomy_from_dict(_read_mapping(text, ".yaml", ref), f"builtin:{ref}", seen, base_dir)
    raise TaxonomyError(f"unknown taxonomy '{ref}'; use one of {', '.join(builtin_taxonomies())} "
                        "or the path of a YAML/TOML/JSON taxonomy file")


@cache
def _load_cached(ref: str) -> Taxonomy:
    return _load(ref, (), None)


def load_taxonomy(ref: str | Path | Taxonomy) -> Taxonomy:
    """A taxonomy by built-in name (``mikels8``) or file path; a ``Taxonomy`` passes through."""
    if isinstance(ref, Taxonomy):
        return ref
    return _load_cached(str(ref))


def taxonomy_from_labels(labels: Iterable[str], name: str = "custom") -> Taxonomy:
    """An ad-hoc taxonomy from a list of label names (``--labels calm,tense,joyful``)."""
    classes = tuple(EmotionClass(name=_word(label, "a label", "--labels")) for label in labels if label.strip())
    if len(classes) < 2:
        raise TaxonomyError("fewer than two labels given; give at least two labels, separated by commas "
                            "(e.g. --labels calm,tense)")
    return Taxonomy(name=name, classes=classes)


def ensure_labels(taxonomy: Taxonomy, labels: Sequence[str], origin: str = "") -> list[int]:
    """Indices of ``labels``; the first unknown label raises with where it came from."""
    out = []
    for label in labels:
        try:
            out.append(taxonomy.index(label))
        except TaxonomyError as exc:
            raise TaxonomyError(f"{exc} (in {origin})" if origin else str(exc)) from None
    return out
