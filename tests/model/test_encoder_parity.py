"""The exported encoder reproduces Hugging Face transformers, layer by layer, padding included."""

import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers

from model import config as config_lib
from model import convert
from model.export_lib import export_encoder

TINY_DISTILBERT = dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64)
FULL_SIZE = "distilbert_en_cased_L-6_H-768_A-12"
TINY_BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)


def _save_checkpoint(model, path, vocab_size):
    model.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(vocab_size)) + "\n")
    return str(path)


def _batch(vocab_size, batch=3, seq=7, seed=0):
    """Random ids with ragged padding: row 0 full, row 1 padded after 4 tokens, row 2 after 2."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab_size, (batch, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    type_ids = np.zeros_like(ids)
    type_ids[0, seq // 2:] = 1
    return ids, mask, type_ids


def _export_and_load(checkpoint_dir, tmp_path):
    encoder = convert.encoder_from_checkpoint(convert.read_checkpoint(checkpoint_dir))
    export_encoder(str(tmp_path / "encoder"), encoder=encoder)
    return tf.saved_model.load(str(tmp_path / "encoder"))


def _compare(hf_model, loaded, ids, mask, type_ids, tolerance, with_pooler):
    with torch.no_grad():
        kwargs = dict(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                      output_hidden_states=True)
        if with_pooler:
            kwargs["token_type_ids"] = torch.tensor(type_ids, dtype=torch.long)
        ref = hf_model(**kwargs)
    inputs = {"input_word_ids": tf.constant(ids), "input_mask": tf.constant(mask),
              "input_type_ids": tf.constant(type_ids)}
    got = loaded(inputs)
    real = mask.astype(bool)
    assert np.abs(got["sequence_output"].numpy() - ref.last_hidden_state.numpy())[real].max() <= tolerance
    assert len(got["encoder_outputs"]) == len(ref.hidden_states) - 1
    for i, layer_output in enumerate(got["encoder_outputs"]):
        diff = np.abs(layer_output.numpy() - ref.hidden_states[i + 1].numpy())[real].max()
        assert diff <= tolerance, f"encoder_outputs[{i}] differs by {diff}"
    expected_pooled = ref.pooler_output.numpy() if with_pooler else ref.last_hidden_state[:, 0].numpy()
    assert np.abs(got["pooled_output"].numpy() - expected_pooled).max() <= tolerance


@pytest.mark.parametrize("family", ["distilbert", "bert"])
def test_tiny_checkpoint_matches_transformers(family, tmp_path):
    torch.manual_seed(1)
    if family == "distilbert":
        hf_model = transformers.DistilBertModel(transformers.DistilBertConfig(**TINY_DISTILBERT)).eval()
    else:
        hf_model = transformers.BertModel(transformers.BertConfig(**TINY_BERT)).eval()
    checkpoint = _save_checkpoint(hf_model, tmp_path / "hf", 99)
    loaded = _export_and_load(checkpoint, tmp_path)
    _compare(hf_model, loaded, *_batch(99), tolerance=1e-5, with_pooler=family == "bert")


@pytest.mark.slow
def test_full_size_distilbert_matches_transformers(tmp_path):
    torch.manual_seed(2)
    # distilbert-base-cased: transformers' defaults (dim 768, 6 layers, 12 heads) with the cased vocab.
    hf_model = transformers.DistilBertModel(transformers.DistilBertConfig(vocab_size=28996)).eval()
    assert config_lib.from_hf_config(hf_model.config.to_dict()) == config_lib.preset(FULL_SIZE)
    checkpoint = _save_checkpoint(hf_model, tmp_path / "hf", 28996)
    loaded = _export_and_load(checkpoint, tmp_path)
    _compare(hf_model, loaded, *_batch(28996, batch=4, seq=40), tolerance=1e-4, with_pooler=False)


@pytest.mark.slow
def test_real_bert_checkpoint_matches_transformers(minilm_dir, tmp_path):
    hf_model = transformers.BertModel.from_pretrained(minilm_dir).eval()
    loaded = _export_and_load(minilm_dir, tmp_path)
    _compare(hf_model, loaded, *_batch(30522, batch=4, seq=33, seed=3), tolerance=1e-4, with_pooler=True)


def test_pytorch_bin_checkpoint_reads_with_weights_only(tmp_path):
    torch.manual_seed(3)
    hf_model = transformers.DistilBertModel(transformers.DistilBertConfig(**TINY_DISTILBERT)).eval()
    checkpoint = tmp_path / "hf"
    _save_checkpoint(hf_model, checkpoint, 99)
    (checkpoint / "model.safetensors").unlink()
    torch.save(hf_model.state_dict(), checkpoint / "pytorch_model.bin")
    loaded = _export_and_load(str(checkpoint), tmp_path)
    _compare(hf_model, loaded, *_batch(99), tolerance=1e-5, with_pooler=False)
