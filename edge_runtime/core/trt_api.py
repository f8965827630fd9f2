"""The one place that knows how TensorRT's Python API differs between 8.5 (JetPack 5.1) and 10.x.

Checked against NVIDIA/TensorRT's Python bindings (python/src/infer/pyCore.cpp, pyInt8.cpp) at tags
8.5.2, v10.0.1, v10.1.0 and v11, and the onnx-tensorrt parser at 8.5-GA and 10.1-GA. What differs:

  runtime side                  8.5                                      10.x
  context, our memory           create_execution_context_without_        create_execution_context(
                                device_memory()                          ExecutionContextAllocationStrategy.USER_MANAGED) (10.0)
  giving it the memory          ctx.device_memory = ptr (setter only)    ctx.set_device_memory(ptr, size) (10.1)
  memory size                   engine.device_memory_size                engine.device_memory_size_v2 (10.1; v1 gone in 11)
  name-based tensor API         num_io_tensors, get_tensor_name/mode/shape/dtype, get_tensor_profile_shape,
                                set_input_shape, set_tensor_address, set_optimization_profile_async,
                                execute_async_v3 (all bool-returning): the same in both; *binding* calls,
                                execute_async_v2 and build_engine are gone in 10
  numpy dtypes                  trt.nptype reads np.bool, which numpy 1.24 removed (NVIDIA/TensorRT#2557):
                                8.5's nptype fails on JetPack's numpy, so DTYPES maps by name here

  build side                    8.5                                      10.x
  network                       create_network(1 << EXPLICIT_BATCH)      create_network(0) (explicit batch only)
  workspace                     config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, n) in both
  timing cache                  config.create_timing_cache(bytes), set_timing_cache(cache, ignore_mismatch),
                                cache.serialize(): the same in both
  INT8                          IInt8EntropyCalibrator2 (implicit)       implicit calibration deprecated: Q/DQ
                                                                         graphs with BuilderFlag.INT8 (+FP16)
  11.x                          BuilderFlag.FP16 / INT8 and set_calibration_profile are gone: networks are
                                strongly typed, so fp32 and Q/DQ graphs build, fp16 refuses (precision_flags)

Where a feature can be detected (an attribute that one version has) the code asks for it rather than the
version number. Every refusal is one EdgeError line. Nothing here imports torch; tensorrt itself is
imported on first use (lazy_import, extra "jetson").
"""
import platform
import re
from pathlib import Path

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.lazy import lazy_import

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
# DataType.name -> numpy dtype (what trt.nptype should have been on numpy >= 1.24)
DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
          "BOOL": np.bool_, "UINT8": np.uint8}

_LOGGER = None
_RUNTIME = None


def tensorrt(why: str = "the TensorRT backend"):
    """The tensorrt module; missing, one line (lazy_import's) saying what needs it. JetPack brings it."""
    return lazy_import("tensorrt", extra="jetson", why=why)


def major(trt=None) -> int:
    """TensorRT's major version: 8 on JetPack 5.1, 10 on JetPack 6."""
    trt = trt or tensorrt()
    return int(str(trt.__version__).split(".")[0])


def logger():
    """One ILogger for the process that keeps TensorRT's error messages (the builder and the runtime say
    why they fail only there), so a failure can be one line; warnings and info stay quiet."""
    global _LOGGER
    if _LOGGER is None:
        trt = tensorrt()

        class Log(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)   # pybind trampolines need the base initialised
                self.errors = []

            def log(self, severity, msg):
                if int(severity) <= int(trt.ILogger.Severity.ERROR):
                    self.errors = (self.errors + [" ".join(str(msg).split())])[-8:]

        _LOGGER = Log()
    return _LOGGER


def last_error(default: str = "TensorRT gave no message") -> str:
    """The latest error TensorRT logged (and forget them), for a one-line refusal."""
    log = logger()
    msg = log.errors[-1] if log.errors else default
    log.errors = []
    return msg


def deserialize(plan: bytes, name: str = "engine"):
    """An ICudaEngine from a serialized plan. One IRuntime serves the process (pybind's keep_alive also
    ties each engine to it); a plan from another TensorRT version or device is one line."""
    global _RUNTIME
    trt = tensorrt()
    if _RUNTIME is None:
        _RUNTIME = trt.Runtime(logger())
    engine = _RUNTIME.deserialize_cuda_engine(plan)
    if engine is None:
        raise EdgeError(f"{name} | TensorRT {trt.__version__} could not deserialize it: {last_error()} "
                        f"(engines are built per device and TensorRT version: edge-infer build --backend tensorrt)",
                        Exit.CORRUPT)
    return engine


def np_dtype(dtype) -> np.dtype:
    """The numpy dtype of a trt.DataType."""
    name = getattr(dtype, "name", str(dtype).split(".")[-1])
    if name not in DTYPES:
        raise EdgeError(f"TensorRT dtype {name} | has no numpy equivalent here", Exit.BAD_INPUT)
    return np.dtype(DTYPES[name])


def io_tensors(engine) -> list:
    """[(name, is_input, numpy dtype, shape tuple)] of the engine's I/O tensors, in its order. A text
    model's int64 inputs read int32 on 8.5 (its ONNX parser casts INT64 down); 10 keeps int64."""
    trt = tensorrt()
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        out.append((name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                    np_dtype(engine.get_tensor_dtype(name)), tuple(engine.get_tensor_shape(name))))
    return out


def profile_count(engine) -> int:
    return int(engine.num_optimization_profiles)


def device_memory_size(engine) -> int:
    """Bytes an execution context needs (the most over its profiles): 10.1's v2 property when present."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def context_without_memory(engine):
    """An execution context whose activation memory we give (give_device_memory): one block then serves
    every context of every graph, as they never run at once on one stream."""
    trt = tensorrt()
    strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
    if strategy is not None:   # 10.0+
        ctx = engine.create_execution_context(strategy.USER_MANAGED)
    else:                      # 8.5
        ctx = engine.create_execution_context_without_device_memory()
    if ctx is None:
        raise EdgeError(f"execution context | TensorRT could not create one: {last_error()}", Exit.ERROR)
    return ctx


def give_device_memory(ctx, ptr: int, size: int) -> None:
    """Point the context at `size` bytes of device memory at `ptr` (256-byte aligned, cudaMalloc's)."""
    if hasattr(ctx, "set_device_memory"):   # 10.1+: the size is checked
        ctx.set_device_memory(int(ptr), int(size))
    else:                                   # 8.5 (and 10.0): a write-only property
        ctx.device_memory = int(ptr)


def set_profile(ctx, index: int, stream_handle: int) -> None:
    """Select optimisation profile `index` (asynchronous on the stream; bindings must be set again after)."""
    if not ctx.set_optimization_profile_async(int(index), int(stream_handle)):
        raise EdgeError(f"profile {index} | TensorRT refused it: {last_error()}", Exit.ERROR)


def set_input_shape(ctx, name: str, shape) -> bool:
    return bool(ctx.set_input_shape(name, tuple(int(d) for d in shape)))


def set_address(ctx, name: str, ptr: int) -> bool:
    return bool(ctx.set_tensor_address(name, int(ptr)))


def enqueue(ctx, stream_handle: int) -> bool:
    """Run the context on the stream (execute_async_v3: addresses set by name beforehand)."""
    return bool(ctx.execute_async_v3(int(stream_handle)))


# --- the build side
def network_flags(trt) -> int:
    """create_network's flags: explicit batch on 8.5; 10 knows no other mode (and 11 drops the flag)."""
    if major(trt) < 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def precision_flags(trt, precision: str, qdq: bool = False) -> list:
    """The BuilderFlags a precision needs: fp16 FP16; int8 INT8 and FP16 (layers TensorRT cannot run in
    int8 fall back to fp16, not fp32). 11's strongly typed networks take their precision from the graph:
    a Q/DQ graph needs no flag, fp16 cannot be asked for."""
    flags = trt.BuilderFlag
    fp16, int8 = getattr(flags, "FP16", None), getattr(flags, "INT8", None)
    if precision == "fp32":
        return []
    if precision == "fp16":
        if fp16 is None:
            raise EdgeError(f"--precision fp16 | TensorRT {trt.__version__} builds strongly typed networks only "
                            "(no BuilderFlag.FP16): build fp32 or int8 here", Exit.BAD_INPUT)
        return [fp16]
    if precision == "int8":
        if int8 is None and not qdq:
            raise EdgeError(f"--precision int8 | TensorRT {trt.__version__} has no implicit INT8 calibration: "
                            "it builds from Q/DQ graphs", Exit.BAD_INPUT)
        return [f for f in (int8, fp16) if f is not None]
    raise EdgeError(f"--precision {precision} | TensorRT builds fp32, fp16 or int8", Exit.BAD_INPUT)


def parse_onnx(trt, network, path: Path) -> None:
    """Parse the ONNX file at `path` into `network`; the parser's errors as one line."""
    parser = trt.OnnxParser(network, logger())
    if not parser.parse_from_file(str(path)):
        errors = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise EdgeError(f"{Path(path).name} | TensorRT's ONNX parser refused it: "
                        f"{errors[0] if errors else last_error()}{more}", Exit.BAD_INPUT)
    return parser   # keep it alive while the network is in use: the network holds weights it owns


def batch_shapes(inputs: list, rows: int) -> dict:
    """{input name: shape} of the manifest's `inputs` with every named (batch) axis set to `rows`."""
    return {i["name"]: tuple(rows if isinstance(d, str) else int(d) for d in i["shape"]) for i in inputs}


def bucket_profiles(inputs: list, buckets) -> list:
    """One optimisation profile per batch bucket: [{input name: (min, opt, max)}], min = opt = max = the
    bucket on the batch axis of every input (static shapes per profile: CUDA graphs need them)."""
    for i in inputs:
        named = [d for d in i["shape"] if isinstance(d, str)]
        if len(named) != 1:
            raise EdgeError(f"input '{i['name']}' | shape {i['shape']}: a TensorRT profile needs exactly one named "
                            "(batch) axis", Exit.BAD_INPUT)
    out = []
    for b in buckets:
        shapes = batch_shapes(inputs, b)
        out.append({name: (s, s, s) for name, s in shapes.items()})
    return out


def add_profile(builder, config, shapes: dict, calibration: bool = False) -> None:
    """Add one optimisation profile {name: (min, opt, max)} to `config` (or set it as the INT8 calibration
    profile: 8.5 calibrates at its opt shapes)."""
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    if calibration:
        ok = config.set_calibration_profile(profile)
    else:
        ok = config.add_optimization_profile(profile) >= 0
    if ok is False:
        raise EdgeError(f"profile {shapes} | TensorRT refused it: {last_error()}", Exit.BAD_INPUT)


class Int8Batches:
    """What an INT8 calibrator serves, without TensorRT: fixed-size batches of one graph's feed, and the
    calibration cache file (TensorRT asks for no batch when the cache it reads back is valid)."""

    def __init__(self, feed: dict, rows: int, dtypes: dict = None, cache: Path = None):
        """Args:
            feed: {input name: (N, ...) array}: the graph's inputs for every calibration sample.
            rows: rows per batch (the calibration profile's batch). The last batch is filled up with the
                first samples again: a profile has one shape, and dropping them would waste samples.
            dtypes: {input name: numpy dtype} the network takes (8.5 reads int64 token ids as int32).
            cache: the calibration cache file, read when present, written after calibration.
        """
        self.feed, self.rows, self.cache = feed, int(rows), cache
        self.dtypes = dict(dtypes or {})
        self.samples = len(next(iter(feed.values())))
        self.start = 0
        self.served = 0          # batches handed out
        self.cache_read = False  # whether read_cache() returned a cache

    def batch_count(self) -> int:
        return -(-self.samples // self.rows)

    def next_batch(self, names) -> dict:
        """{name: C-contiguous (rows, ...) array} for the inputs TensorRT names, or None after the last."""
        if self.start >= self.samples:
            return None
        idx = np.arange(self.start, self.start + self.rows) % self.samples
        self.start += self.rows
        self.served += 1
        out = {}
        for n in names:
            if n not in self.feed:
                raise EdgeError(f"input '{n}' | the network asks for it, the calibration feed has: "
                                f"{', '.join(self.feed)}", Exit.BAD_INPUT)
            a = self.feed[n][idx]
            out[n] = np.ascontiguousarray(a.astype(self.dtypes.get(n, a.dtype), copy=False))
        return out

    def read_cache(self):
        if self.cache is not None and self.cache.is_file():
            self.cache_read = True
            return self.cache.read_bytes()
        return None

    def write_cache(self, data: bytes) -> None:
        if self.cache is not None:
            from edge_runtime.core.files import write_atomic
            write_atomic(self.cache, bytes(data))


def entropy_calibrator(trt, batches: Int8Batches, cuda_rt):
    """A trt.IInt8EntropyCalibrator2 over `batches` (TensorRT 8.5's implicit INT8), copying each batch into
    device buffers through cuda_rt. Call .close() after the build; .error holds what get_batch raised
    (TensorRT only prints an exception raised in a callback and ends calibration)."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.buffers, self.stream, self.error = {}, cuda_rt.Stream(), None

        def get_batch_size(self):
            return 1   # explicit batch: the batch axis is in the calibration profile's shapes (as trtexec does)

        def get_batch(self, names):
            try:
                arrays = batches.next_batch(names)
                if arrays is None:
                    return None
                ptrs = []
                for n in names:
                    a, buf = arrays[n], self.buffers.get(n)
                    if buf is None or buf.nbytes < a.nbytes:
                        if buf is not None:
                            buf.close()
                        buf = self.buffers[n] = cuda_rt.DeviceBuffer(a.nbytes)
                    cuda_rt.copy_async(buf.ptr, a.ctypes.data, a.nbytes, "htod", self.stream)
                    ptrs.append(int(buf.ptr))
                self.stream.synchronize()
                return ptrs
            except Exception as err:   # noqa: BLE001 -- re-raised by the builder after TensorRT returns
                self.error = err
                return None

        def read_calibration_cache(self):
            return batches.read_cache()

        def write_calibration_cache(self, cache):
            batches.write_cache(bytes(cache))

        def close(self):
            for buf in self.buffers.values():
                buf.close()
            self.buffers = {}
            self.stream.close()

    return Calibrator()


# --- stamps: engines do not move between devices or TensorRT versions
def l4t_release(text: str):
    """'R35.3.1' from /etc/nv_tegra_release's first line ('# R35 (release), REVISION: 3.1, GCID: ...'),
    or None when it says no such thing."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)", text or "")
    return f"R{m.group(1)}.{m.group(2)}" if m else None


def read_l4t(path: Path = TEGRA_RELEASE):
    """The L4T release of this board, or None off Jetson."""
    try:
        return l4t_release(Path(path).read_text(errors="replace").splitlines()[0])
    except (OSError, IndexError):
        return None


def device_stamp(tegra_release: Path = TEGRA_RELEASE) -> dict:
    """What a TensorRT build is tied to: GPU name and compute capability (cuda_rt), TensorRT's version,
    the L4T release (None off Jetson), machine and system."""
    from edge_runtime.core import cuda_rt
    info = cuda_rt.device_info()
    return {"gpu": info["name"], "compute_capability": str(info["compute_capability"]),
            "gpu_memory": int(info.get("total_memory", 0)), "tensorrt": str(tensorrt().__version__),
            "l4t": read_l4t(tegra_release), "machine": platform.machine(), "system": platform.system()}


STAMP_ITEMS = (   # (item, stamp key, note on a mismatch)
    ("tensorrt", "tensorrt", "a plan runs only under the TensorRT version that built it"),
    ("gpu", "gpu", "engines are tuned per GPU model"),
    ("compute capability", "compute_capability", "engines hold kernels for one compute capability"),
    ("l4t", "l4t", "another JetPack: its CUDA and cuDNN differ from the build's"),
)


def stamp_fit(stamp: dict, here: dict = None) -> list:
    """[(item, built, here, ok, note)] of a TensorRT build stamp against this machine: TensorRT version
    (exact), GPU name, compute capability and L4T release. `here` defaults to device_stamp()."""
    built = dict(stamp.get("device") or {})
    built.setdefault("tensorrt", (stamp.get("versions") or {}).get("tensorrt"))
    if here is None:
        try:
            here = device_stamp()
        except EdgeError as err:
            return [("gpu", str(built.get("gpu")), "unknown", False, str(err))]
    rows = []
    for item, key, note in STAMP_ITEMS:
        b, h = built.get(key), here.get(key)
        ok = str(b) == str(h)
        rows.append((item, "none" if b is None else str(b), "none" if h is None else str(h), ok,
                     "" if ok else f"{note}: build them on this machine (edge-infer build --backend tensorrt)"))
    return rows
