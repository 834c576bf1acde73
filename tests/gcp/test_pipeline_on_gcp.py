"""End to end against the emulators: corpora and models in GCS, embeddings to gs:// TFRecord and to BigQuery.

Each run is compared with a run of the same corpus and the same model bytes from local disk: every id once,
the same embeddings (atol 1e-6), the same model fingerprint.
"""

import csv
import datetime
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems

from pipeline import cli
from transforms import bigquery as bigquery_lib
from transforms import records as records_lib
from transforms.records import feature_spec

TEXTS = {
    "a": "the cat sat on the mat .",
    "b": "Hello World !",
    "c": "a dog ran and the cat sat",
    "d": "I read the book , it was very good .",
    "e": "yes",
    "f": "the movie was unbelievable",
    "long": " ".join(["the cat sat on the mat"] * 12),
}
PAIRS = {
    "p1": ("the cat sat", "a dog ran"),
    "p2": ("Hello World", "the book was very good and the movie was bad"),
    "p3": ("yes", "no"),
    "p4": ("I read the book", "it was good"),
}
TABLE = "test-project:e2e.embeddings"


def _jsonl_shards(records, shards=3):
    """{id: text} -> shard name -> bytes; the last shard also holds a line that is not JSON."""
    lines = [json.dumps({"id": record_id, "text": text}) for record_id, text in records.items()]
    out = {f"part-{i:05d}-of-{shards:05d}.jsonl": "\n".join(lines[i::shards]) + "\n" for i in range(shards)}
    out[f"part-{shards - 1:05d}-of-{shards:05d}.jsonl"] += "{not json\n"
    return {name: text.encode() for name, text in out.items()}


def _csv_shards(pairs, shards=2):
    out = {}
    items = list(pairs.items())
    for i in range(shards):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([["id", "premise", "hypothesis"]] + [[k, *v] for k, v in items[i::shards]])
        out[f"pairs-{i:05d}-of-{shards:05d}.csv"] = buffer.getvalue().encode()
    return out


def _put(bucket, prefix, files, local_dir):
    """Writes each file to gs://BUCKET/PREFIX/NAME and to LOCAL_DIR/NAME."""
    os.makedirs(local_dir, exist_ok=True)
    for name, data in files.items():
        bucket.blob(f"{prefix}/{name}").upload_from_string(data)
        with open(os.path.join(local_dir, name), "wb") as f:
            f.write(data)


def _download(gcs, uri, local_dir):
    """Copies every object under a gs:// directory to local_dir (google-cloud-storage, not the code under test)."""
    bucket, _, prefix = uri[len("gs://"):].partition("/")
    for blob in gcs.list_blobs(bucket, prefix=prefix + "/"):
        destination = os.path.join(local_dir, blob.name[len(prefix) + 1:])
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        blob.download_to_filename(destination)
    return local_dir


def _copy_out(pattern, local_dir):
    """Copies the files matching a gs:// pattern to local_dir with Beam's FileSystems (TF's gs:// can't reach
    the emulator); returns the local paths."""
    os.makedirs(local_dir, exist_ok=True)
    paths = []
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        paths.append(os.path.join(local_dir, metadata.path.rsplit("/", 1)[-1]))
        with FileSystems.open(metadata.path, compression_type="uncompressed") as source, open(paths[-1], "wb") as sink:
            sink.write(source.read())
    return sorted(paths)


def _tfrecords(paths):
    rows = {}
    for serialized in tf.data.TFRecordDataset(paths):
        parsed = tf.io.parse_single_example(serialized, feature_spec())
        record_id = parsed["id"].numpy().decode()
        assert record_id not in rows, f"{record_id} written twice"
        rows[record_id] = {key: value.numpy() for key, value in parsed.items()}
    return rows


def _failures(paths):
    return [json.loads(line) for path in paths for line in open(path, encoding="utf-8") if line.strip()]


def _bigquery_rows(bq, run_id):
    rows = {}
    for row in bq.list_rows(bigquery_lib.parse_table(TABLE).table_id):
        if row["run_id"] != run_id:
            continue
        assert row["id"] not in rows, f"{row['id']} written twice to BigQuery"
        rows[row["id"]] = dict(row.items())
    return rows


@pytest.fixture(scope="module")
def local_model_dir(gcs, gcs_model_dir, tmp_path_factory):
    """The very bytes of gcs_model_dir, downloaded for the local reference runs."""
    return _download(gcs, gcs_model_dir, str(tmp_path_factory.mktemp("model")))


def _run(argv, capsys):
    assert cli.main(["--runner=FnApiRunner", "--project=test-project", *argv]) == 0
    return capsys.readouterr().out


def test_sharded_jsonl_in_gcs_to_gcs_tfrecord_and_bigquery_matches_the_local_run(
        gcp_emulators, gcs, bq, bucket, gcs_model_dir, local_model_dir, tmp_path, capsys):
    _put(bucket, "e2e/corpus", _jsonl_shards(TEXTS), tmp_path / "corpus")
    bq.create_dataset("e2e", exists_ok=True)
    common = ["--seq_length=32", "--batch_size=3", "--max_failed_fraction=0.2"]  # One line of 8 is not JSON.
    before = datetime.datetime.now(datetime.timezone.utc)
    summary = _run(["--input=gs://tests/e2e/corpus/part-*.jsonl", f"--model_dir={gcs_model_dir}",
                    "--output_tfrecord=gs://tests/e2e/out/emb", f"--output_bigquery={TABLE}",
                    "--temp_location=gs://tests/tmp", "--run_id=run-texts", *common], capsys)
    _run([f"--input={tmp_path / 'corpus'}/part-*.jsonl", f"--model_dir={local_model_dir}",
          f"--output_tfrecord={tmp_path / 'local' / 'emb'}", *common], capsys)

    assert f"embedded {len(TEXTS)} " in summary  # Counted once, though written to two sinks.
    local = _tfrecords(sorted(str(p) for p in (tmp_path / "local").glob("emb-*.tfrecord")))
    remote = _tfrecords(_copy_out("gs://tests/e2e/out/emb-*.tfrecord", tmp_path / "copied"))
    assert sorted(remote) == sorted(local) == sorted(TEXTS)
    for record_id, row in local.items():
        np.testing.assert_allclose(remote[record_id]["embedding"], row["embedding"], atol=1e-6, rtol=0)
        assert remote[record_id]["model"] == row["model"] and remote[record_id]["content_hash"] == row["content_hash"]
    failures = _failures(_copy_out("gs://tests/e2e/out/emb-failed-*.jsonl", tmp_path / "failed"))
    assert [(f["reason"], f["source"]) for f in failures] == [
        ("invalid_json", "gs://tests/e2e/corpus/part-00002-of-00003.jsonl")]

    table = bq.get_table(bigquery_lib.parse_table(TABLE).table_id)
    legacy = {"FLOAT64": "FLOAT"}  # Real BigQuery answers with legacy type names; the emulator echoes ours.
    assert [(f.name, legacy.get(f.field_type, f.field_type), f.mode) for f in table.schema] == [
        (name, legacy.get(type_, type_), mode) for name, type_, mode in records_lib.SCHEMA]
    rows = _bigquery_rows(bq, "run-texts")
    assert sorted(rows) == sorted(TEXTS)
    for record_id, row in local.items():
        np.testing.assert_allclose(rows[record_id]["embedding"], row["embedding"], atol=1e-6, rtol=0)
        assert rows[record_id]["model"] == row["model"].decode()
        assert rows[record_id]["content_hash"] == records_lib.content_hash((TEXTS[record_id],))
        assert before <= rows[record_id]["embedded_at"] <= datetime.datetime.now(datetime.timezone.utc)


def _create_table_if_missing(bq):
    """Run alone, a test creates the table the first test would."""
    table = bigquery_lib.parse_table(TABLE)
    if not bigquery_lib.check_table(table):
        from google.cloud import bigquery

        bq.create_table(bigquery.Table(table.table_id, schema=[
            bigquery.SchemaField(name, type_, mode=mode) for name, type_, mode in records_lib.SCHEMA]))


def test_a_refused_run_appends_no_row_and_writes_no_shard(
        gcp_emulators, gcs, bq, bucket, gcs_model_dir, tmp_path, capsys):
    _put(bucket, "refused/corpus", _jsonl_shards(TEXTS), tmp_path / "corpus")
    bq.create_dataset("e2e", exists_ok=True)
    _create_table_if_missing(bq)
    code = cli.main(["--runner=FnApiRunner", "--project=test-project",
                         "--input=gs://tests/refused/corpus/part-*.jsonl", f"--model_dir={gcs_model_dir}",
                         "--output_tfrecord=gs://tests/refused/out/emb", f"--output_bigquery={TABLE}",
                         "--temp_location=gs://tests/tmp", "--run_id=run-refused", "--max_failed_fraction=0"])
    err = capsys.readouterr().err
    assert code == 1 and "1 of 8 records failed" in err and "invalid_json 1" in err
    assert _bigquery_rows(bq, "run-refused") == {}
    assert FileSystems.match(["gs://tests/refused/out/emb-*.tfrecord"])[0].metadata_list == []
    failures = _failures(_copy_out("gs://tests/refused/out/emb-failed-*.jsonl", tmp_path / "failed"))
    assert [f["reason"] for f in failures] == ["invalid_json"]  # Dead letters are written all the same.


def test_pair_csv_in_gcs_streamed_into_the_existing_table_matches_the_local_run(
        gcp_emulators, gcs, bq, bucket, gcs_model_dir, local_model_dir, tmp_path, capsys):
    _put(bucket, "e2e/pairs", _csv_shards(PAIRS), tmp_path / "pairs")
    bq.create_dataset("e2e", exists_ok=True)
    _create_table_if_missing(bq)
    common = ["--pair_fields=premise,hypothesis", "--seq_length=12"]
    summary = _run(["--input=gs://tests/e2e/pairs/pairs-*.csv", f"--encoder={gcs_model_dir}/encoder",
                    f"--preprocessor={gcs_model_dir}/preprocessor", f"--output_bigquery={TABLE}",
                    "--bigquery_method=streaming", "--output_failed=gs://tests/e2e/pairs-failed/part",
                    "--run_id=run-pairs", *common], capsys)
    _run([f"--input={tmp_path / 'pairs'}/pairs-*.csv", f"--model_dir={local_model_dir}",
          f"--output_tfrecord={tmp_path / 'local' / 'emb'}", *common], capsys)

    assert f"embedded {len(PAIRS)} " in summary and f"BigQuery {TABLE}" in summary  # Counted with no TFRecord sink.
    assert _failures(_copy_out("gs://tests/e2e/pairs-failed/part-*.jsonl", tmp_path / "failed")) == []
    local = _tfrecords(sorted(str(p) for p in (tmp_path / "local").glob("emb-*.tfrecord")))
    rows = _bigquery_rows(bq, "run-pairs")
    assert sorted(rows) == sorted(local) == sorted(PAIRS)
    for record_id, row in local.items():
        np.testing.assert_allclose(rows[record_id]["embedding"], row["embedding"], atol=1e-6, rtol=0)
        assert rows[record_id]["model"] == row["model"].decode()
        assert rows[record_id]["content_hash"] == records_lib.content_hash(PAIRS[record_id])


def test_appending_again_adds_no_row_twice_and_a_changed_record_adds_its_new_row(
        gcp_emulators, gcs, bq, bucket, gcs_model_dir, tmp_path, capsys):
    table = "test-project:e2e.appended"
    bq.create_dataset("e2e", exists_ok=True)
    texts = dict(list(TEXTS.items())[:3])
    corpus = tmp_path / "c.jsonl"
    argv = [f"--input={corpus}", f"--model_dir={gcs_model_dir}", "--seq_length=32", f"--output_bigquery={table}",
            "--temp_location=gs://tests/tmp", f"--output_failed={tmp_path}/failed"]
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in texts.items()))
    _run([*argv, "--run_id=append-1"], capsys)
    _run([*argv, "--run_id=append-1"], capsys)  # The same run again, retried by a scheduler.
    _run([*argv, "--run_id=append-2"], capsys)  # The same corpus, a new run.
    changed = {**texts, "a": "a dog ran"}
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in changed.items()))
    _run([*argv, "--run_id=append-3"], capsys)
    rows = [dict(row.items()) for row in bq.list_rows(bigquery_lib.parse_table(table).table_id)]
    assert sorted((row["id"], row["run_id"]) for row in rows) == sorted(
        [(record_id, "append-1") for record_id in texts] + [("a", "append-3")])
    newest = max((row for row in rows if row["id"] == "a"), key=lambda row: row["embedded_at"])
    assert newest["content_hash"] == records_lib.content_hash(("a dog ran",))
