"""Layer folding: a trained backbone rewritten into an equivalent one with fewer parameters and ops.

Folded (exact in real arithmetic; in float32 the outputs agree up to rounding):
  - pre-LN blocks (ViT): norm1's affine (gamma, beta) moves into attn.qkv and norm2's into mlp.fc1,
        W (gamma * n + beta) + b = (W diag(gamma)) n + (W beta + b),
    and both LayerNorms keep only the normalisation (elementwise_affine=False).
  - every block: the attention scale 1/sqrt(head_dim) moves into the query third of qkv (weights and
    bias), and attention runs with scale=1: softmax((s q) k^T) = softmax(s (q k^T)).
  - every exit head: its LayerNorm affine moves into the head Linear, as in the pre-LN blocks.
Not folded, and why:
  - post-LN blocks (text) and the text embedding norm: the norm's output is both the next Linear's
    input and the residual stream, so its affine cannot move into the Linear without changing the
    residual. Only the attention scale folds there.
  - biases, GELU, softmax, the convolutional stem: nothing linear follows them that could absorb them
    exactly (the stem's GELUs sit between its convolutions).
  - ONNX opset 17's LayerNormalization always takes a Scale input, so an affine-free norm exports as
    the same node with a constant ones scale and no bias: in the ONNX graph the norm folds save
    parameters, not nodes (PyTorch skips the multiply and add). The scale fold does save nodes: the
    exporter's attention multiplies q and k by sqrt(scale) each, two Mul nodes per block it drops at 1.
After folding, an exit head's `features()` is the pooled vector before the affine, not the vector the
controller's projection was fitted on (edge_model.evaluate caches the affine one).

The folded model keeps the backbone's own `embed`, `run_segment` and `exit_logits` (only submodules
are swapped), and cuts it into one module per segment: the graphs export ships.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_model.models.layers import Attention, ExitHead, PreNormBlock


def count(modules) -> int:
    """Parameters of some modules, summed."""
    return sum(p.numel() for m in modules for p in m.parameters())


class FoldedAttention(nn.Module):
    """Attention whose query projection is pre-scaled: SDPA runs with scale=1.

    q, k, v are slices of the fused projection, which export as Slice whatever the exporter version.
    Ops that export as Split (chunk, split) come out of the opset 18 -> 17 down-conversion with a
    num_outputs attribute that opset 17 rejects.
    """

    def __init__(self, attn: Attention):
        super().__init__()
        self.heads = attn.heads
        self.qkv = attn.qkv
        self.proj = attn.proj

    def forward(self, x, bias=None):
        B, T, C = x.shape
        H, D = self.heads, C // self.heads
        qkv = self.qkv(x)                                           # (B, T, 3C), q already scaled
        q = qkv[..., :C].reshape(B, T, H, D).transpose(1, 2)        # (B, H, T, D)
        k = qkv[..., C:2 * C].reshape(B, T, H, D).transpose(1, 2)
        v = qkv[..., 2 * C:].reshape(B, T, H, D).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)   # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


@torch.no_grad()
def fold_norm(norm: nn.LayerNorm, linear: nn.Linear) -> nn.LayerNorm:
    """Move the norm's affine into the Linear that reads it (in place); return the affine-free norm."""
    W = linear.weight.double()                                      # float64: one rounding at the end
    linear.bias.copy_(linear.bias.double() + W @ norm.bias.double())
    linear.weight.copy_(W * norm.weight.double())                  # W diag(gamma): scales the columns
    return nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False)


@torch.no_grad()
def fold_attention_scale(attn: Attention) -> FoldedAttention:
    """Multiply the query third of qkv by 1/sqrt(head_dim), SDPA's default scale (in place)."""
    C = attn.proj.in_features
    scale = (C // attn.heads) ** -0.5
    attn.qkv.weight[:C] *= scale
    attn.qkv.bias[:C] *= scale
    return FoldedAttention(attn)


class FoldedExitHead(nn.Module):
    """ExitHead with its norm's affine in the classifier.

    The unmasked mean is written sum / T: ReduceMean's axes became an input in opset 18, and the
    exporter's down-conversion to 17 fails on it and silently keeps opset 18.
    """

    def __init__(self, head: ExitHead):
        super().__init__()
        self.norm = fold_norm(head.norm, head.head)
        self.head = head.head

    def features(self, h, keep=None):
        # keep: (B, T, 1) float 1/0 for real/padding tokens, or None when every token is real
        if keep is None:
            return self.norm(h.sum(1) / h.shape[1])                               # (B, C)
        return self.norm((h * keep).sum(1) / keep.sum(1).clamp(min=1.0))         # (B, C)

    def forward(self, h, keep=None):
        return self.head(self.features(h, keep))


class Segment(nn.Module):
    """Segment k of a folded backbone: (hidden, mask) -> (hidden, logits of exit k)."""

    def __init__(self, backbone, k: int):
        super().__init__()
        self.backbone, self.k = backbone, k

    def forward(self, h, mask=None):
        bias, keep = self.backbone.attention_inputs(mask)
        h = self.backbone.run_segment(h, self.k, bias)          # (B, T, C)
        return h, self.backbone.exit_logits(h, self.k, keep)   # (B, T, C), (B, classes)


class FirstSegment(Segment):
    """Segment 0 also embeds the raw input: images (B, C, H, W), or token ids (B, T) with their mask."""

    def forward(self, x, mask=None):
        return super().forward(self.backbone.embed(x), mask)


class FoldedModel(nn.Module):
    """A folded copy of an AdaptiveBackbone, in eval mode, cut into one module per segment."""

    def __init__(self, model):
        super().__init__()
        self.backbone = backbone = copy.deepcopy(model).eval().requires_grad_(False)
        self.removed = {"norm_affine": 0, "attention_scale": 0}   # counts, for fold_report
        for block in backbone.blocks:
            if isinstance(block, PreNormBlock):
                block.norm1 = fold_norm(block.norm1, block.attn.qkv)
                block.norm2 = fold_norm(block.norm2, block.mlp.fc1)
                self.removed["norm_affine"] += 2
            # post-LN: the norm output is also the residual, so only the attention scale folds
            block.attn = fold_attention_scale(block.attn)
            self.removed["attention_scale"] += 1
        backbone.heads = nn.ModuleList(FoldedExitHead(head) for head in backbone.heads)
        self.removed["norm_affine"] += len(backbone.heads)
        self.segments = nn.ModuleList((FirstSegment if k == 0 else Segment)(backbone, k)
                                      for k in range(len(backbone.exits)))

    @property
    def exits(self) -> tuple:
        return self.backbone.exits

    def segment(self, k: int) -> nn.Module:
        """Segment 0: (x, mask=None) -> (hidden, logits); later ones: (hidden, mask=None) -> the same."""
        return self.segments[k]

    def segment_params(self, k: int) -> int:
        """Parameters segment k reads: its blocks and exit head, plus the embedding for segment 0."""
        b = self.backbone
        own = count(b.blocks[b.starts[k]:b.exits[k]]) + count([b.heads[k]])
        embed = count([b]) - count(b.blocks) - count(b.heads)
        return own + (embed if k == 0 else 0)

    def forward_exits(self, x, mask=None) -> list:
        """Every exit's logits, by chaining the segment modules (what the exported graphs run)."""
        h, out = x, []
        for seg in self.segments:
            h, logits = seg(h, mask)
            out.append(logits)
        return out

    def forward(self, x, mask=None):
        return self.forward_exits(x, mask)[-1]


def fold_model(model) -> FoldedModel:
    """A folded copy of `model` (left untouched); see the module docstring for what folds."""
    return FoldedModel(model)


def fold_report(model, folded: FoldedModel) -> dict:
    """Parameters before and after folding, and the ops folding removed (per full-depth forward)."""
    before, after = count([model]), count([folded])
    return {"params_before": before, "params_after": after, "params_removed": before - after,
            "norm_affines_removed": folded.removed["norm_affine"],
            "scale_multiplies_removed": folded.removed["attention_scale"]}
