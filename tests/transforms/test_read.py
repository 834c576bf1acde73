"""Tests for transforms/read.py: every format, ids, pair mode, sharded inputs and every failure reason."""

import base64
import gzip
import hashlib
import json
import zlib

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.read import (
    FAILED_TAG,
    FAILURE_REASONS,
    FORMATS,
    RECORDS_TAG,
    ReadCorpus,
    check_inputs_exist,
    infer_format,
)
from transforms.records import Failure, Record, failure_to_json

# sha256 of b"\x00\x00\x00\x00\x00\x00\x00\x05hello", worked out once: pins the id scheme across releases.
_HELLO_HASH = "c6402d15196824a049ad87c371a5047a673535c2ac8607e2bfa483f7591cc27a"


def _hash(*texts):
    """The content hash, computed independently of the module under test."""
    data = b"".join(len(t.encode()).to_bytes(8, "big") + t.encode() for t in texts)
    return hashlib.sha256(data).hexdigest()


def _record(record_id, texts, source):
    """The Record expected for texts, with a content-derived id when record_id is None."""
    content_hash = _hash(*texts)
    return Record(record_id or "sha256:" + content_hash[:16], tuple(texts), content_hash, str(source))


def _write_lines(path, lines, newline="\n"):
    """Writes str or bytes lines, each followed by a newline."""
    data = b"".join((line if isinstance(line, bytes) else line.encode()) + newline.encode() for line in lines)
    path.write_bytes(data)
    return path


def _example(**features):
    """A serialised tf.train.Example; values are lists of bytes, ints or floats."""
    import tensorflow as tf

    feature = {}
    for name, values in features.items():
        if values and isinstance(values[0], bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        elif values and isinstance(values[0], float):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        elif values:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        else:
            feature[name] = tf.train.Feature()
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_tfrecord(path, records):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path


def _failures_are(expected):
    """Matches failures on (reason, record, source), ignoring the free-text detail."""

    def check(actual):
        assert all(isinstance(f, Failure) and f.detail for f in actual), actual
        got = sorted((f.reason, f.record, f.source) for f in actual)
        assert got == sorted(expected), f"\n got: {got}\nwant: {sorted(expected)}"

    return check


def _run_read(patterns, input_format, records, failures, **kwargs):
    """Reads the patterns on the FnApiRunner and checks both outputs; returns the pipeline result."""
    pipeline = test_pipeline.TestPipeline(runner="FnApiRunner")
    read_records, read_failures = pipeline | "ReadCorpus" >> ReadCorpus(
        [str(p) for p in patterns], input_format, **kwargs
    )
    # Positions have their own test (test_each_record_knows_its_position_in_its_file).
    read_records = read_records | "WithoutPositions" >> beam.Map(lambda record: record._replace(position=0))
    assert_that(read_records, records if callable(records) else equal_to(records), label="CheckRecords")
    assert_that(read_failures, failures if callable(failures) else equal_to(failures), label="CheckFailures")
    result = pipeline.run()
    result.wait_until_finish()
    return result


# Format inference and input checks.


@pytest.mark.parametrize(
    "patterns, expected",
    [
        (["corpus.txt"], "text"),
        (["gs://bucket/corpus-*.text"], "text"),
        (["a.jsonl", "b.JSON", "c.ndjson.gz"], "jsonl"),
        (["data/part-*.csv.gz"], "csv"),
        (["x.tsv"], "tsv"),
        (["gs://b/train-*-of-00004.tfrecord", "gs://b/extra.tfrec.gz"], "tfrecord"),
        (["corpus.txt.bz2"], "text"),
    ],
)
def test_infer_format(patterns, expected):
    assert infer_format(patterns) == expected
    assert expected in FORMATS


@pytest.mark.parametrize("pattern", ["corpus", "gs://bucket/part-*", "data.parquet", "notes.gz"])
def test_infer_format_unknown_extension_names_pattern_and_flag(pattern):
    with pytest.raises(ValueError, match="--input_format") as err:
        infer_format([pattern])
    assert repr(pattern) in str(err.value)


def test_infer_format_mixed_formats():
    with pytest.raises(ValueError, match="mixed formats") as err:
        infer_format(["a.jsonl", "b.csv"])
    assert "'b.csv'" in str(err.value) and "--input_format" in str(err.value)


def test_infer_format_no_patterns():
    with pytest.raises(ValueError, match="No input patterns"):
        infer_format([])


def test_check_inputs_exist(tmp_path):
    for name in ("a-0.txt", "a-1.txt", "b.txt"):
        (tmp_path / name).write_text("x\n")
    found = check_inputs_exist([str(tmp_path / "a-*.txt"), str(tmp_path / "b.txt"), str(tmp_path / "*.txt")])
    assert found == sorted(str(tmp_path / name) for name in ("a-0.txt", "a-1.txt", "b.txt"))


def test_check_inputs_exist_names_unmatched_patterns(tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    missing = str(tmp_path / "missing-*.txt")
    with pytest.raises(ValueError, match="matched no files") as err:
        check_inputs_exist([str(tmp_path / "a.txt"), missing])
    assert repr(missing) in str(err.value)
    assert str(tmp_path / "a.txt") not in str(err.value)
    with pytest.raises(ValueError, match="No input patterns"):
        check_inputs_exist([])


def test_read_corpus_rejects_bad_arguments():
    with pytest.raises(ValueError, match="--input_format 'parquet'"):
        ReadCorpus(["a.parquet"], "parquet")
    with pytest.raises(ValueError, match="Pair mode"):
        ReadCorpus(["a.txt"], "text", pair_fields=("q", "d"))
    with pytest.raises(ValueError, match="pair_fields"):
        ReadCorpus(["a.jsonl"], "jsonl", pair_fields=("q", "q"))
    with pytest.raises(ValueError, match="No input patterns"):
        ReadCorpus([], "jsonl")


def test_failure_to_json_is_one_line():
    failure = Failure(
        source="gs://b/a.jsonl", reason="invalid_json", detail="Expecting value", record='{"x":\n é'
    )
    line = failure_to_json(failure)
    assert "\n" not in line
    assert json.loads(line) == {
        "source": "gs://b/a.jsonl",
        "reason": "invalid_json",
        "detail": "Expecting value",
        "record": '{"x":\n é',
    }


# Every format, read from real files.


def test_text_ids_are_derived_from_content_and_blank_lines_fail(tmp_path):
    lines = ["hello", "  spaced  text ", "", "hello", "\t"]
    path = _write_lines(tmp_path / "corpus.txt", lines, newline="\r\n")
    _run_read(
        [path],
        "text",
        records=[
            _record(None, ["hello"], path),
            _record(None, ["  spaced  text "], path),
            _record(None, ["hello"], path),
        ],
        failures=_failures_are([("empty_text", "", str(path)), ("empty_text", "\t", str(path))]),
    )
    assert _hash("hello") == _HELLO_HASH
    assert _record(None, ["hello"], path).id == "sha256:" + _HELLO_HASH[:16]


def test_text_gzip_and_byte_order_mark(tmp_path):
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(gzip.compress("\ufeffﬁrst line\nsecond ✓\n".encode()))
    _run_read([path], "text", [_record(None, ["ﬁrst line"], path), _record(None, ["second ✓"], path)], [])


def test_plain_and_compressed_files_read_together_and_each_kind_alone(tmp_path):
    plain = _write_lines(tmp_path / "a.txt", ["one", "two"])
    packed = tmp_path / "b.txt.gz"
    packed.write_bytes(gzip.compress(b"three\n"))
    expected = {plain: [_record(None, ["one"], plain), _record(None, ["two"], plain)],
                packed: [_record(None, ["three"], packed)]}
    for paths in ([plain], [packed], [plain, packed]):
        _run_read(paths, "text", [record for path in paths for record in expected[path]], [])


def test_each_record_knows_its_position_in_its_file(tmp_path):
    """Byte offsets in plain files (Beam's reader splits them), indexes in compressed and TFRecord files."""
    plain = _write_lines(tmp_path / "a.csv", ["id,text", "1,one", "2,two", "3,three"])
    packed = tmp_path / "b.csv.gz"
    packed.write_bytes(gzip.compress(b"id,text\n4,four\n5,five\n"))
    examples = _write_tfrecord(tmp_path / "c.tfrecord", [_example(id=[b"6"], text=[b"six"]),
                                                          _example(id=[b"7"], text=[b"seven"])])
    _run_positions([plain, packed], "csv", {"1": 8, "2": 14, "3": 20, "4": 1, "5": 2})
    _run_positions([examples], "tfrecord", {"6": 0, "7": 1})


def test_a_file_matched_by_two_patterns_is_read_once(tmp_path):
    path = _write_lines(tmp_path / "a.jsonl", ['{"id": "1", "text": "one"}', '{"id": "2", "text": "two"}'])
    with test_pipeline.TestPipeline(runner="FnApiRunner") as pipeline:
        records, _ = pipeline | ReadCorpus([str(path), str(tmp_path / "*.jsonl")], "jsonl")
        assert_that(records | beam.Map(lambda r: (r.id, r.position)), equal_to([("1", 0), ("2", 27)]))


def _run_positions(paths, input_format, expected):
    with test_pipeline.TestPipeline(runner="FnApiRunner") as pipeline:
        records, _ = pipeline | ReadCorpus([str(p) for p in paths], input_format)
        assert_that(records | beam.Map(lambda r: (r.id, r.position)), equal_to(sorted(expected.items())))


@pytest.mark.parametrize("kinds,flattened", [(("a.txt",), False), (("b.txt.gz",), False),
                                             (("a.txt", "b.txt.gz"), True)])
def test_only_an_input_of_both_kinds_flattens_two_readers(tmp_path, kinds, flattened):
    """A local runner holds every element that crosses a Flatten of two inputs in memory: the corpus's lines
    may cross one only where plain and compressed files are read together."""
    for name in kinds:
        (tmp_path / name).write_bytes(gzip.compress(b"x\n") if name.endswith(".gz") else b"x\n")
    pipeline = beam.Pipeline()
    _ = pipeline | ReadCorpus([str(tmp_path / name) for name in kinds], "text")
    labels = []

    class Labels(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            if isinstance(node.transform, beam.Flatten):
                labels.append(node.full_label)

    pipeline.visit(Labels())
    assert bool(labels) == flattened, labels


def test_jsonl_ids_given_and_derived(tmp_path):
    path = _write_lines(
        tmp_path / "corpus.jsonl",
        [
            json.dumps({"doc": "a-1", "body": "first", "extra": [1, 2]}),
            json.dumps({"doc": 17, "body": "second"}),
            json.dumps({"body": "no id"}),
            json.dumps({"doc": None, "body": "null id"}),
            json.dumps({"doc": " ", "body": "blank id"}),
            json.dumps({"doc": "é", "body": "ünïcode ✓"}, ensure_ascii=False),
        ],
    )
    _run_read(
        [path],
        "jsonl",
        [
            _record("a-1", ["first"], path),
            _record("17", ["second"], path),
            _record(None, ["no id"], path),
            _record(None, ["null id"], path),
            _record(None, ["blank id"], path),
            _record("é", ["ünïcode ✓"], path),
        ],
        [],
        id_field="doc",
        text_field="body",
    )


def test_csv_quoting_column_order_and_header_bom(tmp_path):
    path = _write_lines(
        tmp_path / "corpus.csv",
        [
            "\ufefftext,source,id",
            '"Hello, world",web,1',
            '"She said ""hi""",book,',
            "plain,web,x9",
        ],
        newline="\r\n",
    )
    _run_read(
        [path],
        "csv",
        [
            _record("1", ["Hello, world"], path),
            _record(None, ['She said "hi"'], path),
            _record("x9", ["plain"], path),
        ],
        [],
    )


def test_tsv_keeps_quotes_as_text(tmp_path):
    path = _write_lines(tmp_path / "corpus.tsv", ["id\ttext", 'q1\t"Quoted," she said', "q2\tcomma, kept"])
    _run_read(
        [path],
        "tsv",
        [_record("q1", ['"Quoted," she said'], path), _record("q2", ["comma, kept"], path)],
        [],
    )


def test_tfrecord_examples(tmp_path):
    path = _write_tfrecord(
        tmp_path / "corpus.tfrecord",
        [
            _example(id=[b"doc-1"], text=["first ✓".encode()]),
            _example(id=[42], text=[b"second"], label=[1.0]),
            _example(text=[b"no id"]),
        ],
    )
    _run_read(
        [path],
        "tfrecord",
        [
            _record("doc-1", ["first ✓"], path),
            _record("42", ["second"], path),
            _record(None, ["no id"], path),
        ],
        [],
    )


def test_sharded_glob_and_two_patterns_each_file_with_its_own_header(tmp_path):
    shard0 = _write_lines(tmp_path / "part-00000-of-00002.csv", ["id,text", "a,alpha", "b,beta"])
    # The second shard orders its columns differently: headers are read per file.
    shard1 = _write_lines(tmp_path / "part-00001-of-00002.csv", ["text,id", "gamma,c", "delta,d,extra"])
    extra = tmp_path / "extra.csv.gz"
    extra.write_bytes(gzip.compress(b"id,text\ne,epsilon\n"))
    _run_read(
        [tmp_path / "part-*-of-00002.csv", extra],
        "csv",
        [
            _record("a", ["alpha"], shard0),
            _record("b", ["beta"], shard0),
            _record("c", ["gamma"], shard1),
            _record("e", ["epsilon"], extra),
        ],
        _failures_are([("csv_field_count", "delta,d,extra", str(shard1))]),
    )


def test_pair_mode_jsonl_and_length_prefixed_hash(tmp_path):
    path = _write_lines(
        tmp_path / "pairs.jsonl",
        [
            json.dumps({"id": "p1", "query": "ab", "doc": "c"}),
            json.dumps({"id": "p2", "query": "a", "doc": "bc"}),
            json.dumps({"query": "ab", "doc": "c"}),
            json.dumps({"id": "p4", "query": "only a query"}),
        ],
    )

    def check(records):
        assert sorted(records) == sorted(
            [
                _record("p1", ["ab", "c"], path),
                _record("p2", ["a", "bc"], path),
                _record(None, ["ab", "c"], path),
            ]
        )
        by_id = {r.id: r for r in records}
        assert by_id["p1"].content_hash != by_id["p2"].content_hash
        assert by_id["sha256:" + by_id["p1"].content_hash[:16]].texts == ("ab", "c")

    _run_read(
        [path],
        "jsonl",
        check,
        _failures_are([("missing_field", json.dumps({"id": "p4", "query": "only a query"}), str(path))]),
        pair_fields=("query", "doc"),
    )


def test_pair_mode_csv_and_tfrecord(tmp_path):
    csv_path = _write_lines(tmp_path / "pairs.csv", ["q,d,id", "what,that,1", "who,,2"])
    _run_read(
        [csv_path],
        "csv",
        [_record("1", ["what", "that"], csv_path)],
        _failures_are([("empty_text", "who,,2", str(csv_path))]),
        pair_fields=("q", "d"),
    )
    tf_path = _write_tfrecord(tmp_path / "pairs.tfrecord", [_example(id=[b"t1"], q=[b"why"], d=[b"because"])])
    _run_read([tf_path], "tfrecord", [_record("t1", ["why", "because"], tf_path)], [], pair_fields=("q", "d"))


# Every failure reason, with its raw record, and counts that add up.


def test_jsonl_failures_and_counters(tmp_path):
    long_line = "{" + "x" * 2999
    lines = [
        json.dumps({"id": "ok", "text": "fine"}),
        "{not json",
        "[1, 2]",
        '"a string"',
        json.dumps({"id": "m1"}),
        json.dumps({"id": "m2", "text": None}),
        json.dumps({"id": "n1", "text": 3}),
        json.dumps({"id": "n2", "text": ["a"]}),
        json.dumps({"id": "n3", "text": {"a": 1}}),
        json.dumps({"id": 1.5, "text": "float id"}),
        json.dumps({"id": "e1", "text": ""}),
        json.dumps({"id": "e2", "text": " \t "}),
        "",
        b'{"id": "u1", "text": "caf\xe9"}',
        long_line,
    ]
    path = _write_lines(tmp_path / "bad.jsonl", lines)
    source = str(path)
    expected = [
        ("invalid_json", "{not json", source),
        ("invalid_json", "[1, 2]", source),
        ("invalid_json", '"a string"', source),
        ("missing_field", lines[4], source),
        ("missing_field", lines[5], source),
        ("not_a_string", lines[6], source),
        ("not_a_string", lines[7], source),
        ("not_a_string", lines[8], source),
        ("not_a_string", lines[9], source),
        ("empty_text", lines[10], source),
        ("empty_text", lines[11], source),
        ("empty_text", "", source),
        ("undecodable_bytes", '{"id": "u1", "text": "caf\\xe9"}', source),
        ("invalid_json", long_line[:1000], source),
    ]
    assert len(expected) + 1 == len(lines)

    def check_failures(failures):
        _failures_are(expected)(failures)
        (long,) = [f for f in failures if f.record.startswith("{xxx")]
        assert "3000" in long.detail
        for failure in failures:
            assert json.loads(failure_to_json(failure))["record"] == failure.record

    result = _run_read([path], "jsonl", [_record("ok", ["fine"], path)], check_failures)

    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("embeddings"))["counters"]
    }
    assert counters["records_read"] == 1
    assert counters["failed_invalid_json"] == 4
    assert counters["failed_missing_field"] == 2
    assert counters["failed_not_a_string"] == 4
    assert counters["failed_empty_text"] == 3
    assert counters["failed_undecodable_bytes"] == 1
    assert sum(counters.get(f"failed_{reason}", 0) for reason in FAILURE_REASONS) == len(lines) - 1


def test_csv_failures(tmp_path):
    path = _write_lines(
        tmp_path / "bad.csv",
        [
            "id,text",
            "1,good",
            "2,too,many",
            "3",
            "4,",
            "",
            b"5,caf\xe9",
            '6,"spans',
            'lines"',
        ],
    )
    # A file whose header lacks the text column: every row misses the field.
    no_text = _write_lines(tmp_path / "no_text.csv", ["id,body", "7,hello"])
    bad_header = _write_lines(tmp_path / "bad_header.csv", [b"id,t\xe9xt", b"8,hello"])
    _run_read(
        [tmp_path / "*.csv"],
        "csv",
        [_record("1", ["good"], path)],
        _failures_are(
            [
                ("csv_field_count", "2,too,many", str(path)),
                ("csv_field_count", "3", str(path)),
                ("empty_text", "4,", str(path)),
                ("empty_text", "", str(path)),
                ("undecodable_bytes", "5,caf\\xe9", str(path)),
                ("csv_field_count", '6,"spans', str(path)),
                ("csv_field_count", 'lines"', str(path)),
                ("missing_field", "7,hello", str(no_text)),
                ("undecodable_bytes", "8,hello", str(bad_header)),
            ]
        ),
    )


def test_text_undecodable_line(tmp_path):
    path = _write_lines(tmp_path / "corpus.txt", [b"good", b"\xff\xfe bad"])
    _run_read(
        [path],
        "text",
        [_record(None, ["good"], path)],
        _failures_are([("undecodable_bytes", "\\xff\\xfe bad", str(path))]),
    )


def test_tfrecord_failures(tmp_path):
    bad = {
        "not_an_example": b"not an example",
        "absent": _example(id=[b"a"]),
        "empty_list": _example(id=[b"b"], text=[]),
        "ints": _example(id=[b"c"], text=[1, 2]),
        "floats": _example(id=[b"d"], text=[0.5]),
        "two_values": _example(id=[b"e"], text=[b"x", b"y"]),
        "blank": _example(id=[b"f"], text=[b"  "]),
        "latin1": _example(id=[b"g"], text=[b"caf\xe9"]),
        "float_id": _example(id=[1.5], text=[b"ok"]),
    }
    good = _example(id=[b"ok"], text=[b"fine"])
    path = _write_tfrecord(tmp_path / "bad.tfrecord", [good, *bad.values()])
    reasons = {
        "not_an_example": "not_a_tf_example",
        "absent": "missing_field",
        "empty_list": "missing_field",
        "ints": "not_a_string",
        "floats": "not_a_string",
        "two_values": "not_a_string",
        "blank": "empty_text",
        "latin1": "undecodable_bytes",
        "float_id": "not_a_string",
    }
    expected = [(reasons[name], base64.b64encode(raw).decode(), str(path)) for name, raw in bad.items()]
    _run_read([path], "tfrecord", [_record("ok", ["fine"], path)], _failures_are(expected))


def test_outputs_are_reachable_by_tag(tmp_path):
    path = _write_lines(tmp_path / "corpus.txt", ["one", ""])
    with test_pipeline.TestPipeline(runner="FnApiRunner") as pipeline:
        outputs = pipeline | "ReadCorpus" >> ReadCorpus([str(path)], "text")
        assert_that(outputs[RECORDS_TAG], equal_to([_record(None, ["one"], path)]), label="CheckRecords")
        reasons = outputs[FAILED_TAG] | "Reasons" >> beam.Map(lambda failure: failure.reason)
        assert_that(reasons, equal_to(["empty_text"]), label="CheckFailures")


# Hostile records: each becomes a dead letter, and the rest of the file is still read.


def _counters(result):
    return {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("embeddings"))["counters"]
    }


def test_lone_surrogates_are_invalid_unicode(tmp_path):
    # json.dumps writes a lone surrogate as the escape "\\ud800"; json.loads gives it back as a str.
    lines = [
        json.dumps({"id": "a", "text": "abc \ud800 def"}),
        json.dumps({"id": "b\udfff", "text": "fine"}),
        json.dumps({"id": "c", "text": "a pair: \ud83d\ude00"}),
        json.dumps({"id": "d", "text": "ok", "other": "\ud800 unused"}),
    ]
    assert "\\ud800" in lines[0]
    path = _write_lines(tmp_path / "surrogates.jsonl", lines)

    def check_failures(failures):
        _failures_are([("invalid_unicode", lines[0], str(path)), ("invalid_unicode", lines[1], str(path))])(failures)
        details = sorted(f.detail for f in failures)
        assert "field 'text'" in details[0] and "U+D800" in details[0], details
        assert "id field 'id'" in details[1] and "U+DFFF" in details[1], details
        for failure in failures:
            failure_to_json(failure).encode("utf-8")

    result = _run_read(
        [path], "jsonl", [_record("c", ["a pair: \U0001f600"], path), _record("d", ["ok"], path)], check_failures
    )
    assert _counters(result)["failed_invalid_unicode"] == 2


def test_lone_surrogate_in_a_pair_field(tmp_path):
    lines = [
        json.dumps({"id": "p1", "query": "fine", "doc": "bad \udc80"}),
        json.dumps({"id": "p2", "query": "fine", "doc": "fine too"}),
    ]
    path = _write_lines(tmp_path / "pairs.jsonl", lines)

    def check_failures(failures):
        _failures_are([("invalid_unicode", lines[0], str(path))])(failures)
        assert "field 'doc'" in failures[0].detail

    _run_read(
        [path], "jsonl", [_record("p2", ["fine", "fine too"], path)], check_failures, pair_fields=("query", "doc")
    )


def test_deeply_nested_json_is_invalid_json(tmp_path):
    deep = "[" * 100000 + "]" * 100000
    lines = [deep, '{"id": "n", "text": "x", "extra": ' + deep + "}", json.dumps({"id": "ok", "text": "fine"})]
    path = _write_lines(tmp_path / "deep.jsonl", lines)

    def check_failures(failures):
        _failures_are([("invalid_json", lines[0][:1000], str(path)), ("invalid_json", lines[1][:1000], str(path))])(
            failures
        )
        assert all("nested too deeply" in f.detail for f in failures), failures

    result = _run_read([path], "jsonl", [_record("ok", ["fine"], path)], check_failures)
    assert _counters(result)["failed_invalid_json"] == 2


def _tfrecord_offsets(records):
    """The byte offset of each record in a TFRecord file: 8 + 4 bytes before the data, 4 after."""
    offsets, offset = [], 0
    for record in records:
        offsets.append(offset)
        offset += len(record) + 16
    return offsets


def test_tfrecord_bad_crcs_and_truncated_tail_are_dead_letters(tmp_path):
    records = [_example(id=[b"r%d" % i], text=[b"text %d" % i]) for i in range(4)]
    offsets = _tfrecord_offsets(records)
    whole = _write_tfrecord(tmp_path / "whole.tfrec", records).read_bytes()
    # The data of record 1 fails its CRC: skipped, and records 2 and 3 still read.
    bad_data = bytearray(whole)
    bad_data[offsets[1] + 12 + len(records[1]) - 1] ^= 0xFF
    bad_data_path = tmp_path / "bad_data.tfrecord"
    bad_data_path.write_bytes(bytes(bad_data))
    # The length of record 2 fails its CRC: records 2 and 3 cannot be framed.
    bad_length = bytearray(whole)
    bad_length[offsets[2] + 9] ^= 0xFF
    bad_length_path = tmp_path / "bad_length.tfrecord"
    bad_length_path.write_bytes(bytes(bad_length))
    # The file ends inside record 3.
    truncated_path = tmp_path / "truncated.tfrecord"
    truncated_path.write_bytes(whole[: offsets[3] + 20])
    # A gzip-compressed file cut in half: the records decompressed whole are read.
    truncated_gz_path = tmp_path / "truncated_gz.tfrecord.gz"
    half = gzip.compress(whole)[: len(gzip.compress(whole)) // 2]
    truncated_gz_path.write_bytes(half)
    available = len(zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(half))
    whole_in_gz = [i for i, offset in enumerate(offsets) if offset + len(records[i]) + 16 <= available]
    assert len(whole_in_gz) < 4

    def expected_records(path, indices):
        return [_record(f"r{i}", [f"text {i}"], path) for i in indices]

    def check_failures(failures):
        by_source = {f.source: f for f in failures}
        assert len(by_source) == len(failures) == 4, failures
        corrupt_data = by_source[str(bad_data_path)]
        assert corrupt_data.reason == "corrupt_record"
        assert f"byte offset {offsets[1]} " in corrupt_data.detail and str(bad_data_path) in corrupt_data.detail
        assert base64.b64decode(corrupt_data.record) == bytes(bad_data[offsets[1] + 12 : offsets[2] - 4])
        corrupt_length = by_source[str(bad_length_path)]
        assert corrupt_length.reason == "corrupt_record"
        assert f"not read from byte offset {offsets[2]} on" in corrupt_length.detail
        truncated = by_source[str(truncated_path)]
        assert truncated.reason == "truncated_file"
        assert f"byte offset {offsets[3]} " in truncated.detail and str(truncated_path) in truncated.detail
        truncated_gz = by_source[str(truncated_gz_path)]
        assert truncated_gz.reason == "truncated_file" and str(truncated_gz_path) in truncated_gz.detail

    result = _run_read(
        [tmp_path / "*.tfrecord*"],
        "tfrecord",
        expected_records(bad_data_path, [0, 2, 3])
        + expected_records(bad_length_path, [0, 1])
        + expected_records(truncated_path, [0, 1, 2])
        + expected_records(truncated_gz_path, whole_in_gz),
        check_failures,
    )
    counters = _counters(result)
    assert counters["records_read"] == 8 + len(whole_in_gz)
    assert counters["failed_corrupt_record"] == 2 and counters["failed_truncated_file"] == 2


def _jsonl(count, start=0):
    return b"".join(b'{"id": "j%d", "text": "text %d"}\n' % (i, i) for i in range(start, start + count))


def test_truncated_compressed_text_keeps_the_lines_before_the_break(tmp_path):
    data = b"".join(b'{"id": "j%d", "text": "text %d %08x"}\n' % (i, i, i * 2654435761 % 2**32) for i in range(5000))
    compressed = gzip.compress(data)
    path = tmp_path / "half.jsonl.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    # What a decompressor makes of the half: complete lines, then the one it breaks off in.
    available = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(compressed[: len(compressed) // 2])
    *complete, broken = available.split(b"\n")
    assert 0 < len(complete) < 5000

    def check_failures(failures):
        (failure,) = failures
        assert failure.reason == "truncated_file" and failure.record == broken.decode()
        assert str(path) in failure.detail and f"after {len(complete)} complete lines" in failure.detail

    result = _run_read(
        [path],
        "jsonl",
        [_record(json.loads(line)["id"], [json.loads(line)["text"]], path) for line in complete],
        check_failures,
    )
    counters = _counters(result)
    assert counters["records_read"] == len(complete) and counters["failed_truncated_file"] == 1


def test_corrupt_compressed_text(tmp_path):
    # Garbage after a good gzip member: the member's lines are read, the rest is one dead letter. Beam's
    # CompressedFile raises here, failing the run.
    jsonl_path = tmp_path / "garbage.jsonl.gz"
    jsonl_path.write_bytes(gzip.compress(_jsonl(3)) + b"\x1f\x8b garbage")
    not_gzip_path = tmp_path / "not_gzip.jsonl.gz"
    not_gzip_path.write_bytes(b"plain text")

    def check_jsonl_failures(failures):
        reasons = sorted((f.source, f.reason) for f in failures)
        assert reasons == [(str(jsonl_path), "corrupt_file"), (str(not_gzip_path), "corrupt_file")], failures
        assert all("after" in f.detail and f.source in f.detail for f in failures)

    result = _run_read(
        [jsonl_path, not_gzip_path],
        "jsonl",
        [_record(f"j{i}", [f"text {i}"], jsonl_path) for i in range(3)],
        check_jsonl_failures,
    )
    assert _counters(result)["failed_corrupt_file"] == 2


def test_broken_compressed_csv_keeps_its_header_handling(tmp_path):
    rows = b"".join(b"row %d %08x,c%d\n" % (i, i * 2654435761 % 2**32, i) for i in range(5000))
    compressed = gzip.compress(b"text,id\n" + rows)
    csv_path = tmp_path / "rows.csv.gz"
    csv_path.write_bytes(compressed[: len(compressed) // 2])
    available = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(compressed[: len(compressed) // 2])
    header, *complete, _ = available.split(b"\n")
    assert header == b"text,id" and complete
    # Cut inside its header: no rows, only the dead letter.
    header_path = tmp_path / "header.csv.gz"
    header_path.write_bytes(gzip.compress(b"id,text\n" + b"x" * 5000 + b",y\n")[:20])
    # Garbage after a good member: its header and rows are read.
    garbage_path = tmp_path / "garbage.csv.gz"
    garbage_path.write_bytes(gzip.compress(b"id,text\ng1,first\n") + b"\x1f\x8b garbage")

    def check_failures(failures):
        assert sorted((f.source, f.reason) for f in failures) == [
            (str(garbage_path), "corrupt_file"),
            (str(header_path), "truncated_file"),
            (str(csv_path), "truncated_file"),
        ], failures
        (rows_failure,) = [f for f in failures if f.source == str(csv_path)]
        # The header counts as a line read.
        assert f"after {len(complete) + 1} complete lines" in rows_failure.detail

    expected = [_record(row.split(b",")[1].decode(), [row.split(b",")[0].decode()], csv_path) for row in complete]
    expected.append(_record("g1", ["first"], garbage_path))
    _run_read([csv_path, header_path, garbage_path], "csv", expected, check_failures)


def test_kept_fields_are_read_typed_from_every_named_format_and_missing_ones_are_null(tmp_path):
    from transforms.preflight import kept_columns
    from transforms.read import read_file_records
    from transforms.records import Column

    jsonl = _write_lines(tmp_path / "c.jsonl", [
        json.dumps({"id": "a", "text": "x", "lang": "en", "year": 2001, "tags": ["p"], "meta": {"k": 1}}),
        json.dumps({"id": "b", "text": "y", "year": 2.5, "tags": "q", "meta": None}),
        json.dumps({"id": "c", "text": "z", "lang": 7, "year": "later", "tags": []})])
    columns = kept_columns([str(jsonl)], "jsonl", ("lang", "year", "tags", "meta"))
    assert columns == (Column("lang", "json"), Column("year", "json"), Column("tags", "list<string>"),
                       Column("meta", "json"))
    columns = (Column("lang", "string"), Column("year", "float64"), Column("tags", "list<string>"),
               Column("meta", "json"))
    fields = {r.id: dict(r.fields) for r in read_file_records(str(jsonl), "jsonl", keep_fields=columns)}
    assert fields["a"] == {"lang": "en", "year": 2001.0, "tags": ["p"], "meta": '{"k": 1}'}
    # Absent -> None; a scalar fits a list column; a string that is not a number is None (counted in a pipeline).
    assert fields["b"] == {"lang": None, "year": 2.5, "tags": ["q"], "meta": None}
    assert fields["c"] == {"lang": "7", "year": None, "tags": [], "meta": None}

    csv_path = _write_lines(tmp_path / "c.csv", ["id,text,lang", "a,x,en"])
    assert kept_columns([str(csv_path)], "csv", ("lang", "gone")) == (Column("lang", "string"),
                                                                      Column("gone", "string"))
    (csv_record,) = read_file_records(str(csv_path), "csv", keep_fields=(Column("lang", "string"),
                                                                         Column("gone", "string")))
    assert csv_record.fields == (("lang", "en"), ("gone", None))

    tfrecord = tmp_path / "c.tfrecord"
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(tfrecord)) as writer:
        writer.write(_example(id=[b"a"], text=[b"x"], lang=[b"en"], year=[2001], scores=[0.5, 1.5]))
    columns = kept_columns([str(tfrecord)], "tfrecord", ("lang", "year", "scores"))
    assert columns == (Column("lang", "string"), Column("year", "int64"), Column("scores", "list<float64>"))
    (example_record,) = read_file_records(str(tfrecord), "tfrecord", keep_fields=columns)
    assert example_record.fields == (("lang", "en"), ("year", 2001), ("scores", [0.5, 1.5]))


def test_kept_fields_that_clash_with_an_output_column_are_refused(tmp_path):
    from transforms.preflight import kept_columns

    with pytest.raises(ValueError, match="--keep_fields lang,embedded_at: embedded_at would clash"):
        kept_columns([str(tmp_path / "c.jsonl")], "jsonl", ("lang", "embedded_at"))


def test_a_record_a_sink_cannot_hold_is_one_raw_dead_letter_naming_the_sink_and_field(tmp_path):
    from transforms.limits import SinkLimits
    from transforms.records import Column

    lines = [json.dumps({"id": "ok", "text": "x", "lang": "en", "year": 1, "score": 0.5}),
             json.dumps({"id": "new\nline", "text": "x"}),
             json.dumps({"id": "cr\r", "text": "x"}),
             json.dumps({"id": "nul\u0000", "text": "x"}),
             json.dumps({"id": "long" + "i" * 9000, "text": "x"}),
             json.dumps({"id": "nul-field", "text": "x", "lang": "e\u0000n"}),
             json.dumps({"id": "nul-json", "text": "x", "meta": {"k": ["\u0000"]}}),
             json.dumps({"id": "backslash-json", "text": "x", "meta": {"k": "\\u0000"}}),
             '{"id": "nan", "text": "x", "score": NaN}',
             '{"id": "huge", "text": "x", "year": ' + str(2**70) + "}"]
    path = _write_lines(tmp_path / "c.jsonl", lines)
    columns = (Column("lang", "string"), Column("year", "int64"), Column("score", "float64"), Column("meta", "json"))
    limits = SinkLimits(vertex=True, vertex_numeric=("score",), postgres=True)
    kept = {"ok", "backslash-json", "huge"}
    refused = [line for line in lines if json.loads(line)["id"] not in kept]

    def check(failures):
        assert sorted(f.record for f in failures) == sorted(line[:1000] for line in refused)  # Raw, cut at 1000.
        assert {f.reason for f in failures} == {"unstorable_value"}
        details = {f.record[8:12]: f.detail for f in failures}
        assert details["new\\"].startswith("--output_vertex: the id holds a line break")
        assert details["nul-"].startswith("--output_postgres: field")
        assert "9004 bytes" in details["long"] and "'score' is nan" in details['nan"']

    def check_records(records):
        by_id = {record.id: dict(record.fields) for record in records}
        assert sorted(by_id) == sorted(kept)
        assert by_id["huge"]["year"] is None  # Beyond 64 bits: null, counted as kept_field_mismatch.

    result = _run_read([path], "jsonl", check_records, check, keep_fields=columns, limits=limits)
    assert _counters(result)["failed_unstorable_value"] == len(refused)
    assert _counters(result)["kept_field_mismatch"] == 1
