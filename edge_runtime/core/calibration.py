"""Calibration sets: the samples INT8 calibration reads and the validation split a build is scored on.

`calibration/NAME.txt` is the list, readable and diffable; `calibration/NAME.npz` holds the same samples
preprocessed exactly as the device feeds them, so `edge-infer build` needs neither torch nor edge_model:

  # edge-calibration 1
  dataset            digits
  preprocess_sha256  sha256 of the manifest's task.preprocess (canonical JSON): the set fits one model family
  method             minmax | entropy | percentile (the default; `edge-infer build --calib-method` overrides)
  calib_split        train
  calib_seed         0
  calib_indices      12 57 80 ...   (indices into the seeded split of edge_model.data)
  val_split          val
  val_samples        270            (the whole split, in order)
  data               NAME.npz
  data_sha256        its sha256: the list and the arrays travel together
  torch_param_sha256 the checkpoint whose predictions val_torch_pred holds (param digest; optional in
                     older lists): a build refuses engines exported from another checkpoint

NAME.npz: calib_<input> and val_<input> for every input of segment 0 (pixels, or input_ids and
attention_mask padded to max_len), val_labels, calib_indices, and val_torch_pred (val rows, exits): the
PyTorch checkpoint's argmax at every exit, so a build reports its agreement with PyTorch without torch.

The calibration cache (ORT's per-tensor ranges, JSON) is written beside the list, one file per segment,
named by a key over the segment's sha256, the data's sha256, the method and the quantizer's settings:
a changed graph or sample set never reads a stale cache.

The set is written on the workstation (edge_model.calibration_set, which needs torch):
    edge-model calibration-set --checkpoint checkpoints/fmnist-vit-demo --name fmnist-vit-demo
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit

FORMAT = "# edge-calibration 1"
METHODS = ("minmax", "entropy", "percentile")
DEFAULT_DIR = Path("calibration")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def preprocess_digest(preprocess: dict) -> str:
    """sha256 of the preprocessing spec as canonical JSON: equal digests, equal device inputs."""
    return sha256_bytes(json.dumps(preprocess, sort_keys=True, separators=(",", ":")).encode())


@dataclass
class CalibrationSet:
    """A parsed calibration/NAME.txt. `arrays()` loads and checks its .npz."""
    path: Path
    dataset: str
    preprocess_sha256: str
    method: str
    calib_split: str
    calib_seed: int
    calib_indices: list
    val_split: str
    val_samples: int
    data: str
    data_sha256: str
    torch_param_sha256: str = ""

    @property
    def data_path(self) -> Path:
        return self.path.parent / self.data

    def check_fits(self, manifest: dict) -> None:
        """Refuse a set made for another dataset or another preprocessing than the engine directory's."""
        task = manifest["task"]
        if self.dataset != task["dataset"]:
            raise EdgeError(f"{self.path} | made for dataset {self.dataset}, the engines are for {task['dataset']}",
                            Exit.BAD_INPUT)
        if self.preprocess_sha256 != preprocess_digest(task["preprocess"]):
            raise EdgeError(f"{self.path} | made for another preprocessing than the engines' task.preprocess "
                            f"(make it again from the checkpoint these engines came from)", Exit.BAD_INPUT)
        engine = manifest.get("provenance", {}).get("param_sha256", "")
        if self.torch_param_sha256 and engine and self.torch_param_sha256 != engine:
            raise EdgeError(f"{self.path} | its PyTorch predictions come from another checkpoint (param sha256 "
                            f"{self.torch_param_sha256[:8]}…, the engines' {engine[:8]}…): write it again with "
                            f"edge-model calibration-set --checkpoint DIR", Exit.BAD_INPUT)

    def arrays(self, inputs: list) -> dict:
        """{calib: {name: array}, val: {name: array}, val_labels, val_torch_pred}, checked against `inputs`
        (segment 0's I/O spec) and the list's hash and counts."""
        from edge_runtime.core.chain import check_feed
        from edge_runtime.core.engine_dir import GraphSpec, sha256_file
        path = self.data_path
        if not path.is_file():
            raise EdgeError(f"{path} | missing (named by {self.path.name}; write both with: edge-model "
                            f"calibration-set --checkpoint DIR)", Exit.NOT_FOUND)
        got = sha256_file(path)
        if got != self.data_sha256:
            raise EdgeError(f"{path.name} | sha256 mismatch ({self.path.name} {self.data_sha256[:8]}…, file "
                            f"{got[:8]}…)", Exit.CORRUPT)
        try:
            with np.load(path) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise EdgeError(f"{path.name} | not a calibration set ({err})", Exit.CORRUPT) from None
        spec = GraphSpec("segment_0", path, inputs, [])
        out = {}
        for part in ("calib", "val"):
            feed = {}
            for i in inputs:
                key = f"{part}_{i['name']}"
                if key not in data:
                    raise EdgeError(f"{path.name} | no '{key}' array", Exit.CORRUPT)
                feed[i["name"]] = data[key]
            try:
                check_feed("segment_0", spec, feed)
            except EdgeError as err:
                raise EdgeError(f"{path.name} | {part}: {err}", Exit.CORRUPT) from None
            out[part] = feed
        for key in ("val_labels", "val_torch_pred"):
            if key not in data:
                raise EdgeError(f"{path.name} | no '{key}' array", Exit.CORRUPT)
        n_calib, n_val = len(next(iter(out["calib"].values()))), len(next(iter(out["val"].values())))
        if n_calib != len(self.calib_indices) or n_val != self.val_samples or len(data["val_labels"]) != n_val \
                or len(data["val_torch_pred"]) != n_val:
            raise EdgeError(f"{path.name} | holds {n_calib} calibration and {n_val} validation rows, "
                            f"{self.path.name} lists {len(self.calib_indices)} and {self.val_samples}", Exit.CORRUPT)
        out["val_labels"], out["val_torch_pred"] = data["val_labels"], data["val_torch_pred"]
        return out


FIELDS = {"dataset": str, "preprocess_sha256": str, "method": str, "calib_split": str, "calib_seed": int,
          "calib_indices": list, "val_split": str, "val_samples": int, "data": str, "data_sha256": str,
          "torch_param_sha256": str}
OPTIONAL = ("torch_param_sha256",)


def read_calibration(path) -> CalibrationSet:
    """Parse calibration/NAME.txt; every problem is one EdgeError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"{path} | missing: no calibration list (write one on the workstation: edge-model "
                        f"calibration-set --checkpoint DIR --name NAME)", Exit.NOT_FOUND)
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip() != FORMAT:
        raise EdgeError(f"{path} | not a calibration list (its first line must be '{FORMAT}')", Exit.CORRUPT)
    values = {}
    for n, line in enumerate(lines[1:], 2):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, value = line.partition(" ")
        if key not in FIELDS:
            raise EdgeError(f"{path}:{n} | unknown field '{key}' (fields: {', '.join(FIELDS)})", Exit.CORRUPT)
        value = value.strip()
        try:
            values[key] = ([int(v) for v in value.split()] if FIELDS[key] is list
                           else int(value) if FIELDS[key] is int else value)
        except ValueError:
            raise EdgeError(f"{path}:{n} | {key} '{value[:40]}' is not {FIELDS[key].__name__}", Exit.CORRUPT) from None
    missing = [k for k in FIELDS if k not in values and k not in OPTIONAL]
    if missing:
        raise EdgeError(f"{path} | no '{missing[0]}' line", Exit.CORRUPT)
    if values["method"] not in METHODS:
        raise EdgeError(f"{path} | method '{values['method']}', expected one of: {', '.join(METHODS)}", Exit.CORRUPT)
    if "/" in values["data"] or "\\" in values["data"] or values["data"] in ("", ".", ".."):
        raise EdgeError(f"{path} | data '{values['data']}' must be a file name beside the list", Exit.CORRUPT)
    if not values["calib_indices"]:
        raise EdgeError(f"{path} | calib_indices is empty", Exit.CORRUPT)
    return CalibrationSet(path, **values)


class ChainReader:
    """ONNX Runtime's CalibrationDataReader (duck-typed: get_next, rewind) over one segment's feeds."""

    def __init__(self, feed: dict, batch: int):
        """Args:
            feed: {input name: (N, ...) array}: the segment's inputs for every calibration sample.
            batch: rows per calibration batch.
        """
        self.feed, self.batch = feed, batch
        self.rows = len(next(iter(feed.values())))
        self.start = 0

    def get_next(self):
        if self.start >= self.rows:
            return None
        s = slice(self.start, self.start + self.batch)
        self.start += self.batch
        return {k: np.ascontiguousarray(v[s]) for k, v in self.feed.items()}

    def rewind(self) -> None:
        self.start = 0


def cache_path(calib: CalibrationSet, method: str, segment: dict, settings: dict) -> Path:
    """calibration/NAME.METHOD.segment_K.KEY.json: the key covers everything the ranges depend on."""
    key = sha256_bytes(json.dumps({"segment": segment["sha256"], "data": calib.data_sha256, "method": method,
                                   **settings}, sort_keys=True).encode())[:12]
    return calib.path.parent / f"{calib.path.stem}.{method}.segment_{segment['index']}.{key}.json"
