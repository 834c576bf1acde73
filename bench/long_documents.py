"""Long-document throughput: python -m bench.long_documents [--workdir DIR] [--docs N] [--json FILE].

A generated corpus of long documents (bench.corpus's Zipf-weighted vocabulary words, one wordpiece each; lengths
log-normal with median 1,200 wordpieces, from 300 to 6,000) is embedded by the pipeline on Beam's local runner
with the full-size random-weight DistilBERT (bench/models.py), `--pooling mean`:

- `--chunking windows` with 256-wordpiece chunks (overlap 32): every chunk is its own 258-token input;
- `--chunking late` with the same chunks, encoded in windows of 512 tokens;

each in fp32 and bf16, and each beside the encoder alone at that sequence length (full rows, no padding),
measured in the same process just before and just after the run (the better of the two). Reported: the
document wordpieces per second (what a user's corpus moves at, each wordpiece once), the encoder tokens per
second of the run (tokens_computed) and their ratio to the engine at that length (issue 16's target: 0.85),
the share of computed tokens that were padding, and the process's CPU share. Both rates leave out the model's
load time, a one-time cost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from bench import corpus as corpus_lib  # noqa: E402
from bench import models  # noqa: E402

__all__ = ["make_documents", "main"]

_MEDIAN_PIECES, _SIGMA, _LEAST, _MOST = 1200, 0.7, 300, 6000
_CHUNK_TOKENS, _OVERLAP = 256, 32
_MODES = {"windows": _CHUNK_TOKENS + 2, "late": 512}  # --chunking: its sequence length.


def make_documents(vocab_file: str, n: int, seed: int = 0) -> list[str]:
    """n documents of vocabulary words (one wordpiece each), lengths log-normal around 1,200 wordpieces."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(np.exp(rng.normal(np.log(_MEDIAN_PIECES), _SIGMA, n))), _LEAST, _MOST)
    words, weights = corpus_lib.word_distribution(vocab_file)
    # Sentences of 8 to 30 words, so documents have punctuation where chunks may end.
    documents = []
    for length in lengths.astype(int):
        picked = rng.choice(words, size=length, p=weights)
        cuts = np.cumsum(rng.integers(8, 31, size=length // 8 + 1))
        sentences = [" ".join(picked[a:b]) for a, b in zip(np.concatenate([[0], cuts]), cuts, strict=False)
                     if a < length]
        documents.append(". ".join(sentences) + ".")
    return documents


def _engine(encoder_dir: str, precision: str, seq: int, rows: int):
    """A function measuring the encoder alone on `rows` full rows of `seq` tokens: tokens/s, best of 3."""
    import tensorflow as tf

    import runtime

    call = runtime.load_encoder_call(encoder_dir, precision=precision)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2)
    def encode(word_ids, mask):
        return call({"input_word_ids": word_ids, "input_mask": mask})["sequence_output"]

    ids = tf.random.Generator.from_seed(0).uniform([rows, seq], 1000, 30000, tf.int32)
    mask = tf.ones([rows, seq], tf.int32)

    def measure() -> float:
        encode(ids, mask)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            encode(ids, mask)
            best = min(best, time.perf_counter() - start)
        return rows * seq / best

    return measure


def _run(corpus: str, model_dir: str, workdir: str, mode: str, precision: str, pieces: int) -> dict:
    from bench.pipelines import run_ours

    seq = _MODES[mode]
    engine = _engine(os.path.join(model_dir, "encoder"), precision, seq, rows=max(1, 4096 // seq))
    before = engine()
    run = run_ours(corpus, model_dir, os.path.join(workdir, f"out-{mode}-{precision}", "emb"), precision,
                   extra=("--pooling=mean", f"--chunking={mode}", f"--chunk_tokens={_CHUNK_TOKENS}",
                          f"--chunk_overlap={_OVERLAP}", f"--seq_length={seq}"))
    engine_tokens = max(before, engine())
    # The run's model load is a one-time cost (issue 17's business): throughput is over the rest of the run.
    encoder_tokens = run["computed"] / (run["wall_s"] - run["load_s"])
    return {"mode": mode, "precision": precision, "seq": seq, "wall_s": run["wall_s"],
            "document_pieces_per_s": pieces / (run["wall_s"] - run["load_s"]), "encoder_tokens_per_s": encoder_tokens,
            "engine_tokens_per_s": engine_tokens, "ratio": encoder_tokens / engine_tokens,
            "padding": 1 - min(run["tokens"], run["computed"]) / max(run["computed"], 1) if mode == "windows"
            else None, "cpu_share": run["cpu_share"], "load_s": run["load_s"]}


def render(results: list[dict], documents: int, pieces: int) -> str:
    lines = [f"{documents} documents, {pieces} wordpieces (generated; median {_MEDIAN_PIECES} per document), "
             f"chunks of {_CHUNK_TOKENS} overlapping by {_OVERLAP}, --pooling mean.", "",
             "| chunking | precision | seq | document wordpieces/s | encoder tokens/s | engine at seq | ratio "
             "(target 0.85) | padding | CPU share | wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        padding = "-" if r["padding"] is None else f"{r['padding']:.1%}"
        lines.append(f"| {r['mode']} | {r['precision']} | {r['seq']} | {r['document_pieces_per_s']:,.0f} | "
                     f"{r['encoder_tokens_per_s']:,.0f} | {r['engine_tokens_per_s']:,.0f} | {r['ratio']:.2f} | "
                     f"{padding} | {r['cpu_share']:.2f} | {r['wall_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/bench-long", help="Models and outputs. Default: /tmp/bench-long.")
    parser.add_argument("--docs", type=int, default=40, help="Documents in the corpus. Default: 40.")
    parser.add_argument("--precisions", default="fp32,bf16", help="Default: fp32,bf16.")
    parser.add_argument("--json", default=None, help="Also write the results as JSON here.")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    model_dir = os.path.join(args.workdir, "model")
    if not os.path.exists(os.path.join(model_dir, "encoder", "saved_model.pb")):
        models.export_saved_models(models.build_checkpoint(os.path.join(args.workdir, "checkpoint")), model_dir)
    documents = make_documents(models.vocab_file(), args.docs)
    corpus = os.path.join(args.workdir, "documents.jsonl")
    corpus_lib.write_jsonl(documents, corpus)
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    preprocessor = tf.saved_model.load(os.path.join(model_dir, "preprocessor"))
    pieces = int(preprocessor.tokenize(tf.constant(documents)).merge_dims(-2, -1).row_lengths().numpy().sum())
    results = [_run(corpus, model_dir, args.workdir, mode, precision, pieces)
               for precision in args.precisions.split(",") for mode in _MODES]
    print(render(results, len(documents), pieces))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
