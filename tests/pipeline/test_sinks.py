"""End to end on the local runner: kept fields and every typed sink at once (TFRecord, Parquet, Vertex AI Vector
Search, PostgreSQL with pgvector on a real server), an incremental run that changes, adds and deletes records,
a rerun of the same run id, and user mistakes in one line."""

import glob
import json
import uuid

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline import run as run_lib
from transforms.examples import parse_example

DOCS = {"a": ("the cat sat on the mat .", {"lang": "en", "year": 2001, "tags": ["x", "y"], "score": 0.5}),
        "b": ("Hello World !", {"lang": "de", "year": 2002, "tags": [], "score": 1}),
        "c": ("a dog ran and the cat sat", {"lang": "en", "tags": ["z"], "score": 2.25}),
        "d": ("I read the book , it was very good .", {"lang": "fr", "year": 2004, "tags": ["x"], "score": 0.0})}


def _corpus(path, docs) -> str:
    path.write_text("".join(json.dumps({"id": i, "text": t, **fields}) + "\n" for i, (t, fields) in docs.items()))
    return str(path)


def _run(tmp_path, corpus, model_dir, table, postgres_uri, run_id, *extra):
    root = tmp_path / "out"
    argv = ["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={model_dir}", "--seq_length=32",
            f"--output_tfrecord={root}/run={{run_id}}/emb", f"--previous_output={root}/run={{latest}}/emb",
            f"--run_id={run_id}", "--keep_fields=lang,year,tags,score",
            f"--output_parquet={root}/run={{run_id}}/parquet/emb", f"--output_vertex={root}/run={{run_id}}/vertex",
            "--vertex_restricts=lang,tags", "--vertex_numeric_restricts=year", "--vertex_crowding_tag=lang",
            f"--output_postgres={postgres_uri}", f"--postgres_table={table}", "--postgres_index=hnsw", *extra]
    run_lib.run(argv)
    return root / f"run={run_id}"


def _parquet(run_dir) -> dict:
    table = pa.concat_tables(pq.read_table(f) for f in sorted(glob.glob(f"{run_dir}/parquet/emb-*.parquet")))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    rows = table.to_pylist()
    assert len({row["id"] for row in rows}) == len(rows)
    return {row["id"]: row for row in rows}


def _vertex(run_dir) -> tuple[dict, list]:
    points = [json.loads(line) for f in sorted(glob.glob(f"{run_dir}/vertex/embeddings-*.json"))
              for line in open(f) if line.strip()]
    deleted = [line.strip() for f in sorted(glob.glob(f"{run_dir}/vertex/delete/*")) for line in open(f)
               if line.strip()]
    return {point["id"]: point for point in points}, sorted(deleted)


def _postgres(uri, table) -> dict:
    with psycopg.connect(uri) as connection:
        rows = connection.execute(f"SELECT id, embedding::text, lang, year, tags, score FROM {table}").fetchall()
    return {row[0]: {"embedding": json.loads(row[1]), "lang": row[2], "year": row[3], "tags": row[4],
                     "score": row[5]} for row in rows}


def test_every_sink_gets_the_same_ids_vectors_and_typed_fields_and_an_incremental_run_keeps_them_current(
        tmp_path, tiny_model_dir, postgres_uri, read_embeddings, synthetic_text):
    table = f"emb_{uuid.uuid4().hex[:8]}"
    run1 = _run(tmp_path, _corpus(tmp_path / "c1.jsonl", DOCS), tiny_model_dir, table, postgres_uri, "r1")

    tfrecord = read_embeddings(f"{run1}/emb")
    parquet, (points, deleted), table_rows = _parquet(run1), _vertex(run1), _postgres(postgres_uri, table)
    assert sorted(tfrecord) == sorted(parquet) == sorted(points) == sorted(table_rows) == sorted(DOCS)
    assert deleted == []
    for record_id, features in tfrecord.items():
        for vector in (parquet[record_id]["embedding"], points[record_id]["embedding"],
                       table_rows[record_id]["embedding"]):
            np.testing.assert_allclose(vector, features["embedding"], rtol=1e-6)
    # Typed from the input; a missing field is null; an integer score in a float column is a float.
    assert parquet["c"]["year"] is None and parquet["a"]["tags"] == ["x", "y"] and parquet["b"]["score"] == 1.0
    assert table_rows["a"] == {**table_rows["a"], "lang": "en", "year": 2001, "tags": ["x", "y"], "score": 0.5}
    assert points["a"]["restricts"] == [{"namespace": "lang", "allow": ["en"]},
                                        {"namespace": "tags", "allow": ["x", "y"]}]
    assert points["a"]["numeric_restricts"] == [{"namespace": "year", "value_int": 2001}]
    assert points["a"]["crowding_tag"] == "en" and "numeric_restricts" not in points["c"]
    example = parse_example(tfrecord["a"]["serialized"])
    assert list(example["lang"]) == [b"en"] and list(example["year"]) == [2001]

    # Run 2: b changed, c deleted, e added, d's lang changed (its text did not: carried, with the new field).
    docs2 = {"a": DOCS["a"], "b": (synthetic_text(5), DOCS["b"][1]), "d": (DOCS["d"][0], {**DOCS["d"][1],
             "lang": "it"}), "e": (synthetic_text(9), {"lang": "en", "year": 2009, "tags": [], "score": 3.5})}
    run2 = _run(tmp_path, _corpus(tmp_path / "c2.jsonl", docs2), tiny_model_dir, table, postgres_uri, "r2")
    points2, deleted2 = _vertex(run2)
    # d's text is unchanged, but its restricts are not: the update carries it with its new lang.
    assert sorted(points2) == ["b", "d", "e"] and deleted2 == ["c"]
    assert points2["d"]["restricts"][0] == {"namespace": "lang", "allow": ["it"]}
    np.testing.assert_allclose(points2["d"]["embedding"], points["d"]["embedding"])
    parquet2, table_rows2 = _parquet(run2), _postgres(postgres_uri, table)
    assert sorted(parquet2) == sorted(table_rows2) == sorted(read_embeddings(f"{run2}/emb")) == ["a", "b", "d", "e"]
    assert parquet2["d"]["lang"] == table_rows2["d"]["lang"] == "it"
    np.testing.assert_allclose(parquet2["d"]["embedding"], parquet["d"]["embedding"])
    assert not np.allclose(table_rows2["b"]["embedding"], table_rows["b"]["embedding"])

    # The same run again: the same files and rows, no duplicates.
    before = {f: open(f, "rb").read() for f in glob.glob(f"{run2}/**/*.*", recursive=True)}
    _run(tmp_path, _corpus(tmp_path / "c2.jsonl", docs2), tiny_model_dir, table, postgres_uri, "r2")
    after = {f: open(f, "rb").read() for f in glob.glob(f"{run2}/**/*.*", recursive=True)}
    assert after == before
    assert _postgres(postgres_uri, table) == table_rows2


@pytest.mark.parametrize("extra,message", [
    (["--keep_fields=lang,model"], "--keep_fields lang,model: model would clash with an output column"),
    (["--keep_fields=lang", "--vertex_restricts=year"], "--vertex_restricts year: year is not among --keep_fields"),
    (["--keep_fields=lang", "--vertex_numeric_restricts=lang"], "lang (string) is not a number"),
    (["--postgres_table=t"], "--output_postgres and --postgres_table go together"),
    (["--input_format=text", "--keep_fields=lang"], "--keep_fields needs named fields"),
])
def test_sink_mistakes_get_one_clear_line(extra, message, tmp_path, tiny_model_dir, capsys, one_error_line):
    corpus = _corpus(tmp_path / "c.jsonl", DOCS)
    argv = [f"--input={corpus}", f"--model_dir={tiny_model_dir}", f"--output_parquet={tmp_path}/p",
            f"--output_vertex={tmp_path}/v", f"--output_failed={tmp_path}/failed", "--runner=FnApiRunner", *extra]
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err.strip().splitlines(), message)


def test_a_table_of_another_dimension_is_refused_before_anything_is_written(tmp_path, tiny_model_dir, postgres_uri,
                                                                            capsys, one_error_line):
    table = f"emb_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_uri) as connection:
        connection.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, embedding vector(8), model text, "
                           "content_hash text)")
    argv = [f"--input={_corpus(tmp_path / 'c.jsonl', DOCS)}", f"--model_dir={tiny_model_dir}",
            f"--output_parquet={tmp_path}/p", f"--output_failed={tmp_path}/failed",
            f"--output_postgres={postgres_uri}", f"--postgres_table={table}", "--runner=FnApiRunner"]
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err.strip().splitlines(), f"--postgres_table {table}",
                   "embedding is vector(8), not vector(32)")
    assert not glob.glob(f"{tmp_path}/p*")


def test_inspect_reads_the_parquet_and_postgres_outputs(tmp_path, tiny_model_dir, postgres_uri, capsys):
    from pipeline import inspect as inspect_lib
    from transforms.sinks.postgres import mask

    table = f"emb_{uuid.uuid4().hex[:8]}"
    argv = ["--runner=FnApiRunner", f"--input={_corpus(tmp_path / 'c.jsonl', DOCS)}", f"--model_dir={tiny_model_dir}",
            f"--output_parquet={tmp_path}/p/emb", f"--output_failed={tmp_path}/failed",
            f"--output_postgres={postgres_uri}", f"--postgres_table={table}"]
    run_lib.run(argv)
    capsys.readouterr()
    assert inspect_lib.main([f"{tmp_path}/p/emb", "-k", "1"]) == 0
    parquet_out = capsys.readouterr().out
    assert inspect_lib.main([postgres_uri, f"--postgres_table={table}", "-k", "1"]) == 0
    postgres_out = capsys.readouterr().out
    assert f"4 embeddings of dimension 32 in {tmp_path}/p/emb-*.parquet" in parquet_out
    assert f"4 embeddings of dimension 32 in {mask(postgres_uri)} table {table}" in postgres_out
    # The same vectors give the same neighbours, whichever output they are read from.
    assert parquet_out.split("\n", 1)[1] == postgres_out.split("\n", 1)[1]


def test_a_run_killed_midway_and_rerun_leaves_every_sink_complete_without_duplicates(
        tmp_path, tiny_model_dir, postgres_uri, read_embeddings, synthetic_text):
    import os
    import signal
    import subprocess
    import sys
    import time

    table = f"emb_{uuid.uuid4().hex[:8]}"
    docs = {f"k{i:02d}": (synthetic_text(i), {"lang": "en", "year": 2000 + i, "tags": [], "score": 1.0})
            for i in range(40)}
    corpus = _corpus(tmp_path / "c.jsonl", docs)
    root = tmp_path / "out"
    argv = [f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--seq_length=32", "--batch_size=4",
            f"--output_tfrecord={root}/run={{run_id}}/emb", "--run_id=r1", "--keep_fields=lang,year,tags,score",
            f"--output_parquet={root}/run={{run_id}}/parquet/emb", f"--output_vertex={root}/run={{run_id}}/vertex",
            f"--output_postgres={postgres_uri}", f"--postgres_table={table}"]
    # Killed as soon as it has begun writing: its spilled runs or Beam's temporary files appear.
    process = subprocess.Popen([sys.executable, "-m", "pipeline.run", *argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if (root / "run=r1").exists() and any((root / "run=r1").rglob("*")):
            break
        time.sleep(0.02)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (root / "run=r1" / "emb-manifest.json").exists()  # Killed before it committed.

    run_lib.run(["--runner=FnApiRunner", *argv])
    run = root / "run=r1"
    tfrecord, parquet, (points, deleted) = read_embeddings(f"{run}/emb"), _parquet(run), _vertex(run)
    rows = _postgres(postgres_uri, table)
    assert sorted(tfrecord) == sorted(parquet) == sorted(points) == sorted(rows) == sorted(docs) and not deleted
    assert not [path for path in run.rglob("*") if "beam-temp" in str(path) or ".runs-" in str(path)]


HOSTILE = {"new\nline": "a line break in the id", "cr\r": "a carriage return", "crlf\r\nx": "both",
           "nul\u0000": "a NUL in the id", "x" * 9000: "a long id", "nul-field": "a NUL in a kept string",
           "nan": "NaN in a numeric restrict", "inf": "Infinity in a numeric restrict",
           "huge": "an integer beyond 64 bits", 'quote"\'': "quotes in the id", "tenth": "0.1 and 1e300"}


def test_a_corpus_of_hostile_values_runs_to_the_end_with_each_record_in_every_sink_or_dead_lettered(
        tmp_path, tiny_model_dir, postgres_uri, read_embeddings, synthetic_text):
    lines = []
    for i, record_id in enumerate(HOSTILE):
        fields = {"lang": "en", "year": 2000 + i, "score": 0.1, "big": 1e300}
        fields.update({"nul-field": {"lang": "e\u0000n"}, "huge": {"year": 2**70}}.get(record_id, {}))
        line = json.dumps({"id": record_id, "text": synthetic_text(i), **fields})
        lines.append(line.replace('"score": 0.1', '"score": NaN') if record_id == "nan"
                     else line.replace('"score": 0.1', '"score": Infinity') if record_id == "inf" else line)
    corpus = tmp_path / "hostile.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    table = f"emb_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "out"
    argv = ["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--seq_length=32",
            f"--output_tfrecord={root}/emb", "--keep_fields=lang,year,score,big",
            f"--output_parquet={root}/parquet/emb", f"--output_vertex={root}/vertex",
            "--vertex_numeric_restricts=score",
            f"--output_postgres={postgres_uri}", f"--postgres_table={table}", "--max_failed_fraction=0.9"]
    assert cli.main(argv) == 0

    dead = [json.loads(line) for f in glob.glob(f"{root}/emb-failed-*.jsonl") for line in open(f)]
    assert {entry["reason"] for entry in dead} == {"unstorable_value"}
    assert sorted(entry["record"] for entry in dead) == sorted(
        line[:1000] for line in lines if json.loads(line)["id"] in {"new\nline", "cr\r", "crlf\r\nx", "nul\u0000",
                                                                     "x" * 9000, "nul-field", "nan", "inf"})
    stored = {"huge", 'quote"\'', "tenth"}
    tfrecord, parquet, (points, deleted) = read_embeddings(f"{root}/emb"), _parquet(root), _vertex(root)
    with psycopg.connect(postgres_uri) as connection:
        rows = dict(connection.execute(f"SELECT id, score FROM {table}").fetchall())
    assert set(tfrecord) == set(parquet) == set(points) == set(rows) == stored and not deleted
    assert parquet["huge"]["year"] is None and parquet["tenth"]["score"] == 0.1 and parquet["tenth"]["big"] == 1e300
    example = parse_example(tfrecord["tenth"]["serialized"])
    assert [float(np.frombuffer(value, "<f8")[0]) for value in example["big"]] == [1e300]
    assert rows["tenth"] == 0.1


def test_two_runs_at_once_into_one_table_both_land_without_duplicates(tmp_path, tiny_model_dir, postgres_uri,
                                                                      synthetic_text):
    import subprocess
    import sys

    table = f"emb_{uuid.uuid4().hex[:8]}"
    processes = []
    for run, ids in (("a", range(0, 30)), ("b", range(20, 50))):  # d20..d29 in both.
        corpus = _corpus(tmp_path / f"{run}.jsonl", {f"d{i:02d}": (synthetic_text(i), {"lang": run}) for i in ids})
        argv = [f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--seq_length=32", f"--run_id={run}",
                f"--output_tfrecord={tmp_path}/{run}/emb", "--keep_fields=lang", f"--output_postgres={postgres_uri}",
                f"--postgres_table={table}"]
        processes.append(subprocess.Popen([sys.executable, "-m", "pipeline.run", *argv], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]
    with psycopg.connect(postgres_uri) as connection:
        rows = connection.execute(f"SELECT id, lang FROM {table}").fetchall()
    assert sorted(record_id for record_id, _ in rows) == [f"d{i:02d}" for i in range(50)]
    assert {lang for record_id, lang in rows if record_id < "d20"} == {"a"}
