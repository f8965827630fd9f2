"""Folding changes no output beyond float32 rounding, and the exported segment chain runs in ONNX
Runtime as the folded model does, at any batch size."""
import hashlib

import numpy as np
import pytest
import torch

from edge_model.export import export_segments
from edge_model.fold import fold_model, fold_report
from edge_model.presets import create_model
from edge_runtime.core.errors import EdgeError

TINY_TEXT = dict(depth=2, exits=(1, 2), dim=64, heads=4, mlp_hidden=128, vocab=1000, max_len=16)
PAD_FROM = 9       # text: row 1 holds 9 real tokens, then padding


def build(arch: str, **vit):
    """A small random model whose LayerNorms are far from (1, 0), so folding them changes weights."""
    torch.manual_seed(0)
    model = (create_model("fmnist-vit-demo", pretrained=False, **vit) if arch == "vit"
             else create_model("tweets-minilm", pretrained=False, **TINY_TEXT))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.5)
                m.bias.normal_(0.0, 0.5)
    return model.eval()


def inputs(model, n: int):
    """(x, mask) for n inputs: images without a mask; token ids at max_len with row 1 padded."""
    g = torch.Generator().manual_seed(n)
    c = model.cfg
    if not hasattr(c, "vocab"):
        return torch.randn(n, c.in_chans, c.img_size, c.img_size, generator=g), None
    ids = torch.randint(1, c.vocab, (n, c.max_len), generator=g)
    mask = torch.ones(n, c.max_len, dtype=torch.int64)
    if n > 1:
        ids[1, PAD_FROM:], mask[1, PAD_FROM:] = 0, 0
    return ids, mask


@pytest.mark.parametrize("arch", ["vit", "text"])
def test_folding_is_exact_and_smaller(arch):
    model = build(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_model(model)
    x, mask = inputs(model, 64 if arch == "vit" else 5)
    with torch.no_grad():
        ref, out = model.forward_exits(x, mask), folded.forward_exits(x, mask)
    assert len(out) == len(model.exits)
    for k, (r, o) in enumerate(zip(ref, out)):
        assert (r - o).abs().max() <= 1e-5, f"exit {k}"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the original changed"
    report = fold_report(model, folded)
    assert report["params_after"] < report["params_before"]
    depth, exits = model.cfg.depth, len(model.exits)
    # pre-LN: two norms per block and every head's norm; post-LN: the heads' norms only
    assert report["norm_affines_removed"] == (2 * depth + exits if arch == "vit" else exits)
    assert report["scale_multiplies_removed"] == depth


def test_chain_graphs_equal_the_folded_segments():
    """DepthGraph (the chain graphs: segments j..k, exit k's head only) computes what chaining the folded
    segments computes, from the inputs and from segment 0's hidden output."""
    from edge_model.export import DepthGraph
    for arch in ("vit", "text"):
        model = build(arch, depth=3, exits=(1, 2, 3))
        folded = fold_model(model)
        x, mask = inputs(model, 4)
        with torch.no_grad():
            steps = folded.forward_exits(x, mask)
            h0 = folded.segment(0)(x, mask)[0]
            for k in range(len(folded.exits)):
                torch.testing.assert_close(DepthGraph(folded, k)(x, mask), steps[k], atol=1e-5, rtol=0)
                if k:
                    torch.testing.assert_close(DepthGraph(folded, k, 1)(h0, mask), steps[k], atol=1e-5, rtol=0)


@pytest.fixture(scope="module", params=["vit", "text"])
def exported(request, tmp_path_factory):
    """Two segments per model (depth 2) keep the exports to a few seconds."""
    import onnxruntime as ort
    model = build(request.param, depth=2, exits=(1, 2))
    folded = fold_model(model)
    out = tmp_path_factory.mktemp(request.param)
    x, mask = inputs(model, 3)
    records = export_segments(folded, out, x if mask is None else (x, mask))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(str(out / r["file"]), opts, providers=["CPUExecutionProvider"])
                for r in records]
    return dict(model=model, folded=folded, out=out, records=records, sessions=sessions)


@pytest.mark.parametrize("n", [1, 5])
def test_onnx_chain_matches_folded_torch(exported, n):
    x, mask = inputs(exported["model"], n)
    with torch.no_grad():
        ref = exported["folded"].forward_exits(x, mask)
    h = x.numpy()
    for k, (record, sess) in enumerate(zip(exported["records"], exported["sessions"])):
        feed = [h] if mask is None else [h, mask.numpy()]
        h, logits = sess.run(["hidden_out", "logits"], dict(zip([i["name"] for i in record["inputs"]], feed)))
        assert logits.shape == tuple(ref[k].shape)
        assert np.abs(logits - ref[k].numpy()).max() <= 1e-4, f"exit {k}, batch {n}"


def test_files_are_valid_opset_17_with_stable_names(exported):
    import onnx
    text = exported["records"][0]["inputs"][0]["name"] == "input_ids"
    for k, record in enumerate(exported["records"]):
        path = exported["out"] / record["file"]
        assert record["file"] == f"segment_{k}.onnx"
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert {o.domain: o.version for o in model.opset_import}[""] == 17
        assert all(i.data_location != onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
        first = (["input_ids"] if text else ["pixels"]) if k == 0 else ["hidden"]
        names = first + (["attention_mask"] if text else [])
        assert [i["name"] for i in record["inputs"]] == names
        assert [o["name"] for o in record["outputs"]] == ["hidden_out", "logits"]
        for spec in record["inputs"] + record["outputs"]:
            assert spec["shape"][0] == "batch" and all(isinstance(d, int) for d in spec["shape"][1:])
        assert record["ort_max_abs"] <= 1e-4
        assert 0 < record["params"] < exported["model"].num_params()


def test_text_export_needs_max_len(tmp_path):
    model = build("text")
    ids = torch.ones(2, 8, dtype=torch.int64)
    with pytest.raises(EdgeError) as err:
        export_segments(fold_model(model), tmp_path, (ids, torch.ones_like(ids)))
    assert str(err.value).startswith("example | input_ids (2, 8)")
