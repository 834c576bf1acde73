"""BigQuery sink: the embeddings table's schema, its row builder, the write transform and a pre-flight check."""

from __future__ import annotations

import datetime
import json
import re
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.gcp.bigquery_tools import RetryStrategy
from apache_beam.metrics import Metrics

__all__ = ["SCHEMA", "METHODS", "Table", "parse_table", "schema_problems", "check_table", "to_row", "WriteBigQuery"]

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


def parse_table(spec: str) -> Table:
    """PROJECT:DATASET.TABLE or PROJECT.DATASET.TABLE -> Table; ValueError naming --output_bigquery."""
    match = _TABLE_RE.fullmatch(spec.strip())
    if not match:
        raise ValueError(f"{_FLAG} {spec!r} is not a table: use PROJECT:DATASET.TABLE or PROJECT.DATASET.TABLE "
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


def check_table(table: Table, billing_project: str | None = None) -> bool:
    """Checks, before the job starts, that rows can be written to `table`; returns whether it exists.

    A missing table is fine (the job creates it) but its dataset must exist. An existing table must accept
    SCHEMA's rows (see schema_problems). Problems raise ValueError naming --output_bigquery.
    """
    import google.auth.exceptions
    from google.api_core import exceptions
    from google.cloud import bigquery

    try:
        client = bigquery.Client(project=billing_project or table.project)
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise ValueError(f"{_FLAG} {table.spec} needs Google Cloud credentials "
                         f"(gcloud auth application-default login): {e}") from e
    retry = bigquery.DEFAULT_RETRY.with_deadline(_CHECK_SECONDS)
    try:
        try:
            existing = client.get_table(table.table_id, retry=retry, timeout=_CHECK_SECONDS)
        except exceptions.NotFound:
            dataset = f"{table.project}:{table.dataset}"
            try:
                client.get_dataset(f"{table.project}.{table.dataset}", retry=retry, timeout=_CHECK_SECONDS)
            except exceptions.NotFound:
                raise ValueError(f"{_FLAG} {table.spec}: dataset {dataset} does not exist; create it first "
                                 f"(bq mk --dataset {dataset}). The table is created when missing.") from None
            return False
    except exceptions.GoogleAPIError as e:
        raise ValueError(f"{_FLAG} {table.spec}: cannot check the table: {e}") from e
    if existing.table_type not in (None, "TABLE"):
        raise ValueError(f"{_FLAG} {table.spec} is a {existing.table_type}, not a table.")
    problems = schema_problems(existing.schema)
    if problems:
        wanted = ", ".join(f"{name} {type_} {mode}" for name, type_, mode in SCHEMA)
        raise ValueError(f"{_FLAG} {table.spec} exists with an incompatible schema ({'; '.join(problems)}). "
                         f"Write to a new table, or give this one the columns {wanted}.")
    return True


def to_row(key: tuple, vector, model: str, run_id: str, embedded_at: datetime.datetime) -> dict:
    """One table row (SCHEMA's columns) for an embedded record keyed (id, content_hash, source)."""
    record_id, content_hash, _ = key
    return {
        "id": record_id,
        "embedding": [float(x) for x in vector],
        "model": model,
        "content_hash": content_hash,
        # BigQuery's canonical text form, which load jobs and streaming inserts both accept.
        "embedded_at": embedded_at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC"),
        "run_id": run_id,
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
    """

    def __init__(self, table: str, model_fingerprint: str, run_id: str, method: str = "file_loads",
                 table_exists: bool = False, count: bool = False):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, not {method!r}.")
        self._table, self._model, self._run_id = table, model_fingerprint, run_id
        self._method, self._table_exists, self._count = method, table_exists, count

    def expand(self, embeddings):
        rows = embeddings | "ToRow" >> beam.ParDo(_ToRow(self._model, self._run_id, self._count))
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
