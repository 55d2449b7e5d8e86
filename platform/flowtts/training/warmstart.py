"""Where training starts: random weights, an official F5-TTS checkpoint, or a checkpoint folder of ours.

Both are read through ``flowtts.model_source``: a local path or a URI (``s3://bucket/ckpt``), downloaded to a
temporary folder for loading when remote; ``init_vocab`` (an official file's ``vocab.txt``) is a path or a URI too.

A pretrained vocab is kept in its own order (the embedding rows belong to those ids); characters of the
dataset that it lacks are appended (``flowtts.checkpoint.extend_vocab``), and the dataset's texts are
then tokenised with that final vocab, never with the dataset's own ``vocab.txt`` order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flowtts.checkpoint import CheckpointError, extend_vocab, load_bundle, load_f5_checkpoint
from flowtts.config import FlowTTSConfig
from flowtts.model import CFM
from flowtts.model_source import local_model, read_vocab, resolve_model_source
from flowtts.text import Vocab, normalize_text
from flowtts.training.duration_fitting import with_duration_predictor

logger = logging.getLogger(__name__)


@dataclass
class WarmStart:
    """The vocab and config training runs with, and the initial weights (None: random init)."""

    config: FlowTTSConfig  # model.text_num_embeds == len(vocab)
    vocab: Vocab
    model: CFM | None
    added: list[str]  # characters appended to the pretrained vocab


def prepare_start(
    config: FlowTTSConfig,
    texts: Sequence[str],
    data_vocab: Vocab,
    *,
    init_from: str | Path | None = None,
    init_vocab: str | Path | None = None,
) -> WarmStart:
    """Resolve the starting point for training on ``texts``."""
    if init_from is None:
        missing = data_vocab.missing(normalize_text("".join(texts)))
        if missing:
            raise CheckpointError(f"the dataset's vocab.txt lacks characters of its texts: {missing[:20]}")
        return WarmStart(config=_with_vocab(config, data_vocab), vocab=data_vocab, model=None, added=[])
    model, vocab = load_pretrained(config, init_from, init_vocab)
    missing = vocab.missing(normalize_text("".join(texts)))
    model, vocab, added = extend_vocab(model, vocab, missing)
    if added:
        logger.info("extended the pretrained vocab by %d characters: %s", len(added), "".join(added))
    return WarmStart(config=_with_vocab(config, vocab), vocab=vocab, model=model.train(), added=added)


def load_pretrained(config: FlowTTSConfig, init_from: str | Path, init_vocab: str | Path | None) -> tuple[CFM, Vocab]:
    """The weights and vocab of a checkpoint folder of ours or an official file (a path or a URI), or of a
    registered model or run (``models:/NAME@ALIAS``: the version the alias names now; MLflow from
    ``MLFLOW_TRACKING_URI``)."""
    source = resolve_model_source(init_from)
    if source.kind == "official" and init_vocab is None:
        raise CheckpointError(f"official checkpoint {source.uri} needs its vocab.txt (--init-vocab FILE)")
    vocab = read_vocab(init_vocab) if init_vocab is not None else None
    with local_model(source) as path:
        if source.kind == "official":
            return load_f5_checkpoint(path, config.model.with_vocab_size(len(vocab))), vocab
        bundle = load_bundle(path)
    vocab = vocab if vocab is not None else bundle.vocab
    expected = config.model.with_vocab_size(len(vocab))
    model = bundle.model
    if expected.duration_predictor is not None:  # a predictor to train from scratch when it has none
        model = with_duration_predictor(model, expected.duration_predictor)
    if model.config != expected:
        raise CheckpointError(
            f"{source.uri} was trained with a different architecture: "
            f"{_differences(model.config.model_dump(), expected.model_dump())}"
        )
    return model, vocab


def _with_vocab(config: FlowTTSConfig, vocab: Vocab) -> FlowTTSConfig:
    return config.model_copy(update={"model": config.model.with_vocab_size(len(vocab))})


def _differences(got: dict, want: dict) -> str:
    return ", ".join(
        f"{key}: checkpoint {got.get(key)!r} vs config {want.get(key)!r}"
        for key in sorted(set(got) | set(want))
        if got.get(key) != want.get(key)
    )
