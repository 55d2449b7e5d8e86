"""The command-line options the synthesis jobs share (``jobs/synthesize.py``, ``jobs/edit.py``): which model
to load and how to sample, declared once."""

from __future__ import annotations

import argparse
from typing import Any

from flowtts.evaluation.judges import SpeakerJudge
from flowtts.inference import BACKENDS
from flowtts.model.cfm import ODE_METHODS
from flowtts.model_loading import add_official_model_options, text_frontend_option
from flowtts.synthesis.candidates import CandidateJudges
from flowtts.synthesis.errors import JudgeRequiredError
from flowtts.synthesis.reference import TARGET_RMS
from flowtts.synthesis.sampling import SamplingSettings
from flowtts.synthesis.synthesizer import Synthesizer
from flowtts.synthesis.transcription import Transcriber
from flowtts.synthesis.vocoder import DEFAULT_VOCOS_REPO


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint folder, MLflow URI or official .pt/.safetensors (a folder or file: a path or s3://... URI)",
    )
    add_official_model_options(parser)
    parser.add_argument(
        "--vocoder",
        default=DEFAULT_VOCOS_REPO,
        help=f"Vocos folder (path or s3://... URI) or cached HF repo id (default {DEFAULT_VOCOS_REPO}; "
        "Griffin-Lim when unavailable)",
    )
    parser.add_argument("--allow-download", action="store_true", help="let the vocoder and ASR model download")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_backend_options(parser)
    parser.add_argument(
        "--unknown-characters",
        choices=["error", "space"],
        default="error",
        help="characters missing from the vocab: fail naming them (default) or read them as a space",
    )


def add_backend_options(parser: argparse.ArgumentParser, onnx_file: bool = True) -> None:
    """``--backend``; ``--onnx-file`` too where one model samples (an exported step belongs to one model)."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="eager",
        help="how the ODE steps run: eager (default), compiled (torch.compile) or onnxruntime",
    )
    if onnx_file:
        parser.add_argument("--onnx-file", help="onnxruntime: a step from jobs/export.py (default: export at start)")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nfe", type=int, default=32, help="ODE steps (default 32)")
    parser.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance strength (default 2)")
    parser.add_argument("--sway", type=float, default=-1.0, help="sway sampling coefficient (default -1)")
    parser.add_argument("--no-epss", action="store_true", help="uniform time grid even for 5-16 NFE")
    parser.add_argument(
        "--ode-method",
        choices=ODE_METHODS,
        default="euler",
        help="ODE rule (default euler; midpoint calls the model twice per step)",
    )
    parser.add_argument("--seed", type=int, help="random seed (default: drawn and printed)")
    parser.add_argument(
        "--target-rms",
        type=float,
        default=TARGET_RMS,
        help=f"RMS a quieter reference or recording is raised to for sampling (default {TARGET_RMS})",
    )


def add_candidate_options(parser: argparse.ArgumentParser) -> None:
    """Best of N: ``--candidates`` and its judges."""
    parser.add_argument(
        "--candidates",
        type=int,
        default=1,
        help="best of N: sample each chunk N times (in the same call) and keep the one the ASR judge hears best",
    )
    parser.add_argument("--judge-asr-model", help="ASR judge of --candidates (default: --asr-model)")
    parser.add_argument(
        "--speaker-model", help="speaker judge of --candidates (WavLM x-vector folder or cached repo id): breaks ties"
    )


def judge_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """What ``candidate_judges`` loads (None: one candidate, no judges); raises JudgeRequiredError for
    ``--candidates`` > 1 without an ASR model."""
    if args.candidates < 2:
        return None
    asr = args.judge_asr_model or getattr(args, "asr_model", None)
    if not asr:
        raise JudgeRequiredError(f"--candidates {args.candidates} needs an ASR judge: give --judge-asr-model")
    return {"asr": asr, "speaker": args.speaker_model, "allow_download": args.allow_download, "device": args.device}


def candidate_judges(options: dict[str, Any] | None, transcriber: Transcriber | None = None) -> CandidateJudges | None:
    """The judges ``judge_options`` names; ``transcriber`` (the references' ASR model) doubles as the ASR judge
    when it is the same model."""
    if options is None:
        return None
    load = {"allow_download": options["allow_download"], "device": options["device"]}
    shared = transcriber if transcriber is not None and str(transcriber.source) == str(options["asr"]) else None
    speaker = SpeakerJudge(options["speaker"], **load) if options["speaker"] else None
    return CandidateJudges(asr=shared or Transcriber(options["asr"], **load), speaker=speaker)


def sampling_settings(args: argparse.Namespace) -> SamplingSettings:
    return SamplingSettings(
        nfe=args.nfe,
        cfg_strength=args.cfg,
        sway_sampling_coef=args.sway,
        use_epss=not args.no_epss,
        ode_method=args.ode_method,
    )


def load_options(args: argparse.Namespace, asr_model: str | None = None) -> dict[str, Any]:
    """``Synthesizer.from_pretrained``'s keywords besides the source, from ``add_model_options``' options."""
    return {
        "vocab": args.vocab,
        "model_config": args.model_config,
        "vocoder": args.vocoder,
        "device": args.device,
        "allow_download": args.allow_download,
        "text_frontend": text_frontend_option(args),
        "unknown_characters": args.unknown_characters,
        "asr_model": asr_model,
        "backend": args.backend,
        "onnx_file": args.onnx_file,
    }


def load_synthesizer(args: argparse.Namespace, asr_model: str | None = None) -> Synthesizer:
    return Synthesizer.from_pretrained(args.model, **load_options(args, asr_model))
