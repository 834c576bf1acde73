"""The contenders, end to end on the same texts: our pipeline, a naive Beam pipeline, sentence-transformers.

Our pipeline and the naive one run on Beam's local FnApiRunner (what DirectRunner falls back to offline), each run
in a fresh Python process (`in_fresh_process`), as users run a pipeline: several pipelines in one process get
slower run by run, and the benchmark's own process holds the engine measurements' models. Memory is measured on
separate processes too: a multi-process local run, its whole process tree sampled.

`python -m bench.pipelines ours|naive JSON_KWARGS` runs one of them and prints its result as one JSON line.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import resource
import subprocess
import sys
import time

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

__all__ = ["run_ours", "run_naive", "in_fresh_process", "json_from_module", "run_sentence_transformers",
           "read_embeddings", "cosines", "tree_memory", "import_memory", "HIDING_SITE"]

_AMP = "auto_mixed_precision_onednn_bfloat16"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _counters(result, namespace: str) -> dict:
    metrics = result.metrics().query(MetricsFilter().with_namespace(namespace))
    return {c.key.metric.name: c.committed or c.attempted or 0 for c in metrics["counters"]}


def _distribution_sum(result, name: str) -> float:
    """The sum of one of RunInference's distributions, whatever namespace the handler reports it under."""
    for distribution in result.metrics().query(MetricsFilter())["distributions"]:
        if distribution.key.metric.name.endswith(name):
            value = distribution.committed or distribution.attempted
            return value.sum
    return 0.0


def _load_seconds(result) -> float:
    return _distribution_sum(result, "load_model_latency_milli_secs") / 1e3


def _timed(run) -> dict:
    """Runs `run()`, returning wall seconds, this process's CPU share of the machine and run()'s result."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    value = run()
    wall = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "cpu_share": cpu / wall / os.cpu_count(), "value": value}


def run_ours(corpus: str, model_dir: str, out_prefix: str, precision: str = "fp32", extra: tuple = (),
             paired_engine: bool = False) -> dict:
    """python -m pipeline.run on the corpus, in this process: wall time, model load time and counters.

    With `paired_engine`, the fp32 engine at 32 x 128 (whole, and in the [CLS]-only form the pipeline runs for
    --pooling pooled) is also measured in this process just before and just after the pipeline (the best of
    both): the machine's speed drifts by a third over minutes, so the ratio of a pipeline's throughput to an
    engine figure from other minutes says more about the machine than the pipeline."""
    from pipeline import run as run_lib

    measures, before = {}, {}
    if paired_engine:
        from bench.engine import fp32_engine

        measures = {suffix: fp32_engine(os.path.join(model_dir, "encoder"), cls_only=suffix == "_cls")
                    for suffix in ("", "_cls")}
        before = {suffix: measure() for suffix, measure in measures.items()}
    argv = ["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={model_dir}",
            f"--output_tfrecord={out_prefix}", f"--precision={precision}", *extra]
    with contextlib.redirect_stdout(io.StringIO()):
        timed = _timed(lambda: run_lib.run(argv))
    counters = _counters(timed["value"], "embeddings")
    paired = {}
    for suffix, measure in measures.items():
        after = measure()
        paired[f"paired_engine{suffix}"] = max(before[suffix][0], after[0])
        paired[f"paired_engine{suffix}_cpu"] = max(before[suffix][1], after[1])
    return {**paired, "texts": counters.get("embedded", 0), "tokens": counters.get("tokens_embedded", 0),
            "computed": counters.get("tokens_computed", 0), "wall_s": timed["wall_s"], "cpu_s": timed["cpu_s"],
            "load_s": _load_seconds(timed["value"]),
            # Time in the handler's run_inference (tokenising, encoding, pooling), all batches together.
            "inference_s": _distribution_sum(timed["value"], "inference_batch_latency_micro_secs") / 1e6,
            "cpu_share": timed["cpu_share"], "out_prefix": out_prefix}


class _Models:
    """Beam's Shared holds models by weak reference: a plain tuple cannot be one."""

    def __init__(self, preprocessor, encoder):
        self.preprocessor, self.encoder = preprocessor, encoder


class NaiveHandler(ModelHandler):
    """What a first attempt looks like: the preprocessor's plain call (pads every text to 128), then the encoder."""

    def __init__(self, model_dir: str):
        super().__init__()
        self._model_dir = model_dir

    def load_model(self):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401

        return _Models(tf.saved_model.load(self._model_dir + "/preprocessor"),
                       tf.saved_model.load(self._model_dir + "/encoder"))

    def run_inference(self, batch, model, inference_args=None):
        import tensorflow as tf

        vectors = model.encoder(model.preprocessor(tf.constant(list(batch))))["pooled_output"].numpy()
        return [PredictionResult(text, vector) for text, vector in zip(batch, vectors, strict=True)]


def _to_example(key, prediction):
    import tensorflow as tf

    feature = {"id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
               "embedding": tf.train.Feature(float_list=tf.train.FloatList(value=prediction.inference))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def run_naive(corpus: str, model_dir: str, out_prefix: str, n_texts: int) -> dict:
    """Read JSONL -> stock RunInference (Beam's default adaptive batching) -> TFRecord, fp32."""
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({_AMP: False})

    def run():
        pipeline = beam.Pipeline(runner="FnApiRunner")
        _ = (pipeline
             | "Read" >> beam.io.ReadFromText(corpus)
             | "Parse" >> beam.Map(json.loads)
             | "Key" >> beam.Map(lambda record: (record["id"], record["text"]))
             | "RunInference" >> RunInference(KeyedModelHandler(NaiveHandler(model_dir)))
             | "ToExample" >> beam.MapTuple(_to_example)
             | "Write" >> beam.io.WriteToTFRecord(out_prefix, file_name_suffix=".tfrecord"))
        result = pipeline.run()
        result.wait_until_finish()
        return result

    timed = _timed(run)
    load_s = _load_seconds(timed["value"])
    steady = timed["wall_s"] - load_s
    return {"texts": n_texts, "wall_s": timed["wall_s"], "load_s": load_s, "steady_s": steady,
            "texts_per_s": n_texts / steady, "cpu_share": timed["cpu_share"], "out_prefix": out_prefix}


def json_from_module(*args: str) -> dict:
    """Runs `python -m ARGS...` from the repository root in a fresh process; returns the JSON of its last line."""
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, check=False, cwd=_ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if done.returncode:
        raise RuntimeError(f"python -m {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_fresh_process(name: str, **kwargs) -> dict:
    """run_ours ("ours") or run_naive ("naive") with `kwargs`, in a fresh Python process; returns its result."""
    return json_from_module("bench.pipelines", name, json.dumps(kwargs))


def run_sentence_transformers(checkpoint_dir: str, texts: list[str], batch_size: int, seq_length: int = 128):
    """sentence-transformers' encode (sorts by length, pads per batch) on the same random-init DistilBERT."""
    import torch

    from bench.models import sentence_transformer

    model = sentence_transformer(checkpoint_dir, seq_length)
    with torch.inference_mode():
        model.encode(texts[:batch_size], batch_size=batch_size)  # Warm-up, as our handler's load_model does.
        timed = _timed(lambda: model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                            show_progress_bar=False))
    return {"texts_per_s": len(texts) / timed["wall_s"], "wall_s": timed["wall_s"], "cpu_share": timed["cpu_share"],
            "torch_threads": torch.get_num_threads(), "vectors": timed["value"]}


def read_embeddings(prefix: str) -> dict[str, np.ndarray]:
    """id -> embedding from TFRecord files PREFIX-*.tfrecord (ours or the naive pipeline's)."""
    import tensorflow as tf

    spec = {"id": tf.io.FixedLenFeature([], tf.string), "embedding": tf.io.VarLenFeature(tf.float32)}
    rows = {}
    for record in tf.data.TFRecordDataset(sorted(glob.glob(prefix + "-*.tfrecord"))):
        parsed = tf.io.parse_single_example(record, spec)
        rows[parsed["id"].numpy().decode()] = tf.sparse.to_dense(parsed["embedding"]).numpy()
    return rows


def cosines(a: dict, b: dict) -> np.ndarray:
    """Cosine similarity per id present in both."""
    keys = sorted(set(a) & set(b))
    x, y = np.stack([a[k] for k in keys]), np.stack([b[k] for k in keys])
    return (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def _rss_pss(pids: list[int]) -> tuple[int, int]:
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def tree_memory(corpus: str, model_dir: str, out_prefix: str, workers: int, large_model: bool,
                hide: tuple[str, ...] = ()) -> dict:
    """Peak RSS and PSS summed over the process tree of a multi-process local run with `workers` workers.

    RSS counts pages shared between processes (TensorFlow's libraries, a shared model) once per process;
    PSS splits them between the processes that share them, so its sum is the machine's real cost. Modules in
    `hide` cannot be imported by any process of the run, as if they were not installed.
    """
    argv = [sys.executable, "-m", "pipeline.run", "--runner=FnApiRunner", "--direct_running_mode=multi_processing",
            f"--direct_num_workers={workers}", f"--input={corpus}", f"--model_dir={model_dir}",
            f"--output_tfrecord={out_prefix}"] + (["--large_model"] if large_model else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    os.makedirs(os.path.dirname(out_prefix), exist_ok=True)
    if hide:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_hiding_site(os.path.dirname(out_prefix), hide),
                                                          env.get("PYTHONPATH")]))
    start = time.perf_counter()
    with open(out_prefix + ".log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        peak = {"rss": 0, "pss": 0, "processes": 0}
        while process.poll() is None:
            pids = _descendants(process.pid)
            rss, pss = _rss_pss(pids)
            if pss > peak["pss"]:
                peak = {"rss": rss, "pss": pss, "processes": len(pids)}
            time.sleep(0.2)
    if process.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({process.returncode}); see {out_prefix}.log")
    return {**peak, "workers": workers, "large_model": large_model, "hidden": list(hide),
            "wall_s": time.perf_counter() - start}


# A meta path finder, not sys.modules[name] = None: scipy probes sys.modules for torch and trips over None.
HIDING_SITE = """import sys


class _NotInstalled:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in {modules!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)


sys.meta_path.insert(0, _NotInstalled)
"""


def _hiding_site(directory: str, modules: tuple[str, ...]) -> str:
    """A directory whose sitecustomize makes `modules` unimportable (ImportError, as when not installed)."""
    site = os.path.join(directory, "hide-site")
    os.makedirs(site, exist_ok=True)
    with open(os.path.join(site, "sitecustomize.py"), "w", encoding="utf-8") as f:
        f.write(HIDING_SITE.format(modules=tuple(modules)))
    return site


def import_memory(statement: str) -> dict:
    """RSS and PSS of a fresh Python process after `statement` (what a worker pays before any model)."""
    code = (f"{statement}\nimport json, re\ntext = open('/proc/self/smaps_rollup').read()\n"
            "fields = re.findall(r'^(Rss|Pss):\\s+(\\d+)', text, re.M)\n"
            "print(json.dumps({k.lower(): int(v) * 1024 for k, v in fields}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    runs = {"ours": run_ours, "naive": run_naive}
    if len(argv) != 2 or argv[0] not in runs:
        print("usage: python -m bench.pipelines ours|naive JSON_KWARGS", file=sys.stderr)
        return 2
    result = runs[argv[0]](**json.loads(argv[1]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
