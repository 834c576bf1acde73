"""PostgreSQL with pgvector (AlloyDB and Cloud SQL for PostgreSQL alike): the table checked before the run, rows
staged by id in bundle-sized transactions and merged with the deletions in one transaction after them, an optional
vector index built after loading.

Written in Python with psycopg rather than with Beam's `apache_beam.ml.rag.ingestion` writers: those reach
PostgreSQL through a Java JDBC expansion service, which needs a JVM that a Python worker image does not have
(and Java artifacts fetched at job submission).

Rows are transforms.records' output rows over a list of columns (records.output_columns): every column but the
embedding maps to a PostgreSQL type through `PG_TYPES`, so a new column of the record model needs no change here.
The URI's password (or PGPASSWORD's) is never logged: every message shows the URI through `mask`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import urllib.parse

import apache_beam as beam
import numpy as np

from transforms.limits import SinkLimits
from transforms.records import Column, counter
from transforms.sinks import Loaded

__all__ = ["PostgresSink", "load", "PG_TYPES", "mask", "has_password",
           "column_type", "parse_table_name", "prepare_table", "WritePostgres",
           "connect", "stage_table", "DEFAULT_BATCH_ROWS"]

# records' column types -> PostgreSQL's; "vector" becomes vector(DIM).
PG_TYPES = {"string": "text", "int64": "bigint", "float64": "double precision", "bool": "boolean", "json": "jsonb",
            "list<string>": "text[]", "list<int64>": "bigint[]", "list<float64>": "double precision[]",
            "list<bool>": "boolean[]"}
DEFAULT_BATCH_ROWS = 1000  # Rows per COPY and upsert transaction (fewer at the end of a bundle).
_FLAG = "--output_postgres"
_CONNECT_SECONDS = 15
_PREPARE_LOCK = 0x656D62656464  # Any fixed bigint: the advisory lock prepare_table holds while it creates.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def mask(conninfo: str) -> str:
    """The connection string with its password, if any, replaced by ***: the only form of it that reaches a
    message or a log. Read with psycopg's own parser, so a URI (user:PASSWORD@, ?password=) and a keyword/value
    string (password=... or password='...') are both understood; one it cannot parse is not shown at all."""
    password = _password(conninfo)
    if password is _UNPARSEABLE:
        return "<a connection string that psycopg cannot parse>"
    if not password:
        return conninfo
    masked = _mask_uri(conninfo) if conninfo.startswith(_URI_SCHEMES) else _mask_keywords(conninfo)
    if password in masked or _password(masked) not in ("***", None):  # Never show what the rebuild missed.
        return "<a connection string with a password>"
    return masked


_URI_SCHEMES = ("postgresql://", "postgres://")
_UNPARSEABLE = object()


def _password(conninfo: str):
    """The password a connection string holds (None: none), or _UNPARSEABLE."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(conninfo).get("password")
    except ProgrammingError:
        return _UNPARSEABLE


def _mask_uri(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc
    if parts.password is not None:
        user_info, host = netloc.rsplit("@", 1)
        netloc = f"{user_info.split(':', 1)[0]}:***@{host}"
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query or "")
    # Built by hand: urlunsplit drops the "//" of a URI with an empty host (postgresql:///db?host=/socket).
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "") + (
        f"#{parts.fragment}" if parts.fragment else "")


def _mask_keywords(conninfo: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    return make_conninfo(**{**conninfo_to_dict(conninfo), "password": "***"})


def has_password(conninfo: str) -> bool:
    """Whether the connection string holds a password (which a job's options must never carry)."""
    password = _password(conninfo)
    return password is not _UNPARSEABLE and bool(password)


def _scrub(text: str, uri: str) -> str:
    """An error's text without the connection string's password (libpq messages do not quote it; belt and
    braces)."""
    password = _password(uri)
    text = " ".join(str(text).split())
    return text.replace(password, "***") if password and password is not _UNPARSEABLE else text


def column_type(column: Column, dimension: int) -> str:
    """The PostgreSQL type of an output column."""
    return f"vector({dimension})" if column.type == "vector" else PG_TYPES[column.type]


def parse_table_name(name: str) -> tuple[str, ...]:
    """TABLE or SCHEMA.TABLE -> its parts; ValueError naming --postgres_table for anything else."""
    parts = tuple(name.split("."))
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise ValueError(f"--postgres_table {name!r} is not a table name: use TABLE or SCHEMA.TABLE, letters, digits "
                         "and underscores, starting with a letter.")
    return parts


def connect(uri: str):
    """A psycopg connection (autocommit off); credentials from the URI or the PG* environment variables."""
    import psycopg

    return psycopg.connect(uri, connect_timeout=_CONNECT_SECONDS)


def _table_sql(parts: tuple[str, ...]):
    from psycopg import sql

    return sql.Identifier(*parts)


def prepare_table(uri: str, table: str, columns: tuple[Column, ...], dimension: int) -> bool:
    """Before the run: connects, makes sure of the vector extension, and creates `table` or checks it.

    A missing table is created with `id` as primary key, `embedding vector(DIM)` and the other columns typed
    (PG_TYPES). An existing one must have every column with its type and a unique index on `id` alone (the
    upsert's ON CONFLICT needs it); other columns are left alone. Returns whether the table existed.

    Raises:
        ValueError: one line naming --output_postgres (the URI masked) or --postgres_table: the server cannot be
            reached, the password is refused, the extension cannot be created, or the table does not fit.
    """
    import psycopg
    from psycopg import errors, sql

    parts = parse_table_name(table)
    where = f"{_FLAG} {mask(uri)}"
    try:
        connection = connect(uri)
    except psycopg.Error as err:
        raise ValueError(f"{where}: cannot connect: {_scrub(err, uri)}") from None
    with connection:
        try:
            # One preparation at a time per database: two runs starting at once would both find no table (or
            # extension) and race to create it, and IF NOT EXISTS does not stop the loser failing.
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_PREPARE_LOCK,))
            connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except errors.InsufficientPrivilege as err:
            raise ValueError(f"{where}: the pgvector extension is not enabled in this database and this user may not "
                             f"enable it ({_scrub(err, uri)}); ask its owner to run CREATE EXTENSION vector "
                             "once.") from None
        except psycopg.Error as err:
            raise ValueError(f"{where}: cannot enable the pgvector extension ({_scrub(err, uri)}); is pgvector "
                             "installed on the server?") from None
        found = _existing_columns(connection, parts)
        if found is None:
            definitions = sql.SQL(", ").join(
                sql.SQL("{} {}{}").format(sql.Identifier(column.name), sql.SQL(column_type(column, dimension)),
                                          sql.SQL(" PRIMARY KEY" if column.name == "id" else ""))
                for column in columns)
            try:
                connection.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(_table_sql(parts),
                                                                                        definitions))
                connection.commit()
            except psycopg.Error as err:
                raise ValueError(f"--postgres_table {table}: cannot create it in {mask(uri)}: "
                                 f"{_scrub(err, uri)}") from None
            logging.info("Created table %s in %s.", table, mask(uri))
            return False
        problems = []
        for column in columns:
            wanted = column_type(column, dimension)
            if column.name not in found:
                problems.append(f"no column {column.name} ({wanted})")
            elif found[column.name] != wanted:
                problems.append(f"{column.name} is {found[column.name]}, not {wanted}"
                                + (" (the model's vectors have another dimension)" if column.type == "vector" else ""))
        if not problems and not _id_is_unique(connection, parts):
            problems.append("no primary key or unique index on id alone")
    if problems:
        wanted = ", ".join(f"{column.name} {column_type(column, dimension)}" for column in columns)
        raise ValueError(f"--postgres_table {table} in {mask(uri)} does not fit this run: {'; '.join(problems)}. "
                         f"Write to a new table, or give this one the columns {wanted}.")
    return True


def _existing_columns(connection, parts: tuple[str, ...]) -> dict[str, str] | None:
    """{column: type as format_type spells it} of the table, or None when there is none."""
    name = ".".join(f'"{part}"' for part in parts)
    oid = connection.execute("SELECT to_regclass(%s)::oid", (name,)).fetchone()[0]
    if oid is None:
        return None
    rows = connection.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                              "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", (oid,)).fetchall()
    return dict(rows)


def _id_is_unique(connection, parts: tuple[str, ...]) -> bool:
    name = ".".join(f'"{part}"' for part in parts)
    return connection.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indnkeyatts = 1 "
        "AND a.attname = 'id' AND i.indpred IS NULL)", (name,)).fetchone()[0]


def _vector_text(values) -> str:
    """pgvector's text form of a vector: [x,y,...]."""
    return "[" + ",".join(repr(float(x)) for x in values) + "]"


class _BatchedFn(beam.DoFn):
    """Buffers a bundle's elements and hands them to `_write` in batches of `batch_rows`, on one connection per
    worker."""

    def __init__(self, uri: str, table: str, batch_rows: int):
        self._uri, self._table, self._batch_rows = uri, table, batch_rows

    def setup(self):
        self._connection = connect(self._uri)

    def start_bundle(self):
        self._batch = []

    def process(self, element, unused_verdict=None):
        self._batch.append(element)
        if len(self._batch) >= self._batch_rows:
            self._flush()

    def finish_bundle(self):
        self._flush()

    def _flush(self):
        if self._batch:
            self._write(self._batch)
        self._batch = []

    def _write(self, batch: list) -> None:
        raise NotImplementedError

    def teardown(self):
        connection = getattr(self, "_connection", None)
        if connection is not None:
            connection.close()


class _UpsertFn(_BatchedFn):
    """Upserts each batch of rows in one transaction: COPY into a temporary table, then one INSERT ... ON CONFLICT
    (id) DO UPDATE. A retried bundle writes the same rows again over themselves: no duplicates."""

    def __init__(self, uri: str, table: str, columns: tuple[Column, ...], batch_rows: int):
        super().__init__(uri, table, batch_rows)
        self._columns = tuple(columns)
        self._upserted = counter("postgres_rows_staged")

    def _write(self, batch: list) -> None:
        from psycopg import sql

        # One row per id within a batch: ON CONFLICT cannot touch the same row twice in one statement.
        rows = list({row["id"]: row for row in batch}.values())
        listed = sql.SQL(", ").join(sql.Identifier(column.name) for column in self._columns)
        table = _table_sql(parse_table_name(self._table))
        with self._connection.transaction():
            cursor = self._connection.cursor()
            cursor.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS embeddings_upsert "
                                   "(LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS").format(table))
            with cursor.copy(sql.SQL("COPY embeddings_upsert ({}) FROM STDIN").format(listed)) as copy:
                for row in rows:
                    copy.write_row([_vector_text(row[column.name]) if column.type == "vector" else row[column.name]
                                    for column in self._columns])
            cursor.execute(_upsert_sql(table, sql.Identifier("embeddings_upsert"), self._columns))
        self._upserted.inc(len(rows))


def _upsert_sql(target, source, columns: tuple[Column, ...]):
    """INSERT every row of `source` into `target` (both sql.Identifier), or UPDATE the row of the same id."""
    from psycopg import sql

    names = [column.name for column in columns]
    listed = sql.SQL(", ").join(sql.Identifier(name) for name in names)
    updates = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(name))
                                 for name in names if name != "id")
    return sql.SQL("INSERT INTO {target} ({listed}) SELECT {listed} FROM {source} "
                   "ON CONFLICT (id) DO UPDATE SET {updates}").format(target=target, listed=listed, source=source,
                                                                     updates=updates)


def stage_table(table: str, token: str) -> str:
    """The table a run stages its rows in before one transaction merges them into `table`: SCHEMA.T__stage_HEX
    (HEX from the run id `token`), short enough for PostgreSQL's 63-byte names."""
    parts = parse_table_name(table)
    digest = hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]
    return ".".join((*parts[:-1], f"{parts[-1][:40]}__stage_{digest}"))


def _prepare_stage(unused, uri: str, table: str, stage: str, *unused_verdict) -> str:
    """Makes `stage` an empty unlogged copy of `table`'s columns keyed by id (an earlier attempt's is dropped)."""
    from psycopg import sql

    target, staged = _table_sql(parse_table_name(table)), _table_sql(parse_table_name(stage))
    with connect(uri) as connection:
        connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staged))
        connection.execute(sql.SQL("CREATE UNLOGGED TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(staged, target))
        connection.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(staged))
    return stage


def _merge_stage(unused, uri: str, table: str, stage: str, columns: tuple[Column, ...], deleted: list,
                 *unused_waits) -> str:
    """In one transaction: upserts every staged row into `table`, deletes the removed ids, drops the stage. A
    run that fails before this leaves `table` as it was."""
    from psycopg import sql

    target, staged = _table_sql(parse_table_name(table)), _table_sql(parse_table_name(stage))
    with connect(uri) as connection:  # psycopg commits the block's one transaction at its end.
        rows = connection.execute(_upsert_sql(target, staged, columns)).rowcount
        removed = 0
        if deleted:
            removed = connection.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(target),
                                         (list(deleted),)).rowcount
        connection.execute(sql.SQL("DROP TABLE {}").format(staged))
    counter("postgres_rows_upserted").inc(rows)
    counter("postgres_rows_deleted").inc(removed)
    logging.info("Merged %d rows into %s and deleted %d removed ids.", rows, table, removed)
    return table


def _build_index(unused_counts, uri: str, table: str, kind: str, *unused_waits) -> str:
    """Builds a cosine-distance index of `kind` on the embedding, unless the table has an hnsw or ivfflat index
    already; returns the table name."""
    from psycopg import sql

    parts = parse_table_name(table)
    with connect(uri) as connection:
        existing = connection.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = COALESCE(%s, current_schema()) AND tablename = %s "
            "AND (indexdef ILIKE '%%USING hnsw%%' OR indexdef ILIKE '%%USING ivfflat%%')",
            (parts[0] if len(parts) == 2 else None, parts[-1])).fetchall()
        if existing:
            logging.info("%s has a vector index already (%s); not building another.", table, existing[0][0])
            return table
        options = sql.SQL("")
        if kind == "ivfflat":
            rows = connection.execute(sql.SQL("SELECT count(*) FROM {}").format(_table_sql(parts))).fetchone()[0]
            # pgvector's advice: lists = rows / 1000 up to a million rows.
            options = sql.SQL(" WITH (lists = {})").format(sql.Literal(max(1, rows // 1000)))
        connection.execute(sql.SQL("CREATE INDEX {} ON {} USING {} (embedding vector_cosine_ops){}").format(
            sql.Identifier(f"{parts[-1]}_embedding_{kind}"), _table_sql(parts), sql.SQL(kind), options))
    logging.info("Built a %s index on %s.", kind, table)
    return table


class WritePostgres(beam.PTransform):
    """Upserts output rows (records.output_row's, over `columns`) into a pgvector table; deletes removed ids; all in
    one transaction at the end.

    prepare_table must have run (pipeline.plan does, before the run). After the verdict, the rows are upserted in
    bundle-sized transactions into a stage table (stage_table: an unlogged copy of the table's columns, named for
    the run, so a rerun replaces an interrupted attempt's); once all are there, one transaction upserts them into
    the table, deletes the removed ids and drops the stage. So a run that fails anywhere before leaves the table as
    it was, in step with the history the next incremental run compares against. Returns the table name once
    merged and the index (if asked for) built.

    Args:
        uri: postgresql:// URI or key=value conninfo; the password may come from PGPASSWORD or PGPASSFILE.
        table: TABLE or SCHEMA.TABLE.
        columns: records.output_columns of the run.
        verdict: transforms.guard.CheckRun's output: nothing is staged, written or deleted before the run passed
            its checks.
        deleted: ids to delete (transforms.incremental.Selected.deleted), or None.
        index: "hnsw" or "ivfflat" to build after loading, or None.
        batch_rows: rows per COPY and staging transaction.
        run_id: names the stage table.
    """

    def __init__(self, uri: str, table: str, columns: tuple[Column, ...], verdict=None, deleted=None,
                 index: str | None = None, batch_rows: int = DEFAULT_BATCH_ROWS, run_id: str = "run"):
        super().__init__()
        parse_table_name(table)
        self._uri, self._table, self._columns = uri, table, tuple(columns)
        self._verdict, self._deleted, self._index, self._batch_rows = verdict, deleted, index, batch_rows
        self._stage = stage_table(table, run_id)

    def expand(self, rows):
        pipeline = rows.pipeline
        gate = () if self._verdict is None else (beam.pvalue.AsSingleton(self._verdict),)
        stage = (pipeline
                 | "Once" >> beam.Create([None])
                 | "PrepareStage" >> beam.Map(_prepare_stage, self._uri, self._table, self._stage, *gate))
        staged = rows | "Stage" >> beam.ParDo(_UpsertFn(self._uri, self._stage, self._columns, self._batch_rows),
                                              beam.pvalue.AsSingleton(stage))
        deleted = (self._deleted if self._deleted is not None
                   else pipeline | "NothingDeleted" >> beam.Create([]))
        merged = stage | "Merge" >> beam.Map(_merge_stage, self._uri, self._table, self._stage, self._columns,
                                             beam.pvalue.AsList(deleted), beam.pvalue.AsList(staged))
        if self._index:
            return merged | "BuildIndex" >> beam.Map(_build_index, self._uri, self._table, self._index)
        return merged


@dataclasses.dataclass(frozen=True)
class PostgresSink:
    """A pgvector table holding the run's complete set.

    Attributes:
        uri: connection string (URI or key=value); its password is never shown (`mask`).
        table: TABLE or SCHEMA.TABLE.
        index: "hnsw" or "ivfflat" to build after loading, or None.
    """

    uri: str
    table: str
    index: str | None = None
    flag = "--output_postgres"
    changes_only = False  # Holds the complete set after every run.
    limits = SinkLimits(postgres=True)

    def check(self, layout) -> bool:
        """Before the run: the extension, and the table created or checked (prepare_table); whether it existed."""
        return prepare_table(self.uri, self.table, layout.columns, layout.dimension)

    def partial_prefixes(self) -> list[str]:
        return []

    def describe(self) -> str:
        return f"PostgreSQL {mask(self.uri)} table {self.table}"

    def write(self, outputs) -> None:
        _ = outputs.complete_rows | "WritePostgres" >> WritePostgres(
            self.uri, self.table, outputs.layout.columns, verdict=outputs.verdict, deleted=outputs.deleted,
            index=self.index, run_id=outputs.run_id)

    def load(self) -> Loaded:
        return load(self.uri, self.table)


def load(uri: str, table: str) -> Loaded:
    """Reads a pgvector table written by --output_postgres. Errors show the connection string masked.

    Raises:
        ValueError: one line, when the table cannot be read.
    """
    import psycopg
    from psycopg import sql

    parts = parse_table_name(table)
    try:
        with connect(uri) as connection:
            rows = connection.execute(sql.SQL("SELECT id, embedding::text, model FROM {} ORDER BY id").format(
                sql.Identifier(*parts))).fetchall()
    except psycopg.Error as err:
        raise ValueError(f"cannot read {table} from {mask(uri)}: {' '.join(str(err).split())}") from None
    vectors = np.asarray([[float(x) for x in text.strip("[]").split(",")] for _, text, _ in rows], np.float32)
    return Loaded([row[0] for row in rows], vectors.reshape(len(rows), -1), {row[2] for row in rows},
                  f"{mask(uri)} table {table}")
