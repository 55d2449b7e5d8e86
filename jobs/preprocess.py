"""Preprocess a CSV + wav corpus into 24 kHz log-mel shards.

    python jobs/preprocess.py --corpus DIR_OR_URI --out DIR_OR_URI [options]
    ray job submit --working-dir . -- python jobs/preprocess.py --corpus s3://BUCKET/corpus --out s3://BUCKET/data

Corpus, output, metadata, vocab and held-out list may be local paths or URIs (s3://, gs://, hdfs://);
S3 credentials, region and endpoint come from the standard AWS variables (AWS_ACCESS_KEY_ID, ...,
AWS_ENDPOINT_URL), which on a cluster must reach the workers too (nodes' environment, IAM role, or the
job's runtime_env). With RAY_ADDRESS set (as under ``ray job submit``) it attaches to that cluster,
otherwise it starts a private local Ray instance. Prints Ray Data's progress, then one summary line.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from data_pipelines import MetadataError, PreprocessConfig, preprocess_corpus
from data_pipelines.pipeline import check_locations
from flowtts.options import add_model_options, model_from_args
from flowtts.usage_reporting import usage_reporting_off
from trainer.cluster import connect_ray
from trainer.job_exit import exit_on_project_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser, PreprocessConfig, exclude={"mel"})
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (ignored with RAY_ADDRESS)")
    return parser.parse_args(argv)


@exit_on_project_error
def main(argv: list[str] | None = None) -> int:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = model_from_args(PreprocessConfig, args)  # bad options fail here, before Ray starts
        check_locations(config)
    except (ValidationError, OSError) as exc:  # OSError: a missing corpus, an existing output, a storage error
        print(f"error: {exc}", file=sys.stderr)
        return 2
    connect_ray(num_cpus=args.num_cpus)
    try:
        result = preprocess_corpus(config)
    except (OSError, MetadataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
