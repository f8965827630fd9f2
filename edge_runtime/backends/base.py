"""One interface for every backend, in the shape of Polygraphy's BaseRunner.

The base class does what every backend needs once: state checks (no double open, no run before open or
after close), the feed checked against the manifest's I/O spec, and timing around the engine call only.
A backend writes three methods:

    load()                  build its engines from self.graphs (a loader function does the work)
    unload()                free them
    execute(name, feed)     run one graph: {input name: array} -> {output name: array}

and users call:

    with OrtBackend(graphs) as b:           # or b.open() ... b.close()
        out = b.run_segment("segment_0", {"pixels": x})   # outputs may reuse buffers: copy to keep
        b.last_latency                                    # seconds, engine call only
"""
import time
from abc import ABC, abstractmethod

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit


class BackendStateError(RuntimeError):
    """Calling a backend out of order (run before open, open twice): a bug in the caller, so a traceback."""


def check_feed(name: str, spec, feed: dict) -> None:
    """Inputs against the graph's spec: names, array type, dtype, rank, fixed dims, one batch size.

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


class Backend(ABC):
    """Base of every backend: construct closed, `open()`, run, `close()` (or use it as a context manager)."""

    name = "base"

    def __init__(self, graphs: dict):
        """Args:
            graphs: {graph name: GraphSpec} (edge_runtime.core.engine_dir), e.g. EngineDir.graphs().
        """
        self.graphs = dict(graphs)
        self.is_open = False
        self.last_latency = None    # seconds of the last engine call, None before the first

    # --- what each backend writes
    @abstractmethod
    def load(self) -> None:
        """Each backend writes this."""

    @abstractmethod
    def unload(self) -> None:
        """Each backend writes this."""

    @abstractmethod
    def execute(self, name: str, feed: dict) -> dict:
        """Each backend writes this."""

    # --- what callers use
    def open(self) -> "Backend":
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

    def __enter__(self) -> "Backend":
        return self.open()

    def __exit__(self, *exc) -> None:
        if self.is_open:
            self.close()

    def run_segment(self, name: str, feed: dict, check: bool = True) -> dict:
        """{output name: array} of graph `name` on `feed`; the latency of the engine call lands in last_latency.
        check=False skips the feed check, for feeds the runtime built from an earlier segment's outputs
        (it costs microseconds per call, a visible share of a small model's batch-1 latency)."""
        if not self.is_open:
            raise BackendStateError(f"{self.name} backend | run_segment before open()")
        spec = self.graphs.get(name)
        if spec is None:
            raise EdgeError(f"segment '{name}' | not in this engine directory (it has: {', '.join(self.graphs)})",
                            Exit.BAD_INPUT)
        if check:
            check_feed(name, spec, feed)
        start = time.perf_counter()
        out = self.execute(name, feed)
        self.last_latency = time.perf_counter() - start
        return out
