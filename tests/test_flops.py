"""Analytic `model_flops` against FlopCounterMode's count, at every exit, on the real benchmark configs."""
import pytest
import torch

from edge_model.flops import block_flops, counted_flops, model_flops
from edge_model.presets import create_model


def close(analytic, counted, rel=0.01):
    return abs(analytic - counted) <= rel * counted


def test_vit_flops_match_counter():
    torch.manual_seed(0)
    model = create_model("fmnist-vit", pretrained=False).eval()
    x = torch.randn(2, 1, 28, 28)
    counts = []
    for d in model.exits:
        analytic, counted = model_flops(model, d), counted_flops(model, x, None, d)
        assert close(analytic, counted), f"depth {d}: analytic {analytic} vs counted {counted}"
        counts.append(counted)
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert model_flops(model) == model_flops(model, model.exits[-1])


@pytest.mark.parametrize("seq_len", [64, 20])
def test_text_flops_match_counter(seq_len):
    torch.manual_seed(0)
    model = create_model("tweets-minilm", pretrained=False).eval()
    ids = torch.randint(1, model.cfg.vocab, (2, seq_len))
    mask = torch.ones_like(ids)
    mask[1, seq_len // 2:] = 0
    ids[1, seq_len // 2:] = 0
    for d in model.exits:
        analytic, counted = model_flops(model, d, seq_len=seq_len), counted_flops(model, ids, mask, d)
        assert close(analytic, counted), f"depth {d}, T={seq_len}: analytic {analytic} vs counted {counted}"
    if seq_len == model.cfg.max_len:   # the default length is max_len
        assert model_flops(model, 3) == model_flops(model, 3, seq_len=seq_len)


def test_the_comparison_can_fail():
    """A wrong token count is far outside 1%: the tolerance above is not vacuous."""
    torch.manual_seed(0)
    model = create_model("tweets-minilm", pretrained=False).eval()
    ids = torch.randint(1, model.cfg.vocab, (2, 20))
    counted = counted_flops(model, ids, None, 6)
    assert not close(model_flops(model, 6, seq_len=21), counted)
    assert block_flops(20, 384, 1536) * 6 < counted
