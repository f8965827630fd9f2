"""Image datasets: Fashion-MNIST (Debian package), scikit-learn digits, ImageFolder."""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edge_model.data import Dataset, Split, split_indices, take
from edge_runtime.io import datasets
from edge_runtime.io.datasets import FMNIST_FILES, FMNIST_LABELS, FMNIST_SYSTEM_DIR, cache_dir, find_idx
from edge_runtime.core.errors import EdgeError, Exit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")


def fashion_mnist(data_dir=None, seed: int = 0) -> Dataset:
    arrays = datasets.fashion_mnist(data_dir, seed)
    return Dataset("fashion-mnist", "image", list(FMNIST_LABELS), {s: Split(*xy) for s, xy in arrays.items()})


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
    arrays = datasets.digits(seed)
    return Dataset("digits", "image", [str(i) for i in range(10)], {s: Split(*xy) for s, xy in arrays.items()})


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
