"""The output record, declared once: its key and hashes, its dead-letter form, its TFRecord and BigQuery layouts.

A corpus record is read into a `Record`, travels through inference keyed by its `RecordKey` (id, content hash,
source) and is written as a tf.train.Example (`example_bytes`, read with `feature_spec`) or a BigQuery row
(`to_row`, columns `SCHEMA`). A record that cannot be embedded becomes a `Failure`, written as one JSON line
(`failure_to_json`). Counters live in one Beam metrics namespace, `NAMESPACE`, under the names below.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import struct
from typing import NamedTuple

import apache_beam as beam

__all__ = ["NAMESPACE", "RECORDS_READ", "EMBEDDED", "TOKENS_EMBEDDED", "TRUNCATED", "TOKENS_COMPUTED", "FAILED_PREFIX",
           "counter", "Record", "RecordKey", "ChunkKey", "chunk_key", "DOCUMENTS_CHUNKED", "CHUNKS", "UNKNOWN_ONLY",
           "content_hash", "derived_id", "Failure", "MAX_RECORD_CHARS",
           "make_failure", "failure_to_json", "record_text", "inference_failure",
           "raw_record_or_texts", "refused_row_failure", "feature_spec",
           "example_bytes", "ExampleKey", "example_key", "SCHEMA", "CHUNK_SCHEMA", "schema", "to_row", "from_read_row",
           "FIELD_TYPES", "Column", "BASE_COLUMNS", "CHUNK_COLUMNS", "RESERVED_NAMES", "KEPT_FIELD_MISMATCH",
           "infer_field_type",
           "typed_value", "float64_bytes", "output_columns", "output_row", "carried_row",
           "refresh_fields"]

# Beam counters of a run, read back by pipeline.run for its summary and by transforms.guard for its verdict.
NAMESPACE = "embeddings"
RECORDS_READ = "records_read"
EMBEDDED = "embedded"
TOKENS_EMBEDDED = "tokens_embedded"  # Real tokens, [CLS] and [SEP] included.
TRUNCATED = "truncated"
TOKENS_COMPUTED = "tokens_computed"  # Padded tokens the encoder computed.
KEPT_FIELD_MISMATCH = "kept_field_mismatch"  # A --keep_fields value of another type than its column: kept as null.
FAILED_PREFIX = "failed_"  # failed_REASON, one counter per Failure reason.
CHUNKS = "chunks"  # With --chunking: chunks embedded (EMBEDDED counts documents).
DOCUMENTS_CHUNKED = "documents_chunked"  # Documents that needed more than one chunk.
# Records (documents, with --chunking) whose wordpieces were all [UNK]: one "word" over 100 characters, as Hugging
# Face tokenizes it. Embedded as the reference embeds them, and counted: such a vector says nothing of the text.
UNKNOWN_ONLY = "unknown_only"

MAX_RECORD_CHARS = 1000  # Of a record (and of a detail) in its dead letter.
_DERIVED_ID_PREFIX = "sha256:"
_DERIVED_ID_HEX_CHARS = 16


def counter(name: str):
    """The Beam counter `name` in the run's namespace."""
    return beam.metrics.Metrics.counter(NAMESPACE, name)


class ChunkKey(NamedTuple):
    """Where a chunk lies in its document (--chunking); its record's id is DOC_ID#INDEX.

    Attributes:
        doc_id: The document's id (see Record).
        index: The chunk's place among the document's chunks, from 0.
        count: How many chunks the document has.
        char_start: Where the chunk's text starts in the document's text, in code points.
        char_end: Where it ends: the chunk's text is text[char_start:char_end].
        text: The chunk's text with --output_chunk_text, else None.
    """

    doc_id: str
    index: int
    count: int
    char_start: int
    char_end: int
    text: str | None = None


class RecordKey(NamedTuple):
    """What travels with a record's texts through inference and names its output.

    Attributes:
        id: The record's id (see Record); DOC_ID#INDEX for a chunk.
        content_hash: See Record; a chunk has its document's.
        source: The path of the file the record came from.
        fields: The --keep_fields values, as (name, value) pairs (see Record).
        chunk: Where the chunk lies in its document, or None for a whole record.
        position: Where the record lies in `source` (see Record), for its raw line in a dead letter.
    """

    id: str
    content_hash: str
    source: str
    fields: tuple[tuple[str, object], ...] = ()
    chunk: ChunkKey | None = None
    position: int = 0


def chunk_key(document: RecordKey, chunk: ChunkKey) -> RecordKey:
    """The key of one chunk of a document: id DOC_ID#INDEX, the document's content hash, source and kept fields."""
    return RecordKey(f"{document.id}#{chunk.index}", document.content_hash, document.source, document.fields, chunk,
                     document.position)


class Record(NamedTuple):
    """One corpus record, ready to embed.

    Attributes:
        id: The record's id: the `id_field` value as a string, or `"sha256:"` followed by the first 16 hex
            digits of `content_hash` when the record has no id (always so for the `text` format).
        texts: One text, or two in pair mode, in the order of `pair_fields`.
        content_hash: Hex SHA-256 over the texts, each UTF-8 encoded and prefixed with its byte length as 8
            big-endian bytes, so `("ab", "c")` and `("a", "bc")` differ.
        source: The path of the file the record came from.
        fields: The --keep_fields values of the record, as (name, value) pairs in the order of the flag, each
            already of its column's type (typed_value); None where the record lacks the field. Empty without
            --keep_fields. Not part of the content hash: a changed field alone does not re-embed.
        position: Where the record starts in `source`: the byte offset of its line in a plain text file, its
            line's or record's index in a compressed or TFRecord file. It tells identical copies apart
            (transforms.dedupe); nothing is written from it.
    """

    id: str
    texts: tuple[str, ...]
    content_hash: str
    source: str
    fields: tuple[tuple[str, object], ...] = ()
    position: int = 0

    @property
    def key(self) -> RecordKey:
        return RecordKey(self.id, self.content_hash, self.source, self.fields, position=self.position)


def content_hash(texts: tuple[str, ...]) -> str:
    """Hex SHA-256 over the texts, each UTF-8 encoded and prefixed with its length as 8 big-endian bytes."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()


def derived_id(hash_hex: str) -> str:
    """The id of a record that has none: "sha256:" and the first 16 hex digits of its content hash."""
    return _DERIVED_ID_PREFIX + hash_hex[:_DERIVED_ID_HEX_CHARS]


class Failure(NamedTuple):
    """A record that could not be embedded, for the dead-letter output.

    Attributes:
        source: The path of the file the record came from (or the table that refused it).
        reason: Why, one word: transforms.read.FAILURE_REASONS, duplicate_id, inference_error,
            bigquery_insert_error.
        detail: A human-readable explanation (the field involved, the parser's message).
        record: The raw record as text, cut to its first 1000 characters (the detail then says so). Bytes that
            are not valid UTF-8 appear as backslash escapes (`\\xff`); TFRecord records are base64. For a file
            that breaks off, the line or record it broke off in, as far as it was read (possibly empty).
    """

    source: str
    reason: str
    detail: str
    record: str


def make_failure(source: str, reason: str, detail: str, record: str) -> Failure:
    """A Failure keeping at most the first 1000 characters of `record` (the detail then says it was cut) and of
    `detail`."""
    detail = detail[:MAX_RECORD_CHARS]
    if len(record) > MAX_RECORD_CHARS:
        detail += f" (record cut from {len(record)} to {MAX_RECORD_CHARS} characters)"
        record = record[:MAX_RECORD_CHARS]
    return Failure(source=source, reason=reason, detail=detail, record=record)


def failure_to_json(failure: Failure) -> str:
    """One dead-letter line: a JSON object with the keys "source", "reason", "detail" and "record", no newline."""
    return json.dumps(failure._asdict(), ensure_ascii=False)


def record_text(record_id: str, texts: tuple[str, ...]) -> str:
    """A read record as its dead letter shows it: {"id", "texts"} as JSON."""
    return json.dumps({"id": record_id, "texts": list(texts)}, ensure_ascii=False)


def inference_failure(key: RecordKey, texts: tuple[str, ...], error: str, raw_of=None) -> Failure:
    """The Failure of a record whose batch failed inside the model; its raw line through `raw_of(source,
    position)` (transforms.read.ReadCorpus.raw_records) when given, else its id and texts as JSON."""
    return make_failure(key.source, "inference_error", error, raw_record_or_texts(raw_of, key, texts))


def raw_record_or_texts(raw_of, key, texts: tuple[str, ...]) -> str:
    """A read record's raw line for its dead letter (`raw_of(source, position)`); its id and texts as JSON
    (record_text) without `raw_of`, or when its file no longer holds it (logged)."""
    if raw_of is not None:
        try:
            return raw_of(key.source, key.position)
        except (OSError, ValueError) as err:
            logging.warning("Cannot read the raw line of %r again (%s); its dead letter holds its id and texts.",
                            key.id[:200], err)
    return record_text(key.id, texts)


def refused_row_failure(table_spec: str, row: dict, errors) -> Failure:
    """The Failure of a row BigQuery refused; its record is the row without the embedding, as JSON."""
    record = json.dumps({name: value for name, value in row.items() if name != "embedding"}, ensure_ascii=False)
    return make_failure(table_spec, "bigquery_insert_error", json.dumps(errors), record)


def feature_spec(with_sequence: bool = False, chunks: bool = False, chunk_text: bool = False) -> dict:
    """The tf.io.parse_example spec of the embedding records (example_bytes writes them).

    Each record has `id` (bytes), `embedding` (float32 [hidden]), `model` (bytes: a fingerprint of encoder,
    preprocessor, pooling and seq_length) and `content_hash` (bytes: hex sha256 of the input texts). With
    `--output_sequence` it also has `sequence_length` (int64, real tokens) and `sequence` (float32
    [sequence_length * hidden], the unpadded token vectors, row-major). With `--chunking` (chunks=True) each
    record is a chunk, id DOC_ID#INDEX, with `doc_id` (bytes), `chunk_index`, `chunk_count`, `char_start` and
    `char_end` (int64: the chunk is text[char_start:char_end] in code points), and with `--output_chunk_text`
    `chunk_text` (bytes, UTF-8).

        dataset = tf.data.TFRecordDataset(tf.io.gfile.glob(prefix + "-*.tfrecord"))
        batch = tf.io.parse_example(next(iter(dataset.batch(32))), feature_spec())
    """
    import tensorflow as tf

    spec = {
        "id": tf.io.FixedLenFeature([], tf.string),
        "embedding": tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True),
        "model": tf.io.FixedLenFeature([], tf.string),
        "content_hash": tf.io.FixedLenFeature([], tf.string),
    }
    if with_sequence:
        spec["sequence_length"] = tf.io.FixedLenFeature([], tf.int64)
        spec["sequence"] = tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True)
    if chunks:
        spec["doc_id"] = tf.io.FixedLenFeature([], tf.string)
        spec.update({name: tf.io.FixedLenFeature([], tf.int64) for name in _CHUNK_INTEGERS})
    if chunk_text:
        spec["chunk_text"] = tf.io.FixedLenFeature([], tf.string)
    return spec


_CHUNK_INTEGERS = ("chunk_index", "chunk_count", "char_start", "char_end")


def _chunk_fields(chunk: ChunkKey) -> dict:
    """A chunk's own fields by output name (chunk_text only when kept)."""
    fields = {"doc_id": chunk.doc_id, "chunk_index": chunk.index, "chunk_count": chunk.count,
              "char_start": chunk.char_start, "char_end": chunk.char_end}
    if chunk.text is not None:
        fields["chunk_text"] = chunk.text
    return fields


def example_bytes(key: RecordKey, embedding, model: str) -> bytes:
    """The serialised tf.train.Example of an embedded record (feature_spec's layout), the same bytes every run.

    Kept fields (--keep_fields) are features of their own name: strings (JSON text for json) as bytes_list,
    integers and booleans as int64_list, floats exactly as float64 (`float64_bytes`), lists as lists; a null is
    no feature.

    `embedding` is a runtime Embedding (vector, tokens, sequence). Built without importing TensorFlow
    (transforms.examples), so a worker that shares the model with `--large_model` stays small.
    """
    from transforms.examples import serialize_example

    features = {"id": [key.id.encode()], "embedding": embedding.vector, "model": [model.encode()],
                "content_hash": [key.content_hash.encode()]}
    features.update(_field_features(key.fields))
    if embedding.sequence is not None:
        features["sequence_length"] = [embedding.tokens]
        features["sequence"] = embedding.sequence
    if key.chunk is not None:
        for name, value in _chunk_fields(key.chunk).items():
            features[name] = [value.encode()] if isinstance(value, str) else [value]
    return serialize_example(features)


class ExampleKey(NamedTuple):
    """What an incremental run reads of an earlier embedding record; doc_id is the id of a whole record."""

    id: str
    content_hash: str
    model: str
    has_sequence: bool
    doc_id: str


def example_key(serialized: bytes, source: str) -> ExampleKey:
    """The id, content hash, model and presence of token vectors of a serialised embedding record.

    Raises:
        ValueError: naming `source`, for bytes that are not an embedding record of this pipeline.
    """
    from transforms.examples import parse_example

    try:
        features = parse_example(serialized)
        record_id, hash_hex, model = (features[name][0].decode("utf-8") for name in ("id", "content_hash", "model"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        raise ValueError(f"{source} holds a record without id, content_hash or model; is it the output of "
                         "this pipeline?") from err
    doc_id = features["doc_id"][0].decode("utf-8") if "doc_id" in features else record_id
    return ExampleKey(record_id, hash_hex, model, "sequence_length" in features, doc_id)


# The BigQuery table's columns: (name, type, mode). to_row() builds exactly these.
SCHEMA = (
    ("id", "STRING", "REQUIRED"),
    ("embedding", "FLOAT64", "REPEATED"),
    ("model", "STRING", "REQUIRED"),  # feature_spec's `model`: a fingerprint of models and settings.
    ("content_hash", "STRING", "REQUIRED"),
    ("embedded_at", "TIMESTAMP", "REQUIRED"),
    ("run_id", "STRING", "REQUIRED"),
)
# The columns a chunked run's table has besides (--chunking); to_row fills them for chunks.
CHUNK_SCHEMA = (
    ("doc_id", "STRING", "REQUIRED"),
    ("chunk_index", "INT64", "REQUIRED"),
    ("chunk_count", "INT64", "REQUIRED"),
    ("char_start", "INT64", "REQUIRED"),
    ("char_end", "INT64", "REQUIRED"),
    ("chunk_text", "STRING", "NULLABLE"),  # With --output_chunk_text.
)


def schema(chunks: bool = False, kept: tuple = ()) -> tuple:
    """The table's columns: SCHEMA, CHUNK_SCHEMA's after them for a chunked run, then the kept fields (Columns,
    --keep_fields): NULLABLE, or REPEATED for lists; json as STRING (JSON text)."""
    columns = SCHEMA + (CHUNK_SCHEMA if chunks else ())
    for column in kept:
        repeated = column.type.startswith("list<")
        base = column.type[5:-1] if repeated else column.type
        columns += ((column.name, _BIGQUERY_TYPES[base], "REPEATED" if repeated else "NULLABLE"),)
    return columns


_BIGQUERY_TYPES = {"string": "STRING", "int64": "INT64", "float64": "FLOAT64", "bool": "BOOL", "json": "STRING"}


def to_row(key: RecordKey, vector, model: str, run_id: str, embedded_at: datetime.datetime) -> dict:
    """One table row (SCHEMA's columns, and CHUNK_SCHEMA's for a chunk) for an embedded record."""
    row = {
        "id": key.id,
        "embedding": [float(x) for x in vector],
        "model": model,
        "content_hash": key.content_hash,
        "embedded_at": _timestamp_text(embedded_at),
        "run_id": run_id,
    }
    if key.chunk is not None:
        row.update(_chunk_fields(key.chunk))
    row.update(key.fields)
    return row


def from_read_row(row: dict, source: str, chunks: bool = False, kept: tuple = ()) -> dict:
    """A row read back from a table as to_row would have built it (schema(chunks)'s columns), ready to be loaded
    again.

    Raises:
        ValueError: naming `source`, when a SCHEMA column other than the embedding is empty.
    """
    missing = [name for name, _, _ in SCHEMA if name != "embedding" and row.get(name) in (None, "")]
    if missing:
        raise ValueError(f"{source} holds a row without {', '.join(missing)} (id {row.get('id')!r}); is it a table "
                         "this pipeline wrote?")
    embedded_at = row["embedded_at"]
    read = {
        "id": row["id"],
        "embedding": [float(x) for x in row.get("embedding") or ()],
        "model": row["model"],
        "content_hash": row["content_hash"],
        "embedded_at": _timestamp_text(embedded_at) if isinstance(embedded_at, datetime.datetime) else embedded_at,
        "run_id": row["run_id"],
    }
    if chunks:
        read.update({name: row.get(name) for name, _, _ in CHUNK_SCHEMA})
    read.update({column.name: row.get(column.name) for column in kept})
    return read


def _timestamp_text(when: datetime.datetime) -> str:
    """BigQuery's canonical text form of a TIMESTAMP, which load jobs and streaming inserts both accept."""
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


# --- Columns: what every typed sink (Parquet, PostgreSQL, Vertex AI) writes, as (name, type) ---------------------

# Types of kept fields (--keep_fields), which each typed sink maps to its own; "list<T>" for the first four, and
# "vector" is the embedding's (float32, the model's dimension). A value of no other type is kept as JSON text.
FIELD_TYPES = ("string", "int64", "float64", "bool", "json")
_SCALAR_TYPES = FIELD_TYPES[:4]


class Column(NamedTuple):
    """One output column: its name and type (FIELD_TYPES, "list<T>", or "vector")."""

    name: str
    type: str


# The columns of every typed sink before the kept fields; more (say, of chunks) go here, and sinks follow.
BASE_COLUMNS = (Column("id", "string"), Column("embedding", "vector"), Column("model", "string"),
                Column("content_hash", "string"))
# A chunk's columns (--chunking), after BASE_COLUMNS; chunk_text is null without --output_chunk_text.
CHUNK_COLUMNS = (Column("doc_id", "string"), Column("chunk_index", "int64"), Column("chunk_count", "int64"),
                 Column("char_start", "int64"), Column("char_end", "int64"), Column("chunk_text", "string"))
# Names a kept field may not take: a column or feature of some sink.
RESERVED_NAMES = frozenset([column.name for column in BASE_COLUMNS + CHUNK_COLUMNS]
                           + [name for name, _, _ in SCHEMA] + ["sequence", "sequence_length"])


def output_columns(kept: tuple[Column, ...] = (), chunks: bool = False) -> tuple[Column, ...]:
    """The columns of a typed sink: BASE_COLUMNS, CHUNK_COLUMNS for chunks, then the kept fields in the order of
    --keep_fields."""
    return BASE_COLUMNS + (CHUNK_COLUMNS if chunks else ()) + tuple(kept)


def _scalar_type(value) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return None


def _join(a: str | None, b: str | None) -> str | None:
    """The type that holds values of both types (None: no value seen yet)."""
    if a is None or a == b:
        return b
    if b is None:
        return a
    if {a, b} == {"int64", "float64"}:
        return "float64"
    return "json"


def infer_field_type(values) -> str:
    """The column type of a kept field from sample values (None for absent): the narrowest that holds them all.

    Integers and floats make float64; a scalar beside lists of its type makes a list; anything else mixed, and
    objects, make json. A field with no value in the sample is a string.
    """
    scalar = element = None
    has_list = has_other = False
    for value in values:
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            has_list = True
            for item in value:
                item_type = _scalar_type(item)
                has_other = has_other or item_type is None
                element = _join(element, item_type)
        else:
            value_type = _scalar_type(value)
            has_other = has_other or value_type is None
            scalar = _join(scalar, value_type)
    if has_other:
        return "json"
    if not has_list:
        return scalar or "string"
    joined = _join(scalar, element) if scalar else (element or "string")
    return "json" if joined == "json" else f"list<{joined}>"


_MISMATCH = object()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # What every sink's integer column holds.


def _typed_scalar(value, type_: str):
    if type_ == "string":
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    if type_ == "bool":
        return value if isinstance(value, bool) else _MISMATCH
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _MISMATCH
    if type_ == "float64":
        try:
            return float(value)
        except OverflowError:  # An integer beyond a double's range.
            return _MISMATCH
    whole = value if isinstance(value, int) else (int(value) if math.isfinite(value) and value.is_integer()
                                                   else _MISMATCH)
    return whole if whole is _MISMATCH or _INT64_MIN <= whole <= _INT64_MAX else _MISMATCH


def typed_value(value, type_: str):
    """`value` as a value of column type `type_` (None stays None); raises ValueError when it is not one.

    json is JSON text; a string column takes any value, non-strings as JSON text; an integer fits a float
    column and a whole float an integer one; a scalar fits a list column as a list of one. An integer must fit
    in 64 bits, and json text holds no NaN or Infinity (which JSON has no words for).
    """
    if value is None:
        return None
    if type_ == "json":
        try:
            return json.dumps(value, ensure_ascii=False, sort_keys=True, allow_nan=False)
        except ValueError as err:
            raise ValueError(f"{value!r} is not JSON: {err}") from None
    if type_.startswith("list<"):
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        typed = [_typed_scalar(item, type_[5:-1]) for item in items]
        result = typed if _MISMATCH not in typed and None not in items else _MISMATCH
    else:
        result = _typed_scalar(value, type_) if not isinstance(value, (list, tuple, dict)) or type_ == "string" \
            else _MISMATCH
    if result is _MISMATCH:
        raise ValueError(f"{value!r} is not a {type_}")
    return result


def float64_bytes(value: float) -> bytes:
    """A float64 kept field's value as an Example stores it: its 8 IEEE-754 bytes, little-endian, one bytes_list
    entry per value (float_list holds only float32). Read with tf.io.decode_raw(feature, tf.float64)."""
    return struct.pack("<d", value)


def _field_features(fields) -> dict:
    """Example features of kept fields (typed values); nulls are left out."""
    features = {}
    for name, value in fields:
        if value is None:
            continue
        items = list(value) if isinstance(value, list) else [value]
        if items and isinstance(items[0], str):
            features[name] = [item.encode("utf-8") for item in items]
        elif items and isinstance(items[0], float):
            features[name] = [float64_bytes(item) for item in items]
        else:
            features[name] = [int(item) for item in items]
    return features


def _field_from_feature(values, type_: str):
    """A kept field's typed value from its parsed Example feature (None when absent)."""
    if values is None:
        return None
    if type_ in ("float64", "list<float64>"):  # float64_bytes', or an older run's float32 float_list.
        items = [struct.unpack("<d", item)[0] if isinstance(item, bytes) else item.item() for item in values]
    else:
        items = [item.decode("utf-8") if isinstance(item, bytes) else item.item() for item in values]
    if type_ == "bool" or type_ == "list<bool>":
        items = [bool(item) for item in items]
    if type_.startswith("list<"):
        return items
    return items[0] if items else None


def output_row(key: RecordKey, vector, model: str) -> dict:
    """The row of an embedded record over output_columns: id, embedding (float32 values), model, content_hash
    and the kept fields."""
    row = {"id": key.id, "embedding": [float(x) for x in vector], "model": model, "content_hash": key.content_hash}
    if key.chunk is not None:
        row.update({"chunk_text": None, **_chunk_fields(key.chunk)})
    row.update(key.fields)
    return row


def carried_row(carried, columns: tuple[Column, ...]) -> dict:
    """The row over `columns` of a record carried forward from an earlier run: a serialised Example (an earlier
    TFRecord run) or a table row (an earlier BigQuery run); kept fields it lacks are null."""
    if isinstance(carried, dict):
        return {column.name: carried.get(column.name) for column in columns}
    from transforms.examples import parse_example

    features = parse_example(carried)
    row = {}
    for column in columns:
        values = features.get(column.name)
        if column.type == "vector":
            row[column.name] = [float(x) for x in values]
        else:
            row[column.name] = _field_from_feature(values, column.type)
    return row


def refresh_fields(carried, fields: tuple[tuple[str, object], ...]):
    """(`carried` with its kept fields replaced by `fields`, whether any of them held another value before): a
    sink that takes only what changed (Vertex AI) needs the records whose fields alone changed."""
    if not fields:
        return carried, False
    if isinstance(carried, dict):
        return {**carried, **dict(fields)}, any(carried.get(name) != value for name, value in fields)
    import numpy as np

    from transforms.examples import parse_example, serialize_example

    kept = {name for name, _ in fields}
    parsed = parse_example(carried)
    wanted = _field_features(fields)
    if all(_plain(parsed.get(name)) == _plain(wanted.get(name)) for name in kept):
        return carried, False  # The same features: serialize_example would give these very bytes again.
    features = {}
    for name, values in parsed.items():
        if name in kept or values is None:
            continue
        features[name] = values if values.dtype == np.float32 else list(
            values if values.dtype != np.int64 else (int(v) for v in values))
    features.update(wanted)
    return serialize_example(features), True


def _plain(values) -> list | None:
    """A feature's values as a plain list, parsed (numpy) or about to be written (lists)."""
    if values is None:
        return None
    return values.tolist() if hasattr(values, "tolist") else list(values)
