"""Long documents cut into chunks: whole words, token-exact, covering every wordpiece; chunk vectors as the
references give them (sentence-transformers for windows, transformers' token vectors for late chunking)."""

import math

import numpy as np
import pytest

import runtime
from runtime.chunking import ChunkSettings, check_chunking, plan_chunks, plan_windows, text_segments


def _plan(lengths, tokens, overlap):
    lengths = np.asarray(lengths)
    starts = np.arange(len(lengths)) * 10
    return plan_chunks(lengths, starts, starts + 5, tokens, overlap)


@pytest.mark.parametrize("tokens,overlap", [(8, 0), (8, 3), (16, 15), (5, 4), (1, 0)])
def test_chunks_are_runs_of_whole_words_within_the_size_that_cover_every_wordpiece(tokens, overlap):
    lengths = np.random.default_rng(tokens * 10 + overlap).integers(0, 4, size=300)
    chunks = _plan(lengths, tokens, overlap)
    cumulative = np.concatenate([[0], np.cumsum(lengths)])
    boundaries = set(cumulative.tolist())
    # Positions inside a word longer than a whole chunk, the only words ever cut.
    boundaries |= {int(p) for w in np.flatnonzero(lengths > tokens) for p in range(cumulative[w], cumulative[w + 1])}
    covered = np.zeros(int(lengths.sum()), bool)
    for previous, chunk in zip([None, *chunks], chunks, strict=False):
        assert 0 < chunk.piece_end - chunk.piece_start <= tokens
        assert {chunk.piece_start, chunk.piece_end} <= boundaries  # No word of at most `tokens` is cut.
        covered[chunk.piece_start:chunk.piece_end] = True
        if previous is not None:
            assert chunk.piece_end > previous.piece_end  # Always moves on...
            assert 0 <= previous.piece_end - chunk.piece_start <= overlap  # ...sharing at most the overlap.
    assert covered.all()
    assert [(c.index, c.count) for c in chunks] == [(i, len(chunks)) for i in range(len(chunks))]


def test_the_overlap_is_the_longest_whole_word_tail_within_it():
    assert [(c.piece_start, c.piece_end) for c in _plan([1] * 20, 8, 3)] == [(0, 8), (5, 13), (10, 18), (15, 20)]
    # Words of 2: a tail of 3 wordpieces holds one whole word only.
    assert [(c.piece_start, c.piece_end) for c in _plan([2] * 8, 8, 3)] == [(0, 8), (6, 14), (12, 16)]


def test_a_word_longer_than_a_chunk_is_cut_alone_and_each_part_names_the_whole_word():
    chunks = _plan([2, 20, 2], 8, 2)
    assert [(c.piece_start, c.piece_end) for c in chunks] == [(0, 2), (2, 10), (8, 16), (14, 22), (22, 24)]
    assert [(c.char_start, c.char_end) for c in chunks[1:4]] == [(10, 15)] * 3


def test_a_text_without_wordpieces_is_one_empty_chunk():
    assert [(c.piece_start, c.piece_end, c.count) for c in _plan([], 8, 2)] == [(0, 0, 1)]
    assert [(c.piece_start, c.piece_end, c.char_start, c.char_end) for c in _plan([0, 0], 8, 2)] == [(0, 0, 0, 15)]


@pytest.mark.parametrize("pieces,width,overlap", [(1000, 126, 16), (1618, 510, 32), (511, 510, 32), (127, 126, 16),
                                                 (126, 126, 16), (0, 126, 16), (5000, 510, 63)])
def test_late_windows_own_every_wordpiece_once_with_context_on_both_sides(pieces, width, overlap):
    windows = plan_windows(pieces, width, overlap)
    assert windows[0].own_start == 0 and windows[-1].own_end == windows[-1].piece_end == pieces
    for previous, window in zip(windows, windows[1:], strict=False):
        assert window.own_start == previous.own_end  # The owned parts tile the document.
        assert previous.piece_end - window.piece_start == overlap
    for window in windows:
        assert 0 < window.piece_end - window.piece_start <= width or pieces == 0
        assert window.piece_start <= window.own_start <= window.own_end <= window.piece_end
        # Each owned wordpiece sees at least half the overlap on either side, but at the document's ends.
        assert window.own_start - window.piece_start >= (overlap // 2 if window.piece_start > 0 else 0)
        assert window.piece_end - window.own_end >= (overlap // 2 if window.piece_end < pieces else 0)
    # Each wordpiece is encoded once, and the overlaps once more: less than chunks of windows mode cost.
    assert sum(w.piece_end - w.piece_start for w in windows) <= pieces + overlap * (len(windows) - 1)
    assert len(windows) == max(1, math.ceil((pieces - overlap) / (width - overlap)))


def test_late_windows_default_to_an_eighth_of_a_narrow_window():
    assert plan_windows(1000, 510)[1].piece_start == 510 - 32
    assert plan_windows(1000, 126)[1].piece_start == 126 - 15


def test_late_chunks_of_a_long_text_pool_each_wordpiece_from_the_window_that_owns_it(tiny_model_dir):
    """Several windows: every chunk, straddling windows or not, is the mean of its wordpieces' vectors, each as
    the window owning it computed it ([CLS] window [SEP] through the encoder alone)."""
    embedder = runtime.load(f"{tiny_model_dir}/encoder", f"{tiny_model_dir}/preprocessor", seq_length=34,
                            pooling="mean", normalize=False)
    text = _HOSTILE * 3
    settings = ChunkSettings("late", 12, 4)
    chunks = embedder.embed_documents([text, "a dog ran"], settings).documents[0]
    [(pieces, planned)] = embedder.chunk_documents([text], settings)
    windows = plan_windows(len(pieces), 32)
    assert len(windows) > 3 and any(w.own_start < c.piece_start < w.own_end < c.piece_end
                                    for w in windows for c in planned)  # Some chunk straddles two windows.
    vectors = np.zeros((len(pieces), chunks[0].vector.shape[0]), np.float32)
    for window in windows:
        word_ids, mask = embedder._pack_pieces([pieces[window.piece_start:window.piece_end]],  # noqa: SLF001
                                               window.piece_end - window.piece_start + 2)
        sequence = embedder._encode_tokens(word_ids, mask, np.zeros_like(word_ids)).numpy()[0]  # noqa: SLF001
        own = slice(1 + window.own_start - window.piece_start, 1 + window.own_end - window.piece_start)
        vectors[window.own_start:window.own_end] = sequence[own]
    assert [(c.char_start, c.char_end) for c in chunks] == [(c.char_start, c.char_end) for c in planned]
    for chunk, plan in zip(chunks, planned, strict=True):
        np.testing.assert_allclose(chunk.vector, vectors[plan.piece_start:plan.piece_end].mean(0), atol=1e-5)
        assert chunk.tokens == plan.piece_end - plan.piece_start


@pytest.mark.parametrize("tokens,overlap,seq_length,flags", [
    (8, 8, 128, "--chunk_overlap 8"), (8, 9, 128, "--chunk_tokens 8"), (127, 0, 128, "--seq_length 128"),
])
def test_sizes_that_do_not_fit_are_refused_naming_the_flags(tokens, overlap, seq_length, flags):
    with pytest.raises(ValueError, match=flags):
        check_chunking(ChunkSettings("windows", tokens, overlap), seq_length)


# Hostile text for boundaries: punctuation, CJK, emoji, control and format characters, a NUL, special tokens
# written in the text, whitespace runs, a word of 31 wordpieces, a 150-character word ([UNK]), accents.
_LONG_WORD = "playing" + "ing" * 30  # 31 wordpieces: play ##ing ##ing ...
_HOSTILE = ("The cat sat on the mat. Hello, world!  I read a book\t\tand\n\nyou ran? 東京の猫 😀 dog\x00cat "
            "un\u200bbelievable [SEP] it's " + _LONG_WORD + " " + "x" * 150 + " café naïve ... A dog,cat;sat ")


@pytest.fixture(scope="module")
def tiny_embedder(tiny_model_dir):
    return runtime.load(f"{tiny_model_dir}/encoder", f"{tiny_model_dir}/preprocessor", seq_length=18,
                        pooling="mean")


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_vocab_file):
    """Hugging Face's tokenizer for the tiny model's vocabulary: the reference."""
    from transformers import BertTokenizer

    from model.preprocessor import read_vocab

    return BertTokenizer(vocab={token: i for i, token in enumerate(read_vocab(tiny_vocab_file))}, do_lower_case=False)


@pytest.mark.parametrize("tokens,overlap", [(16, 4), (7, 0)])
def test_each_chunk_text_tokenizes_to_exactly_its_wordpieces(tiny_embedder, tiny_tokenizer, tokens, overlap):
    text = _HOSTILE * 3
    [(pieces, chunks)] = tiny_embedder.chunk_documents([text], ChunkSettings("windows", tokens, overlap))
    reference = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert pieces.tolist() == reference  # Word by word, the document's wordpieces are Hugging Face's.
    cut_words = 0
    for chunk in chunks:
        chunk_text = text[chunk.char_start:chunk.char_end]
        chunk_ids = tiny_tokenizer(chunk_text, add_special_tokens=False)["input_ids"]
        if chunk_text == _LONG_WORD:  # A part of the word longer than a chunk: it names the whole word.
            cut_words += 1
            continue
        assert chunk_ids == pieces[chunk.piece_start:chunk.piece_end].tolist(), chunk_text
    assert cut_words == 3 * math.ceil((31 - overlap) / (tokens - overlap))  # Cut only that word.


def test_windows_vectors_are_the_texts_own_and_a_short_text_is_as_unchunked(tiny_model_dir):
    embedder = runtime.load(f"{tiny_model_dir}/encoder", f"{tiny_model_dir}/preprocessor", seq_length=34,
                            pooling="mean", normalize=True)
    text = _HOSTILE * 2
    [chunks] = embedder.embed_documents([text, "a dog ran"], ChunkSettings("windows", 32, 8)).documents[:1]
    alone = embedder.embed([(text[c.char_start:c.char_end],) for c in chunks]).embeddings
    for chunk, reference in zip(chunks, alone, strict=True):
        if chunk.tokens == reference.tokens:  # Not a part of the word cut between its wordpieces.
            np.testing.assert_allclose(chunk.vector, reference.vector, atol=1e-5)
    short = embedder.embed_documents(["a dog ran"], ChunkSettings("windows", 32, 8)).documents[0]
    assert len(short) == 1
    np.testing.assert_allclose(short[0].vector, embedder.embed([("a dog ran",)]).embeddings[0].vector, atol=1e-6)


@pytest.mark.parametrize("mode", ["windows", "late"])
def test_loading_for_chunking_traces_what_chunking_runs_so_documents_trace_nothing(tiny_model_dir, mode):
    """The encode function of the mode and the word splitting are traced and run once in the load (their first
    call optimises the graph: seconds at bf16, BENCHMARKS.md), not in the first batch of documents."""
    settings = ChunkSettings(mode, 16, 4)
    embedder = runtime.load(f"{tiny_model_dir}/encoder", f"{tiny_model_dir}/preprocessor", seq_length=34,
                            pooling="mean", chunking=settings)
    functions = [embedder._encode_tokens if mode == "late" else embedder.encode, embedder._split_words]
    assert [function.experimental_get_tracing_count() for function in functions] == [1, 1]
    embedder.embed_documents([_HOSTILE * 2, "a dog ran"], settings)
    assert [function.experimental_get_tracing_count() for function in functions] == [1, 1]


@pytest.mark.slow
def test_chunks_match_sentence_transformers_and_late_chunks_match_transformers(minilm_dir, tmp_path):
    """Real all-MiniLM-L6-v2: windows against sentence-transformers on each chunk's text; late chunking against
    the mean of transformers' last_hidden_state over each chunk's tokens in the whole document."""
    import subprocess
    import sys

    import torch
    from sentence_transformers import SentenceTransformer

    model = tmp_path / "m"
    exported = subprocess.run([sys.executable, "-m", "model.export", "--checkpoint", minilm_dir, "--output_dir",
                               str(model)], capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-2000:]
    document = ("Late chunking encodes a whole document first and pools each chunk from contextual token vectors. "
                "Naive chunking embeds every chunk alone, so a chunk that says 'its population' no longer knows "
                "which city it is about. Berlin is the capital of Germany; its population is 3.85 million. ") * 3
    reference = SentenceTransformer(minilm_dir, device="cpu")
    windows = runtime.load(f"{model}/encoder", f"{model}/preprocessor", seq_length=66, pooling="mean",
                           normalize=True)
    chunks = windows.embed_documents([document], ChunkSettings("windows", 64, 8)).documents[0]
    assert len(chunks) > 3
    expected = reference.encode([document[c.char_start:c.char_end] for c in chunks], normalize_embeddings=True)
    assert (np.stack([c.vector for c in chunks]) * expected).sum(1).min() >= 0.99999

    late = runtime.load(f"{model}/encoder", f"{model}/preprocessor", seq_length=256, pooling="mean",
                        normalize=True)
    chunks = late.embed_documents([document], ChunkSettings("late", 64, 8)).documents[0]
    tokenizer, transformer = reference.tokenizer, reference[0].auto_model
    encoded = tokenizer(document, return_offsets_mapping=True, return_tensors="pt")
    assert encoded["input_ids"].shape[1] <= 256  # One window: the whole document's encoding is the reference.
    with torch.no_grad():
        hidden = transformer(input_ids=encoded["input_ids"],
                             attention_mask=encoded["attention_mask"]).last_hidden_state[0].numpy()
    offsets = encoded["offset_mapping"][0].numpy()
    for chunk in chunks:
        positions = [i for i, (start, end) in enumerate(offsets)
                     if end > start and start >= chunk.char_start and end <= chunk.char_end]
        assert len(positions) == chunk.tokens
        vector = hidden[positions].mean(0)
        assert vector @ chunk.vector / np.linalg.norm(vector) >= 0.99999


@pytest.mark.parametrize("text", [_HOSTILE * 20, "東京の猫と犬。" * 200, "nospace" * 300])
def test_segments_of_a_long_text_tokenize_as_the_whole_does(text, tiny_tokenizer):
    starts = text_segments(text, 50)
    ends = [*starts[1:], len(text)]
    assert starts[0] == 0 and all(a < b for a, b in zip(starts, ends, strict=True))
    if " " in text or "。" in text:
        assert max(b - a for a, b in zip(starts, ends, strict=True)) <= 50 + 151  # The longest run without a cut.
    pieces = [tiny_tokenizer(text[a:b], add_special_tokens=False)["input_ids"] for a, b in zip(starts, ends,
                                                                                                  strict=True)]
    assert sum(pieces, []) == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_long_text_is_tokenized_in_bounded_calls_with_the_same_chunks(tiny_embedder, monkeypatch):
    from runtime import engine

    text = _HOSTILE * 10
    whole = tiny_embedder.chunk_documents([text, "a dog"], ChunkSettings("windows", 16, 4))
    calls = []
    original = engine.Embedder._tokenize_call
    monkeypatch.setattr(engine, "TOKENIZE_CHARS", 300)
    monkeypatch.setattr(engine.Embedder, "_tokenize_call", lambda self, texts: calls.append(texts) or original(
        self, texts))
    cut = tiny_embedder.chunk_documents([text, "a dog"], ChunkSettings("windows", 16, 4))
    assert len(calls) > 5 and max(sum(len(t) for t in call) for call in calls) <= 300 + len(_LONG_WORD) + 150
    assert [(ids.tolist(), chunks) for ids, chunks in cut] == [(ids.tolist(), chunks) for ids, chunks in whole]
