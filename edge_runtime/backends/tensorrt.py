"""TensorRT executor: serialized engines per segment and per chain graph (edge-infer build --backend
tensorrt), CUDA through cuda-python (edge_runtime.core.cuda_rt), TensorRT's version differences in
edge_runtime.core.trt_api (8.5 on JetPack 5.1, 10.x elsewhere).

The schedule is the GPU executors' (backends/gpu.py). What is TensorRT's here:
  - every engine holds one optimisation profile per batch bucket (min = opt = max); one execution context
    per (engine, bucket), its profile, input shapes and tensor addresses set once, so the CUDA graph captured
    from its enqueue stays valid (TensorRT contexts of one engine may not share a profile, and a graph must
    be recaptured after any change of shape, profile, address or device memory);
  - contexts are made without device memory and all given one block, the size of the largest engine's
    need: the graphs run one after another on one stream, so their scratch never overlaps in time;
  - the capture follows trtexec's --useCudaGraph: one plain enqueue outside capture first (8.5.2 fails
    inside capture without it), capture on a non-blocking stream in thread-local mode, the enqueue's bool
    checked (a failed enqueue inside capture would leave a graph that replays stale buffers);
  - a chain the build has no engine for runs its segments' contexts in one capture;
  - compaction is device-to-device copies of runs of rows (cudaMemcpyAsync), through a scratch buffer
    when the bucket stays the same; only logits (and segment 0's hidden output) come back, through pinned
    memory.
This module has never run against a real TensorRT on this project's machines (none has one): its logic is
what backends/gpu.py and core/gpu_plan.py test on the CPU.
"""
import numpy as np

from edge_runtime.backends.gpu import GpuExecutor
from edge_runtime.core import cuda_rt, trt_api
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.gpu_plan import DEFAULT_BUCKETS, DTYPES, Tensor


class Engine:
    """A deserialized engine and its contexts, one per bucket (profile)."""

    def __init__(self, spec, engine, buckets: tuple):
        self.spec, self.engine, self.contexts = spec, engine, {}
        self.io = trt_api.io_tensors(engine)
        profiles = trt_api.profile_count(engine)
        if profiles != len(buckets):
            raise EdgeError(f"{spec.path.name} | {profiles} optimisation profiles, the build lists {len(buckets)} "
                            f"buckets ({','.join(map(str, buckets))}); build it again", Exit.CORRUPT)
        self.memory = trt_api.device_memory_size(engine)


class TensorrtExecutor(GpuExecutor):
    name = "tensorrt"

    def __init__(self, graphs: list, threads: int = 1, chains: dict = None, buckets: tuple = DEFAULT_BUCKETS,
                 use_graphs: bool = True, precision: str = "fp32", device: int = 0):
        """Args:
            graphs, chains: the build's engines as GraphSpecs (path: a .plan file).
            threads: unused (the host side is one thread).
            buckets: the build's batch buckets, in its profiles' order.
            use_graphs: False enqueues every engine plainly.
            precision: what the engines were built in (their I/O stays float32).
            device: the CUDA device index.
        """
        super().__init__(graphs, chains, buckets, use_graphs, "float32")
        self.device, self.precision = device, precision
        self.stream = None
        self.memory = None            # the one device-memory block every context uses
        self.scratch = None
        self._pinned = {}

    # --- engines and contexts
    def _prepare(self) -> None:
        cuda_rt.set_device(self.device)
        if self.stream is None:
            self.stream = cuda_rt.Stream()
        # deserialize every engine now: the shared block must fit the largest need before any context runs
        for g in self.graphs + list(self.chains.values()):
            self.graph(g.name)
        need = max(e.memory for e in self.loaded.values())
        self.memory = cuda_rt.DeviceBuffer(max(need, 256))
        # the input buffers take the engine's dtypes: TensorRT 8.5's parser turns int64 inputs (the text
        # models' ids and mask) into int32, and the upload casts the feed
        first = {name: np.dtype(dtype).name for name, is_input, dtype, _ in self.loaded[self.graphs[0].name].io
                 if is_input}
        self.plan.inputs = [Tensor(t.name, t.row, first.get(t.name, t.dtype)) for t in self.plan.inputs]

    def graph(self, name: str):
        g = self.loaded.get(name)
        if g is None:
            if self.memory is not None:
                raise EdgeError(f"{name} | engine not loaded at open", Exit.ERROR)
            g = self.loaded[name] = self._load_graph(self.spec(name))
        return g

    def _load_graph(self, spec):
        try:
            plan = spec.path.read_bytes()
        except OSError as err:
            raise EdgeError(f"{spec.path.name} | cannot read it ({err.strerror})", Exit.NOT_FOUND) from None
        return Engine(spec, trt_api.deserialize(plan, spec.path.name), self.plan.buckets)

    def unload(self) -> None:
        self.cache.clear()
        self._fns = {}
        for e in getattr(self, "loaded", {}).values():
            e.contexts.clear()
        for store in (self.buffers, self._pinned):
            for bufs in store.values():
                for b in (bufs.values() if isinstance(bufs, dict) else (bufs,)):
                    b.close()
        self.buffers, self._pinned, self.loaded = {}, {}, {}
        for attr in ("memory", "scratch"):
            if getattr(self, attr) is not None:
                getattr(self, attr).close()
                setattr(self, attr, None)

    def close(self) -> None:
        super().close()
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def _context(self, engine: Engine, bucket: int, reads: dict, writes: dict):
        ctx = engine.contexts.get(bucket)
        if ctx is not None:
            return ctx
        ctx = trt_api.context_without_memory(engine.engine)
        trt_api.give_device_memory(ctx, self.memory.ptr, self.memory.nbytes)
        trt_api.set_profile(ctx, self.plan.buckets.index(bucket), self.stream.handle)
        buffers = dict(reads, **writes)
        for name, is_input, _, shape in engine.io:
            if name not in buffers:
                raise EdgeError(f"{engine.spec.path.name} | tensor '{name}' is not one the chain wiring knows "
                                f"({', '.join(buffers)})", Exit.CORRUPT)
            if is_input and not trt_api.set_input_shape(ctx, name, (bucket,) + tuple(shape[1:])):
                raise EdgeError(f"{engine.spec.path.name} | input '{name}' at batch {bucket} is outside its "
                                f"profile", Exit.CORRUPT)
            if not trt_api.set_address(ctx, name, buffers[name].ptr):
                raise EdgeError(f"{engine.spec.path.name} | TensorRT refused the address of '{name}'", Exit.ERROR)
        engine.contexts[bucket] = ctx
        return ctx

    # --- the device side of backends/gpu.py
    def _alloc(self, tensor, bucket: int):
        buf = cuda_rt.DeviceBuffer(tensor.row_bytes * bucket)
        cuda_rt.memset_async(buf.ptr, 0, buf.nbytes, self.stream)
        return buf

    def _address(self, buf) -> int:
        return buf.ptr

    def _fingerprint_extra(self) -> tuple:
        return (self.memory.ptr,)

    def _pinned_for(self, tensor):
        p = self._pinned.get(tensor.name)
        if p is None:
            p = self._pinned[tensor.name] = cuda_rt.PinnedArray(tensor.shape(self.max_batch), DTYPES[tensor.dtype])
        return p

    def _upload(self, buf, array, tensor) -> None:
        # the pinned buffer is free: the previous call waited for its copies (_fetch)
        staging = self._pinned_for(tensor)
        n = len(array)
        staging.array[:n] = array
        cuda_rt.copy_async(buf.ptr, staging.ptr, n * tensor.row_bytes, "htod", self.stream)

    def _fetch(self, items: list) -> list:
        outs = []
        for buf, tensor, n in items:
            pinned = self._pinned_for(Tensor("out_" + tensor.name, tensor.row, tensor.dtype))
            cuda_rt.copy_async(pinned.ptr, buf.ptr, n * tensor.row_bytes, "dtoh", self.stream)
            outs.append(pinned.array[:n])
        self.stream.synchronize()
        return [o.copy() for o in outs]

    def _copy_rows(self, src, dst, tensor, moves: list, same: bool) -> None:
        row = tensor.row_bytes
        target = dst
        if same:                       # overlapping device copies are undefined: gather into scratch first
            need = row * self.max_batch
            if self.scratch is None or self.scratch.nbytes < need:
                if self.scratch is not None:
                    self.scratch.close()
                self.scratch = cuda_rt.DeviceBuffer(need)
            target = self.scratch
        for s, d, c in moves:
            cuda_rt.copy_async(target.ptr + d * row, src.ptr + s * row, c * row, "dtod", self.stream)
        if same:
            kept = sum(c for _, _, c in moves)
            cuda_rt.copy_async(dst.ptr, target.ptr, kept * row, "dtod", self.stream)

    def _runner(self, name: str, bucket: int, reads: dict, writes: dict):
        engine = self.graph(name)
        ctx = self._context(engine, bucket, reads, writes)
        stream = self.stream.handle

        def run():
            if not trt_api.enqueue(ctx, stream):
                raise EdgeError(f"{engine.spec.path.name} | TensorRT enqueue failed at batch {bucket}", Exit.ERROR)
            return True
        return run

    def _capture(self, fn):
        self.stream.synchronize()     # the warm-up enqueue has finished before capture begins
        graph = cuda_rt.CapturedGraph.capture(self.stream, fn)

        def replay():
            graph.launch(self.stream)
        replay.close = graph.close
        return replay

    def _sync(self) -> None:
        self.stream.synchronize()

    def device_memory(self) -> dict:
        """Device bytes: the shared block, the static buffers, and each engine's own need."""
        return {"shared_block": self.memory.nbytes if self.memory else 0,
                "buffers": sum(self.plan.bytes(b) for b in self.buffers),
                "engines": {name: e.memory for name, e in self.loaded.items()}}

    def describe(self) -> str:
        return super().describe().replace(f"{self.name} (", f"{self.name} ({self.precision}, ", 1)
