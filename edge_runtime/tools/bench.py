"""`edge-infer bench` (trtexec's shape): every latency that matters, measured in one run on this machine.

On real inputs (the engine's dataset test split by default), with warm-up first and one process:
  variants     batch-1 network latency of every depth variant (segments only), percentiles
  adaptive     batch-1 latency of the controller's operating point (segments + controller) against full
               depth, the two run in alternating blocks of BLOCK inputs, so load drift hits both alike
               while each runs as a stream of its own would (one input at a time alternating between
               the two would evict the adaptive path's caches with every full-depth run); latency saving
               next to FLOPs saving; the controller's own time in microseconds
  batched      throughput at --batch of adaptive (batched early exit) and full depth, with both accuracies
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
    """(feed of every input, labels or None): `iterations` inputs from the source, preprocessed."""
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
    return feed, uri, (np.array(labels) if all(v is not None for v in labels) else None)


def rows(feed: dict, start: int, stop: int) -> dict:
    return {k: np.ascontiguousarray(v[start:stop]) for k, v in feed.items()}


def stats_ms(values, percentiles) -> dict:
    v = np.asarray(values) * 1e3
    return {"mean": float(v.mean()), "median": float(np.median(v)),
            **{f"p{p:g}": float(np.percentile(v, p)) for p in percentiles}}


def bench(rt, options: BenchOptions, say=print) -> dict:
    """Every measurement of the module docstring on the opened Runtime `rt`."""
    feed, uri, labels = load_inputs(rt, options)
    n = len(next(iter(feed.values())))
    ones = [rows(feed, i, i + 1) for i in range(n)]
    E = len(rt.depths)
    full = rt.full
    lam = rt.spend.lam(rt.mode)
    for i in range(options.warmup):
        rt.run(ones[i % n])
        rt.run(ones[i % n], mode=full)

    say(f"variants: batch-1 latency of each depth over {n} inputs", flush=True)
    variants = []
    for k, d in enumerate(rt.depths):
        mode = Mode("fixed", k)
        times = [rt.run(one, mode=mode).seconds["segments"] for one in ones]
        variants.append({"depth": d, "flops": int(rt.chain_flops[k]), **stats_ms(times, options.percentiles)})

    at = f" at lambda {lam:.4g}" if lam is not None else ""
    say(f"adaptive: {rt.mode}{at} against full depth, alternating blocks of {BLOCK}", flush=True)
    t_full, t_adapt, t_ctrl, exits = [], [], [], []
    for b in range(0, n, BLOCK):
        block = ones[b:b + BLOCK]
        for one in block:
            s = time.perf_counter()
            rt.run(one, mode=full)
            t_full.append(time.perf_counter() - s)
        for one in block:
            s = time.perf_counter()
            out = rt.run(one)
            t_adapt.append(time.perf_counter() - s)
            t_ctrl.append(out.seconds["controller"])
            exits.append(int(out.exit_index[0]))
    exits = np.array(exits)
    mean_full, mean_adapt = float(np.mean(t_full)), float(np.mean(t_adapt))
    flops_fraction = float(rt.chain_flops[exits].mean() / rt.chain_flops[-1])
    latency_saving, flops_saving = 1 - mean_adapt / mean_full, 1 - flops_fraction
    adaptive = {
        "mode": str(rt.mode), "lambda": lam, "inputs": n,
        "full_ms": stats_ms(t_full, options.percentiles), "adaptive_ms": stats_ms(t_adapt, options.percentiles),
        "flops_fraction": flops_fraction, "flops_saving": flops_saving, "latency_saving": latency_saving,
        "saving_ratio": latency_saving / flops_saving if flops_saving > 0 else None,
        "controller_us": float(np.mean(t_ctrl) * 1e6),
        "controller_fraction_of_full": float(np.mean(t_ctrl) / mean_full),
        "depth_histogram": {str(d): int(c) for d, c in zip(rt.depths, np.bincount(exits, minlength=E))},
    }

    B = options.batch
    say(f"batched: throughput at batch {B}, adaptive (batched early exit) against full depth", flush=True)
    batches = [rows(feed, i, min(i + B, n)) for i in range(0, n, B)]
    rt.run(batches[0])
    rt.run(batches[0], mode=full)
    thr = {}
    for name, mode in (("full", full), ("adaptive", None)):
        preds, start = [], time.perf_counter()
        for b in batches:
            preds.append(rt.run(b, mode=mode).logits.argmax(1))
        secs = time.perf_counter() - start
        preds = np.concatenate(preds)
        thr[name] = {"inputs_per_s": n / secs,
                     "accuracy": float((preds == labels).mean()) if labels is not None else None}
    batched = {"batch": B, **thr, "speedup": thr["adaptive"]["inputs_per_s"] / thr["full"]["inputs_per_s"]}

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

    return {"engine": rt.engine.name, "input": uri, "graphs": rt.built.label, "backend": rt.built.backend,
            "precision": rt.built.precision, "executor": rt.executor.describe(), "threads": rt.options.threads,
            "machine": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                        "system": platform.system()},
            "warmup": options.warmup, "variants": variants, "adaptive": adaptive, "batched": batched,
            "budget_curve": curve}


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
    a, b = r["adaptive"], r["batched"]
    pk = [k for k in r["variants"][0] if k.startswith("p")]
    lines = [f"{r['engine']} on {r['machine']['processor']}, {r['graphs']} on {r['executor']}, "
             f"inputs {r['input']}", "",
             "| depth | MFLOPs | mean ms | " + " | ".join(f"{k} ms" for k in pk) + " |",
             "|---|---|---|" + "---|" * len(pk)]
    for v in r["variants"]:
        lines.append(f"| {v['depth']} | {v['flops'] / 1e6:.3f} | {v['mean']:.3f} | "
                     + " | ".join(f"{v[k]:.3f}" for k in pk) + " |")
    ratio = "-" if a["saving_ratio"] is None else f"{a['saving_ratio']:.2f}"
    at = f", lambda {a['lambda']:.4g}" if a["lambda"] is not None else ""
    lines += ["", f"Adaptive ({a['mode']}{at}, batch 1, {a['inputs']} inputs, alternating "
              f"blocks of {BLOCK} with full depth):", "",
              "| | mean ms | median ms | FLOPs % of full |", "|---|---|---|---|",
              f"| full depth | {a['full_ms']['mean']:.3f} | {a['full_ms']['median']:.3f} | 100.0 |",
              f"| adaptive | {a['adaptive_ms']['mean']:.3f} | {a['adaptive_ms']['median']:.3f} | "
              f"{a['flops_fraction'] * 100:.1f} |", "",
              f"Latency saving {a['latency_saving'] * 100:.1f} % for a FLOPs saving of {a['flops_saving'] * 100:.1f} % "
              f"(ratio {ratio}); controller {a['controller_us']:.1f} us per input = "
              f"{a['controller_fraction_of_full'] * 100:.2f} % of full-depth latency.", "",
              f"Batch {b['batch']}: adaptive {b['adaptive']['inputs_per_s']:.0f} inputs/s, full depth "
              f"{b['full']['inputs_per_s']:.0f} inputs/s, {b['speedup']:.2f}x"
              + (f"; accuracy {b['adaptive']['accuracy'] * 100:.2f} % vs {b['full']['accuracy'] * 100:.2f} %"
                 if b["full"]["accuracy"] is not None else "") + ".", "",
              "Budget curve: " + (", ".join(f"lambda {p['lambda']:.3g}: {p['mean_ms']:.3f} ms" for p in r["budget_curve"])
                                  or "none (a fixed mode spends no budget)")]
    return "\n".join(lines)
