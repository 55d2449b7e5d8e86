"""Model properties on tiny random models: shapes, masks, padding, seeds, the loss and upstream key names.

Upstream zero-initialises the adaLN linears, ``norm_out``, ``proj_out`` and the GRN gains, which would make
most outputs trivially zero; ``tests.helpers.models.randomized`` gives those parameters seeded random values first.
"""

from __future__ import annotations

import functools
import math
import threading

import pytest
import torch

from flowtts.config import load_config
from flowtts.model import CFM, build_model
from flowtts.model.cfm import EPSS_GRIDS, span_mask, time_grid
from flowtts.model.modules import Attention, TextEmbedding, lens_to_mask
from tests.helpers.models import randomized, small_model_config

BACKBONES = ["DiT", "UNetT", "MMDiT"]
VOCAB = 20
MEL = 100


small_config = functools.partial(small_model_config, VOCAB)


def tiny_model(backbone: str = "DiT", seed: int = 0, keep_zero: tuple[str, ...] = (), **overrides) -> CFM:
    torch.manual_seed(seed)
    return randomized(build_model(small_config(backbone, **overrides)), seed, keep_zero).eval()


def random_batch(lengths: list[int], text_lengths: list[int], seed: int = 1):
    """x, cond (zero beyond each length), text ids padded with -1, times and the frame mask."""
    generator = torch.Generator().manual_seed(seed)
    b, n, nt = len(lengths), max(lengths), max(text_lengths)
    lens = torch.tensor(lengths)
    mask = lens_to_mask(lens, n)  # [b, n]
    x = torch.randn(b, n, MEL, generator=generator) * mask[..., None]
    cond = torch.randn(b, n, MEL, generator=generator) * mask[..., None]
    text = torch.randint(0, VOCAB, (b, nt), generator=generator)
    text = text.masked_fill(~lens_to_mask(torch.tensor(text_lengths), nt), -1)
    time = torch.rand(b, generator=generator)
    return x, cond, text, time, mask


def forward_item_alone(model: CFM, x, cond, text, time, item: int, length: int, text_length: int) -> torch.Tensor:
    with torch.no_grad():
        return model.transformer(
            x=x[item : item + 1, :length],
            cond=cond[item : item + 1, :length],
            text=text[item : item + 1, :text_length],
            time=time[item : item + 1],
        )[0]


# ---------------------------------------------------------------- shapes and masks


@pytest.mark.parametrize("backbone", BACKBONES)
def test_padded_batch_gives_mel_shaped_output(backbone):
    model = tiny_model(backbone)
    x, cond, text, time, mask = random_batch([30, 18, 25], [12, 8, 10])
    with torch.no_grad():
        out = model.transformer(x=x, cond=cond, text=text, time=time, mask=mask)
        packed = model.transformer(x=x, cond=cond, text=text, time=time, mask=mask, cfg_infer=True)
    assert out.shape == (3, 30, MEL) and torch.isfinite(out).all()
    assert packed.shape == (6, 30, MEL)
    assert torch.allclose(packed[:3], out, atol=1e-5)  # the conditional half is the plain forward


@pytest.mark.parametrize("backbone", BACKBONES)
def test_packed_unconditional_half_drops_audio_and_text(backbone):
    model = tiny_model(backbone)
    x, cond, text, time, mask = random_batch([20, 14], [9, 6])
    with torch.no_grad():
        packed = model.transformer(x=x, cond=cond, text=text, time=time, mask=mask, cfg_infer=True)
        dropped = model.transformer(
            x=x, cond=cond, text=text, time=time, mask=mask, drop_audio_cond=True, drop_text=True
        )
    assert torch.allclose(packed[2:], dropped, atol=1e-5)


@pytest.mark.parametrize("attn_mask_enabled", [False, True])
def test_attention_output_is_zero_on_padded_frames(attn_mask_enabled):
    model = tiny_model(attn_mask_enabled=attn_mask_enabled)
    outputs = []
    for module in model.modules():
        if isinstance(module, Attention):
            module.register_forward_hook(lambda _m, _args, out: outputs.append(out))
    x, cond, text, time, mask = random_batch([30, 18], [12, 8])
    with torch.no_grad():
        final = model.transformer(x=x, cond=cond, text=text, time=time, mask=mask)
    assert len(outputs) == 2
    for out in outputs:
        assert torch.count_nonzero(out[1, 18:]) == 0
        assert out[1, :18].abs().amax() > 0
    assert final[1, 18:].abs().amax() > 0  # only the attention output is masked, not the block's other paths


def test_default_dit_attends_to_padded_keys_like_upstream():
    """``attn_mask_enabled=False`` (upstream default): valid frames of a padded item see the padding."""
    model = tiny_model(keep_zero=("grn.gamma",))
    x, cond, text, time, mask = random_batch([30, 18], [12, 8])
    with torch.no_grad():
        batched = model.transformer(x=x, cond=cond, text=text, time=time, mask=mask)
    alone = forward_item_alone(model, x, cond, text, time, item=1, length=18, text_length=8)
    assert (batched[1, :18] - alone).abs().amax() > 1e-3
    longest_alone = forward_item_alone(model, x, cond, text, time, item=0, length=30, text_length=12)
    assert (batched[0] - longest_alone).abs().amax() <= 1e-5


def test_dit_padding_does_not_change_valid_outputs_with_attention_mask():
    """With key masking, an item padded inside a batch gives its unpadded outputs.

    The GRN gains stay at their upstream zero init: with nonzero gains the text embedding depends on the
    padded length (see the next test), which is upstream behaviour that the fixtures confirm.
    """
    model = tiny_model(attn_mask_enabled=True, keep_zero=("grn.gamma",))
    x, cond, text, time, mask = random_batch([30, 18, 24], [12, 8, 5])
    with torch.no_grad():
        batched = model.transformer(x=x, cond=cond, text=text, time=time, mask=mask)
    for item, (length, text_length) in enumerate([(30, 12), (18, 8), (24, 5)]):
        alone = forward_item_alone(model, x, cond, text, time, item, length, text_length)
        assert (batched[item, :length] - alone).abs().amax() <= 1e-5


@pytest.mark.parametrize("flags", [{}, {"pe_attn_head": 1, "text_mask_padding": False}], ids=["v1", "v0"])
def test_isolated_items_match_their_unpadded_outputs(flags):
    """``isolate_items=True``: padding changes nothing, even with upstream attention and trained GRN gains."""
    model = tiny_model(heads=4, dim_head=16, **flags)
    x, cond, text, time, mask = random_batch([30, 18, 24], [12, 8, 5])
    with torch.no_grad():
        batched = model.transformer(x=x, cond=cond, text=text, time=time, mask=mask, isolate_items=True)
        packed = model.transformer(x=x, cond=cond, text=text, time=time, mask=mask, isolate_items=True, cfg_infer=True)
    for item, (length, text_length) in enumerate([(30, 12), (18, 8), (24, 5)]):
        alone = forward_item_alone(model, x, cond, text, time, item, length, text_length)
        assert (batched[item, :length] - alone).abs().amax() <= 1e-5
        assert (packed[item, :length] - alone).abs().amax() <= 1e-5


def test_text_embedding_depends_on_padded_length_only_through_grn():
    """ConvNeXt GRN normalises over the whole (padded) time axis, as upstream does."""
    torch.manual_seed(0)
    embed = TextEmbedding(VOCAB, 32, mask_padding=True, conv_layers=2)
    text = torch.randint(0, VOCAB, (1, 8))
    with torch.no_grad():
        for block in embed.text_blocks:
            block.grn.beta.normal_()
        same = embed(text, 12)[0, :8], embed(text, 30)[0, :8]
        for block in embed.text_blocks:
            block.grn.gamma.normal_()
        differ = embed(text, 12)[0, :8], embed(text, 30)[0, :8]
    assert torch.allclose(*same, atol=1e-6)
    assert (differ[0] - differ[1]).abs().amax() > 1e-4


# ---------------------------------------------------------------- sampling


def test_initial_noise_is_manual_seed_randn_per_item():
    model = tiny_model()
    durations = torch.tensor([15, 27, 9])
    noise = model.initial_noise(durations, [5, 6, 7], torch.float32)
    assert noise.shape == (3, 27, MEL)
    for item, (duration, seed) in enumerate(zip([15, 27, 9], [5, 6, 7], strict=True)):
        torch.manual_seed(seed)
        assert torch.equal(noise[item, :duration], torch.randn(duration, MEL))
        assert torch.count_nonzero(noise[item, duration:]) == 0
        alone = model.initial_noise(torch.tensor([duration]), [seed], torch.float32)
        assert torch.equal(alone[0], noise[item, :duration])
    shared = model.initial_noise(torch.tensor([15, 27, 15]), 5, torch.float32)  # one seed for every item
    assert torch.equal(shared[0], shared[2])


def test_initial_noise_rejects_wrong_seed_count():
    with pytest.raises(ValueError, match="2 seeds for a batch of 3"):
        tiny_model().initial_noise(torch.tensor([4, 4, 4]), [1, 2], torch.float32)


SAMPLE_ITEMS = [  # (prompt frames, total frames, text tokens, seed)
    (10, 30, 9, 11),
    (6, 22, 5, 12),
    (14, 40, 12, 13),
]


def sample_inputs(seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.tensor([p for p, _, _, _ in SAMPLE_ITEMS])
    cond = torch.randn(3, int(prompts.max()), MEL, generator=generator) * lens_to_mask(prompts)[..., None]
    nt = max(t for _, _, t, _ in SAMPLE_ITEMS)
    text = torch.randint(0, VOCAB, (3, nt), generator=generator)
    text = text.masked_fill(~lens_to_mask(torch.tensor([t for _, _, t, _ in SAMPLE_ITEMS]), nt), -1)
    return cond, text


def sample_batch_and_alone(model: CFM, steps: int = 4, isolate_items: bool = False):
    cond, text = sample_inputs()
    prompts, durations, text_lengths, seeds = (list(col) for col in zip(*SAMPLE_ITEMS, strict=True))
    batched = model.sample(
        cond=cond,
        text=text,
        duration=torch.tensor(durations),
        lens=torch.tensor(prompts),
        steps=steps,
        seed=seeds,
        isolate_items=isolate_items,
    )
    alone = [
        model.sample(cond=cond[i : i + 1, :p], text=text[i : i + 1, :t], duration=d, steps=steps, seed=s).mel[0]
        for i, (p, d, t, s) in enumerate(SAMPLE_ITEMS)
    ]
    return cond, batched, alone


def test_seed_gives_identical_items_whatever_the_batch_with_attention_mask():
    model = tiny_model(attn_mask_enabled=True, keep_zero=("grn.gamma",))
    cond, batched, alone = sample_batch_and_alone(model)
    assert batched.mel.shape == (3, 40, MEL)
    assert batched.duration.tolist() == [30, 22, 40]
    for item, (prompt, duration, _, _) in enumerate(SAMPLE_ITEMS):
        assert (batched.mel[item, :duration] - alone[item]).abs().amax() <= 1e-5
        assert torch.equal(batched.mel[item, :prompt], cond[item, :prompt])  # prompt copied into the output
        assert torch.count_nonzero(batched.mel[item, duration:]) == 0


def test_isolated_sampling_gives_identical_items_whatever_the_batch():
    model = tiny_model()  # upstream attention, trained-like (nonzero) GRN gains
    cond, batched, alone = sample_batch_and_alone(model, isolate_items=True)
    for item, (prompt, duration, _, _) in enumerate(SAMPLE_ITEMS):
        assert (batched.mel[item, :duration] - alone[item]).abs().amax() <= 1e-5
        assert torch.equal(batched.mel[item, :prompt], cond[item, :prompt])


def test_seed_in_a_batch_with_default_attention_matches_only_the_longest_item():
    """Upstream default: padded keys are attended, so only the unpadded (longest) item is batch-free."""
    model = tiny_model(keep_zero=("grn.gamma",))
    _, batched, alone = sample_batch_and_alone(model)
    assert (batched.mel[2] - alone[2]).abs().amax() <= 1e-5
    assert (batched.mel[1, :22] - alone[1]).abs().amax() > 1e-4


def test_sampling_is_reproducible_under_a_seed():
    model = tiny_model()
    cond, text = sample_inputs()
    first = model.sample(cond=cond[:1], text=text[:1], duration=24, steps=3, seed=7).mel
    again = model.sample(cond=cond[:1], text=text[:1], duration=24, steps=3, seed=7).mel
    other = model.sample(cond=cond[:1], text=text[:1], duration=24, steps=3, seed=8).mel
    assert torch.equal(first, again)
    assert (first - other).abs().amax() > 1e-3


def test_duration_is_raised_to_cover_prompt_and_text():
    model = tiny_model()
    cond, text = sample_inputs()
    out = model.sample(cond=cond[2:3, :14], text=text[2:3], duration=5, steps=2, seed=0)
    assert out.duration.tolist() == [15]  # max(12 text tokens, 14 prompt frames) + 1
    assert out.mel.shape == (1, 15, MEL)


def test_concurrent_sampling_calls_do_not_share_state():
    model = tiny_model()
    cond, text = sample_inputs()
    calls = [dict(cond=cond[i : i + 1], text=text[i : i + 1], duration=26, steps=3, seed=i) for i in range(3)]
    expected = [model.sample(**call).mel for call in calls]
    results: dict[int, torch.Tensor] = {}

    def run(index: int) -> None:
        results[index] = model.sample(**calls[index]).mel

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, mel in enumerate(expected):  # a shared text cache would mix up the texts: far beyond 1e-5
        assert torch.allclose(results[index], mel, atol=1e-5)


def test_time_grid_uses_epss_and_sway():
    epss = time_grid(16, use_epss=True, sway_sampling_coef=None, device="cpu", dtype=torch.float32)
    assert torch.allclose(epss, torch.tensor(EPSS_GRIDS[16], dtype=torch.float32) / 32)
    uniform = time_grid(32, use_epss=True, sway_sampling_coef=None, device="cpu", dtype=torch.float32)
    assert torch.allclose(uniform, torch.linspace(0, 1, 33))
    swayed = time_grid(8, use_epss=False, sway_sampling_coef=-1.0, device="cpu", dtype=torch.float32)
    t = torch.linspace(0, 1, 9)
    assert torch.allclose(swayed, 1 - torch.cos(math.pi / 2 * t), atol=1e-6)


# ---------------------------------------------------------------- training loss


def test_span_mask_covers_70_to_100_percent_of_each_length():
    torch.manual_seed(0)
    lens = torch.tensor([40, 25, 33, 7, 100])
    for _ in range(50):
        frac = torch.zeros(len(lens)).uniform_(0.7, 1.0)
        spans = span_mask(lens, frac, 100)
        for row, length in zip(spans, lens.tolist(), strict=True):
            positions = row.nonzero().flatten()
            assert math.floor(0.7 * length) <= len(positions) <= length
            assert positions.max() < length
            assert torch.equal(positions, torch.arange(positions[0], positions[0] + len(positions)))


def test_flow_loss_is_a_finite_scalar_over_a_span_inside_the_lengths():
    model = randomized(build_model(small_config(), audio_drop_prob=0.0, cond_drop_prob=0.0)).train()
    lens = torch.tensor([40, 25, 33])
    mel = torch.randn(3, 40, MEL) * lens_to_mask(lens)[..., None]
    text = torch.randint(0, VOCAB, (3, 15)).masked_fill(~lens_to_mask(torch.tensor([15, 9, 12])), -1)
    result = model(mel, text, lens)
    assert result.loss.ndim == 0 and torch.isfinite(result.loss) and result.loss > 0
    assert result.pred.shape == mel.shape
    assert not (result.span_mask & ~lens_to_mask(lens, 40)).any()
    for row, length in zip(result.span_mask, lens.tolist(), strict=True):
        assert math.floor(0.7 * length) <= int(row.sum()) <= length
    assert torch.count_nonzero(result.cond[result.span_mask]) == 0
    assert torch.equal(result.cond[~result.span_mask], mel[~result.span_mask])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradients_reach_every_used_parameter(backbone):
    model = randomized(build_model(small_config(backbone), audio_drop_prob=0.0, cond_drop_prob=0.0)).train()
    lens = torch.tensor([40, 25])
    mel = torch.randn(2, 40, MEL) * lens_to_mask(lens)[..., None]
    model(mel, torch.randint(0, VOCAB, (2, 15)), lens).loss.backward()
    without_gradient = {name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    # MMDiT's last block reads text only as keys/values; its text queries are discarded (as upstream).
    unused = {f"transformer.transformer_blocks.1.attn.to_q_c.{p}" for p in ("weight", "bias")}
    assert without_gradient == (unused if backbone == "MMDiT" else set())


@pytest.mark.parametrize(
    ("audio_drop", "joint_drop", "expected"),
    [
        (0.0, 0.0, (False, False)),
        (1.0, 0.0, (True, False)),
        (0.0, 1.0, (True, True)),  # the joint drop removes the audio condition too
    ],
)
def test_condition_dropout_draws(audio_drop, joint_drop, expected):
    model = build_model(small_config(), audio_drop_prob=audio_drop, cond_drop_prob=joint_drop).train()
    seen = []

    def record(_module, _args, kwargs):
        seen.append((kwargs["drop_audio_cond"], kwargs["drop_text"]))

    model.transformer.register_forward_pre_hook(record, with_kwargs=True)
    model(torch.randn(2, 20, MEL), torch.randint(0, VOCAB, (2, 6)))
    assert seen == [expected]


# ---------------------------------------------------------------- upstream state-dict names


def meta_model(preset: str, vocab_size: int = 2545) -> CFM:
    with torch.device("meta"):
        return build_model(load_config(preset).model.with_vocab_size(vocab_size))


@pytest.mark.parametrize(
    ("preset", "keys", "params"),
    [
        ("F5TTS_v1_Base", 364, 337_096_804),
        ("F5TTS_Base", 364, 337_096_804),
        ("F5TTS_v1_Small", 308, 159_228_772),
        ("E2TTS_Base", None, 333_470_444),
        ("E2TTS_Small", None, 157_161_708),
    ],
)
def test_upstream_key_and_parameter_counts(preset, keys, params):
    model = meta_model(preset)
    state = model.state_dict()
    assert all(key.startswith("transformer.") for key in state)
    if keys is not None:
        assert len(state) == keys
    assert sum(p.numel() for p in model.parameters()) == params


def test_f5tts_v1_base_key_shapes():
    state = {
        k.removeprefix("transformer."): tuple(v.shape) for k, v in meta_model("F5TTS_v1_Base").state_dict().items()
    }
    expected = {
        "time_embed.time_mlp.0.weight": (1024, 256),
        "time_embed.time_mlp.2.weight": (1024, 1024),
        "text_embed.text_embed.weight": (2546, 512),
        "text_embed.text_blocks.3.dwconv.weight": (512, 1, 7),
        "text_embed.text_blocks.0.pwconv1.weight": (1024, 512),
        "text_embed.text_blocks.0.grn.gamma": (1, 1, 1024),
        "text_embed.text_blocks.0.pwconv2.weight": (512, 1024),
        "input_embed.proj.weight": (1024, 712),
        "input_embed.conv_pos_embed.conv1d.0.weight": (1024, 64, 31),
        "input_embed.conv_pos_embed.conv1d.2.weight": (1024, 64, 31),
        "rotary_embed.inv_freq": (32,),
        "transformer_blocks.21.attn_norm.linear.weight": (6144, 1024),
        "transformer_blocks.0.attn.to_q.weight": (1024, 1024),
        "transformer_blocks.0.attn.to_out.0.weight": (1024, 1024),
        "transformer_blocks.0.ff.ff.0.0.weight": (2048, 1024),
        "transformer_blocks.0.ff.ff.2.weight": (1024, 2048),
        "norm_out.linear.weight": (2048, 1024),
        "proj_out.weight": (100, 1024),
    }
    assert {k: state[k] for k in expected} == expected
    assert "transformer_blocks.22.attn_norm.linear.weight" not in state
    assert not any(".norm." in k or "ff_norm" in k for k in state if k.startswith("transformer_blocks"))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_only_saved_buffer_is_rotary_inv_freq(backbone):
    model = build_model(small_config(backbone, dim_head=64))
    parameters = {name for name, _ in model.named_parameters()}
    buffers = {k: v for k, v in model.state_dict().items() if k not in parameters}
    assert list(buffers) == ["transformer.rotary_embed.inv_freq"]
    inv_freq = buffers["transformer.rotary_embed.inv_freq"]
    assert inv_freq.dtype == torch.float32
    assert torch.equal(inv_freq, 1.0 / 10000 ** (torch.arange(0, 64, 2).float() / 64))


def test_unett_key_names():
    depth, dim = 4, 64
    state = {
        k.removeprefix("transformer."): tuple(v.shape)
        for k, v in build_model(small_config("UNetT", depth=depth)).state_dict().items()
    }
    for i in range(depth):
        skip = f"layers.{i}.0.weight"
        assert (state.get(skip) == (dim, 2 * dim)) if i >= depth // 2 else skip not in state
        assert state[f"layers.{i}.1.g"] == state[f"layers.{i}.3.g"] == (dim,)
        assert state[f"layers.{i}.2.to_q.weight"] == (64, dim)
        assert state[f"layers.{i}.4.ff.0.0.weight"] == (2 * dim, dim)  # ff_mult 2 in small_config
    assert state["norm_out.g"] == (dim,)
    assert state["input_embed.proj.weight"] == (dim, 300)  # text_dim None -> mel_dim: x | cond | text
    assert state["text_embed.text_embed.weight"] == (VOCAB + 1, 100)
    assert not any("text_blocks" in k or "attn_norm" in k for k in state)


def test_mmdit_key_names():
    depth, dim = 3, 64
    state = {
        k.removeprefix("transformer."): tuple(v.shape)
        for k, v in build_model(small_config("MMDiT", depth=depth)).state_dict().items()
    }
    last = depth - 1
    assert state["audio_embed.linear.weight"] == (dim, 200)
    assert "audio_embed.conv_pos_embed.conv1d.0.weight" in state
    assert state["text_embed.text_embed.weight"] == (VOCAB + 1, dim)
    for i in range(depth):
        block = f"transformer_blocks.{i}"
        assert state[f"{block}.attn_norm_x.linear.weight"] == (6 * dim, dim)
        for proj in ("to_q", "to_k", "to_v", "to_q_c", "to_k_c", "to_v_c", "to_out.0"):
            assert f"{block}.attn.{proj}.weight" in state
        assert (f"{block}.attn.to_out_c.weight" in state) == (i != last)
        assert (f"{block}.ff_c.ff.0.0.weight" in state) == (i != last)
        assert f"{block}.ff_x.ff.2.weight" in state
    assert state[f"transformer_blocks.{last}.attn_norm_c.linear.weight"] == (2 * dim, dim)  # final adaLN
    assert state["transformer_blocks.0.attn_norm_c.linear.weight"] == (6 * dim, dim)
    assert state["norm_out.linear.weight"] == (2 * dim, dim)


# ---------------------------------------------------------------- v0 and v1 behaviour flags


def forward_with_config(weights: dict[str, torch.Tensor], **flags) -> torch.Tensor:
    model = build_model(small_config(heads=4, dim_head=16, **flags))
    model.load_state_dict(weights, strict=True)
    x, cond, text, time, mask = random_batch([24, 16], [10, 6])
    with torch.no_grad():
        return model.eval().transformer(x=x, cond=cond, text=text, time=time, mask=mask)


def test_v0_flags_change_outputs_on_the_same_weights():
    torch.manual_seed(0)
    v1_model = randomized(build_model(small_config(heads=4, dim_head=16)))
    weights = v1_model.state_dict()
    v0_model = build_model(small_config(heads=4, dim_head=16, pe_attn_head=1, text_mask_padding=False))
    v0_keys = v0_model.state_dict()
    assert {k: v.shape for k, v in v0_keys.items()} == {k: v.shape for k, v in weights.items()}

    v1 = forward_with_config(weights)
    assert (forward_with_config(weights, pe_attn_head=1, text_mask_padding=False) - v1).abs().amax() > 1e-3
    assert (forward_with_config(weights, pe_attn_head=1) - v1).abs().amax() > 1e-3
    assert (forward_with_config(weights, text_mask_padding=False) - v1).abs().amax() > 1e-3
    # RoPE on every head is what pe_attn_head=None means.
    assert torch.allclose(forward_with_config(weights, pe_attn_head=4), v1, atol=1e-6)
