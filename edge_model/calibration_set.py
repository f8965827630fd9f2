"""The workstation half of INT8 calibration: pick samples from a checkpoint's dataset and write
calibration/NAME.txt (the list) and NAME.npz (the inputs as the device feeds them), which
edge_runtime.core.calibration reads on the device without torch. CLI: `edge-model calibration-set`."""
import os
from pathlib import Path

import numpy as np
import torch

from edge_runtime.core.calibration import DEFAULT_DIR, FORMAT, METHODS, preprocess_digest
from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.files import atomic_path, sha256_file, write_atomic


def write_calibration_set(ckpt_dir, name: str = None, out_dir=DEFAULT_DIR, samples: int = 256,
                          split: str = "train", seed: int = 0, method: str = "minmax", val_split: str = "val",
                          data_dir=None) -> Path:
    """Pick calibration samples from a checkpoint's dataset and write calibration/NAME.txt + NAME.npz.

    Args:
        ckpt_dir: the trained checkpoint the engines were exported from.
        name: the set's name (default: the checkpoint's preset); the build looks for calibration/<engine name>.txt.
        out_dir: where the list, its arrays and later its caches live.
        samples: calibration samples, drawn without replacement from `split` with `seed`.
        split: the split calibration draws from (train: never the split accuracy is reported on).
        seed: the draw's seed.
        method: the default calibration method written into the list.
        val_split: the split every build is scored on, whole.
        data_dir: Fashion-MNIST IDX files, when not from the Debian package.
    Returns:
        The path of the list.
    """
    from edge_model.checkpoint import load_checkpoint, tokenizer_path
    from edge_model.data import load_dataset
    from edge_model.export import input_names
    from edge_model.inputs import make_inputs
    if method not in METHODS:
        raise EdgeError(f"--method {method} | expected one of: {', '.join(METHODS)}", Exit.BAD_INPUT)
    if split == val_split:
        raise EdgeError(f"--split {split} | calibration must not draw from the validation split", Exit.BAD_INPUT)
    model, config = load_checkpoint(ckpt_dir)
    task = config["task"]
    name = name or config.get("preset") or Path(ckpt_dir).name
    data = load_dataset(task["dataset"], data_dir)
    text = task["kind"] == "text"
    names = input_names(0, text)

    def device_inputs(part: str, idx: np.ndarray):
        """(inputs as the device feeds them, labels, PyTorch argmax per exit) of rows `idx` of `part`."""
        inputs = make_inputs(data, part, task["preprocess"], tokenizer_path(ckpt_dir, config))
        arrays, labels, preds = [], [], []
        for s in range(0, len(idx), 256):
            x, mask, y = inputs.batch(idx[s:s + 256])
            if mask is not None:   # the graphs are static at max_len tokens: pad every row to it
                T = task["preprocess"]["max_len"]
                ids, m = torch.zeros(len(y), T, dtype=torch.int64), torch.zeros(len(y), T, dtype=torch.int64)
                ids[:, :x.shape[1]], m[:, :x.shape[1]] = x, mask
                x, mask = ids, m
            with torch.no_grad():
                logits = torch.stack(model.forward_exits(x, mask), 1)             # (B, exits, classes)
            arrays.append([x.numpy()] + ([mask.numpy()] if text else []))
            labels.append(y.numpy())
            preds.append(logits.argmax(-1).numpy())
        feed = {n: np.concatenate([a[i] for a in arrays]) for i, n in enumerate(names)}
        return feed, np.concatenate(labels), np.concatenate(preds)

    n_split = len(data[split])
    if not 0 < samples <= n_split:
        raise EdgeError(f"--samples {samples} | must be 1..{n_split} (the {split} split)", Exit.BAD_INPUT)
    calib_idx = np.sort(np.random.default_rng(seed).choice(n_split, samples, replace=False))
    calib, _, _ = device_inputs(split, calib_idx)
    val, val_labels, val_pred = device_inputs(val_split, np.arange(len(data[val_split])))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    npz, txt = out / f"{name}.npz", out / f"{name}.txt"
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as f:   # np.savez appends .npz to a bare path: write through a file object
            np.savez_compressed(f, calib_indices=calib_idx, val_labels=val_labels, val_torch_pred=val_pred,
                                **{f"calib_{k}": v for k, v in calib.items()},
                                **{f"val_{k}": v for k, v in val.items()})
        digest = sha256_file(tmp)
    lines = [FORMAT, f"# written by edge-model calibration-set from {os.path.relpath(Path(ckpt_dir).resolve())}",
             f"dataset {task['dataset']}", f"preprocess_sha256 {preprocess_digest(task['preprocess'])}",
             f"method {method}", f"calib_split {split}", f"calib_seed {seed}",
             "calib_indices " + " ".join(map(str, calib_idx.tolist())), f"val_split {val_split}",
             f"val_samples {len(val_labels)}", f"data {npz.name}", f"data_sha256 {digest}",
             f"torch_param_sha256 {config['param_sha256']}"]
    write_atomic(txt, "\n".join(lines) + "\n")
    return txt
