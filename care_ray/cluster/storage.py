"""Local paths and object-store URIs (s3://, gs://, file://) behind one small interface, on
pyarrow filesystems. An S3 endpoint and credentials come the way users give them to any AWS
client: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, profiles.

Object stores have no rename, so writers here never rely on one: `write_parquet` and
`write_text` put whole objects (a PUT appears complete or not at all; on a local disk the file is
written under a temporary name and moved, which is atomic there)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BeforeValidator

# a local path or an object-store URI, kept as text: Path("s3://b/x") would turn it into "s3:/b/x"
PathOrURI = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, os.PathLike) else v)]


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


@dataclass(frozen=True)
class Location:
    """A folder or file on a filesystem: `fs` and its internal `path`; `uri` is what the user gave."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> Location:
        sep = "" if self.uri.endswith("/") else "/"
        path = "/".join([self.path.rstrip("/"), *parts])
        return Location(self.fs, path, self.uri + sep + "/".join(parts))

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def names(self) -> list[str]:
        """Names of the files directly in this folder (none if it does not exist)."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)

    def read_text(self) -> str | None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read().decode("utf-8")
        except FileNotFoundError:
            return None

    def write_text(self, text: str) -> None:
        self._put(lambda target: _write_bytes(self.fs, target, text.encode("utf-8")))

    def write_parquet(self, table: pa.Table) -> None:
        self._put(lambda target: pq.write_table(table, target, filesystem=self.fs))

    def write_parquet_stream(self, reader: pa.RecordBatchReader) -> int:
        """Write the batches as they come (a query's result never held whole); returns rows."""
        rows = 0

        def write(target: str) -> None:
            nonlocal rows
            with pq.ParquetWriter(target, reader.schema, filesystem=self.fs) as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows

        self._put(write)
        return rows

    def _put(self, write) -> None:
        self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        if not self.local:
            write(self.path)  # one PUT: the object appears whole or not at all
            return
        tmp = f"{self.path.rsplit('/', 1)[0]}/.tmp-{uuid.uuid4().hex}"
        write(tmp)
        self.fs.move(tmp, self.path)

    def delete(self) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass

    def delete_dir(self) -> None:
        if self.is_dir():
            self.fs.delete_dir(self.path)


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def location(path: str | os.PathLike) -> Location:
    """A local path (made absolute) or a URI, as a Location."""
    text = str(path)
    if is_uri(text):
        fs, inner = pafs.FileSystem.from_uri(text)
        if isinstance(fs, pafs.LocalFileSystem):  # file:///x
            return Location(fs, inner, inner)
        return Location(fs, inner.rstrip("/"), text.rstrip("/"))
    absolute = str(Path(text).absolute())
    return Location(pafs.LocalFileSystem(), absolute, absolute)


_FETCHED: dict[str, str] = {}


def fetch_folder(path: str | os.PathLike) -> str:
    """A local folder holding the files of `path`: the path itself when it is local, else a copy
    of the object-store folder made once per process (engines need files on their own disk; a
    fresh copy per process, so an adapter replaced at the same URI is never served stale)."""
    import tempfile

    source = location(path)
    if source.local:
        return source.path
    if source.uri not in _FETCHED:
        if not source.is_dir():
            raise FileNotFoundError(f"{source.uri}: no such folder in the object store")
        target = tempfile.mkdtemp(prefix="care-ray-fetched-")
        pafs.copy_files(
            source.path,
            target,
            source_filesystem=source.fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )
        _FETCHED[source.uri] = target
    return _FETCHED[source.uri]


def publish_folder(local_dir: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copy a local folder's files to `destination` (a local path or an object-store URI)."""
    target = location(destination)
    if target.local and Path(target.path).resolve() == Path(local_dir).resolve():
        return
    target.mkdir()
    pafs.copy_files(
        str(Path(local_dir).resolve()),
        target.path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=target.fs,
    )
