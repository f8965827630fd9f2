"""`edge-infer bench` (trtexec's shape): every latency that matters, against the plain static graph a user
would deploy instead, measured side by side in one run on this machine.

The baseline is the engine directory's `reference/full.onnx` (the unfolded model at full depth as one
graph, the same exporter and opset; edge_model.engines), in a plain ONNX Runtime session with the same
thread count. On real inputs (the engine's dataset test split by default), warm-up first, one process:
  batch 1, preprocessed feeds   the plain graph's session.run against Runtime.run in every mode (full,
               the adaptive modes at their validated operating points, fixed:D for every depth)
  batch 1, raw images          what a user's call costs: the plain graph fed by the manifest's
               normalisation in a few lines of numpy, the argmax and its probability, against
               Runtime.infer from the raw image to the Result (images only)
  Every path runs the same inputs in interleaved blocks of BLOCK (each block visits the paths in a
  rotated order), so load drift hits all alike while each runs as a stream of its own would. Ratios are
  of medians and p99s, each path against the plain graph; the saving ratio is the latency saving over the
  FLOPs saving, both against the plain graph.
  batched      throughput at --batch of every mode against the plain graph, with accuracies
  budget curve mean adaptive latency for a grid of lambdas, for --deadline-ms (adaptive modes only)
The per-variant medians and the curve are written into the manifest's `bench`, keyed by the build
(backend, precision), the threads and batch 1 (`--no-store` to skip); a deadline reads the curve of its
own build, threads and mode.
"""
import argparse
import platform
import time
from dataclasses import dataclass

import numpy as np

from edge_runtime.core.budget import lambda_sweep
from edge_runtime.core.controller import Mode
from edge_runtime.core.errors import EdgeError, Exit

CURVE_LAMBDAS = lambda_sweep(9)
BLOCK = 50


@dataclass
class BenchOptions:
    warmup: int = 50
    iterations: int = 1000
    percentiles: tuple = (50, 90, 99)
    batch: int = 32
    input: str = ""           # default: dataset://<the engine's dataset>/test
    store: bool = True
    progress: bool = True

    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--warmup", type=int, default=50, help="untimed runs first (default 50)")
        p.add_argument("--iterations", type=int, default=1000,
                       help="timed inputs per measurement (default 1000)")
        p.add_argument("--percentile", default="50,90,99", help="latency percentiles (default 50,90,99)")
        p.add_argument("--batch", type=int, default=32, help="batch size of the throughput comparison")
        p.add_argument("--input", default="", metavar="URI",
                       help="inputs (default: dataset://<the engine's dataset>/test)")
        p.add_argument("--export", default=None, metavar="FILE", help="the results as JSON (+ .md beside)")
        p.add_argument("--no-store", action="store_true", help="do not write latencies into the manifest")
        p.add_argument("--no-progress", action="store_true")

    @classmethod
    def from_args(cls, ns) -> "BenchOptions":
        try:
            pct = tuple(float(p) for p in ns.percentile.split(",") if p.strip())
        except ValueError:
            pct = ()
        if not pct or not all(0 <= p <= 100 for p in pct):
            raise EdgeError(f"--percentile {ns.percentile} | comma-separated numbers in 0..100", Exit.BAD_INPUT)
        if ns.warmup < 0 or ns.iterations < 1 or ns.batch < 1:
            raise EdgeError("--warmup >= 0, --iterations >= 1 and --batch >= 1 | required", Exit.BAD_INPUT)
        return cls(ns.warmup, ns.iterations, pct, ns.batch, ns.input, not ns.no_store, not ns.no_progress)


def load_inputs(rt, options: BenchOptions) -> tuple:
    """(raw inputs, feed of every input, uri, labels or None): `iterations` inputs from the source."""
    from edge_runtime.io.sources import SourceOptions, open_source
    uri = options.input or f"dataset://{rt.engine.task['dataset']}/test"
    source = open_source(uri, SourceOptions(loop=-1), text=rt.text)
    raw, labels = [], []
    for frame in source:
        raw.append(frame.data)
        labels.append(frame.label)
        if len(raw) >= options.iterations:
            break
    source.close()
    if not raw:
        raise EdgeError(f"{uri} | no inputs", Exit.NOT_FOUND)
    feed = rt.preprocess.batch(raw)
    return raw, feed, uri, (np.array(labels) if all(v is not None for v in labels) else None)


class PlainGraph:
    """The baseline as a user runs it: one InferenceSession on reference/full.onnx, default session options
    but the thread count, and for raw images the manifest's normalisation in numpy."""

    def __init__(self, rt):
        import onnxruntime as ort
        spec = rt.engine.baseline()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = rt.options.threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(spec.path), opts, providers=list(rt.options.providers)
                                            or ["CPUExecutionProvider"])
        self.input = spec.inputs[0]["name"]
        self.flops = rt.engine.manifest["baseline"]["flops"]
        pre = rt.engine.task["preprocess"]
        self.scale, self.mean, self.std = pre.get("scale"), pre.get("mean"), pre.get("std")

    def run(self, feed: dict):
        return self.session.run(None, feed)[0]

    def infer(self, image) -> tuple:
        """(label index, probability) from a raw (H, W) image of the model's size."""
        x = (image.astype(np.float32) * self.scale - self.mean[0]) / self.std[0]
        logits = self.session.run(None, {self.input: x[None, None]})[0][0]
        i = int(logits.argmax())
        return i, float(1.0 / np.exp(logits - logits[i]).sum())


def rows(feed: dict, start: int, stop: int) -> dict:
    return {k: np.ascontiguousarray(v[start:stop]) for k, v in feed.items()}


def stats_ms(values, percentiles) -> dict:
    v = np.asarray(values) * 1e3
    return {"mean": float(v.mean()), "median": float(np.median(v)),
            **{f"p{p:g}": float(np.percentile(v, p)) for p in percentiles}}


def interleaved(paths: dict, n: int, say) -> dict:
    """{path: per-input seconds}: every path over inputs 0..n-1, in blocks of BLOCK, each block visiting
    the paths in a rotated order."""
    names = list(paths)
    times = {name: [] for name in names}
    clock = time.perf_counter
    for bi, b in enumerate(range(0, n, BLOCK)):
        order = names[bi % len(names):] + names[:bi % len(names)]
        for name in order:
            fn, out = paths[name], times[name]
            for i in range(b, min(b + BLOCK, n)):
                s = clock()
                fn(i)
                out.append(clock() - s)
    return times


def mode_runners(rt, modes: dict, ones: list) -> tuple:
    """({name: fn(i)} running Runtime.run on input i in each mode, the exit each input took, its controller
    seconds): the batch-1 paths bench and the GPU check time."""
    n = len(ones)
    exits = {m: np.zeros(n, np.int64) for m in modes}
    ctrl = {m: np.zeros(n) for m in modes}

    def runner(m, mode):
        def go(i):
            out = rt.run(ones[i], mode=mode, check=False)
            exits[m][i], ctrl[m][i] = out.exit_index[0], out.seconds["controller"]
        return go
    return {m: runner(m, mode) for m, mode in modes.items()}, exits, ctrl


def row(name: str, t: list, base: dict, flops: float, plain_flops: int, percentiles, extra=None) -> dict:
    """One path against the plain graph. The saving ratio is of means, as the FLOPs saving is (an adaptive
    mode's latencies are a mixture over its exits, whose median is whichever exit most inputs take); the
    median's is given beside it."""
    st = stats_ms(t, percentiles)
    p_hi = f"p{max(percentiles):g}"
    fraction = flops / plain_flops
    saving, saving_median = 1 - st["mean"] / base["mean"], 1 - st["median"] / base["median"]
    adaptive = fraction < 0.999
    return {"path": name, **st, "flops_fraction": fraction, "median_vs_plain": st["median"] / base["median"],
            "mean_vs_plain": st["mean"] / base["mean"], f"{p_hi}_vs_plain": st[p_hi] / base[p_hi],
            "latency_saving": saving, "saving_ratio": saving / (1 - fraction) if adaptive else None,
            "saving_ratio_median": saving_median / (1 - fraction) if adaptive else None, **(extra or {})}


def bench(rt, options: BenchOptions, say=print) -> dict:
    """Every measurement of the module docstring on the opened Runtime `rt`."""
    if rt.built.backend != "onnxruntime":   # its baseline is an ONNX Runtime session: no fair ratio for a GPU
        raise EdgeError(f"bench --backend {rt.built.backend} | bench measures ONNX Runtime builds against a plain "
                        f"ONNX Runtime graph; GPU backends: python benchmarks/gpu_check.py OUT_DIR", Exit.BAD_INPUT)
    raw, feed, uri, labels = load_inputs(rt, options)
    plain = PlainGraph(rt)
    n = len(raw)
    ones = [rows(feed, i, i + 1) for i in range(n)]
    E = len(rt.depths)
    pct = options.percentiles
    modes = {"full": rt.full}
    adaptive = [m for m in ("progressive", "oneshot")]
    for m in adaptive:
        modes[m] = Mode(m)
    for k, d in enumerate(rt.depths[:-1]):
        modes[f"fixed:{d}"] = Mode("fixed", k)
    runners, exits, ctrl = mode_runners(rt, modes, ones)
    feed_paths = {"plain graph": lambda i: plain.run(ones[i]), **runners}
    for i in range(min(options.warmup, n)):
        for fn in feed_paths.values():
            fn(i)
    say(f"batch 1, preprocessed feeds: the plain graph and {len(modes)} runtime paths over {n} inputs, "
        f"interleaved blocks of {BLOCK}", flush=True)
    t = interleaved(feed_paths, n, say)
    base = stats_ms(t["plain graph"], pct)
    table = [row("plain graph", t["plain graph"], base, plain.flops, plain.flops, pct)]
    for m in modes:
        fl = float(rt.flops[modes[m].name][exits[m]].mean())
        extra = {"controller_us": float(ctrl[m].mean() * 1e6),
                 "controller_vs_plain": float(ctrl[m].mean() * 1e3 / base["median"])}
        if modes[m].name != "fixed":
            extra["lambda"] = rt.spend.lam(modes[m])
            extra["depth_histogram"] = {str(d): int(c) for d, c in zip(rt.depths, np.bincount(exits[m], minlength=E))}
        table.append(row(m, t[m], base, fl, plain.flops, pct, extra))

    raw_table = []
    if not rt.text and isinstance(raw[0], np.ndarray) and raw[0].ndim == 2 \
            and raw[0].shape == (rt.preprocess.height, rt.preprocess.width):
        raw_paths = {"plain graph + numpy": lambda i: plain.infer(raw[i])}
        for m in ("full",) + tuple(adaptive):
            raw_paths[f"Runtime.infer {m}"] = (lambda mode: lambda i: rt.infer(raw[i], mode=mode, record=False))(modes[m])
        for i in range(min(options.warmup, n)):
            for fn in raw_paths.values():
                fn(i)
        say("batch 1, raw images: the plain graph fed by numpy normalisation, against Runtime.infer", flush=True)
        tr = interleaved(raw_paths, n, say)
        base_raw = stats_ms(tr["plain graph + numpy"], pct)
        for name, times in tr.items():
            m = name.replace("Runtime.infer ", "")
            fl = plain.flops if m not in modes else float(rt.flops[modes[m].name][exits[m]].mean())
            raw_table.append(row(name, times, base_raw, fl, plain.flops, pct))

    B = options.batch
    say(f"batched: throughput at batch {B}, every mode against the plain graph", flush=True)
    batches = [rows(feed, i, min(i + B, n)) for i in range(0, n, B)]
    thr = {}
    for name, mode in [("plain graph", None), *modes.items()]:
        fn = plain.run if mode is None else (lambda b, mode=mode: rt.run(b, mode=mode, check=False).logits)
        fn(batches[0])
        preds, start = [], time.perf_counter()
        for b in batches:
            preds.append(fn(b).argmax(1))
        secs = time.perf_counter() - start
        preds = np.concatenate(preds)
        thr[name] = {"inputs_per_s": n / secs,
                     "accuracy": float((preds == labels).mean()) if labels is not None else None}
    for name in thr:
        thr[name]["vs_plain"] = thr[name]["inputs_per_s"] / thr["plain graph"]["inputs_per_s"]

    curve = []
    if rt.mode.name != "fixed":
        say(f"budget curve: mean {rt.mode} latency per lambda, for --deadline-ms", flush=True)
        subset = ones[:min(n, 300)]
        for lam_k in CURVE_LAMBDAS:
            times = []
            for one in subset:
                s = time.perf_counter()
                rt.run(one, budget=float(lam_k))
                times.append(time.perf_counter() - s)
            curve.append({"lambda": float(lam_k), "mean_ms": float(np.mean(times) * 1e3)})

    variants = [{"depth": d, "median": next(r["median"] for r in table
                                             if r["path"] == (f"fixed:{d}" if k < E - 1 else "full"))}
                for k, d in enumerate(rt.depths)]
    return {"engine": rt.engine.name, "input": uri, "inputs": n, "graphs": rt.built.label,
            "backend": rt.built.backend, "precision": rt.built.precision, "executor": rt.executor.describe(),
            "threads": rt.options.threads, "baseline": rt.engine.manifest["baseline"]["file"],
            "machine": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                        "system": platform.system()},
            "warmup": options.warmup, "block": BLOCK, "feeds": table, "raw": raw_table, "variants": variants,
            "batched": {"batch": B, "paths": thr}, "budget_curve": curve}


def store(rt, result: dict) -> None:
    """Per-variant median latency and the mode's budget curve into the manifest's `bench` entry of this
    build, threads and batch 1 (what --deadline-ms and the stream's realized speedup read)."""
    from edge_runtime.core.manifest import read_manifest, write_manifest
    m = read_manifest(rt.engine.root)
    key = (result["backend"], result["precision"], result["threads"], 1)
    entries = m.get("bench") or []
    old = [e for e in entries if (e["backend"], e["precision"], e["threads"], e["batch"]) == key]
    curves = dict(old[0]["curves"]) if old else {}
    if result["budget_curve"]:
        curves[rt.mode.name] = result["budget_curve"]
    entry = {"backend": key[0], "precision": key[1], "threads": key[2], "batch": 1, "machine": result["machine"],
             "graphs": result["graphs"], "variant_ms": {str(v["depth"]): v["median"] for v in result["variants"]},
             "curves": curves}
    m["bench"] = [e for e in entries if e not in old] + [entry]
    write_manifest(rt.engine.root, m)


def markdown(r: dict) -> str:
    hi = [k for k in r["feeds"][0] if k.startswith("p") and k.endswith("_vs_plain")][0]
    p_hi = hi.replace("_vs_plain", "")

    def table(rows_, title):
        lines = [title, "", f"| path | FLOPs % of plain | mean ms | median ms | {p_hi} ms | mean / plain | "
                 f"median / plain | {p_hi} / plain | latency saving / FLOPs saving (means; medians) | controller us |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for x in rows_:
            ratio = "-" if x["saving_ratio"] is None else f"{x['saving_ratio']:.2f}; {x['saving_ratio_median']:.2f}"
            ctrl = f"{x['controller_us']:.1f}" if x.get("controller_us") else "-"
            lines.append(f"| {x['path']} | {x['flops_fraction'] * 100:.1f} | {x['mean']:.3f} | {x['median']:.3f} | "
                         f"{x[p_hi]:.3f} | {x['mean_vs_plain']:.3f} | {x['median_vs_plain']:.3f} | {x[hi]:.3f} | "
                         f"{ratio} | {ctrl} |")
        return lines

    lines = [f"{r['engine']} on {r['machine']['processor']}, {r['graphs']} on {r['executor']}, inputs {r['input']} "
             f"({r['inputs']}, interleaved blocks of {r['block']}); baseline: {r['baseline']} in a plain "
             f"ONNX Runtime session, {r['threads']} thread(s)", ""]
    lines += table(r["feeds"], "Batch 1, preprocessed feeds (session.run against Runtime.run):")
    if r["raw"]:
        lines += [""] + table(r["raw"], "Batch 1, raw images to a label (numpy normalisation + session.run against "
                                        "Runtime.infer):")
    b = r["batched"]
    lines += ["", f"Batch {b['batch']} throughput:", "", "| path | inputs/s | / plain | accuracy % |", "|---|---|---|---|"]
    for name, x in b["paths"].items():
        acc = "-" if x["accuracy"] is None else f"{x['accuracy'] * 100:.2f}"
        lines.append(f"| {name} | {x['inputs_per_s']:.0f} | {x['vs_plain']:.3f} | {acc} |")
    lines += ["", "Budget curve: " + (", ".join(f"lambda {p['lambda']:.3g}: {p['mean_ms']:.3f} ms"
                                                for p in r["budget_curve"]) or "none (a fixed mode spends no budget)")]
    return "\n".join(lines)
