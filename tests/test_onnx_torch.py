"""The torch backend's ONNX interpreter (edge_torch.onnx_torch) computes what ONNX Runtime computes,
on the shipped graphs and on one small graph per op and attribute, never reads device data on the host,
and refuses what it cannot run in one line."""
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch.overrides import TorchFunctionMode

from edge_torch.onnx_torch import OPS, TorchGraph
from edge_runtime.core.errors import EdgeError, Exit

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "digits-vit-tiny"
DEMO = ROOT / "engines" / "fmnist-vit-demo"    # gitignored: there once `make engines` (or the like) has run


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def graphs_of(engine: Path) -> list:
    return (sorted(engine.glob("segment_*.onnx")) + sorted(engine.glob("chain_*.onnx"))
            + sorted((engine / "reference").glob("*.onnx")))


def image_feeds(engine: Path, n: int) -> dict:
    """{file name: ONNX Runtime feed} for every graph of an image engine, on the first n reference rows:
    segment k > 0 reads segment k-1's hidden_out, chain_1_* reads segment 0's."""
    pixels = np.load(engine / "reference.npz")["pixels"][:n]
    feeds, x = {}, {"pixels": pixels}
    for path in sorted(engine.glob("segment_*.onnx"), key=lambda p: int(p.stem.split("_")[1])):
        feeds[path.name] = x
        x = {"hidden": session(path).run(["hidden_out"], x)[0]}
        if path.name == "segment_0.onnx":
            hidden0 = x
    for path in graphs_of(engine):
        if path.name not in feeds:
            feeds[path.name] = hidden0 if path.name.startswith("chain_1_") else {"pixels": pixels}
    return feeds


def assert_matches_ort(path: Path, feed: dict, atol: float = 1e-5):
    want = session(path).run(None, feed)
    graph = TorchGraph(path)
    got = graph({k: torch.from_numpy(v) for k, v in feed.items()})
    assert list(got) == graph.output_names == [o.name for o in session(path).get_outputs()]
    for name, w in zip(graph.output_names, want):
        g = got[name].numpy()
        assert g.shape == w.shape and g.dtype == w.dtype, (path.name, name)
        err = float(np.abs(g.astype(np.float64) - w).max()) if w.size else 0.0
        assert err <= atol, f"{path.name} {name}: max abs error {err:.3g}"


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("name", [p.relative_to(GOLDEN).as_posix() for p in graphs_of(GOLDEN)])
def test_golden_graphs_match_onnxruntime(name, n):
    path = GOLDEN / name
    assert_matches_ort(path, image_feeds(GOLDEN, n)[path.name])


@pytest.mark.skipif(not (DEMO / "reference.npz").is_file(), reason="engines/fmnist-vit-demo is not built here")
@pytest.mark.parametrize("n", [1, 5])
def test_demo_engine_graphs_match_onnxruntime(n):
    feeds = image_feeds(DEMO, n)
    for path in graphs_of(DEMO):
        assert_matches_ort(path, feeds[path.name])


# --- a text engine: a tiny BERT-style encoder, folded and exported here (about 10 s)

@pytest.fixture(scope="module")
def text_engine(tmp_path_factory):
    from edge_model.export import export_segments
    from edge_model.fold import fold_model
    from edge_model.presets import create_model
    torch.manual_seed(0)
    model = create_model("tweets-minilm", pretrained=False, depth=2, exits=(1, 2), dim=64, heads=4,
                         mlp_hidden=128, vocab=1000, max_len=16).eval()
    out = tmp_path_factory.mktemp("text")
    ids, mask = text_inputs(3)
    export_segments(fold_model(model), out, (torch.from_numpy(ids), torch.from_numpy(mask)))
    return out


def text_inputs(n: int):
    """Token ids and an attention mask with padding: row 0 holds 5 real tokens, row 2 holds 11."""
    rng = np.random.default_rng(n)
    ids = rng.integers(1, 1000, (n, 16)).astype(np.int64)
    mask = np.ones((n, 16), np.int64)
    mask[0, 5:] = 0
    if n > 2:
        mask[2, 11:] = 0
    return ids * mask, mask


def text_feeds(engine: Path, n: int) -> list:
    ids, mask = text_inputs(n)
    first = {"input_ids": ids, "attention_mask": mask}
    hidden = session(engine / "segment_0.onnx").run(["hidden_out"], first)[0]
    return [(engine / "segment_0.onnx", first),
            (engine / "segment_1.onnx", {"hidden": hidden, "attention_mask": mask})]


@pytest.mark.parametrize("n", [1, 5])
def test_text_segments_match_onnxruntime(text_engine, n):
    for path, feed in text_feeds(text_engine, n):
        assert feed["attention_mask"].min() == 0
        assert_matches_ort(path, feed)


def test_text_segments_in_half_stay_finite_with_the_mask(text_engine):
    """The mask's -3.4e38 would be -inf in float16 and 0 * -inf = NaN: clamped, the logits stay close."""
    for path, feed in text_feeds(text_engine, 5):
        want = session(path).run(["logits"], feed)[0]
        got = TorchGraph(path, half=True)({k: torch.from_numpy(v) for k, v in feed.items()})["logits"]
        assert got.dtype == torch.float16 and torch.isfinite(got).all()
        assert np.abs(got.float().numpy() - want).max() < 0.05


# --- float16

@pytest.mark.parametrize("engine", [GOLDEN, pytest.param(DEMO, marks=pytest.mark.skipif(
    not (DEMO / "reference.npz").is_file(), reason="engines/fmnist-vit-demo is not built here"))])
def test_half_agrees_with_fp32_onnxruntime_on_the_reference_batch(engine):
    n = len(np.load(engine / "reference.npz")["pixels"])
    feeds = image_feeds(engine, n)
    for path in graphs_of(engine):
        feed = feeds[path.name]
        want = session(path).run(["logits"], feed)[0]
        graph = TorchGraph(path, half=True)
        got = graph({k: torch.from_numpy(v) for k, v in feed.items()})
        assert all(v.dtype == torch.float16 for v in got.values()), path.name
        agree = (got["logits"].float().numpy().argmax(1) == want.argmax(1)).mean()
        assert agree >= 0.99, f"{path.name}: argmax agrees on {agree:.0%} of rows"


# --- one small graph per op and attribute, against ONNX Runtime

def make_graph(nodes, inputs, outputs, inits=(), opset=17):
    """A model of `nodes`; inputs/outputs as (name, TensorProto type, shape)."""
    vi = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    vo = [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs]
    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in inits]
    model = helper.make_model(helper.make_graph(nodes, "g", vi, vo, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def i64(*v):
    return np.array(v, np.int64)


F32, I64 = TensorProto.FLOAT, TensorProto.INT64
N = helper.make_node
X = [("x", F32, None)]
Y = [("y", F32, None)]
OP_CASES = {   # name: (nodes, inputs, outputs, initializers, feed)
    "conv-asymmetric-pads-strides-dilations-group": (
        [N("Conv", ["x", "w", "b"], ["y"], pads=[0, 1, 2, 1], strides=[2, 1], dilations=[1, 2], group=2)],
        X, Y, [("w", np.random.default_rng(0).standard_normal((4, 1, 3, 3), np.float32)),
               ("b", np.arange(4, dtype=np.float32))], {"x": (2, 2, 7, 8)}),
    "conv-same-upper": ([N("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])], X, Y,
                        [("w", np.random.default_rng(1).standard_normal((3, 2, 2, 3), np.float32))],
                        {"x": (1, 2, 7, 6)}),
    "conv-same-lower-1d": ([N("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER")], X, Y,
                           [("w", np.random.default_rng(2).standard_normal((2, 2, 4), np.float32))], {"x": (2, 2, 9)}),
    "conv-valid": ([N("Conv", ["x", "w"], ["y"], auto_pad="VALID")], X, Y,
                   [("w", np.ones((1, 2, 3, 3), np.float32))], {"x": (1, 2, 5, 5)}),
    "gemm-trans-alpha-beta": ([N("Gemm", ["x", "w", "c"], ["y"], transA=1, transB=1, alpha=0.5, beta=2.0)], X, Y,
                              [("w", np.ones((4, 3), np.float32)), ("c", np.arange(4, dtype=np.float32))],
                              {"x": (3, 5)}),
    "gemm-no-bias": ([N("Gemm", ["x", "w"], ["y"], alpha=3.0)], X, Y, [("w", np.ones((5, 2), np.float32))],
                     {"x": (3, 5)}),
    "layernorm-axis-1": ([N("LayerNormalization", ["x", "s", "b"], ["y"], axis=1, epsilon=1e-3)], X, Y,
                         [("s", np.full((3, 4), 2.0, np.float32)), ("b", np.ones((3, 4), np.float32))],
                         {"x": (2, 3, 4)}),
    "layernorm-broadcast-scale": ([N("LayerNormalization", ["x", "s"], ["y"], axis=-2)], X, Y,
                                  [("s", np.array([2.0, -1.0, 0.5, 3.0], np.float32))], {"x": (2, 3, 4)}),
    "softmax-axis-0": ([N("Softmax", ["x"], ["y"], axis=0)], X, Y, [], {"x": (3, 4)}),
    "logsoftmax": ([N("LogSoftmax", ["x"], ["y"])], X, Y, [], {"x": (3, 4)}),
    "reducemean-keepdims-0": ([N("ReduceMean", ["x"], ["y"], axes=[-1, 0], keepdims=0)], X, Y, [], {"x": (2, 3, 4)}),
    "reducemean-all": ([N("ReduceMean", ["x"], ["y"])], X, Y, [], {"x": (2, 3, 4)}),
    "reducesum-axes-input": ([N("ReduceSum", ["x", "a"], ["y"])], X, Y, [("a", i64(-2))], {"x": (2, 3, 4)}),
    "reducesum-empty-axes-noop": ([N("ReduceSum", ["x", "a"], ["y"], noop_with_empty_axes=1)], X, Y,
                                  [("a", np.zeros(0, np.int64))], {"x": (2, 3)}),
    "reducesum-no-axes": ([N("ReduceSum", ["x"], ["y"], keepdims=0)], X, Y, [], {"x": (2, 3)}),
    "reducemax": ([N("ReduceMax", ["x"], ["y"], axes=[1])], X, Y, [], {"x": (2, 3, 4)}),
    "slice-negative-steps-axes": ([N("Slice", ["x", "s", "e", "a", "st"], ["y"])], X, Y,
                                  [("s", i64(-1, 1)), ("e", i64(-100, 1000)), ("a", i64(2, 0)), ("st", i64(-2, 1))],
                                  {"x": (3, 4, 5)}),
    "slice-defaults-clamped": ([N("Slice", ["x", "s", "e"], ["y"])], X, Y,
                               [("s", i64(1, -3)), ("e", i64(2 ** 62, -1))], {"x": (3, 4)}),
    "transpose-default-perm": ([N("Transpose", ["x"], ["y"])], X, Y, [], {"x": (2, 3, 4)}),
    "transpose-perm": ([N("Transpose", ["x"], ["y"], perm=[1, 2, 0])], X, Y, [], {"x": (2, 3, 4)}),
    "reshape-zero-copies-dim": ([N("Reshape", ["x", "s"], ["y"])], X, Y, [("s", i64(0, -1))], {"x": (2, 3, 4)}),
    "reshape-from-shape-ops": ([N("Shape", ["x"], ["sh"], start=-2), N("Concat", ["m", "sh"], ["t"], axis=0),
                                N("Reshape", ["x", "t"], ["y"])], X, Y, [("m", i64(-1))], {"x": (2, 3, 4)}),
    "shape-gather-unsqueeze-expand": (
        [N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "i"], ["b"], axis=0), N("Unsqueeze", ["b", "a0"], ["b1"]),
         N("Concat", ["b1", "tail"], ["t"], axis=0), N("Expand", ["row", "t"], ["e"]), N("Add", ["e", "x"], ["y"])],
        X, Y, [("i", np.array(0, np.int64)), ("a0", i64(0)), ("tail", i64(1, 1)),
               ("row", np.arange(4, dtype=np.float32).reshape(1, 4))], {"x": (3, 2, 4)}),
    "expand-bidirectional": ([N("Expand", ["x", "s"], ["y"])], X, Y, [("s", i64(2, 1, 1))], {"x": (3, 4)}),
    "tile": ([N("Tile", ["x", "r"], ["y"])], X, Y, [("r", i64(2, 1, 3))], {"x": (2, 3, 2)}),
    "gather-negative-axis-1": ([N("Gather", ["x", "i"], ["y"], axis=1)], X, Y, [("i", i64(-1, 0, 2, -3).reshape(2, 2))],
                               {"x": (2, 3, 4)}),
    "gather-embedding": ([N("Gather", ["w", "ids"], ["y"])], [("ids", I64, None)], Y,
                         [("w", np.arange(30, dtype=np.float32).reshape(10, 3))], {"ids": ("int", (2, 5), 10)}),
    "split-attribute-free-equal": ([N("Split", ["x"], ["a", "b"], axis=-1), N("Sub", ["a", "b"], ["y"])], X, Y, [],
                                   {"x": (2, 6)}),
    "split-sizes-input": ([N("Split", ["x", "s"], ["a", "b", "c"], axis=1),
                           N("Concat", ["c", "a", "b"], ["y"], axis=1)], X, Y, [("s", i64(1, 3, 2))], {"x": (2, 6)}),
    "squeeze-unsqueeze-negative": ([N("Unsqueeze", ["x", "a"], ["u"]), N("Squeeze", ["u", "b"], ["y"])], X, Y,
                                   [("a", i64(-1, 0)), ("b", i64(-1))], {"x": (2, 3)}),
    "squeeze-all-ones": ([N("Squeeze", ["x"], ["y"])], X, Y, [], {"x": (1, 3, 1)}),
    "flatten-negative-axis": ([N("Flatten", ["x"], ["y"], axis=-1)], X, Y, [], {"x": (2, 3, 4)}),
    "flatten-axis-0": ([N("Flatten", ["x"], ["y"], axis=0)], X, Y, [], {"x": (2, 3)}),
    "elementwise": ([N("Sqrt", ["x"], ["s"]), N("Erf", ["s"], ["e"]), N("Tanh", ["e"], ["t"]),
                     N("Sigmoid", ["t"], ["g"]), N("Neg", ["g"], ["n"]), N("Relu", ["n"], ["r"]),
                     N("Pow", ["s", "two"], ["p"]),
                     N("Div", ["p", "three"], ["d"]), N("Sub", ["d", "r"], ["u"]), N("Mul", ["u", "g"], ["m"]),
                     N("Exp", ["m"], ["ex"]), N("Abs", ["ex"], ["ab"]), N("Identity", ["ab"], ["y"])],
                    X, Y, [("two", np.float32(2.0)), ("three", np.float32(3.0))], {"x": ("pos", (3, 4))}),
    "mask-where-equal-not-less-greater": (
        [N("Cast", ["m"], ["mf"], to=F32), N("Sub", ["one", "mf"], ["inv"]), N("Mul", ["inv", "big"], ["bias"]),
         N("Equal", ["m", "zero"], ["pad"]), N("Not", ["pad"], ["keep"]), N("Where", ["keep", "x", "bias"], ["w"]),
         N("Less", ["w", "half"], ["lo"]), N("Greater", ["w", "half"], ["hi"]), N("Cast", ["lo"], ["lof"], to=F32),
         N("Cast", ["hi"], ["hif"], to=F32), N("Sub", ["hif", "lof"], ["s"]), N("Add", ["w", "s"], ["y"])],
        [("x", F32, None), ("m", I64, None)], Y,
        [("one", np.float32(1)), ("big", np.float32(-1e4)), ("zero", np.int64(0)), ("half", np.float32(0.5))],
        {"x": (2, 5), "m": ("mask", (2, 5))}),
    "matmul-batched-broadcast": ([N("MatMul", ["x", "w"], ["y"])], X, Y,
                                 [("w", np.random.default_rng(3).standard_normal((4, 2), np.float32))],
                                 {"x": (2, 3, 4)}),
    "clip-min-only": ([N("Clip", ["x", "lo", ""], ["y"])], X, Y, [("lo", np.float32(-0.5))], {"x": (3, 4)}),
    "constant-constantofshape-range-cast": (
        [N("Constant", [], ["c"], value=numpy_helper.from_array(i64(3))), N("ConstantOfShape", ["c"], ["z"],
         value=numpy_helper.from_array(np.array([2.5], np.float32))), N("Shape", ["x"], ["sh"]),
         N("Gather", ["sh", "i1"], ["n"]), N("Range", ["zero", "n", "one"], ["r"]), N("Cast", ["r"], ["rf"], to=F32),
         N("Add", ["x", "rf"], ["xr"]), N("ReduceSum", ["xr", "ax"], ["s"], keepdims=0), N("Add", ["s", "z"], ["y"])],
        X, Y, [("i1", np.array(1, np.int64)), ("zero", np.int64(0)), ("one", np.int64(1)), ("ax", i64(1))],
        {"x": (3, 4)}),
    "topk": ([N("TopK", ["x", "k"], ["v", "i"], axis=0, largest=0), N("Cast", ["i"], ["f"], to=F32),
              N("Add", ["v", "f"], ["y"])], X, Y, [("k", i64(2))], {"x": (4, 3)}),
    "int-div-truncates": ([N("Div", ["a", "b"], ["q"]), N("Cast", ["q"], ["y"], to=F32)],
                          [("a", I64, None)], Y, [("b", i64(3))], {"a": ("int", (5,), 10)}),
}


def op_feed(spec: dict) -> dict:
    rng = np.random.default_rng(7)
    feed = {}
    for name, how in spec.items():
        if how[0] == "int":
            feed[name] = rng.integers(0, how[2], how[1]).astype(np.int64)
        elif how[0] == "mask":
            feed[name] = (rng.random(how[1]) < 0.6).astype(np.int64)
        elif how[0] == "pos":
            feed[name] = rng.random(how[1]).astype(np.float32) + 0.1
        else:
            feed[name] = rng.standard_normal(how).astype(np.float32)
    return feed


@pytest.mark.parametrize("case", list(OP_CASES))
def test_ops_match_onnxruntime(case, tmp_path):
    nodes, inputs, outputs, inits, spec = OP_CASES[case]
    path = tmp_path / f"{case}.onnx"
    path.write_bytes(make_graph(nodes, inputs, outputs, inits).SerializeToString())
    assert_matches_ort(path, op_feed(spec))


def test_every_op_named_in_the_brief_is_supported():
    brief = ("Conv Reshape Transpose Add Sub Mul Div Pow Sqrt Erf Tanh Sigmoid Relu Neg LayerNormalization MatMul "
             "Gemm Softmax ReduceMean ReduceSum ReduceMax Slice Shape Concat Gather Constant ConstantOfShape Cast "
             "Unsqueeze Squeeze Split Flatten Identity Expand Where Equal Not Less Greater Range Tile").split()
    assert [op for op in brief if op not in OPS] == []


# --- refusals: one line, at construction

def save(tmp_path, model, name="bad.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def test_an_unsupported_op_is_refused_in_one_line(tmp_path):
    path = save(tmp_path, make_graph([N("Relu", ["x"], ["r"]), N("NonZero", ["r"], ["y"])], X, [("y", I64, None)]))
    with pytest.raises(EdgeError) as err:
        TorchGraph(path)
    msg = str(err.value)
    assert err.value.exit == Exit.BAD_INPUT and "\n" not in msg
    assert msg.startswith("bad.onnx | op NonZero is not supported by the torch backend (supported: ")
    assert "LayerNormalization" in msg


def test_a_foreign_domain_op_is_refused(tmp_path):
    node = helper.make_node("TreeEnsembleClassifier", ["x"], ["y"], domain="ai.onnx.ml")
    model = make_graph([node], X, Y)
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    with pytest.raises(EdgeError, match=r"^bad.onnx \| op ai.onnx.ml.TreeEnsembleClassifier is not supported"):
        TorchGraph(save(tmp_path, model))


def test_a_shape_computed_from_data_is_refused(tmp_path):
    """Reshape's target read from a tensor's values would need a device-to-host copy per call."""
    model = make_graph([N("Reshape", ["x", "s"], ["y"])], [("x", F32, None), ("s", I64, None)], Y)
    with pytest.raises(EdgeError, match=r"^bad.onnx \| node .*'s' is a shape argument computed from tensor data"):
        TorchGraph(save(tmp_path, model))


def test_an_unsupported_use_of_a_supported_op_is_refused(tmp_path):
    node = N("LayerNormalization", ["x", "s"], ["y", "mean"])
    model = make_graph([node], X, Y + [("mean", F32, None)], [("s", np.ones(4, np.float32))])
    with pytest.raises(EdgeError, match=r"^bad.onnx \| node LayerNormalization \(LayerNormalization\): only the "
                                        r"first output \(Y\) is supported"):
        TorchGraph(save(tmp_path, model))


def test_missing_and_damaged_files(tmp_path):
    with pytest.raises(EdgeError) as err:
        TorchGraph(tmp_path / "none.onnx")
    assert err.value.exit == Exit.NOT_FOUND
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf\xff" * 5)
    with pytest.raises(EdgeError) as err:
        TorchGraph(tmp_path / "junk.onnx")
    assert err.value.exit == Exit.CORRUPT and str(err.value).startswith("junk.onnx | onnx cannot read it")


def test_an_old_opset_is_refused(tmp_path):
    with pytest.raises(EdgeError, match=r"opset 11 \(the torch backend reads opsets 13-18\)"):
        TorchGraph(save(tmp_path, make_graph([N("Relu", ["x"], ["y"])], X, Y, opset=11)))


# --- run_into and the CUDA-graph contract

def test_run_into_fills_preallocated_tensors(tmp_path):
    path = GOLDEN / "segment_0.onnx"
    graph = TorchGraph(path)
    feed = {"pixels": torch.from_numpy(np.load(GOLDEN / "reference.npz")["pixels"][:4])}
    want = graph(feed)
    logits = torch.full((4, 10), float("nan"))
    ptr = logits.data_ptr()
    graph.run_into(feed, {"logits": logits})
    assert logits.data_ptr() == ptr and torch.equal(logits, want["logits"])


class HostSyncWatch(TorchFunctionMode):
    """Records torch calls that move data between the host and the "device", here the meta device: a
    meta result made from CPU tensors (a host-to-device copy, or a host tensor fed to a device op), and any
    read of a meta tensor on the host (meta tensors have no data: those raise by themselves, too)."""
    READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = list(args) + list(kwargs.values())
        tensors = [t for a in flat for t in (a if isinstance(a, (list, tuple)) else [a]) if isinstance(t, torch.Tensor)]
        name = getattr(func, "__name__", str(func))
        if name in self.READS and any(t.is_meta for t in tensors):
            self.seen.append(f"{name} on a device tensor")
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.is_meta and any(not t.is_meta for t in tensors):
            self.seen.append(f"{name}: host tensor to the device")
        return out


def meta_feed(graph: TorchGraph, shapes: dict) -> dict:
    return {n: torch.empty(shapes[n], dtype=torch.int64 if n in ("input_ids", "attention_mask") else torch.float32,
                           device="meta") for n in graph.input_names}


def test_the_watch_sees_a_host_to_device_copy_and_a_host_read():
    with HostSyncWatch() as watch:
        torch.ones(3).to("meta")
        with pytest.raises(Exception):
            torch.ones(3, device="meta").sum().item()
    assert watch.seen == ["to: host tensor to the device", "item on a device tensor"]


@pytest.mark.parametrize("name", ["segment_0.onnx", "segment_1.onnx", "chain_0_3.onnx", "reference/full.onnx"])
def test_no_host_sync_in_a_call(name):
    """Run on the meta device, where values have shapes and no data: every device value is a meta tensor,
    every host value a CPU one, so a host read of device data raises and a host-to-device copy shows in the
    watch. The exported segments and chains have none at all. The plain graph (TorchScript exporter) makes
    its attention scale from a shape (Sqrt(Cast(Shape))): copied on the first call at a shape, never again."""
    graph = TorchGraph(GOLDEN / name, device="meta")
    for n in (1, 7):
        calls = []
        for _ in range(2):
            with HostSyncWatch() as watch:
                out = graph(meta_feed(graph, {"pixels": (n, 1, 8, 8), "hidden": (n, 16, 32)}))
            calls.append(watch.seen)
            assert all(v.is_meta and v.shape[0] == n for v in out.values())
        first = set(calls[0])
        assert calls[1] == [] and (first == {"to: host tensor to the device"} if "reference" in name else not first)


def test_no_host_sync_in_a_text_call(text_engine):
    for k in (0, 1):
        graph = TorchGraph(text_engine / f"segment_{k}.onnx", device="meta")
        with HostSyncWatch() as watch:
            out = graph(meta_feed(graph, {"input_ids": (3, 16), "attention_mask": (3, 16), "hidden": (3, 16, 64)}))
        assert watch.seen == [] and all(v.is_meta for v in out.values())


def test_a_float_made_from_a_shape_is_copied_once_per_shape(tmp_path):
    """Mean over a dynamic axis, written as sum / Cast(Shape): the divisor is a host value that a device op
    reads, lifted to the device on the first call at each input shape and cached after."""
    nodes = [N("ReduceSum", ["x", "a"], ["s"], keepdims=0), N("Shape", ["x"], ["sh"]),
             N("Gather", ["sh", "i"], ["n"]), N("Cast", ["n"], ["nf"], to=F32), N("Div", ["s", "nf"], ["y"])]
    path = save(tmp_path, make_graph(nodes, X, Y, [("a", i64(1)), ("i", np.array(1, np.int64))]), "mean.onnx")
    assert_matches_ort(path, {"x": np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)})
    graph = TorchGraph(path, device="meta")
    seen = []
    for shape in [(2, 5), (2, 5), (3, 5), (2, 7), (2, 5)]:
        with HostSyncWatch() as watch:
            graph({"x": torch.empty(shape, device="meta")})
        seen.append(len(watch.seen))
    assert seen == [1, 0, 1, 1, 0]
