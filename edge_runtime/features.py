"""Controller features, one definition for both sides: the workstation computes them from the exit
cache to fit the controller, the device from live tensors. numpy only.

Per input, in this order (cost on one CPU core, measured per sample in the controller report):
  input statistics   image: mean, std, edge energy (mean |dx| + |dy|) of the preprocessed pixels;
                     text: token count / max_len, padded to three columns with zeros
                     (one pass over the input: O(pixels) or O(1))
  first-exit view    max probability, top-1 minus top-2 margin, entropy / log(classes)
                     (one softmax over the first exit's logits: O(classes))
  projected          the first exit's normalised pooled vector times a saved (width, P) projection
                     (PCA fitted on the training split; O(width * P))
"""
import numpy as np

INPUT_STATS = 3
CONFIDENCE = ("max_prob", "margin", "entropy")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def confidence(logits: np.ndarray) -> np.ndarray:
    """(..., 3) max probability, margin, normalised entropy of (..., classes) logits."""
    p = softmax(logits.astype(np.float64))
    top2 = np.sort(p, -1)[..., -2:]
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(-1) / np.log(p.shape[-1])
    return np.stack([top2[..., 1], top2[..., 1] - top2[..., 0], entropy], -1).astype(np.float32)


def image_stats(x: np.ndarray) -> np.ndarray:
    """(N, 3) from preprocessed (N, C, H, W) images."""
    x = x.astype(np.float32)
    edges = np.abs(np.diff(x, axis=-1)).mean((1, 2, 3)) + np.abs(np.diff(x, axis=-2)).mean((1, 2, 3))
    return np.stack([x.mean((1, 2, 3)), x.std((1, 2, 3)), edges], -1).astype(np.float32)


def text_stats(mask: np.ndarray, max_len: int) -> np.ndarray:
    """(N, 3) from the (N, T) attention mask: the token count scaled by max_len, then zeros."""
    out = np.zeros((len(mask), INPUT_STATS), np.float32)
    out[:, 0] = mask.sum(-1) / float(max_len)
    return out


def controller_features(stats: np.ndarray, first_logits: np.ndarray, projected: np.ndarray) -> np.ndarray:
    """(N, 3 + 3 + P) float32: input statistics, first-exit confidence, projected first-exit vector."""
    return np.concatenate([stats, confidence(first_logits), projected], -1).astype(np.float32)
