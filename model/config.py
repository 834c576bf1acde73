"""Encoder configurations: named presets and Hugging Face `config.json` files."""

from __future__ import annotations

import dataclasses
import json
import os

__all__ = ["EncoderConfig", "PRESETS", "preset", "from_hf_config", "load_hf_config"]

_FAMILIES = ("distilbert", "bert")
# Hugging Face activation names -> whether the tanh approximation is used.
_ACTIVATIONS = {"gelu": False, "gelu_python": False, "gelu_new": True, "gelu_pytorch_tanh": True,
                "gelu_fast": True}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of a DistilBERT- or BERT-family encoder.

    Attributes:
      family: "distilbert" (no token-type embeddings, no pooler) or "bert" (both).
      vocab_size: rows of the word embedding table.
      hidden_size: width of every hidden state.
      num_layers: transformer blocks.
      num_heads: attention heads; must divide hidden_size.
      intermediate_size: width of the feed-forward layer.
      max_position_embeddings: the longest sequence the model accepts.
      type_vocab_size: rows of the token-type table (BERT only; 0 for DistilBERT).
      hidden_act: a Hugging Face activation name ("gelu" is the exact erf form).
      layer_norm_eps: LayerNorm epsilon.
      dropout: dropout on embeddings and block outputs when training.
      attention_dropout: dropout on attention probabilities when training.
      initializer_range: standard deviation for freshly initialised weights.
    """

    family: str = "distilbert"
    vocab_size: int = 28996
    hidden_size: int = 768
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.family not in _FAMILIES:
            raise ValueError(f"Unsupported model family {self.family!r}; expected one of {_FAMILIES}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}.")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"Unsupported activation {self.hidden_act!r}; expected one of {sorted(_ACTIVATIONS)}.")
        if self.family == "bert" and self.type_vocab_size < 1:
            raise ValueError("A BERT-family config needs type_vocab_size >= 1.")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def approximate_gelu(self) -> bool:
        return _ACTIVATIONS[self.hidden_act]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {
    "distilbert_en_cased_L-6_H-768_A-12": EncoderConfig(),
    # Tiny presets for tests: every dimension a different size so a swapped axis fails loudly.
    "distilbert_tiny": EncoderConfig(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4,
                                     intermediate_size=37, max_position_embeddings=128),
    "bert_tiny": EncoderConfig(family="bert", vocab_size=99, hidden_size=32, num_layers=2, num_heads=4,
                               intermediate_size=37, max_position_embeddings=128, type_vocab_size=2),
}


def preset(name: str, vocab_size: int | None = None) -> EncoderConfig:
    """Returns the preset `name`, optionally resized to a vocabulary of `vocab_size` words."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}.")
    config = PRESETS[name]
    if vocab_size is not None:
        config = dataclasses.replace(config, vocab_size=vocab_size)
    return config


def from_hf_config(hf: dict) -> EncoderConfig:
    """Maps a Hugging Face `config.json` (DistilBERT or BERT family) onto an EncoderConfig."""
    model_type = hf.get("model_type")
    if model_type == "distilbert":
        if hf.get("sinusoidal_pos_embds"):
            raise ValueError("DistilBERT checkpoints with sinusoidal position embeddings are not supported.")
        return EncoderConfig(
            family="distilbert", vocab_size=hf["vocab_size"], hidden_size=hf["dim"],
            num_layers=hf["n_layers"], num_heads=hf["n_heads"], intermediate_size=hf["hidden_dim"],
            max_position_embeddings=hf["max_position_embeddings"], type_vocab_size=0,
            hidden_act=hf.get("activation", "gelu"), layer_norm_eps=1e-12,
            dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.1),
            initializer_range=hf.get("initializer_range", 0.02))
    if model_type == "bert":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("Only absolute position embeddings are supported for BERT checkpoints.")
        return EncoderConfig(
            family="bert", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf["max_position_embeddings"],
            type_vocab_size=hf.get("type_vocab_size", 2), hidden_act=hf.get("hidden_act", "gelu"),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12), dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            initializer_range=hf.get("initializer_range", 0.02))
    raise ValueError(f"Unsupported model_type {model_type!r} in config.json; "
                     "supported: 'distilbert' and 'bert'.")


def load_hf_config(checkpoint_dir: str) -> EncoderConfig:
    """Reads `checkpoint_dir/config.json` into an EncoderConfig."""
    path = os.path.join(checkpoint_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{checkpoint_dir} has no config.json; is it a Hugging Face checkpoint directory?")
    with open(path, encoding="utf-8") as f:
        try:
            hf = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
    try:
        return from_hf_config(hf)
    except KeyError as e:
        raise ValueError(f"{path} lacks the field {e.args[0]!r}.") from None
