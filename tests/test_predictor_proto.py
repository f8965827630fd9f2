"""edge_runtime.core.onnx_proto reads predictor.onnx without the onnx package: the same arrays as the onnx
package's parse, packed or unpacked repeated fields alike, one-line errors on damaged files, and no onnx import."""
import hashlib
import struct
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

from conftest import import_blocker
from onnx import helper

import edge_runtime.core.predictor as predictor_mod
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.onnx_proto import Malformed, Model, Node, Unsupported, attribute, fields, read_model, varint
from edge_runtime.core.predictor import TreeEnsemble
from edge_model.controller.predictor import fit_predictor, fit_projection
from test_predictor import DIMS, synthetic_table


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A real predictor.onnx: a tiny LightGBM fitted on the synthetic exit tables, exported as the CLI does."""
    train, val = synthetic_table(600, 0), synthetic_table(300, 1)
    projection = fit_projection(train.first_pooled, DIMS)
    pred = fit_predictor(train, val, projection, seed=0)
    return pred.export_onnx(tmp_path_factory.mktemp("proto") / "predictor.onnx")


# ---- the reference: the onnx package's parse, in the reader's shape -------------------------------------

def onnx_read_model(data: bytes) -> Model:
    model = onnx.load_from_string(data)
    nodes = [Node(n.op_type, n.domain, {a.name: helper.get_attribute_value(a) for a in n.attribute},
                  {a.name: a.type for a in n.attribute}) for n in model.graph.node]
    return Model(nodes, [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input])


def reference_ensemble(path, monkeypatch) -> TreeEnsemble:
    """TreeEnsemble.from_onnx with the onnx package doing the reading (as before onnx_proto)."""
    with monkeypatch.context() as m:
        m.setattr(predictor_mod, "read_model", onnx_read_model)
        return TreeEnsemble.from_onnx(path)


def digest(t: TreeEnsemble) -> str:
    arrays = b"".join(a.dtype.str.encode() + repr(a.shape).encode() + a.tobytes()
                      for a in (t.nodes, t.nan_true, t.roots))
    return hashlib.sha256(arrays + repr((t.classes, t.softmax, t.num_features)).encode()).hexdigest()


def assert_same(a: TreeEnsemble, b: TreeEnsemble):
    for name in ("nodes", "nan_true", "roots"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
    assert (a.classes, a.softmax, a.num_features) == (b.classes, b.softmax, b.num_features)


# ---- a protobuf encoder, to hand-make messages -------------------------------------------------------------

def enc(v: int) -> bytes:
    v &= (1 << 64) - 1                      # int64 two's complement, as protobuf writes negatives
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return enc(number << 3 | wire)


def ld(number: int, payload: bytes) -> bytes:
    return key(number, 2) + enc(len(payload)) + payload


def encode(msg: dict) -> bytes:
    """A fields() dict back to bytes."""
    out = b""
    for number, (wires, values) in sorted(msg.items()):
        for wire, value in zip(wires, values):
            if wire == 0:
                out += key(number, 0) + enc(value)
            elif wire == 2:
                out += ld(number, value)
            else:                                           # fixed32 / fixed64: the raw bytes
                out += key(number, wire) + value
    return out


def entries(msg: dict, number: int) -> list:
    """[(wire type, value), ...] of one field of a fields() dict."""
    return list(zip(*msg.get(number, ((), ()))))


def put(msg: dict, number: int, items: list):
    msg[number] = (bytearray(w for w, _ in items), [v for _, v in items])


def repacked(data: bytes, half: bool = False) -> bytes:
    """The same model with the tree node's repeated floats (7) and ints (8) packed, as a proto3 writer or
    `[packed = true]` would; `half`: only the first half of each list packed, the rest left one key each."""
    model = fields(data)
    graph = fields(b"".join(model[7][1]))
    node = fields(graph[1][1][0])
    attrs = [fields(v) for v in node[5][1]]
    for at in attrs:
        for number in (7, 8):
            items = entries(at, number)
            cut = len(items) // 2 if half else len(items)
            if cut:
                run = b"".join(enc(v) if w == 0 else v for w, v in items[:cut])
                put(at, number, [(2, run)] + items[cut:])
    put(node, 5, [(2, encode(at)) for at in attrs])
    put(graph, 1, [(2, encode(node))])
    put(model, 7, [(2, encode(graph))])
    return encode(model)


# ---- (a) the same arrays as the onnx package's parse ------------------------------------------------------

def test_reader_equals_the_onnx_package(exported):
    data = exported.read_bytes()
    ours, theirs = read_model(data), onnx_read_model(data)
    assert ours.input_dims == theirs.input_dims == [[0, 6 + DIMS]]
    assert len(ours.nodes) == len(theirs.nodes) == 1
    a, b = ours.nodes[0], theirs.nodes[0]
    assert (a.op_type, a.domain) == (b.op_type, b.domain) == ("TreeEnsembleClassifier", "ai.onnx.ml")
    assert list(a.attributes) == list(b.attributes) and a.types == b.types
    for name, value in b.attributes.items():
        assert type(a.attributes[name]) is type(value) and repr(a.attributes[name]) == repr(value), name


def test_from_onnx_arrays_equal_the_onnx_package_parse(exported, monkeypatch):
    ours, theirs = TreeEnsemble.from_onnx(exported), reference_ensemble(exported, monkeypatch)
    assert_same(ours, theirs)
    assert ours.softmax and ours.num_features == 6 + DIMS and len(ours.roots) > 1


# ---- (b) packed and unpacked repeated fields ---------------------------------------------------------------

@pytest.mark.parametrize("half", [False, True], ids=["packed", "half-packed"])
def test_packed_repeated_fields_decode_the_same(exported, tmp_path, monkeypatch, half):
    data = exported.read_bytes()
    packed = repacked(data, half)
    assert len(packed) < len(data)                      # the runs really are packed now
    assert repr(onnx_read_model(packed)) == repr(onnx_read_model(data))   # and onnx agrees it's the same model
    assert repr(read_model(packed)) == repr(read_model(data))
    path = tmp_path / "predictor.onnx"
    path.write_bytes(packed)
    assert_same(TreeEnsemble.from_onnx(path), reference_ensemble(exported, monkeypatch))


def test_a_message_given_in_pieces_merges(exported, tmp_path, monkeypatch):
    """protobuf merges the occurrences of a (non-repeated) message field: here the graph in two pieces,
    its node first, then its name, inputs and outputs."""
    data = exported.read_bytes()
    model = fields(data)
    graph = fields(model[7][1][0])
    put(model, 7, [(2, encode({1: graph[1]})), (2, encode({k: v for k, v in graph.items() if k != 1}))])
    split = encode(model)
    assert split != data and repr(read_model(split)) == repr(onnx_read_model(split)) == repr(onnx_read_model(data))
    path = tmp_path / "predictor.onnx"
    path.write_bytes(split)
    assert_same(TreeEnsemble.from_onnx(path), reference_ensemble(exported, monkeypatch))


def test_varints():
    assert varint(b"\x00", 0) == (0, 1) and varint(b"\xac\x02", 0) == (300, 2)
    assert varint(b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 1) == ((1 << 64) - 1, 11)
    for v in (0, 1, 127, 128, 300, 2 ** 31, 2 ** 63 - 1, -1, -(2 ** 63)):
        assert varint(enc(v), 0) == (v & (1 << 64) - 1, len(enc(v)))


F = [1.5, -0.0, float("inf"), 3.25, 0.1, -1e-30]
UNKNOWN = (key(1000, 0) + enc(123) + key(1001, 1) + b"\x01" * 8 + key(1002, 5) + b"\x02" * 4
           + ld(1003, b"junk") + ld(13, b"a doc string"))         # and doc_string (13): all skipped


@pytest.mark.parametrize("body", [
    pytest.param(key(20, 0) + enc(7) + key(8, 0) + enc(-1) + key(8, 0) + enc(5),
                 id="ints-one-key-each"),
    pytest.param(key(20, 0) + enc(7) + ld(8, enc(-1) + enc(2 ** 63 - 1) + enc(-(2 ** 63)) + enc(300)),
                 id="ints-packed"),
    pytest.param(key(20, 0) + enc(7) + key(8, 0) + enc(-7) + ld(8, enc(1) + enc(-2)) + key(8, 0) + enc(9),
                 id="ints-mixed"),
    pytest.param(key(20, 0) + enc(7),
                 id="ints-empty"),
    pytest.param(key(20, 0) + enc(6) + b"".join(key(7, 5) + struct.pack("<f", f) for f in F),
                 id="floats-unpacked"),
    pytest.param(key(20, 0) + enc(6) + ld(7, struct.pack("<6f", *F)),
                 id="floats-packed"),
    pytest.param(key(20, 0) + enc(6) + key(7, 5) + struct.pack("<f", 2.5) + ld(7, struct.pack("<2f", 1, 2)),
                 id="floats-mixed"),
    pytest.param(key(20, 0) + enc(1) + key(2, 5) + struct.pack("<f", 0.1) + key(2, 5) + struct.pack("<f", -2),
                 id="float-last-wins"),
    pytest.param(key(20, 0) + enc(1),
                 id="float-default"),
    pytest.param(key(20, 0) + enc(2) + key(3, 0) + enc(-5),
                 id="int-negative"),
    pytest.param(key(20, 0) + enc(3) + ld(4, b"SOFTMAX"),
                 id="string"),
    pytest.param(key(20, 0) + enc(3) + ld(4, b"NONE") + ld(4, b"SOFTMAX"),
                 id="string-last-wins"),
    pytest.param(key(20, 0) + enc(2) + key(3, 0) + enc(1) + key(3, 0) + enc(2),
                 id="int-last-wins"),
    pytest.param(key(20, 0) + enc(8) + ld(9, b"BRANCH_LEQ") + ld(9, b"") + ld(9, b"LEAF"),
                 id="strings"),
    pytest.param(key(8, 0) + enc(4) + key(20, 0) + enc(7) + key(20, 0) + enc(2) + key(3, 0) + enc(1),
                 id="type-last-wins"),
])
def test_attribute_matches_onnx_on_hand_made_bytes(body):
    for data in (ld(1, b"x") + body, UNKNOWN + body + ld(1, b"x") + UNKNOWN):
        want = onnx.AttributeProto.FromString(data)
        name, kind, value = attribute(fields(data))
        assert (name, kind) == (want.name, want.type)
        got, ref = value, helper.get_attribute_value(want)
        assert type(got) is type(ref) and repr(got) == repr(ref)


def test_other_attribute_types_are_refused():
    tensor = helper.make_attribute("base_values_as_tensor", helper.make_tensor("t", 1, [1], [0.5]))
    ref = onnx.AttributeProto(name="r", ref_attr_name="alpha", type=onnx.AttributeProto.FLOAT)
    for at in (tensor, onnx.AttributeProto(name="u"), ref):      # a TENSOR, an UNDEFINED, a function's reference
        with pytest.raises(Unsupported, match=r"^attribute (base_values_as_tensor is a TENSOR|u is a UNDEFINED|"
                                              r"r refers to a function's attribute)$"):
            attribute(fields(at.SerializeToString()))


# ---- (c) damaged files: one line, Exit.CORRUPT -------------------------------------------------------------

@pytest.mark.parametrize("data, reason", [
    (b"\x08", "truncated varint"),
    (b"\x08\x80", "truncated varint"),
    (b"\x88", "truncated varint"),                                    # a key cut short
    (b"\x08" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"),
    (b"\x3a\x05ab", "field 7 runs past the end of its message"),
    (b"\x3a" + b"\xff" * 9 + b"\x01", "field 7 runs past the end of its message"),   # a huge length
    (b"\x3d\x00\x00", "field 7 runs past the end of its message"),    # fixed32 cut short
    (b"\x39" + b"\x00" * 7, "field 7 runs past the end of its message"),   # fixed64 cut short
    (b"\x3b", "wire type 3 (field 7)"),                                   # groups: not in ONNX
    (b"\x3c", "wire type 4 (field 7)"),
    (b"\x3e", "wire type 6 (field 7)"),
    (b"\x3f", "wire type 7 (field 7)"),
    (b"\x00", "field number 0"),
    (b"\x38\x01", "graph has wire type 0, not 2"),
    (ld(7, ld(1, b"\x22\x01")), "field 4 runs past the end of its message"),            # inside a node
    (ld(7, ld(1, ld(5, key(20, 0) + enc(6) + ld(7, b"abc")))), "attribute  is not float32"),
    (ld(7, ld(1, ld(5, ld(1, b"n") + key(20, 0) + enc(7) + key(8, 5) + b"abcd"))), "attribute n has wire type 5"),
    (ld(7, ld(1, ld(5, key(20, 0) + enc(7) + ld(8, b"\x80")))), "truncated varint"),   # a packed run cut short
    (ld(7, ld(11, ld(2, ld(1, ld(2, ld(1, key(1, 5) + b"1234")))))), "dim_value has wire type 5"),
])
def test_malformed_bytes(data, reason):
    with pytest.raises(Malformed) as err:
        read_model(data)
    assert str(err.value).startswith(reason)


def assert_corrupt(path, *words):
    with pytest.raises(EdgeError) as err:
        TreeEnsemble.from_onnx(path)
    msg = str(err.value)
    assert err.value.exit == Exit.CORRUPT and "\n" not in msg and msg.startswith(f"{path} | "), msg
    for w in words:
        assert w in msg, msg


def top_level_spans(data: bytes) -> dict:
    """{field number: (start, end)} of each top-level ModelProto field (its last occurrence): varints and
    length-delimited fields, all that onnx.save writes there."""
    spans, pos = {}, 0
    while pos < len(data):
        start = pos
        k, pos = varint(data, pos)
        assert k & 7 in (0, 2)
        value, pos = varint(data, pos)
        spans[k >> 3] = (start, pos + value if k & 7 == 2 else pos)
        pos = spans[k >> 3][1]
    return spans


def test_damaged_files(exported, tmp_path):
    data = exported.read_bytes()
    graph_start, graph_end = top_level_spans(data)[7]
    cases = {"empty": (b"", "expected one TreeEnsembleClassifier node"),
             "text": (b"not an onnx file at all\n", "not an ONNX file"),
             "garbage": (np.random.default_rng(0).bytes(4096), "not an ONNX file"),
             "head": (data[:graph_start + 5], "not an ONNX file (field 7 runs past the end of its message)"),
             "middle": (data[:(graph_start + graph_end) // 2], "not an ONNX file"),
             "all but one byte of the graph": (data[:graph_end - 1], "not an ONNX file")}
    for name, (content, words) in cases.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(content)
        assert_corrupt(path, words)
    assert_corrupt(tmp_path, "cannot read it")                          # a directory
    with pytest.raises(EdgeError) as err:
        TreeEnsemble.from_onnx(tmp_path / "nowhere.onnx")
    assert err.value.exit == Exit.NOT_FOUND and str(err.value).endswith("nowhere.onnx | no such file")


def test_every_truncation_and_random_damage_is_a_clear_error_or_a_sound_ensemble(exported, tmp_path):
    """Cut anywhere in the graph: an error. Cut after it (opset, metadata): the same trees or an error.
    Change bytes in the graph: an error, or trees the compiled walk runs safely (every index in range)."""
    data = exported.read_bytes()
    graph_start, graph_end = top_level_spans(data)[7]
    rng = np.random.default_rng(1)
    path = tmp_path / "predictor.onnx"
    whole = digest(TreeEnsemble.from_onnx(exported))
    cuts = sorted(set(rng.integers(0, len(data), 150).tolist()) | set(range(graph_end - 40, len(data))))
    for cut in cuts:
        path.write_bytes(data[:cut])
        if cut < graph_end:
            assert_corrupt(path)
            continue
        try:                                    # the opset and metadata after the graph are not read
            assert digest(TreeEnsemble.from_onnx(path)) == whole
        except EdgeError as err:                # unless the cut leaves half a field
            assert err.exit == Exit.CORRUPT and "not an ONNX file" in str(err)
    x = np.full((3, 6 + DIMS), np.nan, np.float32)
    x[1], x[2] = 0, rng.normal(size=6 + DIMS)
    loaded = 0
    for _ in range(300):
        damaged = bytearray(data)
        for at in rng.integers(graph_start, graph_end, rng.integers(1, 4)):
            damaged[at] = rng.integers(0, 256)
        path.write_bytes(bytes(damaged))
        try:
            t = TreeEnsemble.from_onnx(path)
        except EdgeError as err:
            assert err.exit == Exit.CORRUPT and "\n" not in str(err) and str(err).startswith(f"{path} | ")
            continue
        loaded += 1
        n = len(t.nodes)
        branch = t.nodes[:, 1] != -1
        assert ((t.nodes[branch, 2:] >= 0) & (t.nodes[branch, 2:] < n)).all()
        assert (t.nodes[~branch, 2] < t.classes).all() and (t.roots < n).all()
        assert t(x).shape == (3, t.classes)
    assert 0 < loaded < 300                     # some damage lands in a threshold, some breaks the file


def edited(exported, tmp_path, change):
    model = onnx.load(exported)
    change(model, model.graph.node[0])
    path = tmp_path / "predictor.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def set_attr(node, name, value):
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + ([helper.make_attribute(name, value)] if value is not None else []))


def ints(node, name) -> list:
    return list(next(a for a in node.attribute if a.name == name).ints)


def first_branch(node) -> int:
    modes = next(a for a in node.attribute if a.name == "nodes_modes").strings
    return [m.decode() for m in modes].index("BRANCH_LEQ")


@pytest.mark.parametrize("change, words", [
    (lambda m, n: set_attr(n, "nodes_values", None), "lacks or mistypes nodes_values"),
    (lambda m, n: set_attr(n, "nodes_values", [1, 2]), "lacks or mistypes nodes_values"),
    (lambda m, n: set_attr(n, "post_transform", 3), "lacks or mistypes post_transform"),
    (lambda m, n: set_attr(n, "base_values_as_tensor", helper.make_tensor("b", 1, [4], [0.0] * 4)),
     "attribute base_values_as_tensor is a TENSOR: this runtime reads float, int and string attributes only"),
    (lambda m, n: set_attr(n, "nodes_featureids", ints(n, "nodes_featureids")[:-1]), "nodes_* lists differ"),
    (lambda m, n: set_attr(n, "class_ids", ints(n, "class_ids") + [0]), "class_* lists differ"),
    (lambda m, n: set_attr(n, "nodes_truenodeids", [10 ** 6 if j == first_branch(n) else v for j, v in
                                                    enumerate(ints(n, "nodes_truenodeids"))]),
     "names a missing node or one node twice"),
    (lambda m, n: set_attr(n, "nodes_truenodeids", [0 if j == first_branch(n) else v for j, v in
                                                    enumerate(ints(n, "nodes_truenodeids"))]),
     "names a missing node or one node twice"),                          # a cycle back to the root
    (lambda m, n: set_attr(n, "nodes_featureids", [99 if j == first_branch(n) else v for j, v in
                                                   enumerate(ints(n, "nodes_featureids"))]),
     "a feature id is not an input column"),
    (lambda m, n: set_attr(n, "class_ids", [7] + ints(n, "class_ids")[1:]), "a class id is not"),
    (lambda m, n: set_attr(n, "base_values", [0.5, 0, 0, 0]), "no base values"),
    (lambda m, n: setattr(n, "domain", ""), "expected one TreeEnsembleClassifier node"),
    (lambda m, n: m.graph.node.append(onnx.NodeProto(op_type="Identity")), "expected one TreeEnsembleClassifier"),
    (lambda m, n: m.graph.input[0].type.tensor_type.shape.dim.pop(), "its input is not (N, features)"),
    (lambda m, n: m.graph.input.pop(), "its input is not (N, features)"),
])
def test_inconsistent_trees_are_one_line_errors(exported, tmp_path, change, words):
    assert_corrupt(edited(exported, tmp_path, change), words)


def test_the_reader_parses_as_python_3_8():
    """The device side runs on Python 3.8 (JetPack 5): at least its syntax (ast's best effort) is 3.8's."""
    import ast
    import edge_runtime.core.onnx_proto as onnx_proto
    for mod in (onnx_proto, predictor_mod):
        with open(mod.__file__) as f:
            ast.parse(f.read(), mod.__file__, feature_version=(3, 8))
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 8))


# ---- (d) no onnx import on the device -----------------------------------------------------------------------

BLOCK_ONNX = import_blocker("onnx")



def run_python(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_from_onnx_without_the_onnx_package(exported, monkeypatch):
    code = BLOCK_ONNX + textwrap.dedent("""
        import hashlib
        from edge_runtime.core.predictor import TreeEnsemble
        t = TreeEnsemble.from_onnx(sys.argv[1])
        assert "onnx" not in sys.modules and not any(m.startswith("onnx.") for m in sys.modules)
        arrays = b"".join(a.dtype.str.encode() + repr(a.shape).encode() + a.tobytes()
                          for a in (t.nodes, t.nan_true, t.roots))
        print(hashlib.sha256(arrays + repr((t.classes, t.softmax, t.num_features)).encode()).hexdigest())
    """)
    proc = run_python(code, exported)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == digest(reference_ensemble(exported, monkeypatch))


def test_the_onnx_blocker_blocks():
    proc = run_python(BLOCK_ONNX + "import onnx")
    assert proc.returncode != 0 and "onnx is blocked" in proc.stderr
    proc = run_python(BLOCK_ONNX + "import onnxruntime")              # the device's own dependency stays
    assert proc.returncode == 0, proc.stderr
