"""End to end on the local runner: every format, single texts and pairs, pooling modes, dead letters."""

import csv
import glob
import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  Registers the preprocessor's ops.

from pipeline import cli
from pipeline import options as options_lib
from pipeline import run as run_lib
from transforms import records as records_lib

TEXTS = {
    "a": "the cat sat on the mat .",
    "b": "Hello World !",
    "c": "a dog ran and the cat sat",
    "d": "I read the book , it was very good .",
    # Longer than the --seq_length used below: truncated and counted, not failed.
    "long": " ".join(["the cat sat on the mat"] * 12),
}
PAIRS = {
    "p1": ("the cat sat", "a dog ran"),
    "p2": ("Hello World", "the book was very good and the movie was bad"),
    "p3": ("yes", "no"),
}


def _read_failures(prefix):
    lines = []
    for path in sorted(glob.glob(prefix + "-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            lines += [json.loads(line) for line in f if line.strip()]
    return lines


class Reference:
    """The exported preprocessor + encoder called directly, padding every input to 128 tokens."""

    def __init__(self, model_dir):
        self.preprocessor = tf.saved_model.load(model_dir + "/preprocessor")
        self.encoder = tf.saved_model.load(model_dir + "/encoder")

    def embed(self, texts, pooling, normalize, seq_length=128):
        segments = [self.preprocessor.tokenize(tf.constant(list(column))) for column in zip(*texts, strict=True)]
        inputs = self.preprocessor.bert_pack_inputs(segments, seq_length=seq_length)
        outputs = self.encoder(inputs)
        if pooling == "pooled":
            vectors = outputs["pooled_output"].numpy()
        elif pooling == "cls":
            vectors = outputs["sequence_output"][:, 0].numpy()
        else:
            mask = inputs["input_mask"].numpy()[:, :, None].astype(np.float32)
            vectors = (outputs["sequence_output"].numpy() * mask).sum(1) / mask.sum(1)
        if normalize:
            vectors = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
        return vectors, inputs["input_mask"].numpy().sum(1), outputs["sequence_output"].numpy()


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return Reference(tiny_model_dir)


def _run(tmp_path, input_pattern, *extra):
    prefix = str(tmp_path / "out" / "emb")
    argv = ["--runner=FnApiRunner", f"--input={input_pattern}", f"--output_tfrecord={prefix}", *extra]
    run_lib.run(argv)
    return prefix


def _write_corpus(tmp_path, input_format, records):
    """records: {id: texts}. Writes one file per format; pair records get fields a and b."""
    path = tmp_path / f"corpus.{input_format}"
    pair = len(next(iter(records.values()))) == 2
    fields = ["a", "b"] if pair else ["text"]
    if input_format == "text":
        path.write_text("\n".join(texts[0] for texts in records.values()) + "\n")
    elif input_format == "jsonl":
        path.write_text("\n".join(json.dumps({"id": i, **dict(zip(fields, t, strict=True))})
                                  for i, t in records.items()) + "\n")
    elif input_format in ("csv", "tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="," if input_format == "csv" else "\t", lineterminator="\n")
            writer.writerows([["id", *fields]] + [[i, *t] for i, t in records.items()])
    else:
        with tf.io.TFRecordWriter(str(path)) as writer:
            for record_id, texts in records.items():
                feature = {"id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[record_id.encode()]))}
                for field, text in zip(fields, texts, strict=True):
                    feature[field] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return str(path)


def _ids(input_format, records):
    """Ids in record order: as given, or derived from the content for plain text."""
    if input_format == "text":
        return [records_lib.derived_id(records_lib.content_hash(texts)) for texts in records.values()]
    return list(records)


@pytest.mark.parametrize("input_format", ["text", "jsonl", "csv", "tsv", "tfrecord"])
def test_every_format_embeds_every_record_like_the_models_called_directly(
        input_format, tmp_path, tiny_model_dir, reference, read_embeddings):
    records = {i: (t,) for i, t in TEXTS.items()}
    corpus = _write_corpus(tmp_path, input_format, records)
    prefix = _run(tmp_path, corpus, f"--model_dir={tiny_model_dir}", "--seq_length=32", "--batch_size=3",
                  "--token_budget=40")
    rows = read_embeddings(prefix)
    ids = _ids(input_format, records)
    assert sorted(rows) == sorted(ids)
    assert _read_failures(prefix + "-failed") == []
    texts = list(records.values())
    expected, _, _ = reference.embed(texts, "pooled", False, seq_length=32)
    for record_id, record_texts, vector in zip(ids, texts, expected, strict=True):
        np.testing.assert_allclose(rows[record_id]["embedding"], vector, atol=1e-5, rtol=0)
        assert rows[record_id]["content_hash"] == records_lib.content_hash(record_texts)
        assert len(rows[record_id]["model"]) == 16


@pytest.mark.parametrize("pooling,normalize", [("pooled", False), ("cls", False), ("mean", False), ("mean", True)])
def test_pooling_modes_match_direct_model_calls(pooling, normalize, tmp_path, tiny_model_dir, reference,
                                                read_embeddings):
    records = {i: (t,) for i, t in TEXTS.items()}
    corpus = _write_corpus(tmp_path, "jsonl", records)
    extra = [f"--pooling={pooling}"] + (["--normalize"] if normalize else [])
    prefix = _run(tmp_path, corpus, f"--model_dir={tiny_model_dir}", "--batch_size=2", *extra)
    rows = read_embeddings(prefix)
    expected, _, _ = reference.embed(list(records.values()), pooling, normalize)
    for record_id, vector in zip(records, expected, strict=True):
        np.testing.assert_allclose(rows[record_id]["embedding"], vector, atol=1e-5, rtol=0)
    if normalize:
        norms = np.linalg.norm(np.stack([row["embedding"] for row in rows.values()]), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)


@pytest.mark.parametrize("input_format", ["jsonl", "csv", "tfrecord"])
def test_pairs_are_packed_as_one_input(input_format, tmp_path, tiny_model_dir, reference, read_embeddings):
    corpus = _write_corpus(tmp_path, input_format, PAIRS)
    prefix = _run(tmp_path, corpus, f"--model_dir={tiny_model_dir}", "--pair_fields=a,b", "--seq_length=12",
                  "--output_sequence")
    rows = read_embeddings(prefix, with_sequence=True)
    expected, lengths, sequences = reference.embed(list(PAIRS.values()), "pooled", False, seq_length=12)
    for i, record_id in enumerate(PAIRS):
        np.testing.assert_allclose(rows[record_id]["embedding"], expected[i], atol=1e-5, rtol=0)
        assert rows[record_id]["sequence_length"] == lengths[i]
        hidden = expected.shape[1]
        np.testing.assert_allclose(rows[record_id]["sequence"].reshape(-1, hidden), sequences[i, :lengths[i]],
                                   atol=1e-5, rtol=0)


def test_multiprocess_direct_runner_gives_the_same_embeddings(tmp_path, tiny_model_dir, read_embeddings):
    records = {i: (t,) for i, t in TEXTS.items()}
    corpus = _write_corpus(tmp_path, "jsonl", records)
    single = read_embeddings(_run(tmp_path / "one", corpus, f"--model_dir={tiny_model_dir}"))
    prefix = str(tmp_path / "multi" / "emb")
    run_lib.run(["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing",
                 f"--input={corpus}", f"--output_tfrecord={prefix}", f"--model_dir={tiny_model_dir}"])
    multi = read_embeddings(prefix)
    assert set(multi) == set(single)
    for record_id in single:
        np.testing.assert_allclose(multi[record_id]["embedding"], single[record_id]["embedding"], atol=1e-6)


def test_malformed_records_go_to_the_dead_letter_output_and_good_ones_still_come_out(tmp_path, tiny_model_dir,
                                                                                      read_embeddings):
    corpus = tmp_path / "corpus.jsonl"
    lines = [
        json.dumps({"id": "good1", "text": "the cat sat"}),
        "{not json",
        json.dumps({"id": "nofield"}),
        json.dumps({"id": "empty", "text": "   "}),
        json.dumps({"id": "number", "text": 42}),
        json.dumps(["a", "list"]),
        json.dumps({"id": "good2", "text": "a dog ran"}),
    ]
    corpus.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "bad-utf8", "text": "\xff\xfe"}\n')
    prefix = _run(tmp_path, str(corpus), f"--model_dir={tiny_model_dir}", "--max_failed_fraction=1")
    assert set(read_embeddings(prefix)) == {"good1", "good2"}
    failures = _read_failures(prefix + "-failed")
    reasons = sorted(failure["reason"] for failure in failures)
    assert reasons == sorted(["invalid_json", "missing_field", "empty_text", "not_a_string", "invalid_json",
                              "undecodable_bytes"])
    assert all(failure["source"].endswith("corpus.jsonl") and failure["record"] for failure in failures)


def test_counters_add_up_and_summary_names_outputs(tmp_path, tiny_model_dir, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat\n\nHello World\n" + " ".join(["the cat"] * 40) + "\n")
    prefix = str(tmp_path / "out" / "emb")
    options, plan = run_lib.prepare(["--runner=FnApiRunner", f"--input={corpus}", f"--output_tfrecord={prefix}",
                                     f"--model_dir={tiny_model_dir}", "--seq_length=16", "--max_failed_fraction=0.5"])
    counters = run_lib.counters(run_lib.launch(options, plan))
    assert counters["records_read"] == 3 and counters["embedded"] == 3
    assert counters["failed_empty_text"] == 1 and counters["truncated"] == 1
    assert counters["tokens_embedded"] == 5 + 4 + 16  # [CLS] x [SEP] per text, the long one cut at 16.
    out = run_lib.summarize(counters, plan)
    assert "embedded 3" in out and "empty_text 1" in out and prefix in out


@pytest.mark.parametrize("argv,message", [
    (["--input=MISSING/*.jsonl"], "MISSING/*.jsonl"),
    (["--input_format=text", "--pair_fields=a,b"], "--pair_fields"),
    (["--pair_fields=onlyone"], "--pair_fields"),
    (["--encoder=/nonexistent/encoder", "--preprocessor=/nonexistent/preprocessor"], "--encoder"),
    (["--seq_length=1000"], "--seq_length"),
    (["--seq_length=200"], "--seq_length 200 exceeds the longest input the model takes (128 tokens"),
])
def test_user_mistakes_get_one_clear_line(argv, message, tmp_path, tiny_model_dir, capsys, one_error_line):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "x", "text": "the cat"}) + "\n")
    base = {"--input": str(corpus), "--model_dir": tiny_model_dir, "--output_tfrecord": str(tmp_path / "o")}
    for arg in argv:
        base.pop(arg.split("=")[0], None)
        if arg.startswith(("--encoder", "--preprocessor")):
            base.pop("--model_dir", None)
    full = [f"{k}={v}" for k, v in base.items()] + argv + ["--runner=FnApiRunner"]
    assert cli.main(full) == 2
    one_error_line(capsys.readouterr().err.strip().splitlines(), message)


def test_unknown_format_is_refused_by_the_option_parser(tmp_path, capsys):
    assert cli.main([f"--input={tmp_path}/c.xml", "--input_format=xml", f"--output_tfrecord={tmp_path}/o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--input_format" in err[0] and "invalid choice: 'xml'" in err[0]


def test_mismatched_vocabularies_are_refused_before_the_pipeline_starts(tmp_path, tiny_model_dir, capsys):
    from model import config as config_lib
    from model.encoder import Encoder
    from model.export_lib import export_encoder

    other_vocab = tmp_path / "vocab.txt"
    other_vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(95)]) + "\n")
    export_encoder(str(tmp_path / "enc"), encoder=Encoder(config_lib.preset("distilbert_tiny"), seed=1),
                   vocab_file=str(other_vocab))
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat\n")
    code = cli.main([f"--input={corpus}", f"--output_tfrecord={tmp_path / 'o'}", f"--encoder={tmp_path / 'enc'}",
                         f"--preprocessor={tiny_model_dir}/preprocessor", "--runner=FnApiRunner"])
    assert code == 2
    assert "different vocabularies" in capsys.readouterr().err


def test_help_states_each_option_and_its_true_default(capsys):
    """--help names every option with a sentence of help and states its real default, also where the default is
    resolved later (the model URLs)."""
    assert cli.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for action in options_lib.option_actions():
        flag = action.option_strings[0]
        help_text = " ".join((action.help or "").split())
        assert len(help_text.split()) >= 4, f"{flag} has no real help text"
        assert " ".join(help_text.split()[:3]) in out, flag  # argparse rewraps (even at hyphens): the start.
        if action.default not in (None, False):
            assert f"Default: {action.default}" in help_text or f"{help_text} Default: {action.default}." in out, flag
        resolved_later = {"--encoder": options_lib.DEFAULT_ENCODER, "--preprocessor": options_lib.DEFAULT_PREPROCESSOR}
        assert resolved_later.get(flag, "") in help_text, flag




@pytest.mark.parametrize("chunking", ["none", "windows"])
def test_a_text_that_tokenizes_to_unk_only_is_embedded_and_counted_in_the_summary(chunking, tmp_path, tiny_model_dir,
                                                                                   capsys):
    corpus = tmp_path / "c.jsonl"
    texts = {"long-word": "x" * 20_000, "spaced": "the cat sat " + "y" * 150, "plain": "the cat sat on the mat"}
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in texts.items()))
    argv = ["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--seq_length=16",
            f"--output_tfrecord={tmp_path}/out/emb", f"--chunking={chunking}"]
    argv += ["--chunk_tokens=8"] if chunking != "none" else []
    assert cli.main(argv) == 0
    summary = capsys.readouterr().out
    what = "documents" if chunking == "windows" else "records"
    assert f"Warning: 1 {what} tokenized to [UNK] only" in summary, summary
