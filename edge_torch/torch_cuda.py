"""torch-CUDA executor: the reference GPU path, for GPUs without TensorRT and for this project's own checks.

It runs the engine directory's exported ONNX graphs (segments, chain graphs), interpreted in PyTorch by
edge_torch.onnx_torch, not a model rebuilt from the training code: the engine directory holds no
checkpoint, and interpreting the shipped files means this path computes exactly the graphs every other
backend runs (the same folding, the same exit heads), with nothing to keep in step with edge_model.

The schedule is the GPU executors' (backends/gpu.py): static buffers per batch bucket, one
torch.cuda.CUDAGraph per (graph, bucket) captured after a warm-up run on the executor's side stream, every
graph sharing one memory pool (safe: each graph's tensors are dead when its replay ends, the boundaries
between graphs live in the static buffers, and every replay runs on the one stream), compaction by
index_select on the device, and only logits (and segment 0's hidden output) copied back, through pinned
memory. precision fp16 runs the same graphs in half precision (onnx_torch's `half`).

torch is imported only when this backend is chosen. On a machine without CUDA it runs on the CPU with
device="cpu" (tests): there is no graph capture there, so every capture fails and is counted, which is
the fallback path a GPU takes when a capture fails.
"""
import contextlib

import numpy as np
import torch

from edge_runtime.backends.gpu import GpuExecutor
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.gpu_plan import DEFAULT_BUCKETS

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
                "bool": torch.bool}


class TorchCudaExecutor(GpuExecutor):
    name = "torch-cuda"

    def __init__(self, graphs: list, threads: int = 1, chains: dict = None, buckets: tuple = DEFAULT_BUCKETS,
                 use_graphs: bool = True, precision: str = "fp32", device: str = None):
        """Args:
            graphs, chains: the exported graphs (GraphSpecs).
            threads: torch's intra-op threads when the device is the CPU.
            buckets, use_graphs: as GpuExecutor.
            precision: fp32, or fp16 (the same graphs in half precision).
            device: a torch device; default "cuda" (an error without CUDA).
        """
        if precision not in ("fp32", "fp16"):
            raise EdgeError(f"precision {precision} | the torch-CUDA backend runs fp32 or fp16", Exit.BAD_INPUT)
        if device is None:
            if not torch.cuda.is_available():
                raise EdgeError("torch-cuda | torch sees no CUDA device here (torch "
                                f"{torch.__version__}); use --backend onnxruntime", Exit.NOT_FOUND)
            device = "cuda"
        self.device = torch.device(device)
        self.half = precision == "fp16"
        super().__init__(graphs, chains, buckets, use_graphs, "float16" if self.half else "float32")
        self.cuda = self.device.type == "cuda"
        if not self.cuda and threads:
            torch.set_num_threads(threads)
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.pool = None
        self._staging, self._out = {}, {}

    def _on_stream(self):
        return torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()

    # --- the device side of backends/gpu.py
    def _load_graph(self, spec):
        from edge_torch.onnx_torch import TorchGraph
        return TorchGraph(spec.path, device=str(self.device), half=self.half)

    def _alloc(self, tensor, bucket: int):
        with self._on_stream():
            return torch.zeros(tensor.shape(bucket), dtype=TORCH_DTYPES[tensor.dtype], device=self.device)

    def _address(self, buf) -> int:
        return buf.data_ptr()

    def _host(self, store: dict, tensor, dtype):
        """A pinned host buffer of the largest bucket for `tensor` (pinned: the copies run asynchronously)."""
        buf = store.get(tensor.name)
        if buf is None:
            buf = store[tensor.name] = torch.empty(tensor.shape(self.max_batch), dtype=dtype, pin_memory=self.cuda)
        return buf

    def _upload(self, buf, array: np.ndarray, tensor) -> None:
        n = len(array)
        if not self.cuda:
            buf[:n].copy_(torch.from_numpy(array))
            return
        staging = self._host(self._staging, tensor, torch.from_numpy(array[:0]).dtype)
        staging[:n].copy_(torch.from_numpy(array))
        with self._on_stream():
            buf[:n].copy_(staging[:n], non_blocking=True)

    def _fetch(self, items: list) -> list:
        if not self.cuda:
            return [buf[:n].float().numpy().copy() for buf, _, n in items]
        outs = []
        with self._on_stream():
            for buf, tensor, n in items:
                out = self._host(self._out, tensor, torch.float32)
                out[:n].copy_(buf[:n], non_blocking=True)
                outs.append(out[:n])
        self.stream.synchronize()
        return [o.numpy().copy() for o in outs]     # results outlive the next call's copies

    def _copy_rows(self, src, dst, tensor, moves: list, same: bool) -> None:
        index = np.concatenate([np.arange(s, s + c) for s, _, c in moves])
        with self._on_stream():
            rows = src.index_select(0, torch.from_numpy(index).to(self.device, non_blocking=True))
            dst[:len(index)].copy_(rows)      # index_select made a new tensor: one buffer may be both sides

    def _runner(self, name: str, bucket: int, reads: dict, writes: dict):
        graph = self.graph(name)

        def run():
            with self._on_stream(), torch.no_grad():
                graph.run_into(reads, writes)
        return run

    def _capture(self, fn):
        if not self.cuda:
            raise RuntimeError("CUDA graphs need a CUDA device (this executor runs on the CPU)")
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool, stream=self.stream):
            fn()

        def replay():
            with self._on_stream():
                g.replay()
        replay.graph = g
        return replay

    def _sync(self) -> None:
        if self.cuda:
            self.stream.synchronize()

    def unload(self) -> None:
        super().unload()
        self._staging, self._out, self.pool = {}, {}, None

    def describe(self) -> str:
        where = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        return super().describe().replace(f"{self.name} (", f"{self.name} ({where}, {'fp16' if self.half else 'fp32'}, ", 1)
