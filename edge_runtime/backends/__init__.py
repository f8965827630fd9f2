"""Backends by name, imported only when chosen (Polygraphy's lazy imports): `--backend trt` without
TensorRT fails alone, in one line, and the rest of edge-infer works.

A backend is an Executor (backends/base.py) over the graphs of one build of an engine directory: ONNX
Runtime (CPU, or its CUDA / TensorRT execution providers), native TensorRT engines built on the device, and
torch-CUDA, which runs the exported graphs themselves (backends/gpu.py holds what the two GPU executors share). A build's stamp is checked here
(stamp_fit): the backend (or its package) is not here, the precision is not one the backend runs, the
runtime is older than the files need, or (for backends whose engines are built per device) another machine.
"""
import importlib
import platform
from dataclasses import dataclass

from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.lazy import have, lazy_import


@dataclass(frozen=True)
class BackendInfo:
    module: str          # the edge_runtime module that implements it
    cls: str             # its Executor subclass
    package: str         # the import it needs on this machine
    extra: str           # the pip extra (or JetPack part) that brings the package
    precisions: tuple    # what its builds may be in
    portable: bool       # True: its files run on any machine; False: engines are built per device
    from_export: tuple = ("fp32",)   # precisions it runs straight from the exported ONNX graphs (no build)


BACKENDS = {
    "onnxruntime": BackendInfo("edge_runtime.backends.ort", "OrtExecutor", "onnxruntime", "runtime",
                               ("fp32", "int8"), portable=True),
    "tensorrt": BackendInfo("edge_runtime.backends.tensorrt", "TensorrtExecutor", "tensorrt", "jetson",
                            ("fp32", "fp16", "int8"), portable=False, from_export=()),
    "torch-cuda": BackendInfo("edge_torch.torch_cuda", "TorchCudaExecutor", "torch", "train",
                              ("fp32", "fp16"), portable=True, from_export=("fp32", "fp16")),
}
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "torch": "torch-cuda"}


def resolve(name: str) -> str:
    """The canonical backend name for `name` or an alias; unknown names list the known ones."""
    canonical = ALIASES.get(name, name)
    if canonical not in BACKENDS:
        known = ", ".join(sorted(set(BACKENDS) | set(ALIASES)))
        raise EdgeError(f"backend '{name}' | unknown (this runtime has: {known})", Exit.BAD_INPUT)
    return canonical


def available() -> list:
    """Backends whose package this machine can import (checked without importing it)."""
    return [name for name, info in BACKENDS.items() if have(info.package)]


def package_version(name: str) -> str:
    """The version of the backend's package, importing it."""
    info = BACKENDS[resolve(name)]
    return getattr(lazy_import(info.package, info.extra), "__version__", "unknown")


def create(name: str, graphs: list, threads: int = 1, providers: tuple = (), chains: dict = None,
           precision: str = "fp32", **gpu):
    """A closed Executor of backend `name` over `graphs` ([GraphSpec] in chain order).

    Args:
        name: a backend name or alias.
        graphs: the build's segments.
        chains: the build's chain graphs ({(from, to): GraphSpec}).
        threads: intra-op threads (0: the backend's own default).
        providers: ONNX Runtime execution providers; () = CPU.
        precision: what the graphs run in (the torch backend runs fp16 from the fp32 files).
        gpu: the GPU executors' options: buckets, use_graphs (backends/gpu.py).
    """
    info = BACKENDS[resolve(name)]
    lazy_import(info.package, info.extra)
    cls = getattr(importlib.import_module(info.module), info.cls)
    if info.module == "edge_runtime.backends.ort":
        return cls(graphs, providers=tuple(providers) or ("CPUExecutionProvider",), intra_op_num_threads=threads,
                   chains=chains)
    return cls(graphs, threads=threads, chains=chains, precision=precision,
               **{k: v for k, v in gpu.items() if v is not None})


def major_minor(version: str):
    """(major, minor) of a version string such as '1.16.3' or '1.17.0+cu118'; None if unreadable."""
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


@dataclass
class Fit:
    """One line of a build stamp against this machine."""
    item: str
    built: str
    here: str
    ok: bool
    note: str = ""


def stamp_fit(stamp: dict) -> list:
    """A build stamp checked item by item against this machine (backend, precision, runtime, device)."""
    name = stamp.get("backend")
    canonical = ALIASES.get(name, name)
    info, here = BACKENDS.get(canonical), available()
    fit = Fit("backend", name, ", ".join(here) or "none", info is not None and canonical in here)
    if info is None:
        fit.note = "this runtime has no such backend"
    elif not fit.ok:
        fit.note = f"its package {info.package} is not installed (pip install 'edge-adaptive[{info.extra}]')"
    if not fit.ok:
        return [fit]
    fits = [fit]
    precision = stamp.get("precision")
    fits.append(Fit("precision", precision, "/".join(info.precisions), precision in info.precisions,
                    "" if precision in info.precisions else f"{name} here runs {', '.join(info.precisions)}"))
    if canonical == "onnxruntime":
        # The exported files say which onnxruntime reads them (their IR version: edge_runtime.core.onnx_files);
        # a build that onnxruntime itself wrote (optimised or quantised graphs, contrib ops) needs a runtime
        # of the same major and at least the minor that wrote it.
        need = stamp.get("reads_with", {}).get("onnxruntime")
        built_v = str(need or stamp.get("versions", {}).get("onnxruntime", "?"))
        here_v = package_version(canonical)
        b, h = major_minor(built_v), major_minor(here_v)
        ok = b is not None and h is not None and b[0] == h[0] and h[1] >= b[1]
        note = "" if ok else f"needs {b[0]}.{b[1]} or a later {b[0]}.x" if b else "unreadable version"
        fits.append(Fit("onnxruntime", built_v + (" or later" if need else ""), here_v, ok, note))
    if canonical == "tensorrt":
        # A plan runs only under the TensorRT that built it, on the GPU it was tuned for (and its JetPack)
        from edge_runtime.core import trt_api
        fits += [Fit(*row) for row in trt_api.stamp_fit(stamp)]
    built_dev = stamp.get("device", {})
    here_dev = {"machine": platform.machine(), "system": platform.system()}
    same = all(built_dev.get(k) == v for k, v in here_dev.items())
    fits.append(Fit("device", f"{built_dev.get('machine')} {built_dev.get('system')}",
                    f"{here_dev['machine']} {here_dev['system']}", same or info.portable,
                    "" if same else "portable files: any machine runs them" if info.portable else
                    f"{name} engines are built per device: build them on this machine"))
    return fits


def stamp_refusal(stamp: dict):
    """None when the stamp fits this machine, else the reason (for a one-line refusal)."""
    for f in stamp_fit(stamp):
        if not f.ok:
            return f"build stamp: {f.item} {f.built}, this machine has {f.here}" + (f" ({f.note})" if f.note else "")
    return None
