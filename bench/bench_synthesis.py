"""Real-time factor of the whole synthesis path and the share of each stage, on CPU.

    .venv/bin/python bench/bench_synthesis.py                     # tiny (NFE 32) and F5TTS_v1_Base (NFE 8)
    .venv/bin/python bench/bench_synthesis.py --presets tiny --reps 5

For each preset (random weights: the compute is the same as trained ones) and for a ~5 s and a ~30 s
Vietnamese utterance (sentences of the dev corpus with numbers and dates, read by the front end) in the
voice of a ~3 s dev-corpus clip, it times ``Synthesizer`` stage by stage:
- front end: ``plan`` (Vietnamese normalisation, chunking, tokenising, durations);
- sampling: ``generate`` (one batched ``CFM.sample`` for all chunks);
- vocoder: ``render`` (Vocos with the published mel-24khz architecture, RMS scale, cross-fade, peak limit).
Reference preparation (load, clip, trim, mel) is timed apart: it is done once per voice.
RTF = (front end + sampling + vocoder) / seconds of audio. Base runs at ``--base-nfe`` (default 8) and
its sampling time is also shown scaled to NFE 32 (sampling time is linear in NFE). Each figure is the
median of ``--reps`` runs after a warm-up; ``torch.set_num_threads(--threads)``. ``--device cuda`` puts
the model and the vocoder on the GPU (fp32; times taken after ``torch.cuda.synchronize``).
"""

from __future__ import annotations

import argparse
import statistics
import string
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch

from flowtts.config import load_config
from flowtts.model import build_model
from flowtts.synthesis import SamplingSettings, SynthesisOptions, Synthesizer, VocosVocoder, init_vocos_folder
from flowtts.text import Vocab

DEV_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "vi-espeak-dev"
EXTRA_SENTENCES = [
    "Ngày 15/8/2024, nhiệt độ tại TP.HCM lên tới 36°C, độ ẩm 75%.",
    "Giá xăng tăng 1.250 đồng mỗi lít từ 15 giờ chiều nay.",
    "Đội tuyển đã thắng 3-1 trong trận đấu lúc 19:30 tối qua.",
]


@dataclass
class Timing:
    reference_s: float
    frontend_s: float
    sampling_s: float
    vocoder_s: float
    audio_s: float
    chunks: int
    frames: int  # padded frames of the sample() call

    @property
    def total_s(self) -> float:
        return self.frontend_s + self.sampling_s + self.vocoder_s


def latin_vocab() -> Vocab:
    letters = [chr(c) for c in [*range(0xC0, 0x250), *range(0x1E00, 0x1F00)] if unicodedata.category(chr(c))[0] == "L"]
    return Vocab.from_texts([string.ascii_letters + "".join(letters) + " .,!?;:-'\"()"])


def random_vocos(folder: Path, device: str) -> VocosVocoder:
    return VocosVocoder.from_folder(init_vocos_folder(folder), device=device)


def corpus_rows(corpus: Path) -> list[tuple[Path, str]]:
    lines = (corpus / "metadata.csv").read_text(encoding="utf-8").splitlines()[1:]
    return [(corpus / name, text) for name, text in (line.split("|", 1) for line in lines)]


def pick_reference(rows: list[tuple[Path, str]], target_s: float = 3.0) -> tuple[Path, str]:
    return min(rows, key=lambda row: abs(sf.info(str(row[0])).duration - target_s))


def text_for(synthesizer: Synthesizer, reference, sentences: list[str], target_s: float) -> str:
    """Sentences in order, each taken if the planned speech stays within 15 % over ``target_s``,
    until it reaches 90 % of it."""
    picked: list[str] = []
    for sentence in sentences:
        if planned_seconds(synthesizer, reference, [*picked, sentence]) <= 1.15 * target_s:
            picked.append(sentence)
        if picked and planned_seconds(synthesizer, reference, picked) >= 0.9 * target_s:
            break
    return " ".join(picked)


def planned_seconds(synthesizer: Synthesizer, reference, sentences: list[str]) -> float:
    plan = synthesizer.plan(" ".join(sentences), reference, SynthesisOptions(seed=0))
    return sum(item.total_frames - item.prompt_frames for item in plan.items) * 256 / 24000


def clock(device: torch.device) -> float:
    """Wall time, after the GPU's queued work has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def run_once(synthesizer: Synthesizer, ref_audio: Path, ref_text: str, text: str, nfe: int) -> Timing:
    options = SynthesisOptions(sampling=SamplingSettings(nfe=nfe), seed=0)
    device = synthesizer.model.device
    t0 = clock(device)
    reference = synthesizer.prepare_reference(ref_audio, ref_text)
    t1 = clock(device)
    plan = synthesizer.plan(text, reference, options)
    t2 = clock(device)
    mels = synthesizer.generate(plan.items, options.sampling)
    t3 = clock(device)
    result = synthesizer.render(plan, mels)
    t4 = clock(device)
    return Timing(
        reference_s=t1 - t0,
        frontend_s=t2 - t1,
        sampling_s=t3 - t2,
        vocoder_s=t4 - t3,
        audio_s=result.duration_s,
        chunks=len(plan.chunks),
        frames=len(plan.items) * max(item.total_frames for item in plan.items),
    )


def median_timing(runs: list[Timing]) -> Timing:
    def med(name: str) -> float:
        return statistics.median(getattr(run, name) for run in runs)

    return Timing(
        reference_s=med("reference_s"),
        frontend_s=med("frontend_s"),
        sampling_s=med("sampling_s"),
        vocoder_s=med("vocoder_s"),
        audio_s=runs[0].audio_s,
        chunks=runs[0].chunks,
        frames=runs[0].frames,
    )


def report_row(preset: str, nfe: int, label: str, t: Timing) -> str:
    total = t.total_s
    shares = [100 * x / total for x in (t.frontend_s, t.sampling_s, t.vocoder_s)]
    scaled = ""
    if nfe != 32:
        scaled_total = t.frontend_s + t.sampling_s * 32 / nfe + t.vocoder_s
        scaled = f"{scaled_total / t.audio_s:.2f} ({100 * (t.frontend_s + t.vocoder_s) / scaled_total:.1f} %)"
    return (
        f"| {preset} | {nfe} | {label} | {t.audio_s:.1f} | {t.chunks} | {t.frames} | {t.reference_s:.3f} | "
        f"{t.frontend_s:.3f} | {t.sampling_s:.2f} | {t.vocoder_s:.3f} | {total / t.audio_s:.3f} | "
        f"{shares[0]:.2f} / {shares[1]:.1f} / {shares[2]:.2f} | {scaled} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "F5TTS_v1_Base"])
    parser.add_argument("--nfe", type=int, default=32, help="NFE for small presets (default 32)")
    parser.add_argument("--base-nfe", type=int, default=8, help="NFE for *_Base presets (default 8)")
    parser.add_argument("--reps", type=int, default=3, help="runs per case for small presets (median)")
    parser.add_argument("--base-reps", type=int, default=1, help="runs per case for *_Base presets")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--corpus", type=Path, default=DEV_CORPUS, help="metadata.csv of sentences (and voices)")
    parser.add_argument("--ref-audio", type=Path, help="reference clip (default: the corpus clip nearest 3 s)")
    parser.add_argument("--ref-text", help="transcript of --ref-audio")
    parser.add_argument("--device", default="cpu", help="torch device for the model and the vocoder")
    parser.add_argument("--targets", type=float, nargs="+", default=[5.0, 30.0], help="seconds of speech")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = corpus_rows(args.corpus)
    ref_audio, ref_text = (args.ref_audio, args.ref_text) if args.ref_audio else pick_reference(rows)
    sentences = EXTRA_SENTENCES + [text for path, text in rows if path != ref_audio]
    vocab = latin_vocab()
    header = (
        "| preset | NFE | text | audio s | chunks | padded frames | reference s | front end s | sampling s | "
        "vocoder s | RTF | front end / sampling / vocoder % | RTF at NFE 32 (front end + vocoder %) |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    with tempfile.TemporaryDirectory() as tmp:
        vocoder = random_vocos(Path(tmp), args.device)
        for preset in args.presets:
            base = "Base" in preset
            nfe, reps = (args.base_nfe, args.base_reps) if base else (args.nfe, args.reps)
            torch.manual_seed(0)
            model = build_model(load_config(preset).model.with_vocab_size(len(vocab))).to(args.device).eval()
            synthesizer = Synthesizer(model, vocab, vocoder)
            reference = synthesizer.prepare_reference(ref_audio, ref_text)
            texts = [text_for(synthesizer, reference, sentences, target) for target in args.targets]
            run_once(synthesizer, ref_audio, ref_text, texts[0], nfe=1)  # warm-up
            for target, text in zip(args.targets, texts, strict=True):
                timing = median_timing([run_once(synthesizer, ref_audio, ref_text, text, nfe) for _ in range(reps)])
                lines.append(report_row(preset, nfe, f"~{target:.0f} s", timing))
                print(lines[-1], flush=True)
    print(
        f"\nreference: {ref_audio.name} ({sf.info(str(ref_audio)).duration:.2f} s), device {args.device}, "
        f"threads {args.threads}, torch {torch.__version__}\n"
    )
    print("\n".join(lines))
    for target, text in zip(args.targets, texts, strict=True):
        print(f"\n~{target:.0f} s text ({len(text.encode())} bytes): {text}")


if __name__ == "__main__":
    main()
