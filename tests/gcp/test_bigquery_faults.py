"""Fault tests of the BigQuery path that keeps a table current (--previous_output TABLE --output_bigquery TABLE).

bqemulator sits behind tests/gcp/flaky_proxy.py, and every BigQuery client of the run (pre-flight checks, Beam's
load jobs and table calls, the MERGE) talks to the proxy (the `bigquery_proxy` fixture). Checked here:

  * with a seeded share of requests failing (503 and 500 with Google's error body, reset connections, and answers
    lost after the emulator acted), an incremental run either completes with the table exact, or fails and leaves
    it as it was, and then a rerun completes it; a job insert retried after its answer was lost gets 409 Already
    Exists from the proxy, as from BigQuery (bqemulator itself would run the job again);
  * a run whose MERGE fails for good after its rows were loaded into TABLE__run_RUNID (as if killed between the
    two) leaves the table as it was; rerun with the same --run_id, it ends exact.

"Exact": one row per id of the corpus and no other, unchanged records keep their earlier rows untouched, changed
and new ones carry this run's id and the embeddings a clean full run gives, and no run table is left.

To keep pipeline runs few, the earlier run's table is written directly (rows of a clean TFRecord run of the new
corpus for unchanged records, stale rows for a changed and a deleted record) rather than by a pipeline run.
"""

import numpy as np
import pytest
import tensorflow as tf
from flaky_proxy import fail_matching, first_attempts_fail, is_job_insert, seeded_faults
from google.api_core import exceptions

from pipeline import run as run_lib
from transforms import bigquery as bigquery_lib
from transforms import incremental as incremental_lib
from transforms import records as records_lib
from transforms.records import feature_spec

DATASET = "faults"
_EARLIER = "2026-10-01 00:00:00 UTC"
# The corpus the tests update to, and its earlier version: "d03" changed, "d07" deleted, "n0" and "n1" added.
_IDS = [f"d{i:02d}" for i in range(12)]
_CHANGED, _DELETED, _ADDED = "d03", "d07", ("n0", "n1")


@pytest.fixture(scope="module")
def dataset(gcp_emulators, bq, bucket):
    """The dataset of these tests' tables (and the bucket for load jobs' files, gs://tests/tmp)."""
    bq.create_dataset(DATASET, exists_ok=True)
    return DATASET


@pytest.fixture(scope="module")
def new_corpus(tmp_path_factory, synthetic_text, write_jsonl_corpus):
    """(path, {id: text}) of the corpus the runs update the table to."""
    docs = {i: synthetic_text(int(i[1:]), variant=1 if i == _CHANGED else 0) for i in _IDS if i != _DELETED}
    docs.update({i: synthetic_text(40 + n) for n, i in enumerate(_ADDED)})
    return write_jsonl_corpus(tmp_path_factory.mktemp("faults") / "new.jsonl", docs), docs


@pytest.fixture(scope="module")
def reference(new_corpus, tiny_model_dir, tmp_path_factory, gcp_emulators) -> dict:
    """{id: parsed TFRecord example} of a clean full run over the new corpus: the embeddings a table must end with."""
    prefix = str(tmp_path_factory.mktemp("reference") / "part")
    run_lib.run(["--runner=FnApiRunner", f"--input={new_corpus[0]}", f"--model_dir={tiny_model_dir}",
                 f"--output_tfrecord={prefix}"])
    rows = {}
    for serialized in tf.data.TFRecordDataset(tf.io.gfile.glob(prefix + "-*.tfrecord")):
        parsed = tf.io.parse_single_example(serialized, feature_spec())
        rows[parsed["id"].numpy().decode()] = {key: value.numpy() for key, value in parsed.items()}
    assert sorted(rows) == sorted(new_corpus[1])
    return rows


def _seed(bq, table: str, reference: dict) -> dict:
    """Writes the table as an earlier run left it; returns its rows as _rows reads them."""
    from google.cloud import bigquery

    table_id = bigquery_lib.parse_table(table).table_id
    bq.delete_table(table_id, not_found_ok=True)
    bq.create_table(bigquery.Table(table_id, schema=[bigquery.SchemaField(name, type_, mode=mode)
                                                     for name, type_, mode in records_lib.SCHEMA]))
    model = next(iter(reference.values()))["model"].decode()
    rows = []
    for record_id in _IDS:
        if record_id in (_CHANGED, _DELETED):  # Embedded from other text: another content hash.
            embedding, content_hash = [0.5] * len(reference["d00"]["embedding"]), "0" * 64
        else:
            embedding = [float(x) for x in reference[record_id]["embedding"]]
            content_hash = reference[record_id]["content_hash"].decode()
        rows.append({"id": record_id, "embedding": embedding, "model": model, "content_hash": content_hash,
                     "embedded_at": _EARLIER, "run_id": "earlier"})
    assert not bq.insert_rows_json(table_id, rows)
    seeded = bq.rows(table)
    assert sorted(seeded) == _IDS
    return seeded


def _run_table_rows(bq, table: str, run_id: str):
    """The run table's row count, or None when there is none."""
    try:
        return bq.get_table(incremental_lib.run_table(bigquery_lib.parse_table(table), run_id).table_id).num_rows
    except exceptions.NotFound:
        return None


def _run(corpus: str, table: str, run_id: str, model_dir: str, tmp_path) -> dict:
    argv = ["--runner=FnApiRunner", "--project=test-project", f"--input={corpus}", f"--model_dir={model_dir}",
            "--batch_size=4", f"--output_bigquery={table}", f"--previous_output={table}",
            "--temp_location=gs://tests/tmp", f"--output_failed={tmp_path}/failed/run={{run_id}}/part",
            f"--run_id={run_id}"]
    return run_lib.counters(run_lib.run(argv))


def _changes(counters: dict) -> dict:
    return {name: counters.get(name, 0) for name in ("new", "changed", "unchanged", "deleted", "embedded")}


_EXPECTED_CHANGES = {"new": 2, "changed": 1, "unchanged": 10, "deleted": 1, "embedded": 3}


def _assert_exact(bq, table: str, run_id: str, seeded: dict, reference: dict) -> None:
    rows = bq.rows(table)
    assert sorted(rows) == sorted(reference)
    for record_id, expected in reference.items():
        row = rows[record_id]
        if record_id in (_CHANGED, *_ADDED):
            assert row["run_id"] == run_id, record_id
        else:
            assert row == seeded[record_id], record_id  # Carried forward: left untouched.
        assert row["content_hash"] == expected["content_hash"].decode(), record_id
        assert row["model"] == expected["model"].decode(), record_id
        np.testing.assert_allclose(row["embedding"], expected["embedding"], atol=1e-6, rtol=0, err_msg=record_id)
    count = next(iter(bq.query(f"SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS ids FROM "
                               f"`{bigquery_lib.parse_table(table).table_id}`").result()))
    assert (count["n"], count["ids"]) == (len(reference), len(reference))
    assert _run_table_rows(bq, table, run_id) is None


def _summary(proxy) -> str:
    kinds = {}
    for _, _, fault, _ in proxy.faults():
        kinds[str(fault)] = kinds.get(str(fault), 0) + 1
    return f"{len(proxy.log)} requests, {len(proxy.faults())} failed: {kinds}"


def test_an_incremental_run_through_a_flaky_bigquery_ends_exact_or_leaves_the_table_as_it_was(
        dataset, bq, bigquery_proxy, new_corpus, reference, tiny_model_dir, tmp_path):
    table = f"test-project:{dataset}.flaky"
    seeded = _seed(bq, table, reference)
    # Every job insert (the load into the run table, the MERGE) first acts but loses its answer, then its retry is
    # refused; every other call fails its first attempt (503, 500 or a reset); after that, 25% fail at random.
    bigquery_proxy.decide = first_attempts_fail(("lost",), match=is_job_insert, then=first_attempts_fail(
        ("503", "500", "reset"), then=seeded_faults(0.25, seed=20261124)))
    run_id = "2026-11-24T00-00-00"
    try:
        counters = _run(new_corpus[0], table, run_id, tiny_model_dir, tmp_path)
    except Exception as e:  # Retries exhausted: the table must be as it was, and a rerun must complete it.
        print(f"flaky run failed ({_summary(bigquery_proxy)}): {type(e).__name__}: {str(e)[:500]}")
        assert bq.rows(table) == seeded
        bigquery_proxy.decide = seeded_faults(0.0, seed=0)
        counters = _run(new_corpus[0], table, run_id, tiny_model_dir, tmp_path)
    else:
        print(f"flaky run completed ({_summary(bigquery_proxy)})")
    print("\n".join(f"  {method} {path[:100]} {fault or ''} {status or ''}"
                    for method, path, fault, status in bigquery_proxy.log))
    faults = bigquery_proxy.faults()
    assert len(faults) >= 10, _summary(bigquery_proxy)
    job_inserts = [fault for method, path, fault, _ in faults if is_job_insert(method, path, b"")]
    assert job_inserts.count("lost") >= 2, _summary(bigquery_proxy)  # The load and the MERGE, at least.
    # Their retries, once through, met the job they had started (409, as BigQuery answers) and took it as theirs.
    assert [status for *_, status in bigquery_proxy.log].count("409 from the proxy") >= 2, _summary(bigquery_proxy)
    assert _changes(counters) == _EXPECTED_CHANGES
    _assert_exact(bq, table, run_id, seeded, reference)


def test_a_run_killed_between_its_load_and_its_merge_reruns_with_the_same_run_id_to_an_exact_table(
        dataset, bq, bigquery_proxy, new_corpus, reference, tiny_model_dir, tmp_path):
    table = f"test-project:{dataset}.killed"
    seeded = _seed(bq, table, reference)
    run_id = "2026-11-25T00-00-00"
    # Every query job holding the MERGE is refused for good: the run dies after loading its run table.
    bigquery_proxy.decide = fail_matching(lambda method, path, body: method == "POST" and b"MERGE" in body)
    with pytest.raises(Exception, match="injected permanent 400"):
        _run(new_corpus[0], table, run_id, tiny_model_dir, tmp_path)
    assert bigquery_proxy.faults()
    assert bq.rows(table) == seeded
    # The loaded run table is left for the rerun, which replaces it (WRITE_TRUNCATE), not appends to it.
    assert _run_table_rows(bq, table, run_id) == len(reference)

    bigquery_proxy.decide = seeded_faults(0.0, seed=0)
    counters = _run(new_corpus[0], table, run_id, tiny_model_dir, tmp_path)
    assert _changes(counters) == _EXPECTED_CHANGES
    _assert_exact(bq, table, run_id, seeded, reference)
