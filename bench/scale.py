"""Scale: python -m bench.scale [--workdir DIR] [--records 1000,100000,1000000] [--model small|full].

Does a run slow down or grow in memory as the corpus grows? Each size of a generated JSONL corpus (bench.corpus's
short texts: log-normal WordPiece lengths, p50 24) is embedded by `python -m pipeline.run` on Beam's local runner,
JSONL to TFRecord, in a fresh process whose peak RSS is read from the kernel (getrusage of a fresh parent per run).
Reported per size: the wall time, records/s marginal over the smallest size (its one-time costs subtracted), the
CPU time per 1,000 records marginal likewise (the work a record costs, which a shared machine's stolen or
slowed minutes change far less than the wall time) and the peak RSS. Issue 17's target: the per-record rate of
1M records within 10% of 100k's, peak memory flat.

The model is the benchmark's random-weight DistilBERT at `--model small` (2 layers of 128, 2 heads, FFN 512, the
real 30,522-word vocabulary; default) or full size. Small is the harder test of scale: the encoder's time shrinks
so that the pipeline's own per-record work (reading, tokenising, writing, the duplicate-id check) is what remains,
and a million full-size encodings would take about three hours on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from bench import corpus as corpus_lib
from bench import models

__all__ = ["main", "write_corpus"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SMALL = {"hidden": 128, "layers": 2, "heads": 2, "ffn": 512}
# Runs one command in a fresh parent and prints its wall time, its CPU time and the peak RSS of its process
# tree's largest process: RUSAGE_CHILDREN keeps the largest child's peak over everything the parent ever waited
# for, and sums their CPU time.
_MEASURE = """
import json, resource, subprocess, sys, time
start = time.time()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall_s": time.time() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "peak_rss_mb": usage.ru_maxrss / 1024}))
"""


def write_corpus(vocab_file: str, n: int, path: str, seed: int = 0) -> str:
    """n generated short texts as JSONL, drawn in one vectorised pass (a million in seconds)."""
    words, weights = corpus_lib.word_distribution(vocab_file)
    lengths = corpus_lib.sample_lengths(n, seed)
    picked = np.random.default_rng(seed + 1).choice(len(words), size=int(lengths.sum()), p=weights)
    ends = np.cumsum(lengths)
    with open(path, "w", encoding="utf-8") as f:
        for i, (start, end) in enumerate(zip(ends - lengths, ends, strict=True)):
            f.write(json.dumps({"id": f"t{i:07d}", "text": " ".join(words[picked[start:end]])}) + "\n")
    return path


def _run(corpus: str, model_dir: str, out: str) -> dict:
    command = [sys.executable, "-m", "pipeline.run", f"--input={corpus}", f"--model_dir={model_dir}",
               "--pooling=mean", "--seq_length=128", f"--output_tfrecord={out}", f"--run_id=r{int(time.time())}"]
    result = subprocess.run([sys.executable, "-c", _MEASURE, *command], check=True, cwd=_ROOT,
                            capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/bench-scale", help="Models, corpora, outputs. Default: "
                        "/tmp/bench-scale.")
    parser.add_argument("--records", default="1000,100000,1000000",
                        help="Corpus sizes, smallest first (its wall time is the one-time cost subtracted). "
                        "Default: 1000,100000,1000000.")
    parser.add_argument("--model", choices=("small", "full"), default="small", help="Default: small.")
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.records.split(","))
    os.makedirs(args.workdir, exist_ok=True)
    model_dir = os.path.join(args.workdir, f"model-{args.model}")
    if not os.path.exists(os.path.join(model_dir, "encoder", "saved_model.pb")):
        checkpoint = models.build_checkpoint(os.path.join(args.workdir, f"checkpoint-{args.model}"),
                                             **(_SMALL if args.model == "small" else {}))
        models.export_saved_models(checkpoint, model_dir)
    rows = []
    for n in sizes:
        corpus = os.path.join(args.workdir, f"corpus-{n}.jsonl")
        if not os.path.exists(corpus):
            write_corpus(models.vocab_file(), n, corpus)
        row = {"records": n, **_run(corpus, model_dir, os.path.join(args.workdir, "out", f"emb-{n}"))}
        if rows:
            row["marginal_records_per_s"] = (n - rows[0]["records"]) / (row["wall_s"] - rows[0]["wall_s"])
            row["marginal_cpu_ms_per_record"] = 1000 * (row["cpu_s"] - rows[0]["cpu_s"]) / (n - rows[0]["records"])
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"Model: {args.model}; --pooling mean --seq_length 128; JSONL to TFRecord on the local runner.\n")
    print("| records | wall (s) | records/s, marginal over the smallest | CPU s per 1,000 records, marginal | "
          "peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for row in rows:
        rate, cpu = row.get("marginal_records_per_s"), row.get("marginal_cpu_ms_per_record")
        print(f"| {row['records']:,} | {row['wall_s']:.1f} | {f'{rate:,.0f}' if rate else '-'} | "
              f"{f'{cpu:.2f}' if cpu else '-'} | {row['peak_rss_mb']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
