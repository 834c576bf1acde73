"""BigQuery: rows appended to a table (--output_bigquery), or a table kept equal to the corpus by one MERGE
(--previous_output naming the table).

The table's checks, writer and reader are transforms.bigquery's; the run table and MERGE transforms.incremental's
UpdateTable.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from transforms.limits import SinkLimits
from transforms.sinks import Loaded

__all__ = ["BigQuerySink"]


@dataclasses.dataclass(frozen=True)
class BigQuerySink:
    """A BigQuery table.

    Attributes:
        table: PROJECT:DATASET.TABLE.
        method: "file_loads" or "streaming" (appending only).
        table_exists: append with the table's own schema (transforms.bigquery.check_table); else create it.
        update: keep the table equal to the run's complete set (one MERGE) instead of appending.
        failed: the run's dead-letter prefix: rows BigQuery refuses go to FAILED-bigquery-*.jsonl.
    """

    table: str
    method: str = "file_loads"
    table_exists: bool = False
    update: bool = False
    failed: str = ""
    flag = "--output_bigquery"
    changes_only = False  # Holds the complete set after every run.
    limits = SinkLimits()

    def partial_prefixes(self) -> list[str]:
        return []

    def describe(self) -> str:
        return f"BigQuery {self.table}"

    def write(self, outputs) -> None:
        from transforms import bigquery, incremental, write

        layout = outputs.layout
        if self.update:
            # The run's complete set (embedded and carried forward) replaces the table's rows in one MERGE.
            _ = outputs.embeddings | "UpdateBigQuery" >> incremental.UpdateTable(
                self.table, outputs.model, outputs.run_id, verdict=outputs.verdict,
                carried_forward=outputs.carried_forward, chunks=layout.chunks, kept=layout.kept)
            return
        if self.method == "file_loads":
            # This run's rows, through a run table and a MERGE that adds only what the table lacks: a rerun adds
            # no row twice (load jobs alone would append them again).
            _ = outputs.embeddings | "WriteBigQuery" >> incremental.UpdateTable(
                self.table, outputs.model, outputs.run_id, verdict=outputs.verdict, chunks=layout.chunks,
                kept=layout.kept, append=True)
            return
        # Streamed rows embedded by this run only (their embedded_at stays true); a rerun streams them again.
        refused_rows = outputs.embeddings | "WriteBigQuery" >> bigquery.WriteBigQuery(
            self.table, outputs.model, outputs.run_id, method=self.method, table_exists=self.table_exists,
            verdict=outputs.verdict, chunks=layout.chunks, kept=layout.kept)
        # Written apart from the run's dead letters, which the check waits for; the name still matches FAILED-*.jsonl.
        _ = refused_rows | "WriteBigQueryFailures" >> write.WriteFailures(self.failed + "-bigquery")

    def load(self) -> Loaded:
        """The table's ids, vectors and model fingerprints, through the BigQuery client."""
        from google.cloud import bigquery as client_lib

        from transforms.bigquery import parse_table

        table = parse_table(self.table)
        client = client_lib.Client(project=table.project)
        rows = list(client.query(f"SELECT id, embedding, model FROM `{table.table_id}` ORDER BY id").result())
        vectors = np.asarray([list(row["embedding"]) for row in rows], np.float32).reshape(len(rows), -1)
        return Loaded([row["id"] for row in rows], vectors, {row["model"] for row in rows}, self.describe())
