"""Synthesise a file of utterances on Ray Data: one audio file per row, a manifest, a report of refused rows.

    python jobs/synthesize_batch.py --model MODEL --input URI --out URI \\
        [--voices URI] [--format wav|flac|mp3] [--nfe N] [--seed S] [--concurrency N] [--gpu] [--overwrite]
    ray job submit --working-dir . -- python jobs/synthesize_batch.py --model models:/flowtts@production \\
        --input s3://BUCKET/lines.csv --out s3://BUCKET/audio-run-1 --voices s3://BUCKET/voices --concurrency 8 --gpu

--input: a CSV, JSONL or Parquet file (local or any URI), one row per utterance: id (unique, a safe file
name), text ([name] voice tags allowed), and voice (a stored voice's name or id, from --voices) or ref_audio
+ ref_text (relative to the input's folder, or a URI); optional per row: seed, speed, nfe.
--out receives audio/<id>.<format>, manifest.parquet, rejected.jsonl and job.json. A refused row never fails
the job. Run the same command again after an interruption: only the rows not yet written are synthesised.
--model takes what jobs/synthesize.py takes. With RAY_ADDRESS set (as under ray job submit) it attaches to
that cluster, else it starts a private local Ray. Ends with one JSON summary line; exit status 2 with
"error: ..." when the job cannot run (model not found, input missing, --out holds another job's output).
"""

from __future__ import annotations

import argparse
import logging
import sys

from data_pipelines import BatchRequest, synthesize_batch
from data_pipelines.batch_synthesis import BATCH_FORMATS, check_request
from flowtts.synthesis.batching import DEFAULT_MAX_BATCH_FRAMES
from flowtts.synthesis.cli import (
    add_candidate_options,
    add_model_options,
    add_sampling_options,
    judge_options,
    load_options,
    sampling_settings,
)
from flowtts.usage_reporting import usage_reporting_off
from trainer.cluster import connect_ray
from trainer.job_exit import exit_on_project_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--input", required=True, help="CSV, JSONL or Parquet file of utterances (path or URI)")
    parser.add_argument("--out", required=True, help="output folder or URI")
    parser.add_argument("--voices", help="voice store (folder or URI) that the voice column and [name] tags name")
    parser.add_argument("--asr-model", help="transcribes references whose ref_text is empty (CTC or Whisper-style)")
    parser.add_argument("--format", choices=BATCH_FORMATS, default="wav", help="audio format (default wav)")
    add_sampling_options(parser)
    add_candidate_options(parser)
    parser.add_argument("--concurrency", type=int, default=1, help="actors, one model each (default 1)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per actor (sampling on cuda)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per actor (default 1)")
    parser.add_argument("--rows-per-batch", type=int, default=8, help="rows an actor takes at once (default 8)")
    parser.add_argument(
        "--max-batch-frames",
        type=int,
        default=DEFAULT_MAX_BATCH_FRAMES,
        help=f"cap on rows x padded mel frames per sampling call (default {DEFAULT_MAX_BATCH_FRAMES})",
    )
    parser.add_argument("--max-text-chars", type=int, default=2000, help="longer texts are refused (default 2000)")
    parser.add_argument("--overwrite", action="store_true", help="remove --out first (another job's output too)")
    parser.add_argument("--no-tracking", action="store_true", help="no MLflow run even with MLFLOW_TRACKING_URI")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (ignored with RAY_ADDRESS)")
    return parser.parse_args(argv)


def request_from_args(args: argparse.Namespace) -> BatchRequest:
    return BatchRequest(
        model=args.model,
        input=args.input,
        out=args.out,
        voices=args.voices,
        format=args.format,
        sampling=sampling_settings(args),
        seed=args.seed,
        target_rms=args.target_rms,
        concurrency=args.concurrency,
        gpu=args.gpu,
        cpus_per_actor=args.cpus_per_actor,
        rows_per_batch=args.rows_per_batch,
        max_batch_frames=args.max_batch_frames,
        max_text_chars=args.max_text_chars,
        candidates=args.candidates,
        judges=judge_options(args),
        overwrite=args.overwrite,
        track=not args.no_tracking,
        load_options=load_options(args, asr_model=args.asr_model),
    )


@exit_on_project_error
def main(argv: list[str] | None = None) -> int:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        request = request_from_args(args)
        check_request(request)  # model, input and output, before Ray starts
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = synthesize_batch(request, connect=lambda: connect_ray(args.cpus_per_actor, num_cpus=args.num_cpus))
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
