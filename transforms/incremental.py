"""Incremental runs, in one place: run ids and placeholders, manifests, change detection, carrying forward, and
keeping a BigQuery table current. The design is written out once, in docs/incremental.md.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions

from transforms import bigquery
from transforms.bigquery import Table
from transforms.records import carried_row, counter, example_key, refresh_fields, schema

__all__ = ["RUN_ID_PLACEHOLDER", "RUN_TABLE_INFIX", "RunPaths", "resolve_run", "Selected", "run_table", "merge_sql",
           "UpdateTable", "LATEST_PLACEHOLDER", "MANIFEST_SUFFIX", "EMBED_TAG", "CARRIED_TAG",
           "REFRESHED_TAG", "DELETED_TAG",
           "default_run_id", "manifest_path", "resolve_previous", "previous_files", "ReadPrevious",
           "ReadPreviousTable", "SelectChanged", "WriteManifest", "complete_rows", "changed_rows", "removed_ids",
           "RUN_ID_PATTERN", "key_previous"]

RUN_ID_PLACEHOLDER = "{run_id}"
LATEST_PLACEHOLDER = "{latest}"
MANIFEST_SUFFIX = "-manifest.json"
RUN_TABLE_INFIX = "__run_"  # A current table's per-run table: TABLE__run_RUNID.
EMBED_TAG = "embed"
CARRIED_TAG = "carried"
REFRESHED_TAG = "refreshed"
DELETED_TAG = "deleted"
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHARD_GLOB = "-*-of-*.tfrecord"  # WriteToTFRecord's -SSSSS-of-NNNNN shard names with write.TFRECORD_SUFFIX.


class RunPaths(NamedTuple):
    """A run's id, its output prefixes with {run_id} filled in, and the earlier TFRecord output it updates."""

    run_id: str
    output_tfrecord: str | None
    output_failed: str | None
    previous_output: str | None  # An earlier run's prefix ({latest} resolved); None: embed everything.
    previous_files: tuple[str, ...]


def resolve_run(run_id: str | None, output_tfrecord: str | None, output_failed: str | None,
                previous_output: str | None) -> RunPaths:
    """Fills in {run_id} and {latest}, and lists the earlier run's shards; ValueError naming the flag.

    `previous_output` here is a TFRecord prefix (a BigQuery table is checked by the caller) or None.
    """
    run_id = run_id or default_run_id()
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise ValueError(f"--run_id {run_id!r} goes into paths: use letters, digits, '.', '_' and '-' only.")
    output_tfrecord, output_failed = (path.replace(RUN_ID_PLACEHOLDER, run_id) if path else None
                                      for path in (output_tfrecord, output_failed))
    if not output_failed and output_tfrecord:
        output_failed = output_tfrecord + "-failed"
    if not previous_output:
        return RunPaths(run_id, output_tfrecord, output_failed, None, ())
    if not output_tfrecord:
        raise ValueError(f"--previous_output {previous_output} is a TFRecord prefix and needs --output_tfrecord; to "
                         "update a BigQuery table instead, name it: --previous_output PROJECT:DATASET.TABLE with "
                         "--output_bigquery.")
    if RUN_ID_PLACEHOLDER in previous_output:
        raise ValueError(f"--previous_output {previous_output} names an earlier run: use {LATEST_PLACEHOLDER} or "
                         f"that run's prefix, not {RUN_ID_PLACEHOLDER}.")
    resolved = resolve_previous(previous_output, run_id)
    if resolved is None:
        logging.info("--previous_output %s: no complete run before %s; embedding everything.", previous_output, run_id)
        return RunPaths(run_id, output_tfrecord, output_failed, None, ())
    if resolved == output_tfrecord:
        raise ValueError(f"--previous_output {resolved} is this run's own --output_tfrecord; write each run to its "
                         "own prefix, e.g. gs://bucket/emb/run={run_id}/part.")
    return RunPaths(run_id, output_tfrecord, output_failed, resolved, tuple(previous_files(resolved)))


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
        return _no_links(files, prefix)
    files = sorted(metadata.path for metadata in _match(prefix + _SHARD_GLOB, prefix))
    if not files:
        raise ValueError(f"--previous_output {prefix} matches no embeddings ({prefix}{_SHARD_GLOB}) and has no "
                         f"manifest; pass the --output_tfrecord prefix of an earlier run.")
    return _no_links(files, prefix)


def _no_links(files: list[str], prefix: str) -> list[str]:
    """`files`, unless a local one is a symbolic link: a run writes plain files, and a link named like a shard
    would carry another run's (or any file's) records into this one."""
    links = [path for path in files if "://" not in path and os.path.islink(path)]
    if links:
        raise ValueError(f"--previous_output {prefix}: {links[0]} is a symbolic link, not a shard this pipeline "
                         "wrote; a run's shards are read only as plain files. Point it at another run.")
    return files


def _is_own_shard(name, base: str) -> bool:
    """Whether a manifest entry names one of its run's own shards: a plain file name, no path, no "..", no URL."""
    return (isinstance(name, str) and name.startswith(base + "-") and name.endswith(".tfrecord")
            and "/" not in name and "\\" not in name and ".." not in name and ":" not in name)


class _Previous(NamedTuple):
    """What an incremental run needs of one earlier record (a chunk, with --chunking), and what to copy forward:
    its serialised Example (TFRecord) or its row (BigQuery)."""

    id: str
    content_hash: str
    model: str
    has_sequence: bool
    carried: bytes | dict


def key_previous(element):
    """(file name, serialised Example) -> (its document's id, _Previous): a chunk joins its document."""
    source, serialized = element
    key = example_key(serialized, source)
    return key.doc_id, _Previous(key.id, key.content_hash, key.model, key.has_sequence, serialized)


class ReadPrevious(beam.PTransform):
    """Reads an earlier run's shards (see previous_files) into (document id, _Previous) pairs."""

    def __init__(self, files: list[str]):
        super().__init__()
        self._files = list(files)

    def expand(self, pbegin):
        return (pbegin
                | "PreviousFiles" >> beam.Create(self._files)
                | "ReadTFRecord" >> beam.io.ReadAllFromTFRecord(with_filename=True)
                | "KeyById" >> beam.Map(key_previous))


def _key_previous_row(row: dict):
    """A row read back from BigQuery -> (its document's id, _Previous); rows hold no token vectors."""
    return row.get("doc_id") or row["id"], _Previous(row["id"], row["content_hash"], row["model"], False, row)


class ReadPreviousTable(beam.PTransform):
    """Reads the rows of an earlier run's BigQuery table (transforms.bigquery.ReadTable) into (document id,
    _Previous); `chunks`: the table holds chunks (records.CHUNK_SCHEMA's columns)."""

    def __init__(self, table: str, chunks: bool = False, kept: tuple = ()):
        super().__init__()
        self._table, self._chunks, self._kept = table, chunks, kept

    def expand(self, pbegin):
        return (pbegin
                | "ReadTable" >> bigquery.ReadTable(self._table, chunks=self._chunks, kept=self._kept)
                | "KeyById" >> beam.Map(_key_previous_row))


class _ClassifyFn(beam.DoFn):
    """(id, {"records": [Record], "previous": [_Previous]}) -> Records to embed, or tagged Examples/rows to carry."""

    def __init__(self, model_fingerprint: str, with_sequence: bool):
        self._model, self._with_sequence = model_fingerprint, with_sequence
        self._counters = {name: counter(name)
                          for name in ("new", "changed", "changed_model", "unchanged", "deleted", "fields_changed")}

    def process(self, element):
        _, grouped = element
        records, previous = list(grouped["records"]), list(grouped["previous"])
        if not records:
            self._counters["deleted"].inc()
            yield beam.pvalue.TaggedOutput(DELETED_TAG, element[0])
            return
        current = [p for p in previous if p.model == self._model and p.has_sequence == self._with_sequence]
        for record in records:
            # Every earlier chunk of an unchanged document (one record without --chunking), once per id.
            matches = {p.id: p for p in current if p.content_hash == record.content_hash}
            if matches:
                self._counters["unchanged"].inc()
                # With the record's current kept fields: a changed field alone re-embeds nothing, but sinks that
                # take only what changed get the record again (REFRESHED_TAG).
                refreshed = [refresh_fields(match.carried, record.fields) for match in matches.values()]
                if any(changed for _, changed in refreshed):
                    self._counters["fields_changed"].inc()
                for carried, changed in refreshed:
                    yield beam.pvalue.TaggedOutput(CARRIED_TAG, carried)
                    if changed:
                        yield beam.pvalue.TaggedOutput(REFRESHED_TAG, carried)
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


class Selected(NamedTuple):
    """SelectChanged's outputs."""

    to_embed: beam.PCollection  # Records, new or changed.
    carried_forward: beam.PCollection  # Earlier serialised Examples (TFRecord) or rows (BigQuery), unchanged.
    deleted: beam.PCollection  # Ids only in the earlier output (document ids, with --chunking).
    refreshed: beam.PCollection  # The part of carried_forward whose kept fields changed (current values).


class SelectChanged(beam.PTransform):
    """Records of this run's corpus -> Selected: what to embed, what to carry forward, what was deleted.

    Joined with `previous` on the id (an earlier chunk on its document's id). `previous` comes from ReadPrevious
    (carried: serialised Examples) or ReadPreviousTable (carried: table rows; pass with_sequence=False). A record
    keeps its earlier embedding (every earlier chunk, with --chunking) only when the content_hash, the model
    fingerprint (which covers the chunk settings) and the presence of token vectors all match; a changed
    document's earlier chunks are all dropped, whatever its new chunk count, and so are ids only in `previous`.
    Counts new, changed, changed_model, unchanged and deleted (documents), and fields_changed: the unchanged
    ones whose kept fields changed, which are in `refreshed` too.
    """

    def __init__(self, previous: beam.PCollection, model_fingerprint: str, with_sequence: bool = False):
        super().__init__()
        self._previous, self._model, self._with_sequence = previous, model_fingerprint, with_sequence

    def expand(self, records):
        keyed_records = records | "KeyRecordsById" >> beam.Map(_key_record)
        joined = {"records": keyed_records, "previous": self._previous} | "JoinById" >> beam.CoGroupByKey()
        selected = joined | "Classify" >> beam.ParDo(_ClassifyFn(self._model, self._with_sequence)).with_outputs(
            CARRIED_TAG, DELETED_TAG, REFRESHED_TAG, main=EMBED_TAG)
        return Selected(selected[EMBED_TAG], selected[CARRIED_TAG], selected[DELETED_TAG], selected[REFRESHED_TAG])


def complete_rows(rows, selected: Selected, columns):
    """Output rows (records.output_row) of what a run embedded -> its complete set: those and the records it
    carries forward, as rows over `columns`."""
    carried = selected.carried_forward | "CarriedToOutputRow" >> beam.Map(carried_row, columns)
    return (rows, carried) | "CompleteSet" >> beam.Flatten()


def changed_rows(rows, selected: Selected, columns):
    """Output rows of what a run embedded -> those and the carried records whose kept fields changed: all that a
    sink taking only changes (Vertex AI, whose restricts are kept fields) must get."""
    refreshed = selected.refreshed | "RefreshedToOutputRow" >> beam.Map(carried_row, columns)
    return (rows, refreshed) | "ChangedSet" >> beam.Flatten()


def removed_ids(previous, complete):
    """The ids of the earlier output (ReadPrevious's (document id, _Previous) pairs) not in the complete set (output
    rows): with chunks, every chunk of a vanished document and the stale chunks of a shrunk one."""
    earlier_ids = previous | "EarlierIds" >> beam.Map(_earlier_id)
    current_ids = complete | "CurrentIds" >> beam.Map(_current_id)
    return ((earlier_ids, current_ids)
            | "AllIds" >> beam.Flatten()
            | "GroupIds" >> beam.GroupByKey()
            | "OnlyEarlier" >> beam.FlatMap(_only_earlier))


def _earlier_id(element) -> tuple[str, str]:
    return element[1].id, "earlier"


def _current_id(row: dict) -> tuple[str, str]:
    return row["id"], "current"


def _only_earlier(element) -> list[str]:
    return [] if "current" in element[1] else [element[0]]


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


def run_table(table: Table, run_id: str) -> Table:
    """The table a run of an incremental BigQuery run loads its complete set into: TABLE__run_RUNID.

    Table names take no '.', so a run id's dots become underscores.
    """
    return Table(table.project, table.dataset, f"{table.table}{RUN_TABLE_INFIX}{run_id.replace('.', '_')}")


def merge_sql(table: Table, run: Table, chunks: bool = False, kept: tuple = (), append: bool = False) -> str:
    """The MERGE that makes `table` hold exactly the rows of `run` (one per id), touching only what differs.

    A row is kept when every SCHEMA column but the embedding is equal (a carried-forward row keeps its
    embedded_at and run_id, a re-embedded one gets new ones), so unchanged rows are left alone, and changed,
    deleted and duplicated ones are deleted. The run table holds one row per record; an id the corpus holds
    twice keeps its most recently embedded row. With `chunks` the rows are chunks (schema(chunks)'s columns): a
    changed document's stale chunks differ in content_hash and are deleted. chunk_text, like the embedding,
    follows from the others and is not compared (it may be NULL). Kept fields (--keep_fields) are compared too, so
    a row whose field changed is replaced: NULLs as equal, lists by their JSON text.

    With `append` (an appending run, no --previous_output) nothing is deleted: a row is inserted unless the table
    holds one with the same id, content hash, model and kept fields already (whatever its embedded_at and run_id),
    so a rerun adds no row, and a changed record adds its new row beside its earlier ones.
    """
    columns = [name for name, _, _ in schema(chunks, kept)]
    kept_names = {column.name for column in kept}
    ignored = ("embedding", "chunk_text") + (("embedded_at", "run_id") if append else ())
    keys = [name for name in columns if name not in ignored and name not in kept_names]
    compared = [f"current.{key} = run.{key}" for key in keys] + [_same_field(column) for column in kept]
    listed = ", ".join(columns)
    return (
        f"MERGE `{table.table_id}` AS current\n"
        f"USING (\n"
        f"  SELECT {listed}\n"
        f"  FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY id ORDER BY embedded_at DESC, content_hash DESC) AS copy\n"
        f"        FROM `{run.table_id}`)\n"
        f"  WHERE copy = 1\n"
        f") AS run\n"
        f"ON {' AND '.join(compared)}\n"
        f"WHEN NOT MATCHED BY TARGET THEN\n"
        f"  INSERT ({listed}) VALUES ({', '.join(f'run.{name}' for name in columns)})"
        + ("" if append else "\nWHEN NOT MATCHED BY SOURCE THEN DELETE"))


def _same_field(column) -> str:
    if column.type.startswith("list<"):
        return f"TO_JSON_STRING(current.{column.name}) = TO_JSON_STRING(run.{column.name})"
    return f"current.{column.name} IS NOT DISTINCT FROM run.{column.name}"


class _MergeFn(beam.DoFn):
    """Once every load job into the run table is done: checks its row count, MERGEs it into the table, drops it."""

    def __init__(self, table: Table, run: Table, billing_project: str | None, chunks: bool = False,
                 kept: tuple = (), append: bool = False):
        self._table, self._run, self._billing_project, self._chunks = table, run, billing_project, chunks
        self._kept, self._append = kept, append
        self._merged = counter("bigquery_rows_changed")

    def setup(self):
        from google.cloud import bigquery

        self._bigquery = bigquery
        self._client = bigquery.Client(project=self._billing_project or self._table.project)

    def process(self, expected_rows, unused_load_jobs, unused_copy_jobs, unused_verdict=None):
        from google.api_core import exceptions

        bigquery, client = self._bigquery, self._client
        columns = [bigquery.SchemaField(name, type_, mode=mode)
                   for name, type_, mode in schema(self._chunks, self._kept)]
        if expected_rows == 0:
            # No rows means no load job, so nothing replaced what an earlier attempt may have left.
            client.delete_table(self._run.table_id, not_found_ok=True)
            client.create_table(bigquery.Table(self._run.table_id, schema=columns))
        try:
            found = client.get_table(self._run.table_id).num_rows
        except exceptions.NotFound:
            # The loads are done (side inputs), so only a retry of this step after it dropped the table gets here.
            logging.warning("Run table %s is gone: merged into %s by an earlier attempt of this step.",
                            self._run.spec, self._table.spec)
            return
        if found != expected_rows:
            raise RuntimeError(f"Run table {self._run.spec} holds {found} rows, not the {expected_rows} this run "
                               f"wrote; {self._table.spec} is left as it was.")
        client.create_table(bigquery.Table(self._table.table_id, schema=columns), exists_ok=True)
        job = client.query(merge_sql(self._table, self._run, self._chunks, self._kept, self._append))
        job.result()
        changed = job.num_dml_affected_rows or 0
        self._merged.inc(changed)
        logging.info("Merged %d rows of %s into %s (%d rows inserted or deleted).", expected_rows, self._run.spec,
                     self._table.spec, changed)
        client.delete_table(self._run.table_id, not_found_ok=True)
        yield self._table.spec


class UpdateTable(beam.PTransform):
    """Keeps a table equal to a run's complete set: a run table, one MERGE, drop (docs/incremental.md).

    Applied to the (RecordKey, Embedding) pairs this run embedded; `carried_forward` are rows copied unchanged
    from the earlier table (ReadPreviousTable's, through SelectChanged). Load jobs stage their files under
    --temp_location (gs://). Returns the table's spec once merged.

    Args:
      table: PROJECT:DATASET.TABLE, the table kept current; created with SCHEMA when missing.
      model_fingerprint: the `model` column of embedded rows.
      run_id: the `run_id` column of embedded rows, and the run table's name.
      verdict: transforms.guard.CheckRun's output: the MERGE waits for it, and a refused run merges nothing.
      carried_forward: rows to keep as they are.
      chunks: the rows are chunks (--chunking): the table has records.CHUNK_SCHEMA's columns too.
      append: add this run's rows instead (merge_sql's `append`): no row deleted, none added twice.
    """

    def __init__(self, table: str, model_fingerprint: str, run_id: str, verdict=None, carried_forward=None,
                 chunks: bool = False, kept: tuple = (), append: bool = False):
        super().__init__()
        self._table, self._model, self._run_id = bigquery.parse_table(table), model_fingerprint, run_id
        self._verdict, self._carried_forward, self._chunks, self._kept = verdict, carried_forward, chunks, kept
        self._append = append

    def expand(self, embeddings):
        run = run_table(self._table, self._run_id)
        rows = embeddings | "ToRow" >> beam.Map(bigquery.embedded_row, self._model, self._run_id)
        if self._carried_forward is not None:
            rows = (rows, self._carried_forward) | "WithCarriedForward" >> beam.Flatten()
        written = rows | "WriteRunTable" >> beam.io.WriteToBigQuery(
            run.spec, schema=bigquery.beam_schema(self._chunks, self._kept), create_disposition="CREATE_IF_NEEDED",
            write_disposition="WRITE_TRUNCATE", method="FILE_LOADS")
        row_count = rows | "CountRows" >> beam.combiners.Count.Globally()
        # The job ids as side inputs: MergeIntoTable starts only when every load (and copy) job has finished.
        billing_project = embeddings.pipeline.options.view_as(GoogleCloudOptions).project
        gate = () if self._verdict is None else (beam.pvalue.AsSingleton(self._verdict),)
        return row_count | "MergeIntoTable" >> beam.ParDo(
            _MergeFn(self._table, run, billing_project, self._chunks, self._kept, self._append),
            beam.pvalue.AsList(written.destination_load_jobid_pairs),
            beam.pvalue.AsList(written.destination_copy_jobid_pairs), *gate)
