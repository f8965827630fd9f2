"""Optional packages imported on first use (Polygraphy's `mod.lazy_import`): a missing one is one line
naming the extra that installs it, never an ImportError traceback, and never an auto-install."""
import importlib

from edge_runtime.core.errors import EdgeError, Exit


def lazy_import(name: str, extra: str = None, why: str = ""):
    """The module `name`, imported now.

    Args:
        name: a module path, e.g. "onnxruntime.quantization".
        extra: the pip extra (or JetPack part) that brings it, for the message.
        why: what needs it, e.g. "edge-infer build", for the message.
    """
    try:
        return importlib.import_module(name)
    except ImportError as err:
        hint = f" (pip install 'edge-adaptive[{extra}]')" if extra else ""
        need = f"; {why} needs it" if why else ""
        raise EdgeError(f"{name} | not installed here{need}{hint}: {err}", Exit.NOT_FOUND) from None


def have(name: str) -> bool:
    """Whether `name` can be imported here, without importing it."""
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
