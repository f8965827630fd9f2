"""The runtime API on the exported digits engines: modes, batched early exit, parity with the workstation's
controller on the cached exits, and bad input."""
import numpy as np
import pytest

from edge_model.controller.fit import load_tables
from edge_model.controller.methods import OneShot, run
from edge_model.controller.policy import PolicyMethod
from edge_model.controller.predictor import Predictor
from edge_runtime.core.controller import Mode
from edge_runtime.io.datasets import image_split
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.policy import ARRAYS, PolicyArrays
from edge_runtime.runtime import Runtime


@pytest.fixture(scope="module")
def rt(exported):
    with Runtime.open(exported[1]) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def test_images():
    x, y, _ = image_split("digits", "test")
    return x, y


def test_infer_returns_a_result(rt, test_images):
    r = rt.infer(test_images[0][0])
    assert r.label == rt.labels[r.index] and 0 < r.score <= 1
    assert r.depth in rt.depths and r.flops == rt.flops["progressive"][r.exit_index]
    assert set(r.timings) == {"preprocess", "segments", "controller", "runtime"}
    assert r.as_dict()["depth"] == r.depth


def test_fixed_and_full_modes_stop_where_told(rt, test_images):
    x = test_images[0][:20]
    for k, d in enumerate(rt.depths):
        assert {r.exit_index for r in rt.infer_batch(x, mode=f"fixed:{d}")} == {k}
    full = rt.infer_batch(x, mode="full")
    assert {r.depth for r in full} == {rt.depths[-1]}


def random_policy(policy, seed: int = 2) -> PolicyArrays:
    """The fitted policy's shapes with random weights (seed and scales picked so that at lambda 0.5 the
    digits rows stop at three different exits): the LSTM state of the rows that go on must survive the
    batch shrinking. The tiny test controller itself stops everyone at the first exit."""
    rng = np.random.default_rng(seed)
    arrays = {k: rng.normal(0, 0.3, getattr(policy, k).shape).astype(np.float32) for k in ARRAYS}
    arrays["w_actor"] *= 33.0
    arrays["b_actor"] = np.float32(-1.0)
    return PolicyArrays(**arrays, use_predictor=True)


def test_batched_early_exit_equals_one_by_one(exported, test_images):
    x = test_images[0][:64]
    with Runtime.open(exported[1]) as rt:
        rt.controller.policy = random_policy(rt.controller.policy)
        for mode, lam in (("progressive", 0.5), ("oneshot", 0.05)):
            batch = rt.infer_batch(x, budget=lam, mode=mode)
            alone = [rt.infer(im, budget=lam, mode=mode) for im in x]
            assert [r.exit_index for r in batch] == [r.exit_index for r in alone]
            assert [r.index for r in batch] == [r.index for r in alone]
            np.testing.assert_allclose(np.stack([r.logits for r in batch]),
                                       np.stack([r.logits for r in alone]), atol=1e-5)
            assert len({r.exit_index for r in batch}) > 2, f"{mode}: rows must stop at several exits"


def test_decisions_match_the_workstation_controller(rt, exported, test_images):
    """The device's controller (ONNX segments, numpy features, predictor.onnx, numpy policy) stops where the
    workstation's (PyTorch exit cache, LightGBM, the same policy arrays) does."""
    ckpt = exported[0]
    table = load_tables(ckpt, ("test",))["test"]
    pred = Predictor.load(ckpt / "controller")
    proba = pred.proba(pred.features(table))
    x = test_images[0]
    lam = rt.spend.lam(rt.mode)
    device = np.array([r.exit_index for r in rt.infer_batch(x, budget=lam)])
    host = run(PolicyMethod(rt.controller.policy, lam), table, proba)
    assert (device == host).mean() >= 0.99
    lam1 = rt.spend.lam(Mode("oneshot"))
    device = np.array([r.exit_index for r in rt.infer_batch(x, mode="oneshot")])
    assert (device == run(OneShot(lam1), table, proba)).mean() >= 0.99


def test_stats_count_every_input(exported, test_images):
    with Runtime.open(exported[1], mode="full") as runtime:
        runtime.infer_batch(test_images[0][:10])
        runtime.infer(test_images[0][10])
        s = runtime.stats()
    assert s["frames"]["processed"] == 11 and s["calls"] == 2
    assert s["depth_histogram"][str(runtime.depths[-1])] == 11
    assert s["flops_fraction"] == pytest.approx(1.0)


def test_colour_frames_of_any_size_are_accepted(rt):
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert rt.infer(frame).label in rt.labels


@pytest.mark.parametrize("bad, words", [
    (np.full((8, 8), np.nan), "NaN"),
    (np.zeros((2, 3, 4, 5)), "(H, W) or (H, W, C)"),
    (np.zeros((8, 8, 2)), "2 channels"),
    (np.array([["a"]]), "dtype"),
])
def test_bad_api_input_is_one_clear_error(rt, bad, words):
    with pytest.raises(EdgeError) as e:
        rt.infer(bad)
    assert e.value.exit == Exit.BAD_INPUT and words in str(e.value)


def test_bad_budget_and_mode(rt, test_images):
    for kwargs, words in (({"budget": -1}, "lambda must be a number >= 0"), ({"budget": float("nan")}, ">= 0"),
                          ({"budget": "cheap"}, ">= 0"),
                          ({"mode": "fixed:5"}, "one of the depths"), ({"mode": "fast"}, "unknown")):
        with pytest.raises(EdgeError) as e:
            rt.infer(test_images[0][0], **kwargs)
        assert e.value.exit == Exit.BAD_INPUT and words in str(e.value)


def test_wrong_engine_dir_is_one_clear_error(tmp_path):
    with pytest.raises(EdgeError) as e:
        Runtime.open(tmp_path / "nowhere")
    assert e.value.exit == Exit.NOT_FOUND and "not a directory" in str(e.value)


def test_compiled_trees_equal_onnx_runtime(rt, exported):
    """edge_runtime.core.predictor walks predictor.onnx's trees as ONNX Runtime does."""
    import onnxruntime as ort
    path = exported[1] / "predictor.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n_features = sess.get_inputs()[0].shape[1]
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, n_features)) * 2).astype(np.float32)
    x[::7, 3] = np.nan
    want = sess.run(["proba"], {"features": x})[0]
    np.testing.assert_allclose(rt.controller.predictor(x), want, atol=1e-6)
    np.testing.assert_allclose(rt.controller.predictor(x[:1]), want[:1], atol=1e-6)


class Opaque:
    """A handle the scheduler cannot look inside: no array interface, no len, no indexing."""
    __slots__ = ("_ref",)

    def __init__(self, ref):
        self._ref = ref

    def __len__(self):
        raise AssertionError("the scheduler looked inside a handle")

    __getitem__ = __iter__ = __array__ = __len__


class OpaqueExecutor:
    """Wraps the ORT executor and hands the scheduler only Opaque handles (test-only): decisions and outputs
    must come out as with the ORT executor itself."""

    max_batch = None

    def __init__(self, inner):
        self.inner, self.name, self.is_open = inner, "opaque", True

    def start(self, feed, check=True):
        return Opaque(self.inner.start(feed, check))

    def segment(self, k, h):
        nxt, host = self.inner.segment(k, h._ref)
        return Opaque(nxt), host

    def keep(self, h, mask):
        return Opaque(self.inner.keep(h._ref, mask))

    def chain(self, j, d, h):
        return self.inner.chain(j, d, h._ref)

    def describe(self):
        return "opaque"

    def close(self):
        self.inner.close()
        self.is_open = False


def test_the_scheduler_never_looks_inside_a_handle(exported, test_images):
    x = test_images[0][:48]
    with Runtime.open(exported[1]) as plain, Runtime.open(exported[1]) as wrapped:
        policy = random_policy(plain.controller.policy)
        plain.controller.policy = wrapped.controller.policy = policy
        wrapped.executor = OpaqueExecutor(wrapped.executor)
        for mode, lam in (("progressive", 0.5), ("oneshot", 0.05), ("fixed:2", None), ("full", None)):
            a, b = plain.infer_batch(x, budget=lam, mode=mode), wrapped.infer_batch(x, budget=lam, mode=mode)
            assert [r.exit_index for r in a] == [r.exit_index for r in b]
            np.testing.assert_array_equal(np.stack([r.logits for r in a]), np.stack([r.logits for r in b]))


def test_lambda_zero_and_the_budget_rules(exported, test_images):
    """lambda >= 0 everywhere: 0 (the most accurate point, which validation may choose) runs; fixed modes
    spend no budget and report none; a lambda and a deadline together are one line."""
    from edge_runtime.core.budget import Budget
    with Runtime.open(exported[1], mode="oneshot", budget=0.0) as rt:
        assert rt.infer(test_images[0][0]).lam == 0.0
        assert rt.infer(test_images[0][0], mode="full").lam is None
        assert "lambda 0" in rt.describe()
    with Runtime.open(exported[1], mode="full") as rt:
        assert rt.infer(test_images[0][0]).lam is None and "lambda" not in rt.describe()
    with pytest.raises(EdgeError, match="give one") as e:
        Budget.of(0.1, deadline_ms=5)
    assert e.value.exit == Exit.BAD_INPUT
    for bad in (-0.5, float("inf"), True, "x"):
        with pytest.raises(EdgeError, match=">= 0"):
            Runtime.open(exported[1], budget=bad)


def test_open_loads_its_modes_graphs_and_the_others_on_first_use(exported, test_images):
    """full runs one chain graph (no exit head on the way) and loads nothing else; oneshot loads segment 0 and
    the chain graphs from it (in the background); another mode's graphs load when a call first needs them."""
    with Runtime.open(exported[1], mode="full") as rt:
        assert set(rt.executor.sessions) == {(0, "chain_0_3")}
        assert rt.flops["fixed"][-1] == rt.engine.manifest["baseline"]["flops"] < rt.flops["progressive"][-1]
        r = rt.infer(test_images[0][0], mode="progressive")
        assert {name for _, name in rt.executor.sessions} >= {f"segment_{k}" for k in range(r.exit_index + 1)}
    with Runtime.open(exported[1], mode="oneshot") as rt:
        rt.executor.wait_loaded()
        assert {name for _, name in rt.executor.sessions} == {"segment_0", "chain_1_1", "chain_1_2", "chain_1_3"}


def test_threads_run_small_batches_single_threaded_with_the_same_answers(exported, test_images):
    """With threads > 1 a call below PARALLEL_FROM rows runs on single-thread sessions, a larger one on the
    multi-thread sessions: the decisions and logits are the same either way."""
    from edge_runtime.backends.ort import PARALLEL_FROM
    x = test_images[0][:PARALLEL_FROM]
    with Runtime.open(exported[1], threads=1) as one, Runtime.open(exported[1], threads=2) as two:
        for mode in ("progressive", "oneshot", "full"):
            a, b = one.infer_batch(x, mode=mode), two.infer_batch(x, mode=mode)
            assert [r.exit_index for r in a] == [r.exit_index for r in b]
            np.testing.assert_allclose(np.stack([r.logits for r in a]), np.stack([r.logits for r in b]), atol=1e-5)
        assert {tier for tier, _ in one.executor.sessions} == {0} and {1} <= {t for t, _ in two.executor.sessions}
        small = two.executor.start(two.preprocess.batch(x[:PARALLEL_FROM - 1]))
        assert small.tier == 0 and two.executor.start(two.preprocess.batch(x)).tier == 1
        assert "from batch 16, 1 below" in two.executor.describe()
