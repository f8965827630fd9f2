"""The runtime API: open an engine directory, infer at the depth the controller picks.

    with Runtime.open("engines/fmnist-vit") as rt:       # mode="progressive", budget: the validated lambda
        r = rt.infer(image)                                # Result(label, score, depth, flops, timings, ...)
        rs = rt.infer_batch(images, budget=0.05)           # lambda per call
        rt.stats()

Batched early exit (`run`): segment k runs on the rows still active; the rows whose controller says stop
leave the batch with their exit's logits, the rest go on to segment k + 1. Each row's decision reads only
its own outputs and state, so a batch decides exactly as its inputs would alone (tests/test_runtime.py).
"""
import time
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.backends import BackendOptions
from edge_runtime.core.controller import Controller, Mode, check_budget
from edge_runtime.core.engine_dir import EngineDir
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.features import softmax
from edge_runtime.core.preprocess import make_preprocess

STAGES = ("preprocess", "segments", "controller", "postprocess")


@dataclass
class Result:
    label: str                 # the class name
    index: int                 # the class index
    score: float               # softmax probability of the label at the exit that answered
    depth: int                 # layers run
    exit_index: int            # which exit answered
    flops: int                 # what ran: the segments of the chain (their exit heads included)
    timings: dict = field(default_factory=dict)   # ms per stage, of the call (shared by a batch's rows)
    logits: np.ndarray = None  # (classes,) the answering exit's logits

    def as_dict(self) -> dict:
        return {"label": self.label, "index": self.index, "score": round(self.score, 6), "depth": self.depth,
                "exit": self.exit_index, "flops": self.flops,
                "ms": {k: round(v, 4) for k, v in self.timings.items()}}


@dataclass
class BatchOutput:
    """`run`'s answer for a batch, as arrays over its rows."""
    logits: np.ndarray         # (N, classes)
    exit_index: np.ndarray     # (N,)
    seconds: dict              # stage -> seconds for the whole batch (segments, controller)


def graphs_for(engine: EngineDir, precision: str):
    """The graphs to run: a build of `precision` (fp32: the optimised build when there is one, else the
    exported segments; int8: the int8 build)."""
    from edge_runtime.tools.build import open_build
    built = {b.get("precision") for b in engine.manifest.get("builds", [])}
    if precision == "fp32" and "fp32" not in built:
        return engine.graphs(), "exported fp32 segments"
    if precision not in ("fp32", "int8"):
        raise EdgeError(f"precision '{precision}' | expected fp32 or int8", Exit.BAD_INPUT)
    return open_build(engine, precision), f"{precision} build"


def check_finite(feed: dict) -> None:
    for name, x in feed.items():
        if not isinstance(x, np.ndarray):
            raise EdgeError(f"input '{name}' | a {type(x).__name__}, expected a numpy array", Exit.BAD_INPUT)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise EdgeError(f"input '{name}' | holds NaN or infinite values", Exit.BAD_INPUT)


class Runtime:
    """Adaptive-depth inference over one engine directory. Use `Runtime.open(...)`."""

    def __init__(self, engine: EngineDir, backend, controller: Controller, mode: Mode, budget: float,
                 graphs_label: str):
        self.engine, self.backend, self.controller = engine, backend, controller
        self.mode, self.budget, self.graphs_label = mode, budget, graphs_label   # budget None: per mode
        self.preprocess = make_preprocess(engine)
        self.labels = list(engine.task["labels"])
        self.depths = [v["depth"] for v in engine.variants]
        self.chain_flops = np.cumsum([s["flops"] for s in engine.segments], dtype=np.int64)
        self.text = engine.task["kind"] == "text"
        self._stats = RunStats(len(self.depths))

    @classmethod
    def open(cls, engine_dir, backend: str = "auto", mode: str = "progressive", budget=None,
             precision: str = "fp32", threads: int = 1, providers=()) -> "Runtime":
        """Open and verify `engine_dir`, load its graphs and controller.

        Args:
            engine_dir: an engine directory (edge-model export).
            backend: auto (what the engines were built for) or a backend name (edge_runtime.backends).
            mode: progressive, oneshot, fixed:D or full.
            budget: lambda, the price of compute; None: the one chosen on validation for this mode.
            precision: fp32 (optimised build if present, else the exported segments) or int8.
            threads: intra-op threads per graph (1: the embedded default, predictable latency).
            providers: ONNX Runtime execution providers; () = CPU.
        """
        engine = EngineDir.open(engine_dir)
        graphs, label = graphs_for(engine, precision)
        the_mode = Mode.parse(mode, [v["depth"] for v in engine.variants])
        be = BackendOptions(backend, tuple(providers), threads).create(graphs, engine.build["backend"]).open()
        try:
            controller = Controller(engine)
            controller.warm_up(len(engine.task["labels"]))
            lam = None if budget is None else check_budget(budget)
        except BaseException:
            be.close()
            raise
        return cls(engine, be, controller, the_mode, lam, label)

    # --- context manager
    def close(self) -> None:
        if self.backend.is_open:
            self.backend.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def budget_for(self, mode: Mode) -> float:
        """The lambda a call without `budget` uses: the one given at open, else the mode's validated one."""
        return self.budget if self.budget is not None else self.controller.default_budget(mode)

    # --- inference
    def run(self, feed: dict, budget=None, mode=None) -> BatchOutput:
        """Batched early exit on a preprocessed feed (segment 0's inputs)."""
        the_mode = self.mode if mode is None else mode if isinstance(mode, Mode) else Mode.parse(mode, self.depths)
        lam = self.budget_for(the_mode) if budget is None else check_budget(budget)
        check_finite(feed)
        first = next(iter(feed.values()))
        n = len(first)
        lams = np.full(n, lam, np.float32)
        mask = feed.get("attention_mask")
        logits_out, exit_out = None, np.full(n, -1, np.int64)
        rows, seg_feed = np.arange(n), feed
        t_seg = t_ctrl = 0.0
        decision = None
        for k in range(len(self.depths)):
            t0 = time.perf_counter()
            out = self.backend.run_segment(f"segment_{k}", seg_feed, check=k == 0)   # later feeds are ours
            t1 = time.perf_counter()
            hidden, logits = out["hidden_out"], out["logits"]
            if decision is None:
                decision = self.controller.start(the_mode, lams, out["features"], logits, out["conf"])
            stop = decision.stop(k, logits, out["conf"])
            t2 = time.perf_counter()
            t_seg, t_ctrl = t_seg + (t1 - t0), t_ctrl + (t2 - t1)
            if logits_out is None:
                logits_out = np.empty((n, logits.shape[1]), np.float32)
            if stop.all():                  # the last rows leave (at batch 1, the only branch taken)
                logits_out[rows], exit_out[rows] = logits, k
                break
            if stop.any():                  # some leave: record them, run the next segment on the rest
                logits_out[rows[stop]], exit_out[rows[stop]] = logits[stop], k
                keep = ~stop
                rows, hidden = rows[keep], hidden[keep]
                decision.keep(keep)
                if mask is not None:
                    mask = mask[keep]
            seg_feed = {"hidden": hidden} if mask is None else {"hidden": hidden, "attention_mask": mask}
        return BatchOutput(logits_out, exit_out, {"segments": t_seg, "controller": t_ctrl})

    def infer_batch(self, xs, budget=None, mode=None) -> list:
        """One Result per raw input (images as arrays, or strings for text models)."""
        t0 = time.perf_counter()
        feed = self.preprocess.batch(xs)
        t1 = time.perf_counter()
        out = self.run(feed, budget, mode)
        t2 = time.perf_counter()
        results = self.results(out)
        t3 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, "segments": out.seconds["segments"] * 1e3,
                   "controller": out.seconds["controller"] * 1e3, "postprocess": (t3 - t2) * 1e3}
        for r in results:
            r.timings = dict(timings)
        self._stats.add(out, self.chain_flops, timings)
        return results

    def infer(self, x, budget=None, mode=None) -> Result:
        """The Result for one raw input."""
        return self.infer_batch([x], budget, mode)[0]

    def results(self, out: BatchOutput) -> list:
        proba = softmax(out.logits.astype(np.float64))
        idx = out.logits.argmax(1)
        return [Result(self.labels[i], int(i), float(proba[r, i]), self.depths[k], int(k), int(self.chain_flops[k]),
                       logits=out.logits[r]) for r, (i, k) in enumerate(zip(idx, out.exit_index))]

    def stats(self) -> dict:
        """Counters since open: inputs, calls, depth histogram, mean FLOPs against full, ms per stage."""
        return self._stats.summary(self.depths, int(self.chain_flops[-1]))


class RunStats:
    """Running sums only: constant memory however long the runtime serves."""

    def __init__(self, exits: int):
        self.inputs = self.calls = 0
        self.hist = np.zeros(exits, np.int64)
        self.flops = 0
        self.ms = dict.fromkeys(STAGES, 0.0)

    def add(self, out: BatchOutput, chain_flops: np.ndarray, timings: dict) -> None:
        self.inputs += len(out.exit_index)
        self.calls += 1
        self.hist += np.bincount(out.exit_index, minlength=len(self.hist))
        self.flops += int(chain_flops[out.exit_index].sum())
        for k, v in timings.items():
            self.ms[k] += v

    def summary(self, depths: list, full_flops: int) -> dict:
        n = max(self.inputs, 1)
        return {"inputs": self.inputs, "calls": self.calls,
                "depth_histogram": {str(d): int(c) for d, c in zip(depths, self.hist)},
                "mean_flops": self.flops / n, "flops_fraction": self.flops / n / full_flops,
                "ms_per_input": {k: v / n for k, v in self.ms.items()}}
