"""Raw inputs -> what segment 0 takes, from the manifest's preprocessing spec (numpy and tokenizers only).

Images: any (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of 0..255 values (uint8 or float), such as a
camera frame in OpenCV's BGR order or a dataset image. Colour becomes grey by ITU-R BT.601 luma when the
model takes one channel; the size becomes the model's by area resampling (each output pixel averages the
input area it covers, so a 640x480 frame shrinks to 28x28 without aliasing); then scale, mean and std.
Text: a string, tokenised by the engine directory's tokenizer.json, truncated to max_len.
Non-finite values and empty inputs are refused in one line (EdgeError, exit BAD_INPUT).
"""
from functools import lru_cache

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit

LUMA_BGR = np.array([0.114, 0.587, 0.299], np.float32)   # OpenCV frames are BGR


@lru_cache(maxsize=16)
def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): row i averages the input interval [i, i + 1) * n_in / n_out (overlaps weighted)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in)[None]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0, None)
    return (overlap / overlap.sum(1, keepdims=True)).astype(np.float32)


def resize_area(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) float32 -> (height, width, C) by area averaging (two small matrix products)."""
    if img.shape[:2] == (height, width):
        return img
    rows, cols = area_weights(img.shape[0], height), area_weights(img.shape[1], width)
    return np.einsum("ih,hwc,jw->ijc", rows, img, cols, optimize=True)


class ImagePreprocess:
    """The manifest's image spec: {height, width, channels, scale, mean, std}; output (N, C, H, W) float32."""

    def __init__(self, spec: dict):
        self.height, self.width, self.channels = int(spec["height"]), int(spec["width"]), int(spec["channels"])
        self.scale = float(spec["scale"])
        self.mean = np.asarray(spec["mean"], np.float32)
        self.std = np.asarray(spec["std"], np.float32)
        # (x * scale - mean) / std as one multiply and one add
        self.gain = (self.scale / self.std).astype(np.float32)
        self.offset = (-self.mean / self.std).astype(np.float32)

    def one(self, img) -> np.ndarray:
        """(C, H, W) float32 from one raw image."""
        x = img if type(img) is np.ndarray else np.asarray(img)
        if x.dtype == object or x.ndim not in (2, 3) or x.size == 0:
            raise EdgeError(f"input | an image is an (H, W) or (H, W, C) array, got shape {x.shape}", Exit.BAD_INPUT)
        if x.dtype != np.uint8:    # uint8 pixels are numbers and finite: the checks are for the rest
            if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
                raise EdgeError(f"input | pixels of dtype {x.dtype} (expected numbers 0..255)", Exit.BAD_INPUT)
            x = x.astype(np.float32, copy=False)
            if not np.isfinite(x).all():
                raise EdgeError("input | the image holds NaN or infinite values", Exit.BAD_INPUT)
        x = x[:, :, None] if x.ndim == 2 else x
        c = x.shape[2]
        if c == 4:
            x, c = x[:, :, :3], 3          # alpha dropped
        if c not in (1, 3):
            raise EdgeError(f"input | {c} channels (expected 1, 3 or 4)", Exit.BAD_INPUT)
        if self.channels == 1 and c == 3:
            x = x @ LUMA_BGR[:, None]
        elif self.channels == 3 and c == 1:
            x = np.repeat(x, 3, 2)
        x = resize_area(x, self.height, self.width)
        x = x * self.gain                     # float32 from here, whatever the pixels were
        x += self.offset
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def batch(self, images) -> dict:
        """{"pixels": (N, C, H, W)} from a sequence of raw images (or an (N, H, W[, C]) array)."""
        if len(images) == 1:
            return {"pixels": self.one(images[0])[None]}
        if len(images) == 0:
            raise EdgeError("input | an empty batch", Exit.BAD_INPUT)
        return {"pixels": np.stack([self.one(im) for im in images])}


class TextPreprocess:
    """The manifest's text spec: {max_len, pad_id} and the engine directory's tokenizer.json."""

    def __init__(self, spec: dict, tokenizer_file):
        from edge_runtime.core.lazy import lazy_import
        tokenizers = lazy_import("tokenizers")
        self.max_len, self.pad_id = int(spec["max_len"]), int(spec.get("pad_id", 0))
        try:
            self.tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        except Exception as err:   # tokenizers raises its own Exception subclass
            raise EdgeError(f"{tokenizer_file} | not a tokenizer ({err})", Exit.CORRUPT) from None
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_len)

    def batch(self, texts) -> dict:
        """{"input_ids", "attention_mask"}: (N, max_len) int64 (the exported graphs are static at max_len)."""
        if len(texts) == 0:
            raise EdgeError("input | an empty batch", Exit.BAD_INPUT)
        for t in texts:
            if not isinstance(t, str):
                raise EdgeError(f"input | a text model takes strings, got {type(t).__name__}", Exit.BAD_INPUT)
            if not t.strip():
                raise EdgeError("input | an empty text", Exit.BAD_INPUT)
        rows = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        ids = np.full((len(rows), self.max_len), self.pad_id, np.int64)
        mask = np.zeros((len(rows), self.max_len), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        return {"input_ids": ids, "attention_mask": mask}


def make_preprocess(engine):
    """The preprocessing of an opened EngineDir."""
    spec = engine.task["preprocess"]
    if spec.get("kind") == "text":
        return TextPreprocess(spec, engine.file(engine.task["tokenizer"]["file"]))
    return ImagePreprocess(spec)
