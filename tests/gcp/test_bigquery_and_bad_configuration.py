"""The BigQuery sink's pieces, and every GCS/BigQuery configuration mistake refused before the job starts."""

import datetime
import json
import time

import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems

from pipeline import cli
from pipeline import options as options_lib
from transforms import bigquery as bigquery_lib
from transforms import records as records_lib


@pytest.mark.parametrize("spec,expected", [
    ("my-project:my_dataset.embeddings", ("my-project", "my_dataset", "embeddings")),
    ("my-project.my_dataset.embeddings", ("my-project", "my_dataset", "embeddings")),
    ("example.com:my-project:ds.t-1", ("example.com:my-project", "ds", "t-1")),
    ("example.com:my-project.ds.t", ("example.com:my-project", "ds", "t")),
])
def test_table_specs_parse_with_a_colon_or_a_dot(spec, expected):
    table = bigquery_lib.parse_table(spec)
    assert table == expected
    assert table.spec == f"{expected[0]}:{expected[1]}.{expected[2]}"
    assert table.table_id == ".".join(expected)


def test_rows_have_exactly_the_declared_columns():
    when = datetime.datetime(2026, 11, 24, 23, 5, 6, 789012, tzinfo=datetime.timezone.utc)
    key = records_lib.RecordKey("doc-1", "ab" * 32, "gs://b/c.jsonl")
    row = records_lib.to_row(key, np.array([0.5, -1.25], np.float32), "f" * 16, "run-1", when)
    assert list(row) == [name for name, _, _ in records_lib.SCHEMA]
    assert row == {"id": "doc-1", "embedding": [0.5, -1.25], "model": "f" * 16, "content_hash": "ab" * 32,
                   "embedded_at": "2026-11-24 23:05:06.789012 UTC", "run_id": "run-1"}
    assert all(type(x) is float for x in row["embedding"])
    json.dumps(row)  # Load-job files and streaming inserts both send JSON.


def test_schema_problems_allow_nullable_and_extra_nullable_columns_only():
    from google.cloud.bigquery import SchemaField

    ours = [SchemaField(name, type_, mode=mode) for name, type_, mode in records_lib.SCHEMA]
    assert bigquery_lib.schema_problems(ours) == []
    relaxed = [SchemaField(f.name, "FLOAT" if f.field_type == "FLOAT64" else f.field_type,
                           mode="REPEATED" if f.mode == "REPEATED" else "NULLABLE") for f in ours]
    assert bigquery_lib.schema_problems(relaxed + [SchemaField("note", "STRING")]) == []
    broken = [f for f in ours if f.name != "run_id"]
    broken[0] = SchemaField("id", "INT64", mode="REQUIRED")
    broken[1] = SchemaField("embedding", "FLOAT64", mode="NULLABLE")
    assert bigquery_lib.schema_problems(broken + [SchemaField("owner", "STRING", mode="REQUIRED")]) == [
        "id is INT64, not STRING", "embedding is NULLABLE, not REPEATED", "no column run_id",
        "extra column owner is REQUIRED"]


def test_bigquery_method_choices_agree_with_the_sink():
    parser = cli.help_parser()
    action = next(a for a in options_lib.option_actions(parser) if "--bigquery_method" in a.option_strings)
    assert tuple(action.choices) == tuple(bigquery_lib.METHODS)
    assert "--output_bigquery" in parser.format_help()
    assert options_lib.EmbeddingOptions  # The options are declared there, once.


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"id": "x", "text": "the cat sat"}) + "\n")
    return str(path)


def _error(argv, capsys):
    """Runs main(argv); returns its one error line, after checking it exited with 2 and printed no traceback."""
    assert cli.main(["--runner=FnApiRunner", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: ")
    return err[-1]


@pytest.mark.parametrize("spec", ["embeddings", "my_dataset.embeddings", "my-project:my_dataset",
                                  "My-Project:ds.t", "my-project:ds.t.extra", "my-project:ds.t$20250101",
                                  "my-project:my-dataset.t"])
def test_a_malformed_table_spec_is_refused(spec, corpus, tiny_model_dir, tmp_path, capsys):
    line = _error([f"--input={corpus}", f"--model_dir={tiny_model_dir}", f"--output_tfrecord={tmp_path}/o",
                   f"--output_bigquery={spec}", "--temp_location=gs://tests/tmp"], capsys)
    assert f"--output_bigquery {spec!r}" in line and "PROJECT:DATASET.TABLE" in line


@pytest.mark.parametrize("temp_location", [None, "/tmp/beam-temp"])
def test_file_loads_without_a_gcs_temp_location_are_refused(temp_location, corpus, tiny_model_dir, tmp_path,
                                                            capsys):
    argv = [f"--input={corpus}", f"--model_dir={tiny_model_dir}", f"--output_tfrecord={tmp_path}/o",
            "--output_bigquery=test-project:ds.t"]
    line = _error(argv + ([f"--temp_location={temp_location}"] if temp_location else []), capsys)
    assert "--temp_location" in line and "gs://" in line and "--bigquery_method streaming" in line


def test_no_output_at_all_is_refused(corpus, tiny_model_dir, capsys):
    line = _error([f"--input={corpus}", f"--model_dir={tiny_model_dir}"], capsys)
    assert "--output_tfrecord or --output_bigquery is required" in line


def test_bigquery_alone_needs_a_dead_letter_prefix(corpus, tiny_model_dir, capsys):
    line = _error([f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--output_bigquery=test-project:ds.t",
                   "--bigquery_method=streaming"], capsys)
    assert "--output_failed is required" in line


@pytest.mark.parametrize("flag,value", [
    ("--input", "gs://no-such-bucket/corpus/*.jsonl"),
    ("--output_tfrecord", "gs://no-such-bucket/out/emb"),
    ("--output_failed", "gs://no-such-bucket/out/failed"),
    ("--model_dir", "gs://no-such-bucket/models/tiny"),
    ("--encoder", "gs://no-such-bucket/models/tiny/encoder"),
    ("--temp_location", "gs://no-such-bucket/tmp"),
])
def test_a_gcs_bucket_that_does_not_exist_is_named(flag, value, gcp_emulators, bucket, corpus, tiny_model_dir,
                                                   tmp_path, capsys):
    args = {"--input": corpus, "--model_dir": tiny_model_dir, "--output_tfrecord": f"{tmp_path}/o",
            "--output_bigquery": "test-project:e2e.embeddings", "--temp_location": "gs://tests/tmp"}
    if flag == "--encoder":
        del args["--model_dir"]
        args["--preprocessor"] = f"{tiny_model_dir}/preprocessor"
    args[flag] = value
    line = _error([f"{k}={v}" for k, v in args.items()], capsys)
    assert line == f"error: {flag} {value}: bucket gs://no-such-bucket does not exist (or is not visible to these " \
                   "credentials). (see python -m pipeline.run --help)"


def test_a_missing_dataset_is_named(gcp_emulators, corpus, tiny_model_dir, tmp_path, capsys):
    line = _error([f"--input={corpus}", f"--model_dir={tiny_model_dir}", f"--output_tfrecord={tmp_path}/o",
                   "--output_bigquery=test-project:no_such_dataset.embeddings", "--bigquery_method=streaming"],
                  capsys)
    assert "--output_bigquery test-project:no_such_dataset.embeddings" in line
    assert "dataset test-project:no_such_dataset does not exist" in line


def test_an_existing_table_with_an_incompatible_schema_is_refused(gcp_emulators, bq, corpus, tiny_model_dir,
                                                                  tmp_path, capsys):
    from google.cloud import bigquery

    bq.create_dataset("bad_schema", exists_ok=True)
    bq.create_table(bigquery.Table("test-project.bad_schema.embeddings", schema=[
        bigquery.SchemaField("id", "INT64"), bigquery.SchemaField("embedding", "FLOAT64")]), exists_ok=True)
    line = _error([f"--input={corpus}", f"--model_dir={tiny_model_dir}", f"--output_tfrecord={tmp_path}/o",
                   "--output_bigquery=test-project.bad_schema.embeddings", "--temp_location=gs://tests/tmp"],
                  capsys)
    assert "--output_bigquery test-project:bad_schema.embeddings exists with an incompatible schema" in line
    assert "id is INT64, not STRING" in line and "embedding is NULLABLE, not REPEATED" in line
    assert "no column run_id" in line


def test_load_jobs_append_to_an_existing_table_with_its_own_compatible_schema(
        gcp_emulators, bq, bucket, corpus, tiny_model_dir, tmp_path, capsys):
    from google.cloud import bigquery

    bq.create_dataset("own_schema", exists_ok=True)
    # NULLABLE where ours says REQUIRED, plus a column of the user's own: compatible, and kept as it is.
    fields = [bigquery.SchemaField(name, type_, mode="REPEATED" if mode == "REPEATED" else "NULLABLE")
              for name, type_, mode in records_lib.SCHEMA] + [bigquery.SchemaField("note", "STRING")]
    bq.create_table(bigquery.Table("test-project.own_schema.embeddings", schema=fields), exists_ok=True)
    assert cli.main(["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={tiny_model_dir}",
                         "--output_bigquery=test-project:own_schema.embeddings", "--temp_location=gs://tests/tmp",
                         "--output_failed=gs://tests/own_schema/failed", "--run_id=own"]) == 0
    assert "embedded 1 " in capsys.readouterr().out
    table = bq.get_table("test-project.own_schema.embeddings")
    assert [(f.name, f.mode) for f in table.schema] == [(f.name, f.mode) for f in fields]
    rows = list(bq.list_rows(table))
    assert [(row["id"], row["run_id"], row["note"], len(row["embedding"])) for row in rows] == [("x", "own", None, 32)]


def test_a_real_google_endpoint_fails_fast_instead_of_hanging(gcp_emulators, monkeypatch):
    monkeypatch.delenv("BIGQUERY_EMULATOR_HOST")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    start = time.monotonic()
    with pytest.raises(Exception, match="only the emulators on 127.0.0.1 are allowed"):
        bigquery_lib.check_table(bigquery_lib.parse_table("test-project:ds.t"))
    with pytest.raises(Exception, match="only the emulators on 127.0.0.1 are allowed"):
        FileSystems.exists("gs://tests/anything")
    assert time.monotonic() - start < 10
