"""`lmforge translate BUNDLE --input FILE|-`: one plain line per input line on stdout, in order;
timings on stderr; a user mistake is one error line."""


import pytest
from conftest import assert_one_line_error, lmforge_cli
from translation_support import random_translation_bundle

import lmforge
from lmforge.render import one_line

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return random_translation_bundle(tmp_path_factory.mktemp("translation") / "model")


def test_translations_go_to_stdout_one_line_each_in_order(bundle, tmp_path, monkeypatch, capsys):
    lines = ["我每天早上喝咖啡。", "", "他们明天去北京。", "这本书很有意思。"]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = lmforge_cli(monkeypatch, capsys, "translate", bundle, "--input", source,
                                 "--beam-size", "3")
    assert code == 0, err
    expected = lmforge.load(bundle).translate(lines, beam_size=3)
    printed = out.split("\n")[:-1]
    assert len(printed) == len(lines) and printed[1] == ""  # a blank line stays blank
    assert all("\n" not in line for line in printed)
    assert printed == [one_line(t.text) for t in expected]  # line breaks escaped
    assert "4 line(s)" in err and "lines/s" in err
    code, piped, _ = lmforge_cli(monkeypatch, capsys, "translate", bundle, "--input", "-",
                                 "--beam-size", "3", stdin="\n".join(lines))
    assert code == 0 and piped == out
    code, unblocked, _ = lmforge_cli(monkeypatch, capsys, "translate", bundle, "--input", "-",
                                     "--no-repeat-ngram", "0", stdin="\n".join(lines))
    expected = lmforge.load(bundle).translate(lines, no_repeat_ngram=0)
    assert code == 0 and unblocked.split("\n")[:-1] == [one_line(t.text) for t in expected]


@pytest.mark.parametrize(("args", "fragments"), [
    (["--input", "missing.txt"], ["sentence file not found: missing.txt"]),
    (["--input", "-", "--beam-size", "0"], ["beam_size must be greater than or equal to 1"]),
    (["--input", "-", "--length-penalty", "9"], ["length_penalty must be less than or equal"]),
    (["--input", "-", "--no-repeat-ngram", "-1"],
     ["no_repeat_ngram must be greater than or equal to 0"]),
])
def test_mistakes_are_one_error_line(bundle, monkeypatch, capsys, args, fragments):
    result = lmforge_cli(monkeypatch, capsys, "translate", bundle, *args, stdin="你好\n")
    assert_one_line_error(result[0], result[2], *fragments)


def test_a_bundle_of_another_task_is_refused_with_its_verb(tiny_classifier, monkeypatch, capsys):
    code, _, err = lmforge_cli(monkeypatch, capsys, "translate", tiny_classifier, "--input", "-",
                               stdin="你好\n")
    assert_one_line_error(code, err, "classification model", "lmforge predict")
