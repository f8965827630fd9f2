"""Files whole or absent (edge_runtime.core.files): a failed write keeps the old content and leaves no
temporary file; a sink's file appears under its name only when it is closed."""
import json

import numpy as np
import pytest

from edge_runtime.core.files import AtomicFile, atomic_dir, atomic_path, sha256_file, temp_beside, write_atomic
from edge_runtime.io.sinks import JsonLines


def leftovers(d):
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_temp_name_is_hidden_beside_and_keeps_the_suffixes(tmp_path):
    for name in ("clip.avi", "exits_test.npz", "model.safetensors", "a.tar.gz", "plain", ".hidden"):
        tmp = temp_beside(tmp_path / name)
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name != name
        assert tmp.name.endswith("".join((tmp_path / name).suffixes))
    assert temp_beside(tmp_path / "a.tar.gz").suffixes[-2:] == [".tar", ".gz"]


def test_write_atomic_replaces(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    assert write_atomic(target, "new ×\n") == target
    assert target.read_text(encoding="utf-8") == "new ×\n"
    write_atomic(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes" and leftovers(tmp_path) == []
    write_atomic(target, "synced", fsync=True)
    assert target.read_text() == "synced"


def test_atomic_path_keeps_the_old_file_when_the_body_raises(tmp_path):
    target = tmp_path / "data.npz"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_atomic_path_with_numpy_keeps_the_name(tmp_path):
    """np.savez appends .npz to a name without it; the temp name keeps it, and a file object never renames."""
    for name in ("policy.npz", "policy"):
        with atomic_path(tmp_path / name) as tmp, open(tmp, "wb") as f:
            np.savez(f, x=np.arange(3))
        with np.load(tmp_path / name) as z:
            assert z["x"].tolist() == [0, 1, 2]
    assert leftovers(tmp_path) == []


def test_atomic_file_commit_and_discard(tmp_path):
    target = tmp_path / "log.txt"
    f = AtomicFile(target)
    f.tmp.write_text("partial")
    assert not target.exists()
    f.discard()
    f.discard()     # idempotent
    assert not f.tmp.exists() and not target.exists()
    with AtomicFile(target) as f:
        f.tmp.write_text("whole")
    assert target.read_text() == "whole" and f.commit() == target   # a second commit changes nothing
    with pytest.raises(ValueError):
        with AtomicFile(target) as f:
            f.tmp.write_text("broken")
            raise ValueError
    assert target.read_text() == "whole" and leftovers(tmp_path) == []


def test_json_lines_sink_is_renamed_only_on_close(tmp_path):
    target = tmp_path / "frames.jsonl"
    sink = JsonLines(target)
    for i in range(3):
        sink.write(None, {"frame": i})
    sink.f.flush()
    assert not target.exists() and sink.file.tmp.exists() and sink.file.tmp.parent == tmp_path
    sink.close()
    assert [json.loads(line)["frame"] for line in target.read_text().splitlines()] == [0, 1, 2]
    assert leftovers(tmp_path) == []


def test_atomic_dir_swaps_a_whole_directory(tmp_path):
    out = tmp_path / "engines"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_dir(out) as tmp:
        assert tmp.is_dir() and not list(tmp.iterdir()) and tmp.parent == tmp_path
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and leftovers(tmp_path) == []
    with pytest.raises(KeyError):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise KeyError("failed check")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and leftovers(tmp_path) == []
    with atomic_dir(tmp_path / "fresh") as tmp:
        (tmp / "a").write_text("a")
    assert (tmp_path / "fresh" / "a").read_text() == "a"


def test_sha256_file(tmp_path):
    p = write_atomic(tmp_path / "x", b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_video_sink_is_renamed_only_on_close(tmp_path):
    from edge_runtime.io.sinks import VideoOutput
    from edge_runtime.io.sources import Frame
    target = tmp_path / "out.avi"
    sink = VideoOutput(target, fps=5.0)
    record = {"label": "3", "score": 0.9, "depth": 2}
    for i in range(3):
        sink.write(Frame(i, np.full((8, 8), 30 * i, np.uint8), 0.0), record)
    assert not target.exists() and sink.file.tmp.exists()
    sink.close()
    assert target.stat().st_size > 0 and leftovers(tmp_path) == []
