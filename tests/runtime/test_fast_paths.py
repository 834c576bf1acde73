"""The fast paths give the embeddings of the plain path: sub-batch planning, padding widths, bf16, warm-up."""

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

import runtime
from transforms import embed

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "hello", "world", "good", "bad", "movie", "is",
         "very", "unbelievable", "playing", "read", "book", "and", "or", "not", "to", "of"]


def _texts(n, seed=0):
    """n texts of 1 to 40 words, lengths spread like real text (mostly short, a few long)."""
    rng = np.random.RandomState(seed)
    lengths = np.clip(np.rint(np.exp(rng.normal(np.log(6), 0.9, n))), 1, 40).astype(int)
    return [" ".join(rng.choice(WORDS, size=length)) for length in lengths]


def _handler(model_dir, **kwargs):
    return embed.EmbeddingModelHandler(model_dir + "/encoder", model_dir + "/preprocessor", **kwargs)


@pytest.fixture(autouse=True)
def _fp32_afterwards():
    """bf16 is a process-wide TensorFlow switch: leave it off for the tests that follow."""
    yield
    tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": False})


@pytest.mark.parametrize("budget,overhead", [(64, 0), (64, 16), (200, 64), (10_000, 64), (3, 0)])
def test_plan_covers_every_row_once_within_the_budget(budget, overhead):
    lengths = np.random.RandomState(1).randint(2, 60, size=97)
    plan = runtime.plan_sub_batches(lengths, budget, overhead)
    assert sorted(np.concatenate(plan).tolist()) == list(range(len(lengths)))
    for rows in plan:
        assert len(rows) == 1 or len(rows) * lengths[rows].max() <= budget
    widths = [lengths[rows].max() for rows in plan]
    assert widths == sorted(widths)
    again = runtime.plan_sub_batches(lengths, budget, overhead)
    assert all(np.array_equal(a, b) for a, b in zip(plan, again, strict=True))


def test_plan_without_call_overhead_pads_nothing_and_with_it_pads_little():
    lengths = np.random.RandomState(2).randint(2, 128, size=512)
    exact = runtime.plan_sub_batches(lengths, 4096, call_overhead=0)
    assert sum(len(rows) * lengths[rows].max() for rows in exact) == lengths.sum()
    plan = runtime.plan_sub_batches(lengths, 4096)
    computed = sum(len(rows) * lengths[rows].max() for rows in plan)
    assert lengths.sum() / computed > 0.9
    assert len(plan) < len(exact)


@pytest.fixture(scope="module")
def embedder(tiny_model_dir):
    return _handler(tiny_model_dir, pooling="mean", with_sequence=True, token_budget=40).load_model()


@pytest.fixture(scope="module")
def one_at_a_time(embedder):
    texts = _texts(23) + ["", "the " * 200]  # Empty and truncated rows too.
    return texts, [embedder.embed([(text,)]).embeddings[0] for text in texts]


def test_sub_batched_embeddings_equal_one_at_a_time(embedder, one_at_a_time):
    texts, singles = one_at_a_time
    order = np.random.RandomState(3).permutation(len(texts))
    embedded = embedder.embed([(texts[i],) for i in order])
    batched = embedded.embeddings
    assert len(runtime.plan_sub_batches([e.tokens for e in batched], 40)) > 3  # Really cut into sub-batches.
    # What the encoder computed: each row padded to its sub-batch's longest (the budget is at least seq_length).
    lengths = np.array([e.tokens for e in batched])
    assert embedded.tokens_computed == sum(len(rows) * lengths[rows].max()
                                           for rows in runtime.plan_sub_batches(lengths, 128))
    for got, i in zip(batched, order, strict=True):
        want = singles[i]
        np.testing.assert_allclose(got.vector, want.vector, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got.sequence, want.sequence, atol=1e-5, rtol=0)
        assert (got.tokens, got.truncated) == (want.tokens, want.truncated)


def test_wider_padding_does_not_change_embeddings(embedder):
    """What per-sub-batch padding (or padding to any bucketed width) relies on: padding columns change nothing."""
    word_ids, mask, type_ids, _ = (t.numpy() for t in embedder.pack(tf.constant(_texts(6, seed=4))))
    width = int(mask.sum(axis=1).max())
    narrow, _ = embedder.encode(word_ids[:, :width], mask[:, :width], type_ids[:, :width])
    for wider in (width + 1, width + 8, 128):
        padded, _ = embedder.encode(word_ids[:, :wider], mask[:, :wider], type_ids[:, :wider])
        np.testing.assert_allclose(padded.numpy(), narrow.numpy(), atol=1e-5, rtol=0)


def test_new_shapes_after_warm_up_do_not_retrace(embedder):
    traces = embedder.encode.experimental_get_tracing_count()
    assert traces == 1  # load_model's warm-up traced it once.
    for n in (1, 5, 17):
        embedder.embed([(text,) for text in _texts(n, seed=n)])
    assert embedder.encode.experimental_get_tracing_count() == traces


def test_tracing_converts_no_code_with_autograph(tiny_model_dir, monkeypatch):
    """The Embedder's functions and the encoder module have no tensor-dependent Python control flow: tracing
    them without autograph's source conversion halved the bf16 encoder's trace (BENCHMARKS.md)."""
    from tensorflow.python.autograph.impl import api

    embedder = runtime.load(tiny_model_dir + "/encoder", tiny_model_dir + "/preprocessor", pooling="mean",
                            precision="bf16", pairs=False)

    def converted_call(*args, **kwargs):
        raise AssertionError("autograph converted code")

    monkeypatch.setattr(api, "converted_call", converted_call)
    for token_vectors in (False, True):
        embedder.trace_encoder(token_vectors=token_vectors)
    embedder.pack(["a new trace"], ["of pairs"])
    list(embedder._tokenize_call(["split words"]))  # noqa: SLF001


def test_functions_run_without_needless_graph_passes_in_every_thread(embedder):
    """On a CPU grappler's memory and layout passes and its two TFG pipelines only cost start-up (most of the
    bf16 encoder's first call, BENCHMARKS.md). Beam
    runs bundles in threads of its own, started after the load: they must call functions with the same config,
    or each would optimise the encoder afresh. Where a GPU is visible TensorFlow's defaults stay."""
    import threading

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the passes stay on where a GPU is visible")

    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context

    def rewrites_of_this_thread():
        serialized = context.context().function_call_options.config_proto_serialized
        return config_pb2.ConfigProto.FromString(serialized).graph_options.rewrite_options

    in_new_thread = []
    thread = threading.Thread(target=lambda: in_new_thread.append(rewrites_of_this_thread()))
    thread.start()
    thread.join()
    for rewrites in (rewrites_of_this_thread(), in_new_thread[0]):
        assert rewrites.memory_optimization == rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
        assert rewrites.layout_optimizer == rewriter_config_pb2.RewriterConfig.OFF
        assert rewrites.disable_tfg_optimizer
        assert rewrites.experimental_conditional_code_motion == rewriter_config_pb2.RewriterConfig.OFF


@pytest.fixture(scope="module")
def foreign_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny encoder saved without model.export's get_config and extra functions, like any other TF Hub-style
    encoder."""
    from model import config as config_lib
    from model.encoder import Encoder

    encoder = Encoder(config_lib.preset("distilbert_tiny"), seed=7)
    spec = {name: tf.TensorSpec([None, None], tf.int32, name=name) for name in ("input_word_ids", "input_mask")}
    root = tf.train.Checkpoint(encoder=encoder)
    root.__call__ = tf.function(lambda inputs: encoder(inputs), input_signature=[spec])
    out = tmp_path_factory.mktemp("foreign")
    tf.saved_model.save(root, str(out / "encoder"))
    (out / "preprocessor").symlink_to(tiny_model_dir + "/preprocessor")
    return str(out)


@pytest.mark.parametrize("which", ["exported", "foreign"])
def test_bf16_is_close_to_fp32(which, tiny_model_dir, foreign_model_dir):
    """exported: model.export's encoder rebuilt in bfloat16; foreign: grappler's automatic mixed precision."""
    model_dir = tiny_model_dir if which == "exported" else foreign_model_dir
    assert hasattr(tf.saved_model.load(model_dir + "/encoder"), "get_config") == (which == "exported")
    texts = [(text,) for text in _texts(40, seed=5)]
    fp32 = np.stack([e.vector for e in _handler(model_dir).load_model().embed(texts).embeddings])
    bf16_model = _handler(model_dir, precision="bf16").load_model()
    # model.export's encoders run rebuilt (model.export_lib.load_encoder), others as loaded.
    assert type(bf16_model.encoder.owner).__name__ == ("Encoder" if which == "exported" else "_UserObject")
    bf16 = np.stack([e.vector for e in bf16_model.embed(texts).embeddings])
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() >= 0.999, cosine.min()
    assert not np.array_equal(fp32, bf16)  # The bf16 path really ran.
    # Loading an fp32 model switches the process back.
    again = np.stack([e.vector for e in _handler(model_dir).load_model().embed(texts).embeddings])
    np.testing.assert_allclose(again, fp32, atol=1e-6, rtol=0)


@pytest.mark.parametrize("options,cls_only", [({}, True), ({"pooling": "cls", "normalize": True}, True),
                                              ({"pooling": "mean"}, False), ({"with_sequence": True}, False)])
def test_the_encoder_runs_the_fastest_form_for_the_outputs_wanted(options, cls_only, tiny_model_dir,
                                                                  foreign_model_dir):
    """model.export's encoder runs rebuilt from its variables in either precision, without loading its
    SavedModel's functions: its cls_outputs when only [CLS] vectors are wanted; a SavedModel without get_config:
    its __call__."""
    exported = _handler(tiny_model_dir, **options).load_model().encoder
    assert (exported.form, type(exported.owner).__name__) == ("cls_outputs" if cls_only else "__call__", "Encoder")
    foreign = _handler(foreign_model_dir, **options).load_model().encoder
    assert (foreign.form, type(foreign.owner).__name__) == ("__call__", "_UserObject")
    bf16 = _handler(tiny_model_dir, precision="bf16", **options).load_model().encoder
    assert bf16.form == exported.form
    onednn = runtime.onednn_runs_on_cpu()
    for module in (exported.owner, bf16.owner):
        assert {norm.fused for norm in module.layer_norms()} == {onednn}
        assert {block.attention.softmax_in_compute_dtype for block in module.layer} == {onednn}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("pooling", ["pooled", "cls"])
def test_cls_only_form_gives_the_vectors_of_the_whole_encoder(pooling, precision, tiny_model_dir):
    """With token vectors asked for, the whole encoder runs; without, the [CLS]-only form: same vectors."""
    texts = [(text,) for text in _texts(40, seed=9)]
    fast = _handler(tiny_model_dir, pooling=pooling, precision=precision).load_model()
    whole = _handler(tiny_model_dir, pooling=pooling, precision=precision, with_sequence=True).load_model()
    assert "cls" in fast.encoder.form and "cls" not in whole.encoder.form
    got, expected = (np.stack([e.vector for e in model.embed(texts).embeddings]) for model in (fast, whole))
    np.testing.assert_allclose(got, expected, atol=1e-6 if precision == "fp32" else 1e-3, rtol=0)


@pytest.mark.skipif(not runtime.onednn_runs_on_cpu(), reason="oneDNN fuses LayerNorm on CPU only")
@pytest.mark.parametrize("dtype,atol", [(tf.float32, 1e-5), (tf.bfloat16, 0.04)])
def test_fused_layer_norm_runs_as_one_onednn_kernel(dtype, atol):
    """What makes the fused form pay: grappler's remapper must turn it into _MklLayerNorm, for float32 and for
    bfloat16 input (no casts around it). If a TensorFlow upgrade stops matching it, it runs as a real batch
    norm, slower than the plain form."""
    from model.encoder import _LayerNorm

    graph = tf.Graph()
    with graph.as_default():
        norm = _LayerNorm(16, 1e-12, "norm")
        x = tf.compat.v1.placeholder(dtype, [None, None, 16])
        plain = tf.cast(norm(x), tf.float32)
        norm.fused = True
        y = tf.cast(norm(x), tf.float32)
        init = tf.compat.v1.global_variables_initializer()
    values = np.random.RandomState(0).normal(1.0, 3.0, (3, 5, 16)).astype(dtype.as_numpy_dtype)
    with tf.compat.v1.Session(graph=graph) as session:
        session.run(init)
        metadata = tf.compat.v1.RunMetadata()
        fused_value = session.run(y, {x: values}, run_metadata=metadata,
                                  options=tf.compat.v1.RunOptions(output_partition_graphs=True))
        plain_value = session.run(plain, {x: values})
    nodes = [node for partition in metadata.partition_graphs for node in partition.node]
    ops = {node.op for node in nodes}
    assert "_MklLayerNorm" in ops and "FusedBatchNormV3" not in ops, sorted(ops)
    kernel_dtypes = {tf.as_dtype(node.attr["T"].type) for node in nodes if node.op == "_MklLayerNorm"}
    assert kernel_dtypes == {dtype}  # bfloat16 goes in as it is, not cast to float32 and back.
    np.testing.assert_allclose(fused_value, plain_value, atol=atol, rtol=0)


def test_precision_is_checked_and_changes_the_fingerprint(tiny_model_dir):
    with pytest.raises(ValueError, match="precision"):
        _handler(tiny_model_dir, precision="fp16")
    args = (tiny_model_dir + "/encoder", tiny_model_dir + "/preprocessor", "pooled", False, 128)
    assert runtime.model_fingerprint(*args) == runtime.model_fingerprint(*args, precision="fp32")
    assert runtime.model_fingerprint(*args) != runtime.model_fingerprint(*args, precision="bf16")


def test_embed_transform_gives_one_at_a_time_results_per_key_and_counts_computed_tokens(tiny_model_dir,
                                                                                         one_at_a_time):
    texts, singles = one_at_a_time
    expected = {f"id{i}": single.vector for i, single in enumerate(singles)}

    def check(results):
        got = dict(results)
        assert sorted(got) == sorted(expected)
        for key, embedding in got.items():
            np.testing.assert_allclose(embedding.vector, expected[key], atol=1e-5, rtol=0)

    handler = _handler(tiny_model_dir, pooling="mean", max_batch_size=8, token_budget=40)
    pipeline = test_pipeline.TestPipeline(runner="FnApiRunner")
    embedded, _ = (pipeline
                   | beam.Create([(f"id{i}", (text,)) for i, text in enumerate(texts)])
                   | embed.Embed(handler))
    assert_that(embedded, check)
    result = pipeline.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in
                result.metrics().query(MetricsFilter().with_namespace("embeddings"))["counters"]}
    assert counters["tokens_computed"] >= sum(single.tokens for single in singles)
