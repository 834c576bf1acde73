"""What the engine returns: one Embedding per input, and a batch's Embeddings with the tokens it computed."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Embedding", "EmbeddedBatch", "ChunkEmbedding", "EmbeddedDocuments"]


class Embedding(NamedTuple):
    """The embedding of one input: what the sinks write.

    Attributes:
      vector: float32 [hidden], pooled (and normalised when asked).
      tokens: real tokens fed to the encoder, [CLS] and [SEP] included.
      truncated: whether the packed input was cut to seq_length.
      sequence: float32 [tokens, hidden] token vectors, or None unless asked for.
    """

    vector: np.ndarray
    tokens: int
    truncated: bool
    sequence: np.ndarray | None = None


class EmbeddedBatch(NamedTuple):
    """What Embedder.embed returns for a batch: plain picklable data, so it crosses process boundaries.

    Attributes:
      embeddings: one Embedding per input, in input order.
      tokens_computed: padded tokens the encoder computed for the batch (every sub-batch's rows x its width).
    """

    embeddings: list[Embedding]
    tokens_computed: int
    unknown_only: int = 0  # Inputs whose wordpieces were all [UNK] (Embedder.unknown_id): embedded, but meaningless.


class ChunkEmbedding(NamedTuple):
    """The embedding of one chunk of a document (runtime.chunking).

    Attributes:
      vector: float32 [hidden].
      tokens: the chunk's wordpieces, plus [CLS] and [SEP] when it was encoded alone ("windows").
      index, count: the chunk's place among its document's chunks, from 0.
      char_start, char_end: the chunk's text is text[char_start:char_end] (code points).
    """

    vector: np.ndarray
    tokens: int
    index: int
    count: int
    char_start: int
    char_end: int


class EmbeddedDocuments(NamedTuple):
    """What Embedder.embed_documents returns: each document's chunk embeddings, and the padded tokens computed."""

    documents: list[list[ChunkEmbedding]]
    tokens_computed: int
    unknown_only: int = 0  # Documents whose wordpieces were all [UNK], as in EmbeddedBatch.
