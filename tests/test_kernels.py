"""edge_runtime._kernels, the device controller's C loops: top1 against numpy, forest against ONNX Runtime and a
plain Python walk, features and confidence against edge_runtime.core.features, first_boundary against features +
forest + start + boundary, oneshot against features + forest + the numpy target, and bad input of every kind
raising a Python exception (never a crash, an endless walk or a read out of bounds) with every buffer released."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from edge_model.controller.policy import LSTMPolicy
from edge_runtime import _kernels as K
from edge_runtime.core.engine_dir import Projection
from edge_runtime.core.features import confidence, from_segment_0
from edge_runtime.core.kernels import NOT_BUILT
from edge_runtime.core.policy import state_size
from edge_runtime.core.predictor import TreeEnsemble


def softmax64(logits):
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ---- top1 ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4, 1e30])
def test_top1_equals_numpy(scale):
    rng = np.random.default_rng(0)
    for n, C in ((1, 1), (1, 10), (7, 3), (300, 10), (5, 1000)):
        logits = (rng.normal(size=(n, C)) * scale).astype(np.float32)
        logits[::3, C // 2:] = logits[::3, :1]                      # ties with the first column
        logits[1::5] = np.round(logits[1::5] / scale) * scale         # ties anywhere
        index, score = np.empty(n, np.int64), np.empty(n, np.float64)
        K.top1(logits, index, score)
        want = logits.argmax(1)
        assert np.array_equal(index, want)
        np.testing.assert_allclose(score, softmax64(logits)[np.arange(n), want], rtol=1e-12, atol=0)


def test_top1_nan_and_inf_as_numpy():
    logits = np.array([[1, np.nan, 3, np.nan], [np.inf, 0, 0, 0], [-np.inf, 2, 2, 0]], np.float32)
    index, score = np.empty(3, np.int64), np.empty(3, np.float64)
    K.top1(logits, index, score)
    assert index.tolist() == logits.argmax(1).tolist() == [1, 0, 1]
    assert np.isnan(score[0]) and np.isnan(score[1])              # numpy's softmax: NaN too
    np.testing.assert_allclose(score[2], softmax64(logits[2:])[0, 1], rtol=1e-12)


# ---- forest ----------------------------------------------------------------------------------------------------

def random_trees(rng, trees: int, features: int, classes: int, depth: int) -> list:
    """[(tree id, [nodes])], each node a dict in ONNX's terms, ids in a shuffled order (not depth first)."""
    out = []
    for t in range(trees):
        nodes = []

        def grow(d):
            node = {"id": len(nodes)}
            nodes.append(node)
            if d == depth or rng.random() < 0.25:
                node.update(mode="LEAF", cls=int(rng.integers(classes)), weight=float(rng.normal()))
            else:
                node.update(mode=str(rng.choice(["BRANCH_LEQ", "BRANCH_LT"])), feature=int(rng.integers(features)),
                            value=float(np.float32(rng.normal())), nan=int(rng.integers(2)))
                node["true"], node["false"] = grow(d + 1), grow(d + 1)
            return node["id"]

        grow(0)
        ids = {0: 0, **{i: j for i, j in zip(range(1, len(nodes)), rng.permutation(np.arange(1, len(nodes))))}}
        for node in nodes:                                             # root stays 0, as TreeEnsemble wants
            node["id"] = int(ids[node["id"]])
            for side in ("true", "false"):
                if side in node:
                    node[side] = int(ids[node[side]])
        out.append((t, nodes))
    return out


def onnx_forest(path, trees, features: int, classes: int, softmax: bool):
    from onnx import TensorProto, helper
    a = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_modes", "nodes_featureids", "nodes_values",
                         "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
                         "class_treeids", "class_nodeids", "class_ids", "class_weights")}
    for t, nodes in trees:
        for nd in nodes:
            leaf = nd["mode"] == "LEAF"
            for k, v in (("treeids", t), ("nodeids", nd["id"]), ("modes", nd["mode"]),
                         ("featureids", 0 if leaf else nd["feature"]), ("values", 0.0 if leaf else nd["value"]),
                         ("truenodeids", 0 if leaf else nd["true"]), ("falsenodeids", 0 if leaf else nd["false"]),
                         ("missing_value_tracks_true", 0 if leaf else nd["nan"])):
                a["nodes_" + k].append(v)
            if leaf:
                for k, v in (("treeids", t), ("nodeids", nd["id"]), ("ids", nd["cls"]), ("weights", nd["weight"])):
                    a["class_" + k].append(v)
    node = helper.make_node("TreeEnsembleClassifier", ["features"], ["label", "proba"], domain="ai.onnx.ml",
                            classlabels_int64s=list(range(classes)), post_transform="SOFTMAX" if softmax else "NONE",
                            **a)
    graph = helper.make_graph([node], "forest",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, features])],
                              [helper.make_tensor_value_info("proba", TensorProto.FLOAT, [None, classes])])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17),
                                                                   helper.make_opsetid("ai.onnx.ml", 1)])
    path.write_bytes(model.SerializeToString())
    return path


def python_forest(x, t: TreeEnsemble) -> np.ndarray:
    """TreeEnsemble's layout walked in plain Python (float32 compares and sums, softmax as the kernel)."""
    out = np.zeros((len(x), t.classes), np.float32)
    for r, row in enumerate(x):
        for j in t.roots:
            while t.nodes[j, 1] != -1:
                thr, f, yes, no = t.nodes[j]
                v = row[int(f) if f >= 0 else int(-f - 2)]
                go = t.nan_true[j] if np.isnan(v) else (v <= thr if f >= 0 else v < thr)
                j = int(yes if go else no)
            out[r, int(t.nodes[j, 2])] += t.nodes[j, 3]
        if t.softmax:
            e = np.exp(out[r] - out[r].max())
            out[r] = e / e.astype(np.float64).sum()
    return out


@pytest.mark.parametrize("softmax", [True, False])
def test_forest_equals_onnx_runtime_and_a_python_walk(tmp_path, softmax):
    import onnxruntime as ort
    rng = np.random.default_rng(1 + softmax)
    for case, (trees, F, C, depth) in enumerate(((1, 1, 3, 0), (5, 3, 3, 3), (40, 6, 5, 6), (120, 9, 4, 8))):
        path = onnx_forest(tmp_path / f"forest{case}.onnx", random_trees(rng, trees, F, C, depth), F, C, softmax)
        t = TreeEnsemble.from_onnx(path)
        kids = t.nodes[:, 1] != -1
        assert (t.nodes[kids, 2:] > np.nonzero(kids)[0][:, None]).all()     # children come after their parent
        x = rng.normal(size=(257, F)).astype(np.float32)
        x[rng.random(x.shape) < 0.1] = np.nan
        x[::11] = t.nodes[rng.integers(len(t.nodes), size=(len(x[::11]), F)), 0]   # exactly on thresholds
        got = t(x)
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["proba"], {"features": x})[0]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(got, python_forest(x, t), atol=1e-6, rtol=1e-6)
        assert np.array_equal(t(x[:1]), got[:1]) and np.array_equal(t(x[3:9]), got[3:9])   # rows independent


# ---- features, confidence -------------------------------------------------------------------------------------

P, WIDTH, TOKENS, CLASSES = 3, 16, 6, 7
FEAT = 6 + P                                        # the controller's features: stats, confidence, projected


def segment_0(rng, n: int, width: int = WIDTH, tokens: int = TOKENS, classes: int = CLASSES) -> dict:
    """Random segment 0 feed and outputs of both kinds, and a projection: the kernels' first 8 arguments."""
    mask = (rng.random((n, tokens)) < 0.6).astype(np.int64)
    mask[::4] = 0                                                  # rows with no tokens: pooled over 1
    mask[1::4] = 1
    return {"pixels": rng.normal(size=(n, 1, 8, 8)).astype(np.float32), "mask": mask,
            "ids": rng.integers(0, 100, (n, tokens)),
            "hidden": (rng.normal(size=(n, tokens, width)) * 2 + rng.normal(size=(n, 1, width))).astype(np.float32),
            "logits": (rng.normal(size=(n, classes)) * 3).astype(np.float32),
            "weight": (rng.normal(size=(width, P)) / np.sqrt(width)).astype(np.float32),
            "bias": rng.normal(size=P).astype(np.float32), "eps": 1e-5, "max_len": float(tokens + 2)}


def feature_inputs(s: dict, kind: str = "image") -> dict:
    return {"pixels": s["pixels"] if kind == "image" else None, "mask": s["mask"] if kind == "text" else None,
            "hidden": s["hidden"], "logits": s["logits"], "weight": s["weight"], "bias": s["bias"], "eps": s["eps"],
            "max_len": s["max_len"]}


def reference_features(s: dict, kind: str) -> np.ndarray:
    projection = Projection(s["weight"], s["bias"], s["eps"])
    if kind == "image":
        return from_segment_0(s["pixels"], None, s["hidden"], s["logits"], projection)
    return from_segment_0(s["ids"], s["mask"], s["hidden"], s["logits"], projection, s["max_len"])


@pytest.mark.parametrize("width", [WIDTH, 1100])               # 1100: the pooled vector on the heap
@pytest.mark.parametrize("kind", ["image", "text"])
def test_features_equal_from_segment_0(kind, width):
    rng = np.random.default_rng(10 + width)
    s = segment_0(rng, 37, width=width)
    out = np.full((37, FEAT), 7, np.float32)
    K.features(*feature_inputs(s, kind).values(), out)
    want = reference_features(s, kind)
    assert want.shape == out.shape and want.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)
    if kind == "text":
        assert (out[::4, 0] == 0).all() and (out[:, 1:3] == 0).all()
        np.testing.assert_allclose(out[1::4, 0], TOKENS / s["max_len"], rtol=1e-6)


def test_features_of_rows_without_tokens_are_the_bias():
    """An all-zero mask pools to zeros (divided by max(count, 1)), normalises to zeros: projected = bias."""
    rng = np.random.default_rng(11)
    s = segment_0(rng, 4)
    s["mask"][:] = 0
    out = np.empty((4, FEAT), np.float32)
    K.features(*feature_inputs(s, "text").values(), out)
    assert np.array_equal(out[:, 6:], np.broadcast_to(s["bias"], (4, P)))
    np.testing.assert_allclose(out, reference_features(s, "text"), atol=1e-6, rtol=0)


def confidence_cases(rng):
    yield rng.normal(size=(50, 10)).astype(np.float32)
    yield rng.normal(size=(20, 2)).astype(np.float32)
    yield (rng.normal(size=(5, 1000)) * 5).astype(np.float32)
    for scale in (30.0, 1e4, 1e30, 1e38):
        yield (rng.normal(size=(17, 5)) * scale).astype(np.float32)
    ties = rng.normal(size=(12, 6)).astype(np.float32)
    ties[0] = 0.0                                                # all equal: margin 0, entropy 1
    ties[1, :2] = ties[1].max() + 1                              # two maxima: margin 0
    ties[2, 4:] = ties[2].max() + 1                              # two maxima at the end
    ties[3] = [5, 5, 5, -1, -1, -1]
    ties[4] = np.round(ties[4])
    ties[5] = [1, 2, 3, 3, 2, 1]
    yield ties
    yield np.array([[1e4, -1e4], [-1e4, 1e4], [3e38, -3e38], [0, 0], [-3e38, -3e38]], np.float32)


def test_confidence_equals_features_confidence():
    rng = np.random.default_rng(12)
    for logits in confidence_cases(rng):
        out = np.full((len(logits), 3), 7, np.float32)
        K.confidence(logits, out)
        want = confidence(logits)
        np.testing.assert_allclose(out, want, atol=1e-6, rtol=0)
        assert np.isfinite(out).all()
    out = np.empty((2, 3), np.float32)
    K.confidence(np.array([[0, 0, 0, 0], [2, 2, -1, -1]], np.float32), out)
    np.testing.assert_allclose(out[0], [0.25, 0.0, 1.0], atol=1e-7)
    assert out[1, 1] == 0.0


def test_confidence_bad_input():
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="^logits: shape"):
        K.confidence(np.zeros((3, 1), np.float32), np.empty((3, 3), np.float32))
    with pytest.raises(ValueError, match="^out: shape"):
        K.confidence(logits, np.empty((3, 2), np.float32))
    with pytest.raises(ValueError, match="^out: shape"):
        K.confidence(logits, np.empty((2, 3), np.float32))
    with pytest.raises(TypeError, match="^logits: float32 expected"):
        K.confidence(logits.astype(np.float64), np.empty((3, 3), np.float32))
    with pytest.raises(TypeError, match="^out: float32 expected"):
        K.confidence(logits, np.empty((3, 3)))
    with pytest.raises(TypeError, match=r"^confidence\(\) takes 2 arguments"):
        K.confidence(logits)


# ---- first_boundary = features + forest + start + boundary(0), oneshot = features + forest + target ----------

@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    E, F, H, n = 5, FEAT, 16, 33
    path = onnx_forest(tmp_path_factory.mktemp("kernels") / "p.onnx", random_trees(rng, 30, F, E, 5), F, E, True)
    t = TreeEnsemble.from_onnx(path)
    p = LSTMPolicy(state_size(E), H).eval().arrays(True)
    used = (np.cumsum(rng.random(E)) / E).astype(np.float32)
    plain = np.cumsum(rng.random(E) + 0.05) / E
    x = rng.normal(size=(n, F)).astype(np.float32)
    lam = (rng.random(n) + 0.01).astype(np.float32)
    return {"t": t, "p": p, "used": used, "plain": plain, "x": x, "seg": segment_0(rng, n), "lam": lam, "n": n,
            "E": E, "W": state_size(E) + 2 * H + E}


def outputs(d):
    n, E = d["n"], d["E"]
    return (np.full((n, FEAT), 7, np.float32), np.full((n, E), 7, np.float32), np.full((n, d["W"]), 7, np.float32),
            np.full((n, E), 7, np.int64), np.zeros(n, bool))


FIRST_OUT = ("features", "proba", "st", "preds", "stop")
ONESHOT_OUT = ("features", "proba", "target")


def first_args(d, kind="image", **change):
    t, p = d["t"], d["p"]
    features, proba, st, preds, stop = outputs(d)
    args = feature_inputs(d["seg"], kind)
    args.update(features=features, lam=d["lam"], nodes=t.nodes, nan_true=t.nan_true, roots=t.roots,
                softmax=t.softmax, use_predictor=p.use_predictor, w=p._packed, used=d["used"], proba=proba, st=st,
                preds=preds, stop=stop)
    args.update(change)
    assert len(args) == 21
    return args


def oneshot_args(d, kind="image", **change):
    t = d["t"]
    features, proba = outputs(d)[:2]
    args = feature_inputs(d["seg"], kind)
    args.update(features=features, lam=d["lam"], nodes=t.nodes, nan_true=t.nan_true, roots=t.roots,
                softmax=t.softmax, plain=d["plain"], proba=proba, target=np.full(d["n"], 7, np.int64))
    args.update(change)
    assert len(args) == 17
    return args


def features_args(d, kind="image", **change):
    args = feature_inputs(d["seg"], kind)
    args.update(out=outputs(d)[0])
    args.update(change)
    return args


@pytest.mark.parametrize("kind", ["image", "text"])
@pytest.mark.parametrize("use_predictor", [True, False])
def test_first_boundary_equals_features_forest_start_boundary(parts, use_predictor, kind):
    d, t, p = parts, parts["t"], parts["p"]
    a = first_args(d, kind, use_predictor=use_predictor)
    K.first_boundary(*a.values())
    features, proba, st, preds, stop = outputs(d)
    K.features(*feature_inputs(d["seg"], kind).values(), features)
    K.forest(features, t.nodes, t.nan_true, t.roots, t.softmax, proba)
    K.start(proba, d["lam"], use_predictor, st, preds)
    K.boundary(0, st, preds, d["seg"]["logits"], p._packed, d["used"], stop)
    for name, want in zip(FIRST_OUT, (features, proba, st, preds, stop)):
        assert np.array_equal(a[name], want), name
    np.testing.assert_allclose(features, reference_features(d["seg"], kind), atol=1e-5, rtol=0)
    assert np.array_equal(proba, t(features)) and np.array_equal(preds[:, 0], d["seg"]["logits"].argmax(1))
    E = d["E"]
    np.testing.assert_allclose(st[:, E + 1:E + 4], confidence(d["seg"]["logits"]), atol=1e-6, rtol=0)


def numpy_target(proba, lam, plain):
    return (np.cumsum(proba, 1) - lam[:, None] * plain[None]).argmax(1)


@pytest.mark.parametrize("kind", ["image", "text"])
def test_oneshot_equals_features_forest_and_the_numpy_target(parts, kind):
    d, t = parts, parts["t"]
    a = oneshot_args(d, kind)
    K.oneshot(*a.values())
    features, proba = outputs(d)[:2]
    K.features(*feature_inputs(d["seg"], kind).values(), features)
    K.forest(features, t.nodes, t.nan_true, t.roots, t.softmax, proba)
    assert np.array_equal(a["features"], features) and np.array_equal(a["proba"], proba)
    assert np.array_equal(proba, t(features))
    np.testing.assert_allclose(features, reference_features(d["seg"], kind), atol=1e-5, rtol=0)
    want = numpy_target(proba, d["lam"], d["plain"])
    assert a["target"].dtype == np.int64 and np.array_equal(a["target"], want)
    assert len(np.unique(want)) > 1                                    # the rows do not all pick one exit


def test_oneshot_ties_take_the_first_exit(parts):
    """Exits 3 and 4 get no mass (their leaves moved to exit 2, no softmax, weights positive) and cost what exit
    2 costs: every row whose best is exit 2 ties with 3 and 4 and must pick 2, as numpy's argmax does."""
    d, t = parts, parts["t"]
    nodes = t.nodes.copy()
    leaf = nodes[:, 1] == -1
    nodes[leaf & (nodes[:, 2] >= 3), 2] = 2
    nodes[leaf, 3] = np.abs(nodes[leaf, 3])                            # mass only grows
    plain = d["plain"].copy()
    plain[3:] = plain[2]
    lam = d["lam"].copy()
    lam[::3] = 0.0                                                     # free compute: the mass alone
    lam[1::3] *= 100.0                                                 # dear compute: early exits win
    a = oneshot_args(d, nodes=nodes, softmax=False, plain=plain, lam=lam)
    K.oneshot(*a.values())
    proba = a["proba"]
    assert (proba[:, 3:] == 0).all() and (proba[:, :3] >= 0).all()
    want = numpy_target(proba, lam, plain)
    assert np.array_equal(a["target"], want)
    assert (a["target"] < 3).all() and (a["target"][::3] == 2).all() and (a["target"] < 2).any()


# ---- bad input -------------------------------------------------------------------------------------------------

def bad_first(d, exc, words, **change):
    a = first_args(d, **change)
    before = [np.array(a[k], copy=True) for k in FIRST_OUT]
    with pytest.raises(exc, match=words):
        K.first_boundary(*a.values())
    return a, before


@pytest.mark.parametrize("change, exc, words", [
    (lambda d: {"features": np.zeros((d["n"], FEAT))}, TypeError, "^features: float32 expected"),
    (lambda d: {"logits": d["seg"]["logits"].astype(np.float16)}, TypeError, "^logits: float32 expected"),
    (lambda d: {"roots": d["t"].roots.astype(np.int32)}, TypeError, "^roots: int64 expected"),
    (lambda d: {"nan_true": d["t"].nan_true.astype(np.int16)}, TypeError, "^nan_true: bool expected"),
    (lambda d: {"preds": np.zeros((d["n"], d["E"]), np.float64)}, TypeError, "^preds: int64 expected"),
    (lambda d: {"features": np.asfortranarray(np.zeros((d["n"], FEAT), np.float32))}, TypeError,
     "^features: not C-contiguous"),
    (lambda d: {"logits": np.zeros((d["n"], 2 * CLASSES), np.float32)[:, ::2]}, TypeError,
     "^logits: not C-contiguous"),
    (lambda d: {"st": np.zeros((d["W"], d["n"]), np.float32).T}, TypeError, "^st: not C-contiguous"),
    (lambda d: {"w": np.frombuffer(b"\0" + d["p"]._packed.tobytes(), np.float32, d["p"]._packed.size,
                                   1).reshape(d["p"]._packed.shape)}, TypeError, "^w: not aligned"),
    (lambda d: {"proba": None}, TypeError, "^proba: a float32 array expected, got NoneType"),
    (lambda d: {"stop": np.zeros(d["n"], bool)[None]}, ValueError, "^stop: 1 dimension"),
    (lambda d: {"nodes": d["t"].nodes[:, :3].copy()}, ValueError, "^nodes: shape"),
    (lambda d: {"nan_true": d["t"].nan_true[:-1].copy()}, ValueError, "^nan_true: shape"),
    (lambda d: {"lam": d["lam"][:-1].copy()}, ValueError, "^hidden, lam: shape"),
    (lambda d: {"logits": np.zeros((d["n"], 1), np.float32)}, ValueError, "^logits: shape"),
    (lambda d: {"logits": np.zeros((d["n"], 0), np.float32)}, ValueError, "^logits: shape"),
    (lambda d: {"logits": np.zeros((d["n"] - 1, CLASSES), np.float32)}, ValueError, "^logits: shape"),
    (lambda d: {"used": d["used"][:-1].copy()}, ValueError, "^used: shape"),
    (lambda d: {"w": d["p"]._packed[:-1].copy()}, ValueError, "^w: shape"),
    (lambda d: {"st": np.zeros((d["n"], d["W"] - 1), np.float32)}, ValueError, "^st: shape"),
    (lambda d: {"st": np.zeros((d["n"] - 1, d["W"]), np.float32)}, ValueError, "^st: shape"),
    (lambda d: {"preds": np.zeros((d["n"], d["E"] + 1), np.int64)}, ValueError, "^proba: shape"),
    (lambda d: {"proba": np.zeros((d["n"], d["E"] - 1), np.float32)}, ValueError, "^proba: shape"),
    (lambda d: {"features": np.zeros((d["n"] - 1, FEAT), np.float32)}, ValueError, "^features: shape"),
    (lambda d: {"features": np.zeros((d["n"], FEAT + 1), np.float32)}, ValueError, "^features: shape"),
    (lambda d: {"preds": np.zeros((d["n"], 0), np.int64)}, ValueError, "^preds: shape"),
    (lambda d: {"pixels": None}, TypeError, "^pixels, mask: exactly one"),
    (lambda d: {"mask": d["seg"]["mask"]}, TypeError, "^pixels, mask: exactly one"),
    (lambda d: {"hidden": d["seg"]["hidden"][:, :, :-1].copy()}, ValueError, "^weight: shape"),
    (lambda d: {"eps": "1e-5"}, TypeError, "^eps, max_len: numbers expected"),
])
def test_bad_buffers_raise_naming_the_argument_and_write_nothing(parts, change, exc, words):
    a, before = bad_first(parts, exc, words, **change(parts))
    for name, old in zip(FIRST_OUT, before):
        if isinstance(a[name], np.ndarray):
            assert np.array_equal(a[name], old), f"{name} written before the check failed"


# the 8 feature inputs and the features output, as every kernel that reads them checks them (image unless the
# change passes a mask)
FEATURE_INPUT_CASES = [
    (lambda d: {"pixels": None}, TypeError, "^pixels, mask: exactly one"),
    (lambda d: {"mask": d["seg"]["mask"]}, TypeError, "^pixels, mask: exactly one"),
    (lambda d: {"pixels": None, "mask": d["seg"]["mask"].astype(np.int32)}, TypeError, "^mask: int64 expected"),
    (lambda d: {"pixels": None, "mask": d["seg"]["mask"].astype(np.float32)}, TypeError, "^mask: int64 expected"),
    (lambda d: {"pixels": None, "mask": d["seg"]["mask"].astype(bool)}, TypeError, "^mask: int64 expected"),
    (lambda d: {"pixels": None, "mask": d["seg"]["mask"][:, :-1].copy()}, ValueError, "^mask: shape"),
    (lambda d: {"pixels": None, "mask": d["seg"]["mask"][:, 0].copy()}, ValueError, "^mask: 2 dimension"),
    (lambda d: {"pixels": d["seg"]["pixels"].astype(np.float64)}, TypeError, "^pixels: float32 expected"),
    (lambda d: {"pixels": d["seg"]["pixels"][:, 0]}, ValueError, "^pixels: 4 dimension"),
    (lambda d: {"pixels": d["seg"]["pixels"][:-1].copy()}, ValueError, "^pixels: shape"),
    (lambda d: {"pixels": np.zeros((d["n"], 1, 0, 8), np.float32)}, ValueError, "^pixels: shape"),
    (lambda d: {"pixels": [[0.0]]}, TypeError, "^pixels: a float32 array expected, got list"),
    (lambda d: {"hidden": d["seg"]["hidden"][:, :, :-1].copy()}, ValueError, "^weight: shape"),
    (lambda d: {"weight": d["seg"]["weight"][1:].copy()}, ValueError, "^weight: shape"),
    (lambda d: {"bias": d["seg"]["bias"][1:].copy()}, ValueError, "^bias: shape"),
    (lambda d: {"hidden": d["seg"]["hidden"][:, 0].copy()}, ValueError, "^hidden: 3 dimension"),
    (lambda d: {"hidden": d["seg"]["hidden"].astype(np.float64)}, TypeError, "^hidden: float32 expected"),
    (lambda d: {"hidden": d["seg"]["hidden"][:, :0].copy(), "pixels": d["seg"]["pixels"]}, ValueError,
     "^hidden: shape"),
    (lambda d: {"hidden": d["seg"]["hidden"][:-1].copy()}, ValueError, "^pixels: shape"),
    (lambda d: {"logits": np.zeros((d["n"], 1), np.float32)}, ValueError, "^logits: shape"),
    (lambda d: {"logits": d["seg"]["logits"][:-1].copy()}, ValueError, "^logits: shape"),
    (lambda d: {"logits": d["seg"]["logits"].astype(np.float64)}, TypeError, "^logits: float32 expected"),
    (lambda d: {"weight": d["seg"]["weight"].T}, TypeError, "^weight: not C-contiguous"),
    (lambda d: {"eps": None}, TypeError, "^eps, max_len: numbers expected"),
    (lambda d: {"max_len": "12"}, TypeError, "^eps, max_len: numbers expected"),
    (lambda d: {"OUT": np.zeros((d["n"], FEAT - 1), np.float32)}, ValueError, "^features: shape"),
    (lambda d: {"OUT": np.zeros((d["n"] + 1, FEAT), np.float32)}, ValueError, "^features: shape"),
    (lambda d: {"OUT": np.zeros((d["n"], FEAT), np.float64)}, TypeError, "^features: float32 expected"),
    (lambda d: {"OUT": np.zeros(d["n"] * FEAT, np.float32)}, ValueError, "^features: 2 dimension"),
]

KERNEL_ARGS = {"features": (features_args, "out", ("out",)),
               "oneshot": (oneshot_args, "features", ONESHOT_OUT),
               "first_boundary": (first_args, "features", FIRST_OUT)}


def read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("kernel", list(KERNEL_ARGS))
@pytest.mark.parametrize("change, exc, words", FEATURE_INPUT_CASES)
def test_bad_feature_inputs_raise_in_every_kernel(parts, kernel, change, exc, words):
    make, out_name, outs = KERNEL_ARGS[kernel]
    change = change(parts)
    if "OUT" in change:
        change[out_name] = change.pop("OUT")
    a = make(parts, **change)
    before = {k: np.array(a[k], copy=True) for k in outs}
    with pytest.raises(exc, match=words):
        getattr(K, kernel)(*a.values())
    for name, old in before.items():
        assert np.array_equal(a[name], old), f"{name} written before the check failed"


@pytest.mark.parametrize("change, exc, words", [
    (lambda d: {"plain": d["plain"].astype(np.float32)}, TypeError, "^plain: float64 expected"),
    (lambda d: {"plain": d["plain"][:-1].copy()}, ValueError, "^lam, target, plain: shape"),
    (lambda d: {"lam": d["lam"][1:].copy()}, ValueError, "^lam, target, plain: shape"),
    (lambda d: {"lam": d["lam"].astype(np.float64)}, TypeError, "^lam: float32 expected"),
    (lambda d: {"target": np.zeros(d["n"], np.int32)}, TypeError, "^target: int64 expected"),
    (lambda d: {"target": np.zeros(d["n"] - 1, np.int64)}, ValueError, "^lam, target, plain: shape"),
    (lambda d: {"target": read_only(np.zeros(d["n"], np.int64))}, TypeError, "^target: .*read-only"),
    (lambda d: {"proba": np.zeros((d["n"] - 1, d["E"]), np.float32)}, ValueError, "^proba: shape"),
    (lambda d: {"proba": np.zeros((d["n"], 0), np.float32), "plain": np.zeros(0)}, ValueError, "^proba: shape"),
    (lambda d: {"roots": np.array([-1], np.int64)}, ValueError, "^roots: tree 0"),
    (lambda d: {"nodes": d["t"].nodes[:-1].copy()}, ValueError, "^nan_true: shape"),
    (lambda d: {"features": read_only(np.zeros((d["n"], FEAT), np.float32))}, TypeError, "^features: .*read-only"),
])
def test_bad_oneshot_buffers(parts, change, exc, words):
    a = oneshot_args(parts, **change(parts))
    before = {k: np.array(a[k], copy=True) for k in ONESHOT_OUT}
    with pytest.raises(exc, match=words):
        K.oneshot(*a.values())
    for name, old in before.items():
        assert np.array_equal(a[name], old), f"{name} written before the check failed"


def test_oneshot_with_fewer_exits_than_the_forest_fails_at_the_visit(parts):
    """proba's columns are all the kernel knows of the forest's classes: a leaf of class 4 with 4 columns is
    found when a row reaches it (features already written, as any tree error found at the visit)."""
    d = parts
    a = oneshot_args(d, proba=np.zeros((d["n"], d["E"] - 1), np.float32), plain=d["plain"][:-1].copy())
    with pytest.raises(ValueError, match="^nodes: node [0-9]+ has a class index outside out's columns"):
        K.oneshot(*a.values())


def test_argument_counts(parts):
    for kernel, (make, _, _) in KERNEL_ARGS.items():
        a = list(make(parts).values())
        with pytest.raises(TypeError, match=rf"^{kernel}\(\) takes {len(a)} arguments \({len(a) - 1} given\)"):
            getattr(K, kernel)(*a[:-1])
        with pytest.raises(TypeError, match=rf"^{kernel}\(\) takes {len(a)} arguments"):
            getattr(K, kernel)(*a, None)


def taken(t: TreeEnsemble, j: int) -> int:
    """The child column (2: true, 3: false) a row of zeros takes at branch j."""
    threshold, f = t.nodes[j, 0], t.nodes[j, 1]
    return 2 if (0 <= threshold if f >= 0 else 0 < threshold) else 3


@pytest.mark.parametrize("where, value, words", [
    ("branch", 1.0, None), ("branch", -0.5, None), ("branch", float(FEAT), "feature index"), ("branch", -FEAT - 2.0, "feature index"),
    ("branch", -FEAT - 3.0, "feature index"), ("branch", -FEAT - 1.0, None),
    ("branch", np.nan, "feature index"), ("branch", 1e30, "feature index"),
    ("child", 0.0, "not a later node"), ("child", -3.0, "not a later node"), ("child", 1e9, "not a later node"),
    ("child", np.nan, "not a later node"), ("child", "itself", "not a later node"),
    ("child", "itself + 0.5", "not a later node"),
    ("leaf", 4.9, None), ("leaf", 5.0, "class index"), ("leaf", -1.0, "class index"), ("leaf", np.inf, "class index"),
])
def test_bad_trees_raise_at_the_visit(parts, where, value, words):
    """Every node a row visits is checked: its feature against x's columns, its class against out's, and its child
    must come after it (TreeEnsemble's depth-first layout), so that no walk loops or leaves the array."""
    t, x = parts["t"], np.zeros((1, FEAT), np.float32)
    b = next(int(r) for r in t.roots if t.nodes[r, 1] != -1)            # a tree's root that is a branch
    j = b
    while t.nodes[j, 1] != -1:                                           # the zero row's leaf in that tree
        j = int(t.nodes[j, taken(t, j)])
    nodes = t.nodes.copy()
    value = {"itself": b, "itself + 0.5": b + 0.5}.get(value, value)
    if where == "leaf":
        nodes[j, 2] = value
    else:
        nodes[b, 1 if where == "branch" else taken(t, b)] = value
    out = np.empty((1, t.classes), np.float32)
    if words is None:                                                    # still in range: a walk, no error
        K.forest(x, nodes, t.nan_true, t.roots, True, out)
        np.testing.assert_allclose(out.sum(), 1.0, rtol=1e-5)
        return
    with pytest.raises(ValueError, match=f"^nodes: node {j if where == 'leaf' else b} has .*{words}"):
        K.forest(x, nodes, t.nan_true, t.roots, True, out)


@pytest.mark.parametrize("roots", [[-1], [10 ** 6], [0, 2 ** 62]])
def test_roots_out_of_range(parts, roots):
    t = parts["t"]
    with pytest.raises(ValueError, match="^roots: tree"):
        K.forest(parts["x"], t.nodes, t.nan_true, np.array(roots, np.int64), True,
                 np.empty((parts["n"], 5), np.float32))


def test_empty_and_degenerate_inputs(parts):
    t = parts["t"]
    out = np.full((0, 5), 3, np.float32)
    K.forest(np.zeros((0, FEAT), np.float32), t.nodes, t.nan_true, t.roots, True, out)     # no rows: nothing to do
    out = np.full((2, 4), 3, np.float32)
    K.forest(np.zeros((2, 0), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, bool), np.zeros(0, np.int64),
             True, out)                                                                  # no trees: uniform
    assert np.array_equal(out, np.full((2, 4), 0.25, np.float32))
    with pytest.raises(ValueError, match="^nodes: node 0 has a feature index"):        # no columns to read
        K.forest(np.zeros((1, 0), np.float32), np.array([[0, 0, 1, 1], [0, -1, 0, 1]], np.float32),
                 np.zeros(2, bool), np.zeros(1, np.int64), True, np.empty((1, 2), np.float32))
    with pytest.raises(ValueError, match="^out: shape"):
        K.forest(parts["x"], t.nodes, t.nan_true, t.roots, True, np.empty((parts["n"], 0), np.float32))


def test_policy_calls_check_k_and_their_arrays(parts):
    d, p = parts, parts["p"]
    st, preds = np.zeros((d["n"], d["W"]), np.float32), np.zeros((d["n"], d["E"]), np.int64)
    stop = np.zeros(d["n"], bool)
    args = (st, preds, d["seg"]["logits"], p._packed, d["used"], stop)
    for k in (-1, d["E"], 2 ** 40):
        with pytest.raises(ValueError, match="^k: boundary"):
            K.boundary(k, *args)
    for k in (1.5, "1", None):
        with pytest.raises(TypeError, match="^k: an int"):
            K.boundary(k, *args)
    K.boundary(np.int64(1), *args)                             # any integer
    with pytest.raises(TypeError, match=r"^boundary\(\) takes 7 arguments"):
        K.boundary(0, *args[:-1])
    with pytest.raises(TypeError, match="^st: a float32 array expected, got list"):
        K.boundary(0, st.tolist(), *args[1:])
    ro = st.copy()
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="^st: .*read-only"):
        K.boundary(0, ro, *args[1:])
    with pytest.raises(TypeError, match="^index: int64 expected"):
        K.top1(d["seg"]["logits"], np.empty(d["n"], np.int32), np.empty(d["n"]))
    with pytest.raises(ValueError, match="^score: shape"):
        K.top1(d["seg"]["logits"], np.empty(d["n"], np.int64), np.empty(d["n"] + 1))
    with pytest.raises(ValueError, match="^proba: shape"):
        K.start(d["x"], d["lam"], True, st, preds)
    with pytest.raises(ValueError, match="^st: shape"):                      # 2H must be even
        K.start(np.zeros((d["n"], d["E"]), np.float32), d["lam"], True, st[:, :-1].copy(), preds)


def test_buffers_are_released_on_every_path(parts):
    """A bytearray cannot be resized while a buffer of it is held: after each call, ok or failing, it can."""
    d, t = parts, parts["t"]
    ba = bytearray(np.zeros((d["n"], 5), np.float32).tobytes())
    good = (d["x"], t.nodes, t.nan_true, t.roots, True)
    for args in (good, (d["x"].astype(np.float64),) + good[1:], (d["x"], t.nodes[:, :3].copy()) + good[2:],
                 (d["x"], t.nodes, t.nan_true, np.array([-1], np.int64), True)):
        mv = memoryview(ba).cast("f", (d["n"], 5))
        try:
            K.forest(*args, mv)
        except (TypeError, ValueError):
            pass
        mv.release()                                  # BufferError if the kernel still held it
        ba += b"\0" * 4
        del ba[-4:]
    assert np.array_equal(np.frombuffer(ba, np.float32).reshape(d["n"], 5), t(d["x"]))   # the good call wrote


def test_feature_kernels_release_their_buffers(parts):
    """features and oneshot, ok or failing after the features output was taken: it can be resized after."""
    d = parts
    ba = bytearray(d["n"] * FEAT * 4)
    for kernel, make, change in (("features", features_args, {}), ("oneshot", oneshot_args, {}),
                                 ("features", features_args, {"weight": d["seg"]["weight"][1:].copy()}),
                                 ("oneshot", oneshot_args, {"target": np.zeros(d["n"], np.int32)}),
                                 ("oneshot", oneshot_args, {"roots": np.array([-1], np.int64)}),
                                 ("first_boundary", first_args, {"stop": np.zeros(1, bool)})):
        mv = memoryview(ba).cast("f", (d["n"], FEAT))
        a = make(d, **change)
        a["out" if kernel == "features" else "features"] = mv
        try:
            getattr(K, kernel)(*a.values())
        except (TypeError, ValueError):
            pass
        mv.release()
        ba += b"\0" * 4
        del ba[-4:]
    want = np.empty((d["n"], FEAT), np.float32)
    K.features(*feature_inputs(d["seg"]).values(), want)
    assert np.array_equal(np.frombuffer(ba, np.float32).reshape(d["n"], FEAT), want)   # the good calls wrote


def test_accepts_any_buffer_with_the_right_format(parts):
    d, t = parts, parts["t"]
    x = memoryview(bytearray(d["x"].tobytes())).cast("f", d["x"].shape)
    nodes = memoryview(t.nodes.tobytes()).cast("f", t.nodes.shape)                    # bytes: read-only is fine
    nan_true = memoryview(t.nan_true.astype(np.uint8).tobytes())                       # 'B' as bool
    out = np.empty((d["n"], 5), np.float32)
    K.forest(x, nodes, nan_true, t.roots.astype("<i8"), 1, out)
    assert np.array_equal(out, t(d["x"]))
    with pytest.raises(TypeError, match="^roots: int64 expected"):
        K.forest(x, nodes, nan_true, t.roots.astype(">i8"), 1, out)                    # not this machine's order


# ---- the Python side -------------------------------------------------------------------------------------------

BLOCK_KERNELS = textwrap.dedent("""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "edge_runtime._kernels":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
""")

NOT_BUILT_CHECK = BLOCK_KERNELS + textwrap.dedent("""
    import numpy as np
    from edge_runtime.core.controller import Controller      # the modules still import
    from edge_runtime.core.errors import EdgeError
    from edge_runtime.core.predictor import TreeEnsemble
    t = TreeEnsemble(np.zeros((1, 4), np.float32), np.zeros(1, bool), np.zeros(1, np.int64), 2, True, 1)
    from edge_runtime.core.kernels import kernels
    for use in (lambda: t(np.zeros((1, 1), np.float32)), lambda: kernels.features, lambda: kernels.oneshot):
        try:
            use()
        except EdgeError as err:
            print(int(err.exit), err)
""")


def test_a_missing_extension_is_one_line():
    r = subprocess.run([sys.executable, "-c", NOT_BUILT_CHECK], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"3 {NOT_BUILT}"] * 3


def test_the_device_modules_never_import_numba():
    code = ("import sys, edge_runtime.core.controller, edge_runtime.core.policy, edge_runtime.core.predictor, "
            "edge_runtime.core.kernels, edge_runtime.core.features\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'llvmlite')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_boundary_converts_other_dtypes(parts):
    """PolicyArrays.boundary and Controller-style callers may hand float64 logits: converted, same answer."""
    d, p = parts, parts["p"]
    st, preds = p.rollout(d["x"][:, :d["E"]], d["lam"])
    st2, preds2 = st.copy(), preds.copy()
    logits = d["seg"]["logits"]
    stop = p.boundary(0, st, preds, logits, d["used"])
    stop2 = p.boundary(0, st2, preds2, np.asfortranarray(logits.astype(np.float64)), d["used"].astype(np.float64))
    assert np.array_equal(stop, stop2) and np.array_equal(st, st2) and np.array_equal(preds, preds2)
    E = d["E"]
    np.testing.assert_allclose(st[:, E + 1:E + 4], confidence(logits), atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="^st: float32 expected"):
        p.boundary(1, st.astype(np.float64), preds, logits, d["used"])
    with pytest.raises(ValueError, match="^logits: shape"):
        p.boundary(1, st, preds, logits[:, :1], d["used"])
