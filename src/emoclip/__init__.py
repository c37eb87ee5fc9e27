"""emoclip: image emotion classification with CLIP.

Python API (the CLI uses the same code path)::

    from emoclip import load_backbone, load_taxonomy, ZeroShotClassifier, Tagger
    backbone = load_backbone("ViT-B-32", "openai")
    tagger = Tagger(backbone, ZeroShotClassifier(backbone, load_taxonomy("mikels8")))
    for row in tagger.tag(["photos/"]):
        print(row.path, row.label, row.probability)
"""

from importlib.metadata import PackageNotFoundError, version

from .backbone import Backbone, load_backbone
from .errors import EmoclipError, ImageDecodeError, TaxonomyError, WeightsUnavailableError
from .predict import Prediction, Tagger
from .taxonomy import Taxonomy, load_taxonomy, taxonomy_from_labels
from .zeroshot import ZeroShotClassifier

try:
    __version__ = version("emoclip")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = ["Backbone", "EmoclipError", "ImageDecodeError", "Prediction", "Tagger", "Taxonomy", "TaxonomyError",
           "WeightsUnavailableError", "ZeroShotClassifier", "__version__", "load_backbone", "load_taxonomy",
           "taxonomy_from_labels"]
