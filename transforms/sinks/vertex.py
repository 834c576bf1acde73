"""Vertex AI Vector Search: output rows as one batch update of an index, in the JSON lines format it documents.

One run's folder is one update (`gcloud ai indexes update INDEX --metadata-file=...` with contentsDeltaUri set to
the folder): JSON files of datapoints under FOLDER/, each line {"id", "embedding", "restricts",
"numeric_restricts", "crowding_tag"}, and, when the run updates an earlier output, the ids it removes under
FOLDER/delete/, one per line, which a batch update deletes.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import apache_beam as beam
import numpy as np

from transforms.limits import SinkLimits, breaks_lines
from transforms.records import Column, counter
from transforms.sinks import Loaded
from transforms.write import RemoveStaleShards, remove_stale_shards

__all__ = ["DATAPOINTS_NAME", "DELETE_FOLDER", "datapoint", "WriteVertex", "VertexSink", "load", "removed"]

DATAPOINTS_NAME = "embeddings"  # FOLDER/embeddings-SSSSS-of-NNNNN.json
DELETE_FOLDER = "delete"  # FOLDER/delete/ids-SSSSS-of-NNNNN.txt


def datapoint(row: dict, restricts: tuple[str, ...] = (), numeric_restricts: tuple[str, ...] = (),
              crowding_tag: str | None = None, types: dict | None = None) -> dict:
    """One Vector Search datapoint of an output row.

    Args:
        row: records.output_row's dict.
        restricts: Fields written as {"namespace": FIELD, "allow": [values as text]}; a null field is left out.
        numeric_restricts: Fields written as {"namespace": FIELD, "value_int" | "value_double": value}: integers
            as value_int, other numbers as value_double (a float64 column's precision).
        crowding_tag: A field whose value (as text) is the datapoint's crowding_tag.
        types: {field: records column type}, to tell integer from float columns; by value when absent.
    """
    point = {"id": row["id"], "embedding": [float(x) for x in row["embedding"]]}
    allowed = []
    for name in restricts:
        value = row.get(name)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        allowed.append({"namespace": name, "allow": [_text(item) for item in values]})
    if allowed:
        point["restricts"] = allowed
    numbers = []
    for name in numeric_restricts:
        value = row.get(name)
        if value is None:
            continue
        is_int = (types or {}).get(name, "int64" if isinstance(value, int) else "float64") == "int64"
        numbers.append({"namespace": name, "value_int" if is_int else "value_double": value})
    if numbers:
        point["numeric_restricts"] = numbers
    if crowding_tag and row.get(crowding_tag) is not None:
        point["crowding_tag"] = _text(row[crowding_tag])
    return point


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def _to_line(row: dict, restricts, numeric_restricts, crowding_tag, types, unused_verdict=None) -> str:
    return json.dumps(datapoint(row, restricts, numeric_restricts, crowding_tag, types), ensure_ascii=False)


def _listable(record_id: str, unused_verdict=None) -> list[str]:
    """[record_id], or [] for an id with a line break, which a delete/ file cannot list (transforms.limits keeps
    such ids out of every Vertex run, so none of them was ever upserted by one)."""
    if breaks_lines(record_id):
        logging.warning("Not listing removed id %r in delete/: a line break would split it into other ids.",
                        record_id[:200])
        counter("vertex_ids_not_listed").inc()
        return []
    return [record_id]


def _remove_deletions(unused_written, deleted_ids: str) -> list[str]:
    return remove_stale_shards([], deleted_ids, ".txt")


class WriteVertex(beam.PTransform):
    """Writes output rows as Vector Search datapoints under FOLDER/, and removed ids under FOLDER/delete/.

    Args:
        folder: The update's folder, local or gs://.
        columns: records.output_columns of the run (for the types of numeric restricts).
        restricts, numeric_restricts, crowding_tag: See `datapoint`.
        num_shards: Datapoint files; a rerun replaces its own files and removes an earlier write's of another
            count.
        verdict: transforms.guard.CheckRun's output: nothing is written before the run passed its checks.
        deleted: Ids the run removes (transforms.incremental.Selected.deleted); None writes no delete/ folder.
            An id with a line break is left out (logged, counted as vertex_ids_not_listed): no run writes one.
    """

    def __init__(self, folder: str, columns: tuple[Column, ...], restricts: tuple[str, ...] = (),
                 numeric_restricts: tuple[str, ...] = (), crowding_tag: str | None = None, num_shards: int = 1,
                 verdict=None, deleted=None):
        super().__init__()
        self._folder = folder.rstrip("/")
        self._types = {column.name: column.type for column in columns}
        self._restricts, self._numeric, self._crowding_tag = tuple(restricts), tuple(numeric_restricts), crowding_tag
        self._num_shards, self._verdict, self._deleted = num_shards, verdict, deleted

    def expand(self, rows):
        gate = () if self._verdict is None else (beam.pvalue.AsSingleton(self._verdict),)
        lines = rows | "ToDatapoint" >> beam.Map(_to_line, self._restricts, self._numeric, self._crowding_tag,
                                                 self._types, *gate)
        points = f"{self._folder}/{DATAPOINTS_NAME}"
        written = (lines
                   | "WriteDatapoints" >> beam.io.WriteToText(points, file_name_suffix=".json",
                                                              num_shards=self._num_shards)
                   | "RemoveStaleDatapoints" >> RemoveStaleShards(points, ".json"))
        deleted_ids = f"{self._folder}/{DELETE_FOLDER}/ids"
        if self._deleted is None:  # An earlier attempt's list of this folder would delete what this run wrote.
            _ = written | "RemoveStaleDeleted" >> beam.Map(_remove_deletions, deleted_ids)
            return written
        ids = self._deleted | "AfterCheck" >> beam.FlatMap(_listable, *gate)
        _ = (ids
             | "WriteDeleted" >> beam.io.WriteToText(deleted_ids, file_name_suffix=".txt", num_shards=1)
             | "RemoveStaleDeleted" >> RemoveStaleShards(deleted_ids, ".txt"))
        return written


@dataclasses.dataclass(frozen=True)
class VertexSink:
    """One batch update of a Vertex AI Vector Search index: FOLDER/embeddings-*.json and FOLDER/delete/.

    Attributes:
        folder: the update's folder, {run_id} filled in.
        restricts, numeric_restricts, crowding_tag: kept fields written as such (see `datapoint`).
        num_shards: datapoint files.
    """

    folder: str
    restricts: tuple[str, ...] = ()
    numeric_restricts: tuple[str, ...] = ()
    crowding_tag: str | None = None
    num_shards: int = 1
    flag = "--output_vertex"
    changes_only = True  # An update: the index applies it to what it holds (see removed).

    @property
    def limits(self) -> SinkLimits:
        return SinkLimits(vertex=True, vertex_numeric=self.numeric_restricts)

    def partial_prefixes(self) -> list[str]:
        return [self.folder.rstrip("/") + "/" + DATAPOINTS_NAME]

    def describe(self) -> str:
        return f"Vertex AI update {self.folder}/"

    def write(self, outputs) -> None:
        # Only what changed: what this run embedded, and carried records whose kept fields (restricts) changed.
        _ = outputs.changed_rows | "WriteVertex" >> WriteVertex(
            self.folder, outputs.layout.columns, self.restricts, self.numeric_restricts, self.crowding_tag,
            num_shards=self.num_shards, verdict=outputs.verdict, deleted=outputs.deleted)

    def load(self) -> Loaded:
        return load(self.folder)

    def removed(self) -> list[str]:
        """The ids this update deletes (FOLDER/delete/*), one per line."""
        return removed(self.folder)


def removed(folder: str) -> list[str]:
    """The ids an update folder deletes: the lines of FOLDER/delete/* (an id never holds a line break)."""
    from apache_beam.io.filesystems import FileSystems

    paths = sorted(m.path for m in FileSystems.match([f"{folder.rstrip('/')}/{DELETE_FOLDER}/*"])[0].metadata_list)
    ids = []
    for path in paths:
        with FileSystems.open(path) as f:
            ids += [line for line in f.read().decode("utf-8").split("\n") if line]
    return ids


def load(folder: str) -> Loaded:
    """Reads one update folder back: its datapoints (FOLDER/embeddings-*.json); datapoints carry no model.

    Raises:
        ValueError: when the folder holds no datapoint file, or a line is not a datapoint.
    """
    from apache_beam.io.filesystems import FileSystems

    pattern = f"{folder.rstrip('/')}/{DATAPOINTS_NAME}-*.json"
    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    if not paths:
        raise ValueError(f"No files match {pattern}; pass the --output_vertex folder of a run.")
    ids, vectors = [], []
    for path in paths:
        with FileSystems.open(path) as f:
            for number, line in enumerate(f.read().decode("utf-8").split("\n"), start=1):
                if not line:
                    continue
                try:
                    point = json.loads(line)
                    ids.append(point["id"])
                    vectors.append(point["embedding"])
                except (ValueError, KeyError, TypeError) as err:
                    raise ValueError(f"{path} line {number} is not a Vertex AI datapoint: {err}") from err
    return Loaded(ids, np.asarray(vectors, np.float32).reshape(len(ids), -1), set(), pattern)
