"""The assistant task: a tiny FAQ (English and Chinese paraphrase groups) through init, train,
predict, evaluate and the bundle round trip; handoff on a request for a person and out of scope;
bad input refused in one line."""

import csv
import json

import pytest

import lmforge
from lmforge import pipeline
from lmforge.errors import LmforgeError

pytestmark = pytest.mark.usefixtures("one_thread")

GROUPS = [
    ("pw", "Open Settings, choose Security, then Reset password.",
     ["How do I reset my password?", "I forgot my password", "cannot log in, lost my password",
      "how to change a forgotten password"]),
    ("ship", "Orders arrive in 3 to 5 business days.",
     ["How long does shipping take?", "When will my order arrive?",
      "what is the delivery time for a package", "how many days until my order is delivered"]),
    ("refund", "Refunds reach your card within 7 days of our receiving the item.",
     ["How do I get a refund?", "I want my money back", "can I return an item for a refund",
      "refund for a returned product"]),
    ("card", "请立即拨打热线挂失，并到网点补办新卡。",
     ["银行卡丢了怎么办", "我的银行卡找不到了", "卡丢了如何挂失", "银行卡遗失怎么补办"]),
    ("fee", "同行转账免费，跨行转账每笔收取2元。",
     ["转账手续费是多少", "跨行转账要收手续费吗", "转账收多少钱", "转账手续费怎么收"]),
    ("hours", "网点营业时间为每天9点到17点。",
     ["营业时间是几点", "你们网点几点开门", "网点周末营业吗", "网点几点关门"]),
]


def write_faq(path, groups=GROUPS, columns=("id", "question", "answer")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for entry, answer, questions in groups:
            for question in questions:
                writer.writerow([entry, question, answer][-len(columns):])
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("assistant")
    faq = write_faq(root / "faq.csv")
    out_of_scope = root / "out_of_scope.txt"
    out_of_scope.write_text("what is the weather on mars\n今天股票会涨吗\n", encoding="utf-8")
    config = root / "assistant.yaml"
    config.write_text(pipeline.init_config("assistant", faq), encoding="utf-8")
    result = lmforge.train(config, out=root / "run", show_progress=False,
                           overrides=[f"assistant.out_of_scope={out_of_scope}"])
    return root, result


def test_init_detects_the_faq_columns(tmp_path):
    config = pipeline.init_config("assistant", write_faq(tmp_path / "faq.csv"))
    assert "task: assistant" in config
    assert "question_column: question" in config and "answer_column: answer" in config
    assert "id_column: id" in config
    chinese = write_faq(tmp_path / "zh.csv", columns=("问题", "答案"))
    assert "question_column: 问题" in pipeline.init_config("assistant", chinese)


def test_train_reports_the_hybrid_beside_each_part_on_held_out_paraphrases(trained):
    root, result = trained
    report = json.loads((result.run_dir / "eval.json").read_text())
    assert report["held_out"] == len(GROUPS)
    for name in ("hybrid", "bm25", "dense", "tfidf_char"):
        figures = report[name]
        assert 0 <= figures["hit@1"] <= figures["hit@5"] <= 1
        low, high = figures["mrr_ci95"]
        assert low <= figures["mrr"] <= high
    assert report["hybrid"]["hit@1"] >= 0.8
    by_language = report["hybrid"]["by_language"]
    assert by_language["zh"]["n"] == 3 and by_language["other"]["n"] == 3
    assert 0 <= report["hybrid"]["ece"] <= 1
    coverage = [row["coverage"] for row in report["hybrid"]["risk_coverage"]]
    assert coverage == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert report["hybrid"]["out_of_scope_handoff"] == 1.0
    assert report["out_of_scope"]["n"] == 2
    meta = json.loads((result.bundle_dir / "lmforge.json").read_text())
    assert meta["task"] == "assistant" and meta["metrics"]["hit@1"] == report["hybrid"]["hit@1"]
    kb = json.loads((result.bundle_dir / "knowledge_base.json").read_text())
    assert len(kb["questions"]) == sum(len(q) for _, _, q in GROUPS)  # every question indexed


def test_predict_answers_verbatim_and_hands_off(trained, tmp_path):
    root, result = trained
    queries = tmp_path / "queries.txt"
    queries.write_text("I forgot my password, how do I reset it\n银行卡丢了\n我要转人工\n"
                       "can I talk to a human\nwhat is the capital of peru\n", encoding="utf-8")
    pipeline.predict(result.bundle_dir, queries, tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    password, card, person, human, peru = rows
    assert password["answer"] == GROUPS[0][1] and password["citations"][0] == "pw"
    assert not password["handoff"] and password["handoff_reason"] is None
    assert card["answer"] == GROUPS[3][1] and card["citations"][0] == "card"
    for row in (person, human):
        assert row["handoff"] and row["answer"] is None
        assert row["handoff_reason"] == "asked for a person"
    assert peru["handoff"] and peru["answer"] is None and "confidence" in peru["handoff_reason"]
    assert all(0 <= row["confidence"] <= 1 for row in rows)


def test_bundle_round_trip_and_evaluate_again(trained):
    root, result = trained
    assistant = lmforge.load(result.bundle_dir)
    (row,) = assistant.predict(["When will my order arrive?"])
    assert row["answer"] == GROUPS[1][1]
    again = lmforge.evaluate(result.run_dir, show=False)
    first = json.loads((result.run_dir / "eval.json").read_text())
    assert again["hybrid"]["mrr"] == pytest.approx(first["hybrid"]["mrr"])
    with pytest.raises(LmforgeError, match="query 2 is empty"):
        assistant.predict(["hello", "  "])
    with pytest.raises(LmforgeError, match="over the limit of 512"):
        assistant.predict(["x" * 513])


def train_on(tmp_path, faq):
    return lmforge.train({"task": "assistant", "data": {"path": str(faq)}},
                         out=tmp_path / "run", show_progress=False)


def test_bad_knowledge_bases_are_refused_in_one_line(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("question,answer\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match="knowledge base is empty"):
        train_on(tmp_path, empty)
    no_answer = tmp_path / "no_answer.csv"
    no_answer.write_text("question,reply_to\nhi,hello\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match="no column 'answer'.*assistant.answer_column"):
        train_on(tmp_path, no_answer)
    with pytest.raises(LmforgeError, match="no answer column"):
        pipeline.init_config("assistant", no_answer)
    singles = write_faq(tmp_path / "singles.csv", [(e, a, q[:1]) for e, a, q in GROUPS])
    with pytest.raises(LmforgeError, match="no answer has two or more questions"):
        train_on(tmp_path, singles)


def test_conflicting_answers_are_dropped_and_reported(tmp_path):
    faq = write_faq(tmp_path / "faq.csv", GROUPS[:3] + [
        ("other", "Shipping is free.", ["How long does shipping take?", "is shipping free"])])
    result = train_on(tmp_path, faq)
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["conflicting_answers"] == ["How long does shipping take?"]
    kb = json.loads((result.bundle_dir / "knowledge_base.json").read_text())
    assert "How long does shipping take?" not in kb["questions"]


def test_evaluate_on_a_file_of_new_questions(trained, tmp_path):
    root, result = trained
    table = tmp_path / "new.csv"
    write_faq(table, [
        ("pw", GROUPS[0][1], ["How do I reset my password?", "password reset please"]),
        ("card", GROUPS[3][1], ["借记卡丢了"]),
        ("none", "-", ["what is the capital of peru"]),
    ])
    report = lmforge.evaluate(result.run_dir, data=table, show=False)
    assert report["data_check"]["dropped_seen_in_training"] == 1  # indexed word for word
    assert report["hybrid"]["n"] == 2 and report["hybrid"]["hit@1"] == 1.0
    assert report["out_of_scope_queries"] == 1
    assert report["hybrid"]["out_of_scope_handoff"] == 1.0
    assert (result.run_dir / "eval-new.json").is_file()


def test_a_damaged_bundle_is_refused_in_one_line(trained, tmp_path):
    import shutil

    root, result = trained
    bundle = tmp_path / "bundle"
    shutil.copytree(result.bundle_dir, bundle)
    (bundle / "knowledge_base.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(LmforgeError, match="knowledge_base.json: not a knowledge base"):
        lmforge.load(bundle)


def test_lexical_terms_cut_chinese_and_stem_english():
    from lmforge.models.retrieval import lexical_tokens

    terms = lexical_tokens("Where are my refunds? 借记卡找不到了")
    assert "refund" in terms and "where" not in terms  # stemmed; a stop word left out
    assert {"借记卡", "记卡", "卡"} <= set(terms)  # jieba's word, a bigram, a character
