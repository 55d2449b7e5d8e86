"""Training the duration predictor on mel shards: pairs of clips by the same speaker.

Each example asks: given clip B as the voice reference (its text, frame count and mel), how many
frames does clip A's text take? A and B are different clips of the same speaker, as at inference,
where the reference is another recording of the voice. The predictor trains either together with the
CFM (its loss is added to the flow loss, ``train.duration_loss_weight``) or alone, for an already
trained or imported CFM (official checkpoints have none): ``train_duration_predictor``.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence

import torch

from flowtts.config import DurationPredictorConfig
from flowtts.model import CFM, build_model
from flowtts.model.duration_predictor import DurationBatch
from flowtts.shards import decode_mel
from flowtts.synthesis.reference import encode_prompt, prompt_text, reference_text
from flowtts.text import normalize_text, pad_token_ids
from flowtts.training.data import TrainingData

logger = logging.getLogger(__name__)


class DurationExamples:
    """Random same-speaker (target, reference) pairs over the rows of one split."""

    def __init__(self, data: TrainingData):
        groups = defaultdict(list)
        for row, speaker in enumerate(data.speakers()):
            groups[speaker].append(row)
        self.groups = [rows for rows in groups.values() if len(rows) > 1]
        if not self.groups:
            raise ValueError("no speaker has two clips: the duration predictor needs same-speaker pairs")
        self.data = data

    def sample(self, size: int, rng: random.Random | None = None) -> DurationBatch:
        """``size`` pairs: a random clip of a speaker with two or more clips, and another clip of theirs.
        Draws from ``random`` unless given ``rng`` (the training loop checkpoints ``random``'s state)."""
        rng = rng or random
        pairs = []
        for _ in range(size):
            rows = rng.choice(self.groups)
            pairs.append(tuple(rng.sample(rows, 2)))
        return self.batch(pairs)

    def prompt_ids(self, row: int) -> list[int]:
        """The reference prompt of ``row`` as the predictor sees it."""
        return self._prompt_ids(self.data.text(row))

    def _prompt_ids(self, text: str) -> list[int]:
        return encode_prompt(self.data.vocab, prompt_text(reference_text(text, normalize_text)), unknown="space")

    def batch(self, pairs: Sequence[tuple[int, int]]) -> DurationBatch:
        """Examples for (target row, reference row) pairs; the rows are read through the data's reader."""
        targets = self.data.reader.read([target for target, _ in pairs])
        refs = self.data.reader.read([ref for _, ref in pairs])
        ref_mels = [decode_mel(ref.mel, ref.n_frames) for ref in refs]
        return DurationBatch(
            text=pad_token_ids([self.data.vocab.encode(target.text) for target in targets]),
            ref_text=pad_token_ids([self._prompt_ids(ref.text) for ref in refs]),
            ref_mel=torch.nn.utils.rnn.pad_sequence(ref_mels, batch_first=True),
            ref_lens=torch.tensor([mel.shape[0] for mel in ref_mels]),
            frames=torch.tensor([target.n_frames for target in targets]),
        )


def with_duration_predictor(model: CFM, config: DurationPredictorConfig | None = None) -> CFM:
    """The same CFM with a (new, untrained) duration predictor when it has none."""
    if model.duration_predictor is not None:
        return model
    grown = build_model(model.config.model_copy(update={"duration_predictor": config or DurationPredictorConfig()}))
    grown.load_state_dict(model.state_dict(), strict=False)
    return grown.to(model.device)


def train_duration_predictor(
    model: CFM, examples: DurationExamples, *, steps: int = 1000, batch_size: int = 32, lr: float = 1e-3, seed: int = 0
) -> list[float]:
    """Fit ``model.duration_predictor`` alone (the CFM stays frozen); returns the loss of every step."""
    if model.duration_predictor is None:
        raise ValueError("the model has no duration predictor: wrap it with with_duration_predictor first")
    predictor = model.duration_predictor.train()
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    losses = []
    for step in range(steps):
        loss = predictor.loss(examples.sample(batch_size, rng).to(model.device))
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
