"""The encoder's lanes x threads layout: chosen by measurement, never one that changes a feature,
remembered per machine; the pipeline in any layout gives the rows of one lane, in input order, with
every bad file kept as its own error."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from emoclip.encoder import layout as layout_module
from emoclip.encoder.layout import (
    REQUIRED_SPEEDUP,
    Layout,
    candidate_layouts,
    encoder_layout,
    lane_pool,
    pick_layout,
)
from emoclip.encoder.pipeline import iter_encoded
from tests.conftest import assert_close_features


def test_candidates_use_every_thread_one_lane_first():
    assert candidate_layouts(1) == [Layout(1, 1)]
    assert candidate_layouts(2) == [Layout(1, 2), Layout(2, 1)]
    assert candidate_layouts(12) == [Layout(1, 12), Layout(2, 6), Layout(3, 4), Layout(4, 3), Layout(6, 2)]
    assert all(c.lanes <= layout_module.MAX_LANES for c in candidate_layouts(64))


def result(rate: float, identical: bool = True) -> dict:
    return {"images_per_s": rate, "identical": identical}


def test_the_pick_is_the_fastest_identical_layout_and_only_when_clearly_faster():
    one, two = Layout(1, 2), Layout(2, 1)
    assert pick_layout({one: result(100), two: result(140)}) == two
    assert pick_layout({one: result(100), two: result(100 * REQUIRED_SPEEDUP * 0.99)}) == one  # a tie: one lane
    assert pick_layout({one: result(100), two: result(500, identical=False)}) == one  # never changes a feature
    assert pick_layout({one: result(140), two: result(100)}) == one


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_layout_is_measured_once_then_remembered(tiny, two_threads, monkeypatch, tmp_path):
    memory = tmp_path / "precision.json"
    monkeypatch.setenv("EMOCLIP_PRECISION_CACHE", str(memory))
    backbone = tiny.for_layout(Layout(1, 2))
    backbone.layouts.clear()
    chosen = encoder_layout(backbone, 4)
    entry = next(v for k, v in json.loads(memory.read_text()).items() if k.startswith("layout:"))
    assert Layout(entry["lanes"], entry["threads"]) == chosen and chosen in candidate_layouts(2)
    assert set(entry["measured_images_per_s"]) == {"1x2", "2x1"} and all(entry["identical"].values())

    def no_probe(*args, **kwargs):
        raise AssertionError("a remembered layout must not be measured again")

    monkeypatch.setattr(layout_module, "measure_layouts", no_probe)
    backbone.layouts.clear()
    assert encoder_layout(backbone, 4) == chosen
    # a damaged memory is measured again, never trusted
    memory.write_text(json.dumps({k: {"lanes": 7, "threads": 9} for k in json.loads(memory.read_text())}))
    monkeypatch.undo()
    monkeypatch.setenv("EMOCLIP_PRECISION_CACHE", str(memory))
    backbone.layouts.clear()
    assert encoder_layout(backbone, 4) in candidate_layouts(2)


def test_lanes_run_with_their_threads_and_leave_the_callers_alone(two_threads):
    pool = lane_pool(Layout(2, 1))
    assert pool.threads_per_lane() == [1, 1]
    assert torch.get_num_threads() == 2
    seen = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    assert seen == [2]  # a thread started afterwards gets the process default, not the lanes' count


@pytest.mark.parametrize("workers", [None, 3], ids=["lanes-decode", "decoding-pool"])
def test_every_layout_gives_one_lanes_features_in_order_with_errors_kept(tiny, awkward_images, two_threads,
                                                                          workers):
    paths = sorted(awkward_images.values()) * 3  # several batches of mixed good and bad files
    runs = {}
    for chosen in (Layout(1, 2), Layout(2, 1)):
        batches = list(iter_encoded(tiny, paths, batch_size=4, workers=workers, layout=chosen))
        assert [str(p) for b in batches for p in b.paths] == [str(p) for p in paths]
        runs[chosen] = batches
        assert torch.get_num_threads() == 2  # restored after the lanes
    one, two = runs[Layout(1, 2)], runs[Layout(2, 1)]
    assert [b.ok for b in one] == [b.ok for b in two] and [b.errors for b in one] == [b.errors for b in two]
    assert any(b.errors for b in one) and any(b.ok for b in one)
    assert_close_features(torch.cat([b.features for b in two]), torch.cat([b.features for b in one]))


def test_a_consumer_that_stops_early_leaves_the_lanes_free(tiny, awkward_images, two_threads):
    paths = sorted(awkward_images.values()) * 4
    stream = iter_encoded(tiny, paths, batch_size=2, layout=Layout(2, 1))
    next(stream)
    stream.close()
    assert torch.get_num_threads() == 2
    again = list(iter_encoded(tiny, paths[:4], batch_size=2, layout=Layout(2, 1)))
    assert len(again) == 2
