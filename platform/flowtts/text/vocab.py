"""Vocabularies with upstream semantics and the one tokenizer.

Upstream facts kept here: one token per line, id = line index, id 0 is the space, batches are padded
with -1 and the model adds 1 inside its embedding (row 0 = filler). Upstream silently maps unknown
characters to id 0; we report them instead, and keep the silent mapping only as an explicit option.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import torch

from flowtts.text.normalize import normalize_text

PAD_ID = -1


class UnknownCharactersError(ValueError):
    """The text holds characters the vocab lacks."""

    def __init__(self, text: str, missing: Sequence[str]):
        self.text, self.missing = text, list(missing)
        shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in self.missing)
        super().__init__(
            f"characters not in the vocab: {shown} in text {text[:80]!r}; extend the vocab "
            "(Vocab.extend / --vocab) or pass unknown='space' for upstream's silent behaviour"
        )

    def __reduce__(self):  # pickle (Ray) rebuilds it from the constructor's arguments
        return (type(self), (self.text, self.missing))


class Vocab:
    """An ordered token list; ``index[token]`` is the line number in ``vocab.txt``."""

    def __init__(self, tokens: Sequence[str]):
        if not tokens or tokens[0] != " ":
            raise ValueError("a vocab must start with the space token (id 0), as upstream asserts")
        if len(set(tokens)) != len(tokens):
            dupes = sorted({t for t in tokens if tokens.count(t) > 1})
            raise ValueError(f"duplicate tokens in vocab: {dupes[:10]}")
        self.tokens: list[str] = list(tokens)
        self.index: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read ``vocab.txt`` as upstream does (each line minus its newline; CRLF tolerated)."""
        return cls.parse(Path(path).read_text(encoding="utf-8"))

    @classmethod
    def parse(cls, raw: str) -> Vocab:
        """The contents of a ``vocab.txt`` (e.g. read from object storage) -> Vocab, as ``load`` reads it."""
        lines = raw.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return cls([line[:-1] if line.endswith("\r") and len(line) > 1 else line for line in lines])

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> Vocab:
        """Space first, then every other character of the (already normalised) texts, sorted."""
        chars = set()
        for text in texts:
            chars.update(text)
        chars.discard(" ")
        return cls([" ", *sorted(chars)])

    def serialize(self) -> str:
        """The ``vocab.txt`` contents: one token per line, the last one included."""
        return "".join(f"{token}\n" for token in self.tokens)

    def save(self, path: str | Path) -> None:
        """Atomic write; every line, the last included, ends in a newline (upstream relies on it)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".vocab-")
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(self.serialize())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a vocab is meant to be shared
        os.replace(tmp, path)

    def missing(self, text: str) -> list[str]:
        """Characters of ``text`` not in the vocab, in order of first appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.index))

    def extend(self, symbols: Iterable[str]) -> tuple[Vocab, list[str]]:
        """Append new symbols at the end (old ids unchanged); returns the new vocab and what was added."""
        added = [s for s in dict.fromkeys(symbols) if s not in self.index]
        return Vocab(self.tokens + added), added

    def encode(self, text: str, *, unknown: Literal["error", "space"] = "error") -> list[int]:
        """Tokenise one text, character by character, after NFC normalisation."""
        text = normalize_text(text)
        if unknown == "error":
            missing = self.missing(text)
            if missing:
                raise UnknownCharactersError(text, missing)
        return [self.index.get(c, 0) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.tokens[i] for i in ids if i != PAD_ID)


def pad_token_ids(batch: Sequence[Sequence[int]]) -> torch.Tensor:
    """Right-pad id lists with -1 to ``[b, max_len]`` (long)."""
    width = max((len(ids) for ids in batch), default=0)
    out = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(batch):
        out[row, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
    return out
