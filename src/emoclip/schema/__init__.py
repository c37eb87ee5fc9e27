"""The typed schema of everything a user can set: one declaration per option, defaults in one place.

Dataclasses, not pydantic, because: (1) the schema must load without torch and in milliseconds
(`emoclip methods`, `emoclip.list_methods()`, checking a config before anything heavy loads), and
the standard library costs nothing to import; (2) every option class emoclip had was already a
dataclass, recorded in checkpoints through ``dataclasses.asdict`` — the on-disk format stays the
same; (3) pydantic is only a dependency of the optional service extra, and a base install must not
need it. What pydantic would add — range checks, help, number parsing, one-line errors — is the
small ``emoclip.core.options`` (``option(default, help, min=…, choices=…)`` and ``check_options``).

Modules:

- ``encoder``: the backbone/encoder options and their two default sets (tagging: fast; training
  and evaluation: exact), shared by ``TaggerConfig``, the CLI, the Python API, the service and Ray.
- ``data``: where the labelled data is (``data:`` section, dataset flags).
- ``training``: the training recipe (``TrainConfig``: optimiser, schedule, lr grid, few-shot, …).
- ``methods``: each method's ``Config`` (types, ranges, help) and its card (name, summary,
  capabilities, recipe): the method registry as data, readable without torch.
- ``experiment``: the sections of an experiment config and their check.
- ``record``: the run record (``run.json``): the fields that identify a result.
"""

from emoclip.schema.data import DataOptions
from emoclip.schema.encoder import EXACT, TAGGING, EncoderOptions
from emoclip.schema.experiment import SECTIONS, check_experiment
from emoclip.schema.methods import METHOD_CARDS, MethodCard, method_card
from emoclip.schema.record import RunRecord
from emoclip.schema.training import TrainConfig

__all__ = ["EXACT", "METHOD_CARDS", "SECTIONS", "TAGGING", "DataOptions", "EncoderOptions", "MethodCard",
           "RunRecord", "TrainConfig", "check_experiment", "method_card"]
