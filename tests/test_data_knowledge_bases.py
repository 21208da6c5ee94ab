"""The assistant's built-in knowledge bases: the shop FAQ shipped inside lmforge is as large and
as varied as promised, chatterbot-corpus's tech-support pairs are read from the installed
package, and the out-of-scope sets load."""

import numpy as np
import pytest
import yaml

from lmforge.data.knowledge_bases import (
    SHOP_FAQ,
    SHOP_OUT_OF_SCOPE,
    TECH_SUPPORT,
    TECH_SUPPORT_OUT_OF_SCOPE,
    read_builtin_faq,
    read_queries,
)
from lmforge.data.records import Records
from lmforge.errors import LmforgeError


def groups(name):
    table = read_builtin_faq(name, Records(source=name, format="builtin"))
    assert table.columns == ["id", "question", "answer"]
    out: dict[str, tuple[str, list[str]]] = {}
    for _, cells in table.rows:
        answer, questions = out.setdefault(cells["id"], (cells["answer"], []))
        assert cells["answer"] == answer  # one answer per id
        questions.append(cells["question"])
    return out


def test_the_shop_faq_has_80_answers_each_asked_three_ways_and_40_out_of_scope():
    entries = groups(SHOP_FAQ)
    assert len(entries) >= 80
    assert len({answer for answer, _ in entries.values()}) == len(entries)
    for entry, (_, questions) in entries.items():
        assert len(set(questions)) >= 3, entry
    out_of_scope = read_queries(SHOP_OUT_OF_SCOPE, "question")
    assert len(set(out_of_scope)) >= 40
    asked = {q for _, questions in entries.values() for q in questions}
    assert not asked & set(out_of_scope)


def test_the_shop_faq_is_not_templated_tfidf_finds_under_70_percent():
    """One question of each answer held out, as the assistant's evaluation does: the TF-IDF
    character n-gram baseline must not find most of them (paraphrases, not templates)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    questions, answer_of = [], []
    for number, (_, asked) in enumerate(groups(SHOP_FAQ).values()):
        questions += asked
        answer_of += [number] * len(asked)
    answer_of = np.array(answer_of)
    held = np.array([np.flatnonzero(answer_of == a)[-1] for a in np.unique(answer_of)])
    kept = np.setdiff1d(np.arange(len(questions)), held)
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True)
    indexed = vectorizer.fit_transform([questions[i] for i in kept])
    scores = vectorizer.transform([questions[i] for i in held]) @ indexed.T
    found = answer_of[kept][np.asarray(scores.argmax(axis=1)).ravel()] == answer_of[held]
    assert found.mean() < 0.7


def test_tech_support_is_read_from_chatterbot_corpus_with_paraphrases():
    from importlib import resources

    corpus = yaml.safe_load(resources.files("chatterbot_corpus").joinpath(
        "data", "english", "tech_support.yml").read_text(encoding="utf-8"))
    pairs = {(question, answer) for question, answer, *_ in corpus["conversations"]}
    entries = groups(TECH_SUPPORT)
    assert {answer for answer, _ in entries.values()} == {answer for _, answer in pairs}
    for answer, questions in entries.values():
        assert (questions[0], answer) in pairs  # the corpus's own question first
        assert len(set(questions)) >= 3
    assert len(read_queries(TECH_SUPPORT_OUT_OF_SCOPE, "question")) >= 10


def test_unknown_builtin_names_are_refused():
    with pytest.raises(LmforgeError, match="unknown built-in knowledge base"):
        read_builtin_faq("builtin:nope", Records(source="x", format="builtin"))
    with pytest.raises(LmforgeError, match="unknown built-in query set 'builtin:nope'"):
        read_queries("builtin:nope", "question")
