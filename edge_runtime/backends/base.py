"""The executor interface every backend writes (Polygraphy's BaseRunner shape, cut at the exits).

An executor owns the graphs of one build and where activations live (host memory for ONNX Runtime,
device memory for a GPU backend). The scheduler (edge_runtime.runtime) drives it through opaque handles
and never looks inside one:

    h = ex.start(feed)              # segment 0's inputs, checked once, placed where activations live
    h, host = ex.segment(k, h)      # run segment k; host: the controller's few floats per row
                                    # ({"logits", "conf"}, and "features" after segment 0), numpy arrays
    h = ex.keep(h, mask)            # batch compaction on the executor's side: the rows that go on
    host = ex.chain(j, d, h)        # segments j..d in one call (oneshot, fixed, full): a GPU backend
                                    # replays one captured graph; host is segment d's

The base class does what every backend needs once: open/close state checks and the feed check at start
(names, dtypes, shapes, one batch size, finite values). Each backend writes load, unload, place,
segment, keep and chain. A handle is only valid until the next call that takes it.
"""
from abc import ABC, abstractmethod

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit


class BackendStateError(RuntimeError):
    """Calling a backend out of order (run before open, open twice): a bug in the caller, so a traceback."""


def check_feed(name: str, spec, feed: dict) -> None:
    """Inputs against the graph's spec: names, array type, dtype, rank, fixed dims, one batch size, finite.

    Args:
        name: the graph's name, for messages.
        spec: its GraphSpec (inputs: [{name, shape, dtype}]; named axes are free but must agree).
        feed: {input name: numpy array}.
    """
    expected = [i["name"] for i in spec.inputs]
    for key in feed:
        if key not in expected:
            raise EdgeError(f"input '{key}' | not an input of {name} (it takes: {', '.join(expected)})",
                            Exit.BAD_INPUT)
    axes = {}   # axis name -> (size, input that set it)
    for item in spec.inputs:
        key, want = item["name"], item["shape"]
        if key not in feed:
            raise EdgeError(f"input '{key}' | missing ({name} takes: {', '.join(expected)})", Exit.BAD_INPUT)
        x = feed[key]
        if not isinstance(x, np.ndarray):
            raise EdgeError(f"input '{key}' | a {type(x).__name__}, expected a numpy array", Exit.BAD_INPUT)
        if x.dtype.name != item["dtype"]:
            raise EdgeError(f"input '{key}' | dtype {x.dtype.name}, expected {item['dtype']}", Exit.BAD_INPUT)
        shown = "(" + ", ".join(str(d) for d in want) + ")"
        if x.ndim != len(want) or any(isinstance(d, int) and d != n for d, n in zip(want, x.shape)):
            raise EdgeError(f"input '{key}' | shape {tuple(x.shape)}, expected {shown}", Exit.BAD_INPUT)
        for d, n in zip(want, x.shape):
            if isinstance(d, int):
                continue
            if n < 1:
                raise EdgeError(f"input '{key}' | axis {d} is empty (shape {tuple(x.shape)})", Exit.BAD_INPUT)
            seen = axes.setdefault(d, (n, key))
            if seen[0] != n:
                raise EdgeError(f"input '{key}' | {d} {n}, but '{seen[1]}' has {d} {seen[0]}", Exit.BAD_INPUT)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise EdgeError(f"input '{key}' | holds NaN or infinite values", Exit.BAD_INPUT)


class Executor(ABC):
    """Base of every backend: construct closed, `open()`, run, `close()` (or use it as a context manager)."""

    name = "base"

    def __init__(self, graphs: list):
        """Args:
            graphs: [GraphSpec] in chain order (edge_runtime.core.engine_dir.Build.graphs).
        """
        self.graphs = list(graphs)
        self.is_open = False

    # --- what each backend writes
    @abstractmethod
    def load(self) -> None:
        """Build the engines from self.graphs (a loader function does the work)."""

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

    def open(self) -> "Executor":
        if self.is_open:
            raise BackendStateError(f"{self.name} backend | already open; close it first")
        self.load()
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
