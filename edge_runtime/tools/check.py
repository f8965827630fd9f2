"""`edge-infer check`: every variant of an engine directory, through the runtime, against PyTorch.

Polygraphy's comparator, on the reference batch export stored (reference.npz: test inputs and the
unfolded checkpoint's logits of every exit), for any build (`--backend`, `--precision`). Every path a mode
runs to each exit is compared with PyTorch's logits there, through the executor as the runtime calls it:
  segments     segments 0..k stepped one by one (progressive)
  chain        chain(0, k) (fixed:D and full: the build's chain graph 0..k, or the segments)
  oneshot      segment 0, then chain(1, k) (the rest of a oneshot chain)
and the controller's features, computed from segment 0's outputs as the runtime does, with the
workstation's.

Per output: max / mean / median / p99 of the absolute and the relative error, argmax agreement, and
PASS or FAIL. An element fails when it is off by more than atol AND by more than rtol relative to the
reference (Polygraphy's elementwise rule), so tiny logits are judged by atol and large ones by rtol.
Relative error: |got - ref| / |ref|, with |ref| floored at the smallest normal float32.
"""
import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.core.engine_dir import EngineDir
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.files import write_atomic
from edge_runtime.runtime import RuntimeOptions

STATS = ("max", "mean", "median", "p99")


# (atol, rtol) by the build's precision. fp32 reproduces PyTorch to float rounding. int8 carries the
# quantisation error (the digits engines' QDQ build: logits off by up to 0.43, features by up to 0.55, argmax
# 16/16) and stays far below a wrong graph's, whose logits are off by their own size (several units); its
# accuracy is what `edge-infer build` scored against its tolerance.
TOLERANCES = {"fp32": (1e-4, 1e-3), "int8": (1.0, 0.1)}


@dataclass
class CheckOptions:
    atol: float = 1e-4
    rtol: float = 1e-3
    fail_fast: bool = False

    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("comparison")
        shown = "; ".join(f"{k} {a:g}/{r:g}" for k, (a, r) in TOLERANCES.items())
        g.add_argument("--atol", type=float, default=None, help=f"absolute tolerance (default by precision: {shown})")
        g.add_argument("--rtol", type=float, default=None, help="relative tolerance (default by precision)")
        g.add_argument("--fail-fast", action="store_true", help="stop at the first output out of tolerance")

    @classmethod
    def from_args(cls, ns) -> "CheckOptions":
        atol, rtol = TOLERANCES[ns.precision]
        atol, rtol = (atol if ns.atol is None else ns.atol), (rtol if ns.rtol is None else ns.rtol)
        for flag, value in (("--atol", atol), ("--rtol", rtol)):
            if not value >= 0:
                raise EdgeError(f"{flag} {value} | must be a number >= 0", Exit.BAD_INPUT)
        return cls(atol, rtol, ns.fail_fast)


def error_stats(got: np.ndarray, ref: np.ndarray, atol: float, rtol: float, argmax: bool = True) -> dict:
    """Absolute and relative error statistics of `got` against `ref`, argmax agreement over the last axis
    (for logits; None when `argmax` is off), the mismatch count and pass/fail."""
    if got.shape != ref.shape:
        return {"passed": False, "note": f"shape {got.shape}, reference {ref.shape}"}
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    abs_err = np.abs(got - ref).ravel()
    rel_err = abs_err / np.maximum(np.abs(ref).ravel(), np.finfo(np.float32).tiny)
    bad = (abs_err > atol) & (rel_err > rtol) | ~np.isfinite(got.ravel())
    out = {}
    for kind, e in (("abs", abs_err), ("rel", rel_err)):
        out.update({f"max_{kind}": float(e.max()), f"mean_{kind}": float(e.mean()),
                    f"median_{kind}": float(np.median(e)), f"p99_{kind}": float(np.percentile(e, 99))})
    out["argmax_agree"] = int((got.argmax(-1) == ref.argmax(-1)).sum()) if argmax else None
    out["rows"] = int(np.prod(got.shape[:-1]))
    out["mismatches"] = int(bad.sum())
    out["passed"] = out["mismatches"] == 0
    return out


def check_engines(engine: EngineDir, runtime: RuntimeOptions = RuntimeOptions(),
                  options: CheckOptions = CheckOptions(), on_result=None) -> dict:
    """Compare every path's logits at every exit, and the controller features, with the stored PyTorch
    outputs, through the executor of the build `runtime` selects (any backend, any precision).

    Args:
        engine: an opened EngineDir.
        runtime: which build and backend run the segments, and how.
        options: tolerances and fail-fast.
        on_result: called with each result row as it is ready (the CLI prints it).
    Returns:
        {engine, build, executor, atol, rtol, samples, results: [{depth, path, graphs, output, ...stats}],
        passed}.
    """
    from edge_runtime.core.controller import Controller
    ref = engine.reference()
    first = engine.segments[0]["inputs"]
    missing = [i["name"] for i in first if i["name"] not in ref] + [k for k in ("logits", "features") if k not in ref]
    if missing:
        raise EdgeError(f"{engine.manifest['reference']['file']} | no '{missing[0]}' array", Exit.CORRUPT)
    inputs = {i["name"]: ref[i["name"]] for i in first}
    results = []

    def add(depth, path, graphs, output, got, want, argmax=True):
        row = {"depth": depth, "path": path, "graphs": graphs, "output": output,
               **error_stats(got, want, options.atol, options.rtol, argmax)}
        results.append(row)
        if on_result:
            on_result(row)
        return options.fail_fast and not row["passed"]

    executor, built = runtime.executor(engine)
    stop = False
    with executor:
        stepped = executor.outputs(inputs)
        _, host0 = executor.segment(0, executor.start(inputs))
        if add(engine.variants[0]["depth"], "segment 0", [executor.graphs[0].name], "features",
               Controller(engine).features(inputs, host0), ref["features"], argmax=False):
            stop = True
        for v in engine.variants:
            if stop:
                break
            k, want = v["exit_index"], ref["logits"][:, v["exit_index"]]
            paths = [("segments", [g.name for g in executor.graphs[:k + 1]],
                      stepped[k]["logits"]),
                     ("chain", executor.route(0, k), executor.chain(0, k, executor.start(inputs))["logits"])]
            if k > 0:
                handle, _ = executor.segment(0, executor.start(inputs))
                paths.append(("oneshot", [executor.graphs[0].name] + executor.route(1, k),
                              executor.chain(1, k, handle)["logits"]))
            for path, graphs, got in paths:
                if stop := add(v["depth"], path, graphs, "logits", got, want):
                    break
        where = executor.describe()
    return {"engine": engine.name, "engine_dir": str(engine.root), "build": built.label, "backend": built.backend,
            "precision": built.precision, "executor": where, "atol": options.atol, "rtol": options.rtol,
            "samples": int(len(ref["logits"])), "stopped_early": stop, "results": results,
            "passed": all(r["passed"] for r in results)}


HEADER = (f"{'depth':>5}  {'path':<10} {'output':<10}" + "".join(f" {s + ' abs':>10}" for s in STATS)
          + "".join(f" {s + ' rel':>10}" for s in STATS) + f" {'argmax':>8}  result")


def result_line(r: dict) -> str:
    if "note" in r:
        return f"{r['depth']:>5}  {r['path']:<10} {r['output']:<10} {r['note']}  FAIL"
    cells = "".join(f" {r[f'{s}_{kind}']:>10.2e}" for kind in ("abs", "rel") for s in STATS)
    agree = "-" if r["argmax_agree"] is None else f"{r['argmax_agree']}/{r['rows']}"
    return (f"{r['depth']:>5}  {r['path']:<10} {r['output']:<10}{cells} "
            f"{agree:>8}  {'PASS' if r['passed'] else 'FAIL'}")


def write_report(report: dict, path) -> None:
    """JSON, whole or not at all."""
    write_atomic(Path(path), json.dumps(report, indent=2) + "\n")
