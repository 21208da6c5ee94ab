"""lmforge's Transformer family: the encoder's shapes, masking and learning, the parameter
layout saved models rely on, and the sizes its configs refuse."""

import pytest
import torch

from lmforge.models import GPT, EncoderClassifier, GPTConfig, TransformerConfig


def tiny(pooling="mean", dropout=0.0) -> EncoderClassifier:
    torch.manual_seed(0)
    cfg = TransformerConfig(
        vocab_size=50,
        n_classes=3,
        max_length=16,
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        dropout=dropout,
        pooling=pooling,
    )
    return EncoderClassifier(cfg).eval()


def test_logits_have_one_row_per_text_and_one_column_per_class():
    model = tiny()
    ids = torch.randint(1, 50, (5, 9))
    assert model(ids, torch.ones_like(ids)).shape == (5, 3)


def test_padding_does_not_change_a_texts_logits():
    # A text gives the same prediction alone or in a batch padded to a longer neighbour.
    for pooling in ("mean", "cls"):
        model = tiny(pooling)
        text = torch.randint(1, 50, (1, 6))
        alone = model(text, torch.ones_like(text))
        padded = torch.cat([text, torch.zeros(1, 4, dtype=torch.long)], dim=1)
        mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], dim=1).long()
        assert torch.allclose(alone, model(padded, mask), atol=1e-5)


def test_encoder_learns_a_token_presence_rule():
    torch.manual_seed(0)
    model = tiny(dropout=0.0).train()
    ids = torch.randint(3, 50, (64, 8))
    labels = torch.randint(0, 3, (64,))
    ids[:, 3] = labels  # the class is written in position 3 as token 0, 1 or 2
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(ids, torch.ones_like(ids)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = (model.eval()(ids, torch.ones_like(ids)).argmax(1) == labels).float().mean()
    assert accuracy == 1.0


def test_the_encoder_reads_both_ways():
    # Not causal: the first token's output (cls pooling) depends on the tokens after it.
    model = tiny("cls")
    text = torch.randint(1, 50, (1, 6))
    edited = text.clone()
    edited[0, -1] = text[0, -1] % 49 + 1
    ones = torch.ones_like(text)
    assert not torch.allclose(model(text, ones), model(edited, ones))


# The parameter names and shapes that saved bundles and checkpoints hold: renaming a layer would
# make every saved model unloadable.
ENCODER_LAYOUT = [
    ("encoder.tok_emb.weight", (50, 32)), ("encoder.pos_emb.weight", (16, 32)),
    ("encoder.blocks.0.ln1.weight", (32,)), ("encoder.blocks.0.ln1.bias", (32,)),
    ("encoder.blocks.0.attn.qkv.weight", (96, 32)), ("encoder.blocks.0.attn.qkv.bias", (96,)),
    ("encoder.blocks.0.attn.proj.weight", (32, 32)), ("encoder.blocks.0.attn.proj.bias", (32,)),
    ("encoder.blocks.0.ln2.weight", (32,)), ("encoder.blocks.0.ln2.bias", (32,)),
    ("encoder.blocks.0.mlp.up.weight", (64, 32)), ("encoder.blocks.0.mlp.up.bias", (64,)),
    ("encoder.blocks.0.mlp.down.weight", (32, 64)), ("encoder.blocks.0.mlp.down.bias", (32,)),
    ("encoder.ln_f.weight", (32,)), ("encoder.ln_f.bias", (32,)),
    ("head.weight", (3, 32)), ("head.bias", (3,)),
]
GPT_LAYOUT = [
    ("tok_emb.weight", (50, 32)), ("pos_emb.weight", (16, 32)),
    ("blocks.0.ln1.weight", (32,)), ("blocks.0.ln1.bias", (32,)),
    ("blocks.0.attn.qkv.weight", (96, 32)), ("blocks.0.attn.qkv.bias", (96,)),
    ("blocks.0.attn.proj.weight", (32, 32)), ("blocks.0.attn.proj.bias", (32,)),
    ("blocks.0.ln2.weight", (32,)), ("blocks.0.ln2.bias", (32,)),
    ("blocks.0.mlp.up.weight", (64, 32)), ("blocks.0.mlp.up.bias", (64,)),
    ("blocks.0.mlp.down.weight", (32, 64)), ("blocks.0.mlp.down.bias", (32,)),
    ("ln_f.weight", (32,)), ("ln_f.bias", (32,)),
]
SHAPE = dict(vocab_size=50, max_length=16, d_model=32, n_layers=1, n_heads=4, d_ff=64)


@pytest.mark.parametrize(
    ("model", "layout"),
    [
        (lambda: EncoderClassifier(TransformerConfig(n_classes=3, **SHAPE)), ENCODER_LAYOUT),
        (lambda: GPT(GPTConfig(**SHAPE)), GPT_LAYOUT),
    ],
    ids=["encoder", "gpt"],
)
def test_weights_saved_in_the_published_layout_load(model, layout):
    model = model()
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == layout
    saved = {name: torch.full(shape, 0.5) for name, shape in layout}
    model.load_state_dict(saved, strict=True)
    assert all(torch.equal(p, torch.full_like(p, 0.5)) for p in model.state_dict().values())


@pytest.mark.parametrize("config_class", [TransformerConfig, GPTConfig])
def test_heads_that_do_not_divide_the_width_are_refused_naming_both(config_class):
    extra = {"n_classes": 2} if config_class is TransformerConfig else {}
    with pytest.raises(ValueError, match=r"n_heads \(5\) must divide d_model \(32\)"):
        config_class(**{**SHAPE, "n_heads": 5}, **extra)


@pytest.mark.parametrize("config_class", [TransformerConfig, GPTConfig])
@pytest.mark.parametrize("field", ["d_model", "n_layers", "max_length", "n_heads"])
def test_sizes_below_one_are_refused_naming_the_field(config_class, field):
    extra = {"n_classes": 2} if config_class is TransformerConfig else {}
    with pytest.raises(ValueError, match=rf"{field} must be at least 1, got 0"):
        config_class(**{**SHAPE, field: 0}, **extra)
