"""What a GPU executor plans before it runs anything: batch buckets, static buffers, compaction copies, and
the cache of captured graphs. Pure Python and numpy, shared by the TensorRT and torch-CUDA backends, so
all of it is tested on the CPU.

Buckets. A CUDA graph replays fixed shapes at fixed addresses, so a GPU executor keeps one set of static
device buffers per batch bucket (default 1, 2, 4, 8, 16, 32; TensorRT builds one optimisation profile per
bucket) and runs a batch of n rows in the smallest bucket that holds it: rows n..bucket-1 are padding. The
models' rows are independent (no batch statistics), so padding never changes a real row's output.

Buffers per bucket (BufferPlan): segment 0's inputs, two hidden buffers used in turn (segment k reads
hidden[(k - 1) % 2] and writes hidden[k % 2]: segment boundaries stay in static buffers allocated before
any capture, and a chain needs no more than two), and one logits buffer. Only logits (a few floats per
row), and after segment 0 its hidden output (the controller's features), are copied to the host.

Compaction (keep): the rows that go on are copied, on the device, into the buffers of the bucket their
count needs, as runs of consecutive rows (one device-to-device copy per run, no kernel needed). When the
bucket stays the same, source and destination are one buffer, and the copy goes through a scratch buffer.

Graph cache (GraphCache): one captured graph per (graph, bucket), made on first use after one plain run
(TensorRT 8.5.2 fails inside capture without that warm-up), replayed after. A capture that fails falls back
to the plain run for that key, counted and said once on stderr, never silent. Its key carries the buffers'
addresses: a change of address (buffers reallocated, another device-memory block) invalidates the graph,
which is captured again.
"""
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.core.chain import HIDDEN_IN, HIDDEN_OUT, carried_names
from edge_runtime.core.errors import EdgeError, Exit

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32)
DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


def parse_buckets(text) -> tuple:
    """Batch buckets from "1,2,4,8" (or a sequence): positive, strictly increasing."""
    try:
        items = [int(x) for x in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        raise EdgeError(f"buckets '{text}' | not a comma-separated list of batch sizes", Exit.BAD_INPUT) from None
    if not items or items[0] < 1 or any(b <= a for a, b in zip(items, items[1:])):
        raise EdgeError(f"buckets '{text}' | batch sizes must be positive and increasing", Exit.BAD_INPUT)
    return tuple(items)


def bucket_for(n: int, buckets: tuple) -> int:
    """The smallest bucket that holds n rows (the scheduler splits larger batches: Executor.max_batch)."""
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"{n} rows exceed the largest bucket, {buckets[-1]}")


def pieces(n: int, most: int) -> list:
    """(start, stop) of consecutive pieces of at most `most` rows covering n rows."""
    return [(s, min(s + most, n)) for s in range(0, n, most)]


def runs(index: np.ndarray) -> list:
    """(source row, destination row, count) of each run of consecutive kept rows: `index` (increasing row
    numbers) is gathered into rows 0..len(index)-1."""
    index = np.asarray(index, np.int64)
    if len(index) == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(index)]])
    return [(int(index[a]), int(a), int(b - a)) for a, b in zip(starts, stops)]


@dataclass(frozen=True)
class Tensor:
    """One static buffer's layout: its name in the plan, one row's shape and dtype."""
    name: str
    row: tuple
    dtype: str

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row, dtype=np.int64)) * np.dtype(DTYPES[self.dtype]).itemsize

    def shape(self, bucket: int) -> tuple:
        return (bucket,) + self.row


def _row(spec: dict) -> tuple:
    """A manifest I/O entry's shape without its batch axis (every other axis is fixed in our exports)."""
    rest = spec["shape"][1:]
    if not all(isinstance(d, int) for d in rest):
        raise EdgeError(f"{spec['name']} | shape {spec['shape']}: a GPU executor needs every axis but the batch "
                        f"fixed", Exit.BAD_INPUT)
    return tuple(rest)


class BufferPlan:
    """The static buffers of one build (module docstring), and what each graph reads and writes.

    Args:
        graphs: the build's segments, [GraphSpec] in chain order.
        buckets: the batch buckets.
        dtype: the float dtype of activations ("float32"; "float16" for a half-precision torch build).
    """

    def __init__(self, graphs: list, buckets: tuple = DEFAULT_BUCKETS, dtype: str = "float32"):
        self.buckets, self.segments = tuple(buckets), len(graphs)
        first = graphs[0]
        floats = lambda d: dtype if d.startswith("float") else d   # noqa: E731 (integer inputs keep theirs)
        self.inputs = [Tensor(i["name"], _row(i), floats(i["dtype"])) for i in first.inputs]
        out = {o["name"]: o for o in first.outputs}
        hidden = Tensor("hidden", _row(out[HIDDEN_OUT]), dtype) if HIDDEN_OUT in out else None
        self.hidden = [] if hidden is None else [Tensor("hidden_0", hidden.row, dtype),
                                                 Tensor("hidden_1", hidden.row, dtype)]
        self.logits = Tensor("logits", _row(out["logits"]), dtype)
        self.carried = carried_names([g.inputs for g in graphs])

    @property
    def tensors(self) -> list:
        return self.inputs + self.hidden + [self.logits]

    def bytes(self, bucket: int) -> int:
        """Device bytes of one bucket's buffers."""
        return sum(t.row_bytes for t in self.tensors) * bucket

    def total_bytes(self) -> int:
        return sum(self.bytes(b) for b in self.buckets)

    def reads(self, j: int) -> dict:
        """{graph input name: plan tensor name} of a graph that starts at segment j."""
        if j == 0:
            return {t.name: t.name for t in self.inputs}
        return {HIDDEN_IN: self.hidden[(j - 1) % 2].name, **{n: n for n in self.carried}}

    def writes(self, k: int, chain: bool = False) -> dict:
        """{graph output name: plan tensor name} of segment k (chain=True: a chain graph ending at exit k,
        which has no hidden output)."""
        out = {"logits": self.logits.name}
        if not chain and self.hidden:
            out[HIDDEN_OUT] = self.hidden[k % 2].name
        return out

    def live(self, at: int) -> list:
        """The tensors that hold a batch's state before segment `at` runs: what keep() copies."""
        if at == 0:
            return [t.name for t in self.inputs]
        return [self.hidden[(at - 1) % 2].name] + list(self.carried)

    def tensor(self, name: str) -> Tensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


class Slot:
    """A GPU executor's handle: a batch of n rows in bucket `bucket`'s buffers, before segment `at`."""
    __slots__ = ("bucket", "n", "at")

    def __init__(self, bucket: int, n: int, at: int = 0):
        self.bucket, self.n, self.at = bucket, n, at


@dataclass
class GraphCounts:
    captured: int = 0
    replays: int = 0
    plain_runs: int = 0          # runs without a graph: graphs off, or a capture that failed
    capture_failures: int = 0
    invalidated: int = 0
    failures: list = field(default_factory=list)   # (key, reason), the first few

    def as_dict(self) -> dict:
        return {"captured": self.captured, "replays": self.replays, "plain_runs": self.plain_runs,
                "capture_failures": self.capture_failures, "invalidated": self.invalidated,
                "failures": [f"{k}: {r}" for k, r in self.failures]}


class GraphCache:
    """Captured graphs by key, each with the fingerprint (buffer addresses) it was captured under.

    Args:
        capture: capture(fn) -> a replay callable (the backend's CUDA-graph capture); raises on failure.
        enabled: False runs every call plainly (the "graphs off" measurement).
        warn: where the first capture failure is said: True for stderr (looked up then), a stream, or None.
    """

    def __init__(self, capture, enabled: bool = True, warn=True):
        self.capture, self.enabled, self.warn = capture, enabled, warn
        self.graphs = {}            # key -> (fingerprint, replay callable or None for "capture failed")
        self.counts = GraphCounts()
        self.launched_at = 0.0      # perf_counter() just before the last launch (the GPU check's switch cost)

    def run(self, key, fingerprint, fn) -> None:
        """Run `fn` (the plain enqueue of graph `key`) as a replay of its captured graph when possible."""
        if not self.enabled:
            self.counts.plain_runs += 1
            self.launched_at = time.perf_counter()
            fn()
            return
        entry = self.graphs.get(key)
        if entry is not None and entry[0] != fingerprint:
            self.drop(key)
            self.counts.invalidated += 1
            entry = None
        if entry is None:
            self.launched_at = time.perf_counter()
            fn()                    # the warm-up run outside capture; its output is this call's output
            self.counts.plain_runs += 1
            try:
                replay = self.capture(fn)
            except Exception as err:       # any backend's capture error: counted, reported, run plainly
                replay = None
                self.counts.capture_failures += 1
                if len(self.counts.failures) < 8:
                    self.counts.failures.append((key, str(err).splitlines()[0] if str(err) else type(err).__name__))
                if self.warn is not None and self.counts.capture_failures == 1:
                    print(f"edge-runtime: CUDA graph capture failed for {key} ({err}); running it without a graph "
                          f"(counted in the graph report)", file=sys.stderr if self.warn is True else self.warn)
            else:
                self.counts.captured += 1
            self.graphs[key] = (fingerprint, replay)
            return
        replay = entry[1]
        self.launched_at = time.perf_counter()
        if replay is None:
            self.counts.plain_runs += 1
            fn()
        else:
            self.counts.replays += 1
            replay()

    def drop(self, key) -> None:
        entry = self.graphs.pop(key, None)
        close = getattr(entry[1], "close", None) if entry else None
        if close is not None:
            close()

    def clear(self) -> None:
        for key in list(self.graphs):
            self.drop(key)
