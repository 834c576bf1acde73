"""The few file operations runtime needs, behind a protocol, so staging and checks work on any filesystem."""

from __future__ import annotations

import os
from typing import BinaryIO, NamedTuple, Protocol

__all__ = ["FileInfo", "Files", "LocalFiles", "LOCAL"]


class FileInfo(NamedTuple):
    """One listed file.

    Attributes:
      path: the file's full path, starting with the listed prefix.
      size: its length in bytes.
      mtime: its last modification, in seconds since the epoch.
    """

    path: str
    size: int
    mtime: float


class Files(Protocol):
    """Read access to one or more filesystems: what staging a model and checking its handles need.

    runtime knows no filesystem but the local disk (LocalFiles); a caller that reads gs:// and the like passes an
    implementation of its own (transforms.files.BeamFiles reads through Beam's FileSystems).
    """

    def exists(self, path: str) -> bool:
        """Whether a file or directory exists at `path`."""

    def read(self, path: str) -> bytes:
        """The whole file at `path`, as stored (never decompressed)."""

    def list(self, prefix: str) -> list[FileInfo]:
        """Every file whose path starts with `prefix` (a directory path ending in "/"), at any depth.

        Object stores may also list zero-byte directory placeholders, whose paths end in "/".
        """

    def open(self, path: str) -> BinaryIO:
        """The file at `path` opened for reading bytes, as stored (never decompressed)."""


class LocalFiles:
    """Files on the local disk (paths, or file:// URLs)."""

    def exists(self, path: str) -> bool:
        return os.path.exists(_local(path))

    def read(self, path: str) -> bytes:
        with open(_local(path), "rb") as f:
            return f.read()

    def list(self, prefix: str) -> list[FileInfo]:
        # Listed under the prefix as given (file:// included), as the paths of an object store are.
        if not prefix.endswith("/"):
            raise ValueError(f"List a directory: {prefix!r} does not end in '/'.")
        top = _local(prefix)
        listed = []
        for directory, _, names in os.walk(top, followlinks=True):
            for name in names:
                path = os.path.join(directory, name)
                stat = os.stat(path)
                listed.append(FileInfo(prefix + os.path.relpath(path, top).replace(os.sep, "/"), stat.st_size,
                                       stat.st_mtime))
        return listed

    def open(self, path: str) -> BinaryIO:
        return open(_local(path), "rb")


LOCAL = LocalFiles()


def _local(path: str) -> str:
    """The local path of a path or file:// URL."""
    return path[len("file://"):] if path.startswith("file://") else path
