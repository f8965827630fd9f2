"""Files that are whole or absent (DESIGN.md 7): every writer in the project goes through this module.

A file is written under a hidden temporary name in its own directory and renamed over the target only
when complete, so an interrupted run never leaves half a file under the name asked for. Three shapes:

  write_atomic(path, data)           the whole content at once (str or bytes)
  with atomic_path(path) as tmp:     a library writes the file itself (np.savez, savefig, safetensors)
  f = AtomicFile(path) ... f.commit()  a writer that lives longer than one block (a sink): the temporary
                                     name is kept for its lifetime, renamed on commit, removed on discard
  with atomic_dir(path) as tmp:      a whole directory (an engine directory), swapped in at the end

The rename is atomic on POSIX (same directory, same filesystem). `fsync=True` also flushes the data and
the directory entry to disk, for files that must survive a power cut (a board pulled from the wall).
"""
import contextlib
import hashlib
import os
import shutil
from pathlib import Path


def temp_beside(path) -> Path:
    """A hidden temporary name in `path`'s directory that keeps its suffixes (OpenCV and numpy pick the
    format by them): out/clip.avi -> out/.clip.tmp-PID.avi."""
    path = Path(path)
    suffixes = "".join(path.suffixes)
    stem = path.name[:len(path.name) - len(suffixes)]
    return path.with_name(f".{stem}.tmp-{os.getpid()}{suffixes}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync(path: Path) -> None:
    """Flush `path` (a file or a directory) to disk; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A target written under `tmp` and renamed over `path` by `commit()`; `discard()` removes `tmp`.

    Also a context manager: commit on success, discard on an exception. Both calls are idempotent, so a
    sink's close() may run twice."""

    def __init__(self, path, fsync: bool = False):
        self.path = Path(path)
        self.tmp = temp_beside(self.path)
        self.fsync = fsync
        self.done = False

    def commit(self) -> Path:
        """Rename the finished temporary file over `path` (FileNotFoundError if nothing was written)."""
        if not self.done:
            if self.fsync:
                _fsync(self.tmp)
            os.replace(self.tmp, self.path)
            self.done = True
            if self.fsync:
                _fsync(self.path.parent)
        return self.path

    def discard(self) -> None:
        """Remove the temporary file, if any; `path` stays as it was."""
        if not self.done:
            _remove(self.tmp)
            self.done = True

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def atomic_path(path, fsync: bool = False):
    """Yield a temporary path to write; on success it replaces `path`, on an exception it is removed."""
    f = AtomicFile(path, fsync)
    try:
        yield f.tmp
    except BaseException:
        f.discard()
        raise
    try:
        f.commit()
    finally:
        f.discard()   # the rename failed: do not leave the temporary file behind


def write_atomic(path, data, fsync: bool = False) -> Path:
    """Write `data` (str, as UTF-8, or bytes) to `path` whole, or not at all."""
    with atomic_path(path, fsync) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield an empty temporary directory beside `path`; on success it takes `path`'s place, on an
    exception it is removed and `path` is left as it was.

    A directory cannot replace a non-empty one in one rename, so the old one is moved aside first, put
    back if the second rename fails, and removed after: at every instant `path` is the old directory,
    the new one, or (between the two renames) absent, never a mix."""
    path = Path(path)
    tmp = temp_beside(path)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    _remove(tmp)   # a leftover of a killed run with the same pid
    tmp.mkdir()
    try:
        yield tmp
        _remove(old)
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old.exists():
                os.replace(old, path)
            raise
        _remove(old)
    finally:
        _remove(tmp)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
