"""Image datasets: Fashion-MNIST (Debian package), scikit-learn digits, ImageFolder."""
import gzip
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edge_model.data import Dataset, Split, split_indices, take
from edge_runtime.errors import EdgeError, Exit

FMNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")   # where the Debian package installs
FMNIST_VAL = 5000   # held out of the official 60k training set; the official 10k stay the test set
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")


def cache_dir() -> Path:
    return Path(os.environ.get("EDGE_CACHE", Path.home() / ".cache" / "edge-model"))


def fmnist_search_dirs(data_dir=None) -> list:
    if data_dir is not None:
        return [Path(data_dir)]
    return [FMNIST_SYSTEM_DIR, cache_dir() / "fashion-mnist" / "usr/share/datasets/fashion-mnist"]


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


def fashion_mnist(data_dir=None, seed: int = 0) -> Dataset:
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
    splits = {"train": Split(x_tr[train], y_tr[train].astype(np.int64)),
              "val": Split(x_tr[val], y_tr[val].astype(np.int64)),
              "test": Split(x_te, y_te.astype(np.int64))}
    return Dataset("fashion-mnist", "image", list(FMNIST_LABELS), splits)


def fetch_fashion_mnist() -> Path:
    """Install the Debian package when root; otherwise apt-get download + dpkg -x into the cache."""
    if find_idx(FMNIST_SYSTEM_DIR, FMNIST_FILES["test"][0]):
        return FMNIST_SYSTEM_DIR
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd = ["apt-get", "install", "-y", "dataset-fashion-mnist"]
        if subprocess.run(cmd).returncode != 0:
            subprocess.run(["apt-get", "update"], check=False)
            if subprocess.run(cmd).returncode != 0:
                raise EdgeError("dataset fashion-mnist | apt-get install dataset-fashion-mnist failed",
                                Exit.NOT_FOUND)
        return FMNIST_SYSTEM_DIR
    target = cache_dir() / "fashion-mnist"
    with tempfile.TemporaryDirectory() as tmp:
        if subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp).returncode != 0:
            raise EdgeError("dataset fashion-mnist | apt-get download failed (try: sudo apt-get update)",
                            Exit.NOT_FOUND)
        deb = next(Path(tmp).glob("*.deb"))
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(["dpkg", "-x", str(deb), str(target)], check=True)
    return target / "usr/share/datasets/fashion-mnist"


def digits(seed: int = 0) -> Dataset:
    from sklearn.datasets import load_digits
    d = load_digits()
    # 0..16 grey levels scaled to 0..255 so every image dataset is uint8
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    y = d.target.astype(np.int64)
    idx = split_indices(len(y), (0.7, 0.15, 0.15), seed)
    return Dataset("digits", "image", [str(i) for i in range(10)],
                   {s: Split(x[i], y[i]) for s, i in idx.items()})


def image_folder(root: str, seed: int = 0, size=None) -> Dataset:
    """root/<class>/<image>: a folder per class, class order sorted; all images resized to the first's size."""
    from PIL import Image
    root = Path(root)
    if not root.is_dir():
        raise EdgeError(f"dataset imagefolder:{root} | not a directory", Exit.NOT_FOUND)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise EdgeError(f"dataset imagefolder:{root} | no images in class folders", Exit.NOT_FOUND)
    arrays, ys = [], []
    for f, c in files:
        try:
            img = Image.open(f).convert("RGB")
        except OSError as err:
            raise EdgeError(f"{f} | unreadable image ({err})", Exit.CORRUPT) from None
        size = size or img.size
        arrays.append(np.asarray(img.resize(size)))
        ys.append(c)
    x, y = np.stack(arrays), np.array(ys, np.int64)
    idx = split_indices(len(y), seed=seed)
    return Dataset(f"imagefolder:{root}", "image", classes,
                   {s: Split(take(x, i), y[i]) for s, i in idx.items()})
