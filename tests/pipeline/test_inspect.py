"""python -m pipeline.inspect over real runs: texts for every format, derived ids, pairs, one-line errors."""

import csv
import gzip
import json

import pytest
import tensorflow as tf

from pipeline import inspect as inspect_lib
from pipeline import options as options_lib
from pipeline import run as run_lib
from transforms import records as records_lib
from transforms.examples import serialize_example

TEXTS = {
    "a": "the cat sat on the mat .",
    "b": "Hello , World !",  # A comma, so the CSV quotes it.
    "c": "a dog ran and the cat sat",
    "d": "I read the book , it was very good .",
}
PAIRS = {
    "p1": ("the cat sat", "a dog ran"),
    "p2": ("Hello World", "the book was very good"),
    "p3": ("yes", "no"),
}


def _embed(tmp_path_factory, model_dir, name, write_corpus, *extra):
    """Writes a corpus with `write_corpus(path)` and runs the pipeline over it; returns (corpus, prefix)."""
    folder = tmp_path_factory.mktemp(name)
    corpus = write_corpus(folder)
    prefix = str(folder / "out" / "emb")
    run_lib.run(["--runner=FnApiRunner", f"--input={corpus}", f"--output_tfrecord={prefix}",
                 f"--model_dir={model_dir}", "--seq_length=16", *extra])
    return corpus, prefix


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory, tiny_model_dir):
    def write(folder):
        path = folder / "corpus.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerows([["id", "text"], *TEXTS.items()])
        return str(path)

    return _embed(tmp_path_factory, tiny_model_dir, "csv", write)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_model_dir):
    def write(folder):
        # Compressed, so the derived ids must come from decompressed lines, as the pipeline reads them.
        path = folder / "corpus.txt.gz"
        path.write_bytes(gzip.compress("\r\n".join(TEXTS.values()).encode() + b"\r\n"))
        return str(path)

    return _embed(tmp_path_factory, tiny_model_dir, "text", write)


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory, tiny_model_dir):
    def write(folder):
        path = folder / "corpus.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for record_id, (a, b) in PAIRS.items():
                writer.write(serialize_example({"id": [record_id.encode()], "a": [a.encode()], "b": [b.encode()]}))
        return str(path)

    return _embed(tmp_path_factory, tiny_model_dir, "pair", write, "--pair_fields=a,b")


def _inspect(capsys, *argv):
    capsys.readouterr()  # What the pipeline run printed.
    code = inspect_lib.main(["--samples=10", "-k=3", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_csv_corpus_shows_every_record_with_its_text(csv_run, capsys):
    corpus, prefix = csv_run
    code, out, err = _inspect(capsys, prefix, f"--corpus={corpus}")
    assert code == 0, err
    assert out.startswith(f"{len(TEXTS)} embeddings of dimension ")
    for record_id, text in TEXTS.items():
        assert f"\n{record_id}: {text}\n" in out
        assert f"  {record_id}: {text}\n" in out  # As a neighbour too.
    assert "note:" not in err


def test_plain_text_ids_derived_from_the_content_map_back_to_their_lines(text_run, capsys):
    corpus, prefix = text_run
    code, out, err = _inspect(capsys, prefix, f"--corpus={corpus}")
    assert code == 0, err
    for text in TEXTS.values():
        record_id = records_lib.derived_id(records_lib.content_hash((text,)))
        assert f"\n{record_id}: {text}\n" in out
    assert "\r" not in out


def test_pair_corpus_shows_both_texts(pair_run, capsys):
    corpus, prefix = pair_run
    code, out, err = _inspect(capsys, prefix, f"--corpus={corpus}", "--pair_fields=a,b")
    assert code == 0, err
    for record_id, (a, b) in PAIRS.items():
        assert f"\n{record_id}: {a} [SEP] {b}\n" in out
    assert "None" not in out


def test_the_format_can_be_given_when_the_extension_does_not_tell(csv_run, tmp_path, capsys):
    corpus, prefix = csv_run
    renamed = tmp_path / "corpus.data"
    renamed.write_bytes(open(corpus, "rb").read())
    code, _, err = _inspect(capsys, prefix, f"--corpus={renamed}")
    assert code == 2 and "--input_format" in err
    code, out, err = _inspect(capsys, prefix, f"--corpus={renamed}", "--input_format=csv")
    assert code == 0, err
    assert f"\na: {TEXTS['a']}\n" in out


def test_fields_the_corpus_lacks_leave_ids_bare_with_a_note(csv_run, capsys):
    corpus, prefix = csv_run
    code, out, err = _inspect(capsys, prefix, f"--corpus={corpus}", "--text_field=body")
    assert code == 0
    assert "\na\n" in out and TEXTS["a"] not in out
    assert f"{len(TEXTS)} records of --corpus could not be read (missing_field {len(TEXTS)})" in err
    assert "--text_field" in err


@pytest.mark.parametrize("argv,message", [
    (["--corpus={tmp}/missing.csv"], "--corpus"),
    (["--corpus={tmp}/corpus.xml"], "--input_format"),
    (["--corpus={tmp}/corpus.txt", "--pair_fields=a,b"], "--corpus"),
    (["--pair_fields=a"], "--pair_fields"),
    (["--input_format=xml"], "--input_format"),
    (["-k=0"], "-k"),
])
def test_user_mistakes_get_one_error_line_and_exit_2(argv, message, csv_run, tmp_path, capsys):
    (tmp_path / "corpus.xml").write_text("<a/>\n")
    (tmp_path / "corpus.txt").write_text("the cat\n")
    code, out, err = _inspect(capsys, csv_run[1], *(arg.format(tmp=tmp_path) for arg in argv))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert out == ""


def test_a_prefix_without_output_is_one_error_line(tmp_path, capsys):
    code, out, err = _inspect(capsys, str(tmp_path / "nothing" / "emb"))
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"error: No files match {tmp_path / 'nothing' / 'emb'}-*.tfrecord; pass the --output_tfrecord prefix "
        "of a run."]


def test_help_explains_every_option_with_its_default(capsys):
    assert inspect_lib.main(["--help"]) == 0
    out = capsys.readouterr().out
    for action in options_lib.option_actions(inspect_lib.parser()):
        for flag in action.option_strings:
            assert flag in out
        assert action.help, f"{action.option_strings} has no help text"
        if action.option_strings and action.dest != "help":
            assert "Default:" in action.help, f"{action.option_strings} does not name its default"


def test_a_query_ranks_the_record_it_was_taken_from_first(csv_run, tiny_model_dir, capsys):
    corpus, prefix = csv_run
    assert inspect_lib.main([prefix, "--query", TEXTS["c"], "--model_dir", tiny_model_dir, "--top", "2",
                             "--corpus", str(corpus)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    at = lines.index(f"query: {TEXTS['c']}")
    assert lines[at + 1].strip().startswith("1.000  c: a dog ran and the cat sat") and len(lines) == at + 3


def test_a_query_over_chunks_names_the_document_and_place(tmp_path_factory, tiny_model_dir, capsys, synthetic_text):
    text = " ".join(synthetic_text(i) for i in range(12))

    def write(folder):
        path = folder / "c.jsonl"
        path.write_text(json.dumps({"id": "doc", "text": text}) + "\n")
        return path

    _, prefix = _embed(tmp_path_factory, tiny_model_dir, "query_chunks", write, "--chunking=windows",
                       "--chunk_tokens=8", "--chunk_overlap=0", "--output_chunk_text")
    chunk_text = next(iter(_chunk_texts(prefix).values()))
    assert inspect_lib.main([prefix, "--query", chunk_text, "--model_dir", tiny_model_dir, "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "1.000  doc#" in out and "(document doc, characters " in out


def _chunk_texts(prefix):
    from transforms.sinks.tfrecord import load

    loaded = load(prefix)
    rows = {}
    for serialized in tf.data.TFRecordDataset(tf.io.gfile.glob(prefix + "-*.tfrecord")):
        parsed = tf.io.parse_single_example(serialized, records_lib.feature_spec(chunks=True, chunk_text=True))
        rows[parsed["id"].numpy().decode()] = parsed["chunk_text"].numpy().decode()
    assert sorted(rows) == sorted(loaded.ids)
    return rows


def test_a_query_without_the_model_is_one_line(csv_run, capsys):
    _, prefix = csv_run
    assert inspect_lib.main([prefix, "--query", "cats"]) == 2
    assert capsys.readouterr().err.strip() == "error: --query needs --model_dir, the model the run embedded with."
