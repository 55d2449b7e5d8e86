"""Errors that survive Ray: every exception type of ours pickles with its message and attributes (Ray
pickles what a task, actor, Train worker or Serve replica raises), and a job that fails with one ends with
``error: <message>`` on stderr and status 2, not a traceback."""

from __future__ import annotations

import importlib
import pickle
import pkgutil
import subprocess
import sys

import pytest
from local_services import service_env
from ray.exceptions import RayTaskError
from ray.train.v2.api.exceptions import WorkerGroupError

from data_pipelines.reading import Reason
from flowtts.checkpoint import save_checkpoint
from flowtts.model import build_model
from flowtts.text import UnknownCharactersError, Vocab
from tests.helpers import REPO, SAMPLE_CORPUS
from tests.helpers.models import small_model_config
from tests.helpers.shards import write_dataset
from trainer.job_exit import PROJECT_PACKAGES, project_error

# Representative constructor arguments of every exception class defined in the product packages.
EXAMPLES: dict[str, tuple] = {
    "AudioError": ("clip.wav: not audio (unknown format)",),
    "TruncatedAudioError": ("clip.wav declares 48000 frames but holds 1200",),
    "CheckpointError": ("missing keys: ['transformer.proj_out.weight']",),
    "StorageError": ("s3://bucket/data/vocab.txt: access denied",),
    "PretrainedModelError": ("model 'x y' is neither a folder nor a Hugging Face repo id",),
    "TranscriptRequiredError": ("reference transcript is empty and no ASR model is configured",),
    "UnknownVoiceError": ("voice tag(s) [anna] name no voice (known: lan)", ("anna",)),
    "UnknownCharactersError": ("xin chào ẵ", ["ẵ", "€"]),
    "BatchingError": ("frame_budget must be positive, got 0",),
    "TrainStateError": ("rng_rank0.pt is missing in /runs/x",),
    "SynthesisError": ("cannot synthesise",),
    "ReferenceAudioError": ("the reference is silent",),
    "EmptyTextError": ("the text to speak is empty",),
    "UnspeakableTextError": ("nothing speakable is left of '???'",),
    "InvalidOptionsError": ("nfe must be in 1..128, got 0",),
    "InvalidEditError": ("spans[1]=[0.4, 0.2] must have 0 <= start < end",),
    "VocoderError": ("vocos/config.yaml: n_mels 80, our mel has 100",),
    "OutputExistsError": ("/data/out exists; pass --overwrite",),
    "MetadataError": ("metadata.csv: no audio_file column",),
    "RowRejected": (Reason.MISSING_FILE, "'wavs/a.wav' does not exist in /corpus"),
    "TrackingError": ("MLflow run abc of run vi-tiny not found",),
    "ApiError": (413, "payload_too_large", "request body exceeds 1024 bytes", {"Retry-After": "1"}),
    "UnsupportedFormatError": ("response_format 'aac' is not supported",),
    "VoiceNotFoundError": ("no voice 'v_123'",),
    "VoiceNameTakenError": ("a voice named 'an' exists",),
    "ModelSourceError": ("models:/flowtts@nope names no model version",),
    "ModelNotFoundError": ("no model folder at /models/vi-tiny",),
    "BackendError": ("backend 'tensorrt' is not one of eager, compiled, onnxruntime",),
    "ExportError": ("opset 16 is too old: LayerNormalization needs opset 17 or newer",),
    "InputError": ("input s3://b/lines.csv has no text column (columns: id, voice)",),
    "RefusedRow": ("missing_voice", "the row names no voice: give voice, or ref_audio and ref_text"),
    "JudgeRequiredError": ("candidates=4 needs an ASR judge (--judge-asr-model)",),
}


def project_exception_classes() -> list[type[BaseException]]:
    for name in PROJECT_PACKAGES:
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, f"{name}."):
            importlib.import_module(module.name)
    found, pending = set(), [BaseException]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub not in found:
                found.add(sub)
                pending.append(sub)
    ours = [cls for cls in found if cls.__module__.split(".")[0] in PROJECT_PACKAGES]
    return sorted(ours, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def test_every_exception_class_has_an_example():
    names = [cls.__name__ for cls in project_exception_classes()]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(EXAMPLES), "add representative constructor arguments for new exception classes"


@pytest.mark.parametrize("cls", project_exception_classes(), ids=lambda cls: cls.__name__)
def test_exception_pickles_with_its_message_and_attributes(cls):
    error = cls(*EXAMPLES[cls.__name__])
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls
    assert str(again) == str(error) and again.args == error.args
    assert vars(again) == vars(error)


def test_the_project_error_is_found_inside_rays_wrappers():
    error = UnknownCharactersError("row 3: ẵ", ["ẵ"])
    task_error = RayTaskError("duration_loop", "Traceback ...", error)
    assert project_error(task_error) is error
    assert project_error(task_error.as_instanceof_cause()) is error
    assert project_error(WorkerGroupError("rank 0 failed", {0: RuntimeError("other"), 1: task_error})) is error
    try:
        raise RuntimeError("wrapped") from error
    except RuntimeError as wrapped:
        assert project_error(wrapped) is error
    assert project_error(RuntimeError("not ours")) is None


@pytest.mark.integration
def test_duration_job_on_unknown_characters_ends_with_one_error_line(tmp_path):
    """A model whose vocab lacks the dataset's letters, trained through Ray Train: the worker's error reaches
    the user as one line naming the characters, not as Ray's deserialisation TypeError or a traceback."""
    dataset = write_dataset(tmp_path / "data", SAMPLE_CORPUS, 4)
    vocab = Vocab([" ", *"abc"])
    folder = save_checkpoint(build_model(small_model_config(len(vocab))), tmp_path / "model", vocab)
    command = [sys.executable, "jobs/train_duration.py", "--model", str(folder), "--data", str(dataset)]
    command += ["--steps", "1", "--storage", str(tmp_path / "runs"), "--num-cpus", "1", "--cpus-per-worker", "1"]
    env = {key: value for key, value in service_env().items() if key != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-4000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "characters not in the vocab" in lines[0] and "'n' (U+006E)" in lines[0], lines
    # the driver ends without a traceback (Ray's own worker logs, prefixed "(RayTrainWorker pid=...)", may hold one)
    assert not any(line.startswith("Traceback") for line in [*done.stderr.splitlines(), *done.stdout.splitlines()])
