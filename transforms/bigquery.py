"""BigQuery: parsing and checking a table before the run, appending embeddings, reading a table back.

The rows' columns are transforms.records.SCHEMA. Keeping a table equal to a corpus is transforms.incremental's
(UpdateTable).
"""

from __future__ import annotations

import datetime
import re
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.gcp.bigquery_tools import RetryStrategy

from transforms.records import from_read_row, refused_row_failure, schema, to_row

__all__ = ["METHODS", "Table", "is_table_spec", "parse_table", "schema_problems", "beam_schema", "check_table",
           "check_previous_table", "embedded_row", "WriteBigQuery", "ReadTable"]

# --bigquery_method values -> Beam's WriteToBigQuery methods.
METHODS = {"file_loads": "FILE_LOADS", "streaming": "STREAMING_INSERTS"}
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


def beam_schema(chunks: bool = False, kept: tuple = ()) -> dict:
    return {"fields": [{"name": name, "type": type_, "mode": mode} for name, type_, mode in schema(chunks, kept)]}


def schema_problems(fields, chunks: bool = False, kept: tuple = ()) -> list[str]:
    """What stops rows of schema(chunks) from being appended to a table with these columns; empty when nothing
    does.

    `fields` are google.cloud.bigquery SchemaFields (anything with name, field_type and mode). Every column
    of SCHEMA must be there with its type; `embedding` must be REPEATED and the others not; they may be
    NULLABLE rather than REQUIRED. Other columns are fine if NULLABLE or REPEATED (left empty).
    """
    existing = {field.name: field for field in fields}
    problems = []
    for name, type_, mode in schema(chunks, kept):
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


def _check_schema(existing, table: Table, flag: str, chunks: bool, kept: tuple) -> None:
    if existing.table_type not in (None, "TABLE"):
        raise ValueError(f"{flag} {table.spec} is a {existing.table_type}, not a table.")
    holds_chunks = any(field.name == "doc_id" for field in existing.schema)
    if holds_chunks != chunks:
        what = ("holds chunks (it has a doc_id column) and this run embeds whole records: pass the --chunking it "
                "was written with" if holds_chunks else
                "holds whole records (no chunk columns) and this --chunking run writes chunks")
        raise ValueError(f"{flag} {table.spec} {what}, or write to another table.")
    problems = schema_problems(existing.schema, chunks, kept)
    if problems:
        wanted = ", ".join(f"{name} {type_} {mode}" for name, type_, mode in schema(chunks, kept))
        raise ValueError(f"{flag} {table.spec} exists with an incompatible schema ({'; '.join(problems)}). "
                         f"Write to a new table, or give this one the columns {wanted}.")


def check_table(table: Table, billing_project: str | None = None, chunks: bool = False, kept: tuple = ()) -> bool:
    """Checks, before the job starts, that rows can be written to `table`; returns whether it exists.

    A missing table is fine (the job creates it) but its dataset must exist. An existing table must accept
    SCHEMA's rows (see schema_problems). Problems raise ValueError naming --output_bigquery.
    """
    existing = _get_table(table, billing_project, _FLAG, " The table is created when missing.")
    if existing is None:
        return False
    _check_schema(existing, table, _FLAG, chunks, kept)
    return True


def check_previous_table(table: Table, output_table: Table, billing_project: str | None = None,
                         chunks: bool = False, kept: tuple = ()) -> bool:
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
    _check_schema(existing, table, flag, chunks, kept)
    return True


def embedded_row(element, model_fingerprint: str, run_id: str) -> dict:
    """(RecordKey, Embedding) -> its row (records.SCHEMA), embedded now."""
    key, embedding = element
    return to_row(key, embedding.vector, model_fingerprint, run_id, datetime.datetime.now(datetime.timezone.utc))


def _passed(row: dict, unused_verdict) -> dict:
    return row


class WriteBigQuery(beam.PTransform):
    """Appends (RecordKey, Embedding) pairs to a BigQuery table as rows of transforms.records.SCHEMA.

    Returns the Failures of rows BigQuery refused (streaming inserts only; a failed load job
    fails the pipeline instead, and an empty collection is returned).

    Args:
      table: PROJECT:DATASET.TABLE.
      model_fingerprint: the `model` column.
      run_id: the `run_id` column: tells this run's rows from earlier ones.
      method: "file_loads" (load jobs through --temp_location) or "streaming" (streaming inserts).
      table_exists: the table exists already (check_table): append with its own schema, which may differ
        from SCHEMA as schema_problems allows. Otherwise it is created with SCHEMA.
      verdict: transforms.guard.CheckRun's output: rows are appended only after the run passed its checks, so a
        refused run appends nothing.
    """

    def __init__(self, table: str, model_fingerprint: str, run_id: str, method: str = "file_loads",
                 table_exists: bool = False, verdict=None, chunks: bool = False, kept: tuple = ()):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, not {method!r}.")
        self._table, self._model, self._run_id = table, model_fingerprint, run_id
        self._method, self._table_exists = method, table_exists
        self._verdict, self._chunks, self._kept = verdict, chunks, kept

    def expand(self, embeddings):
        rows = embeddings | "ToRow" >> beam.Map(embedded_row, self._model, self._run_id)
        if self._verdict is not None:
            rows = rows | "AfterCheck" >> beam.Map(_passed, beam.pvalue.AsSingleton(self._verdict))
        result = rows | "Write" >> beam.io.WriteToBigQuery(
            self._table,
            schema=None if self._table_exists else beam_schema(self._chunks, self._kept),
            create_disposition="CREATE_NEVER" if self._table_exists else "CREATE_IF_NEEDED",
            write_disposition="WRITE_APPEND",
            method=METHODS[self._method],
            # Retry only what may pass next time; rows refused for good become dead letters below.
            insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR)
        if self._method != "streaming":
            return embeddings.pipeline | "NoFailedRows" >> beam.Create([])
        return result.failed_rows_with_errors | "FailedRowToFailure" >> beam.MapTuple(refused_row_failure)


class ReadTable(beam.PTransform):
    """Reads a table's SCHEMA columns (other columns are left out) as rows shaped like to_row's (from_read_row).

    Uses the BigQuery Storage Read API (ReadFromBigQuery's DIRECT_READ): no export job, no files under
    --temp_location, only the columns needed.
    """

    def __init__(self, table: str, chunks: bool = False, kept: tuple = ()):
        super().__init__()
        self._table, self._chunks, self._kept = parse_table(table), chunks, kept

    def expand(self, pbegin):
        from apache_beam.io.gcp.internal.clients.bigquery import DatasetReference

        return (pbegin
                | "Read" >> beam.io.ReadFromBigQuery(
                    table=self._table.spec, method=beam.io.ReadFromBigQuery.Method.DIRECT_READ,
                    selected_fields=[name for name, _, _ in schema(self._chunks, self._kept)],
                    # Reading a whole table creates no temporary dataset. Naming the table's own dataset stops the
                    # clean-up step from listing the project's datasets by a label and deleting the matches, which
                    # needs dataset permissions and, against bqemulator (it ignores the label filter), deletes
                    # every dataset; it now only tries to delete a temporary table that was never created.
                    temp_dataset=DatasetReference(projectId=self._table.project, datasetId=self._table.dataset))
                | "ToRow" >> beam.Map(from_read_row, self._table.spec, self._chunks, self._kept))
