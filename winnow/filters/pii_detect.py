"""Personal data in text: e-mail addresses, public IPs, phone numbers, card numbers and IBANs.

Pure functions over one string, no stage code: each `find_*` returns `Span(start, end, kind)`s
(character offsets) and `find_pii` merges them. Precision matters as much as recall, so every kind
is checked beyond its pattern:

- email: datatrove's `PIIFormatter` pattern, with a letters-only top-level domain that is not an
  image extension (`logo@2x.png` is a file name).
- ip: IPv4 and IPv6 read by the stdlib `ipaddress`; only public addresses count (datatrove keeps
  private, loopback, link-local, reserved and documentation ranges; multicast is kept here too,
  and IPv6 must lie in the global unicast block 2000::/3).
- phone: the `phonenumbers` library's matcher (`leniency` VALID: a number its region's plan
  allows), international `+` numbers always, national ones in the default region; a bare digit run
  with no separator (`2017123456`) is taken for an id, not a phone number.
- credit_card: 13-19 digits, grouped by single spaces or single dashes (one kind per number),
  Luhn-valid and with a known issuer prefix (Visa, Mastercard, Amex, Discover, Diners, JCB,
  UnionPay).
- iban: country code, check digits and the ISO 13616 length of that country, mod-97 checksum 1.

A dotted quad or digit run right after a word that says what the number is (`version 1.2.3.4`,
`v1.2.3.4`, `ISBN`, `order no.`, `invoice #`, `section 3.1.4.1`) is that thing, not personal data:
`NOT_PII_BEFORE` lists the words. Dates, prices and times never reach 13 digits, fail Luhn or are
not valid phone numbers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import NamedTuple

KINDS = ("email", "ip", "phone", "credit_card", "iban")
# when spans overlap, the kind listed first wins (an IBAN's digits can read as a card or a phone)
PRIORITY = ("email", "iban", "credit_card", "ip", "phone")
LENIENCIES = ("possible", "valid", "strict_grouping", "exact_grouping")


class Span(NamedTuple):
    start: int
    end: int
    kind: str


# datatrove's PIIFormatter e-mail pattern (RFC 5322 local part), the domain's last label letters only
EMAIL = re.compile(
    r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+([A-Za-z]{2,24})(?![A-Za-z0-9]|[.-][A-Za-z0-9])"
)
FILE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "pdf"})

IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                  r"(?!\.?\d|\w)")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")

# 13-19 digits, either contiguous or grouped with one kind of separator (checked after the match)
CARD = re.compile(r"(?<![\w.,/-])\d(?:[ -]?\d){12,18}(?![\w.,/-]?\d)(?!-\w)")
CARD_PREFIXES: tuple[tuple[tuple[int, int], tuple[int, ...]], ...] = (
    ((4, 4), (13, 16, 19)),                        # Visa
    ((51, 55), (16,)), ((2221, 2720), (16,)),       # Mastercard
    ((34, 34), (15,)), ((37, 37), (15,)),           # American Express
    ((6011, 6011), (16, 17, 18, 19)), ((644, 649), (16, 17, 18, 19)), ((65, 65), (16, 17, 18, 19)),  # Discover
    ((300, 305), (14, 15, 16, 17, 18, 19)), ((36, 36), (14, 15, 16, 17, 18, 19)),
    ((38, 39), (16, 17, 18, 19)),                   # Diners Club
    ((3528, 3589), (16, 17, 18, 19)),               # JCB
    ((62, 62), (16, 17, 18, 19)),                   # UnionPay
)

# ISO 13616 registry: IBAN length per country
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
IBAN_START = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})(\d{2})(?= ?[A-Z0-9])")

# a number right after one of these words is a version, an id or a reference, not personal data
NOT_PII_BEFORE = re.compile(
    r"(?i)(?:\b(?:v|ver|version|release|build|rev|revision|firmware|section|chapter|table|figure|fig|"
    r"isbn(?:-1[03])?|issn|doi|order|invoice|tracking|serial|sku|patent|ref|reference|ticket|case|"
    r"article|item|part|model|oid)\.?\s*(?:no\.?|nr\.?|number|num\.?|#|:)?\s*[#:]?\s*|#\s*)$"
)
CONTEXT_CHARS = 32
# seven digits with at most a few separators between them: what every valid number here holds
PHONE_HINT = re.compile(r"\d(?:[\s().\-/]{0,3}\d){6}")


def _after_label(text: str, start: int) -> bool:
    return NOT_PII_BEFORE.search(text[max(0, start - CONTEXT_CHARS):start]) is not None


def find_emails(text: str) -> list[Span]:
    if "@" not in text:
        return []
    return [Span(m.start(), m.end(), "email") for m in EMAIL.finditer(text)
            if m.group(1).lower() not in FILE_EXTENSIONS]


def is_public_ip(address: str) -> bool:
    """A global unicast address: not private, loopback, link-local, multicast, reserved, shared or
    documentation (IPv6: inside 2000::/3 and global)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # includes leading zeros (01.02.03.04), which ipaddress refuses
        return False
    if ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local or ip.is_unspecified:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped is not None or ip.packed[0] >> 5 != 0b001):
        return False  # IPv6 global unicast is 2000::/3
    return ip.is_global


def find_ips(text: str) -> list[Span]:
    spans = []
    if "." in text:
        spans += [Span(m.start(), m.end(), "ip") for m in IPV4.finditer(text)
                  if is_public_ip(m.group()) and not _after_label(text, m.start())]
    if "::" in text or text.count(":") >= 7:
        spans += [Span(m.start(), m.end(), "ip") for m in IPV6.finditer(text)
                  if m.group().count(":") >= 2 and is_public_ip(m.group())]
    return sorted(spans)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_issuer_known(digits: str) -> bool:
    for (low, high), lengths in CARD_PREFIXES:
        width = len(str(low))
        if len(digits) in lengths and low <= int(digits[:width]) <= high:
            return True
    return False


def find_credit_cards(text: str) -> list[Span]:
    spans = []
    for m in CARD.finditer(text):
        raw = m.group()
        separators = {c for c in raw if not c.isdigit()}
        if len(separators) > 1:  # "4111 1111-1111 1111" is a run of numbers, not one card number
            continue
        if separators and not all(3 <= len(g) <= 6 for g in re.split(r"[ -]", raw)):
            continue  # cards are printed in groups of 4 (Amex 4-6-5): "1 2 3 4 …" is a table row
        digits = raw.replace(" ", "").replace("-", "")
        if luhn_valid(digits) and card_issuer_known(digits) and not _after_label(text, m.start()):
            spans.append(Span(m.start(), m.end(), "credit_card"))
    return spans


def iban_checksum_valid(iban: str) -> bool:
    """ISO 13616 / ISO 7064 mod 97-10: the rearranged number, letters as 10..35, leaves 1."""
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def find_ibans(text: str) -> list[Span]:
    spans = []
    for m in IBAN_START.finditer(text):
        length = IBAN_LENGTHS.get(m.group(1))
        if length is None:
            continue
        chars, i = [m.group(1), m.group(2)], m.end()
        have = 4
        while have < length and i < len(text):  # BBAN characters, single spaces allowed between groups
            c = text[i]
            if c.isascii() and (c.isdigit() or c.isupper()):
                chars.append(c)
                have += 1
            elif not (c == " " and i + 1 < len(text) and text[i + 1].isascii() and text[i + 1].isalnum()):
                break
            i += 1
        if have == length and not (i < len(text) and text[i].isalnum()) and iban_checksum_valid("".join(chars)):
            spans.append(Span(m.start(), i, "iban"))
    return spans


def _leniency(name: str):
    from phonenumbers import Leniency

    return getattr(Leniency, name.upper())


def find_phones(text: str, region: str | None = "US", leniency: str = "valid") -> list[Span]:
    """Phone numbers by `phonenumbers`' matcher: `+` numbers anywhere, national numbers of `region`
    (None: international only). A match that is a bare digit run is skipped: ids look like that.
    Numbers of fewer than 7 digits (a few small countries' plans) are not looked for."""
    if PHONE_HINT.search(text) is None:  # the matcher is pure Python: skip texts it cannot match in
        return []
    import phonenumbers

    spans = []
    matcher = phonenumbers.PhoneNumberMatcher(text, region or "ZZ", leniency=_leniency(leniency))
    for m in matcher:
        raw = m.raw_string
        if raw.isdigit() or _after_label(text, m.start):
            continue
        spans.append(Span(m.start, m.end, "phone"))
    return spans


def resolve_overlaps(spans: Iterable[Span]) -> list[Span]:
    """Non-overlapping spans in text order; of two that overlap, the one whose kind comes first in
    PRIORITY wins, then the longer."""
    rank = {k: i for i, k in enumerate(PRIORITY)}
    chosen: list[Span] = []
    for span in sorted(spans, key=lambda s: (rank[s.kind], s.start - s.end, s.start)):
        if all(span.end <= c.start or span.start >= c.end for c in chosen):
            chosen.append(span)
    return sorted(chosen)


def find_pii(text: str, kinds: Iterable[str] = KINDS, phone_region: str | None = "US",
             phone_leniency: str = "valid") -> list[Span]:
    """Every span of the `kinds` asked for, without overlaps, in text order."""
    kinds = set(kinds)
    spans: list[Span] = []
    if "email" in kinds:
        spans += find_emails(text)
    if "ip" in kinds:
        spans += find_ips(text)
    if "credit_card" in kinds:
        spans += find_credit_cards(text)
    if "iban" in kinds:
        spans += find_ibans(text)
    if "phone" in kinds:
        spans += find_phones(text, phone_region, phone_leniency)
    return resolve_overlaps(spans)


def redact(text: str, spans: list[Span], replacement: str = "<{kind}>") -> str:
    """`text` with each span replaced by `replacement` formatted with the upper-case kind."""
    parts, last = [], 0
    for s in spans:
        parts += [text[last:s.start], replacement.format(kind=s.kind.upper())]
        last = s.end
    parts.append(text[last:])
    return "".join(parts)


def redacted_contexts(text: str, spans: list[Span], width: int = 40, limit: int = 3) -> list[str]:
    """Up to `limit` snippets around found spans with every span in view masked (`<EMAIL>` …): what
    a report may show. The personal data itself never appears in the result."""
    masked = redact(text, spans)
    out, shift = [], 0
    for s in spans[:limit]:
        start = s.start + shift
        tag = len(s.kind) + 2
        out.append(masked[max(0, start - width):start + tag + width])
        shift += tag - (s.end - s.start)
    return out
