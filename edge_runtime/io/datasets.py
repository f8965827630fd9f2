"""Image datasets as numpy arrays, shared by training (edge_model.data) and the `dataset://` source.

The device reads the same files and cuts the same seeded splits as the workstation, so
`dataset://fashion-mnist/test` is exactly the test split the model was scored on. numpy only
(scikit-learn for `digits`, imported when asked for).

  fashion-mnist   the Debian package dataset-fashion-mnist (or a cache made by `edge-model fetch`, or a
                  directory with the four IDX files); test = the official 10k, val = 5k held out of train
  digits          scikit-learn's 8x8 digits scaled to 0..255; a seeded 70/15/15 split
"""
import gzip
import os
from pathlib import Path

import numpy as np

from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.lazy import have, lazy_import

SPLITS = ("train", "val", "test")
FMNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")   # where the Debian package installs
FMNIST_VAL = 5000   # held out of the official 60k training set; the official 10k stay the test set


def cache_dir() -> Path:
    return Path(os.environ.get("EDGE_CACHE", Path.home() / ".cache" / "edge-model"))


def fmnist_search_dirs(data_dir=None) -> list:
    if data_dir is not None:
        return [Path(data_dir)]
    return [FMNIST_SYSTEM_DIR, cache_dir() / "fashion-mnist" / "usr/share/datasets/fashion-mnist"]


def split_indices(n: int, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict:
    """A seeded permutation cut into train/val/test: the same n and seed give the same split."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(round(n * fractions[1])), int(round(n * fractions[2]))
    return {"train": np.sort(perm[n_val + n_test:]), "val": np.sort(perm[:n_val]),
            "test": np.sort(perm[n_val:n_val + n_test])}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or .gz): a big-endian header of dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        ndim = raw[3]
        dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
        data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
        return data.reshape(dims).copy()
    except (OSError, EOFError, ValueError, IndexError) as err:
        raise EdgeError(f"{path} | not a readable IDX file ({err})", Exit.CORRUPT) from None


def find_idx(directory: Path, stem: str):
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def fashion_mnist(data_dir=None, seed: int = 0) -> dict:
    """{split: (images (N, 28, 28) uint8, labels (N,) int64)}."""
    for d in fmnist_search_dirs(data_dir):
        files = {s: [find_idx(d, stem) for stem in stems] for s, stems in FMNIST_FILES.items()}
        if all(p is not None for pair in files.values() for p in pair):
            break
    else:
        where = data_dir or FMNIST_SYSTEM_DIR
        raise EdgeError(f"dataset fashion-mnist | not found in {where}; fetch it with: "
                        "edge-model fetch fashion-mnist", Exit.NOT_FOUND)
    x_tr, y_tr = (read_idx(p) for p in files["train"])
    x_te, y_te = (read_idx(p) for p in files["test"])
    perm = np.random.default_rng(seed).permutation(len(y_tr))
    n_val = min(FMNIST_VAL, len(y_tr) // 10)   # a small --data-dir still keeps most images for training
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return {"train": (x_tr[train], y_tr[train].astype(np.int64)),
            "val": (x_tr[val], y_tr[val].astype(np.int64)),
            "test": (x_te, y_te.astype(np.int64))}


def digits(seed: int = 0) -> dict:
    """{split: (images (N, 8, 8) uint8, labels (N,) int64)}."""
    if not have("sklearn"):   # checked first: pip's name for it (scikit-learn) is not the import's
        raise EdgeError("dataset digits | needs scikit-learn (pip install scikit-learn)", Exit.NOT_FOUND)
    d = lazy_import("sklearn.datasets", why="dataset digits").load_digits()
    # 0..16 grey levels scaled to 0..255 so every image dataset is uint8
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    y = d.target.astype(np.int64)
    return {s: (x[i], y[i]) for s, i in split_indices(len(y), (0.7, 0.15, 0.15), seed).items()}


IMAGE_DATASETS = {"fashion-mnist": (fashion_mnist, FMNIST_LABELS),
                  "digits": (digits, [str(i) for i in range(10)])}


def image_split(name: str, split: str, data_dir=None, seed: int = 0) -> tuple:
    """(images, labels, class names) of one split of a named image dataset."""
    if name not in IMAGE_DATASETS:
        raise EdgeError(f"dataset '{name}' | not an image dataset the runtime reads (known: "
                        f"{', '.join(IMAGE_DATASETS)})", Exit.BAD_INPUT)
    if split not in SPLITS:
        raise EdgeError(f"dataset {name} | no split '{split}' (have: {', '.join(SPLITS)})", Exit.BAD_INPUT)
    loader, labels = IMAGE_DATASETS[name]
    x, y = (loader(data_dir, seed) if name == "fashion-mnist" else loader(seed))[split]
    return x, y, list(labels)
