"""The device side's compiled kernels (edge_runtime._kernels, built from _kernels.c at install), loaded once.

Importing this module never fails: when the extension is not built (or built for another interpreter), the
stand-in raises one EdgeError line at first use, so `edge-infer --help` and the tools that do not decide
work without it.
"""
from edge_runtime.core.errors import EdgeError, Exit

NOT_BUILT = "edge_runtime._kernels is not built: reinstall with pip install -e . (needs a C compiler and the " \
            "Python headers)"


class _NotBuilt:
    """Stands in for a missing extension: any use of it is one EdgeError line."""

    def __init__(self, reason: str):
        self.reason = reason

    def __getattr__(self, name):
        raise EdgeError(NOT_BUILT + self.reason, Exit.NOT_FOUND)


def load_kernels():
    """edge_runtime._kernels, or the stand-in that says why it is missing."""
    try:
        import edge_runtime._kernels as _kernels
    except ModuleNotFoundError as err:
        if err.name != "edge_runtime._kernels":
            raise
        return _NotBuilt("")
    except ImportError as err:           # built, but for another interpreter (or damaged)
        return _NotBuilt(f" ({err})")
    return _kernels


kernels = load_kernels()
