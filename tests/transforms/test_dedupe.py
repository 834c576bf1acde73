"""Duplicate ids: one copy is embedded, the same one whatever the order; the others are named dead letters."""

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
    kept, failures = (pipeline | beam.Create([records[i] for i in order]) | dedupe.DropDuplicateIds())
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

    from pipeline import run as run_lib

    records = [{"id": f"d{i}", "text": synthetic_text(i)} for i in range(10)] + [{"id": "d3", "text": "other"}]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    prefix = str(tmp_path / "out" / "emb")
    assert run_lib.main(["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={tiny_model_dir}",
                         f"--output_tfrecord={prefix}"]) == 0
    assert sorted(read_embeddings(prefix)) == sorted(f"d{i}" for i in range(10))  # It fails on an id read twice.
    assert "duplicate_id 1" in capsys.readouterr().out
    failures = [json.loads(line) for path in tf.io.gfile.glob(prefix + "-failed-*.jsonl") for line in open(path)]
    assert [f["reason"] for f in failures] == ["duplicate_id"]
