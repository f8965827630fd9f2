"""The one prepared GPU check: everything the GPU backends promise, checked and timed in one call.

    python benchmarks/gpu_check.py OUT_DIR [--engines engines/fmnist-vit-demo engines/fmnist-vit]
    python benchmarks/gpu_check.py OUT_DIR --dry-run      # the same logic on the CPU, ONNX Runtime (tests)

It runs from the repository root with whatever Python the GPU machine has (PyTorch with CUDA, onnx,
onnxruntime; cuda-python, TensorRT when there) and installs nothing. Per engine directory, on the
torch-CUDA backend (fp32 and fp16, CUDA graphs on and off) and on TensorRT when it imports and the
directory has a TensorRT build:
  parity      every exit (segment by segment) and every chain graph against the stored PyTorch reference
              outputs; graph replay against plain launches; fp16 against fp32 (argmax agreement)
  variants    batch-1 and batch-32 latency of every depth's chain and of the plain graph, host wall time and
              CUDA events (medians, p99), interleaved
  adaptive    progressive, oneshot and full at batch 1 over the test set against the plain full-depth graph
              (reference/full.onnx, one graph, replayed as one CUDA graph), graphs on and off; the saving
              ratio is the latency saving over the FLOPs saving, both against the plain graph
  switch      the host's time from the controller's decision to the next graph launch, and replaying two
              graphs alternately against one graph (synchronised at the end), per launch
  memory      peak device memory (torch.cuda.max_memory_allocated) of the adaptive set, the full-depth chain
              alone, and the plain graph
  host share  how much of a batch-1 frame is the controller and the host copies
  cuda-python the stream, pinned-memory, copy, event and graph module the TensorRT backend uses
              (edge_runtime.core.cuda_rt), exercised on the GPU by capturing and replaying its own copies
Results: OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md. Test inputs come from the engine's dataset when
this machine has it, else from OUT_DIR/../inputs or --inputs-file (`--save-inputs FILE` writes one here).
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_kernels() -> str:
    """The controller's C extension for this interpreter, built in place when missing (a GPU machine's Python
    is not the one that built it here), before any module binds it; what happened, for the report."""
    try:
        import edge_runtime._kernels    # noqa: F401
        return "present"
    except ImportError:
        pass
    import subprocess
    print("gpu_check: building edge_runtime._kernels in place for this Python", flush=True)
    run = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, capture_output=True,
                         text=True)
    return "built in place" if run.returncode == 0 else \
        "could not be built: " + (run.stderr.strip().splitlines() or ["?"])[-1]


KERNELS = build_kernels()

from edge_runtime import backends                                    # noqa: E402
from edge_runtime.core.controller import Mode                        # noqa: E402
from edge_runtime.core.engine_dir import EngineDir, GraphSpec        # noqa: E402
from edge_runtime.core.gpu_plan import pieces                        # noqa: E402
from edge_runtime.core.lazy import have                              # noqa: E402
from edge_runtime.runtime import Runtime, RuntimeOptions             # noqa: E402
from edge_runtime.tools.bench import interleaved, mode_runners, row, stats_ms   # noqa: E402

PCT = (50, 99)


class Clock:
    """Host wall time always; CUDA events around a call when the executor has a torch stream."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        if cuda:
            import torch
            self.torch = torch

    def timed(self, ex, fn, n: int) -> dict:
        """{"host": [s], "events": [s]} of n calls of fn(i) on executor `ex`."""
        host, events = [], []
        stream = getattr(ex, "stream", None) if self.cuda else None
        if not isinstance(stream, self.torch.cuda.Stream if self.cuda else type(None)):
            stream = None              # a cuda_rt stream (TensorRT): host times only
        for i in range(n):
            if stream is not None:
                a, b = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
                a.record(stream)
            t = time.perf_counter()
            fn(i)
            host.append(time.perf_counter() - t)
            if stream is not None:
                b.record(stream)
                b.synchronize()
                events.append(a.elapsed_time(b) * 1e-3)
        return {"host": host, "events": events}


def targets(engine: EngineDir, dry: bool) -> list:
    """(label, RuntimeOptions) of every configuration this machine can run."""
    if dry:
        return [("onnxruntime fp32 (dry run)", RuntimeOptions("onnxruntime", "fp32", 1))]
    out = []
    for precision in ("fp32", "fp16"):
        for graphs in (True, False):
            out.append((f"torch-cuda {precision} graphs {'on' if graphs else 'off'}",
                        RuntimeOptions("torch-cuda", precision, 1, cuda_graphs=graphs)))
    if have("tensorrt"):
        for _, precision, _, stamp in engine.builds():
            if stamp.get("backend") == "tensorrt":
                for graphs in (True, False):
                    out.append((f"tensorrt {precision} graphs {'on' if graphs else 'off'}",
                                RuntimeOptions("tensorrt", precision, 1, cuda_graphs=graphs)))
    return out


def plain_executor(engine: EngineDir, options: RuntimeOptions):
    """The plain full-depth graph on the same backend, as a one-graph executor (same copies, same graphs)."""
    spec = engine.baseline()
    one = GraphSpec("segment_0", spec.path, spec.inputs, spec.outputs)
    name = "onnxruntime" if options.backend == "onnxruntime" else "torch-cuda"
    return backends.create(name, [one], 1, (), None, "fp16" if options.precision == "fp16" else "fp32",
                           use_graphs=options.cuda_graphs if name != "onnxruntime" else None).open()


def plain_logits(ex, feed: dict) -> np.ndarray:
    return ex.segment(0, ex.start(feed, check=False))[1]["logits"]


def parity(rt, ref: dict) -> dict:
    """Every exit and every chain graph against the stored PyTorch reference logits (N, exits, classes)."""
    ex = rt.executor
    feed = {i["name"]: ref[i["name"]] for i in rt.engine.segments[0]["inputs"]}
    want = ref["logits"]
    got = ex.outputs(feed)
    exits = [{"exit": k, "max_abs": float(np.abs(h["logits"] - want[:, k]).max()),
              "argmax_agreement": float((h["logits"].argmax(1) == want[:, k].argmax(1)).mean())}
             for k, h in enumerate(got)]
    chains = []
    n = len(want)
    for (j, d) in sorted(ex.chains):
        parts = []
        for a, b in pieces(n, ex.max_batch or n):
            h = ex.start({k: v[a:b] for k, v in feed.items()}, check=False)
            if j == 1:
                h, _ = ex.segment(0, h)
            parts.append(ex.chain(j, d, h)["logits"])
        logits = np.concatenate(parts)
        chains.append({"chain": f"{j}..{d}", "max_abs": float(np.abs(logits - want[:, d]).max()),
                       "argmax_agreement": float((logits.argmax(1) == want[:, d].argmax(1)).mean())})
    return {"exits": exits, "chains": chains, "rows": int(n),
            "max_abs": max(r["max_abs"] for r in exits + chains)}


def exits_on(rt, feed: dict) -> list:
    """Every exit's logits over `feed` (segment by segment), for the on/off and fp16/fp32 comparisons."""
    return [h["logits"] for h in rt.executor.outputs(feed)]


def variant_latency(rt, plain, feed: dict, batch: int, n: int, clock: Clock) -> list:
    """Host and event latency of every depth's chain call and of the plain graph at `batch`, interleaved."""
    ex = rt.executor
    rows_ = len(next(iter(feed.values())))
    inputs = [{k: np.ascontiguousarray(v[(i * batch) % (rows_ - batch + 1):][:batch]) for k, v in feed.items()}
              for i in range(n)]
    E = len(rt.depths)
    paths = {"plain graph": (plain, lambda i: plain_logits(plain, inputs[i]))}
    for d in range(E):
        paths[f"depth {rt.depths[d]}"] = (ex, (lambda d: lambda i: ex.chain(0, d, ex.start(inputs[i], False)))(d))
    for _, (e, fn) in paths.items():          # warm-up: first calls capture their graphs
        for i in range(min(10, n)):
            fn(i)
    times = {name: {"host": [], "events": []} for name in paths}
    for block in range(0, n, 25):
        names = list(paths)
        order = names[(block // 25) % len(names):] + names[:(block // 25) % len(names)]
        for name in order:
            e, fn = paths[name]
            got = clock.timed(e, lambda i: fn(block + i), min(25, n - block))
            times[name]["host"] += got["host"]
            times[name]["events"] += got["events"]
    out = []
    for name, t in times.items():
        r = {"path": name, "batch": batch, "host": stats_ms(t["host"], PCT)}
        if t["events"]:
            r["events"] = stats_ms(t["events"], PCT)
        out.append(r)
    return out


def adaptive(rt, plain, ones: list, say) -> dict:
    """Batch-1 latency of every runtime mode against the plain graph over `ones` (feeds of one input)."""
    modes = {"full": rt.full, "progressive": Mode("progressive"), "oneshot": Mode("oneshot")}
    n = len(ones)
    runners, exits, ctrl = mode_runners(rt, modes, ones)
    paths = {"plain graph": lambda i: plain_logits(plain, ones[i]), **runners}
    for i in range(min(50, n)):
        for fn in paths.values():
            fn(i)
    t = interleaved(paths, n, say)
    flops_plain = rt.engine.manifest["baseline"]["flops"]
    base = stats_ms(t["plain graph"], PCT)
    table = [row("plain graph", t["plain graph"], base, flops_plain, flops_plain, PCT)]
    for m, mo in modes.items():
        fl = float(rt.flops[mo.name][exits[m]].mean())
        table.append(row(m, t[m], base, fl, flops_plain, PCT,
                         {"controller_us": float(ctrl[m].mean() * 1e6),
                          "host_share_controller": float(ctrl[m].mean() / np.mean(t[m])),
                          "depth_histogram": {str(d): int(c) for d, c in
                                              zip(rt.depths, np.bincount(exits[m], minlength=len(rt.depths)))}}))
    return {"inputs": n, "paths": table}


def switch_cost(rt, ones: list, n: int, clock: Clock) -> dict:
    """Host: controller decision -> next launch (progressive and oneshot, batch 1). GPU: two graphs replayed
    alternately against one graph, per launch."""
    ex, ctl = rt.executor, rt.controller
    host = {"progressive": [], "oneshot": []}
    if not hasattr(ex, "cache"):      # ONNX Runtime launches nothing to time apart from its run
        return {"decision_to_launch_us": {m: None for m in host}}
    for name in host:
        mode = Mode(name)
        lam = rt.spend.lam(mode)
        for i in range(n):
            feed = ones[i % len(ones)]
            h, out = ex.segment(0, ex.start(feed, False))
            decision = ctl.start(mode, lam, feed, out)
            stop = decision.stop(0, out["logits"])[0]
            if name == "oneshot":
                d = max(int(decision.target[0]), 1)
                t = time.perf_counter()
                ex.chain(1, d, h)
                host[name].append(ex.cache.launched_at - t)
                continue
            k = 0
            while not stop and k + 1 < len(rt.depths):
                t = time.perf_counter()
                k += 1
                h, out = ex.segment(k, h)
                host[name].append(ex.cache.launched_at - t)
                stop = decision.stop(k, out["logits"])[0]
    # stats_ms reads seconds and gives milliseconds: seconds * 1e3 in gives microseconds out
    result = {"decision_to_launch_us": {m: stats_ms(np.asarray(v) * 1e3, PCT) if v else None
                                        for m, v in host.items()}}
    graphs = getattr(ex, "cache", None)
    if clock.cuda and graphs is not None and ex.use_graphs and ex.name == "torch-cuda":
        import torch
        a = graphs.graphs.get((ex.graphs[1].name, 1), (None, None))[1]
        b = graphs.graphs.get((ex.graphs[2].name, 1), (None, None))[1]
        if a is not None and b is not None:
            per = {"one": [], "alternating": []}
            for _ in range(30):
                for kind, seq in (("one", (a, a)), ("alternating", (a, b))):
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record(ex.stream)
                    for _ in range(200):
                        seq[0]()
                        seq[1]()
                    e.record(ex.stream)
                    e.synchronize()
                    per[kind].append(s.elapsed_time(e) * 1e3 / 400)     # microseconds per launch
            diff = np.array(per["alternating"]) - np.array(per["one"])
            result["replay_us"] = {"one_graph_median": float(np.median(per["one"])),
                                   "alternating_median": float(np.median(per["alternating"])),
                                   "switch_median": float(np.median(diff)),
                                   "switch_p99": float(np.percentile(diff, 99)),
                                   "graphs": [ex.graphs[1].name, ex.graphs[2].name]}
    return result


def peak_memory(engine: EngineDir, options: RuntimeOptions, ones: list, batch: dict) -> dict:
    """Peak device bytes of three fresh executors: the adaptive set, the full-depth chain alone, the plain
    graph (torch's allocator: weights, buffers, graph pools)."""
    import torch
    out = {}
    E = len(engine.segments)

    def measure(make, work):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        ex = make()
        work(ex)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        ex.close()
        del ex
        return int(peak)

    def make_all():
        built = engine.build("torch-cuda", options.precision, ("fp32", "fp16"))
        return backends.create("torch-cuda", built.graphs, 1, (), built.chains, options.precision,
                               use_graphs=options.cuda_graphs).open()

    def adaptive_work(ex):
        for (j, d) in sorted(ex.chains):
            for f in (ones[0], batch):
                h = ex.start(f, False)
                if j == 1:
                    h, _ = ex.segment(0, h)
                ex.chain(j, d, h)
        for f in (ones[0], batch):
            ex.outputs(f)

    def make_full():
        built = engine.build("torch-cuda", options.precision, ("fp32", "fp16"))
        full = {(0, E - 1): built.chains[(0, E - 1)]} if (0, E - 1) in built.chains else {}
        return backends.create("torch-cuda", built.graphs, 1, (), full, options.precision,
                               use_graphs=options.cuda_graphs).open(needs=[])

    def full_work(ex):
        for f in (ones[0], batch):
            ex.chain(0, E - 1, ex.start(f, False))

    out["adaptive_set"] = measure(make_all, adaptive_work)
    out["full_depth_chain"] = measure(make_full, full_work)
    out["plain_graph"] = measure(lambda: plain_executor(engine, options),
                                 lambda ex: [plain_logits(ex, f) for f in (ones[0], batch)])
    out["adaptive_vs_full_chain"] = out["adaptive_set"] / max(out["full_depth_chain"], 1)
    out["adaptive_vs_plain"] = out["adaptive_set"] / max(out["plain_graph"], 1)
    return out


def copy_cost(ex, n: int = 500) -> dict:
    """Microseconds of one logits copy back to the host on an idle stream (what each boundary pays)."""
    if not hasattr(ex, "_fetch"):
        return {}
    slot = ex.start({t.name: np.zeros(t.shape(1), np.float32) for t in ex.plan.inputs}, False)
    buf = ex.buffers[slot.bucket]["logits"]
    t = []
    for _ in range(n):
        s = time.perf_counter()
        ex._fetch([(buf, ex.plan.logits, 1)])
        t.append(time.perf_counter() - s)
    return {"logits_copy_us": stats_ms(np.asarray(t) * 1e3, PCT)}


def exercise_cuda_rt() -> dict:
    """The TensorRT backend's CUDA module on the GPU, without TensorRT: copies host -> device -> device ->
    host captured as one graph on a cuda_rt stream, replayed after the host data changed (a replay must read
    the pinned buffer afresh), events timing the replays."""
    from edge_runtime.core import cuda_rt
    out = {"module": cuda_rt.flavour(), "device": cuda_rt.device_info()}
    n = 1 << 16
    with cuda_rt.Stream() as stream, cuda_rt.PinnedArray((n,), np.float32) as src, \
            cuda_rt.PinnedArray((n,), np.float32) as dst, cuda_rt.DeviceBuffer(4 * n) as a, \
            cuda_rt.DeviceBuffer(4 * n) as b, cuda_rt.Event() as start, cuda_rt.Event() as end:
        def work():
            cuda_rt.copy_async(a.ptr, src.ptr, 4 * n, "htod", stream)
            cuda_rt.memset_async(b.ptr, 0, 4 * n, stream)
            cuda_rt.copy_2d_async(b.ptr, 8, a.ptr, 8, 4, n // 2, "dtod", stream)   # every other float
            cuda_rt.copy_async(dst.ptr, b.ptr, 4 * n, "dtoh", stream)
        src.array[:] = np.arange(n, dtype=np.float32)
        work()
        stream.synchronize()
        graph = cuda_rt.CapturedGraph.capture(stream, work)
        try:
            checks = []
            for trial in range(3):
                src.array[:] = np.random.default_rng(trial).standard_normal(n).astype(np.float32)
                dst.array[:] = np.nan
                start.record(stream)
                graph.launch(stream)
                end.record(stream)
                end.synchronize()
                want = np.zeros(n, np.float32)
                want[0::2] = src.array[0::2]
                checks.append(bool(np.array_equal(dst.array, want)))
            out.update({"replays_match": all(checks), "replay_ms": end.elapsed_ms(start)})
        finally:
            graph.close()
    return out


def test_inputs(engine: EngineDir, args, limit: int) -> tuple:
    """(raw images, labels) of the engine's test split: the dataset when this machine has it, else a saved
    file (--inputs-file, or --save-inputs made on a machine that has the data)."""
    path = Path(args.inputs_file) if args.inputs_file else None
    if path is None or not path.is_file():
        try:
            from edge_runtime.io.sources import SourceOptions, open_source
            source = open_source(f"dataset://{engine.task['dataset']}/test?limit={limit}", SourceOptions(), text=False)
            raw, labels = [], []
            for frame in source:
                raw.append(frame.data)
                labels.append(frame.label)
            source.close()
            return np.stack(raw), np.array(labels)
        except Exception as err:     # noqa: BLE001 (any failure to find the data: say it and stop)
            raise SystemExit(f"gpu_check: no test inputs for {engine.name} ({err}); pass --inputs-file") from None
    with np.load(path) as z:
        return z["images"][:limit], z["labels"][:limit]


def check_engine(path: str, args, say, deadline: float) -> dict:
    engine = EngineDir.open(path)
    raw, labels = test_inputs(engine, args, args.inputs)
    ref = engine.reference()
    report = {"engine": engine.name, "inputs": int(len(raw)), "targets": {}, "skipped": []}
    clock = Clock(not args.dry_run)
    base_logits = {}
    for label, options in targets(engine, args.dry_run):
        if time.time() > deadline:
            report["skipped"].append(f"{label}: out of time")
            continue
        say(f"[{engine.name}] {label}", flush=True)
        t0 = time.time()
        rt = Runtime.open(path, options=options)
        plain = plain_executor(engine, options)
        feed = rt.preprocess.batch(list(raw))
        ones = [{k: np.ascontiguousarray(v[i:i + 1]) for k, v in feed.items()} for i in range(len(raw))]
        r = {"executor": rt.executor.describe(), "errors": {}}

        def section(name, fn):
            """One measurement; a failure is recorded with its traceback's last line and the rest goes on
            (one call on a borrowed GPU must bring back everything that worked)."""
            if args.dry_run:           # in the test suite a failure is a failure
                r[name] = fn()
                return
            try:
                r[name] = fn()
            except Exception as err:   # noqa: BLE001
                r["errors"][name] = f"{type(err).__name__}: {err}"
                say(f"  {name} failed: {type(err).__name__}: {err}", flush=True)

        section("parity", lambda: parity(rt, ref))
        sub = {k: v[:min(2000, len(raw))] for k, v in feed.items()}
        got = exits_on(rt, sub)
        key = options.precision
        if key in base_logits:     # graphs off against graphs on (same precision): replay equals plain launches
            r["on_vs_off_max_abs"] = float(max(np.abs(a - b).max() for a, b in zip(got, base_logits[key])))
        else:
            base_logits[key] = got
        if "fp32" in base_logits and key != "fp32":
            r["vs_fp32_argmax_agreement"] = [float((a.argmax(1) == b.argmax(1)).mean())
                                             for a, b in zip(got, base_logits["fp32"])]
        r["accuracy"] = [float((a.argmax(1) == labels[:len(a)]).mean()) for a in got]
        graphs_on = options.cuda_graphs or args.dry_run
        n_adapt = args.adaptive_inputs if graphs_on else min(args.adaptive_inputs, args.eager_inputs)
        section("variants", lambda: variant_latency(rt, plain, feed, 1, args.iterations, clock)
                + variant_latency(rt, plain, feed, min(32, len(raw)), max(args.iterations // 4, 10), clock))
        if options.precision == "fp32" or args.fp16_adaptive:
            section("adaptive", lambda: adaptive(rt, plain, ones[:n_adapt], say))
            section("switch", lambda: switch_cost(rt, ones, args.switch_inputs, clock))
            section("copies", lambda: copy_cost(rt.executor))
        r["graph_report"] = rt.executor.graph_report() if hasattr(rt.executor, "graph_report") else None
        rt.close()
        plain.close()
        if not args.dry_run and options.backend == "torch-cuda" and options.cuda_graphs:
            section("memory", lambda: peak_memory(engine, options, ones, {k: v[:32] for k, v in feed.items()}))
        r["seconds"] = time.time() - t0
        report["targets"][label] = r
    return report


def markdown(result: dict) -> str:
    lines = [f"# GPU check ({'dry run on the CPU' if result['dry_run'] else result['device']})", "",
             f"{result['python']}, torch {result['torch']}, cuda-python: {result['cuda_python']}, "
             f"TensorRT: {result['tensorrt']}; {result['seconds']:.0f} s", ""]
    cr = result.get("cuda_rt")
    if cr:
        lines += [f"cuda_rt ({cr.get('module', '-')}): {cr}", ""]
    for e in result["engines"]:
        lines += [f"## {e['engine']} ({e['inputs']} test inputs)", ""]
        for label, r in e["targets"].items():
            p = r["parity"]
            lines += [f"### {label}", "", f"{r['executor']}", "",
                      f"- parity against PyTorch ({p['rows']} reference rows): max abs {p['max_abs']:.2e}; argmax "
                      f"agreement per exit " + ", ".join(f"{x['argmax_agreement'] * 100:.1f}" for x in p["exits"])]
            if "on_vs_off_max_abs" in r:
                lines.append(f"- graphs off against graphs on: max abs {r['on_vs_off_max_abs']:.2e}")
            if "vs_fp32_argmax_agreement" in r:
                lines.append("- argmax agreement with fp32 per exit %: "
                             + ", ".join(f"{a * 100:.2f}" for a in r["vs_fp32_argmax_agreement"]))
            lines.append("- accuracy per exit %: " + ", ".join(f"{a * 100:.2f}" for a in r["accuracy"]))
            lines += ["", "| path | batch | host median ms | host p99 ms | events median ms |", "|---|---|---|---|---|"]
            for v in r["variants"]:
                ev = f"{v['events']['median']:.4f}" if "events" in v else "-"
                lines.append(f"| {v['path']} | {v['batch']} | {v['host']['median']:.4f} | {v['host']['p99']:.4f} | {ev} |")
            if "adaptive" in r:
                lines += ["", f"Batch 1 over {r['adaptive']['inputs']} test inputs, against the plain graph:", "",
                          "| path | FLOPs % | mean ms | median ms | p99 ms | mean / plain | saving ratio (means; medians)"
                          " | controller us |", "|---|---|---|---|---|---|---|---|"]
                for x in r["adaptive"]["paths"]:
                    ratio = "-" if x["saving_ratio"] is None else f"{x['saving_ratio']:.2f}; {x['saving_ratio_median']:.2f}"
                    lines.append(f"| {x['path']} | {x['flops_fraction'] * 100:.1f} | {x['mean']:.4f} | "
                                 f"{x['median']:.4f} | {x['p99']:.4f} | {x['mean_vs_plain']:.3f} | {ratio} | "
                                 f"{x.get('controller_us', 0):.1f} |")
                s = r["switch"]
                lines.append("")
                for m, st in s["decision_to_launch_us"].items():
                    if st:
                        lines.append(f"- decision to launch, {m}: median {st['median']:.2f} us, p99 {st['p99']:.2f} us")
                if "replay_us" in s:
                    x = s["replay_us"]
                    lines.append(f"- replay: one graph {x['one_graph_median']:.2f} us/launch, alternating "
                                 f"{x['alternating_median']:.2f}; switch median {x['switch_median']:.2f} us, "
                                 f"p99 {x['switch_p99']:.2f}")
                if r.get("copies"):
                    lines.append(f"- one logits copy to the host: median {r['copies']['logits_copy_us']['median']:.2f} us")
            if "memory" in r:
                m = r["memory"]
                lines.append(f"- peak device memory: adaptive set {m['adaptive_set'] / 2**20:.1f} MiB, full-depth "
                             f"chain {m['full_depth_chain'] / 2**20:.1f} MiB, plain graph {m['plain_graph'] / 2**20:.1f}"
                             f" MiB ({m['adaptive_vs_full_chain']:.2f}x the chain, {m['adaptive_vs_plain']:.2f}x plain)")
            if r.get("graph_report"):
                lines.append(f"- graphs: {r['graph_report']}")
            lines.append("")
        if e["skipped"]:
            lines += ["Skipped: " + "; ".join(e["skipped"]), ""]
    return "\n".join(lines)


def versions() -> dict:
    out = {"python": f"Python {platform.python_version()}"}
    for name, mod in (("torch", "torch"), ("tensorrt", "tensorrt")):
        out[name] = __import__(mod).__version__ if have(mod) else "not installed"
    out["cuda_python"] = "installed" if have("cuda") else "not installed"
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py", description="the prepared GPU check (module docstring)")
    p.add_argument("out", help="directory for gpu_check.json and gpu_check.md")
    p.add_argument("--engines", nargs="+", default=None, help="engine directories (default: the fmnist ones here)")
    p.add_argument("--dry-run", action="store_true", help="the whole logic on the CPU with ONNX Runtime")
    p.add_argument("--inputs", type=int, default=10000, help="test inputs to load (default 10000)")
    p.add_argument("--inputs-file", default=None, help="a .npz of images and labels when the data is not here")
    p.add_argument("--save-inputs", default=None, metavar="FILE", help="write the test inputs to FILE and stop")
    p.add_argument("--adaptive-inputs", type=int, default=10000, help="batch-1 inputs per path, graphs on")
    p.add_argument("--eager-inputs", type=int, default=2000, help="batch-1 inputs per path, graphs off")
    p.add_argument("--iterations", type=int, default=300, help="calls per variant at batch 1 (a quarter at 32)")
    p.add_argument("--switch-inputs", type=int, default=1000)
    p.add_argument("--fp16-adaptive", action="store_true", help="the adaptive comparison in fp16 too")
    p.add_argument("--time-limit", type=float, default=330.0, help="seconds; later targets are skipped past it")
    args = p.parse_args(argv)
    start = time.time()
    say = print
    engines = args.engines or [str(ROOT / "engines" / n) for n in ("fmnist-vit-demo", "fmnist-vit")
                               if (ROOT / "engines" / n / "manifest.json").is_file()]
    if args.save_inputs:
        engine = EngineDir.open(engines[0])
        images, labels = test_inputs(engine, argparse.Namespace(inputs_file=None), args.inputs)
        np.savez_compressed(args.save_inputs, images=images, labels=labels)
        say(f"wrote {len(images)} test inputs of {engine.task['dataset']} to {args.save_inputs}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    v = versions()
    result = {"dry_run": args.dry_run, **v, "machine": platform.machine(), "engines": [], "device": "cpu",
              "kernels": KERNELS}
    if not args.dry_run:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: torch sees no CUDA device (use --dry-run on the CPU)")
        result["device"] = torch.cuda.get_device_name(0)
        try:
            result["cuda_rt"] = exercise_cuda_rt()
        except Exception as err:       # noqa: BLE001 (reported, the rest of the check goes on)
            result["cuda_rt"] = {"error": f"{type(err).__name__}: {err}"}
    for path in engines:
        result["engines"].append(check_engine(path, args, say, start + args.time_limit))
        result["seconds"] = time.time() - start
        (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=float))   # partial results survive
    result["seconds"] = time.time() - start
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "gpu_check.md").write_text(markdown(result))
    say(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
