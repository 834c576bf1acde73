"""Exports an encoder and its preprocessor as TF Hub-style SavedModels.

Usage:
  python -m model.export --checkpoint HF_DIR --output_dir OUT
  python -m model.export --preset NAME --vocab VOCAB_TXT --output_dir OUT [--seed N]

Both write OUT/encoder and OUT/preprocessor; OUT may be gs://BUCKET/PATH (exported locally, then uploaded).

The encoder contract (the TF Hub BERT text-encoder API):
  Call `encoder(inputs, training=False)` with a dict of int32 [batch, seq] tensors:
    input_word_ids: token ids, [CLS] first.
    input_mask: 1 for real tokens, 0 for padding.
    input_type_ids: optional segment ids. DistilBERT has no token-type embeddings and ignores them; they are
      accepted so that BERT preprocessors plug in unchanged.
  Any batch size, any seq up to max_position_embeddings. Returns a dict:
    pooled_output: float32 [batch, hidden]. BERT: tanh(dense([CLS])). DistilBERT has no pooler: the last
      block's [CLS] vector, as in the published TF Hub DistilBERT.
    sequence_output: float32 [batch, seq, hidden], the last block's output.
    encoder_outputs: a list with one float32 [batch, seq, hidden] per block.
  It is a Reusable SavedModel (variables, trainable_variables, regularization_losses, a `training` argument;
  dropout is active only when training), so `hub.KerasLayer(path, trainable=True)` fine-tunes it.
  `serving_default` takes input_word_ids and input_mask (plus input_type_ids for BERT) and returns
  pooled_output, sequence_output and encoder_outputs_0 .. encoder_outputs_{L-1}.
  Extras: `get_config()` returns the architecture as JSON; `vocab_file` is the WordPiece vocabulary asset;
  `bfloat16_call(inputs)` returns the same dict (float32 outputs) computed with bfloat16 matrix multiplications
  on the same float32 weights (LayerNorm and softmax statistics stay float32), about 1.7x faster than float32
  on CPUs with AVX512_BF16 or AMX. The embedding pipeline's `--precision bf16` runs the same computation through
  `load_encoder` (the module rebuilt from the SavedModel) with the matmul weights frozen into the graph as
  bfloat16 constants, which oneDNN lays out once for its AMX kernels. `onednn_call(inputs)` computes what
  `__call__` does at inference, with each LayerNorm in the form that TensorFlow's oneDNN graph rewriter fuses
  into one kernel: about 3.5% faster on x86 CPUs (where oneDNN is TensorFlow's default), slower elsewhere; the
  pipeline runs it where oneDNN runs. `cls_call(inputs)` and `onednn_cls_call(inputs)` return only
  pooled_output and cls_output (sequence_output[:, 0]), both float32 [batch, hidden], as `__call__` and
  `onednn_call` compute them, but the last block computes the [CLS] token alone (Encoder.cls_outputs): about
  14% faster for DistilBERT. The pipeline runs them for --pooling pooled and cls.

The preprocessor contract is in model/preprocessor.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import tensorflow as tf

from model import config as config_lib
from model import convert, storage
from model.encoder import Encoder

__all__ = ["ENCODER_DIR", "PREPROCESSOR_DIR", "SENTENCE_CONFIG_PATH", "export_encoder", "export_model",
           "write_sentence_config", "load_encoder", "main"]

ENCODER_DIR, PREPROCESSOR_DIR = "encoder", "preprocessor"
# Inside the encoder SavedModel: {"pooling": "mean"|"cls", "normalize": bool, "max_seq_length": int}, written for
# sentence-transformers checkpoints; the pipeline's defaults for --pooling, --normalize and --seq_length.
SENTENCE_CONFIG_PATH = "assets.extra/sentence_embedding.json"


def _input_specs(with_type_ids: bool) -> dict:
    names = ["input_word_ids", "input_mask"] + (["input_type_ids"] if with_type_ids else [])
    return {name: tf.TensorSpec([None, None], tf.int32, name=name) for name in names}


def _serving_signature(encoder: Encoder):
    specs = _input_specs(with_type_ids=encoder.config.family == "bert")

    @tf.function(input_signature=[specs])
    def serve(inputs):
        outputs = encoder(inputs, training=False)
        flat = {"pooled_output": outputs["pooled_output"], "sequence_output": outputs["sequence_output"]}
        for i, layer_output in enumerate(outputs["encoder_outputs"]):
            flat[f"encoder_outputs_{i}"] = layer_output
        return flat

    return serve


def _inference_call(encoder: Encoder, inputs, compute_dtype=tf.float32, onednn: bool = False, cls: bool = False):
    """encoder(inputs, training=False), or with `cls` encoder.cls_outputs(inputs), traced with another compute
    dtype and/or oneDNN's fused kernels (see Encoder.use_onednn_kernels); the variables are the same. Afterwards
    the module has its compute dtype back and oneDNN's kernels off, the portable form that `__call__` and
    training trace."""
    saved_dtype = encoder.compute_dtype
    encoder.compute_dtype = tf.as_dtype(compute_dtype)
    encoder.use_onednn_kernels(onednn)
    try:
        return encoder.cls_outputs(inputs) if cls else encoder(inputs, training=False)
    finally:
        encoder.compute_dtype = saved_dtype
        encoder.use_onednn_kernels(False)


def export_encoder(encoder: Encoder, output_dir: str, vocab_file: str | None = None) -> None:
    """Saves `encoder` as a Reusable SavedModel at `output_dir` (see the module docstring)."""

    @tf.function
    def call(inputs, training=False):
        return encoder(inputs, training=training)

    for with_type_ids in (False, True):
        for training in (False, True):
            call.get_concrete_function(_input_specs(with_type_ids), training=training)

    @tf.function
    def bfloat16_call(inputs):
        return _inference_call(encoder, inputs, tf.bfloat16)

    @tf.function
    def onednn_call(inputs):
        return _inference_call(encoder, inputs, onednn=True)

    @tf.function
    def cls_call(inputs):
        return _inference_call(encoder, inputs, cls=True)

    @tf.function
    def onednn_cls_call(inputs):
        return _inference_call(encoder, inputs, onednn=True, cls=True)

    for function in (bfloat16_call, onednn_call, cls_call, onednn_cls_call):
        for with_type_ids in (False, True):
            function.get_concrete_function(_input_specs(with_type_ids))

    config_json = json.dumps(encoder.config.to_dict(), sort_keys=True)
    root = tf.train.Checkpoint()
    root.encoder = encoder
    root.__call__ = call
    root.bfloat16_call = bfloat16_call
    root.onednn_call = onednn_call
    root.cls_call = cls_call
    root.onednn_cls_call = onednn_cls_call
    root.variables = list(encoder.variables)
    root.trainable_variables = list(encoder.trainable_variables)
    root.regularization_losses = []
    root.get_config = tf.function(lambda: tf.constant(config_json), input_signature=[])
    if vocab_file:
        root.vocab_file = tf.saved_model.Asset(vocab_file)
    tf.saved_model.save(root, output_dir, signatures={"serving_default": _serving_signature(encoder)})


def load_encoder(encoder_dir: str, compute_dtype=tf.float32, saved_model=None) -> Encoder:
    """Rebuilds the `Encoder` module of an encoder SavedModel that export_encoder wrote, with its weights.

    `saved_model`, if given, is that SavedModel already loaded (it is only asked for its config).
    Raises ValueError for a SavedModel without `get_config` (not written by this package), or whose variables
    do not cover the rebuilt module.
    """
    loaded = saved_model if saved_model is not None else tf.saved_model.load(encoder_dir)
    if not hasattr(loaded, "get_config"):
        raise ValueError(f"{encoder_dir} was not exported by model.export (it has no get_config).")
    config = config_lib.EncoderConfig(**json.loads(loaded.get_config().numpy()))
    del loaded
    encoder = Encoder(config, seed=0, compute_dtype=compute_dtype)
    # The SavedModel's variables are a checkpoint of export_encoder's root object, whose `encoder` is the module.
    status = tf.train.Checkpoint(encoder=encoder).read(os.path.join(encoder_dir, "variables", "variables"))
    try:
        status.assert_existing_objects_matched()
    except AssertionError as err:
        raise ValueError(f"The variables of {encoder_dir} do not match its config: {err}") from err
    status.expect_partial()  # The root's other objects (functions, variable lists) are not needed here.
    return encoder


def export_model(encoder: Encoder, vocab_file: str, do_lower_case: bool, output_dir: str,
                 default_seq_length: int = 128, sentence_config: dict | None = None) -> tuple[str, str]:
    """Writes output_dir/encoder and output_dir/preprocessor; returns both paths.

    `sentence_config` (convert.read_sentence_config: pooling, normalize, max_seq_length) is recorded beside the
    encoder in SENTENCE_CONFIG_PATH, where the pipeline reads its defaults.
    """
    from model.preprocessor import export_preprocessor

    encoder_dir = os.path.join(output_dir, ENCODER_DIR)
    preprocessor_dir = os.path.join(output_dir, PREPROCESSOR_DIR)
    export_encoder(encoder, encoder_dir, vocab_file)
    if sentence_config:
        write_sentence_config(encoder_dir, sentence_config)
    export_preprocessor(preprocessor_dir, vocab_file, do_lower_case, default_seq_length=default_seq_length,
                        max_seq_length=encoder.config.max_position_embeddings)
    return encoder_dir, preprocessor_dir


def write_sentence_config(encoder_dir: str, sentence_config: dict) -> str:
    """Writes how the encoder's vectors are meant to be pooled to ENCODER/SENTENCE_CONFIG_PATH; returns the path.

    assets.extra/ is the SavedModel folder for files that higher-level tools keep beside a model and that the
    graph does not load (TensorFlow Serving's convention).
    """
    path = os.path.join(encoder_dir, SENTENCE_CONFIG_PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    keys = ("pooling", "normalize", "max_seq_length")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({key: sentence_config[key] for key in keys if key in sentence_config}, f, indent=1, sort_keys=True)
        f.write("\n")
    return path


def _count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def _random_encoder(args) -> Encoder:
    if not os.path.isfile(args.vocab):
        raise ValueError(f"--vocab {args.vocab} does not exist.")
    vocab_size = _count_lines(args.vocab)
    cfg = config_lib.preset(args.preset)
    if vocab_size != cfg.vocab_size:
        logging.warning("--vocab has %d words; preset %s has %d: sizing the embedding table to the vocab.",
                        vocab_size, args.preset, cfg.vocab_size)
        cfg = config_lib.preset(args.preset, vocab_size=vocab_size)
    print(f"WARNING: the exported encoder has RANDOM weights (preset {args.preset}, seed {args.seed}). "
          "Its embeddings mean nothing; use it for tests and benchmarks only.", file=sys.stderr)
    return Encoder(cfg, seed=args.seed)


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m model.export", description=__doc__.split("\n\n")[0],
        epilog="Writes OUTPUT_DIR/encoder and OUTPUT_DIR/preprocessor.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Hugging Face checkpoint directory (config.json, "
                        "model.safetensors or pytorch_model.bin, vocab.txt, tokenizer_config.json).")
    source.add_argument("--preset", choices=sorted(config_lib.PRESETS),
                        help="Architecture preset, initialised with RANDOM weights (tests, benchmarks).")
    parser.add_argument("--vocab", help="vocab.txt for --preset (one WordPiece token per line).")
    parser.add_argument("--lower_case", action="store_true",
                        help="With --preset: lower-case and strip accents before WordPiece (uncased vocab).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed for --preset weights (default 0).")
    parser.add_argument("--seq_length", type=int, default=128,
                        help="Length the preprocessor pads to when called directly (default 128).")
    parser.add_argument("--output_dir", required=True,
                        help="Where to write encoder/ and preprocessor/: a local directory or gs://BUCKET/PATH.")
    args = parser.parse_args(argv)
    if args.preset and not args.vocab:
        parser.error("--preset needs --vocab VOCAB_TXT")
    if args.checkpoint and (args.vocab or args.lower_case):
        parser.error("--vocab and --lower_case go with --preset; a checkpoint brings its own.")
    return args


def main(argv=None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        # A gs:// --output_dir is checked first, exported to a local temporary directory, then uploaded.
        with storage.local_output_dir(args.output_dir) as local_dir:
            if args.checkpoint:
                checkpoint = convert.read_checkpoint(args.checkpoint)
                encoder = convert.encoder_from_checkpoint(checkpoint)
                vocab_file, do_lower_case = checkpoint.vocab_file, checkpoint.do_lower_case
                sentence_config = checkpoint.sentence_config
            else:
                encoder = _random_encoder(args)
                vocab_file, do_lower_case, sentence_config = args.vocab, args.lower_case, None
            export_model(encoder, vocab_file, do_lower_case, local_dir, default_seq_length=args.seq_length,
                         sentence_config=sentence_config)
            if sentence_config:
                print(f"sentence-transformers configuration recorded: {json.dumps(sentence_config)}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = args.output_dir.rstrip("/")
    print(f"Wrote encoder to {root}/{ENCODER_DIR} and preprocessor to {root}/{PREPROCESSOR_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
