"""The runtime API and its scheduler: open an engine directory, infer at the depth the controller picks.

    with Runtime.open("engines/fmnist-vit") as rt:       # mode="progressive", budget: the validated lambda
        r = rt.infer(image)                                # Result(label, score, depth, flops, timings, ...)
        rs = rt.infer_batch(images, budget=0.05)           # lambda per call
        out = rt.run(feed)                                 # the lower-level call on a preprocessed feed
        rt.stats()                                         # what `edge-infer run` prints

The scheduler (this module) owns the modes, the budget (edge_runtime.core.budget), the controller calls,
batch compaction and the statistics; an executor (edge_runtime.backends) owns the graphs and where the
activations live, and hands back only what the controller reads. Per mode:
  progressive  segment by segment: after segment k the rows whose policy says stop leave the batch with
               that exit's logits, the executor keeps the rest (batched early exit) for segment k + 1;
  oneshot      segment 0, the predictor fixes each row's exit, then one chain call per exit chosen;
  fixed, full  one chain call, segments 0..D.
Each row's decision reads only its own outputs and state, so a batch decides exactly as its inputs would
alone (tests/test_runtime.py).
"""
import time
from dataclasses import dataclass, field

import numpy as np

from edge_runtime import backends
from edge_runtime.core.budget import Budget, Curve, Spend
from edge_runtime.core.chain import check_feed
from edge_runtime.core.controller import MODES, Controller, Mode
from edge_runtime.core.engine_dir import EngineDir
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.gpu_plan import parse_buckets, pieces
from edge_runtime.core.kernels import kernels
from edge_runtime.core.manifest import MANIFEST
from edge_runtime.core.preprocess import make_preprocess
from edge_runtime.core.stats import Stats

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class Result:
    label: str                 # the class name
    index: int                 # the class index
    score: float               # softmax probability of the label at the exit that answered
    depth: int                 # layers run
    exit_index: int            # which exit answered
    flops: int                 # what ran: the graphs of the mode's route to this exit (mode_flops)
    timings: dict = field(default_factory=dict)   # ms per stage, of the call (shared by a batch's rows)
    logits: np.ndarray = None  # (classes,) the answering exit's logits
    lam: float = None          # the budget the call spent at (None in fixed and full modes)

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
    lam: float = None          # the lambda it ran at; None in fixed and full modes
    flops: np.ndarray = None   # (exits,) FLOPs per input of stopping at each exit, in the mode that ran


@dataclass
class RuntimeOptions:
    """How graphs run, spelled once for every subcommand that runs them (run, bench, check, build)."""
    backend: str = "auto"          # "auto": the backend the engine directory was exported for
    precision: str = "fp32"        # fp32 (the optimised build when there is one) or int8
    threads: int = 1               # intra-op threads; 0 = the backend's own default (ORT: one per core)
    providers: tuple = ()          # ONNX Runtime execution providers; () = CPU
    cuda_graphs: bool = True       # GPU backends: replay captured CUDA graphs (False: plain launches)
    buckets: tuple = None          # GPU backends: batch buckets; None: the build's (torch-CUDA: 1..32)

    @staticmethod
    def add_args(p) -> None:   # p: an argparse parser (argparse stays out of the runtime's import)
        g = p.add_argument_group("runtime")
        g.add_argument("--backend", default="auto",
                       help=f"auto (what the engines were exported for) or one of: {', '.join(backends.BACKENDS)}")
        g.add_argument("--precision", default="fp32", choices=PRECISIONS,
                       help="fp32 (the optimised build when there is one), fp16 (TensorRT and torch-CUDA) or int8 "
                            "(needs edge-infer build)")
        g.add_argument("--threads", type=int, default=1, metavar="N",
                       help="intra-op threads per graph (default 1: predictable latency; 0: the backend's default)")
        g.add_argument("--providers", default="", metavar="LIST",
                       help="ONNX Runtime execution providers, comma-separated (default: CPUExecutionProvider)")
        g.add_argument("--cuda-graphs", choices=("on", "off"), default="on",
                       help="GPU backends: replay pre-captured CUDA graphs (default on) or launch plainly")
        g.add_argument("--buckets", default=None, metavar="LIST",
                       help="GPU backends: batch buckets, e.g. 1,2,4,8,16,32 (default: the build's)")

    @classmethod
    def from_args(cls, ns) -> "RuntimeOptions":
        if ns.threads < 0:
            raise EdgeError(f"--threads {ns.threads} | must be 0 (the backend's default) or more", Exit.BAD_INPUT)
        providers = tuple(p.strip() for p in ns.providers.split(",") if p.strip())
        buckets = parse_buckets(ns.buckets) if getattr(ns, "buckets", None) else None
        return cls(ns.backend, ns.precision, ns.threads, providers, getattr(ns, "cuda_graphs", "on") == "on", buckets)

    def backend_for(self, engine: EngineDir) -> str:
        """The backend to run: the one given (checked), or for auto the one the export was stamped with
        (whose stamp check then says whether this machine has it)."""
        if self.backend == "auto":
            return backends.ALIASES.get(engine.export_stamp["backend"], engine.export_stamp["backend"])
        return backends.resolve(self.backend)

    def executor(self, engine: EngineDir, precision: str = None):
        """(closed Executor, Build) over this option's build of `engine`; a stamp this machine cannot honour
        is one line."""
        name = self.backend_for(engine)
        precision = precision or self.precision
        built = engine.build(name, precision, backends.BACKENDS[name].from_export)
        reason = backends.stamp_refusal(built.stamp)
        if reason:
            raise EdgeError(f"{MANIFEST} | {built.where} ({built.label}): {reason}", Exit.BAD_INPUT)
        buckets = self.buckets or built.stamp.get("buckets")
        return backends.create(name, built.graphs, self.threads, self.providers, built.chains, precision,
                               buckets=tuple(buckets) if buckets else None, use_graphs=self.cuda_graphs), built


def graphs_for(executor, mode: Mode, num_exits: int) -> list:
    """The graphs a mode runs, the one it runs first first (another mode's load when a call first asks)."""
    if mode.name == "fixed":
        return executor.route(0, mode.exit_index)
    if mode.name == "oneshot":
        rest = [g for d in range(num_exits - 1, 0, -1) for g in executor.route(1, d)]   # full depth's first
        return [executor.graphs[0].name] + sorted(set(rest), key=rest.index)
    return [g.name for g in executor.graphs]


def mode_flops(engine: EngineDir, executor) -> dict:
    """FLOPs per input of each exit, per mode, of the graphs that mode runs (executor.route): progressive
    runs every exit head on the way, oneshot segment 0's and the chain's, fixed and full one head."""
    flops = {f"segment_{s['index']}": s["flops"] for s in engine.segments}
    flops.update({f"chain_{c['from']}_{c['to']}": c["flops"] for c in engine.manifest.get("chains") or []})
    E = len(engine.segments)
    cost = lambda j, d: sum(flops[g] for g in executor.route(j, d))   # noqa: E731
    return {"progressive": np.cumsum([flops[f"segment_{k}"] for k in range(E)], dtype=np.int64),
            "oneshot": np.array([flops["segment_0"]] + [flops["segment_0"] + cost(1, d) for d in range(1, E)],
                                np.int64),
            "fixed": np.array([cost(0, d) for d in range(E)], np.int64)}


class Runtime:
    """Adaptive-depth inference over one engine directory. Use `Runtime.open(...)`."""

    def __init__(self, engine: EngineDir, executor, built, controller: Controller, mode: Mode, spend: Spend,
                 options: RuntimeOptions, measured: dict):
        self.engine, self.executor, self.built, self.controller = engine, executor, built, controller
        self.mode, self.spend, self.options = mode, spend, options
        self.preprocess = make_preprocess(engine)
        self.labels = list(engine.task["labels"])
        self.depths = [v["depth"] for v in engine.variants]
        self.flops = mode_flops(engine, executor)
        self._exit_of = [np.array([k], np.int64) for k in range(len(engine.segments))]   # batch 1's exit_index
        for a in self._exit_of:
            a.flags.writeable = False
        self.text = engine.task["kind"] == "text"
        self.full = Mode("fixed", len(self.depths) - 1)
        self.statistics = Stats(self.depths, self.flops["fixed"][-1])
        self.statistics.full_ms_stored = measured.get("variant_ms", {}).get(str(self.depths[-1]))

    @classmethod
    def open(cls, engine_dir, mode: str = "progressive", budget=None, options: RuntimeOptions = None,
             deadline_ms: float = None, max_disagreement=None, confidence=None, **runtime_options) -> "Runtime":
        """Open and verify `engine_dir`, load its graphs and controller.

        Args:
            engine_dir: an engine directory (edge-model export).
            mode: progressive, oneshot, fixed:D or full.
            budget: lambda (>= 0), the price of compute, or a Budget; None: the one chosen on validation for
                the mode.
            options: a RuntimeOptions (backend, precision, threads, providers); or give those as keywords.
            deadline_ms: pick lambda per call so that the latency bench measured fits (instead of `budget`).
            max_disagreement: serve the most aggressive lambda Learn then Test certifies, on the engine
                directory's calibration counts, to disagree with full depth on at most this fraction of new
                inputs (0.005 or "0.5%"), with probability >= `confidence` (default 0.9) over the calibration
                split; a live guard fed by shadow frames (observe_shadow) steps back under drift.
        """
        options = options or RuntimeOptions(**runtime_options)
        spend_on = Budget.of(budget, deadline_ms, max_disagreement, confidence)
        engine = EngineDir.open(engine_dir)
        the_mode = Mode.parse(mode, [v["depth"] for v in engine.variants])
        executor, built = options.executor(engine)
        measured = engine.bench_for(built.backend, built.precision, options.threads) or {}
        curves = {m: Curve(points) for m, points in measured.get("curves", {}).items()}
        spend = Spend(spend_on, engine.controller["operating_points"], curves,
                      f"{built.backend} {built.precision}, {options.threads} thread(s)",
                      engine.controller.get("calibration"))
        graphs = graphs_for(executor, the_mode, len(engine.segments))
        executor.open(graphs[:1], graphs[1:])    # the first result needs the first graph; the rest load meanwhile
        try:
            controller = Controller(engine)
            controller.warm_up(len(engine.task["labels"]))
            return cls(engine, executor, built, controller, the_mode, spend, options, measured)
        except BaseException:
            executor.close()
            raise

    # --- context manager
    def close(self) -> None:
        if self.executor.is_open:
            self.executor.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        """One line for headers: mode, budget (and the guarantee it runs under), build, executor."""
        certified = self.spend.guarantee(self.mode)
        if certified is not None:
            budget = f", {certified.describe()}" + (f", deadline {self.spend.budget.deadline_ms:g} ms"
                                                    if self.spend.budget.deadline_ms is not None else "")
        else:
            lam = self.spend.lam(self.mode) if self.spend.budget.deadline_ms is None else None
            budget = (f", lambda {lam:.4g}" if lam is not None else
                      f", {self.spend.budget.describe()}" if self.mode.name != "fixed" else "")
        return f"{self.mode} mode{budget}, {self.built.label} on {self.executor.describe()}"

    def observe_shadow(self, differs: bool):
        """A shadow frame's verdict (the answer differed from full depth's) for the guarantee's live guard:
        a step dict when the guard stepped to a more conservative lambda, else None."""
        return self.spend.observe(self.mode, differs)

    def parse_mode(self, mode) -> Mode:
        return self.mode if mode is None else mode if isinstance(mode, Mode) else Mode.parse(mode, self.depths)

    # --- inference
    def run(self, feed: dict, budget=None, mode=None, spent_ms: float = 0.0, check: bool = True) -> BatchOutput:
        """Adaptive inference on a preprocessed feed (segment 0's inputs, checked against the manifest).

        Args:
            feed: {input name: (N, ...) array}.
            budget: lambda for this call; None: the runtime's budget (spent_ms: what a deadline already lost).
            mode: a mode for this call; None: the runtime's.
            check: False for feeds `preprocess` made (checked there).
        """
        the_mode = self.mode if mode is None else self.parse_mode(mode)
        ex = self.executor
        n = len(next(iter(feed.values())))
        if ex.max_batch is not None and n > ex.max_batch:    # a GPU executor's largest bucket: run in pieces
            return self._run_pieces(feed, budget, the_mode, spent_ms, check)
        lam = None
        if the_mode.name != "fixed":
            lam = self.spend.lam(the_mode, spent_ms) if budget is None else Budget.of(budget).lam
            if lam is None:             # a guarantee that certifies no lambda: full depth
                the_mode = self.full
        handle = ex.start(feed, check)
        if the_mode.name == "fixed":    # one chain call: no budget, no controller
            k = the_mode.exit_index
            t0 = time.perf_counter()
            logits = ex.chain(0, k, handle)["logits"]
            t1 = time.perf_counter()
            exits = self._exit_of[k] if n == 1 else np.full(n, k, np.int64)
            return BatchOutput(logits, exits, {"segments": t1 - t0, "controller": 0.0}, None, self.flops["fixed"])
        if n == 1:
            return self._run_one(the_mode, handle, feed, lam)
        flops = self.flops[the_mode.name]
        t0 = time.perf_counter()
        handle, host = ex.segment(0, handle)
        t1 = time.perf_counter()
        decision = self.controller.start(the_mode, lam, feed, host)
        stop = decision.stop(0, host["logits"])
        t2 = time.perf_counter()
        t_seg, t_ctrl = t1 - t0, t2 - t1
        logits = host["logits"]
        if stop.all():                  # every row leaves at the first exit
            return BatchOutput(logits, np.zeros(n, np.int64), {"segments": t_seg, "controller": t_ctrl}, lam, flops)
        logits_out = np.empty((n, logits.shape[1]), np.float32)
        exit_out = np.zeros(n, np.int64)
        rows = np.arange(n)
        if stop.any():
            logits_out[rows[stop]] = logits[stop]
            keep = ~stop
            rows, handle = rows[keep], ex.keep(handle, keep)
            decision.keep(keep)
        t3 = time.perf_counter()
        t_seg += t3 - t2
        if the_mode.name == "oneshot":
            self._oneshot(handle, rows, decision.target, logits_out, exit_out)
            t_seg += time.perf_counter() - t3
        else:
            t_seg, t_ctrl = self._progressive(handle, rows, decision, logits_out, exit_out, t_seg, t_ctrl)
        return BatchOutput(logits_out, exit_out, {"segments": t_seg, "controller": t_ctrl}, lam, flops)

    def _run_pieces(self, feed: dict, budget, mode: Mode, spent_ms: float, check: bool) -> BatchOutput:
        """`run` over pieces of at most the executor's largest batch, joined (the lambda of the first)."""
        if check:
            check_feed("segment_0", self.executor.graphs[0], feed)
        outs = [self.run({k: v[a:b] for k, v in feed.items()}, budget, mode, spent_ms, check=False)
                for a, b in pieces(len(next(iter(feed.values()))), self.executor.max_batch)]
        seconds = {k: sum(o.seconds[k] for o in outs) for k in outs[0].seconds}
        return BatchOutput(np.concatenate([o.logits for o in outs]), np.concatenate([o.exit_index for o in outs]),
                           seconds, outs[0].lam, outs[0].flops)

    def _run_one(self, mode: Mode, handle, feed: dict, lam: float) -> BatchOutput:
        """`run` for one input, the case a camera stream lives in: the same calls, with none of the batch
        bookkeeping (between two segment runs every numpy call costs microseconds of cold caches)."""
        ex, clock = self.executor, time.perf_counter
        t0 = clock()
        handle, host = ex.segment(0, handle)
        t1 = clock()
        decision = self.controller.start(mode, lam, feed, host)
        stop = decision.stop(0, host["logits"])[0]
        t2 = clock()
        t_seg, t_ctrl, k, logits = t1 - t0, t2 - t1, 0, host["logits"]
        if not stop and mode.name == "oneshot":
            k = int(decision.target[0])
            logits = ex.chain(1, k, handle)["logits"]
            t_seg += clock() - t2
        while not stop and mode.name != "oneshot":
            t0 = clock()
            k += 1
            handle, host = ex.segment(k, handle)
            t1 = clock()
            logits = host["logits"]
            stop = decision.stop(k, logits)[0]
            t_seg, t_ctrl = t_seg + (t1 - t0), t_ctrl + (clock() - t1)
        return BatchOutput(logits, self._exit_of[k], {"segments": t_seg, "controller": t_ctrl}, lam,
                           self.flops[mode.name])

    def _oneshot(self, handle, rows, target, logits_out, exit_out) -> None:
        """Each row's chain 1..target in one call per distinct target (one call at batch 1)."""
        ex = self.executor
        targets = np.unique(target)
        for d in targets:
            sub = handle if len(targets) == 1 else ex.keep(handle, target == d)
            at = rows if len(targets) == 1 else rows[target == d]
            logits_out[at], exit_out[at] = ex.chain(1, int(d), sub)["logits"], d

    def _progressive(self, handle, rows, decision, logits_out, exit_out, t_seg, t_ctrl) -> tuple:
        ex = self.executor
        for k in range(1, len(self.depths)):
            t0 = time.perf_counter()
            handle, host = ex.segment(k, handle)
            t1 = time.perf_counter()
            logits = host["logits"]
            stop = decision.stop(k, logits)
            t2 = time.perf_counter()
            t_seg, t_ctrl = t_seg + (t1 - t0), t_ctrl + (t2 - t1)
            if stop.all():              # the last rows leave (at batch 1, the only branch taken)
                logits_out[rows], exit_out[rows] = logits, k
                break
            if stop.any():              # some leave: record them, the executor keeps the rest
                logits_out[rows[stop]], exit_out[rows[stop]] = logits[stop], k
                keep = ~stop
                rows, handle = rows[keep], ex.keep(handle, keep)
                decision.keep(keep)
                t_seg += time.perf_counter() - t2
        return t_seg, t_ctrl

    def infer_batch(self, xs, budget=None, mode=None, spent_ms: float = 0.0, record: bool = True) -> list:
        """One Result per raw input (images as arrays, or strings for text models).

        Timings (ms, shared by the batch's rows): preprocess, segments, controller, and runtime: everything
        else the call spends (the scheduler's own Python, the results, the statistics), so the stages sum
        to the call's wall time.

        Args:
            xs: the raw inputs.
            budget, mode, spent_ms: as for `run`.
            record: False keeps the call out of `stats()` (a shadow run, a warm-up).
        """
        t0 = time.perf_counter()
        feed = self.preprocess.batch(xs)
        t1 = time.perf_counter()
        out = self.run(feed, budget, mode, spent_ms + (t1 - t0) * 1e3, check=False)
        results = self.results(out)
        seg, ctrl = out.seconds["segments"] * 1e3, out.seconds["controller"] * 1e3
        timings = {"preprocess": (t1 - t0) * 1e3, "segments": seg, "controller": ctrl, "runtime": 0.0}
        for r in results:
            r.timings = timings                                     # one dict, shared by the batch's rows
        if record:
            self.statistics.add_call(out.exit_index, out.flops, timings)
        t2 = time.perf_counter()
        runtime = (t2 - t1) * 1e3 - seg - ctrl
        timings["runtime"] = runtime
        if record:
            self.statistics.ms["runtime"] += runtime
        return results

    def infer(self, x, budget=None, mode=None, spent_ms: float = 0.0, record: bool = True) -> Result:
        """The Result for one raw input."""
        return self.infer_batch((x,), budget, mode, spent_ms, record)[0]

    def results(self, out: BatchOutput) -> list:
        """One Result per row: the argmax label and its softmax probability (in C: edge_runtime._kernels)."""
        n = len(out.logits)
        index, score = np.empty(n, np.int64), np.empty(n, np.float64)
        kernels.top1(out.logits, index, score)
        labels, depths, lam = self.labels, self.depths, out.lam
        return [Result(labels[i], i, s, depths[k], k, int(out.flops[k]), logits=out.logits[r], lam=lam)
                for r, (i, k, s) in enumerate(zip(index.tolist(), out.exit_index.tolist(), score.tolist()))]

    def stats(self) -> dict:
        """Counters since open (edge_runtime.core.stats.Stats.summary): frames, depth histogram, FLOPs against
        full, ms per stage, network and pipeline FPS; after `edge-infer run`, exactly what it printed."""
        summary = self.statistics.summary()
        certified = self.spend.guarantee(self.mode)
        if certified is not None:
            summary["guarantee"] = certified.report()
        return summary


__all__ = ["Runtime", "RuntimeOptions", "Result", "BatchOutput", "MODES"]
