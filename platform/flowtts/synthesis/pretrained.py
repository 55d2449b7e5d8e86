"""Pretrained speech models in the Hugging Face layout (ASR for transcription and the evaluation's judges,
x-vectors for speaker similarity), from a local folder or a repo id already in the local cache.

Nothing is downloaded unless the caller allows it, and ``transformers`` is imported only when a model is
asked for (``pip install -e ".[eval-models]"``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from flowtts.synthesis.vocoder import REPO_ID


class PretrainedModelError(ValueError):
    """A pretrained model is missing, unreadable, or its library is not installed (the message says which)."""


def resolve_pretrained(source: str | Path, *, allow_download: bool = False) -> Path:
    """A local model folder, or the snapshot folder of a Hugging Face repo id from the cache (or a permitted
    download)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder
    if not REPO_ID.match(str(source)):
        raise PretrainedModelError(f"model {str(source)!r} is neither a folder nor a Hugging Face repo id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(source), local_files_only=not allow_download))
    except LocalEntryNotFoundError as exc:
        raise PretrainedModelError(
            f"model {source} is not in the Hugging Face cache; fetch it once (`hf download {source}`) or allow "
            "downloading"
        ) from exc


def import_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise PretrainedModelError(
            'pretrained speech models need transformers: pip install -e ".[eval-models]"'
        ) from exc
    return transformers


def load_pretrained(
    source: str | Path, allow_download: bool, device: torch.device, processor_class: str, model_class: str
):
    """(processor, model in eval mode on ``device``), both by their ``transformers`` Auto class names."""
    transformers = import_transformers()
    folder = resolve_pretrained(source, allow_download=allow_download)
    processor = getattr(transformers, processor_class).from_pretrained(folder)
    return processor, getattr(transformers, model_class).from_pretrained(folder).to(device).eval()
