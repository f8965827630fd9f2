"""`edge-infer build`: ONNX Runtime builds of an engine directory, written beside its exported segments.

  fp32   segment_K.opt.onnx    ONNX Runtime's graph optimisations, applied once and saved
                               (SessionOptions.optimized_model_filepath). ORT_ENABLE_EXTENDED unless its
                               fusions leave operators outside the ai.onnx domain (contrib ops some execution
                               providers lack): then ORT_ENABLE_BASIC, and the build records why.
  int8   segment_K.int8.onnx   static quantisation in QDQ format (onnxruntime.quantization.quantize_static):
                               per-channel int8 weights; activations calibrated on the samples of
                               calibration/NAME.txt (edge_runtime.core.calibration), segment k on segment k-1's
                               fp32 outputs, as the chain will feed it; MinMax, Entropy or Percentile ranges,
                               cached beside the list.

Every variant of the build is scored on the calibration set's validation split next to the exported fp32
segments, in the same run, with the same inputs: accuracy, agreement with PyTorch's argmax, and batch-1
latency (engine time, median, the two interleaved). A variant that loses more than `--tolerance` points
refuses the build in one line, and nothing is written. Otherwise the files are moved into the engine
directory and the manifest gains (or replaces) one entry of its `builds` list (record_build):

  builds  [{backend, precision, opset, files [{segment, file, sha256, bytes}], bytes, export_bytes, size_ratio,
            optimization | quantization, validation, tolerance_points, variants [{depth, val_accuracy,
            export_val_accuracy, delta_points, torch_agreement, export_torch_agreement, latency_ms,
            export_latency_ms, latency_ratio}], versions, device}]

The runtime reads a build back with EngineDir.build(backend, precision), which checks its files and stamp.
"""
import argparse
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime import backends
from edge_runtime.core.calibration import DEFAULT_DIR, METHODS, ChainReader, cache_path, read_calibration
from edge_runtime.core.engine_dir import EngineDir, GraphSpec
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.files import sha256_file
from edge_runtime.core.lazy import lazy_import
from edge_runtime.core.manifest import read_manifest, write_manifest
from edge_runtime.core.onnx_files import drop_value_info
from edge_runtime.runtime import RuntimeOptions

PRECISIONS = {"fp32": "opt", "int8": "int8"}   # precision -> the infix of its files: segment_K.<infix>.onnx
ORDER = ("fp32", "fp16", "int8")                 # how `builds` lists a backend's precisions
OPT_LEVELS = ("extended", "basic")
PORTABLE_DOMAINS = ("", "ai.onnx")


@dataclass
class BuildOptions:
    precision: str = "fp32"
    calib: str = None              # calibration/NAME.txt; None: calibration/<engine name>.txt
    calib_method: str = None       # None: the list's method
    tolerance: float = 1.0         # accuracy points a variant may lose against the exported fp32 segments
    opt_level: str = "extended"
    calib_batch: int = 32
    eval_batch: int = 256
    latency_runs: int = 50
    progress: bool = True

    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        """The build's own flags; --precision (what to build: fp32 optimised graphs or int8 QDQ) is the
        runtime group's (RuntimeOptions)."""
        g = p.add_argument_group("build")
        g.add_argument("--calib", default=None, metavar="FILE",
                       help="calibration list with its validation split (default calibration/<engine name>.txt)")
        g.add_argument("--calib-method", choices=METHODS, default=None,
                       help="calibration ranges (default: the list's method)")
        g.add_argument("--tolerance", type=float, default=1.0, metavar="POINTS",
                       help="refuse the build when a variant loses more validation accuracy (default 1.0)")
        g.add_argument("--opt-level", choices=OPT_LEVELS, default="extended",
                       help="fp32 graph optimisation (extended falls back to basic when not portable)")
        g.add_argument("--latency-runs", type=int, default=50, metavar="N",
                       help="batch-1 runs per variant for the latency ratio (default 50)")
        g.add_argument("--no-progress", action="store_true", help="no progress bar")

    @classmethod
    def from_args(cls, ns) -> "BuildOptions":
        if not ns.tolerance == ns.tolerance:   # NaN would pass every comparison
            raise EdgeError(f"--tolerance {ns.tolerance} | must be a number", Exit.BAD_INPUT)
        if ns.latency_runs < 1:
            raise EdgeError(f"--latency-runs {ns.latency_runs} | must be at least 1", Exit.BAD_INPUT)
        return cls(ns.precision, ns.calib, ns.calib_method, ns.tolerance, ns.opt_level,
                   latency_runs=ns.latency_runs, progress=not ns.no_progress)


def cpu_has_vnni() -> bool:
    """x86 8-bit dot products without saturation (ONNX Runtime's advice on reduce_range)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_vnni", " avx_vnni", " amx_int8"))


def int8_settings() -> dict:
    """ONNX Runtime's CPU advice (quantize_static's docstring): uint8 activations and int8 weights on x86,
    reduced range without VNNI; symmetric int8 for both elsewhere (ARM, and what TensorRT wants)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
    return {"format": "QDQ", "per_channel": True, "weights": "int8",
            "activations": "uint8" if x86 else "int8", "reduce_range": x86 and not cpu_has_vnni()}


def optimize_segment(ort, onnx, src: Path, dst: Path, level: str) -> dict:
    """Save ONNX Runtime's optimised graph of `src` at `level`, falling back to basic when extended
    leaves non-portable operators; unused opset imports ORT adds are dropped."""
    levels = {"extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}
    note = ""
    for lvl in (level, "basic") if level == "extended" else (level,):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[lvl]
        opts.optimized_model_filepath = str(dst)
        opts.intra_op_num_threads, opts.log_severity_level = 1, 3
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        model = onnx.load(str(dst))
        foreign = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in PORTABLE_DOMAINS})
        if not foreign:
            break
        note = f"extended gave {', '.join(foreign)}: basic keeps the file portable"
    else:
        raise RuntimeError(f"{src.name} | basic optimisation left non-portable operators: {', '.join(foreign)}")
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.save(drop_value_info(model), str(dst))
    return {"level": lvl, "note": note}


def quantize_segment(onnx, src: Path, dst: Path, feed: dict, method: str, settings: dict, cache: Path,
                     batch: int) -> bool:
    """QDQ int8 `dst` from `src`, calibrated on `feed`; returns whether the range cache was reused."""
    import contextlib
    import io
    import logging
    q = lazy_import("onnxruntime.quantization", extra="runtime")
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    types = {"int8": q.QuantType.QInt8, "uint8": q.QuantType.QUInt8}
    hit = cache.is_file()
    pre = dst.with_name(dst.stem + ".pre.onnx")
    logging.disable(logging.WARNING)   # quantize_static logs advice through the root logger,
    try:                               # and the histogram calibrators print their progress
        with contextlib.redirect_stdout(io.StringIO()):
            # symbolic shape inference + basic optimisation: what ORT's quantizer expects to start from
            lazy_import("onnxruntime.quantization.shape_inference").quant_pre_process(str(src), str(pre))
            q.quantize_static(str(pre), str(dst), ChainReader(feed, batch), quant_format=q.QuantFormat.QDQ,
                              per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                              activation_type=types[settings["activations"]], weight_type=types[settings["weights"]],
                              calibrate_method=methods[method], calibration_providers=["CPUExecutionProvider"],
                              calibration_cache_path=str(cache))
    finally:
        logging.disable(logging.NOTSET)
        pre.unlink(missing_ok=True)
    onnx.save(drop_value_info(onnx.load(str(dst))), str(dst))   # quant_pre_process annotated every tensor
    onnx.checker.check_model(str(dst))
    return hit


def batches(inputs: dict, batch: int):
    rows = len(next(iter(inputs.values())))
    for s in range(0, rows, batch):
        yield {k: v[s:s + batch] for k, v in inputs.items()}


def calibration_feeds(ex, engine: EngineDir, inputs: dict, batch: int) -> list:
    """[{input name: array}] per segment: what each segment reads when the fp32 chain runs on `inputs`
    (the raw inputs for segment 0, segment k-1's outputs after). The ORT executor's handle is the next
    segment's host feed, which this ORT build tool may read."""
    parts = [[] for _ in engine.segments]
    for part in batches(inputs, batch):
        rows = ex.start(part)
        for k in range(len(engine.segments)):
            parts[k].append(rows.feed)
            rows, _ = ex.segment(k, rows)
    return [{name: np.concatenate([f[name] for f in fs]) for name in fs[0]} for fs in parts]


def predictions(ex, engine: EngineDir, inputs: dict, batch: int) -> np.ndarray:
    """(N, segments) argmax of every exit: the full chain once per batch, segment by segment."""
    return np.concatenate([np.stack([h["logits"].argmax(-1) for h in ex.outputs(part)], 1)
                           for part in batches(inputs, batch)])


def batch1_latency(executors: list, engine: EngineDir, inputs: dict, runs: int) -> list:
    """[{depth: median ms}] per executor of one chain call at batch 1; the executors alternate run by run,
    so load hits both alike."""
    one = {k: np.ascontiguousarray(v[:1]) for k, v in inputs.items()}

    def seconds(ex, d):
        handle = ex.start(one)
        t0 = time.perf_counter()
        ex.chain(0, d, handle)
        return time.perf_counter() - t0

    result = [{} for _ in executors]
    for v in engine.variants:
        for ex in executors:   # warm up: first runs allocate
            for _ in range(3):
                seconds(ex, v["exit_index"])
        times = [[] for _ in executors]
        for _ in range(runs):
            for t, ex in zip(times, executors):
                t.append(seconds(ex, v["exit_index"]))
        for r, t in zip(result, times):
            r[v["depth"]] = float(np.median(t) * 1e3)
    return result


def record_build(root, entry: dict) -> dict:
    """The one writer of `builds`: add `entry` to the manifest, replacing the one of its (backend,
    precision); validate, write whole. Returns the manifest."""
    root = Path(root)
    manifest = read_manifest(root)
    key = (entry["backend"], entry["precision"])
    builds = [b for b in manifest.get("builds", []) if (b["backend"], b["precision"]) != key] + [entry]
    manifest["builds"] = sorted(builds, key=lambda b: (b["backend"], ORDER.index(b["precision"])
                                                       if b["precision"] in ORDER else len(ORDER)))
    return write_manifest(root, manifest)


def write_graphs(engine: EngineDir, tmp: Path, options: BuildOptions, calib, feeds, ort, onnx) -> tuple:
    """Every segment's built graph into `tmp`, a progress bar over segments. Returns (graphs, files, details):
    the GraphSpecs to score, the manifest's file entries, and how they were made."""
    from tqdm import tqdm
    precision, infix = options.precision, PRECISIONS[options.precision]
    method = options.calib_method or calib.method
    settings = int8_settings()
    graphs, files, steps, caches = [], [], [], []
    for seg in tqdm(engine.segments, desc=f"{precision} build", unit="segment", file=sys.stderr,
                    disable=not options.progress):
        src, dst = engine.file(seg["file"]), tmp / f"segment_{seg['index']}.{infix}.onnx"
        if precision == "fp32":
            steps.append(optimize_segment(ort, onnx, src, dst, options.opt_level))
        else:
            cache = cache_path(calib, method, seg, {**settings, "ort": ort.__version__})
            hit = quantize_segment(onnx, src, dst, feeds[seg["index"]], method, settings, cache, options.calib_batch)
            caches.append({"file": os.path.relpath(cache.resolve()), "reused": hit})
        graphs.append(GraphSpec(f"segment_{seg['index']}", dst, seg["inputs"], seg["outputs"]))
        files.append({"segment": seg["index"], "file": dst.name, "sha256": sha256_file(dst),
                      "bytes": dst.stat().st_size})
    if precision == "fp32":
        details = {"optimization": {"level": "/".join(sorted({s["level"] for s in steps})),
                                    "requested": options.opt_level,
                                    "notes": sorted({s["note"] for s in steps if s["note"]})}}
    else:
        details = {"quantization": {**settings, "calibration": {
            "list": os.path.relpath(calib.path.resolve()), "method": method, "samples": len(calib.calib_indices),
            "split": calib.calib_split, "seed": calib.calib_seed, "batch": options.calib_batch,
            "inputs": "segment 0: the samples; segment k: segment k-1's fp32 outputs", "cache": caches}}}
    return graphs, files, details


def score_variants(engine: EngineDir, base, built, data: dict, options: BuildOptions) -> list:
    """Per variant: the build's and the export's validation accuracy, agreement with PyTorch, batch-1 latency."""
    got = predictions(built, engine, data["val"], options.eval_batch)
    ref = predictions(base, engine, data["val"], options.eval_batch)
    lat, lat_ref = batch1_latency([built, base], engine, data["val"], options.latency_runs)
    labels, torch_pred = data["val_labels"], data["val_torch_pred"]
    rows = []
    for v in engine.variants:
        k, d = v["exit_index"], v["depth"]
        acc, acc_ref = float((got[:, k] == labels).mean()), float((ref[:, k] == labels).mean())
        rows.append({"depth": d, "val_accuracy": acc, "export_val_accuracy": acc_ref,
                     "delta_points": (acc - acc_ref) * 100,
                     "torch_agreement": float((got[:, k] == torch_pred[:, k]).mean()),
                     "export_torch_agreement": float((ref[:, k] == torch_pred[:, k]).mean()),
                     "latency_ms": lat[d], "export_latency_ms": lat_ref[d], "latency_ratio": lat[d] / lat_ref[d]})
    return rows


def refuse_losses(root, what: str, variants: list, tolerance: float) -> None:
    """One line, and nothing written, when a variant loses more than `tolerance` points of validation
    accuracy against the exported segments."""
    worst = min(variants, key=lambda r: r["delta_points"])
    if -worst["delta_points"] > tolerance:
        raise EdgeError(f"{root} | {what} build refused: depth {worst['depth']} loses "
                        f"{-worst['delta_points']:.2f} points of validation accuracy "
                        f"({worst['export_val_accuracy'] * 100:.2f} % -> {worst['val_accuracy'] * 100:.2f} %), "
                        f"tolerance {tolerance:g}; nothing written", Exit.MISMATCH)


def build_engines(engine_dir, options: BuildOptions = BuildOptions(),
                  runtime: RuntimeOptions = RuntimeOptions()) -> dict:
    """Build, score and record one precision of an engine directory (module docstring).

    Args:
        engine_dir: an exported engine directory; the built files land in it.
        options: precision, calibration list and method, tolerance, optimisation level.
        runtime: the backend (onnxruntime, or tensorrt: edge_runtime.tools.build_trt) and how its sessions
            run while scoring.
    Returns:
        The `builds` entry written into the manifest.
    """
    root = Path(engine_dir)
    engine = EngineDir.open(root)
    backend = runtime.backend_for(engine)
    if backend == "tensorrt":
        from edge_runtime.tools.build_trt import build_tensorrt
        return build_tensorrt(root, options, runtime)
    if backend != "onnxruntime":
        raise EdgeError(f"backend '{runtime.backend}' | edge-infer build makes onnxruntime and tensorrt builds only",
                        Exit.BAD_INPUT)
    if options.precision not in PRECISIONS:
        raise EdgeError(f"--precision {options.precision} | onnxruntime builds {', '.join(PRECISIONS)} "
                        f"(fp16 is a TensorRT build: --backend tensorrt)", Exit.BAD_INPUT)
    onnx = lazy_import("onnx", extra="runtime", why="edge-infer build")
    ort = lazy_import("onnxruntime", extra="runtime")
    ort.set_default_logger_severity(3)   # the quantizer's calibration sessions would warn on the console
    calib = read_calibration(options.calib or DEFAULT_DIR / f"{engine.name}.txt")
    calib.check_fits(engine.manifest)
    data = calib.arrays(engine.segments[0]["inputs"])
    precision = options.precision
    base = backends.create("onnxruntime", engine.graphs(), runtime.threads, runtime.providers)
    tmp = root / f".build-{precision}.tmp-{os.getpid()}"   # nothing enters the directory before it passes
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with base:
            feeds = calibration_feeds(base, engine, data["calib"], options.eval_batch) if precision == "int8" else None
            graphs, files, details = write_graphs(engine, tmp, options, calib, feeds, ort, onnx)
            with backends.create("onnxruntime", graphs, runtime.threads, runtime.providers) as built:
                variants = score_variants(engine, base, built, data, options)
        refuse_losses(root, precision, variants, options.tolerance)
        size, export_size = sum(f["bytes"] for f in files), sum(s["bytes"] for s in engine.segments)
        opset = max(o.version for f in files for o in onnx.load(str(tmp / f["file"])).opset_import if o.domain == "")
        entry = {"backend": "onnxruntime", "precision": precision, "opset": int(opset), "files": files,
                 "bytes": size, "export_bytes": export_size, "size_ratio": size / export_size, **details,
                 "validation": {"split": calib.val_split, "samples": int(len(data["val_labels"])), "data": calib.data,
                                "data_sha256": calib.data_sha256, "against": "the exported fp32 segments, same run"},
                 "latency": {"batch": 1, "runs": options.latency_runs, "statistic": "median engine time of the chain",
                             "providers": list(runtime.providers or ("CPUExecutionProvider",)),
                             "threads": runtime.threads},
                 "tolerance_points": options.tolerance, "variants": variants,
                 "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__,
                              "python": platform.python_version()},
                 "device": {"machine": platform.machine(), "processor": platform.processor(),
                            "system": platform.system()}}
        for f in files:
            os.replace(tmp / f["file"], root / f["file"])
        record_build(root, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def build_summary(entry: dict, engine_dir) -> str:
    """The terminal's view of a build: sizes, then one row per variant."""
    if entry["backend"] == "tensorrt":
        from edge_runtime.tools.build_trt import summary
        return summary(entry, engine_dir)
    c = entry.get("quantization", {}).get("calibration")
    what = (f"optimisation {entry['optimization']['level']}" if c is None else
            f"QDQ, {c['method']} calibration on {c['samples']} {c['split']} samples")
    v = entry["validation"]
    lines = [f"{entry['precision']} build written to {engine_dir} ({what}): {len(entry['files'])} files, "
             f"{entry['bytes'] / 1024:.1f} KiB, {entry['size_ratio']:.2f}x the exported fp32 size",
             f"scored on {v['samples']} {v['split']} inputs against the exported segments, tolerance "
             f"{entry['tolerance_points']:g} points", "",
             "| depth | val acc % | export fp32 % | delta points | agrees with PyTorch % | batch-1 ms | "
             "export ms | latency ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in entry["variants"]:
        lines.append(f"| {r['depth']} | {r['val_accuracy'] * 100:.2f} | {r['export_val_accuracy'] * 100:.2f} | "
                     f"{r['delta_points']:+.2f} | {r['torch_agreement'] * 100:.2f} | {r['latency_ms']:.3f} | "
                     f"{r['export_latency_ms']:.3f} | {r['latency_ratio']:.2f} |")
    notes = entry.get("optimization", {}).get("notes", [])
    return "\n".join(lines + [f"note: {n}" for n in notes])
