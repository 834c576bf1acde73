"""The engine: an Embedder packs, encodes and pools batches of texts with a loaded preprocessor and encoder."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.embedding import EmbeddedBatch, Embedding

__all__ = ["POOLING_MODES", "SUB_BATCH_OVERHEAD_TOKENS", "Embedder", "plan_sub_batches"]

POOLING_MODES = ("pooled", "cls", "mean")
_ENCODER_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
# The fixed cost of one encoder call (dispatch, streaming every weight through the cache), in tokens of compute,
# per precision: measured for the full-size DistilBERT on 2-core CPUs, see BENCHMARKS.md. It makes
# plan_sub_batches prefer fewer, slightly more padded sub-batches over many tiny exact ones. bf16's is larger:
# on AMX its matmuls are so fast that dispatch weighs more.
SUB_BATCH_OVERHEAD_TOKENS = {"fp32": 64, "bf16": 512}


class Embedder:
    """The loaded models plus the graph that packs, encodes and pools a batch; one per worker (or machine).

    Inputs are plain Python and outputs numpy, so the object also works behind Beam's MultiProcessShared proxy
    when one copy serves every process on a machine. runtime.load builds one from two handles and warms it up.

    Args:
      preprocessor: the loaded preprocessor SavedModel (tokenize and bert_pack_inputs).
      encoder: what runs a batch: an EncoderCall (runtime.load_encoder_call), a loaded encoder SavedModel or any
        callable with its call convention. A [CLS]-only form returns pooled_output and cls_output only, so it
        serves pooling "pooled" and "cls" without token vectors.
      seq_length: the longest packed input; longer inputs are truncated round-robin.
      pooling: one of POOLING_MODES: "pooled" (the encoder's pooled_output), "cls" or "mean" (over the mask).
      normalize: L2-normalise each vector.
      with_sequence: also return the unpadded token vectors.
      token_budget: the most padded tokens encoded at once (at least seq_length); batches are cut into
        length-sorted sub-batches.
      precision: the precision the encoder runs at; here it only tunes the sub-batch planning.
    """

    def __init__(self, preprocessor, encoder, *, seq_length: int = 128, pooling: str = "pooled",
                 normalize: bool = False, with_sequence: bool = False, token_budget: int = 4096,
                 precision: str = "fp32"):
        import tensorflow as tf

        self._preprocessor = preprocessor
        self._encoder = encoder
        self._seq_length, self._with_sequence = seq_length, with_sequence
        self._token_budget = max(token_budget, seq_length)
        self._encoder_keys = getattr(encoder, "input_keys", None) or self._accepted_encoder_keys()
        self._call_overhead = SUB_BATCH_OVERHEAD_TOKENS[precision]
        text_spec = tf.TensorSpec([None], tf.string)
        id_spec = tf.TensorSpec([None, None], tf.int32)

        @tf.function(input_signature=[text_spec])
        def pack_one(texts):
            return self._pack([texts])

        @tf.function(input_signature=[text_spec, text_spec])
        def pack_two(first, second):
            return self._pack([first, second])

        @tf.function(input_signature=[id_spec, id_spec, id_spec])
        def encode(word_ids, mask, type_ids):
            inputs = {"input_word_ids": word_ids, "input_mask": mask, "input_type_ids": type_ids}
            outputs = self._encoder({key: inputs[key] for key in self._encoder_keys})
            if pooling == "pooled":
                vectors = outputs["pooled_output"]
            elif pooling == "cls":
                vectors = outputs["cls_output"] if "cls_output" in outputs else outputs["sequence_output"][:, 0]
            else:
                sequence = outputs["sequence_output"]
                weights = tf.cast(mask, sequence.dtype)[:, :, tf.newaxis]
                vectors = tf.reduce_sum(sequence * weights, axis=1) / tf.maximum(
                    tf.reduce_sum(weights, axis=1), 1e-9)
            if normalize:
                vectors = tf.math.l2_normalize(vectors, axis=-1)
            return (vectors, outputs["sequence_output"]) if with_sequence else (vectors,)

        self._pack_fns = {1: pack_one, 2: pack_two}
        self._encode = encode

    @property
    def encoder(self):
        """The encoder call this Embedder runs (an EncoderCall when runtime.load built it)."""
        return self._encoder

    @property
    def encode(self):
        """The traced encode-and-pool function: (word_ids, mask, type_ids), int32 [rows, width] each, ->
        (vectors,), or (vectors, sequence_output) with token vectors. Every dimension is unknown to its
        signature, so new shapes need no retracing."""
        return self._encode

    def pack(self, *segments):
        """Tokenises and packs one or two segments (each a sequence of texts, one per row).

        Returns:
          Tensors (word_ids, mask, type_ids), int32 [rows, seq_length], and the tokens each row would need
          untruncated, int32 [rows].
        """
        return self._pack_fns[len(segments)](*segments)

    def _accepted_encoder_keys(self) -> tuple[str, ...]:
        """The published TF Hub DistilBERT takes no input_type_ids; BERT encoders need them."""
        import tensorflow as tf

        probe = {"input_word_ids": tf.zeros([1, 2], tf.int32), "input_mask": tf.ones([1, 2], tf.int32),
                 "input_type_ids": tf.zeros([1, 2], tf.int32)}
        for keys in (_ENCODER_KEYS, _ENCODER_KEYS[:2]):
            try:
                self._encoder({key: probe[key] for key in keys})
                return keys
            except (ValueError, TypeError):
                continue
        raise ValueError("The encoder accepts neither (input_word_ids, input_mask, input_type_ids) nor "
                         "(input_word_ids, input_mask); is it a TF Hub BERT-style text encoder?")

    def _pack(self, segments):
        import tensorflow as tf

        tokenized = [self._preprocessor.tokenize(texts) for texts in segments]
        # Tokens each row would need untruncated: its word pieces plus [CLS] and one [SEP] per segment.
        needed = tf.add_n([tf.cast(t.merge_dims(-2, -1).row_lengths(), tf.int32) for t in tokenized])
        needed += len(segments) + 1
        packed = self._preprocessor.bert_pack_inputs(tokenized, seq_length=tf.constant(self._seq_length))
        return packed["input_word_ids"], packed["input_mask"], packed["input_type_ids"], needed

    def embed(self, texts: Sequence[tuple[str, ...]]) -> EmbeddedBatch:
        """Embeds a batch of inputs, each a tuple of one text, or two for pairs ([CLS] a [SEP] b [SEP]).

        Returns:
          One Embedding per input, in input order, and the padded tokens the encoder computed.
        """
        segments = list(zip(*texts, strict=True))
        word_ids, mask, type_ids, needed = (t.numpy() for t in self.pack(*segments))
        lengths = mask.sum(axis=1)
        vectors = np.zeros((len(texts), 0), np.float32)
        sequences: list[np.ndarray | None] = [None] * len(texts)
        tokens_computed = 0
        # Sort by length and pad each sub-batch only to its own longest row: real text is mostly short.
        for chunk in plan_sub_batches(lengths, self._token_budget, self._call_overhead):
            width = int(lengths[chunk].max())
            tokens_computed += len(chunk) * width
            chunk_vectors, *chunk_sequence = self._encode(word_ids[chunk, :width], mask[chunk, :width],
                                                          type_ids[chunk, :width])
            if vectors.shape[1] == 0:
                vectors = np.zeros((len(texts), chunk_vectors.shape[-1]), np.float32)
            vectors[chunk] = chunk_vectors.numpy()
            if self._with_sequence:
                chunk_sequence = chunk_sequence[0].numpy()
                for row, index in enumerate(chunk):
                    sequences[index] = chunk_sequence[row, :lengths[index]]
        embeddings = [Embedding(vectors[i], int(lengths[i]), bool(needed[i] > self._seq_length), sequences[i])
                      for i in range(len(texts))]
        return EmbeddedBatch(embeddings, tokens_computed)


def plan_sub_batches(lengths: np.ndarray, token_budget: int,
                     call_overhead: int = SUB_BATCH_OVERHEAD_TOKENS["fp32"]) -> list[np.ndarray]:
    """Splits a batch into sub-batches of rows of similar length, each padded only to its own longest row.

    Sorted by length, every sub-batch is a run of neighbours, so the best split is found exactly by dynamic
    programming over the sorted lengths: it minimises the padded tokens computed plus `call_overhead` tokens'
    worth of fixed cost per encoder call, keeping each sub-batch's padded size (rows x longest) within
    `token_budget` (a single row longer than the budget goes alone). Deterministic: the same lengths always
    give the same sub-batches.

    Args:
      lengths: tokens per row.
      token_budget: the most padded tokens in one sub-batch.
      call_overhead: the fixed cost of one encoder call, in tokens (SUB_BATCH_OVERHEAD_TOKENS).

    Returns:
      Row indices, one array per sub-batch, each in ascending length order.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    widths = np.maximum(lengths[order], 1)
    cost = np.zeros(len(order) + 1)  # cost[end]: the cheapest split of the `end` shortest rows.
    start_of = np.zeros(len(order) + 1, np.int64)
    for end in range(1, len(order) + 1):
        width = widths[end - 1]
        starts = np.arange(max(0, end - max(1, token_budget // width)), end)
        candidates = cost[starts] + (end - starts) * width + call_overhead
        best = int(np.argmin(candidates))
        cost[end], start_of[end] = candidates[best], starts[best]
    sub_batches, end = [], len(order)
    while end > 0:
        sub_batches.append(order[start_of[end]:end])
        end = start_of[end]
    return sub_batches[::-1]
