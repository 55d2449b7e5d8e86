"""Text: normalisation, vocab and tokenisation, and the Vietnamese front end."""

from flowtts.text.frontend import TextFrontend
from flowtts.text.normalize import normalize_text
from flowtts.text.vietnamese import normalize_vietnamese
from flowtts.text.vocab import PAD_ID, UnknownCharactersError, Vocab, pad_token_ids

__all__ = [
    "PAD_ID",
    "TextFrontend",
    "UnknownCharactersError",
    "Vocab",
    "normalize_text",
    "normalize_vietnamese",
    "pad_token_ids",
]
