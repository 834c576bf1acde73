"""tf.train.Example records without TensorFlow (transforms.examples): what the readers and writers build and parse
must be what TensorFlow reads, and a worker that only reads and writes must never import TensorFlow."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from transforms.examples import parse_example, serialize_example, value_kind
from transforms.records import feature_spec

REPO = Path(__file__).resolve().parents[2]


def test_serialized_examples_parse_with_tensorflow_and_the_feature_spec():
    import tensorflow as tf

    sequence = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    serialized = serialize_example({"id": ["doc ✓".encode()], "embedding": np.array([0.5, -1.25], np.float32),
                                    "model": [b"fp"], "content_hash": [b"abc"], "sequence_length": [3],
                                    "sequence": sequence})
    parsed = tf.io.parse_single_example(serialized, feature_spec(with_sequence=True))
    assert parsed["id"].numpy().decode() == "doc ✓"
    np.testing.assert_array_equal(parsed["embedding"].numpy(), [0.5, -1.25])
    assert parsed["model"].numpy() == b"fp" and parsed["content_hash"].numpy() == b"abc"
    assert parsed["sequence_length"].numpy() == 3
    np.testing.assert_array_equal(parsed["sequence"].numpy(), sequence.reshape(-1))


def test_parse_matches_tensorflow_proto_for_every_list_kind():
    import tensorflow as tf

    example = tf.train.Example()
    features = example.features.feature
    features["text"].bytes_list.value.extend([b"a", "é".encode()])
    features["count"].int64_list.value.append(-7)
    features["score"].float_list.value.extend([1.5, 2.0])
    features["empty_bytes"].bytes_list.SetInParent()
    features["no_list"].Clear()
    parsed = parse_example(example.SerializeToString())
    assert list(parsed["text"]) == [b"a", "é".encode()] and value_kind(parsed["text"]) == "bytes_list"
    assert list(parsed["count"]) == [-7] and value_kind(parsed["count"]) == "int64_list"
    assert list(parsed["score"]) == [1.5, 2.0] and value_kind(parsed["score"]) == "float_list"
    assert len(parsed["empty_bytes"]) == 0 and value_kind(parsed["empty_bytes"]) == "bytes_list"
    assert parsed["no_list"] is None and value_kind(parsed["no_list"]) is None


def _tensorflow_example(features: dict):
    """The tf.train.Example serialize_example describes, built with TensorFlow's own classes."""
    import tensorflow as tf

    example = tf.train.Example()
    for name, value in features.items():
        feature = example.features.feature[name]
        if isinstance(value, np.ndarray):
            feature.float_list.SetInParent()
            feature.float_list.value.extend(value.reshape(-1).tolist())
        elif value and isinstance(value[0], bytes):
            feature.bytes_list.SetInParent()
            feature.bytes_list.value.extend(value)
        else:
            feature.int64_list.SetInParent()
            feature.int64_list.value.extend(value)
    return example


def _feature_names_in_wire_order(serialized: bytes) -> list[str]:
    """The names of an Example's features in the order its bytes hold them."""
    def varint(data, i):
        value = shift = 0
        while True:
            byte = data[i]
            value, shift, i = value | (byte & 0x7F) << shift, shift + 7, i + 1
            if byte < 0x80:
                return value, i

    _, i = varint(serialized, 1)
    names = []
    while i < len(serialized):
        length, i = varint(serialized, i + 1)
        entry, i = serialized[i:i + length], i + length
        key_length, j = varint(entry, 1)
        names.append(entry[j:j + key_length].decode())
    return names


def test_same_features_give_the_same_bytes_in_sorted_name_order():
    """The Example's feature map used to be written in hash-table order, different from one Example to the next."""
    rng = np.random.default_rng(0)
    names = ["id", "embedding", "model", "content_hash"]
    for i in range(50):
        features = {"id": [f"doc-{i}".encode()], "embedding": rng.standard_normal(8).astype(np.float32),
                    "model": [b"fp"], "content_hash": [b"abc"]}
        serialized = serialize_example(features)
        # Python's protobuf orders these names as C++ protobuf does (no name begins another).
        assert serialized == _tensorflow_example(features).SerializeToString(deterministic=True)
        reordered = {name: features[name] for name in rng.permutation(names)}
        assert serialize_example(reordered) == serialized
        assert _feature_names_in_wire_order(serialized) == sorted(names)


def test_serialized_examples_equal_tensorflow_and_tfx_bsl_ones_for_every_list_kind():
    """Same features and values as the Examples tfx_bsl's encoder wrote before (and TensorFlow builds)."""
    import pyarrow as pa
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    features = {"sequence_length": [3], "sequence": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
                "id": ["doc ✓".encode()], "é": [-7, 0, 300, 2**63 - 1, -2**63], "bytes": [b"", b"x" * 300],
                "no_floats": np.zeros(0, np.float32), "no_ints": [], "big": np.linspace(-1, 1, 1000, dtype=np.float32)}
    serialized = serialize_example(features)
    assert _feature_names_in_wire_order(serialized) == sorted(features, key=lambda name: name.encode())
    expected = _tensorflow_example(features)
    assert tf.train.Example.FromString(serialized) == expected
    # tfx_bsl's encoder, what serialize_example used before: the same message in another order.
    columns = []
    for value in features.values():
        if isinstance(value, np.ndarray):
            flat = pa.array(value.reshape(-1))
        elif value and isinstance(value[0], bytes):
            flat = pa.array(value, pa.large_binary())
        else:
            flat = pa.array(value, pa.int64())
        columns.append(pa.LargeListArray.from_arrays(pa.array([0, len(flat)], pa.int64()), flat))
    batch = pa.RecordBatch.from_arrays(columns, list(features))
    assert tf.train.Example.FromString(example_coder.RecordBatchToExamplesEncoder().encode(batch)[0]) == expected
    parsed = parse_example(serialized)
    assert list(parsed["é"]) == [-7, 0, 300, 2**63 - 1, -2**63] and value_kind(parsed["no_ints"]) == "int64_list"
    assert value_kind(parsed["no_floats"]) == "float_list" and list(parsed["bytes"]) == [b"", b"x" * 300]
    np.testing.assert_array_equal(parsed["big"], features["big"])


def test_parse_refuses_bytes_that_are_no_example():
    with pytest.raises(ValueError, match="not a tf.train.Example"):
        parse_example(b"\xff\xff not a proto")


_WORKER_SCRIPT = """
import sys
import apache_beam as beam
import numpy as np
from runtime import Embedding
from transforms.incremental import ReadPrevious
from transforms.read import ReadCorpus
from transforms.write import WriteTFRecord

corpus, out = sys.argv[1], sys.argv[2]

def fake_embedding(record):
    vector = np.full(4, len(record.texts[0]), np.float32)
    return record.key, Embedding(vector, 3, False, None)

with beam.Pipeline() as p:
    records, failures = p | ReadCorpus([corpus], "tfrecord")
    _ = records | beam.Map(fake_embedding) | WriteTFRecord(out, "fingerprint")
    _ = failures | "Failures" >> beam.Map(lambda f: print("FAILURE", f.reason))

import glob
with beam.Pipeline() as p:
    _ = (p | ReadPrevious(sorted(glob.glob(out + "*.tfrecord")))
         | beam.Map(lambda kv: print("PREVIOUS", kv[0], kv[1].content_hash[:8], kv[1].model)))
print("TENSORFLOW_IMPORTED", "tensorflow" in sys.modules)
"""


def test_reading_and_writing_examples_never_imports_tensorflow(tmp_path, read_embeddings):
    """A worker with a shared model (--large_model) needs no TensorFlow to read and write TFRecords."""
    import tensorflow as tf

    corpus = tmp_path / "corpus.tfrecord"
    with tf.io.TFRecordWriter(str(corpus)) as writer:
        for record_id, text in [(b"a", b"one"), (b"b", b"three")]:
            example = tf.train.Example()
            example.features.feature["id"].bytes_list.value.append(record_id)
            example.features.feature["text"].bytes_list.value.append(text)
            writer.write(example.SerializeToString())
        writer.write(b"\x00broken")
    out = str(tmp_path / "out")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_WORKER_SCRIPT), str(corpus), out],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "TENSORFLOW_IMPORTED False" in lines
    assert "FAILURE not_a_tf_example" in lines
    assert sorted(line.split()[1] for line in lines if line.startswith("PREVIOUS")) == ["a", "b"]

    written = {i: row["embedding"].tolist() for i, row in read_embeddings(tf.io.gfile.glob(out + "*.tfrecord")).items()}
    assert written == {"a": [3.0] * 4, "b": [5.0] * 4}, json.dumps(written)
