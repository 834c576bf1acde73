"""Long documents end to end: --chunking writes one record per chunk, and incremental runs stay exact per
document (a document that grows, shrinks or vanishes leaves no stale chunk behind)."""

import json
import os

import numpy as np
import pytest

from pipeline import cli
from pipeline import run as run_lib
from transforms import incremental

_WORDS = "the cat sat on the mat , a dog ran to the book and read it . ".split()


def _document(words: int, start: int = 0) -> str:
    return " ".join(_WORDS[(start + i) % len(_WORDS)] for i in range(words))


def _run(corpus, prefix, *extra):
    argv = ["--runner=FnApiRunner", f"--input={corpus}", "--batch_size=4", f"--output_tfrecord={prefix}",
            "--chunk_tokens=16", "--chunk_overlap=4", *extra]
    options, plan = run_lib.prepare(argv)
    counts = run_lib.counters(run_lib.launch(options, plan))
    return counts, run_lib.summarize(counts, plan)


def _manifest_files(prefix: str) -> list[str]:
    manifest = json.loads(open(prefix + incremental.MANIFEST_SUFFIX).read())
    return [os.path.join(os.path.dirname(prefix), name) for name in manifest["files"]]


@pytest.mark.parametrize("mode", ["windows", "late"])
def test_each_chunk_is_a_record_naming_its_document_and_its_text(mode, tmp_path, tiny_model_dir, write_jsonl_corpus,
                                                                 read_embeddings):
    docs = {"long": _document(60), "short": "a dog ran"}
    corpus = write_jsonl_corpus(tmp_path / "c.jsonl", docs)
    counts, summary = _run(corpus, f"{tmp_path}/out/emb", f"--model_dir={tiny_model_dir}", f"--chunking={mode}",
                           "--output_chunk_text", "--pooling=mean")
    rows = read_embeddings(f"{tmp_path}/out/emb", chunks=True, chunk_text=True)
    long_chunks = sorted((r for r in rows.values() if r["doc_id"] == "long"), key=lambda r: r["chunk_index"])
    assert [r["id"] for r in long_chunks] == [f"long#{i}" for i in range(len(long_chunks))]
    assert len(long_chunks) == long_chunks[0]["chunk_count"] > 3
    assert rows["short#0"]["chunk_count"] == 1 and rows["short#0"]["chunk_text"] == "a dog ran"
    for row in rows.values():
        assert row["chunk_text"] == docs[row["doc_id"]][row["char_start"]:row["char_end"]]
        assert row["content_hash"] == rows[f"{row['doc_id']}#0"]["content_hash"]
    assert long_chunks[0]["char_start"] == 0 and long_chunks[-1]["char_end"] == len(docs["long"])
    assert (counts["embedded"], counts["chunks"], counts["documents_chunked"]) == (2, len(rows), 1)
    assert f"embedded 2 documents as {len(rows)} chunks" in summary and "nothing truncated" in summary


def test_inspect_shows_chunk_hits_with_their_document_and_passage(tmp_path, tiny_model_dir, write_jsonl_corpus,
                                                                  capsys):
    from pipeline import inspect

    docs = {"long": _document(60), "other": _document(40, 4)}
    corpus = write_jsonl_corpus(tmp_path / "c.jsonl", docs)
    _run(corpus, f"{tmp_path}/out/emb", f"--model_dir={tiny_model_dir}", "--chunking=windows")
    capsys.readouterr()
    assert inspect.main([f"{tmp_path}/out/emb", f"--corpus={corpus}", "--samples=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = next(line for line in lines if line.startswith("long#0 "))
    end = int(first.split("characters 0-")[1].split(")")[0])
    assert first == f"long#0 (document long, characters 0-{end}): {docs['long'][:end]}"  # The passage, from --corpus.


def test_incremental_chunked_runs_replace_every_chunk_of_a_changed_document(tmp_path, tiny_model_dir, postgres_uri,
                                                                            write_jsonl_corpus, read_embeddings):
    """TFRecord, Vertex AI Vector Search and PostgreSQL: a document that grows, shrinks or vanishes leaves no stale
    chunk behind, and the output equals a full run's."""
    import glob

    import psycopg

    first = {"grows": _document(30), "shrinks": _document(70, 3), "vanishes": _document(40, 5),
             "stays": _document(50, 7)}
    second = {"grows": _document(70), "shrinks": _document(30, 3), "stays": first["stays"],
              "new": _document(20, 9)}
    root, flags = tmp_path / "emb", [f"--model_dir={tiny_model_dir}", "--chunking=windows"]
    incremental_flags = [f"--previous_output={root}/run={{latest}}/part", f"--output_vertex={root}/run={{run_id}}/v",
                         f"--output_postgres={postgres_uri}", "--postgres_table=chunks", *flags]
    _run(write_jsonl_corpus(tmp_path / "1.jsonl", first), f"{root}/run={{run_id}}/part", "--run_id=r1",
         *incremental_flags)
    first_rows = read_embeddings(_manifest_files(f"{root}/run=r1/part"), chunks=True)
    counts, summary = _run(write_jsonl_corpus(tmp_path / "2.jsonl", second), f"{root}/run={{run_id}}/part",
                           "--run_id=r2", "--max_deleted_fraction=1", *incremental_flags)
    assert {name: counts.get(name, 0) for name in ("new", "changed", "unchanged", "deleted", "embedded")} == {
        "new": 1, "changed": 2, "unchanged": 1, "deleted": 1, "embedded": 3}
    incremental_rows = read_embeddings(_manifest_files(f"{root}/run=r2/part"), chunks=True)
    _run(tmp_path / "2.jsonl", f"{tmp_path}/full/part", *flags)
    full_rows = read_embeddings(f"{tmp_path}/full/part", chunks=True)
    assert sorted(incremental_rows) == sorted(full_rows)  # No stale chunk of a shrunk or deleted document.
    assert not any(row["doc_id"] == "vanishes" for row in incremental_rows.values())
    for record_id, row in full_rows.items():
        for name in ("content_hash", "model", "chunk_count", "char_start", "char_end"):
            assert incremental_rows[record_id][name] == row[name], (record_id, name)
        np.testing.assert_allclose(incremental_rows[record_id]["embedding"], row["embedding"], atol=1e-6)
    # Vertex: only the re-embedded documents' chunks, and every chunk id the update removes in delete/.
    points = [json.loads(line)["id"] for path in glob.glob(f"{root}/run=r2/v/*.json") for line in open(path)]
    assert sorted(points) == sorted(i for i, row in full_rows.items() if row["doc_id"] != "stays")
    removed = [line.strip() for path in glob.glob(f"{root}/run=r2/v/delete/*") for line in open(path)]
    assert sorted(removed) == sorted(set(first_rows) - set(full_rows))
    assert any(i.startswith("shrinks#") for i in removed) and any(i.startswith("vanishes#") for i in removed)
    with psycopg.connect(postgres_uri) as connection:
        table = dict(connection.execute("SELECT id, doc_id FROM chunks").fetchall())
    assert table == {i: row["doc_id"] for i, row in full_rows.items()}
    carried = [i for i in incremental_rows if incremental_rows[i]["doc_id"] == "stays"]
    assert carried and all(incremental_rows[i]["serialized"] == first_rows[i]["serialized"] for i in carried)


@pytest.mark.parametrize("extra,fragments", [
    (["--chunking=windows", "--pair_fields=text,other"], ["--pair_fields", "--chunking windows"]),
    (["--chunking=late", "--pooling=cls"], ["--chunking late", "--pooling mean"]),
    (["--chunking=windows", "--chunk_tokens=16", "--chunk_overlap=16"], ["--chunk_overlap 16", "--chunk_tokens 16"]),
    (["--chunking=windows", "--chunk_tokens=100", "--seq_length=64"], ["--chunk_tokens 100", "--seq_length 64"]),
    (["--chunking=late", "--pooling=mean", "--chunk_tokens=200"], ["--chunk_tokens 200", "--seq_length 128"]),
    (["--chunking=windows", "--output_sequence"], ["--output_sequence", "--chunking windows"]),
    (["--output_chunk_text"], ["--output_chunk_text", "--chunking"]),
    (["--chunk_tokens=64"], ["--chunk_tokens", "--chunking"]),
])
def test_chunking_flags_that_do_not_go_together_get_one_clear_line(extra, fragments, tmp_path, tiny_model_dir, capsys,
                                                                   one_error_line):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "the cat", "other": "a dog"}) + "\n")
    argv = [f"--input={corpus}", f"--model_dir={tiny_model_dir}", f"--output_tfrecord={tmp_path}/out", *extra]
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err.strip().splitlines(), *fragments)
    assert not os.path.exists(f"{tmp_path}/out-manifest.json")


def test_a_chunked_run_says_how_far_it_is_inside_a_batch(tmp_path, tiny_model_dir, synthetic_text, monkeypatch,
                                                         caplog):
    import logging

    from runtime import engine

    monkeypatch.setattr(engine, "PROGRESS_SECONDS", 0.0)  # Every sub-batch, instead of every 30 s.
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": " ".join(synthetic_text(i + j) for j in range(40))})
                              + "\n" for i in range(4)))
    caplog.set_level(logging.INFO)
    run_lib.run(["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--chunking=windows",
                 "--chunk_tokens=8", "--chunk_overlap=0", "--token_budget=64", f"--output_tfrecord={tmp_path}/o/e"])
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("Loading the model") for message in messages)
    progress = [message for message in messages if message.startswith("Embedding a batch of 4 documents")]
    assert progress and " chunks (" in progress[0] and "tokens/s" in progress[0], messages[-10:]
