"""Vietnamese text front end: numbers, dates, times, units, abbreviations and symbols in spoken form.

Reading rules chosen here:
- 1 after "mươi" is "mốt" (hai mươi mốt), 4 after "mươi" is "tư" (hai mươi tư), 5 after any tens digit is
  "lăm" (mười lăm, hai mươi lăm); 14 stays "mười bốn" and units after ZERO_TENS_WORD stay plain
  (một trăm linh một / linh bốn / linh năm).
- A group after the first one is read in full: 1005 = một nghìn không trăm linh năm; zero groups are skipped.
- Years are plain cardinals (2024 = hai nghìn không trăm hai mươi tư); months 4 and 1 are "tư" and "một".
- "24/7" is "hai tư trên bảy"; other N/M with a valid day and month is a date.
- Decimal parts: leading zeros read as "không", the rest as a cardinal (up to 3 digits) or digit by digit.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Mapping
from functools import lru_cache

from flowtts.text.normalize import normalize_text

logger = logging.getLogger(__name__)

ZERO_TENS_WORD = "linh"
"""Word for a zero tens digit inside hundreds: "linh" (105 = một trăm linh năm) or "lẻ"."""

KEPT_PUNCTUATION = frozenset('.,!?;:()"-')

ABBREVIATIONS: dict[str, str] = {
    "TP.HCM": "thành phố Hồ Chí Minh",
    "TP HCM": "thành phố Hồ Chí Minh",
    "TPHCM": "thành phố Hồ Chí Minh",
    "HCM": "Hồ Chí Minh",
    "TP.": "thành phố",
    "Tp.": "thành phố",
    "TP": "thành phố",
    "UBND": "ủy ban nhân dân",
    "HĐND": "hội đồng nhân dân",
    "TNHH": "trách nhiệm hữu hạn",
    "CP": "cổ phần",
    "THPT": "trung học phổ thông",
    "THCS": "trung học cơ sở",
    "GD&ĐT": "giáo dục và đào tạo",
    "KH&CN": "khoa học và công nghệ",
    "CSGT": "cảnh sát giao thông",
    "ATGT": "an toàn giao thông",
    "PCCC": "phòng cháy chữa cháy",
    "BHXH": "bảo hiểm xã hội",
    "BHYT": "bảo hiểm y tế",
    "ĐHQG": "đại học quốc gia",
    "ĐH": "đại học",
    "NXB": "nhà xuất bản",
    "GS.": "giáo sư",
    "PGS.": "phó giáo sư",
    "TS.": "tiến sĩ",
    "ThS.": "thạc sĩ",
    "BS.": "bác sĩ",
    "HN": "Hà Nội",
    "VN": "Việt Nam",
    "v.v.": "vân vân",
}
"""Abbreviation -> spoken form; case-sensitive, matched on word boundaries, longest first."""

UNITS: dict[str, str] = {
    "km/h": "ki lô mét trên giờ",
    "m/s": "mét trên giây",
    "kg": "ki lô gam",
    "mg": "mi li gam",
    "g": "gam",
    "km": "ki lô mét",
    "cm": "xen ti mét",
    "mm": "mi li mét",
    "m": "mét",
    "km²": "ki lô mét vuông",
    "km2": "ki lô mét vuông",
    "m²": "mét vuông",
    "m2": "mét vuông",
    "m³": "mét khối",
    "m3": "mét khối",
    "ml": "mi li lít",
    "l": "lít",
    "ha": "héc ta",
    "°C": "độ xê",
    "°F": "độ ép",
    "°": "độ",
    "%": "phần trăm",
    "đ": "đồng",
    "VNĐ": "đồng",
    "VND": "đồng",
    "USD": "đô la Mỹ",
    "kWh": "ki lô oát giờ",
    "kW": "ki lô oát",
    "h": "giờ",
}
"""Unit -> spoken form, expanded after a number (3,5 kg) or after "/" (đồng/kg = đồng trên ki lô gam)."""

_DIGITS = ("không", "một", "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám", "chín")
_SCALES = ((10**9, "tỷ"), (10**6, "triệu"), (10**3, "nghìn"))
_ROMAN = {"I": 1, "V": 5, "X": 10}
_VALID_ROMAN = re.compile(r"X{0,3}(?:IX|IV|V?I{0,3})")
_NUMBERED_PREFIXES = {"Q": "quận", "P": "phường"}
_SYMBOLS = {"&": "và", "+": "cộng", "=": "bằng", "%": "phần trăm"}
_TYPOGRAPHY = str.maketrans({"“": '"', "”": '"', "„": '"', "«": '"', "»": '"', "−": "-", "…": "..."})

Replacement = Callable[[re.Match[str]], str | None]


# --- cardinal, ordinal, digit and decimal readers -------------------------------------------------


def read_number(n: int) -> str:
    """Cardinal in words: 21 = hai mươi mốt, 105 = một trăm linh năm, 10**12 = một nghìn tỷ."""
    if n < 0:
        return "âm " + read_number(-n)
    return _read(n, leading=True)


def _read(n: int, leading: bool) -> str:
    for size, name in _SCALES:
        if n >= size:
            high, low = divmod(n, size)
            words = f"{_read(high, leading)} {name}"
            return f"{words} {_read(low, leading=False)}" if low else words
    return _read_hundreds(n, leading)


def _read_hundreds(n: int, leading: bool) -> str:
    """A group of three digits; a group that is not the first is read in full (không trăm linh năm)."""
    if leading and n < 100:
        return _read_tens(n)
    hundreds, rest = divmod(n, 100)
    words = f"{_DIGITS[hundreds]} trăm"
    if rest == 0:
        return words
    if rest < 10:
        return f"{words} {ZERO_TENS_WORD} {_DIGITS[rest]}"
    return f"{words} {_read_tens(rest)}"


def _read_tens(n: int) -> str:
    tens, unit = divmod(n, 10)
    if tens == 0:
        return _DIGITS[unit]
    words = "mười" if tens == 1 else f"{_DIGITS[tens]} mươi"
    return f"{words} {_unit_after_tens(tens, unit)}" if unit else words


def _unit_after_tens(tens: int, unit: int) -> str:
    if unit == 5:
        return "lăm"
    if tens >= 2 and unit == 1:
        return "mốt"
    if tens >= 2 and unit == 4:
        return "tư"
    return _DIGITS[unit]


def _read_ordinal(n: int) -> str:
    return {1: "nhất", 4: "tư"}.get(n) or read_number(n)


def _read_month(month: int) -> str:
    return "tư" if month == 4 else read_number(month)


def _read_digits(digits: str) -> str:
    return " ".join(_DIGITS[int(ch)] for ch in digits if ch.isdigit())


def _read_fraction(digits: str) -> str:
    significant = digits.lstrip("0")
    if not significant or len(significant) > 3:
        return _read_digits(digits)
    return " ".join(["không"] * (len(digits) - len(significant)) + [read_number(int(significant))])


def _read_integer(digits: str) -> str:
    return _read_digits(digits) if len(digits) > 1 and digits.startswith("0") else read_number(int(digits))


def _parse_roman(numeral: str) -> int | None:
    if not _VALID_ROMAN.fullmatch(numeral):
        return None
    values = [_ROMAN[ch] for ch in numeral]
    return sum(-v if v < nxt else v for v, nxt in zip(values, values[1:] + [0], strict=True))


# --- rules: each is a pattern and a replacement; None leaves the match as it is ------------------


def _full_date(m: re.Match[str]) -> str | None:
    prefix, day, month, year = m["prefix"], int(m["day"]), int(m["month"]), int(m["year"])
    if not (1 <= day <= 31 and 1 <= month <= 12):
        return None
    return f"{prefix or 'ngày '}{read_number(day)} tháng {_read_month(month)} năm {read_number(year)}"


def _period_year(m: re.Match[str]) -> str | None:
    keyword, value = m["keyword"] or "tháng", m["value"]
    n = int(value) if value.isdigit() else _parse_roman(value) if m["keyword"] else None
    is_month = keyword.lower() == "tháng"
    if n is None or not 1 <= n <= (12 if is_month else 4):
        return None
    spoken = _read_month(n) if is_month else read_number(n)
    return f"{keyword} {spoken} năm {read_number(int(m['year']))}"


def _day_month(m: re.Match[str]) -> str | None:
    day, month = int(m["day"]), int(m["month"])
    if not (1 <= day <= 31 and 1 <= month <= 12):
        return None
    return f"{m['prefix'] or 'ngày '}{read_number(day)} tháng {_read_month(month)}"


def _clock(m: re.Match[str]) -> str | None:
    fields = m.groupdict()
    hour, minute, second = (int(fields.get(key) or 0) for key in ("hour", "minute", "second"))
    if hour > 24 or minute > 59 or second > 59:
        return None
    parts = [f"{read_number(hour)} giờ"]
    parts += [f"{read_number(minute)} phút"] if minute else []
    parts += [f"{read_number(second)} giây"] if second else []
    return " ".join(parts)


def _phone(m: re.Match[str]) -> str:
    number = m[0]
    return ("cộng " if number.startswith("+") else "") + _read_digits(number)


def _keyword_number(m: re.Match[str]) -> str | None:
    keyword, value = m["keyword"], m["value"]
    n = int(value) if value.isdigit() else _parse_roman(value)
    if n is None:
        return None
    return f"{keyword} {_read_ordinal(n) if keyword.lower().endswith('thứ') else read_number(n)}"


def _month(m: re.Match[str]) -> str | None:
    month = int(m["month"])
    return f"{m['keyword']} {_read_month(month)}" if 1 <= month <= 12 else None


def _number(m: re.Match[str]) -> str:
    words = _read_integer(m["integer"].replace(".", ""))
    if m["fraction"]:
        words += f" {'phẩy' if m['sep'] == ',' else 'chấm'} {_read_fraction(m['fraction'])}"
    return words


_UNITS_ALTERNATION = "|".join(re.escape(unit) for unit in sorted(UNITS, key=len, reverse=True))
_DATE = r"(?P<day>\d{1,2})(?P<sep>[/.-])(?P<month>\d{1,2})(?P=sep)(?P<year>\d{4})(?!\d)"
_PERIOD_YEAR = r"(?:(?P<keyword>(?i:tháng|quý|quí))\s+)?(?P<value>\d{1,2}|[IVX]{1,4})/(?P<year>\d{4})(?!\d)"
_ROMAN_KEYWORDS = r"thứ|quý|quí|thế kỷ|thế kỉ|thế chiến|khóa|khoá|chương|phần|tập"

_RULES: tuple[tuple[re.Pattern[str], Replacement], ...] = (
    # Q.1 = quận một, P.5 = phường năm
    (re.compile(r"(?<!\w)([QP])\.\s?(?=\d)"), lambda m: _NUMBERED_PREFIXES[m[1]]),
    # dates and clock times, before "/", "-", ":" and "." are read as anything else
    (re.compile(r"(?<![\d/.-])(?P<prefix>(?i:ngày)\s+)?" + _DATE), _full_date),
    (re.compile(r"(?<![\d/])24/7(?![\d/])"), lambda m: "hai tư trên bảy"),
    (re.compile(r"(?<![\w/])" + _PERIOD_YEAR), _period_year),
    (
        re.compile(r"(?<![\d/])(?P<prefix>(?i:ngày)\s+)?(?P<day>\d{1,2})/(?P<month>\d{1,2})(?![\d/]|[.,]\d)"),
        _day_month,
    ),
    (re.compile(r"(?<![\d:])(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?(?![\d:])"), _clock),
    (re.compile(r"(?<![\w.,])(?P<hour>\d{1,2})h(?P<minute>\d{2})?(?!\w)"), _clock),
    # phone numbers digit by digit: 0912 345 678, +84 912 345 678
    (re.compile(r"(?<![\w.,+])(?:\+\d{1,3} ?|0)\d{1,4}(?:[ .]\d{2,4})+(?!\w|[.,]\d)"), _phone),
    # ranges 5-7 and negatives -5
    (re.compile(r"(?<=[\d%])\s*-\s*(?=\d)"), lambda m: " đến "),
    (re.compile(r"(?<![\w.,%])-(?=\d)"), lambda m: "âm"),
    # numbers whose reading depends on the word before: quý III, thứ 4 = thứ tư, tháng 4 = tháng tư
    (re.compile(rf"\b(?P<keyword>(?i:{_ROMAN_KEYWORDS}))\s+(?P<value>[IVX]+)(?!\w)"), _keyword_number),
    (re.compile(r"\b(?P<keyword>(?i:thứ))\s+(?P<value>\d+)(?!\d|[.,]\d)"), _keyword_number),
    (
        re.compile(r"\b(?P<keyword>(?i:ngày))\s+(?P<value>\d{1,2})(?!\d|[.,/:]\d)"),
        lambda m: f"{m['keyword']} {read_number(int(m['value']))}",
    ),
    (re.compile(r"(?<!\d)(?<!\d )\b(?P<keyword>(?i:tháng))\s+(?P<month>\d{1,2})(?!\d|[.,]\d)"), _month),
    # units after a number (3,5 kg) and after "/" (đồng/kg), 4 x 5
    (re.compile(rf"(?<=\d)\s?({_UNITS_ALTERNATION})(?!\w)"), lambda m: UNITS[m[1]]),
    (re.compile(rf"(?<=\w)/({_UNITS_ALTERNATION})(?!\w)"), lambda m: "trên " + UNITS[m[1]]),
    (re.compile(r"(?<=\d)\s?[x×]\s?(?=\d)"), lambda m: "nhân"),
    # every other number: 120.000, 3,5, 2024, 007
    (re.compile(r"(?P<integer>\d{1,3}(?:\.\d{3})+(?!\d)|\d+)(?:(?P<sep>[,.])(?P<fraction>\d+))?"), _number),
    # symbols
    (re.compile(r"[&+=%]"), lambda m: _SYMBOLS[m[0]]),
    (re.compile(r"(?<=\w)\s?/\s?(?=\w)"), lambda m: "trên"),
)


# --- driver -----------------------------------------------------------------------------------------


def normalize_vietnamese(text: str, *, lowercase: bool = False, abbreviations: Mapping[str, str] | None = None) -> str:
    """Spoken form of Vietnamese text for the TTS model; `abbreviations` are merged over ABBREVIATIONS.

    Punctuation the model uses for prosody is kept. Characters left that it cannot speak are logged.
    """
    text = _normalize_typography(normalize_text(text))
    text = _expand_abbreviations(text, {**ABBREVIATIONS, **(abbreviations or {})})
    for pattern, replacement in _RULES:
        text = _sub(pattern, replacement, text)
    text = normalize_text(text, lowercase=lowercase)
    unspeakable = find_unspeakable(text)
    if unspeakable:
        logger.warning("unspeakable characters %s left in %r", unspeakable, text)
    return text


def find_unspeakable(text: str) -> list[str]:
    """Characters of normalised text that are not letters, marks, whitespace or kept punctuation.

    Digits count as unspeakable: none should be left after normalisation. Each character is listed once.
    """
    return list(dict.fromkeys(ch for ch in text if not _is_speakable(ch)))


def _is_speakable(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LM" or ch.isspace() or ch in KEPT_PUNCTUATION


def _normalize_typography(text: str) -> str:
    """Curly quotes to '"'; a dash between numbers or inside words to '-', a spaced dash to ','."""
    text = text.translate(_TYPOGRAPHY)
    text = re.sub(r"(?<=\d)\s*[–—]\s*(?=\d)", "-", text)
    text = re.sub(r"\s+[–—]\s+", ", ", text)
    return re.sub(r"[–—]", "-", text)


def _expand_abbreviations(text: str, table: Mapping[str, str]) -> str:
    table = {unicodedata.normalize("NFC", key): value for key, value in table.items()}

    def expand(m: re.Match[str]) -> str:
        keeps_full_stop = m[0].endswith(".") and m.end() == len(text)
        return table[m[0]] + ("." if keeps_full_stop else "")

    return _sub(_abbreviation_pattern(tuple(sorted(table))), expand, text)


@lru_cache(maxsize=16)
def _abbreviation_pattern(keys: tuple[str, ...]) -> re.Pattern[str]:
    """Longest key first; a key ending in a letter or digit must end a word."""
    ordered = sorted(keys, key=len, reverse=True)
    return re.compile(
        r"(?<!\w)(?:" + "|".join(re.escape(k) + (r"(?!\w)" if k[-1].isalnum() else "") for k in ordered) + ")"
    )


def _sub(pattern: re.Pattern[str], replacement: Replacement, text: str) -> str:
    """pattern.sub that keeps a space between a replacement and a letter or digit next to it."""

    def padded(m: re.Match[str]) -> str:
        words = replacement(m)
        if words is None:
            return m[0]
        before = text[m.start() - 1] if m.start() else ""
        after = text[m.end()] if m.end() < len(text) else ""
        return f"{' ' if before.isalnum() else ''}{words}{' ' if after.isalnum() else ''}"

    return pattern.sub(padded, text)
