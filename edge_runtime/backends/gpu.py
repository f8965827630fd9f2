"""What the GPU executors (TensorRT, torch-CUDA) share: the bucketed, graph-replaying schedule of
edge_runtime.core.gpu_plan over device buffers that only the backend knows how to make.

    start(feed)      the rows go into the smallest bucket's static input buffers (through pinned memory)
    segment(k, h)    replays segment k's graph for that bucket; copies back logits (and after segment 0 its
                     hidden output, the controller's features): nothing else leaves the device
    keep(h, mask)    copies the rows that go on into the buffers of the bucket their count needs, on the device
    chain(j, d, h)   replays one graph for segments j..d: the build's chain graph (j, d) when it has one, else
                     the segments' runs captured together

Every call runs on one stream, one after another, so one scratch block (TensorRT's device memory, the
torch graphs' shared pool) serves every graph, and the boundaries between them live in static buffers.
A subclass writes the device side: _load_graph, _alloc, _address, _upload, _fetch, _copy_rows, _runner,
_capture, and the stream.
"""
from abc import abstractmethod

import numpy as np

from edge_runtime.backends.base import Executor
from edge_runtime.core.chain import HIDDEN_OUT, host_outputs
from edge_runtime.core.gpu_plan import DEFAULT_BUCKETS, BufferPlan, GraphCache, Slot, bucket_for, runs


class GpuExecutor(Executor):
    name = "gpu"

    def __init__(self, graphs: list, chains: dict = None, buckets: tuple = DEFAULT_BUCKETS, use_graphs: bool = True,
                 dtype: str = "float32"):
        """Args:
            graphs: [GraphSpec] in chain order; chains: {(from, to): GraphSpec}.
            buckets: the batch buckets (a build's TensorRT profiles).
            use_graphs: False runs every graph plainly (the "graphs off" measurement).
            dtype: the activations' float dtype in device buffers.
        """
        super().__init__(graphs, chains)
        self.plan = BufferPlan(graphs, buckets, dtype)
        self.max_batch = self.plan.buckets[-1]
        self.use_graphs = use_graphs
        self.cache = GraphCache(self._capture, use_graphs)
        self.loaded, self.buffers, self._fns = {}, {}, {}
        self.host = [host_outputs(g.outputs, k) for k, g in enumerate(self.graphs)]

    # --- what a GPU backend writes (abstract: Executor is an ABC, so a backend missing one cannot be made)
    @abstractmethod
    def _load_graph(self, spec):
        """The engine of one graph (a TensorRT engine, a TorchGraph)."""

    @abstractmethod
    def _alloc(self, tensor, bucket: int):
        """A zeroed device buffer for `tensor` (gpu_plan.Tensor) at `bucket` rows."""

    @abstractmethod
    def _address(self, buf) -> int:
        """The buffer's device address (what a captured graph depends on)."""

    @abstractmethod
    def _upload(self, buf, array: np.ndarray, tensor) -> None:
        """Rows 0..len(array)-1 of `buf` from host `array`, on the stream (not waited for)."""

    @abstractmethod
    def _fetch(self, items: list) -> list:
        """[(buf, tensor, n)] -> float32 host arrays of each buffer's first n rows: every copy queued, one wait."""

    @abstractmethod
    def _copy_rows(self, src, dst, tensor, moves: list, same: bool) -> None:
        """Copy (source row, destination row, count) runs from `src` to `dst` on the device (same: one buffer)."""

    @abstractmethod
    def _runner(self, name: str, bucket: int, reads: dict, writes: dict):
        """A function that runs graph `name` once on the bucket's buffers (reads/writes: graph I/O name ->
        buffer), plainly; it is what gets captured."""

    @abstractmethod
    def _capture(self, fn):
        """A replay callable of `fn`'s work captured as one CUDA graph on the stream; raises on failure."""

    def _prepare(self) -> None:
        """What a backend sets up at open before any graph loads (TensorRT: stream, engines, memory)."""

    def _fingerprint_extra(self) -> tuple:
        """What else a captured graph depends on (TensorRT: the device-memory block)."""
        return ()

    # --- loading
    def load(self, names: list, later: list = ()) -> None:
        """The engines of `names` and `later`, and their graphs captured at the first bucket (batch 1, what
        a stream runs), before the first input: a GPU loads in milliseconds what ONNX Runtime builds in the
        background. Other buckets capture on first use."""
        self.unload()
        self._prepare()
        for name in list(names) + list(later):
            self.graph(name)
            self._run(name, self.plan.buckets[0])
        self._sync()

    def unload(self) -> None:
        self.cache.clear()
        self._fns = {}
        self.buffers, self.loaded = {}, {}

    def graph(self, name: str):
        g = self.loaded.get(name)
        if g is None:
            g = self.loaded[name] = self._load_graph(self.spec(name))
        return g

    def bucket_buffers(self, bucket: int) -> dict:
        bufs = self.buffers.get(bucket)
        if bufs is None:
            bufs = self.buffers[bucket] = {t.name: self._alloc(t, bucket) for t in self.plan.tensors}
        return bufs

    # --- the schedule
    def _io(self, name: str) -> tuple:
        """(reads, writes, segments) of a graph name: segment_K, chain_J_D, or segments_J_D (segments
        J..D run together, for a chain the build has no graph for)."""
        kind, *nums = name.rsplit("_", 2) if name.count("_") >= 2 else name.rsplit("_", 1)
        if kind == "segment":
            k = int(nums[0])
            return self.plan.reads(k), self.plan.writes(k), (k,)
        j, d = int(nums[0]), int(nums[1])
        return self.plan.reads(j), self.plan.writes(d, chain=kind == "chain"), tuple(range(j, d + 1))

    def _fn(self, name: str, bucket: int):
        key = (name, bucket)
        fn = self._fns.get(key)
        if fn is None:
            bufs = self.bucket_buffers(bucket)
            if name.startswith("segments_"):
                parts = [self._fn(self.graphs[k].name, bucket) for k in self._io(name)[2]]

                def fn():
                    for part in parts:
                        part()
            else:
                reads, writes, _ = self._io(name)
                self.graph(name)
                fn = self._runner(name, bucket, {i: bufs[t] for i, t in reads.items()},
                                  {o: bufs[t] for o, t in writes.items()})
            self._fns[key] = fn
        return fn

    def _run(self, name: str, bucket: int) -> None:
        fn = self._fn(name, bucket)
        bufs = self.buffers[bucket]
        fingerprint = tuple(self._address(bufs[t.name]) for t in self.plan.tensors) + self._fingerprint_extra()
        self.cache.run((name, bucket), fingerprint, fn)

    def place(self, feed: dict) -> Slot:
        n = len(next(iter(feed.values())))
        bucket = bucket_for(n, self.plan.buckets)
        bufs = self.bucket_buffers(bucket)
        for t in self.plan.inputs:
            self._upload(bufs[t.name], feed[t.name], t)
        return Slot(bucket, n, 0)

    def segment(self, k: int, slot: Slot) -> tuple:
        self._run(self.graphs[k].name, slot.bucket)
        bufs, plan = self.buffers[slot.bucket], self.plan
        items = [(bufs["logits"], plan.logits, slot.n)]
        if HIDDEN_OUT in self.host[k]:
            items.append((bufs["hidden_0"], plan.hidden[0], slot.n))
        got = self._fetch(items)
        host = {"logits": got[0]}
        if len(got) > 1:
            host[HIDDEN_OUT] = got[1]
        nxt = Slot(slot.bucket, slot.n, k + 1) if k + 1 < len(self.graphs) else None
        return nxt, host

    def keep(self, slot: Slot, mask) -> Slot:
        index = np.flatnonzero(mask)
        bucket = bucket_for(len(index), self.plan.buckets)
        src, dst = self.buffers[slot.bucket], self.bucket_buffers(bucket)
        moves = runs(index)
        same = bucket == slot.bucket
        for name in self.plan.live(slot.at):
            if same and moves == [(0, 0, len(index))]:
                continue                  # the kept rows already lead the buffer
            self._copy_rows(src[name], dst[name], self.plan.tensor(name), moves, same)
        return Slot(bucket, len(index), slot.at)

    def chain(self, j: int, d: int, slot: Slot) -> dict:
        spec = self.chains.get((j, d))
        name = spec.name if spec is not None else f"segments_{j}_{d}"
        self._run(name, slot.bucket)
        return {"logits": self._fetch([(self.buffers[slot.bucket]["logits"], self.plan.logits, slot.n)])[0]}

    def _sync(self) -> None:
        """Wait for the stream (subclasses with a stream override it)."""

    def graph_report(self) -> dict:
        """The captured graphs' counters, for describe(), bench and the GPU check."""
        return {"graphs": "on" if self.use_graphs else "off", "buckets": list(self.plan.buckets),
                **self.cache.counts.as_dict()}

    def describe(self) -> str:
        c = self.cache.counts
        graphs = (f"CUDA graphs on ({c.captured} captured, {c.capture_failures} failed)" if self.use_graphs
                  else "CUDA graphs off")
        return f"{self.name} ({graphs}, buckets {','.join(map(str, self.plan.buckets))})"
