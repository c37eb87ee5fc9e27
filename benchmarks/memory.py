"""Peak memory of the default commands with real-size weights, downloaded through a stand-in hub.

A user's first `emoclip predict` downloads ``timm/vit_base_patch32_clip_224.openai`` (605 MB) and,
for a UGRIE checkpoint, ``facebook/bart-base``. Here both are random weights of the real shapes,
generated locally and served by tests/hub_stub.py on 127.0.0.1 in the hub's real layout. Each
command runs as its own process; its own peak resident memory (``VmHWM``, read as it exits) is
reported. Targets: predict on the default path ≤ 1.5 GB, predict --checkpoint
(UGRIE) ≤ 2.5 GB.

    python benchmarks/memory.py            # 16 Emotion6 images (or noise JPEGs when absent)

Also checks (not a timing): the default path's features equal open_clip's ``ViT-B-32-quickgelu``
built from the served file, to 1e-5. The last line:
memory predict_mb=P evaluate_mb=E predict_ugrie_mb=U features_vs_quickgelu=D cpu=KIND
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EMOTION6 = Path(os.environ.get("EMOCLIP_EMOTION6", ROOT.parent / "shared" / "datasets" / "emotion6"))


# Runs the CLI and, at exit, writes the process's own peak RSS (VmHWM) to the file named by the variable:
# rusage of a waited-for child also counts that child's own children, this is the command's process alone.
_WRAPPER = """
import atexit, os, sys
def _report():
    with open('/proc/self/status') as status, open(os.environ['EMOCLIP_BENCH_HWM'], 'w') as out:
        out.write(next(line for line in status if line.startswith('VmHWM')).split()[1])
atexit.register(_report)
sys.argv = ['emoclip', *sys.argv[1:]]
from emoclip.cli.main import main
main()
"""


def peak_mb(arguments: list[str], env: dict[str, str], work: Path) -> float:
    """Run `emoclip ARGUMENTS`; its own peak RSS (VmHWM) in MB."""
    report = work / "hwm.txt"
    done = subprocess.run([sys.executable, "-c", _WRAPPER, *arguments], env={**env, "EMOCLIP_BENCH_HWM": str(report)},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"emoclip {' '.join(arguments[:3])}… failed ({done.returncode}): {done.stderr.strip()[-600:]}")
    return int(report.read_text()) / 1024


def images(folder: Path, count: int = 16) -> Path:
    """Emotion6 images split into two labelled class folders (symlinks, never copies), or noise JPEGs."""
    source = sorted((EMOTION6 / "images").rglob("*.jpg"))[:: 1980 // count][:count] if EMOTION6.exists() else []
    for i in range(count):
        label = folder / ("fear" if i % 2 else "sadness")
        label.mkdir(parents=True, exist_ok=True)
        if source:
            (label / f"{i}.jpg").symlink_to(source[i].resolve())
        else:
            from tests.conftest import noise_image

            noise_image(640, 480, seed=i).save(label / f"{i}.jpg", quality=90)
    return folder


def main() -> None:
    import numpy as np
    import open_clip
    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import save
    from tests.hub_stub import BART_REPO, CLIP_REPO, StubHub, bart_repo, clip_repo

    work = Path(tempfile.mkdtemp(prefix="emoclip-memory-"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    weights = save({k: v.contiguous() for k, v in model.state_dict().items()})
    del model
    from emoclip.methods.ugrie.random_bart import save_random_bart

    bart = save_random_bart(work / "bart-base", "base")
    stub = StubHub({CLIP_REPO: clip_repo(weights, open_clip.get_model_config("ViT-B-32")),
                    BART_REPO: bart_repo(bart)}).start()
    env = {**os.environ, "HF_ENDPOINT": stub.url, "HF_HUB_CACHE": str(work / "hf"), "HF_HOME": str(work / "hf-home"),
           "EMOCLIP_CACHE_DIR": str(work / "features"), "PYTHONPATH": str(ROOT / "src")}
    env.pop("HF_HUB_OFFLINE", None)
    folder = images(work / "images")
    emoclip = [sys.executable, "-m", "emoclip"]
    exact = ["--device", "cpu", "--precision", "fp32", "--decode", "full", "--no-cache"]

    # the first run downloads (not measured: the download is not the steady state), then each command
    subprocess.run([*emoclip, "predict", str(folder / "fear"), *exact], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = work / "predicted"
    predict = peak_mb(["predict", str(folder), *exact, "--save-features", "--output-dir", str(out)], env, work)
    print(f"predict: {predict:.0f} MB peak RSS", file=sys.stderr, flush=True)
    evaluate = peak_mb(["evaluate", "--root", str(folder), *exact, "--split", "all", "--out", str(work / "eval")],
                       env, work)
    print(f"evaluate: {evaluate:.0f} MB peak RSS", file=sys.stderr, flush=True)

    # features of the default path against open_clip's ViT-B-32-quickgelu from the very served file
    from huggingface_hub import constants, try_to_load_from_cache
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    constants.HF_HUB_CACHE = str(work / "hf")
    served = try_to_load_from_cache(CLIP_REPO, "open_clip_model.safetensors", cache_dir=str(work / "hf"))
    reference = open_clip.create_model("ViT-B-32-quickgelu", pretrained=str(served)).eval()
    preprocess = image_transform_v2(PreprocessCfg(**reference.visual.preprocess_cfg), is_train=False)
    rows = [r for part in sorted(out.glob("part-*.parquet")) for r in pq.read_table(part).to_pylist()]
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(r["path"]).convert("RGB")) for r in rows])
        expected = torch.nn.functional.normalize(reference.encode_image(pixels), dim=-1).numpy()
    gap = float(np.abs(np.array([r["feature"] for r in rows], dtype=np.float32) - expected).max())
    del reference

    # a UGRIE checkpoint on the default backbone and the hub's BART (no training: memory is the same)
    from emoclip.encoder.backbone import load_backbone
    from emoclip.labels.taxonomy import load_taxonomy
    from emoclip.methods.base import create_method
    from emoclip.methods.checkpoint import save_checkpoint

    os.environ.update({k: env[k] for k in ("HF_ENDPOINT", "HF_HUB_CACHE", "EMOCLIP_CACHE_DIR")})
    constants.ENDPOINT = stub.url
    constants.HUGGINGFACE_CO_URL_TEMPLATE = stub.url + "/{repo_id}/resolve/{revision}/{filename}"
    backbone = load_backbone(device="cpu")
    method = create_method("ugrie", backbone, load_taxonomy("mikels8"), {"bart": BART_REPO})
    checkpoint = save_checkpoint(work / "ugrie", method, {"training": {"best_epoch": 0}})
    del method, backbone
    ugrie = peak_mb(["predict", "--checkpoint", str(checkpoint), str(folder / "fear"), *exact], env, work)
    stub.stop()

    cpu = subprocess.run([sys.executable, "-m", "emoclip.core.hardware"], capture_output=True, text=True, env=env)
    kind = (cpu.stdout.strip().splitlines() or ["unknown"])[-1].replace(" ", "_")
    print(json.dumps({"predict_mb": round(predict), "evaluate_mb": round(evaluate), "predict_ugrie_mb": round(ugrie),
                      "targets_mb": {"predict": 1500, "predict_ugrie": 2500}, "work": str(work)}))
    print(f"memory predict_mb={predict:.0f} evaluate_mb={evaluate:.0f} predict_ugrie_mb={ugrie:.0f} "
          f"features_vs_quickgelu={gap:.1e} cpu={kind}")


if __name__ == "__main__":
    main()
