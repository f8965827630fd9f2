"""The engine directory end to end: export the digits checkpoint, check it through the runtime, and see the
loader refuse every kind of damage in one line (HTTPie-style in-process CLI runs)."""
import hashlib
import json
import re
import shutil

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli, run_infer
from edge_runtime.core.errors import EdgeError, Exit


def assert_refused(result, code: Exit, *words):
    assert_one_line_error(result, code, "edge-infer", *words)


def edit_manifest(engine_dir, change):
    path = engine_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_export_writes_a_complete_verified_directory(exported):
    ckpt, engines = exported
    m = json.loads((engines / "manifest.json").read_text())
    assert (m["schema"], m["schema_version"], m["name"]) == ("edge-engines", 4, "digits")
    assert [s["exit"] for s in m["segments"]] == [1, 2, 3, 4]
    assert [v["chain"] for v in m["variants"]] == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]
    flops = [v["flops"] for v in m["variants"]]
    assert flops == sorted(flops) and flops[-1] == sum(s["flops"] for s in m["segments"])
    assert all(0 < v["val_accuracy"] <= 1 for v in m["variants"]) and "bench" not in m
    # a chain graph per (0, K) and (1, K >= 1), each at the plain depth-K model's FLOPs (one exit head)
    chains = {(c["from"], c["to"]): c for c in m["chains"]}
    assert sorted(chains) == [(0, k) for k in range(4)] + [(1, k) for k in range(1, 4)]
    assert [chains[(0, k)]["flops"] for k in range(4)] == [round(v * m["baseline"]["flops"])
                                                            for v in m["controller"]["costs"]["plain"]]
    assert chains[(0, 3)]["flops"] == m["baseline"]["flops"] < flops[-1]
    assert m["baseline"]["file"] == "reference/full.onnx" and (engines / "reference/full.onnx").is_file()
    refs = m["segments"] + m["chains"] + [m["controller"][k] for k in ("predictor", "policy", "policy_arrays", "projection")] \
        + [m["reference"]]
    for r in refs:
        assert "/" not in r["file"] and (engines / r["file"]).is_file()
        assert hashlib.sha256((engines / r["file"]).read_bytes()).hexdigest() == r["sha256"]
    assert m["segments"][0]["inputs"][0]["name"] == "pixels"
    assert m["controller"]["features"]["projection_dims"] == len(m["controller"]["features"]["names"]) - 6
    assert set(m["build"]["versions"]) == {"onnx", "onnxruntime", "torch", "python"}
    assert (m["build"]["backend"], m["build"]["precision"], m["build"]["opset"]) == ("onnxruntime", "fp32", 17)
    prov = m["provenance"]
    assert prov["config_sha256"] == hashlib.sha256((ckpt / "config.json").read_bytes()).hexdigest()
    assert prov["dataset"] == "digits" and not prov["checkpoint"].startswith("/")
    assert not list(engines.parent.glob(".digits.*")), "a temporary directory was left behind"


def test_check_passes(exported):
    out, err, code = run_infer("check", "--engine-dir", exported[1], "--threads", "1")
    assert code == Exit.OK and err == "", err
    rows = [line for line in out.splitlines() if line.endswith(("PASS", "FAIL"))]
    # the features, then each exit's logits by every path to it: segments and chain, oneshot's from exit 2 on
    assert len(rows) == 12 and all(r.endswith("PASS") for r in rows)
    assert out.splitlines()[-1].startswith("PASS: 12 of 12")


def test_check_reports_a_mismatch_and_fails(exported, tmp_path):
    report = tmp_path / "check.json"
    out, err, code = run_infer("check", "--engine-dir", exported[1], "--threads", "1", "--atol", "0", "--rtol", "0",
                               "--fail-fast", "--json", report)
    assert_refused((out, err, code), Exit.MISMATCH, "out of tolerance", "depth 1 segment 0 features")
    assert out.splitlines()[-1].startswith("FAIL: 0 of 1")
    results = json.loads(report.read_text())
    assert results["passed"] is False and results["stopped_early"] and len(results["results"]) == 1


def test_every_variant_agrees_with_pytorch(exported):
    """The runtime's argmax equals the checkpoint's own PyTorch argmax, recomputed here, for every variant."""
    import torch

    from edge_model.checkpoint import load_checkpoint
    from edge_runtime.backends.ort import OrtExecutor
    from edge_runtime.core.engine_dir import EngineDir
    ckpt, engines = exported
    engine = EngineDir.open(engines)
    ref = engine.reference()
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        torch_logits = torch.stack(model.forward_exits(torch.from_numpy(ref["pixels"])), 1).numpy()
    np.testing.assert_allclose(ref["logits"], torch_logits, atol=1e-6)
    with OrtExecutor(engine.graphs(), intra_op_num_threads=1) as ex:
        steps = ex.outputs({"pixels": ref["pixels"]})
        for v in engine.variants:
            k = v["exit_index"]
            chained = ex.chain(0, k, ex.start({"pixels": ref["pixels"]}))   # one call: fixed and full mode
            np.testing.assert_array_equal(chained["logits"], steps[k]["logits"])
            assert (chained["logits"].argmax(-1) == torch_logits[:, k].argmax(-1)).all(), v["depth"]


def test_the_device_computes_the_fitted_features(exported):
    """The controller's features from segment 0's outputs (its C kernels) equal what the predictor was fitted
    on: the cached input statistics, the first exit's confidence and its post-affine pooled vector times the
    fitted P (numpy, workstation)."""
    from edge_runtime.core.controller import Controller
    from edge_model.controller.fit import load_tables
    from edge_model.controller.predictor import table_features
    from edge_runtime.backends.ort import OrtExecutor
    from edge_runtime.core.engine_dir import EngineDir
    ckpt, engines = exported
    engine = EngineDir.open(engines)
    ref = engine.reference()
    n = len(ref["pixels"])
    with np.load(ckpt / "controller" / "predictor.npz") as z:
        expected = table_features(load_tables(ckpt, ("test",))["test"].subset(np.arange(n)), z["projection"])
    with OrtExecutor(engine.graphs(), intra_op_num_threads=1) as ex:
        feed = {"pixels": ref["pixels"]}
        _, out = ex.segment(0, ex.start(feed))
    np.testing.assert_allclose(Controller(engine).features(feed, out), expected, atol=1e-4)


def test_info(exported):
    out, err, code = run_infer("info", "--engine-dir", exported[1])
    assert code == Exit.OK and err == ""
    assert "fits its stamp" in out and "digits-vit-tiny" in out
    assert "| 4 | 0 1 2 3 |" in out


def test_info_reports_a_build_that_does_not_fit(engine_copy):
    edit_manifest(engine_copy, lambda m: m["build"].update(backend="tensorrt"))
    out, err, code = run_infer("info", "--engine-dir", engine_copy)
    assert code == Exit.OK and "does NOT fit" in out and "tensorrt" in out


def flip_byte(d):
    f = d / "segment_1.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def outside_link(d):
    outside = d.parent / "elsewhere.onnx"
    shutil.copyfile(d / "segment_0.onnx", outside)
    (d / "segment_0.onnx").unlink()
    (d / "segment_0.onnx").symlink_to(outside)


REFUSALS = {
    "byte-changed": (flip_byte, Exit.CORRUPT, ["segment_1.onnx | sha256 mismatch (manifest "]),
    "file-missing": (lambda d: (d / "policy.onnx").unlink(), Exit.NOT_FOUND, ["policy.onnx | missing"]),
    "dot-dot": (lambda d: edit_manifest(d, lambda m: m["segments"][0].update(file="../digits/segment_0.onnx")),
                Exit.CORRUPT, ["../digits/segment_0.onnx | '..' leaves the engine directory"]),
    "absolute": (lambda d: edit_manifest(d, lambda m: m["reference"].update(file=str(d / "reference.npz"))),
                 Exit.CORRUPT, ["not a relative path", "reference.file"]),
    "link-outside": (outside_link, Exit.CORRUPT, ["segment_0.onnx | resolves outside"]),
    "schema-version": (lambda d: edit_manifest(d, lambda m: m.update(schema_version=1)),
                       Exit.CORRUPT, ["manifest.json | schema_version 1, this runtime reads 4"]),
    "other-schema": (lambda d: edit_manifest(d, lambda m: m.update(schema="something")),
                     Exit.CORRUPT, ["manifest.json | schema 'something'"]),
    "other-backend": (lambda d: edit_manifest(d, lambda m: m["build"].update(backend="tensorrt")),
                      Exit.BAD_INPUT, ["manifest.json | build (exported fp32 segments): build stamp: backend tensorrt"]),
    "newer-onnxruntime": (lambda d: edit_manifest(d, lambda m: m["build"]["reads_with"].update(onnxruntime="1.999")),
                          Exit.BAD_INPUT, ["build stamp: onnxruntime 1.999 or later", "needs 1.999"]),
    "bad-chain": (lambda d: edit_manifest(d, lambda m: m["variants"][2].update(chain=[0, 2])),
                  Exit.CORRUPT, ["variants[2].chain [0, 2]"]),
    "not-json": (lambda d: (d / "manifest.json").write_text("{"), Exit.CORRUPT, ["manifest.json | not valid JSON"]),
    "negative-lambda": (lambda d: edit_manifest(d, lambda m: m["controller"]["operating_points"]["oneshot"]
                                                .update({"lambda": -0.5})),
                        Exit.CORRUPT, ["manifest.json controller.operating_points.oneshot.lambda -0.5 | lambda must "
                                       "be a number >= 0"]),
}


@pytest.mark.parametrize("damage", REFUSALS, ids=list(REFUSALS))
def test_refusals_are_one_line(engine_copy, damage):
    change, code, words = REFUSALS[damage]
    change(engine_copy)
    assert_refused(run_infer("check", "--engine-dir", engine_copy), code, *words)


def test_not_an_engine_directory(tmp_path):
    assert_refused(run_infer("info", "--engine-dir", tmp_path), Exit.NOT_FOUND, "manifest.json | missing")
    assert_refused(run_infer("check", "--engine-dir", tmp_path / "absent"), Exit.NOT_FOUND, "not a directory")


def test_executor_checks_its_use_and_its_inputs(exported):
    from edge_runtime.backends.base import BackendStateError
    from edge_runtime.backends.ort import OrtExecutor
    from edge_runtime.core.engine_dir import EngineDir
    engine = EngineDir.open(exported[1])
    ex = OrtExecutor(engine.graphs(), intra_op_num_threads=1)
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(BackendStateError):
        ex.start({"pixels": x})
    with ex:
        with pytest.raises(BackendStateError):
            ex.open()
        handle, host = ex.segment(0, ex.start({"pixels": x}))
        assert set(host) == {"logits", "hidden_out"} and host["logits"].shape == (2, 10)
        _, host = ex.segment(1, ex.keep(handle, np.array([False, True])))
        assert set(host) == {"logits"} and host["logits"].shape == (1, 10)
        nan = x.copy()
        nan[0, 0, 0, 0] = np.nan
        for feed, words in [({"pixels": x.astype(np.float64)}, "input 'pixels' | dtype float64, expected float32"),
                            ({"pixels": x[:, :, :4]}, "input 'pixels' | shape (2, 1, 4, 8), expected (batch, 1, 8, 8)"),
                            ({}, "input 'pixels' | missing"),
                            ({"pixels": x, "mask": x}, "input 'mask' | not an input of segment_0"),
                            ({"pixels": x.tolist()}, "a list, expected a numpy array"),
                            ({"pixels": nan}, "input 'pixels' | holds NaN or infinite values")]:
            with pytest.raises(EdgeError, match=re.escape(words)):
                ex.start(feed)
    assert not ex.is_open
    with pytest.raises(BackendStateError):
        ex.close()


def test_providers_are_checked_before_and_after(exported, monkeypatch):
    import onnxruntime as ort

    from edge_runtime.backends.ort import OrtExecutor
    from edge_runtime.core.engine_dir import EngineDir
    graphs = EngineDir.open(exported[1]).graphs()
    with pytest.raises(EdgeError, match=re.escape("provider 'NoSuchExecutionProvider' | not available")) as err:
        OrtExecutor(graphs, providers=["NoSuchExecutionProvider"]).open()
    assert "CPUExecutionProvider" in str(err.value)

    class CpuOnlySession:   # what onnxruntime-gpu does when CUDA cannot start: runs on the CPU, quietly
        def __init__(self, path, options, providers):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", CpuOnlySession)
    with pytest.raises(EdgeError, match=re.escape("segment_0.onnx | onnxruntime fell back")):
        OrtExecutor(graphs, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]).open()


def test_export_refusals(digits_copy, tmp_path):
    _, err, code = run_cli("export", "--checkpoint", digits_copy, "--out", tmp_path / "engines" / "x", "--no-progress")
    assert code == Exit.NOT_FOUND and err.count("\n") == 1 and "fit-controller" in err
    assert not (tmp_path / "engines" / "x").exists() and not list((tmp_path / "engines").iterdir())
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    _, err, code = run_cli("export", "--checkpoint", digits_copy, "--out", tmp_path / "notes", "--no-progress")
    assert code == Exit.BAD_INPUT and "not an engine directory" in err
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_make_engines_then_check(tmp_path):
    """The documented path: `make engines PRESET=digits-vit-tiny` trains, caches, fits, exports and checks."""
    import shutil
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    cmd = ["make", "-s", "-C", str(root), "-o", ".venv/.installed", "-o", "data", "engines",
           "PRESET=digits-vit-tiny", f"CKPT={tmp_path / 'ckpt'}", f"ENGINE={tmp_path / 'engines'}",
           "FIT_ARGS=--updates 3 --episodes 128 --minibatch 128 --hidden 8 --no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PASS" in done.stdout.splitlines()[-1]
    assert (tmp_path / "engines" / "manifest.json").is_file()


def test_the_device_reads_the_predictor_trees_from_their_array_file(exported, tmp_path):
    """predictor_trees.npz (written at export, read at open: no ONNX parsing on the device) holds exactly the
    trees TreeEnsemble reads from predictor.onnx; a damaged one is one line."""
    from edge_runtime.core.engine_dir import EngineDir
    from edge_runtime.core.predictor import TreeEnsemble
    engine = EngineDir.open(exported[1])
    ctrl = engine.controller
    loaded = TreeEnsemble.load(engine.file(ctrl["predictor_trees"]["file"]))
    parsed = TreeEnsemble.from_onnx(engine.file(ctrl["predictor"]["file"]))
    for key in TreeEnsemble.ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(parsed, key))
    bad = tmp_path / "trees.npz"
    np.savez(bad, nodes=np.zeros((3, 3), np.float32), nan_true=np.zeros(3, bool), roots=np.zeros(1, np.int64),
             classes=np.array(4), softmax=np.array(True), num_features=np.array(6))
    with pytest.raises(EdgeError, match=r"trees\.npz \| its arrays are not TreeEnsemble's") as err:
        TreeEnsemble.load(bad)
    assert err.value.exit == Exit.CORRUPT
