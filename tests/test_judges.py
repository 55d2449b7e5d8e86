"""The optional model-based metrics: an ASR word error rate and a speaker similarity, from judge models in
the Hugging Face layout. Tiny randomly initialised judges are written to local folders (nothing is
downloaded); one ASR judge is rigged to hear a fixed word, so its word error rate is known."""

from __future__ import annotations

import json

import pytest
import torch

from flowtts.checkpoint import save_checkpoint
from flowtts.evaluation.gate import evaluate
from flowtts.evaluation.heldout import build_eval_items, score_other_sentence, summarise
from flowtts.evaluation.judges import Judges, SpeakerJudge
from flowtts.evaluation.report import summary_table
from flowtts.model import build_model
from flowtts.model_source import resolve_model_source
from flowtts.synthesis import GriffinLimVocoder
from flowtts.synthesis.pretrained import PretrainedModelError, resolve_pretrained
from flowtts.synthesis.transcription import Transcriber
from flowtts.training import dataset_vocab
from tests.helpers import SAMPLE_CORPUS
from tests.helpers.asr import ENCODER, feature_extractor, write_ctc_asr
from tests.helpers.models import small_model_config
from tests.helpers.shards import write_dataset

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def speaker_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wavlm-xvector")
    torch.manual_seed(0)
    config = transformers.WavLMConfig(
        **ENCODER,
        tdnn_dim=(16, 16),
        tdnn_kernel=(3, 1),
        tdnn_dilation=(1, 1),
        xvector_output_dim=8,
        num_buckets=16,
        max_bucket_distance=64,
    )
    transformers.WavLMForXVector(config).save_pretrained(folder)
    feature_extractor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def asr_model(tmp_path_factory):
    """A CTC model that hears every clip as the word "a"."""
    return write_ctc_asr(tmp_path_factory.mktemp("ctc-asr"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("judge-data"), SAMPLE_CORPUS, count=6, heldout=2)


def test_pretrained_sources_are_a_folder_or_a_cached_repo_id(speaker_model, tmp_path, monkeypatch):
    assert resolve_pretrained(speaker_model) == speaker_model
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(PretrainedModelError, match="nobody-here/no-such-asr is not in the Hugging Face cache"):
        resolve_pretrained("nobody-here/no-such-asr")
    with pytest.raises(PretrainedModelError, match="neither a folder nor a Hugging Face repo id"):
        resolve_pretrained(str(tmp_path / "missing" / "folder"))


def test_speaker_similarity_is_one_for_the_same_clip_and_lower_for_another(speaker_model):
    judge = SpeakerJudge(speaker_model)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(16000, generator=generator)
    b = torch.sin(torch.arange(12000) * 0.05) + 0.1 * torch.randn(12000, generator=generator)
    assert judge.similarity(a, a) == pytest.approx(1.0, abs=1e-5)
    assert judge.similarity(a, b) == pytest.approx(judge.similarity(b, a), abs=1e-5)
    assert judge.similarity(a, b) < 0.999


def test_asr_transcript_is_scored_against_the_text(asr_model):
    judge = Transcriber(asr_model)
    assert judge.transcribe(torch.randn(16000)) == "a"
    judges = Judges(vocoder=GriffinLimVocoder(), asr=judge)
    mel = torch.randn(90, 100) - 4.0
    assert judges.score("clip-1", "A!", mel, mel)["wer"] == 0.0
    heard = judges.score("clip-2", "a b c d", mel, mel)
    assert heard == {
        "transcript": "a",
        "wer": 0.75,
        "substitutions": 0,
        "deletions": 3,
        "insertions": 0,
        "reference_words": 4,
        "cer": 0.75,
        "char_errors": 3,
        "reference_chars": 4,
    }


def test_evaluation_reports_the_judged_metrics_for_every_system(dataset, asr_model, speaker_model, tmp_path):
    vocab = dataset_vocab(dataset)
    torch.manual_seed(0)
    model = build_model(small_model_config(len(vocab), depth=1))
    folder = save_checkpoint(model, tmp_path / "checkpoint", vocab)
    judges = Judges.load(asr_model=str(asr_model), speaker_model=str(speaker_model), vocoder=None)
    judges.vocoder = GriffinLimVocoder(n_iter=4)  # Griffin-Lim still, with fewer iterations: nobody listens
    candidate = resolve_model_source(str(folder))
    evaluation = evaluate(candidate, dataset, nfe=2, out_dir=tmp_path / "eval", judges=judges, vocoder=judges.vocoder)
    summary = evaluation.summary
    systems = [("model", "truth"), ("model", "estimate"), ("untrained", "truth"), ("other_sentence", "truth")]
    for system, mode in systems:
        key = f"{system}/{mode}"
        assert 0.0 <= summary[f"{key}/wer"] <= 1.0  # "a" against whole sentences: no insertions
        assert -1.0 <= summary[f"{key}/speaker_sim"] <= 1.0
        # overall WER: summed edits over summed reference words, split into S + D + I
        group = [s for s in evaluation.scores if (s.system, s.duration_mode) == (system, mode)]
        edits = {edit: sum(getattr(s, f"{edit}s") for s in group) for edit in ("substitution", "deletion", "insertion")}
        words = sum(s.reference_words for s in group)
        assert summary[f"{key}/reference_words"] == words and edits["insertion"] == 0
        assert summary[f"{key}/wer"] == pytest.approx(sum(edits.values()) / words)
        for edit, count in edits.items():
            assert summary[f"{key}/{edit}_rate"] == pytest.approx(count / words)
        for s in group:  # per item too, and what was heard is kept
            assert s.transcript is not None and s.wer == pytest.approx(s.word_errors.errors / s.reference_words)
            assert s.cer == pytest.approx(s.char_errors / s.reference_chars)
        # SIM-o: to the prompt, for every synthesised rendition (the other-sentence baseline is the prompt)
        if system == "other_sentence":
            assert f"{key}/sim_o" not in summary and all(s.sim_o is None for s in group)
        else:
            assert -1.0 <= summary[f"{key}/sim_o"] <= 1.0 and all(s.sim_o is not None for s in group)
    table = summary_table(summary)
    assert "ASR WER" in table and "similarity to the recording" in table and "SIM-o" in table and "del." in table
    assert "ASR WER" in (tmp_path / "eval" / "report.md").read_text(encoding="utf-8")
    rows = json.loads((tmp_path / "eval" / "scores.json").read_text())["items"]
    assert {"transcript", "substitutions", "deletions", "insertions", "sim_o", "cer"} <= set(rows[0])


def test_without_judges_the_report_has_only_the_mel_metrics(dataset):
    assert Judges.load(asr_model=None, speaker_model=None, vocoder=None) is None
    summary = summarise(score_other_sentence(build_eval_items(dataset)))
    assert sorted(summary) == [
        "other_sentence/truth/duration_error",
        "other_sentence/truth/mcd_dtw",
        "other_sentence/truth/mel_l1",
    ]
    assert "WER" not in summary_table(summary)
