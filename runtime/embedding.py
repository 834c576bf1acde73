"""What the engine returns: one Embedding per input, and a batch's Embeddings with the tokens it computed."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Embedding", "EmbeddedBatch"]


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
