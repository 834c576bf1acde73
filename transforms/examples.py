"""tf.train.Example records without importing TensorFlow: written as protobuf wire format, read with tfx_bsl.

A Beam worker that only reads and writes records has no use for TensorFlow's libraries (their memory: see
BENCHMARKS.md): the model runs in one shared process per machine (`--large_model`), or the worker loads TensorFlow
for it anyway. Building
or parsing an Example with `tensorflow.core.example.example_pb2` would import all of TensorFlow into every worker,
so the writer encodes the few message types of an Example itself and the reader goes through tfx_bsl's C++ coder
(a pipeline dependency already).
"""

from __future__ import annotations

import struct

import numpy as np

__all__ = ["serialize_example", "parse_example", "value_kind"]

# Field tags (field number << 3 | wire type 2, length-delimited) of the messages in tensorflow/core/example:
# Example.features, Features.feature (a map: entries of key and value), Feature.bytes_list / float_list /
# int64_list, and the `value` field of BytesList, FloatList and Int64List (packed for floats and ints).
_TAG_1, _TAG_2, _TAG_3 = b"\x0a", b"\x12", b"\x1a"


def serialize_example(features: dict[str, list[bytes] | list[int] | np.ndarray]) -> bytes:
    """Serialises one tf.train.Example, the same bytes for the same features in every run.

    Each value becomes a bytes_list (a list of bytes), an int64_list (a list of ints) or a float_list (a
    float32 numpy array, flattened). Features are written in the byte order of their UTF-8 names, whatever
    the dict's order: the bytes equal C++ protobuf's deterministic serialisation of the Example, which sorts
    map entries so. (Python's upb runtime differs only where one name begins another: it writes
    "sequence_length" before "sequence". Every order parses the same.)
    """
    # Written here rather than through tfx_bsl's RecordBatchToExamplesEncoder: that encoder fills the C++
    # Example's `feature` map and serialises it without deterministic ordering, and a protobuf map iterates in
    # the order of a hash table seeded afresh for each map, so the same features came out in a different order
    # from one Example to the next (and one run to the next): equal records, different bytes. No call of
    # tfx_bsl takes a deterministic flag, and TensorFlow's own proto classes import TensorFlow.
    entries = []
    for name in sorted(features, key=lambda name: name.encode("utf-8")):
        key = name.encode("utf-8")
        entry = _TAG_1 + _varint(len(key)) + key + _length_delimited(_TAG_2, _feature(features[name]))
        entries.append(_length_delimited(_TAG_1, entry))
    return _length_delimited(_TAG_1, b"".join(entries))


def _feature(value) -> bytes:
    """The wire format of one Feature holding `value` (see serialize_example for the kinds)."""
    if isinstance(value, np.ndarray):
        floats = np.asarray(value, dtype="<f4").reshape(-1).tobytes()
        return _length_delimited(_TAG_2, _length_delimited(_TAG_1, floats) if floats else b"")
    if len(value) and isinstance(value[0], bytes):
        return _length_delimited(_TAG_1, b"".join(_length_delimited(_TAG_1, item) for item in value))
    # int64 values as varints of their 64-bit two's complement: negative ones take 10 bytes, as in protobuf.
    ints = b"".join(_varint(int(item) & 0xFFFFFFFFFFFFFFFF) for item in value)
    return _length_delimited(_TAG_3, _length_delimited(_TAG_1, ints) if ints else b"")


def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    if value < 0x80:
        return struct.pack("B", value)
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def parse_example(serialized: bytes) -> dict[str, np.ndarray | None]:
    """Parses one serialised tf.train.Example into {name: values}.

    Values are numpy arrays: dtype object (bytes) for a bytes_list, int64 for an int64_list, float32 for a
    float_list; None for a feature that holds no list at all. Raises ValueError for bytes that are not an
    Example.
    """
    from tfx_bsl.coders import example_coder

    try:
        return example_coder.ExampleToNumpyDict(serialized)
    except RuntimeError as err:
        raise ValueError(f"not a tf.train.Example: {err}") from err


def value_kind(values: np.ndarray | None) -> str | None:
    """The Example list a parsed value came from: "bytes_list", "int64_list", "float_list" or None."""
    if values is None:
        return None
    if values.dtype == np.int64:
        return "int64_list"
    if values.dtype == np.float32:
        return "float_list"
    return "bytes_list"
