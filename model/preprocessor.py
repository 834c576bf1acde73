"""The BERT text preprocessor: strings to encoder inputs, exported in TF Hub's preprocessor interface.

Contract of the SavedModel written by `export_preprocessor` (the Preprocessor API for text embeddings with
Transformer encoders, https://www.tensorflow.org/hub/common_saved_model_apis/text, as implemented by
tensorflow/models `official/nlp/tools/export_tfhub_lib.py`). Load it with `tf.saved_model.load(path)` or
`hub.KerasLayer(path)` after `import tensorflow_text`, which registers the ops it uses:

- `obj(sentences)`, also the `serving_default` signature: `sentences` is a tf.string Tensor [batch]. Returns
  a dict of int32 Tensors [batch, default_seq_length]: `input_word_ids` ([CLS] wordpieces [SEP], truncated
  to fit, then padded with [PAD]), `input_mask` (1 on tokens, 0 on padding) and `input_type_ids` (all 0).
- `obj.tokenize(sentences)`: tf.string [batch] -> int32 RaggedTensor [batch, (words), (wordpieces)].
- `obj.tokenize.get_special_tokens_dict()`: a dict of int32 scalars `vocab_size`, `start_of_sequence_id`
  ([CLS]), `end_of_segment_id` ([SEP]), `padding_id` ([PAD]) and `mask_id` ([MASK]; left out if the vocab
  has none).
- `obj.bert_pack_inputs(segments, seq_length=None)`: `segments` is a list of one or two int32 RaggedTensors
  [batch, (words), (wordpieces)] or [batch, (tokens)]. Packs [CLS] a [SEP] (b [SEP]), truncating round-robin
  over the segments, pads to `seq_length` and returns the dict above, shaped [batch, seq_length], with type
  id 1 on b [SEP]. `seq_length` is a Python int or an int32 scalar Tensor (it may be computed at run time,
  e.g. a batch's longest length) from len(segments) + 1 to max_seq_length; None means default_seq_length.
- Attributes: `vocab_file` (an Asset, `assets/vocab.txt`: the vocab travels inside the SavedModel),
  `do_lower_case` (bool), `vocab_size`, `default_seq_length` and `max_seq_length` (int32), all non-trainable
  scalar Variables.

Tokenization gives the ids of Hugging Face's BertTokenizer for the same vocab and casing (transformers 5;
BertTokenizerFast before: the `tokenizers` backend that sentence-transformers uses), where tensorflow_text's
BertTokenizer differs on control and format characters, case folding and long words. Steps, all in the graph:

1. Special tokens ([CLS], [SEP], [PAD], [MASK], [UNK]) written in the raw text are split out and keep their
   ids, as Hugging Face's added tokens do (TF Hub's preprocessors split them like punctuation).
2. Clean: NUL, U+FFFD and characters of category C (control, format, private use) are deleted, except tab,
   newline and carriage return, which become spaces like category Z. Unassigned code points stay.
3. If do_lower_case: NFD, nonspacing marks (Mn) dropped, then each character lowercased on its own (Python's
   str.lower at export, baked into the SavedModel; not case folding: 'ß' and 'ς' stay, 'Σ' is always 'σ').
4. Words end at whitespace; each punctuation character (ASCII symbols, category P) and each CJK ideograph
   is a word of its own.
5. WordPiece, greedy longest match first; a word of more than 100 characters (not bytes) is [UNK].

Character categories are those of `tokenizers` (Unicode 8), not RE2's, through the code point lists below.
Residual differences, which change ids only if the vocab holds such characters (no BERT vocab does): the
lowercase of letters encoded in Unicode 15 and 16 (e.g. U+A7CB, U+10D50..U+10D65, U+16EA0..U+16EB8) follows
the exporting Python's tables (Unicode 14 in 3.11), and decompositions new in Unicode 16 (e.g. U+105C9,
U+16121..U+16128) follow tensorflow-text's ICU.

Deviations from TF Hub's BERT preprocessors: step 1; no `tokenize_with_offsets`; `seq_length` is checked
at run time. Truncation of pairs is round-robin as in TF Hub: when both segments are too long for an odd
budget, the first gets the extra token, where Hugging Face's "longest_first" gives it to the longer one
(the second on a tie).
"""

import collections
import contextlib
import os
import re
import sys
import tempfile

import tensorflow as tf
import tensorflow_text as text

from model.word_patterns import (
    CLS,
    MASK,
    NONSPACING_REGEX,
    PAD,
    REMOVED_REGEX,
    SEP,
    SPLIT_KEPT_REGEX,
    SPLIT_REGEX,
    UNK,
    WHITESPACE_REGEX,
)

__all__ = ["build_preprocessor", "export_preprocessor", "read_vocab"]

_VOCAB_ASSET = "vocab.txt"
_REQUIRED_TOKENS = (CLS, SEP, PAD, UNK)
# Hugging Face's max_input_chars_per_word. tensorflow_text counts bytes, so its own limit is set where no
# word of 100 characters (4 UTF-8 bytes at most each) reaches it, and longer words are replaced by [UNK].
_MAX_CHARS_PER_WORD = 100
_MAX_BYTES_PER_WORD = 4 * _MAX_CHARS_PER_WORD

# The character classes (model.word_patterns) come from comparing every code point with `tokenizers`.
# Stands in for a special token through normalization and splitting: one character that is punctuation,
# hence always exactly one word of one wordpiece, whose id is then overwritten.
_PLACEHOLDER = "!"


def read_vocab(vocab_file: str) -> list[str]:
    """Reads a WordPiece vocab file: one token per line, the line number is the id.

    Args:
        vocab_file: Path of the vocab file (any filesystem tf.io.gfile reads, e.g. gs://).

    Returns:
        The tokens, in id order.

    Raises:
        ValueError: If a token appears twice, a line holds a carriage return, or [CLS], [SEP], [PAD] or
            [UNK] is missing.
    """
    with tf.io.gfile.GFile(vocab_file, "rb") as f:
        lines = f.read().decode("utf-8").split("\n")
    if lines and not lines[-1]:
        lines.pop()
    # Line ends as tf.lookup.TextFileInitializer and Hugging Face's load_vocab read them: \n or \r\n.
    vocab = [line.removesuffix("\r") for line in lines]
    if any("\r" in token for token in vocab):
        raise ValueError(f"Vocab file {vocab_file} has a carriage return inside a line; use \\n line ends.")
    duplicates = sorted(token for token, count in collections.Counter(vocab).items() if count > 1)
    if duplicates:
        raise ValueError(f"Vocab file {vocab_file} repeats tokens {duplicates[:5]}; each line must be unique.")
    missing = [token for token in _REQUIRED_TOKENS if token not in set(vocab)]
    if missing:
        raise ValueError(f"Vocab file {vocab_file} lacks the special tokens {missing}; it is not a BERT vocab.")
    return vocab


def _special_tokens_dict(vocab: list[str]) -> dict[str, int]:
    """The token ids TF Hub's get_special_tokens_dict() reports, from the vocab."""
    ids = {token: i for i, token in enumerate(vocab)}
    result = {
        "vocab_size": len(vocab),
        "start_of_sequence_id": ids[CLS],
        "end_of_segment_id": ids[SEP],
        "padding_id": ids[PAD],
    }
    if MASK in ids:
        result["mask_id"] = ids[MASK]
    return result


def _lowercase_table() -> tf.lookup.StaticHashTable:
    """Code point -> lowercase code point, for every character that Python's str.lower() changes."""
    # Hugging Face lowercases character by character (Rust's char::to_lowercase). tf.strings.lower would
    # follow the process's ICU locale (Turkish 'I' -> 'ı') and lowercase a word-final sigma to 'ς'. The one
    # character that lowercases to two, 'İ', never gets here: accent stripping has decomposed it.
    pairs = [(c, ord(chr(c).lower())) for c in range(sys.maxunicode + 1)
             if len(chr(c).lower()) == 1 and chr(c).lower() != chr(c)]
    keys, values = zip(*pairs, strict=True)
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.int64), tf.constant(values, tf.int64)),
        default_value=-1)


class _Tokenize(tf.Module):
    """Sentences to wordpiece ids, [batch] -> [batch, (words), (wordpieces)], with its special tokens."""

    def __init__(self, vocab_file: str, vocab: list[str], do_lower_case: bool):
        super().__init__(name="tokenize")
        self._special_tokens = _special_tokens_dict(vocab)
        self._special_strings = [token for token in (CLS, SEP, PAD, MASK, UNK) if token in set(vocab)]
        self._special_regex = "|".join(re.escape(token) for token in self._special_strings)
        self._special_ids = [vocab.index(token) for token in self._special_strings]
        self._lowercase = _lowercase_table() if do_lower_case else None
        initializer = tf.lookup.TextFileInitializer(
            vocab_file,
            key_dtype=tf.string, key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            value_dtype=tf.int64, value_index=tf.lookup.TextFileIndex.LINE_NUMBER)
        # Kept as an attribute so that a loaded SavedModel still tracks the vocab asset when saved again
        # (the workaround of tensorflow/models text_layers.py for tensorflow/tensorflow#46456).
        self._vocab_initializer = initializer
        # Anonymous: a named table would carry the source vocab path into saved_model.pb as its shared_name.
        self._vocab_table = tf.lookup.StaticHashTable(initializer, default_value=-1, experimental_is_anonymous=True)
        self._wordpiece_tokenizer = text.WordpieceTokenizer(
            self._vocab_table, max_bytes_per_word=_MAX_BYTES_PER_WORD, token_out_type=tf.int64,
            unknown_token=UNK)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentences")], autograph=False)
    def __call__(self, sentences: tf.Tensor) -> tf.RaggedTensor:
        """Tokenizes a batch of sentences into wordpiece ids, int32 [batch, (words), (wordpieces)]."""
        # regex_split ends a string at NUL; U+FFFD is deleted later just the same and breaks no special token.
        sentences = tf.strings.regex_replace(sentences, r"\x00", "\ufffd")
        # Special tokens are matched in the raw text, before any normalization, as Hugging Face does.
        pieces = text.regex_split(sentences, self._special_regex, self._special_regex)  # [batch, (pieces)]
        matches = tf.equal(pieces.flat_values[:, None], tf.constant(self._special_strings)[None, :])
        is_special = tf.reduce_any(matches, axis=1)  # [pieces]
        # The special tokens are distinct, so at most one matches: its id, else 0.
        special_ids = tf.reduce_sum(
            tf.cast(matches, tf.int64) * tf.constant(self._special_ids, tf.int64)[None, :], axis=1)  # [pieces]
        texts = tf.where(is_special, _PLACEHOLDER, pieces.flat_values)  # [pieces]
        words = text.regex_split(self._normalize(texts), SPLIT_REGEX, SPLIT_KEPT_REGEX)  # [pieces, (words)]
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > _MAX_CHARS_PER_WORD
        words = words.with_flat_values(tf.where(too_long, UNK, words.flat_values))
        wordpieces = self._wordpiece_tokenizer.tokenize(words)  # [pieces, (words), (wordpieces)]
        # A special piece became one word of one wordpiece: give it the special token's id. Only integers are
        # gathered per wordpiece: gathering the piece strings copied a whole text once per wordpiece (quadratic).
        piece_of_id = tf.gather(wordpieces.value_rowids(), wordpieces.values.value_rowids())  # [wordpieces]
        ids = tf.where(tf.gather(is_special, piece_of_id), tf.gather(special_ids, piece_of_id),
                       wordpieces.flat_values)
        # [batch, (pieces), (words), (wordpieces)] -> [batch, (words), (wordpieces)]
        batch_size = tf.shape(sentences, out_type=tf.int64)[0]
        word_splits = tf.reshape(tf.gather(wordpieces.row_splits, pieces.row_splits), [batch_size + 1])
        return tf.RaggedTensor.from_row_splits(
            wordpieces.values.with_flat_values(tf.cast(ids, tf.int32)), word_splits, validate=False)

    @tf.function(input_signature=[], autograph=False)
    def get_special_tokens_dict(self) -> dict[str, tf.Tensor]:
        """Returns the ids of the special tokens and the vocab size, as int32 scalars."""
        return {key: tf.constant(value, tf.int32) for key, value in self._special_tokens.items()}

    def _normalize(self, texts: tf.Tensor) -> tf.Tensor:
        """Hugging Face's BertNormalizer: clean the text; if uncased, strip accents, then lowercase."""
        texts = tf.strings.regex_replace(texts, WHITESPACE_REGEX, " ")
        texts = tf.strings.regex_replace(texts, REMOVED_REGEX, r"\1")
        if self._lowercase is None:
            return texts
        texts = tf.strings.regex_replace(text.normalize_utf8(texts, "NFD"), NONSPACING_REGEX, r"\1")
        chars = tf.strings.unicode_decode(texts, "UTF-8")  # [texts, (chars)]
        lowered = self._lowercase.lookup(tf.cast(chars.flat_values, tf.int64))
        lowered = tf.where(lowered >= 0, tf.cast(lowered, tf.int32), chars.flat_values)
        return tf.strings.unicode_encode(chars.with_flat_values(lowered), "UTF-8")


class _BertPackInputs(tf.Module):
    """Packs 1 or 2 tokenized segments into encoder inputs of a chosen length."""

    def __init__(self, special_tokens: dict[str, int], default_seq_length: int, max_seq_length: int):
        super().__init__(name="bert_pack_inputs")
        self._start_of_sequence_id = special_tokens["start_of_sequence_id"]
        self._end_of_segment_id = special_tokens["end_of_segment_id"]
        self._padding_id = special_tokens["padding_id"]
        self._default_seq_length = default_seq_length
        self._max_seq_length = max_seq_length
        # Trace what a SavedModel must serve: 1 or 2 segments, of ragged rank 1 or 2, with seq_length a tensor
        # (a Python int is converted to it when called on the loaded model) or None for the default.
        for ragged_rank in (1, 2):
            for num_segments in (1, 2):
                segments = [tf.RaggedTensorSpec([None] * (ragged_rank + 1), tf.int32, ragged_rank)
                            for _ in range(num_segments)]
                for seq_length in (tf.TensorSpec([], tf.int32), None):
                    self.__call__.get_concrete_function(segments, seq_length=seq_length)

    @tf.function(autograph=False)
    def __call__(self, segments: list[tf.RaggedTensor], seq_length=None) -> dict[str, tf.Tensor]:
        """Packs [CLS] a [SEP] (b [SEP]) into int32 [batch, seq_length] encoder inputs.

        Args:
            segments: A list of one or two int32 RaggedTensors [batch, (words), (wordpieces)] or
                [batch, (tokens)].
            seq_length: The output length, a Python int or an int32 scalar Tensor from len(segments) + 1
                to max_seq_length; None means default_seq_length.

        Returns:
            A dict of int32 Tensors [batch, seq_length]: `input_word_ids`, `input_mask`, `input_type_ids`.
        """
        if not isinstance(segments, (list, tuple)):
            segments = [segments]
        if len(segments) not in (1, 2):
            raise ValueError(f"bert_pack_inputs takes 1 or 2 segments, got {len(segments)}.")
        if seq_length is None:
            seq_length = self._default_seq_length
        seq_length = tf.cast(seq_length, tf.int32)
        num_special_tokens = len(segments) + 1
        checks = [
            tf.debugging.assert_greater_equal(
                seq_length, num_special_tokens,
                message=f"seq_length must leave room for [CLS] and {len(segments)} [SEP]"),
            tf.debugging.assert_less_equal(
                seq_length, self._max_seq_length,
                message=f"seq_length must be at most max_seq_length={self._max_seq_length}"),
        ]
        if len(segments) == 2:
            checks.append(tf.debugging.assert_equal(
                segments[0].nrows(out_type=tf.int32), segments[1].nrows(out_type=tf.int32),
                message="bert_pack_inputs' two segments must have the same number of rows"))
        with tf.control_dependencies(checks):
            seq_length = tf.identity(seq_length)
        segments = [segment.merge_dims(1, -1) if segment.ragged_rank > 1 else segment for segment in segments]
        trimmed = text.RoundRobinTrimmer(seq_length - num_special_tokens).trim(segments)
        word_ids, type_ids = text.combine_segments(
            trimmed, start_of_sequence_id=self._start_of_sequence_id, end_of_segment_id=self._end_of_segment_id)
        input_word_ids, input_mask = text.pad_model_inputs(word_ids, seq_length, pad_value=self._padding_id)
        input_type_ids, _ = text.pad_model_inputs(type_ids, seq_length, pad_value=0)
        shape = tf.stack([segments[0].nrows(out_type=tf.int32), seq_length])
        return {
            "input_word_ids": tf.reshape(tf.cast(input_word_ids, tf.int32), shape),
            "input_mask": tf.reshape(tf.cast(input_mask, tf.int32), shape),
            "input_type_ids": tf.reshape(tf.cast(input_type_ids, tf.int32), shape),
        }


class _Preprocessor(tf.Module):
    """The root object: one-shot preprocessing plus the `tokenize` and `bert_pack_inputs` steps."""

    def __init__(self, vocab_file: str, do_lower_case: bool, default_seq_length: int, max_seq_length: int):
        super().__init__(name="preprocessor")
        vocab = read_vocab(vocab_file)
        self.vocab_file = tf.saved_model.Asset(vocab_file)
        self.do_lower_case = tf.Variable(do_lower_case, trainable=False, name="do_lower_case")
        self.vocab_size = tf.Variable(len(vocab), dtype=tf.int32, trainable=False, name="vocab_size")
        self.default_seq_length = tf.Variable(
            default_seq_length, dtype=tf.int32, trainable=False, name="default_seq_length")
        self.max_seq_length = tf.Variable(
            max_seq_length, dtype=tf.int32, trainable=False, name="max_seq_length")
        self.tokenize = _Tokenize(vocab_file, vocab, do_lower_case)
        self.bert_pack_inputs = _BertPackInputs(
            _special_tokens_dict(vocab), default_seq_length, max_seq_length)
        self._default_seq_length = default_seq_length

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentences")], autograph=False)
    def __call__(self, sentences: tf.Tensor) -> dict[str, tf.Tensor]:
        """Tokenizes and packs single sentences into int32 [batch, default_seq_length] encoder inputs."""
        return self.bert_pack_inputs([self.tokenize(sentences)], seq_length=self._default_seq_length)


def build_preprocessor(vocab_file: str, do_lower_case: bool, default_seq_length: int = 128,
                       max_seq_length: int = 512) -> tf.Module:
    """Builds the preprocessor in memory, ready for `tf.saved_model.save`.

    Args:
        vocab_file: The WordPiece vocab, one token per line. Saving copies it in, so it must still exist then.
        do_lower_case: Whether to lowercase and strip accents; must match the vocab (True for "uncased").
        default_seq_length: The output length of the root call and the default of `bert_pack_inputs`.
        max_seq_length: The largest `seq_length` that `bert_pack_inputs` accepts (the encoder's position
            embeddings).

    Returns:
        A tf.Module implementing the contract in this module's docstring.

    Raises:
        ValueError: If the vocab is not a BERT vocab or the lengths are out of range.
    """
    if max_seq_length < 2:
        raise ValueError(f"max_seq_length must be at least 2, got {max_seq_length}.")
    if not 2 <= default_seq_length <= max_seq_length:
        raise ValueError(
            f"default_seq_length must be from 2 to max_seq_length={max_seq_length}, got {default_seq_length}.")
    return _Preprocessor(vocab_file, bool(do_lower_case), int(default_seq_length), int(max_seq_length))


def export_preprocessor(output_dir: str, *, vocab_file: str, do_lower_case: bool, default_seq_length: int = 128,
                        max_seq_length: int = 512) -> None:
    """Exports the preprocessor as a SavedModel that carries its vocab as the asset `assets/vocab.txt`.

    Args:
        output_dir: Where to write the SavedModel.
        vocab_file: The WordPiece vocab, one token per line (any filesystem tf.io.gfile reads, e.g. gs://).
        do_lower_case: Whether to lowercase and strip accents; must match the vocab (True for "uncased").
        default_seq_length: The output length of the root call and the default of `bert_pack_inputs`.
        max_seq_length: The largest `seq_length` that `bert_pack_inputs` accepts.
    """
    # A local copy under a fixed name: the asset is then always assets/vocab.txt, whatever the source.
    with tempfile.TemporaryDirectory() as tmpdir, _int64_checks_left_out():
        local_vocab_file = os.path.join(tmpdir, _VOCAB_ASSET)
        tf.io.gfile.copy(vocab_file, local_vocab_file)
        preprocessor = build_preprocessor(local_vocab_file, do_lower_case, default_seq_length, max_seq_length)
        signatures = {"serving_default": preprocessor.__call__.get_concrete_function()}
        tf.saved_model.save(preprocessor, output_dir, signatures=signatures)


@contextlib.contextmanager
def _int64_checks_left_out():
    """Traces graphs without the asserts on int64 data, which TensorFlow builds as a cond of two functions.

    Ragged tensors check their int64 row partitions wherever they are built, in tensorflow_text's ops as in
    TensorFlow's, and tf.debugging.Assert guards any data but int32 and strings with a cond: about 300 of the
    preprocessor's 340 functions were the branches of such checks, and loading a SavedModel turns every function
    back into a Python graph, about a second of every run's start (see BENCHMARKS.md). They check row partitions
    that the ops themselves have just made. The checks a caller can trip stay, as asserts on int32 data:
    seq_length's range and the two segments' row counts. No public switch turns these checks off, so the export
    swaps TensorFlow's Assert (which tf.debugging's asserts call) while it traces.
    """
    from tensorflow.python.ops import control_flow_assert

    checked = control_flow_assert.Assert

    def assert_unless_guarded(condition, data, summarize=None, name=None):
        if tf.executing_eagerly() or all(_dtype(item) in (tf.int32, tf.string) for item in data):
            return checked(condition, data, summarize, name)
        return tf.no_op(name=name)

    control_flow_assert.Assert = assert_unless_guarded
    try:
        yield
    finally:
        control_flow_assert.Assert = checked


def _dtype(item) -> tf.DType:
    """The dtype tf.debugging.Assert would convert `item` to, without adding a constant to the graph."""
    if isinstance(item, (str, bytes)):
        return tf.string
    try:
        return tf.as_dtype(item.dtype)
    except (AttributeError, TypeError):  # A Python value, or a numpy dtype TensorFlow names otherwise (unicode).
        return tf.convert_to_tensor(item).dtype
