"""Layers shared by both backbones (timm's `layers` idea): one Attention, one Mlp, one ExitHead,
and two thin block variants chosen by name."""
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (MiniLM's q, k, v load into its thirds)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x, bias=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3x (B, H, T, D)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)          # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()   # exact erf GELU: what BERT/MiniLM were trained with
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


class ExitHead(nn.Module):
    """Pool the tokens (masked mean), normalise, classify."""

    def __init__(self, dim: int, classes: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, classes)

    def features(self, h, keep=None):
        """The normalised pooled vector the classifier reads (the controller projects it too)."""
        # keep: (B, T, 1) float 1/0 for real/padding tokens, or None when every token is real
        pooled = h.mean(1) if keep is None else (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # (B, C)
        return self.norm(pooled)

    def forward(self, h, keep=None):
        return self.head(self.features(h, keep))


class PreNormBlock(nn.Module):
    """Pre-LN block (ViT): x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim, heads, mlp_hidden, eps, dropout=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, bias=None):
        x = x + self.drop(self.attn(self.norm1(x), bias))
        return x + self.mlp(self.norm2(x))


class PostNormBlock(nn.Module):
    """Post-LN block (BERT): norm(x + attn(x)), then norm(x + mlp(x)). MiniLM's weights need this order."""

    def __init__(self, dim, heads, mlp_hidden, eps, dropout=0.0):
        super().__init__()
        self.attn = Attention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, bias=None):
        x = self.norm1(x + self.drop(self.attn(x, bias)))
        return self.norm2(x + self.mlp(x))


BLOCKS = {"pre": PreNormBlock, "post": PostNormBlock}
