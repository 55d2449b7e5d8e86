"""One export as ``jobs/export.py`` runs it: the files, their parity with eager, ``export.json``, the MLflow record.

``export_checked`` writes ``step.onnx`` (``step.onnx.data`` beside it for weights over 1 GiB) and/or
``step.pt2`` into a folder, checks them (``flowtts.inference.parity``) and writes ``export.json`` there: the
source, its pinned version and run, the formats, the opset, the parity check, the library versions and the
seconds each part took. ``log_export`` logs the folder under ``export/`` to the run the model came from and
tags a registered version with the artifacts' URIs (``runs:/RUN_ID/export/step.onnx``, which
``make_backend("onnxruntime", model, onnx_file=...)`` takes) and the parity.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import onnx
import onnxruntime
import torch

from flowtts.inference.export import ONNX_FILE, PROGRAM_FILE, export_onnx, export_program
from flowtts.inference.parity import check_parity
from flowtts.model.cfm import CFM
from flowtts.model_source import ModelSource, log_to_model_run, tracking_client

FILES = {"onnx": ONNX_FILE, "torch-export": PROGRAM_FILE}
VERSION_TAGS = {"onnx": "flowtts.export.onnx", "torch-export": "flowtts.export.program"}
PARITY_TAG = "flowtts.export.parity_max_diff"
ARTIFACT_PATH = "export"
SUMMARY_FILE = "export.json"


def export_checked(model: CFM, source: ModelSource, out: Path, formats: list[str], opset: int) -> dict:
    """Export ``model`` (loaded from ``source``) to ``formats`` in ``out``, check parity; the summary written
    to ``out/export.json`` (``summary["parity"]["passed"]`` says whether the files may be used)."""
    start = time.perf_counter()
    seconds, files = {}, {}
    for fmt in formats:
        began = time.perf_counter()
        path = out / FILES[fmt]
        files[fmt] = export_onnx(model, path, opset) if fmt == "onnx" else export_program(model, path)
        seconds[fmt] = round(time.perf_counter() - began, 2)
    began = time.perf_counter()
    parity = check_parity(model, onnx_file=files.get("onnx"), program_file=files.get("torch-export"))
    seconds["parity"] = round(time.perf_counter() - began, 2)
    seconds["total"] = round(time.perf_counter() - start, 2)
    summary = {
        "source": source.uri,
        "version": source.version,
        "run_id": source.run_id,
        "formats": list(formats),
        "files": {fmt: path.name for fmt, path in files.items()},
        "opset": opset if "onnx" in formats else None,
        "parity": parity,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "seconds": seconds,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def log_export(source: ModelSource, out: Path, summary: dict) -> dict[str, str]:
    """Log ``out`` to the source's run under ``export/``; tag a registered version with each file's
    ``runs:/`` URI and the parity. Returns the URIs by format; empty for a local source (nothing logged)."""
    run_id = log_to_model_run(source, out, ARTIFACT_PATH)
    if run_id is None:
        return {}
    uris = {fmt: f"runs:/{run_id}/{ARTIFACT_PATH}/{name}" for fmt, name in summary["files"].items()}
    if source.kind == "registry":
        client = tracking_client(source)
        for fmt, uri in uris.items():
            client.set_model_version_tag(source.name, source.version, VERSION_TAGS[fmt], uri)
        client.set_model_version_tag(source.name, source.version, PARITY_TAG, f"{summary['parity']['max_diff']:.3g}")
    return uris
