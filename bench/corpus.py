"""A generated corpus whose WordPiece lengths follow those of real short English texts.

The target distribution was measured on 15k real English texts (short quotations): p50 24, p90 88, p99 255,
mean 40 WordPiece tokens, [CLS] and [SEP] not counted. A log-normal with median 24 and sigma 1.014 matches all
four (p90 88, p99 255, mean 40). Each text is that many words drawn from the vocabulary's whole lowercase
words, Zipf-weighted by their rank in the vocabulary (BERT vocabularies list words by frequency), so every
word is exactly one WordPiece token under an uncased tokenizer. The words make no sentences: the encoder's
cost depends on the lengths only. Generated, not shipped: no licence question.
"""

from __future__ import annotations

import json
import re

import numpy as np

__all__ = ["MEDIAN_TOKENS", "SIGMA", "sample_lengths", "word_distribution", "make_texts", "write_jsonl", "length_stats"]

MEDIAN_TOKENS = 24
SIGMA = 1.014
_MAX_TOKENS = 512
_WORD = re.compile(r"[a-z]{2,}")


def sample_lengths(n: int, seed: int = 0) -> np.ndarray:
    """n WordPiece lengths from the log-normal above, at least 1 and at most 512."""
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.normal(np.log(MEDIAN_TOKENS), SIGMA, n))
    return np.clip(np.rint(lengths), 1, _MAX_TOKENS).astype(np.int64)


def _words(vocab_file: str) -> list[str]:
    with open(vocab_file, encoding="utf-8") as f:
        words = [line.strip() for line in f if _WORD.fullmatch(line.strip())]
    if len(words) < 100:
        raise ValueError(f"{vocab_file} has only {len(words)} whole lowercase words; is it an uncased BERT vocab?")
    return words


def word_distribution(vocab_file: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole lowercase words of `vocab_file` and the probability of drawing each: Zipf over vocabulary rank."""
    words = np.array(_words(vocab_file))
    weights = 1.0 / (np.arange(len(words)) + 10.0)
    return words, weights / weights.sum()


def make_texts(vocab_file: str, n: int, seed: int = 0) -> list[str]:
    """n texts of words from `vocab_file`, lengths from sample_lengths(n, seed)."""
    words, weights = word_distribution(vocab_file)
    rng = np.random.default_rng(seed + 1)
    return [" ".join(rng.choice(words, size=int(length), p=weights)) for length in sample_lengths(n, seed)]


def write_jsonl(texts: list[str], path: str) -> None:
    """One {"id": "t00000", "text": ...} object per line."""
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"t{i:05d}", "text": text}) + "\n")


def length_stats(lengths) -> dict[str, float]:
    """p50, p90, p99 and mean of a sequence of lengths."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return {"p50": float(np.percentile(lengths, 50)), "p90": float(np.percentile(lengths, 90)),
            "p99": float(np.percentile(lengths, 99)), "mean": float(lengths.mean())}
