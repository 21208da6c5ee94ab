"""lmforge's encoder: shapes, masking, and that it can learn."""

import torch

from lmforge.models import EncoderClassifier, TransformerConfig


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
