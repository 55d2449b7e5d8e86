"""What best-of-N re-ranking costs per candidate: sampling, vocoder and judges, on CPU (or ``--device cuda``).

    .venv/bin/python bench/bench_reranking.py                        # tiny, NFE 8, N = 1, 2, 4
    .venv/bin/python bench/bench_reranking.py --nfe 32 --candidates 1,4,8 --reps 3

A ~5 s Vietnamese utterance (one chunk; sentences of ``--corpus``) in the voice of a ~3 s clip of it, with
random weights everywhere (the compute does not depend on the values; nothing is downloaded): the ``--preset``
model, a Vocos of the published mel-24khz architecture, an ASR judge of wav2vec2-base's size (95 M
parameters, the size of nguyenvulebinh/wav2vec2-base-vietnamese-250h) and a speaker judge of WavLM-base-plus's
size (microsoft/wavlm-base-plus-sv). ``--asr-model`` / ``--speaker-model`` time real models instead (a local
folder or a cached repo id). For each N it times, median of ``--reps`` after a warm-up:
- sampling: ``Synthesizer.generate`` of the N candidates (one batched call);
- judging: ``Synthesizer.rerank`` (vocoder of the N candidates, ASR judge, speaker judge) for N > 1;
- render: cross-fade and peak limit of the kept one (N = 1: its vocoder too).
The cost of one more candidate is (total(N) - total(1)) / (N - 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from flowtts.config import load_config
from flowtts.evaluation.judges import SpeakerJudge
from flowtts.model import build_model
from flowtts.synthesis import (
    CandidateJudges,
    SamplingSettings,
    SynthesisOptions,
    Synthesizer,
    Transcriber,
    candidate_items,
)

REPO = Path(__file__).resolve().parents[1]
LETTERS = "abcdeghiklmnopqrstuvxyđăâêôơư"


def random_asr(folder: Path) -> Path:
    """A CTC model of wav2vec2-base's size (random weights) with a Vietnamese letter vocab."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "|": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(LETTERS)}}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|")
    features = transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True)
    transformers.Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(folder)
    transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(vocab_size=len(vocab))).save_pretrained(folder)
    return folder


def random_speaker(folder: Path) -> Path:
    """A WavLM x-vector model of wavlm-base-plus-sv's size (random weights)."""
    import transformers

    transformers.WavLMForXVector(transformers.WavLMConfig()).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(folder)
    return folder


def corpus_rows(corpus: Path) -> list[tuple[Path, str]]:
    lines = (corpus / "metadata.csv").read_text(encoding="utf-8").splitlines()[1:]
    return [(corpus / name, text) for name, text in (line.split("|", 1) for line in lines)]


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def run(synth: Synthesizer, text: str, reference, candidates: int, nfe: int) -> dict[str, float]:
    options = SynthesisOptions(sampling=SamplingSettings(nfe=nfe), seed=0, candidates=candidates)
    device = synth.model.device
    plan = synth.plan_voices(text, reference, options)
    t0 = clock(device)
    mels = synth.generate(candidate_items(plan.items, candidates), options.sampling)
    t1 = clock(device)
    if candidates == 1:
        t2 = t1
        result = synth.render_voices(plan, mels)
    else:
        ranked = synth.rerank(plan, mels)
        t2 = clock(device)
        result = synth.render_voices(plan, ranked.mels, ranked.waves)
    t3 = clock(device)
    return {"sampling": t1 - t0, "judging": t2 - t1, "render": t3 - t2, "audio": result.duration_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--nfe", type=int, default=8)
    parser.add_argument("--candidates", default="1,2,4", help="comma-separated N (1 is the baseline)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--corpus", type=Path, default=REPO / "samples" / "vi-demo")
    parser.add_argument("--asr-model", help="a real ASR judge (folder or cached repo id) instead of a random one")
    parser.add_argument("--speaker-model", help="a real speaker judge instead of a random one")
    parser.add_argument("--no-speaker", action="store_true", help="ASR judge only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    counts = sorted({int(n) for n in args.candidates.split(",")} | {1})

    from flowtts.synthesis import init_vocos_folder
    from flowtts.synthesis.vocoder import VocosVocoder
    from flowtts.text import Vocab, normalize_vietnamese

    rows = corpus_rows(args.corpus)
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        folder = Path(tmp)
        vocab = Vocab.from_texts([normalize_vietnamese(t) for _, t in rows] + [" .,!?"])
        torch.manual_seed(0)
        model = build_model(load_config(args.preset).model.with_vocab_size(len(vocab))).to(args.device).eval()
        vocoder = VocosVocoder.from_folder(init_vocos_folder(folder / "vocos"), device=args.device)
        started = time.perf_counter()
        asr = Transcriber(args.asr_model or random_asr(folder / "asr"), device=args.device)
        speaker = None
        if not args.no_speaker:
            speaker = SpeakerJudge(args.speaker_model or random_speaker(folder / "wavlm"), device=args.device)
        print(f"judges loaded in {time.perf_counter() - started:.1f} s")
        synth = Synthesizer(model, vocab, vocoder, judges=CandidateJudges(asr=asr, speaker=speaker))
        ref_audio, ref_text = min(rows[:20], key=lambda row: abs(len(row[1]) - 40))
        reference = synth.prepare_reference(ref_audio, ref_text)
        text = " ".join(t for _, t in rows[1:3])
        run(synth, text, reference, max(counts), 2)  # warm-up
        results = {}
        for n in counts:
            reps = [run(synth, text, reference, n, args.nfe) for _ in range(args.reps)]
            results[n] = {key: statistics.median(r[key] for r in reps) for key in reps[0]}
    base = sum(results[1][k] for k in ("sampling", "judging", "render"))
    print(
        f"{args.preset}, NFE {args.nfe}, {results[1]['audio']:.1f} s of audio, device {args.device}, "
        f"{args.threads} threads, speaker judge {'off' if speaker is None else 'on'}"
    )
    print("| N | sampling | judging (vocoder + ASR + speaker) | render | total | per extra candidate |")
    print("|---|---|---|---|---|---|")
    for n, r in results.items():
        total = r["sampling"] + r["judging"] + r["render"]
        extra = f"{(total - base) / (n - 1):.2f} s" if n > 1 else "—"
        print(f"| {n} | {r['sampling']:.2f} s | {r['judging']:.2f} s | {r['render']:.2f} s | {total:.2f} s | {extra} |")


if __name__ == "__main__":
    main()
