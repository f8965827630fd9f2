"""Memory of the segment engine set, side by side with one static full-depth model and a naive set of
separate full graphs, one per variant (DESIGN section 5: weights stored once, one chain per variant), and
of the whole process as a user opens the runtime, against a plain session of the full model.

    python benchmarks/memory.py --engine-dir engines/digits [--out benchmarks/reports/memory]
                                [--build export|fp32|int8] [--batch 64] [--repeats 3] [--threads 1]

The sets, all from the same files:
  segments               every segment_K graph in its own session, each session keeping its own CPU arena
  segments_shared_arena  the same sessions sharing one CPU arena registered in ONNX Runtime's environment,
                         as the runtime (OrtExecutor) loads them
                         (session.use_env_allocators): the one workspace DESIGN section 5 asks for
  static                 the segments chained into one graph (hidden_out -> hidden), only the last exit's
                         logits kept and the earlier exit heads pruned: the plain full-depth model; or --static
  naive                  a chained graph per variant (segments 0..k, exit k's logits): each its own weights
and a one-op session (an Identity): ONNX Runtime's fixed cost, which dominates small models, so the
ratios are also given above it.

Each number comes from a fresh interpreter (this file, run with --child), which imports numpy and
onnxruntime, loads the input batch, and only then reads its baseline:
  load       VmRSS after the sessions are created, minus the baseline (weights, graphs, sessions)
  resident   VmRSS after a batch went twice through every variant the set holds, minus the baseline
             (weights + the arenas and buffers the runs keep; twice, because ONNX Runtime allocates the
             memory pattern it planned on a shape's first run only from the second run on)
  peak       VmHWM over that run minus VmRSS after load: the activation peak. The high-water mark is
             reset after loading (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0), so loading's own
             transient peak does not hide it.
The segments' and the naive set's peaks are measured per variant, each in its own process. Numbers are
medians over --repeats. Writes <out>/<engine>[.<build>].json and .md (temp name, then rename).
Linux only (it reads /proc/self/status).
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge_runtime.core.files import write_atomic
from edge_runtime.core.lazy import lazy_import

KIB = 1024


# --- the child: one fresh process, one measurement

def vm(field: str) -> int:
    """A /proc/self/status field in KiB (VmRSS, VmHWM)."""
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def make_sessions(paths: list, threads: int, shared_arena: bool) -> list:
    """Sessions as the runtime makes them (edge_runtime.backends.ort.session_from_file: every CPU session
    shares one arena registered in ONNX Runtime's environment), or, for comparison, the same options with
    each session keeping its own arena."""
    from edge_runtime.backends.ort import session_from_file
    ort = lazy_import("onnxruntime", extra="runtime")
    if shared_arena:
        return [session_from_file(p, ["CPUExecutionProvider"], threads) for p in paths]
    sessions = []
    for p in paths:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
        sessions.append(ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]))
    return sessions


def child(spec_path: str) -> None:
    lazy_import("onnxruntime", extra="runtime")   # imported before the baseline: the interpreter's, not the set's

    import edge_runtime.backends.ort   # noqa: F401
    spec = json.loads(Path(spec_path).read_text())
    with np.load(spec["inputs"]) as z:
        inputs = {k: z[k] for k in z.files}
    base = vm("VmRSS")
    sessions = make_sessions(spec["graphs"], spec["threads"], spec["shared_arena"])
    load = vm("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = vm("VmHWM") <= load + 64
    except OSError:
        reset = False
    for run in spec["runs"] * 2:   # ORT plans a memory pattern on a shape's first run, allocates it from the 2nd
        prev = None
        for g in run:
            s = sessions[g]
            feed = {i.name: prev["hidden_out"] if i.name == "hidden" else inputs[i.name] for i in s.get_inputs()}
            prev = dict(zip([o.name for o in s.get_outputs()], s.run(None, feed)))
    rss, hwm = vm("VmRSS"), vm("VmHWM")
    print(json.dumps({"baseline_kib": base, "load_kib": load - base, "resident_kib": rss - base,
                      "peak_kib": hwm - load if reset else None, "hwm_reset": reset}))


# --- the parent: build the graphs, run the children, report

def chain_model(paths: list, out: Path) -> None:
    """Segments `paths` (0..k) as one graph: segment k's hidden_out feeds k+1's hidden, shared inputs stay
    shared, only the last segment's logits is an output, and what it does not need is pruned."""
    onnx = lazy_import("onnx", extra="runtime", why="benchmarks/memory.py")
    compose, helper = onnx.compose, onnx.helper
    models = [onnx.load(str(p)) for p in paths]
    first = [i.name for i in models[0].graph.input]
    nodes, inits = [], []
    for k, m in enumerate(models):
        if len(m.functions):
            raise SystemExit(f"{paths[k]} | holds ONNX functions; chaining them is not supported here")
        m = compose.add_prefix(m, f"s{k}/")
        rename = {f"s{k}/{n}": n for n in first}
        if k:
            rename[f"s{k}/hidden"] = f"s{k - 1}/hidden_out"
        if k == len(models) - 1:
            rename[f"s{k}/logits"] = "logits"
        for n in m.graph.node:
            n.input[:] = [rename.get(x, x) for x in n.input]
            n.output[:] = [rename.get(x, x) for x in n.output]
        nodes += list(m.graph.node)
        inits += list(m.graph.initializer)
    needed, kept = {"logits"}, []
    for n in reversed(nodes):   # nodes are in topological order: walk back from the output
        if any(o in needed for o in n.output):
            kept.append(n)
            needed.update(x for x in n.input if x)
    logits = next(o for o in models[-1].graph.output if o.name == "logits")
    graph = helper.make_graph(kept[::-1], f"chain_0_{len(models) - 1}", list(models[0].graph.input), [logits],
                              initializer=[t for t in inits if t.name in needed])
    model = helper.make_model(graph, opset_imports=list(models[0].opset_import), ir_version=models[0].ir_version)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def one_op_model(segment0: Path, out: Path) -> None:
    """An Identity on segment 0's first input: a session that holds nothing, for ONNX Runtime's fixed cost."""
    onnx = lazy_import("onnx", extra="runtime", why="benchmarks/memory.py")
    helper = onnx.helper
    x = onnx.load(str(segment0)).graph.input[0]
    y = helper.make_tensor_value_info("y", x.type.tensor_type.elem_type, None)
    graph = helper.make_graph([helper.make_node("Identity", [x.name], ["y"])], "one_op", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(out))


def measure(spec: dict, work: Path, tag: str) -> dict:
    path = work / f"{tag}.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"memory.py: the {tag} measurement failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(rows: list, key: str):
    values = [r[key] for r in rows if r[key] is not None]
    return float(statistics.median(values)) if values else None


def run_benchmark(engine_dir, build: str = "export", batch: int = 64, repeats: int = 3, threads: int = 1,
                  static=None, progress: bool = True) -> dict:
    """Measure the three sets of an engine directory; returns the report (module docstring)."""
    from tqdm import tqdm

    from edge_runtime.core.engine_dir import EngineDir
    from edge_runtime.core.errors import EdgeError
    engine = EngineDir.open(engine_dir)
    graphs = engine.graphs() if build == "export" else engine.build("onnxruntime", build).graphs
    seg_paths = [str(g.path.resolve()) for g in graphs]
    ref = engine.reference()
    first = [i["name"] for i in engine.segments[0]["inputs"]]
    reps = -(-batch // len(ref[first[0]]))
    inputs = {n: np.ascontiguousarray(np.concatenate([ref[n]] * reps)[:batch]) for n in first}
    variants = engine.variants
    with tempfile.TemporaryDirectory(prefix="edge-memory-") as tmp:
        work = Path(tmp)
        np.savez(work / "inputs.npz", **inputs)
        naive = []
        for v in variants:
            naive.append(work / f"naive_{v['depth']}.onnx")
            chain_model(seg_paths[:v["exit_index"] + 1], naive[-1])
        static_path = Path(static) if static else work / "static.onnx"
        if not static:
            chain_model(seg_paths, static_path)
        check_static(static_path, seg_paths, inputs, threads)
        one_op_model(Path(seg_paths[0]), work / "one_op.onnx")

        def spec(paths, runs, shared_arena=False):
            return {"graphs": [str(p) for p in paths], "runs": runs, "inputs": str(work / "inputs.npz"),
                    "threads": threads, "shared_arena": shared_arena}

        full = variants[-1]
        jobs = [("one_op", None, spec([work / "one_op.onnx"], [[0]])), ("static", None, spec([static_path], [[0]])),
                ("naive", None, spec(naive, [[i] for i in range(len(naive))]))]
        for i, v in enumerate(variants):
            jobs.append(("segments", v["depth"], spec(seg_paths, [v["chain"]])))
            jobs.append(("segments_shared_arena", v["depth"], spec(seg_paths, [v["chain"]], shared_arena=True)))
            jobs.append(("naive", v["depth"], spec(naive, [[i]])))
        rows = {}
        bar = tqdm(total=len(jobs) * repeats, desc="memory", unit="process", file=sys.stderr, disable=not progress)
        for r in range(repeats):
            for name, depth, s in jobs:
                rows.setdefault((name, depth), []).append(measure(s, work, f"{name}_{depth}_{r}"))
                bar.update()
        bar.close()
        sizes = {"segments": sum(os.path.getsize(p) for p in seg_paths), "static": static_path.stat().st_size,
                 "naive": sum(p.stat().st_size for p in naive)}
    if any(not r["hwm_reset"] for rs in rows.values() for r in rs):
        raise EdgeError("/proc/self/clear_refs | the high-water mark could not be reset: no peak measured")

    def summary(name: str, whole, counted: int) -> dict:
        # whole: the process whose runs touched every graph of the set (load and resident come from it)
        return {"graphs": counted, "file_kib": sizes[name] / KIB, "activation_peak_kib": {},
                **{key: median(rows[whole], key) for key in ("load_kib", "resident_kib", "baseline_kib")}}

    sizes["segments_shared_arena"] = sizes["segments"]
    sets = {"segments": summary("segments", ("segments", full["depth"]), len(seg_paths)),
            "segments_shared_arena": summary("segments_shared_arena", ("segments_shared_arena", full["depth"]),
                                             len(seg_paths)),
            "static": summary("static", ("static", None), 1),
            "naive": summary("naive", ("naive", None), len(naive))}
    sets["static"]["activation_peak_kib"][str(full["depth"])] = median(rows[("static", None)], "peak_kib")
    for v in variants:
        for name in ("segments", "segments_shared_arena", "naive"):
            sets[name]["activation_peak_kib"][str(v["depth"])] = median(rows[(name, v["depth"])], "peak_kib")
    fixed = {key: median(rows[("one_op", None)], key) for key in ("load_kib", "resident_kib")}
    above = {name: (sets[name]["resident_kib"] - fixed["resident_kib"]) /
             (sets["static"]["resident_kib"] - fixed["resident_kib"])
             for name in ("segments", "segments_shared_arena", "naive")}
    ratios = {f"{a}/{b}": {key: sets[a][key] / sets[b][key] if sets[b][key] else None
                           for key in ("resident_kib", "load_kib", "file_kib")}
              for a, b in (("segments", "static"), ("segments_shared_arena", "static"), ("naive", "static"),
                           ("segments", "naive"))}
    onnxruntime = lazy_import("onnxruntime", extra="runtime")
    return {"engine": engine.name, "engine_dir": os.path.relpath(Path(engine_dir).resolve()), "build": build,
            "batch": batch, "threads": threads, "repeats": repeats, "static_from": str(static) if static else
            "the segments chained (onnx), earlier exit heads pruned", "onnxruntime": onnxruntime.__version__,
            "machine": f"{platform.machine()} {platform.system()}",
            "method": "fresh process per number; VmRSS minus the same process's baseline after importing "
                      "onnxruntime and loading the inputs; peak = VmHWM after clear_refs at load",
            "sets": sets, "ratios": ratios, "one_op_session_kib": fixed,
            "resident_above_one_op_over_static": above,
            "acceptance": {name: ratios[f"{name}/static"]["resident_kib"] <= 1.10
                           for name in ("segments", "segments_shared_arena")},
            "whole_process": whole_process(engine_dir, repeats, threads, progress)}


def whole_process(engine_dir, repeats: int, threads: int, progress: bool) -> dict:
    """benchmarks/process.py's warm-start processes: the runtime in each mode against a plain session."""
    sys.path.insert(0, str(Path(__file__).parent))
    import process
    report = process.run_benchmark(engine_dir, ["progressive", "oneshot", "full"], repeats, threads, progress,
                                   conditions=("warm",))
    return {"rows": [{k: r[k] for k in ("what", "mode", "rss_open_kib", "rss_kib", "hwm_kib", "rss_vs_plain",
                                         "rss_open_vs_plain")} for r in report["results"]],
            "method": "fresh process each; VmRSS / VmHWM of the whole process (benchmarks/process.py, warm)"}


def check_static(static: Path, seg_paths: list, inputs: dict, threads: int) -> None:
    """The static graph must compute what the segment chain computes (full depth, this batch)."""
    from edge_runtime.backends.ort import session_from_file
    prev = None
    for p in seg_paths:
        s = session_from_file(p, ["CPUExecutionProvider"], threads)
        feed = {i.name: prev["hidden_out"] if i.name == "hidden" else inputs[i.name] for i in s.get_inputs()}
        prev = dict(zip([o.name for o in s.get_outputs()], s.run(None, feed)))
    s = session_from_file(static, ["CPUExecutionProvider"], threads)
    got = s.run(None, {i.name: inputs[i.name] for i in s.get_inputs()})[0]
    err = float(np.abs(got - prev["logits"]).max())
    if not err <= 1e-4:
        raise SystemExit(f"{static.name} | its logits differ from the segment chain's by {err:.3g}")


def markdown(report: dict) -> str:
    s, r = report["sets"], report["ratios"]
    lines = [f"# Memory: {report['engine']} ({report['build']} graphs)", "",
             f"Batch {report['batch']}, {report['threads']} intra-op thread(s), median of {report['repeats']} fresh "
             f"processes per number, onnxruntime {report['onnxruntime']} on {report['machine']}. "
             f"{report['method']}.", "",
             "| set | graphs | files KiB | RSS after load KiB | resident after the runs KiB | x static (resident) | "
             "x static (load) |", "|---|---|---|---|---|---|---|"]
    for name in ("segments", "segments_shared_arena", "static", "naive"):
        x = s[name]
        ratio = r.get(f"{name}/static", {"resident_kib": 1.0, "load_kib": 1.0})
        lines.append(f"| {name} | {x['graphs']} | {x['file_kib']:.1f} | {x['load_kib']:.0f} | "
                     f"{x['resident_kib']:.0f} | {ratio['resident_kib']:.2f} | {ratio['load_kib']:.2f} |")
    depths = list(s["segments"]["activation_peak_kib"])
    lines += ["", "Peak activation memory (VmHWM over the run minus RSS after load), KiB:", "",
              "| depth | segment chain | segment chain, shared arena | naive graph | static (full depth) |",
              "|---|---|---|---|---|"]
    for d in depths:
        st = s["static"]["activation_peak_kib"].get(d)
        lines.append(f"| {d} | {s['segments']['activation_peak_kib'][d]:.0f} | "
                     f"{s['segments_shared_arena']['activation_peak_kib'][d]:.0f} | "
                     f"{s['naive']['activation_peak_kib'][d]:.0f} | {'-' if st is None else f'{st:.0f}'} |")
    lines.append("")
    for name in ("segments", "segments_shared_arena"):
        ok = report["acceptance"][name]
        lines.append(f"{name} / static resident: {r[f'{name}/static']['resident_kib']:.2f}x "
                     f"({'within' if ok else 'NOT within'} 1.10x).")
    lines.append(f"naive / static resident: {r['naive/static']['resident_kib']:.2f}x.")
    f, above = report["one_op_session_kib"], report["resident_above_one_op_over_static"]
    lines += ["", f"ONNX Runtime's fixed cost, a one-op session: {f['load_kib']:.0f} KiB after load, "
                  f"{f['resident_kib']:.0f} KiB after a run. Above it, resident over static: "
              + ", ".join(f"{name} {x:.2f}x" for name, x in above.items()) + "."]
    w = report["whole_process"]
    lines += ["", "The whole process, warm start (libraries included; benchmarks/process.py):", "",
              "| process | RSS after open MiB | RSS after first result MiB | x plain session | VmHWM MiB |",
              "|---|---|---|---|---|"]
    for x in w["rows"]:
        name = "plain session (baseline graph)" if x["what"] == "plain" else f"Runtime.open, {x['mode']}"
        lines.append(f"| {name} | {x['rss_open_kib'] / KIB:.1f} | {x['rss_kib'] / KIB:.1f} | {x['rss_vs_plain']:.2f} | "
                     f"{x['hwm_kib'] / KIB:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:   # one measurement, in the fresh process measure() started
        child(argv[1])
        return 0
    p = argparse.ArgumentParser(prog="benchmarks/memory.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", required=True, metavar="DIR")
    p.add_argument("--out", default="benchmarks/reports/memory", metavar="DIR")
    p.add_argument("--build", default="export", choices=("export", "fp32", "int8"),
                   help="export: the exported segments; fp32 / int8: a build recorded by edge-infer build")
    p.add_argument("--static", default=None, metavar="FILE", help="a static full-depth ONNX model to use instead")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from edge_runtime.core.errors import EdgeError
    if not Path("/proc/self/status").is_file():
        print("memory.py: /proc/self/status | not here: this benchmark reads Linux's VmRSS and VmHWM", file=sys.stderr)
        return 2
    if args.batch < 1 or args.repeats < 1 or args.threads < 0:
        print("memory.py: --batch and --repeats must be at least 1, --threads at least 0", file=sys.stderr)
        return 2
    try:
        report = run_benchmark(args.engine_dir, args.build, args.batch, args.repeats, args.threads, args.static,
                               not args.no_progress)
    except EdgeError as err:
        print(f"memory.py: {err}", file=sys.stderr)
        return err.exit
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = report["engine"] + ("" if args.build == "export" else f".{args.build}")
    write_atomic(out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    write_atomic(out / f"{stem}.md", md)
    print(md + f"\nwritten: {out / stem}.json, {out / stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
