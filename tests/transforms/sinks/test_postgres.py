"""transforms.sinks.postgres against a real PostgreSQL server with pgvector (conftest's postgres_uri): the table
created and checked before a run, bundle-sized upserts that never duplicate, deletions, the index, masked
passwords."""

import urllib.parse
import uuid

import apache_beam as beam
import psycopg
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from transforms.records import Column, output_columns
from transforms.sinks import postgres

_COLUMNS = output_columns((Column("lang", "string"), Column("year", "int64"), Column("tags", "list<string>"),
                           Column("score", "float64"), Column("meta", "json")))


def _row(i: int, dim: int = 3, lang="en") -> dict:
    return {"id": f"d{i}", "embedding": [float(i), 0.5, -1.0][:dim], "model": "m1", "content_hash": f"h{i}",
            "lang": lang, "year": 2000 + i, "tags": ["a", f"t{i}"], "score": i / 4, "meta": '{"k": 1}'}


def _table() -> str:
    return f"emb_{uuid.uuid4().hex[:8]}"


def _rows_of(uri: str, table: str) -> dict:
    with psycopg.connect(uri) as connection:
        rows = connection.execute(f"SELECT id, embedding::text, lang, year, tags, score, meta FROM {table}").fetchall()
    return {row[0]: row[1:] for row in rows}


def _write(uri, table, rows, deleted=None, index=None, batch_rows=2):
    with TestPipeline() as pipeline:
        gone = pipeline | "Deleted" >> beam.Create(deleted) if deleted is not None else None
        _ = (pipeline | beam.Create(rows)
             | postgres.WritePostgres(uri, table, _COLUMNS, deleted=gone, index=index, batch_rows=batch_rows))


def test_a_missing_table_is_created_with_typed_columns_and_rows_read_back(postgres_uri):
    table = _table()
    assert postgres.prepare_table(postgres_uri, table, _COLUMNS, 3) is False
    _write(postgres_uri, table, [_row(i) for i in range(5)])
    found = _rows_of(postgres_uri, table)
    assert sorted(found) == [f"d{i}" for i in range(5)]
    assert found["d2"] == ("[2,0.5,-1]", "en", 2002, ["a", "t2"], 0.5, {"k": 1})
    with psycopg.connect(postgres_uri) as connection:
        types = dict(connection.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                                        "attrelid = %s::regclass AND attnum > 0", (table,)).fetchall())
    assert types["embedding"] == "vector(3)" and types["year"] == "bigint" and types["meta"] == "jsonb"
    assert postgres.prepare_table(postgres_uri, table, _COLUMNS, 3) is True


def test_rewriting_upserts_without_duplicates_and_deletes_removed_ids(postgres_uri):
    table = _table()
    postgres.prepare_table(postgres_uri, table, _COLUMNS, 3)
    _write(postgres_uri, table, [_row(i) for i in range(6)])
    # A retried or repeated write, with one record changed: still one row per id, the new values.
    _write(postgres_uri, table, [_row(i) for i in range(4)] + [_row(1, lang="fr")], deleted=["d4", "d5", "nope"])
    found = _rows_of(postgres_uri, table)
    assert sorted(found) == ["d0", "d1", "d2", "d3"]
    assert found["d1"][1] == "fr"


@pytest.mark.parametrize("kind", ["hnsw", "ivfflat"])
def test_the_index_is_built_after_loading_and_used_for_cosine_search(postgres_uri, kind):
    table = _table()
    postgres.prepare_table(postgres_uri, table, _COLUMNS, 3)
    _write(postgres_uri, table, [_row(i) for i in range(4)], index=kind)
    with psycopg.connect(postgres_uri) as connection:
        indexes = [row[0] for row in connection.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s",
                                                        (table,)).fetchall()]
        nearest = connection.execute(f"SELECT id FROM {table} ORDER BY embedding <=> '[3,0.5,-1]' LIMIT 1").fetchone()
    assert any(f"USING {kind}" in index and "vector_cosine_ops" in index for index in indexes), indexes
    assert nearest == ("d3",)


def test_a_table_of_another_dimension_or_without_a_column_is_refused_in_one_line(postgres_uri):
    table = _table()
    postgres.prepare_table(postgres_uri, table, _COLUMNS, 3)
    with pytest.raises(ValueError, match=r"embedding is vector\(3\), not vector\(8\) \(the model's vectors have "
                                         r"another dimension\)") as err:
        postgres.prepare_table(postgres_uri, table, _COLUMNS, 8)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no column extra \\(text\\)"):
        postgres.prepare_table(postgres_uri, table, _COLUMNS + (Column("extra", "string"),), 3)


def _with_user(uri: str, user: str, password: str, database: str | None = None) -> str:
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(("postgresql", f"{user}:{password}@", f"/{database or 'postgres'}", parts.query,
                                    ""))


@pytest.fixture(scope="module")
def limited_user(postgres_uri):
    """A login role that must give its password (scram) and may not create extensions, and a database without
    pgvector enabled: (user, password, database)."""
    user, password, database = "limited", "s3cret-Pass", "novector"
    with psycopg.connect(postgres_uri, autocommit=True) as connection:
        connection.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        connection.execute(f"CREATE DATABASE {database} OWNER {user}")
        hba = connection.execute("SHOW hba_file").fetchone()[0]
        with open(hba) as f:
            rules = f.read()
        with open(hba, "w") as f:
            f.write(f"local all {user} scram-sha-256\nhost all {user} 127.0.0.1/32 scram-sha-256\n" + rules)
        connection.execute("SELECT pg_reload_conf()")
    return user, password, database


def test_a_wrong_password_is_one_line_with_the_password_masked(postgres_uri, limited_user):
    user, password, _ = limited_user
    wrong = _with_user(postgres_uri, user, "not-the-" + password)
    with pytest.raises(ValueError) as err:
        postgres.prepare_table(wrong, _table(), _COLUMNS, 3)
    message = str(err.value)
    assert "password authentication failed" in message and "limited:***@" in message, message
    assert "not-the-" not in message and "\n" not in message


def test_a_user_who_may_not_enable_pgvector_is_told_so(postgres_uri, limited_user):
    user, password, database = limited_user
    with pytest.raises(ValueError, match="may not enable it .*CREATE EXTENSION vector") as err:
        postgres.prepare_table(_with_user(postgres_uri, user, password, database), _table(), _COLUMNS, 3)
    assert password not in str(err.value)


def test_an_unreachable_server_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="cannot connect") as err:
        postgres.prepare_table(f"postgresql://u:pw@/db?host={tmp_path}", _table(), _COLUMNS, 3)
    assert ":***@" in str(err.value) and "pw" not in str(err.value).replace("***", "")


def test_mask_hides_passwords_in_the_user_info_and_the_query():
    assert postgres.mask("postgresql://bob:secret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert postgres.mask("postgresql://db/x?sslmode=require&password=secret") == \
        "postgresql://db/x?sslmode=require&password=***"
    assert postgres.mask("postgresql://bob@db/x") == "postgresql://bob@db/x"


@pytest.mark.parametrize("conninfo,shown", [
    ("host=db user=bob password=s3cret dbname=x", "host=db user=bob password=*** dbname=x"),
    ("host=db password='se cret' dbname=x", "host=db password=*** dbname=x"),
    ("postgresql:///postgres?host=/tmp/sock&password=s3cret", "postgresql:///postgres?host=/tmp/sock&password=***"),
    ("postgres://bob:s3cret@/postgres?host=/tmp/sock", "postgres://bob:***@/postgres?host=/tmp/sock"),
])
def test_mask_reads_every_conninfo_form_with_psycopgs_parser(conninfo, shown):
    from psycopg.conninfo import conninfo_to_dict

    masked = postgres.mask(conninfo)
    assert "s3cret" not in masked and "se cret" not in masked
    assert conninfo_to_dict(masked) == conninfo_to_dict(shown) == {**conninfo_to_dict(conninfo), "password": "***"}
    assert postgres.has_password(conninfo) and not postgres.has_password("host=db dbname=x")


def test_a_keyword_conninfo_password_never_reaches_the_error_line(tmp_path):
    with pytest.raises(ValueError, match="cannot connect") as err:
        postgres.prepare_table(f"host={tmp_path} user=u password=hunter2 dbname=db", _table(), _COLUMNS, 3)
    assert "hunter2" not in str(err.value) and "password=***" in str(err.value)


def test_a_write_that_fails_part_way_leaves_the_table_as_it_was(postgres_uri):
    table = _table()
    postgres.prepare_table(postgres_uri, table, _COLUMNS, 3)
    _write(postgres_uri, table, [_row(i) for i in range(2)])
    before = _rows_of(postgres_uri, table)
    with psycopg.connect(postgres_uri) as connection:  # The server refuses one row of the next run, d5.
        connection.execute("CREATE FUNCTION refuse_d5() RETURNS trigger AS $$ BEGIN IF NEW.id = 'd5' THEN "
                           "RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql")
        connection.execute(f"CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW "
                           "EXECUTE FUNCTION refuse_d5()")
    with pytest.raises(Exception, match="refused"):
        _write(postgres_uri, table, [_row(i, lang="fr") for i in range(6)], deleted=["d0"], batch_rows=1)
    assert _rows_of(postgres_uri, table) == before  # No batch of the failed run reached the table.
    with psycopg.connect(postgres_uri) as connection:
        connection.execute(f"DROP TRIGGER refuse ON {table}")
    _write(postgres_uri, table, [_row(i, lang="fr") for i in range(6)], deleted=["d0"])  # The rerun completes.
    found = _rows_of(postgres_uri, table)
    assert sorted(found) == [f"d{i}" for i in range(1, 6)] and {row[1] for row in found.values()} == {"fr"}
    with psycopg.connect(postgres_uri) as connection:
        stages = connection.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE %s",
                                    (f"{table}__stage_%",)).fetchone()[0]
    assert stages == 0
