"""Sinks: every store a run writes, one module each (tfrecord, bigquery, parquet, vertex, postgres), one interface.

A sink is a frozen dataclass made from the options before the run (pipeline.plan), so a plan holds a tuple of
them and pipeline.run's build loops over it, as Beam's `ml/rag` ingestion gives every vector store one
`create_write_transform()`. Every sink has:

- `flag`: the flag that asks for it, which its messages name;
- `limits`: what it cannot hold (transforms.limits.SinkLimits), checked for every record as it is read, so such a
  record is one dead letter and no sink gets it;
- `partial_prefixes()`: where an interrupted attempt leaves temporary files, removed before a rerun;
- `describe()`: where it writes, for the summary line (a password never shown);
- `write(outputs)`: adds its write steps, taking what it needs from one `Outputs`; nothing is committed before the
  run's verdict (transforms.guard.CheckRun);
- `load()`: reads what it wrote back as a `Loaded` (pipeline.inspect and the tests read outputs through it);
- `changes_only`: False when the sink holds the run's complete set after every run; True for an update that the
  store applies to what it holds (Vertex AI), which then also has `removed()`, the ids it deletes.

What a sink checks before the run (a table, a bucket) it checks when the plan makes it. `Layout` is the one value
that says which columns every sink writes; the complete set, the changed records and the deletions of an
incremental run are made once, in transforms.incremental, and `Outputs` hands them to every sink that asks.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import apache_beam as beam
import numpy as np

from transforms.limits import SinkLimits
from transforms.records import Column, output_columns, output_row

__all__ = ["Layout", "Loaded", "Outputs", "FileSink", "limits_of"]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which columns a run's records have, for every sink.

    Attributes:
        kept: records.Column of each --keep_fields field, typed from the input.
        chunks: the records are chunks (--chunking): records.CHUNK_COLUMNS too (chunk_text null without
            --output_chunk_text).
        dimension: the embedding's length; known whenever a typed sink (Parquet, Vertex, PostgreSQL) is asked for.
    """

    kept: tuple[Column, ...] = ()
    chunks: bool = False
    dimension: int | None = None

    @property
    def columns(self) -> tuple[Column, ...]:
        """The typed sinks' columns: records.output_columns with the chunk columns and the kept fields."""
        return output_columns(self.kept, chunks=self.chunks)


class Loaded(NamedTuple):
    """An output read back: ids, their [count, dimension] float32 vectors in the same order, the model
    fingerprints found, and where it was read (for the user; a password never shown)."""

    ids: list[str]
    vectors: np.ndarray
    models: set[str]
    where: str


class FileSink:
    """What the sinks that write PREFIX-SSSSS-of-NNNNN{suffix} files of the complete set share (a `prefix` field
    and a `suffix`): they hold any value, and an interrupted attempt leaves its files under the prefix."""

    suffix = ""
    changes_only = False  # Holds the complete set after every run.
    limits = SinkLimits()

    def partial_prefixes(self) -> list[str]:
        return [self.prefix]

    def describe(self) -> str:
        return f"{self.prefix}-*{self.suffix}"


def limits_of(sinks) -> SinkLimits:
    """What any of `sinks` cannot hold."""
    limits = SinkLimits()
    for sink in sinks:
        limits = limits.join(sink.limits)
    return limits


def _output_row(element, model: str) -> dict:
    key, embedding = element
    return output_row(key, embedding.vector, model)


class Outputs:
    """What a run hands its sinks. The derived collections are made on first use, once, so a run with no typed
    sink adds none of their steps.

    Args:
        embeddings: (RecordKey, Embedding) of the records this run embedded (chunks with --chunking).
        verdict: transforms.guard.CheckRun's output, which every commit waits for.
        model: the model fingerprint, each record's `model`.
        run_id: the run's id.
        layout: the records' columns.
        selected: transforms.incremental.Selected of an incremental run, else None.
        previous: the earlier output's (document id, _Previous) pairs of an incremental run, else None.
    """

    def __init__(self, embeddings, verdict, model: str, run_id: str, layout: Layout, selected=None, previous=None):
        self.embeddings, self.verdict, self.model, self.run_id = embeddings, verdict, model, run_id
        self.layout, self.selected, self._previous = layout, selected, previous

    @property
    def carried_forward(self):
        """The earlier Examples (TFRecord) or rows (BigQuery) an incremental run carries forward, else None."""
        return self.selected.carried_forward if self.selected else None

    @functools.cached_property
    def rows(self):
        """Output rows (records.output_row) of what this run embedded."""
        return self.embeddings | "ToOutputRow" >> beam.Map(_output_row, self.model)

    @functools.cached_property
    def complete_rows(self):
        """The run's complete set as output rows: embedded, and carried forward by an incremental run."""
        from transforms import incremental

        if not self.selected:
            return self.rows
        return incremental.complete_rows(self.rows, self.selected, self.layout.columns)

    @functools.cached_property
    def changed_rows(self):
        """Output rows a sink that takes only changes needs: embedded, and carried with changed kept fields."""
        from transforms import incremental

        if not self.selected:
            return self.rows
        return incremental.changed_rows(self.rows, self.selected, self.layout.columns)

    @functools.cached_property
    def deleted(self):
        """Ids an incremental run removes (every earlier chunk id not in the complete set, with chunks), else
        None."""
        from transforms import incremental

        if not self.selected:
            return None
        if not self.layout.chunks:
            return self.selected.deleted
        return incremental.removed_ids(self._previous, self.complete_rows)
