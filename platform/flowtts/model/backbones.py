"""The three upstream backbones: DiT (F5-TTS), UNetT (E2-TTS) and MMDiT.

All take ``x`` (noisy mel), ``cond`` (masked reference mel), ``text`` (ids padded with -1) and
``time`` and return the predicted flow ``[b, n, mel_dim]``. ``cfg_infer=True`` packs the conditional
and unconditional passes into one ``2b`` forward. Text embeddings are cached only through an explicit
``TextCache`` owned by the caller, so one model can serve concurrent calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from flowtts.config import ModelConfig
from flowtts.model.modules import (
    AdaLayerNorm,
    AdaLayerNormFinal,
    Attention,
    ConvPositionEmbedding,
    DiTBlock,
    FeedForward,
    InputEmbedding,
    RotaryEmbedding,
    ScaledRMSNorm,
    TextEmbedding,
    TimestepEmbedding,
    precompute_freqs_cis,
)


@dataclass
class TextCache:
    """Text embeddings of one sampling call, keyed by drop_text (computed once per call)."""

    embeds: dict[bool, torch.Tensor] = field(default_factory=dict)


class Backbone(nn.Module):
    """Shared forward protocol: embed inputs (cond and uncond when packing CFG), run the body."""

    def embed(self, x, cond, text, drop_audio_cond, drop_text, mask, cache, isolate):  # pragma: no cover
        raise NotImplementedError

    def body(self, h, t, mask, text, isolate):  # pragma: no cover - interface
        raise NotImplementedError

    def compute_text_embedding(self, text, seq_len, drop_text, mask, isolate):  # pragma: no cover - interface
        raise NotImplementedError

    def text_embedding(
        self,
        text: torch.Tensor,
        seq_len: int,
        drop_text: bool,
        mask: torch.Tensor | None,
        cache: TextCache | None,
        isolate: bool,
    ) -> torch.Tensor:
        if cache is not None and drop_text in cache.embeds:
            return cache.embeds[drop_text]
        emb = self.compute_text_embedding(text, seq_len, drop_text, mask, isolate)
        if cache is not None:
            cache.embeds[drop_text] = emb
        return emb

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        text: torch.Tensor,
        time: torch.Tensor,
        mask: torch.Tensor | None = None,
        drop_audio_cond: bool = False,
        drop_text: bool = False,
        cfg_infer: bool = False,
        cache: TextCache | None = None,
        isolate_items: bool = False,
    ) -> torch.Tensor:
        """``isolate_items=True``: every item is computed exactly as if it were alone in the batch (padded
        keys masked in attention, text embedded at the item's own length). The default keeps upstream's
        batch semantics, under which padding in a batch slightly changes the other items."""
        b = x.shape[0]
        isolate = isolate_items and mask is not None
        if time.ndim == 0:
            time = time.repeat(b)
        t = self.time_embed(time)  # [b, d]
        if cfg_infer:
            h = torch.cat(
                (
                    self.embed(x, cond, text, False, False, mask, cache, isolate),
                    self.embed(x, cond, text, True, True, mask, cache, isolate),
                ),
                dim=0,
            )  # [2b, n, d]
            t = torch.cat((t, t), dim=0)
            mask = torch.cat((mask, mask), dim=0) if mask is not None else None
        else:
            h = self.embed(x, cond, text, drop_audio_cond, drop_text, mask, cache, isolate)
        return self.body(h, t, mask, text, isolate)


class DiT(Backbone):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        text_dim = cfg.text_dim or cfg.mel_dim
        self.time_embed = TimestepEmbedding(cfg.dim)
        self.text_embed = TextEmbedding(
            cfg.text_num_embeds,
            text_dim,
            mask_padding=cfg.text_mask_padding,
            conv_layers=cfg.conv_layers,
            average_upsampling=cfg.text_embedding_average_upsampling,
        )
        self.input_embed = InputEmbedding(cfg.mel_dim, text_dim, cfg.dim)
        self.rotary_embed = RotaryEmbedding(cfg.dim_head)
        self.transformer_blocks = nn.ModuleList(
            [
                DiTBlock(
                    cfg.dim,
                    cfg.heads,
                    cfg.dim_head,
                    cfg.ff_mult,
                    cfg.dropout,
                    cfg.qk_norm,
                    cfg.pe_attn_head,
                    cfg.attn_mask_enabled,
                )
                for _ in range(cfg.depth)
            ]
        )
        self.long_skip_connection = nn.Linear(cfg.dim * 2, cfg.dim, bias=False) if cfg.long_skip_connection else None
        self.norm_out = AdaLayerNormFinal(cfg.dim)
        self.proj_out = nn.Linear(cfg.dim, cfg.mel_dim)
        self.checkpoint_activations = cfg.checkpoint_activations
        for block in self.transformer_blocks:
            _zero(block.attn_norm.linear)
        _zero(self.norm_out.linear)
        _zero(self.proj_out)

    def compute_text_embedding(self, text, seq_len, drop_text, mask, isolate):
        if not isolate:  # upstream: one embedding at the batch length (ConvNeXt and GRN see the padding),
            # with each item's ids and positions cut at its own audio length when there is a mask
            lens = mask.sum(dim=1) if mask is not None else None
            return self.text_embed(text, seq_len, drop_text=drop_text, lens=lens)
        rows = [
            self.text_embed(text[i : i + 1], int(n), drop_text=drop_text)[0]
            for i, n in enumerate(mask.sum(dim=1).tolist())
        ]
        emb = nn.utils.rnn.pad_sequence(rows, batch_first=True)  # [b, max_len, text_dim]
        return F.pad(emb, (0, 0, 0, seq_len - emb.shape[1]))  # [b, n, text_dim]

    def embed(self, x, cond, text, drop_audio_cond, drop_text, mask, cache, isolate):
        text_emb = self.text_embedding(text, x.shape[1], drop_text, mask, cache, isolate)  # [b, n, text_dim]
        return self.input_embed(x, cond, text_emb, drop_audio_cond=drop_audio_cond, audio_mask=mask)

    def body(self, h, t, mask, text, isolate):
        rope = self.rotary_embed.forward_from_seq_len(h.shape[1])
        residual = h
        mask_keys = True if isolate else None  # None: the blocks' configured attn_mask_enabled
        for block in self.transformer_blocks:
            if self.checkpoint_activations and self.training:
                h = checkpoint(block, h, t, mask, rope, mask_keys, use_reentrant=False)
            else:
                h = block(h, t, mask=mask, rope=rope, mask_keys=mask_keys)
        if self.long_skip_connection is not None:
            h = self.long_skip_connection(torch.cat((h, residual), dim=-1))
        return self.proj_out(self.norm_out(h, t))  # [b, n, mel]


class UNetT(Backbone):
    """E2-TTS: flat transformer with concat skip connections; time is a prepended token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        text_dim = cfg.text_dim or cfg.mel_dim
        self.time_embed = TimestepEmbedding(cfg.dim)
        self.text_embed = TextEmbedding(
            cfg.text_num_embeds,
            text_dim,
            mask_padding=cfg.text_mask_padding,
            conv_layers=cfg.conv_layers,
            max_pos=4096,  # upstream's UNetT keeps the older position table
        )
        self.input_embed = InputEmbedding(cfg.mel_dim, text_dim, cfg.dim)
        self.rotary_embed = RotaryEmbedding(cfg.dim_head)
        self.depth = cfg.depth
        self.layers = nn.ModuleList()
        for idx in range(cfg.depth):
            later_half = idx >= cfg.depth // 2
            self.layers.append(
                nn.ModuleList(
                    [
                        nn.Linear(cfg.dim * 2, cfg.dim, bias=False) if later_half else None,
                        ScaledRMSNorm(cfg.dim),
                        Attention(
                            cfg.dim,
                            cfg.heads,
                            cfg.dim_head,
                            cfg.dropout,
                            qk_norm=cfg.qk_norm,
                            pe_attn_head=cfg.pe_attn_head,
                            attn_mask_enabled=cfg.attn_mask_enabled,  # upstream default off: padded keys attended
                        ),
                        ScaledRMSNorm(cfg.dim),
                        FeedForward(cfg.dim, mult=cfg.ff_mult, dropout=cfg.dropout, approximate="tanh"),
                    ]
                )
            )
        self.norm_out = ScaledRMSNorm(cfg.dim)
        self.proj_out = nn.Linear(cfg.dim, cfg.mel_dim)

    def compute_text_embedding(self, text, seq_len, drop_text, mask, isolate):
        return self.text_embed(text, seq_len, drop_text=drop_text)  # upstream UNetT: no per-item lengths

    def embed(self, x, cond, text, drop_audio_cond, drop_text, mask, cache, isolate):
        text_emb = self.text_embedding(text, x.shape[1], drop_text, mask, cache, isolate)
        return self.input_embed(x, cond, text_emb, drop_audio_cond=drop_audio_cond)  # ConvPos never masked

    def body(self, h, t, mask, text, isolate):
        h = torch.cat((t.unsqueeze(1), h), dim=1)  # [b, 1+n, d]
        mask = F.pad(mask, (1, 0), value=True) if mask is not None else None
        rope = self.rotary_embed.forward_from_seq_len(h.shape[1])
        skips = []
        for idx, (skip_proj, attn_norm, attn, ff_norm, ff) in enumerate(self.layers):
            if idx < self.depth // 2:
                skips.append(h)
            else:
                h = skip_proj(torch.cat((h, skips.pop()), dim=-1))
            h = attn(attn_norm(h), mask=mask, rope=rope) + h
            h = ff(ff_norm(h)) + h
        return self.proj_out(self.norm_out(h)[:, 1:])


class MMDiTTextEmbedding(nn.Module):
    max_pos = 1024

    def __init__(self, out_dim: int, text_num_embeds: int, mask_padding: bool = True):
        super().__init__()
        self.text_embed = nn.Embedding(text_num_embeds + 1, out_dim)
        self.mask_padding = mask_padding
        self.register_buffer("freqs_cis", precompute_freqs_cis(out_dim, self.max_pos), persistent=False)

    def forward(self, text: torch.Tensor, drop_text: bool = False) -> torch.Tensor:
        ids = text + 1
        pad = (ids == 0).unsqueeze(-1)
        if drop_text:
            ids = torch.zeros_like(ids)
        positions = torch.arange(ids.shape[1], device=ids.device).clamp(max=self.max_pos - 1)
        x = self.text_embed(ids) + self.freqs_cis[positions]  # [b, nt, d]
        return x.masked_fill(pad, 0.0) if self.mask_padding else x


class AudioEmbedding(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(2 * in_dim, out_dim)
        self.conv_pos_embed = ConvPositionEmbedding(out_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, drop_audio_cond: bool = False) -> torch.Tensor:
        if drop_audio_cond:
            cond = torch.zeros_like(cond)
        h = self.linear(torch.cat((x, cond), dim=-1))
        return self.conv_pos_embed(h) + h


class MMDiTBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        ff_mult: int,
        dropout: float,
        context_pre_only: bool,
        qk_norm: str | None,
        attn_mask_enabled: bool,
    ):
        super().__init__()
        self.context_pre_only = context_pre_only
        self.attn_norm_c = AdaLayerNormFinal(dim) if context_pre_only else AdaLayerNorm(dim)
        self.attn_norm_x = AdaLayerNorm(dim)
        self.attn = Attention(
            dim,
            heads,
            dim_head,
            dropout,
            qk_norm=qk_norm,
            context_dim=dim,
            context_pre_only=context_pre_only,
            attn_mask_enabled=attn_mask_enabled,
        )
        if not context_pre_only:
            self.ff_norm_c = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.ff_c = FeedForward(dim, mult=ff_mult, dropout=dropout, approximate="tanh")
        self.ff_norm_x = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_x = FeedForward(dim, mult=ff_mult, dropout=dropout, approximate="tanh")

    def forward(self, x, c, t, mask=None, rope=None, c_rope=None, c_mask=None):
        if self.context_pre_only:
            norm_c = self.attn_norm_c(c, t)
        else:
            norm_c, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.attn_norm_c(c, emb=t)
        norm_x, x_gate_msa, x_shift_mlp, x_scale_mlp, x_gate_mlp = self.attn_norm_x(x, emb=t)
        x_attn, c_attn = self.attn(norm_x, mask=mask, rope=rope, c=norm_c, c_rope=c_rope, c_mask=c_mask)
        if self.context_pre_only:
            c = None
        else:
            c = c + c_gate_msa.unsqueeze(1) * c_attn
            norm = self.ff_norm_c(c) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
            c = c + c_gate_mlp.unsqueeze(1) * self.ff_c(norm)
        x = x + x_gate_msa.unsqueeze(1) * x_attn
        norm = self.ff_norm_x(x) * (1 + x_scale_mlp[:, None]) + x_shift_mlp[:, None]
        return c, x + x_gate_mlp.unsqueeze(1) * self.ff_x(norm)


class MMDiT(Backbone):
    """Joint text/audio attention; the text is a separate token stream, not upsampled to frames."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.time_embed = TimestepEmbedding(cfg.dim)
        self.text_embed = MMDiTTextEmbedding(cfg.dim, cfg.text_num_embeds, mask_padding=cfg.text_mask_padding)
        self.audio_embed = AudioEmbedding(cfg.mel_dim, cfg.dim)
        self.rotary_embed = RotaryEmbedding(cfg.dim_head)
        self.transformer_blocks = nn.ModuleList(
            [
                MMDiTBlock(
                    cfg.dim,
                    cfg.heads,
                    cfg.dim_head,
                    cfg.ff_mult,
                    cfg.dropout,
                    i == cfg.depth - 1,
                    cfg.qk_norm,
                    cfg.attn_mask_enabled,
                )
                for i in range(cfg.depth)
            ]
        )
        self.norm_out = AdaLayerNormFinal(cfg.dim)
        self.proj_out = nn.Linear(cfg.dim, cfg.mel_dim)
        self.checkpoint_activations = cfg.checkpoint_activations
        for block in self.transformer_blocks:
            _zero(block.attn_norm_x.linear)
            _zero(block.attn_norm_c.linear)
        _zero(self.norm_out.linear)
        _zero(self.proj_out)

    def compute_text_embedding(self, text, seq_len, drop_text, mask, isolate):
        return self.text_embed(text, drop_text=drop_text)

    def embed(self, x, cond, text, drop_audio_cond, drop_text, mask, cache, isolate):
        c = self.text_embedding(text, x.shape[1], drop_text, mask, cache, isolate)  # [b, nt, d]
        return torch.cat((self.audio_embed(x, cond, drop_audio_cond), c), dim=1)  # [b, n+nt, d] (split in body)

    def body(self, h, t, mask, text, isolate):
        nt = text.shape[1]
        x, c = h.split((h.shape[1] - nt, nt), dim=1)  # split, not h[:, :-nt]: exported graphs keep sizes symbolic
        # upstream: the text padding mask is always passed (zeroes padded tokens' attention output), even
        # for a single item; with cfg_infer it covers both halves of the packed batch
        c_mask = (text != -1).repeat(h.shape[0] // text.shape[0], 1)  # [b or 2b, nt]
        rope_audio = self.rotary_embed.forward_from_seq_len(x.shape[1])
        rope_text = self.rotary_embed.forward_from_seq_len(nt)
        for block in self.transformer_blocks:
            if self.checkpoint_activations and self.training:
                c, x = checkpoint(block, x, c, t, mask, rope_audio, rope_text, c_mask, use_reentrant=False)
            else:
                c, x = block(x, c, t, mask=mask, rope=rope_audio, c_rope=rope_text, c_mask=c_mask)
        return self.proj_out(self.norm_out(x, t))


def _zero(layer: nn.Linear) -> None:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


BACKBONES: dict[str, type[Backbone]] = {"DiT": DiT, "UNetT": UNetT, "MMDiT": MMDiT}
