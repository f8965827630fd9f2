"""TensorRT builds without TensorRT: the calibrator's batching and cache, the bucket profiles, the L4T parser,
stamps, the 8.5-vs-10 API dispatch (small fakes, only for the version logic), the Q/DQ graphs written for
TensorRT >= 10 (real ONNX Runtime), the manifest schema of a tensorrt entry, and the CLI's one line when
TensorRT is missing. What needs a GPU (building, deserializing) runs on the device (benchmarks/gpu_check.py)."""
import json
import platform
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import edge_runtime.core
from conftest import assert_one_line_error, run_infer
from edge_runtime import backends
from edge_runtime.core import manifest as manifest_mod
from edge_runtime.core import trt_api
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.lazy import have

GOLDEN = Path(__file__).parent / "golden" / "digits-vit-tiny"
SHA = "0" * 64


# --- the calibrator's batches and cache
def text_feed(n=10):
    ids = np.arange(n * 3, dtype=np.int64).reshape(n, 3)
    return {"input_ids": ids, "attention_mask": np.ones((n, 3), np.int64) * np.arange(n)[:, None]}


def test_batches_are_fixed_size_in_the_order_asked_and_end_with_none():
    b = trt_api.Int8Batches(text_feed(10), rows=4, dtypes={"input_ids": np.int32})
    assert b.batch_count() == 3
    got = []
    while True:
        batch = b.next_batch(["attention_mask", "input_ids"])
        if batch is None:
            break
        assert list(batch) == ["attention_mask", "input_ids"]
        assert all(a.shape == (4, 3) and a.flags.c_contiguous for a in batch.values())
        assert batch["input_ids"].dtype == np.int32 and batch["attention_mask"].dtype == np.int64
        got.append(batch["attention_mask"][:, 0].tolist())
    # every sample once, in order; the last batch is filled up with the first samples again
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    assert b.served == 3 and b.next_batch(["input_ids"]) is None


def test_batches_refuse_an_input_the_feed_lacks():
    b = trt_api.Int8Batches({"hidden": np.zeros((2, 4, 8), np.float32)}, rows=2)
    with pytest.raises(EdgeError, match="'attention_mask' | the network asks"):
        b.next_batch(["hidden", "attention_mask"])


def test_a_present_calibration_cache_is_read_back_and_no_batch_is_served(tmp_path):
    cache = tmp_path / "digits.trt-entropy2.segment_1.abc.cache"
    fresh = trt_api.Int8Batches({"pixels": np.zeros((4, 1, 8, 8), np.float32)}, rows=2, cache=cache)
    assert fresh.read_cache() is None and not fresh.cache_read
    fresh.write_cache(memoryview(b"TRT-8502-EntropyCalibration2\n"))
    again = trt_api.Int8Batches({"pixels": np.zeros((4, 1, 8, 8), np.float32)}, rows=2, cache=cache)
    assert again.read_cache() == b"TRT-8502-EntropyCalibration2\n"
    assert again.cache_read and again.served == 0


def test_the_calibrator_copies_batches_in_name_order_and_keeps_an_error_for_the_builder():
    copies = []

    class Buf:
        def __init__(self, n):
            self.ptr, self.nbytes = 4096 * (len(copies) + 1) + n, n

        def close(self):
            pass

    cuda = SimpleNamespace(Stream=lambda: SimpleNamespace(synchronize=lambda: None, close=lambda: None),
                           DeviceBuffer=Buf, copy_async=lambda dst, src, n, kind, s: copies.append((dst, n, kind)))

    class Base:   # what pybind's trampoline needs: the base initialised
        def __init__(self):
            self.base_init = True

    trt = SimpleNamespace(IInt8EntropyCalibrator2=Base)
    cal = trt_api.entropy_calibrator(trt, trt_api.Int8Batches(text_feed(4), rows=2), cuda)
    assert cal.base_init and cal.get_batch_size() == 1          # explicit batch: shapes carry the batch
    ptrs = cal.get_batch(["input_ids", "attention_mask"])
    assert ptrs == [cal.buffers["input_ids"].ptr, cal.buffers["attention_mask"].ptr]
    assert [c[2] for c in copies] == ["htod", "htod"] and copies[0][1] == 2 * 3 * 8
    assert cal.get_batch(["input_ids", "attention_mask"]) is not None
    assert cal.get_batch(["input_ids", "attention_mask"]) is None and cal.error is None
    broken = trt_api.entropy_calibrator(trt, trt_api.Int8Batches(text_feed(4), rows=2), cuda)
    assert broken.get_batch(["token_type_ids"]) is None and isinstance(broken.error, EdgeError)


# --- profiles
def test_one_static_profile_per_bucket_for_every_input():
    image = [{"name": "pixels", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    profiles = trt_api.bucket_profiles(image, (1, 2, 4))
    assert profiles == [{"pixels": ((b, 1, 8, 8),) * 3} for b in (1, 2, 4)]
    text = [{"name": "hidden", "shape": ["batch", 16, 32], "dtype": "float32"},
            {"name": "attention_mask", "shape": ["batch", 16], "dtype": "int64"}]
    profiles = trt_api.bucket_profiles(text, (8, 32))
    assert profiles[1] == {"hidden": ((32, 16, 32),) * 3, "attention_mask": ((32, 16),) * 3}
    assert trt_api.batch_shapes(text, 5) == {"hidden": (5, 16, 32), "attention_mask": (5, 16)}


@pytest.mark.parametrize("shape", [[1, 8, 8], ["batch", "tokens", 8]])
def test_a_profile_needs_exactly_one_named_batch_axis(shape):
    with pytest.raises(EdgeError, match="exactly one named"):
        trt_api.bucket_profiles([{"name": "x", "shape": shape, "dtype": "float32"}], (1, 2))


# --- L4T and stamps
@pytest.mark.parametrize("line, release", [
    ("# R35 (release), REVISION: 3.1, GCID: 32827747, BOARD: t186ref, EABI: aarch64, DATE: Sun Mar 19 15:19:21 UTC 2023",
     "R35.3.1"),
    ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023",
     "R35.4.1"),
    ("R35 (release), REVISION: 1.0, GCID: 31346300, BOARD: t186ref, EABI: aarch64, DATE: Thu Aug 25 18:41:45 UTC 2022",
     "R35.1.0"),
    ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022",
     "R32.7.1"),
    ("# R36 (release), REVISION: 4.3, GCID: 12345678, BOARD: t234ref", "R36.4.3"),
    ("Ubuntu 20.04.6 LTS", None),
    ("", None),
])
def test_l4t_release_lines(line, release):
    assert trt_api.l4t_release(line) == release


def test_l4t_off_jetson_is_none(tmp_path):
    assert trt_api.read_l4t(tmp_path / "nv_tegra_release") is None
    (tmp_path / "nv_tegra_release").write_text("# R35 (release), REVISION: 3.1, GCID: 1\nmore\n")
    assert trt_api.read_l4t(tmp_path / "nv_tegra_release") == "R35.3.1"


HERE = {"gpu": "Xavier", "compute_capability": "7.2", "tensorrt": "8.5.2.2", "l4t": "R35.3.1",
        "machine": platform.machine(), "system": platform.system()}


def trt_stamp(**device) -> dict:
    return {"backend": "tensorrt", "precision": "fp16", "versions": {"tensorrt": device.get("tensorrt", "8.5.2.2")},
            "device": {**HERE, **device}}


@pytest.mark.parametrize("change, item", [({"tensorrt": "8.5.3.1"}, "tensorrt"), ({"gpu": "Orin"}, "gpu"),
                                          ({"compute_capability": "8.7"}, "compute capability"),
                                          ({"l4t": "R35.4.1"}, "l4t"), ({"l4t": None}, "l4t")])
def test_each_stamp_mismatch_is_one_line(monkeypatch, change, item):
    assert all(ok for *_, ok, _ in trt_api.stamp_fit(trt_stamp(), HERE))
    rows = trt_api.stamp_fit(trt_stamp(**change), HERE)
    assert [r[0] for r in rows if not r[3]] == [item]
    # through the backends' check, as the runtime asks before it loads a plan
    monkeypatch.setitem(backends.BACKENDS, "tensorrt", backends.BackendInfo(
        "edge_runtime.backends.tensorrt", "TensorrtExecutor", "tensorrt", "jetson", ("fp32", "fp16", "int8"), False))
    monkeypatch.setattr(backends, "available", lambda: ["onnxruntime", "tensorrt"])
    monkeypatch.setattr(trt_api, "device_stamp", lambda *a, **k: dict(HERE))
    assert backends.stamp_refusal(trt_stamp()) is None
    reason = backends.stamp_refusal(trt_stamp(**change))
    assert reason.startswith(f"build stamp: {item} ") and "\n" not in reason and "edge-infer build" in reason


def test_a_machine_without_cuda_cannot_fit_a_trt_stamp(monkeypatch):
    def no_gpu(*a, **k):
        raise EdgeError("cuda.bindings | not installed here", Exit.NOT_FOUND)

    monkeypatch.setattr(trt_api, "device_stamp", no_gpu)
    (row,) = trt_api.stamp_fit(trt_stamp())
    assert row[0] == "gpu" and not row[3] and "not installed" in row[4]


# --- the API adaptor: 8.5 against 10.x, on fakes that have only what each version has
class Ctx85:
    def __init__(self):
        self.memory = None

    def __setattr__(self, key, value):   # 8.5: device_memory is a write-only property
        object.__setattr__(self, "memory" if key == "device_memory" else key, value)


class Ctx10:
    def set_device_memory(self, ptr, size):
        self.memory = (ptr, size)


def fake_trt(version: str, strategy: bool):
    ns = SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0),
                         TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"))
    if strategy:
        ns.ExecutionContextAllocationStrategy = SimpleNamespace(USER_MANAGED="user-managed")
    return ns


def test_tensorrt_85_contexts_take_memory_through_the_property(monkeypatch):
    monkeypatch.setattr(trt_api, "tensorrt", lambda *a, **k: fake_trt("8.5.2.2", strategy=False))
    engine = SimpleNamespace(device_memory_size=1 << 20, create_execution_context_without_device_memory=Ctx85)
    ctx = trt_api.context_without_memory(engine)
    trt_api.give_device_memory(ctx, 0x7F000100, 1 << 20)
    assert isinstance(ctx, Ctx85) and ctx.memory == 0x7F000100
    assert trt_api.device_memory_size(engine) == 1 << 20
    assert trt_api.network_flags(trt_api.tensorrt()) == 1   # 1 << EXPLICIT_BATCH (0)


def test_tensorrt_10_contexts_are_user_managed_and_told_the_size(monkeypatch):
    monkeypatch.setattr(trt_api, "tensorrt", lambda *a, **k: fake_trt("10.3.0.30", strategy=True))
    asked = []
    engine = SimpleNamespace(device_memory_size=1, device_memory_size_v2=3 << 20,
                             create_execution_context=lambda s: asked.append(s) or Ctx10())
    ctx = trt_api.context_without_memory(engine)
    trt_api.give_device_memory(ctx, 0x7F000100, 3 << 20)
    assert asked == ["user-managed"] and ctx.memory == (0x7F000100, 3 << 20)
    assert trt_api.device_memory_size(engine) == 3 << 20       # v2 wins where it exists
    assert trt_api.network_flags(trt_api.tensorrt()) == 0


def test_precision_flags_by_version():
    flags = SimpleNamespace(FP16="FP16", INT8="INT8")
    trt85 = SimpleNamespace(__version__="8.5.2.2", BuilderFlag=flags)
    assert trt_api.precision_flags(trt85, "fp32") == []
    assert trt_api.precision_flags(trt85, "fp16") == ["FP16"]
    assert trt_api.precision_flags(trt85, "int8") == ["INT8", "FP16"]
    trt11 = SimpleNamespace(__version__="11.0.0", BuilderFlag=SimpleNamespace(TF32="TF32"))   # strongly typed only
    assert trt_api.precision_flags(trt11, "int8", qdq=True) == []
    for precision, qdq, words in (("fp16", False, "strongly typed"), ("int8", False, "Q/DQ"), ("int4", False, "fp32")):
        with pytest.raises(EdgeError, match=words):
            trt_api.precision_flags(trt11, precision, qdq)


def test_io_tensors_map_dtypes_by_name_without_trt_nptype(monkeypatch):
    # 8.5's trt.nptype reads np.bool, gone in numpy 1.24 (JetPack's): the adaptor never calls it
    monkeypatch.setattr(trt_api, "tensorrt", lambda *a, **k: fake_trt("8.5.2.2", strategy=False))
    tensors = {"input_ids": ("in", "INT32", (-1, 16)), "logits": ("out", "FLOAT", (-1, 10))}
    engine = SimpleNamespace(num_io_tensors=2, get_tensor_name=lambda i: list(tensors)[i],
                             get_tensor_mode=lambda n: tensors[n][0],
                             get_tensor_dtype=lambda n: SimpleNamespace(name=tensors[n][1]),
                             get_tensor_shape=lambda n: tensors[n][2])
    assert trt_api.io_tensors(engine) == [("input_ids", True, np.dtype(np.int32), (-1, 16)),
                                          ("logits", False, np.dtype(np.float32), (-1, 10))]
    with pytest.raises(EdgeError, match="FP8"):
        trt_api.np_dtype(SimpleNamespace(name="FP8"))


def test_the_timing_cache_travels_between_configs_and_a_foreign_one_starts_anew(tmp_path):
    from edge_runtime.tools.build_trt import TimingCache

    class Config:
        def __init__(self, accept=True):
            self.accept = accept

        def create_timing_cache(self, data):
            return SimpleNamespace(data=bytes(data), serialize=lambda: bytes(data) + b"+tactics")

        def set_timing_cache(self, cache, ignore_mismatch):
            assert ignore_mismatch is False
            self.cache = cache
            return self.accept or cache.data == b""

    path = tmp_path / "timing.cache"
    fresh = TimingCache(path)
    fresh.attach(Config())
    assert not fresh.loaded and fresh.collect() == len(b"+tactics")
    fresh.save()
    reused = TimingCache(path)
    config = Config()
    reused.attach(config)
    assert reused.loaded and config.cache.data == b"+tactics" and reused.note == ""
    foreign = TimingCache(path)
    config = Config(accept=False)
    foreign.attach(config)
    assert not foreign.loaded and config.cache.data == b"" and "another device" in foreign.note


# --- Q/DQ graphs for TensorRT >= 10, written by the real ONNX Runtime
def test_qdq_graphs_are_what_tensorrts_parser_takes(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper
    from edge_runtime.tools.build_trt import QDQ, write_qdq
    rng = np.random.default_rng(0)
    feed = {"hidden": rng.standard_normal((16, 16, 32)).astype(np.float32)}
    dst = tmp_path / "segment_1.qdq.onnx"
    write_qdq(GOLDEN / "segment_1.onnx", dst, feed, "minmax", 8)
    model = onnx.load(str(dst))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and not [p for p in tmp_path.iterdir() if p != dst]   # no temporary file left
    for n in qdq:
        assert len(n.input) == 3, "TensorRT needs the zero point to pick int8"
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: symmetric int8 only (onnx-tensorrt)"
    # a float bias: no int32 tensor feeds a DequantizeLinear
    assert all(inits[n.input[0]].dtype != np.int32 for n in qdq if n.input[0] in inits)
    # quantized weights only where QDQ says (MatMul/Gemm/Conv: no scalar constant with an axis)
    weights = {o for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits for o in n.output}
    quantized = {n.op_type for n in model.graph.node if set(n.input) & weights}
    assert quantized and quantized <= set(QDQ["ops"])
    import onnxruntime as ort
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
    want = ort.InferenceSession(str(GOLDEN / "segment_1.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits"], feed)[0]
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.75


# --- the manifest
def trt_entry(precision="fp16") -> dict:
    m = json.loads((GOLDEN / "manifest.json").read_text())
    return {"backend": "tensorrt", "precision": precision,
            "files": [{"segment": k, "file": f"segment_{k}.trt-{precision}.plan", "sha256": SHA, "bytes": 1}
                      for k in range(len(m["segments"]))],
            "chains": [{"from": c["from"], "to": c["to"], "file": f"chain_{c['from']}_{c['to']}.trt-{precision}.plan",
                        "sha256": SHA, "bytes": 1} for c in m["chains"]],
            "buckets": [1, 2, 4, 8, 16, 32], "device_memory": {"graphs": {"segment_0": 512}, "max": 512},
            "versions": {"tensorrt": "8.5.2.2"}, "device": dict(HERE)}


def with_build(entry) -> dict:
    m = json.loads((GOLDEN / "manifest.json").read_text())
    m["builds"] = [entry]
    return m


def test_the_schema_accepts_a_tensorrt_entry():
    assert manifest_mod.validate(with_build(trt_entry()))["builds"][0]["buckets"][-1] == 32


@pytest.mark.parametrize("change, words", [
    (lambda e: e.update(precision="int4"), "precision 'int4'"),
    (lambda e: e.update(buckets=[1, 4, 2]), "increasing"),
    (lambda e: e.update(buckets=[]), "buckets"),
    (lambda e: e.pop("device_memory"), "device_memory"),
    (lambda e: e["device"].pop("gpu"), "device.gpu"),
    (lambda e: e["versions"].pop("tensorrt"), "versions.tensorrt"),
    (lambda e: e["files"].reverse(), "chain order"),
    (lambda e: e["chains"][0].pop("to"), "chains[0].to"),
])
def test_the_schema_refuses_a_malformed_tensorrt_entry_in_one_line(change, words):
    entry = trt_entry()
    change(entry)
    with pytest.raises(EdgeError) as err:
        manifest_mod.validate(with_build(entry))
    assert err.value.exit == Exit.CORRUPT and words in str(err.value) and "\n" not in str(err.value)


def test_record_build_lists_fp32_fp16_int8(tmp_path, monkeypatch):
    from edge_runtime.tools.build import record_build
    root = tmp_path / "digits"
    shutil.copytree(GOLDEN, root)
    for precision in ("int8", "fp32", "fp16"):
        record_build(root, trt_entry(precision))
    builds = json.loads((root / "manifest.json").read_text())["builds"]
    assert [(b["backend"], b["precision"]) for b in builds] == [("tensorrt", p) for p in ("fp32", "fp16", "int8")]


# --- the command line
@pytest.mark.skipif(have("tensorrt"), reason="TensorRT is installed: the build would run")
def test_build_without_tensorrt_is_one_line_and_writes_nothing(tmp_path):
    root = tmp_path / "digits"
    shutil.copytree(GOLDEN, root)
    before = sorted(p.name for p in root.iterdir())
    result = run_infer("build", "--engine-dir", root, "--backend", "tensorrt", "--precision", "fp16",
                       "--no-progress")
    assert_one_line_error(result, Exit.NOT_FOUND, "edge-infer", "tensorrt | not installed",
                          "edge-infer build --backend tensorrt")
    assert sorted(p.name for p in root.iterdir()) == before


def test_an_onnxruntime_fp16_build_is_refused_in_one_line(tmp_path):
    root = tmp_path / "digits"
    shutil.copytree(GOLDEN, root)
    result = run_infer("build", "--engine-dir", root, "--backend", "ort", "--precision", "fp16", "--no-progress")
    assert_one_line_error(result, Exit.BAD_INPUT, "edge-infer", "--precision fp16", "--backend tensorrt")


# --- the build sequence, on a fake builder (what it asks of TensorRT, per version)
class FakeTrt:
    """Just enough of TensorRT's build API to record what build_plan asks for."""

    def __init__(self, version, inputs, parse_ok=True, plan=b"plan"):
        trt = self
        self.__version__, self.calls = version, []
        self.BuilderFlag = SimpleNamespace(FP16="FP16", INT8="INT8")
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        self.NetworkDefinitionCreationFlag = SimpleNamespace(EXPLICIT_BATCH=0)

        class ILogger:
            Severity = SimpleNamespace(ERROR=1)

            def __init__(self):
                pass

        class IInt8EntropyCalibrator2:
            def __init__(self):
                pass

        self.ILogger, self.IInt8EntropyCalibrator2 = ILogger, IInt8EntropyCalibrator2
        network = SimpleNamespace(num_inputs=len(inputs),
                                  get_input=lambda i: SimpleNamespace(name=inputs[i][0],
                                                                      dtype=SimpleNamespace(name=inputs[i][1])))

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (lo, opt, hi)

        class Config:
            int8_calibrator = None

            def set_memory_pool_limit(self, pool, n):
                trt.calls.append(("workspace", n))

            def set_flag(self, flag):
                trt.calls.append(("flag", flag))

            def add_optimization_profile(self, p):
                trt.calls.append(("profile", p.shapes))
                return 0

            def set_calibration_profile(self, p):
                trt.calls.append(("calibration profile", p.shapes))
                return True

            def create_timing_cache(self, data):
                return SimpleNamespace(serialize=lambda: b"cache")

            def set_timing_cache(self, cache, ignore):
                return True

        class Builder:
            def __init__(self, log):
                pass

            def create_network(self, flags):
                trt.calls.append(("network", flags))
                return network

            create_builder_config = staticmethod(Config)
            create_optimization_profile = staticmethod(Profile)

            def build_serialized_network(self, net, config):
                cal = config.int8_calibrator
                if cal is not None:   # TensorRT calibrates here, reading the cache first
                    if cal.read_calibration_cache() is None:
                        while cal.get_batch([n for n, _ in inputs]) is not None:
                            trt.calls.append(("batch",))
                return plan

        class OnnxParser:
            num_errors = 1

            def __init__(self, net, log):
                pass

            def parse_from_file(self, path):
                return parse_ok

            def get_error(self, i):
                return "In node 3 (importMatMul): UNSUPPORTED_NODE: something\nwrapped"

        self.Builder, self.OnnxParser = Builder, OnnxParser


def build_with(monkeypatch, tmp_path, version, precision, batches=None, **kw):
    from edge_runtime.core.engine_dir import GraphSpec
    from edge_runtime.tools.build_trt import TimingCache, build_plan
    inputs = [("hidden", "FLOAT"), ("attention_mask", "INT32")]
    trt = FakeTrt(version, inputs, **kw)
    monkeypatch.setattr(trt_api, "tensorrt", lambda *a, **k: trt)
    monkeypatch.setattr(trt_api, "_LOGGER", None)
    spec = GraphSpec("segment_1", tmp_path / "segment_1.onnx",
                     [{"name": "hidden", "shape": ["batch", 4, 8], "dtype": "float32"},
                      {"name": "attention_mask", "shape": ["batch", 4], "dtype": "int64"}], [])
    cuda = SimpleNamespace(Stream=lambda: SimpleNamespace(synchronize=lambda: None, close=lambda: None),
                           DeviceBuffer=lambda n: SimpleNamespace(ptr=256, nbytes=n, close=lambda: None),
                           copy_async=lambda *a: None)
    monkeypatch.setitem(sys.modules, "edge_runtime.core.cuda_rt", cuda)   # build_plan imports it lazily
    monkeypatch.setattr(edge_runtime.core, "cuda_rt", cuda, raising=False)
    plan = build_plan(trt, spec, spec.path, precision, (1, 4), TimingCache(tmp_path / "timing.cache"), 1 << 20,
                      batches, qdq=precision == "int8" and trt_api.major(trt) >= 10)
    return plan, trt.calls


def test_a_tensorrt_85_int8_build_calibrates_at_its_own_profile(monkeypatch, tmp_path):
    feed = {"hidden": np.zeros((5, 4, 8), np.float32), "attention_mask": np.ones((5, 4), np.int64)}
    batches = trt_api.Int8Batches(feed, rows=2, cache=tmp_path / "c.cache")
    plan, calls = build_with(monkeypatch, tmp_path, "8.5.2.2", "int8", batches)
    assert plan == b"plan" and calls[0] == ("network", 1)
    assert ("flag", "INT8") in calls and ("flag", "FP16") in calls
    profiles = [c[1] for c in calls if c[0] == "profile"]
    assert profiles == [{"hidden": (((1, 4, 8),) * 3), "attention_mask": (((1, 4),) * 3)},
                        {"hidden": (((4, 4, 8),) * 3), "attention_mask": (((4, 4),) * 3)}]
    assert [c[1] for c in calls if c[0] == "calibration profile"] == [
        {"hidden": (((2, 4, 8),) * 3), "attention_mask": (((2, 4),) * 3)}]
    assert calls.count(("batch",)) == 3 and batches.dtypes["attention_mask"] == np.int32   # 8.5: int64 -> int32


def test_a_tensorrt_10_int8_build_reads_qdq_and_needs_no_calibrator(monkeypatch, tmp_path):
    plan, calls = build_with(monkeypatch, tmp_path, "10.3.0.30", "int8")
    assert calls[0] == ("network", 0) and not [c for c in calls if c[0] in ("calibration profile", "batch")]
    assert [c[1] for c in calls if c[0] == "flag"] == ["INT8", "FP16"]


@pytest.mark.parametrize("kw, words", [({"parse_ok": False}, "parser refused it: In node 3 (importMatMul): "
                                                             "UNSUPPORTED_NODE: something wrapped"),
                                       ({"plan": None}, "could not build a fp16 engine")])
def test_build_failures_are_one_line(monkeypatch, tmp_path, kw, words):
    with pytest.raises(EdgeError) as err:
        build_with(monkeypatch, tmp_path, "8.5.2.2", "fp16", **kw)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_int8_inputs_calibrate_each_chain_on_the_feed_of_its_first_segment(tmp_path):
    from edge_runtime.core.calibration import CalibrationSet
    from edge_runtime.core.engine_dir import EngineDir
    from edge_runtime.tools.build import BuildOptions
    from edge_runtime.tools.build_trt import int8_inputs
    engine = EngineDir.open(GOLDEN)
    calib = CalibrationSet(tmp_path / "digits.txt", "digits", "", "minmax", "train", 0, list(range(10)), "val", 5,
                           "digits.npz", "1" * 64)
    feeds = [{"x": np.full((10, 2), k, np.float32)} for k in range(len(engine.segments))]
    trt = SimpleNamespace(__version__="8.5.2.2")
    plan, details = int8_inputs(trt, engine, calib, BuildOptions(precision="int8", calib_batch=4), feeds)
    assert plan["chain_1_3"][1].feed is feeds[1] and plan["chain_0_2"][1].feed is feeds[0]
    assert plan["segment_2"][1].feed is feeds[2] and plan["segment_2"][0] == GOLDEN / "segment_2.onnx"
    c = details["calibration"]
    assert c["batch"] == 4 and c["mode"].startswith("implicit") and not any(x["reused"] for x in c["cache"])
    plan["segment_0"][1].write_cache(b"cache")
    _, again = int8_inputs(trt, engine, calib, BuildOptions(precision="int8", calib_batch=4), feeds)
    assert [x["graph"] for x in again["calibration"]["cache"] if x["reused"]] == ["segment_0"]


def test_the_summary_reads_a_tensorrt_entry():
    from edge_runtime.tools.build_trt import summary
    entry = {**trt_entry(), "bytes": 2048, "timing_cache": {"note": ""}, "tolerance_points": 1.0,
             "validation": {"samples": 270, "split": "val"},
             "variants": [{"depth": 1, "val_accuracy": 0.9, "export_val_accuracy": 0.91, "delta_points": -1.0,
                           "torch_agreement": 0.98, "latency_ms": 0.2, "export_latency_ms": 0.4,
                           "latency_ratio": 0.5}]}
    text = summary(entry, "engines/digits")
    assert "tensorrt fp16 build written to engines/digits (Xavier, TensorRT 8.5.2.2)" in text
    assert "| 1 | 90.00 | 91.00 | -1.00 | 98.00 | 0.200 | 0.400 | 0.50 |" in text
