"""transforms.sinks.vertex: datapoints in Vertex AI Vector Search's documented batch format, deletions in delete/."""

import glob
import json

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline

from transforms.records import Column, output_columns
from transforms.sinks.vertex import WriteVertex, datapoint

_COLUMNS = output_columns((Column("lang", "string"), Column("tags", "list<string>"), Column("year", "int64"),
                           Column("score", "float64"), Column("ok", "bool")))


def _row(i, **fields):
    return {"id": f"d{i}", "embedding": [float(i), 0.25], "model": "m", "content_hash": "h", **fields}


def test_a_datapoint_has_the_documented_fields_and_leaves_out_nulls():
    types = {column.name: column.type for column in _COLUMNS}
    point = datapoint(_row(1, lang="en", tags=["a", "b"], year=2001, score=2.0, ok=True),
                      restricts=("lang", "tags", "ok"), numeric_restricts=("year", "score"), crowding_tag="lang",
                      types=types)
    assert point == {"id": "d1", "embedding": [1.0, 0.25],
                     "restricts": [{"namespace": "lang", "allow": ["en"]}, {"namespace": "tags", "allow": ["a", "b"]},
                                   {"namespace": "ok", "allow": ["true"]}],
                     "numeric_restricts": [{"namespace": "year", "value_int": 2001},
                                           {"namespace": "score", "value_double": 2.0}],
                     "crowding_tag": "en"}
    assert datapoint(_row(2, lang=None, year=None), ("lang",), ("year",), "lang", types) == {
        "id": "d2", "embedding": [2.0, 0.25]}


def test_datapoints_and_deleted_ids_are_laid_out_as_one_batch_update(tmp_path):
    folder = str(tmp_path / "update")
    with TestPipeline() as pipeline:
        deleted = pipeline | "Deleted" >> beam.Create(["old1", "old2"])
        _ = (pipeline | beam.Create([_row(i, lang="en") for i in range(3)])
             | WriteVertex(folder, _COLUMNS, restricts=("lang",), num_shards=2, deleted=deleted))
    files = sorted(glob.glob(folder + "/embeddings-*.json"))
    assert [f.rsplit("/", 1)[1] for f in files] == ["embeddings-00000-of-00002.json", "embeddings-00001-of-00002.json"]
    points = sorted((json.loads(line) for f in files for line in open(f)), key=lambda p: p["id"])
    assert [p["id"] for p in points] == ["d0", "d1", "d2"]
    assert all(set(p) == {"id", "embedding", "restricts"} and len(p["embedding"]) == 2 for p in points)
    (delete_file,) = glob.glob(folder + "/delete/*")
    assert sorted(open(delete_file).read().split()) == ["old1", "old2"]


def _ids(folder, pattern):
    return sorted(line.rstrip("\n") for f in glob.glob(f"{folder}/{pattern}") for line in open(f, newline="\n"))


def test_a_rerun_with_another_shard_count_or_no_deletions_leaves_only_its_own_files(tmp_path):
    folder = str(tmp_path / "update")
    with TestPipeline() as pipeline:
        deleted = pipeline | "Deleted" >> beam.Create(["old1"])
        _ = pipeline | beam.Create([_row(i) for i in range(5)]) | WriteVertex(folder, _COLUMNS, num_shards=3,
                                                                               deleted=deleted)
    with TestPipeline() as pipeline:
        _ = pipeline | beam.Create([_row(i) for i in range(2)]) | WriteVertex(folder, _COLUMNS, num_shards=2)
    assert [json.loads(line)["id"] for line in _ids(folder, "embeddings-*.json")] == ["d0", "d1"]
    assert not glob.glob(folder + "/delete/*")


def test_a_removed_id_with_a_line_break_is_never_listed_as_other_ids(tmp_path):
    folder = str(tmp_path / "update")
    with TestPipeline() as pipeline:
        deleted = pipeline | "Deleted" >> beam.Create(["new\nline", "cr\rlf", "crlf\r\nx", "plain"])
        _ = pipeline | beam.Create([_row(1)]) | WriteVertex(folder, _COLUMNS, deleted=deleted)
    assert _ids(folder, "delete/*") == ["plain"]
