"""Throughput benchmark: python -m bench.run [--small] [--workdir DIR] [--json FILE].

Builds a full-size DistilBERT with RANDOM weights (bench/models.py), a generated corpus with the length
distribution of real short English texts (bench/corpus.py), then measures in one run, peers side by side:
the encoder at a fixed shape against the matrix-multiply ceiling (fp32 and bf16), our pipeline end to end on
Beam's local runner (fp32 and bf16), sentence-transformers' encode and a naive Beam pipeline on the same
texts, memory of a multi-process run with and without --large_model, and the first batch after loading.
Prints one Markdown table with the ratios to the targets of issue 5.

The machine is shared and noisy: every figure is the best of interleaved repeats, and the CPU share printed
says how much of the machine the process actually got. The full run takes 10-20 minutes on 2 cores,
--small 4-7.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from bench import corpus as corpus_lib  # noqa: E402
from bench import models  # noqa: E402

__all__ = ["main", "render"]

_MODES = {
    # texts: our corpus; naive, st_512: the share of it the naive pipeline and sentence-transformers at batch
    # 512 embed (both are slow: they pad far more); repeats: end-to-end runs per precision;
    # rounds: interleaved engine rounds; workers: process counts for the memory runs; real_lengths: the texts
    # whose sub-batches the encoder alone runs in each engine round.
    "full": {"texts": 4000, "naive": 600, "st_512": 1000, "repeats": 2, "rounds": 5, "workers": (1, 2, 4),
             "memory_texts": 96, "real_lengths": 1024},
    "small": {"texts": 600, "naive": 150, "st_512": 300, "repeats": 1, "rounds": 2, "workers": (1, 2),
              "memory_texts": 48, "real_lengths": 512},
}
_TINY_TEXTS = 64  # The short run whose time is subtracted to cancel one-time costs.
_SOURCES = ("model/encoder.py", "model/export_lib.py", "model/convert.py", "model/preprocessor.py", "bench/models.py")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _source_hash() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for name in _SOURCES:
        with open(os.path.join(root, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def _prepare(workdir: str, n_texts: int) -> tuple[str, str, list[str]]:
    """The checkpoint and SavedModels (rebuilt when the model code changed) and the corpus."""
    checkpoint, model_dir = os.path.join(workdir, "checkpoint"), os.path.join(workdir, "model")
    stamp = os.path.join(workdir, "model.stamp")
    version = _source_hash()
    if not (os.path.exists(stamp) and open(stamp, encoding="utf-8").read() == version):
        _log("building the random-weight DistilBERT checkpoint and exporting it with model.export")
        models.build_checkpoint(checkpoint)
        models.export_saved_models(checkpoint, model_dir)
        with open(stamp, "w", encoding="utf-8") as f:
            f.write(version)
    texts = corpus_lib.make_texts(models.vocab_file(), n_texts)
    return checkpoint, model_dir, texts


def _wordpiece_lengths(model_dir: str, texts: list[str]) -> np.ndarray:
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    preprocessor = tf.saved_model.load(model_dir + "/preprocessor")
    return preprocessor.tokenize(tf.constant(texts)).merge_dims(-2, -1).row_lengths().numpy()


def _machine() -> str:
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name")
    if not model:  # Some virtual machines leave it out of /proc/cpuinfo; lscpu reads it from the firmware.
        done = subprocess.run(["lscpu"], capture_output=True, text=True, check=False)
        model = next((line.split(":", 1)[1].strip() for line in done.stdout.splitlines()
                      if line.startswith("Model name")), "unknown CPU")
    flags = f" {fields.get('flags', '')} "
    isa = [name for name in ("avx512f", "avx512_bf16", "amx_bf16") if f" {name} " in flags]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{model} (CPU family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}), "
            f"{os.cpu_count()} cores, {'/'.join(isa) or 'no AVX-512'}, {memory:.0f} GiB, {platform.system()}")


def _versions() -> str:
    import apache_beam
    import sentence_transformers
    import tensorflow as tf
    import torch
    import transformers

    return (f"Python {platform.python_version()}, apache-beam {apache_beam.__version__}, TensorFlow {tf.__version__}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}, sentence-transformers "
            f"{sentence_transformers.__version__}")


def _engine(model_dir: str, rounds: int, texts: list[str]) -> dict:
    from bench.engine import EngineBench

    bench = EngineBench(model_dir + "/encoder")
    bench.add_real_lengths(model_dir + "/preprocessor", texts)
    for i in range(rounds):
        _log(f"engine round {i + 1}/{rounds}")
        bench.run_round()
    best = dict(bench.best)
    best["gflops"] = {key: bench.gflops(value) for key, value in bench.best.items()}
    best["real_lengths_texts"], best["real_lengths_padding"] = len(texts), bench.real_tokens / bench.computed_tokens
    return best


def _end_to_end(corpus: str, tiny_corpus: str, model_dir: str, workdir: str, repeats: int) -> dict:
    """Marginal throughput: (full run - tiny run) texts and tokens over the difference of their wall times.

    Both runs pay the same one-time costs (pipeline construction, model load and warm-up, runner start and
    shutdown), so the difference is the cost of the extra texts: the rate a long job sustains.
    """
    from bench import pipelines

    runs: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    for i in range(repeats):
        # ABBA order, so that neither precision always goes first on a machine whose speed drifts.
        for precision in ("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32"):
            _log(f"our pipeline, {precision}, run {i + 1}/{repeats}")
            out = os.path.join(workdir, "out", f"ours-{precision}-{i}")
            tiny, full = (pipelines.in_fresh_process("ours", corpus=path, model_dir=model_dir,
                                                     out_prefix=os.path.join(out, name), precision=precision,
                                                     paired_engine=precision == "fp32" and name == "emb")
                          for path, name in ((tiny_corpus, "tiny"), (corpus, "emb")))
            seconds = full["wall_s"] - tiny["wall_s"]
            cpu_seconds = (full["cpu_s"] - tiny["cpu_s"]) / os.cpu_count()
            runs[precision].append({**full, "tiny_wall_s": tiny["wall_s"], "steady_s": seconds,
                                    "texts_per_s": (full["texts"] - tiny["texts"]) / seconds,
                                    "tokens_per_s": (full["tokens"] - tiny["tokens"]) / seconds,
                                    "tokens_per_s_cpu": (full["tokens"] - tiny["tokens"]) / cpu_seconds})
    best = {precision: max(results, key=lambda r: r["tokens_per_s"]) for precision, results in runs.items()}
    for precision, results in runs.items():
        best[precision]["tokens_per_s_cpu"] = max(r["tokens_per_s_cpu"] for r in results)
    # fp32 against the engine measured in the same process, just before and after: the best pair.
    best["paired"] = max((_paired(r) for r in runs["fp32"]), key=lambda pair: pair["ratio"])
    fp32, bf16 = (pipelines.read_embeddings(best[p]["out_prefix"]) for p in ("fp32", "bf16"))
    best["runs"] = runs
    best["bf16_cosine"] = pipelines.cosines(fp32, bf16)
    best["fp32_vectors"] = fp32
    return best


def _paired(run: dict) -> dict:
    """A pipeline run's throughput against the engine measured in its own process (whole, and [CLS] only)."""
    pair = {}
    for suffix in ("", "_cls"):
        engine = run[f"paired_engine{suffix}"]
        pair[f"engine{suffix}"] = engine
        pair[f"ratio{suffix}"] = run["tokens_per_s"] / engine
        pair[f"ratio{suffix}_cpu"] = run["tokens_per_s_cpu"] / run[f"paired_engine{suffix}_cpu"]
    return pair


# Beam 2.77's RunInference module (apache_beam.ml.inference.base) imports its model manager, which imports torch
# and scipy whenever torch is installed: memory in every worker (see BENCHMARKS.md). The runtime install (setup.py, the
# Dataflow image) has no torch; the test environment the benchmark runs in has it for sentence-transformers.
_NOT_IN_RUNTIME_INSTALL = ("torch",)


def _memory(corpus: str, model_dir: str, workdir: str, workers: tuple) -> list[dict]:
    """Multi-process runs as the runtime install has them (no torch), with and without --large_model, and with
    --large_model in this environment as it is (torch installed)."""
    from bench import pipelines

    results = []
    for large_model, hide in ((True, _NOT_IN_RUNTIME_INSTALL), (False, _NOT_IN_RUNTIME_INSTALL), (True, ())):
        for n in workers:
            _log(f"memory: {n} worker process(es), large_model={large_model}, hidden modules {hide or 'none'}")
            prefix = os.path.join(workdir, "out", f"memory-{n}-{int(large_model)}-{len(hide)}", "emb")
            results.append(pipelines.tree_memory(corpus, model_dir, prefix, n, large_model, hide))
    return results


def _import_costs() -> dict:
    """PSS of a fresh process after what a worker imports, and after what it no longer imports."""
    from bench import pipelines

    hide_torch = pipelines.HIDING_SITE.format(modules=_NOT_IN_RUNTIME_INSTALL)
    return {"beam": pipelines.import_memory(hide_torch + "import apache_beam.ml.inference.base"),
            "beam_torch": pipelines.import_memory("import apache_beam.ml.inference.base"),
            "beam_tf": pipelines.import_memory(hide_torch + "import apache_beam.ml.inference.base\n"
                                               "import tensorflow")}


def _cold_start(model_dir: str, corpus: str) -> dict:
    """In a fresh process, so that loading and the first batch are really cold."""
    from bench import pipelines

    return pipelines.json_from_module("bench.engine", "latency", model_dir, corpus)


def _slope(points: list[tuple[int, int]]) -> float:
    """Bytes per extra worker: least squares over (workers, bytes)."""
    x, y = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    return float(np.polyfit(x, y, 1)[0]) if len(points) > 1 else float("nan")


def _ratio(a: dict, a_key: str, b: dict, b_key: str) -> str:
    """a/b by wall time, and by CPU-normalised time where both have it."""
    text = f"{a[a_key] / b[b_key]:.2f}"
    if a_key + "_cpu" in a and b_key + "_cpu" in b:
        text += f" (CPU-norm. {a[a_key + '_cpu'] / b[b_key + '_cpu']:.2f})"
    return text


def _rows(r: dict) -> list[tuple[str, str, str, str, str]]:
    """(measure, value, target, ratio, verdict) rows of the table."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    eng, ours, st, naive, cold = r["engine"], r["ours"], r["st"], r["naive"], r["cold"]
    fp32, bf16, paired = ours["fp32"], ours["bf16"], ours["paired"]
    stats = r["lengths"]
    rows = [
        ("Corpus (generated, log-normal lengths)",
         f"{r['n_texts']} texts; WordPiece p50 {stats['p50']:.0f} / p90 {stats['p90']:.0f} / p99 {stats['p99']:.0f} "
         f"/ mean {stats['mean']:.1f}", "p50 24 / p90 88 / p99 255 / mean 40", "", "info"),
        ("Matmul ceiling fp32, 32x128 (eager tf.matmul of the encoder's shapes)",
         f"{eng['ceiling_fp32']:,.0f} tok/s = {eng['gflops']['ceiling_fp32']:.0f} GFLOP/s "
         f"(CPU-normalised {eng['ceiling_fp32_cpu']:,.0f})", "", "", "info"),
        ("Engine fp32, 32x128 (as the pipeline runs it: the module rebuilt from the export, LayerNorms fused)",
         f"{eng['engine_fp32']:,.0f} tok/s = {eng['gflops']['engine_fp32']:.0f} GFLOP/s in its matmuls "
         f"(CPU-normalised {eng['engine_fp32_cpu']:,.0f})", ">= 0.9 x ceiling",
         _ratio(eng, "engine_fp32", eng, "ceiling_fp32"), verdict(eng['engine_fp32'] >= 0.9 * eng['ceiling_fp32'])),
        ("Engine fp32 for [CLS] vectors only, 32x128 (the rebuilt module's `cls_outputs`, as the pipeline runs "
         "--pooling pooled and cls: the last block computes the [CLS] token alone)",
         f"{eng['engine_fp32_cls']:,.0f} tok/s (CPU-normalised {eng['engine_fp32_cls_cpu']:,.0f})",
         "(info) vs engine fp32", _ratio(eng, "engine_fp32_cls", eng, "engine_fp32"), "info"),
        ("Same encoder through the exported SavedModel's `__call__` (as hub.KerasLayer runs it)",
         f"{eng['engine_fp32_saved_model']:,.0f} tok/s (CPU-normalised {eng['engine_fp32_saved_model_cpu']:,.0f}); "
         f"the pipeline's path is {eng['engine_fp32'] / eng['engine_fp32_saved_model']:.3f}x",
         "(info) vs ceiling", _ratio(eng, "engine_fp32_saved_model", eng, "ceiling_fp32"), "info"),
        ("Matmul ceiling bf16, 32x128",
         f"{eng['ceiling_bf16']:,.0f} tok/s = {eng['gflops']['ceiling_bf16']:.0f} GFLOP/s "
         f"(CPU-normalised {eng['ceiling_bf16_cpu']:,.0f})", "", "", "info"),
        ("Engine bf16, 32x128 (exported encoder rebuilt, matmul weights frozen as bfloat16 constants, as "
         "`--precision bf16` runs it)",
         f"{eng['engine_bf16']:,.0f} tok/s (CPU-normalised {eng['engine_bf16_cpu']:,.0f}); "
         f"{eng['engine_bf16'] / eng['engine_fp32']:.2f}x engine fp32", "(info) vs bf16 ceiling",
         _ratio(eng, "engine_bf16", eng, "ceiling_bf16"), "info"),
        ("Engine fp32 at real lengths: the encoder alone ([CLS] only, as above) over the sub-batches the pipeline "
         f"computes for the first {eng['real_lengths_texts']} texts (no Beam, no tokenisation)",
         f"{eng['real_lengths_fp32']:,.0f} real tok/s (CPU-normalised {eng['real_lengths_fp32_cpu']:,.0f}); "
         f"padding efficiency {eng['real_lengths_padding']:.3f}, so "
         f"{eng['real_lengths_fp32'] / eng['real_lengths_padding']:,.0f} computed tok/s: short sub-batches run at "
         f"{eng['real_lengths_fp32'] / eng['real_lengths_padding'] / eng['engine_fp32_cls']:.2f} of the 32x128 rate",
         "(info) vs engine fp32 [CLS] only", _ratio(eng, "real_lengths_fp32", eng, "engine_fp32_cls"), "info"),
        ("End to end fp32 (FnApiRunner, 1 process, batch 512)",
         f"{fp32['texts_per_s']:.1f} texts/s, {fp32['tokens_per_s']:,.0f} real tok/s, CPU-normalised "
         f"{fp32['tokens_per_s_cpu']:,.0f} (marginal: {fp32['wall_s']:.1f} s for {fp32['texts']} texts - "
         f"{fp32['tiny_wall_s']:.1f} s for {r['tiny_texts']}; CPU share {fp32['cpu_share']:.2f}; model load "
         f"{fp32['load_s']:.1f} s; it runs the [CLS]-only encoder, against which it is "
         f"{fp32['tokens_per_s'] / eng['engine_fp32_cls']:.2f}); Beam, tokenisation and writing: "
         f"{fp32['tokens_per_s'] / eng['real_lengths_fp32']:.2f} of the engine at real lengths "
         f"(CPU-norm. {fp32['tokens_per_s_cpu'] / eng['real_lengths_fp32_cpu']:.2f})", ">= 0.85 x engine fp32",
         _ratio(fp32, "tokens_per_s", eng, "engine_fp32"), verdict(fp32['tokens_per_s'] >= 0.85 * eng['engine_fp32'])),
        ("End to end fp32 against the engine measured in the same process (32x128, best of 4 calls just before "
         "and just after the pipeline; best pair of the runs)",
         f"engine then {paired['engine']:,.0f} tok/s, for [CLS] only {paired['engine_cls']:,.0f}: the pipeline "
         f"is {paired['ratio_cls']:.2f} of that (CPU-norm. {paired['ratio_cls_cpu']:.2f}); time in the handler's "
         "run_inference: "
         f"{fp32['inference_s'] / fp32['wall_s']:.2f} of the run's wall time (model load {fp32['load_s']:.1f} s)",
         ">= 0.85 x engine fp32", f"{paired['ratio']:.2f} (CPU-norm. {paired['ratio_cpu']:.2f})",
         verdict(paired['ratio'] >= 0.85)),
        ("Padding efficiency fp32 (real / computed tokens)", f"{fp32['tokens'] / fp32['computed']:.3f}",
         ">= 0.9", f"{fp32['tokens'] / fp32['computed'] / 0.9:.2f}", verdict(fp32['tokens'] >= 0.9 * fp32['computed'])),
        ("End to end bf16 (--precision bf16)",
         f"{bf16['texts_per_s']:.1f} texts/s, {bf16['tokens_per_s']:,.0f} real tok/s, CPU-normalised "
         f"{bf16['tokens_per_s_cpu']:,.0f} (CPU share {bf16['cpu_share']:.2f})", ">= 1.6 x fp32 end to end",
         _ratio(bf16, "tokens_per_s", fp32, "tokens_per_s"),
         verdict(bf16['tokens_per_s'] >= 1.6 * fp32['tokens_per_s'])),
        ("bf16 fidelity: cosine to fp32, per text",
         f"min {ours['bf16_cosine'].min():.5f}, mean {ours['bf16_cosine'].mean():.5f}", "min >= 0.999",
         f"{ours['bf16_cosine'].min():.5f}", verdict(ours['bf16_cosine'].min() >= 0.999)),
    ]
    best_st = max(st.values(), key=lambda s: s["texts_per_s"])
    st_text = "; ".join(f"batch {bs}: {s['texts_per_s']:.1f} texts/s ({s['texts']} texts)"
                        for bs, s in sorted(st.items()))
    rows += [
        ("sentence-transformers encode, fp32, torch "
         f"{best_st['torch_threads']} threads", f"{st_text} (cosine to ours min {r['st_cosine'].min():.5f})",
         "ours fp32 >= 1.0 x best", f"{fp32['texts_per_s'] / best_st['texts_per_s']:.2f}",
         verdict(fp32['texts_per_s'] >= best_st['texts_per_s'])),
        ("Naive Beam pipeline (stock batching, pad to 128), fp32",
         f"{naive['texts_per_s']:.1f} texts/s on {naive['texts']} of the texts", "ours fp32 >= 3 x",
         f"{fp32['texts_per_s'] / naive['texts_per_s']:.2f}", verdict(fp32['texts_per_s'] >= 3 * naive['texts_per_s'])),
    ]
    memory = r["memory"]
    runtime = [m for m in memory if m["hidden"]]
    shared = [(m["workers"], m["pss"]) for m in runtime if m["large_model"]]
    unshared = [(m["workers"], m["pss"]) for m in runtime if not m["large_model"]]
    with_torch = [(m["workers"], m["pss"]) for m in memory if not m["hidden"]]
    model_bytes = cold["model_rss_bytes"]
    per_worker_shared, per_worker_unshared = _slope(shared), _slope(unshared)
    per_worker_torch = _slope(with_torch)
    imports = {name: r["imports"][name]["pss"] / 2**30 for name in ("beam", "beam_torch", "beam_tf")}
    detail = ", ".join(f"{m['workers']}w{'+shared' if m['large_model'] else ''}{'' if m['hidden'] else '+torch'}: "
                       f"PSS {m['pss'] / 2**30:.2f} / RSS {m['rss'] / 2**30:.2f} GiB" for m in memory)
    rows += [
        ("Peak RSS, this process (all in-process runs)", f"{r['peak_rss'] / 2**30:.2f} GiB", "", "", "info"),
        ("Memory per extra worker process, --large_model (PSS of the process tree; runtime install: no torch)",
         f"{per_worker_shared / 2**30:.2f} GiB per worker vs {per_worker_unshared / 2**30:.2f} without sharing; "
         f"one loaded model {model_bytes / 2**30:.2f} GiB RSS. A worker imports no TensorFlow; a fresh Python with "
         f"Beam's RunInference: {imports['beam']:.2f} GiB PSS ({imports['beam_tf']:.2f} if it imported TensorFlow). "
         f"{detail}",
         "< 0.5 x one model", f"{per_worker_shared / model_bytes:.2f}", verdict(per_worker_shared < 0.5 * model_bytes)),
        ("Same, --large_model, with torch installed (this test environment)",
         f"{per_worker_torch / 2**30:.2f} GiB per worker: Beam 2.77's RunInference imports torch and scipy into "
         f"every worker when torch is installed (fresh Python with RunInference: {imports['beam_torch']:.2f} GiB PSS)",
         "(info)", f"{per_worker_torch / model_bytes:.2f}", "info"),
        ("First batch after load_model (warm-up in load_model)",
         f"load {cold['load_s']:.1f} s; first 512-text batch {cold['first_batch_s_warm']:.2f} s vs "
         f"{cold['steady_batch_s_warm']:.2f} s steady (without warm-up: {cold['first_batch_s_cold']:.2f} s vs "
         f"{cold['steady_batch_s_cold']:.2f} s); a new shape costs {cold['new_shape_extra_s'] * 1000:.1f} ms; "
         f"encode traced {cold['encode_traces']}x", "stall < 1 s",
         f"{cold['first_batch_s_warm'] - cold['steady_batch_s_warm']:.2f} s",
         verdict(cold['first_batch_s_warm'] - cold['steady_batch_s_warm'] < 1.0)),
    ]
    return rows


def render(r: dict) -> str:
    lines = [f"Date: {r['date']}. Machine: {r['machine']}.", f"Software: {r['versions']}.",
             f"Mode: {r['mode']}; model: full-size DistilBERT (6 x 768, vocab 30522), RANDOM weights; "
             f"--batch_size 512, --token_budget 4096, --seq_length 128, pooling pooled.", "",
             "| Measure | Value | Target | Ratio | Verdict |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in _rows(r)]
    return "\n".join(lines)


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="A few minutes: fewer texts, fewer repeats.")
    parser.add_argument("--workdir", default=os.path.join("/tmp", "distilbert-bench"),
                        help="Where the model, corpus and outputs go (default /tmp/distilbert-bench).")
    parser.add_argument("--json", default=None, help="Also write the raw numbers to this JSON file.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    mode = "small" if args.small else "full"
    settings = _MODES[mode]
    os.makedirs(args.workdir, exist_ok=True)
    shutil.rmtree(os.path.join(args.workdir, "out"), ignore_errors=True)
    started = time.perf_counter()

    checkpoint, model_dir, texts = _prepare(args.workdir, settings["texts"])
    corpus = os.path.join(args.workdir, f"corpus-{len(texts)}.jsonl")
    corpus_lib.write_jsonl(texts, corpus)
    naive_corpus = os.path.join(args.workdir, f"corpus-naive-{settings['naive']}.jsonl")
    corpus_lib.write_jsonl(texts[:settings["naive"]], naive_corpus)
    memory_corpus = os.path.join(args.workdir, f"corpus-memory-{settings['memory_texts']}.jsonl")
    corpus_lib.write_jsonl(texts[:settings["memory_texts"]], memory_corpus)
    tiny_corpus = os.path.join(args.workdir, f"corpus-tiny-{_TINY_TEXTS}.jsonl")
    corpus_lib.write_jsonl(texts[:_TINY_TEXTS], tiny_corpus)

    results = {"mode": mode, "n_texts": len(texts), "machine": _machine(), "versions": _versions(),
               "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}
    results["lengths"] = corpus_lib.length_stats(_wordpiece_lengths(model_dir, texts))
    _log("cold start in a fresh process")
    results["cold"] = _cold_start(model_dir, corpus)
    results["engine"] = _engine(model_dir, settings["rounds"], texts[:settings["real_lengths"]])
    results["tiny_texts"] = _TINY_TEXTS
    results["ours"] = _end_to_end(corpus, tiny_corpus, model_dir, args.workdir, settings["repeats"])

    from bench import pipelines

    _log(f"naive Beam pipeline on {settings['naive']} texts")
    results["naive"] = pipelines.in_fresh_process("naive", corpus=naive_corpus, model_dir=model_dir,
                                                  out_prefix=os.path.join(args.workdir, "out", "naive", "emb"),
                                                  n_texts=settings["naive"])
    results["st"] = {}
    for batch_size, n in ((32, len(texts)), (512, settings["st_512"])):
        _log(f"sentence-transformers encode, batch {batch_size}, {n} texts")
        results["st"][batch_size] = pipelines.run_sentence_transformers(checkpoint, texts[:n], batch_size)
        results["st"][batch_size]["texts"] = n
    st_vectors = {f"t{i:05d}": v for i, v in enumerate(results["st"][32].pop("vectors"))}
    results["st"][512].pop("vectors")
    results["st_cosine"] = pipelines.cosines(results["ours"].pop("fp32_vectors"), st_vectors)
    results["peak_rss"] = _peak_rss()
    results["memory"] = _memory(memory_corpus, model_dir, args.workdir, settings["workers"])
    results["imports"] = _import_costs()
    results["elapsed_s"] = time.perf_counter() - started

    table = render(results)
    print(table)
    print(f"\n({mode} run, {results['elapsed_s'] / 60:.1f} min)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    return 0


if __name__ == "__main__":
    sys.exit(main())
