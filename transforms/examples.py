"""tf.train.Example records without importing TensorFlow, through tfx_bsl's C++ Example coders.

A Beam worker that only reads and writes records has no use for TensorFlow's 0.4 GiB of libraries: the model
runs in one shared process per machine (`--large_model`), or the worker loads TensorFlow for it anyway. Building
or parsing an Example with `tensorflow.core.example.example_pb2` would import all of TensorFlow into every worker,
so the readers and writers go through tfx_bsl (a pipeline dependency already) instead.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["serialize_example", "parse_example", "value_kind"]

_ENCODER = None


def serialize_example(features: dict[str, list[bytes] | list[int] | np.ndarray]) -> bytes:
    """Serialises one tf.train.Example.

    Each value becomes a bytes_list (a list of bytes), an int64_list (a list of ints) or a float_list (a
    float32 numpy array, flattened); features keep the dict's order.
    """
    global _ENCODER
    if _ENCODER is None:
        from tfx_bsl.coders import example_coder

        _ENCODER = example_coder.RecordBatchToExamplesEncoder()
    columns = [_one_row_column(value) for value in features.values()]
    return _ENCODER.encode(pa.RecordBatch.from_arrays(columns, list(features)))[0]


def _one_row_column(value) -> pa.Array:
    """A one-row large_list column holding `value`, the layout tfx_bsl encodes as one feature."""
    if isinstance(value, np.ndarray):
        flat = pa.array(value.reshape(-1).astype(np.float32, copy=False))
    elif value and isinstance(value[0], bytes):
        flat = pa.array(value, pa.large_binary())
    else:
        flat = pa.array(value, pa.int64())
    return pa.LargeListArray.from_arrays(pa.array([0, len(flat)], pa.int64()), flat)


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
