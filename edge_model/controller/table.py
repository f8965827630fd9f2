"""ExitTable: one split's cached exits as the arrays every controller method reads.

Cost model (fractions of full-depth FLOPs): stopping at exit k in progressive mode costs the backbone
up to exit k plus every exit head passed on the way (heads of exits 0..k), because each boundary's
head ran to decide. `fixed` and `oneshot` runs pay the plain depth-k cost plus the first exit's head.
"""
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from edge_runtime.core.features import confidence


@dataclass
class ExitTable:
    logits: np.ndarray        # (N, E, C) float32
    labels: np.ndarray        # (N,) int64
    exits: np.ndarray         # (E,) layer number of each exit
    flops: np.ndarray         # (E,) FLOPs of the plain depth-d model (stem + blocks + that exit's head)
    head_flops: float         # one exit head's FLOPs
    first_pooled: np.ndarray  # (N, width) first exit's normalised pooled vector
    input_stats: np.ndarray   # (N, 3)

    @classmethod
    def from_cache(cls, cache: dict, head_flops: float) -> "ExitTable":
        return cls(cache["logits"].astype(np.float32), cache["labels"].astype(np.int64), cache["exits"],
                   cache["flops"].astype(np.float64), float(head_flops), cache["first_pooled"],
                   cache["input_stats"])

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_exits(self) -> int:
        return self.logits.shape[1]

    @cached_property
    def preds(self) -> np.ndarray:        # (N, E)
        return self.logits.argmax(-1)

    @cached_property
    def correct(self) -> np.ndarray:      # (N, E) bool
        return self.preds == self.labels[:, None]

    @cached_property
    def confidence(self) -> np.ndarray:   # (N, E, 3) max prob, margin, normalised entropy
        return confidence(self.logits)

    @property
    def full_flops(self) -> float:
        return float(self.flops[-1])

    @cached_property
    def agreement(self) -> np.ndarray:   # (N, E, 2)
        return agreement(self.preds)

    def progressive_flops(self) -> np.ndarray:
        """(E,) FLOPs of stopping at exit k after deciding at every boundary 0..k."""
        return self.flops + self.head_flops * np.arange(self.num_exits)

    def subset(self, idx) -> "ExitTable":
        return ExitTable(self.logits[idx], self.labels[idx], self.exits, self.flops, self.head_flops,
                         self.first_pooled[idx], self.input_stats[idx])


def agreement(preds: np.ndarray) -> np.ndarray:
    """(N, E, 2): at each exit, the fraction of earlier exits that agree with it, and whether the previous
    exit agrees (0 at the first exit, where there is nothing to agree with)."""
    N, E = preds.shape
    same = preds[:, :, None] == preds[:, None, :]                 # (N, E, E): exit i agrees with exit j
    earlier = np.tril(np.ones((E, E), bool), -1)                  # j < i
    frac = (same & earlier).sum(-1) / np.maximum(earlier.sum(-1), 1)
    prev = np.concatenate([np.zeros((N, 1), bool), preds[:, 1:] == preds[:, :-1]], 1)
    return np.stack([frac, prev], -1).astype(np.float32)
