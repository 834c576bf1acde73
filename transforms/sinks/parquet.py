"""Parquet: output rows as sharded Parquet files (Beam's parquetio, pyarrow) with an explicit schema.

The schema is made from the run's columns (records.output_columns): `embedding` is a fixed-size list of float32
of the model's dimension, which pandas, DuckDB (FLOAT[DIM]) and BigQuery external tables read
as they are; kept fields keep their types (`json` ones are JSON text).
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np

from transforms.records import Column
from transforms.sinks import FileSink, Loaded
from transforms.write import RemoveStaleShards

__all__ = ["PARQUET_SUFFIX", "arrow_type", "arrow_schema", "WriteParquet", "ParquetSink", "load"]

PARQUET_SUFFIX = ".parquet"


def arrow_type(column_type: str, dimension: int):
    """The pyarrow type of a records column type."""
    import pyarrow as pa

    scalars = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
               "json": pa.string()}
    if column_type == "vector":
        return pa.list_(pa.float32(), dimension)
    if column_type.startswith("list<"):
        return pa.list_(scalars[column_type[5:-1]])
    return scalars[column_type]


def arrow_schema(columns: tuple[Column, ...], dimension: int):
    """The files' schema: one field per column; the base columns are never null, kept fields may be."""
    import pyarrow as pa

    required = {"id", "embedding", "model", "content_hash"}
    return pa.schema([pa.field(column.name, arrow_type(column.type, dimension), nullable=column.name not in required,
                               metadata={"type": column.type} if column.type == "json" else None)
                      for column in columns])


def _passed(row: dict, unused_verdict) -> dict:
    return row


class WriteParquet(beam.PTransform):
    """Writes output rows (records.output_row's, over `columns`) to PREFIX-SSSSS-of-NNNNN.parquet.

    Args:
        prefix: Output path prefix, local or gs://.
        columns: records.output_columns of the run.
        dimension: The embedding's length.
        num_shards: How many files; a rerun replaces its own files, and removes those of an earlier write with
            another count.
        verdict: transforms.guard.CheckRun's output: no file is written before the run passed its checks.
    """

    def __init__(self, prefix: str, columns: tuple[Column, ...], dimension: int, num_shards: int = 1, verdict=None):
        super().__init__()
        self._prefix, self._columns, self._dimension = prefix, tuple(columns), dimension
        self._num_shards, self._verdict = num_shards, verdict

    def expand(self, rows):
        if self._verdict is not None:
            rows = rows | "AfterCheck" >> beam.Map(_passed, beam.pvalue.AsSingleton(self._verdict))
        written = rows | "Write" >> beam.io.WriteToParquet(
            self._prefix, arrow_schema(self._columns, self._dimension), num_shards=self._num_shards,
            file_name_suffix=PARQUET_SUFFIX)
        return written | "RemoveStaleShards" >> RemoveStaleShards(self._prefix, PARQUET_SUFFIX)


@dataclasses.dataclass(frozen=True)
class ParquetSink(FileSink):
    """PREFIX-SSSSS-of-NNNNN.parquet holding the run's complete set.

    Attributes:
        prefix: the output prefix, {run_id} filled in.
        num_shards: how many files.
    """

    prefix: str
    num_shards: int = 1
    flag = "--output_parquet"
    suffix = PARQUET_SUFFIX

    def write(self, outputs) -> None:
        _ = outputs.complete_rows | "WriteParquet" >> WriteParquet(
            self.prefix, outputs.layout.columns, outputs.layout.dimension, num_shards=self.num_shards,
            verdict=outputs.verdict)

    def load(self) -> Loaded:
        return load(self.prefix)


def load(prefix: str) -> Loaded:
    """Reads the Parquet output of a run (PREFIX-*.parquet, its --output_parquet prefix).

    Raises:
        ValueError: when no file matches, or a file is not this pipeline's Parquet output.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    pattern = f"{prefix}-*{PARQUET_SUFFIX}"
    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    if not paths:
        raise ValueError(f"No files match {pattern}; pass the --output_parquet prefix of a run.")
    tables = []
    for path in paths:
        with FileSystems.open(path) as f:
            try:
                tables.append(pq.read_table(f, columns=["id", "embedding", "model"]))
            except (pa.ArrowException, KeyError) as err:
                raise ValueError(f"{path} is not a Parquet output of this pipeline: {err}") from err
    table = pa.concat_tables(tables)
    vectors = np.asarray(table.column("embedding").to_pylist(), np.float32).reshape(len(table), -1)
    return Loaded(table.column("id").to_pylist(), vectors, set(table.column("model").to_pylist()), pattern)
