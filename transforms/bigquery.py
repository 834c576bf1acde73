"""BigQuery: the embeddings table's schema, rows and pre-flight checks; transforms to append, read, keep current.

Two ways to write, chosen by pipeline.run from the options:

    append (WriteBigQuery)    every run appends the rows it embedded, each with its run_id.
    current (UpdateTable)     an incremental run (--previous_output naming a table) keeps the --output_bigquery table
                              equal to its corpus's complete set, one row per id:
        1. the run's complete set (rows it embedded + rows carried forward unchanged, with their own embedded_at
           and run_id) is loaded into its own run table TABLE__run_RUNID, replacing what an earlier
           attempt of the same run id left there (load jobs with WRITE_TRUNCATE);
        2. once every load job is done and the run table holds exactly the rows the run produced, one MERGE
           statement makes TABLE equal to it: rows of the run table that TABLE lacks are inserted, rows of TABLE
           the run table lacks (changed, re-embedded, deleted ids, older duplicates) are deleted, the rest is left
           as it is (so columns of your own on unchanged rows survive);
        3. the run table is dropped.
    A MERGE is atomic, so a run that fails at any point leaves TABLE as it was (at most a stale run table, which
    the next attempt of that run id replaces). Repeating a run re-reads TABLE, finds every record unchanged and
    merges nothing. Reading goes through the BigQuery Storage Read API (Beam's ReadFromBigQuery DIRECT_READ).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.gcp.bigquery_tools import RetryStrategy
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import GoogleCloudOptions

__all__ = ["SCHEMA", "METHODS", "RUN_TABLE_INFIX", "Table", "is_table_spec", "parse_table", "schema_problems",
           "check_table", "check_previous_table", "run_table", "merge_sql", "to_row", "from_read_row", "WriteBigQuery",
           "ReadTable", "UpdateTable"]

# The table's columns, declared once: (name, type, mode). to_row() builds exactly these.
SCHEMA = (
    ("id", "STRING", "REQUIRED"),
    ("embedding", "FLOAT64", "REPEATED"),
    ("model", "STRING", "REQUIRED"),  # write.feature_spec's `model`: a fingerprint of models and settings.
    ("content_hash", "STRING", "REQUIRED"),
    ("embedded_at", "TIMESTAMP", "REQUIRED"),
    ("run_id", "STRING", "REQUIRED"),
)
# --bigquery_method values -> Beam's WriteToBigQuery methods.
METHODS = {"file_loads": "FILE_LOADS", "streaming": "STREAMING_INSERTS"}
# A current table's per-run table: TABLE__run_RUNID.
RUN_TABLE_INFIX = "__run_"

_NAMESPACE = "embeddings"
_FLAG = "--output_bigquery"
# Legacy SQL names, which the tables API returns, for the GoogleSQL names used above.
_TYPE_ALIASES = {"FLOAT64": "FLOAT", "INT64": "INTEGER", "BOOL": "BOOLEAN"}
# Project ids (optionally domain-scoped, example.com:project), then dataset and table ids, as BigQuery allows
# them. Partition decorators ($20250101) are not accepted.
_TABLE_RE = re.compile(r"(?P<project>(?:[a-z0-9-]+(?:\.[a-z0-9-]+)+:)?[a-z][a-z0-9-]*[a-z0-9])[:.]"
                       r"(?P<dataset>[A-Za-z0-9_]{1,1024})\.(?P<table>[\w-]{1,1024})")
_CHECK_SECONDS = 60.0  # Bounds the pre-flight check's retries, so a bad network fails in a minute, not ten.


class Table(NamedTuple):
    """A fully qualified BigQuery table."""

    project: str
    dataset: str
    table: str

    @property
    def spec(self) -> str:
        """PROJECT:DATASET.TABLE, as Beam's WriteToBigQuery takes it."""
        return f"{self.project}:{self.dataset}.{self.table}"

    @property
    def table_id(self) -> str:
        """PROJECT.DATASET.TABLE, as google-cloud-bigquery and GoogleSQL take it."""
        return f"{self.project}.{self.dataset}.{self.table}"


def is_table_spec(value: str) -> bool:
    """Whether a --previous_output value names a BigQuery table rather than a TFRecord prefix.

    Paths hold a '/' (or are gs://); a value without one that has a ':' or reads as PROJECT.DATASET.TABLE is a
    table (a prefix in the working directory that reads like one, say emb.v1.part, needs ./ in front).
    """
    value = value.strip()
    if "/" in value or "{" in value:
        return False
    return ":" in value or _TABLE_RE.fullmatch(value) is not None


def parse_table(spec: str, flag: str = _FLAG) -> Table:
    """PROJECT:DATASET.TABLE or PROJECT.DATASET.TABLE -> Table; ValueError naming `flag`."""
    match = _TABLE_RE.fullmatch(spec.strip())
    if not match:
        raise ValueError(f"{flag} {spec!r} is not a table: use PROJECT:DATASET.TABLE or PROJECT.DATASET.TABLE "
                         "(project ids are lower case; dataset ids are letters, digits and underscores).")
    return Table(match["project"], match["dataset"], match["table"])


def _beam_schema() -> dict:
    return {"fields": [{"name": name, "type": type_, "mode": mode} for name, type_, mode in SCHEMA]}


def schema_problems(fields) -> list[str]:
    """What stops rows of SCHEMA from being appended to a table with these columns; empty when nothing does.

    `fields` are google.cloud.bigquery SchemaFields (anything with name, field_type and mode). Every column
    of SCHEMA must be there with its type; `embedding` must be REPEATED and the others not; they may be
    NULLABLE rather than REQUIRED. Other columns are fine if NULLABLE or REPEATED (left empty).
    """
    existing = {field.name: field for field in fields}
    problems = []
    for name, type_, mode in SCHEMA:
        field = existing.pop(name, None)
        if field is None:
            problems.append(f"no column {name}")
            continue
        found_type = _TYPE_ALIASES.get(field.field_type.upper(), field.field_type.upper())
        if found_type != _TYPE_ALIASES.get(type_, type_):
            problems.append(f"{name} is {field.field_type}, not {type_}")
        found_mode = (field.mode or "NULLABLE").upper()
        if (found_mode == "REPEATED") != (mode == "REPEATED"):
            problems.append(f"{name} is {found_mode}, not {mode}")
    problems += [f"extra column {name} is REQUIRED" for name, field in existing.items()
                 if (field.mode or "NULLABLE").upper() == "REQUIRED"]
    return problems


def _get_table(table: Table, billing_project: str | None, flag: str, missing_hint: str):
    """The table's metadata, or None when it does not exist; ValueError naming `flag` when its dataset is missing
    or it cannot be looked up."""
    import google.auth.exceptions
    from google.api_core import exceptions
    from google.cloud import bigquery

    try:
        client = bigquery.Client(project=billing_project or table.project)
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise ValueError(f"{flag} {table.spec} needs Google Cloud credentials "
                         f"(gcloud auth application-default login): {e}") from e
    retry = bigquery.DEFAULT_RETRY.with_deadline(_CHECK_SECONDS)
    try:
        try:
            return client.get_table(table.table_id, retry=retry, timeout=_CHECK_SECONDS)
        except exceptions.NotFound:
            dataset = f"{table.project}:{table.dataset}"
            try:
                client.get_dataset(f"{table.project}.{table.dataset}", retry=retry, timeout=_CHECK_SECONDS)
            except exceptions.NotFound:
                raise ValueError(f"{flag} {table.spec}: dataset {dataset} does not exist; create it first "
                                 f"(bq mk --dataset {dataset}).{missing_hint}") from None
            return None
    except exceptions.GoogleAPIError as e:
        raise ValueError(f"{flag} {table.spec}: cannot check the table: {e}") from e


def _check_schema(existing, table: Table, flag: str) -> None:
    if existing.table_type not in (None, "TABLE"):
        raise ValueError(f"{flag} {table.spec} is a {existing.table_type}, not a table.")
    problems = schema_problems(existing.schema)
    if problems:
        wanted = ", ".join(f"{name} {type_} {mode}" for name, type_, mode in SCHEMA)
        raise ValueError(f"{flag} {table.spec} exists with an incompatible schema ({'; '.join(problems)}). "
                         f"Write to a new table, or give this one the columns {wanted}.")


def check_table(table: Table, billing_project: str | None = None) -> bool:
    """Checks, before the job starts, that rows can be written to `table`; returns whether it exists.

    A missing table is fine (the job creates it) but its dataset must exist. An existing table must accept
    SCHEMA's rows (see schema_problems). Problems raise ValueError naming --output_bigquery.
    """
    existing = _get_table(table, billing_project, _FLAG, " The table is created when missing.")
    if existing is None:
        return False
    _check_schema(existing, table, _FLAG)
    return True


def check_previous_table(table: Table, output_table: Table, billing_project: str | None = None) -> bool:
    """Checks the table an incremental run reads (--previous_output); returns whether there is one to read.

    The table the run keeps current (`output_table`) may be missing: that is the first run, which embeds
    everything. Any other table must exist, be a table (the Storage Read API reads no views) and have SCHEMA's
    columns. Problems raise ValueError naming --previous_output.
    """
    flag = "--previous_output"
    existing = _get_table(table, billing_project, flag, "")
    if existing is None:
        if table == output_table:
            return False
        raise ValueError(f"{flag} {table.spec} does not exist. Name the table the earlier runs kept current (usually "
                         f"the --output_bigquery table, {output_table.spec}), which may be missing on the first run.")
    _check_schema(existing, table, flag)
    return True


def run_table(table: Table, run_id: str) -> Table:
    """The table a run of an incremental BigQuery run loads its complete set into: TABLE__run_RUNID.

    Table names take no '.', so a run id's dots become underscores.
    """
    return Table(table.project, table.dataset, f"{table.table}{RUN_TABLE_INFIX}{run_id.replace('.', '_')}")


def merge_sql(table: Table, run: Table) -> str:
    """The MERGE that makes `table` hold exactly the rows of `run` (one per id), touching only what differs.

    A row is kept when every SCHEMA column but the embedding is equal (a carried-forward row keeps its
    embedded_at and run_id, a re-embedded one gets new ones), so unchanged rows are left alone, and changed,
    deleted and duplicated ones are deleted. The run table holds one row per record; an id the corpus holds
    twice keeps its most recently embedded row.
    """
    columns = [name for name, _, _ in SCHEMA]
    keys = [name for name in columns if name != "embedding"]
    listed = ", ".join(columns)
    return (
        f"MERGE `{table.table_id}` AS current\n"
        f"USING (\n"
        f"  SELECT {listed}\n"
        f"  FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY id ORDER BY embedded_at DESC, content_hash DESC) AS copy\n"
        f"        FROM `{run.table_id}`)\n"
        f"  WHERE copy = 1\n"
        f") AS run\n"
        f"ON {' AND '.join(f'current.{key} = run.{key}' for key in keys)}\n"
        f"WHEN NOT MATCHED BY TARGET THEN\n"
        f"  INSERT ({listed}) VALUES ({', '.join(f'run.{name}' for name in columns)})\n"
        f"WHEN NOT MATCHED BY SOURCE THEN DELETE")


def to_row(key: tuple, vector, model: str, run_id: str, embedded_at: datetime.datetime) -> dict:
    """One table row (SCHEMA's columns) for an embedded record keyed (id, content_hash, source)."""
    record_id, content_hash, _ = key
    return {
        "id": record_id,
        "embedding": [float(x) for x in vector],
        "model": model,
        "content_hash": content_hash,
        "embedded_at": _timestamp_text(embedded_at),
        "run_id": run_id,
    }


def _timestamp_text(when: datetime.datetime) -> str:
    """BigQuery's canonical text form of a TIMESTAMP, which load jobs and streaming inserts both accept."""
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def from_read_row(row: dict, source: str) -> dict:
    """A row read back from a table (ReadTable) as to_row would have built it, ready to be loaded again.

    Raises:
        ValueError: naming `source`, when a SCHEMA column other than the embedding is empty.
    """
    missing = [name for name, _, _ in SCHEMA if name != "embedding" and row.get(name) in (None, "")]
    if missing:
        raise ValueError(f"{source} holds a row without {', '.join(missing)} (id {row.get('id')!r}); is it a table "
                         "this pipeline wrote?")
    embedded_at = row["embedded_at"]
    return {
        "id": row["id"],
        "embedding": [float(x) for x in row.get("embedding") or ()],
        "model": row["model"],
        "content_hash": row["content_hash"],
        "embedded_at": _timestamp_text(embedded_at) if isinstance(embedded_at, datetime.datetime) else embedded_at,
        "run_id": row["run_id"],
    }


class _ToRow(beam.DoFn):
    """((id, content_hash, source), Embedding) -> row; counts embeddings when BigQuery is the only sink."""

    def __init__(self, model_fingerprint: str, run_id: str, count: bool):
        self._model, self._run_id, self._count = model_fingerprint, run_id, count
        self._embedded = Metrics.counter(_NAMESPACE, "embedded")
        self._tokens = Metrics.counter(_NAMESPACE, "tokens_embedded")
        self._truncated = Metrics.counter(_NAMESPACE, "truncated")

    def process(self, element):
        key, embedding = element
        if self._count:
            self._embedded.inc()
            self._tokens.inc(embedding.tokens)
            if embedding.truncated:
                self._truncated.inc()
        yield to_row(key, embedding.vector, self._model, self._run_id, datetime.datetime.now(datetime.timezone.utc))


def _failed_row_json(table_spec: str, row: dict, errors) -> str:
    """A dead-letter line (the shape of read.failure_to_json) for a row BigQuery refused; no embedding."""
    record = {key: value for key, value in row.items() if key != "embedding"}
    return json.dumps({"source": table_spec, "reason": "bigquery_insert_error", "detail": json.dumps(errors)[:1000],
                       "record": json.dumps(record, ensure_ascii=False)[:1000]}, ensure_ascii=False)


def _passed(row: dict, unused_verdict) -> dict:
    return row


class WriteBigQuery(beam.PTransform):
    """Appends ((id, content_hash, source), Embedding) pairs to a BigQuery table as SCHEMA rows.

    Returns the dead-letter JSON lines of rows BigQuery refused (streaming inserts only; a failed load job
    fails the pipeline instead, and an empty collection is returned).

    Args:
      table: PROJECT:DATASET.TABLE.
      model_fingerprint: the `model` column.
      run_id: the `run_id` column: tells this run's rows from earlier ones.
      method: "file_loads" (load jobs through --temp_location) or "streaming" (streaming inserts).
      table_exists: the table exists already (check_table): append with its own schema, which may differ
        from SCHEMA as schema_problems allows. Otherwise it is created with SCHEMA.
      count: count embedded records and tokens (when no other sink does).
      verdict: transforms.guard.CheckRun's output: rows are appended only after the run passed its checks, so a
        refused run appends nothing.
    """

    def __init__(self, table: str, model_fingerprint: str, run_id: str, method: str = "file_loads",
                 table_exists: bool = False, count: bool = False, verdict=None):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, not {method!r}.")
        self._table, self._model, self._run_id = table, model_fingerprint, run_id
        self._method, self._table_exists, self._count = method, table_exists, count
        self._verdict = verdict

    def expand(self, embeddings):
        rows = embeddings | "ToRow" >> beam.ParDo(_ToRow(self._model, self._run_id, self._count))
        if self._verdict is not None:
            rows = rows | "AfterCheck" >> beam.Map(_passed, beam.pvalue.AsSingleton(self._verdict))
        result = rows | "Write" >> beam.io.WriteToBigQuery(
            self._table,
            schema=None if self._table_exists else _beam_schema(),
            create_disposition="CREATE_NEVER" if self._table_exists else "CREATE_IF_NEEDED",
            write_disposition="WRITE_APPEND",
            method=METHODS[self._method],
            # Retry only what may pass next time; rows refused for good become dead letters below.
            insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR)
        if self._method != "streaming":
            return embeddings.pipeline | "NoFailedRows" >> beam.Create([])
        return result.failed_rows_with_errors | "FailedRowToJson" >> beam.MapTuple(_failed_row_json)


class ReadTable(beam.PTransform):
    """Reads a table's SCHEMA columns (other columns are left out) as rows shaped like to_row's (from_read_row).

    Uses the BigQuery Storage Read API (ReadFromBigQuery's DIRECT_READ): no export job, no files under
    --temp_location, only the columns needed.
    """

    def __init__(self, table: str):
        super().__init__()
        self._table = parse_table(table)

    def expand(self, pbegin):
        from apache_beam.io.gcp.internal.clients.bigquery import DatasetReference

        return (pbegin
                | "Read" >> beam.io.ReadFromBigQuery(
                    table=self._table.spec, method=beam.io.ReadFromBigQuery.Method.DIRECT_READ,
                    selected_fields=[name for name, _, _ in SCHEMA],
                    # Reading a whole table creates no temporary dataset. Naming the table's own dataset stops the
                    # clean-up step from listing the project's datasets by a label and deleting the matches, which
                    # needs dataset permissions and, against bqemulator (it ignores the label filter), deletes
                    # every dataset; it now only tries to delete a temporary table that was never created.
                    temp_dataset=DatasetReference(projectId=self._table.project, datasetId=self._table.dataset))
                | "ToRow" >> beam.Map(from_read_row, self._table.spec))


class _MergeFn(beam.DoFn):
    """Once every load job into the run table is done: checks its row count, MERGEs it into the table, drops it."""

    def __init__(self, table: Table, run: Table, billing_project: str | None):
        self._table, self._run, self._billing_project = table, run, billing_project
        self._merged = Metrics.counter(_NAMESPACE, "bigquery_rows_changed")

    def setup(self):
        from google.cloud import bigquery

        self._bigquery = bigquery
        self._client = bigquery.Client(project=self._billing_project or self._table.project)

    def process(self, expected_rows, unused_load_jobs, unused_copy_jobs, unused_verdict=None):
        from google.api_core import exceptions

        bigquery, client = self._bigquery, self._client
        schema = [bigquery.SchemaField(name, type_, mode=mode) for name, type_, mode in SCHEMA]
        if expected_rows == 0:
            # No rows means no load job, so nothing replaced what an earlier attempt may have left.
            client.delete_table(self._run.table_id, not_found_ok=True)
            client.create_table(bigquery.Table(self._run.table_id, schema=schema))
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
        client.create_table(bigquery.Table(self._table.table_id, schema=schema), exists_ok=True)
        job = client.query(merge_sql(self._table, self._run))
        job.result()
        changed = job.num_dml_affected_rows or 0
        self._merged.inc(changed)
        logging.info("Merged %d rows of %s into %s (%d rows inserted or deleted).", expected_rows, self._run.spec,
                     self._table.spec, changed)
        client.delete_table(self._run.table_id, not_found_ok=True)
        yield self._table.spec


class UpdateTable(beam.PTransform):
    """Keeps a table equal to a run's complete set: see the module docstring (run table, MERGE, drop).

    Applied to ((id, content_hash, source), Embedding) pairs this run embedded; applied to a pair (embeddings,
    carried_forward) instead, it also writes `carried_forward`, rows copied unchanged from the earlier table
    (ReadTable's, through transforms.incremental.SelectChanged).
    Load jobs stage their files under --temp_location (gs://). Returns the table's spec once merged.

    Args:
      table: PROJECT:DATASET.TABLE, the table kept current; created with SCHEMA when missing.
      model_fingerprint: the `model` column of embedded rows.
      run_id: the `run_id` column of embedded rows, and the run table's name.
      count: count embedded records and tokens (when no other sink does).
      verdict: transforms.guard.CheckRun's output: the MERGE waits for it, and a refused run merges nothing.
    """

    def __init__(self, table: str, model_fingerprint: str, run_id: str, count: bool = True, verdict=None):
        super().__init__()
        self._table, self._model, self._run_id, self._count = parse_table(table), model_fingerprint, run_id, count
        self._verdict = verdict

    def expand(self, embeddings_or_pair):
        embeddings, carried_forward = (embeddings_or_pair if isinstance(embeddings_or_pair, tuple)
                                       else (embeddings_or_pair, None))
        run = run_table(self._table, self._run_id)
        rows = embeddings | "ToRow" >> beam.ParDo(_ToRow(self._model, self._run_id, self._count))
        if carried_forward is not None:
            rows = (rows, carried_forward) | "WithCarriedForward" >> beam.Flatten()
        written = rows | "WriteRunTable" >> beam.io.WriteToBigQuery(
            run.spec, schema=_beam_schema(), create_disposition="CREATE_IF_NEEDED",
            write_disposition="WRITE_TRUNCATE", method="FILE_LOADS")
        row_count = rows | "CountRows" >> beam.combiners.Count.Globally()
        # The job ids as side inputs: MergeIntoTable starts only when every load (and copy) job has finished.
        billing_project = embeddings.pipeline.options.view_as(GoogleCloudOptions).project
        gate = () if self._verdict is None else (beam.pvalue.AsSingleton(self._verdict),)
        return row_count | "MergeIntoTable" >> beam.ParDo(
            _MergeFn(self._table, run, billing_project),
            beam.pvalue.AsList(written.destination_load_jobid_pairs),
            beam.pvalue.AsList(written.destination_copy_jobid_pairs), *gate)
