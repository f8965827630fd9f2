"""Analytic FLOPs of depth d: what FlopCounterMode counts (matmuls and convolutions, 2 per
multiply-add; norms, softmax, GELU and additions are not counted, by either).

Per block on T tokens of width C with MLP width M:
  qkv 6TC^2 + scores and weighted sum 4T^2C + output projection 2TC^2 + MLP 4TCM
Depth d = the stem (ViT) + blocks 1..d + exit head d (2 C classes on the pooled vector).
"""
import torch.nn as nn


def block_flops(T: int, C: int, M: int) -> int:
    return 8 * T * C * C + 4 * T * T * C + 4 * T * C * M


def stem_flops(model) -> int:
    """Convolutions of the ViT stem, from their shapes (the text encoder's embedding is a gather: 0)."""
    stem = getattr(model, "stem", None)
    if stem is None:
        return 0
    total, size = 0, model.cfg.img_size
    for m in stem:
        if isinstance(m, nn.Conv2d):
            size = (size + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1
            total += 2 * m.out_channels * m.in_channels * m.kernel_size[0] * m.kernel_size[1] * size * size
    return total


def tokens_of(model, seq_len=None) -> int:
    return model.tokens if hasattr(model, "tokens") else int(seq_len or model.cfg.max_len)


def model_flops(model, depth=None, seq_len=None) -> int:
    """FLOPs for one input at `depth` (None: full). Text: `seq_len` tokens (default max_len)."""
    k = model.exit_index(depth)
    d = model.exits[k]
    block = model.blocks[0]
    C, M = block.mlp.fc1.in_features, block.mlp.fc1.out_features
    classes = model.heads[k].head.out_features
    return stem_flops(model) + d * block_flops(tokens_of(model, seq_len), C, M) + 2 * C * classes


def counted_flops(model, x, mask=None, depth=None) -> int:
    """FlopCounterMode's count for one forward at `depth`, per input (MATH SDPA so attention counts)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, mask, depth=depth)
    return counter.get_total_flops() // x.shape[0]
