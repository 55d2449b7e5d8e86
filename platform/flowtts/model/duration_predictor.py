"""Total-duration predictor: how many mel frames a text takes in the voice of a reference clip.

Upstream F5-TTS has none; it scales the reference length by the UTF-8 byte ratio of the texts. This
module predicts ``log(frames of the new text)`` as that ratio rule counted in characters plus a learned
correction from the two texts (a ConvNeXt character encoder, masked mean pooled) and the reference
(log frame count, mean and spread of its mel). The correction head starts at zero, so an untrained
predictor already behaves like a character-ratio rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flowtts.config import DurationPredictorConfig
from flowtts.model.modules import ConvNeXtV2Block, precompute_freqs_cis


@dataclass
class DurationBatch:
    """Training examples of the predictor: generate ``text`` in the voice of a reference clip."""

    text: torch.Tensor  # [b, nt] ids of the text to speak, padded with -1
    ref_text: torch.Tensor  # [b, nr] ids of the reference prompt, padded with -1
    ref_mel: torch.Tensor  # [b, n, mel] the reference clip, zero-padded
    ref_lens: torch.Tensor  # [b] reference frames
    frames: torch.Tensor  # [b] true frames of ``text``

    def to(self, device: torch.device | str) -> DurationBatch:
        return DurationBatch(
            *(t.to(device) for t in (self.text, self.ref_text, self.ref_mel, self.ref_lens, self.frames))
        )


class TextEncoder(nn.Module):
    max_pos = 4096

    def __init__(self, num_embeds: int, dim: int, conv_layers: int):
        super().__init__()
        self.embed = nn.Embedding(num_embeds + 1, dim)  # +1: row 0 is padding, as in the DiT
        self.register_buffer("freqs_cis", precompute_freqs_cis(dim, self.max_pos), persistent=False)
        self.blocks = nn.ModuleList([ConvNeXtV2Block(dim, dim * 2) for _ in range(conv_layers)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [b, nt] padded with -1 -> pooled [b, dim]."""
        keep = (ids >= 0).unsqueeze(-1)  # [b, nt, 1]
        positions = torch.arange(ids.shape[1], device=ids.device).clamp(max=self.max_pos - 1)
        x = (self.embed(ids + 1) + self.freqs_cis[positions]).masked_fill(~keep, 0.0)
        for block in self.blocks:
            x = block(x).masked_fill(~keep, 0.0)
        return x.sum(dim=1) / keep.sum(dim=1).clamp(min=1)


class DurationPredictor(nn.Module):
    def __init__(self, config: DurationPredictorConfig, text_num_embeds: int):
        super().__init__()
        self.encoder = TextEncoder(text_num_embeds, config.dim, config.conv_layers)
        features = 2 * config.dim + 2 * config.ref_mel_dim + 3
        self.head = nn.Sequential(
            nn.Linear(features, config.dim), nn.SiLU(), nn.Dropout(config.dropout), nn.Linear(config.dim, 1)
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(
        self, text_ids: torch.Tensor, ref_text_ids: torch.Tensor, ref_mel: torch.Tensor, ref_lens: torch.Tensor
    ) -> torch.Tensor:
        """Predicted log frame count of ``text_ids`` spoken like the reference: ``[b]``.

        text_ids / ref_text_ids: [b, nt] padded with -1; ref_mel: [b, n, mel] zero-padded; ref_lens: [b].
        """
        n_text = (text_ids >= 0).sum(dim=1).clamp(min=1).float()
        n_ref_text = (ref_text_ids >= 0).sum(dim=1).clamp(min=1).float()
        ref_frames = ref_lens.clamp(min=1).float()
        prior = ref_frames.log() + n_text.log() - n_ref_text.log()  # character-ratio rule, in log frames
        keep = (torch.arange(ref_mel.shape[1], device=ref_mel.device)[None, :] < ref_lens[:, None]).unsqueeze(-1)
        mean = (ref_mel * keep).sum(1) / ref_frames[:, None]
        std = (((ref_mel - mean[:, None]) ** 2 * keep).sum(1) / ref_frames[:, None]).sqrt()
        features = torch.cat(
            [
                self.encoder(text_ids),
                self.encoder(ref_text_ids),
                mean,
                std,
                torch.stack([ref_frames.log(), n_text.log(), n_ref_text.log()], dim=1),
            ],
            dim=1,
        )
        return prior + self.head(features).squeeze(-1)

    def loss(self, batch: DurationBatch) -> torch.Tensor:
        """L1 on log duration."""
        predicted = self(batch.text, batch.ref_text, batch.ref_mel, batch.ref_lens)
        return F.l1_loss(predicted, batch.frames.clamp(min=1).float().log())
