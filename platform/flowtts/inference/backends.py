"""How ``CFM.sample`` evaluates its guided step: one setting, ``backend``, everywhere a model samples.

- ``eager``: the model's own forward, as upstream runs it (bitwise the historical output).
- ``compiled``: ``torch.compile`` of ``GuidedStep`` (Inductor). On CPU one graph with dynamic batch and
  length; on CUDA CUDA graphs (``reduce-overhead``) over fixed shape buckets, the batch padded to a power of
  two and, for DiT, the frames to a multiple of ``FRAME_BUCKET`` (padding is invisible to the real rows when
  items are isolated, which is how synthesis and serving sample).
- ``onnxruntime``: the step exported to ONNX (``flowtts.inference.export``) run by ONNX Runtime on the CPU or
  CUDA execution provider; a model without an exported file is exported once when the backend is built. The
  file is a local path or a run's artifact, ``runs:/RUN_ID/export/step.onnx`` (what ``jobs/export.py`` logs),
  downloaded with its ``.data`` side file, if any, from MLflow's default tracking server.

Compilation and export happen when the backend is built and in ``warm_up`` (one call per shape the backend
specialises on), never silently inside a request: serving builds and warms the backend before it reports
ready. Same seed, same inputs: within 1e-3 of eager (max |diff| of the mel; tests/test_backends.py).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from flowtts.model.cfm import CFM
from flowtts.model.step import INPUT_NAMES, GuidedStep, StepCall, prepare_call

BACKENDS = ("eager", "compiled", "onnxruntime")
RUN_URI_PREFIX = "runs:/"
FRAME_BUCKET = 256
log = logging.getLogger(__name__)


class BackendError(ValueError):
    """A backend that cannot be built or cannot run the call it was given; the message says why."""


class SamplingBackend(Protocol):
    name: str

    def velocity(self, call: StepCall, x: torch.Tensor, time: torch.Tensor, cfg_strength: float) -> torch.Tensor: ...

    def warm_up(self) -> float: ...


def make_backend(name: str, model: CFM, *, onnx_file: str | Path | None = None) -> SamplingBackend | None:
    """The backend ``CFM.sample(backend=...)`` takes; ``None`` for eager (the model's own forward)."""
    if name not in BACKENDS:
        raise BackendError(f"backend {name!r} is not one of {', '.join(BACKENDS)}")
    if name != "onnxruntime" and onnx_file is not None:
        raise BackendError(f"onnx_file is read by the onnxruntime backend only, not by {name!r}")
    if name == "compiled":
        return CompiledBackend(model)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(model, onnx_file)
    return None


def warmup_calls(model: CFM, batches: tuple[int, ...] = (1, 2), frames: int = 64) -> list[StepCall]:
    """Calls of the shapes a backend specialises on (a single item and a padded batch), text of 8 tokens."""
    device = next(model.parameters()).device
    calls = []
    for b in batches:
        cond = torch.zeros(b, frames, model.num_channels, device=device)
        text = torch.zeros(b, 8, dtype=torch.long, device=device)
        mask = None
        if b > 1:
            lens = torch.full((b,), frames, device=device)
            lens[-1] = frames // 2
            mask = torch.arange(frames, device=device)[None] < lens[:, None]
            text[-1, 4:] = -1
        calls.append(prepare_call(model.transformer, cond, text, mask, isolate_items=True))
    return calls


def _timed_warm_up(backend: SamplingBackend, model: CFM) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for call in warmup_calls(model):
            x = torch.zeros_like(call.cond)
            backend.velocity(call, x, torch.tensor(0.5, device=x.device, dtype=x.dtype), 2.0)
    return time.perf_counter() - start


class CompiledBackend:
    name = "compiled"

    def __init__(self, model: CFM, *, buckets: bool | None = None):
        """``buckets`` (default: on CUDA): pad calls to the shape buckets CUDA graphs are captured for."""
        cuda = next(model.parameters()).is_cuda
        self.model = model
        self.buckets = cuda if buckets is None else buckets
        self.pad_frames = model.config.backbone == "DiT"  # DiT masks padded frames everywhere, incl. ConvPos
        # CPU: one dynamic graph with frozen weights (Inductor prepacks them for oneDNN; the model is not trained
        # while it samples). CUDA: CUDA graphs, one per shape bucket.
        options = (
            {"mode": "reduce-overhead", "dynamic": False} if cuda else {"dynamic": True, "options": {"freezing": True}}
        )
        self.steps = {iso: torch.compile(GuidedStep(model.transformer, iso).eval(), **options) for iso in (False, True)}

    def velocity(self, call, x, time, cfg_strength):
        if not self.buckets:
            return self.steps[call.isolate](*call.inputs(x, time, cfg_strength))
        if not call.isolate and not bool(call.mask.all()):
            raise BackendError("shape buckets pad the batch, which only isolated items ignore (isolate_items=True)")
        b, n, _ = x.shape
        padded, x_padded = bucket_call(call, x, self.pad_frames)
        return self.steps[True](*padded.inputs(x_padded, time, cfg_strength))[:b, :n]

    def warm_up(self) -> float:
        return _timed_warm_up(self, self.model)


def bucket_call(call: StepCall, x: torch.Tensor, pad_frames: bool) -> tuple[StepCall, torch.Tensor]:
    """``call`` and ``x`` padded to the next power-of-two batch and (``pad_frames``) ``FRAME_BUCKET`` frames.

    Padded rows keep their first frame valid so no attention row is empty; they are cut from the output."""
    b, n, _ = x.shape
    rows = 1 << (b - 1).bit_length()
    frames = -(-n // FRAME_BUCKET) * FRAME_BUCKET if pad_frames else n
    mask = F.pad(call.mask, (0, frames - n, 0, rows - b), value=False)
    mask[b:, 0] = True
    text_frames = frames - n if call.text_emb.shape[1] == n else 0  # DiT/UNetT: per frame; MMDiT: per token

    def pad(t: torch.Tensor, along_frames: int) -> torch.Tensor:
        return F.pad(t, (0, 0, 0, along_frames, 0, rows - b))

    padded = StepCall(
        cond=pad(call.cond, frames - n),
        text=F.pad(call.text, (0, 0, 0, rows - b), value=-1),
        text_emb=pad(call.text_emb, text_frames),
        null_text_emb=pad(call.null_text_emb, text_frames),
        mask=mask,
        isolate=True,
    )
    return padded, pad(x, frames - n)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model: CFM, onnx_file: str | Path | None = None):
        """``onnx_file``: a step exported by ``jobs/export.py`` for this model, a path or a ``runs:/`` artifact
        URI (downloaded into a temporary folder the backend keeps); ``None`` exports one now."""
        try:
            import onnxruntime as ort
        except ImportError as err:  # pragma: no cover - a dependency of flowtts
            raise BackendError(f"the onnxruntime backend needs onnxruntime: {err}") from err
        from flowtts.inference.export import ISOLATE_KEY, export_onnx

        self.model = model
        self._tmp = None
        if onnx_file is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="flowtts-onnx-")
            start = time.perf_counter()
            onnx_file = export_onnx(model, Path(self._tmp.name) / "step.onnx")
            log.info("exported the guided step to ONNX in %.1f s (once, at start)", time.perf_counter() - start)
        elif str(onnx_file).startswith(RUN_URI_PREFIX):
            self._tmp = tempfile.TemporaryDirectory(prefix="flowtts-onnx-")
            onnx_file = download_onnx(str(onnx_file), Path(self._tmp.name))
        onnx_file = Path(onnx_file)
        if not onnx_file.is_file():
            raise BackendError(f"ONNX file {onnx_file} does not exist (export one with jobs/export.py)")
        self.device = next(model.parameters()).device
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise BackendError(f"the model is on CUDA but ONNX Runtime has no CUDA provider ({available})")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # torch's threads run the ODE update between steps: ORT's must not spin over them for the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(onnx_file), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own untyped errors for unreadable files
            raise BackendError(f"ONNX Runtime cannot load {onnx_file}: {err}") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        self.isolate = meta.get(ISOLATE_KEY, "true") == "true"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.dtype = next(model.parameters()).dtype

    def velocity(self, call, x, time, cfg_strength):
        if call.isolate != self.isolate and not bool(call.mask.all()):
            mode = "isolated items (isolate_items=True)" if self.isolate else "upstream's batch semantics"
            raise BackendError(f"this ONNX step was exported for {mode}; a padded batch in the other mode differs")
        feed = {
            name: value.detach().cpu().numpy()
            for name, value in zip(INPUT_NAMES, call.inputs(x, time, cfg_strength), strict=True)
            if name in self.input_names
        }
        (out,) = self.session.run(None, feed)
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)

    def warm_up(self) -> float:
        return _timed_warm_up(self, self.model)


def download_onnx(uri: str, folder: Path) -> Path:
    """The ONNX file at the run artifact ``uri`` and its ``<name>.data`` side file, when the run holds one,
    downloaded into ``folder`` (side by side, as ONNX Runtime looks for it); MLflow is imported only here."""
    import mlflow

    parent, _, name = uri.rstrip("/").rpartition("/")
    try:
        listed = {Path(entry.path).name for entry in mlflow.artifacts.list_artifacts(artifact_uri=parent)}
        if name not in listed:
            raise BackendError(f"{uri} names no artifact (the folder holds {sorted(listed) or 'nothing'})")
        for artifact in (name, f"{name}.data"):
            if artifact in listed:
                mlflow.artifacts.download_artifacts(artifact_uri=f"{parent}/{artifact}", dst_path=str(folder))
    except mlflow.exceptions.MlflowException as err:
        raise BackendError(f"cannot download the ONNX step {uri}: {err.message}") from err
    return folder / name
