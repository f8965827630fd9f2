"""The engine directory's manifest (`manifest.json`): schema `edge-engines`, version 1.

Written by `edge-model export` (edge_model.engines), read here on the device. Every file is named by a
path relative to the engine directory and carries its sha256:

  schema, schema_version, name
  task        kind (image | text), labels, preprocess (the checkpoint's spec), dataset,
              tokenizer {file, sha256} (text only)
  segments    [{index, exit, file, sha256, bytes, flops, params, inputs, outputs}]; inputs and outputs are
              [{name, shape (the batch axis by name, the rest ints), dtype}]
  chains      [{from (0 or 1), to (K), file, sha256, bytes, flops, inputs, outputs}]: segments from..K as one
              graph with exit K's head only, for the modes that read no intermediate exit (fixed and full
              run chain 0..K, oneshot segment 0 then chain 1..K); a chain not listed runs segment by segment
  baseline    {file, sha256, bytes, flops, inputs, outputs}: the unfolded model as one plain graph, what
              bench measures against; not needed on the device, so opening does not ask for it
  variants    [{depth, exit_index, chain (segment indices, 0..exit_index), flops, val_accuracy}]
  controller  predictor, predictor_trees (its trees as the device walks them), policy, policy_arrays,
              projection: each {file, sha256}; features (names, input
              statistics, projection_dims and how the projection reads segment 0's output);
              costs {used, plain}: per exit, the compute spent stopping there (every head on the way) and
              the plain depth-d model's, as fractions of full depth; operating_points {progressive,
              oneshot}: each {lambda, ...}, the budget chosen on the validation split; calibration
              (optional: older directories lack it) {split, n, delta, epsilons, pvalue, risks, modes
              {progressive, oneshot: {knob "lambda", order "conservative first", values (increasing),
              disagreement, new_error (counts among the n inputs, one per value), flops_fraction}}}:
              the Learn-then-Test counts a guarantee is certified from (edge_runtime.core.guarantee)
  reference   {file, sha256, ...}: a few test inputs and the PyTorch logits of every exit
  build       the exported segments' stamp: backend, precision, opset, versions {onnx, onnxruntime,
              torch, python}, device {machine, processor, system}
  builds      (after edge-infer build or a device backend's build) [{backend, precision, files [{segment,
              file, sha256, bytes}], chains (optional, as above), versions, device, ...}]: one per (backend,
              precision), each stamped. A tensorrt entry (edge_runtime.tools.build_trt) also holds buckets
              (its profiles' batch sizes, increasing), device_memory {graphs, max}, chains [{from, to, file,
              sha256, bytes}], versions.tensorrt and device {gpu, compute_capability, tensorrt, l4t}
  provenance  git_commit, dataset, config_sha256, checkpoint
  bench       (after edge-infer bench) [{backend, precision, threads, batch, machine, graphs,
              variant_ms {depth: median ms}, curves {mode: [{lambda, mean_ms}]}}]: one per (backend,
              precision, threads, batch); the curves are what --deadline-ms reads

This module checks the shape of that document and where its paths point; engine_dir.py checks the
files themselves (existence, hashes) and the build stamp. Every refusal is one EdgeError line, subject
first: the file it is about, then the reason.
"""
import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from edge_runtime.core.budget import check_lambda
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.files import write_atomic
from edge_runtime.core.guarantee import METHODS

SCHEMA = "edge-engines"
# 2: controller.costs, operating_points; 3: builds, bench keyed by backend; 4: chains, baseline (and, optional
# so 4 still reads older directories, controller.calibration)
SCHEMA_VERSION = 4
CALIBRATION_MODES = ("progressive", "oneshot")
CALIBRATION_COUNTS = ("disagreement", "new_error")
MANIFEST = "manifest.json"
CONTROLLER_FILES = ("predictor", "predictor_trees", "policy", "policy_arrays", "projection")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def bad(reason: str, exit: Exit = Exit.CORRUPT) -> EdgeError:
    return EdgeError(f"{MANIFEST} | {reason}", exit)


def read_manifest(root) -> dict:
    """The parsed, schema-checked manifest of the engine directory `root`."""
    root = Path(root)
    if not root.is_dir():
        raise EdgeError(f"{root} | not a directory (an engine directory holds {MANIFEST})", Exit.NOT_FOUND)
    path = root / MANIFEST
    if not path.is_file():
        raise EdgeError(f"{path} | missing: not an engine directory (make one with: edge-model export "
                        f"--checkpoint DIR --out {root})", Exit.NOT_FOUND)
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad(f"not valid JSON ({err})") from None
    return validate(manifest)


def need(obj: dict, key: str, kind, where: str):
    """obj[key], which must be a `kind`; bool never passes for int."""
    value = obj.get(key) if isinstance(obj, dict) else None
    ok = isinstance(value, kind) and not (kind in (int, (int, float)) and isinstance(value, bool))
    if not ok:
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise bad(f"{where}{key} missing or not a {names}")
    return value


def file_ref(obj: dict, where: str) -> dict:
    """A {file, sha256} entry: a relative path and a lowercase hex digest."""
    need(obj, "file", str, where)
    if not SHA256.match(need(obj, "sha256", str, where)):
        raise bad(f"{where}sha256 is not 64 lowercase hex digits")
    return obj


def io_list(values, where: str) -> list:
    if not isinstance(values, list) or not values:
        raise bad(f"{where} missing or empty")
    for i, v in enumerate(values):
        at = f"{where}[{i}]."
        need(v, "name", str, at)
        need(v, "dtype", str, at)
        shape = need(v, "shape", list, at)
        if not all(isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d > 0) for d in shape):
            raise bad(f"{at}shape {shape} must hold axis names and positive ints")
    return values


def validate(m) -> dict:
    """Check the schema name and version first (a newer writer gets its own message), then the structure."""
    if not isinstance(m, dict):
        raise bad("not a JSON object")
    if m.get("schema") != SCHEMA:
        raise bad(f"schema {m.get('schema')!r}, expected {SCHEMA!r} (not an engine manifest)")
    version = m.get("schema_version")
    if version != SCHEMA_VERSION:
        raise bad(f"schema_version {version!r}, this runtime reads {SCHEMA_VERSION} "
                  "(export again with a matching edge-model, or install the matching edge-runtime)")
    need(m, "name", str, "")
    task = need(m, "task", dict, "")
    if need(task, "kind", str, "task.") not in ("image", "text"):
        raise bad(f"task.kind {task['kind']!r}, expected 'image' or 'text'")
    need(task, "labels", list, "task.")
    need(task, "preprocess", dict, "task.")
    if task["kind"] == "text":
        file_ref(need(task, "tokenizer", dict, "task."), "task.tokenizer.")

    segments = need(m, "segments", list, "")
    if not segments:
        raise bad("segments is empty")
    for i, s in enumerate(segments):
        at = f"segments[{i}]."
        if need(s, "index", int, at) != i:
            raise bad(f"{at}index {s['index']}, expected {i} (segments are listed in chain order)")
        for key in ("exit", "bytes", "flops", "params"):
            need(s, key, int, at)
        file_ref(s, at)
        io_list(s.get("inputs"), at + "inputs")
        io_list(s.get("outputs"), at + "outputs")

    variants = need(m, "variants", list, "")
    if not variants:
        raise bad("variants is empty")
    for i, v in enumerate(variants):
        at = f"variants[{i}]."
        need(v, "depth", int, at)
        k = need(v, "exit_index", int, at)
        chain = need(v, "chain", list, at)
        # the runtime feeds segment k's hidden_out to segment k + 1: a chain is always 0..k
        if not 0 <= k < len(segments) or chain != list(range(k + 1)):
            raise bad(f"{at}chain {chain} with exit_index {k}: expected segments 0..{k} of {len(segments)}")
        if v["depth"] != segments[k]["exit"]:
            raise bad(f"{at}depth {v['depth']}, but segment {k} ends at exit {segments[k]['exit']}")
        need(v, "flops", int, at)
        need(v, "val_accuracy", (int, float), at)
    chain_list(m.get("chains"), len(segments), "chains")
    if m.get("baseline") is not None:
        baseline = need(m, "baseline", dict, "")
        file_ref(baseline, "baseline.")
        need(baseline, "flops", int, "baseline.")
        io_list(baseline.get("inputs"), "baseline.inputs")
    keyed(m, "bench", ("backend", "precision", "threads", "batch"), bench_entry)
    keyed(m, "builds", ("backend", "precision"), build_entry)

    controller = need(m, "controller", dict, "")
    for key in CONTROLLER_FILES:
        file_ref(need(controller, key, dict, "controller."), f"controller.{key}.")
    features = need(controller, "features", dict, "controller.")
    need(features, "names", list, "controller.features.")
    need(features, "projection_dims", int, "controller.features.")
    need(features, "pool_eps", (int, float), "controller.features.")
    costs = need(controller, "costs", dict, "controller.")
    for key in ("used", "plain"):
        values = need(costs, key, list, "controller.costs.")
        if len(values) != len(segments) or not all(isinstance(v, (int, float)) and v > 0 for v in values):
            raise bad(f"controller.costs.{key} must hold {len(segments)} positive numbers, one per exit")
    points = need(controller, "operating_points", dict, "controller.")
    for mode in ("progressive", "oneshot"):
        lam = need(need(points, mode, dict, "controller.operating_points."), "lambda", (int, float),
                   f"controller.operating_points.{mode}.")
        check_lambda(lam, f"{MANIFEST} controller.operating_points.{mode}.lambda", Exit.CORRUPT)
    if controller.get("calibration") is not None:
        calibration(need(controller, "calibration", dict, "controller."), "controller.calibration.")
    file_ref(need(m, "reference", dict, ""), "reference.")

    build = need(m, "build", dict, "")
    for key in ("backend", "precision"):
        need(build, key, str, "build.")
    need(build, "opset", int, "build.")
    need(build, "versions", dict, "build.")
    need(build, "device", dict, "build.")
    need(m, "provenance", dict, "")
    return m


def _level(obj: dict, key: str, where: str) -> float:
    value = need(obj, key, (int, float), where)
    if not 0 < value < 1:
        raise bad(f"{where}{key} {value!r} must be between 0 and 1 (exclusive)")
    return value


def calibration(c: dict, where: str) -> None:
    """controller.calibration: per mode, increasing lambdas with a count per lambda of each risk, each
    count between 0 and n (what Learn then Test certifies a guarantee from on the device)."""
    need(c, "split", str, where)
    n = need(c, "n", int, where)
    if n < 1:
        raise bad(f"{where}n {n} must be a positive number of inputs")
    _level(c, "delta", where)
    for i, eps in enumerate(need(c, "epsilons", list, where)):
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise bad(f"{where}epsilons[{i}] {eps!r} must be between 0 and 1 (exclusive)")
    if need(c, "pvalue", str, where) not in METHODS:
        raise bad(f"{where}pvalue {c['pvalue']!r}, expected one of {', '.join(METHODS)}")
    risks = need(c, "risks", dict, where)
    for key in CALIBRATION_COUNTS:
        need(risks, key, str, f"{where}risks.")
    modes = need(c, "modes", dict, where)
    for mode in CALIBRATION_MODES:
        need(modes, mode, dict, f"{where}modes.")
    for mode, e in modes.items():
        at = f"{where}modes.{mode}."
        if need(e, "knob", str, at) != "lambda" or e.get("order") != "conservative first":
            raise bad(f"{at}knob {e['knob']!r}, order {e.get('order')!r}: expected 'lambda', 'conservative first'")
        values = need(e, "values", list, at)
        if not values:
            raise bad(f"{at}values is empty")
        for v in values:
            check_lambda(v, f"{MANIFEST} {at}values", Exit.CORRUPT)
        if any(b <= a for a, b in zip(values, values[1:])):
            raise bad(f"{at}values must be increasing (lambda ascending: the most conservative first)")
        for key in CALIBRATION_COUNTS:
            counts = need(e, key, list, at)
            if len(counts) != len(values) or not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= n
                                                     for k in counts):
                raise bad(f"{at}{key} must hold {len(values)} counts, one per value, each between 0 and n = {n}")
        fractions = need(e, "flops_fraction", list, at)
        # progressive runs every exit head on the way, so a deep stop costs a little over full depth (> 1)
        if len(fractions) != len(values) or not all(isinstance(f, (int, float)) and not isinstance(f, bool)
                                                    and 0 < f < float("inf") for f in fractions):
            raise bad(f"{at}flops_fraction must hold {len(values)} positive fractions of full depth, one per value")


def chain_list(chains, num_segments: int, where: str) -> None:
    """Chain graphs: from 0 or 1 to an exit K >= from, each (from, K) once."""
    if chains is None:
        return
    if not isinstance(chains, list):
        raise bad(f"{where} is not a list")
    seen = set()
    for i, c in enumerate(chains):
        at = f"{where}[{i}]."
        j, k = need(c, "from", int, at), need(c, "to", int, at)
        if j not in (0, 1) or not j <= k < num_segments or (j, k) in seen:
            raise bad(f"{at}from {j} to {k}: expected from 0 or 1 to an exit in {j}..{num_segments - 1}, once each")
        seen.add((j, k))
        file_ref(c, at)
        need(c, "flops", int, at)
        io_list(c.get("inputs"), at + "inputs")
        io_list(c.get("outputs"), at + "outputs")


def keyed(m: dict, key: str, fields: tuple, check) -> None:
    """An optional list of entries, each checked by `check`, no two alike on `fields`."""
    if m.get(key) is None:
        return
    entries, seen = need(m, key, list, ""), set()
    for i, e in enumerate(entries):
        at = f"{key}[{i}]."
        check(e, at)
        ident = tuple(e[f] for f in fields)
        if ident in seen:
            raise bad(f"{key}[{i}] is a second entry for {' '.join(map(str, ident))} (one per {', '.join(fields)})")
        seen.add(ident)


def build_entry(b: dict, at: str) -> None:
    for key in ("backend", "precision"):
        need(b, key, str, at)
    need(b, "versions", dict, at)
    need(b, "device", dict, at)
    for j, f in enumerate(need(b, "files", list, at)):
        file_ref(f, f"{at}files[{j}].")
    for j, f in enumerate(b.get("chains") or []):
        file_ref(f, f"{at}chains[{j}].")
    if b["backend"] == "tensorrt":
        tensorrt_entry(b, at)


TRT_PRECISIONS = ("fp32", "fp16", "int8")


def tensorrt_entry(b: dict, at: str) -> None:
    """What the TensorRT backend reads back from its build: a plan per segment in order and per chain, the
    buckets its profiles were built for (one each, in order), the shared memory block and the stamp."""
    if b["precision"] not in TRT_PRECISIONS:
        raise bad(f"{at}precision {b['precision']!r}, a tensorrt build is one of {', '.join(TRT_PRECISIONS)}")
    for j, f in enumerate(b["files"]):
        if need(f, "segment", int, f"{at}files[{j}].") != j:
            raise bad(f"{at}files[{j}].segment {f['segment']}, expected {j} (one plan per segment, in chain order)")
    for j, c in enumerate(b.get("chains") or []):
        need(c, "from", int, f"{at}chains[{j}].")
        need(c, "to", int, f"{at}chains[{j}].")
    buckets = need(b, "buckets", list, at)
    if not buckets or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in buckets) \
            or any(y <= x for x, y in zip(buckets, buckets[1:])):
        raise bad(f"{at}buckets {buckets} must be positive batch sizes, increasing")
    if need(need(b, "device_memory", dict, at), "max", int, f"{at}device_memory.") < 0:
        raise bad(f"{at}device_memory.max must be a number of bytes")
    need(b["versions"], "tensorrt", str, f"{at}versions.")
    for key in ("gpu", "compute_capability", "tensorrt"):
        need(b["device"], key, str, f"{at}device.")


def bench_entry(b: dict, at: str) -> None:
    for key in ("backend", "precision"):
        need(b, key, str, at)
    need(b, "threads", int, at)
    need(b, "batch", int, at)
    for depth, ms in need(b, "variant_ms", dict, at).items():
        if not isinstance(ms, (int, float)) or isinstance(ms, bool) or not ms > 0:
            raise bad(f"{at}variant_ms.{depth} must be a positive number of ms")
    for mode, points in need(b, "curves", dict, at).items():
        if not isinstance(points, list) or not points:
            raise bad(f"{at}curves.{mode} missing or empty")
        for i, p in enumerate(points):
            check_lambda(need(p, "lambda", (int, float), f"{at}curves.{mode}[{i}]."),
                         f"{MANIFEST} {at}curves.{mode}[{i}].lambda", Exit.CORRUPT)
            need(p, "mean_ms", (int, float), f"{at}curves.{mode}[{i}].")


def write_manifest(root, manifest: dict) -> dict:
    """Validate `manifest` and write it into the engine directory `root`, whole or not at all."""
    validate(manifest)
    write_atomic(Path(root) / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def file_refs(m: dict) -> list:
    """(where in the manifest, {file, sha256}) for every file the engine directory must hold."""
    refs = [(f"segments[{s['index']}]", s) for s in m["segments"]]
    refs += [(f"chains[{i}]", c) for i, c in enumerate(m.get("chains") or [])]
    refs += [(f"controller.{key}", m["controller"][key]) for key in CONTROLLER_FILES]
    refs.append(("reference", m["reference"]))
    if m["task"]["kind"] == "text":
        refs.append(("task.tokenizer", m["task"]["tokenizer"]))
    for i, build in enumerate(m.get("builds") or []):
        refs += [(f"builds[{i}].files[{j}]", f) for j, f in enumerate(build["files"])]
        refs += [(f"builds[{i}].chains[{j}]", f) for j, f in enumerate(build.get("chains") or [])]
    return refs


def confined(root: Path, rel: str, where: str) -> Path:
    """The path `rel` names inside `root`; refuses absolute paths, '..' and links that lead outside."""
    if not rel or "\\" in rel or PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() \
            or PureWindowsPath(rel).drive:
        raise EdgeError(f"{rel or repr(rel)} | not a relative path inside the engine directory "
                        f"(manifest {where}.file)", Exit.CORRUPT)
    if ".." in PurePosixPath(rel).parts:
        raise EdgeError(f"{rel} | '..' leaves the engine directory (manifest {where}.file)", Exit.CORRUPT)
    path = root / rel
    inside = root.resolve()
    if path.resolve() != inside and inside not in path.resolve().parents:
        raise EdgeError(f"{rel} | resolves outside the engine directory, to {path.resolve()} "
                        f"(manifest {where}.file)", Exit.CORRUPT)
    return path
