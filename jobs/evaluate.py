"""Evaluate a model on held-out clips and, optionally, promote it.

    python jobs/evaluate.py --model models:/flowtts@candidate --data DATASET [--promote production]
        [--margin 0.0] [--max-wer-increase 0.02] [--max-similarity-drop 0.02]
        [--max-items N] [--nfe 16] [--seed 0] [--backend eager|compiled|onnxruntime]
        [--vocoder DIR] [--out DIR]
        [--asr-model DIR_OR_REPO] [--speaker-model DIR_OR_REPO] [--allow-download]

``--model`` is a registered model URI, a checkpoint folder in our format, or an official F5-TTS
``.safetensors``/``.pt`` file (``--vocab`` unless its ``vocab.txt`` lies beside it, ``--model-config``:
preset name or YAML/JSON, default F5TTS_v1_Base; ``--text-frontend``/``--lowercase``: how it reads
text); a folder or file is a path or a URI such as ``s3://bucket/ckpt``. With a registered model, metrics
and the report (``evaluation/report.html``, ``report.md``, ``scores.json``) are logged to the MLflow run of
that model version (tracking URI from ``MLFLOW_TRACKING_URI``).

``--promote ALIAS`` moves the alias to the candidate only when, against the alias's current version
(scored again now, with the same judges on the same items), it passes the promotion policy
(``flowtts.evaluation.promotion.PromotionPolicy``), words first: its WER at the estimated duration is at
most ``--max-wer-increase`` (absolute) above, its SIM-o at most ``--max-similarity-drop`` below, and its
MCD-DTW at the recording's duration at least ``--margin`` dB below. Without an ASR or speaker judge those
checks are skipped and the decision says so (tag ``promotion.ALIAS.basis``: ``words_first`` or
``mcd_dtw_only``). Both versions are tagged with the decision and every number that decided.
``--asr-model`` (a CTC model, e.g. nguyenvulebinh/wav2vec2-base-vietnamese-250h, or a Whisper-style one) and
``--speaker-model`` (a WavLM x-vector model, e.g. microsoft/wavlm-base-plus-sv) add WER (with its
substitutions, deletions and insertions) and CER, and speaker similarity to the recording and to the prompt
(SIM-o); they need ``pip install -e ".[eval-models]"`` and a local folder or a cached repo id
(``--allow-download`` lets them download).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from flowtts.evaluation.gate import evaluate, log_to_mlflow, promote_if_better
from flowtts.evaluation.judges import Judges
from flowtts.evaluation.promotion import PromotionPolicy
from flowtts.evaluation.report import summary_table
from flowtts.model_loading import add_official_model_options, text_frontend_option
from flowtts.model_source import resolve_model_source
from flowtts.storage import local_path
from flowtts.synthesis.cli import add_backend_options
from flowtts.usage_reporting import usage_reporting_off
from trainer.job_exit import exit_on_project_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, models:/NAME/VERSION, a folder or an official file (a path or s3://... URI)",
    )
    add_official_model_options(parser)
    parser.add_argument("--data", required=True, help="dataset folder or URI (s3://...) with a heldout/ split")
    parser.add_argument("--promote", metavar="ALIAS", help="move this alias to the model if it is better")
    defaults = PromotionPolicy()
    parser.add_argument(
        "--margin",
        type=float,
        default=defaults.primary_margin,
        help=f"dB of MCD-DTW the candidate must gain over the alias's version (default {defaults.primary_margin})",
    )
    parser.add_argument(
        "--max-wer-increase",
        type=float,
        default=defaults.max_wer_increase,
        help=f"absolute WER the candidate may lose, with --asr-model (default {defaults.max_wer_increase})",
    )
    parser.add_argument(
        "--max-similarity-drop",
        type=float,
        default=defaults.max_similarity_drop,
        help=f"SIM-o the candidate may lose, with --speaker-model (default {defaults.max_similarity_drop})",
    )
    parser.add_argument("--max-items", type=int, help="evaluate at most this many held-out clips")
    parser.add_argument("--nfe", type=int, default=16, help="ODE steps per item (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    add_backend_options(parser, onnx_file=False)
    parser.add_argument(
        "--vocoder",
        help="Vocos folder (path or s3://... URI) or cached repo id for the example audio (default Griffin-Lim)",
    )
    parser.add_argument("--out", type=local_path, help="report folder (default: a temporary folder)")
    parser.add_argument(
        "--asr-model", help="ASR model folder or cached HF repo id: adds WER/CER, and the gate checks words first"
    )
    parser.add_argument(
        "--speaker-model", help="WavLM x-vector model folder or cached HF repo id: adds speaker similarity, SIM-o"
    )
    parser.add_argument("--allow-download", action="store_true", help="let those models download from the hub")
    args = parser.parse_args(argv)
    flags = {
        "primary_margin": "--margin",
        "max_wer_increase": "--max-wer-increase",
        "max_similarity_drop": "--max-similarity-drop",
    }
    try:
        args.policy = PromotionPolicy(
            primary_margin=args.margin,
            max_wer_increase=args.max_wer_increase,
            max_similarity_drop=args.max_similarity_drop,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        parser.error(f"{flags[error['loc'][0]]}: {error['msg']}")
    return args


@exit_on_project_error
def main(argv: list[str] | None = None) -> int:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    judges = Judges.load(
        asr_model=args.asr_model,
        speaker_model=args.speaker_model,
        vocoder=args.vocoder,
        allow_download=args.allow_download,
    )
    candidate = resolve_model_source(args.model)  # an alias is pinned once: the version scored is the one promoted
    result = evaluate(
        candidate,
        args.data,
        max_items=args.max_items,
        nfe=args.nfe,
        seed=args.seed,
        backend=args.backend,
        vocoder=judges.vocoder if judges is not None else args.vocoder,  # loaded once
        out_dir=args.out,
        judges=judges,
        vocab=args.vocab,
        model_config=args.model_config,
        text_frontend=text_frontend_option(args),
    )
    print(summary_table(result.summary))
    log_to_mlflow(candidate, result)
    if args.promote:
        decision = promote_if_better(candidate, result, alias=args.promote, policy=args.policy)
        print(f"{args.promote}: {decision.decision} [{decision.basis or 'no comparison'}] ({decision.reason})")
    print(f"report: {result.html_report} (and {result.report.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
