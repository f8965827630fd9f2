"""Files that are whole or absent: every writer in the project goes through `atomic_path`.

A file is written under a hidden temporary name in its own directory and renamed over the target only
when complete, so an interrupted run never leaves half a file under the name asked for (DESIGN.md 7).
"""
import contextlib
import hashlib
import os
from pathlib import Path


def temp_beside(path: Path) -> Path:
    """A hidden temporary name in `path`'s directory that keeps its suffixes (OpenCV and numpy pick the
    format by them)."""
    return path.with_name(f".{path.name.split('.')[0]}.tmp-{os.getpid()}{''.join(path.suffixes)}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; on success it replaces `path`, on an exception it is removed."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists() and not tmp.is_dir():
            tmp.unlink()


def write_atomic(path, data) -> Path:
    """Write `data` (str or bytes) to `path` whole, or not at all."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
    return Path(path)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
