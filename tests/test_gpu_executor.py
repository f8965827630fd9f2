"""The GPU executors' schedule (backends/gpu.py) on the CPU, through the torch backend on device="cpu":
buckets, padding, compaction, chains, host copies and the capture fallback, checked against ONNX Runtime
on the same calls, and the golden run decided the same way."""
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend's logic runs on CPU torch")

from edge_runtime import backends                        # noqa: E402
from edge_runtime.core.engine_dir import EngineDir       # noqa: E402
from edge_runtime.io.sources import SourceOptions, open_source   # noqa: E402
from edge_runtime.runtime import Runtime                 # noqa: E402

GOLDEN = Path("tests/golden/digits-vit-tiny")


@pytest.fixture(scope="module")
def engine():
    return EngineDir.open(GOLDEN)


def executors(engine, buckets=(1, 2, 4, 8), use_graphs=False):
    built = engine.build("onnxruntime")
    ort = backends.create("onnxruntime", built.graphs, 1, (), built.chains)
    gpu = backends.create("torch-cuda", built.graphs, 1, (), built.chains, "fp32", buckets=buckets,
                          use_graphs=use_graphs, device="cpu")
    return ort.open(), gpu.open()


def test_segments_keep_and_chains_match_onnxruntime(engine):
    ref = engine.reference()
    ort, gpu = executors(engine)
    rng = np.random.default_rng(0)
    try:
        for n in (1, 3, 8):                      # bucket 1, a padded bucket, a full one
            feed = {"pixels": np.ascontiguousarray(ref["pixels"][:n])}
            a, b = ort.start(feed), gpu.start(feed)
            for k in range(len(engine.segments)):
                a, ha = ort.segment(k, a)
                b, hb = gpu.segment(k, b)
                assert set(ha) == set(hb)
                for name in ha:
                    assert hb[name].shape == ha[name].shape and hb[name].dtype == np.float32
                    np.testing.assert_allclose(hb[name], ha[name], atol=1e-5)
                if a is None:
                    break
                mask = rng.random(len(ha["logits"])) < 0.6
                if not mask.any():
                    mask[-1] = True
                a, b = ort.keep(a, mask), gpu.keep(b, mask)     # rows go to a smaller bucket, or stay in place
            for (j, d) in sorted(engine.build("onnxruntime").chains):
                a, b = ort.start(feed), gpu.start(feed)
                if j == 1:
                    a, b = ort.segment(0, a)[0], gpu.segment(0, b)[0]
                np.testing.assert_allclose(gpu.chain(j, d, b)["logits"], ort.chain(j, d, a)["logits"], atol=1e-5)
        assert gpu.graph_report()["capture_failures"] == 0 and gpu.graph_report()["graphs"] == "off"
    finally:
        ort.close()
        gpu.close()


def test_batches_past_the_largest_bucket_run_in_pieces(engine):
    ref = engine.reference()
    ort, gpu = executors(engine, buckets=(1, 4))
    try:
        feed = {"pixels": ref["pixels"]}         # 16 rows, buckets up to 4
        for ha, hb in zip(ort.outputs(feed), gpu.outputs(feed)):
            np.testing.assert_allclose(hb["logits"], ha["logits"], atol=1e-5)
    finally:
        ort.close()
        gpu.close()


def test_capture_failure_falls_back_and_is_reported(engine, capsys):
    ref = engine.reference()
    ort, gpu = executors(engine, use_graphs=True)      # no CUDA here: every capture fails
    try:
        feed = {"pixels": ref["pixels"][:2]}
        for ha, hb in zip(ort.outputs(feed), gpu.outputs(feed)):
            np.testing.assert_allclose(hb["logits"], ha["logits"], atol=1e-5)
        report = gpu.graph_report()
        assert report["captured"] == 0 and report["capture_failures"] >= len(engine.segments)
        assert "CUDA graphs need a CUDA device" in report["failures"][0]
        assert "capture failed" in capsys.readouterr().err
        assert "failed" in gpu.describe()
    finally:
        ort.close()
        gpu.close()


@pytest.mark.parametrize("mode", ["progressive", "oneshot", "fixed:2", "full"])
def test_the_golden_run_decides_the_same_on_the_gpu_schedule(engine, mode):
    """The scheduler over the GPU executor (CPU torch) reproduces the golden decisions: one Runtime, its
    executor swapped for the torch one over the same graphs."""
    golden = [json.loads(line) for line in (Path("tests/golden") /
                                            f"digits-vit-tiny.{mode.replace(':', '_')}.jsonl").open()]
    rt = Runtime.open(GOLDEN, mode=mode)
    ort, gpu = executors(engine)
    ort.close()
    rt.executor.close()
    rt.executor = gpu
    try:
        source = open_source("dataset://digits/test?limit=200", SourceOptions())
        feed = rt.preprocess.batch([frame.data for frame in source])
        source.close()
        want = [g["depth"] for g in golden]
        got = [rt.depths[rt.run({k: v[i:i + 1] for k, v in feed.items()}, check=False).exit_index[0]]
               for i in range(len(want))]
        assert got == want
        batched = rt.run(feed)                   # 200 rows: pieces of 8, compaction across buckets
        assert [rt.depths[k] for k in batched.exit_index] == want
    finally:
        rt.close()
