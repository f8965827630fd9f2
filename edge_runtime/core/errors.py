"""User errors: one line, a named exit code, never a traceback (HTTPie's ExitStatus shape)."""
import sys
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


def run_command(prog: str, call, traceback: bool = False) -> int:
    """`call()`'s exit code, the one way every CLI of the project ends: a user error is one line on stderr
    under `prog` and its exit code (`traceback` re-raises it), Ctrl-C is 130; anything else is a bug and
    keeps its traceback (Polygraphy's _main, HTTPie's main)."""
    try:
        return call()
    except EdgeError as err:
        if traceback:
            raise
        print(f"{prog}: {err}", file=sys.stderr)
        return err.exit
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
