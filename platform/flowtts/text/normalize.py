"""The one text normalisation function: Unicode NFC, whitespace collapsed, optional lowercase."""

from __future__ import annotations

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str, *, lowercase: bool = False) -> str:
    text = unicodedata.normalize("NFC", text)
    text = _WHITESPACE.sub(" ", text).strip()
    return text.lower() if lowercase else text
