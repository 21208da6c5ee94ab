"""`lmforge generate` as a user meets it: only the continuation on stdout, streaming that prints
the same text, and one clear line with exit code 2 for every bad input; and the Python API
behind it (lmforge.load(bundle).generate / stream)."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import assert_one_line_error
from generation_support import random_bundle, tiny_generation_config

import lmforge as lmforge_api
from lmforge.cli import main
from lmforge.config import generate_settings, load_config
from lmforge.decoding import _Continuation

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return random_bundle(tmp_path_factory.mktemp("generation") / "model", context=32)


def lmforge(monkeypatch, capsys, *args):
    """Run the command line in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["lmforge", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_user_error(result, *fragments):
    code, _, err = result
    assert_one_line_error(code, err, *fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--prompt", ""], ["the prompt is empty"]),
        (["--prompt", "the cat", "--prompt", "  "], ["prompt 2 is empty"]),
        (["--prompt", "the cat " * 30], ["leaves no room", "context of 32", "--truncate"]),
        (["--prompt", "a", "--max-new-tokens", "0"], ["max_new_tokens must be greater"]),
        (["--prompt", "a", "--top-p", "1.5"], ["top_p must be less than or equal to 1"]),
        (["--prompt", "a", "--top-p", "0"], ["top_p must be greater than 0"]),
        (["--prompt", "a", "--temperature", "-1"], ["temperature must be greater"]),
        (["--prompt", "a", "--top-k", "-1"], ["top_k must be greater"]),
        (["--prompt", "a", "--top-k", "2000000"], ["top_k must be less than or equal to 1000000"]),
        (["--prompt", "a", "--temperature", "3"], ["temperature must be less than or equal to 2"]),
        (["--prompt", "a", "--temperature", "nan"], ["temperature must be"]),
        (["--prompt", "a", "--repetition-penalty", "1e-300"],
         ["repetition_penalty must be greater than or equal to 0.01"]),
        (["--prompt", "a", "--repetition-penalty", "11"], ["repetition_penalty must be less"]),
        (["--prompt", "a", "--seed", "-1"], ["seed must be greater than or equal to 0"]),
        (["--prompt", "a", "--seed", str(2**64)], ["seed must be less than or equal to"]),
        (["--prompt", "a", *["--stop", "x"] * 5], ["stop must have at most 4 items"]),
        (["--prompt", "a", "--stop", "z" * 257], ["stop.0 must have at most 256 characters"]),
        # a byte that is not UTF-8 in the command line reaches Python as a lone surrogate
        (["--prompt", "the \udcff cat"], ["the prompt is not valid text"]),
        ([], ["give --prompt TEXT or --input FILE"]),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(monkeypatch, capsys, bundle, args,
                                                     fragments):
    assert_user_error(lmforge(monkeypatch, capsys, "generate", bundle, *args), *fragments)


def test_prompt_file_with_a_blank_line_names_the_line(monkeypatch, capsys, bundle, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\n\nthe dog\n", encoding="utf-8")
    result = lmforge(monkeypatch, capsys, "generate", bundle, "--input", prompts)
    assert_user_error(result, "prompts.txt line 2: empty prompt")


def test_truncate_keeps_the_end_of_a_long_prompt(monkeypatch, capsys, bundle):
    code, out, err = lmforge(monkeypatch, capsys, "generate", bundle, "--prompt",
                             "the cat " * 30, "--truncate", "--max-new-tokens", "4", "--seed", "1")
    assert code == 0, err
    assert len(out.splitlines()) == 1


def test_one_line_per_prompt_and_same_seed_same_text(monkeypatch, capsys, bundle, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\nthe dog sat\nred\n", encoding="utf-8")
    args = ["generate", bundle, "--input", prompts, "--seed", "3", "--temperature", "1",
            "--max-new-tokens", "6"]
    code, first, err = lmforge(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "3 prompt(s)" in err and "tokens/s" in err
    _, second, _ = lmforge(monkeypatch, capsys, *args)
    assert first == second
    _, streamed, _ = lmforge(monkeypatch, capsys, *args, "--stream")
    assert streamed == first


def test_generate_refuses_a_classification_bundle(monkeypatch, capsys, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "lmforge.json").write_text('{"task": "classification"}')
    result = lmforge(monkeypatch, capsys, "generate", model, "--prompt", "hi")
    assert_user_error(result, "classification model", "lmforge predict")


def test_train_on_an_empty_corpus_exits_with_one_line(monkeypatch, capsys, tmp_path):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("\n \n", encoding="utf-8")
    config = tmp_path / "gen.yaml"
    config.write_text(json.dumps(tiny_generation_config(corpus, tmp_path / "cache")))
    result = lmforge(monkeypatch, capsys, "train", config, "--out", tmp_path / "run")
    assert_user_error(result, "no text in", "empty.txt")


def test_the_real_command_streams_only_the_continuation(tmp_path):
    """One real process: what a shell user sees, stdout and stderr apart."""
    bundle = random_bundle(tmp_path / "model")
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "generate", str(bundle), "--prompt", "the cat",
         "--stream", "--seed", "0", "--max-new-tokens", "5"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    [expected] = lmforge_api.load(bundle).generate(["the cat"], seed=0, max_new_tokens=5)
    assert result.stdout == expected.text + "\n"
    assert "new tokens in" in result.stderr


def test_init_writes_a_generation_config_with_the_text_column(monkeypatch, capsys, tmp_path):
    table = tmp_path / "docs.csv"
    table.write_text("id,body\n1,the cat sat on the mat\n2,the dog ran under a log\n")
    code, out, err = lmforge(monkeypatch, capsys, "init", "--task", "generation", "--data", table)
    assert code == 0, err
    config = tmp_path / "docs.yaml"
    config.write_text(out)
    cfg = load_config(config)
    assert cfg.task == "generation" and cfg.model.arch == "gpt"
    assert cfg.data.text_column == "body"


@pytest.mark.parametrize("stream", [False, True])
def test_a_continuation_with_newlines_stays_on_its_line(monkeypatch, capsys, bundle, stream):
    """Line i of the output is prompt i's continuation, whatever characters it holds."""
    from lmforge.bundle import Generator
    from lmforge.decoding import StreamEvent

    def events(self, job):
        yield StreamEvent(1, "b\\nc", None, 2, 1)
        yield StreamEvent(0, "first\nline", "stop", 2, 2)
        yield StreamEvent(1, "\r\n", "length", 2, 2)

    monkeypatch.setattr(Generator, "_events", events)
    args = ["--stream"] if stream else []
    code, out, err = lmforge(monkeypatch, capsys, "generate", bundle, "--prompt", "the cat",
                             "--prompt", "the dog", *args)
    assert code == 0, err
    assert out.splitlines() == ["first\\nline", "b\\\\nc\\r\\n"]


def test_a_seeded_prompt_continues_the_same_alone_or_beside_others(monkeypatch, capsys, bundle):
    """A prompt's text depends only on the prompt, the seed and the settings: not on the other
    prompts of the call, nor on its place among them."""
    sampling = ["--seed", "1", "--temperature", "1", "--top-k", "0", "--top-p", "1",
                "--max-new-tokens", "8"]
    _, alone, _ = lmforge(monkeypatch, capsys, "generate", bundle, "--prompt", "物流很快",
                          *sampling)
    code, beside, err = lmforge(monkeypatch, capsys, "generate", bundle, "--prompt", "这家酒店",
                                "--prompt", "物流很快", *sampling)
    assert code == 0, err
    assert beside.splitlines()[1] == alone.splitlines()[0]

    generator = lmforge_api.load(bundle)
    options = {"max_new_tokens": 8, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 1}
    (expected,) = generator.generate(["物流很快"], **options)
    others = ["这家酒店", "the cat", "a big red dog ran", "log", "the small blue mat", "ran", "big"]
    for place in (0, 3, 7):
        prompts = [*others[:place], "物流很快", *others[place:]]
        assert generator.generate(prompts, **options)[place].text == expected.text, place


def test_the_sampling_settings_travel_as_one_object(bundle):
    """A GenerateConfig gives the text its fields give as keywords; keywords replace the fields
    it sets, and what it leaves unset is the bundle's default; a misspelt setting is refused."""
    generator = lmforge_api.load(bundle)
    settings = generate_settings(max_new_tokens=6, temperature=1.0, seed=4)
    (as_object,) = generator.generate(["the cat"], settings)
    assert as_object == generator.generate(["the cat"], max_new_tokens=6, temperature=1.0,
                                           seed=4)[0]
    (greedy,) = generator.generate(["the cat"], settings, temperature=0)
    assert greedy == generator.generate(["the cat"], max_new_tokens=6, temperature=0)[0]
    assert generator.settings(settings).top_p == generator.defaults.top_p
    with pytest.raises(TypeError, match="tempature"):
        generator.generate(["the cat"], tempature=0)


def test_text_that_is_not_utf8_streams_as_it_comes(bundle):
    """A model that writes bytes that never make a character (an untrained one, say): each
    U+FFFD is sent as soon as the next tokens show it cannot become a character, not held to
    the end."""
    generator = lmforge_api.load(bundle)
    tokenizer = generator.tokenizer
    stray = next(i for i in range(tokenizer.vocab_size)
                 if tokenizer.decode([i, i, i]) == "\ufffd" * 3)  # no character
    model = generator.model
    with torch.no_grad():  # every position's scores favour the stray byte
        model.tok_emb.weight[stray] *= 10
        model.ln_f.weight.zero_()
        model.ln_f.bias.copy_(model.tok_emb.weight[stray])
    events = list(generator.stream(["the cat"], max_new_tokens=20, temperature=0))
    assert events[0].text and events[0].completion_tokens <= 4
    text = "".join(event.text for event in events)
    assert set(text) == {"\ufffd"} and len(text) >= 17
    assert events[-1].completion_tokens == 20


def test_a_long_stop_string_costs_little_per_token(bundle):
    """The stop check looks only where a new match can be: a long stop string does not slow
    every token down (the server's decoding thread serves everyone)."""
    tokenizer = lmforge_api.load(bundle).tokenizer
    text = "the cat sat on the mat and the dog ran under the log " * 3
    ids = tokenizer.encode_plain([text])[0].tolist()
    row = _Continuation(tokenizer, ["z" * 50_000, "dog ran under the log the"])
    started = time.perf_counter()
    released = "".join(row.push(token, tokenizer.eos_id) for token in ids if not row.finish_reason)
    assert time.perf_counter() - started < 0.25
    assert row.finish_reason == "stop"
    assert released == text[: text.index("dog ran under the log the")]
