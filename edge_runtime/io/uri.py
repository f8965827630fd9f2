"""One parser for every INPUT and OUTPUT argument (jetson-utils' URI): `parse_uri(text)` normalises once;
sources, sinks and what the program prints ("input v4l2:///dev/video0") all read its result.

  given                                   scheme    resolved (str(uri))
  camera0, /dev/video0, v4l2://0,         v4l2      v4l2:///dev/video0     one camera, four spellings
    v4l2:///dev/video0
  csi://0                                 csi       csi://0                a MIPI CSI sensor (Jetson)
  rtsp://HOST/...                         rtsp      the URL as given       a network stream; also rtmp://,
                                                                           http(s)://, udp://
  clip.mp4, ./images, file:///x/a.png     file      file:///abs/path       kind: image, video, text by the
                                                                           suffix, or directory
  -                                       stdio     -                      standard input for a source,
                                                                           standard output for a sink
  dataset://NAME/SPLIT[?limit=N]          dataset   dataset://digits/test?limit=3   (limit 0: the whole split)
  display://0                             display   display://0            a window

A file path is taken literally after file:// (no percent-decoding), so str(uri) parses back to the same
Uri. Anything else is one EdgeError line naming the form expected.
"""
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from edge_runtime.core.errors import EdgeError, Exit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".h264", ".264")
TEXT_SUFFIXES = (".txt", ".tsv", ".csv")
NETWORK = ("rtsp", "rtmp", "http", "https", "udp")
CAMERAS = ("v4l2", "csi")
SCHEMES = ("file", "v4l2", "csi") + NETWORK + ("dataset", "display")
DATASET_KEYS = ("limit",)

CAMERA_ALIAS = re.compile(r"(?:camera|/dev/video)([0-9]+)")     # cameraN, /dev/videoN
V4L2_REST = re.compile(r"(?:/dev/video)?([0-9]+)")             # after v4l2://: N or /dev/videoN
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)


@dataclass(frozen=True)
class Uri:
    """A parsed INPUT or OUTPUT. Two Uris are equal when they name the same thing, however spelled."""
    scheme: str             # one of SCHEMES, or "stdio" for -
    location: str           # file: the absolute path; v4l2: /dev/videoN; dataset: NAME/SPLIT;
                            # a network stream: the whole URL; csi, display: N; stdio: -
    index: int = None       # cameras and displays: N
    query: tuple = ()       # ((key, value), ...) in order: dataset's limit, a stream URL's parameters
    kind: str = ""          # file: "image", "video", "text" (by suffix) or "directory"; "" when none fits
    text: str = field(default="", compare=False)   # as the user wrote it, for messages

    @property
    def resolved(self) -> str:
        """The normalised text: what the program prints as the input or output it uses."""
        if self.scheme in ("file", "v4l2"):
            return f"{self.scheme}://{self.location}"
        if self.scheme in ("csi", "display"):
            return f"{self.scheme}://{self.index}"
        if self.scheme == "dataset":
            return f"dataset://{self.location}" + ("?" + "&".join(f"{k}={v}" for k, v in self.query)
                                                   if self.query else "")
        return self.location      # a network URL as given; - for stdio

    def __str__(self) -> str:
        return self.resolved

    @property
    def path(self) -> Path:
        """The file or directory (file://), or the device node (v4l2); None for anything else."""
        return Path(self.location) if self.scheme in ("file", "v4l2") else None

    @property
    def params(self) -> dict:
        return dict(self.query)

    @property
    def live(self) -> bool:
        """A camera or a network stream: frames come at their own pace and cannot be replayed."""
        return self.scheme in CAMERAS + NETWORK

    @property
    def limit(self) -> int:
        """dataset://: the number of inputs asked for, 0 for the whole split."""
        return int(self.params.get("limit", 0))


def _whole(s: str) -> bool:
    """A whole number in ASCII digits (str.isdigit also takes '²', which int() refuses)."""
    return s.isascii() and s.isdigit()


def _bad(text: str, expected: str) -> EdgeError:
    return EdgeError(f"{text} | expected {expected}", Exit.BAD_INPUT)


def _index(text: str, rest: str, expected: str) -> int:
    if not _whole(rest):
        raise _bad(text, expected)
    return int(rest)


def file_kind(path: Path) -> str:
    """What a file path holds, as the sources decide it: a directory first, then the suffix."""
    if path.is_dir():
        return "directory"
    suffix = path.suffix.lower()
    for kind, suffixes in (("image", IMAGE_SUFFIXES), ("video", VIDEO_SUFFIXES), ("text", TEXT_SUFFIXES)):
        if suffix in suffixes:
            return kind
    return ""


def _file(text: str, path: str) -> Uri:
    if not path:
        raise _bad(text, "file:///PATH")
    p = Path(os.path.abspath(path))    # abspath, not resolve(): keep the user's names, symlinks included
    return Uri("file", str(p), kind=file_kind(p), text=text)


def _v4l2(text: str, n: int) -> Uri:
    return Uri("v4l2", f"/dev/video{n}", index=n, text=text)


def _split(url: str, text: str, expected: str):
    try:
        return urlsplit(url)
    except ValueError:    # e.g. an unclosed [ in the host
        raise _bad(text, expected) from None


def _network(text: str, scheme: str) -> Uri:
    expected = f"{scheme}://HOST[:PORT][/PATH]"
    u = _split(text, text, expected)
    if not u.netloc:
        raise _bad(text, expected)
    url = scheme + text[len(scheme):]   # the scheme in lower case, the rest as given
    return Uri(scheme, url, query=tuple(parse_qsl(u.query, keep_blank_values=True)), text=text)


def _dataset(text: str, rest: str) -> Uri:
    expected = "dataset://NAME/SPLIT[?limit=N]"
    u = _split("dataset://" + rest, text, expected)
    name, split = u.netloc, u.path.strip("/")
    if not name or not split or "/" in split or u.fragment:
        raise _bad(text, expected)
    query = parse_qsl(u.query, keep_blank_values=True)
    unknown = [k for k, _ in query if k not in DATASET_KEYS]
    if unknown:
        raise EdgeError(f"{text} | unknown query '{unknown[0]}': expected {expected}", Exit.BAD_INPUT)
    limit = dict(query).get("limit", "0")
    if not _whole(limit):
        raise EdgeError(f"{text} | limit must be a whole number", Exit.BAD_INPUT)
    return Uri("dataset", f"{name}/{split}", query=(("limit", str(int(limit))),) if int(limit) else (), text=text)


def parse_uri(text: str) -> Uri:
    """The Uri of an INPUT or OUTPUT argument (a str or a path); a malformed one is one EdgeError line.

    Relative paths become absolute against the current directory now, once."""
    text = os.fspath(text)
    if not text:
        raise EdgeError("'' | an empty INPUT or OUTPUT: give a file, a directory, a camera (camera0) or "
                        "a URI (dataset://NAME/SPLIT, display://0)", Exit.BAD_INPUT)
    if text == "-":
        return Uri("stdio", "-", text=text)
    m = CAMERA_ALIAS.fullmatch(text)
    if m:
        return _v4l2(text, int(m.group(1)))
    m = SCHEME.fullmatch(text)
    if m is None:                       # no scheme: a path
        return _file(text, text)
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme == "file":
        return _file(text, rest)
    if scheme == "v4l2":
        m = V4L2_REST.fullmatch(rest)
        if m is None:
            raise _bad(text, "v4l2://N or v4l2:///dev/videoN")
        return _v4l2(text, int(m.group(1)))
    if scheme in ("csi", "display"):
        n = _index(text, rest, f"{scheme}://N")
        return Uri(scheme, str(n), index=n, text=text)
    if scheme == "dataset":
        return _dataset(text, rest)
    if scheme in NETWORK:
        return _network(text, scheme)
    raise EdgeError(f"{text} | unknown scheme '{scheme}://' (known: {', '.join(s + '://' for s in SCHEMES)}; "
                    "or a path, or -)", Exit.BAD_INPUT)
