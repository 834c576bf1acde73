"""The DistilBERT/BERT transformer encoder as a TensorFlow module.

Weights are named like the Hugging Face DistilBERT checkpoint (`q_lin`, `sa_layer_norm`, `ffn.lin1`,
`output_layer_norm`, ...), so converting a checkpoint is a mechanical name map (model/convert.py). BERT-family
checkpoints map onto the same blocks; they add token-type embeddings and a tanh pooler.
"""

from __future__ import annotations

import math

import tensorflow as tf

from model.config import EncoderConfig

__all__ = ["Encoder"]

_MASK_PENALTY = -1e9  # Added to attention logits of padding keys; exp() of it is exactly 0 in float32.


class _Dense(tf.Module):
    """y = x @ kernel + bias, with kernel stored [in, out] (the transpose of a torch Linear weight)."""

    def __init__(self, in_size, out_size, init, name):
        super().__init__(name=name)
        with self.name_scope:
            self.kernel = tf.Variable(init([in_size, out_size]), name="kernel")
            self.bias = tf.Variable(tf.zeros([out_size]), name="bias")

    def __call__(self, x):
        # x: [rows, in]. A 2-D MatMul + BiasAdd is what oneDNN fuses into one kernel; a 3-D x would become a
        # broadcasting BatchMatMulV2 + AddV2, slower on CPU (see BENCHMARKS.md).
        return tf.nn.bias_add(tf.matmul(x, tf.cast(self.kernel, x.dtype)), tf.cast(self.bias, x.dtype))


class _LayerNorm(tf.Module):
    def __init__(self, size, epsilon, name):
        super().__init__(name=name)
        with self.name_scope:
            self.gamma = tf.Variable(tf.ones([size]), name="gamma")
            self.beta = tf.Variable(tf.zeros([size]), name="beta")
        self.epsilon = epsilon
        self.fused = False  # See Encoder.use_onednn_kernels.

    def __call__(self, x):
        if self.fused and x.dtype != tf.float32:
            # oneDNN's LayerNorm reads bfloat16 and keeps its statistics in float32: no casts around it.
            return self._fused_normalize(x) * tf.cast(self.gamma, x.dtype) + tf.cast(self.beta, x.dtype)
        # Statistics in float32 even when the block computes in bfloat16.
        x32 = tf.cast(x, tf.float32)
        normalized = self._fused_normalize(x32) if self.fused else self._normalize(x32)
        return tf.cast(normalized * self.gamma + self.beta, x.dtype)

    def _normalize(self, x):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + self.epsilon)

    def _fused_normalize(self, x):
        """The same normalisation, as the graph grappler's oneDNN remapper replaces by one _MklLayerNorm kernel.

        That graph is tf_keras's fused LayerNormalization: every row of x as one channel of a [1, rows, size, 1]
        NCHW FusedBatchNormV3 in training mode, with unit scale and zero offset, then gamma and beta. The kernel
        reads the activations once instead of once per op of _normalize: faster, see BENCHMARKS.md. TensorFlow
        has no public fused LayerNorm op, hence this detour. The remapper only matches while `rows` is not a
        constant (constant folding would turn the fills into constants): the pipeline's graphs have unknown
        batch and sequence sizes. Without oneDNN (GPU, ARM, TF_ENABLE_ONEDNN_OPTS=0) a real batch norm runs
        instead, slower than _normalize.
        """
        size = self.gamma.shape[0]
        rows = tf.size(x) // size  # x: float32, or bfloat16 (the kernel's statistics stay float32).
        normalized, *_ = tf.raw_ops.FusedBatchNormV3(
            x=tf.reshape(x, [1, rows, size, 1]), scale=tf.fill([rows], 1.0), offset=tf.fill([rows], 0.0),
            mean=tf.constant([], tf.float32), variance=tf.constant([], tf.float32), epsilon=self.epsilon,
            data_format="NCHW", is_training=True)
        return tf.reshape(normalized, tf.shape(x))


class _Attention(tf.Module):
    def __init__(self, config: EncoderConfig, init, name):
        super().__init__(name=name)
        h = config.hidden_size
        self.num_heads, self.head_size = config.num_heads, config.head_size
        with self.name_scope:
            self.q_lin = _Dense(h, h, init, "q_lin")
            self.k_lin = _Dense(h, h, init, "k_lin")
            self.v_lin = _Dense(h, h, init, "v_lin")
            self.out_lin = _Dense(h, h, init, "out_lin")
        self.dropout = config.attention_dropout
        self.softmax_in_compute_dtype = False  # See Encoder.use_onednn_kernels.

    def _split_heads(self, x, batch, seq):
        x = tf.reshape(x, [batch, seq, self.num_heads, self.head_size])  # [B, S, N, D]
        return tf.transpose(x, [0, 2, 1, 3])  # [B, N, S, D]

    def __call__(self, x, queries, mask_bias, batch, seq, training):
        """x: [B*S, H], tokens of all rows stacked so that every projection is one 2-D matmul. queries: the
        tokens that attend, x itself or each row's first token ([B, H]); the result has their shape."""
        q_seq = seq if queries is x else 1  # Q below: tokens that attend per row.
        q = self._split_heads(self.q_lin(queries), batch, q_seq)  # [B, N, Q, D]
        k = self._split_heads(self.k_lin(x), batch, seq)  # [B, N, S, D]
        v = self._split_heads(self.v_lin(x), batch, seq)  # [B, N, S, D]
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(self.head_size)  # [B, N, Q, S]
        scores = scores + tf.cast(mask_bias, scores.dtype)  # mask_bias: [B, 1, 1, S]
        if not self.softmax_in_compute_dtype:
            scores = tf.cast(scores, tf.float32)  # Softmax statistics in float32.
        weights = tf.nn.softmax(scores, axis=-1)  # [B, N, Q, S]
        if training and self.dropout:
            weights = tf.nn.dropout(weights, rate=self.dropout)
        context = tf.matmul(tf.cast(weights, v.dtype), v)  # [B, N, Q, D]
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [batch * q_seq, -1])  # [B*Q, H]
        return self.out_lin(context)  # [B*Q, H]


class _FeedForward(tf.Module):
    def __init__(self, config: EncoderConfig, init, name):
        super().__init__(name=name)
        with self.name_scope:
            self.lin1 = _Dense(config.hidden_size, config.intermediate_size, init, "lin1")
            self.lin2 = _Dense(config.intermediate_size, config.hidden_size, init, "lin2")
        self.approximate = config.approximate_gelu

    def __call__(self, x):
        return self.lin2(tf.nn.gelu(self.lin1(x), approximate=self.approximate))


class _TransformerBlock(tf.Module):
    """A post-LayerNorm block: x = LN(x + attention(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: EncoderConfig, init, name):
        super().__init__(name=name)
        with self.name_scope:
            self.attention = _Attention(config, init, "attention")
            self.sa_layer_norm = _LayerNorm(config.hidden_size, config.layer_norm_eps, "sa_layer_norm")
            self.ffn = _FeedForward(config, init, "ffn")
            self.output_layer_norm = _LayerNorm(config.hidden_size, config.layer_norm_eps, "output_layer_norm")
        self.dropout = config.dropout
        # DistilBERT applies no dropout to the attention output; BERT does.
        self.attention_output_dropout = config.dropout if config.family == "bert" else 0.0

    def dense_layers(self) -> list[_Dense]:
        attention = self.attention
        return [attention.q_lin, attention.k_lin, attention.v_lin, attention.out_lin, self.ffn.lin1, self.ffn.lin2]

    def __call__(self, x, mask_bias, batch, seq, training, first_token_only=False):
        """x: [B*S, H] -> [B*S, H], or with first_token_only [B, H]: each row's first token ([CLS]) alone, for
        which the other tokens' keys and values are all that is needed (inference only)."""
        queries = tf.reshape(x, [batch, seq, -1])[:, 0] if first_token_only else x  # [B*S, H] or [B, H]
        attended = self.attention(x, queries, mask_bias, batch, seq, training)
        if training and self.attention_output_dropout:
            attended = tf.nn.dropout(attended, rate=self.attention_output_dropout)
        x = self.sa_layer_norm(queries + attended)
        transformed = self.ffn(x)
        if training and self.dropout:
            transformed = tf.nn.dropout(transformed, rate=self.dropout)
        return self.output_layer_norm(x + transformed)


def _random_normal(stddev: float, seed: int | None):
    """An initializer drawing from N(0, stddev^2), seeded or not."""
    generator = (tf.random.Generator.from_seed(seed) if seed is not None
                 else tf.random.Generator.from_non_deterministic_state())
    return lambda shape: generator.normal(shape, stddev=stddev)


class Encoder(tf.Module):
    """A DistilBERT- or BERT-family encoder with the TF Hub text-encoder call convention.

    Call it with a dict of int32 [batch, seq] tensors `input_word_ids`, `input_mask` and optionally
    `input_type_ids` (ignored by DistilBERT, which has no token-type embeddings). It returns `pooled_output`
    [batch, hidden], `sequence_output` [batch, seq, hidden] and `encoder_outputs`, one [batch, seq, hidden]
    per block. DistilBERT has no pooler: its `pooled_output` is the last block's [CLS] vector. `cls_outputs`
    computes only the [CLS] vectors, with less work.

    Args:
      config: the architecture.
      seed: seeds the random initialisation (normal with stddev `initializer_range`, like Hugging Face).
      compute_dtype: tf.float32, or tf.bfloat16 to run matmuls in reduced precision (weights stay float32).
      random_init: False starts every weight at zero, for a module whose weights are restored or copied next:
        drawing a full-size model's random weights takes seconds of its load (see BENCHMARKS.md).
    """

    def __init__(self, config: EncoderConfig, seed: int | None = None, compute_dtype=tf.float32, name=None, *,
                 random_init: bool = True):
        super().__init__(name=name or "encoder")
        self.config = config
        self.compute_dtype = tf.as_dtype(compute_dtype)
        init = _random_normal(config.initializer_range, seed) if random_init else tf.zeros

        with self.name_scope, tf.name_scope("embeddings"):
            self.word_embeddings = tf.Variable(init([config.vocab_size, config.hidden_size]),
                                               name="word_embeddings")
            self.position_embeddings = tf.Variable(
                init([config.max_position_embeddings, config.hidden_size]), name="position_embeddings")
            self.token_type_embeddings = (
                tf.Variable(init([config.type_vocab_size, config.hidden_size]), name="token_type_embeddings")
                if config.family == "bert" else None)
            self.embeddings_layer_norm = _LayerNorm(config.hidden_size, config.layer_norm_eps, "LayerNorm")
        with self.name_scope:
            self.layer = [_TransformerBlock(config, init, f"layer_{i}") for i in range(config.num_layers)]
            self.pooler = (_Dense(config.hidden_size, config.hidden_size, init, "pooler")
                           if config.family == "bert" else None)

    def use_onednn_kernels(self, enabled: bool = True) -> None:
        """Traces later calls in the form TensorFlow's oneDNN graph rewrites fuse (x86 CPUs), for inference.

        Each LayerNorm becomes one _MklLayerNorm kernel (see _LayerNorm._fused_normalize), and in bfloat16 takes
        bfloat16 directly, as the softmax does: oneDNN's bfloat16 LayerNorm and softmax keep their statistics
        in float32 inside the kernel, so the casts around them (a pass over every activation each) go. The
        float32 computation is the same; elsewhere (GPU, TF_ENABLE_ONEDNN_OPTS=0) the fused LayerNorm runs as a
        real batch norm, slower (see BENCHMARKS.md), so leave it off there.
        """
        for norm in self.layer_norms():
            norm.fused = enabled
        for block in self.layer:
            block.attention.softmax_in_compute_dtype = enabled

    def freeze_matmul_weights(self) -> None:
        """For inference: replaces every dense kernel by a constant in compute_dtype, embedded in later traces.

        oneDNN reorders a constant weight once into the blocked layout its fastest kernels read, and keeps it.
        A weight read from a variable goes through a generic GEMM every call: for bfloat16 on CPUs with AMX
        (Sapphire Rapids and later) that one is not the AMX kernel, and the encoder runs slower (see
        BENCHMARKS.md). The constants also save casting the float32 kernels on every call. The price is memory:
        TensorFlow's function runtime holds constants in several copies, so a loaded model takes more (see
        BENCHMARKS.md). The variables are dropped, so the module can no longer be trained or exported
        afterwards.
        """
        # Not the pooler: it runs in float32 on the float32 [CLS] vector. The biases stay variables: with
        # constant biases too, grappler no longer fuses MatMul + BiasAdd (+ GELU) into one oneDNN kernel.
        for layer in (layer for block in self.layer for layer in block.dense_layers()):
            layer.kernel = tf.cast(layer.kernel, self.compute_dtype).numpy()

    def layer_norms(self) -> list[_LayerNorm]:
        """Every LayerNorm of the encoder, the embeddings' first (which ones run fused is the export's choice)."""
        return [self.embeddings_layer_norm] + [norm for block in self.layer
                                               for norm in (block.sa_layer_norm, block.output_layer_norm)]

    def weights_by_name(self) -> dict[str, tf.Variable]:
        """Every variable under its Hugging Face DistilBERT-style name (BERT adds its own extras)."""
        weights = {
            "embeddings.word_embeddings.weight": self.word_embeddings,
            "embeddings.position_embeddings.weight": self.position_embeddings,
            "embeddings.LayerNorm.weight": self.embeddings_layer_norm.gamma,
            "embeddings.LayerNorm.bias": self.embeddings_layer_norm.beta,
        }
        if self.token_type_embeddings is not None:
            weights["embeddings.token_type_embeddings.weight"] = self.token_type_embeddings
        for i, block in enumerate(self.layer):
            prefix = f"transformer.layer.{i}."
            dense = {"attention.q_lin": block.attention.q_lin, "attention.k_lin": block.attention.k_lin,
                     "attention.v_lin": block.attention.v_lin, "attention.out_lin": block.attention.out_lin,
                     "ffn.lin1": block.ffn.lin1, "ffn.lin2": block.ffn.lin2}
            for name, layer in dense.items():
                weights[prefix + name + ".weight"] = layer.kernel
                weights[prefix + name + ".bias"] = layer.bias
            for name, norm in {"sa_layer_norm": block.sa_layer_norm,
                               "output_layer_norm": block.output_layer_norm}.items():
                weights[prefix + name + ".weight"] = norm.gamma
                weights[prefix + name + ".bias"] = norm.beta
        if self.pooler is not None:
            weights["pooler.dense.weight"] = self.pooler.kernel
            weights["pooler.dense.bias"] = self.pooler.bias
        return weights

    def __call__(self, inputs, training=False):
        x, mask_bias, batch, seq = self._embed(inputs, training)
        hidden = self.config.hidden_size
        encoder_outputs = []
        for block in self.layer:
            x = block(x, mask_bias, batch, seq, training)  # [B*S, H]
            encoder_outputs.append(tf.reshape(tf.cast(x, tf.float32), [batch, seq, hidden]))  # [B, S, H]
        sequence_output = encoder_outputs[-1]
        cls = sequence_output[:, 0]  # [B, H]
        return {"pooled_output": self._pool(cls), "sequence_output": sequence_output,
                "encoder_outputs": encoder_outputs}

    def cls_outputs(self, inputs):
        """For inference when only [CLS] vectors are wanted: `pooled_output` and `cls_output` (the last block's
        [CLS] vector, sequence_output[:, 0]), each float32 [batch, hidden], as __call__ computes them.

        The last block computes the [CLS] token alone (attending over every token's keys and values), so most of
        that block's work is skipped: faster, see BENCHMARKS.md. The results equal __call__'s up to float
        rounding.
        """
        x, mask_bias, batch, seq = self._embed(inputs, training=False)
        for block in self.layer[:-1]:
            x = block(x, mask_bias, batch, seq, training=False)  # [B*S, H]
        cls = tf.cast(self.layer[-1](x, mask_bias, batch, seq, training=False, first_token_only=True),
                      tf.float32)  # [B, H]
        return {"pooled_output": self._pool(cls), "cls_output": cls}

    def _embed(self, inputs, training):
        """Token, position (and type) embeddings, normalised: [B*S, H] in the compute dtype, the attention
        mask as a bias to add to the logits, [B, 1, 1, S], and B and S."""
        word_ids = inputs["input_word_ids"]  # [B, S]
        mask = inputs["input_mask"]  # [B, S]
        batch, seq = tf.shape(word_ids)[0], tf.shape(word_ids)[1]
        x = tf.gather(self.word_embeddings, word_ids) + self.position_embeddings[tf.newaxis, :seq]  # [B, S, H]
        if self.token_type_embeddings is not None:
            type_ids = inputs.get("input_type_ids")
            if type_ids is None:
                type_ids = tf.zeros_like(word_ids)
            x += tf.gather(self.token_type_embeddings, type_ids)
        x = self.embeddings_layer_norm(x)
        if training and self.config.dropout:
            x = tf.nn.dropout(x, rate=self.config.dropout)
        x = tf.reshape(tf.cast(x, self.compute_dtype), [batch * seq, self.config.hidden_size])  # [B*S, H]
        mask_bias = (1.0 - tf.cast(mask, tf.float32))[:, tf.newaxis, tf.newaxis, :] * _MASK_PENALTY  # [B,1,1,S]
        return x, mask_bias, batch, seq

    def _pool(self, cls):
        """pooled_output from the last block's float32 [CLS] vectors [B, H]: BERT's tanh pooler, or as is."""
        return tf.tanh(self.pooler(cls)) if self.pooler is not None else cls
