"""flowtts.model_source: parsing, pinning an alias once, local sources without MLflow, folders and files in
object storage, temporary folders."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from flowtts.checkpoint import load_bundle, save_checkpoint
from flowtts.config import FlowTTSConfig
from flowtts.model import build_model
from flowtts.model_source import (
    ModelNotFoundError,
    ModelSourceError,
    local_model,
    parse_model_source,
    resolve_model_source,
)
from flowtts.storage import resolve
from flowtts.synthesis import Synthesizer
from flowtts.text import Vocab
from flowtts.training.warmstart import prepare_start
from tests.helpers.locations import upload
from tests.helpers.models import assert_same_state, small_model_config
from tests.helpers.registry import register_checkpoints
from trainer.settings import TrainJob

NAME = "source-test"


def tiny_checkpoint(folder: Path, seed: int) -> Path:
    vocab = Vocab.from_texts(["xin chào các bạn"])
    torch.manual_seed(seed)
    config = small_model_config(len(vocab), depth=1)
    return save_checkpoint(build_model(config), folder, vocab, info={"seed": seed})


@pytest.mark.parametrize(
    "uri",
    ["models:/", "models:/flowtts", "models:/flowtts/latest", "runs:/", "http://host/m", "ftp://host/m.pt"],
)
def test_malformed_uris_are_refused_naming_the_uri(uri):
    with pytest.raises(ModelSourceError, match=re.escape(repr(uri))):
        parse_model_source(uri)


def test_registry_and_run_uris_parse_without_mlflow():
    alias = parse_model_source("models:/flowtts@production")
    assert (alias.kind, alias.name, alias.alias, alias.version, alias.pinned) == (
        "registry",
        "flowtts",
        "production",
        None,
        False,
    )
    version = parse_model_source("models:/flowtts/7", tracking_uri="http://mlflow:5000")
    assert (version.load_uri, version.version, version.pinned, version.label) == (
        "models:/flowtts/7",
        "7",
        True,
        "flowtts/7",
    )
    assert version.tracking_uri == "http://mlflow:5000"
    run = parse_model_source("runs:/abc123/model/artifacts/checkpoint")
    assert (run.kind, run.run_id, run.load_uri) == ("run", "abc123", "runs:/abc123/model/artifacts/checkpoint")


def test_local_folder_and_official_file_resolve_without_mlflow(tmp_path, dit_fixture):
    folder = tiny_checkpoint(tmp_path / "ours", seed=0)
    official = tmp_path / "official" / "model.safetensors"
    official.parent.mkdir()
    shutil.copy(dit_fixture / "model.safetensors", official)
    shutil.copy(dit_fixture / "vocab.txt", official.parent / "vocab.txt")
    lone = tmp_path / "lone.pt"
    lone.write_bytes(b"")
    script = f"""
import sys
from flowtts.model_source import local_model, resolve_model_source
ours = resolve_model_source({str(folder)!r})
official = resolve_model_source({str(official)!r})
lone = resolve_model_source({str(lone)!r})
with local_model(ours) as path:
    assert str(path) == {str(folder)!r} and path.is_dir()
assert (ours.kind, official.kind, lone.kind) == ("folder", "official", "official")
assert str(official.vocab) == {str(official.parent / "vocab.txt")!r} and lone.vocab is None
assert "mlflow" not in sys.modules, "a local source imported mlflow"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # the official file loads through it, its vocab.txt found beside it
    synth = Synthesizer.from_pretrained(official, model_config=str(dit_fixture / "config.json"))
    assert synth.model_info["format"] == "f5-tts" and len(synth.vocab) == synth.model.config.text_num_embeds


def test_missing_and_unusable_paths_are_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match="missing"):
        parse_model_source(tmp_path / "missing")
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(ModelSourceError, match="notes.txt"):
        parse_model_source(notes)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ModelSourceError, match="plain.* no flowtts.json"):
        parse_model_source(tmp_path / "plain")


# ---------------------------------------------------------------- folders and files in object storage


def assert_downloaded_then_removed(path: Path) -> None:
    """``path`` (what ``local_model`` gave for a remote source) and its temporary folder are gone."""
    assert not path.exists()
    assert not any(parent.name.startswith("flowtts-download-") and parent.exists() for parent in path.parents)


@pytest.mark.integration
def test_a_checkpoint_folder_in_s3_loads_as_the_local_one(tmp_path, s3_bucket):
    folder = tiny_checkpoint(tmp_path / "ours", seed=4)
    uri = upload(folder, resolve(f"{s3_bucket}/models/ours")).uri
    source = resolve_model_source(uri + "/")
    assert (source.kind, source.load_uri, source.name, source.vocab) == ("folder", uri, "ours", None)
    with local_model(source) as path:
        assert path.is_dir() and path != folder
        remote, local = load_bundle(path), load_bundle(folder)
    assert_downloaded_then_removed(path)
    assert remote.info["seed"] == 4 and remote.vocab == local.vocab
    assert_same_state(remote.model, local.model)
    synth = Synthesizer.from_pretrained(uri)  # what serving's replicas and the jobs call
    assert synth.model_info["source"] == uri and synth.model_info["seed"] == 4


@pytest.mark.integration
def test_an_official_file_in_s3_loads_with_the_vocab_beside_it(s3_bucket, dit_fixture):
    store = resolve(f"{s3_bucket}/official")
    for name in ("model.safetensors", "vocab.txt"):
        store.join(name).write_bytes((dit_fixture / name).read_bytes())
    store.join("lone/model.pt").write_bytes(b"")  # parsing reads no weights
    source = parse_model_source(store.join("model.safetensors").uri)
    assert (source.kind, source.name, source.vocab) == ("official", "model", store.join("vocab.txt").uri)
    assert parse_model_source(store.join("lone/model.pt").uri).vocab is None
    with local_model(source) as path:
        assert path.is_file() and path.name == "model.safetensors"
        assert path.read_bytes() == (dit_fixture / "model.safetensors").read_bytes()
    assert_downloaded_then_removed(path)
    config = str(dit_fixture / "config.json")
    remote = Synthesizer.from_pretrained(source.uri, model_config=config)
    local = Synthesizer.from_pretrained(dit_fixture / "model.safetensors", model_config=config)
    assert remote.vocab == local.vocab == Vocab.load(dit_fixture / "vocab.txt")
    assert remote.model_info["format"] == "f5-tts"
    assert_same_state(remote.model, local.model)


@pytest.mark.integration
def test_what_is_not_a_model_in_s3_is_named(tmp_path, s3_bucket):
    with pytest.raises(ModelNotFoundError, match=re.escape(f"{s3_bucket}/nothing/here")):
        parse_model_source(f"{s3_bucket}/nothing/here")
    notes = resolve(f"{s3_bucket}/things/notes.txt")
    notes.write_text("x")
    with pytest.raises(ModelSourceError, match=re.escape(notes.uri) + "' .* not an official checkpoint"):
        parse_model_source(notes.uri)
    with pytest.raises(ModelSourceError, match=re.escape(f"{s3_bucket}/things") + "' .* no flowtts.json"):
        parse_model_source(f"{s3_bucket}/things")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("source-registry")
    folders = [tiny_checkpoint(root / f"v{i}" / "checkpoint", seed=i) for i in (1, 2)]
    tracking = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
        assert register_checkpoints(tracking, root / "artifacts", folders, NAME) == ["1", "2"]
        client = mlflow.MlflowClient(tracking, tracking)
        client.set_registered_model_alias(NAME, "production", "1")
        yield tracking, client


def test_alias_is_pinned_once_and_stays_pinned_when_it_moves(registry):
    tracking, client = registry
    pinned = resolve_model_source(f"models:/{NAME}@production", tracking)
    assert (pinned.version, pinned.load_uri, pinned.alias) == ("1", f"models:/{NAME}/1", "production")
    assert pinned.run_id == client.get_model_version(NAME, "1").run_id
    client.set_registered_model_alias(NAME, "production", "2")
    # resolving the pinned source again (as a replica or the gate would) keeps version 1
    assert resolve_model_source(pinned) is pinned
    with local_model(resolve_model_source(pinned)) as folder:
        assert load_bundle(folder).info["seed"] == 1
    assert resolve_model_source(f"models:/{NAME}@production", tracking).version == "2"
    client.set_registered_model_alias(NAME, "production", "1")


def test_unknown_alias_is_named(registry):
    tracking, _ = registry
    with pytest.raises(ModelSourceError, match=f"models:/{NAME}@nowhere"):
        resolve_model_source(f"models:/{NAME}@nowhere", tracking)


def test_an_unpinned_alias_is_not_downloaded(registry):
    with pytest.raises(ModelSourceError, match="unpinned"):
        with local_model(parse_model_source(f"models:/{NAME}@production")):
            pass


def test_download_folder_is_removed_on_exit_and_on_exception(registry):
    tracking, _ = registry
    source = resolve_model_source(f"models:/{NAME}/2", tracking)
    with local_model(source) as folder:
        assert load_bundle(folder).info["seed"] == 2
    assert not folder.exists()
    with pytest.raises(RuntimeError, match="boom"):
        with local_model(source) as failing:
            assert failing.is_dir()
            raise RuntimeError("boom")
    assert not failing.exists()
    # the temporary folder itself is gone, not just the checkpoint inside it
    assert not any(parent.name.startswith("flowtts-model-") and parent.exists() for parent in failing.parents)


def test_a_source_downloads_from_its_own_tracking_uri_not_the_global_one(registry, tmp_path, monkeypatch):
    tracking, _ = registry
    source = resolve_model_source(f"models:/{NAME}/1", tracking)
    # a replica whose MLflow points elsewhere (monkeypatch restores MLflow's globals exactly afterwards)
    elsewhere = f"sqlite:///{tmp_path}/elsewhere.db"
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", elsewhere)
    monkeypatch.setattr(mlflow.tracking._model_registry.utils, "_registry_uri", elsewhere)
    assert mlflow.get_registry_uri() == elsewhere
    with local_model(source) as folder:
        assert load_bundle(folder).info["seed"] == 1


def test_training_warm_starts_from_a_registered_version(registry, monkeypatch, tmp_path):
    """``jobs/train.py --init-from models:/NAME@ALIAS``: the version the alias names, from the registry every node
    reaches; the job's setting keeps the URI as written (a path would be made absolute)."""
    tracking, _ = registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    job = TrainJob(config="tiny", data=str(tmp_path), init_from=f"models:/{NAME}@production")
    assert job.init_from == f"models:/{NAME}@production"
    assert TrainJob(config="tiny", data=str(tmp_path), init_from="ckpt").init_from == str(Path("ckpt").absolute())
    with local_model(resolve_model_source(f"models:/{NAME}/1", tracking)) as folder:
        version_1 = load_bundle(folder)
    config = FlowTTSConfig(name="registered", model=version_1.model.config)
    start = prepare_start(config, ["xin chào"], version_1.vocab, init_from=job.init_from)
    assert start.vocab == version_1.vocab and start.added == []
    assert_same_state(start.model, version_1.model)
