"""Where results go: JSON Lines per frame, a video file with an overlay, a window (display://N).

`open_output(uri, ...)` mirrors `open_source`: it dispatches on the scheme of `parse_uri(uri)`. Files are
written under a temporary name beside the target (edge_runtime.core.files.AtomicFile) and renamed into
place on close, so an interrupted run never leaves a half-written file under the name asked for
(DESIGN.md section 7).
"""
import json
import os
from abc import ABC, abstractmethod

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.files import AtomicFile
from edge_runtime.io.sources import need_cv2
from edge_runtime.io.uri import Uri, parse_uri

FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "MJPG"}
MIN_SIDE = 240     # small dataset frames are scaled up so the overlay can be read


class Sink(ABC):
    @abstractmethod
    def write(self, frame, record: dict) -> None:
        """Take one frame and its record (stream.record_for)."""

    def close(self) -> None:
        pass


def file_target(path) -> Uri:
    """The file an output writes (a path, a file:// URI or its Uri), in a directory that exists."""
    uri = path if isinstance(path, Uri) else parse_uri(path)
    if uri.scheme != "file":
        raise EdgeError(f"{uri.text} | expected a file to write", Exit.BAD_INPUT)
    if not uri.path.parent.is_dir():
        raise EdgeError(f"{uri.text} | its directory does not exist", Exit.NOT_FOUND)
    return uri


class JsonLines(Sink):
    """One JSON object per frame: timestamp, frame id, label, score, depth, FLOPs, per-stage ms, power."""

    def __init__(self, path):
        self.uri = file_target(path)
        self.path = self.uri.path
        self.file = AtomicFile(self.path)
        self.f = open(self.file.tmp, "w", encoding="utf-8")

    def write(self, frame, record: dict) -> None:
        self.f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.f.close()
        self.file.commit()


def overlay(img: np.ndarray, text: str) -> np.ndarray:
    """A BGR copy of `img`, scaled up to MIN_SIDE when smaller, with `text` in a bar at the top."""
    cv2 = need_cv2()
    out = img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    scale = max(1, int(np.ceil(MIN_SIDE / min(out.shape[:2]))))
    if scale > 1:
        out = cv2.resize(out, (out.shape[1] * scale, out.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    out = np.ascontiguousarray(out)
    cv2.rectangle(out, (0, 0), (out.shape[1], 22), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def overlay_text(record: dict) -> str:
    return f"{record['label']} {record['score'] * 100:.0f}%  depth {record['depth']}"


class VideoOutput(Sink):
    """The frames with their overlay, in a video file; written under a temporary name until close()."""

    def __init__(self, path, fps: float):
        self.uri = file_target(path)
        self.path = self.uri.path
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC:
            raise EdgeError(f"{self.uri.text} | video output needs one of {', '.join(FOURCC)}", Exit.BAD_INPUT)
        self.cv2, self.fps, self.fourcc = need_cv2(), fps, FOURCC[suffix]
        self.file, self.writer, self.size = AtomicFile(self.path), None, None

    def write(self, frame, record: dict) -> None:
        img = overlay(frame.data, overlay_text(record))
        if self.writer is None:
            self.size = (img.shape[1], img.shape[0])
            self.writer = self.cv2.VideoWriter(str(self.file.tmp), self.cv2.VideoWriter_fourcc(*self.fourcc),
                                               self.fps, self.size)
            if not self.writer.isOpened():
                raise EdgeError(f"{self.path} | OpenCV cannot write {self.fourcc} video here", Exit.BAD_INPUT)
        if (img.shape[1], img.shape[0]) != self.size:
            img = self.cv2.resize(img, self.size)
        self.writer.write(img)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.file.commit()
        else:
            self.file.discard()   # no frame came: no file (OpenCV may have made an empty one)


class Display(Sink):
    def __init__(self, uri: str):
        self.cv2, self.window = need_cv2(), uri
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            raise EdgeError(f"{uri} | no display here (DISPLAY is unset); run with --headless", Exit.BAD_INPUT)
        try:
            self.cv2.namedWindow(uri, self.cv2.WINDOW_NORMAL)
        except self.cv2.error:
            raise EdgeError(f"{uri} | this OpenCV has no GUI (opencv-python-headless); run with --headless",
                            Exit.BAD_INPUT) from None

    def write(self, frame, record: dict) -> None:
        self.cv2.imshow(self.window, overlay(frame.data, overlay_text(record)))
        self.cv2.waitKey(1)

    def close(self) -> None:
        self.cv2.destroyWindow(self.window)


def open_output(uri: str, fps: float, text: bool) -> Sink:
    """The sink for the OUTPUT argument, by the scheme of parse_uri(uri): display://N or a video file."""
    u = parse_uri(uri)
    if u.scheme == "display":
        if text:
            raise EdgeError(f"{u.text} | a text model has no frames to show", Exit.BAD_INPUT)
        return Display(str(u))
    if u.scheme == "file" and u.kind == "video":
        if text:
            raise EdgeError(f"{u.text} | a text model has no frames to write as video; use --json", Exit.BAD_INPUT)
        return VideoOutput(u, fps)
    if u.scheme == "stdio":
        raise EdgeError("- | standard output carries the console lines; per-frame records go to --json FILE",
                        Exit.BAD_INPUT)
    raise EdgeError(f"{u.text} | OUTPUT is display://N or a video file ({', '.join(FOURCC)}); "
                    "per-frame records go to --json FILE", Exit.BAD_INPUT)
