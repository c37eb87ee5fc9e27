"""UGRIE's templates as data: the task text naming an emotion model, and the sentence a class fills.

A class's sentence spells its whole parent chain, finest first::

    mikels8 awe           → "this image evokes awe, a positive feeling"
    parrott25 zest        → "this image evokes zest, a kind of joy, a positive feeling"
    polarity positive     → "this image evokes a positive feeling"

so one generated sentence carries every level at once, and levels can never disagree. The wording
lives in ``emotion_templates.yaml`` (or a user file of the same shape); a checkpoint stores the
mapping itself, so it is rebuilt exactly without the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from emoclip.core.errors import EmoclipError
from emoclip.labels.taxonomy import Taxonomy

BUILTIN = "emotion_templates.yaml"
_KEYS = ("task", "sentence", "separator", "finest", "coarser", "levels")


@dataclass(frozen=True)
class EmotionTemplates:
    task: str
    sentence: str
    separator: str
    finest: str
    coarser: str
    levels: tuple[tuple[str, str], ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "<dict>") -> EmotionTemplates:
        missing = [k for k in _KEYS if k not in data]
        if missing:
            raise EmoclipError(f"UGRIE templates {origin} lack {', '.join(missing)}; see emoclip/{BUILTIN}")
        levels = data["levels"] or {}
        checks = {"sentence": (data["sentence"], "{chain}"), "finest": (data["finest"], "{}"),
                  "coarser": (data["coarser"], "{}"), **{f"levels.{k}": (v, "{}") for k, v in levels.items()}}
        for key, (text, slot) in checks.items():
            if str(text).count(slot) != 1:
                raise EmoclipError(f"UGRIE templates {origin}: '{key}' needs exactly one {slot}, got {text!r}")
        return cls(str(data["task"]), str(data["sentence"]), str(data["separator"]), str(data["finest"]),
                   str(data["coarser"]), tuple((str(k), str(v)) for k, v in levels.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "sentence": self.sentence, "separator": self.separator, "finest": self.finest,
                "coarser": self.coarser, "levels": dict(self.levels)}

    # -- filling ----------------------------------------------------------------------------------
    def task_text(self, taxonomy: Taxonomy) -> str:
        """The text after the image prefix: which emotion model, and its label words."""
        return self.task.format(taxonomy=taxonomy.name, labels=", ".join(taxonomy.names))

    def phrase(self, level: Taxonomy, word: str, finest: bool) -> str:
        own = dict(self.levels).get(level.name)
        return (own or (self.finest if finest else self.coarser)).format(word)

    def sentence_for(self, taxonomy: Taxonomy, index: int) -> str:
        """Class ``index`` of ``taxonomy`` with its parent chain filled into the sentence."""
        parts, level, word = [], taxonomy, taxonomy.names[index]
        while True:
            parts.append(self.phrase(level, word, finest=level is taxonomy))
            if level.parent is None:
                break
            word = level.classes[level.index(word)].parent or ""
            level = level.parent
        return self.sentence.format(chain=self.separator.join(parts))

    def sentences(self, taxonomy: Taxonomy) -> list[str]:
        return [self.sentence_for(taxonomy, i) for i in range(len(taxonomy))]


def load_templates(spec: str | dict | None) -> EmotionTemplates:
    """The built-in templates (``None``/''), a YAML file, or the mapping itself (from a checkpoint)."""
    if isinstance(spec, dict):
        return EmotionTemplates.from_dict(spec)
    if not spec:
        text, origin = resources.files("emoclip.methods.ugrie").joinpath(BUILTIN).read_text(encoding="utf-8"), BUILTIN
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise EmoclipError(f"UGRIE templates file {spec} does not exist; give a YAML file shaped like "
                               f"emoclip/{BUILTIN}, or leave 'templates' out for the built-in one")
        text, origin = path.read_text(encoding="utf-8"), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EmoclipError(f"cannot parse UGRIE templates {origin}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise EmoclipError(f"UGRIE templates {origin} must be a mapping with {', '.join(_KEYS)}")
    return EmotionTemplates.from_dict(data, origin)
