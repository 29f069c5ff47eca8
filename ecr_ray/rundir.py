"""A run directory: a local path or a pyarrow filesystem URI (s3://, gs://, ...)."""
from __future__ import annotations

import json
import os

import pyarrow.fs as pafs


class RunDir:
    def __init__(self, location: str | os.PathLike):
        location = str(location)
        if "://" in location:
            self.fs, self.root = pafs.FileSystem.from_uri(location)
            self.uri = location.rstrip("/")
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(location)
            self.uri = self.root
        self.fs.create_dir(self.root, recursive=True)

    def path(self, relative: str) -> str:
        """Filesystem path of an artifact (for self.fs)."""
        return f"{self.root}/{relative}"

    def location(self, relative: str) -> str:
        """URI or absolute path of an artifact, for Ray Data and for users."""
        return f"{self.uri}/{relative}"

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def delete(self, relative: str) -> None:
        info = self.fs.get_file_info(self.path(relative))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(info.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(info.path)

    def upload(self, local_folder: str, relative: str) -> None:
        """Copy a local folder to an artifact folder (replacing it)."""
        self.delete(relative)
        self.fs.create_dir(self.path(relative), recursive=True)
        pafs.copy_files(local_folder, self.path(relative), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    def local_copy(self, relative: str) -> str:
        """A local path to an artifact: the path itself on a local run directory, else a download."""
        return fetch(self.location(relative))

    def read_table(self, relative: str, columns: list[str] | None = None):
        """A parquet artifact (a file or a folder of parts) as one pyarrow table."""
        import pyarrow.dataset as pads

        return pads.dataset(self.path(relative), filesystem=self.fs, format="parquet").to_table(columns=columns)

    def _make_parent(self, relative: str) -> None:
        self.fs.create_dir(self.path(relative).rsplit("/", 1)[0], recursive=True)

    def write_bytes(self, relative: str, data: bytes) -> None:
        self._make_parent(relative)
        with self.fs.open_output_stream(self.path(relative)) as f:
            f.write(data)

    def write_text(self, relative: str, text: str) -> None:
        self.write_bytes(relative, text.encode())

    def write_parquet(self, relative: str, table) -> None:
        import pyarrow.parquet as pq

        self._make_parent(relative)
        pq.write_table(table, self.path(relative), filesystem=self.fs)

    def read_text(self, relative: str) -> str:
        with self.fs.open_input_stream(self.path(relative)) as f:
            return f.read().decode()

    def write_json(self, relative: str, obj) -> None:
        self.write_text(relative, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def read_json(self, relative: str):
        return json.loads(self.read_text(relative))

    def write_jsonl(self, relative: str, rows) -> None:
        self.write_text(relative, "".join(json.dumps(r) + "\n" for r in rows))


def fetch(location: str) -> str:
    """A local path to the artifact at `location`: a path as it is, a URI downloaded to a temporary folder.
    Actors get the location, not the driver's copy, and fetch it on whatever node they run."""
    if "://" not in location:
        return location
    import atexit
    import shutil
    import tempfile

    fs, path = pafs.FileSystem.from_uri(location)
    local = tempfile.mkdtemp(prefix="ecr-ray-")
    atexit.register(shutil.rmtree, local, ignore_errors=True)  # a process that exits normally leaves no copy behind
    pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local
