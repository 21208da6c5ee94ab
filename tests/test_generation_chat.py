"""Chat and instruction fine-tuning: JSONL conversations rendered with the model's own chat
template (or lmforge's default, stored in the bundle), the loss on assistant tokens only,
conversations fitted to the context and counted, split whole; and the same rendering in
Generator.generate(chat=True), `lmforge generate --chat` and old bundles."""

import json
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from chat_support import CHATML, chat_config, sums, tiny_llama, write_jsonl

import lmforge
from lmforge import pipeline
from lmforge.chat import DEFAULT_CHAT_TEMPLATE, chat_template, encode_conversation, fit_context
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import LmforgeError
from lmforge.render import one_line
from lmforge.tasks.conversations import IGNORE, make_chat_collate
from lmforge.tokenization import load_pretrained_tokenizer

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(180)]
LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy-0.1"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama") / "model")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, llama):
    """A chat fine-tune of the tiny Llama on two-turn conversations, with broken rows."""
    tmp = tmp_path_factory.mktemp("chat-run")
    rows = [{"messages": m} for m in sums(40)]
    broken = ['{"messages": [{"role": "user", "content": "hi"}]}',  # no assistant reply
              '{"messages": [{"role": "bot", "content": "hi"}]}',  # unknown role
              "{not json", json.dumps(rows[0])]  # the last: a duplicate conversation
    data = write_jsonl(tmp / "chat.jsonl", rows, broken)
    result = pipeline.train(chat_config(data, llama, tmp / "cache"), out=tmp / "run",
                            show_progress=False)
    return result


def test_the_label_mask_marks_every_assistant_turn_token_by_token(llama):
    tokenizer = load_pretrained_tokenizer(str(llama))
    template = chat_template(tokenizer)
    messages = sums(1)[0]
    encoded = encode_conversation(tokenizer, template, messages)
    # independently: a reply's tokens are those the conversation up to it adds to the prompt
    # of that reply (the template's special tokens cut the token stream at each turn)
    hf = transformers.AutoTokenizer.from_pretrained(llama)
    expected = [False] * len(encoded.ids)
    for i in (2, 4):
        before = hf.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False)
        upto = hf.apply_chat_template(messages[: i + 1], tokenize=False)
        start = len(hf(before, add_special_tokens=False)["input_ids"])
        end = len(hf(upto, add_special_tokens=False)["input_ids"])
        expected[start:end] = [True] * (end - start)
    whole = hf.apply_chat_template(messages, tokenize=False)
    assert encoded.ids.tolist() == hf(whole, add_special_tokens=False)["input_ids"]
    assert encoded.trained.tolist() == expected
    pieces = [hf.decode([t]) for t, on in zip(encoded.ids, encoded.trained, strict=True) if on]
    assert "".join(pieces) == (f"{messages[2]['content']}<|im_end|>\n"
                               f"{messages[4]['content']}<|im_end|>\n")

    # the loss's targets: the next token where it is an assistant token, ignored elsewhere
    batch = make_chat_collate([encoded], tokenizer.pad_id)([0])
    targets = batch["targets"][0].tolist()
    for t, target in enumerate(targets):
        assert target == (encoded.ids[t + 1] if expected[t + 1] else IGNORE)


def test_a_long_conversation_is_cut_after_a_reply_or_dropped(llama):
    tokenizer = load_pretrained_tokenizer(str(llama))
    encoded = encode_conversation(tokenizer, chat_template(tokenizer), sums(1)[0])
    first_end, second_end = encoded.turn_ends
    cut = fit_context(encoded, second_end - 1)
    assert len(cut.ids) == first_end and cut.trained.sum() == encoded.trained[:first_end].sum()
    assert fit_context(encoded, first_end - 1) is None
    assert fit_context(encoded, len(encoded.ids)) is encoded


def test_a_chat_run_counts_broken_rows_and_splits_whole_conversations(trained):
    run = trained.run_dir
    report = json.loads((run / "data_report.json").read_text())
    assert report["kind"] == "chat"
    assert report["dropped"]["no_assistant_reply"] == 1
    assert report["dropped"]["unknown_role"] == 1
    assert report["dropped"]["invalid_json"] == 1
    assert report["duplicates"] == 1
    assert report["conversations_kept"] == 40 and report["assistant_turns"] == 80
    sizes = report["split_sizes"]
    assert sum(sizes.values()) == 40
    keys = {name: set(k) for name, k in json.loads((run / "splits.json").read_text())
            ["splits"].items()}
    assert {name: len(k) for name, k in keys.items()} == sizes
    assert not (keys["train"] & keys["val"] or keys["train"] & keys["test"]
                or keys["val"] & keys["test"])  # the duplicate did not cross splits
    eval_report = json.loads((run / "eval.json").read_text())
    assert eval_report["scored"] == "assistant tokens" and eval_report["n_tokens"] > 0
    assert "unigram" in eval_report["baselines"]


def test_the_bundle_renders_chat_as_transformers_does_and_generates(trained, llama):
    bundle = trained.bundle_dir
    meta = json.loads((bundle / "lmforge.json").read_text())
    assert meta["chat_template"] == CHATML and meta["chat_data"] is True
    generator = lmforge.load(bundle)
    messages = sums(1, seed=7)[0][:2]
    hf = transformers.AutoTokenizer.from_pretrained(bundle)
    assert generator.render_chat(messages) == hf.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False)
    (reply,) = generator.generate([messages], chat=True, temperature=0, max_new_tokens=4)
    model = transformers.AutoModelForCausalLM.from_pretrained(bundle)
    ids = hf.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                 return_dict=True)["input_ids"]
    assert reply.prompt_tokens == ids.shape[1]
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=4, do_sample=False,
                                eos_token_id=hf.eos_token_id, pad_token_id=hf.pad_token_id)
    assert reply.text == hf.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)


def test_generate_chat_on_the_command_line(trained, monkeypatch, capsys):
    bundle = trained.bundle_dir
    monkeypatch.setattr(sys, "argv", ["lmforge", "generate", str(bundle), "--chat",
                                      "--system", "be brief", "--prompt", "add 1 and 2",
                                      "--temperature", "0", "--max-new-tokens", "4"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, _ = capsys.readouterr()
    assert exit_info.value.code in (0, None)
    (reply,) = lmforge.load(bundle).generate(
        [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "add 1 and 2"}]],
        chat=True, temperature=0, max_new_tokens=4)
    assert out == one_line(reply.text) + "\n"


def test_instruction_rows_train_with_lmforge_default_template_stored(tmp_path):
    """A model whose tokenizer has no template gets lmforge's default, kept in the bundle and
    in the tokenizer's own files (so transformers renders alike)."""
    model = tiny_llama(tmp_path / "plain", template=None)
    rows = [{"instruction": f"add {a} and {b}", "input": "" if a % 2 else f"({a})",
             "output": str(a + b)} for a in range(6) for b in range(5)]
    data = write_jsonl(tmp_path / "instructions.jsonl", rows, ['{"instruction": "x"}'])
    result = pipeline.train(chat_config(data, model, tmp_path / "cache", max_steps=1),
                            out=tmp_path / "run", show_progress=False)
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["kind"] == "instruction" and report["dropped"]["missing_output"] == 1
    meta = json.loads((result.bundle_dir / "lmforge.json").read_text())
    assert meta["chat_template"] == DEFAULT_CHAT_TEMPLATE
    generator = lmforge.load(result.bundle_dir)
    prompt = generator.render_chat([{"role": "user", "content": "add 1 and 2"}])
    assert prompt == "<|im_end|>user: add 1 and 2\nassistant:"  # its end-of-text begins it
    hf = transformers.AutoTokenizer.from_pretrained(result.bundle_dir)
    assert hf.apply_chat_template([{"role": "user", "content": "add 1 and 2"}],
                                  add_generation_prompt=True, tokenize=False) == prompt


def test_an_old_bundle_renders_chat_as_it_did(tmp_path):
    """Bundles from before chat templates: no template (lmforge's default renders prompts as
    the old format strings did) or format strings in lmforge.json."""
    generator = lmforge.load(LEGACY / "generator")
    messages = [{"role": "system", "content": "be"}, {"role": "user", "content": "hi"}]
    old_prompt = "system: be\nuser: hi\nassistant:"
    new = generator.encode_prompts([messages], 4, chat=True)
    assert new == generator.encode_prompts([old_prompt], 4)
    legacy = {"message": "<{role}> {content}\n", "generation_prompt": "<assistant>"}
    template = chat_template(generator.tokenizer, legacy)
    assert template.render(messages, add_generation_prompt=True) == (
        "<|endoftext|><system> be\n<user> hi\n<assistant>")


def test_a_bad_chat_prompt_is_a_clear_error():
    generator = lmforge.load(LEGACY / "generator")
    with pytest.raises(LmforgeError, match="message 1 has role 'bot'"):
        generator.generate([[{"role": "bot", "content": "hi"}]], chat=True)
    with pytest.raises(LmforgeError, match="non-empty list"):
        generator.generate([[]], chat=True)


def test_evaluate_scores_the_assistant_tokens_again_and_on_a_file(trained, tmp_path):
    run = trained.run_dir
    again = pipeline.evaluate(run, show=False)
    first = json.loads((run / "eval.json").read_text())
    assert again["test_loss"] == pytest.approx(first["test_loss"], rel=1e-5)
    assert again["n_tokens"] == first["n_tokens"]
    seen = [{"messages": m} for m in sums(40)[:5]]  # trained on (or validated on) these
    rows = seen + [{"messages": [{"role": "user", "content": "add 2 and 2"},
                                 {"role": "assistant", "content": "4"}]}]
    report = pipeline.evaluate(run, data=write_jsonl(tmp_path / "more.jsonl", rows),
                               show=False)
    kept = 6 - report["data_check"]["dropped_seen_in_training"]
    assert 1 <= kept < 6 and report["n_tokens"] > 0
    with pytest.raises(LmforgeError, match="conversations"):
        pipeline.evaluate(run, data=write_jsonl(tmp_path / "plain.jsonl", [{"text": "hi"}]),
                          show=False)


def test_init_detects_chat_and_instruction_data(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in sums(3)])
    rows = [{"instruction": "add 1 and 2", "output": "3"}]
    instructions = write_jsonl(tmp_path / "instructions.jsonl", rows)
    for data in (chat, instructions):
        config = pipeline.init_config("generation", data)
        cfg = load_config(yaml.safe_load(config))
        assert cfg.data.path == str(data) and cfg.data.format == "jsonl"
        with pytest.raises(LmforgeError, match="--task generation"):
            pipeline.init_config("classification", data)  # the default task of `init`


def test_openai_weights_and_text_parts(llama):
    """OpenAI's fine-tuning rows: an assistant message of weight 0 stays as context, untrained;
    content given as text parts reads as their text; a weight elsewhere is a broken row."""
    from lmforge.data.conversations import to_messages

    tokenizer = load_pretrained_tokenizer(str(llama))
    template = chat_template(tokenizer)
    messages = sums(1)[0]
    row = {"messages": [*messages[:2], {**messages[2], "weight": 0},
                        {"role": "user", "content": [{"type": "text", "text": messages[3]
                                                      ["content"]}]}, messages[4]]}
    weighted = to_messages(row, "chat")
    assert [m["content"] for m in weighted] == [m["content"] for m in messages]
    plain = encode_conversation(tokenizer, template, messages)
    encoded = encode_conversation(tokenizer, template, weighted)
    assert encoded.ids.tolist() == plain.ids.tolist()
    first_end = plain.turn_ends[0]
    assert not encoded.trained[:first_end].any()
    assert encoded.trained[first_end:].tolist() == plain.trained[first_end:].tolist()
    assert to_messages({"messages": [{**messages[1], "weight": 0}, messages[2]]}, "chat") \
        == "invalid_weight"
    assert to_messages({"messages": [messages[1], {**messages[2], "weight": 0}]}, "chat") \
        == "no_assistant_reply"


def test_served_chat_renders_with_the_models_template(trained, sqlite_url):
    """/v1/chat/completions replies as Generator.generate(chat=True) does: the same template,
    the same prompt tokens, the same reply."""
    from serve_support import app_client, auth, settings

    from lmforge.serve.billing import keys
    from lmforge.serve.billing.database import open_database

    bundle = trained.bundle_dir
    messages = sums(1, seed=3)[0][:2]
    (expected,) = lmforge.load(bundle).generate([messages], chat=True, temperature=0,
                                                max_new_tokens=4)
    key = keys.create_key(open_database(sqlite_url), "chat")
    serve = settings(bundle, sqlite_url).model_copy(update={"models": [f"tutor={bundle}"]})
    with app_client(serve) as client:
        reply = client.post("/v1/chat/completions", headers=auth(key), json={
            "model": "tutor", "messages": messages, "temperature": 0, "max_tokens": 4})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["choices"][0]["message"]["content"] == expected.text
    assert body["usage"]["prompt_tokens"] == expected.prompt_tokens


def test_a_conversation_the_template_refuses_is_dropped_and_counted(llama):
    from lmforge.chat import ChatTemplate
    from lmforge.data.conversations import dump_conversation
    from lmforge.tasks.conversations import encode_split

    tokenizer = load_pretrained_tokenizer(str(llama))
    strict = ChatTemplate("{% if messages[0]['role'] == 'system' %}"
                          "{{ raise_exception('System role not supported') }}{% endif %}"
                          + CHATML, {"eos_token": "<|im_end|>"})
    conversations = [dump_conversation(m) for m in sums(3)]  # with a system message
    conversations.append(dump_conversation(sums(1)[0][1:]))  # without
    split = encode_split(tokenizer, strict, conversations, 64)
    assert (split.unrenderable, len(split.examples)) == (3, 1)
    assert "System role not supported" in split.reason


def test_without_transformers_renderer_jinja_renders_the_same(monkeypatch):
    """transformers before 4.48 lacks render_jinja_template: the same sandboxed Jinja renders
    the templates identically."""
    import types

    from lmforge.chat import ChatTemplate

    messages = sums(1)[0]
    templates = [ChatTemplate(CHATML, {}), ChatTemplate(DEFAULT_CHAT_TEMPLATE,
                                                        {"eos_token": "<|endoftext|>"})]
    expected = [t.render(messages[:k], gen) for t in templates for k in (2, 5)
                for gen in (False, True)]
    monkeypatch.setitem(sys.modules, "transformers.utils.chat_template_utils",
                        types.ModuleType("transformers.utils.chat_template_utils"))
    assert [t.render(messages[:k], gen) for t in templates for k in (2, 5)
            for gen in (False, True)] == expected
    refusing = ChatTemplate("{{ raise_exception('no system role') }}", {})
    with pytest.raises(LmforgeError, match="no system role"):
        refusing.render(messages)
