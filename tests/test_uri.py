"""One URI parser (edge_runtime.io.uri): every spelling of every INPUT and OUTPUT, normalised once, and
both open_source and open_output dispatching on its result."""
import pathlib

import cv2
import numpy as np
import pytest

from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.io import sinks, sources
from edge_runtime.io.sinks import Display, JsonLines, VideoOutput, open_output
from edge_runtime.io.sources import DatasetSource, ImagesSource, TextSource, open_source
from edge_runtime.io.uri import Uri, parse_uri


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """A scratch current directory holding an images/ directory, so relative paths resolve into it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    return tmp_path


# text -> (scheme, location, index, query, kind, resolved); "{cwd}" is the current directory
PARSED = [
    ("camera0", ("v4l2", "/dev/video0", 0, (), "", "v4l2:///dev/video0")),
    ("/dev/video2", ("v4l2", "/dev/video2", 2, (), "", "v4l2:///dev/video2")),
    ("v4l2://1", ("v4l2", "/dev/video1", 1, (), "", "v4l2:///dev/video1")),
    ("v4l2:///dev/video3", ("v4l2", "/dev/video3", 3, (), "", "v4l2:///dev/video3")),
    ("V4L2://4", ("v4l2", "/dev/video4", 4, (), "", "v4l2:///dev/video4")),
    ("csi://0", ("csi", "0", 0, (), "", "csi://0")),
    ("csi://01", ("csi", "1", 1, (), "", "csi://1")),
    ("rtsp://cam.local:8554/live?tcp=1", ("rtsp", "rtsp://cam.local:8554/live?tcp=1", None, (("tcp", "1"),), "",
                                          "rtsp://cam.local:8554/live?tcp=1")),
    ("RTMP://host/app", ("rtmp", "rtmp://host/app", None, (), "", "rtmp://host/app")),
    ("http://host/x.mjpg", ("http", "http://host/x.mjpg", None, (), "", "http://host/x.mjpg")),
    ("https://host/x.mp4", ("https", "https://host/x.mp4", None, (), "", "https://host/x.mp4")),
    ("udp://@:5000", ("udp", "udp://@:5000", None, (), "", "udp://@:5000")),
    ("clip.mp4", ("file", "{cwd}/clip.mp4", None, (), "video", "file://{cwd}/clip.mp4")),
    ("./sub/../a.PNG", ("file", "{cwd}/a.PNG", None, (), "image", "file://{cwd}/a.PNG")),
    ("lines.txt", ("file", "{cwd}/lines.txt", None, (), "text", "file://{cwd}/lines.txt")),
    ("images", ("file", "{cwd}/images", None, (), "directory", "file://{cwd}/images")),
    ("notes.md", ("file", "{cwd}/notes.md", None, (), "", "file://{cwd}/notes.md")),
    ("file:///data/x.avi", ("file", "/data/x.avi", None, (), "video", "file:///data/x.avi")),
    ("file://rel.jpg", ("file", "{cwd}/rel.jpg", None, (), "image", "file://{cwd}/rel.jpg")),
    ("/abs/my clip.mkv", ("file", "/abs/my clip.mkv", None, (), "video", "file:///abs/my clip.mkv")),
    ("cam", ("file", "{cwd}/cam", None, (), "", "file://{cwd}/cam")),
    ("-", ("stdio", "-", None, (), "", "-")),
    ("dataset://digits/test", ("dataset", "digits/test", None, (), "", "dataset://digits/test")),
    ("dataset://digits/test/?limit=003", ("dataset", "digits/test", None, (("limit", "3"),), "",
                                          "dataset://digits/test?limit=3")),
    ("dataset://fashion-mnist/val?limit=0", ("dataset", "fashion-mnist/val", None, (), "",
                                             "dataset://fashion-mnist/val")),
    ("display://0", ("display", "0", 0, (), "", "display://0")),
]


@pytest.mark.parametrize("text, want", PARSED, ids=[t for t, _ in PARSED])
def test_parse_uri(cwd, text, want):
    scheme, location, index, query, kind, resolved = [w.replace("{cwd}", str(cwd)) if isinstance(w, str) else w
                                                      for w in want]
    u = parse_uri(text)
    assert (u.scheme, u.location, u.index, u.query, u.kind) == (scheme, location, index, query, kind)
    assert u.resolved == str(u) == resolved and u.text == text
    assert parse_uri(str(u)) == u, "the resolved text parses back to the same Uri"


def test_one_camera_four_spellings_and_a_path_object(cwd):
    assert len({parse_uri(t) for t in ("camera0", "/dev/video0", "v4l2://0", "v4l2:///dev/video0")}) == 1
    assert parse_uri(cwd / "images") == parse_uri("images") == parse_uri(f"file://{cwd}/images")
    assert parse_uri("camera0").live and parse_uri("rtsp://h/s").live and not parse_uri("clip.mp4").live
    assert parse_uri("dataset://digits/test?limit=7").limit == 7 and parse_uri("dataset://digits/test").limit == 0
    assert parse_uri("clip.mp4").path == cwd / "clip.mp4" and parse_uri("csi://0").path is None
    with pytest.raises(AttributeError):
        parse_uri("csi://0").index = 1     # frozen: parsed once, never edited


@pytest.mark.parametrize("text, words", [
    ("csi://x", ["csi://x |", "expected csi://N"]),
    ("csi://", ["expected csi://N"]),
    ("csi://²", ["expected csi://N"]),
    ("v4l2://cam", ["v4l2://cam |", "v4l2://N or v4l2:///dev/videoN"]),
    ("display://left", ["expected display://N"]),
    ("dataset://digits", ["expected dataset://NAME/SPLIT[?limit=N]"]),
    ("dataset:///test", ["expected dataset://NAME/SPLIT"]),
    ("dataset://digits/test/more", ["expected dataset://NAME/SPLIT"]),
    ("dataset://digits/test?limt=3", ["unknown query 'limt'", "?limit=N"]),
    ("dataset://digits/test?limit=three", ["limit must be a whole number"]),
    ("dataset://digits/test?limit=-1", ["limit must be a whole number"]),
    ("dataset://digits/test?limit=", ["limit must be a whole number"]),
    ("rtsp://", ["expected rtsp://HOST"]),
    ("http://[::1/x", ["expected http://HOST"]),
    ("ftp://host/x.mp4", ["unknown scheme 'ftp://'", "dataset://"]),
    ("file://", ["expected file:///PATH"]),
    ("", ["empty"]),
])
def test_bad_uris_are_one_line(text, words):
    with pytest.raises(EdgeError) as err:
        parse_uri(text)
    msg = str(err.value)
    assert err.value.exit == Exit.BAD_INPUT and "\n" not in msg
    assert msg.startswith(f"{text} |") or not text
    for w in words:
        assert w in msg, (w, msg)


# --- open_source and open_output dispatch through parse_uri

def test_sources_and_sinks_parse_with_parse_uri(cwd, monkeypatch):
    seen = []

    def spy(text):
        seen.append(text)
        return parse_uri(text)
    monkeypatch.setattr(sources, "parse_uri", spy)
    monkeypatch.setattr(sinks, "parse_uri", spy)
    (cwd / "in.txt").write_text("one\n")
    assert isinstance(open_source("in.txt", text=True), TextSource)
    assert isinstance(open_output("out.avi", 10.0, text=False), VideoOutput)
    assert seen == ["in.txt", "out.avi"], "each argument parsed once, by the one parser"


def test_sources_by_scheme(cwd):
    for i in range(3):
        cv2.imwrite(str(cwd / "images" / f"{i}.png"), np.full((8, 8), 40 * i, np.uint8))
    src = open_source("images")
    assert isinstance(src, ImagesSource) and src.uri == f"file://{cwd}/images"
    assert [f.name for f in src] == ["0.png", "1.png", "2.png"]

    (cwd / "in.txt").write_text("a\n\nb\n")
    src = open_source("in.txt", text=True)
    assert isinstance(src, TextSource) and src.uri == f"file://{cwd}/in.txt" and [f.data for f in src] == ["a", "b"]
    assert isinstance(open_source("-", text=True), TextSource)

    src = open_source("dataset://digits/test?limit=3")
    assert isinstance(src, DatasetSource) and src.uri == "dataset://digits/test?limit=3"
    assert [f.label is not None for f in src] == [True] * 3


@pytest.mark.parametrize("uri, text, code, words", [
    ("camera7", False, Exit.NOT_FOUND, ["camera7 |", "/dev/video7"]),
    ("v4l2://7", False, Exit.NOT_FOUND, ["v4l2://7 |", "/dev/video7"]),
    ("missing.mp4", False, Exit.NOT_FOUND, ["missing.mp4 |", "no such file"]),
    ("notes.md", False, Exit.BAD_INPUT, ["by its suffix"]),
    ("junk.mp4", False, Exit.CORRUPT, ["junk.mp4 |", "cannot open this video"]),
    ("bad.png", False, Exit.CORRUPT, ["bad.png |", "not a readable image"]),
    ("empty", False, Exit.NOT_FOUND, ["empty |", "no image files"]),
    ("-", False, Exit.BAD_INPUT, ["standard input carries text"]),
    ("display://0", False, Exit.BAD_INPUT, ["an output, not an input"]),
    ("dataset://digits/test", True, Exit.BAD_INPUT, ["dataset sources carry images"]),
    ("camera0", True, Exit.BAD_INPUT, ["v4l2:// carries no text"]),
    ("csi://x", False, Exit.BAD_INPUT, ["expected csi://N"]),
])
def test_sources_refuse_in_one_line(cwd, uri, text, code, words):
    if uri in ("notes.md", "junk.mp4", "bad.png"):
        (cwd / uri).write_bytes(b"not what its suffix says" * 10)
    if uri == "empty":
        (cwd / uri).mkdir()
    with pytest.raises(EdgeError) as err:
        open_source(uri, text=text)
    assert err.value.exit == code and "\n" not in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_camera_alias_is_noted(monkeypatch):
    """camera0 -> v4l2:///dev/video0, with the note the CLI prints; the capture itself is faked."""
    class Cap:
        def isOpened(self):
            return True

        def get(self, prop):
            return 0

    exists = pathlib.Path.exists
    monkeypatch.setattr(pathlib.Path, "exists", lambda p: str(p).startswith("/dev/video") or exists(p))
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a: Cap())
    src = open_source("camera0")
    assert src.uri == "v4l2:///dev/video0" and src.live
    assert src.notes == ["camera0 resolved to v4l2:///dev/video0"]
    assert open_source("/dev/video0").notes == []


def test_outputs_by_scheme(cwd, monkeypatch):
    video = open_output("file://out.avi", 10.0, text=False)
    assert isinstance(video, VideoOutput) and video.path == cwd / "out.avi"
    video.close()
    assert not (cwd / "out.avi").exists() and not list(cwd.glob(".*tmp*")), "no frame written: no file"
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(cv2, "namedWindow", lambda *a: None)
    assert isinstance(open_output("display://0", 30.0, text=False), Display)
    sink = JsonLines("frames.jsonl")
    assert sink.path == cwd / "frames.jsonl"
    sink.close()


@pytest.mark.parametrize("uri, text, code, words", [
    ("out.txt", False, Exit.BAD_INPUT, ["out.txt |", "OUTPUT is display://N or a video file"]),
    ("out.webm", False, Exit.BAD_INPUT, ["video output needs one of"]),
    ("nodir/out.avi", False, Exit.NOT_FOUND, ["its directory does not exist"]),
    ("out.avi", True, Exit.BAD_INPUT, ["use --json"]),
    ("display://0", True, Exit.BAD_INPUT, ["no frames to show"]),
    ("display://x", False, Exit.BAD_INPUT, ["expected display://N"]),
    ("-", False, Exit.BAD_INPUT, ["--json FILE"]),
    ("camera0", False, Exit.BAD_INPUT, ["OUTPUT is"]),
])
def test_outputs_refuse_in_one_line(cwd, uri, text, code, words):
    with pytest.raises(EdgeError) as err:
        open_output(uri, 30.0, text)
    assert err.value.exit == code and "\n" not in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_uri_is_a_value():
    assert Uri("csi", "0", 0, text="csi://0") == Uri("csi", "0", 0, text="csi://00")
    assert hash(parse_uri("camera1")) == hash(parse_uri("/dev/video1"))
