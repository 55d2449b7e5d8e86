"""Where a model's weights come from: a URI or path in, a pinned source and a local copy out.

Accepted: ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` (MLflow registry), ``runs:/RUN_ID/PATH``
(a run's artifact), a checkpoint folder in our format (with its ``flowtts.json``), or an official F5-TTS
checkpoint file (``.pt``/``.pth``/``.ckpt``/``.safetensors``, with its ``vocab.txt`` beside it when there is
one). A folder or a file is a local path or a URI of any remote filesystem ``flowtts.storage`` reads
(``s3://bucket/ckpt``, ``gs://...``, ``hdfs://...``), so every node of a cluster can load it.

``parse_model_source`` only reads the text and looks at the file system or store the folder or file is on;
``resolve_model_source`` also pins a registry alias to the version it names now, so every process that loads
the returned source (model replicas, the evaluation gate) gets the same version even if the alias moves
meanwhile. ``local_model`` gives a local path for a source: a local folder or file as it is; a remote folder
or file, a registry or a run model downloaded into a temporary folder that is removed when the ``with`` block
ends. ``read_vocab`` reads a ``vocab.txt`` at a path or a URI (an official file's, or one given with it).
``log_to_model_run`` logs a job's output (an evaluation report, an export) to the MLflow run a registered
model version or a run URI came from; a local source logs nothing.

MLflow is imported only for registry and run sources; local ones never touch it.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import BeforeValidator

from flowtts.checkpoint import SIDECAR_FILE, VOCAB_FILE
from flowtts.storage import Location, StorageError, normalize, resolve, validate_uri
from flowtts.text import Vocab

logger = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"  # the pyfunc model's artifact that holds our checkpoint folder
OFFICIAL_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors")
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")
_RUN_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)(?:/.*)?$")
ACCEPTED = (
    "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH, a checkpoint folder or an official "
    f"checkpoint file ({', '.join(OFFICIAL_SUFFIXES)}), as a path or a URI (s3://bucket/ckpt, gs://, hdfs://)"
)


class ModelSourceError(ValueError):
    """A model URI or path that is malformed or names nothing; the message names it."""


class ModelNotFoundError(ModelSourceError, FileNotFoundError):
    """A local model path that does not exist."""


@dataclass(frozen=True)
class ModelSource:
    """A model to load. ``load_uri`` is what is loaded: ``models:/NAME/VERSION`` once pinned, the run URI,
    or a folder's or file's ``flowtts.storage`` URI (an absolute path when it is local)."""

    uri: str  # as the user gave it
    kind: Literal["registry", "run", "folder", "official"]
    load_uri: str
    name: str
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    vocab: str | None = None  # an official file's vocab.txt (a path or a URI), when one lies beside it
    tracking_uri: str | None = None  # MLflow server of registry and run sources (None: MLflow's default)

    @property
    def pinned(self) -> bool:
        """True when loading it twice gives the same weights (no alias left to move)."""
        return not (self.kind == "registry" and self.version is None)

    @property
    def label(self) -> str:
        """``NAME/VERSION`` for a registry model, else its name."""
        return f"{self.name}/{self.version}" if self.version else self.name


def parse_model_source(uri: str | Path, tracking_uri: str | None = None) -> ModelSource:
    """Read ``uri`` without asking MLflow anything; a registry alias stays unpinned. A folder or file is
    looked at where it lies (a storage failure, e.g. access denied, raises ``StorageError`` naming it)."""
    text = str(uri)
    registry = _REGISTRY_URI.match(text)
    if registry:
        name, alias, version = registry["name"], registry["alias"], registry["version"]
        return ModelSource(
            uri=text,
            kind="registry",
            load_uri=f"models:/{name}/{version}" if version else text,
            name=name,
            version=version,
            alias=alias,
            tracking_uri=tracking_uri,
        )
    run = _RUN_URI.match(text)
    if run:
        return ModelSource(
            uri=text, kind="run", load_uri=text, name=run["run_id"], run_id=run["run_id"], tracking_uri=tracking_uri
        )
    if text.startswith(("models:", "runs:")):
        raise ModelSourceError(f"model {text!r} is not one of: {ACCEPTED}")
    location = _location(text)
    if location.is_dir():
        if not location.join(SIDECAR_FILE).is_file():
            raise ModelSourceError(
                f"model {text!r} ({location}) is a folder but not a checkpoint folder of ours: it has no {SIDECAR_FILE}"
            )
        return ModelSource(uri=text, kind="folder", load_uri=location.uri, name=location.name)
    file = PurePosixPath(location.path)
    if location.is_file() and file.suffix in OFFICIAL_SUFFIXES:
        vocab = location.sibling(VOCAB_FILE)
        return ModelSource(
            uri=text,
            kind="official",
            load_uri=location.uri,
            name=file.stem,
            vocab=vocab.uri if vocab.is_file() else None,
        )
    if location.exists():
        raise ModelSourceError(
            f"model {text!r} ({location}) is a file but not an official checkpoint ({', '.join(OFFICIAL_SUFFIXES)})"
        )
    raise ModelNotFoundError(f"model {text!r} is not a checkpoint folder or file: {location} does not exist")


def _as_model_uri(value: object) -> str:
    if isinstance(value, str) and value.startswith(("models:", "runs:")):
        return value  # MLflow's, as written (parse_model_source checks the form)
    return validate_uri(value)


ModelUri = Annotated[str, BeforeValidator(_as_model_uri)]
"""A pydantic field type for a model to start from: ``models:/...`` and ``runs:/...`` as written, else a
``flowtts.storage.StorageUri`` (a path made absolute, or a storage URI)."""


def _location(text: str) -> Location:
    try:
        normalize(text)  # pure text: an unknown scheme (http://, ...) is no model source either
    except StorageError as exc:
        raise ModelSourceError(f"model {text!r} is not one of: {ACCEPTED}") from exc
    return resolve(text)


def resolve_model_source(uri: str | Path | ModelSource, tracking_uri: str | None = None) -> ModelSource:
    """Parse ``uri`` and pin a registry alias or version to the registry's version (with its run id)."""
    source = uri if isinstance(uri, ModelSource) else parse_model_source(uri, tracking_uri)
    if source.kind != "registry" or source.run_id is not None:
        return source
    import mlflow  # heavy; only registry sources need it

    client = tracking_client(source)
    try:
        if source.version is None:
            found = client.get_model_version_by_alias(source.name, source.alias)
        else:
            found = client.get_model_version(source.name, source.version)
    except mlflow.exceptions.MlflowException as exc:
        raise ModelSourceError(f"model {source.uri!r} cannot be resolved in the registry: {exc.message}") from exc
    version = str(found.version)
    return replace(source, version=version, load_uri=f"models:/{source.name}/{version}", run_id=found.run_id)


def tracking_client(source: ModelSource):
    """An ``MlflowClient`` of the server ``source`` lives on (tracking and registry; None: MLflow's default)."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=source.tracking_uri, registry_uri=source.tracking_uri)


def log_to_model_run(
    source: ModelSource, folder: Path, artifact_path: str, metrics: dict[str, float] | None = None
) -> str | None:
    """Log ``folder`` under ``artifact_path`` (and ``metrics``) to the run ``source`` came from: the run of
    a pinned registry version or of a run URI. Returns that run's id; None for a local source (nothing logged)."""
    if source.run_id is None:
        logger.info("%s is not a registered model or a run: nothing logged to MLflow", source.uri)
        return None
    from mlflow.entities import Metric

    client = tracking_client(source)
    if metrics:
        now = int(time.time() * 1000)
        client.log_batch(source.run_id, metrics=[Metric(key, value, now, 0) for key, value in metrics.items()])
    client.log_artifacts(source.run_id, str(folder), artifact_path)
    return source.run_id


@contextmanager
def local_model(source: ModelSource) -> Iterator[Path]:
    """A local path for ``source``: a folder in our format or an official checkpoint file. Remote folders and
    files, registry and run models are downloaded into a temporary folder, removed on exit (also when the block
    raises); a local folder or file is used where it lies."""
    if source.kind == "folder":
        with resolve(source.load_uri).local_folder() as folder:
            yield folder
        return
    if source.kind == "official":
        with resolve(source.load_uri).local_file() as file:
            yield file
        return
    if not source.pinned:
        raise ModelSourceError(f"model {source.uri!r} is an unpinned alias; resolve_model_source() it first")
    with tempfile.TemporaryDirectory(prefix="flowtts-model-") as folder:
        yield download_model(source.load_uri, folder, tracking_uri=source.tracking_uri)


def download_model(uri: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """Download an MLflow model or run artifact into ``dst``; return its checkpoint folder in our format.

    Training logs a pyfunc model with ``artifacts={"checkpoint": <folder>}``, which lands under
    ``<model>/artifacts/checkpoint``; a URI that points at the checkpoint folder itself works too.
    """
    import mlflow

    artifact_uri = uri
    registry = _REGISTRY_URI.match(uri)
    if registry and registry["version"]:  # MLflow's models:/ download reads the global registry URI: ask ours
        client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        artifact_uri = client.get_model_version_download_uri(registry["name"], registry["version"])
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=tracking_uri)
    )
    # MLflow stores a folder artifact under its own name, so look at every artifact folder.
    artifacts = sorted((local / "artifacts").glob("*")) if (local / "artifacts").is_dir() else []
    for folder in (local / "artifacts" / CHECKPOINT_ARTIFACT, *artifacts, local):
        if (folder / SIDECAR_FILE).is_file():
            return folder
    found = sorted(p.name for p in local.iterdir()) if local.is_dir() else [local.name]
    raise ModelSourceError(
        f"{uri} holds no flowtts checkpoint (no artifacts/{CHECKPOINT_ARTIFACT}/{SIDECAR_FILE}); "
        f"downloaded {local} with {found}"
    )


def read_vocab(location: str | Path) -> Vocab:
    """The ``vocab.txt`` at a path or a URI (``ModelSource.vocab``, or one given with an official file)."""
    return Vocab.parse(resolve(location).read_text())
