"""edge_runtime.core.cuda_rt over cuda-python's two spellings.

1. Fake runtime modules (in sys.modules) for what differs between releases: which module is found, the
   error tuples, cudaGraphInstantiate's two signatures, and the capture failure paths (the capture always
   ends, no graph survives a failure).
2. The real cuda-bindings, when installed here without a GPU: every name the module uses exists on it, and a
   call without a driver is one CudaError line.
3. On a GPU: a captured copy and memset replayed, and a capture broken for real.
"""
import ast
import ctypes
import sys
import types
from enum import Enum, IntEnum
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.core import cuda_rt
from edge_runtime.core.errors import EdgeError, Exit, run_command

SOURCE = Path(cuda_rt.__file__)


class Err(IntEnum):   # the few codes the tests need, with cuda-python's values
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorStreamCaptureInvalidated = 901


class OldErr(Enum):   # early 11.x: a plain Enum, not comparable with 0
    cudaSuccess = 0
    cudaErrorInvalidValue = 1


Kind = IntEnum("cudaMemcpyKind", "cudaMemcpyHostToHost cudaMemcpyHostToDevice cudaMemcpyDeviceToHost "
                                 "cudaMemcpyDeviceToDevice", start=0)
Mode = IntEnum("cudaStreamCaptureMode", "cudaStreamCaptureModeGlobal cudaStreamCaptureModeThreadLocal", start=0)
OK = Err.cudaSuccess


def fake_runtime(name="cuda.bindings.runtime", version=12080, with_flags=True):
    """A runtime module with only what the version logic touches. `rt.log` records (function, args);
    `rt.graphs` holds the template graphs alive; `rt.capturing` is True between Begin and EndCapture."""
    rt = types.ModuleType(name)
    rt.CUDART_VERSION, rt.cudaError_t, rt.cudaMemcpyKind, rt.cudaStreamCaptureMode = version, Err, Kind, Mode
    rt.cudaStreamNonBlocking, rt.cudaEventDefault, rt.cudaEventDisableTiming = 1, 0, 2
    rt.log, rt.graphs, rt.capturing, rt.keep = [], set(), False, []
    rt.end_error, rt.end_graph, rt.inst_error = OK, 0x6A, OK

    def logged(fn_name, result):
        def fn(*args):
            rt.log.append((fn_name, args))
            return result(*args) if callable(result) else result
        fn.__name__ = fn_name
        setattr(rt, fn_name, fn)

    def end(stream):
        rt.capturing = False
        if rt.end_graph:
            rt.graphs.add(rt.end_graph)
        return rt.end_error, rt.end_graph   # cuda-python hands back a NULL handle (0) when none was made

    def malloc_host(nbytes):
        rt.keep.append(ctypes.create_string_buffer(nbytes))
        return OK, ctypes.addressof(rt.keep[-1])

    rt.cudaGetErrorString = lambda err: (OK, f"text of {err.name}".encode())
    logged("cudaStreamCreateWithFlags", (OK, 0x51))
    for fn_name in ("cudaStreamDestroy", "cudaStreamSynchronize", "cudaMemcpyAsync", "cudaMemsetAsync",
                    "cudaGraphLaunch", "cudaGraphExecDestroy", "cudaFreeHost"):
        logged(fn_name, (OK,))
    logged("cudaStreamBeginCapture", lambda s, mode: setattr(rt, "capturing", True) or (OK,))
    logged("cudaStreamEndCapture", end)
    logged("cudaGraphDestroy", lambda g: rt.graphs.discard(int(g)) or (OK,))
    logged("cudaMallocHost", malloc_host)
    if with_flags:
        logged("cudaGraphInstantiateWithFlags", lambda graph, flags: (rt.inst_error, 0xE0))
    if version < 12000:   # 11.x: (graph, pLogBuffer, bufferSize) -> (err, exec, errorNode)
        def instantiate(graph, log, size):
            log[:9] = b"bad node\0"
            return rt.inst_error, 0xE0, 0
    else:
        def instantiate(graph, flags):
            return rt.inst_error, 0xE0
    logged("cudaGraphInstantiate", instantiate)
    return rt


@pytest.fixture
def rt(monkeypatch):
    """A fake 12/13-layout runtime, the only one importable."""
    fake = fake_runtime()
    monkeypatch.setattr(cuda_rt, "_RUNTIME", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    return fake


def called(rt):
    return [name for name, _ in rt.log]


# --- which module -------------------------------------------------------------------------------------------

def test_new_layout_preferred_over_old_shim(monkeypatch):
    new, old = fake_runtime("cuda.bindings.runtime"), fake_runtime("cuda.cudart", version=11080)
    monkeypatch.setattr(cuda_rt, "_RUNTIME", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", new)
    monkeypatch.setitem(sys.modules, "cuda.cudart", old)
    assert cuda_rt.runtime() is new and cuda_rt.flavour() == "cuda.bindings.runtime"
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    assert cuda_rt.runtime() is new, "the module is cached after the first look-up"


def test_old_layout_when_only_cuda_cudart(monkeypatch):   # cuda-python 11.8.2, the newest on JetPack 5.1
    old = fake_runtime("cuda.cudart", version=11080)
    monkeypatch.setattr(cuda_rt, "_RUNTIME", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", old)
    assert cuda_rt.runtime() is old and cuda_rt.flavour() == "cuda.cudart"


def test_neither_layout_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setattr(cuda_rt, "_RUNTIME", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    with pytest.raises(EdgeError) as info:
        cuda_rt.Stream()
    msg = str(info.value)
    assert info.value.exit == Exit.NOT_FOUND and "\n" not in msg
    assert msg.startswith("cuda-python | not installed") and "pip install 'edge-adaptive[jetson]'" in msg
    assert "cuda.bindings.runtime" in msg and "cuda.cudart" in msg


# --- error tuples -------------------------------------------------------------------------------------------

def test_call_unwraps_the_tuple(rt):
    rt.cudaNone, rt.cudaOne, rt.cudaTwo = lambda: (OK,), lambda: (OK, 5), lambda a: (OK, a, a + 1)
    assert cuda_rt.call("cudaNone") is None
    assert cuda_rt.call("cudaOne") == 5
    assert cuda_rt.call("cudaTwo", 1) == (1, 2)
    rt.cudaOld = lambda: (OldErr.cudaSuccess, 7)
    assert cuda_rt.call("cudaOld") == 7, "a plain-Enum success is a success"


@pytest.mark.parametrize("err, exit", [(Err.cudaErrorInvalidValue, Exit.ERROR), (Err.cudaErrorNoDevice, Exit.NOT_FOUND),
                                       (OldErr.cudaErrorInvalidValue, Exit.ERROR)])
def test_call_error_is_one_line(rt, err, exit):
    rt.cudaBad = lambda: (err, None)
    with pytest.raises(cuda_rt.CudaError) as info:
        cuda_rt.call("cudaBad")
    assert str(info.value) == f"cudaBad | {err.name} (text of {err.name})"
    assert info.value.exit == exit and info.value.function == "cudaBad" and info.value.error == err.name


def test_missing_driver_runtime_error_is_one_line(rt):   # what cuda.cudart 11.8/12.0 do without libcuda.so.1
    def no_driver(flags):
        raise RuntimeError("Failed to dlopen libcuda.so.1")
    rt.cudaStreamCreateWithFlags = no_driver
    with pytest.raises(cuda_rt.CudaError) as info:
        cuda_rt.Stream()
    assert info.value.exit == Exit.NOT_FOUND
    assert str(info.value).startswith("cudaStreamCreateWithFlags | Failed to dlopen libcuda.so.1")


# --- cudaGraphInstantiate's signatures ----------------------------------------------------------------------

@pytest.mark.parametrize("version, with_flags, used", [
    (11080, True, "cudaGraphInstantiateWithFlags"), (12080, True, "cudaGraphInstantiateWithFlags"),
    (11020, False, "cudaGraphInstantiate"), (12000, False, "cudaGraphInstantiate")])
def test_instantiate_dispatch(monkeypatch, version, with_flags, used):
    fake = fake_runtime("cuda.cudart", version=version, with_flags=with_flags)
    monkeypatch.setattr(cuda_rt, "_RUNTIME", ("cuda.cudart", fake))
    assert cuda_rt._instantiate(0x6A) == 0xE0   # the fakes' arity rejects the other version's arguments
    (name, args), = fake.log
    assert name == used and args[0] == 0x6A
    assert len(args) == (3 if used == "cudaGraphInstantiate" and version < 12000 else 2)


def test_instantiate_11x_failure_carries_the_log(monkeypatch):
    fake = fake_runtime("cuda.cudart", version=11020, with_flags=False)
    fake.inst_error = Err.cudaErrorInvalidValue
    monkeypatch.setattr(cuda_rt, "_RUNTIME", ("cuda.cudart", fake))
    with pytest.raises(cuda_rt.CudaError, match=r"cudaGraphInstantiate \| cudaErrorInvalidValue .*bad node"):
        cuda_rt._instantiate(0x6A)


# --- capture ------------------------------------------------------------------------------------------------

def test_capture_success_keeps_only_the_executable(rt):
    stream = cuda_rt.Stream()
    graph = cuda_rt.CapturedGraph.capture(stream, lambda: cuda_rt.memset_async(0x100, 0, 64, stream))
    begin = rt.log[1]
    assert begin == ("cudaStreamBeginCapture", (0x51, Mode.cudaStreamCaptureModeThreadLocal))
    assert called(rt)[2:] == ["cudaMemsetAsync", "cudaStreamEndCapture", "cudaGraphInstantiateWithFlags",
                              "cudaGraphDestroy"]
    assert rt.graphs == set() and not rt.capturing
    graph.launch(stream)
    assert rt.log[-1] == ("cudaGraphLaunch", (0xE0, 0x51))
    with graph:
        pass
    graph.close()
    assert called(rt).count("cudaGraphExecDestroy") == 1
    with pytest.raises(ValueError, match="after close"):
        graph.launch(stream)


def boom():
    raise ValueError("shape mismatch\nsecond line")


@pytest.mark.parametrize("fn, end_error, end_graph, words", [
    (boom, OK, 0x6A, ["boom raised ValueError: shape mismatch", "no graph kept"]),
    (lambda: False, OK, 0x6A, ["<lambda> returned False during capture"]),
    (lambda: None, Err.cudaErrorStreamCaptureInvalidated, 0,
     ["cudaStreamEndCapture | cudaErrorStreamCaptureInvalidated"]),
    (lambda: True, Err.cudaErrorStreamCaptureInvalidated, 0x6A, ["cudaErrorStreamCaptureInvalidated"]),
    (boom, Err.cudaErrorStreamCaptureInvalidated, 0,
     ["boom raised ValueError", "cudaStreamEndCapture: cudaErrorStreamCaptureInvalidated"]),
])
def test_failed_capture_ends_and_leaves_no_graph(rt, fn, end_error, end_graph, words):
    rt.end_error, rt.end_graph = end_error, end_graph
    stream = cuda_rt.Stream()
    with pytest.raises(cuda_rt.CudaError) as info:
        cuda_rt.CapturedGraph.capture(stream, fn)
    msg = str(info.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert "cudaStreamEndCapture" in called(rt) and not rt.capturing
    assert rt.graphs == set(), "a failed capture left its graph behind"
    assert not any(name.startswith("cudaGraphInstantiate") for name in called(rt))
    if fn is boom:
        assert isinstance(info.value.__cause__, ValueError)


def test_ctrl_c_during_capture_ends_it_and_passes_through(rt):
    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        cuda_rt.CapturedGraph.capture(cuda_rt.Stream(), interrupted)
    assert not rt.capturing and rt.graphs == set()


def test_failed_instantiate_destroys_the_template(rt):
    rt.inst_error = Err.cudaErrorInvalidValue
    with pytest.raises(cuda_rt.CudaError, match="cudaGraphInstantiateWithFlags | cudaErrorInvalidValue"):
        cuda_rt.CapturedGraph.capture(cuda_rt.Stream(), lambda: True)
    assert rt.graphs == set() and not rt.capturing


# --- the thin wrappers --------------------------------------------------------------------------------------

def test_stream_closes_once_and_copies_take_its_handle(rt):
    with cuda_rt.Stream() as stream:
        assert stream.handle == 0x51 and isinstance(stream.handle, int)
        cuda_rt.copy_async(0x200, 0x100, 16, "dtoh", stream)
        assert rt.log[-1] == ("cudaMemcpyAsync", (0x200, 0x100, 16, Kind.cudaMemcpyDeviceToHost, 0x51))
        with pytest.raises(ValueError, match="copy kind"):
            cuda_rt.copy_async(0x200, 0x100, 16, "d2h", stream)
    stream.close()
    assert called(rt).count("cudaStreamDestroy") == 1
    with pytest.raises(ValueError, match="after close"):
        stream.synchronize()


def test_pinned_array_is_a_view_of_the_allocation(rt):
    with cuda_rt.PinnedArray((2, 3), np.float32) as pinned:
        assert pinned.array.shape == (2, 3) and pinned.array.dtype == np.float32 and pinned.nbytes == 24
        pinned.array[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
        raw = (ctypes.c_float * 6).from_address(pinned.ptr)
        assert list(raw) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert pinned.array is None and rt.log[-1] == ("cudaFreeHost", (pinned.ptr,))


# --- the real cuda-bindings, no GPU -------------------------------------------------------------------------

def names_used() -> tuple:
    """(functions and enum members named as strings, attribute chains read off the runtime module, fields
    read off cudaGetDeviceProperties' `prop`)."""
    strings, chains, fields = set(), set(), set()
    for node in ast.walk(ast.parse(SOURCE.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.lower().startswith("cuda") and node.value[4:5].isupper() and node.value.isidentifier():
                strings.add(node.value)
        elif isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Store):
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.insert(0, base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id == "prop":
                fields.add(chain[0])
            is_rt = isinstance(base, ast.Name) and base.id == "rt"
            is_call = isinstance(base, ast.Call) and getattr(base.func, "id", "") == "runtime"
            if is_rt or is_call:
                chains.add(tuple(chain))
    return strings, chains, fields


def real_runtime():
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-bindings is not installed here")
    from cuda.bindings import runtime
    return runtime


def gpu_count() -> int:
    """GPUs that cuda-python (either spelling) sees here; 0 without it, a driver or a device."""
    try:
        return int(cuda_rt.call("cudaGetDeviceCount"))
    except EdgeError:
        return 0


def test_every_name_used_exists_in_cuda_bindings():
    real = real_runtime()
    strings, chains, fields = names_used()
    assert {"cudaStreamBeginCapture", "cudaGraphInstantiateWithFlags", "cudaMemcpyHostToDevice",
            "CUDART_VERSION"} <= strings
    assert ("cudaStreamCaptureMode", "cudaStreamCaptureModeThreadLocal") in chains
    missing = []
    for chain in chains:
        obj = real
        for attr in chain:
            obj = getattr(obj, attr, None)
        if obj is None:
            missing.append(".".join(chain))
    spaces = [real, real.cudaError_t, real.cudaMemcpyKind]
    missing += [name for name in strings if not any(hasattr(space, name) for space in spaces)]
    assert {"name", "totalGlobalMem"} <= fields
    missing += [f"cudaDeviceProp.{f}" for f in fields if not hasattr(real.cudaDeviceProp(), f)]
    assert not missing, f"cuda.bindings.runtime has no {sorted(missing)}"


@pytest.mark.skipif(gpu_count() > 0, reason="a GPU is present: the driver-less path cannot be seen here")
def test_no_driver_is_one_cuda_error_line(monkeypatch, capsys):
    real_runtime()
    monkeypatch.setattr(cuda_rt, "_RUNTIME", None)
    assert cuda_rt.flavour() == "cuda.bindings.runtime"
    code = run_command("edge-infer", lambda: cuda_rt.Stream())
    err = capsys.readouterr().err
    assert code == Exit.NOT_FOUND and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("edge-infer: cudaStreamCreateWithFlags | cudaError"), err


# --- on a GPU -----------------------------------------------------------------------------------------------

@pytest.mark.skipif(gpu_count() == 0, reason="needs an NVIDIA GPU and cuda-python")
def test_captured_copies_replay_on_gpu(monkeypatch):
    monkeypatch.setattr(cuda_rt, "_RUNTIME", None)
    cuda_rt.set_device(0)
    info = cuda_rt.device_info(0)
    assert info["total_memory"] > 0 and "." in info["compute_capability"] and info["driver"] > 0
    n = 256
    with cuda_rt.Stream() as stream, cuda_rt.DeviceBuffer(4 * n) as dev, \
            cuda_rt.PinnedArray(n, np.float32) as src, cuda_rt.PinnedArray(n, np.float32) as dst:
        assert dev.ptr % 256 == 0

        def work():
            cuda_rt.memset_async(dev.ptr, 0, 4 * n, stream)
            cuda_rt.copy_async(dev.ptr, src.ptr, 2 * n, "htod", stream)   # the first half only
            cuda_rt.copy_async(dst.ptr, dev.ptr, 4 * n, "dtoh", stream)
        graph = cuda_rt.CapturedGraph.capture(stream, work)
        start, stop = cuda_rt.Event(), cuda_rt.Event()
        for value in (1.0, 7.0):   # a replay reads the pinned input as it is now
            src.array[:] = value
            dst.array[:] = -1.0
            start.record(stream)
            graph.launch(stream)
            stop.record(stream)
            stream.synchronize()
            np.testing.assert_array_equal(dst.array[: n // 2], value)
            np.testing.assert_array_equal(dst.array[n // 2:], 0.0)
        assert stop.elapsed_ms(start) >= 0.0
        for resource in (graph, start, stop):
            resource.close()

        # Synchronising a capturing stream invalidates the capture: an error, and the stream is usable after.
        with pytest.raises(cuda_rt.CudaError):
            cuda_rt.CapturedGraph.capture(stream, stream.synchronize)
        status = cuda_rt.call("cudaStreamIsCapturing", stream.handle)
        assert int(status) == 0, "the stream is still capturing"
        cuda_rt.memset_async(dev.ptr, 0, 4 * n, stream)
        stream.synchronize()


PY38 = Path(__file__).resolve().parents[1] / ".venv38" / "bin" / "python"


@pytest.mark.skipif(not PY38.exists(), reason=".venv38 missing (make setup38)")
def test_every_name_used_exists_in_jetpack5s_cuda_python():
    """The same names on cuda-python 11.8.2 (deploy/requirements-jetpack5.txt: the old `cuda.cudart` layout)
    under the device's Python 3.8, and the module picks that layout there."""
    import json
    import subprocess
    strings, chains, fields = names_used()
    code = (
        "import json, sys\n"
        "import edge_runtime.core.cuda_rt as c\n"
        "from cuda import cudart as real\n"
        "strings, chains, fields = json.loads(sys.argv[1])\n"
        "missing = []\n"
        "for chain in chains:\n"
        "    obj = real\n"
        "    for attr in chain:\n"
        "        obj = getattr(obj, attr, None)\n"
        "    missing += [] if obj is not None else ['.'.join(chain)]\n"
        "spaces = [real, real.cudaError_t, real.cudaMemcpyKind]\n"
        "missing += [n for n in strings if not any(hasattr(s, n) for s in spaces)]\n"
        "missing += [f for f in fields if not hasattr(real.cudaDeviceProp(), f)]\n"
        "print(json.dumps({'flavour': c.flavour(), 'missing': missing}))\n")
    run = subprocess.run([str(PY38), "-c", code, json.dumps([sorted(strings), sorted(chains), sorted(fields)])],
                         capture_output=True, text=True, timeout=120)
    if run.returncode != 0 and "No module named 'cuda'" in run.stderr:
        pytest.skip("cuda-python is not in .venv38 (make setup38 installs deploy/requirements-jetpack5.txt)")
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["flavour"] == "cuda.cudart" and got["missing"] == [], got
