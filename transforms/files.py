"""Beam's FileSystems as runtime's Files: model handles on any filesystem Beam reads (gs:// included)."""

from __future__ import annotations

from typing import BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from runtime.files import FileInfo

__all__ = ["BeamFiles"]


class BeamFiles:
    """runtime.Files through apache_beam.io.filesystems.FileSystems, every file read uncompressed (as stored).

    Beam's GCS filesystem honours the Google client libraries' settings (an emulator's endpoint too), which
    TensorFlow's own gs:// support does not. Stateless, so cheap to make wherever a handle is read.
    """

    def exists(self, path: str) -> bool:
        return FileSystems.exists(path)

    def read(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read()

    def list(self, prefix: str) -> list[FileInfo]:
        return [FileInfo(metadata.path, metadata.size_in_bytes, metadata.last_updated_in_seconds)
                for metadata in FileSystems.match([prefix + "**"])[0].metadata_list]

    def open(self, path: str) -> BinaryIO:
        # Uncompressed: an asset named *.gz is read as is, not inflated.
        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
