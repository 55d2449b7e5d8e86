"""How many frames to generate: upstream's UTF-8 byte-ratio rule, or a fixed total duration.

Byte ratio (``infer_batch_process``): total = P + int(P / prompt_bytes * text_bytes / speed), with P the
reference's ``samples // hop`` and the bytes those of the prompt text (reference transcript plus its
joining space) and of the chunk; a chunk under 10 bytes uses speed 0.3 so a word or two is not rushed.
Fixed: ``fix_duration`` seconds of reference plus generated audio, ``int(seconds * rate / hop)`` frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from flowtts.audio import DEFAULT_MEL
from flowtts.config import MelConfig
from flowtts.model.duration_predictor import DurationPredictor
from flowtts.synthesis.errors import InvalidOptionsError
from flowtts.text import pad_token_ids

SHORT_TEXT_BYTES = 10
SHORT_TEXT_SPEED = 0.3
BYTE_RATIO_RULE = "byte_ratio"
FIXED_RULE = "fixed"
PREDICTOR_RULE = "predictor"


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def byte_ratio_frames(prompt_frames: int, prompt_text: str, text: str, speed: float) -> int:
    """Total frames (prompt + generated) for one chunk by upstream's formula."""
    text_bytes = utf8_len(text)
    local_speed = SHORT_TEXT_SPEED if text_bytes < SHORT_TEXT_BYTES else speed
    return prompt_frames + int(prompt_frames / utf8_len(prompt_text) * text_bytes / local_speed)


def fixed_frames(
    fix_duration: float,
    prompt_frames: int,
    chunks: Sequence[str],
    cross_fade_s: float,
    mel: MelConfig = DEFAULT_MEL,
) -> list[int]:
    """Total frames per chunk for a fixed total of ``fix_duration`` seconds (reference included).

    One chunk gets upstream's ``int(fix_duration * rate / hop)``. Several chunks share the generated
    time by their UTF-8 length, with the cross-fade overlaps added back so the joined audio lasts
    about ``fix_duration`` minus the reference (upstream would give every chunk the whole duration).
    """
    frames_per_s = mel.target_sample_rate / mel.hop_length
    total = fix_duration * frames_per_s
    if int(total) <= prompt_frames:
        raise InvalidOptionsError(
            f"fix_duration={fix_duration} s leaves nothing to generate: the reference alone is "
            f"{prompt_frames / frames_per_s:.2f} s and fix_duration counts reference plus generated audio"
        )
    generated = total - prompt_frames + cross_fade_s * frames_per_s * (len(chunks) - 1)
    weights = [utf8_len(chunk) for chunk in chunks]
    return [prompt_frames + int(generated * weight / sum(weights)) for weight in weights]


@torch.no_grad()
def predicted_frames(
    predictor: DurationPredictor,
    prompt_tokens: list[int],
    prompt_mel: torch.Tensor,
    chunk_tokens: Sequence[list[int]],
    speed: float,
) -> list[int]:
    """Generated frames per chunk (prompt excluded) from the learned duration predictor, divided by speed."""
    device = next(predictor.parameters()).device
    count = len(chunk_tokens)
    log_frames = predictor.eval()(
        pad_token_ids(chunk_tokens).to(device),
        pad_token_ids([prompt_tokens] * count).to(device),
        prompt_mel.float().unsqueeze(0).expand(count, -1, -1).to(device),
        torch.full((count,), prompt_mel.shape[0], device=device),
    )
    return [max(1, round(float(f) / speed)) for f in log_frames.exp().cpu()]
