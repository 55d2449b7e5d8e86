"""jobs/export.py on real components: a small random model exported to ONNX and a ``torch.export`` program,
checked against eager, sampled through the exported ONNX; from a registered model on a real ``mlflow server``
(loopback) the files land in the version's run and its tags name them; bad options end with one error line."""

from __future__ import annotations

import json

import mlflow
import onnx
import onnxruntime
import pytest
import torch
from local_services import LocalMlflowServer, service_env

from flowtts.checkpoint import load_bundle, save_checkpoint
from flowtts.inference import export as export_module
from flowtts.inference import make_backend
from flowtts.inference import parity as parity_module
from flowtts.inference.export import example_call
from flowtts.model import build_model
from flowtts.model.modules import lens_to_mask
from flowtts.model.step import GuidedStep
from flowtts.text import Vocab
from tests.helpers import load_job
from tests.helpers.models import randomized, small_model_config
from tests.helpers.registry import register_checkpoints

MODEL = "flowtts-export"
PROMPTS, DURATIONS, TEXT_LENGTHS, SEEDS = [12, 8], [30, 22], [10, 6], [1, 2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small DiT with every upstream zero-initialised weight randomised (else its velocity is all zeros)."""
    vocab = Vocab.from_texts(["xin chào các bạn"])
    torch.manual_seed(0)
    model = randomized(build_model(small_model_config(len(vocab), depth=1)))
    return save_checkpoint(model, tmp_path_factory.mktemp("export-model") / "checkpoint", vocab)


@pytest.fixture(scope="module")
def export_job():
    return load_job("export")


def printed_lines(capsys) -> tuple[list[str], list[str]]:
    captured = capsys.readouterr()
    return captured.out.splitlines(), [line for line in captured.err.splitlines() if line.strip()]


def sample_two(model, backend=None) -> torch.Tensor:
    """Two items of different prompt, duration and text lengths, isolated, 4 Euler steps."""
    g = torch.Generator().manual_seed(3)
    cond = (
        torch.randn(2, max(PROMPTS), model.num_channels, generator=g) * lens_to_mask(torch.tensor(PROMPTS))[..., None]
    )
    text = torch.randint(0, model.config.text_num_embeds, (2, max(TEXT_LENGTHS)), generator=g)
    text = text.masked_fill(~lens_to_mask(torch.tensor(TEXT_LENGTHS)), -1)
    return model.sample(
        cond=cond,
        text=text,
        duration=torch.tensor(DURATIONS),
        lens=torch.tensor(PROMPTS),
        steps=4,
        seed=SEEDS,
        isolate_items=True,
        backend=backend,
    ).mel


def test_a_folder_exports_both_formats_that_match_eager_and_sample_through_onnxruntime(
    export_job, checkpoint, tmp_path, capsys
):
    out = tmp_path / "export"
    assert export_job.main(["--model", str(checkpoint), "--out", str(out)]) == 0
    lines, _ = printed_lines(capsys)

    assert sorted(p.name for p in out.iterdir()) == ["export.json", "step.onnx", "step.pt2"]  # no .data: small
    summary = json.loads((out / "export.json").read_text())
    assert (summary["source"], summary["version"], summary["run_id"]) == (str(checkpoint), None, None)
    assert (summary["formats"], summary["opset"]) == (["onnx", "torch-export"], 18)
    assert summary["versions"] == {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    assert summary["seconds"]["total"] >= summary["seconds"]["onnx"] > 0
    parity = summary["parity"]
    assert parity["passed"] and parity["tolerance"] == 1e-4 and parity["max_diff"] <= 1e-4, parity
    for fmt in ("onnx", "torch-export"):
        assert set(parity["formats"][fmt]) == {"padded_batch", "single_item", "max_diff"}
    # one line per artifact with its path and max |diff|; a local model logs nothing
    assert [line.split(" ")[:2] for line in lines] == [
        ["onnx:", str(out / "step.onnx")],
        ["torch-export:", str(out / "step.pt2")],
    ]
    assert all("max |diff| vs eager" in line for line in lines), lines

    model = load_bundle(checkpoint).model.eval()
    call, x = example_call(model)
    with torch.no_grad():
        velocity = GuidedStep(model.transformer, True)(*call.inputs(x, torch.tensor(0.5), 2.0))
    assert velocity.abs().max() > 0.1  # the parity above compared real numbers, not zeros
    eager = sample_two(model)
    onnx_mel = sample_two(model, make_backend("onnxruntime", model, onnx_file=out / "step.onnx"))
    assert (onnx_mel - eager).abs().max() <= 1e-3


@pytest.fixture(scope="module")
def registry(checkpoint, tmp_path_factory):
    """A real ``mlflow server`` on loopback holding ``checkpoint`` as version 1 of MODEL, alias ``production``."""
    root = tmp_path_factory.mktemp("export-registry")
    server = LocalMlflowServer(root / "mlflow", env=service_env())
    tracking_uri = server.start()
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
            assert register_checkpoints(tracking_uri, root / "artifacts", [checkpoint], MODEL) == ["1"]
            client = mlflow.MlflowClient(tracking_uri, tracking_uri)
            client.set_registered_model_alias(MODEL, "production", "1")
            yield client
    finally:
        server.stop()


def test_a_registered_model_is_exported_to_its_versions_run_and_loads_back_from_the_tag(
    export_job, checkpoint, registry, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 0)  # the weights in step.onnx.data, as a big model's
    out = tmp_path / "export"
    assert export_job.main(["--model", f"models:/{MODEL}@production", "--out", str(out)]) == 0
    lines, _ = printed_lines(capsys)

    version = registry.get_model_version(MODEL, "1")
    run_id = version.run_id
    onnx_uri, program_uri = f"runs:/{run_id}/export/step.onnx", f"runs:/{run_id}/export/step.pt2"
    assert version.tags["flowtts.export.onnx"] == onnx_uri
    assert version.tags["flowtts.export.program"] == program_uri
    assert float(version.tags["flowtts.export.parity_max_diff"]) <= 1e-4
    assert f"logged onnx: {onnx_uri}" in lines and f"logged torch-export: {program_uri}" in lines, lines
    summary = json.loads((out / "export.json").read_text())
    assert (summary["source"], summary["version"], summary["run_id"]) == (f"models:/{MODEL}@production", "1", run_id)
    logged = {a.path for a in registry.list_artifacts(run_id, "export")}
    assert logged == {f"export/{name}" for name in ("step.onnx", "step.onnx.data", "step.pt2", "export.json")}

    model = load_bundle(checkpoint).model.eval()
    backend = make_backend("onnxruntime", model, onnx_file=onnx_uri)  # downloads the file and its side file
    call, x = example_call(model)
    t = torch.tensor(0.5)
    with torch.no_grad():
        eager = GuidedStep(model.transformer, True)(*call.inputs(x, t, 2.0))
    assert (backend.velocity(call, x, t, 2.0) - eager).abs().max() <= 1e-4


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--opset", "16"], "opset 16 is too old"),
        (["--model", "/nowhere/flowtts-model"], "/nowhere/flowtts-model does not exist"),
    ],
    ids=["opset", "missing-model"],
)
def test_a_bad_opset_or_a_missing_model_ends_with_one_error_line(
    export_job, checkpoint, tmp_path, capsys, options, named
):
    argv = ["--model", str(checkpoint), "--out", str(tmp_path / "export"), *options]
    assert export_job.main(argv) == 2
    out, err = printed_lines(capsys)
    assert out == [] and len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not (tmp_path / "export").exists()


def test_a_parity_failure_fails_the_job_and_says_so(export_job, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(parity_module, "TOLERANCE", -1.0)  # no difference passes
    out = tmp_path / "export"
    assert export_job.main(["--model", str(checkpoint), "--out", str(out), "--format", "torch-export"]) == 1
    _, err = printed_lines(capsys)
    assert len(err) == 1 and err[0].startswith("error: parity check failed") and str(out / "export.json") in err[0]
    assert json.loads((out / "export.json").read_text())["parity"]["passed"] is False
