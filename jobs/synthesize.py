"""Speak text in the voice of a reference clip, offline.

    python jobs/synthesize.py --model CHECKPOINT_DIR --ref-audio ref.wav --ref-text "..." \\
        --text "Hôm nay là ngày 15/8/2024, trời 30°C." --out out.wav
    python jobs/synthesize.py --model model_1250000.safetensors --ref-audio lan.wav --ref-text "..." \\
        --voice "minh=minh.wav|Xin chào." --text "Chào anh. [minh] Chào em. [main] Hẹn gặp lại." --out talk.wav

--model takes a folder in our format, an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION,
runs:/RUN/path) or an official F5-TTS .pt/.safetensors as downloaded (its vocab.txt beside it or --vocab;
--model-config: preset name or YAML/JSON, default F5TTS_v1_Base); a folder or file (and --vocab, --vocoder)
is a local path or a URI such as s3://bucket/ckpt. The text front end is the model's own
(recorded by training; --text-frontend/--lowercase set it, e.g. for an official file).
The output format follows the extension: wav, flac, ogg/opus, mp3, raw/pcm (16-bit). Chunks of long
texts are sampled in batches of --batch-chunks with a progress bar; the result does not depend on the
batching. Ends with one summary line.

Best of N: --candidates N samples each chunk N times in the same sample() call (candidate k of chunk i of n
has seed SEED + i + k*n, so candidate 0 is the result without --candidates) and keeps, chunk by chunk, the one
whose transcript by the ASR judge (--judge-asr-model, default --asr-model) has the lowest character error
rate against the text; --speaker-model (a WavLM x-vector model) breaks ties by similarity to the voice.
    python jobs/synthesize.py ... --candidates 4 --judge-asr-model nguyenvulebinh/wav2vec2-base-vietnamese-250h
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from flowtts.storage import local_path
from flowtts.synthesis import (
    CROSS_FADE_S,
    SynthesisError,
    SynthesisOptions,
    candidate_items,
    output_format,
    write_output,
)
from flowtts.synthesis.cli import (
    add_candidate_options,
    add_model_options,
    add_sampling_options,
    candidate_judges,
    judge_options,
    load_synthesizer,
    sampling_settings,
)
from flowtts.usage_reporting import usage_reporting_off
from trainer.job_exit import exit_on_project_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument(
        "--ref-audio", type=local_path, required=True, help="reference voice clip (any soundfile format)"
    )
    parser.add_argument(
        "--ref-text", default="", help="transcript of the reference clip (empty: transcribed with --asr-model)"
    )
    parser.add_argument(
        "--voice",
        action="append",
        default=[],
        type=voice_option,
        metavar="NAME=AUDIO|TRANSCRIPT",
        help="a voice that [NAME] tags in the text switch to (repeatable); '|TRANSCRIPT' may be left out "
        "or empty to transcribe it with --asr-model",
    )
    parser.add_argument("--asr-model", help="ASR model folder or cached HF repo id (CTC or Whisper-style)")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="text to speak")
    text.add_argument("--text-file", type=local_path, help="UTF-8 file with the text to speak")
    parser.add_argument("--out", type=local_path, required=True, help="output file; the extension picks the format")
    add_sampling_options(parser)
    parser.add_argument("--speed", type=float, default=1.0, help="speaking rate factor (default 1)")
    parser.add_argument("--fix-duration", type=float, help="total seconds, reference plus generated audio")
    parser.add_argument("--remove-silence", action="store_true", help="shorten pauses longer than 1 s")
    parser.add_argument(
        "--cross-fade-duration",
        type=float,
        default=CROSS_FADE_S,
        help=f"seconds of cross-fade between chunks (default {CROSS_FADE_S}; 0 joins them end to end)",
    )
    parser.add_argument("--batch-chunks", type=int, default=8, help="chunks per sample() call (default 8)")
    add_candidate_options(parser)
    return parser.parse_args(argv)


def voice_option(value: str) -> tuple[str, Path, str]:
    """``NAME=AUDIO|TRANSCRIPT`` (the corpus metadata's ``audio|text`` after a name) -> (name, audio, text)."""
    name, sep, rest = value.partition("=")
    audio, _, transcript = rest.partition("|")
    if not sep or not name.strip() or not audio.strip():
        raise argparse.ArgumentTypeError(f"--voice {value!r}: expected NAME=AUDIO|TRANSCRIPT")
    return name.strip(), Path(audio.strip()), transcript.strip()


@exit_on_project_error
def main(argv: list[str] | None = None) -> int:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        output_format(args.out)
        text = args.text if args.text is not None else args.text_file.read_text(encoding="utf-8")
        options = SynthesisOptions(
            sampling=sampling_settings(args),
            speed=args.speed,
            seed=args.seed,
            fix_duration=args.fix_duration,
            remove_silence=args.remove_silence,
            cross_fade_duration=args.cross_fade_duration,
            candidates=args.candidates,
        )
        judges = judge_options(args)  # before loading anything: --candidates without a judge fails here
        synthesizer = load_synthesizer(args, asr_model=args.asr_model)
        synthesizer.judges = candidate_judges(judges, synthesizer.transcriber)
        started = time.perf_counter()
        reference = synthesizer.prepare_reference(args.ref_audio, args.ref_text, target_rms=args.target_rms)
        voices = {
            name: synthesizer.prepare_reference(audio, transcript, target_rms=args.target_rms)
            for name, audio, transcript in args.voice
        }
        plan = synthesizer.plan_voices(text, reference, options, voices)
    except (SynthesisError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chunks, step = len(plan.items), max(args.batch_chunks, 1)
    rows = candidate_items(plan.items, options.candidates)  # row k * chunks + i: candidate k of chunk i
    mels: list[torch.Tensor | None] = [None] * len(rows)
    with tqdm(total=chunks, unit="chunk", desc="sampling", disable=chunks < 2) as bar:
        for start in range(0, chunks, step):  # a group's chunks with all of their candidates: one call
            group = [k * chunks + i for i in range(start, min(start + step, chunks)) for k in range(options.candidates)]
            for row, mel in zip(group, synthesizer.generate([rows[j] for j in group], options.sampling), strict=True):
                mels[row] = mel
            bar.update(len(group) // options.candidates)
    result = synthesizer.render_best(plan, mels)
    for index, choice in enumerate(result.choices):
        heard = ", ".join(f"{s.seed} (CER {s.cer:.3f})" for s in choice.scores)
        print(f"chunk {index + 1}: kept seed {choice.seed} of {heard}")
    given = [("--ref-audio", reference, args.ref_text), *((f"--voice {n}", voices[n], t) for n, _, t in args.voice)]
    for flag, ref, transcript in given:
        if not transcript.strip():
            print(f"{flag} transcribed: {ref.transcript}")
    elapsed = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_output(args.out, result.audio, result.sample_rate)
    print(
        f"wrote {args.out}: {result.duration_s:.2f} s of audio in {elapsed:.2f} s (RTF "
        f"{elapsed / max(result.duration_s, 1e-9):.3f}), seed {result.seed}, duration rule "
        f"{result.duration_rule}, {len(result.chunks)} chunk(s)"
        + (
            f", best of {result.candidates} (kept seeds {','.join(map(str, result.chosen_seeds))})"
            if result.choices
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
