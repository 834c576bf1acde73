"""model.export_lib: the encoder's extra functions, BERT's pooler, and the module rebuilt by load_encoder."""

import json

import numpy as np
import pytest
import tensorflow as tf

from model import config as config_lib
from model.encoder import Encoder
from model.export_lib import export_encoder, load_encoder, read_config


def _inputs(ids, lengths):
    ids = tf.constant(ids, tf.int32)
    mask = tf.sequence_mask(lengths, ids.shape[1], dtype=tf.int32)
    return {"input_word_ids": ids * mask, "input_mask": mask}


def test_export_encoder_in_memory_bert_family_has_a_pooler(tmp_path):
    encoder = Encoder(config_lib.preset("bert_tiny"), seed=3)
    export_encoder(str(tmp_path / "bert"), encoder=encoder)
    loaded = tf.saved_model.load(str(tmp_path / "bert"))
    inputs = dict(_inputs([[2, 5, 6, 3]], [4]), input_type_ids=tf.constant([[0, 0, 1, 1]], tf.int32))
    out = loaded(inputs)
    assert not np.allclose(out["pooled_output"], out["sequence_output"][:, 0])
    np.testing.assert_allclose(out["pooled_output"], encoder(inputs)["pooled_output"], atol=1e-6)


@pytest.mark.parametrize("preset", ["distilbert_tiny", "bert_tiny"])
def test_load_encoder_rebuilds_the_exported_module(preset, tmp_path):
    encoder = Encoder(config_lib.preset(preset), seed=11)
    export_encoder(str(tmp_path / "encoder"), encoder=encoder)
    rebuilt = load_encoder(str(tmp_path / "encoder"))
    assert rebuilt.config == encoder.config
    inputs = dict(_inputs([[2, 5, 6, 3, 0], [2, 9, 3, 0, 0]], [4, 3]),
                  input_type_ids=tf.constant([[0, 0, 1, 1, 0], [0, 0, 0, 0, 0]], tf.int32))
    for name, value in encoder(inputs).items():
        np.testing.assert_array_equal(rebuilt(inputs)[name], value)


def test_load_encoder_draws_no_random_weights(tmp_path, monkeypatch):
    """The rebuilt module starts at zeros and reads its weights: drawing a full-size model's random ones first
    took seconds of every bf16 load."""
    encoder = Encoder(config_lib.preset("distilbert_tiny"), seed=4)
    export_encoder(str(tmp_path / "encoder"), encoder=encoder)

    def no_draws(*args, **kwargs):
        raise AssertionError("a random weight was drawn")

    monkeypatch.setattr(tf.random.Generator, "normal", no_draws)
    rebuilt = load_encoder(str(tmp_path / "encoder"), compute_dtype=tf.bfloat16)
    for mine, theirs in zip(rebuilt.trainable_variables, encoder.trainable_variables, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_read_config_reads_get_config_without_loading_and_rebuilds_the_same_module(tmp_path):
    encoder = Encoder(config_lib.preset("bert_tiny"), seed=11)
    export_encoder(str(tmp_path / "encoder"), encoder=encoder)
    config = read_config(str(tmp_path / "encoder"))
    assert config == encoder.config == config_lib.EncoderConfig(
        **json.loads(tf.saved_model.load(str(tmp_path / "encoder")).get_config().numpy()))
    rebuilt = load_encoder(str(tmp_path / "encoder"), config=config)
    inputs = _inputs([[2, 5, 6, 3, 0], [2, 9, 3, 0, 0]], [4, 3])
    np.testing.assert_array_equal(rebuilt(inputs)["pooled_output"], encoder(inputs)["pooled_output"])
    other = tf.Module()
    other.variable = tf.Variable(1.0)
    tf.saved_model.save(other, str(tmp_path / "other"))
    assert read_config(str(tmp_path / "other")) is None


def test_the_exported_encoder_has_the_functions_of_the_contract(tmp_path):
    export_encoder(str(tmp_path / "encoder"), encoder=Encoder(config_lib.preset("distilbert_tiny"), seed=2))
    loaded = tf.saved_model.load(str(tmp_path / "encoder"))
    for name in ("__call__", "onednn_call", "cls_call", "onednn_cls_call", "get_config"):
        assert callable(getattr(loaded, name)), name
    assert set(loaded.signatures) == {"serving_default"}
    # --precision bf16 rebuilds the module (load_encoder); a bfloat16 form in the SavedModel would go unused.
    assert not hasattr(loaded, "bfloat16_call")
    assert len(loaded.trainable_variables) == len(loaded.variables) and not loaded.regularization_losses


def _graph_ops(function) -> set[str]:
    """Op types in a restored tf.function's graphs, the functions it calls included."""
    ops = set()
    for concrete in function.concrete_functions:
        graph = concrete.graph.as_graph_def()
        ops |= {node.op for node in graph.node}
        ops |= {node.op for library_function in graph.library.function for node in library_function.node_def}
    return ops


@pytest.mark.parametrize("preset", ["distilbert_tiny", "bert_tiny"])
def test_onednn_call_computes_what_call_does(preset, tmp_path):
    """onednn_call (the pipeline's fp32 path on oneDNN CPUs) holds the fused LayerNorms; __call__ stays portable."""
    encoder = Encoder(config_lib.preset(preset), seed=13)
    export_encoder(str(tmp_path / "encoder"), encoder=encoder)
    assert not any(norm.fused for norm in encoder.layer_norms()) and len(encoder.layer_norms()) == 5
    loaded = tf.saved_model.load(str(tmp_path / "encoder"))
    assert "FusedBatchNormV3" in _graph_ops(loaded.onednn_call)
    assert "FusedBatchNormV3" not in _graph_ops(loaded.__call__)
    rng = np.random.RandomState(1)
    inputs = _inputs(rng.randint(5, 99, (5, 24)), [24, 17, 9, 2, 24])
    expected, got = loaded(inputs), loaded.onednn_call(inputs)
    for name in ("pooled_output", "sequence_output"):
        np.testing.assert_allclose(got[name], expected[name], atol=2e-5, rtol=0)


def test_load_encoder_refuses_a_saved_model_it_did_not_write(tmp_path):
    module = tf.Module()
    module.variable = tf.Variable(1.0)
    tf.saved_model.save(module, str(tmp_path / "other"))
    with pytest.raises(ValueError, match="not exported by model.export"):
        load_encoder(str(tmp_path / "other"))


@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("preset", ["distilbert_tiny", "bert_tiny"])
def test_frozen_bfloat16_weights_compute_what_bfloat16_matmuls_do(preset, onednn, tmp_path):
    """The rebuilt module with its matmul weights frozen as bfloat16 constants (and, with onednn, bfloat16
    LayerNorm and softmax) is --precision bf16's fast path: it must agree with the rebuilt module computing in
    bfloat16 from its float32 variables (both round the same matmuls to bfloat16) and stay close to float32."""
    export_encoder(str(tmp_path / "encoder"), encoder=Encoder(config_lib.preset(preset), seed=12))
    loaded = tf.saved_model.load(str(tmp_path / "encoder"))
    unfrozen = load_encoder(str(tmp_path / "encoder"), compute_dtype=tf.bfloat16)
    rebuilt = load_encoder(str(tmp_path / "encoder"), compute_dtype=tf.bfloat16)
    rebuilt.use_onednn_kernels(onednn)
    rebuilt.freeze_matmul_weights()
    kernels = [layer.kernel for block in rebuilt.layer for layer in block.dense_layers()]
    assert {str(kernel.dtype) for kernel in kernels} == {"bfloat16"}
    # The kernels are constants in the traced graph: the only kernel it still reads from a variable is BERT's
    # pooler (float32).
    traced = tf.function(rebuilt).get_concrete_function(
        {name: tf.TensorSpec([None, None], tf.int32) for name in ("input_word_ids", "input_mask")})
    read_kernels = [v.name for v in traced.variables if "kernel" in v.name]
    assert len(read_kernels) == (1 if preset == "bert_tiny" else 0), read_kernels
    rng = np.random.RandomState(0)
    inputs = _inputs(rng.randint(5, 99, (6, 40)), [40, 31, 17, 9, 3, 40])
    fast, from_variables, fp32 = (fn(inputs)["sequence_output"].numpy().reshape(-1, 32)
                                  for fn in (rebuilt, unfrozen, loaded))

    def cosines(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    assert cosines(fast, from_variables).min() >= 0.9999
    assert cosines(fast, fp32).min() >= 0.999
    assert not np.array_equal(fast, fp32)


@pytest.mark.parametrize("preset", ["distilbert_tiny", "bert_tiny"])
def test_cls_forms_compute_the_cls_vectors_of_call_and_skip_the_rest_of_the_last_block(preset, tmp_path):
    """cls_call and onednn_cls_call (the pipeline's path for --pooling pooled and cls) return what __call__
    does for [CLS], with padding in the batch; the last block computes one row per text after its k and v."""
    encoder = Encoder(config_lib.preset(preset), seed=14)
    export_encoder(str(tmp_path / "encoder"), encoder=encoder)
    loaded = tf.saved_model.load(str(tmp_path / "encoder"))
    rng = np.random.RandomState(2)
    inputs = _inputs(rng.randint(5, 99, (5, 24)), [24, 17, 9, 2, 24])
    expected = loaded(inputs)
    for function in (encoder.cls_outputs, loaded.cls_call, loaded.onednn_cls_call):
        got = function(inputs)
        assert set(got) == {"pooled_output", "cls_output"}
        np.testing.assert_allclose(got["pooled_output"], expected["pooled_output"], atol=2e-5, rtol=0)
        np.testing.assert_allclose(got["cls_output"], expected["sequence_output"][:, 0], atol=2e-5, rtol=0)
    spec = {name: tf.TensorSpec([5, 24], tf.int32) for name in ("input_word_ids", "input_mask")}
    graph = tf.function(encoder.cls_outputs).get_concrete_function(spec).graph
    rows = [op.outputs[0].shape[0] for op in graph.get_operations() if op.type == "MatMul"]
    # Per block q, k, v, out_lin, lin1, lin2 (+ BERT's pooler): the last block's q, out_lin, lin1 and lin2 take
    # the 5 [CLS] rows, not all 5 x 24 tokens.
    layers = encoder.config.num_layers
    assert rows.count(5) == 4 + (preset == "bert_tiny") and rows.count(5 * 24) == 6 * layers - 4
