"""Loads Hugging Face DistilBERT/BERT checkpoints into an Encoder, tensor by tensor, strictly."""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np

from model.config import EncoderConfig, load_hf_config
from model.encoder import Encoder

__all__ = ["Checkpoint", "read_checkpoint", "load_weights", "encoder_from_checkpoint"]

# Prefixes that task-specific model classes put before the base model's tensors.
_BASE_PREFIXES = ("distilbert.", "bert.")
# Task heads that a checkpoint may carry beside the encoder; they are not part of an embedding model.
_HEAD_PREFIXES = ("vocab_transform.", "vocab_layer_norm.", "vocab_projector.", "cls.", "pre_classifier.",
                  "classifier.", "qa_outputs.", "lm_head.")
# Buffers that some checkpoints serialise; they hold no learned weights.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")

# BERT tensor names -> the DistilBERT-style names used by Encoder.weights_by_name().
_BERT_RENAMES = [
    (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", r"transformer.layer.\1.attention.q_lin."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", r"transformer.layer.\1.attention.k_lin."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", r"transformer.layer.\1.attention.v_lin."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"transformer.layer.\1.attention.out_lin."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"transformer.layer.\1.sa_layer_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"transformer.layer.\1.ffn.lin1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"transformer.layer.\1.ffn.lin2."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"transformer.layer.\1.output_layer_norm."),
]
# torch Linear weights are [out, in]; Encoder stores kernels [in, out].
_TRANSPOSED = re.compile(r"(q_lin|k_lin|v_lin|out_lin|lin1|lin2|pooler\.dense)\.weight$")


class Checkpoint:
    """What a Hugging Face checkpoint directory holds: config, tensors, vocab and casing.

    Attributes:
      config: the EncoderConfig from config.json.
      tensors: name -> numpy array, as stored in the checkpoint.
      vocab_file: path of vocab.txt.
      do_lower_case: from tokenizer_config.json (Hugging Face's default, True, when absent).
      sentence_config: how sentence-transformers uses the checkpoint (see read_sentence_config), or None.
    """

    def __init__(self, config: EncoderConfig, tensors: dict, vocab_file: str, do_lower_case: bool,
                 sentence_config: dict | None = None):
        self.config, self.tensors = config, tensors
        self.vocab_file, self.do_lower_case = vocab_file, do_lower_case
        self.sentence_config = sentence_config


def _read_safetensors(path: str) -> dict:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ValueError(f"Reading {path} needs the safetensors package: pip install safetensors") from None
    return load_file(path)


def _read_torch_bin(path: str) -> dict:
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path} is a PyTorch pickle; reading it needs torch (pip install torch), "
                         "or convert the checkpoint to model.safetensors.") from None
    # weights_only refuses arbitrary pickled code: a checkpoint is data, not a program.
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {name: tensor.float().numpy() for name, tensor in state.items()}


def _read_tensors(checkpoint_dir: str) -> dict:
    safetensors_path = os.path.join(checkpoint_dir, "model.safetensors")
    torch_path = os.path.join(checkpoint_dir, "pytorch_model.bin")
    if os.path.isfile(safetensors_path):
        return _read_safetensors(safetensors_path)
    if os.path.isfile(torch_path):
        return _read_torch_bin(torch_path)
    raise ValueError(f"{checkpoint_dir} has neither model.safetensors nor pytorch_model.bin.")


def _read_do_lower_case(checkpoint_dir: str) -> bool:
    path = os.path.join(checkpoint_dir, "tokenizer_config.json")
    if not os.path.isfile(path):
        logging.warning("%s has no tokenizer_config.json; assuming do_lower_case=True (Hugging Face's "
                        "default for BERT tokenizers).", checkpoint_dir)
        return True
    with open(path, encoding="utf-8") as f:
        return bool(json.load(f).get("do_lower_case", True))


def read_checkpoint(checkpoint_dir: str) -> Checkpoint:
    """Reads config.json, the weights, vocab.txt and tokenizer_config.json of a checkpoint directory."""
    if not os.path.isdir(checkpoint_dir):
        raise ValueError(f"Checkpoint directory {checkpoint_dir} does not exist.")
    config = load_hf_config(checkpoint_dir)
    vocab_file = os.path.join(checkpoint_dir, "vocab.txt")
    if not os.path.isfile(vocab_file):
        raise ValueError(f"{checkpoint_dir} has no vocab.txt (WordPiece vocabulary).")
    return Checkpoint(config, _read_tensors(checkpoint_dir), vocab_file, _read_do_lower_case(checkpoint_dir),
                      read_sentence_config(checkpoint_dir))


# sentence-transformers' Pooling modes that the pipeline's --pooling computes the same way.
_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
_POOLING_NAMES = {"mean": "mean", "cls": "cls"}


def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _pooling_of(module_dir: str) -> str | None:
    """The --pooling equal to a sentence-transformers Pooling module's config, or None when there is none."""
    config = _read_json(os.path.join(module_dir, "config.json"))
    if "pooling_mode" in config:  # sentence-transformers 3 and later may write the mode by name.
        return _POOLING_NAMES.get(config["pooling_mode"])
    modes = [name for name, on in config.items() if name.startswith("pooling_mode_") and on]
    return _POOLING_MODES.get(modes[0]) if len(modes) == 1 else None


def read_sentence_config(checkpoint_dir: str) -> dict | None:
    """How sentence-transformers uses a checkpoint: {"pooling", "normalize", "max_seq_length"} and, when it
    declares them, {"prompts", "default_prompt_name"}; or None.

    Reads modules.json (the module list), the Pooling module's config.json, whether a Normalize module follows,
    and sentence_bert_config.json's max_seq_length. Modules the pipeline cannot compute (Dense layers, max
    pooling) are named in a warning and leave the checkpoint without a recorded pooling: the pipeline's
    vectors would not equal sentence-transformers' whatever it chose.
    """
    modules_path = os.path.join(checkpoint_dir, "modules.json")
    if not os.path.isfile(modules_path):
        return None
    modules = _read_json(modules_path)
    config: dict = {"normalize": False}
    unsupported = []
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = os.path.join(checkpoint_dir, module.get("path", ""))
        if kind == "Transformer":
            continue
        if kind == "Pooling" and os.path.isfile(os.path.join(path, "config.json")):
            config["pooling"] = _pooling_of(path)
            if config["pooling"] is None:
                unsupported.append(f"{module.get('path')} (a pooling mode other than mean or cls)")
        elif kind == "Normalize":
            config["normalize"] = True
        else:
            unsupported.append(f"{module.get('path') or kind} ({kind})")
    bert_config_path = os.path.join(checkpoint_dir, "sentence_bert_config.json")
    if os.path.isfile(bert_config_path):
        max_seq_length = _read_json(bert_config_path).get("max_seq_length")
        if isinstance(max_seq_length, int) and max_seq_length > 1:
            config["max_seq_length"] = max_seq_length
    config.update(_read_prompts(checkpoint_dir))
    if unsupported or config.get("pooling") is None:
        logging.warning("%s is a sentence-transformers model whose modules the export cannot reproduce: %s. "
                        "Its pooling is not recorded; pass --pooling and --normalize to the pipeline yourself.",
                        checkpoint_dir, ", ".join(unsupported) or "no Pooling module")
        return None
    return config


def _read_prompts(checkpoint_dir: str) -> dict:
    """config_sentence_transformers.json's prompts ({name: prefix}) and default_prompt_name, when it has them:
    sentence-transformers prepends the prefix to each text before tokenizing (E5's "query: ", BGE's
    instruction)."""
    path = os.path.join(checkpoint_dir, "config_sentence_transformers.json")
    if not os.path.isfile(path):
        return {}
    recorded = _read_json(path)
    prompts = recorded.get("prompts") or {}
    prompts = {name: text for name, text in prompts.items() if isinstance(name, str) and isinstance(text, str)}
    found = {"prompts": prompts} if prompts else {}
    default = recorded.get("default_prompt_name")
    if isinstance(default, str) and default in prompts:
        found["default_prompt_name"] = default
    return found


def _canonical_name(name: str) -> str | None:
    """Maps a checkpoint tensor name onto Encoder.weights_by_name(); None for tensors to skip."""
    for prefix in _BASE_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name.startswith(_HEAD_PREFIXES) or name in _BUFFERS:
        return None
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
    for pattern, replacement in _BERT_RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def load_weights(encoder: Encoder, tensors: dict) -> None:
    """Copies every checkpoint tensor into `encoder`, failing on a missing, unexpected or mis-shaped one."""
    targets = encoder.weights_by_name()
    copied, unexpected, skipped = set(), [], []
    for name, value in tensors.items():
        canonical = _canonical_name(name)
        if canonical is None:
            skipped.append(name)
            continue
        if canonical not in targets:
            unexpected.append(name)
            continue
        value = np.asarray(value, dtype=np.float32)
        if _TRANSPOSED.search(canonical):
            value = value.T
        variable = targets[canonical]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"Tensor {name} has shape {tuple(value.shape)}; the encoder expects "
                             f"{tuple(variable.shape)} for {canonical}.")
        if canonical in copied:
            raise ValueError(f"Tensor {name} maps onto {canonical}, which another tensor already filled.")
        variable.assign(value)
        copied.add(canonical)
    if unexpected:
        raise ValueError(f"Unexpected tensors in the checkpoint: {', '.join(sorted(unexpected))}.")
    missing = sorted(set(targets) - copied)
    if missing:
        raise ValueError(f"Tensors missing from the checkpoint: {', '.join(missing)}.")
    if skipped:
        logging.info("Ignored %d task-head/buffer tensors: %s", len(skipped), ", ".join(sorted(skipped)))


def encoder_from_checkpoint(checkpoint: Checkpoint) -> Encoder:
    """Builds an Encoder for `checkpoint.config` and fills it with the checkpoint's weights."""
    encoder = Encoder(checkpoint.config, random_init=False)
    load_weights(encoder, checkpoint.tensors)
    return encoder
