"""The CUDA runtime through cuda-python for the TensorRT backend: streams, device and pinned memory, async
copies, events, CUDA graphs (pycuda has no graph API). What differs between releases, as read in the wheels'
cudart.pyx (11.8.2, 12.0.0), in cuda-bindings 13.5 and in the release notes:
- Module: `cuda.cudart` up to 11.8.3 and 12.6.0; 11.8.4 and 12.6.1 (Oct 2024) moved it to
  `cuda.bindings.runtime`, leaving `cuda.cudart` as a shim that warns; 13.x has only the new one. JetPack 5.1
  (cp38, aarch64) gets 11.8.2 at newest, old layout only: 11.8.6/11.8.7 are meta-packages over
  cuda-bindings, which has no cp38 wheel. We try the new name first.
- `cudaGraphInstantiate`: 11.x takes (graph, pLogBuffer, bufferSize) -> (err, exec, errorNode); 12.0 on
  (graph, flags) -> (err, exec). `cudaGraphInstantiateWithFlags(graph, flags) -> (err, exec)` is in both
  (CUDA >= 11.4), so we call it when the module has it.
- No libcuda.so.1: `cuda.cudart` 11.8.2 and 12.0.0 raise RuntimeError ("Failed to dlopen libcuda.so.1", then
  'Function "cuInit" not found') from every call, cudaGetErrorString included; cuda-bindings 13.5 returns
  cudaErrorInsufficientDriver. Both become a CudaError (Exit.NOT_FOUND).
- Every call returns a tuple, the cudaError_t first (an IntEnum in 11.8.2 on, a plain Enum in early 11.x
  sources: hence `.value`), then the outputs. Handles (cudaStream_t, ...) take `int()` in 11.8, 12 and 13
  (12.9.1's notes deprecate that for cuda.bindings.utils.get_cuda_native_handle; 13.5 still allows it).
"""
from __future__ import annotations

import ctypes

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.lazy import lazy_import

_RUNTIME = None   # (import name, module) once found
_WHY = "the TensorRT backend"
# The machine has no usable GPU or driver: a missing thing (NOT_FOUND), not a failed operation.
_ABSENT = ("cudaErrorNoDevice", "cudaErrorInsufficientDriver", "cudaErrorStubLibrary", "cudaErrorInvalidDevice",
           "cudaErrorCallRequiresNewerDriver", "cudaErrorSystemDriverMismatch", "cudaErrorCompatNotSupportedOnDevice")
_KINDS = {"htod": "cudaMemcpyHostToDevice", "dtoh": "cudaMemcpyDeviceToHost", "dtod": "cudaMemcpyDeviceToDevice"}


class CudaError(EdgeError):
    """A CUDA call that failed, as one line: `cudaMalloc | cudaErrorMemoryAllocation (out of memory)`.
    `.function` is the call's name, `.error` the error's name ("" when it is not a CUDA error code)."""

    def __init__(self, message: str, exit: Exit = Exit.ERROR, function: str = "", error: str = ""):
        super().__init__(message, exit)
        self.function, self.error = function, error


def runtime():
    """The cuda-python runtime module, imported on first use: `cuda.bindings.runtime`, else `cuda.cudart`."""
    global _RUNTIME
    if _RUNTIME is None:
        reasons = []
        for name in ("cuda.bindings.runtime", "cuda.cudart"):
            try:
                _RUNTIME = (name, lazy_import(name, extra="jetson", why=_WHY))
                break
            except EdgeError as err:
                reasons.append(str(err).split(": ", 1)[-1])
        else:
            raise EdgeError(f"cuda-python | not installed here (cuda.bindings.runtime: {reasons[0]}; cuda.cudart: "
                            f"{reasons[1]}); {_WHY} needs it (pip install 'edge-adaptive[jetson]')", Exit.NOT_FOUND)
    return _RUNTIME[1]


def flavour() -> str:
    """Which spelling `runtime()` found: "cuda.bindings.runtime" (11.8.4+, 12.6.1+) or "cuda.cudart" (older)."""
    runtime()
    return _RUNTIME[0]


def _code(err) -> int:
    return int(getattr(err, "value", err))


def _fail(name: str, err, detail: str = "") -> CudaError:
    """The CudaError for `name` having returned `err`."""
    label = getattr(err, "name", f"cudaError {_code(err)}")
    try:   # 11.8 without a driver raises here too: then the name alone
        text = runtime().cudaGetErrorString(err)[1]
        text = text.decode() if isinstance(text, bytes) else str(text)
    except Exception:
        text = ""
    why = "; ".join(t for t in (text, detail) if t)
    exit = Exit.NOT_FOUND if label in _ABSENT else Exit.ERROR
    return CudaError(f"{name} | {label}" + (f" ({why})" if why else ""), exit, name, label)


def _raw(name: str, *args) -> tuple:
    """`runtime().name(*args)` as cuda-python returns it: (err, values...)."""
    try:
        return getattr(runtime(), name)(*args)
    except RuntimeError as err:   # cuda-python 11.x on a machine without libcuda.so.1
        raise CudaError(f"{name} | {err} (is the NVIDIA driver installed?)", Exit.NOT_FOUND, name) from None


def call(name: str, *args):
    """Call the runtime function `name`, checking its error code.

    Args:
        name: a cuda-python runtime function, e.g. "cudaMalloc".
        args: its arguments, as cuda-python takes them.
    Returns:
        None, the one value it returns, or a tuple of its values.
    """
    out = _raw(name, *args)
    if _code(out[0]) != 0:
        raise _fail(name, out[0])
    values = tuple(out[1:])
    return None if not values else values[0] if len(values) == 1 else values


def _quiet(name: str, *args) -> None:
    """A release during clean-up: its own failure must not hide the error being raised."""
    try:
        _raw(name, *args)
    except CudaError:   # only a missing driver raises here
        pass


def set_device(index: int = 0) -> None:
    """Make GPU `index` current for this thread."""
    call("cudaSetDevice", index)


def device_info(index: int = 0) -> dict:
    """Name, compute capability ("7.2" on Xavier), memory in bytes and driver/runtime versions (11040 = 11.4)."""
    prop = call("cudaGetDeviceProperties", index)
    name = prop.name.split(b"\0")[0].decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name, "compute_capability": f"{prop.major}.{prop.minor}",
            "total_memory": int(prop.totalGlobalMem), "driver": int(call("cudaDriverGetVersion")),
            "runtime": int(call("cudaRuntimeGetVersion"))}


class _Resource:
    """One CUDA object, released once by close() (also on leaving a `with`); use after close is a bug."""
    _obj = None
    _release = ""   # the runtime function that frees _obj

    def _live(self):
        if self._obj is None:
            raise ValueError(f"{type(self).__name__} used after close()")
        return self._obj

    def close(self) -> None:
        """Free the object; closing again does nothing."""
        obj, self._obj = self._obj, None
        if obj is not None and self._release:
            call(self._release, obj)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Stream(_Resource):
    """A non-blocking stream (cudaStreamNonBlocking): the legacy default stream cannot be captured and syncs
    with every blocking stream. `.handle` is the int TensorRT's execute_async_v3 and torch.cuda.ExternalStream take."""
    _release = "cudaStreamDestroy"

    def __init__(self):
        self._obj = call("cudaStreamCreateWithFlags", runtime().cudaStreamNonBlocking)
        self.handle = int(self._obj)

    def synchronize(self) -> None:
        """Wait for everything queued on the stream."""
        call("cudaStreamSynchronize", self._live())


def _stream(stream):
    return stream._live() if isinstance(stream, Stream) else stream


class DeviceBuffer(_Resource):
    """`nbytes` of device memory (cudaMalloc: at least 256-byte aligned, as TensorRT's device memory needs)."""
    _release = "cudaFree"

    def __init__(self, nbytes: int):
        if nbytes <= 0:
            raise ValueError(f"DeviceBuffer of {nbytes} bytes")
        self._obj = self.ptr = int(call("cudaMalloc", nbytes))
        self.nbytes = nbytes
        if self.ptr % 256:
            self.close()
            raise CudaError(f"cudaMalloc | pointer {self.ptr:#x} is not 256-byte aligned", Exit.ERROR, "cudaMalloc")


class PinnedArray(_Resource):
    """A page-locked host array (cudaMallocHost), so async copies really are async. `.array` is a numpy view
    of it: a view must not outlive close()."""
    _release = "cudaFreeHost"

    def __init__(self, shape, dtype):
        dtype = np.dtype(dtype)
        shape = tuple(int(n) for n in np.atleast_1d(shape))
        count = int(np.prod(shape, dtype=np.int64))
        if count <= 0:
            raise ValueError(f"PinnedArray of shape {shape}")
        nbytes = count * dtype.itemsize
        self._obj = self.ptr = int(call("cudaMallocHost", nbytes))
        self.nbytes = nbytes
        raw = (ctypes.c_byte * nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def close(self) -> None:
        self.array = None   # the memory behind it is going
        super().close()


def _kind(kind: str):
    if kind not in _KINDS:
        raise ValueError(f"copy kind {kind!r}, expected one of {sorted(_KINDS)}")
    return getattr(runtime().cudaMemcpyKind, _KINDS[kind])


def copy_async(dst: int, src: int, nbytes: int, kind: str, stream) -> None:
    """Queue a copy of `nbytes` from `src` to `dst` on `stream`; `kind` is "htod", "dtoh" or "dtod"."""
    call("cudaMemcpyAsync", dst, src, nbytes, _kind(kind), _stream(stream))


def copy_2d_async(dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: str,
                  stream) -> None:
    """Queue a copy of `height` rows of `width` bytes, rows `spitch` apart at `src`, `dpitch` apart at `dst`."""
    call("cudaMemcpy2DAsync", dst, dpitch, src, spitch, width, height, _kind(kind), _stream(stream))


def memset_async(ptr: int, value: int, nbytes: int, stream) -> None:
    """Queue setting `nbytes` of device memory at `ptr` to the byte `value`."""
    call("cudaMemsetAsync", ptr, value, nbytes, _stream(stream))


class Event(_Resource):
    """A CUDA event; `timing=False` makes it cheaper when it only orders work."""
    _release = "cudaEventDestroy"

    def __init__(self, timing: bool = True):
        rt = runtime()
        self._obj = call("cudaEventCreateWithFlags", rt.cudaEventDefault if timing else rt.cudaEventDisableTiming)

    def record(self, stream) -> None:
        """Mark this point of `stream`'s queue."""
        call("cudaEventRecord", self._live(), _stream(stream))

    def synchronize(self) -> None:
        """Wait until the work before the recorded point is done."""
        call("cudaEventSynchronize", self._live())

    def elapsed_ms(self, start: "Event") -> float:
        """Milliseconds from `start` to this event, both recorded and reached (cudaEventElapsedTime(start, self))."""
        return float(call("cudaEventElapsedTime", start._live(), self._live()))


def _instantiate(graph):
    rt = runtime()
    if hasattr(rt, "cudaGraphInstantiateWithFlags"):
        return call("cudaGraphInstantiateWithFlags", graph, 0)
    if getattr(rt, "CUDART_VERSION", 12000) >= 12000:
        return call("cudaGraphInstantiate", graph, 0)
    log = bytearray(512)   # 11.x: (graph, pLogBuffer, bufferSize) -> (exec, errorNode); the log says why
    out = _raw("cudaGraphInstantiate", graph, log, len(log))
    if _code(out[0]) != 0:
        raise _fail("cudaGraphInstantiate", out[0], log.split(b"\0")[0].decode(errors="replace").strip())
    return out[1]


class CapturedGraph(_Resource):
    """An instantiated CUDA graph, made by capturing what a function queues on a stream, replayed by launch()."""
    _release = "cudaGraphExecDestroy"

    def __init__(self, graph_exec):
        self._obj = graph_exec

    @classmethod
    def capture(cls, stream: Stream, fn) -> "CapturedGraph":
        """Capture the work `fn()` queues on `stream` and instantiate it.

        The capture always ends, and a failed one leaves no graph: a stale one would replay old buffers.

        Args:
            stream: the Stream `fn` queues its work on.
            fn: queues the work; returning False (TensorRT's enqueue on failure) fails the capture.
        Returns:
            The CapturedGraph.
        """
        rt, s = runtime(), stream._live()
        # Thread-local: an unsafe call from another thread (a background loader's cudaMalloc) neither joins
        # this capture nor breaks it.
        call("cudaStreamBeginCapture", s, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        label, failure, cause = getattr(fn, "__name__", "fn"), None, None
        returned = False   # fn came back, normally or with an Exception (not so on Ctrl-C)
        try:
            if fn() is False:
                failure = f"{label} returned False during capture"
            returned = True
        except Exception as err:
            first = (str(err).strip().splitlines() or [""])[0]
            failure, cause, returned = f"{label} raised {type(err).__name__}: {first}".rstrip(": "), err, True
        finally:   # always end the capture, and keep its graph only when everything worked
            out = _raw("cudaStreamEndCapture", s)
            ended = _code(out[0]) == 0
            graph = out[1] if len(out) > 1 and out[1] is not None and int(out[1]) else None
            if graph is not None and not (returned and failure is None and ended):
                _quiet("cudaGraphDestroy", graph)
                graph = None
        if failure is None and not ended:
            raise _fail("cudaStreamEndCapture", out[0])
        if failure is not None:
            if not ended:
                failure += f"; cudaStreamEndCapture: {getattr(out[0], 'name', _code(out[0]))}"
            raise CudaError(f"graph capture | {failure}; no graph kept", Exit.ERROR, "cudaStreamEndCapture",
                            "" if ended else getattr(out[0], "name", "")) from cause
        try:
            return cls(_instantiate(graph))
        finally:   # the executable graph does not need its template
            _quiet("cudaGraphDestroy", graph)

    def launch(self, stream: Stream) -> None:
        """Queue one replay of the graph on `stream`."""
        call("cudaGraphLaunch", self._live(), _stream(stream))
