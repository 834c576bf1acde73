"""Whole processes, as a user meets them: python -m bench.whole_process [--workdir DIR] [--texts N] [--rounds R].

Times, from the shell's point of view (process start to exit, everything included: imports, model load, warm-up,
reading, writing), `python -m pipeline.run` against a sentence-transformers script that loads the same
checkpoint and encodes the same texts, on a corpus of real text, fp32 and bf16 (sentence-transformers with the
model cast to torch.bfloat16); each round also runs the engine alone over the same texts, so that the table
shows what this pipeline would reach with no start-up at all. With --steady, instead: the pipeline's steady
state (the whole run less one over the first 64 texts) against the engine alone on the same texts, and the whole
process's CPU share. Start-up alone (10 texts, first record) is bench.startup's. Runs alternate, `--rounds` times
each; the best of each is reported (the machine is shared: the best run is the least disturbed).

The model is bench/models.py's full-size DistilBERT with random weights, `--pooling mean --seq_length 128` on
both sides (sentence-transformers: Transformer + mean Pooling, max_seq_length 128).

The corpus: docstrings of the Python standard library (the running interpreter's own modules, so it installs
offline with Python; PSF licence), the first N distinct ones of at least 20 characters in module-name order,
whitespace collapsed. They are real English technical prose of real length (p50 about 30 wordpieces).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import resource
import subprocess
import sys
import time
import warnings

from bench import models

__all__ = ["docstrings", "main"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIP = ("antigravity", "this", "idlelib", "tkinter", "turtle", "test", "lib2to3", "ensurepip", "venv", "pydoc_data")

_ST_SCRIPT = """
import sys, json, time
start = float(sys.argv[1])
from sentence_transformers import SentenceTransformer, models
import torch
checkpoint, corpus, precision = sys.argv[2], sys.argv[3], sys.argv[4]
texts = [json.loads(line)["text"] for line in open(corpus)]
transformer = models.Transformer(checkpoint, max_seq_length=128)
pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
model = SentenceTransformer(modules=[transformer, pooling], device="cpu")
if precision == "bf16":
    model = model.to(torch.bfloat16)
loaded = time.time()
with torch.inference_mode():
    vectors = model.encode(texts, batch_size=32, convert_to_numpy=False, show_progress_bar=False)
print(json.dumps({"loaded_s": loaded - start, "texts": len(vectors)}))
"""


# The engine alone on the same texts, in a fresh process: batches of 512 in file order as the pipeline's, timed
# after the load and warm-up; prints the seconds and the real tokens of all texts and of the first `first`.
_ENGINE_SCRIPT = """
import json, sys, time
import runtime
model_dir, corpus, precision, first = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
texts = [(json.loads(line)["text"],) for line in open(corpus, encoding="utf-8")]
embedder = runtime.load(model_dir + "/encoder", model_dir + "/preprocessor", seq_length=128, pooling="mean",
                        precision=precision, pairs=False)
start, tokens = time.time(), []
for i in range(0, len(texts), 512):
    tokens += [e.tokens for e in embedder.embed(texts[i:i + 512]).embeddings]
print(json.dumps({"seconds": time.time() - start, "tokens": sum(tokens), "first_tokens": sum(tokens[:first])}))
"""
_FIRST = 64  # The short run whose time, taken from the whole run's, leaves the steady state.


def docstrings(n: int) -> list[str]:
    """The first n distinct standard-library docstrings of at least 20 characters, in module-name order."""
    seen, texts = set(), []
    names = sorted(m.name for m in pkgutil.iter_modules() if m.module_finder.path.startswith(sys.base_prefix)
                   and not m.name.startswith(("_",) + _SKIP))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            try:
                module = importlib.import_module(name)
            except Exception:  # noqa: BLE001  Modules that do not import here (platform-specific) are skipped.
                continue
            for obj in [module, *vars(module).values()]:
                doc = getattr(obj, "__doc__", None)
                if not isinstance(doc, str) or getattr(obj, "__module__", name) != name and obj is not module:
                    continue
                text = " ".join(doc.split())
                if len(text) >= 20 and text not in seen:
                    seen.add(text)
                    texts.append(text)
                    if len(texts) == n:
                        return texts
    return texts


def _write(texts: list[str], path: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"d{i:05d}", "text": text}) + "\n")
    return path


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ours(corpus: str, model_dir: str, out: str, precision: str, cpu: list | None = None) -> float:
    """The whole process's wall seconds; with `cpu`, appends its CPU seconds."""
    start, cpu_start = time.time(), _children_cpu_seconds()
    subprocess.run([sys.executable, "-m", "pipeline.run", f"--input={corpus}", f"--model_dir={model_dir}",
                    "--pooling=mean", "--seq_length=128", f"--precision={precision}", f"--output_tfrecord={out}",
                    f"--run_id=r{int(start * 1000)}"], check=True, cwd=_ROOT, capture_output=True)
    wall = time.time() - start
    if cpu is not None:
        cpu.append(_children_cpu_seconds() - cpu_start)
    return wall


def _steady_state(texts: list[str], workdir: str, model_dir: str, precision: str, rounds: int) -> dict:
    """The pipeline's rate beyond its first _FIRST texts (whole runs of all and of the first _FIRST, the best of
    `rounds` each) against the engine's on the same texts; real tokens, [CLS] and [SEP] included."""
    corpus = _write(texts, os.path.join(workdir, "docstrings.jsonl"))
    short = _write(texts[:_FIRST], os.path.join(workdir, "first.jsonl"))
    out, whole, first, whole_cpu, first_cpu = os.path.join(workdir, "out", "steady"), [], [], [], []
    for _ in range(rounds):
        whole.append(_ours(corpus, model_dir, out, precision, whole_cpu))
        first.append(_ours(short, model_dir, out, precision, first_cpu))
    engine = _engine_alone(corpus, model_dir, precision)
    best, best_first = whole.index(min(whole)), first.index(min(first))
    steady_s = whole[best] - first[best_first]
    pipeline_rate = (engine["tokens"] - engine["first_tokens"]) / steady_s
    engine_rate = engine["tokens"] / engine["seconds"]
    cores = os.cpu_count()
    return {"precision": precision, "whole_s": whole, "first_s": first, "pipeline_tok_s": pipeline_rate,
            "engine_tok_s": engine_rate, "ratio": pipeline_rate / engine_rate,
            "cpu_share": [c / w / cores for c, w in zip(whole_cpu, whole, strict=True)],
            "steady_cpu_share": (whole_cpu[best] - first_cpu[best_first]) / steady_s / cores}


def _sentence_transformers(corpus: str, checkpoint: str, precision: str, loaded: list | None = None) -> float:
    """The whole process's wall seconds; with `loaded`, appends the seconds it took to import and load."""
    start = time.time()
    printed = subprocess.run([sys.executable, "-c", _ST_SCRIPT, str(start), checkpoint, corpus, precision],
                             check=True, capture_output=True, text=True).stdout
    wall = time.time() - start
    if loaded is not None:
        loaded.append(json.loads(printed.splitlines()[-1])["loaded_s"])
    return wall


def _engine_alone(corpus: str, model_dir: str, precision: str) -> dict:
    """The engine alone over `corpus` in a fresh process (_ENGINE_SCRIPT): its seconds and tokens."""
    return json.loads(subprocess.run([sys.executable, "-c", _ENGINE_SCRIPT, model_dir, corpus, precision,
                                      str(_FIRST)], check=True, cwd=_ROOT, capture_output=True,
                                     text=True).stdout.splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/bench-whole", help="Models and outputs. Default: /tmp/bench-whole.")
    parser.add_argument("--texts", type=int, default=1500, help="Real texts in the corpus. Default: 1500.")
    parser.add_argument("--rounds", type=int, default=2, help="Alternating runs of each. Default: 2.")
    parser.add_argument("--precisions", default="fp32,bf16", help="Default: fp32,bf16.")
    parser.add_argument("--steady", action="store_true",
                        help=f"Instead: the pipeline's steady state (all texts against the first {_FIRST}, whole "
                        "processes) against the engine alone on the same texts, and the CPU share. Default: off.")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    checkpoint, model_dir = os.path.join(args.workdir, "checkpoint"), os.path.join(args.workdir, "model")
    if not os.path.exists(os.path.join(model_dir, "encoder", "saved_model.pb")):
        models.export_saved_models(models.build_checkpoint(checkpoint), model_dir)
    texts = docstrings(args.texts)
    if args.steady:
        return _print_steady([_steady_state(texts, args.workdir, model_dir, precision, args.rounds)
                              for precision in args.precisions.split(",")], len(texts), args.rounds)
    corpora = {len(texts): _write(texts, os.path.join(args.workdir, "docstrings.jsonl"))}
    rows = []
    for precision in args.precisions.split(","):
        for count, corpus in corpora.items():
            ours, theirs, loaded, engine = [], [], [], []
            for _ in range(args.rounds):
                ours.append(_ours(corpus, model_dir, os.path.join(args.workdir, "out", "emb"), precision))
                theirs.append(_sentence_transformers(corpus, checkpoint, precision, loaded))
                engine.append(_engine_alone(corpus, model_dir, precision)["seconds"])
            best = theirs.index(min(theirs))
            rows.append({"precision": precision, "texts": count, "ours_s": ours, "st_s": theirs,
                         "speedup": min(theirs) / min(ours), "st_loaded_s": loaded[best],
                         "st_encode_s": theirs[best] - loaded[best], "engine_s": min(engine),
                         "bound": min(theirs) / min(engine)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"Corpus: {len(texts)} standard-library docstrings of Python {sys.version.split()[0]}; full-size "
          "DistilBERT, random weights, --pooling mean --seq_length 128; whole processes, best of "
          f"{args.rounds} alternating runs. Beside them, from the same rounds: sentence-transformers' best run "
          "split into import + load and encode, and our engine alone over the same texts (runtime.load's Embedder, "
          "batches of 512, load not counted), best of its runs: sentence-transformers' whole process over that "
          "is the speedup this pipeline would reach with no start-up, reading or writing at all.\n")
    print("| texts | precision | this pipeline (s) | sentence-transformers (s) | speedup (ST time / ours) | ST import "
          "+ load, encode (s) | our engine alone (s) | speedup with no start-up (ST time / engine) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['texts']} | {row['precision']} | {', '.join(f'{s:.1f}' for s in row['ours_s'])} | "
              f"{', '.join(f'{s:.1f}' for s in row['st_s'])} | {row['speedup']:.2f} | {row['st_loaded_s']:.1f}, "
              f"{row['st_encode_s']:.1f} | {row['engine_s']:.1f} | {row['bound']:.2f} |")
    return 0


def _print_steady(rows: list[dict], count: int, rounds: int) -> int:
    print(f"Steady state: {count} standard-library docstrings against their first {_FIRST}, whole processes, best "
          f"of {rounds} alternating runs; the engine: runtime.load + embed over the same texts in batches of 512.\n")
    print("| precision | all texts (s) | first texts (s) | pipeline, beyond the first (real tok/s) | engine (real "
          "tok/s) | ratio (target 0.9) | CPU share, beyond the first (whole process) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['precision']} | {', '.join(f'{s:.1f}' for s in row['whole_s'])} | "
              f"{', '.join(f'{s:.1f}' for s in row['first_s'])} | {row['pipeline_tok_s']:,.0f} | "
              f"{row['engine_tok_s']:,.0f} | {row['ratio']:.2f} | {row['steady_cpu_share']:.2f} "
              f"({', '.join(f'{c:.2f}' for c in row['cpu_share'])}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
