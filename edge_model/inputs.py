"""From a dataset split to model inputs. The preprocessing spec written here travels with the
checkpoint and the manifest, so the device repeats it without this code (timm's pretrained cfg idea)."""
import shutil
from pathlib import Path

import numpy as np
import torch

from edge_model.data import Dataset, Split


def image_preprocess(train: Split) -> dict:
    """Per-channel mean/std of the training images on the 0..1 scale."""
    x = train.x.astype(np.float32) / 255.0
    x = x[..., None] if x.ndim == 3 else x
    return {"kind": "image", "height": int(x.shape[1]), "width": int(x.shape[2]), "channels": int(x.shape[3]),
            "scale": 1.0 / 255.0, "mean": x.mean((0, 1, 2)).round(4).tolist(),
            "std": x.std((0, 1, 2)).round(4).tolist(), "layout": "NCHW"}


def text_preprocess(max_len: int) -> dict:
    return {"kind": "text", "tokenizer": "tokenizer.json", "max_len": max_len, "pad_id": 0}


def make_preprocess(dataset: Dataset, arch_cfg) -> dict:
    if dataset.kind == "image":
        return image_preprocess(dataset["train"])
    return text_preprocess(arch_cfg.max_len)


def load_tokenizer(path, max_len: int):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_len)
    return tok


def copy_tokenizer(src_dir: Path, out_dir: Path) -> None:
    shutil.copyfile(Path(src_dir) / "tokenizer.json", Path(out_dir) / "tokenizer.json")


class ImageInputs:
    """A whole split as one normalised float tensor (Fashion-MNIST is 170 MB as float32: fine)."""

    def __init__(self, split: Split, pre: dict):
        x = torch.from_numpy(split.x).float() * pre["scale"]
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)                     # (N, C, H, W)
        mean, std = torch.tensor(pre["mean"])[:, None, None], torch.tensor(pre["std"])[:, None, None]
        self.x, self.y = (x - mean) / std, torch.from_numpy(split.y)

    def __len__(self):
        return len(self.y)

    def batch(self, idx):
        return self.x[idx], None, self.y[idx]

    def batches(self, order, batch_size: int, gen) -> list:
        return [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


class TextInputs:
    """Token ids per text (tokenised once); each batch is padded to its own longest text."""

    def __init__(self, split: Split, tokenizer):
        self.ids = [np.array(e.ids, np.int64) for e in tokenizer.encode_batch(list(split.x))]
        self.y = torch.from_numpy(split.y)

    def __len__(self):
        return len(self.y)

    def batches(self, order, batch_size: int, gen, window: int = 50) -> list:
        """Batches of similar length (sorted within windows of `window` batches), in shuffled order:
        a third fewer padded tokens on tweets than plain random batches."""
        order, out = np.asarray(order), []
        for s in range(0, len(order), window * batch_size):
            chunk = order[s:s + window * batch_size]
            chunk = chunk[np.argsort([len(self.ids[i]) for i in chunk], kind="stable")]
            out += [chunk[i:i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
        perm = torch.randperm(len(out), generator=gen).tolist()
        return [out[i] for i in perm]

    def batch(self, idx):
        rows = [self.ids[i] for i in np.asarray(idx)]
        T = max(len(r) for r in rows)
        ids = np.zeros((len(rows), T), np.int64)
        mask = np.zeros((len(rows), T), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        return torch.from_numpy(ids), torch.from_numpy(mask), self.y[idx]


def make_inputs(dataset: Dataset, split: str, pre: dict, tokenizer_path=None):
    if pre["kind"] == "image":
        return ImageInputs(dataset[split], pre)
    return TextInputs(dataset[split], load_tokenizer(tokenizer_path, pre["max_len"]))


def augment(x, gen: torch.Generator, pad: int = 2):
    """Random translation by up to `pad` pixels and a horizontal flip, per image, batched."""
    B, C, H, W = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=float(x.min()))
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    rows = (dy[:, None] + torch.arange(H)[None])[:, None, :, None].expand(B, C, H, W + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(W)[None])[:, None, None, :].expand(B, C, H, W)
    out = out.gather(3, cols)
    flip = torch.rand(B, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)
