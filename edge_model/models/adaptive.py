"""The exit machinery both backbones share: blocks cut into segments at the exits.

Depth d (one of `exits`) runs blocks 1..d, then exit d. Segment k holds the blocks between exit k-1
and exit k. Folding and export consume exactly `embed`, `run_segment` and `exit_logits`.
"""
import torch
import torch.nn as nn

from edge_model.models.layers import BLOCKS, ExitHead
from edge_runtime.core.errors import EdgeError


def check_exits(exits, depth: int) -> tuple:
    """Exits are strictly increasing layer numbers in 1..depth, the last one at depth."""
    if not isinstance(exits, (list, tuple)) or not all(isinstance(e, int) for e in exits) \
            or not isinstance(depth, int):
        raise EdgeError(f"config | exits {exits!r} and depth {depth!r} must be a list of integers and an integer")
    exits = tuple(exits)
    if not exits or list(exits) != sorted(set(exits)) or exits[0] < 1 or exits[-1] != depth:
        raise EdgeError(f"config | exits {list(exits)} do not fit depth {depth} "
                        f"(need strictly increasing layers in 1..{depth}, the last equal to {depth})")
    return exits


class AdaptiveBackbone(nn.Module):
    """Subclasses build `self.embed_*` modules and implement `embed(x) -> (B, T, C)`."""

    def build_trunk(self, dim, depth, heads, mlp_hidden, exits, classes, eps, dropout, block):
        if heads < 1 or dim % heads:
            raise EdgeError(f"config | width {dim} is not divisible by {heads} heads")
        self.exits = check_exits(exits, depth)
        self.blocks = nn.ModuleList(BLOCKS[block](dim, heads, mlp_hidden, eps, dropout) for _ in range(depth))
        self.heads = nn.ModuleList(ExitHead(dim, classes, eps) for _ in self.exits)
        # segment k covers blocks [starts[k], exits[k]) in 0-based block indices
        self.starts = (0,) + self.exits[:-1]

    @staticmethod
    def attention_inputs(mask):
        """From a (B, T) 1/0 mask: the additive attention bias (B, 1, 1, T) and the pooling weights (B, T, 1)."""
        if mask is None:
            return None, None
        keep = mask.to(torch.float32)
        bias = (1.0 - keep)[:, None, None, :] * torch.finfo(torch.float32).min
        return bias, keep[:, :, None]

    def run_segment(self, h, k: int, bias=None):
        for block in self.blocks[self.starts[k]:self.exits[k]]:
            h = block(h, bias)
        return h

    def exit_logits(self, h, k: int, keep=None):
        return self.heads[k](h, keep)

    def exit_index(self, depth) -> int:
        if depth is None:
            return len(self.exits) - 1
        if depth not in self.exits:
            raise EdgeError(f"depth {depth} | not an exit (exits: {list(self.exits)})")
        return self.exits.index(depth)

    def forward(self, x, mask=None, depth=None):
        """Logits of the exit at `depth` (None: full depth), running only the blocks it needs."""
        last = self.exit_index(depth)
        bias, keep = self.attention_inputs(mask)
        h = self.embed(x)
        for k in range(last + 1):
            h = self.run_segment(h, k, bias)
        return self.exit_logits(h, last, keep)

    def forward_exits(self, x, mask=None, upto=None) -> list:
        """Every exit's logits, stopping after the exit at `upto` (timm's stop_early)."""
        last = self.exit_index(upto)
        bias, keep = self.attention_inputs(mask)
        h, out = self.embed(x), []
        for k in range(last + 1):
            h = self.run_segment(h, k, bias)
            out.append(self.exit_logits(h, k, keep))
        return out

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
