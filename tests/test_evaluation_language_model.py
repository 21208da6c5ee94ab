"""The language-model table: the model beside the unigram baseline, as a person reads it."""

import io

from rich.console import Console

from lmforge.evaluation.language_model import render_lm_table


def lm_report(test_loss, unigram_loss, perplexity, unigram_perplexity):
    return {"val_loss": 6.61, "test_loss": test_loss, "perplexity": perplexity,
            "n_tokens": 12345,
            "baselines": {"unigram": {"test_loss": unigram_loss,
                                      "perplexity": unigram_perplexity}}}


def rendered(report):
    out = io.StringIO()
    render_lm_table(report, Console(file=out, width=160, soft_wrap=True), "Test split")
    return out.getvalue()


def test_numbers_of_a_column_share_one_format():
    text = rendered(lm_report(6.5869, 7.0810, 725.584, 1189.2371))
    assert "725.6" in text and "1,189.2" in text
    assert "6.587" in text and "7.081" in text and "12,345 test tokens" in text
    assert "does not beat" not in text


def test_a_model_the_unigram_beats_gets_one_line_of_what_to_try():
    text = rendered(lm_report(7.2, 7.0810, 1339.4, 1189.2))
    [hint] = [line for line in text.splitlines() if "does not beat" in line]
    assert "unigram" in hint and "README.md" in hint and "pretrained" in hint
