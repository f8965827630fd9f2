"""Controller features, one definition for both sides: the workstation computes them from the exit
cache to fit the controller, the device from segment 0's outputs (its C kernels, edge_runtime._kernels,
tested equal to `from_segment_0` here). numpy only.

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
    """(..., 3) max probability, margin, normalised entropy of (..., classes) logits.

    Written for few numpy calls: the device runs it once per input per boundary, where each call's
    fixed overhead (about a microsecond) costs more than the arithmetic on ten numbers."""
    z = logits.astype(np.float64)
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    total = e.sum(-1, keepdims=True)
    top2 = np.partition(e, -2, axis=-1)[..., -2:] / total
    log_p = z - np.log(total)                                   # exact log-softmax: no clipping needed
    out = np.empty(logits.shape[:-1] + (3,), np.float32)
    out[..., 0] = top2[..., 1]
    out[..., 1] = top2[..., 1] - top2[..., 0]
    out[..., 2] = -(e * log_p).sum(-1) / (total[..., 0] * np.log(logits.shape[-1]))
    return out


def image_stats(x: np.ndarray) -> np.ndarray:
    """(N, 3) from preprocessed (N, C, H, W) images."""
    x = x.astype(np.float32, copy=False)
    n = len(x)
    flat = x.reshape(n, -1)                 # reductions over one contiguous axis: several times faster
    out = np.empty((n, 3), np.float32)
    out[:, 0] = flat.mean(1)
    dev = flat - out[:, :1]
    out[:, 1] = np.sqrt((dev * dev).mean(1))
    out[:, 2] = (np.abs(x[..., 1:] - x[..., :-1]).reshape(n, -1).mean(1)
                 + np.abs(x[..., 1:, :] - x[..., :-1, :]).reshape(n, -1).mean(1))
    return out


def text_stats(mask: np.ndarray, max_len: int) -> np.ndarray:
    """(N, 3) from the (N, T) attention mask: the token count scaled by max_len, then zeros."""
    out = np.zeros((len(mask), INPUT_STATS), np.float32)
    out[:, 0] = mask.sum(-1) / float(max_len)
    return out


def controller_features(stats: np.ndarray, first_conf: np.ndarray, projected: np.ndarray) -> np.ndarray:
    """(N, 3 + 3 + P) float32: input statistics, first-exit confidence (`confidence` of its logits),
    projected first-exit vector."""
    return np.concatenate([stats, first_conf, projected], -1).astype(np.float32, copy=False)


def from_segment_0(x: np.ndarray, mask, hidden: np.ndarray, logits: np.ndarray, projection, max_len: int = 0):
    """(N, 6 + P) the controller's features from segment 0's feed and outputs, as the device computes them.

    Args:
        x: the preprocessed images (N, C, H, W), or for text the input ids (then `mask` is given).
        mask: the (N, T) attention mask (text), or None.
        hidden, logits: segment 0's hidden_out (N, T, C) and logits (N, classes).
        projection: the engine directory's Projection (edge_runtime.core.engine_dir).
        max_len: the text models' token count (the stats' scale).
    """
    stats = image_stats(x) if mask is None else text_stats(mask, max_len)
    return controller_features(stats, confidence(logits), projection(hidden, mask))
