"""Tests for transforms/framing.py: TFRecord framing and lines of compressed files, whole, corrupt and truncated."""

import bz2
import gzip
import io
import lzma
import struct
import zlib

import pytest
import zstandard
from apache_beam.io.tfrecordio import _TFRecordUtil

from transforms.framing import Damage, is_compressed, masked_crc32c, open_file, read_lines, read_tfrecords


def _framed(*records):
    """The TFRecord framing of records, written by Beam's writer (independent of the module under test)."""
    handle = io.BytesIO()
    for record in records:
        _TFRecordUtil.write_record(handle, record)
    return handle.getvalue()


def _read_tfrecords(tmp_path, data, name="corpus.tfrecord"):
    path = tmp_path / name
    path.write_bytes(data)
    compressed = is_compressed(str(path))
    with open_file(str(path)) as handle:
        return list(read_tfrecords(handle, str(path), None if compressed else len(data)))


def _read_lines(tmp_path, data, name):
    path = tmp_path / name
    path.write_bytes(data)
    with open_file(str(path)) as handle:
        return list(read_lines(handle, str(path)))


_COMPRESSORS = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "deflate": zlib.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


def test_masked_crc32c_matches_beam():
    for data in (b"", b"a", b"\x00" * 8, bytes(range(256)) * 3):
        assert masked_crc32c(data) == _TFRecordUtil._masked_crc32c(data)


def test_is_compressed():
    assert is_compressed("gs://b/a.jsonl.GZ") and is_compressed("a.tfrecord.zst") and is_compressed("x.bz2")
    assert not is_compressed("a.jsonl") and not is_compressed("a.gz.jsonl")


def test_tfrecords_whole_file(tmp_path):
    records = [b"", b"one", b"x" * 200_000]
    assert _read_tfrecords(tmp_path, _framed(*records)) == records
    assert _read_tfrecords(tmp_path, b"") == []


def test_tfrecords_bad_data_crc_skips_the_record(tmp_path):
    data = bytearray(_framed(b"first", b"second", b"third"))
    second = len(b"first") + 16
    data[second + 12] ^= 0x01  # The first byte of "second".
    items = _read_tfrecords(tmp_path, bytes(data))
    assert items[0] == b"first" and items[2] == b"third"
    damage = items[1]
    assert isinstance(damage, Damage) and damage.reason == "corrupt_record"
    assert damage.data == b"recond"
    assert f"byte offset {second} " in damage.detail and "corpus.tfrecord" in damage.detail


def test_tfrecords_bad_length_crc_stops_reading(tmp_path):
    data = bytearray(_framed(b"first", b"second", b"third"))
    second = len(b"first") + 16
    data[second + 8] ^= 0x01  # The length's CRC.
    items = _read_tfrecords(tmp_path, bytes(data))
    assert items[0] == b"first" and len(items) == 2
    damage = items[1]
    assert damage.reason == "corrupt_record"
    assert f"not read from byte offset {second} on ({len(data) - second} bytes)" in damage.detail
    assert "after 1 records" in damage.detail


@pytest.mark.parametrize("cut", [1, 11, 12, 15, 20])
def test_tfrecords_truncated_tail(tmp_path, cut):
    whole = _framed(b"first", b"second")
    second = len(b"first") + 16
    items = _read_tfrecords(tmp_path, whole[: second + cut])
    assert items[0] == b"first" and len(items) == 2
    damage = items[1]
    assert damage.reason == "truncated_file"
    framed = f"{len(b'second') + 16} bytes" if cut >= 12 else "12 header bytes"
    assert f"byte offset {second} ({cut} of its {framed} are there)" in damage.detail


def test_tfrecords_length_past_the_end_reads_nothing_more(tmp_path):
    length = struct.pack("<Q", 1 << 60)
    data = _framed(b"first") + length + struct.pack("<I", masked_crc32c(length)) + b"tail"
    items = _read_tfrecords(tmp_path, data)
    assert items[0] == b"first"
    assert items[1].reason == "truncated_file" and "(16 of its" in items[1].detail


def test_tfrecords_compressed_whole_and_truncated(tmp_path):
    records = [b"r%d" % i * 50 for i in range(100)]
    compressed = gzip.compress(_framed(*records))
    assert _read_tfrecords(tmp_path, compressed, "c.tfrecord.gz") == records
    items = _read_tfrecords(tmp_path, compressed[: len(compressed) // 2], "c.tfrecord.gz")
    *good, damage = items
    assert good == records[: len(good)] and good
    assert damage.reason == "truncated_file" and "decompressed byte offset" in damage.detail


def test_lines_like_beams_text_source(tmp_path):
    long_line = b"y" * 300_000
    data = b"a\r\nb\n\n\r\n" + long_line + b"\nlast"
    assert _read_lines(tmp_path, data, "plain.txt") == [b"a", b"b", b"", b"", long_line, b"last"]
    assert _read_lines(tmp_path, data + b"\n", "plain.txt")[-1] == b"last"
    assert _read_lines(tmp_path, b"", "empty.txt") == []


@pytest.mark.parametrize("suffix", sorted(_COMPRESSORS))
def test_lines_every_compression_whole_and_truncated(tmp_path, suffix):
    # About 2 MB without runs: several bzip2 blocks (900 kB each), so half of the file holds complete ones.
    data = b"".join(b"line %d %08x\n" % (i, i * 2654435761 % 2**32) for i in range(100_000))
    compressed = _COMPRESSORS[suffix](data)
    assert _read_lines(tmp_path, compressed, f"c.txt.{suffix}") == data.splitlines()
    *lines, damage = _read_lines(tmp_path, compressed[: len(compressed) // 2], f"c.txt.{suffix}")
    assert isinstance(damage, Damage) and damage.reason == "truncated_file", damage
    assert lines and lines == data.splitlines()[: len(lines)]
    assert f"after {len(lines)} complete lines" in damage.detail and f"c.txt.{suffix}" in damage.detail
    # The line it broke off in is the damage's data, not a line.
    assert data.startswith(b"\n".join(lines) + b"\n" + damage.data)


def test_lines_empty_and_concatenated_gzip(tmp_path):
    assert _read_lines(tmp_path, b"", "empty.txt.gz") == []
    assert _read_lines(tmp_path, gzip.compress(b"a\nb") + gzip.compress(b"c\n"), "two.txt.gz") == [b"a", b"bc"]


def test_lines_corrupt_gzip(tmp_path):
    first = gzip.compress(b"one\ntwo\n")
    *lines, damage = _read_lines(tmp_path, first + b"garbage after the first member", "bad.txt.gz")
    assert lines == [b"one", b"two"]
    assert damage.reason == "corrupt_file" and "after 2 complete lines" in damage.detail
    bad_crc = bytearray(gzip.compress(b"one\ntwo\n"))
    bad_crc[-8] ^= 0x01  # The trailer's CRC-32: known only once the member's data is out.
    *lines, damage = _read_lines(tmp_path, bytes(bad_crc), "crc.txt.gz")
    assert damage.reason == "corrupt_file" and "incorrect data check" in damage.detail
    *lines, damage = _read_lines(tmp_path, b"not gzip at all", "bad.txt.gz")
    assert lines == [] and damage.reason == "corrupt_file"
