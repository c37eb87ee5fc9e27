"""Browse and search a shard folder: the one query implementation checked against pandas and brute force.

The folders are synthetic but written through the real shard writer (``emoclip.browse.synthetic``);
every expected answer is computed independently here from ``pd.read_parquet`` of the same folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from emoclip.browse.folder import read_folder
from emoclip.browse.index import FaissIndex
from emoclip.browse.query import Query, search
from emoclip.browse.synthetic import write_synthetic_folder
from emoclip.browse.thumbs import ThumbCache
from emoclip.cli.main import main
from emoclip.core.errors import EmoclipError
from emoclip.serve.settings import ServeSettings, check_bind
from emoclip.tagging.shards import COMMITS_NAME, MANIFEST_NAME
from tests.browsing import running_browse, tiny_browser
from tests.conftest import noise_image

ROWS, SHARD, DIM = 1300, 250, 64        # the tiny backbone's feature width
CLASSES = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_synthetic_folder(tmp_path_factory.mktemp("synthetic") / "tagged", ROWS, SHARD, DIM, seed=3,
                                  model="tiny", error_every=53)


@pytest.fixture(scope="module")
def frame(folder) -> pd.DataFrame:
    df = pd.read_parquet(folder)
    df.index = np.arange(len(df))   # complete folder, shards in order: the global id is the row number
    return df


@pytest.fixture
def browser(folder, tiny, tmp_path):
    return tiny_browser(folder, tiny, tmp_path / "cache")


def _features(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    has = frame["feature"].notna().to_numpy()
    return np.flatnonzero(has), np.stack(frame["feature"][has].to_numpy()).astype(np.float32)


def _all_ids(browser, query: Query) -> list[int]:
    """Every id of a query's answer, page by page (paging must add up to the whole)."""
    ids, offset = [], 0
    while True:
        answer = browser.run(query.replace(offset=offset, limit=100))
        ids += [r["id"] for r in answer.rows]
        offset += 100
        if offset >= answer.total:
            assert len(ids) == answer.total
            return ids


def test_filters_and_sorts_agree_with_pandas(browser, frame):
    margin = np.sort(frame[[f"p_{c}" for c in CLASSES]].to_numpy(), axis=1)
    frame = frame.assign(margin=margin[:, -1] - margin[:, -2])
    cases = [
        (Query(labels=("awe", "fear")), frame["label"].isin(["awe", "fear"])),
        (Query(levels={"polarity": ("negative",)}, min_probability=0.3, max_probability=0.6),
         (frame["polarity_label"] == "negative") & frame["probability"].between(0.3, 0.6)),
        (Query(uncertain=0.05), frame["margin"] < 0.05),
        (Query(errors_only=True), frame["error"] != ""),
    ]
    for query, expected in cases:
        assert _all_ids(browser, query) == list(np.flatnonzero(expected.to_numpy())), query
    # most awe first, among contentment rows; ties by id
    chosen = frame[frame["label"] == "contentment"]
    expected = chosen.sort_values(["p_awe"], ascending=False, kind="stable").index.tolist()
    assert _all_ids(browser, Query(labels=("contentment",), sort="awe")) == expected
    least = frame[frame["error"] == ""].sort_values("margin", kind="stable").index.tolist()[:30]
    assert [r["id"] for r in browser.run(Query(sort="margin", ascending=True, limit=30)).rows] == least


def test_rows_carry_label_probability_polarity_and_detail(browser, frame):
    row = browser.run(Query(labels=("sadness",), limit=1)).rows[0]
    source = frame.loc[row["id"]]
    assert row["label"] == "sadness" and row["probability"] == pytest.approx(source["probability"], abs=1e-6)
    assert row["polarity"]["label"] == source["polarity_label"]
    detail = browser.detail(row["id"])
    assert detail["distribution"] == pytest.approx({c: source[f"p_{c}"] for c in CLASSES}, abs=1e-6)
    assert sum(detail["levels"]["polarity"].values()) == pytest.approx(1, abs=1e-5)
    assert detail["file"].startswith("missing:")                 # synthetic paths point nowhere
    bad = browser.detail(52)                                     # every 53rd row is an error row
    assert bad["error"] == "cannot decode image: synthetic error" and bad["label"] is None


def test_stats_count_the_filtered_rows(browser, frame):
    stats = browser.stats(Query(levels={"polarity": ("positive",)}))
    chosen = frame[frame["polarity_label"] == "positive"]
    assert stats["rows"] == len(chosen)
    assert stats["labels"] == {c: int((chosen["label"] == c).sum()) for c in CLASSES}
    assert sum(stats["histograms"]["probability"]) == len(chosen)


def test_exact_search_is_brute_force_within_the_filter(browser, frame, tiny):
    ids, matrix = _features(frame)
    text = "a calm evening by the sea"
    vector = tiny.encode_texts([text])[0].numpy()
    answer = browser.run(Query(text=text, labels=("fear",), top=20, limit=20))
    assert answer.search == "exact"
    allowed = (frame["label"] == "fear").to_numpy()[ids]
    scores = matrix @ vector
    expected = ids[allowed][np.argsort(-scores[allowed], kind="stable")[:20]]
    assert [r["id"] for r in answer.rows] == expected.tolist()
    assert all(r["label"] == "fear" for r in answer.rows)
    # more like this: by a row's own feature, the row itself left out
    like = browser.run(Query(like=int(expected[0]), top=10, limit=10))
    sims = matrix @ matrix[np.flatnonzero(ids == expected[0])[0]]
    order = [i for i in ids[np.argsort(-sims, kind="stable")] if i != expected[0]][:10]
    assert [r["id"] for r in like.rows] == order


def commit_only(folder: Path, shards: set[int], log: bytes) -> None:
    """Rewrite the folder's commit log as if only ``shards`` were committed yet (from the whole ``log``)."""
    lines = [line for line in log.splitlines(keepends=True)
             if "shard" not in json.loads(line) or json.loads(line)["shard"] in shards]
    (folder / COMMITS_NAME).write_bytes(b"".join(lines))


def test_approximate_index_finds_the_exact_neighbours_and_follows_new_shards(folder, tiny, tmp_path, frame):
    work = tmp_path / "growing"
    shutil.copytree(folder, work)
    whole = (work / COMMITS_NAME).read_bytes()
    commit_only(work, {0, 1, 2, 3}, whole)                      # shard 4 not committed yet
    approx = tiny_browser(work, tiny, tmp_path / "cache", approx_min_rows=1)
    exact = tiny_browser(work, tiny, tmp_path / "cache2")
    query = Query(like=7, top=10, limit=10)
    got = [r["id"] for r in approx.run(query).rows]
    truth = [r["id"] for r in exact.run(query).rows]
    assert approx.run(query).search == "approximate"
    # an approximate index may miss a neighbour: at least 9 of the true 10 (the clusters are well apart)
    assert len(set(got) & set(truth)) >= 9
    assert max(got) < 4 * SHARD
    (work / COMMITS_NAME).write_bytes(whole)                     # shard 4 lands
    grown = approx.run(Query(like=4 * SHARD + 3, top=5, limit=5))
    assert len(approx.collection) == ROWS and len(approx.index()) == int(frame["feature"].notna().sum())
    assert grown.rows and grown.rows[0]["id"] != 4 * SHARD + 3
    # a new Browser takes the saved index instead of building it again
    saved = FaissIndex(DIM, approx.key, tmp_path / "cache")
    assert saved.load(dict(approx.collection.state.shards)) and len(saved) == len(approx.index())


def test_python_and_cli_give_the_same_rows(folder, tiny, tmp_path, browser):
    hits = tmp_path / "hits.csv"
    result = CliRunner().invoke(main, ["search", str(folder), "--label", "awe", "--sort", "excitement", "--top", "7",
                                       "-o", str(hits), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(hits)
    api = search(folder, labels="awe", sort="excitement", top=7, browser=browser)
    assert table["id"].tolist() == [r["id"] for r in api]
    assert set(table["label"]) == {"awe"} and len(table) == 7
    # a text search through the CLI loads the folder's own model (tiny, random): the Python API's answer
    result = CliRunner().invoke(main, ["search", str(folder), "calm sea", "--polarity", "negative", "--top", "5",
                                       "--format", "json", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    api = search(folder, "calm sea", polarity="negative", top=5, browser=browser)
    assert [r["id"] for r in printed] == [r["id"] for r in api]
    assert [r["score"] for r in printed] == pytest.approx([r["score"] for r in api], abs=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "is not an emoclip shard folder"),
    (lambda p: p / "nothing-here", "is not a folder"),
    (lambda p: (p / MANIFEST_NAME).write_text('{"emoclip_shards": 1, "sha') and p, "is damaged (not valid JSON"),
    (lambda p: (p / MANIFEST_NAME).write_text('[1, 2]') and p, "is damaged (a JSON list"),
])
def test_bad_folders_are_one_line(tmp_path, make, message):
    target = make(tmp_path)
    result = CliRunner().invoke(main, ["search", str(target), "--top", "1"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "emoclip: error:" in result.output and message in result.output


def test_missing_shard_file_and_missing_features(tmp_path, tiny):
    images = []
    for i in range(6):
        images.append(tmp_path / f"img{i}.png")
        noise_image(40, 30, seed=i).save(images[-1])
    folder = write_synthetic_folder(tmp_path / "nofeat", 12, 4, DIM, model="tiny", features=False,
                                    paths=[str(p) for p in images])
    browser = tiny_browser(folder, tiny, tmp_path / "cache")
    with pytest.raises(EmoclipError, match="--save-features"):
        browser.run(Query(text="calm"))
    assert browser.run(Query(labels=tuple(CLASSES))).total == 12  # filters still work
    # computed on demand with the folder's own tagger: then searchable, and the same as the tagger's features
    assert browser.features.compute(browser.collection, browser.tagger(), progress=False) == 12
    hits = browser.run(Query(like=str(images[2]), top=3, limit=3)).rows
    assert hits[0]["path"] == str(images[2]) and hits[0]["score"] == pytest.approx(1, abs=1e-5)
    # a committed shard whose file disappeared: left out and named
    (folder / "part-00001.parquet").unlink()
    state = read_folder(folder)
    assert len(state.shards) == 2 and "part-00001.parquet is missing" in state.problems[0]


def test_thumbnails_placeholders_and_the_size_bound(tmp_path):
    cache = ThumbCache(tmp_path / "thumbs", max_bytes=4000, side=64)
    pictures = []
    for i in range(6):
        pictures.append(tmp_path / f"p{i}.jpg")
        noise_image(200, 150, seed=i).save(pictures[-1], quality=95)
    for p in pictures:
        data, reason = cache.get(str(p))
        assert reason is None and data[:2] == b"\xff\xd8"
    stored = sum(f.stat().st_size for f in (tmp_path / "thumbs").glob("*/*.jpg"))
    assert 0 < stored <= 4000
    data, reason = cache.get(str(tmp_path / "moved.jpg"))
    assert data is None and "file missing" in reason
    (tmp_path / "text.jpg").write_text("not a picture")
    assert "not an image" in cache.get(str(tmp_path / "text.jpg"))[1]


def test_http_api_key_export_and_the_bind_rule(browser):
    with pytest.raises(EmoclipError, match="--api-key"):
        check_bind(ServeSettings(host="0.0.0.0"))
    with running_browse(browser, ServeSettings(api_key="k3y")) as url, httpx.Client(base_url=url, timeout=30) as web:
        assert web.get("/api/rows").status_code == 401
        keyed = {"X-API-Key": "k3y"}
        page = web.get("/api/rows", params={"label": "awe", "sort": "awe", "limit": 5}, headers=keyed).json()
        assert [r["id"] for r in page["rows"]] == [r["id"] for r in browser.run(Query(labels=("awe",), sort="awe",
                                                                                      limit=5)).rows]
        bad = web.get("/api/rows", params={"label": "bliss"}, headers=keyed)
        assert bad.status_code == 400 and "unknown label 'bliss'" in bad.json()["detail"]
        missing = web.get(f"/api/thumb/{page['rows'][0]['id']}", headers=keyed)
        assert missing.status_code == 404 and "file missing" in missing.json()["detail"]
        exported = web.get("/api/export", params={"format": "csv", "label": "awe"}, headers=keyed)
        rows = pd.read_csv(__import__("io").StringIO(exported.text))
        assert len(rows) == browser.run(Query(labels=("awe",))).total and set(rows["label"]) == {"awe"}
        assert web.get("/", headers=keyed).headers["content-security-policy"].startswith("default-src 'self'")


def test_the_page_can_compute_missing_features(tmp_path, tiny):
    images = []
    for i in range(4):
        images.append(tmp_path / f"img{i}.png")
        noise_image(40, 30, seed=10 + i).save(images[-1])
    folder = write_synthetic_folder(tmp_path / "nofeat", 4, 2, DIM, model="tiny", features=False,
                                    paths=[str(p) for p in images])
    browser = tiny_browser(folder, tiny, tmp_path / "cache")
    with running_browse(browser) as url, httpx.Client(base_url=url, timeout=30) as web:
        refused = web.get("/api/rows", params={"text": "calm"})
        assert refused.status_code == 400 and "--save-features" in refused.json()["detail"]
        assert web.get("/api/info").json()["searchable"] is False
        web.post("/api/features")
        for _ in range(600):               # bounded: at most 60 s
            info = web.get("/api/info").json()
            if info["searchable"] or info["features_job"]["error"]:
                break
            __import__("time").sleep(0.1)
        assert info["searchable"] and info["features_job"]["error"] is None
        hits = web.get("/api/rows", params={"text": "calm", "limit": 4}).json()
        assert hits["search"] == "exact" and len(hits["rows"]) == 4


def test_a_job_that_has_committed_nothing_yet_opens_empty_and_fills(folder, tmp_path, tiny):
    work = tmp_path / "starting"
    shutil.copytree(folder, work)
    whole = (work / COMMITS_NAME).read_bytes()
    commit_only(work, set(), whole)
    browser = tiny_browser(work, tiny, tmp_path / "cache")
    assert browser.run(Query()).total == 0 and browser.stats(Query())["rows"] == 0
    commit_only(work, {0}, whole)
    assert browser.run(Query(sort="awe")).total == SHARD
    assert browser.describe()["classes"] == CLASSES and browser.describe()["complete"] is False


def test_cli_more_like_a_row_path_is_the_python_answer(folder, frame, browser, tmp_path):
    path = frame.loc[11, "path"]
    out = tmp_path / "like.jsonl"
    result = CliRunner().invoke(main, ["search", str(folder), "--like", path, "--label", "anger", "--top", "6",
                                       "-o", str(out), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in out.read_text().splitlines()]
    api = search(folder, like=path, labels=["anger"], top=6, browser=browser)
    assert [r["id"] for r in printed] == [r["id"] for r in api] and len(api) == 6
    assert 11 not in [r["id"] for r in api] and {r["label"] for r in api} == {"anger"}
    result = CliRunner().invoke(main, ["search", str(folder), "--like", str(tmp_path / "nowhere.jpg")])
    assert result.exit_code == 2 and "neither a row" in result.output
