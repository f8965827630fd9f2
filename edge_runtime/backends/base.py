"""The executor interface every backend writes (Polygraphy's BaseRunner shape, cut at the exits).

An executor owns the graphs of one build and where activations live (host memory for ONNX Runtime,
device memory for a GPU backend). The scheduler (edge_runtime.runtime) drives it through opaque handles
and never looks inside one:

    h = ex.start(feed)              # segment 0's inputs, checked once, placed where activations live
    h, host = ex.segment(k, h)      # run segment k; host: what the controller reads, numpy arrays:
                                    # {"logits"}, and "hidden_out" after segment 0 (for its features)
    h = ex.keep(h, mask)            # batch compaction on the executor's side: the rows that go on
    host = ex.chain(j, d, h)        # segments j..d in one call (oneshot, fixed, full): the build's chain
                                    # graph (j, d) when it has one (exit d's head only), else segment by
                                    # segment; host: {"logits"} of exit d

The base class does what every backend needs once: open/close state checks, the feed check at start
(names, dtypes, shapes, one batch size, finite values), and which graphs a call runs (`route`). Graphs
load when first run, or at open for the ones named there (`open(needs, later)`: the runtime names the
first graph of its mode to load now and the rest of the mode's to load in the background, so the first
result comes sooner and a process that serves one mode never loads the others). Each backend writes load, unload, place,
segment, keep and chain. A handle is only valid until the next call that takes it.
"""
from abc import ABC, abstractmethod

import numpy as np

from edge_runtime.core.chain import check_feed


class BackendStateError(RuntimeError):
    """Calling a backend out of order (run before open, open twice): a bug in the caller, so a traceback."""


class Executor(ABC):
    """Base of every backend: construct closed, `open()`, run, `close()` (or use it as a context manager)."""

    name = "base"
    max_batch = None     # the most rows one call takes (a GPU executor's largest bucket); None: any

    def __init__(self, graphs: list, chains: dict = None):
        """Args:
            graphs: [GraphSpec] in chain order (edge_runtime.core.engine_dir.Build.graphs).
            chains: {(from, to): GraphSpec} (Build.chains): segments from..to as one graph.
        """
        self.graphs = list(graphs)
        self.chains = dict(chains or {})
        self.is_open = False

    def route(self, j: int, d: int) -> list:
        """The graph names chain(j, d) runs: its chain graph when the build has one, else the segments."""
        if (j, d) in self.chains:
            return [self.chains[(j, d)].name]
        return [self.graphs[k].name for k in range(j, d + 1)]

    def spec(self, name: str):
        """The GraphSpec called `name` (a segment or a chain graph)."""
        for g in self.graphs + list(self.chains.values()):
            if g.name == name:
                return g
        raise KeyError(name)

    # --- what each backend writes
    @abstractmethod
    def load(self, names: list, later: list = ()) -> None:
        """Make the engines of the graphs called `names` ready (a loader function does the work); those of
        `later` may load in the background (a call that needs one before then waits for it)."""

    @abstractmethod
    def unload(self) -> None:
        """Free them."""

    @abstractmethod
    def place(self, feed: dict):
        """A handle on segment 0's (checked) inputs, wherever this backend keeps activations."""

    @abstractmethod
    def segment(self, k: int, handle) -> tuple:
        """(handle for segment k + 1, host outputs of segment k)."""

    @abstractmethod
    def keep(self, handle, mask: np.ndarray):
        """The handle with only the rows where `mask` (bool, one per row) is set."""

    @abstractmethod
    def chain(self, j: int, d: int, handle) -> dict:
        """Host outputs of segment d after running segments j..d on `handle`."""

    def describe(self) -> str:
        """Where it runs, for the header line (e.g. providers and threads)."""
        return self.name

    # --- what callers use
    def start(self, feed: dict, check: bool = True):
        """A handle on `feed`, segment 0's inputs; check=False for feeds the runtime's own preprocessing
        built (already checked, and the check costs microseconds per call)."""
        if not self.is_open:
            raise BackendStateError(f"{self.name} backend | start before open()")
        if check:
            check_feed("segment_0", self.graphs[0], feed)
        return self.place(feed)

    def outputs(self, feed: dict, upto: int = None) -> list:
        """Host outputs of every segment 0..upto (default: the last) on `feed`, segment by segment, as
        progressive mode steps: what check, build and the benchmarks compare."""
        last = len(self.graphs) - 1 if upto is None else upto
        n = len(next(iter(feed.values())))
        if self.max_batch is not None and n > self.max_batch:
            parts = [self.outputs({k: v[a:a + self.max_batch] for k, v in feed.items()}, upto)
                     for a in range(0, n, self.max_batch)]
            return [{name: np.concatenate([p[k][name] for p in parts]) for name in parts[0][k]}
                    for k in range(last + 1)]
        handle, outs = self.start(feed), []
        for k in range(last + 1):
            handle, host = self.segment(k, handle)
            outs.append(host)
        return outs

    def open(self, needs: list = None, later: list = ()) -> "Executor":
        """Load the graphs called `needs` now (None: every graph) and `later` in the background; any other
        loads when first run."""
        if self.is_open:
            raise BackendStateError(f"{self.name} backend | already open; close it first")
        self.load([g.name for g in self.graphs + list(self.chains.values())] if needs is None else list(needs),
                  list(later))
        self.is_open = True
        return self

    def close(self) -> None:
        if not self.is_open:
            raise BackendStateError(f"{self.name} backend | not open")
        self.unload()
        self.is_open = False

    def __enter__(self) -> "Executor":
        return self.open()

    def __exit__(self, *exc) -> None:
        if self.is_open:
            self.close()
