"""Prompts: a checkpoint's declared prompts recorded by model.export, picked as sentence-transformers picks them,
and the vectors equal to its encode(prompt_name=...), whole texts and windows chunks alike (the real
all-MiniLM-L6-v2 weights, with prompts declared as E5 declares them)."""

import json
import shutil

import numpy as np
import pytest

from pipeline import cli
from pipeline import run as run_lib

pytestmark = pytest.mark.slow  # Exports the real all-MiniLM-L6-v2.

TEXTS = {"a": "Berlin is the capital of Germany.", "b": "How many people live in Berlin?",
         "c": "The cat sat on the mat, and the dog ran after a ball in the park. " * 6}
PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="module")
def prompted(tmp_path_factory, minilm_dir):
    """(the checkpoint with prompts declared, passage the default; its export by model.export)."""
    from model import export

    root = tmp_path_factory.mktemp("prompted")
    checkpoint = root / "checkpoint"
    shutil.copytree(minilm_dir, checkpoint)
    config = json.loads((checkpoint / "config_sentence_transformers.json").read_text())
    config.update(prompts=PROMPTS, default_prompt_name="passage")
    (checkpoint / "config_sentence_transformers.json").write_text(json.dumps(config))
    assert export.main(["--checkpoint", str(checkpoint), "--output_dir", str(root / "model")]) == 0
    return str(checkpoint), str(root / "model")


def _run(tmp_path, model_dir, name, *extra):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in TEXTS.items()))
    run_lib.run(["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={model_dir}",
                 f"--output_tfrecord={tmp_path}/{name}/emb", *extra])
    return f"{tmp_path}/{name}/emb"


def _cosines(vectors: dict, expected: dict) -> list[float]:
    return [float(np.dot(vectors[key], expected[key])) for key in expected]


def test_the_default_and_a_named_prompt_equal_sentence_transformers(prompted, tmp_path, read_embeddings, caplog):
    import logging

    from sentence_transformers import SentenceTransformer

    checkpoint, model_dir = prompted
    recorded = json.loads(open(f"{model_dir}/encoder/assets.extra/sentence_embedding.json").read())
    assert recorded["prompts"] == PROMPTS and recorded["default_prompt_name"] == "passage"
    reference = SentenceTransformer(checkpoint, device="cpu")
    caplog.set_level(logging.INFO)
    runs = {"passage": _run(tmp_path, model_dir, "default"),
            "query": _run(tmp_path, model_dir, "query", "--prompt_name=query")}
    assert any("prompt passage = 'passage: ' (model default)" in record.getMessage() for record in caplog.records)
    fingerprints = set()
    for name, prefix in runs.items():
        rows = read_embeddings(prefix)
        fingerprints |= {row["model"] for row in rows.values()}
        expected = dict(zip(TEXTS, reference.encode(list(TEXTS.values()), prompt_name=name,
                                                    normalize_embeddings=True), strict=True))
        assert min(_cosines({key: row["embedding"] for key, row in rows.items()}, expected)) >= 0.99999
    plain = read_embeddings(_run(tmp_path, model_dir, "plain", "--prompt="))
    fingerprints |= {row["model"] for row in plain.values()}
    expected = dict(zip(TEXTS, reference.encode(list(TEXTS.values()), prompt="", normalize_embeddings=True),
                        strict=True))
    assert min(_cosines({key: row["embedding"] for key, row in plain.items()}, expected)) >= 0.99999
    assert len(fingerprints) == 3  # The prompt is part of what made a vector: another prompt re-embeds.


def test_windows_chunks_carry_the_prompt_before_every_chunk(prompted, tmp_path, read_embeddings):
    from sentence_transformers import SentenceTransformer

    checkpoint, model_dir = prompted
    rows = read_embeddings(_run(tmp_path, model_dir, "chunks", "--chunking=windows", "--chunk_tokens=16",
                                "--prompt_name=query"), chunks=True)
    reference = SentenceTransformer(checkpoint, device="cpu")
    chunks = {key: TEXTS[row["doc_id"]][row["char_start"]:row["char_end"]] for key, row in rows.items()}
    assert len(chunks) > len(TEXTS)
    expected = dict(zip(chunks, reference.encode(list(chunks.values()), prompt_name="query",
                                                 normalize_embeddings=True), strict=True))
    assert min(_cosines({key: row["embedding"] for key, row in rows.items()}, expected)) >= 0.99999


@pytest.mark.parametrize("extra,message", [
    (["--prompt_name=title"], "--prompt_name title: the model declares no such prompt (its prompts: passage, query)"),
    (["--prompt=x", "--prompt_name=query"], "--prompt and --prompt_name both name the prompt"),
    (["--chunking=late"], "--chunking late pools each chunk"),
    (["--chunking=windows", "--prompt=Represent this"], "ends in a space or punctuation"),
])
def test_prompt_mistakes_are_one_line(extra, message, prompted, tmp_path, capsys, one_error_line):
    _, model_dir = prompted
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "x"}\n')
    argv = ["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={model_dir}", f"--output_tfrecord={tmp_path}/o",
            *extra]
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err.strip().splitlines(), message)
