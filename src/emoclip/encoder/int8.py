"""The image encoder in int8: OpenVINO + NNCF post-training quantization, calibrated on real images.

``--precision int8`` (install the ``int8`` extra: ``pip install 'emoclip[int8]'``). Why this stack:
both CPU kinds these tools run on have AVX512-VNNI int8 dot products (some Xeons AMX too), and
torch has no maintained CPU int8 path for a ViT (torch.ao's dynamic quantization was measured
slower than bf16 and removed). OpenVINO runs int8 GEMMs on VNNI/AMX and NNCF is its maintained
post-training quantizer; ``benchmarks/tagging.py`` measures the result side by side with torch's
fp32 and bf16 on the machine it runs on.

How a model is made: the fp32 image tower is traced (``torch.jit.trace``) and converted to
OpenVINO, then NNCF quantizes it with its transformer preset (SmoothQuant, per-channel weights,
activation ranges from ``CALIBRATION_IMAGES`` real images decoded exactly as the job decodes them).
The text encoder, trained heads and prompts are untouched: only image features change.

Agreement is measured, not assumed: ``HOLDOUT_IMAGES`` further images (never used for calibration)
are encoded by both the fp32 tower and the int8 model; their minimum and mean feature cosine are
recorded in the quantized model's report, and ``tagging.config`` adds the top-1 agreement under
the job's own taxonomy. Below ``MIN_COSINE`` or ``MIN_TOP1_AGREEMENT`` int8 is refused with the fix.

The quantized model is cached on disk, keyed by everything that decides it — the architecture,
the weights' identity, preprocessing and decode mode, the digest of the calibration pixels, the
OpenVINO/NNCF/torch versions and this module's ``RECIPE_VERSION`` — so a rerun, a resume and every
Ray actor given the same calibration images run the identical model (resume stays bit-identical).
An entry is written into a temporary folder and renamed into place (a killed quantization leaves
nothing), and records the SHA-256 of its files: a load verifies them, and a damaged entry is made
again with a warning, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emoclip.core.errors import EmoclipError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("emoclip")

RECIPE_VERSION = 1            # bump when the conversion or quantization recipe changes
CALIBRATION_IMAGES = 64       # images whose activations set the int8 ranges
HOLDOUT_IMAGES = 32           # further images on which agreement with fp32 is measured
MIN_IMAGES = 12               # fewer decodable calibration images than this: refused
MIN_COSINE = 0.98             # held-out minimum feature cosine below this: refused
MIN_TOP1_AGREEMENT = 0.90     # held-out top-1 agreement (the job's taxonomy) below this: refused
INT8_CACHE_ENV = "EMOCLIP_INT8_CACHE"
INSTALL_HINT = "install it with: pip install 'emoclip[int8]' (OpenVINO + NNCF)"
_FILES = ("model.xml", "model.bin", "holdout.safetensors")


def require_runtime() -> None:
    """Refuse ``--precision int8`` in one line when OpenVINO or NNCF is missing (NNCF is only
    imported when a model is quantized: loading a cached one needs OpenVINO alone)."""
    for name in ("openvino", "nncf"):
        if importlib.util.find_spec(name) is None:
            raise EmoclipError(f"--precision int8 needs {name}; {INSTALL_HINT}")


def runtime_versions() -> dict[str, str]:
    """The library versions a quantized model depends on (part of its cache key)."""
    import torch

    return {"openvino": metadata.version("openvino"), "nncf": metadata.version("nncf"), "torch": torch.__version__}


def default_cache_dir() -> Path:
    """``$EMOCLIP_INT8_CACHE``, else ``int8`` in the user cache dir (XDG)."""
    if os.environ.get(INT8_CACHE_ENV):
        return Path(os.environ[INT8_CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emoclip" / "int8"


@dataclass
class Int8Report:
    """What was quantized from what, and how closely it agrees with fp32 on held-out images."""

    key: str
    calibration_images: int
    holdout_images: int
    calibration_digest: str
    min_cosine: float
    mean_cosine: float
    versions: dict[str, str]
    quantize_seconds: float
    top1_agreement: float | None = None      # under the job's taxonomy; set by tagging.config
    holdout_fp32: Any = field(default=None, repr=False)   # torch.Tensor, L2-normalised
    holdout_int8: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data for ``metrics.json``, manifests and logs (no tensors, no NaN)."""
        data = {k: v for k, v in self.__dict__.items() if k not in ("holdout_fp32", "holdout_int8")}
        data["thresholds"] = {"min_cosine": MIN_COSINE, "min_top1_agreement": MIN_TOP1_AGREEMENT}
        return data


def calibration_pixels(sources: Sequence[Any], decode_one) -> torch.Tensor:
    """The first ``CALIBRATION_IMAGES + HOLDOUT_IMAGES`` decodable images of ``sources`` as one
    preprocessed batch (``decode_one(source)`` returns a pixel tensor or raises). Undecodable files
    are skipped: calibration never fails on one bad image."""
    import torch

    wanted = CALIBRATION_IMAGES + HOLDOUT_IMAGES
    pixels = []
    for source in sources:
        with contextlib.suppress(Exception):
            pixels.append(decode_one(source))
        if len(pixels) == wanted:
            break
    if len(pixels) < MIN_IMAGES:
        raise EmoclipError(f"--precision int8 needs at least {MIN_IMAGES} decodable calibration images "
                           f"({len(pixels)} found); give a folder of typical images with --calibration DIR")
    return torch.stack(pixels).float().contiguous()


def split_holdout(count: int) -> int:
    """How many of ``count`` calibration images calibrate (the rest are held out for agreement)."""
    if count >= CALIBRATION_IMAGES + HOLDOUT_IMAGES:
        return CALIBRATION_IMAGES
    return max(1, (2 * count) // 3)


def pixels_digest(pixels: torch.Tensor) -> str:
    digest = hashlib.sha256(str(tuple(pixels.shape)).encode())
    digest.update(pixels.numpy().tobytes())
    return digest.hexdigest()


def model_key(identity: dict[str, Any], calibration_digest: str, versions: dict[str, str]) -> str:
    """The cache key of a quantized model: everything that decides its weights and activations."""
    base = {k: v for k, v in identity.items() if k not in ("precision", "quantization")}
    blob = json.dumps({"encoder": base, "calibration": calibration_digest, "versions": versions,
                       "recipe": RECIPE_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Int8ImageEncoder:
    """The compiled int8 image tower: pixels (B × 3 × H × W, float) → raw float32 features (B × D).

    Built from the model's bytes in memory — the very bytes whose digest was checked — never from
    the file path: OpenVINO memory-maps a weights file, so a file changed after the check would
    change the running model."""

    def __init__(self, files: dict[str, bytes], threads: int | None = None, streams: int = 1) -> None:
        import numpy as np
        import openvino
        import torch

        threads = int(threads or torch.get_num_threads())
        # one stream: lowest latency with every thread; more: that many requests run at once, each on
        # threads // streams cores (layout.py measures which is faster and passes streams = lanes)
        config: dict[str, Any] = ({"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads} if streams == 1
                                  else {"NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": threads * streams})
        core = openvino.Core()
        weights = openvino.Tensor(np.frombuffer(files["model.bin"], dtype=np.uint8).copy())
        self.compiled = core.compile_model(core.read_model(files["model.xml"], weights), "CPU", config)
        self.streams = streams
        self._files = files  # to compile it for another layout (with_streams): the verified bytes, not the file
        self._requests = threading.local()  # one infer request per calling thread: lanes run at once

    def with_streams(self, streams: int, threads: int) -> Int8ImageEncoder:
        """The same quantized model compiled for ``streams`` lanes of ``threads`` threads each."""
        return Int8ImageEncoder(self._files, threads, streams)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        batch = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        output = request.infer([batch])[self.compiled.output(0)]
        return torch.from_numpy(np.array(output, dtype=np.float32, copy=True))


def _normalized(features: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.normalize(features.float(), dim=-1)


def _read_files(entry: Path) -> dict[str, bytes]:
    return {name: (entry / name).read_bytes() for name in _FILES}


def _read_entry(entry: Path) -> tuple[Int8Report, dict[str, bytes]] | None:
    """A verified cache entry (its report and file bytes), or None (missing, damaged, not matching)."""
    from safetensors.torch import load as load_tensors

    try:
        meta = json.loads((entry / "report.json").read_text(), parse_constant=_refuse_constant)
        files = _read_files(entry)
        for name, data in files.items():
            if hashlib.sha256(data).hexdigest() != meta["sha256"][name]:
                raise ValueError(f"{name} does not match its recorded SHA-256")
        tensors = load_tensors(files["holdout.safetensors"])
        report = Int8Report(**{k: meta["report"][k] for k in (
            "key", "calibration_images", "holdout_images", "calibration_digest", "min_cosine", "mean_cosine",
            "versions", "quantize_seconds")}, holdout_fp32=tensors["fp32"], holdout_int8=tensors["int8"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("the cached int8 model in %s is damaged (%s); quantizing it again", entry, exc)
        return None
    return report, files


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} in JSON")


def _quantize(visual: torch.nn.Module, pixels: torch.Tensor, calibrate: int, folder: Path) -> None:
    """Trace, convert and quantize ``visual`` into ``folder/model.xml`` (+ ``model.bin``)."""
    import torch

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" on import
    import nncf
    import openvino

    example = pixels[:2]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice: nothing the user can act on
        # check_trace=False: open_clip's modules are re-instantiated by the checker with new names
        # and the check then fails on names, not on values (the agreement check below is the real one)
        traced = torch.jit.trace(visual, example, check_trace=False)
    shape = [-1, *pixels.shape[1:]]
    converted = openvino.convert_model(traced, example_input=example, input=[shape])
    dataset = nncf.Dataset([pixels[i:i + 1].numpy() for i in range(calibrate)])
    logging.getLogger("nncf").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars; stdout may carry rows
        quantized = nncf.quantize(converted, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=calibrate)
    openvino.save_model(quantized, str(folder / "model.xml"), compress_to_fp16=False)


def prepare_int8(visual: torch.nn.Module, identity: dict[str, Any], pixels: torch.Tensor,
                 cache_dir: str | os.PathLike | None = None, threads: int | None = None
                 ) -> tuple[Int8ImageEncoder, Int8Report]:
    """The int8 encoder for ``visual`` calibrated on ``pixels``: from the cache, else quantized now.

    ``identity`` is the fp32 encoder spec's identity (what the key is made of); the first
    ``split_holdout(len(pixels))`` images calibrate, the rest measure agreement."""
    require_runtime()
    versions = runtime_versions()
    digest = pixels_digest(pixels)
    key = model_key(identity, digest, versions)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    entry = root / key
    with _quantizing(root, key):  # one process quantizes; the others (Ray actors) wait, then read it
        found = _read_entry(entry) if entry.exists() else None
        if found is None:
            _quantize_into(entry, visual, pixels, key, digest, versions, threads)
            found = _read_entry(entry)
            if found is None:
                raise EmoclipError(f"the int8 model just written to {entry} does not read back; check the disk, "
                                   f"or set {INT8_CACHE_ENV} to another folder")
        else:
            log.info("int8 image encoder from the cache (%s)", entry)
    report, files = found
    check_agreement(report)
    return Int8ImageEncoder(files, threads), report


@contextlib.contextmanager
def _quantizing(root: Path, key: str):
    """An exclusive lock per quantized model (``<root>/<key>.lock``), so concurrent processes given
    the same calibration make it once and all run the very same file."""
    import fcntl

    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / f"{key}.lock", "a+")  # noqa: SIM115 - held for the block
    except OSError as exc:
        raise EmoclipError(f"cannot use the int8 model cache {root} ({exc}); set {INT8_CACHE_ENV} to a writable "
                           "folder") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _quantize_into(entry: Path, visual: torch.nn.Module, pixels: torch.Tensor, key: str, digest: str,
                   versions: dict[str, str], threads: int | None) -> Int8Report:
    """Quantize, measure held-out agreement, and switch the verified entry into place whole."""
    import torch
    from safetensors.torch import save_file

    root = entry.parent
    calibrate = split_holdout(len(pixels))
    log.warning("quantizing the image encoder to int8 on %d images, once (cached in %s)", calibrate, entry)
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        _quantize(visual, pixels, calibrate, staging)
        encoder = Int8ImageEncoder({name: (staging / name).read_bytes() for name in _FILES[:2]}, threads)
        holdout = pixels[calibrate:]
        with torch.inference_mode():
            reference = _normalized(visual(holdout))
        quantized = _normalized(encoder(holdout))
        cosine = (reference * quantized).sum(-1)
        save_file({"fp32": reference.contiguous(), "int8": quantized.contiguous()},
                  str(staging / "holdout.safetensors"))
        report = Int8Report(key=key, calibration_images=calibrate, holdout_images=len(holdout),
                            calibration_digest=digest, min_cosine=round(float(cosine.min()), 6),
                            mean_cosine=round(float(cosine.mean()), 6), versions=versions,
                            quantize_seconds=round(time.perf_counter() - started, 2),
                            holdout_fp32=reference, holdout_int8=quantized)
        meta = {"report": report.to_dict(), "sha256": {name: _sha256(staging / name) for name in _FILES}}
        (staging / "report.json").write_text(json.dumps(meta, indent=2, sort_keys=True, allow_nan=False))
        del encoder
        if entry.exists():  # damaged (or another process finished first): replace it whole
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(staging, entry)
    except OSError as exc:
        raise EmoclipError(f"cannot write the int8 model cache in {root} ({exc}); free space or set "
                           f"{INT8_CACHE_ENV} to a writable folder") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def check_agreement(report: Int8Report) -> None:
    """Refuse an int8 model whose held-out agreement with fp32 is below the stated thresholds."""
    if report.min_cosine < MIN_COSINE:
        raise EmoclipError(f"int8 features agree too little with fp32 on held-out images (min cosine "
                           f"{report.min_cosine:.4f} < {MIN_COSINE}); use --precision fp32 or bf16, or calibrate "
                           "on more typical images with --calibration DIR")
    if report.top1_agreement is not None and report.top1_agreement < MIN_TOP1_AGREEMENT:
        raise EmoclipError(f"int8 changes the top label of {100 * (1 - report.top1_agreement):.0f}% of held-out "
                           f"images (agreement {report.top1_agreement:.3f} < {MIN_TOP1_AGREEMENT}); use "
                           "--precision fp32 or bf16, or calibrate on more typical images with --calibration DIR")
