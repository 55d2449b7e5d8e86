"""A model source's local copy loaded into a ``ModelBundle``, whatever its kind: our checkpoint folder or
an official F5-TTS file as downloaded.

An official ``.safetensors``/``.pt`` has no metadata, so what it needs comes from settings: its vocab
(``vocab.txt`` beside the file unless ``vocab`` names one, a path or a URI), its model config (a preset
name, a YAML/JSON config of ours, upstream's YAML with ``model.arch``, or a flat ``config.json``; default
``DEFAULT_OFFICIAL_CONFIG``), and the text front end (``flowtts.text.TextFrontend``). Synthesis,
evaluation and serving all load through ``load_model``, so a model is read the same way everywhere.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from flowtts.checkpoint import CheckpointError, ModelBundle, load_bundle, load_f5_checkpoint
from flowtts.config import MelConfig, ModelConfig, load_config, preset_names
from flowtts.model_source import ModelSource, read_vocab
from flowtts.text import TextFrontend
from flowtts.text.frontend import INFO_KEY

DEFAULT_OFFICIAL_CONFIG = "F5TTS_v1_Base"
UPSTREAM_RUNTIME_KEYS = frozenset({"attn_backend"})  # upstream ``arch`` keys that choose kernels, not weights
ModelConfigSpec = str | Path | dict[str, Any]


def load_model(
    source: ModelSource,
    path: Path,
    *,
    vocab: str | Path | None = None,
    model_config: ModelConfigSpec | None = None,
    text_frontend: TextFrontend | None = None,
) -> ModelBundle:
    """The model at ``path`` (the local copy of ``source``), eval mode; ``info`` holds ``source`` and the
    text front end it reads with (``text_frontend``, see ``TextFrontend.of_model``)."""
    if source.kind == "official":
        vocab = vocab if vocab is not None else source.vocab
        if vocab is None:
            raise CheckpointError(
                f"official checkpoint {path} needs its vocab.txt: put it beside the file or name it (vocab=)"
            )
        official_vocab = read_vocab(vocab)
        config = read_model_config(model_config or DEFAULT_OFFICIAL_CONFIG).with_vocab_size(len(official_vocab))
        bundle = ModelBundle(load_f5_checkpoint(path, config), official_vocab, MelConfig(), {"format": "f5-tts"})
    else:
        bundle = load_bundle(path)
        if vocab is not None:
            bundle.vocab = read_vocab(vocab)
    frontend = TextFrontend.of_model(bundle.info, bundle.vocab, text_frontend)
    bundle.info = {**bundle.info, "source": source.uri, INFO_KEY: frontend.model_dump()}
    return bundle


def read_model_config(spec: ModelConfigSpec) -> ModelConfig:
    """A model config from a dict, a JSON/YAML file (ours, upstream's ``model.arch`` layout, or a flat
    ``config.json``) or a preset name."""
    if isinstance(spec, dict):
        return ModelConfig.from_upstream(spec)
    path = Path(spec)
    if not path.is_file():
        if str(spec) in preset_names():
            return load_config(str(spec)).model
        raise FileNotFoundError(
            f"model config {str(spec)!r} is neither a file nor a preset ({', '.join(preset_names())})"
        )
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    section = data.get("model", data) if isinstance(data, dict) else data
    if isinstance(section, dict) and "arch" in section:  # upstream YAML: model: {backbone, arch: {...}}
        arch = {k: v for k, v in section["arch"].items() if k not in UPSTREAM_RUNTIME_KEYS}
        section = {**arch, "backbone": section.get("backbone", "DiT")}
    if not isinstance(section, dict):
        raise CheckpointError(f"model config {path} does not hold a mapping of model settings")
    return ModelConfig.from_upstream(section)


# ---------------------------------------------------------------- the same settings on a command line


def add_official_model_options(parser: argparse.ArgumentParser) -> None:
    """``--vocab``, ``--model-config``, ``--text-frontend``, ``--lowercase`` (jobs that take ``--model``)."""
    parser.add_argument("--vocab", help="vocab.txt (path or URI) of an official checkpoint (default: beside it)")
    parser.add_argument(
        "--model-config",
        help=f"official checkpoint's model config: preset name or YAML/JSON file (default {DEFAULT_OFFICIAL_CONFIG})",
    )
    parser.add_argument(
        "--text-frontend",
        choices=["vietnamese", "plain"],
        help="text normaliser (default: the model's recorded one; vietnamese for an official file)",
    )
    parser.add_argument(
        "--lowercase", action="store_true", help="lowercase after the normaliser (implied by a vocab without capitals)"
    )


def text_frontend_option(args: argparse.Namespace) -> TextFrontend | None:
    """The front end the options ask for, or None (the model's own) when neither option is given."""
    if args.text_frontend is None and not args.lowercase:
        return None
    return TextFrontend(normalizer=args.text_frontend or "vietnamese", lowercase=args.lowercase)
