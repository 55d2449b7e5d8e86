"""Training the duration predictor on mel shards: pairs of clips by the same speaker.

Each example asks: given clip B as the voice reference (its text, frame count and mel), how many
frames does clip A's text take? A and B are different clips of the same speaker, as at inference,
where the reference is another recording of the voice. Only the predictor's weights are trained, so
this works for an already trained or imported CFM (official checkpoints have no predictor).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from flowtts.config import DurationPredictorConfig
from flowtts.model import CFM, build_model
from flowtts.model.duration import duration_loss
from flowtts.shards import TRAIN_DIR, decode_mel, read_table
from flowtts.synthesis.reference import encode_prompt, prompt_text, reference_text
from flowtts.text import Vocab, normalize_text, pad_token_ids

logger = logging.getLogger(__name__)


@dataclass
class Clip:
    text_ids: list[int]  # the clip's text, as the text to generate
    prompt_ids: list[int]  # the clip's text, as a reference prompt (upstream's ". " ending)
    mel: torch.Tensor  # [n, 100]
    speaker: str


def load_clips(dataset: str | Path, vocab: Vocab, split: str = TRAIN_DIR) -> list[Clip]:
    clips = []
    for row in read_table(dataset, split, columns=["text", "speaker", "n_frames", "mel"]).to_pylist():
        prompt = prompt_text(reference_text(row["text"], normalize_text))
        clips.append(Clip(text_ids=vocab.encode(row["text"], unknown="space"),
                          prompt_ids=encode_prompt(vocab, prompt, unknown="space"),
                          mel=decode_mel(row["mel"], row["n_frames"]), speaker=row["speaker"]))
    return clips


def same_speaker_pairs(clips: list[Clip]) -> list[tuple[int, int]]:
    """All (target, reference) index pairs of different clips by the same speaker."""
    by_speaker = defaultdict(list)
    for i, clip in enumerate(clips):
        by_speaker[clip.speaker].append(i)
    return [(a, b) for group in by_speaker.values() for a in group for b in group if a != b]


def pair_batch(clips: list[Clip], pairs: list[tuple[int, int]], device: torch.device):
    """Tensors for the predictor and the target frame counts of a list of pairs."""
    targets = [clips[a] for a, _ in pairs]
    refs = [clips[b] for _, b in pairs]
    ref_mel = torch.nn.utils.rnn.pad_sequence([r.mel for r in refs], batch_first=True)
    return (
        pad_token_ids([t.text_ids for t in targets]).to(device),
        pad_token_ids([r.prompt_ids for r in refs]).to(device),
        ref_mel.to(device),
        torch.tensor([r.mel.shape[0] for r in refs], device=device),
        torch.tensor([t.mel.shape[0] for t in targets], device=device),
    )


def with_duration_predictor(model: CFM, config: DurationPredictorConfig | None = None) -> CFM:
    """The same CFM with a (new, untrained) duration predictor when it has none."""
    if model.duration_predictor is not None:
        return model
    grown = build_model(model.config.model_copy(update={"duration_predictor": config or DurationPredictorConfig()}))
    grown.load_state_dict(model.state_dict(), strict=False)
    return grown.to(model.device)


def train_duration_predictor(model: CFM, clips: list[Clip], *, steps: int = 1000, batch_size: int = 32,
                             lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Fit ``model.duration_predictor`` (the CFM stays frozen); returns the loss of every step."""
    if model.duration_predictor is None:
        raise ValueError("the model has no duration predictor: wrap it with with_duration_predictor first")
    pairs = same_speaker_pairs(clips)
    if not pairs:
        raise ValueError("no speaker has two clips: the duration predictor needs same-speaker pairs")
    predictor = model.duration_predictor.train()
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    losses = []
    for step in range(steps):
        text, ref_text, ref_mel, ref_lens, frames = pair_batch(clips, rng.sample(pairs, min(batch_size, len(pairs))),
                                                                model.device)
        loss = duration_loss(predictor(text, ref_text, ref_mel, ref_lens), frames)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(predictor.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 100 == 0:
            logger.debug("duration step %d loss %.4f", step, losses[-1])
    predictor.eval()
    return losses
