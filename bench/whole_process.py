"""Whole processes, as a user meets them: python -m bench.whole_process [--workdir DIR] [--texts N] [--rounds R].

Times, from the shell's point of view (process start to exit, everything included: imports, model load, warm-up,
reading, writing), `python -m pipeline.run` against a sentence-transformers script that loads the same
checkpoint and encodes the same texts, on a corpus of real text, fp32 and bf16 (sentence-transformers with the
model cast to torch.bfloat16). Start-up alone (10 texts, first record) is bench.startup's. Runs alternate,
`--rounds` times each; the best of each is reported (the machine is shared: the best run is the least disturbed).

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


def _ours(corpus: str, model_dir: str, out: str, precision: str) -> float:
    start = time.time()
    subprocess.run([sys.executable, "-m", "pipeline.run", f"--input={corpus}", f"--model_dir={model_dir}",
                    "--pooling=mean", "--seq_length=128", f"--precision={precision}", f"--output_tfrecord={out}",
                    f"--run_id=r{int(start * 1000)}"], check=True, cwd=_ROOT, capture_output=True)
    return time.time() - start


def _sentence_transformers(corpus: str, checkpoint: str, precision: str) -> float:
    start = time.time()
    subprocess.run([sys.executable, "-c", _ST_SCRIPT, str(start), checkpoint, corpus, precision], check=True,
                   capture_output=True)
    return time.time() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/bench-whole", help="Models and outputs. Default: /tmp/bench-whole.")
    parser.add_argument("--texts", type=int, default=1500, help="Real texts in the corpus. Default: 1500.")
    parser.add_argument("--rounds", type=int, default=2, help="Alternating runs of each. Default: 2.")
    parser.add_argument("--precisions", default="fp32,bf16", help="Default: fp32,bf16.")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    checkpoint, model_dir = os.path.join(args.workdir, "checkpoint"), os.path.join(args.workdir, "model")
    if not os.path.exists(os.path.join(model_dir, "encoder", "saved_model.pb")):
        models.export_saved_models(models.build_checkpoint(checkpoint), model_dir)
    texts = docstrings(args.texts)
    corpora = {len(texts): _write(texts, os.path.join(args.workdir, "docstrings.jsonl"))}
    rows = []
    for precision in args.precisions.split(","):
        for count, corpus in corpora.items():
            ours, theirs = [], []
            for _ in range(args.rounds):
                ours.append(_ours(corpus, model_dir, os.path.join(args.workdir, "out", "emb"), precision))
                theirs.append(_sentence_transformers(corpus, checkpoint, precision))
            rows.append({"precision": precision, "texts": count, "ours_s": ours, "st_s": theirs,
                         "speedup": min(theirs) / min(ours)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"Corpus: {len(texts)} standard-library docstrings of Python {sys.version.split()[0]}; full-size "
          "DistilBERT, random weights, --pooling mean --seq_length 128; whole processes, best of "
          f"{args.rounds} alternating runs.\n")
    print("| texts | precision | this pipeline (s) | sentence-transformers (s) | speedup (ST time / ours) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['texts']} | {row['precision']} | {', '.join(f'{s:.1f}' for s in row['ours_s'])} | "
              f"{', '.join(f'{s:.1f}' for s in row['st_s'])} | {row['speedup']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
