"""Backends by name, imported only when chosen (Polygraphy's lazy imports): `--backend trt` without
TensorRT fails alone, in one line, and the rest of edge-infer works.

A backend is an Executor (backends/base.py) over the graphs of one build of an engine directory. Only
ONNX Runtime exists so far; TensorRT and torch-CUDA join this table.
"""
import importlib
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


BACKENDS = {
    "onnxruntime": BackendInfo("edge_runtime.backends.ort", "OrtExecutor", "onnxruntime", "runtime",
                               ("fp32", "int8"), portable=True),
}
ALIASES = {"ort": "onnxruntime"}


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


def create(name: str, graphs: list, threads: int = 1, providers: tuple = ()):
    """A closed Executor of backend `name` over `graphs` ([GraphSpec] in chain order).

    Args:
        name: a backend name or alias.
        graphs: the build's graphs.
        threads: intra-op threads (0: the backend's own default).
        providers: ONNX Runtime execution providers; () = CPU.
    """
    info = BACKENDS[resolve(name)]
    lazy_import(info.package, info.extra)
    cls = getattr(importlib.import_module(info.module), info.cls)
    if info.module == "edge_runtime.backends.ort":
        return cls(graphs, providers=tuple(providers) or ("CPUExecutionProvider",), intra_op_num_threads=threads)
    return cls(graphs, threads=threads)
