"""The GPU executors' plan on the CPU: buckets and padding, buffers, compaction runs, the graph cache's keys,
invalidation and fallback (edge_runtime.core.gpu_plan)."""
import io

import numpy as np
import pytest

from edge_runtime.core.engine_dir import EngineDir
from edge_runtime.core.errors import EdgeError
from edge_runtime.core.gpu_plan import BufferPlan, GraphCache, bucket_for, parse_buckets, pieces, runs

GOLDEN = "tests/golden/digits-vit-tiny"


def test_buckets_parse_and_choose():
    assert parse_buckets("1,2,4,8") == (1, 2, 4, 8)
    assert parse_buckets([1, 3]) == (1, 3)
    for bad in ("", "0,1", "4,2", "1,1", "a,b"):
        with pytest.raises(EdgeError):
            parse_buckets(bad)
    b = (1, 2, 4, 8, 16, 32)
    assert [bucket_for(n, b) for n in (1, 2, 3, 5, 8, 9, 17, 32)] == [1, 2, 4, 8, 8, 16, 32, 32]
    with pytest.raises(ValueError):
        bucket_for(33, b)
    assert pieces(70, 32) == [(0, 32), (32, 64), (64, 70)]
    assert pieces(0, 32) == []


def test_runs_cover_the_kept_rows_in_order():
    assert runs(np.array([0, 1, 2])) == [(0, 0, 3)]
    assert runs(np.array([1, 2, 5, 7, 8, 9])) == [(1, 0, 2), (5, 2, 1), (7, 3, 3)]
    assert runs(np.array([], np.int64)) == []
    rng = np.random.default_rng(0)
    for _ in range(50):                   # replaying the runs gathers exactly src[index]
        mask = rng.random(32) < 0.5
        index = np.flatnonzero(mask)
        src = rng.standard_normal((32, 3))
        dst = np.full((32, 3), np.nan)
        for s, d, c in runs(index):
            dst[d:d + c] = src[s:s + c]
        assert np.array_equal(dst[:len(index)], src[index])
        assert all(d <= s for s, d, _ in runs(index))     # rows only move forward: one pass suffices


def test_buffer_plan_of_the_golden_build():
    engine = EngineDir.open(GOLDEN)
    plan = BufferPlan(engine.graphs(), (1, 4))
    hidden = engine.segments[1]["inputs"][0]["shape"][1:]
    assert [t.name for t in plan.tensors] == ["pixels", "hidden_0", "hidden_1", "logits"]
    assert plan.tensor("hidden_0").row == tuple(hidden)
    row = sum(t.row_bytes for t in plan.tensors)
    assert plan.bytes(4) == 4 * row and plan.total_bytes() == 5 * row
    # segment k reads the hidden buffer segment k-1 wrote: the two alternate
    assert plan.reads(0) == {"pixels": "pixels"}
    assert plan.writes(0) == {"hidden_out": "hidden_0", "logits": "logits"}
    assert plan.reads(1) == {"hidden": "hidden_0"} and plan.writes(1)["hidden_out"] == "hidden_1"
    assert plan.reads(2) == {"hidden": "hidden_1"} and plan.writes(2)["hidden_out"] == "hidden_0"
    assert plan.writes(3, chain=True) == {"logits": "logits"}
    assert plan.live(0) == ["pixels"] and plan.live(2) == ["hidden_1"]
    half = BufferPlan(engine.graphs(), (1,), "float16")
    assert half.tensor("pixels").dtype == "float16" and half.bytes(1) * 2 == plan.bytes(1)


def test_buffer_plan_carries_the_text_mask():
    seg0 = type("G", (), {"inputs": [{"name": "input_ids", "shape": ["batch", 16], "dtype": "int64"},
                                     {"name": "attention_mask", "shape": ["batch", 16], "dtype": "int64"}],
                          "outputs": [{"name": "hidden_out", "shape": ["batch", 16, 8], "dtype": "float32"},
                                      {"name": "logits", "shape": ["batch", 3], "dtype": "float32"}]})
    seg1 = type("G", (), {"inputs": [{"name": "hidden", "shape": ["batch", 16, 8], "dtype": "float32"},
                                     {"name": "attention_mask", "shape": ["batch", 16], "dtype": "int64"}],
                          "outputs": seg0.outputs})
    plan = BufferPlan([seg0, seg1], (1, 2), "float16")
    assert plan.tensor("input_ids").dtype == "int64"          # integer inputs keep their dtype
    assert plan.reads(1) == {"hidden": "hidden_0", "attention_mask": "attention_mask"}
    assert plan.live(1) == ["hidden_0", "attention_mask"]


def test_a_dynamic_inner_axis_is_refused():
    g = type("G", (), {"inputs": [{"name": "input_ids", "shape": ["batch", "seq"], "dtype": "int64"}],
                       "outputs": [{"name": "logits", "shape": ["batch", 3], "dtype": "float32"}]})
    with pytest.raises(EdgeError, match="fixed"):
        BufferPlan([g])


class Recorder:
    """A capture that records what it was given; `fail` makes it raise (a failed CUDA-graph capture)."""

    def __init__(self, fail=False):
        self.fail, self.captured = fail, []

    def __call__(self, fn):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captured.append(fn)
        calls = []

        def replay():
            calls.append(1)
            fn()
        replay.calls = calls
        return replay


def test_graph_cache_captures_once_then_replays():
    rec, ran = Recorder(), []
    cache = GraphCache(rec, warn=None)
    fn = lambda: ran.append("x")      # noqa: E731
    for _ in range(4):
        cache.run(("segment_0", 1), (100, 200), fn)
    assert len(rec.captured) == 1 and len(ran) == 4          # the warm-up run, then three replays
    assert cache.counts.captured == 1 and cache.counts.replays == 3 and cache.counts.plain_runs == 1
    cache.run(("segment_0", 2), (300,), fn)                  # another bucket: its own graph
    assert cache.counts.captured == 2


def test_graph_cache_recaptures_when_addresses_change():
    rec = Recorder()
    cache = GraphCache(rec, warn=None)
    cache.run(("chain_0_3", 1), (1, 2), lambda: None)
    cache.run(("chain_0_3", 1), (1, 2), lambda: None)
    cache.run(("chain_0_3", 1), (1, 3), lambda: None)        # a buffer moved: the old graph is stale
    assert cache.counts.invalidated == 1 and cache.counts.captured == 2


def test_capture_failure_falls_back_counted_and_said_once():
    err, ran = io.StringIO(), []
    cache = GraphCache(Recorder(fail=True), warn=err)
    for key in (("segment_0", 1), ("segment_1", 1)):
        for _ in range(3):
            cache.run(key, (1,), lambda: ran.append(1))
    assert len(ran) == 6                                     # every call still ran, plainly
    assert cache.counts.capture_failures == 2 and cache.counts.replays == 0 and cache.counts.plain_runs == 6
    assert err.getvalue().count("\n") == 1 and "capture failed" in err.getvalue()
    assert "stream is capturing" in cache.counts.as_dict()["failures"][0]


def test_graphs_off_never_captures():
    rec = Recorder()
    cache = GraphCache(rec, enabled=False, warn=None)
    for _ in range(3):
        cache.run(("segment_0", 1), (1,), lambda: None)
    assert rec.captured == [] and cache.counts.plain_runs == 3
