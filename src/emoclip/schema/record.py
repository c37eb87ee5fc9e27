"""The run record (``run.json`` beside a run's metrics): what was run, on what, with what.

It is the identity of a result: ``emoclip aggregate`` groups runs whose record agrees on every
field that can change a result (``SETTING``) and averages only over ``seed`` and ``fold``. Every
writer of a run (``train``, ``evaluate``, the zero-shot row, unified runs) builds it here, so no
writer can leave out a field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from emoclip.core.options import option

# What varies within one cell of a table; every other field separates cells.
REPLICATES = ("seed", "fold")


@dataclass
class RunRecord:
    """One evaluated run."""

    name: str = option(help="The row label (``--name``; default: the method).")
    method: dict = option(help="The method and every one of its options (``describe()``).")
    dataset: str = option(help="The scored part's name (e.g. emotion6:test).")
    split: str = option(help="The split scored (test, or another eval_split).")
    backbone: dict = option(help="The encoder identity: architecture, weights digest, precision, decode.")
    taxonomy: str = option(help="The taxonomy the model predicts.")
    label_taxonomy: str = option(help="The taxonomy of the data's labels.")
    seed: int = option(0, "The training seed.")
    fold: int | None = option(None, "The test fold of k-fold data.")
    shots: int = option(0, "Few-shot K per class (0: all the training data).")
    target: str = option("labels", "What was trained on: labels or votes.")
    dataset_label: str | None = option(None, "The dataset's name as opened.")
    data_source: str | None = option(None, "Where the data came from (root, split file, manifests).")
    checkpoint: str | None = option(None, "The run folder of the trained model; none for zero-shot.")
    training: dict | None = option(None, "The training recipe and its outcome (epochs, lr grid, best epoch).")
    setting: dict | None = option(None, "Everything that can change the result, seed and fold aside "
                                        "(evaluation.aggregate.run_setting): aggregate's grouping key.")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k in ("fold",)}


SETTING = tuple(f.name for f in dataclasses.fields(RunRecord) if f.name not in (*REPLICATES, "checkpoint"))
