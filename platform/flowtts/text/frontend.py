"""The text front end a model reads with: which normaliser, and whether to lowercase after it.

Preprocessing records it in the dataset manifest, training copies it into the model's metadata
(``info["text_frontend"]``), and synthesis, evaluation and serving read the model's text with it. An
official checkpoint records nothing, so it is a setting there (default: the Vietnamese normaliser).
Whatever is recorded or set, a vocab without capital letters implies lowercasing: such a model only
ever read lowercased text, so a request never fails for capitals it would have read lowercased.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from flowtts.text.normalize import normalize_text
from flowtts.text.vietnamese import normalize_vietnamese
from flowtts.text.vocab import Vocab

INFO_KEY = "text_frontend"  # the key of ``ModelBundle.info`` that holds it


class TextFrontend(BaseModel):
    """A front end as data (it pickles, compares and travels in JSON); calling it normalises a text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    normalizer: Literal["plain", "vietnamese"] = "vietnamese"
    lowercase: bool = False

    def __call__(self, text: str) -> str:
        if self.normalizer == "vietnamese":
            return normalize_vietnamese(text, lowercase=self.lowercase)
        return normalize_text(text, lowercase=self.lowercase)

    @classmethod
    def of_model(cls, info: Mapping[str, Any], vocab: Vocab, setting: TextFrontend | None = None) -> TextFrontend:
        """``setting`` when given, else what the model's metadata records, else the default; lowercasing
        added when the vocab has no capital letters."""
        recorded = info.get(INFO_KEY)
        frontend = setting if setting is not None else cls.model_validate(recorded) if recorded else cls()
        if not frontend.lowercase and not has_capitals(vocab):
            frontend = frontend.model_copy(update={"lowercase": True})
        return frontend


def has_capitals(vocab: Vocab) -> bool:
    """True when some token has a lowercase form different from itself."""
    return any(token != token.lower() for token in vocab.tokens)
