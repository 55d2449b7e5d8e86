"""Building blocks shared by the DiT, UNetT and MMDiT backbones.

Module and parameter names match upstream F5-TTS exactly, so official state dicts load strictly.
Shapes: b = batch, n = mel frames, nt = text tokens, d = model dim, h = heads, dh = head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def lens_to_mask(lens: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """``lens [b]`` -> boolean ``[b, length]`` with True on valid frames."""
    length = int(lens.amax()) if length is None else length
    return torch.arange(length, device=lens.device)[None, :] < lens[:, None]


class SinusPositionEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor, scale: float = 1000) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=x.device).float() * -(math.log(10000) / (half - 1)))
        emb = scale * x.unsqueeze(1) * freqs.unsqueeze(0)  # [b, half]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)  # [b, dim]


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int, freq_embed_dim: int = 256):
        super().__init__()
        self.time_embed = SinusPositionEmbedding(freq_embed_dim)
        self.time_mlp = nn.Sequential(nn.Linear(freq_embed_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        hidden = self.time_embed(timestep).to(timestep.dtype)  # [b, 256]
        return self.time_mlp(hidden)  # [b, d]


def precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    """Absolute sinusoidal positions for text, ``[end, dim]`` laid out as ``cat(cos, sin)``."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    angles = torch.outer(torch.arange(end).float(), freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt-V2); the norm runs over the time axis."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=1, keepdim=True)  # [b, 1, c]
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    def __init__(self, dim: int, intermediate_dim: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.grn = GRN(intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [b, nt, c]
        h = self.dwconv(x.transpose(1, 2)).transpose(1, 2)
        h = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(h)))))
        return x + h


class TextEmbedding(nn.Module):
    """Character embedding (+1 shift, row 0 = filler), absolute positions and ConvNeXt blocks.

    ``max_pos``: positions are clipped there (DiT 8192, UNetT 4096 as upstream)."""

    def __init__(
        self,
        text_num_embeds: int,
        text_dim: int,
        mask_padding: bool = True,
        conv_layers: int = 0,
        conv_mult: int = 2,
        max_pos: int = 8192,
        average_upsampling: bool = False,
    ):
        super().__init__()
        self.text_embed = nn.Embedding(text_num_embeds + 1, text_dim)
        self.mask_padding = mask_padding
        self.average_upsampling = average_upsampling
        self.max_pos = max_pos
        self.extra_modeling = conv_layers > 0
        if self.extra_modeling:
            self.register_buffer("freqs_cis", precompute_freqs_cis(text_dim, max_pos), persistent=False)
            self.text_blocks = nn.Sequential(
                *[ConvNeXtV2Block(text_dim, text_dim * conv_mult) for _ in range(conv_layers)]
            )

    def forward(
        self, text: torch.Tensor, seq_len: int, drop_text: bool = False, lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``lens [b]`` (upstream DiT, when the batch has an audio mask): beyond an item's own length its
        ids, embeddings and positions are zeroed, so a text longer than a short item is cut at that item's
        length. The ConvNeXt blocks still run over the whole batch length: without ``mask_padding`` (v0) the
        zeroed tail is not re-masked and leaks into the valid frames through the convolution and GRN.
        That is upstream's batch semantics, which the released v0 models and their fine-tunes run under."""
        ids = (text + 1)[:, :seq_len]  # pad -1 -> filler 0
        ids = F.pad(ids, (0, seq_len - ids.shape[1]), value=0)  # [b, n]
        valid = None if lens is None else lens_to_mask(lens, seq_len).unsqueeze(-1)  # [b, n, 1]
        if valid is not None:
            ids = ids.masked_fill(~valid[..., 0], 0)
        pad = (ids == 0).unsqueeze(-1)  # [b, n, 1]: filler, batch padding and beyond the item's length
        if drop_text:
            ids = torch.zeros_like(ids)
        x = self.text_embed(ids)  # [b, n, c]
        if valid is not None:
            x = x.masked_fill(~valid, 0.0)
        if self.extra_modeling:
            positions = torch.arange(seq_len, device=ids.device).clamp(max=self.max_pos - 1)
            freqs = self.freqs_cis[positions]  # [n, c]
            x = x + (freqs if valid is None else freqs * valid)
            if self.mask_padding:
                x = x.masked_fill(pad, 0.0)
                for block in self.text_blocks:
                    x = block(x).masked_fill(pad, 0.0)
            else:
                x = self.text_blocks(x)
        if self.average_upsampling:
            target = lens if lens is not None else torch.full((x.shape[0],), seq_len, device=x.device)
            x = average_upsample(x, ~pad[..., 0], target)
        return x


def average_upsample(x: torch.Tensor, token_mask: torch.Tensor, target_lens: torch.Tensor) -> torch.Tensor:
    """ZipVoice-style upsampling (upstream ``text_embedding_average_upsampling``): an item's L real tokens
    (``token_mask [b, n]``) are spread evenly over its A frames, the last ``A % L`` tokens one frame longer."""
    out = torch.zeros_like(x)
    for i, (tokens, frames) in enumerate(zip(token_mask.sum(dim=1).tolist(), target_lens.tolist(), strict=True)):
        if tokens == 0 or frames <= 0:
            continue
        counts = torch.full((tokens,), frames // tokens, device=x.device)
        counts[tokens - frames % tokens :] += 1  # empty slice when it divides evenly
        out[i, :frames] = torch.repeat_interleave(x[i, token_mask[i]], counts, dim=0)
    return out


class ConvPositionEmbedding(nn.Module):
    def __init__(self, dim: int, kernel_size: int = 31, groups: int = 16):
        super().__init__()
        self.conv1d = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size, groups=groups, padding=kernel_size // 2),
            nn.Mish(),
            nn.Conv1d(dim, dim, kernel_size, groups=groups, padding=kernel_size // 2),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # x: [b, n, d]
        if mask is None:
            return self.conv1d(x.transpose(1, 2)).transpose(1, 2)
        keep = mask.unsqueeze(1)  # [b, 1, n]
        h = x.transpose(1, 2).masked_fill(~keep, 0.0)
        for layer in self.conv1d:
            h = layer(h)
            if isinstance(layer, nn.Conv1d):
                h = h.masked_fill(~keep, 0.0)
        return h.transpose(1, 2)


class InputEmbedding(nn.Module):
    def __init__(self, mel_dim: int, text_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(mel_dim * 2 + text_dim, out_dim)
        self.conv_pos_embed = ConvPositionEmbedding(out_dim)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        text_embed: torch.Tensor,
        drop_audio_cond: bool = False,
        audio_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if drop_audio_cond:
            cond = torch.zeros_like(cond)
        h = self.proj(torch.cat((x, cond, text_embed), dim=-1))  # [b, n, d]
        return self.conv_pos_embed(h, mask=audio_mask) + h


class RotaryEmbedding(nn.Module):
    """x-transformers-compatible RoPE (interleaved pairs); ``inv_freq`` is the one persistent buffer."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))

    def forward_from_seq_len(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` tables ``[1, 1, n, dh]`` for pairs f0 f0 f1 f1 ..., sin with the sign of the rotation.

        Computed once per forward and shared by every layer (upstream takes cos and sin of the angles again
        in each attention, for q and for k). ``sin`` carries the ``(-, +)`` sign of each pair so rotating is
        one pair swap: ``(-x2) * s == x2 * (-s)`` exactly, so the result is bitwise upstream's."""
        t = torch.arange(seq_len, device=self.inv_freq.device).float()
        freqs = torch.outer(t, self.inv_freq.float())  # [n, dh/2]
        angles = torch.stack((freqs, freqs), dim=-1).flatten(-2)[None, None]  # [1, 1, n, dh]
        sign = torch.tensor([-1.0, 1.0], device=angles.device).repeat(angles.shape[-1] // 2)
        return angles.cos(), angles.sin() * sign


def swap_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2, x3, x4, ...) -> (x2, x1, x4, x3, ...) along the last axis."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def apply_rotary_pos_emb(t: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """t: [b, h, n, dh]; rope: ``RotaryEmbedding.forward_from_seq_len`` tables, the last n positions used."""
    cos, sin = rope
    rot, n = cos.shape[-1], t.shape[-2]
    cos, sin = cos[:, :, cos.shape[2] - n :], sin[:, :, sin.shape[2] - n :]  # positive bounds: export
    if rot == t.shape[-1]:
        return (t * cos + swap_pairs(t) * sin).type(t.dtype)
    head = t[..., :rot]
    return torch.cat((head * cos + swap_pairs(head) * sin, t[..., rot:]), dim=-1).type(t.dtype)


class RMSNorm(nn.Module):
    """Upstream's RMSNorm with a ``weight`` (used for qk_norm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.float().pow(2).mean(-1, keepdim=True).add(self.eps).rsqrt()
        return (x.float() * norm).to(x.dtype) * self.weight


class ScaledRMSNorm(nn.Module):
    """x-transformers RMSNorm (gain ``g``), used by UNetT."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.g


class Attention(nn.Module):
    """Multi-head self attention (or joint attention with a text context for MMDiT)."""

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        qk_norm: str | None = None,
        pe_attn_head: int | None = None,
        context_dim: int | None = None,
        context_pre_only: bool = False,
        attn_mask_enabled: bool = True,
    ):
        super().__init__()
        inner = heads * dim_head
        self.attn_mask_enabled = attn_mask_enabled
        self.heads = heads
        self.pe_attn_head = pe_attn_head
        self.context_dim = context_dim
        self.context_pre_only = context_pre_only
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.q_norm = RMSNorm(dim_head) if qk_norm else None
        self.k_norm = RMSNorm(dim_head) if qk_norm else None
        if context_dim is not None:
            self.to_q_c = nn.Linear(context_dim, inner)
            self.to_k_c = nn.Linear(context_dim, inner)
            self.to_v_c = nn.Linear(context_dim, inner)
            self.c_q_norm = RMSNorm(dim_head) if qk_norm else None  # upstream's names (c_ first)
            self.c_k_norm = RMSNorm(dim_head) if qk_norm else None
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])
        if context_dim is not None and not context_pre_only:
            self.to_out_c = nn.Linear(inner, context_dim)

    def _heads(self, x: torch.Tensor, proj: nn.Linear, norm: nn.Module | None) -> torch.Tensor:
        h = proj(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [b, h, n, dh]
        return norm(h) if norm is not None else h

    def _rope(self, t: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        if rope is None:
            return t
        if self.pe_attn_head is None:
            return apply_rotary_pos_emb(t, rope)
        pn = self.pe_attn_head  # v0 behaviour: only the first heads carry RoPE
        return torch.cat((apply_rotary_pos_emb(t[:, :pn], rope), t[:, pn:]), dim=1)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        c: torch.Tensor | None = None,
        c_rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_keys: bool | None = None,
        c_mask: torch.Tensor | None = None,
    ):
        """mask [b, n]: valid frames. Padded frames always get a zero output; padded keys are excluded
        from attention when ``mask_keys`` (default: the configured ``attn_mask_enabled``).
        Joint attention (MMDiT): c_mask [b, nt] marks real text tokens; as upstream, padded tokens get a
        zero context output always, but are masked as keys only together with an audio mask (so a single
        item, sampled without a mask, attends to its own text padding)."""
        q = self._rope(self._heads(x, self.to_q, self.q_norm), rope)
        k = self._rope(self._heads(x, self.to_k, self.k_norm), rope)
        v = self._heads(x, self.to_v, None)
        mask_keys = self.attn_mask_enabled if mask_keys is None else mask_keys
        attn_mask = mask if mask_keys else None
        if c is not None:
            q = torch.cat((q, self._rope(self._heads(c, self.to_q_c, self.c_q_norm), c_rope)), dim=2)
            k = torch.cat((k, self._rope(self._heads(c, self.to_k_c, self.c_k_norm), c_rope)), dim=2)
            v = torch.cat((v, self._heads(c, self.to_v_c, None)), dim=2)
            if attn_mask is not None:
                text_keys = c_mask if c_mask is not None else attn_mask.new_ones(c.shape[:2])
                attn_mask = torch.cat((attn_mask, text_keys), dim=1)  # [b, n + nt]
        if attn_mask is not None:  # additive: what SDPA does with a boolean mask (bitwise the same output), but an
            # exported graph then adds a [b, 1, 1, n_kv] bias instead of selecting over every [b, h, n, n_kv] score
            attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, -torch.inf)
            attn_mask = attn_mask[:, None, None, :]  # [b, 1, 1, n_kv]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [b, h, n, dh]
        out = out.transpose(1, 2).flatten(2).to(q.dtype)  # [b, n(+nt), h*dh]
        n = x.shape[1]
        x_out = self.to_out[1](self.to_out[0](out if c is None else out[:, :n]))  # no copy without a context
        if mask is not None:  # padded frames get no attention output, whether or not keys are masked
            x_out = x_out.masked_fill(~mask.unsqueeze(-1), 0.0)
        if c is None:
            return x_out
        c_out = None if self.context_pre_only else self.to_out_c(out[:, n:])
        if c_out is not None and c_mask is not None:
            c_out = c_out.masked_fill(~c_mask.unsqueeze(-1), 0.0)
        return x_out, c_out


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0, approximate: str = "none"):
        super().__init__()
        inner = int(dim * mult)
        self.ff = nn.Sequential(
            nn.Sequential(nn.Linear(dim, inner), nn.GELU(approximate=approximate)),
            nn.Dropout(dropout),
            nn.Linear(inner, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class AdaLayerNorm(nn.Module):
    """adaLN-Zero: returns the modulated input and the five remaining modulation vectors."""

    def __init__(self, dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, dim * 6)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, emb: torch.Tensor):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.linear(self.silu(emb)).chunk(6, dim=1)
        x = self.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormFinal(nn.Module):
    """Final adaLN; note the (scale, shift) order, reversed from the blocks."""

    def __init__(self, dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, dim * 2)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(self.silu(emb)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale)[:, None, :] + shift[:, None, :]


class DiTBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        ff_mult: int = 4,
        dropout: float = 0.1,
        qk_norm: str | None = None,
        pe_attn_head: int | None = None,
        attn_mask_enabled: bool = False,
    ):
        super().__init__()
        self.attn_norm = AdaLayerNorm(dim)
        self.attn = Attention(
            dim,
            heads,
            dim_head,
            dropout,
            qk_norm=qk_norm,
            pe_attn_head=pe_attn_head,
            attn_mask_enabled=attn_mask_enabled,
        )
        self.ff_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, mult=ff_mult, dropout=dropout, approximate="tanh")

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_keys: bool | None = None,
    ) -> torch.Tensor:
        norm, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.attn_norm(x, emb=t)
        x = x + gate_msa.unsqueeze(1) * self.attn(norm, mask=mask, rope=rope, mask_keys=mask_keys)
        norm = self.ff_norm(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp.unsqueeze(1) * self.ff(norm)
