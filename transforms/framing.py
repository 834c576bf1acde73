"""Streams TFRecord records and lines out of (possibly compressed) files, reporting damage instead of raising."""

import bz2
import io
import lzma
import struct
import typing
import zlib

import google_crc32c
import zstandard
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

__all__ = [
    "Damage",
    "StreamError",
    "is_compressed",
    "masked_crc32c",
    "open_file",
    "read_lines",
    "read_tfrecords",
]

_CHUNK_BYTES = 1 << 16
# Compressed bytes go to the decompressor in small pieces: a piece with corrupt data raises without its
# output, so the lines decompressed before the damage are lost only back to the start of the piece.
_COMPRESSED_PIECE_BYTES = 1 << 13
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8

# The decompressors Beam's CompressedFile uses for CompressionTypes.AUTO, so a file reads here as it would there.
_DECOMPRESSORS = {
    CompressionTypes.GZIP: lambda: zlib.decompressobj(zlib.MAX_WBITS | 16),
    CompressionTypes.DEFLATE: zlib.decompressobj,
    CompressionTypes.BZIP2: bz2.BZ2Decompressor,
    CompressionTypes.LZMA: lzma.LZMADecompressor,
    # Beam's bound on the window, so a hostile frame header cannot ask for more memory than Beam would give.
    CompressionTypes.ZSTD: lambda: zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj(),
}
# What the decompressors raise on bytes that are not a valid stream (bz2 raises OSError).
_DECOMPRESS_ERRORS = (zlib.error, OSError, EOFError, lzma.LZMAError, zstandard.ZstdError)


class Damage(typing.NamedTuple):
    """A part of a file that could not be read, in place of the records it held.

    Attributes:
        reason: "corrupt_record" (a TFRecord whose CRC does not match), "truncated_file" (the file ends inside
            a record, or its compressed stream ends before its end-of-stream marker) or "corrupt_file" (the
            compressed stream cannot be decompressed).
        detail: What was wrong, naming the file and how far it was read.
        data: The bytes of the damaged record or line, as far as they were read (possibly empty).
    """

    reason: str
    detail: str
    data: bytes


class StreamError(Exception):
    """A compressed stream that is truncated or corrupt; `reason` is as in `Damage`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C of the TFRecord framing (as TensorFlow's and Beam's `_masked_crc32c`)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def is_compressed(path: str) -> bool:
    """Whether Beam's CompressionTypes.AUTO decompresses the file, judging by its suffix."""
    return CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED


def open_file(path: str) -> typing.BinaryIO:
    """Opens a file through Beam's FileSystems, decompressing it by its suffix as CompressionTypes.AUTO does.

    Unlike Beam's CompressedFile, which ends silently where a compressed stream breaks off, the returned
    stream raises `StreamError` when the compressed stream is truncated or corrupt. Concatenated streams
    (several gzip members, say) read as one, as they do in Beam.

    Args:
        path: A local or `gs://` path.

    Returns:
        A readable binary stream; close it when done.
    """
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    compression = CompressionTypes.detect_compression_type(path)
    if compression == CompressionTypes.UNCOMPRESSED:
        return raw
    return _Decompressed(raw, _DECOMPRESSORS[compression])


class _Decompressed(io.RawIOBase):
    """A decompressing reader that raises StreamError where the compressed stream breaks off or is corrupt."""

    def __init__(self, raw, new_decompressor):
        super().__init__()
        self._raw = raw
        self._new_decompressor = new_decompressor
        self._decompressor = None
        self._pending = memoryview(b"")
        self._done = False

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self._pending:
            if self._done:
                return 0
            self._fill()
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def _fill(self):
        decompressor = self._decompressor
        at_stream_end = decompressor is None or decompressor.eof
        data = decompressor.unused_data if decompressor is not None and decompressor.eof else b""
        if not data:
            data = self._raw.read(_COMPRESSED_PIECE_BYTES)
        if not data:
            if not at_stream_end:
                # Python's gzip raises EOFError here; Beam's CompressedFile ends as if the file were whole.
                raise StreamError("truncated_file", "the compressed stream ends before its end-of-stream marker")
            self._done = True
            return
        if at_stream_end:
            # Bytes after a stream's end start another stream (concatenated gzip members, bzip2 streams).
            decompressor = self._decompressor = self._new_decompressor()
        try:
            self._pending = memoryview(decompressor.decompress(data))
        except _DECOMPRESS_ERRORS as err:
            raise StreamError("corrupt_file", f"corrupt compressed data ({type(err).__name__}: {err})") from err

    def close(self):
        if not self.closed:
            self._raw.close()
        super().close()


def read_tfrecords(handle: typing.BinaryIO, name: str, size: int | None = None) -> typing.Iterator[bytes | Damage]:
    """Reads TFRecord records one at a time, yielding a `Damage` for each that cannot be read.

    The framing of each record is its length (uint64, little-endian), the masked CRC-32C of those 8 bytes,
    the data, and the masked CRC-32C of the data. A record whose data fails its CRC is skipped (its length
    is good, so the next record is found); a length that fails its CRC leaves the rest of the file without
    a frame, so reading stops there; a file that ends inside a record ends with a "truncated_file".

    Args:
        handle: The stream, as `open_file` returns it, at the start of the file.
        name: The file's path, for the details.
        size: The stream's length in bytes when known (an uncompressed file): a length past the end of the
            file is then known to be a truncation without reading to the end.

    Yields:
        The data of each good record, and a `Damage` for each bad one (the last item when it ends reading).
    """
    where = "decompressed byte offset" if is_compressed(name) else "byte offset"
    offset = 0
    records = 0
    try:
        while True:
            header = _read_up_to(handle, _HEADER.size)
            if not header:
                return
            if len(header) < _HEADER.size:
                yield _truncated(name, where, offset, header, _HEADER.size, records, part="header ")
                return
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                rest = f" ({size - offset} bytes)" if size is not None else ""
                yield Damage(
                    "corrupt_record",
                    f"the length of the record at {where} {offset} of {name} fails its CRC, so the rest of the "
                    f"file cannot be framed: not read from {where} {offset} on{rest}, after {records} records",
                    header,
                )
                return
            framed = _HEADER.size + length + _FOOTER.size
            if size is not None and offset + framed > size:
                # Reading a length the file cannot hold would only find the end, after reading all of it.
                yield _truncated(name, where, offset, header, framed, records, present=size - offset)
                return
            body = _read_up_to(handle, length + _FOOTER.size)
            if len(body) < length + _FOOTER.size:
                yield _truncated(name, where, offset, header + body, framed, records)
                return
            data = body[:length]
            (data_crc,) = _FOOTER.unpack(body[length:])
            if masked_crc32c(data) != data_crc:
                yield Damage(
                    "corrupt_record",
                    f"the data of the record at {where} {offset} of {name} ({length} bytes) fails its CRC: skipped",
                    data,
                )
            else:
                records += 1
                yield data
            offset += framed
    except StreamError as err:
        yield Damage(
            err.reason,
            f"{name}: {err.detail}, in the record at {where} {offset} after {records} records; the rest of the "
            "file was not read",
            b"",
        )


def read_lines(handle: typing.BinaryIO, name: str) -> typing.Iterator[bytes | Damage]:
    """Reads lines as Beam's text source does ("\\n" or "\\r\\n" ends a line), ending with a `Damage` if broken.

    Args:
        handle: The stream, as `open_file` returns it, at the start of the file.
        name: The file's path, for the details.

    Yields:
        Each line without its line ending (a last line without one too), then, if the stream breaks off or
        is corrupt, a `Damage` whose data is the incomplete line it broke off in.
    """
    buffer = bytearray()
    lines = 0
    consumed = 0
    try:
        while chunk := handle.read(_CHUNK_BYTES):
            consumed += len(chunk)
            # Search only the new bytes: a long line spread over many chunks is scanned once.
            search_from = len(buffer)
            buffer += chunk
            start = 0
            while (end := buffer.find(b"\n", search_from)) != -1:
                line_end = end - 1 if end > start and buffer[end - 1] == 0x0D else end
                lines += 1
                yield bytes(buffer[start:line_end])
                start = search_from = end + 1
            del buffer[:start]
    except StreamError as err:
        yield Damage(
            err.reason,
            f"{name}: {err.detail} after {lines} complete lines ({consumed} bytes decompressed); the rest of "
            "the file was not read",
            bytes(buffer),
        )
        return
    if buffer:
        yield bytes(buffer)


def _read_up_to(handle, size: int) -> bytes:
    """Reads `size` bytes, fewer only at the end of the stream, in chunks so a huge size allocates nothing."""
    if size <= _CHUNK_BYTES:
        data = handle.read(size)
        while data and len(data) < size:
            more = handle.read(size - len(data))
            if not more:
                break
            data += more
        return data
    chunks = []
    left = size
    while left:
        chunk = handle.read(min(left, _CHUNK_BYTES))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _truncated(
    name: str,
    where: str,
    offset: int,
    data: bytes,
    framed: int,
    records: int,
    present: int | None = None,
    part: str = "",
) -> Damage:
    """The damage of a file that ends inside the record at `offset`, of which `present` bytes are there."""
    present = len(data) if present is None else present
    return Damage(
        "truncated_file",
        f"{name} ends inside the record at {where} {offset} ({present} of its {framed} {part}bytes are there), "
        f"after {records} records",
        data,
    )
