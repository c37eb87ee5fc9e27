"""The command line end to end: formats, bad files, exit codes, atomic output, clear errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from emoclip.cli.main import main
from emoclip.core.atomic import atomic_write

TINY = ["--model", "tiny", "--pretrained", "random", "--device", "cpu", "--no-cache"]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_predict_folder_as_csv_file(photo_folder, tmp_path):
    out = tmp_path / "tags.csv"
    result = run("predict", str(photo_folder), *TINY, "--taxonomy", "mikels8", "-o", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5  # nested folders are searched
    for row in rows:
        probs = [float(row[f"p_{c}"]) for c in ("amusement", "anger", "awe", "contentment", "disgust",
                                                "excitement", "fear", "sadness")]
        assert abs(sum(probs) - 1) < 1e-4
        assert row["label"] and row["error"] == ""
        assert abs(float(row["polarity_p_positive"]) + float(row["polarity_p_negative"]) - 1) < 1e-4


def test_predict_jsonl_to_stdout_with_glob_and_top_k(photo_folder):
    result = run("predict", str(photo_folder / "**" / "*.jpg"), *TINY, "-t", "emotionroi6", "-k", "2",
                 "--format", "jsonl")
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 5
    assert set(records[0]["distribution"]) == {"anger", "disgust", "fear", "joy", "sadness", "surprise"}
    assert len(records[0]["top_k"]) == 2 and records[0]["polarity"]["label"] in ("positive", "negative")


def test_json_and_parquet_outputs(photo_folder, tmp_path):
    assert run("predict", str(photo_folder), *TINY, "-o", str(tmp_path / "t.json")).exit_code == 0
    assert len(json.loads((tmp_path / "t.json").read_text())) == 5
    pq = pytest.importorskip("pyarrow.parquet")
    assert run("predict", str(photo_folder), *TINY, "-o", str(tmp_path / "t.parquet")).exit_code == 0
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 5


def test_bad_files_get_error_rows_and_exit_status_1(awkward_images, tmp_path):
    out = tmp_path / "tags.jsonl"
    result = run("predict", *map(str, awkward_images.values()), *TINY, "-o", str(out))
    assert result.exit_code == 1
    records = {json.loads(line)["path"]: json.loads(line) for line in out.read_text().splitlines()}
    assert len(records) == len(awkward_images)  # every row written, bad ones included
    errors = {p: r["error"] for p, r in records.items() if r["error"]}
    assert set(errors) == {str(awkward_images[k]) for k in ("truncated", "zero_bytes", "not_an_image", "bomb")}
    assert "could not be read" in result.stderr


def test_own_labels_and_user_taxonomy(photo_folder, tmp_path):
    result = run("predict", str(photo_folder), *TINY, "--labels", "calm,tense,joyful", "--format", "csv")
    assert result.exit_code == 0
    assert "p_calm,p_tense,p_joyful" in result.stdout.splitlines()[0]
    tax = tmp_path / "mood.toml"
    tax.write_text('name = "mood"\n[[classes]]\nname = "calm"\n[[classes]]\nname = "tense"\n')
    assert run("predict", str(photo_folder), *TINY, "-t", str(tax), "--synonyms").exit_code == 0


@pytest.mark.parametrize(("args", "message"), [
    (["-t", "nope"], "unknown taxonomy 'nope'"),
    (["--also", "parrott6"], "does not map into 'parrott6'"),
    (["--templates", "no placeholder here"], "unknown template set"),
    (["--labels", "alone"], "at least two labels"),
])
def test_user_errors_are_one_line_with_exit_2(photo_folder, args, message):
    result = run("predict", str(photo_folder), *TINY, *args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 or "WARNING" in result.stderr


def test_missing_input_is_a_clear_error(tmp_path):
    result = run("predict", str(tmp_path / "nothing-here"), *TINY)
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_interrupted_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "tags.csv"
    target.write_text("previous results\n")
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as handle:
        handle.write("half of the new rows")
        raise KeyboardInterrupt
    assert target.read_text() == "previous results\n"
    assert [p.name for p in tmp_path.iterdir()] == ["tags.csv"]  # no temporary file left behind


def test_listing_commands():
    assert "mikels8" in run("taxonomies").stdout
    assert "sadness → negative" in run("taxonomies", "mikels8").stdout
    assert "feeling:" in run("templates").stdout
    assert "tiny" in run("models").stdout.split()


@pytest.mark.slow
def test_installed_console_script_runs(photo_folder):
    done = subprocess.run([sys.executable, "-m", "emoclip", "predict", str(photo_folder), *TINY,
                           "--format", "csv"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 6  # header + 5 rows
    assert "predictions are meaningless" in done.stderr


def test_speed_options_tag_and_keep_their_own_cache(photo_folder, tmp_path):
    from emoclip.encoder.backbone import load_backbone
    from emoclip.encoder.cache import FeatureCache

    base = ["predict", str(photo_folder), "--model", "tiny", "--pretrained", "random", "--device", "cpu",
            "--cache-dir", str(tmp_path), "--format", "csv"]
    exact = run(*base, "--precision", "fp32", "--decode", "full")
    fast = run(*base, "--precision", "bf16", "--decode", "draft")
    assert exact.exit_code == 0 and fast.exit_code == 0
    assert len(fast.stdout.splitlines()) == len(exact.stdout.splitlines()) == 6
    plain = load_backbone("tiny", "random", "cpu")
    dirs = {FeatureCache(tmp_path, plain).dir, FeatureCache(tmp_path, plain.with_decode("draft")).dir,
            FeatureCache(tmp_path, load_backbone("tiny", "random", "cpu", precision="bf16")).dir}
    assert len(dirs) == 3  # exact, draft-decoded and bf16 features never mix
    assert {d.name for d in tmp_path.iterdir()} >= {FeatureCache(tmp_path, plain).dir.name}


def test_unknown_speed_option_values_are_usage_errors(photo_folder):
    done = run("predict", str(photo_folder), *TINY, "--precision", "int8")
    assert done.exit_code == 2 and "int8" in done.output


def test_in_memory_images_tag_like_their_files(tiny, awkward_images):
    """Uploads and tar members arrive as bytes: ImageBytes runs the same decode/encode/cache path."""
    from emoclip.encoder.cache import FeatureCache
    from emoclip.encoder.decode import ImageBytes
    from emoclip.labels.taxonomy import load_taxonomy
    from emoclip.methods.zeroshot import ZeroShotClassifier
    from emoclip.tagging.tagger import Tagger

    classifier = ZeroShotClassifier(tiny, load_taxonomy("mikels8"))
    names = ["good", "png_named_jpg", "truncated", "zero_bytes", "not_an_image"]
    files = [awkward_images[n] for n in names]
    blobs = [ImageBytes(f"upload-{n}", f.read_bytes()) for n, f in zip(names, files, strict=True)]
    from_files = list(Tagger(tiny, classifier).tag(files))
    from_bytes = list(Tagger(tiny, classifier).tag(blobs))
    assert [r.path for r in from_bytes] == [b.name for b in blobs]
    assert [r.ok for r in from_bytes] == [r.ok for r in from_files] == [True, True, False, False, False]
    for a, b in zip(from_files, from_bytes, strict=True):
        assert a.label == b.label and a.distribution == b.distribution  # same pixels, same batch: same call
        assert (a.error is None) == (b.error is None)
    cache = FeatureCache(awkward_images["good"].parent / "cache", tiny)
    list(Tagger(tiny, classifier, cache=cache).tag(files[:2]))
    list(Tagger(tiny, classifier, cache=cache).tag(blobs[:2]))
    assert cache.hits == 2  # same bytes as the files: the cache key is the content
