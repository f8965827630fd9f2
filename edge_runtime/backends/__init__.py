"""Backends by name, imported only when chosen (Polygraphy's lazy imports): `--backend trt` without
TensorRT fails alone, in one line, and the rest of edge-infer works.

A backend runs the graphs of an engine directory (edge_runtime.core.engine_dir.GraphSpec) behind the one
interface of backends/base.py. Only ONNX Runtime exists so far; TensorRT and torch-CUDA join this table.
"""
import argparse
import importlib
import importlib.util
from dataclasses import dataclass

from edge_runtime.core.errors import EdgeError, Exit


@dataclass(frozen=True)
class BackendInfo:
    module: str          # the edge_runtime module that implements it
    cls: str             # its Backend subclass
    package: str         # the import it needs on this machine
    extra: str           # the pip extra (or JetPack part) that brings the package
    precisions: tuple    # what its engine directories may be built in
    portable: bool       # True: its files run on any machine; False: engines are built per device


BACKENDS = {
    "onnxruntime": BackendInfo("edge_runtime.backends.ort", "OrtBackend", "onnxruntime", "runtime",
                               ("fp32",), portable=True),
}
ALIASES = {"ort": "onnxruntime"}


def lazy_import(name: str, extra: str = None):
    """Import a heavy dependency on first use; a missing one is one line naming what installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        hint = f" (pip install 'edge-adaptive[{extra}]')" if extra else ""
        raise EdgeError(f"{name} | not installed here{hint}: {err}", Exit.NOT_FOUND) from None


def resolve(name: str) -> str:
    """The canonical backend name for `name` or an alias; unknown names list the known ones."""
    canonical = ALIASES.get(name, name)
    if canonical not in BACKENDS:
        known = ", ".join(sorted(set(BACKENDS) | set(ALIASES)))
        raise EdgeError(f"backend '{name}' | unknown (this runtime has: {known})", Exit.BAD_INPUT)
    return canonical


def available() -> list:
    """Backends whose package this machine can import (checked without importing it)."""
    return [name for name, info in BACKENDS.items() if importlib.util.find_spec(info.package) is not None]


def package_version(name: str) -> str:
    """The version of the backend's package, importing it."""
    info = BACKENDS[resolve(name)]
    return getattr(lazy_import(info.package, info.extra), "__version__", "unknown")


def get_backend(name: str):
    """The Backend class for `name`, importing its module now."""
    info = BACKENDS[resolve(name)]
    lazy_import(info.package, info.extra)
    return getattr(importlib.import_module(info.module), info.cls)


@dataclass
class BackendOptions:
    """The runtime's backend flags, spelled once for every subcommand that runs graphs."""
    backend: str = "auto"          # "auto": the backend the engine directory was built for
    providers: tuple = ()          # ONNX Runtime execution providers; () = CPU
    threads: int = 0               # intra-op threads; 0 = the backend's default

    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("backend")
        g.add_argument("--backend", default="auto",
                       help=f"auto (what the engines were built for) or one of: {', '.join(BACKENDS)}")
        g.add_argument("--providers", default="", metavar="LIST",
                       help="ONNX Runtime execution providers, comma-separated (default: CPUExecutionProvider)")
        g.add_argument("--threads", type=int, default=0, metavar="N",
                       help="intra-op threads (default 0: the backend chooses)")

    @classmethod
    def from_args(cls, ns) -> "BackendOptions":
        if ns.threads < 0:
            raise EdgeError(f"--threads {ns.threads} | must be 0 (the backend's default) or more", Exit.BAD_INPUT)
        providers = tuple(p.strip() for p in ns.providers.split(",") if p.strip())
        return cls(ns.backend, providers, ns.threads)

    def create(self, graphs: dict, built_for: str):
        """A closed backend over `graphs`: this option's backend, or `built_for` when it is auto."""
        name = resolve(built_for if self.backend == "auto" else self.backend)
        kwargs = {}
        if name == "onnxruntime":
            kwargs = {"providers": self.providers or ("CPUExecutionProvider",),
                      "intra_op_num_threads": self.threads}
        return get_backend(name)(graphs, **kwargs)
