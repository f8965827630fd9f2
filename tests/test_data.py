"""Datasets: deterministic, disjoint splits; a missing dataset names the command that fetches it."""
import csv
import gzip
import struct

import numpy as np
import pytest

from edge_model.data import SPLITS, load_dataset
from edge_runtime.io.datasets import FMNIST_FILES, FMNIST_VAL
from edge_runtime.core.errors import EdgeError, Exit


def test_digits_splits_are_deterministic_disjoint_and_sized():
    a, b = load_dataset("digits"), load_dataset("digits")
    for s in SPLITS:
        np.testing.assert_array_equal(a[s].x, b[s].x)
        np.testing.assert_array_equal(a[s].y, b[s].y)
        assert a[s].x.dtype == np.uint8 and a[s].y.dtype == np.int64 and a[s].x.shape[1:] == (8, 8)
    assert [len(a[s]) for s in SPLITS] == [1257, 270, 270]      # 1797 at 70/15/15
    # disjoint and covering: the three splits together are the whole set, each sample exactly once
    from sklearn.datasets import load_digits
    full = load_digits()
    whole = np.round(full.images * (255.0 / 16.0)).astype(np.uint8)
    key = lambda xs, ys: sorted(r.tobytes() + bytes([int(y)]) for r, y in zip(xs, ys))   # noqa: E731
    got = key(np.concatenate([a[s].x for s in SPLITS]), np.concatenate([a[s].y for s in SPLITS]))
    assert got == key(whole, full.target)
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(other["test"].y, a["test"].y)     # the seed does move the split
    assert a.labels == [str(i) for i in range(10)] and set(a["train"].y) == set(range(10))


def test_split_indices_disjoint_and_cover():
    from edge_model.data import split_indices
    idx = split_indices(101, (0.8, 0.1, 0.1), seed=3)
    allidx = np.concatenate([idx[s] for s in SPLITS])
    assert sorted(allidx.tolist()) == list(range(101))
    assert [len(idx[s]) for s in SPLITS] == [81, 10, 10]


@pytest.fixture(scope="module")
def tweets():
    return load_dataset("tweets")


def test_tweets_splits(tweets):
    texts = {s: tweets[s].x for s in SPLITS}
    for s in SPLITS:
        assert len(set(texts[s])) == len(texts[s]), f"duplicate texts in {s}"
        assert len(texts[s]) == len(tweets[s].y)
    for i, s in enumerate(SPLITS):
        for t in SPLITS[i + 1:]:
            assert not set(texts[s]) & set(texts[t]), f"a text in both {s} and {t}"
    assert len(tweets["test"]) >= 3500
    assert tweets.labels == ["negative", "neutral", "positive"]
    assert set(tweets["test"].y.tolist()) == {0, 1, 2}
    again = load_dataset("tweets")
    assert again["val"].x == tweets["val"].x


def test_tweets_binary_has_two_labels():
    d = load_dataset("tweets-binary")
    assert d.labels == ["negative", "positive"]
    for s in SPLITS:
        assert set(d[s].y.tolist()) == {0, 1}
    assert not set(d["train"].x) & set(d["test"].x)


def test_bbc_news_labels():
    d = load_dataset("bbc-news")
    assert len(d.labels) == 5 and d.labels == sorted(d.labels)
    assert set(d["test"].y.tolist()) == set(range(5))
    assert not set(d["train"].x) & set(d["test"].x)


# --- Fashion-MNIST from IDX files written here, in the real format ---

def idx_bytes(a: np.ndarray) -> bytes:
    """IDX: two zero bytes, type 0x08 (ubyte), ndim; then each dim as a big-endian u32; then the data."""
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def write_fmnist(d, n_train, n_test, gz: bool, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"train": (rng.integers(0, 256, (n_train, 4, 4), dtype=np.uint8), rng.integers(0, 10, n_train)),
              "test": (rng.integers(0, 256, (n_test, 4, 4), dtype=np.uint8), rng.integers(0, 10, n_test))}
    for split, (img_name, lab_name) in FMNIST_FILES.items():
        for name, a in zip((img_name, lab_name), arrays[split]):
            data = idx_bytes(np.asarray(a))
            if gz:
                with gzip.open(d / (name + ".gz"), "wb") as f:
                    f.write(data)
            else:
                (d / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_fashion_mnist_from_data_dir(tmp_path, gz):
    n_train = 300   # a small folder: a tenth goes to validation (the full set holds out FMNIST_VAL)
    arrays = write_fmnist(tmp_path, n_train, 25, gz)
    d = load_dataset("fashion-mnist", data_dir=tmp_path)
    (x_tr, y_tr), (x_te, y_te) = arrays["train"], arrays["test"]
    np.testing.assert_array_equal(d["test"].x, x_te)
    np.testing.assert_array_equal(d["test"].y, y_te)
    assert [len(d[s]) for s in SPLITS] == [270, 30, 25]
    assert d["train"].y.dtype == np.int64 and d["train"].x.shape[1:] == (4, 4)
    # train + val are the official training set, each image once
    got = sorted(r.tobytes() + bytes([int(y)]) for s in ("train", "val") for r, y in zip(d[s].x, d[s].y))
    want = sorted(r.tobytes() + bytes([int(y)]) for r, y in zip(x_tr, y_tr))
    assert got == want
    again = load_dataset("fashion-mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(again["val"].x, d["val"].x)
    assert len(d.labels) == 10


def test_fashion_mnist_truncated_idx_is_corrupt(tmp_path):
    write_fmnist(tmp_path, FMNIST_VAL + 1, 3, gz=False)
    f = tmp_path / FMNIST_FILES["test"][0]
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(EdgeError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert err.value.exit == Exit.CORRUPT


def test_fashion_mnist_missing_names_fetch(tmp_path):
    with pytest.raises(EdgeError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert err.value.exit == Exit.NOT_FOUND
    assert "edge-model fetch fashion-mnist" in str(err.value)
    assert "\n" not in str(err.value)


def test_csv_loader(tmp_path):
    path = tmp_path / "reviews.csv"
    rows = [(f"text number {i}", ["spam", "ham", "eggs"][i % 3]) for i in range(50)]
    rows += [("text number 1", "ham"),            # a duplicate with the same label: kept once
             ("conflict", "spam"), ("conflict", "ham")]   # copies that disagree: dropped
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        for i, (t, lab) in enumerate(rows):
            w.writerow([i, t, lab])
    d = load_dataset(f"csv:{path}")
    assert d.kind == "text" and d.labels == ["eggs", "ham", "spam"]
    assert [len(d[s]) for s in SPLITS] == [40, 5, 5]
    texts = [t for s in SPLITS for t in d[s].x]
    assert sorted(texts) == sorted(f"text number {i}" for i in range(50))
    for s in SPLITS:
        for t, y in zip(d[s].x, d[s].y):
            assert d.labels[y] == ["spam", "ham", "eggs"][int(t.split()[-1]) % 3]


def test_csv_loader_errors(tmp_path):
    with pytest.raises(EdgeError) as err:
        load_dataset(f"csv:{tmp_path / 'absent.csv'}")
    assert err.value.exit == Exit.NOT_FOUND
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,class\nhello,a\n")
    with pytest.raises(EdgeError) as err:
        load_dataset(f"csv:{bad}")
    assert err.value.exit == Exit.BAD_INPUT and "'text' and 'label'" in str(err.value)


def test_unknown_dataset():
    with pytest.raises(EdgeError) as err:
        load_dataset("mnist-but-not-quite")
    assert err.value.exit == Exit.BAD_INPUT
    assert "mnist-but-not-quite" in str(err.value) and "digits" in str(err.value)


def test_missing_split_is_a_user_error():
    with pytest.raises(EdgeError, match="no split 'dev'"):
        load_dataset("digits")["dev"]
