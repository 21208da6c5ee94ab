"""`lmforge check CONFIG`: the pre-flight that trains nothing. Its memory estimate's weights,
gradients and optimizer state equal the tensors training holds after a step; it runs without
a GPU, shows chat samples with their trained spans, and fails on a bad config as training does.
"""

import re

import pytest
import torch
from chat_support import chat_config, sums, tiny_llama, write_jsonl
from conftest import assert_one_line_error, lmforge_cli
from generation_support import tiny_generation_config, write_corpus

from lmforge import pipeline
from lmforge.check import estimate_memory, parse_size
from lmforge.config import load_config
from lmforge.errors import LmforgeError
from lmforge.tasks import INPUT_RECIPES, TASKS
from lmforge.training.loop import make_optimizer

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("check")
    llama = tiny_llama(tmp / "llama")
    data = write_jsonl(tmp / "chat.jsonl", [{"messages": m} for m in sums(30)], ["{broken"])
    return tmp, llama, data


def one_step_bytes(raw: dict, run_dir) -> dict[str, int]:
    """What training holds after one optimizer step: weights, gradients, AdamW's state."""
    cfg = load_config(raw)
    recipe = TASKS[cfg.task]
    run = recipe.prepare(cfg, run_dir, False, lambda _: None)
    model = recipe.build_model(run, run_dir, False, False, lambda _: None)
    plan = recipe.training(run, model)
    optimizer = make_optimizer(model, cfg.train, torch.device("cpu"))
    batch = plan.collate(list(range(cfg.train.batch_size)))
    plan.loss(model, batch).backward()
    optimizer.step()
    params = list(model.parameters())
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return {
        "weights": sum(p.numel() * p.element_size() for p in params),
        "gradients": sum(p.grad.numel() * p.grad.element_size() for p in params
                         if p.grad is not None),
        "optimizer": sum(t.numel() * t.element_size() for t in state),
    }


@pytest.mark.parametrize("kind", ["full", "lora", "own gpt"])
def test_the_estimate_holds_the_bytes_of_one_training_step(chat_data, tmp_path, kind):
    tmp, llama, data = chat_data
    if kind == "own gpt":
        raw = tiny_generation_config(write_corpus(tmp_path / "corpus.txt", n=120),
                                     tmp / "cache", precision="fp32", device="cpu")
    else:
        raw = chat_config(data, llama, tmp / "cache")
        if kind == "lora":
            raw["model"]["adapter"] = {"kind": "lora", "r": 4}
    report = pipeline.check(raw, show=False)
    memory = report["memory"]
    real = one_step_bytes(raw, tmp_path / "run")
    assert {key: memory[key] for key in real} == real
    assert report["parameters"]["total"] * 4 == real["weights"]  # fp32
    if kind == "lora":
        assert 0 < report["parameters"]["trainable"] < report["parameters"]["total"] / 2
        assert real["gradients"] == report["parameters"]["trainable"] * 4
    else:
        assert report["parameters"]["trainable"] == report["parameters"]["total"]


def test_checkpointing_and_batch_size_move_the_activations_only():
    model = torch.nn.Linear(8, 8)
    from lmforge.check import Shape

    shape = Shape(hidden=64, layers=4, ff=256, kv=64, vocab=1000, gated=True)
    small = estimate_memory(model, shape, 2, 128, "bf16")
    large = estimate_memory(model, shape, 8, 128, "bf16")
    assert small.states == large.states
    assert large.activations == 4 * small.activations
    assert small.activations_checkpointed < small.activations
    budget = small.states + 10 * small.activations // 2  # room for 10 examples
    assert small.largest_batch(budget, checkpointed=False) == 10
    assert small.peak(False, batch_size=10) <= budget < small.peak(False, batch_size=11)


def test_parse_size():
    assert parse_size("24GiB") == 24 << 30
    assert parse_size("80 GB") == 80 * 10**9
    with pytest.raises(LmforgeError, match="24GiB"):
        parse_size("lots")


def test_the_command_shows_samples_lengths_and_memory_without_a_gpu(chat_data, tmp_path,
                                                                    monkeypatch, capsys):
    tmp, llama, data = chat_data
    config = tmp_path / "chat.yaml"
    config.write_text(
        f"task: generation\ndata: {{path: {data}, cache_dir: {tmp / 'cache'}}}\n"
        f"model: {{arch: pretrained, pretrained: {llama}, max_length: 36}}\n"
        "train: {batch_size: 4}\n", encoding="utf-8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, out = lmforge_cli(monkeypatch, capsys, "check", config, "--gpu-memory", "24GiB")
    assert code in (0, None)
    assert "1 invalid_json" in out  # what training would drop
    assert out.count("sample ") == 2 and "<|im_start|>assistant" in out
    assert re.search(r"; [1-9][0-9]* longer than the context", out)  # 2 replies, 1 fits
    assert "parameters:" in out and "Peak GPU memory" in out and "largest batch" in out
    assert not (tmp_path / "runs").exists()  # nothing trained, no run written

    # the same data with a context too short for any reply: training's own message
    code, _, err = lmforge_cli(monkeypatch, capsys, "check", config, "--set", "model.max_length=4")
    assert_one_line_error(code, err, "no training conversation has an assistant reply")


def test_a_bad_config_fails_as_training_does(chat_data, tmp_path, monkeypatch, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("task: generation\nmodel: {arch: transformer}\n", encoding="utf-8")
    checked = lmforge_cli(monkeypatch, capsys, "check", config)
    trained = lmforge_cli(monkeypatch, capsys, "train", config, "--out", tmp_path / "run")
    assert_one_line_error(checked[0], checked[2], "model.arch 'transformer'")
    assert checked[2] == trained[2]


def test_a_task_without_a_transformer_is_checked_too():
    """A regression MLP on a built-in table: parameters as training builds them, and the
    weights' memory, with no activation estimate (and exit 0)."""
    recipe = INPUT_RECIPES[("regression", "table")]
    cfg = recipe.quickstart_config(True)
    report = pipeline.check(cfg, show=False, gpu_memory="24GiB")
    real = recipe.build_model(recipe.prepare(cfg, None, False, lambda _: None), None, False,
                              False, lambda _: None)
    assert report["parameters"]["total"] == sum(p.numel() for p in real.parameters())
    assert report["memory"]["activations"] is None and report["length_tokens"] is None


def test_more_gpus_share_the_memory_as_train_strategy_does(chat_data):
    tmp, llama, data = chat_data
    raw = chat_config(data, llama, tmp / "cache")
    one = pipeline.check(raw, show=False)["memory"]
    raw["train"]["strategy"] = "fsdp"
    fsdp = pipeline.check(raw, show=False, gpus=4)["memory"]
    raw["train"]["strategy"] = "ddp"
    ddp = pipeline.check(raw, show=False, gpus=4)["memory"]
    assert (fsdp["strategy"], ddp["strategy"]) == ("fsdp", "ddp")
    assert fsdp["optimizer"] == -(-one["optimizer"] // 4)  # sharded over the four
    assert fsdp["gradients"] == -(-one["gradients"] // 4)
    assert one["weights"] // 4 < fsdp["weights"] < one["weights"]  # + two blocks gathered
    assert ddp["gradients"] == 2 * one["gradients"] and ddp["weights"] == one["weights"]
    assert fsdp["activations"] == one["activations"]  # each GPU its own batch
    raw["train"]["strategy"] = "auto"  # a whole copy that does not fit: auto shards
    tight = pipeline.check(raw, show=False, gpus=2, gpu_memory=f"{one['weights']}B")
    assert tight["memory"]["strategy"] == "fsdp"
