"""Held-out evaluation: how close a model's speech comes to the real recording of unseen sentences.

Each held-out clip is synthesised from another clip of the same speaker (taken from the training
split) as the voice reference, once with the ground-truth duration and once with the estimated
duration (the model's duration predictor when it has one, else upstream's byte-ratio rule). The
generated mel is compared with the recording's mel (MCD-DTW, log-mel L1, duration error). Two
baselines are measured on the same items: an untrained model of the same architecture, and the
ground truth of a different sentence by the same speaker (the reference clip itself).
The mel metrics run on mels from the shards, with no vocoder involved; the optional model-based ones
(:mod:`flowtts.evaluation.judges`: ASR word and character error rates, speaker similarity to the recording
and to the prompt) hear vocoded audio.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from flowtts.evaluation.judges import Judges
from flowtts.evaluation.metrics import ErrorCounts, compare_mels, mape, sum_error_counts
from flowtts.inference import SamplingBackend, make_backend
from flowtts.model import CFM
from flowtts.shards import HELDOUT_DIR, TRAIN_DIR, decode_mel, read_table
from flowtts.storage import Location, resolve
from flowtts.synthesis.duration_rules import byte_ratio_frames, predicted_frames
from flowtts.synthesis.reference import encode_prompt, prompt_text, reference_text
from flowtts.text import Vocab, normalize_text, pad_token_ids

logger = logging.getLogger(__name__)
DURATION_MODES = ("truth", "estimate")
MEAN_METRICS = ("mcd_dtw", "mel_l1", "duration_error", "speaker_sim", "sim_o")  # summarised as a mean
WORD_METRICS = ("wer", "substitution_rate", "deletion_rate", "insertion_rate", "cer")  # as summed edits / words
METRICS = MEAN_METRICS + WORD_METRICS


@dataclass
class EvalItem:
    audio_file: str
    speaker: str
    text: str
    mel: torch.Tensor  # [n, 100] the recording
    ref_audio_file: str
    ref_text: str
    ref_mel: torch.Tensor  # [n_ref, 100] another clip of the same speaker


@dataclass
class ItemScore:
    system: str  # "model", "untrained" or "other_sentence"
    duration_mode: str  # "truth" or "estimate" ("truth" for the ground-truth baseline)
    audio_file: str
    mcd_dtw: float
    mel_l1: float
    duration_error: float
    frames: int
    target_frames: int
    wer: float | None = None  # with an ASR judge: the edits below / reference_words
    speaker_sim: float | None = None  # with a speaker judge; higher is better: to the clip's recording
    sim_o: float | None = None  # to the prompt the model was conditioned on (upstream's SIM-o)
    transcript: str | None = None  # what the ASR judge heard
    substitutions: int | None = None
    deletions: int | None = None
    insertions: int | None = None
    reference_words: int | None = None
    cer: float | None = None  # char_errors / reference_chars (the characters of the words)
    char_errors: int | None = None
    reference_chars: int | None = None

    @property
    def word_errors(self) -> ErrorCounts | None:
        if self.reference_words is None:
            return None
        return ErrorCounts(self.substitutions, self.deletions, self.insertions, self.reference_words)


def build_eval_items(dataset: str | Path | Location, *, max_items: int | None = None, seed: int = 0) -> list[EvalItem]:
    """Pair every held-out clip with a training clip of the same speaker (deterministic choice)."""
    heldout = read_table(dataset, HELDOUT_DIR).to_pylist()
    by_speaker = defaultdict(list)
    for row in read_table(dataset, TRAIN_DIR).to_pylist():
        by_speaker[row["speaker"]].append(row)
    items = []
    for row in sorted(heldout, key=lambda r: r["audio_file"]):
        candidates = [r for r in by_speaker.get(row["speaker"], []) if r["text"] != row["text"]]
        if not candidates:
            logger.warning(
                "held-out %s: speaker %r has no training clip to use as reference; skipped",
                row["audio_file"],
                row["speaker"],
            )
            continue
        ref = min(candidates, key=lambda r: _rank(seed, row["audio_file"], r["audio_file"]))
        items.append(
            EvalItem(
                audio_file=row["audio_file"],
                speaker=row["speaker"],
                text=row["text"],
                mel=decode_mel(row["mel"], row["n_frames"]),
                ref_audio_file=ref["audio_file"],
                ref_text=ref["text"],
                ref_mel=decode_mel(ref["mel"], ref["n_frames"]),
            )
        )
    if not items:
        raise ValueError(
            f"{dataset}: no held-out clip has a same-speaker reference; preprocess with "
            "--holdout-fraction or --holdout-list"
        )
    return items[:max_items] if max_items else items


def _rank(seed: int, target: str, candidate: str) -> str:
    return hashlib.sha256(f"{seed}|{target}|{candidate}".encode()).hexdigest()


def prompt_ids(vocab: Vocab, item: EvalItem) -> tuple[list[int], list[int]]:
    """(reference prompt ids, target text ids), tokenised as synthesis does it."""
    prompt = prompt_text(reference_text(item.ref_text, normalize_text))  # shard texts are already normalised
    return encode_prompt(vocab, prompt, unknown="space"), vocab.encode(item.text, unknown="space")


def estimated_frames(model: CFM, vocab: Vocab, item: EvalItem) -> int:
    """Generated frames by the model's duration predictor, else by upstream's byte-ratio rule."""
    if model.duration_predictor is not None:
        ref_ids, text_ids = prompt_ids(vocab, item)
        return predicted_frames(model.duration_predictor, ref_ids, item.ref_mel, [text_ids], 1.0)[0]
    return byte_ratio_estimate(vocab, item)


def byte_ratio_estimate(vocab: Vocab, item: EvalItem) -> int:
    ref_ids, _ = prompt_ids(vocab, item)
    ref_frames = item.ref_mel.shape[0]
    return byte_ratio_frames(ref_frames, vocab.decode(ref_ids), item.text, 1.0) - ref_frames


@torch.no_grad()
def duration_mape(model: CFM, vocab: Vocab, items: list[EvalItem]) -> dict[str, float]:
    """Mean absolute percentage error (%) of the frame count of each item's text: upstream's byte-ratio
    rule, and the model's duration predictor when it has one."""
    truth = [item.mel.shape[0] for item in items]
    errors = {"byte_ratio": mape([byte_ratio_estimate(vocab, item) for item in items], truth)}
    if model.duration_predictor is not None:
        errors["predictor"] = mape([estimated_frames(model, vocab, item) for item in items], truth)
    return errors


def heldout_duration_mape(model: CFM, vocab: Vocab, dataset: str | Path | Location) -> dict[str, float]:
    """``duration_mape_byte_ratio`` and ``duration_mape_predictor`` on the dataset's held-out clips; empty
    (with a log line) when it has no usable held-out split."""
    if not resolve(dataset).join(HELDOUT_DIR).files(".parquet"):
        logger.info("no held-out split in %s: duration error not measured", dataset)
        return {}
    try:
        items = build_eval_items(dataset)
    except ValueError as exc:
        logger.warning("duration error not measured: %s", exc)
        return {}
    errors = duration_mape(model.eval(), vocab, items)
    logger.info(
        "held-out duration MAPE over %d clips: %s",
        len(items),
        ", ".join(f"{rule} {value:.1f} %" for rule, value in errors.items()),
    )
    return {f"duration_mape_{rule}": value for rule, value in errors.items()}


def synthesise_mels(
    model: CFM,
    vocab: Vocab,
    items: list[EvalItem],
    gen_frames: list[int],
    *,
    nfe: int,
    seed: int,
    batch_size: int = 8,
    backend: SamplingBackend | None = None,
) -> list[torch.Tensor]:
    """Generated mels (reference frames removed), several items per sample() call."""
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        ids = [sum(prompt_ids(vocab, item), []) for item in chunk]  # reference prompt + target text
        lens = torch.tensor([it.ref_mel.shape[0] for it in chunk])
        cond = torch.nn.utils.rnn.pad_sequence([it.ref_mel for it in chunk], batch_first=True)
        totals = lens + torch.tensor(gen_frames[start : start + batch_size])
        result = model.sample(
            cond=cond,
            text=pad_token_ids(ids),
            duration=totals,
            lens=lens,
            steps=nfe,
            seed=[seed + start + i for i in range(len(chunk))],
            isolate_items=True,
            backend=backend,
        )
        for i in range(len(chunk)):
            out.append(result.mel[i, int(lens[i]) : int(result.duration[i])].float().cpu())
    return out


def score_model(
    system: str,
    model: CFM,
    vocab: Vocab,
    items: list[EvalItem],
    *,
    nfe: int = 16,
    seed: int = 0,
    judges: Judges | None = None,
    backend: str = "eager",
) -> tuple[list[ItemScore], dict[str, list[torch.Tensor]]]:
    """Scores of one model under both duration modes, plus the generated mels by mode; ``backend`` (see
    ``flowtts.inference``) runs its sampling steps."""
    sampler = make_backend(backend, model)
    scores, mels = [], {}
    for mode in DURATION_MODES:
        if mode == "truth":
            frames = [it.mel.shape[0] for it in items]
        else:
            frames = [estimated_frames(model, vocab, it) for it in items]
        mels[mode] = synthesise_mels(model, vocab, items, frames, nfe=nfe, seed=seed, backend=sampler)
        pairs = zip(items, mels[mode], strict=True)
        scores += [_score(system, mode, it, gen, judges, prompted=True) for it, gen in pairs]
    return scores, mels


def score_other_sentence(items: list[EvalItem], judges: Judges | None = None) -> list[ItemScore]:
    """Baseline: the real recording of a different sentence by the same speaker (it is the prompt itself,
    so it has no SIM-o)."""
    return [_score("other_sentence", "truth", it, it.ref_mel, judges, prompted=False) for it in items]


def _score(
    system: str, mode: str, item: EvalItem, gen: torch.Tensor, judges: Judges | None, *, prompted: bool
) -> ItemScore:
    metrics = compare_mels(item.mel, gen)
    judged = {}
    if judges is not None:
        prompt = {"prompt_clip": item.ref_audio_file, "prompt": item.ref_mel} if prompted else {}
        judged = judges.score(item.audio_file, item.text, item.mel, gen, **prompt)
    return ItemScore(
        system=system,
        duration_mode=mode,
        audio_file=item.audio_file,
        mcd_dtw=metrics.mcd_dtw,
        mel_l1=metrics.mel_l1,
        duration_error=metrics.duration_error,
        frames=int(gen.shape[0]),
        target_frames=int(item.mel.shape[0]),
        **judged,
    )


def summarise(scores: list[ItemScore]) -> dict[str, float]:
    """Per (system, duration mode), keys like ``model/truth/mcd_dtw``: the mean of each of ``MEAN_METRICS``
    that was measured; with an ASR judge the corpus-level ``wer`` (summed edits over summed reference words,
    not a mean of per-item rates), its ``substitution_rate``, ``deletion_rate`` and ``insertion_rate``
    (which add up to it), ``reference_words``, and ``cer`` likewise over characters."""
    groups = defaultdict(list)
    for s in scores:
        groups[(s.system, s.duration_mode)].append(s)
    summary = {}
    for (system, mode), group in sorted(groups.items()):
        key = f"{system}/{mode}"
        for metric in MEAN_METRICS:
            values = [getattr(s, metric) for s in group if getattr(s, metric) is not None]
            if values:
                summary[f"{key}/{metric}"] = float(np.mean(values))
        heard = [s for s in group if s.word_errors is not None]
        if heard:
            words = sum_error_counts(s.word_errors for s in heard)
            summary[f"{key}/wer"] = words.rate
            for edit in ("substitution", "deletion", "insertion"):
                summary[f"{key}/{edit}_rate"] = getattr(words, f"{edit}s") / words.reference_length
            summary[f"{key}/reference_words"] = float(words.reference_length)
            summary[f"{key}/cer"] = sum(s.char_errors for s in heard) / sum(s.reference_chars for s in heard)
    return summary


def as_rows(scores: list[ItemScore]) -> list[dict]:
    return [asdict(s) for s in scores]
