"""Prompt templates and the captions built from them.

Templates are data (``emoclip/templates.yaml``): a named set is a list of strings with one ``{}``
for the class word. ``class_captions`` expands a taxonomy into, for every class, the captions whose
text features are averaged into that class's zero-shot classifier weight (template ensembles × the
class name and, optionally, its synonyms, the CLIP-paper way).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from emoclip.core.errors import EmoclipError, short_repr
from emoclip.core.userfiles import parse_document, read_text
from emoclip.labels.taxonomy import Taxonomy

DEFAULT_TEMPLATES = "feeling"


@cache
def template_sets() -> dict[str, tuple[str, ...]]:
    """The built-in template sets by name."""
    text = resources.files("emoclip.labels").joinpath("templates.yaml").read_text(encoding="utf-8")
    return {name: tuple(items) for name, items in yaml.safe_load(text).items()}


def _formats(template: str) -> bool:
    """True when ``template.format(word)`` works (a stray '{' or '}' would raise mid-run)."""
    try:
        template.format("word")
    except (ValueError, IndexError, KeyError):
        return False
    return True


def _check(templates: Sequence[str], origin: str) -> tuple[str, ...]:
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1 or not _formats(t)]
    if bad or not templates:
        raise EmoclipError(f"each template in {origin} needs exactly one '{{}}' for the class word; "
                           f"bad: {short_repr(bad[0]) if bad else '(none given)'} "
                           "(write a literal brace as '{{' or '}}')")
    return tuple(templates)


def resolve_templates(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Templates from a set name, a YAML/text file (one template a line), a literal with ``{}``, or a list."""
    if spec is None:
        spec = DEFAULT_TEMPLATES
    if not isinstance(spec, str):
        return _check(list(spec), "the template list")
    sets = template_sets()
    if spec in sets:
        return sets[spec]
    if "{}" in spec:
        return _check([spec], "--templates")
    path = Path(spec).expanduser()
    if path.is_file():
        text = read_text(path, "template file")
        if path.suffix.lower() in (".yaml", ".yml"):
            data = parse_document(text, ".yaml", str(path), "template file")
            if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
                items = [t for v in data.values() for t in v]
            elif isinstance(data, list):
                items = data
            else:
                raise EmoclipError(f"template file {path} must hold a list of templates (or named lists)")
        else:
            items = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return _check(items, str(path))
    raise EmoclipError(f"unknown template set '{spec}'; use one of {', '.join(sets)}, a file with one "
                       "template per line, or a template containing '{}'")


def class_captions(taxonomy: Taxonomy, templates: Sequence[str], synonyms: bool = False) -> list[list[str]]:
    """For each class, the captions whose features average into its classifier weight."""
    captions = []
    for cls in taxonomy.classes:
        words = [cls.name, *cls.synonyms] if synonyms else [cls.name]
        captions.append([t.format(w) for t in templates for w in words])
    return captions
