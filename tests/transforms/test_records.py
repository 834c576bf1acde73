"""The record model (transforms.records): one dead-letter form for every failure, layouts that read back."""

import datetime
import json

import numpy as np
import pytest

from transforms import records


class _Embedding:
    def __init__(self, vector, tokens=3, sequence=None):
        self.vector, self.tokens, self.truncated, self.sequence = vector, tokens, False, sequence


@pytest.mark.parametrize("failure", [
    records.make_failure("c.jsonl", "invalid_json", "Expecting value", "{"),
    records.inference_failure(records.RecordKey("a", "h", "c.jsonl"), ("x", "y"), "OOM"),
    records.refused_row_failure("p:d.t", {"id": "a", "embedding": [1.0], "model": "m"}, [{"reason": "invalid"}]),
])
def test_every_failure_is_one_json_line_with_the_same_keys(failure):
    line = records.failure_to_json(failure)
    assert "\n" not in line
    assert list(json.loads(line)) == ["source", "reason", "detail", "record"]


def test_a_long_record_and_detail_are_cut_and_the_detail_says_so():
    failure = records.inference_failure(records.RecordKey("a", "h", "c.jsonl"), ("x" * 5000,), "e" * 5000)
    assert len(failure.record) == records.MAX_RECORD_CHARS
    assert failure.detail.startswith("e" * records.MAX_RECORD_CHARS)
    whole = len(records.record_text("a", ("x" * 5000,)))
    assert failure.detail.endswith(f"(record cut from {whole} to 1000 characters)")


def test_refused_rows_leave_their_embedding_out():
    failure = records.refused_row_failure("p:d.t", {"id": "a", "embedding": [1.0] * 384}, {"e": 1})
    assert json.loads(failure.record) == {"id": "a"} and failure.source == "p:d.t"


@pytest.mark.parametrize("sequence", [None, np.ones((3, 2), np.float32)])
def test_an_example_reads_back_its_key(sequence):
    key = records.RecordKey("doc-7", "ab" * 32, "c.jsonl")
    serialized = records.example_bytes(key, _Embedding(np.array([0.5, -1.0], np.float32), 3, sequence), "fp")
    assert records.example_key(serialized, "f") == records.ExampleKey("doc-7", "ab" * 32, "fp", sequence is not None,
                                                                      "doc-7")


def test_a_chunk_example_reads_back_its_document_and_place():
    import tensorflow as tf

    document = records.RecordKey("doc-7", "ab" * 32, "c.jsonl")
    key = records.chunk_key(document, records.ChunkKey("doc-7", 2, 5, 40, 61, "é chunk"))
    serialized = records.example_bytes(key, _Embedding(np.array([0.5, -1.0], np.float32), 3, None), "fp")
    assert records.example_key(serialized, "f") == records.ExampleKey("doc-7#2", "ab" * 32, "fp", False, "doc-7")
    parsed = tf.io.parse_example([serialized], records.feature_spec(chunks=True, chunk_text=True))
    assert {name: parsed[name][0].numpy() for name in ("doc_id", "chunk_index", "chunk_count", "char_start",
                                                        "char_end", "chunk_text")} == {
        "doc_id": b"doc-7", "chunk_index": 2, "chunk_count": 5, "char_start": 40, "char_end": 61,
        "chunk_text": "é chunk".encode()}
    row = records.to_row(key, [0.5], "fp", "run", datetime.datetime(2026, 1, 1))
    assert [name for name, _, _ in records.schema(chunks=True)] == list(row)


def test_an_example_of_another_layout_is_refused_naming_its_file():
    from transforms.examples import serialize_example

    with pytest.raises(ValueError, match="other.tfrecord holds a record without id"):
        records.example_key(serialize_example({"text": [b"x"]}), "other.tfrecord")


def test_a_row_read_back_is_the_row_written():
    when = datetime.datetime(2026, 11, 24, 23, 5, 6, 789012, tzinfo=datetime.timezone.utc)
    row = records.to_row(records.RecordKey("a", "h", "c.jsonl"), np.array([0.5], np.float32), "m", "r1", when)
    read_back = dict(row, embedded_at=when)  # The BigQuery client returns TIMESTAMPs as datetimes.
    assert records.from_read_row(read_back, "t") == row
    with pytest.raises(ValueError, match="t holds a row without model"):
        records.from_read_row(dict(row, model=None), "t")


@pytest.mark.parametrize("values,expected", [
    (["a", None, "b"], "string"), ([1, 2], "int64"), ([1, 2.5], "float64"), ([True, False], "bool"),
    ([[1], 2, []], "list<int64>"), ([["a"], [1]], "json"), ([{"k": 1}], "json"), ([1, "a"], "json"),
    ([None], "string"), ([True, 1], "json"),
])
def test_kept_field_types_are_the_narrowest_that_hold_the_sample(values, expected):
    assert records.infer_field_type(values) == expected


def test_kept_fields_travel_in_the_example_and_a_carried_record_takes_the_current_ones():
    columns = records.output_columns((records.Column("lang", "string"), records.Column("ok", "bool"),
                                      records.Column("tags", "list<int64>"), records.Column("gone", "float64")))
    key = records.RecordKey("a", "h", "c.jsonl", (("lang", "en"), ("ok", True), ("tags", [3, 4]), ("gone", None)))
    serialized = records.example_bytes(key, _Embedding(np.array([0.5, 1.0], np.float32)), "m")
    row = records.carried_row(serialized, columns)
    assert row == records.output_row(key, [0.5, 1.0], "m")
    assert row == {"id": "a", "embedding": [0.5, 1.0], "model": "m", "content_hash": "h", "lang": "en", "ok": True,
                   "tags": [3, 4], "gone": None}
    refreshed, _ = records.refresh_fields(serialized, (("lang", "fr"), ("ok", False), ("tags", []), ("gone", 1.5)))
    assert records.carried_row(refreshed, columns) == {**row, "lang": "fr", "ok": False, "tags": [], "gone": 1.5}
    assert records.refresh_fields(serialized, ())[0] is serialized
    # The same values: the very same bytes, and nothing changed (no sink that takes only changes gets it again).
    assert records.refresh_fields(serialized, key.fields) == (serialized, False)


@pytest.mark.parametrize("value,type_", [(2**70, "int64"), (-(2**63) - 1, "int64"), (2**63, "int64"),
                                         (float("inf"), "int64"), (1e300, "int64"), ({"x": float("nan")}, "json"),
                                         ([1.0, float("inf")], "json"), (10**400, "float64")])
def test_a_value_no_sink_can_hold_exactly_is_a_mismatch_not_a_crash(value, type_):
    with pytest.raises(ValueError):
        records.typed_value(value, type_)


def test_values_at_the_edges_of_their_types_are_kept():
    assert records.typed_value(2**63 - 1, "int64") == 2**63 - 1 and records.typed_value(-(2**63), "int64") == -(2**63)
    assert records.typed_value(2**70, "float64") == float(2**70)
    assert records.typed_value(float("nan"), "string") == "NaN"


def test_float_kept_fields_keep_float64_in_the_example():
    import tensorflow as tf

    columns = records.output_columns((records.Column("score", "float64"), records.Column("xs", "list<float64>")))
    values = (("score", 0.1), ("xs", [1e300, -5e-324, float("inf")]))
    key = records.RecordKey("a", "h", "c.jsonl", values)
    serialized = records.example_bytes(key, _Embedding(np.array([0.5], np.float32)), "m")
    row = records.carried_row(serialized, columns)
    assert row["score"] == 0.1 and row["xs"] == [1e300, -5e-324, float("inf")]
    # As the README says to read it: tf.io.decode_raw of the bytes feature.
    parsed = tf.io.parse_single_example(serialized, {"xs": tf.io.VarLenFeature(tf.string)})
    assert tf.io.decode_raw(parsed["xs"].values, tf.float64).numpy().ravel().tolist() == [1e300, -5e-324,
                                                                                           float("inf")]


def test_an_inference_failure_holds_the_records_raw_line(tmp_path):
    from transforms.read import ReadCorpus

    corpus = tmp_path / "c.jsonl"
    first = '{"id": "a", "text": "x"}\n'
    corpus.write_text(first + '{"text": "BOOM",   "id": "b"}\n')
    # As the pipeline reads a plain file: the record's position is its line's byte offset.
    record = records.Record("b", ("BOOM",), records.content_hash(("BOOM",)), str(corpus), position=len(first))
    raw_of = ReadCorpus([str(corpus)], "jsonl").raw_records()
    failure = records.inference_failure(record.key, record.texts, "the model choked", raw_of=raw_of)
    assert failure.record == '{"text": "BOOM",   "id": "b"}' and failure.reason == "inference_error"
    corpus.write_text("")  # Gone from its file: its id and texts instead, never a crash.
    assert json.loads(records.inference_failure(record.key, record.texts, "e", raw_of=raw_of).record) == {
        "id": "b", "texts": ["BOOM"]}
