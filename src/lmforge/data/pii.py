"""PII redaction: find emails, phone numbers, Chinese resident ID numbers, bank card numbers and
IP addresses in a text and replace each with a mask naming its kind ("[EMAIL]", "[PHONE]", ...).

A candidate is redacted only when it checks out: an ID's checksum, a card's Luhn digit, a phone
number's length and prefix, an address's octets. A near-miss (a wrong check digit, a number too
short) is left as it is and counted as nothing, so ordinary numbers (prices, order numbers,
dates) survive. One regular expression scans the text left to right; at each position the first
kind whose shape matches decides, so an 18-character ID shape with a wrong checksum is not then
retried as a card number. Text around PII may be anything but an ASCII letter or digit, so
"电话13812345678" is caught.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

PII_KINDS = ("email", "phone", "id_card", "bank_card", "ip")
MASKS = {kind: f"[{kind.upper()}]" for kind in PII_KINDS}

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_PATTERN = re.compile(
    "|".join(
        (
            r"(?P<email>(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
            # the top-level domain: letters, or an internationalized one in punycode (xn--...)
            r"\.(?:[A-Za-z]{2,}|(?i:xn--)[A-Za-z0-9-]+)(?![A-Za-z0-9-]))",
            # Region (first digit 1-8), birth date, sequence, check digit (0-9 or X).
            r"(?P<id_card>(?<![\dA-Za-z])[1-8]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])"
            r"(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![\dA-Za-z]))",
            # International: "+", then 8 to 15 digits with single spaces, hyphens or brackets.
            r"(?P<e164>(?<![A-Za-z0-9+])\+[1-9](?:[ \-()]{0,2}\d){7,14}(?!\d))",
            # Chinese mobile: optional 86 / 0086 prefix, 1[3-9] and 9 more digits (3-4-4).
            r"(?P<mobile>(?<![A-Za-z0-9+])(?:(?:0086|86)[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d))",
            # Chinese landline: area code 0xx or 0xxx, written apart, then 7-8 digits.
            r"(?P<landline>(?<![A-Za-z0-9+])(?:\(0\d{2,3}\)[ -]?|0\d{2,3}[ -])[2-9]\d{6,7}(?!\d))",
            # Cards: 15-19 digits, together, in groups of four, or 4-6-5 (American Express).
            r"(?P<bank_card>(?<![A-Za-z0-9+])(?:\d{15,19}|\d{4}(?:[ -]\d{4}){2}[ -]\d{3,4}"
            r"(?:[ -]\d{1,3})?|\d{4}[ -]\d{6}[ -]\d{5})(?!\d))",
            rf"(?P<ipv4>(?<![A-Za-z0-9.]){_OCTET}(?:\.{_OCTET}){{3}}(?![A-Za-z0-9]|\.\d))",
            r"(?P<ipv6>(?<![A-Za-z0-9:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|:)?"
            rf"(?:{_OCTET}(?:\.{_OCTET}){{3}})?(?![A-Za-z0-9:]))",
        )
    )
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_NOT_DIGIT = re.compile(r"\D")
# After +86: a mobile, or an area code without its 0 (10, 2x, 3-digit) and a local number.
_CHINA_NATIONAL = re.compile(r"1[3-9]\d{9}|(?:10|2\d|[3-9]\d{2})[2-9]\d{6,7}")
_HEX = re.compile(r"[0-9A-Fa-f]")


def id_card_valid(number: str) -> bool:
    """The check digit of an 18-character Chinese resident ID number (GB 11643) is right."""
    total = sum(int(digit) * weight for digit, weight in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


def luhn_valid(digits: str) -> bool:
    """The Luhn check of a card number (digits only) passes."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _international_valid(digits: str) -> bool:
    if not 8 <= len(digits) <= 15:
        return False
    if digits.startswith("86"):  # China's own numbering, as the domestic patterns check it
        national = digits[2:]
        return bool(_CHINA_NATIONAL.fullmatch(national))
    return True


def _kind_of(match: re.Match[str]) -> str | None:
    """The kind of PII the match is, or None for a near-miss."""
    group = match.lastgroup
    text = match.group()
    if group == "email":
        return "email"
    if group == "id_card":
        return "id_card" if id_card_valid(text) else None
    if group == "e164":
        return "phone" if _international_valid(_NOT_DIGIT.sub("", text)) else None
    if group in ("mobile", "landline"):
        return "phone"
    if group == "bank_card":
        return "bank_card" if luhn_valid(_NOT_DIGIT.sub("", text)) else None
    if group == "ipv4":
        return "ip"
    if not _HEX.search(text):  # "::" alone is more likely C++ than an address
        return None
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return None
    return "ip"


def redact_pii(text: str, found: Counter[str] | None = None) -> str:
    """`text` with each piece of PII replaced by its mask; each one is counted in `found`."""

    def mask(match: re.Match[str]) -> str:
        kind = _kind_of(match)
        if kind is None:
            return match.group()
        if found is not None:
            found[kind] += 1
        return MASKS[kind]

    return _PATTERN.sub(mask, text)
