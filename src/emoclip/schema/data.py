"""Where the labelled data is: the ``data:`` section of an experiment, and the dataset flags."""

from __future__ import annotations

from dataclasses import dataclass

from emoclip.core.options import option, validate


def _layouts() -> tuple[str, ...]:
    """The dataset layouts' registry, read when a layout is checked or shown (it imports numpy and
    Pillow: listing methods must not pay for it)."""
    from emoclip.datasets.dataset import LAYOUTS

    return tuple(LAYOUTS)

# Options naming a file or folder: a grid resolves them relative to the grid file, a config
# relative to the working folder.
PATH_OPTIONS = ("root", "split_file", "manifests", "label_file", "votes")


@dataclass
class DataOptions:
    """The data of one experiment (``emoclip.datasets.open_dataset``'s arguments)."""

    root: str | None = option(None, "Image folder (paths in split files and manifests are relative to it).")
    split_file: str | None = option(None, "CSV/TSV with image, label, split columns (e.g. emotion6/split_70_30.tsv).")
    manifests: list[str] | None = option(None, "JSON manifest(s).")
    layout: str | None = option(None, "Data layout (the layouts of emoclip.datasets); default: inferred from what "
                                      "is given.", rule=lambda v: v is None or v in _layouts(),
                                rule_text=lambda: f"one of {', '.join(_layouts())}")
    fold: int | None = option(None, "k-fold data: the test fold (the others train).")
    label_file: str | None = option(None, "Labels in one table (image<TAB>label; bare file names or paths relative "
                                          "to the root; header optional) for images without class folders.")
    votes: str | None = option(None, "Vote distributions: a table of image and one column per emotion.")
    split_seed: int | None = option(None, "Seed of a split emoclip makes itself (data without a fixed split).")

    def __post_init__(self) -> None:
        validate(self, "data", "fix the dataset flag or the config's data section")
