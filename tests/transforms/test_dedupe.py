"""Duplicate ids: one copy is embedded, the same one whatever the order; the others are named dead letters."""

import gzip

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from transforms import dedupe
from transforms.records import Record, content_hash


def _record(record_id, text, source):
    return Record(id=record_id, texts=(text,), content_hash=content_hash((text,)), source=source)


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
def test_one_copy_per_id_is_kept_the_same_in_any_order(order):
    records = [_record("a", "the cat", "s2.jsonl"), _record("a", "a dog", "s1.jsonl"),
               _record("a", "the cat", "s1.jsonl"), _record("b", "yes", "s1.jsonl")]
    pipeline = beam.Pipeline(runner="FnApiRunner", options=PipelineOptions([]))
    arrived = [records[i] for i in order]
    kept, failures = pipeline | beam.Create(arrived) | dedupe.DropDuplicateIds(beam.Create(arrived))
    # s1.jsonl sorts first; of its two copies, the one with the smaller content hash.
    first = min(records[1:3], key=lambda r: r.content_hash)
    assert_that(kept, equal_to([first, records[3]]), label="Kept")
    assert_that(failures | beam.Map(lambda f: (f.source, f.reason, "appears 3 times" in f.detail,
                                               "kept the copy from s1.jsonl" in f.detail)),
                equal_to([("s2.jsonl", "duplicate_id", True, True), ("s1.jsonl", "duplicate_id", True, True)]),
                label="Failures")
    result = pipeline.run()
    result.wait_until_finish()


def test_a_run_writes_one_row_per_id_and_counts_the_duplicates(tmp_path, tiny_model_dir, synthetic_text, capsys,
                                                               read_embeddings):
    import json

    import tensorflow as tf

    from pipeline import cli

    records = [{"id": f"d{i}", "text": synthetic_text(i)} for i in range(10)] + [{"id": "d3", "text": "other"}]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    prefix = str(tmp_path / "out" / "emb")
    assert cli.main(["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={tiny_model_dir}",
                         f"--output_tfrecord={prefix}"]) == 0
    assert sorted(read_embeddings(prefix)) == sorted(f"d{i}" for i in range(10))  # It fails on an id read twice.
    assert "duplicate_id 1" in capsys.readouterr().out
    failures = [json.loads(line) for path in tf.io.gfile.glob(prefix + "-failed-*.jsonl") for line in open(path)]
    assert [f["reason"] for f in failures] == ["duplicate_id"]


def test_repeated_ids_names_every_repeated_id_however_the_ids_are_split_and_few_others():
    import pickle
    import random

    ids = [f"t{i}" for i in range(20_000)]
    repeated = set(random.Random(0).sample(ids, 100))
    # Copies fall in one numpy batch, in different batches of one accumulator, and in different accumulators.
    stream = ids + sorted(repeated)
    random.Random(1).shuffle(stream)
    combine = dedupe.FindRepeatedIds(dedupe.filter_bits(len(stream)))
    accumulators = []
    for part in (stream[:9_000], stream[9_000:9_001], stream[9_001:]):
        accumulator = combine.create_accumulator()
        for record_id in part:
            accumulator = combine.add_input(accumulator, record_id)
        accumulators.append(accumulator)
    found = pickle.loads(pickle.dumps(combine.extract_output(combine.merge_accumulators(accumulators))))
    named = {record_id for record_id in ids if record_id in found}
    assert repeated <= named
    assert len(named - repeated) < 20  # A Bloom filter's false positives: grouped, then kept as single copies.
    assert sum(f"unseen{i}" in found for i in range(20_000)) < 20


def test_identical_copies_in_one_file_keep_the_first_and_name_the_others(tmp_path):
    from transforms.read import ReadCorpus

    corpus = tmp_path / "c.jsonl"
    same = '{"id": "a", "text": "the cat"}\n'
    corpus.write_text(same + '{"id": "b", "text": "yes"}\n' + same + same)
    pipeline = beam.Pipeline(runner="FnApiRunner", options=PipelineOptions([]))
    reader = ReadCorpus([str(corpus)], "jsonl")
    records, _ = pipeline | reader
    kept, failures = records | dedupe.DropDuplicateIds(reader.records_again(), raw_of=reader.raw_records())
    assert_that(kept | beam.Map(lambda r: (r.id, r.position)), equal_to([("a", 0), ("b", len(same))]), label="Kept")
    assert_that(failures | beam.Map(lambda f: (f.reason, "appears 3 times" in f.detail, "the same texts" in f.detail,
                                               f.record)),
                equal_to([("duplicate_id", True, True, same.rstrip("\n"))] * 2), label="Failures")
    pipeline.run().wait_until_finish()


@pytest.mark.parametrize("name,write", [
    ("c.jsonl", lambda path, lines: path.write_bytes(b"".join(lines))),
    ("c.jsonl.gz", lambda path, lines: path.write_bytes(gzip.compress(b"".join(lines)))),
])
def test_a_dropped_copys_dead_letter_is_its_raw_line(name, write, tmp_path):
    from transforms.read import ReadCorpus

    lines = [b'{"id": "a", "text": "the cat"}\r\n', '{"text": "the cat",  "id":"a", "é": 1}\r\n'.encode(),
             b'{"id": "b", "text": "x"}\n']
    write(tmp_path / name, lines)
    pipeline = beam.Pipeline(runner="FnApiRunner", options=PipelineOptions([]))
    reader = ReadCorpus([str(tmp_path / name)], "jsonl")
    records, _ = pipeline | reader
    _, failures = records | dedupe.DropDuplicateIds(reader.records_again(), raw_of=reader.raw_records())
    assert_that(failures | beam.Map(lambda f: f.record), equal_to(['{"text": "the cat",  "id":"a", "é": 1}']))
    pipeline.run().wait_until_finish()


def test_a_local_run_holds_no_record_in_the_runners_buffers(tmp_path, tiny_model_dir, synthetic_text):
    """Beam's local runner keeps in memory whatever it passes between stages (a GroupByKey's input, a Flatten's,
    what waits for a side input): a run's peak memory is flat only if no stage boundary carries every record."""
    import json

    from pipeline import run as run_lib

    n = 300
    records = [{"id": f"d{i}", "text": synthetic_text(i)} for i in range(n)] + [{"id": "d3", "text": "other"}]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_lib.run(["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={tiny_model_dir}",
                          f"--output_tfrecord={tmp_path / 'out' / 'emb'}"])
    buffered = {counter.key.step: counter.committed for counter in result.monitoring_metrics().query()["counters"]
                if counter.key.metric.name.endswith("data_channel:read_index:v1")}
    assert buffered, "the runner reports no buffers: the check below would pass vacuously"
    assert max(buffered.values()) < n // 10, sorted(buffered.items(), key=lambda item: -item[1])[:3]


def test_the_checks_reads_list_and_match_the_input_once(tmp_path, monkeypatch):
    """Each listing of a gs:// pattern is a round trip at start-up: the three reads share the first."""
    from transforms import read

    (tmp_path / "c.jsonl").write_text('{"id": "a", "text": "x"}\n')
    calls = []
    match = read.FileSystems.match
    monkeypatch.setattr(read.FileSystems, "match", lambda patterns: calls.append(patterns) or match(patterns))
    pipeline = beam.Pipeline(runner="FnApiRunner", options=PipelineOptions([]))
    reader = read.ReadCorpus([str(tmp_path / "*.jsonl")], "jsonl")
    records, _ = pipeline | reader
    _ = records | dedupe.DropDuplicateIds(reader.records_again())
    assert len(calls) == 1, calls
    # And the run matches the files once for all three reads (fewer steps to build and plan at start-up).
    graph = pipeline.to_runner_api().components.transforms.values()
    assert len([t for t in graph if t.unique_name.endswith("/Match") and t.subtransforms]) == 1
