"""Sharded, resumable output and inputs at scale: kill -9 + rerun == uninterrupted, WebDataset, file lists."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_CLI, noise_image, run_cli

pd = pytest.importorskip("pandas")
pq = pytest.importorskip("pyarrow.parquet")

MANIFEST = "_emoclip_manifest.json"
COMMITS = "_emoclip_commits.jsonl"
# Tar members and files run the same decoder on the same bytes, but may sit in other encoder batches
# (error rows shift them), so their probabilities agree to float rounding of another batch shape
# (see FEATURE_ATOL); rows are rounded to 6 digits, so 1e-5 allows one unit of rounding either way.
PROB_ATOL = 1e-5
FP32 = ["--precision", "fp32"]  # tolerances between different computations are stated for fp32 (auto may pick bf16)


@pytest.fixture(scope="module")
def forty(tmp_path_factory) -> Path:
    """40 small noise photos and one file that is not an image."""
    folder = tmp_path_factory.mktemp("forty")
    for i in range(40):
        noise_image(64, 48, seed=100 + i).save(folder / f"img{i:03d}.jpg", quality=90)
    (folder / "broken.jpg").write_text("not an image\n")
    return folder


def cli_command(*args) -> list[str]:
    return [sys.executable, "-c", "from emoclip.cli.main import main; main()", *map(str, args)]


def read_dir(folder: Path):
    return pd.read_parquet(folder)


def assert_identical(a, b) -> None:
    """Same rows, order and values, bit for bit (resume vs uninterrupted: same items, same batches)."""
    assert list(a.columns) == list(b.columns)
    features = [c for c in a.columns if c == "feature"]
    pd.testing.assert_frame_equal(a.drop(columns=features), b.drop(columns=features), check_exact=True)
    for x, y in zip(a.get("feature", []), b.get("feature", []), strict=True):
        assert (x is None and y is None) or np.array_equal(np.asarray(x), np.asarray(y))


def kill_after_first_shard(command: list[str], out: Path, timeout: float = 300) -> None:
    """Start ``command``, SIGKILL it as soon as one shard is committed, and check it was mid-job."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if (out / COMMITS).read_bytes().endswith(b"\n"):
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        assert process.poll() is None, f"the job ended before it could be killed: {process.stderr.read()!r}"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    from emoclip.tagging.manifest import folder_state

    state = folder_state(out)
    assert state.committed and not state.complete, "kill -9 must land mid-job for this test to mean anything"


@pytest.fixture
def one_thread(monkeypatch):
    """torch on one thread here and in subprocesses, so a run in a subprocess and one in this process
    use the same kernels (bit-identity then holds by construction, not by luck)."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_kill_9_then_rerun_equals_an_uninterrupted_run(forty, tmp_path, one_thread):
    job = [*TINY_CLI, "--shard-size", "2", "--batch-size", "1", "--workers", "1", "--save-features", "--no-progress"]
    reference, resumed, cache = tmp_path / "reference", tmp_path / "resumed", tmp_path / "cache"
    assert run_cli("predict", forty, *job, "--no-cache", "--output-dir", reference).exit_code == 1  # 1 bad file

    command = cli_command("predict", forty, *job, "--cache-dir", cache, "--output-dir", resumed)
    kill_after_first_shard(command, resumed)
    partial = read_dir(resumed)  # committed shards already read as one dataset; no temp file in the way
    assert 0 < len(partial) < 41 and partial.path.is_unique
    shutil.rmtree(cache, ignore_errors=True)  # resuming needs no feature cache
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 1, again.stderr
    assert "resumed" in again.stderr
    result, expected = read_dir(resumed), read_dir(reference)
    assert len(result) == 41 and len(result.feature[1]) == 64
    assert_identical(result, expected)
    assert not [p.name for p in resumed.iterdir() if p.name.endswith(".tmp")]


def test_rerun_with_other_options_or_inputs_is_refused(forty, tmp_path):
    out = tmp_path / "out"
    base = [*TINY_CLI, "--no-cache", "--shard-size", "16", "--output-dir", out]
    assert run_cli("predict", forty, *base).exit_code == 1
    first = read_dir(out)
    changed = run_cli("predict", forty, *base, "--top-k", "2")
    assert changed.exit_code == 2 and "--top-k" in changed.output and "--overwrite" in changed.output
    extra = tmp_path / "more"
    extra.mkdir()
    noise_image(seed=7).save(extra / "new.jpg")
    other_inputs = run_cli("predict", forty, extra, *base)
    assert other_inputs.exit_code == 2 and "inputs" in other_inputs.output
    assert_identical(read_dir(out), first)  # a refusal touches nothing
    assert run_cli("predict", forty, *base, "--workers", "1").exit_code == 1  # runtime-only options may change
    assert run_cli("predict", forty, *base, "--top-k", "2", "--overwrite").exit_code == 1
    assert read_dir(out).top_k.str.count(r"\|").max() == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = run_cli("predict", forty, *TINY_CLI, "--output-dir", foreign)
    assert refused.exit_code == 2 and "not empty" in refused.output


def test_merge_writes_one_file_in_input_order(forty, tmp_path):
    out = tmp_path / "out"
    assert run_cli("predict", forty, *TINY_CLI, "--no-cache", "--shard-size", "7", "--output-dir", out).exit_code == 1
    shards = read_dir(out)
    assert list(shards.path) == sorted(str(p) for p in forty.iterdir())
    assert list(shards.row) == list(range(41))  # the ordering column: each row's position in the inputs
    shards = shards.drop(columns="row")  # merge writes the columns of `predict -o FILE`, in row order
    assert run_cli("merge", out, "-o", tmp_path / "all.parquet").exit_code == 0
    assert_identical(pd.read_parquet(tmp_path / "all.parquet"), shards)
    assert run_cli("merge", out, "-o", tmp_path / "all.csv").exit_code == 0
    csv_rows = pd.read_csv(tmp_path / "all.csv", keep_default_na=False)
    assert list(csv_rows.path) == list(shards.path) and np.allclose(csv_rows.probability.replace("", np.nan)
                                                                     .astype(float), shards.probability,
                                                                     equal_nan=True)
    assert run_cli("merge", out, "-o", tmp_path / "all.jsonl").exit_code == 0
    records = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == list(shards.path) and records[0]["error"]
    # a plain `predict -o` gives the same rows as the shard folder
    assert run_cli("predict", forty, *TINY_CLI, "--no-cache", "-o", tmp_path / "plain.csv").exit_code == 1
    plain = pd.read_csv(tmp_path / "plain.csv", keep_default_na=False)
    assert list(plain.columns) == list(csv_rows.columns) and list(plain.label) == list(csv_rows.label)


def _member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    noise_image(64, 48, seed=seed).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def webdataset_shards(tmp_path_factory) -> Path:
    """shard 0: image-only; shard 1: .txt and .json captions, a corrupt image, a sample without image;
    shard 2: a tar cut off in the middle of a member."""
    folder = tmp_path_factory.mktemp("wds")
    with tarfile.open(folder / "00000.tar", "w") as archive:
        for i in range(3):
            _member(archive, f"{i:06d}.jpg", _jpeg(200 + i))
    with tarfile.open(folder / "00001.tar", "w") as archive:
        _member(archive, "000010.jpg", _jpeg(210))
        _member(archive, "000010.txt", b"a dog on a beach\n")
        _member(archive, "000011.jpg", _jpeg(211))
        _member(archive, "000011.json", json.dumps({"caption": "storm clouds", "url": "x"}).encode())
        _member(archive, "000012.jpg", b"\xff\xd8\xff garbage, not a JPEG")
        _member(archive, "000012.txt", b"the corrupt one")
        _member(archive, "000013.txt", b"caption without an image")
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as archive:
        _member(archive, "000020.png", _jpeg(220))
        _member(archive, "000021.jpg", _jpeg(221))
    with tarfile.open(fileobj=io.BytesIO(whole.getvalue())) as complete:
        cut = complete.getmember("000021.jpg").offset_data + 500
    (folder / "00002.tar").write_bytes(whole.getvalue()[:cut])  # ends inside the second member's data
    return folder


def test_webdataset_shards_give_keys_captions_and_error_rows(webdataset_shards, tmp_path):
    out = tmp_path / "out"
    pattern = str(webdataset_shards / "{00000..00002}.tar")
    result = run_cli("predict", pattern, *TINY_CLI, *FP32, "--no-cache", "--shard-size", "4", "--output-dir", out)
    assert result.exit_code == 1, result.output  # some rows carry errors; the run completes
    rows = read_dir(out)
    assert list(rows.key[:-1]) == ["000000", "000001", "000002", "000010", "000011", "000012", "000013", "000020",
                                   "000021"]
    assert list(rows.caption[3:7]) == ["a dog on a beach", "storm clouds", "the corrupt one",
                                       "caption without an image"]
    assert rows.caption[:3].isna().all()
    errors = dict(zip(rows.key[:-1], rows.error[:-1], strict=True))
    assert all(errors[k] == "" for k in ("000000", "000001", "000002", "000010", "000011", "000020"))
    assert "not an image" in errors["000012"] or "cannot decode" in errors["000012"]
    assert "no image member" in errors["000013"]
    assert "truncated" in errors["000021"]
    assert pd.isna(rows.key.iloc[-1]) and "corrupt tar after 2 members" in rows.error.iloc[-1]  # where it broke
    assert rows.path[0] == f"{webdataset_shards / '00000.tar'}/000000.jpg"

    # the same images as files get the same probabilities
    files = tmp_path / "files"
    files.mkdir()
    for seed, key in ((200, "000000"), (211, "000011"), (220, "000020")):
        (files / f"{key}.jpg").write_bytes(_jpeg(seed))
    assert run_cli("predict", files, *TINY_CLI, *FP32, "--no-cache", "-o", tmp_path / "files.csv").exit_code == 0
    as_files = pd.read_csv(tmp_path / "files.csv")
    as_files.index = [Path(p).stem for p in as_files.path]
    by_key = rows.set_index("key")
    probabilities = [c for c in as_files.columns if c.startswith("p_")]
    np.testing.assert_allclose(by_key.loc[as_files.index, probabilities].to_numpy(float),
                               as_files[probabilities].to_numpy(float), rtol=0, atol=PROB_ATOL)

    # tar shards work without --output-dir too (path names the member)
    plain = run_cli("predict", str(webdataset_shards / "00000.tar"), *TINY_CLI, "--no-cache", "--format", "jsonl")
    assert [json.loads(line)["path"].rsplit("/", 1)[-1] for line in plain.stdout.splitlines()] == [
        "000000.jpg", "000001.jpg", "000002.jpg"]


def test_file_lists_text_and_parquet_keep_their_order(forty, tmp_path):
    chosen = [forty / "img005.jpg", forty / "img001.jpg", tmp_path / "missing.jpg", forty / "img003.jpg"]
    listing = tmp_path / "list.txt"
    listing.write_text("# my picks\n" + "\n".join(map(str, chosen)) + "\n\n")
    out = tmp_path / "from_text"
    assert run_cli("predict", "--files-from", listing, *TINY_CLI, "--no-cache", "--output-dir", out).exit_code == 1
    rows = read_dir(out)
    assert list(rows.path) == list(map(str, chosen))
    assert rows.error[2].startswith("cannot read file") and (rows.error.drop(2) == "").all()

    import pyarrow as pa

    table = tmp_path / "list.parquet"
    pq.write_table(pa.table({"image": list(map(str, chosen)), "other": [1, 2, 3, 4]}), table)
    out2 = tmp_path / "from_parquet"
    assert run_cli("predict", "--files-from", table, "--path-column", "image", *TINY_CLI, "--no-cache",
                   "--output-dir", out2).exit_code == 1
    assert_identical(read_dir(out2), rows)
    missing_column = run_cli("predict", "--files-from", table, *TINY_CLI, "--output-dir", tmp_path / "x")
    assert missing_column.exit_code == 2 and "--path-column" in missing_column.output


def test_shard_schema_is_stable_when_a_shard_has_only_errors(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    noise_image(seed=1).save(folder / "a.jpg")
    (folder / "b.jpg").write_text("bad")
    (folder / "c.jpg").write_text("bad")
    out = tmp_path / "out"
    assert run_cli("predict", folder, *TINY_CLI, "--no-cache", "--shard-size", "1", "--output-dir", out,
                   "--save-features").exit_code == 1
    schemas = {pq.read_schema(p) for p in sorted(out.glob("part-*.parquet"))}
    assert len(schemas) == 1
    rows = read_dir(out)
    assert rows.probability.isna().tolist() == [False, True, True] and rows.feature[1] is None


@pytest.mark.slow
def test_ray_is_imported_only_for_the_ray_engine():
    code = ("import sys, emoclip.cli.main, emoclip.tagging.shards, emoclip.tagging.inputs; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def _cut_after_first_shard(reference: Path, folder: Path) -> None:
    """The exact state a kill -9 after shard 0's commit leaves (test_kill_9_… kills for real): shard 0
    and its log line; later shard files and lines never written."""
    shutil.copytree(reference, folder)
    lines = (folder / COMMITS).read_text().splitlines(keepends=True)
    (folder / COMMITS).write_text(lines[0])
    for path in sorted(folder.glob("part-*.parquet"))[1:]:
        path.unlink()


def test_resume_is_bit_identical_with_a_warm_cold_or_changed_cache_vit_b32(tmp_path, monkeypatch, one_thread):
    """Rows never depend on the feature cache: a ViT-B-32-sized model (random weights) resumed after
    shard 0 with the cache the first run filled, with none, and with one filled by other batches of
    the same images gives the uninterrupted run's bytes (batches are fixed slices of the inputs)."""
    from emoclip.tagging import config as config_module
    from emoclip.tagging.config import TaggerConfig, build_tagger, open_cache
    from emoclip.tagging.inputs import collect_inputs
    from emoclip.tagging.shards import run_sharded
    from emoclip.tagging.tagger import Tagger

    images = tmp_path / "images"
    images.mkdir()
    for i in range(10):
        noise_image(40 + 8 * i, 48, seed=500 + i).save(images / f"{i:02d}.jpg", quality=90)
    built: dict[str, Tagger] = {}

    def build_once(config: TaggerConfig, backbone=None) -> Tagger:  # one ViT-B-32 for the whole test
        if "tagger" not in built:
            built["tagger"] = build_tagger(config.replace(no_cache=True))
        first = built["tagger"]
        return Tagger(first.backbone, first.classifier, top_k=config.top_k, batch_size=config.batch_size,
                      workers=config.workers, max_pixels=config.max_pixels, cache=open_cache(config, first.backbone))

    monkeypatch.setattr(config_module, "build_tagger", build_once)
    base = TaggerConfig(model="ViT-B-32", pretrained="random", device="cpu", precision="fp32", batch_size=4,
                        workers=1)
    inputs = collect_inputs([str(images)])

    def job(out: Path, **options) -> None:
        run_sharded(base.replace(**options), inputs, out, shard_size=4, save_features=True, progress=False)

    reference, warm = tmp_path / "reference", tmp_path / "warm-cache"
    job(reference, no_cache=True)
    job(tmp_path / "filled", cache_dir=str(warm))  # fills the cache with this job's batches
    other = tmp_path / "other-cache"  # filled by other batches of the same images (batches of 3)
    run_sharded(base.replace(cache_dir=str(other), batch_size=3), inputs, tmp_path / "other-job", shard_size=3,
                progress=False)
    expected = read_dir(reference)
    for name, options in {"warm": {"cache_dir": str(warm)}, "none": {"no_cache": True},
                          "changed": {"cache_dir": str(other)}}.items():
        resumed = tmp_path / f"resumed-{name}"
        _cut_after_first_shard(reference, resumed)
        job(resumed, **options)
        assert_identical(read_dir(resumed), expected)


def test_progress_counts_every_image_exactly_at_batch_boundaries(forty, tmp_path):
    """Shards that end on a batch boundary (8 = 2 batches of 4) once lost one image each (225/240)."""
    from emoclip.tagging.config import TaggerConfig, build_tagger
    from emoclip.tagging.inputs import collect_inputs
    from emoclip.tagging.shards import ShardLayout, tag_shard

    config = TaggerConfig(model="tiny", pretrained="random", device="cpu", precision="fp32", batch_size=4,
                          cache_dir=str(tmp_path / "cache"))
    tagger = build_tagger(config)
    items = collect_inputs([str(forty)]).items
    layout = ShardLayout.for_tagger(tagger)
    for attempt in ("cold cache", "warm cache"):
        counted: list[int] = []
        for index in range(0, 40, 8):
            tag_shard(tagger, layout, index // 8, items[index:index + 8], progress=counted.append, first_row=index)
        assert sum(counted) == 40, attempt
