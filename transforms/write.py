"""Sinks: embeddings as sharded TFRecord files of tf.train.Example, failures as JSON lines."""

from __future__ import annotations

import json
import logging
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.examples import serialize_example

__all__ = ["feature_spec", "ToExample", "WriteTFRecord", "WriteFailures", "inference_failure_json",
           "TFRECORD_SUFFIX", "FAILED_SUFFIX"]

TFRECORD_SUFFIX = ".tfrecord"
FAILED_SUFFIX = ".jsonl"
_NAMESPACE = "embeddings"
_PROGRESS_SECONDS = 15.0


def feature_spec(with_sequence: bool = False) -> dict:
    """The tf.io.parse_example spec of the embedding records.

    Each record has `id` (bytes), `embedding` (float32 [hidden]), `model` (bytes: a fingerprint of encoder,
    preprocessor, pooling and seq_length) and `content_hash` (bytes: hex sha256 of the input texts). With
    `--output_sequence` it also has `sequence_length` (int64, real tokens) and `sequence` (float32
    [sequence_length * hidden], the unpadded token vectors, row-major).

        dataset = tf.data.TFRecordDataset(tf.io.gfile.glob(prefix + "-*.tfrecord"))
        batch = tf.io.parse_example(next(iter(dataset.batch(32))), feature_spec())
    """
    import tensorflow as tf

    spec = {
        "id": tf.io.FixedLenFeature([], tf.string),
        "embedding": tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True),
        "model": tf.io.FixedLenFeature([], tf.string),
        "content_hash": tf.io.FixedLenFeature([], tf.string),
    }
    if with_sequence:
        spec["sequence_length"] = tf.io.FixedLenFeature([], tf.int64)
        spec["sequence"] = tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True)
    return spec


class ToExample(beam.DoFn):
    """((id, content_hash, source), Embedding) -> serialised tf.train.Example; counts what it writes.

    Built without importing TensorFlow (transforms.examples), so a worker that shares the model with
    `--large_model` stays small.
    """

    def __init__(self, model_fingerprint: str):
        self._model = model_fingerprint.encode()
        self._embedded = Metrics.counter(_NAMESPACE, "embedded")
        self._tokens = Metrics.counter(_NAMESPACE, "tokens_embedded")
        self._truncated = Metrics.counter(_NAMESPACE, "truncated")
        self._count, self._last_log, self._start = 0, 0.0, 0.0

    def setup(self):
        self._start = self._last_log = time.monotonic()

    def process(self, element):
        (record_id, content_hash, _), embedding = element
        features = {"id": [record_id.encode()], "embedding": embedding.vector, "model": [self._model],
                    "content_hash": [content_hash.encode()]}
        if embedding.sequence is not None:
            features["sequence_length"] = [embedding.tokens]
            features["sequence"] = embedding.sequence
        self._embedded.inc()
        self._tokens.inc(embedding.tokens)
        if embedding.truncated:
            self._truncated.inc()
        self._log_progress()
        yield serialize_example(features)

    def _log_progress(self):
        self._count += 1
        now = time.monotonic()
        if now - self._last_log >= _PROGRESS_SECONDS:
            self._last_log = now
            logging.info("Embedded %d records in this worker (%.1f records/s).", self._count,
                         self._count / (now - self._start))


def inference_failure_json(key, texts, error: str) -> str:
    """A dead-letter line for a record whose batch failed inside the model."""
    record_id, _, source = key
    return json.dumps({"source": source, "reason": "inference_error", "detail": error[:1000],
                       "record": json.dumps({"id": record_id, "texts": list(texts)}, ensure_ascii=False)[:1000]},
                      ensure_ascii=False)


class WriteTFRecord(beam.PTransform):
    """Writes ((id, content_hash, source), Embedding) pairs to PREFIX-SSSSS-of-NNNNN.tfrecord.

    Applied to a pair (embeddings, carried_forward) instead, it also writes `carried_forward`, serialised
    Examples copied unchanged from an earlier run (transforms.incremental). Returns the written file names.
    """

    def __init__(self, prefix: str, model_fingerprint: str):
        super().__init__()
        self._prefix, self._model = prefix, model_fingerprint

    def expand(self, embeddings_or_pair):
        embeddings, carried_forward = (embeddings_or_pair if isinstance(embeddings_or_pair, tuple)
                                       else (embeddings_or_pair, None))
        examples = embeddings | "ToExample" >> beam.ParDo(ToExample(self._model))
        if carried_forward is not None:
            examples = (examples, carried_forward) | "WithCarriedForward" >> beam.Flatten()
        return examples | "Write" >> beam.io.WriteToTFRecord(self._prefix, file_name_suffix=TFRECORD_SUFFIX)


class WriteFailures(beam.PTransform):
    """Writes dead-letter JSON lines to PREFIX-SSSSS-of-NNNNN.jsonl (an empty file when nothing failed)."""

    def __init__(self, prefix: str):
        super().__init__()
        self._prefix = prefix

    def expand(self, failure_lines):
        return failure_lines | "Write" >> beam.io.WriteToText(self._prefix, file_name_suffix=FAILED_SUFFIX)
