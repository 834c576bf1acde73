"""Incremental runs: embed only new and changed records, carry the rest forward from an earlier run's output.

The earlier output is either TFRecord or a BigQuery table.

TFRecord: each run writes its embeddings under its own prefix, for example
gs://bucket/emb/run=2026-11-24T02-00-00/part, and, once every shard is in place, a manifest PREFIX-manifest.json
naming the shards, the run id and the model fingerprint. A run that fails leaves no manifest, so it is never taken
for a complete run, and the earlier runs' files are only ever read. A later run is pointed at an earlier prefix
(`--previous_output`, or `{latest}` for the newest complete run before it).

BigQuery: `--previous_output PROJECT:DATASET.TABLE` reads the table's rows (ReadPreviousTable), and the run keeps
its --output_bigquery table current (transforms.bigquery.UpdateTable: a run table, then one MERGE).

Either way the run joins its corpus with the earlier embeddings on the record id:

    new        the id is not in the earlier output: embedded.
    changed    the content_hash differs, or the earlier embedding was made by another model fingerprint (or
               with another --output_sequence choice): embedded. `changed_model` counts the latter alone.
    unchanged  same content_hash and model: the earlier tf.train.Example is written again byte for byte (a table
               row value for value, its embedded_at and run_id included).
    deleted    the id is only in the earlier output: dropped.

So every run's output is the complete set for its corpus, equal to a full re-embedding. The four counts are
Beam counters in the "embeddings" namespace.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.examples import parse_example

__all__ = ["RUN_ID_PLACEHOLDER", "LATEST_PLACEHOLDER", "MANIFEST_SUFFIX", "EMBED_TAG", "CARRIED_TAG", "DELETED_TAG",
           "default_run_id", "manifest_path", "resolve_previous", "previous_files", "ReadPrevious",
           "ReadPreviousTable", "SelectChanged", "WriteManifest"]

RUN_ID_PLACEHOLDER = "{run_id}"
LATEST_PLACEHOLDER = "{latest}"
MANIFEST_SUFFIX = "-manifest.json"
EMBED_TAG = "embed"
CARRIED_TAG = "carried"
DELETED_TAG = "deleted"
_NAMESPACE = "embeddings"
_SHARD_GLOB = "-*-of-*.tfrecord"  # WriteToTFRecord's -SSSSS-of-NNNNN shard names with write.TFRECORD_SUFFIX.


def default_run_id(now: datetime.datetime | None = None) -> str:
    """The launch time in UTC as YYYY-MM-DDTHH-MM-SS: sorts like time and is safe in any path."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H-%M-%S")


def manifest_path(prefix: str) -> str:
    """Where a run writing to `prefix` records that it completed."""
    return prefix + MANIFEST_SUFFIX


def resolve_previous(previous_output: str, run_id: str) -> str | None:
    """Resolves `{latest}` to the newest complete run whose id sorts before `run_id`; None when there is none.

    A prefix without `{latest}` is returned as it is. Picking only runs before this one keeps a repeated run
    (same --run_id) reading the same earlier output as the first time.
    """
    if LATEST_PLACEHOLDER not in previous_output:
        return previous_output
    head, _, tail = previous_output.partition(LATEST_PLACEHOLDER)
    if LATEST_PLACEHOLDER in tail:
        raise ValueError(f"--previous_output {previous_output!r} may hold {LATEST_PLACEHOLDER} only once.")
    ending = tail + MANIFEST_SUFFIX
    matches = _match(head + "*" + ending, previous_output)
    earlier = []
    for metadata in matches:
        path = metadata.path
        if path.startswith(head) and path.endswith(ending):
            candidate = path[len(head):len(path) - len(ending)]
            if candidate and "/" not in candidate and candidate < run_id:
                earlier.append(candidate)
    if not earlier:
        return None
    return head + max(earlier) + tail


def _match(pattern: str, flag_value: str) -> list:
    """FileSystems.match of one pattern; a listing error becomes a ValueError naming --previous_output."""
    try:
        return FileSystems.match([pattern])[0].metadata_list
    except BeamIOError as err:
        raise ValueError(f"--previous_output {flag_value}: cannot list {pattern}: {err}") from err


def previous_files(prefix: str) -> list[str]:
    """The TFRecord shards of an earlier run: those its manifest names, else PREFIX-*-of-*.tfrecord.

    Raises:
        ValueError: naming --previous_output, when the prefix holds no shards or its manifest names a
            missing one.
    """
    manifest = manifest_path(prefix)
    if FileSystems.exists(manifest):
        with FileSystems.open(manifest) as f:
            listed = json.loads(f.read().decode("utf-8"))["files"]
        directory, base = FileSystems.split(prefix)
        outside = [name for name in listed if not _is_own_shard(name, base)]
        if outside:
            raise ValueError(f"--previous_output {prefix}: its manifest {manifest} names {outside[0]!r}, which is not "
                             f"a shard of that run ({base}-SSSSS-of-NNNNN.tfrecord beside the manifest); a manifest is "
                             "trusted only for files in its own run directory. Point it at another run.")
        files = [FileSystems.join(directory, name) for name in listed]
        missing = [path for path in files if not FileSystems.exists(path)]
        if missing:
            raise ValueError(f"--previous_output {prefix}: its manifest {manifest} names files that are gone: "
                             f"{', '.join(missing[:3])}. Point it at another run.")
        return files
    files = sorted(metadata.path for metadata in _match(prefix + _SHARD_GLOB, prefix))
    if not files:
        raise ValueError(f"--previous_output {prefix} matches no embeddings ({prefix}{_SHARD_GLOB}) and has no "
                         f"manifest; pass the --output_tfrecord prefix of an earlier run.")
    return files


def _is_own_shard(name, base: str) -> bool:
    """Whether a manifest entry names one of its run's own shards: a plain file name, no path, no "..", no URL."""
    return (isinstance(name, str) and name.startswith(base + "-") and name.endswith(".tfrecord")
            and "/" not in name and "\\" not in name and ".." not in name and ":" not in name)


class _Previous(NamedTuple):
    """What an incremental run needs of one earlier record, and what to copy forward: its serialised Example
    (TFRecord) or its row (BigQuery)."""

    content_hash: str
    model: str
    has_sequence: bool
    carried: bytes | dict


class _KeyPreviousFn(beam.DoFn):
    """(file name, serialised Example) -> (id, _Previous)."""

    def process(self, element):
        source, serialized = element
        try:
            features = parse_example(serialized)
            record_id, content_hash, model = (features[name][0].decode("utf-8")
                                              for name in ("id", "content_hash", "model"))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise ValueError(f"{source} holds a record without id, content_hash or model; is it the output of "
                             "this pipeline?") from err
        yield record_id, _Previous(content_hash, model, "sequence_length" in features, serialized)


class ReadPrevious(beam.PTransform):
    """Reads an earlier run's shards (see previous_files) into (id, _Previous) pairs."""

    def __init__(self, files: list[str]):
        super().__init__()
        self._files = list(files)

    def expand(self, pbegin):
        return (pbegin
                | "PreviousFiles" >> beam.Create(self._files)
                | "ReadTFRecord" >> beam.io.ReadAllFromTFRecord(with_filename=True)
                | "KeyById" >> beam.ParDo(_KeyPreviousFn()))


def _key_previous_row(row: dict):
    """A row read back from BigQuery -> (id, _Previous); rows hold no token vectors."""
    return row["id"], _Previous(row["content_hash"], row["model"], False, row)


class ReadPreviousTable(beam.PTransform):
    """Reads the rows of an earlier run's BigQuery table (transforms.bigquery.ReadTable) into (id, _Previous)."""

    def __init__(self, table: str):
        super().__init__()
        self._table = table

    def expand(self, pbegin):
        from transforms import bigquery

        return (pbegin
                | "ReadTable" >> bigquery.ReadTable(self._table)
                | "KeyById" >> beam.Map(_key_previous_row))


class _ClassifyFn(beam.DoFn):
    """(id, {"records": [Record], "previous": [_Previous]}) -> Records to embed, or tagged Examples/rows to carry."""

    def __init__(self, model_fingerprint: str, with_sequence: bool):
        self._model, self._with_sequence = model_fingerprint, with_sequence
        self._counters = {name: Metrics.counter(_NAMESPACE, name)
                          for name in ("new", "changed", "changed_model", "unchanged", "deleted")}

    def process(self, element):
        _, grouped = element
        records, previous = list(grouped["records"]), list(grouped["previous"])
        if not records:
            self._counters["deleted"].inc()
            yield beam.pvalue.TaggedOutput(DELETED_TAG, element[0])
            return
        current = [p for p in previous if p.model == self._model and p.has_sequence == self._with_sequence]
        for record in records:
            match = next((p for p in current if p.content_hash == record.content_hash), None)
            if match is not None:
                self._counters["unchanged"].inc()
                yield beam.pvalue.TaggedOutput(CARRIED_TAG, match.carried)
                continue
            if not previous:
                self._counters["new"].inc()
            else:
                self._counters["changed"].inc()
                if any(p.content_hash == record.content_hash for p in previous):
                    self._counters["changed_model"].inc()
            yield record


def _key_record(record):
    return record.id, record


class SelectChanged(beam.PTransform):
    """(records, previous) -> (records to embed, earlier Examples or rows to carry forward, deleted ids).

    Joined on the id.

    `records` are transforms.read.Records of this run's corpus; `previous` comes from ReadPrevious (carried:
    serialised Examples) or ReadPreviousTable (carried: table rows; pass with_sequence=False). A record
    keeps its earlier embedding only when the content_hash, the model fingerprint and the presence of token
    vectors all match; ids only in `previous` are dropped. Counts new, changed, changed_model, unchanged and
    deleted in the "embeddings" namespace.
    """

    def __init__(self, model_fingerprint: str, with_sequence: bool = False):
        super().__init__()
        self._model, self._with_sequence = model_fingerprint, with_sequence

    def expand(self, records_and_previous):
        records, previous = records_and_previous
        keyed_records = records | "KeyRecordsById" >> beam.Map(_key_record)
        joined = {"records": keyed_records, "previous": previous} | "JoinById" >> beam.CoGroupByKey()
        selected = joined | "Classify" >> beam.ParDo(_ClassifyFn(self._model, self._with_sequence)).with_outputs(
            CARRIED_TAG, DELETED_TAG, main=EMBED_TAG)
        return selected[EMBED_TAG], selected[CARRIED_TAG], selected[DELETED_TAG]


def _write_manifest(files: list[str], prefix: str, run_id: str, model_fingerprint: str, unused_verdict=None) -> str:
    """Writes PREFIX-manifest.json naming the shards relative to the prefix's directory; returns its path."""
    names = sorted(FileSystems.split(path)[1] for path in files)
    manifest = {"run_id": run_id, "model": model_fingerprint, "files": names}
    path = manifest_path(prefix)
    with FileSystems.create(path) as f:
        f.write((json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    logging.info("Run %s complete: %d shards under %s", run_id, len(names), prefix)
    return path


class WriteManifest(beam.PTransform):
    """Takes the file names WriteTFRecord wrote and, once all are final, writes the run's manifest.

    With `verdict` (transforms.guard.CheckRun's output), the manifest is written only after the run passed its
    checks: a refused run fails first and leaves no manifest.
    """

    def __init__(self, prefix: str, run_id: str, model_fingerprint: str, verdict=None):
        super().__init__()
        self._prefix, self._run_id, self._model, self._verdict = prefix, run_id, model_fingerprint, verdict

    def expand(self, written_files):
        gate = () if self._verdict is None else (beam.pvalue.AsSingleton(self._verdict),)
        return (written_files
                | "CollectFiles" >> beam.combiners.ToList()
                | "Write" >> beam.Map(_write_manifest, self._prefix, self._run_id, self._model, *gate))
