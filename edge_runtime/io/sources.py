"""Input streams in jetson-inference's URI style. `open_source(uri, options)` -> a Source of Frames, chosen
by the scheme of `parse_uri(uri)` (edge_runtime.io.uri, which lists every spelling):

  dataset://NAME/SPLIT[?limit=N]   a dataset split (edge_runtime.io.datasets), labels known: the embedded default
  csi://N                          a MIPI CSI camera through GStreamer's nvarguscamerasrc (OpenCV with GStreamer)
  /dev/videoN, v4l2://N, cameraN   a V4L2 camera (cameraN is an alias of /dev/videoN; the resolved URI is noted)
  rtsp://... , http(s)://...       a network stream
  FILE.mp4 / .avi / .mkv / ...     a video file
  FILE.png / .jpg / ...            one image;   DIR: every image in it, sorted by name
  FILE.txt, -                      text models: one input per line (standard input for -)

A source's `uri` is the resolved text (file:///abs/clip.mp4, v4l2:///dev/video0); its messages name the
input as the user wrote it. Every frame a source meets is counted: captured ones go on to the pipeline,
the others are dropped with a reason (an unreadable image in a directory, an empty line, a failed read of
a live stream). Live streams reconnect with exponential backoff. A source that cannot start (no such
camera, an unreadable video) is one EdgeError line.
"""
import sys
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.lazy import lazy_import
from edge_runtime.io.uri import IMAGE_SUFFIXES, NETWORK, Uri, parse_uri


@dataclass
class Frame:
    id: int                 # capture order, from 0
    data: object            # an (H, W[, C]) uint8 array, or a string for text models
    timestamp: float        # time.time() at capture
    label: int = None       # the true class when the source knows it (dataset://)
    name: str = ""          # file name or line number, for reports


@dataclass
class SourceOptions:
    width: int = 0          # --input-width: resize frames (cameras: the capture size asked for)
    height: int = 0
    rate: float = 0.0       # --input-rate: frames per second (0: as fast as they come)
    loop: int = 0           # --input-loop: 0 once, N more passes, -1 forever (files, directories, datasets)
    retries: int = 5        # live streams: reconnects before giving up
    backoff: float = 0.5    # first reconnect wait, doubled each time


@dataclass
class Counts:
    captured: int = 0
    dropped: Counter = field(default_factory=Counter)   # reason -> frames

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


def need_cv2():
    """OpenCV, with its own console warnings off: every failure here becomes one EdgeError line."""
    cv2 = lazy_import("cv2", extra="video", why="image and video input and output")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return cv2


class Source(ABC):
    """Iterate to get Frames; `counts` says what was captured and what was dropped, and why."""
    uri = ""                # the resolved text: what the program prints as its input
    live = False
    kind = "image"          # or "text"

    def __init__(self, options: SourceOptions):
        self.options = options
        self.counts = Counts()
        self.notes = []      # things the user should know (a resolved alias, a truncated file)
        self._next_id = 0
        self._last = None

    @abstractmethod
    def items(self):
        """Yield (data, label, name) per captured item; call self.drop(reason) for each one lost."""

    def drop(self, reason: str) -> None:
        self.counts.dropped[reason] += 1

    def passes(self):
        n = self.options.loop
        return iter(int, 1) if n < 0 else range(n + 1)   # iter(int, 1): forever

    def __iter__(self):
        for data, label, name in self.items():
            data = self.resize(data)
            if self.options.rate > 0:
                self.pace()
            frame = Frame(self._next_id, data, time.time(), label, name)
            self._next_id += 1
            self.counts.captured += 1
            yield frame

    def pace(self) -> None:
        """Hold frames to --input-rate (a file or dataset played at camera speed)."""
        now = time.perf_counter()
        if self._last is not None:
            wait = self._last + 1.0 / self.options.rate - now
            if wait > 0:
                time.sleep(wait)
                now += wait
        self._last = now

    def resize(self, data):
        o = self.options
        if self.kind == "text" or not (o.width or o.height) or self.live:
            return data
        from edge_runtime.core.preprocess import resize_area
        h, w = data.shape[:2]
        img = data[:, :, None] if data.ndim == 2 else data
        out = resize_area(img.astype(np.float32), o.height or h, o.width or w)
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out[:, :, 0] if data.ndim == 2 else out

    def close(self) -> None:
        pass


class DatasetSource(Source):
    def __init__(self, uri: Uri, options: SourceOptions):
        from edge_runtime.io.datasets import image_split
        super().__init__(options)
        self.uri = str(uri)
        name, split = uri.location.split("/")
        self.x, self.y, self.labels = image_split(name, split)
        if uri.limit:
            self.x, self.y = self.x[:uri.limit], self.y[:uri.limit]

    def items(self):
        for _ in self.passes():
            for i in range(len(self.y)):
                yield self.x[i], int(self.y[i]), f"{i}"


def read_image(path):
    """An image file as a uint8 array (OpenCV: BGR, or grey for single-channel files); None if unreadable."""
    cv2 = need_cv2()
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        return None
    if img.dtype != np.uint8:   # 16-bit PNG/TIFF
        img = (img.astype(np.float32) * (255.0 / np.iinfo(img.dtype).max)).astype(np.uint8) \
            if img.dtype.kind == "u" else np.clip(img, 0, 255).astype(np.uint8)
    return img


class ImagesSource(Source):
    """One image file, or every image in a directory (sorted). An unreadable one is a counted drop."""

    def __init__(self, uri: Uri, options: SourceOptions):
        super().__init__(options)
        self.uri, path = str(uri), uri.path
        if uri.kind == "directory":
            self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise EdgeError(f"{uri.text} | no image files ({', '.join(IMAGE_SUFFIXES)})", Exit.NOT_FOUND)
        else:
            self.files = [path]
            if read_image(path) is None:
                raise EdgeError(f"{uri.text} | not a readable image", Exit.CORRUPT)

    def items(self):
        for _ in self.passes():
            for f in self.files:
                img = read_image(f)
                if img is None:
                    self.drop("unreadable image")
                    self.notes.append(f"skipped {f.name}: not a readable image")
                    continue
                yield img, None, f.name


class TextSource(Source):
    """One input per line of a text file, or of standard input for '-'. Empty lines are counted drops."""
    kind = "text"

    def __init__(self, uri: Uri, options: SourceOptions):
        super().__init__(options)
        self.uri, self.lines = str(uri), None     # None: standard input
        if uri.scheme == "file":
            if not uri.path.is_file():
                raise EdgeError(f"{uri.text} | no such text file", Exit.NOT_FOUND)
            try:
                self.lines = uri.path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as err:
                raise EdgeError(f"{uri.text} | not UTF-8 text ({err.reason} at byte {err.start})",
                                Exit.CORRUPT) from None

    def items(self):
        if self.lines is None:       # stdin: one pass, as it comes
            for i, line in enumerate(sys.stdin):
                yield from self.line(i, line)
            return
        for _ in self.passes():
            for i, line in enumerate(self.lines):
                yield from self.line(i, line)

    def line(self, i: int, line: str):
        text = line.rstrip("\r\n")
        if not text.strip():
            self.drop("empty line")
            return
        yield text, None, f"line {i + 1}"


def csi_pipeline(sensor: int, width: int, height: int, rate: float) -> str:
    """A GStreamer pipeline from Jetson's nvarguscamerasrc to BGR frames for OpenCV's appsink."""
    w, h, fps = width or 1280, height or 720, int(rate) or 30
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width={w}, height={h}, "
            f"framerate={fps}/1, format=NV12 ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! "
            "video/x-raw, format=BGR ! appsink drop=true max-buffers=1")


class CaptureSource(Source):
    """Anything OpenCV's VideoCapture opens: video files, V4L2 cameras, CSI through GStreamer, RTSP."""

    def __init__(self, uri: Uri, target, options: SourceOptions, backend=None):
        super().__init__(options)
        self.uri, self.live, self.name = str(uri), uri.live, uri.text
        self.target, self.backend = target, backend
        self.cap = self.open_capture()
        if self.cap is None:
            what = "camera" if self.live else "video"
            raise EdgeError(f"{self.name} | cannot open this {what}" + (" (is it connected? ls /dev/video*)"
                            if uri.scheme == "v4l2" else "" if self.live else " (missing, unreadable or not a video)"),
                            Exit.NOT_FOUND if self.live else Exit.CORRUPT)
        self.expected = int(self.cap.get(need_cv2().CAP_PROP_FRAME_COUNT)) if not self.live else 0

    def open_capture(self):
        cv2 = need_cv2()
        cap = cv2.VideoCapture(self.target) if self.backend is None else cv2.VideoCapture(self.target, self.backend)
        if not cap.isOpened():
            return None
        if self.live and isinstance(self.target, int):
            if self.options.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.options.width)
            if self.options.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.options.height)
            if self.options.rate:
                cap.set(cv2.CAP_PROP_FPS, self.options.rate)
        return cap

    def reconnect(self) -> bool:
        """Reopen a live stream after a failed read, waiting backoff, 2 backoff, ... between tries."""
        self.cap.release()
        wait = self.options.backoff
        for attempt in range(1, self.options.retries + 1):
            time.sleep(wait)
            self.cap = self.open_capture()
            if self.cap is not None:
                self.notes.append(f"reconnected after {attempt} attempt(s)")
                return True
            wait *= 2
        self.cap = None
        self.notes.append(f"gave up after {self.options.retries} reconnect attempts")
        return False

    def items(self):
        if not self.live:
            yield from self.file_items()
            return
        while self.cap is not None:
            ok, img = self.cap.read()
            if ok and img is not None:
                yield img, None, ""
                continue
            self.drop("read failed")
            if not self.reconnect():
                return

    def file_items(self):
        cv2 = need_cv2()
        for n in self.passes():
            if n > 0:
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            decoded = 0
            while True:
                ok, img = self.cap.read()
                if not ok or img is None:
                    break
                decoded += 1
                yield img, None, f"{decoded - 1}"
            if decoded == 0:
                raise EdgeError(f"{self.name} | no frame could be decoded (truncated or not a video)", Exit.CORRUPT)
            if self.expected > decoded:
                # the header promised more: count the frames the file lost
                self.counts.dropped["truncated video"] += self.expected - decoded
                self.notes.append(f"{self.name}: the header says {self.expected} frames, {decoded} decoded")

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


def open_camera(uri: Uri, options: SourceOptions) -> Source:
    """A V4L2 camera by index; a spelling that hides the device node (camera0, v4l2://0) gets a note."""
    if not uri.path.exists():
        raise EdgeError(f"{uri.text} | no camera at {uri.location} (ls /dev/video* lists the cameras here)",
                        Exit.NOT_FOUND)
    src = CaptureSource(uri, uri.index, options, backend=need_cv2().CAP_V4L2)
    if uri.location not in uri.text:
        src.notes.append(f"{uri.text} resolved to {uri}")
    return src


def open_csi(uri: Uri, options: SourceOptions) -> Source:
    cv2 = need_cv2()
    if "GStreamer:                   YES" not in cv2.getBuildInformation():
        raise EdgeError(f"{uri.text} | this OpenCV has no GStreamer (JetPack's OpenCV has it; pip's does not)",
                        Exit.NOT_FOUND)
    pipeline = csi_pipeline(uri.index, options.width, options.height, options.rate)
    return CaptureSource(uri, pipeline, options, backend=cv2.CAP_GSTREAMER)


def open_file(uri: Uri, options: SourceOptions) -> Source:
    if not uri.path.exists():
        raise EdgeError(f"{uri.text} | no such file, directory or camera", Exit.NOT_FOUND)
    if uri.kind in ("directory", "image"):
        return ImagesSource(uri, options)
    if uri.kind == "video":
        return CaptureSource(uri, uri.location, options)
    raise EdgeError(f"{uri.text} | not an image, a video or a directory (by its suffix)", Exit.BAD_INPUT)


def open_source(uri: str, options: SourceOptions = SourceOptions(), text: bool = False) -> Source:
    """The Source for `uri`, by its scheme (parse_uri); `text`: the model takes text, so files are read
    line by line."""
    u = parse_uri(uri)
    if text:
        if u.scheme in ("file", "stdio"):
            return TextSource(u, options)
        what = "dataset sources carry images" if u.scheme == "dataset" else f"{u.scheme}:// carries no text"
        raise EdgeError(f"{u.text} | {what}; give a text model a text file or -", Exit.BAD_INPUT)
    if u.scheme == "dataset":
        return DatasetSource(u, options)
    if u.scheme == "v4l2":
        return open_camera(u, options)
    if u.scheme == "csi":
        return open_csi(u, options)
    if u.scheme in NETWORK:
        return CaptureSource(u, u.location, options)
    if u.scheme == "file":
        return open_file(u, options)
    if u.scheme == "stdio":
        raise EdgeError("- | standard input carries text, and this model takes images", Exit.BAD_INPUT)
    raise EdgeError(f"{u.text} | {u.scheme}:// is an output, not an input", Exit.BAD_INPUT)
