"""Incremental runs that read their earlier embeddings from BigQuery and keep the table current, on the emulators.

`--previous_output TABLE --output_bigquery TABLE`: a run reads TABLE's rows through the Storage Read API, embeds
only new and changed records, loads its complete set into TABLE__run_RUNID and MERGEs that into TABLE. Checked
here: exactly the changed and new records are embedded (counters and rows), the table then equals a full
re-embedding of the corpus, a run over an unchanged corpus embeds nothing, another model re-embeds everything, a
failed run leaves the table as it was, and repeating a run changes nothing. bqemulator runs the MERGE (with
WHEN NOT MATCHED BY SOURCE) and the Storage Read API; tests/gcp/conftest.py points Beam's clients at it.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from google.api_core import exceptions

from pipeline import cli
from pipeline import run as run_lib
from transforms import bigquery as bigquery_lib
from transforms import incremental as incremental_lib
from transforms import records as records_lib
from transforms.records import feature_spec

DATASET = "incremental"
@pytest.fixture(scope="module")
def dataset(gcp_emulators, bq, bucket):
    """The dataset these tests keep their tables in (and the bucket for load jobs' files, gs://tests/tmp)."""
    bq.create_dataset(DATASET, exists_ok=True)
    return DATASET


def _run(corpus: str, table: str, run_id: str, model_dir: str, tmp_path, *extra):
    argv = ["--runner=FnApiRunner", "--project=test-project", f"--input={corpus}", f"--model_dir={model_dir}",
            "--batch_size=4", f"--output_bigquery={table}", f"--previous_output={table}",
            "--temp_location=gs://tests/tmp", f"--output_failed={tmp_path}/failed/run={{run_id}}/part",
            f"--run_id={run_id}", *extra]
    options, plan = run_lib.prepare(argv)
    counters = run_lib.counters(run_lib.launch(options, plan))
    print(run_lib.summarize(counters, plan))  # As the command line does.
    return counters


def _changes(counters: dict) -> dict:
    return {name: counters.get(name, 0) for name in ("new", "changed", "changed_model", "unchanged", "deleted",
                                                       "embedded")}


def _assert_no_run_table(bq, table: str, run_id: str) -> None:
    run = incremental_lib.run_table(bigquery_lib.parse_table(table), run_id)
    with pytest.raises(exceptions.NotFound):
        bq.get_table(run.table_id)


def _full_run(corpus: str, model_dir: str, prefix: str) -> dict:
    """Embeds the whole corpus to local TFRecord (no earlier output) and reads it back with tf.data."""
    run_lib.run(["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={model_dir}",
                 f"--output_tfrecord={prefix}"])
    rows = {}
    for serialized in tf.data.TFRecordDataset(tf.io.gfile.glob(prefix + "-*.tfrecord")):
        parsed = tf.io.parse_single_example(serialized, feature_spec())
        rows[parsed["id"].numpy().decode()] = {key: value.numpy() for key, value in parsed.items()}
    return rows


def test_runs_embed_only_new_and_changed_records_and_keep_the_table_current(
        dataset, bq, tiny_model_dir, other_model_dir, tmp_path, capsys, corpus_edit, write_jsonl_corpus):
    table = f"test-project:{dataset}.docs"
    old, new, changed, _, added = corpus_edit
    old_corpus = write_jsonl_corpus(tmp_path / "old.jsonl", old)
    first = _run(old_corpus, table, "2026-11-01T00-00-00", tiny_model_dir, tmp_path)
    assert _changes(first)["embedded"] == 30 and _changes(first)["new"] == 0  # No table yet: a full run.
    first_rows = bq.rows(table)
    assert sorted(first_rows) == sorted(old)
    assert {row["run_id"] for row in first_rows.values()} == {"2026-11-01T00-00-00"}
    _assert_no_run_table(bq, table, "2026-11-01T00-00-00")

    new_corpus = write_jsonl_corpus(tmp_path / "new.jsonl", new)
    capsys.readouterr()
    second = _run(new_corpus, table, "2026-11-02T00-00-00", tiny_model_dir, tmp_path)
    assert _changes(second) == {"new": 4, "changed": 3, "changed_model": 0, "unchanged": 25, "deleted": 2,
                                "embedded": 7}
    assert f"Since {table}: new 4, changed 3 (0 for another model), unchanged 25" in capsys.readouterr().out
    second_rows = bq.rows(table)
    assert sorted(second_rows) == sorted(new)
    # Exactly the new and changed records were embedded by run 2; the others are run 1's rows, untouched.
    assert {i for i, row in second_rows.items() if row["run_id"] == "2026-11-02T00-00-00"} == changed | set(added)
    for record_id in set(new) - changed - set(added):
        assert second_rows[record_id] == first_rows[record_id]
    _assert_no_run_table(bq, table, "2026-11-02T00-00-00")

    full = _full_run(new_corpus, tiny_model_dir, str(tmp_path / "full" / "part"))
    assert sorted(full) == sorted(second_rows)
    for record_id, reference in full.items():
        row = second_rows[record_id]
        assert row["content_hash"] == reference["content_hash"].decode()
        assert row["model"] == reference["model"].decode()
        np.testing.assert_allclose(row["embedding"], reference["embedding"], atol=1e-6, rtol=0)

    third = _run(new_corpus, table, "2026-11-03T00-00-00", tiny_model_dir, tmp_path)
    assert _changes(third) == {"new": 0, "changed": 0, "changed_model": 0, "unchanged": 32, "deleted": 0,
                               "embedded": 0}
    assert bq.rows(table) == second_rows

    fourth = _run(new_corpus, table, "2026-11-04T00-00-00", other_model_dir, tmp_path)
    assert _changes(fourth) == {"new": 0, "changed": 32, "changed_model": 32, "unchanged": 0, "deleted": 0,
                                "embedded": 32}
    fourth_rows = bq.rows(table)
    assert sorted(fourth_rows) == sorted(new)
    assert {row["run_id"] for row in fourth_rows.values()} == {"2026-11-04T00-00-00"}
    assert len({row["model"] for row in fourth_rows.values()} | {row["model"] for row in second_rows.values()}) == 2


def test_a_failed_run_leaves_the_table_as_it_was_and_repeating_a_run_changes_nothing(
        dataset, bq, tiny_model_dir, tmp_path, monkeypatch, synthetic_text, write_jsonl_corpus):
    table = f"test-project:{dataset}.repeat"
    corpus = {f"d{i}": synthetic_text(i) for i in range(6)}
    _run(write_jsonl_corpus(tmp_path / "c1.jsonl", corpus), table, "r1", tiny_model_dir, tmp_path)
    before = bq.rows(table)

    corpus["d0"], corpus["new"] = synthetic_text(0, variant=1), synthetic_text(50)
    del corpus["d1"]
    changed_corpus = write_jsonl_corpus(tmp_path / "c2.jsonl", corpus)
    # The run's rows are loaded, then its MERGE fails: the table is left as it was.
    monkeypatch.setattr(incremental_lib, "merge_sql",
                        lambda table, run, *shape: f"SELECT * FROM `{table.table_id}_missing`")
    with pytest.raises(Exception, match="missing"):
        _run(changed_corpus, table, "r2", tiny_model_dir, tmp_path)
    assert bq.rows(table) == before
    run_table = incremental_lib.run_table(bigquery_lib.parse_table(table), "r2").table_id
    assert bq.get_table(run_table).num_rows == 6  # Left for the next attempt, which replaces it.
    monkeypatch.undo()

    again = _run(changed_corpus, table, "r2", tiny_model_dir, tmp_path)
    assert _changes(again) == {"new": 1, "changed": 1, "changed_model": 0, "unchanged": 4, "deleted": 1,
                               "embedded": 2}
    after = bq.rows(table)
    assert sorted(after) == sorted(corpus)
    _assert_no_run_table(bq, table, "r2")
    # The same run again: everything is unchanged now, and the table stays exactly as it is.
    repeated = _run(changed_corpus, table, "r2", tiny_model_dir, tmp_path)
    assert _changes(repeated) == {"new": 0, "changed": 0, "changed_model": 0, "unchanged": 6, "deleted": 0,
                                  "embedded": 0}
    assert bq.rows(table) == after

    # Read one table, keep another current: every row is carried into it exactly, vector and timestamps included.
    moved = f"test-project:{dataset}.moved"
    moved_run = _run(changed_corpus, moved, "r3", tiny_model_dir, tmp_path, f"--previous_output={table}")
    assert _changes(moved_run)["unchanged"] == 6 and _changes(moved_run)["embedded"] == 0
    assert bq.rows(moved) == after


def test_merge_leaves_unchanged_rows_and_own_columns_alone_and_removes_duplicates(dataset, bq):
    from google.cloud import bigquery

    table = bigquery_lib.parse_table(f"test-project:{dataset}.merge")
    run = incremental_lib.run_table(table, "r.2")
    assert run.table == "merge__run_r_2"
    for name in (table.table_id, run.table_id):
        bq.delete_table(name, not_found_ok=True)
    # The kept table as a user may have made it: NULLABLE columns and one of their own.
    bq.create_table(bigquery.Table(table.table_id, schema=[
        bigquery.SchemaField(name, type_, mode="REPEATED" if mode == "REPEATED" else "NULLABLE")
        for name, type_, mode in records_lib.SCHEMA] + [bigquery.SchemaField("note", "STRING")]))
    bq.create_table(bigquery.Table(run.table_id, schema=[
        bigquery.SchemaField(name, type_, mode=mode) for name, type_, mode in records_lib.SCHEMA]))

    def row(record_id, text_hash, run_id, when, **extra):
        return {"id": record_id, "embedding": [1.0, 2.0], "model": "m", "content_hash": text_hash,
                "embedded_at": when, "run_id": run_id, **extra}

    t1, t2 = "2026-11-01 00:00:00.000001 UTC", "2026-11-02 00:00:00 UTC"
    assert not bq.insert_rows_json(table.table_id, [
        row("keep", "h", "r1", t1, note="mine"), row("edit", "old", "r1", t1), row("gone", "h", "r1", t1),
        row("twice", "h", "r0", "2026-10-01 00:00:00 UTC"), row("twice", "h", "r1", t1)])
    assert not bq.insert_rows_json(run.table_id, [
        row("keep", "h", "r1", t1), row("edit", "new", "r.2", t2), row("twice", "h", "r1", t1),
        row("fresh", "x", "r.2", t2), row("fresh", "x", "r.2", t2)])
    for _ in range(2):  # A second MERGE of the same run table changes nothing.
        bq.query(incremental_lib.merge_sql(table, run)).result()
        rows = sorted((r["id"], r["content_hash"], r["run_id"], r["note"]) for r in bq.list_rows(table.table_id))
        assert rows == [("edit", "new", "r.2", None), ("fresh", "x", "r.2", None), ("keep", "h", "r1", "mine"),
                        ("twice", "h", "r1", None)]


def _error(argv, capsys):
    assert cli.main(["--runner=FnApiRunner", "--project=test-project", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: ")
    return err[-1]


@pytest.mark.parametrize("extra,message", [
    (["--previous_output=test-project:incremental.docs", "--output_tfrecord={tmp}/out/part"],
     "--previous_output test-project:incremental.docs is a BigQuery table: pass --output_bigquery"),
    (["--previous_output=test-project:incremental.docs", "--output_bigquery=test-project:incremental.docs",
      "--output_tfrecord={tmp}/out/part"], "drop --output_tfrecord"),
    (["--previous_output=test-project.incremental.docs", "--output_bigquery=test-project:incremental.docs",
      "--bigquery_method=streaming", "--output_failed={tmp}/failed"],
     "--bigquery_method streaming cannot keep a table current"),
    (["--previous_output=test-project:incremental.missing", "--output_bigquery=test-project:incremental.docs"],
     "--previous_output test-project:incremental.missing does not exist"),
    (["--previous_output=test-project:no_such_dataset.docs", "--output_bigquery=test-project:incremental.docs"],
     "--previous_output test-project:no_such_dataset.docs: dataset test-project:no_such_dataset does not exist"),
    (["--previous_output=test-project:incremental.wrong_schema", "--output_bigquery=test-project:incremental.docs"],
     "--previous_output test-project:incremental.wrong_schema exists with an incompatible schema"),
    (["--previous_output=test-project:docs", "--output_bigquery=test-project:incremental.docs"],
     "--previous_output 'test-project:docs' is not a table"),
    (["--previous_output={tmp}/earlier/part", "--output_bigquery=test-project:incremental.docs"],
     "is a TFRecord prefix and needs --output_tfrecord"),
])
def test_incremental_bigquery_mistakes_get_one_clear_line(extra, message, dataset, bq, tiny_model_dir, tmp_path,
                                                          capsys, write_jsonl_corpus):
    from google.cloud import bigquery

    bq.create_table(bigquery.Table(f"test-project.{dataset}.wrong_schema",
                                   schema=[bigquery.SchemaField("id", "STRING")]), exists_ok=True)
    corpus = write_jsonl_corpus(tmp_path / "c.jsonl", {"x": "the cat"})
    argv = [f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--temp_location=gs://tests/tmp", "--run_id=r1"]
    if not any(arg.startswith(("--output_tfrecord", "--output_failed")) for arg in extra):
        argv.append(f"--output_failed={tmp_path}/failed")
    line = _error(argv + [arg.format(tmp=tmp_path) for arg in extra], capsys)
    assert message in line, line


@pytest.mark.parametrize("value,is_table", [
    ("my-project:emb.docs", True), ("my-project.emb.docs", True), ("example.com:proj:emb.docs", True),
    ("my-project:docs", True),  # A colon and no slash: meant as a table, and refused as a malformed one.
    ("gs://b/emb/run={latest}/part", False), ("out/emb/part", False), ("/tmp/emb/part", False), ("part", False),
])
def test_a_table_is_told_from_a_tfrecord_prefix(value, is_table):
    assert bigquery_lib.is_table_spec(value) == is_table


def test_an_incremental_bigquery_run_translates_for_dataflow(
        tmp_path, tiny_model_dir, monkeypatch, synthetic_text, write_jsonl_corpus):
    """DataflowRunner --dry_run=True: the graph pickles and translates; no job is submitted, no table looked up."""
    import types

    from apache_beam.io.gcp import gcsio

    monkeypatch.setattr(gcsio.GcsIO, "get_bucket", lambda self, name: types.SimpleNamespace(name=name))
    monkeypatch.setattr(bigquery_lib, "check_table", lambda table, billing_project=None, **shape: True)
    monkeypatch.setattr(bigquery_lib, "check_previous_table", lambda table, output, billing_project=None, **shape: True)
    corpus = write_jsonl_corpus(tmp_path / "c.jsonl", {f"d{i}": synthetic_text(i) for i in range(3)})
    result = run_lib.run([
        "--runner=DataflowRunner", "--dry_run=True", "--project=test-project", "--region=us-central1",
        "--temp_location=gs://test-bucket/tmp", "--sdk_container_image=REGION-docker.pkg.dev/P/R/embed-corpus:T",
        f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--output_bigquery=test-project:emb.docs",
        "--previous_output=test-project:emb.docs", "--output_failed=gs://test-bucket/failed/run={run_id}/part",
        "--run_id=2026-11-24T02-00-00"])
    names = {t.unique_name for t in result.job.proto_pipeline.components.transforms.values()}
    for label in ("ReadPrevious/ReadTable/Read", "SelectChanged/Classify", "UpdateBigQuery/ToRow",
                  "UpdateBigQuery/WithCarriedForward", "UpdateBigQuery/WriteRunTable", "UpdateBigQuery/CountRows",
                  "UpdateBigQuery/MergeIntoTable"):
        assert label in names, label
    assert not any(name.startswith(("WriteBigQuery", "WriteTFRecord", "WriteManifest")) for name in names)
    assert "emb.docs__run_2026-11-24T02-00-00" in str(result.job.proto_pipeline)


def test_the_scheduled_bigquery_launch_request_fills_in_to_valid_parameters(tmp_path, ):
    """create-job.sh with the BigQuery body and a stand-in gcloud: the body it would send, checked like a launch."""
    import os
    import pathlib
    import re
    import subprocess

    from google.cloud.dataflow_v1beta3.types import templates as dataflow_templates

    root = pathlib.Path(__file__).resolve().parents[2]
    sent = tmp_path / "sent.json"
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text("#!/usr/bin/env bash\nfor arg in \"$@\"; do case $arg in --message-body-from-file=*) "
                    f"cp \"${{arg#*=}}\" {sent};; esac; done\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", PROJECT="my-project", REGION="us-central1",
               BUCKET="my-bucket", REPOSITORY="dataflow", TAG="2026-11-24", DATASET="corpus_embeddings",
               SERVICE_ACCOUNT="scheduler@my-project.iam.gserviceaccount.com", BODY="launch-request-bigquery.json")
    subprocess.run(["bash", str(root / "templates" / "scheduler" / "create-job.sh")], env=env, check=True)
    launch = dataflow_templates.LaunchFlexTemplateRequest.from_json(sent.read_text()).launch_parameter
    assert launch.parameters["output_bigquery"] == launch.parameters["previous_output"] == (
        "my-project:corpus_embeddings.embeddings")
    assert "{run_id}" in launch.parameters["output_failed"]
    metadata = {p["name"]: p for p in json.loads((root / "templates" / "metadata.json").read_text())["parameters"]}
    for name, value in launch.parameters.items():
        assert all(re.fullmatch(regex, value) for regex in metadata[name].get("regexes", [])), (name, value)
    assert bigquery_lib.is_table_spec(launch.parameters["previous_output"])
    image = launch.environment.sdk_container_image
    assert image == "us-central1-docker.pkg.dev/my-project/dataflow/embed-corpus:2026-11-24"
    with pytest.raises(subprocess.CalledProcessError):  # The BigQuery body without DATASET is refused.
        subprocess.run(["bash", str(root / "templates" / "scheduler" / "create-job.sh")],
                       env={k: v for k, v in env.items() if k != "DATASET"}, check=True, capture_output=True)


def _document(words: int, start: int = 0) -> str:
    vocabulary = "the cat sat on the mat , a dog ran to the book and read it .".split()
    return " ".join(vocabulary[(start + i) % len(vocabulary)] for i in range(words))


def test_chunked_runs_keep_one_row_per_chunk_and_replace_a_changed_documents_chunks(
        dataset, bq, tiny_model_dir, tmp_path, write_jsonl_corpus, read_embeddings):
    table = f"test-project:{dataset}.chunks"
    chunking = ["--chunking=windows", "--chunk_tokens=16", "--chunk_overlap=4", "--max_deleted_fraction=1"]
    first = {"grows": _document(30), "shrinks": _document(70, 3), "vanishes": _document(40, 5),
             "stays": _document(50, 7)}
    second = {"grows": _document(70), "shrinks": _document(30, 3), "stays": first["stays"], "new": _document(20, 9)}
    _run(write_jsonl_corpus(tmp_path / "1.jsonl", first), table, "c1", tiny_model_dir, tmp_path, *chunking)
    first_rows = bq.rows(table)
    assert {row["doc_id"] for row in first_rows.values()} == set(first)
    counts = _run(write_jsonl_corpus(tmp_path / "2.jsonl", second), table, "c2", tiny_model_dir, tmp_path,
                  *chunking)
    assert _changes(counts) == {"new": 1, "changed": 2, "changed_model": 0, "unchanged": 1, "deleted": 1,
                                "embedded": 3}
    rows = bq.rows(table)
    run_lib.run(["--runner=FnApiRunner", f"--input={tmp_path / '2.jsonl'}", f"--model_dir={tiny_model_dir}",
                 f"--output_tfrecord={tmp_path}/full/part", *chunking])
    full = read_embeddings(f"{tmp_path}/full/part", chunks=True)
    assert sorted(rows) == sorted(full)  # The shrunk and the deleted documents left no chunk behind.
    for record_id, reference in full.items():
        assert (rows[record_id]["doc_id"], rows[record_id]["chunk_index"], rows[record_id]["char_end"]) == (
            reference["doc_id"], reference["chunk_index"], reference["char_end"])
        np.testing.assert_allclose(rows[record_id]["embedding"], reference["embedding"], atol=1e-6, rtol=0)
    assert all(rows[i] == first_rows[i] for i in rows if rows[i]["doc_id"] == "stays")  # Carried, untouched.


@pytest.mark.parametrize("chunked_table", [False, True])
def test_a_table_of_the_other_shape_is_refused_up_front(chunked_table, dataset, bq, tiny_model_dir, tmp_path, capsys,
                                                        one_error_line):
    from google.cloud import bigquery

    table = bigquery_lib.parse_table(f"test-project:{dataset}.shape_{chunked_table}")
    bq.delete_table(table.table_id, not_found_ok=True)
    bq.create_table(bigquery.Table(table.table_id, schema=[
        bigquery.SchemaField(name, type_, mode=mode) for name, type_, mode in records_lib.schema(chunked_table)]))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "the cat sat"}) + "\n")
    argv = ["--project=test-project", f"--input={corpus}", f"--model_dir={tiny_model_dir}",
            f"--output_bigquery={table.spec}", "--temp_location=gs://tests/tmp", f"--output_failed={tmp_path}/f"]
    assert cli.main(argv + ([] if chunked_table else ["--chunking=windows"])) == 2
    one_error_line(capsys.readouterr().err.strip().splitlines(), table.spec,
                   "holds chunks" if chunked_table else "holds whole records")
    assert bq.get_table(table.table_id).num_rows == 0


def test_kept_fields_are_typed_columns_and_a_changed_field_alone_updates_its_row(
        dataset, bq, tiny_model_dir, tmp_path):
    table = f"test-project:{dataset}.kept"
    docs = {"a": ("the cat sat", "en", 2020, ["x", "y"]), "b": ("a dog ran", "de", 2021, None),
            "c": ("hello world", None, 2022, ["z"])}

    def corpus(name, records):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"id": i, "text": t, "lang": lang, "year": year,
                                            **({"tags": tags} if tags is not None else {})}) + "\n"
                                for i, (t, lang, year, tags) in records.items()))
        return str(path)

    _run(corpus("1.jsonl", docs), table, "k1", tiny_model_dir, tmp_path, "--keep_fields=lang,year,tags")
    columns = {field.name: (field.field_type, field.mode) for field in bq.get_table(table.replace(":", ".")).schema}
    assert columns["lang"] == ("STRING", "NULLABLE") and columns["tags"] == ("STRING", "REPEATED")
    assert columns["year"][0] in ("INT64", "INTEGER")
    first = bq.rows(table)
    assert (first["a"]["lang"], first["a"]["year"], first["a"]["tags"]) == ("en", 2020, ["x", "y"])
    assert first["b"]["tags"] == [] and first["c"]["lang"] is None
    changed = {**docs, "a": ("the cat sat", "fr", 2020, ["x", "y"]), "b": ("a dog barked", "de", 2021, None)}
    counts = _run(corpus("2.jsonl", changed), table, "k2", tiny_model_dir, tmp_path, "--keep_fields=lang,year,tags")
    assert _changes(counts) == {"new": 0, "changed": 1, "changed_model": 0, "unchanged": 2, "deleted": 0,
                                "embedded": 1}
    second = bq.rows(table)
    assert second["a"]["lang"] == "fr" and second["a"]["run_id"] == "k1"  # Not re-embedded: the field alone.
    assert second["a"]["embedding"] == first["a"]["embedding"] and second["c"] == first["c"]
    assert second["b"]["run_id"] == "k2"


def test_every_sink_of_one_run_holds_the_same_ids_vectors_and_fields(dataset, bq, tiny_model_dir, tmp_path,
                                                                      postgres_uri, read_embeddings):
    """TFRecord, BigQuery, Parquet, Vertex AI Vector Search and PostgreSQL written by one run, chunked."""
    import glob

    import psycopg
    import pyarrow.parquet as pq

    table = f"test-project:{dataset}.every_sink"
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": _document(20 + 15 * i, i), "lang": f"l{i % 2}"})
                              + "\n" for i in range(4)))
    root = tmp_path / "out"
    run_lib.run(["--runner=FnApiRunner", "--project=test-project", f"--input={corpus}",
                 f"--model_dir={tiny_model_dir}", "--chunking=windows", "--chunk_tokens=16", "--keep_fields=lang",
                 f"--output_tfrecord={root}/emb", f"--output_bigquery={table}", "--temp_location=gs://tests/tmp",
                 f"--output_parquet={root}/parquet/emb", f"--output_vertex={root}/vertex",
                 "--vertex_restricts=lang", f"--output_postgres={postgres_uri}", "--postgres_table=every_sink"])
    tfrecord = {i: (row["embedding"], row["doc_id"]) for i, row in read_embeddings(f"{root}/emb", chunks=True).items()}
    assert len(tfrecord) > 4
    sinks = {
        "bigquery": {i: (row["embedding"], row["doc_id"], row["lang"]) for i, row in bq.rows(table).items()},
        "parquet": {row["id"]: (row["embedding"], row["doc_id"], row["lang"])
                    for path in glob.glob(f"{root}/parquet/emb-*.parquet") for row in pq.read_table(path).to_pylist()},
        "vertex": {point["id"]: (point["embedding"], point["id"].split("#")[0], point["restricts"][0]["allow"][0])
                   for path in glob.glob(f"{root}/vertex/*.json") for point in map(json.loads, open(path))},
    }
    with psycopg.connect(postgres_uri) as connection:
        sinks["postgres"] = {i: (json.loads(vector), doc_id, lang) for i, vector, doc_id, lang in connection.execute(
            "SELECT id, embedding::text, doc_id, lang FROM every_sink").fetchall()}
    for name, rows in sinks.items():
        assert sorted(rows) == sorted(tfrecord), name
        for record_id, (vector, doc_id, lang) in rows.items():
            assert doc_id == tfrecord[record_id][1] and lang == f"l{int(doc_id[1:]) % 2}", (name, record_id)
            np.testing.assert_allclose(vector, tfrecord[record_id][0], atol=1e-6, err_msg=f"{name} {record_id}")
