"""`edge-infer build` and the memory benchmark on the digits engines: the fp32 and int8 builds are scored and
recorded, their files verified on reopen, an impossible tolerance refuses in one line, and the memory script
writes its numbers."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from edge_runtime.core.errors import EdgeError, Exit
from test_engines import assert_refused, run_infer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(digits_ckpt, tmp_path_factory):
    """(checkpoint, engine dir, calibration list): the digits engines exported as test_engines does, a
    calibration set written from the checkpoint, then an fp32 and an int8 build."""
    from edge_model.calibration_set import write_calibration_set
    root = tmp_path_factory.mktemp("build")
    ckpt = root / "ckpt"
    shutil.copytree(digits_ckpt, ckpt)
    engines = root / "engines" / "digits"
    for args in (("cache-exits", "--checkpoint", ckpt),
                 ("fit-controller", "--checkpoint", ckpt, "--updates", "3", "--episodes", "128", "--minibatch",
                  "128", "--hidden", "8", "--no-progress"),
                 ("export", "--checkpoint", ckpt, "--out", engines, "--no-progress")):
        _, err, code = run_cli(*args)
        assert code == Exit.OK, (args[0], err)
    calib = write_calibration_set(ckpt, "digits", root / "calibration", samples=128)
    for precision in ("fp32", "int8"):
        out, err, code = run_infer("build", "--engine-dir", engines, "--precision", precision, "--calib", calib,
                                   "--threads", "1", "--latency-runs", "3", "--no-progress")
        assert code == Exit.OK and err == "", err
        assert f"{precision} build written to" in out
    return ckpt, engines, calib


@pytest.fixture
def engine_copy(built, tmp_path):
    dst = tmp_path / "digits"
    shutil.copytree(built[1], dst)
    return dst


def test_calibration_list_names_its_samples(built):
    from edge_runtime.core.calibration import read_calibration
    calib = read_calibration(built[2])
    assert (calib.dataset, calib.calib_split, calib.val_split, calib.method) == ("digits", "train", "val", "minmax")
    assert len(calib.calib_indices) == 128 == len(set(calib.calib_indices)) and calib.val_samples > 0
    assert hashlib.sha256(calib.data_path.read_bytes()).hexdigest() == calib.data_sha256


def test_builds_are_recorded_with_per_variant_accuracy(built):
    _, engines, calib = built
    m = json.loads((engines / "manifest.json").read_text())
    assert m["build"]["precision"] == "fp32"                   # the export's stamp is untouched
    builds = {b["precision"]: b for b in m["builds"]}
    assert list(builds) == ["fp32", "int8"]
    depths = [v["depth"] for v in m["variants"]]
    for precision, infix in (("fp32", "opt"), ("int8", "int8")):
        b = builds[precision]
        assert [f["file"] for f in b["files"]] == [f"segment_{k}.{infix}.onnx" for k in range(4)]
        assert [v["depth"] for v in b["variants"]] == depths
        for v in b["variants"]:
            assert 0 < v["val_accuracy"] <= 1 and v["delta_points"] >= -b["tolerance_points"]
            assert v["latency_ms"] > 0 and v["export_latency_ms"] > 0 and v["latency_ratio"] > 0
        assert b["validation"]["samples"] > 0 and b["bytes"] == sum(f["bytes"] for f in b["files"])
    # fp32: the optimised graphs score exactly as the exported ones, and as PyTorch on every validation input
    for v, exported in zip(builds["fp32"]["variants"], m["variants"]):
        assert v["delta_points"] == 0 and v["torch_agreement"] == 1.0
        assert v["val_accuracy"] == pytest.approx(exported["val_accuracy"])
    q = builds["int8"]["quantization"]
    assert (q["format"], q["per_channel"], q["calibration"]["method"], q["calibration"]["samples"]) == \
        ("QDQ", True, "minmax", 128)
    assert builds["int8"]["size_ratio"] < 1 and builds["int8"]["opset"] == 17
    caches = [Path(c["file"]) for c in q["calibration"]["cache"]]
    assert len(caches) == 4 and all(c.is_file() and c.resolve().parent == calib.parent.resolve() for c in caches)


def test_every_graph_file_is_written_without_value_info(built):
    # with the intermediate shapes kept, ORT's planner held more activation memory per segment run
    import onnx
    files = sorted(built[1].glob("segment_*.onnx"))
    assert {f.name.split(".")[1] for f in files} == {"onnx", "opt", "int8"}
    for f in files:
        assert len(onnx.load(str(f)).graph.value_info) == 0, f.name


def test_built_files_pass_the_hash_check_on_reopen(built, engine_copy):
    import onnx

    from edge_runtime.backends.ort import OrtExecutor
    from edge_runtime.core.engine_dir import EngineDir
    engine = EngineDir.open(built[1])
    ref = engine.reference()
    graphs = engine.build("onnxruntime", "int8").graphs
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(graphs[1].path)).graph.node}
    with OrtExecutor(graphs, intra_op_num_threads=1) as ex:
        logits = ex.outputs({"pixels": ref["pixels"]})[-1]["logits"]
    assert logits.shape == ref["logits"][:, -1].shape and np.isfinite(logits).all()
    fp32 = engine.build("onnxruntime", "fp32")
    assert fp32.label == "onnxruntime fp32 build" and [g.path.name for g in fp32.graphs] == \
        [f"segment_{k}.opt.onnx" for k in range(4)]

    f = engine_copy / "segment_2.int8.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(EdgeError, match=r"segment_2\.int8\.onnx \| sha256 mismatch") as err:
        EngineDir.open(engine_copy)
    assert err.value.exit == Exit.CORRUPT


def test_check_verifies_each_build(built):
    """`edge-infer check --precision P` runs the build the runtime would serve, with that precision's
    tolerances (int8: its quantisation error), against the PyTorch reference outputs."""
    for precision, label in (("fp32", "onnxruntime fp32 build"), ("int8", "onnxruntime int8 build")):
        out, err, code = run_infer("check", "--engine-dir", built[1], "--precision", precision)
        assert code == Exit.OK, err
        # the builds have segments only: their chain paths step the segments (the features, 4 x segments,
        # 4 x chain, 3 x oneshot)
        assert out.splitlines()[-1].startswith("PASS: 12 of 12") and label in out.splitlines()[-1]
    # int8 is not fp32: at fp32's tolerances the same build fails, in one line
    assert_refused(run_infer("check", "--engine-dir", built[1], "--precision", "int8", "--atol", "1e-4", "--rtol",
                             "1e-3"), Exit.MISMATCH, "out of tolerance")


def edit_build(engine_dir, precision, change):
    m = json.loads((engine_dir / "manifest.json").read_text())
    change(next(b for b in m["builds"] if b["precision"] == precision))
    (engine_dir / "manifest.json").write_text(json.dumps(m))


def test_a_tampered_build_stamp_is_refused_at_load(engine_copy):
    edit_build(engine_copy, "int8", lambda b: b["versions"].update(onnxruntime="1.999.0"))
    assert_refused(run_infer("check", "--engine-dir", engine_copy, "--precision", "int8"), Exit.BAD_INPUT,
                   "manifest.json | builds[1] (onnxruntime int8 build): build stamp: onnxruntime 1.999.0",
                   "needs 1.999")
    assert_refused(run_infer("dataset://digits/test", "--engine-dir", engine_copy, "--headless", "--precision",
                             "int8"), Exit.BAD_INPUT, "build stamp: onnxruntime 1.999.0")
    edit_build(engine_copy, "int8", lambda b: b.update(backend="torch-cuda"))   # (a tensorrt entry has its own schema)
    assert_refused(run_infer("check", "--engine-dir", engine_copy, "--precision", "int8"), Exit.NOT_FOUND,
                   "no onnxruntime int8 build", "torch-cuda int8 build")
    edit_build(engine_copy, "fp32", lambda b: b["device"].update(machine="aarch64"))   # portable: still fits
    out, err, code = run_infer("check", "--engine-dir", engine_copy)
    assert code == Exit.OK, err


def test_the_optimised_fp32_build_agrees_with_pytorch_on_the_test_set(built):
    import torch

    from edge_model.checkpoint import load_checkpoint
    from edge_model.data import load_dataset
    from edge_model.inputs import make_inputs
    from edge_runtime.backends.ort import OrtExecutor
    from edge_runtime.core.engine_dir import EngineDir
    ckpt, engines, _ = built
    model, config = load_checkpoint(ckpt)
    test = make_inputs(load_dataset("digits"), "test", config["task"]["preprocess"])
    x = test.x
    with torch.no_grad():
        want = torch.stack(model.forward_exits(x), 1).argmax(-1).numpy()        # (N, exits)
    engine = EngineDir.open(engines)
    with OrtExecutor(engine.build("onnxruntime", "fp32").graphs, intra_op_num_threads=1) as ex:
        outs = ex.outputs({"pixels": x.numpy()})
    for k, out in enumerate(outs):
        assert (out["logits"].argmax(-1) == want[:, k]).mean() >= 0.999, k


def test_optimisation_falls_back_to_basic_when_extended_is_not_portable(tmp_path):
    """MatMul then Mul by a scalar: ORT_ENABLE_EXTENDED fuses it into com.microsoft.FusedMatMul."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edge_runtime.tools.build import optimize_segment
    weights = [numpy_helper.from_array(np.ones((4, 4), np.float32), "w"),
               numpy_helper.from_array(np.array(0.5, np.float32), "s")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Mul", ["m", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    step = optimize_segment(ort, onnx, tmp_path / "g.onnx", tmp_path / "g.opt.onnx", "extended")
    assert step["level"] == "basic" and "com.microsoft.FusedMatMul" in step["note"]
    model = onnx.load(str(tmp_path / "g.opt.onnx"))
    assert {n.domain for n in model.graph.node} == {""} and [o.domain for o in model.opset_import] == [""]


def test_an_impossible_tolerance_refuses_and_writes_nothing(built, engine_copy):
    before = {p.relative_to(engine_copy): p.read_bytes() for p in engine_copy.rglob("*") if p.is_file()}
    result = run_infer("build", "--engine-dir", engine_copy, "--precision", "fp32", "--calib", built[2],
                       "--tolerance", "-1", "--threads", "1", "--latency-runs", "1", "--no-progress")
    assert_refused(result, Exit.MISMATCH, "fp32 build refused", "points of validation accuracy", "tolerance -1")
    assert {p.relative_to(engine_copy): p.read_bytes() for p in engine_copy.rglob("*") if p.is_file()} == before


def test_calibration_refusals(built, engine_copy, tmp_path):
    calib = built[2]
    other = tmp_path / "calibration"
    shutil.copytree(calib.parent, other)
    text = (other / calib.name).read_text()
    (other / "wrong-dataset.txt").write_text(text.replace("dataset digits", "dataset fashion-mnist"))
    (other / "bad-hash.txt").write_text(text.replace("data_sha256 ", "data_sha256 0"))
    (other / "not-a-list.txt").write_text("hello\n")
    assert "torch_param_sha256 " in text
    (other / "other-checkpoint.txt").write_text(text.replace("torch_param_sha256 ", "torch_param_sha256 0"))
    for name, code, words in [("absent.txt", Exit.NOT_FOUND, ["absent.txt | missing"]),
                              ("wrong-dataset.txt", Exit.BAD_INPUT, ["made for dataset fashion-mnist"]),
                              ("bad-hash.txt", Exit.CORRUPT, ["digits.npz | sha256 mismatch"]),
                              ("not-a-list.txt", Exit.CORRUPT, ["not a calibration list"]),
                              ("other-checkpoint.txt", Exit.BAD_INPUT, ["come from another checkpoint"])]:
        result = run_infer("build", "--engine-dir", engine_copy, "--precision", "int8", "--calib", other / name,
                           "--no-progress")
        assert_refused(result, code, *words)


def test_memory_benchmark_writes_its_numbers(built, tmp_path):
    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, ROOT / "benchmarks" / "memory.py", "--engine-dir", built[1], "--out", out,
                           "--repeats", "1", "--batch", "16", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "digits.json").read_text())
    assert (out / "digits.md").read_text().startswith("# Memory: digits")
    assert set(report["sets"]) == {"segments", "segments_shared_arena", "static", "naive"}
    for name, s in report["sets"].items():
        assert s["load_kib"] > 0 and s["resident_kib"] > 0 and s["file_kib"] > 0, name
        assert s["activation_peak_kib"] and all(v > 0 for v in s["activation_peak_kib"].values()), name
    assert len(report["sets"]["naive"]["activation_peak_kib"]) == 4
    assert all(r["resident_kib"] > 0 for r in report["ratios"].values())
