"""CLIP-E heads on frozen image features.

- ``clipe-ce``: feature → Dense 512 (ReLU) → classes, cross-entropy.
- ``clipe-contrastive``: feature → Dense 512 (ReLU) → Dense D (linear), trained with CLIP's
  symmetric contrastive loss against frozen text features of captions: the sentiment caption
  (SC) "a photo that seems to express {emotion}", the same with each synonym (SSC), and optional
  user-supplied image captions (IC: a caption table in the label table's format — ``image<TAB>caption``
  rows, bare file names or paths relative to the data root, header optional; docs/protocol.md; no
  captioner runs offline). The table is matched against the training images before the first epoch:
  none matched is refused, a partial match warned, and the digest and counts are recorded in the
  run. Each step pairs every image with one of its captions, drawn from a seeded generator.
  It predicts under **any** taxonomy given at inference: a class scores the best similarity among
  its captions (synonyms count for their class), and when the taxonomy is coarser than the
  training one, the fine classes' captions count for their parents too.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from emoclip.core.errors import EmoclipError
from emoclip.encoder.backbone import Backbone
from emoclip.labels.taxonomy import Taxonomy
from emoclip.methods.base import Method, register_method, seeded_init
from emoclip.schema.methods import SENTIMENT_CAPTION, ClipECEConfig, ClipEContrastiveConfig  # noqa: F401 - the cards

log = logging.getLogger("emoclip")
CAPTION_WORDS = ("caption", "captions", "text", "description")


@register_method("clipe-ce")
class ClipECrossEntropy(Method):
    Config = ClipECEConfig
    config: ClipECEConfig

    def __init__(self, backbone: Backbone, taxonomy: Taxonomy, config: ClipECEConfig) -> None:
        super().__init__(backbone, taxonomy, config)
        self.head = seeded_init(lambda: nn.Sequential(nn.Linear(backbone.feature_dim, config.hidden), nn.ReLU(),
                                                      nn.Linear(config.hidden, len(taxonomy))))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.float())


def read_caption_table(path: str) -> tuple[list[tuple[str, str]], str]:
    """The ``(image, caption)`` rows of a caption table and the SHA-256 of its bytes (the run's identity)."""
    from emoclip.datasets.dataset import read_image_table

    file = Path(path).expanduser()
    if not file.is_file():
        raise EmoclipError(f"image captions file {path} does not exist; fix --set image_captions=FILE")
    return read_image_table(file, CAPTION_WORDS, "caption"), hashlib.sha256(file.read_bytes()).hexdigest()


def match_captions(path: str, images: list[str]) -> tuple[dict[str, str], dict]:
    """Captions of ``images`` (resolved path → caption) from the table at ``path``, and what matched.

    A row names an image as the label table does: by bare file name (or stem), by a path relative to
    the data root (matched as the tail of the image's path), or by a path relative to the table's own
    folder. A bare name shared by several images is refused (give relative paths), never guessed.
    """
    rows, digest = read_caption_table(path)
    resolved = [Path(p).resolve() for p in images]
    by_name: dict[str, list[Path]] = {}
    for p in resolved:
        by_name.setdefault(p.name.lower(), []).append(p)
        if p.stem.lower() != p.name.lower():
            by_name.setdefault(p.stem.lower(), []).append(p)
    known = set(resolved)
    base = Path(path).expanduser().resolve().parent
    captions: dict[str, str] = {}
    for key, caption in rows:
        key = key.strip().replace("\\", "/")
        direct = (base / key).resolve()
        if direct in known:
            captions[str(direct)] = caption
            continue
        found = by_name.get(Path(key).name.lower(), [])
        if "/" in key:
            found = [p for p in found if p.as_posix().lower().endswith("/" + key.lower().lstrip("./"))]
        if len(found) > 1:
            raise EmoclipError(f"image captions {path}: '{key}' matches {len(found)} training images ({found[0]}, "
                               f"{found[1]}, …); give paths relative to --root instead of bare names")
        if found:
            captions[str(found[0])] = caption
    record = {"file": str(path), "sha256": digest, "rows": len(rows), "matched": len(captions),
              "train_images": len(set(resolved))}
    return captions, record


@register_method("clipe-contrastive")
class ClipEContrastive(Method):
    Config = ClipEContrastiveConfig
    config: ClipEContrastiveConfig
    caption_features: torch.Tensor  # buffers (register_buffer), declared for the type checker
    caption_class: torch.Tensor

    def __init__(self, backbone: Backbone, taxonomy: Taxonomy, config: ClipEContrastiveConfig) -> None:
        super().__init__(backbone, taxonomy, config)
        dim = backbone.feature_dim
        self.head = seeded_init(lambda: nn.Sequential(nn.Linear(dim, config.hidden), nn.ReLU(),
                                                      nn.Linear(config.hidden, dim)))
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        texts, owners = self.captions_for(taxonomy)
        self.register_buffer("caption_features", backbone.encode_texts(texts), persistent=False)
        self.register_buffer("caption_class", torch.tensor(owners), persistent=False)
        self.image_captions: dict[str, str] = {}  # bound to the training images by bind_training_images
        self._view_cache: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def bind_training_images(self, paths: list[str]) -> dict:
        """Match the caption table (``image_captions``) to the training images before training.

        Returns what is recorded in the run: ``{"image_captions": {file, sha256, rows, matched,
        train_images}}``. None matched is refused with the fix (the table names images as the label
        table does); some training images without a caption is warned (they train on SC/SSC only).
        """
        if not self.config.image_captions:
            return {}
        self.image_captions, record = match_captions(self.config.image_captions, paths)
        first = paths[0] if paths else "none"
        if not self.image_captions:
            raise EmoclipError(f"image captions {self.config.image_captions}: none of its {record['rows']} rows names "
                               f"one of the {record['train_images']} training images (first training image: "
                               f"{Path(first).name}); its first column must hold their file names or paths relative "
                               "to --root, as in --label-file")
        if record["matched"] < record["train_images"]:
            log.warning("image captions %s: %d of %d training images have a caption; the others train on the "
                        "sentiment captions only", self.config.image_captions, record["matched"],
                        record["train_images"])
        return {"image_captions": record}

    def captions_for(self, target: Taxonomy) -> tuple[list[str], list[int]]:
        """Captions and the ``target`` class each stands for (synonyms and finer classes included)."""
        texts, owners = [], []
        sources: list[tuple[Taxonomy, list[int]]] = [(target, list(range(len(target))))]
        if target.name != self.taxonomy.name and target.name in {t.name for t in self.taxonomy.ancestors()}:
            sources.append((self.taxonomy, self.taxonomy.mapping_to(target.name).tolist()))
        for tax, owner in sources:
            for cls, j in zip(tax.classes, owner, strict=True):
                words = [cls.name, *(cls.synonyms if self.config.synonyms else ())]
                texts += [self.config.caption.format(w) for w in words]
                owners += [j] * len(words)
        return texts, owners

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(features.float()), dim=-1)

    def _class_scores(self, embedded: torch.Tensor, captions: torch.Tensor, owners: torch.Tensor, n_classes: int
                      ) -> torch.Tensor:
        sims = self.log_scale.exp().clamp(max=100.0) * embedded @ captions.T        # N × captions
        scores = sims.new_full((sims.shape[0], n_classes), float("-inf"))
        return scores.scatter_reduce(1, owners.expand_as(sims), sims, reduce="amax")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self._class_scores(self.embed(features), self.caption_features, self.caption_class, len(self.taxonomy))

    def loss(self, logits: torch.Tensor | None, targets: torch.Tensor, batch: dict) -> torch.Tensor:
        """CLIP's symmetric contrastive loss between image embeddings and one caption per image."""
        embedded = self.embed(batch["features"])
        generator = batch["generator"]
        chosen = []
        if targets.ndim == 2:  # vote distributions: each image's caption class is drawn from its votes
            targets = torch.multinomial(targets.float(), 1, generator=generator).flatten()
        for target in targets.tolist():
            own = torch.nonzero(self.caption_class == target).flatten()
            chosen.append(own[torch.randint(len(own), (1,), generator=generator)].item())
        text = self.caption_features[chosen]
        paths = batch.get("paths")
        if self.image_captions and paths:
            extra = [self.image_captions.get(str(Path(p).resolve())) for p in paths]
            use = [i for i, c in enumerate(extra) if c and torch.rand(1, generator=generator).item() < 0.5]
            if use:
                text = text.clone()
                text[use] = self.backbone.encode_texts([extra[i] or "" for i in use]).to(text)
        scale = self.log_scale.exp().clamp(max=100.0)
        sims = scale * embedded @ text.T
        labels = torch.arange(len(targets))
        return (F.cross_entropy(sims, labels) + F.cross_entropy(sims.T, labels)) / 2

    @torch.no_grad()
    def logits_for(self, target: Taxonomy, features: torch.Tensor) -> torch.Tensor:
        """Taxonomy-free inference: scores over ``target``'s classes."""
        if target.name not in self._view_cache:
            texts, owner_list = self.captions_for(target)
            self._view_cache[target.name] = (self.backbone.encode_texts(texts), torch.tensor(owner_list), len(target))
        captions, owners, n = self._view_cache[target.name]
        return self._class_scores(self.embed(features), captions, owners, n)

    def for_taxonomy(self, target: Taxonomy) -> TaxonomyView:
        return TaxonomyView(self, target)


class TaxonomyView:
    """A contrastive CLIP-E model seen under another taxonomy (a ``Classifier`` for tagging/evaluation)."""

    def __init__(self, method: ClipEContrastive, taxonomy: Taxonomy) -> None:
        self.method = method
        self.taxonomy = taxonomy

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self.method.eval()
        return self.method.logits_for(self.taxonomy, features)

    def describe(self) -> dict:
        return {**self.method.describe(), "inference_taxonomy": self.taxonomy.name}
