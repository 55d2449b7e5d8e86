"""flowtts.storage on the local filesystem and on a real S3 API (moto's server on loopback)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from flowtts.storage import Location, StorageError, is_remote, local_path, normalize, resolve, scheme_of
from tests.helpers import load_job


def test_schemes():
    assert scheme_of("s3://b/k") == "s3"
    assert scheme_of("file:///tmp/x") == "file"
    assert scheme_of("data/x") == ""
    assert scheme_of("C:/x") == ""
    assert is_remote("gs://b/k") and not is_remote("/tmp/x") and not is_remote("file:///tmp/x")
    with pytest.raises(StorageError, match="ftp://host/x: unsupported scheme 'ftp'"):
        resolve("ftp://host/x")
    # the spelling alone, no filesystem touched (no S3 server here): what config validation uses
    assert normalize("s3://no-such-bucket/k/") == "s3://no-such-bucket/k" and normalize("file:///tmp/x/") == "/tmp/x"


def exercise(root: Location) -> None:
    """The same operations give the same answers on every filesystem."""
    assert not root.exists()
    assert root.files(".parquet") == []
    root.join("b", "two.parquet").write_bytes(b"22")
    root.join("a.parquet").write_bytes(b"1")
    root.join("notes.txt").write_text("xin chào")
    assert [f.name for f in root.files(".parquet")] == ["a.parquet"]
    assert [f.name for f in root.files(".parquet", recursive=True)] == ["a.parquet", "two.parquet"]
    assert root.is_dir() and root.join("a.parquet").is_file() and not root.join("b").is_file()
    assert root.join("notes.txt").read_text() == "xin chào"
    assert root.join("b", "two.parquet").size() == 2
    with root.join("b", "two.parquet").open_input() as f:
        f.seek(1)
        assert f.read() == b"2"
    copy = root.join("copy", "a.parquet")
    root.join("a.parquet").copy_file_to(copy)
    assert copy.read_bytes() == b"1"
    again = pickle.loads(pickle.dumps(root.join("notes.txt")))
    assert again == root.join("notes.txt") and again.read_text() == "xin chào"
    with pytest.raises(StorageError, match="missing.txt: not found"):
        root.join("missing.txt").read_bytes()
    with root.join("notes.txt").local_file() as file, root.join("b").local_folder() as folder:
        assert file.read_text() == "xin chào" and file.name == "notes.txt"
        assert [p.name for p in folder.iterdir()] == ["two.parquet"] and folder.name == "b"
    assert file.exists() == root.is_local and folder.exists() == root.is_local  # a download is removed after
    atomic = root.join("audio", "x.wav")
    atomic.write_bytes_atomic(b"first", scratch=root.join("scratch"))
    atomic.write_bytes_atomic(b"second")  # replaces it whole
    assert atomic.read_bytes() == b"second"
    left = {f.relative_to(root) for f in root.files(recursive=True)} - {"b/two.parquet", "copy/a.parquet"}
    assert left == {"a.parquet", "notes.txt", "audio/x.wav"}  # no partial file left anywhere
    root.delete_dir()
    assert not root.exists()


def test_local(tmp_path):
    root = resolve(tmp_path / "data")
    assert root.is_local and root.local_path() == tmp_path / "data"
    exercise(root)
    assert resolve(f"file://{tmp_path}/data").path == str(tmp_path / "data")


@pytest.mark.integration
def test_s3(s3_bucket):
    root = resolve(f"{s3_bucket}/prefix/data")
    assert not root.is_local and root.uri == f"{s3_bucket}/prefix/data"
    with pytest.raises(StorageError, match="is not on the local filesystem"):
        root.local_path()
    exercise(root)
    root.join("b", "two.parquet").write_bytes(b"22")
    with pytest.raises(StorageError, match="prefix/data/b: no file there"):
        with root.join("b").local_file():
            pass
    with pytest.raises(StorageError, match="prefix/data/missing: no folder there"):
        with root.join("missing").local_folder():
            pass


@pytest.mark.integration
def test_s3_missing_bucket_is_named(s3_env):
    with pytest.raises(StorageError, match="s3://no-such-bucket-here/x.txt"):
        resolve("s3://no-such-bucket-here/x.txt").read_bytes()


def test_storage_error_pickles():
    err = pickle.loads(pickle.dumps(StorageError("cannot read s3://b/k: not found")))
    assert isinstance(err, StorageError) and str(err) == "cannot read s3://b/k: not found"


@pytest.mark.parametrize(
    ("job", "argv"),
    [
        ("export", ["--model", "m", "--out"]),
        ("evaluate", ["--model", "m", "--data", "d", "--out"]),
        ("synthesize", ["--model", "m", "--ref-audio", "r.wav", "--text", "a", "--out"]),
        ("edit", ["--model", "m", "--audio"]),
    ],
)
def test_options_that_take_a_local_path_refuse_a_uri_naming_it(job, argv, tmp_path, monkeypatch, capsys):
    """``Path("s3://b/out")`` would write to a local folder named ``s3:``: such options say so and exit 2."""
    monkeypatch.chdir(tmp_path)
    assert local_path("file:///tmp/x") == Path("/tmp/x") and local_path("out") == tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        load_job(job).main([*argv, "s3://bucket/out"])
    assert exited.value.code == 2
    assert "s3://bucket/out is a URI; this option takes a local path" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
