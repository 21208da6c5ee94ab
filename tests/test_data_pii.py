"""PII redaction: every valid number of each kind is masked, near-misses are left alone, and
the counts reach data_report.json; the same redaction runs when a bundle predicts."""

import datetime
import json
import re
from collections import Counter

from hypothesis import assume, given
from hypothesis import strategies as st

from lmforge.config import CleanConfig, DataConfig
from lmforge.data import clean_text, prepare_classification_data
from lmforge.data.pii import id_card_valid, luhn_valid, redact_pii

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
# Chinese words and punctuation around PII: no space is needed to find it.
_AROUND = st.sampled_from(["", " ", "电话", "，", "请联系 ", "(", "：", "\n"])


def _id_check(first17: str) -> str:
    return "10X98765432"[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def _luhn_check(body: str) -> str:
    for digit in "0123456789":
        if luhn_valid(body + digit):
            return digit
    raise AssertionError("a Luhn digit always exists")


_digits = st.text(alphabet="0123456789", min_size=1, max_size=1)


@st.composite
def _id_first17(draw) -> str:
    region = draw(st.sampled_from("12345678")) + draw(st.text("0123456789", min_size=5, max_size=5))
    born = draw(st.dates(datetime.date(1900, 1, 1), datetime.date(2025, 12, 31)))
    return region + born.strftime("%Y%m%d") + draw(st.text("0123456789", min_size=3, max_size=3))


@st.composite
def _card_body(draw) -> str:
    """A card number without its check digit: a real prefix, 15 to 19 digits in all."""
    prefix = draw(st.sampled_from(["4", "51", "55", "62", "6011", "34", "37"]))
    length = draw(st.integers(15, 19))
    return prefix + draw(st.text("0123456789", min_size=length - 1 - len(prefix),
                                 max_size=length - 1 - len(prefix)))


def _masked(text: str, kind: str, before: str, after: str) -> None:
    found: Counter[str] = Counter()
    assert redact_pii(f"{before}{text}{after}", found) == f"{before}[{kind.upper()}]{after}"
    assert found == {kind: 1}


def _untouched(text: str, before: str, after: str) -> None:
    found: Counter[str] = Counter()
    assert redact_pii(f"{before}{text}{after}", found) == f"{before}{text}{after}"
    assert not found


@given(_id_first17(), _AROUND, _AROUND)
def test_a_valid_resident_id_is_masked(first17, before, after):
    _masked(first17 + _id_check(first17), "id_card", before, after)


@given(_id_first17(), _digits, _AROUND, _AROUND)
def test_a_resident_id_with_a_wrong_check_digit_is_not_masked_as_anything(
    first17, check, before, after
):
    assume(check != _id_check(first17))
    _untouched(first17 + check, before, after)


@given(_card_body(), st.sampled_from(["", " ", "-"]), _AROUND, _AROUND)
def test_a_luhn_valid_card_is_masked_written_together_or_in_fours(body, sep, before, after):
    number = body + _luhn_check(body)
    assume(not (len(number) == 18 and id_card_valid(number)))  # a real ID shape wins
    written = sep.join(number[i : i + 4] for i in range(0, len(number), 4)) if sep else number
    _masked(written, "bank_card", before, after)


@given(_card_body(), _digits, _AROUND, _AROUND)
def test_a_card_failing_luhn_is_not_masked(body, check, before, after):
    number = body + check
    assume(not luhn_valid(number))
    assume(not (len(number) == 18 and id_card_valid(number)))
    _untouched(number, before, after)


@given(st.sampled_from("3456789"), st.text("0123456789", min_size=9, max_size=9),
       st.sampled_from(["", "+86 ", "86", "+86-"]), _AROUND, _AROUND)
def test_a_chinese_mobile_is_masked_with_or_without_86(second, rest, prefix, before, after):
    _masked(f"{prefix}1{second}{rest}", "phone", before, after)


@given(st.sampled_from("3456789"), st.text("0123456789", min_size=7, max_size=8),
       _AROUND, _AROUND)
def test_a_mobile_too_short_or_too_long_is_not_masked(second, rest, before, after):
    _untouched(f"1{second}{rest}", before, after)


@given(st.sampled_from(["010", "021", "0755", "0571"]), st.sampled_from("23456789"),
       st.text("0123456789", min_size=6, max_size=7), st.sampled_from(["-", " ", ")"]),
       _AROUND, _AROUND)
def test_a_chinese_landline_is_masked(area, first, rest, sep, before, after):
    area = f"({area}" if sep == ")" else area
    _masked(f"{area}{sep}{first}{rest}", "phone", before, after)


@given(st.sampled_from(["1", "44", "33", "49", "81"]), st.text("0123456789", min_size=7,
       max_size=10), _AROUND, _AROUND)
def test_an_international_number_is_masked(country, national, before, after):
    _masked(f"+{country} {national}", "phone", before, after)


@given(st.text("0123456789", min_size=1, max_size=5), _AROUND, _AROUND)
def test_an_international_number_too_short_is_not_masked(digits, before, after):
    _untouched(f"+1 {digits}", before, after)


@given(st.ip_addresses(), _AROUND, _AROUND)
def test_ip_addresses_v4_and_v6_are_masked(address, before, after):
    assume(str(address) != "::")  # the unspecified address, and C++'s scope operator
    _masked(str(address), "ip", before, after)


@given(st.emails(), st.sampled_from(["", " ", "邮箱", "，", "("]), st.sampled_from(["", " ", "。"]))
def test_emails_are_masked(email, before, after):
    # What people write: the local part's letters, digits and ._%+- (RFC 5322 allows more).
    local = email.rsplit("@", 1)[0]
    assume(email.isascii() and local[0] not in "._%+-" and re.fullmatch(r"[\w.%+-]+", local))
    _masked(email, "email", before, after)


def test_ordinary_numbers_and_near_misses_survive():
    for text in ["price 12345678", "order 1381234567", "256.1.1.1", "1.2.3", "12:30:45",
                 "std::vector", "2024-05-01", "v1.2.3.4", "+1 234", "4111111111111112"]:
        _untouched(text, "", "")


def test_redaction_is_off_by_default_and_runs_after_nfkc():
    assert clean_text("mail a@b.com", CleanConfig()) == "mail a@b.com"
    # Full-width digits become ASCII before the search, so they are caught too.
    assert clean_text("电话１３８１２３４５６７８", CleanConfig(redact_pii=True)) == "电话[PHONE]"


def test_data_report_counts_pii_over_every_row_read(tmp_path):
    rows = ["write to a@b.com,a", "write to a@b.com,a", "call 13812345678 or 010-62345678,b",
            "fine text,a", "plain words,b", "ok then,a", "more words,b", "nice one,a"]
    path = tmp_path / "data.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    cfg = DataConfig(path=str(path), clean={"redact_pii": True}, split={"val": 0, "test": 0})
    data = prepare_classification_data(cfg)
    # The duplicate email row is dropped after cleaning, but it was read and counted.
    assert data.report["pii"] == {"email": 2, "phone": 2, "id_card": 0, "bank_card": 0, "ip": 0}
    assert "write to [EMAIL]" in data.train.texts
    assert not any("@" in text or "138" in text for text in data.train.texts)
    json.dumps(data.report)
    off = prepare_classification_data(cfg.model_copy(update={"clean": CleanConfig()}))
    assert "pii" not in off.report


def test_a_bundle_trained_with_redaction_redacts_what_it_predicts_on(tmp_path, reviews_csv):
    from conftest import tiny_config

    import lmforge

    cfg = tiny_config(reviews_csv, max_steps=2, eval_every=2)
    cfg["data"]["clean"] = {"redact_pii": True}
    run = lmforge.train(cfg, out=tmp_path / "run", show_progress=False)
    meta = json.loads((run.bundle_dir / "lmforge.json").read_text())
    assert meta["clean"]["redact_pii"] is True
    assert json.loads((run.run_dir / "data_report.json").read_text())["pii"]["email"] == 0
    predictor = lmforge.load(run.bundle_dir)
    raw, masked = predictor.encode(["好 a@b.com 13812345678", "好 [EMAIL] [PHONE]"]).ids
    assert raw.tolist() == masked.tolist()


def test_an_email_under_an_internationalized_top_level_domain_is_masked():
    # Hypothesis found it: a punycode TLD (xn--...) holds digits and hyphens.
    _masked("0@A.XN--30RR7Y", "email", "", "")
