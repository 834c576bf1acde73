"""transforms.sinks.parquet: files read back by independent readers, pyarrow and DuckDB, with the schema promised."""

import glob

import apache_beam as beam
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline

from transforms.records import Column, output_columns
from transforms.sinks.parquet import WriteParquet

_COLUMNS = output_columns((Column("lang", "string"), Column("year", "int64"), Column("tags", "list<string>"),
                           Column("meta", "json")))


def _rows():
    return [{"id": f"d{i}", "embedding": [i / 2, 1.0, -0.25], "model": "m1", "content_hash": f"h{i}",
             "lang": "en" if i % 2 else None, "year": 2000 + i, "tags": ["a", f"t{i}"], "meta": '{"k": [1]}'}
            for i in range(5)]


def test_rows_read_back_with_pyarrow_and_duckdb_with_a_fixed_size_float32_embedding(tmp_path):
    prefix = str(tmp_path / "out" / "emb")
    with TestPipeline() as pipeline:
        _ = pipeline | beam.Create(_rows()) | WriteParquet(prefix, _COLUMNS, 3, num_shards=2)
    files = sorted(glob.glob(prefix + "-*.parquet"))
    assert [f.rsplit("/", 1)[1] for f in files] == ["emb-00000-of-00002.parquet", "emb-00001-of-00002.parquet"]
    table = pa.concat_tables(pq.read_table(f) for f in files).sort_by("id")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 3)
    assert table.schema.field("year").type == pa.int64() and not table.schema.field("id").nullable
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(5)]
    assert table.column("lang").to_pylist() == [None, "en", None, "en", None]
    assert table.column("tags").to_pylist()[3] == ["a", "t3"]
    assert table.column("embedding").to_pylist()[3] == [1.5, 1.0, -0.25]

    found = duckdb.sql(f"SELECT id, embedding, year, json_extract(meta, '$.k[0]')::INT AS k, typeof(embedding) AS t "
                       f"FROM read_parquet('{prefix}-*.parquet') ORDER BY id").fetchall()
    # DuckDB's Parquet reader gives a list of float32 (Parquet itself has no fixed-size list); cast to search.
    assert found[1] == ("d1", [0.5, 1.0, -0.25], 2001, 1, "FLOAT[]")
    nearest = duckdb.sql(f"SELECT id FROM read_parquet('{prefix}-*.parquet') ORDER BY "
                         "array_cosine_distance(embedding::FLOAT[3], [2.0, 1.0, -0.25]::FLOAT[3]) LIMIT 1").fetchall()
    assert nearest == [("d4",)]


def test_a_rerun_with_another_shard_count_leaves_only_its_own_files(tmp_path):
    prefix = str(tmp_path / "out" / "emb")
    other = tmp_path / "out" / "emb-v2-00000-of-00001.parquet"  # Another prefix's file: left alone.
    for shards, rows in ((3, _rows()), (2, _rows()[:4])):
        with TestPipeline() as pipeline:
            _ = pipeline | beam.Create(rows) | WriteParquet(prefix, _COLUMNS, 3, num_shards=shards)
        other.write_bytes(b"x")
    files = sorted(glob.glob(prefix + "-0*-of-*.parquet"))
    assert [f.rsplit("/", 1)[1] for f in files] == ["emb-00000-of-00002.parquet", "emb-00001-of-00002.parquet"]
    ids = pa.concat_tables(pq.read_table(f) for f in files).column("id").to_pylist()
    assert sorted(ids) == [f"d{i}" for i in range(4)] and other.exists()
