"""Export a model's guided ODE step to ONNX and a ``torch.export`` program, check them against eager, log them.

    python jobs/export.py --model models:/flowtts@production --out export/ [--format onnx torch-export]
        [--opset 18] [--vocab FILE] [--model-config PRESET_OR_FILE] [--text-frontend vietnamese|plain] [--lowercase]

``--model`` takes what every job takes: a registered model URI, a run URI, a checkpoint folder in our format
or an official F5-TTS file (``--vocab``, ``--model-config``, ``--text-frontend``/``--lowercase`` as in
``jobs/evaluate.py``). ``--out`` (a folder of its own: all of it is logged) receives ``step.onnx`` (with
``step.onnx.data`` when the weights pass 1 GiB), ``step.pt2`` and ``export.json`` (source, pinned version,
formats, opset, the parity check, library versions, seconds). Parity: each file against eager ``GuidedStep``
on a padded batch and on a single item; a max |diff| over 1e-4 fails the job (exit status 1, nothing logged).
From a registered model the folder is logged to the model version's run under ``export/`` and the version is
tagged ``flowtts.export.onnx`` / ``flowtts.export.program`` (``runs:/RUN_ID/export/step.onnx``, what
``make_backend("onnxruntime", model, onnx_file=...)`` takes) and ``flowtts.export.parity_max_diff``; from a
run URI the folder is logged to that run; a local model logs nothing. MLflow's server: ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from flowtts.inference.export import OPSET, check_opset
from flowtts.inference.export_run import FILES, SUMMARY_FILE, export_checked, log_export
from flowtts.model_loading import add_official_model_options, load_model, text_frontend_option
from flowtts.model_source import local_model, resolve_model_source
from flowtts.storage import local_path
from flowtts.usage_reporting import usage_reporting_off
from trainer.job_exit import exit_on_project_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., a folder or a file (a path or s3://... URI)",
    )
    add_official_model_options(parser)
    parser.add_argument("--out", type=local_path, required=True, help="folder the exported files are written to")
    parser.add_argument(
        "--format", nargs="+", choices=list(FILES), default=list(FILES), help="what to export (default both)"
    )
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, 17 or newer (default {OPSET})")
    return parser.parse_args(argv)


@exit_on_project_error
def main(argv: list[str] | None = None) -> int:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("flowtts").setLevel(logging.INFO)  # not the exporter's pass-by-pass INFO lines
    formats = list(dict.fromkeys(args.format))
    if "onnx" in formats:
        check_opset(args.opset)  # before anything is loaded
    source = resolve_model_source(args.model)  # an alias is pinned once: the version exported is the one tagged
    with local_model(source) as folder:
        bundle = load_model(
            source, folder, vocab=args.vocab, model_config=args.model_config, text_frontend=text_frontend_option(args)
        )
    summary = export_checked(bundle.model, source, args.out, formats, args.opset)
    parity = summary["parity"]
    for fmt, name in summary["files"].items():
        path = args.out / name
        diff = parity["formats"][fmt]["max_diff"]
        print(f"{fmt}: {path} ({path.stat().st_size} bytes), max |diff| vs eager {diff:.2e}")
    if not parity["passed"]:
        print(
            f"error: parity check failed: max |diff| {parity['max_diff']:.2e} vs eager is over {parity['tolerance']:g} "
            f"(per call in {args.out / SUMMARY_FILE}); nothing logged",
            file=sys.stderr,
        )
        return 1
    for fmt, uri in log_export(source, args.out, summary).items():
        print(f"logged {fmt}: {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
