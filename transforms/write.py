"""Sinks: embeddings as sharded TFRecord files of tf.train.Example, failures as JSON lines."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics

from transforms.examples import parse_example, serialize_example

__all__ = ["feature_spec", "ToExample", "WriteTFRecord", "WriteFailures", "inference_failure_json",
           "TFRECORD_SUFFIX", "FAILED_SUFFIX"]

TFRECORD_SUFFIX = ".tfrecord"
FAILED_SUFFIX = ".jsonl"
_NAMESPACE = "embeddings"
# Bounds of one shard when WriteTFRecord picks the shard count: a shard is sorted in one worker's memory.
_RECORDS_PER_SHARD = 100_000
_BYTES_PER_SHARD = 256 * 2**20
_TEMP_MARK = ".temp-"  # PREFIX-SSSSS-of-NNNNN.tfrecord.temp-HEX while a shard is being written.


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
    `--large_model` stays small. With `with_id`, yields (id as UTF-8 bytes, serialised Example) instead.
    """

    def __init__(self, model_fingerprint: str, with_id: bool = False):
        self._model = model_fingerprint.encode()
        self._with_id = with_id
        self._embedded = Metrics.counter(_NAMESPACE, "embedded")
        self._tokens = Metrics.counter(_NAMESPACE, "tokens_embedded")
        self._truncated = Metrics.counter(_NAMESPACE, "truncated")

    def process(self, element):
        (record_id, content_hash, _), embedding = element
        id_bytes = record_id.encode()
        features = {"id": [id_bytes], "embedding": embedding.vector, "model": [self._model],
                    "content_hash": [content_hash.encode()]}
        if embedding.sequence is not None:
            features["sequence_length"] = [embedding.tokens]
            features["sequence"] = embedding.sequence
        self._embedded.inc()
        self._tokens.inc(embedding.tokens)
        if embedding.truncated:
            self._truncated.inc()
        serialized = serialize_example(features)
        yield (id_bytes, serialized) if self._with_id else serialized


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

    The same records give the same files byte for byte: the shard count follows from the records alone, each
    record goes to the shard a hash of its id picks, and each shard holds its records sorted by id. A shard
    appears under its final name only once complete, and afterwards every other PREFIX-SSSSS-of-NNNNN.tfrecord
    (an earlier attempt's shards, perhaps of another shard count) and leftover temporary file is removed, so
    the prefix's shard files are exactly the files returned, which transforms.incremental.WriteManifest lists.

    Args:
        prefix: Output path prefix, local or gs://.
        model_fingerprint: Written as each Example's `model`.
        num_shards: A fixed shard count; 0 picks enough shards that each holds at most about 100,000 records
            and 256 MiB of Examples (a shard is sorted in one worker's memory).
        verdict: transforms.guard.CheckRun's output: no shard is written, and no earlier shard removed, before
            the run passed its checks, so a refused run leaves the prefix as it was.
    """

    def __init__(self, prefix: str, model_fingerprint: str, num_shards: int = 0, verdict=None):
        super().__init__()
        if num_shards < 0:
            raise ValueError(f"num_shards must be 0 (chosen from the records) or positive, not {num_shards}.")
        self._prefix, self._model, self._num_shards = prefix, model_fingerprint, num_shards
        self._verdict = verdict

    def expand(self, embeddings_or_pair):
        embeddings, carried_forward = (embeddings_or_pair if isinstance(embeddings_or_pair, tuple)
                                       else (embeddings_or_pair, None))
        examples = embeddings | "ToExample" >> beam.ParDo(ToExample(self._model, with_id=True))
        if carried_forward is not None:
            carried = carried_forward | "KeyCarriedById" >> beam.Map(_key_by_id)
            examples = (examples, carried) | "WithCarriedForward" >> beam.Flatten()
        return examples | "Write" >> _WriteShards(self._prefix, self._num_shards, self._verdict)


def _key_by_id(serialized: bytes) -> tuple[bytes, bytes]:
    """A serialised Example -> (its id, itself)."""
    return parse_example(serialized)["id"][0], serialized


class _WriteShards(beam.PTransform):
    """(id, serialised Example) pairs -> PREFIX-SSSSS-of-NNNNN.tfrecord files; returns their names."""

    def __init__(self, prefix: str, num_shards: int, verdict=None):
        super().__init__()
        self._prefix, self._num_shards, self._verdict = prefix, num_shards, verdict

    def expand(self, examples):
        shard_count = (examples
                       | "Sizes" >> beam.Map(lambda example: (1, len(example[1])))
                       | "Total" >> beam.CombineGlobally(_add_sizes)
                       | "ShardCount" >> beam.Map(_shard_count, self._num_shards))
        gate = () if self._verdict is None else (beam.pvalue.AsSingleton(self._verdict),)
        # One empty marker per shard, so a shard that no id hashes to is still written (as an empty file).
        markers = shard_count | "ShardMarkers" >> beam.FlatMap(lambda count: (((i, count), None)
                                                                              for i in range(count)))
        assigned = examples | "AssignShards" >> beam.Map(_assign_shard,
                                                         beam.pvalue.AsSingleton(shard_count))
        written = ((assigned, markers)
                   | "WithMarkers" >> beam.Flatten()
                   | "GroupShards" >> beam.GroupByKey()
                   | "WriteShards" >> beam.Map(_write_shard, self._prefix, *gate))
        # Only after every shard is in place, so a stale shard is never removed before its replacement exists.
        return (written
                | "CollectShards" >> beam.combiners.ToList()
                | "RemoveStale" >> beam.FlatMap(_remove_stale, self._prefix))


def _add_sizes(sizes) -> tuple[int, int]:
    """Sums (records, bytes) pairs; (0, 0) for none."""
    records = total_bytes = 0
    for count, size in sizes:
        records, total_bytes = records + count, total_bytes + size
    return records, total_bytes


def _shard_count(sizes: tuple[int, int], num_shards: int) -> int:
    if num_shards:
        return num_shards
    records, total_bytes = sizes
    return max(1, math.ceil(records / _RECORDS_PER_SHARD), math.ceil(total_bytes / _BYTES_PER_SHARD))


def _assign_shard(example: tuple[bytes, bytes], shard_count: int):
    """(id, Example) -> ((shard, shard count), (id, Example)), the shard from a hash that is the same in every
    process (unlike Python's hash(), salted per process)."""
    digest = hashlib.sha256(example[0]).digest()
    return (int.from_bytes(digest[:8], "big") % shard_count, shard_count), example


def _shard_name(prefix: str, index: int, count: int) -> str:
    """PREFIX-SSSSS-of-NNNNN.tfrecord, the names beam.io.WriteToTFRecord gives."""
    return f"{prefix}-{index:05d}-of-{count:05d}{TFRECORD_SUFFIX}"


def _write_shard(grouped, prefix: str, unused_verdict=None) -> str:
    """Writes one shard's Examples ((index, count), [(id, Example) or None]) in id order under a temporary
    name, then renames it into place; returns its name.

    The shard is sorted in memory: the shard count keeps it under _RECORDS_PER_SHARD and _BYTES_PER_SHARD.
    """
    shard, examples = grouped
    # Ties (a corpus with a repeated id) fall back to the Example's bytes, so the order is still total.
    records = sorted(example for example in examples if example is not None)
    final = _shard_name(prefix, *shard)
    # A name of its own per attempt: a retried or duplicated bundle never writes into another's file, and a
    # killed run leaves only a temporary name, which no reader's PREFIX-*.tfrecord glob matches.
    temp = f"{final}{_TEMP_MARK}{uuid.uuid4().hex}"
    with FileSystems.create(temp, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for _, serialized in records:
            _TFRecordUtil.write_record(f, serialized)
    FileSystems.rename([temp], [final])
    return final


def _remove_stale(written: list[str], prefix: str) -> list[str]:
    """Deletes PREFIX-SSSSS-of-NNNNN.tfrecord files not in `written` and our leftover temporary files;
    returns `written`, sorted."""
    base = FileSystems.split(prefix)[1]
    ours = re.compile(re.escape(base) + r"-\d{5,}-of-\d{5,}" + re.escape(TFRECORD_SUFFIX)
                      + "(" + re.escape(_TEMP_MARK) + "[0-9a-f]{32})?")
    final = {FileSystems.split(path)[1] for path in written}
    # Names are compared within the prefix's directory only: "*" does not cross "/", and the pattern keeps
    # another prefix's files (PREFIX-v2-00000-of-00001.tfrecord) out.
    matched = FileSystems.match([prefix + "-*"])[0].metadata_list
    stale = [metadata.path for metadata in matched
             if ours.fullmatch(FileSystems.split(metadata.path)[1])
             and FileSystems.split(metadata.path)[1] not in final]
    if stale:
        logging.info("Removing %d files of an earlier write to %s: %s", len(stale), prefix,
                     ", ".join(sorted(stale)[:5]))
        FileSystems.delete(stale)
    return sorted(written)


class WriteFailures(beam.PTransform):
    """Writes dead-letter JSON lines to PREFIX-SSSSS-of-NNNNN.jsonl (an empty file when nothing failed)."""

    def __init__(self, prefix: str):
        super().__init__()
        self._prefix = prefix

    def expand(self, failure_lines):
        return failure_lines | "Write" >> beam.io.WriteToText(self._prefix, file_name_suffix=FAILED_SUFFIX)
