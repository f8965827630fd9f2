"""AdaptiveViT: a pre-LN vision transformer with a convolutional stem and exits."""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from edge_model.models.adaptive import AdaptiveBackbone
from edge_runtime.core.errors import EdgeError


@dataclass
class ViTConfig:
    img_size: int = 28
    in_chans: int = 1
    patch: int = 4            # total stride of the stem: tokens = (img_size / patch) ** 2
    stem: str = "conv"        # "conv": log2(patch) 3x3 stride-2 convs; "patch": one patch x patch conv
    dim: int = 96
    depth: int = 12
    heads: int = 4
    mlp_ratio: float = 2.0
    exits: tuple = (2, 4, 6, 8, 10, 12)
    classes: int = 10
    dropout: float = 0.0
    eps: float = 1e-6


def conv_stem(cfg: ViTConfig) -> nn.Sequential:
    """Small convolutions before the tokens: the inductive bias a ViT lacks on small data."""
    if cfg.stem == "patch":
        return nn.Sequential(nn.Conv2d(cfg.in_chans, cfg.dim, cfg.patch, stride=cfg.patch))
    n = int(math.log2(cfg.patch))
    if cfg.stem != "conv" or 2 ** n != cfg.patch or n < 1:
        raise EdgeError(f"config | stem '{cfg.stem}' with patch {cfg.patch}: need stem 'patch', "
                        "or stem 'conv' with a power-of-two patch")
    chans = [cfg.in_chans] + [cfg.dim // 2 ** (n - 1 - i) for i in range(n)]
    layers = []
    for i in range(n):
        layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1), nn.GELU()]
    return nn.Sequential(*layers[:-1])   # no activation on the tokens themselves


class AdaptiveViT(AdaptiveBackbone):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.img_size % cfg.patch:
            raise EdgeError(f"config | image size {cfg.img_size} is not a multiple of patch {cfg.patch}")
        self.cfg = cfg
        self.tokens = (cfg.img_size // cfg.patch) ** 2
        self.stem = conv_stem(cfg)
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, cfg.dim))
        self.build_trunk(cfg.dim, cfg.depth, cfg.heads, int(cfg.dim * cfg.mlp_ratio), cfg.exits,
                         cfg.classes, cfg.eps, cfg.dropout, block="pre")
        self.apply(self.init_weights)
        nn.init.trunc_normal_(self.pos, std=0.02)

    @staticmethod
    def init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def embed(self, x):
        h = self.stem(x)                          # (B, C, H/p, W/p)
        return h.flatten(2).transpose(1, 2) + self.pos   # (B, T, C)
