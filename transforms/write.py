"""Sinks: embeddings as sharded TFRecord files of tf.train.Example, failures as JSON lines."""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import os
import re
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

from transforms.examples import parse_example
from transforms.records import example_bytes, failure_to_json

__all__ = ["WriteTFRecord", "WriteFailures", "RemoveStaleShards", "remove_stale_shards", "shard_count",
           "TFRECORD_SUFFIX", "FAILED_SUFFIX", "RECORDS_PER_SHARD", "SPILL_BYTES", "merge_shard"]

TFRECORD_SUFFIX = ".tfrecord"
FAILED_SUFFIX = ".jsonl"
RECORDS_PER_SHARD = 100_000  # About, when WriteTFRecord picks the shard count from the expected records.
SPILL_BYTES = 64 * 2**20  # Examples a bundle holds before it writes them out as sorted runs.
_TEMP_MARK = ".temp-"  # PREFIX-SSSSS-of-NNNNN.tfrecord.temp-HEX while a shard is being written.
_RUNS_MARK = ".runs-"  # PREFIX.runs-HEX/: the sorted runs of one write, removed when it is done.


class _ToExample(beam.DoFn):
    """(RecordKey, Embedding) -> (id as UTF-8 bytes, serialised tf.train.Example in records' layout)."""

    def __init__(self, model_fingerprint: str):
        self._model = model_fingerprint

    def process(self, element):
        key, embedding = element
        yield key.id.encode(), example_bytes(key, embedding, self._model)


class WriteTFRecord(beam.PTransform):
    """Writes (RecordKey, Embedding) pairs to PREFIX-SSSSS-of-NNNNN.tfrecord; returns the written file names.

    The same records give the same files byte for byte: the shard count is fixed before the write (given, or
    from the expected record count, which the pipeline estimates from the input's bytes), each record goes to
    the shard a hash of its id picks, and each shard holds its records sorted by id. Memory stays bounded
    whatever the record count (an external merge sort, see _WriteShards). A shard
    appears under its final name only once complete, and afterwards every other PREFIX-SSSSS-of-NNNNN.tfrecord
    (an earlier attempt's shards, perhaps of another shard count) and leftover temporary file is removed, so
    the prefix's shard files are exactly the files returned, which transforms.incremental.WriteManifest lists.

    Args:
        prefix: Output path prefix, local or gs://.
        model_fingerprint: Written as each Example's `model`.
        num_shards: A fixed shard count; 0 picks enough that each holds at most about 100,000 of
            `expected_records` (shard_count), one when that is None.
        expected_records: About how many records will be written; only the shard count depends on it.
        verdict: transforms.guard.CheckRun's output: no shard is written, and no earlier shard removed, before
            the run passed its checks, so a refused run leaves the prefix as it was.
        carried_forward: Serialised Examples copied unchanged from an earlier run (transforms.incremental),
            written beside the embeddings.
    """

    def __init__(self, prefix: str, model_fingerprint: str, num_shards: int = 0,
                 expected_records: int | None = None, verdict=None, carried_forward=None):
        super().__init__()
        if num_shards < 0:
            raise ValueError(f"num_shards must be 0 (from expected_records) or positive, not {num_shards}.")
        self._prefix, self._model = prefix, model_fingerprint
        self._num_shards = num_shards or shard_count(expected_records)
        self._verdict, self._carried_forward = verdict, carried_forward

    def expand(self, embeddings):
        examples = embeddings | "ToExample" >> beam.ParDo(_ToExample(self._model))
        if self._carried_forward is not None:
            carried = self._carried_forward | "KeyCarriedById" >> beam.Map(_key_by_id)
            examples = (examples, carried) | "WithCarriedForward" >> beam.Flatten()
        return examples | "Write" >> _WriteShards(self._prefix, self._num_shards, self._verdict)


def _key_by_id(serialized: bytes) -> tuple[bytes, bytes]:
    """A serialised Example -> (its id, itself)."""
    return parse_example(serialized)["id"][0], serialized


class _WriteShards(beam.PTransform):
    """(id, serialised Example) pairs -> PREFIX-SSSSS-of-NNNNN.tfrecord files; returns their names.

    An external merge sort, so no step holds more than a bounded buffer of Examples in memory (a local runner
    keeps whatever crosses a GroupByKey in memory): each bundle spills its Examples, sorted, in runs of at most
    SPILL_BYTES to files under PREFIX.runs-TOKEN/, one run per shard; then each shard's runs are merged, in
    (id, bytes) order, into the shard file. Only the run file names are grouped.
    """

    def __init__(self, prefix: str, num_shards: int, verdict=None):
        super().__init__()
        self._prefix, self._num_shards, self._verdict = prefix, num_shards, verdict

    def expand(self, examples):
        runs_dir = f"{self._prefix}{_RUNS_MARK}{uuid.uuid4().hex}"
        gate = () if self._verdict is None else (beam.pvalue.AsSingleton(self._verdict),)
        # One marker per shard, so a shard that no id hashes to is still written (as an empty file).
        markers = (examples.pipeline
                   | "ShardMarkers" >> beam.Create([(shard, None) for shard in range(self._num_shards)]))
        runs = examples | "SpillSortedRuns" >> beam.ParDo(_SpillSortedRuns(runs_dir, self._num_shards))
        written = ((runs, markers)
                   | "WithMarkers" >> beam.Flatten()
                   | "GroupRunsByShard" >> beam.GroupByKey()
                   | "MergeShards" >> beam.Map(merge_shard, self._prefix, self._num_shards, *gate))
        # Only after every shard is in place, so a stale shard is never removed before its replacement exists.
        return (written
                | "CollectShards" >> beam.combiners.ToList()
                | "RemoveStale" >> beam.FlatMap(_remove_stale, self._prefix, runs_dir))


def shard_count(expected_records: int | None) -> int:
    """Shards for about `expected_records` records: enough that each holds at most about 100,000. The same
    expected count (the same input) gives the same count, so the same files."""
    return max(1, math.ceil((expected_records or 0) / RECORDS_PER_SHARD))


def _shard_of(record_id: bytes, count: int) -> int:
    """The shard of an id, from a hash that is the same in every process (unlike Python's hash(), salted)."""
    return int.from_bytes(hashlib.sha256(record_id).digest()[:8], "big") % count


class _SpillSortedRuns(beam.DoFn):
    """Buffers (id, Example) pairs per shard and writes each shard's buffer, sorted, as one run file whenever the
    buffer passes SPILL_BYTES and at the end of the bundle; outputs (shard, run file name).

    A run holds alternating TFRecord-framed records: an id, then its Example. A retried bundle writes new files
    under new names; the runner drops the names the failed attempt output, and RemoveStale deletes the folder.
    """

    def __init__(self, runs_dir: str, count: int):
        self._runs_dir, self._count = runs_dir, count

    def start_bundle(self):
        self._buffers = [[] for _ in range(self._count)]
        self._bytes = 0

    def process(self, element):
        record_id, serialized = element
        self._buffers[_shard_of(record_id, self._count)].append(element)
        self._bytes += len(record_id) + len(serialized)
        if self._bytes >= SPILL_BYTES:
            yield from self._spill()

    def finish_bundle(self):
        for shard, path in self._spill():
            yield beam.transforms.window.GlobalWindows.windowed_value((shard, path))

    def _spill(self):
        for shard, buffer in enumerate(self._buffers):
            if not buffer:
                continue
            buffer.sort()
            path = f"{self._runs_dir}/shard-{shard:05d}-{uuid.uuid4().hex}.run"
            with FileSystems.create(path, mime_type="application/octet-stream",
                                    compression_type=CompressionTypes.UNCOMPRESSED) as f:
                for record_id, serialized in buffer:
                    _TFRecordUtil.write_record(f, record_id)
                    _TFRecordUtil.write_record(f, serialized)
            yield shard, path
        self._buffers = [[] for _ in range(self._count)]
        self._bytes = 0


def _read_run(path: str):
    """Yields the (id, Example) pairs of a run file, in its (sorted) order."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        while True:
            record_id = _TFRecordUtil.read_record(f)
            if record_id is None:
                return
            yield record_id, _TFRecordUtil.read_record(f)


def merge_shard(grouped, prefix: str, count: int, unused_verdict=None) -> str:
    """Merges one shard's run files (shard, [name or None]) in (id, bytes) order into the shard file, written
    under a temporary name and renamed into place; returns its name. Holds one record per run in memory.

    A run file holds TFRecord-framed records, an id then its serialised Example, sorted by (id, bytes). A merge that
    fails part-way (a run it cannot read, a full disk) leaves no file under the shard's final name."""
    shard, runs = grouped
    runs = sorted(run for run in runs if run is not None)
    final = _shard_name(prefix, shard, count)
    # A name of its own per attempt: a retried or duplicated bundle never writes into another's file, and a
    # killed run leaves only a temporary name, which no reader's PREFIX-*.tfrecord glob matches.
    temp = f"{final}{_TEMP_MARK}{uuid.uuid4().hex}"
    with FileSystems.create(temp, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED) as f:
        # Ties (a repeated id) fall back to the Example's bytes, so the order is still total.
        for _, serialized in heapq.merge(*(_read_run(run) for run in runs)):
            _TFRecordUtil.write_record(f, serialized)
    FileSystems.rename([temp], [final])
    return final


def _shard_name(prefix: str, index: int, count: int) -> str:
    """PREFIX-SSSSS-of-NNNNN.tfrecord, the names beam.io.WriteToTFRecord gives."""
    return f"{prefix}-{index:05d}-of-{count:05d}{TFRECORD_SUFFIX}"


def _remove_stale(written: list[str], prefix: str, runs_dir: str) -> list[str]:
    """Deletes PREFIX-SSSSS-of-NNNNN.tfrecord files not in `written`, our leftover temporary files and this
    write's run files; returns `written`, sorted."""
    _remove_runs(runs_dir)
    remove_stale_shards(written, prefix, TFRECORD_SUFFIX, temp_mark=_TEMP_MARK)
    return sorted(written)


def remove_stale_shards(written: list[str], prefix: str, suffix: str, temp_mark: str | None = None) -> list[str]:
    """Deletes the PREFIX-SSSSS-of-NNNNN{suffix} files that are not in `written` (an earlier write's, perhaps of
    another shard count: left, they would hold every id twice); returns what it deleted.

    Call it only once every file of `written` is in place. With `temp_mark`, PREFIX-...{suffix}{temp_mark}HEX
    leftovers go too.
    """
    base = FileSystems.split(prefix)[1]
    leftovers = "(" + re.escape(temp_mark) + "[0-9a-f]{32})?" if temp_mark else ""
    ours = re.compile(re.escape(base) + r"-\d{5,}-of-\d{5,}" + re.escape(suffix) + leftovers)
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
    return stale


class RemoveStaleShards(beam.PTransform):
    """The file names a Beam file sink wrote -> the same names, sorted, once every other shard file of its prefix
    is deleted (remove_stale_shards): a rerun with another shard count leaves no earlier shard beside its own."""

    def __init__(self, prefix: str, suffix: str):
        super().__init__()
        self._prefix, self._suffix = prefix, suffix

    def expand(self, written):
        return (written
                | "CollectShards" >> beam.combiners.ToList()
                | "RemoveStale" >> beam.Map(_remove_stale_of_sink, self._prefix, self._suffix))


def _remove_stale_of_sink(written: list[str], prefix: str, suffix: str) -> list[str]:
    remove_stale_shards(written, prefix, suffix)
    return sorted(written)


def _remove_runs(runs_dir: str) -> None:
    runs = [metadata.path for metadata in FileSystems.match([runs_dir + "/*"])[0].metadata_list]
    if runs:
        FileSystems.delete(runs)
    if "://" not in runs_dir and os.path.isdir(runs_dir):  # A local folder stays behind its files.
        os.rmdir(runs_dir)


class WriteFailures(beam.PTransform):
    """Writes Failures as dead-letter JSON lines to PREFIX-SSSSS-of-NNNNN.jsonl (an empty file when nothing
    failed); returns the written file names."""

    def __init__(self, prefix: str):
        super().__init__()
        self._prefix = prefix

    def expand(self, failures):
        return (failures
                | "ToJson" >> beam.Map(failure_to_json)
                | "Write" >> beam.io.WriteToText(self._prefix, file_name_suffix=FAILED_SUFFIX))
