"""The engine: an Embedder packs, encodes and pools batches of texts with a loaded preprocessor and encoder."""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Sequence

import numpy as np

from runtime import chunking
from runtime.chunking import Chunk, ChunkSettings
from runtime.embedding import ChunkEmbedding, EmbeddedBatch, EmbeddedDocuments, Embedding

__all__ = ["POOLING_MODES", "SUB_BATCH_OVERHEAD_TOKENS", "Embedder", "plan_sub_batches", "TOKENIZE_CHARS",
           "PROGRESS_SECONDS", "wordpieces"]

POOLING_MODES = ("pooled", "cls", "mean")
_ENCODER_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
# The fixed cost of one encoder call (dispatch, streaming every weight through the cache), in tokens of compute,
# per precision: measured for the full-size DistilBERT on 2-core CPUs, see BENCHMARKS.md. It makes
# plan_sub_batches prefer fewer, slightly more padded sub-batches over many tiny exact ones. bf16's is larger:
# on AMX its matmuls are so fast that dispatch weighs more.
SUB_BATCH_OVERHEAD_TOKENS = {"fp32": 64, "bf16": 512}
# Code points per tokenizer call when chunking: bounds the tokenizer's memory (about 80 bytes per code point).
TOKENIZE_CHARS = 1 << 18
# A batch of long documents can take minutes between two records out of the pipeline: the engine says how far it
# is through such a batch this often.
PROGRESS_SECONDS = 30.0


class Embedder:
    """The loaded models plus the graph that packs, encodes and pools a batch; one per worker (or machine).

    Inputs are plain Python and outputs numpy, so the object also works behind Beam's MultiProcessShared proxy
    when one copy serves every process on a machine. runtime.load builds one from two handles and warms it up.

    Args:
      preprocessor: the loaded preprocessor SavedModel (tokenize and bert_pack_inputs), or None until set through
        the `preprocessor` property (runtime.load warms the encoder up while the preprocessor loads).
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
      prompt: text prepended to every single text before tokenizing, as sentence-transformers' prompts are ("":
        none); with chunking ("windows"), its wordpieces go before every chunk's.
    """

    def __init__(self, preprocessor, encoder, *, seq_length: int = 128, pooling: str = "pooled",
                 normalize: bool = False, with_sequence: bool = False, token_budget: int = 4096,
                 precision: str = "fp32", prompt: str = ""):
        import tensorflow as tf

        self._preprocessor = preprocessor
        self._encoder = encoder
        self._seq_length, self._with_sequence = seq_length, with_sequence
        self._token_budget = max(token_budget, seq_length)
        self._encoder_keys = getattr(encoder, "input_keys", None) or self._accepted_encoder_keys()
        self._call_overhead = SUB_BATCH_OVERHEAD_TOKENS[precision]
        text_spec = tf.TensorSpec([None], tf.string)
        id_spec = tf.TensorSpec([None, None], tf.int32)

        @tf.function(input_signature=[text_spec], autograph=False)
        def pack_one(texts):
            return self._pack([texts])

        @tf.function(input_signature=[text_spec, text_spec], autograph=False)
        def pack_two(first, second):
            return self._pack([first, second])

        @tf.function(input_signature=[id_spec, id_spec, id_spec], autograph=False)
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

        @tf.function(input_signature=[id_spec, id_spec, id_spec], autograph=False)
        def encode_tokens(word_ids, mask, type_ids):
            inputs = {"input_word_ids": word_ids, "input_mask": mask, "input_type_ids": type_ids}
            return tf.cast(self._encoder({key: inputs[key] for key in self._encoder_keys})["sequence_output"],
                           tf.float32)

        self._pack_fns = {1: pack_one, 2: pack_two}
        self._encode = encode
        self._encode_tokens = encode_tokens
        self._normalize = normalize
        self._special_ids = None
        self._prompt, self._prompt_ids = prompt, None
        self._unknown_id = False  # Not looked up yet; None when the tokenizer gives no single [UNK] for it.
        self._split_words = None

    @property
    def preprocessor(self):
        """The loaded preprocessor SavedModel; None until set, when the Embedder was made without it."""
        return self._preprocessor

    @preprocessor.setter
    def preprocessor(self, loaded) -> None:
        self._preprocessor = loaded

    def trace_encoder(self, token_vectors: bool = False) -> None:
        """Traces the encode function, or with `token_vectors` the one late chunking runs, without running it."""
        self._encode_function(token_vectors).get_concrete_function()

    def warm_up_encoder(self, token_vectors: bool = False) -> None:
        """Runs the encode function (or late chunking's) once on a tiny input, tracing it first if need be: its
        first call optimises the graph (seconds for bf16, mostly in TensorFlow's C++ without the GIL). Needs no
        preprocessor."""
        ids = np.zeros((1, 2), np.int32)
        self._encode_function(token_vectors)(ids, np.ones_like(ids), ids)

    def _encode_function(self, token_vectors: bool):
        """encode_tokens (late chunking's: unpooled token vectors) or encode (pooled vectors)."""
        return self._encode_tokens if token_vectors else self._encode

    def warm_up_inputs(self, pairs: bool | None = None, chunking: bool = False) -> None:
        """Traces and runs what turns texts into encoder inputs: with `chunking`, the word splitting and
        tokenizing that embed_documents runs; else the packing of single texts (pairs False), of pairs (True) or
        of both (None)."""
        if chunking:
            list(self._tokenize_call(["warm up"]))
            return
        if not pairs:
            self.pack(["warm up"])
        if pairs is None or pairs:
            self.pack(["warm"], ["up"])

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
        if self._prompt:
            texts = [(self._prompt + item[0], *item[1:]) for item in texts]
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
        return EmbeddedBatch(embeddings, tokens_computed, self._count_unknown_only(word_ids, mask))

    def embed_documents(self, texts: Sequence[str], settings: ChunkSettings) -> EmbeddedDocuments:
        """Cuts each text into chunks of whole words (runtime.chunking) and embeds every chunk.

        "windows" encodes each chunk alone, [CLS] chunk [SEP], pooled as this Embedder pools. "late" encodes
        windows of up to seq_length tokens and gives each chunk the mean of its own wordpieces' token vectors
        (L2-normalised when this Embedder normalises). Chunks of every text share length-sorted sub-batches.

        Returns:
          Each text's chunk embeddings, in order, and the padded tokens the encoder computed.
        """
        documents = self.chunk_documents(texts, settings)
        late = settings.mode == "late"
        if late and self._prompt:
            raise ValueError("late chunking pools each chunk from a whole window's token vectors: a prompt before "
                             "every chunk has no place there; use --chunking windows.")
        prefix = self.prompt_ids()
        rows = []  # (document, piece start, piece end, the late window or the chunk)
        for number, (pieces, chunks) in enumerate(documents):
            if late:
                rows += [(number, window.piece_start, window.piece_end, window)
                         for window in chunking.plan_windows(len(pieces), self._seq_length - 2)]
            else:
                rows += [(number, chunk.piece_start, chunk.piece_end, chunk) for chunk in chunks]
        # Late runs pool into _LatePooling; windows fill each chunk's place in `results`.
        pooled = _LatePooling(documents, self._normalize) if late else None
        results: list[list[ChunkEmbedding | None]] = [] if late else [[None] * len(chunks) for _, chunks in documents]
        lengths = np.array([end - start + 2 + len(prefix) for _, start, end, _ in rows], np.int64)
        tokens_computed = 0
        progress = _BatchProgress(len(texts), len(rows), int(lengths.sum()), "windows" if late else "chunks")
        for sub_batch in plan_sub_batches(lengths, self._token_budget, self._call_overhead):
            progress.advance(len(sub_batch), int(lengths[sub_batch].sum()))
            width = int(lengths[sub_batch].max())
            tokens_computed += len(sub_batch) * width
            batch_rows = [rows[i] for i in sub_batch]
            word_ids, mask = self._pack_pieces([np.concatenate([prefix, documents[number][0][start:end]])
                                                for number, start, end, _ in batch_rows], width)
            if late:
                sequences = self._encode_tokens(word_ids, mask, np.zeros_like(word_ids)).numpy()
                for (number, _, _, window), sequence in zip(batch_rows, sequences, strict=True):
                    pooled.add(number, window, sequence)
            else:
                vectors = self._encode(word_ids, mask, np.zeros_like(word_ids))[0].numpy()
                for (number, start, end, chunk), vector in zip(batch_rows, vectors, strict=True):
                    results[number][chunk.index] = _chunk_embedding(vector, end - start + 2 + len(prefix), chunk)
        unknown = self.unknown_id()
        unknown_only = 0 if unknown is None else sum(
            bool(len(pieces)) and bool(np.all(pieces == unknown)) for pieces, _ in documents)
        return EmbeddedDocuments(pooled.results() if late else results, tokens_computed, unknown_only)

    def chunk_documents(self, texts: Sequence[str], settings: ChunkSettings) -> list[tuple[np.ndarray, list[Chunk]]]:
        """Tokenizes each text and cuts it into chunks of whole words (runtime.chunking.plan_chunks), without
        encoding: per text, its wordpiece ids (int32, [CLS] and [SEP] not included) and its chunks."""
        return [(ids, chunking.plan_chunks(lengths, starts, ends, settings.tokens, settings.overlap))
                for ids, lengths, starts, ends in self._tokenize_words(texts)]

    def _pack_pieces(self, rows: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
        """[CLS] pieces [SEP] per row, padded to `width`: (word_ids, mask), int32 [rows, width]."""
        cls_id, sep_id, pad_id = self._special_token_ids()
        word_ids = np.full((len(rows), width), pad_id, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for row, pieces in enumerate(rows):
            word_ids[row, 0] = cls_id
            word_ids[row, 1:1 + len(pieces)] = pieces
            word_ids[row, 1 + len(pieces)] = sep_id
            mask[row, :len(pieces) + 2] = 1
        return word_ids, mask

    def prompt_ids(self) -> np.ndarray:
        """The prompt's wordpieces (int32; empty without a prompt), which go before every chunk's."""
        if self._prompt_ids is None:
            self._prompt_ids = (wordpieces(self._preprocessor, self._prompt) if self._prompt
                                else np.zeros(0, np.int32))
        return self._prompt_ids

    def unknown_id(self) -> int | None:
        """The id of [UNK]: what the tokenizer gives a word longer than any it splits (WordPiece's 100-character
        limit, Hugging Face's and TF Text's alike); None when it gives something else."""
        if self._unknown_id is False:
            pieces = wordpieces(self._preprocessor, "x" * 1000)
            self._unknown_id = int(pieces[0]) if len(pieces) == 1 else None
        return self._unknown_id

    def _count_unknown_only(self, word_ids: np.ndarray, mask: np.ndarray) -> int:
        """Rows whose wordpieces, [CLS] and [SEP] aside, are all [UNK] (a text that is one over-long "word")."""
        unknown = self.unknown_id()
        if unknown is None:
            return 0
        cls_id, sep_id, _ = self._special_token_ids()
        pieces = (mask == 1) & (word_ids != cls_id) & (word_ids != sep_id)
        return int(np.sum(pieces.any(axis=1) & np.all((word_ids == unknown) | ~pieces, axis=1)))

    def _special_token_ids(self) -> tuple[int, int, int]:
        if self._special_ids is None:
            special = self._preprocessor.tokenize.get_special_tokens_dict()
            self._special_ids = tuple(int(special[name].numpy())
                                      for name in ("start_of_sequence_id", "end_of_segment_id", "padding_id"))
        return self._special_ids

    def _tokenize_words(self, texts: Sequence[str]):
        """Per text: (wordpiece ids, wordpieces per word, word starts, word ends), spans in code points.

        Texts go to the tokenizer in calls of about TOKENIZE_CHARS code points, a long text cut into segments
        that tokenize as the whole does (chunking.text_segments): memory stays bounded whatever the length."""
        segments = [(number, start, text[start:end]) for number, text in enumerate(texts)
                    for start, end in _pairwise(chunking.text_segments(text, TOKENIZE_CHARS) + [len(text)])]
        parts: list[list] = [[] for _ in texts]
        call: list = []
        for segment in segments + [None]:
            if call and (segment is None or sum(len(s[2]) for s in call) + len(segment[2]) > TOKENIZE_CHARS):
                for (number, start, _), words in zip(call, self._tokenize_call([s[2] for s in call]), strict=True):
                    parts[number].append((start, words))
                call = []
            if segment is not None:
                call.append(segment)
        for number in range(len(texts)):
            ids, lengths, starts, ends = zip(*((words[0], words[1], words[2] + start, words[3] + start)
                                               for start, words in parts[number]), strict=True)
            yield (np.concatenate(ids), np.concatenate(lengths), np.concatenate(starts), np.concatenate(ends))

    def _tokenize_call(self, texts: list[str]):
        """One tokenizer call: per text, (wordpiece ids, wordpieces per word, word starts, word ends)."""
        import tensorflow as tf

        if self._split_words is None:
            self._split_words = self._split_words_function()
        splits, starts, ends, lengths, ids = (t.numpy() for t in self._split_words(tf.constant(texts)))
        piece_splits = np.concatenate([[0], np.cumsum(lengths)])
        for number, text in enumerate(texts):
            first, last = splits[number], splits[number + 1]
            yield (ids[piece_splits[first]:piece_splits[last]], lengths[first:last],
                   chunking.char_offsets(text, starts[first:last]), chunking.char_offsets(text, ends[first:last]))

    def _split_words_function(self):
        """The graph that splits texts into words with byte offsets and tokenizes each word alone."""
        import tensorflow as tf

        from model.word_patterns import RAW_WORD_KEPT_REGEX, RAW_WORD_SPLIT_REGEX
        from runtime import imports

        # tensorflow_text's op itself, as its regex_split_with_offsets calls it on a flat input (each pattern in
        # a group): importing the package for its wrapper would import Keras, seconds of start-up.
        regex_split = imports.text_op_library("_regex_split_ops").regex_split_with_offsets
        split_pattern, kept_pattern = f"({RAW_WORD_SPLIT_REGEX})", f"({RAW_WORD_KEPT_REGEX})"

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
        def split_words(texts):
            # regex_split ends a string at NUL; \x01 is deleted by the tokenizer's cleaning just the same and
            # keeps every byte offset.
            texts = tf.strings.regex_replace(texts, r"\x00", "\x01")
            words, starts, ends, word_splits = regex_split(texts, split_pattern, kept_pattern)
            pieces = self._preprocessor.tokenize(words).merge_dims(1, 2)  # [words, (wordpieces)]
            return word_splits, starts, ends, pieces.row_lengths(), pieces.flat_values

        return split_words


def _pairwise(bounds: list[int]):
    return zip(bounds[:-1], bounds[1:], strict=True)


class _LatePooling:
    """Late chunking's chunk vectors: the mean of each chunk's wordpiece vectors, each wordpiece's vector taken
    from the window that owns it (chunking.plan_windows), whichever sub-batches the windows come in."""

    def __init__(self, documents, normalize: bool):
        self._documents, self._normalize = documents, normalize
        self._sums: dict[tuple[int, int], np.ndarray] = {}
        self._chunk_ends: dict[int, list[int]] = {}  # Per document, increasing (plan_chunks always moves on).

    def add(self, number: int, window: chunking.Window, sequence: np.ndarray) -> None:
        """Adds the owned part of one window's token vectors (sequence: [CLS] pieces [SEP] padding) to the sums
        of the document's chunks it overlaps."""
        pieces, chunks = self._documents[number]
        if len(pieces) == 0:  # A text without wordpieces: its one chunk takes the mean of [CLS] and [SEP].
            self._sums[number, 0] = sequence[:2].mean(axis=0)
            return
        ends = self._chunk_ends.setdefault(number, [chunk.piece_end for chunk in chunks])
        for chunk in chunks[bisect.bisect_right(ends, window.own_start):]:  # The first ending past own_start.
            if chunk.piece_start >= window.own_end:
                break
            start, end = max(chunk.piece_start, window.own_start), min(chunk.piece_end, window.own_end)
            if start < end:
                part = sequence[1 + start - window.piece_start:1 + end - window.piece_start].sum(axis=0)
                key = (number, chunk.index)
                self._sums[key] = self._sums[key] + part if key in self._sums else part

    def results(self) -> list[list[ChunkEmbedding]]:
        results = []
        for number, (_, chunks) in enumerate(self._documents):
            results.append([])
            for chunk in chunks:
                vector = self._sums[number, chunk.index] / max(chunk.piece_end - chunk.piece_start, 1)
                if self._normalize:
                    vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
                results[-1].append(_chunk_embedding(vector, chunk.piece_end - chunk.piece_start, chunk))
        return results


def wordpieces(preprocessor, text: str) -> np.ndarray:
    """The wordpiece ids (int32) a loaded preprocessor makes of one text, [CLS] and [SEP] not included."""
    import tensorflow as tf

    return preprocessor.tokenize(tf.constant([text])).flat_values.numpy().astype(np.int32)


class _BatchProgress:
    """Logs how far a batch of documents is, every PROGRESS_SECONDS (never for a batch done sooner)."""

    def __init__(self, documents: int, rows: int, tokens: int, what: str):
        self._documents, self._rows, self._tokens, self._what = documents, rows, tokens, what
        self._rows_done = self._tokens_done = 0
        self._start = self._last = time.monotonic()

    def advance(self, rows: int, tokens: int) -> None:
        """Called before `rows` more rows of `tokens` tokens are encoded."""
        now = time.monotonic()
        if now - self._last >= PROGRESS_SECONDS and self._tokens_done:
            self._last = now
            rate = self._tokens_done / (now - self._start)
            logging.info("Embedding a batch of %d documents: %s of %s %s (%s of %s tokens, %.0f%%), %.0f tokens/s, "
                         "about %.0f s left in this batch.", self._documents, f"{self._rows_done:,}",
                         f"{self._rows:,}", self._what, f"{self._tokens_done:,}", f"{self._tokens:,}",
                         100 * self._tokens_done / max(self._tokens, 1), rate,
                         (self._tokens - self._tokens_done) / max(rate, 1e-9))
        self._rows_done += rows
        self._tokens_done += tokens


def _chunk_embedding(vector: np.ndarray, tokens: int, chunk: Chunk) -> ChunkEmbedding:
    return ChunkEmbedding(np.asarray(vector, np.float32), int(tokens), chunk.index, chunk.count, chunk.char_start,
                          chunk.char_end)


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
