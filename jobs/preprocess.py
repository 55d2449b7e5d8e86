"""Preprocess a CSV + wav corpus into 24 kHz log-mel shards.

    python jobs/preprocess.py --corpus DIR --out DIR [options]
    ray job submit --working-dir . -- python jobs/preprocess.py --corpus DIR --out DIR [options]

With RAY_ADDRESS set (as under ``ray job submit``) it attaches to that cluster, otherwise it starts a
private local Ray instance. Prints Ray Data's progress, then one summary line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import ray

from data_pipelines import MetadataError, OutputExistsError, PreprocessConfig, preprocess_corpus
from data_pipelines.writing import check_output_target


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="folder with the wavs (paths are relative to it)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--metadata", type=Path, help="metadata file (default: CORPUS/metadata.csv)")
    parser.add_argument("--format", choices=["auto", "f5", "ljspeech"], default="auto")
    parser.add_argument("--min-duration", type=float, default=0.3, help="seconds (default 0.3)")
    parser.add_argument("--max-duration", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--vocab", type=Path, help="extend this vocab.txt instead of building one")
    parser.add_argument("--text-frontend", choices=["plain", "vietnamese"], default="plain")
    parser.add_argument("--num-workers", type=int, help="parallel decode/mel tasks (default: cluster CPUs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out choice")
    holdout = parser.add_mutually_exclusive_group()
    holdout.add_argument("--holdout-fraction", type=float, default=0.0, help="share of each speaker held out")
    holdout.add_argument("--holdout-list", type=Path, help="file with one held-out audio_file per line")
    parser.add_argument("--shard-mb", type=float, default=128.0, help="target shard size in MiB (default 128)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out atomically")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (ignored with RAY_ADDRESS)")
    return parser.parse_args(argv)


def setup_ray(num_cpus: int | None) -> None:
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)


def build_config(args: argparse.Namespace) -> PreprocessConfig:
    return PreprocessConfig(
        corpus=args.corpus,
        out=args.out,
        metadata=args.metadata,
        format=args.format,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        vocab=args.vocab,
        text_frontend=args.text_frontend,
        num_workers=args.num_workers,
        seed=args.seed,
        holdout_fraction=args.holdout_fraction,
        holdout_list=args.holdout_list,
        shard_mb=args.shard_mb,
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = build_config(args)  # bad options fail here, before Ray starts
        check_output_target(config.out, config.overwrite)
    except (OutputExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_ray(args.num_cpus)
    try:
        result = preprocess_corpus(config)
    except (OutputExistsError, MetadataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
