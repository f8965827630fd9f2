"""Every preset, tiny (timm's one parametrised model test): shapes, finiteness, backward, and the exit
contract: `forward(x, depth=d)` is exit d of `forward_exits(x)`, and the last exit is the plain forward."""
import pytest
import torch

from edge_model.presets import PRESETS, create_model
from edge_runtime.core.errors import EdgeError

TINY_TEXT = dict(depth=2, exits=(1, 2), dim=64, heads=4, mlp_hidden=128, vocab=1000, max_positions=64)
B, T, PAD_FROM = 3, 12, 7      # text: row 1 holds 7 real tokens, then padding


def build(name):
    torch.manual_seed(0)
    spec = PRESETS[name]
    return create_model(name, pretrained=False, **(TINY_TEXT if spec["arch"] == "text" else {}))


def inputs(model, name):
    """(x, mask) for one batch: images without a mask; token ids with one padded row."""
    g = torch.Generator().manual_seed(1)
    if PRESETS[name]["arch"] == "vit":
        c = model.cfg
        return torch.randn(B, c.in_chans, c.img_size, c.img_size, generator=g), None
    ids = torch.randint(1, model.cfg.vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[1, PAD_FROM:] = 0
    ids[1, PAD_FROM:] = 0
    return ids, mask


@pytest.mark.parametrize("name", list(PRESETS))
def test_forward_shapes_and_backward(name):
    model = build(name).train()
    x, mask = inputs(model, name)
    classes = model.cfg.classes
    out = model(x, mask)
    assert out.shape == (B, classes)
    assert torch.isfinite(out).all()
    outs = model.forward_exits(x, mask)
    assert len(outs) == len(model.exits)
    for o in outs:
        assert o.shape == (B, classes)
        assert torch.isfinite(o).all()
    sum(o.logsumexp(-1).sum() for o in outs).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.heads[0].parameters())


@pytest.mark.parametrize("name", list(PRESETS))
def test_exits_agree_with_forward(name):
    model = build(name).eval()
    x, mask = inputs(model, name)
    with torch.no_grad():
        outs = model.forward_exits(x, mask)
        assert torch.equal(outs[-1], model(x, mask))
        for k, d in enumerate(model.exits):
            assert torch.equal(model(x, mask, depth=d), outs[k]), f"depth {d}"
            early = model.forward_exits(x, mask, upto=d)
            assert len(early) == k + 1
            assert all(torch.equal(a, b) for a, b in zip(early, outs))
        # distinct exits really are distinct heads on distinct depths
        assert not torch.equal(outs[0], outs[-1])
        # batched equals unbatched, row by row
        for i in range(B):
            xi, mi = x[i:i + 1], None if mask is None else mask[i:i + 1]
            if mi is not None:   # drop the row's own padding: it must not matter
                xi, mi = xi[:, :int(mi.sum())], None
            for a, b in zip(model.forward_exits(xi, mi), outs):
                torch.testing.assert_close(a[0], b[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(PRESETS))
def test_depth_not_an_exit_is_a_user_error(name):
    model = build(name).eval()
    x, mask = inputs(model, name)
    bad = max(model.exits) + 1
    with pytest.raises(EdgeError, match=f"depth {bad}"):
        model(x, mask, depth=bad)


TEXT_PRESETS = [n for n, s in PRESETS.items() if s["arch"] == "text"]


@pytest.mark.parametrize("name", TEXT_PRESETS)
def test_padding_is_invisible(name):
    """The padded row's logits ignore what the padding ids are, and match the row run alone, unpadded."""
    model = build(name).eval()
    ids, mask = inputs(model, name)
    other = ids.clone()
    other[1, PAD_FROM:] = torch.arange(1, T - PAD_FROM + 1) * 37
    with torch.no_grad():
        a = model.forward_exits(ids, mask)
        b = model.forward_exits(other, mask)
        alone = model.forward_exits(ids[1:2, :PAD_FROM], None)
        unmasked = model.forward_exits(other, None)
    for k in range(len(model.exits)):
        torch.testing.assert_close(a[k][1], b[k][1], rtol=0, atol=1e-6)
        torch.testing.assert_close(a[k][1], alone[k][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a[k][[0, 2]], b[k][[0, 2]], rtol=0, atol=1e-6)   # other rows: untouched
    # the check can fail: without the mask, the padding ids do reach the logits
    assert not torch.allclose(unmasked[-1][1], a[-1][1], atol=1e-4)


SENTENCES = ["The flight was delayed for three hours and nobody told us why.",
             "I love this phone!",
             "Stocks fell sharply on Monday after the central bank raised interest rates again.",
             "ok"]


def test_minilm_matches_transformers_bert():
    transformers = pytest.importorskip("transformers", reason="transformers (dev extra) is not installed")
    from tokenizers import Tokenizer

    from edge_model.models.text import AdaptiveTextEncoder, TextConfig, minilm_dir
    d = minilm_dir()
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_truncation()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    assert (mask == 0).any() and (mask.sum(1) >= 3).all()      # some padding, every row has real tokens

    ours = AdaptiveTextEncoder(TextConfig()).load_minilm().eval()
    bert = transformers.BertModel.from_pretrained(str(d)).eval()
    with torch.no_grad():
        mine = ours.hidden_states(ids, mask)
        theirs = bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                      output_hidden_states=True).hidden_states[1:]
    assert len(mine) == len(theirs) == 6
    real = mask.bool()
    for layer, (a, b) in enumerate(zip(mine, theirs), 1):
        err = (a[real] - b[real]).abs().max().item()
        assert err <= 1e-4, f"layer {layer}: max abs error {err:.2e}"
