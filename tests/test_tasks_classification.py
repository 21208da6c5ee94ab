"""Classification batching: dynamic padding, token dropout and class weights."""

import json

import numpy as np
import pytest
import torch

from lmforge.tasks import classification as task


def items(n=64, length=20):
    rng = np.random.default_rng(0)
    return [(np.concatenate([[2], rng.integers(5, 100, length - 2), [3]]).astype(np.int32), i % 2)
            for i in range(n)]


def test_batches_pad_to_the_longest_text_not_to_max_length():
    batch = task.make_collate(0)([(np.array([2, 7, 3]), 0), (np.array([2, 3]), 1)])
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [0, 1]


def test_token_dropout_masks_about_that_share_and_never_special_tokens():
    torch.manual_seed(0)
    collate = task.make_collate(0, mask_id=4, token_dropout=0.2, special_ids=[0, 1, 2, 3, 4])
    ids = collate(items())["input_ids"]
    share = (ids[:, 1:-1] == 4).float().mean().item()
    assert 0.15 < share < 0.25
    assert (ids[:, 0] == 2).all() and (ids[:, -1] == 3).all()


def test_balanced_class_weights_equalise_the_classes():
    weights = task.balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    assert torch.allclose(weights * torch.tensor([3.0, 1.0]), torch.tensor([2.0, 2.0]))


def test_init_of_chat_data_for_classification_points_to_generation(tmp_path):
    from lmforge import pipeline
    from lmforge.errors import LmforgeError

    row = {"messages": [{"role": "user", "content": "hi there"},
                        {"role": "assistant", "content": "hello, how can I help"}]}
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for _ in range(30)), encoding="utf-8")
    with pytest.raises(LmforgeError, match="pass --task generation"):
        pipeline.init_config("classification", data)
