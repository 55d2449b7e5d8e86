"""A local path or a URI on any pyarrow filesystem, as one ``Location``: the only place that parses ``s3://``.

``resolve("s3://bucket/corpus")``, ``resolve("gs://...")``, ``resolve("hdfs://...")``, ``resolve("file:///...")``
and plain paths all give a ``Location`` (filesystem + path inside it). Credentials, region and endpoint come
the standard way, from the environment the filesystem's SDK reads (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``, ``AWS_PROFILE`` and
``AWS_ENDPOINT_URL`` for MinIO, Ceph, R2 or any other S3-compatible store). A ``Location`` pickles (as its
URI), so it can travel into Ray tasks, which resolve the filesystem again on their node.

Every storage failure is raised as ``StorageError`` naming the URI, whatever the backend's own wording.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated

import pyarrow.fs as pafs
from pydantic import BeforeValidator

REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss")  # an object appears only once its upload completes


class StorageError(OSError):
    """A read, write or listing failed; the message names the URI and what the store said."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self),))


def scheme_of(location: str | Path) -> str:
    """``"s3"`` for ``s3://b/k``, ``"file"`` for ``file:///x``, ``""`` for a plain path."""
    text = str(location)
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.isalnum() else ""


def is_remote(location: str | Path) -> bool:
    return scheme_of(location) not in ("", "file")


@dataclass(frozen=True)
class Location:
    """A file or folder on some filesystem. ``uri`` is what users see; ``path`` is what ``fs`` takes."""

    uri: str
    path: str
    fs: pafs.FileSystem = field(compare=False, repr=False)

    def __reduce__(self):
        return (resolve, (self.uri,))

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def local_path(self) -> Path:
        """The path on this machine; only for local locations (e.g. libraries that want a file name)."""
        if not self.is_local:
            raise StorageError(f"{self.uri} is not on the local filesystem")
        return Path(self.path)

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = self.uri.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts) if parts else self.uri
        return Location(uri=uri, path=path, fs=self.fs)

    def sibling(self, name: str) -> Location:
        """``name`` in the same parent folder (staging folders beside an output)."""
        head = self.uri.rstrip("/").rpartition("/")[0]
        return Location(uri=f"{head}/{name}", path=posixpath.join(posixpath.dirname(self.path), name), fs=self.fs)

    def store_root(self) -> Location:
        """The bucket of an object-store location (``s3://bucket``); ``/`` on the local filesystem."""
        if self.is_local:
            return Location(uri="/", path="/", fs=self.fs)
        bucket = self.path.split("/", 1)[0]
        return Location(uri=f"{self.uri.partition('://')[0]}://{bucket}", path=bucket, fs=self.fs)

    def relative_to(self, folder: Location) -> str:
        """This location's path inside ``folder`` (``shards/x.parquet``)."""
        return _inside(self.path, folder.path)

    def _info(self) -> pafs.FileInfo:
        with _named_errors(self.uri, "inspect"):
            return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def size(self) -> int:
        info = self._info()
        if info.type != pafs.FileType.File:
            raise StorageError(f"{self.uri} is not a file")
        return int(info.size)

    def files(self, suffix: str = "", recursive: bool = False) -> list[Location]:
        """Files under this folder whose names end with ``suffix``, sorted by path; [] when the folder is absent."""
        with _named_errors(self.uri, "list"):
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True, recursive=recursive))
        found = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))
        return [self.join(_inside(p, self.path)) for p in found]

    def read_bytes(self) -> bytes:
        with _named_errors(self.uri, "read"), self.fs.open_input_file(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        self.make_parent()
        with _named_errors(self.uri, "write"), self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def write_bytes_atomic(self, data: bytes, scratch: Location | None = None) -> None:
        """Write so that a reader sees no file or the whole file, never a part: an object store publishes an
        object only when its upload completes; elsewhere the bytes go to a hidden name in ``scratch`` (a folder
        on the same filesystem; default: beside the file), then move."""
        if scheme_of(self.uri) in OBJECT_STORE_SCHEMES:
            self.write_bytes(data)
            return
        name = f".{self.name}.partial-{os.getpid()}-{os.urandom(4).hex()}"
        partial = scratch.join(name) if scratch is not None else self.sibling(name)
        partial.write_bytes(data)
        self.make_parent()
        with _named_errors(self.uri, "write"):
            self.fs.move(partial.path, self.path)

    @contextmanager
    def open_input(self) -> Iterator[IO[bytes]]:
        """A seekable binary file (parquet readers, soundfile)."""
        with _named_errors(self.uri, "read"), self.fs.open_input_file(self.path) as f:
            yield f

    @contextmanager
    def open_output(self) -> Iterator[IO[bytes]]:
        self.make_parent()
        with _named_errors(self.uri, "write"), self.fs.open_output_stream(self.path) as f:
            yield f

    def make_parent(self) -> None:
        if self.is_local:
            os.makedirs(posixpath.dirname(self.path) or ".", exist_ok=True)

    def make_dir(self) -> None:
        with _named_errors(self.uri, "create"):
            self.fs.create_dir(self.path, recursive=True)

    def delete_dir(self) -> None:
        """Remove the folder and everything under it; nothing happens when it is absent."""
        if self.exists():
            with _named_errors(self.uri, "delete"):
                self.fs.delete_dir(self.path)

    def delete_file(self) -> None:
        """Remove this file; nothing happens when it is absent."""
        if self.is_file():
            with _named_errors(self.uri, "delete"):
                self.fs.delete_file(self.path)

    def upload_folder(self, local: str | Path) -> None:
        """Copy the files of a local folder into this folder (created, or added to)."""
        with _named_errors(self.uri, "upload to"):
            pafs.copy_files(str(local), self.path, pafs.LocalFileSystem(), self.fs)

    @contextmanager
    def local_folder(self) -> Iterator[Path]:
        """This folder on the local disk, read-only: itself when local, else a temporary download that is
        removed on exit (libraries that only read local folders, e.g. checkpoint loaders)."""
        with self._local_copy(pafs.FileType.Directory) as path:
            yield path

    @contextmanager
    def local_file(self) -> Iterator[Path]:
        """This file on the local disk, read-only: itself when local, else a temporary download under its own
        name that is removed on exit (libraries that only read local files, e.g. ``torch.load``)."""
        with self._local_copy(pafs.FileType.File) as path:
            yield path

    @contextmanager
    def _local_copy(self, kind: pafs.FileType) -> Iterator[Path]:
        if self.is_local:
            yield Path(self.path)
            return
        with tempfile.TemporaryDirectory(prefix="flowtts-download-") as tmp:
            is_folder = kind == pafs.FileType.Directory
            target = Path(tmp) / (self.name or "download")
            with _named_errors(self.uri, "download"):
                if self._info().type != kind:
                    raise StorageError(f"cannot download {self.uri}: no {'folder' if is_folder else 'file'} there")
                if is_folder:
                    target.mkdir()  # copy_files makes the folders below, not this one
                pafs.copy_files(self.path, str(target), self.fs, pafs.LocalFileSystem())
            yield target

    def copy_file_to(self, target: Location) -> None:
        if type(self.fs) is type(target.fs) and self.fs.equals(target.fs):
            target.make_parent()
            with _named_errors(self.uri, f"copy to {target.uri}"):
                self.fs.copy_file(self.path, target.path)
        else:
            target.write_bytes(self.read_bytes())


def normalize(location: str | Path) -> str:
    """The canonical spelling of a path or URI, touching no filesystem: a local path (or ``file://`` URI) made
    absolute, a remote URI without a trailing ``/``; an unknown scheme raises ``StorageError``."""
    text = str(location)
    scheme = scheme_of(text)
    if scheme in ("", "file"):
        return os.path.abspath(os.path.expanduser(text[len("file://") :] if scheme else text))
    if scheme not in REMOTE_SCHEMES:
        raise StorageError(f"{text}: unsupported scheme {scheme!r}; use a local path or one of {REMOTE_SCHEMES}")
    return text.rstrip("/")


def resolve(location: str | Path | Location) -> Location:
    """A local path, ``file://`` URI or remote URI -> ``Location``; unknown schemes raise ``StorageError``."""
    if isinstance(location, Location):
        return location
    uri = normalize(location)
    if not is_remote(uri):
        return Location(uri=uri, path=uri, fs=pafs.LocalFileSystem())
    with _named_errors(uri, "open the filesystem of"):
        fs, path = pafs.FileSystem.from_uri(uri)
    return Location(uri=uri, path=path.rstrip("/") or path, fs=fs)


def validate_uri(value: object) -> str:
    """A path or URI as pydantic validates a ``StorageUri`` field: ``normalize``d, or a ``ValueError``."""
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"expected a path or a URI, got {value!r}")
    try:
        return normalize(os.fspath(value))
    except StorageError as exc:
        raise ValueError(str(exc)) from exc


StorageUri = Annotated[str, BeforeValidator(validate_uri)]
"""A pydantic field type: a local path (made absolute, as workers' working directories differ) or a URI this
module reads (unknown schemes are a validation error); it holds ``Location.uri``, a string."""


def local_path(text: str) -> Path:
    """An ``argparse`` type for options that take a file or folder on this machine only (a path or a ``file://``
    URI, made absolute). A remote URI is refused naming it: ``Path("s3://b/k")`` would quietly be a local
    folder named ``s3:``."""
    if is_remote(text):
        raise argparse.ArgumentTypeError(f"{text} is a URI; this option takes a local path (a file or folder here)")
    return Path(normalize(text))


@contextmanager
def _named_errors(uri: str, action: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as err:
        raise StorageError(f"cannot {action} {uri}: not found") from err
    except (OSError, ValueError) as err:
        raise StorageError(f"cannot {action} {uri}: {_short(err)}") from err


def _short(err: BaseException) -> str:
    """pyarrow's S3 messages carry a long 'Detail:' tail; the first line says what went wrong."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _inside(path: str, folder: str) -> str:
    """``path`` relative to ``folder``, both as the filesystem names them; pure string work (posixpath.relpath
    would ask for the working directory, which a Ray job's driver may no longer have)."""
    prefix = folder.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise StorageError(f"{path} is not inside {folder}")
    return path[len(prefix) :]
