"""Long documents cut into chunks of whole words, token-exact: chunk settings, chunk plans, late-chunking windows.

A document is split into words as the model's basic tokenizer splits them (whitespace, each punctuation
character, each CJK ideograph, special tokens written in the text), each word is tokenized on its own with the
model's preprocessor, and chunks are runs of whole words of at most `tokens` wordpieces. So a chunk's text,
`text[char_start:char_end]`, tokenizes to exactly the chunk's wordpieces (a word longer than a whole chunk is the
one exception: it is cut between its wordpieces, and each part names the whole word's characters).

Pure numpy here; the Embedder (runtime.engine) tokenizes and encodes.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

__all__ = ["CHUNKING_MODES", "DEFAULT_CHUNK_TOKENS", "DEFAULT_CHUNK_OVERLAP", "LATE_WINDOW_OVERLAP", "ChunkSettings",
           "Chunk", "Window", "check_chunking", "default_chunk_tokens", "plan_chunks", "plan_windows", "char_offsets",
           "text_segments"]

CHUNKING_MODES = ("none", "windows", "late")
# Common practice for retrieval chunks (LangChain's and LlamaIndex's token splitters, most RAG guides).
DEFAULT_CHUNK_TOKENS = 256
DEFAULT_CHUNK_OVERLAP = 32
# Late chunking: wordpieces shared by consecutive windows of a long document (plan_windows). Each wordpiece sees
# at least half of it as context on either side; more costs encoder time (see BENCHMARKS.md).
LATE_WINDOW_OVERLAP = 32
_SPECIAL_TOKENS = 2  # [CLS] and [SEP] around every encoded chunk or window.
# Characters a text may be cut just before without moving a word boundary: whitespace ends a word, and these
# punctuation characters and CJK ideographs are always words of their own (no special token holds them).
_SAFE_CUT = re.compile(r"[ \t\n\r.,;:!?\u3001\u3002\u4e00-\u9fff]")


class ChunkSettings(NamedTuple):
    """How documents are cut: mode "windows" (each chunk encoded alone) or "late" (chunks pooled from the
    token vectors of a whole window of context), chunk size and overlap in wordpieces."""

    mode: str
    tokens: int = DEFAULT_CHUNK_TOKENS
    overlap: int = DEFAULT_CHUNK_OVERLAP

    def describe(self) -> str:
        """What the model fingerprint hashes of it."""
        described = f"chunking={self.mode};chunk_tokens={self.tokens};chunk_overlap={self.overlap}"
        # Late chunking's windows (plan_windows) change its vectors: a new layout is a new fingerprint.
        return described + (f";late_windows=owned,{LATE_WINDOW_OVERLAP}" if self.mode == "late" else "")


class Chunk(NamedTuple):
    """One chunk of a document.

    Attributes:
      index, count: the chunk's place among the document's chunks, from 0.
      char_start, char_end: the chunk's text, text[char_start:char_end], in code points of the original text.
      piece_start, piece_end: the chunk's wordpieces, a range of the document's wordpieces.
    """

    index: int
    count: int
    char_start: int
    char_end: int
    piece_start: int
    piece_end: int


class Window(NamedTuple):
    """A run of a document's wordpieces encoded at once for late chunking, and the part of it whose token vectors
    are kept: consecutive windows overlap, and each wordpiece's vector comes from the one window that owns it."""

    piece_start: int
    piece_end: int
    own_start: int
    own_end: int


def default_chunk_tokens(model_seq_length: int | None) -> int:
    """DEFAULT_CHUNK_TOKENS, or fewer when the model's own longest input (a sentence-transformers checkpoint's
    max_seq_length) holds less: chunk vectors then equal what the model's own library gives for the chunk text."""
    if model_seq_length is None:
        return DEFAULT_CHUNK_TOKENS
    return max(1, min(DEFAULT_CHUNK_TOKENS, model_seq_length - _SPECIAL_TOKENS))


def check_chunking(settings: ChunkSettings, seq_length: int) -> None:
    """Refuses a chunk size, overlap and --seq_length that do not fit together.

    Raises:
      ValueError: naming the flags, one line.
    """
    if settings.mode not in CHUNKING_MODES:
        raise ValueError(f"--chunking must be one of {', '.join(CHUNKING_MODES)}, not {settings.mode!r}.")
    if settings.tokens < 1:
        raise ValueError(f"--chunk_tokens must be at least 1, not {settings.tokens}.")
    if not 0 <= settings.overlap < settings.tokens:
        raise ValueError(f"--chunk_overlap {settings.overlap} must be from 0 to less than --chunk_tokens "
                         f"{settings.tokens}.")
    if settings.tokens + _SPECIAL_TOKENS > seq_length:
        raise ValueError(f"--chunk_tokens {settings.tokens} plus [CLS] and [SEP] exceeds --seq_length {seq_length}; "
                         f"use --chunk_tokens {seq_length - _SPECIAL_TOKENS} or less, or a longer --seq_length.")


def char_offsets(text: str, byte_offsets: np.ndarray) -> np.ndarray:
    """Byte offsets into `text`'s UTF-8 encoding -> offsets in code points (what Python's str indexes)."""
    encoded = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)
    starts_char = (encoded & 0xC0) != 0x80  # Every byte but a continuation byte starts a code point.
    chars_before = np.concatenate([[0], np.cumsum(starts_char)])
    return chars_before[np.asarray(byte_offsets, np.int64)]


def text_segments(text: str, limit: int) -> list[int]:
    """Where to cut a long text into segments of about `limit` code points (at most, where the text allows)
    that tokenize, one after the other, exactly as the whole text does: each cut falls just before whitespace,
    a sentence punctuation character or a CJK ideograph. Tokenizing a several-MB text in segments keeps the
    tokenizer's memory bounded.

    Returns:
      The segments' start offsets, 0 first.
    """
    starts = [0]
    while len(text) - starts[-1] > limit:
        low, high = starts[-1] + max(1, limit // 2), starts[-1] + limit
        cut = text.rfind(" ", low, high)
        if cut <= starts[-1]:
            cut = max((match.start() for match in _SAFE_CUT.finditer(text, low, high)), default=-1)
        if cut <= starts[-1]:  # Nothing safe within the limit: the first safe place after it, else the end.
            match = _SAFE_CUT.search(text, high)
            if match is None:
                break
            cut = match.start()
        starts.append(cut)
    return starts


def plan_chunks(word_pieces: np.ndarray, word_starts: np.ndarray, word_ends: np.ndarray, tokens: int,
                overlap: int) -> list[Chunk]:
    """Cuts a document of words into chunks of whole words covering every wordpiece.

    Each chunk takes as many whole words as fit in `tokens` wordpieces; the next starts at the longest tail of
    whole words within `overlap` wordpieces (it always moves on by at least one word). A word longer than
    `tokens` is cut alone into parts of `tokens` wordpieces overlapping by `overlap`.

    Args:
      word_pieces: wordpieces per word, in order (0 for a word the tokenizer drops entirely).
      word_starts, word_ends: each word's character span.
      tokens, overlap: --chunk_tokens and --chunk_overlap.

    Returns:
      The chunks in order; one chunk of no wordpieces (spanning the text's words, if any) for a document
      without any.
    """
    word_pieces = np.asarray(word_pieces, np.int64)
    cumulative = np.concatenate([[0], np.cumsum(word_pieces)])
    words = len(word_pieces)
    spans = []  # (first word, last word + 1, piece start, piece end)
    start = 0
    while start < words:
        end = int(np.searchsorted(cumulative, cumulative[start] + tokens, side="right")) - 1
        if end == start:  # One word longer than a whole chunk.
            spans += [(start, start + 1, begin, min(begin + tokens, cumulative[start + 1]))
                      for begin in range(int(cumulative[start]), int(cumulative[start + 1]) - overlap,
                                         tokens - overlap)]
            start += 1
            continue
        if cumulative[end] == cumulative[start] and cumulative[end] < cumulative[-1]:
            start = end  # Words without wordpieces before a word too long for a chunk: nothing to embed.
            continue
        spans.append((start, end, int(cumulative[start]), int(cumulative[end])))
        if end >= words or cumulative[end] == cumulative[-1]:
            break
        # The longest tail within the overlap, shortened until the next word fits beside it.
        tail_start = int(np.searchsorted(cumulative, cumulative[end] - overlap, side="left"))
        fits_next = int(np.searchsorted(cumulative, cumulative[end + 1] - tokens, side="left"))
        start = min(max(tail_start, fits_next, start + 1), end)
    if not spans:
        return [Chunk(0, 1, int(word_starts[0]) if words else 0, int(word_ends[-1]) if words else 0, 0, 0)]
    return [Chunk(index, len(spans), int(word_starts[first]), int(word_ends[last - 1]), int(begin), int(end))
            for index, (first, last, begin, end) in enumerate(spans)]


def plan_windows(pieces: int, width: int, overlap: int | None = None) -> list[Window]:
    """Covers a document's wordpieces with windows of at most `width` for late chunking.

    Consecutive windows overlap by `overlap` wordpieces and split the overlap between them: each wordpiece's token
    vector is taken from the window that owns it, where it has at least overlap // 2 wordpieces of context on
    each side (fewer only at the document's ends), and a chunk is pooled from its wordpieces' vectors whichever
    windows own them. So every wordpiece is encoded about width / (width - overlap) times, less than windows of
    whole chunks cost (see BENCHMARKS.md), as the late chunking paper's "long late chunking" does. A document
    of at most `width` wordpieces is one window.

    Args:
      pieces: the document's wordpieces.
      width: wordpieces per window (--seq_length less [CLS] and [SEP]).
      overlap: wordpieces shared by consecutive windows, less than width. Default: LATE_WINDOW_OVERLAP, or an
        eighth of a narrow window.
    """
    if overlap is None:
        overlap = min(LATE_WINDOW_OVERLAP, width // 8)
    if pieces <= width:
        return [Window(0, pieces, 0, pieces)]
    stride = width - overlap
    starts = list(range(0, pieces - overlap, stride))  # The last window ends at the document's end, shorter.
    cuts = [0] + [start + overlap // 2 for start in starts[1:]] + [pieces]
    return [Window(start, min(start + width, pieces), cuts[i], cuts[i + 1]) for i, start in enumerate(starts)]
