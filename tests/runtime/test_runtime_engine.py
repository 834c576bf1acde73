"""runtime's public face: load builds a warmed-up Embedder whose results cross process boundaries."""

import pickle

import numpy as np
import pytest

import runtime


def test_settings_are_checked_before_anything_loads():
    with pytest.raises(ValueError, match="pooling must be one of"):
        runtime.check_settings(pooling="max")
    with pytest.raises(ValueError, match="precision must be one of"):
        runtime.load("/nowhere/encoder", "/nowhere/preprocessor", precision="fp16")


def test_load_embeds_pairs_and_reports_what_the_encoder_computed(tiny_model_dir):
    embedder = runtime.load(tiny_model_dir + "/encoder", tiny_model_dir + "/preprocessor", pooling="mean",
                            with_sequence=True, token_budget=8)
    assert isinstance(embedder.encoder, runtime.EncoderCall) and "cls" not in embedder.encoder.form
    assert embedder.encode.experimental_get_tracing_count() == 1  # Warmed up: traced once, in load.
    texts = [("the cat sat", "a dog ran"), ("hello", "world"), ("the " * 200, "mat")]
    embedded = embedder.embed(texts)
    assert [e.tokens for e in embedded.embeddings] == [9, 5, 128]
    assert [e.truncated for e in embedded.embeddings] == [False, False, True]
    # The budget is raised to seq_length (128): the long row goes alone, the two short ones together.
    assert embedded.tokens_computed == 128 + 2 * 9
    # Plain data: what Beam's MultiProcessShared proxy sends back from the process holding the model.
    again = pickle.loads(pickle.dumps(embedded))
    assert again.tokens_computed == embedded.tokens_computed
    for got, want in zip(again.embeddings, embedded.embeddings, strict=True):
        np.testing.assert_array_equal(got.vector, want.vector)
        np.testing.assert_array_equal(got.sequence, want.sequence)
        assert got.sequence.shape == (want.tokens, got.vector.shape[0])
