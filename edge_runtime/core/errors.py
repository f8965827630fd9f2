"""User errors: one line, a named exit code, never a traceback (HTTPie's ExitStatus shape)."""
from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    ERROR = 1          # a bug or an unexpected failure: keeps its traceback
    BAD_INPUT = 2      # the user asked for something that cannot work (bad flag, bad config)
    NOT_FOUND = 3      # a file, dataset or device that is not there
    CORRUPT = 4        # a file that is there but damaged (truncated, wrong hash, bad schema)
    MISMATCH = 5       # a verification ran and failed (edge-infer check: runtime vs PyTorch)
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class EdgeError(Exception):
    """A user-facing failure. `str(err)` is the whole message: subject first, then the reason."""

    def __init__(self, message: str, exit: Exit = Exit.BAD_INPUT):
        super().__init__(message)
        self.exit = exit
