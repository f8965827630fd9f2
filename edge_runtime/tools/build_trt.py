"""`edge-infer build --backend tensorrt`: TensorRT engines of an engine directory, built on the device.

Every exported graph becomes one serialized engine (a plan) beside it: segment_K.trt-<precision>.plan for
each segment, chain_J_D.trt-<precision>.plan for each chain graph of the manifest. Each is parsed from its
ONNX file (explicit batch) and built with one optimisation profile per batch bucket (default 1, 2, 4, 8,
16, 32; --buckets), min = opt = max on the batch axis of every input, so each profile has static shapes
(CUDA graphs need them). One timing cache serves every graph (timing.cache in the engine directory,
loaded when present, saved after a build that passes).

  fp32   no precision flag (TF32 where the GPU has it, TensorRT's default)
  fp16   BuilderFlag.FP16
  int8   BuilderFlag.INT8 + FP16 (what TensorRT cannot run in int8 runs in fp16). The activation ranges:
         TensorRT 8.5  implicit calibration, IInt8EntropyCalibrator2 over the samples of calibration/NAME.txt
                       (segment k on segment k-1's fp32 outputs, as the chain feeds it; chain J..D as
                       segment J), one calibration cache per graph beside the list, reused when present.
         TensorRT 10+  implicit calibration is deprecated: the parser reads Q/DQ graphs instead, written
                       here by ONNX Runtime's quantize_static on the same samples, in the form TensorRT's
                       parser takes (int8 symmetric activations and per-channel weights, float bias,
                       MatMul/Gemm/Conv only) and cached beside the list. The ORT int8 build's own
                       segment_K.int8.onnx cannot serve: on x86 its activations are uint8, and ORT's
                       defaults (asymmetric activations, int32 bias) are refused by TensorRT's parser.

Each variant is scored on the validation split as the ONNX Runtime build is (edge_runtime.tools.build:
accuracy, agreement with PyTorch, batch-1 latency against the exported fp32 segments on ONNX Runtime); a
variant that loses more than --tolerance points refuses the build and nothing is written. Otherwise the
plans move in and record_build writes the manifest's `builds` entry (backend tensorrt): files, chains,
buckets, timing_cache, calibration, device_memory (per graph, and the max: one shared block serves every
context), validation, variants, versions and the device stamp (edge_runtime.core.trt_api.device_stamp)
that the runtime checks before it loads a plan.
"""
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from edge_runtime import backends
from edge_runtime.core import trt_api
from edge_runtime.core.calibration import DEFAULT_DIR, ChainReader, read_calibration
from edge_runtime.core.engine_dir import EngineDir, GraphSpec
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.files import sha256_file, write_atomic
from edge_runtime.core.gpu_plan import DEFAULT_BUCKETS
from edge_runtime.core.lazy import lazy_import

WORKSPACE_MIB = 1024   # the builder's tactic workspace limit
PRECISIONS = ("fp32", "fp16", "int8")
TIMING_CACHE = "timing.cache"
CALIBRATOR = "IInt8EntropyCalibrator2"
# Q/DQ graphs for TensorRT 10+: what its ONNX parser accepts (onnx-tensorrt 10.1: int8 zero points, all zero)
QDQ = {"format": "QDQ", "activations": "int8", "weights": "int8", "per_channel": True, "symmetric": True,
       "quantize_bias": False, "ops": ["Conv", "Gemm", "MatMul"]}


def sources(engine: EngineDir) -> list:
    """[(GraphSpec, manifest entry, feed index)] of every graph to build: the segments in chain order, then
    the chain graphs; a chain J..D reads what segment J reads, so it calibrates on segment J's feed."""
    out = [(GraphSpec(f"segment_{s['index']}", engine.file(s["file"]), s["inputs"], s["outputs"]), s, s["index"])
           for s in engine.segments]
    out += [(GraphSpec(f"chain_{c['from']}_{c['to']}", engine.file(c["file"]), c["inputs"], c["outputs"]), c, c["from"])
            for c in engine.manifest.get("chains") or []]
    return out


class TimingCache:
    """One timing cache for every graph of a build: the bytes travel from config to config, so each build
    starts from what the previous ones measured, and the file is written once at the end."""

    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes() if path.is_file() else b""
        self.loaded = bool(self.data)   # a cache from an earlier build was read
        self.note = ""

    def attach(self, config) -> None:
        cache = config.create_timing_cache(self.data)
        if cache is None or not config.set_timing_cache(cache, False):
            # another device or TensorRT wrote it (set_timing_cache refuses a mismatch): start anew
            self.note = f"{self.path.name} was made by another device or TensorRT version: started anew"
            self.loaded, self.data = False, b""
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)
        self.cache = cache

    def collect(self) -> int:
        """Keep what the last build added; returns the bytes it grew by."""
        before, self.data = len(self.data), bytes(self.cache.serialize())
        return len(self.data) - before

    def save(self) -> None:
        write_atomic(self.path, self.data)


def cache_key(**fields) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def write_qdq(src: Path, dst: Path, feed: dict, method: str, batch: int) -> None:
    """A Q/DQ graph of `src` for TensorRT's parser (QDQ settings), calibrated by ONNX Runtime on `feed`."""
    import contextlib
    import io
    import logging
    q = lazy_import("onnxruntime.quantization", extra="runtime", why="a TensorRT int8 build (Q/DQ graphs)")
    onnx = lazy_import("onnx", extra="runtime", why="a TensorRT int8 build (Q/DQ graphs)")
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    pre, tmp = dst.with_name(dst.stem + ".pre.onnx"), dst.with_name(dst.stem + f".tmp-{os.getpid()}.onnx")
    logging.disable(logging.WARNING)   # the quantizer logs advice through the root logger and prints progress
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            lazy_import("onnxruntime.quantization.shape_inference").quant_pre_process(str(src), str(pre))
            # calibration_providers / calibration_cache_path are left out: ORT 1.16-1.19 (JetPack) lack them
            q.quantize_static(str(pre), str(tmp), ChainReader(feed, batch), quant_format=q.QuantFormat.QDQ,
                              op_types_to_quantize=list(QDQ["ops"]), per_channel=QDQ["per_channel"],
                              reduce_range=False, activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                              calibrate_method=methods[method],
                              extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                             "QuantizeBias": QDQ["quantize_bias"]})
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, dst)
    finally:
        logging.disable(logging.NOTSET)
        for p in (pre, tmp):
            if p.exists():
                p.unlink()


def build_plan(trt, spec: GraphSpec, onnx_path: Path, precision: str, buckets, timing: TimingCache,
               workspace: int, batches=None, qdq: bool = False) -> bytes:
    """One serialized engine of the ONNX graph at `onnx_path` (spec: its manifest I/O), a profile per bucket;
    `batches` (trt_api.Int8Batches) feeds 8.5's calibrator, `qdq` says the graph carries its own scales."""
    log = trt_api.logger()
    builder = trt.Builder(log)
    network = builder.create_network(trt_api.network_flags(trt))
    parser = trt_api.parse_onnx(trt, network, onnx_path)   # noqa: F841 -- owns weights the network uses
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    want = [i["name"] for i in spec.inputs]
    if sorted(names) != sorted(want):
        raise EdgeError(f"{onnx_path.name} | inputs {', '.join(names)}, the manifest says {', '.join(want)}",
                        Exit.CORRUPT)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    for flag in trt_api.precision_flags(trt, precision, qdq):
        config.set_flag(flag)
    for shapes in trt_api.bucket_profiles(spec.inputs, buckets):
        trt_api.add_profile(builder, config, shapes)
    calibrator = None
    if batches is not None:
        batches.dtypes = {network.get_input(i).name: trt_api.np_dtype(network.get_input(i).dtype)
                          for i in range(network.num_inputs)}
        shapes = trt_api.batch_shapes(spec.inputs, batches.rows)
        trt_api.add_profile(builder, config, {n: (s, s, s) for n, s in shapes.items()}, calibration=True)
        from edge_runtime.core import cuda_rt
        calibrator = trt_api.entropy_calibrator(trt, batches, cuda_rt)
        config.int8_calibrator = calibrator
    timing.attach(config)
    try:
        plan = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.close()
    if calibrator is not None and calibrator.error is not None:
        raise calibrator.error
    if plan is None:
        raise EdgeError(f"{spec.name} | TensorRT {trt.__version__} could not build a {precision} engine: "
                        f"{trt_api.last_error()}", Exit.BAD_INPUT)
    return bytes(plan)


def int8_inputs(trt, engine, calib, options, feeds) -> tuple:
    """Per graph what an int8 build reads: ({name: (onnx path, Int8Batches or None)}, details for the entry)."""
    rows = max(1, min(options.calib_batch, len(calib.calib_indices)))
    common = {"list": os.path.relpath(calib.path.resolve()), "samples": len(calib.calib_indices),
              "split": calib.calib_split, "seed": calib.calib_seed,
              "inputs": "segment 0 and chains from 0: the samples; segment k and chains from k: segment k-1's "
                        "fp32 outputs"}
    plan, caches = {}, []
    qdq = trt_api.major(trt) >= 10
    method = options.calib_method or calib.method
    ort_version = lazy_import("onnxruntime", extra="runtime").__version__
    for spec, ref, j in sources(engine):
        if qdq:
            key = cache_key(graph=ref["sha256"], data=calib.data_sha256, method=method, ort=ort_version, **QDQ)
            path = calib.path.parent / f"{calib.path.stem}.trt-qdq.{spec.name}.{key}.onnx"
            hit = path.is_file()
            if not hit:
                write_qdq(spec.path, path, feeds[j], method, options.calib_batch)
            plan[spec.name] = (path, None)
        else:
            key = cache_key(graph=ref["sha256"], data=calib.data_sha256, rows=rows, tensorrt=trt.__version__,
                            calibrator=CALIBRATOR)
            path = calib.path.parent / f"{calib.path.stem}.trt-entropy2.{spec.name}.{key}.cache"
            hit = path.is_file()
            plan[spec.name] = (spec.path, trt_api.Int8Batches(feeds[j], rows, cache=path))
        caches.append({"graph": spec.name, "file": os.path.relpath(path.resolve()), "reused": hit})
    if qdq:
        mode = {"mode": "explicit Q/DQ graphs (TensorRT >= 10 deprecates implicit calibration)",
                "quantizer": f"onnxruntime {ort_version} quantize_static", **QDQ, "method": method,
                "batch": options.calib_batch, "qdq_graphs": caches}
    else:
        mode = {"mode": f"implicit calibration ({CALIBRATOR})", "batch": rows, "cache": caches,
                "last_batch": "filled up with the first samples again (a calibration profile has one shape)"}
    return plan, {"calibration": {**common, **mode}}


def check_options(trt, precision: str) -> None:
    if precision not in PRECISIONS:
        raise EdgeError(f"--precision {precision} | TensorRT builds {', '.join(PRECISIONS)}", Exit.BAD_INPUT)
    trt_api.precision_flags(trt, precision, qdq=trt_api.major(trt) >= 10)   # refuses what this TensorRT lacks


def package_version(name: str):
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:   # pragma: no cover -- 3.8 has it
        return None
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def build_tensorrt(root, options, runtime, workspace_mib: int = WORKSPACE_MIB) -> dict:
    """Build, score and record one precision of TensorRT engines for an engine directory (module docstring).

    Args:
        root: an exported engine directory; the plans land in it.
        options: edge_runtime.tools.build.BuildOptions (precision, calibration list, tolerance, latency runs).
        runtime: RuntimeOptions: its buckets (--buckets; default 1, 2, 4, 8, 16, 32) get a profile each; the
            reference (the exported fp32 segments) runs on ONNX Runtime with its threads and providers.
        workspace_mib: the builder's workspace limit.
    Returns:
        The `builds` entry written into the manifest.
    """
    from edge_runtime.tools.build import calibration_feeds, record_build, refuse_losses, score_variants
    trt = trt_api.tensorrt(why="edge-infer build --backend tensorrt")
    root, precision = Path(root), options.precision
    check_options(trt, precision)
    device = trt_api.device_stamp()   # before anything long: no GPU or cuda-python is one line now
    engine = EngineDir.open(root)
    calib = read_calibration(options.calib or DEFAULT_DIR / f"{engine.name}.txt")
    calib.check_fits(engine.manifest)
    data = calib.arrays(engine.segments[0]["inputs"])
    buckets = tuple(getattr(runtime, "buckets", None) or DEFAULT_BUCKETS)
    base = backends.create("onnxruntime", engine.graphs(), runtime.threads, runtime.providers)
    tmp = root / f".build-trt-{precision}.tmp-{os.getpid()}"   # nothing enters the directory before it passes
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    timing = TimingCache(root / TIMING_CACHE)
    try:
        with base:
            details, inputs = {}, {}
            if precision == "int8":
                feeds = calibration_feeds(base, engine, data["calib"], options.eval_batch)
                inputs, details = int8_inputs(trt, engine, calib, options, feeds)
            qdq = precision == "int8" and trt_api.major(trt) >= 10
            todo = sources(engine)
            graphs, chains, files, chain_files, seconds, memory = [], {}, [], [], {}, {}
            for k, (spec, ref, _) in enumerate(todo, 1):
                src, batches = inputs.get(spec.name, (spec.path, None))
                t0 = time.perf_counter()
                plan = build_plan(trt, spec, src, precision, buckets, timing, workspace_mib << 20,
                                  batches, qdq)
                seconds[spec.name] = round(time.perf_counter() - t0, 2)
                grew = timing.collect()
                if options.progress:
                    print(f"[{k}/{len(todo)}] {spec.name} {precision} {seconds[spec.name]:.1f} s (timing cache: "
                          f"{'reused' if timing.loaded else 'new'}, +{grew / 1024:.1f} KiB)", file=sys.stderr, flush=True)
                dst = tmp / f"{spec.name}.trt-{precision}.plan"
                dst.write_bytes(plan)
                memory[spec.name] = trt_api.device_memory_size(trt_api.deserialize(plan, dst.name))
                built = GraphSpec(spec.name, dst, spec.inputs, spec.outputs)
                row = {"file": dst.name, "sha256": sha256_file(dst), "bytes": dst.stat().st_size}
                if spec.name.startswith("segment_"):
                    graphs.append(built)
                    files.append({"segment": ref["index"], **row})
                else:
                    chains[(ref["from"], ref["to"])] = built
                    chain_files.append({"from": ref["from"], "to": ref["to"], **row})
            scoring = dataclasses.replace(options, eval_batch=max(buckets))   # batches the profiles cover
            with backends.create("tensorrt", graphs, 1, (), chains, precision, buckets=buckets) as built_ex:
                variants = score_variants(engine, base, built_ex, data, scoring)
                executor = built_ex.describe()
        refuse_losses(root, f"tensorrt {precision}", variants, options.tolerance)
        size = sum(f["bytes"] for f in files + chain_files)
        export_size = sum(s["bytes"] for s in engine.segments) + sum(c["bytes"] for c in engine.manifest.get("chains") or [])
        entry = {"backend": "tensorrt", "precision": precision, "opset": int(engine.export_stamp.get("opset", 0)),
                 "files": files, "chains": chain_files, "bytes": size, "export_bytes": export_size,
                 "size_ratio": size / export_size, "buckets": list(buckets),
                 "profiles": "one per bucket: min = opt = max on the batch axis of every input",
                 "flags": [getattr(f, "name", str(f)) for f in trt_api.precision_flags(trt, precision, qdq)],
                 "workspace_bytes": workspace_mib << 20, "build_seconds": seconds,
                 "timing_cache": {"file": TIMING_CACHE, "reused": timing.loaded, "bytes": len(timing.data),
                                  "note": timing.note},
                 **details,
                 "device_memory": {"graphs": memory, "max": max(memory.values()),
                                   "note": "one block of max bytes serves every execution context"},
                 "validation": {"split": calib.val_split, "samples": int(len(data["val_labels"])), "data": calib.data,
                                "data_sha256": calib.data_sha256, "against": "the exported fp32 segments, same run",
                                "batch": max(buckets)},
                 "latency": {"batch": 1, "runs": options.latency_runs, "statistic": "median engine time of the chain",
                             "executor": executor, "against": "the exported fp32 segments on onnxruntime"},
                 "tolerance_points": options.tolerance, "variants": variants,
                 "versions": {"tensorrt": str(trt.__version__),
                              "cuda-python": package_version("cuda-python") or package_version("cuda-bindings"),
                              "onnxruntime": package_version("onnxruntime"), "python": platform.python_version()},
                 "device": device}
        for f in files + chain_files:
            os.replace(tmp / f["file"], root / f["file"])
        timing.save()
        record_build(root, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def summary(entry: dict, engine_dir) -> str:
    """The terminal's view of a TensorRT build: what was built where, then one row per variant."""
    c, d = entry.get("calibration"), entry["device"]
    how = "" if c is None else f", {c['mode'].split(' (')[0]} on {c['samples']} {c['split']} samples"
    lines = [f"tensorrt {entry['precision']} build written to {engine_dir} ({d.get('gpu')}, TensorRT "
             f"{entry['versions']['tensorrt']}{how}): {len(entry['files'])} segment and {len(entry['chains'])} chain "
             f"engines, {entry['bytes'] / 1024:.1f} KiB, buckets {','.join(map(str, entry['buckets']))}, "
             f"device memory {entry['device_memory']['max'] / 2 ** 20:.1f} MiB shared",
             f"scored on {entry['validation']['samples']} {entry['validation']['split']} inputs against the exported "
             f"segments, tolerance {entry['tolerance_points']:g} points", "",
             "| depth | val acc % | export fp32 % | delta points | agrees with PyTorch % | batch-1 ms | export ms | "
             "latency ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in entry["variants"]:
        lines.append(f"| {r['depth']} | {r['val_accuracy'] * 100:.2f} | {r['export_val_accuracy'] * 100:.2f} | "
                     f"{r['delta_points']:+.2f} | {r['torch_agreement'] * 100:.2f} | {r['latency_ms']:.3f} | "
                     f"{r['export_latency_ms']:.3f} | {r['latency_ratio']:.2f} |")
    note = entry["timing_cache"].get("note")
    return "\n".join(lines + ([f"note: {note}"] if note else []))
