"""Engine speed at a fixed shape against the matrix-multiply ceiling, and the cold-start cost of the handler.

The ceiling is what the encoder's matrix multiplications alone would take at the same shape (4 projections,
2 feed-forward matmuls and 2 attention batch-matmuls per layer), each timed by itself with tf.matmul in eager
mode, so nothing else (LayerNorm, softmax, GELU, memory traffic between ops) is counted.

Run as `python -m bench.engine latency MODEL_DIR TEXTS_JSONL` for the cold-start numbers in a fresh process;
it prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import time

__all__ = ["EngineBench", "matmul_flops_per_token", "cold_start"]


def matmul_flops_per_token(seq: int, hidden: int = 768, ffn: int = 3072, layers: int = 6) -> float:
    """Multiply-add FLOPs of the encoder's matmuls per token at sequence length `seq`."""
    return layers * (2 * 4 * hidden * hidden + 2 * 2 * hidden * ffn + 2 * 2 * seq * hidden)


def _best_seconds(fn, reps: int) -> tuple[float, float]:
    """The least wall time of `reps` calls, and the least CPU time divided by the cores (the wall time the
    call would take with the whole machine to itself: a shared machine slows the first, hardly the second)."""
    fn()
    wall = cpu = float("inf")
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, (time.process_time() - start_cpu) / os.cpu_count())
    return wall, cpu


def _encode_fn(tf, call):
    """The encoder call in a tf.function with unknown batch and sequence sizes, as the pipeline traces it."""
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2)
    def encode(word_ids, mask):
        return call({"input_word_ids": word_ids, "input_mask": mask})["pooled_output"]

    return encode


def fp32_engine(encoder_dir: str, batch: int = 32, seq: int = 128, cls_only: bool = False):
    """Loads the fp32 encoder as the pipeline runs it (with `cls_only`, as it runs for --pooling pooled); returns
    a function that measures its tokens/s at batch x seq, (wall, CPU-normalised), the best of `reps` calls: the
    engine figure of EngineBench, for a process of its own (a pipeline run pairs its throughput with the
    engine's in the same minutes)."""
    import tensorflow as tf

    import runtime

    encode = _encode_fn(tf, runtime.load_encoder_call(encoder_dir, precision="fp32", cls_only=cls_only))
    word_ids = tf.random.Generator.from_seed(0).uniform([batch, seq], 1000, 30000, tf.int32)
    mask = tf.ones([batch, seq], tf.int32)

    def measure(reps: int = 4) -> tuple[float, float]:
        wall, cpu = _best_seconds(lambda: encode(word_ids, mask), reps)
        return batch * seq / wall, batch * seq / cpu

    return measure


class EngineBench:
    """Tokens/s of the matmul ceiling and of the exported encoder at batch x seq, fp32 and bf16.

    Every measurement is the best of `reps` calls, and `run_round` can be called repeatedly so that ceiling
    and engine alternate: on a shared machine the best of interleaved rounds is the least disturbed.
    """

    def __init__(self, encoder_dir: str, batch: int = 32, seq: int = 128, hidden: int = 768, heads: int = 12,
                 ffn: int = 3072, layers: int = 6):
        import tensorflow as tf

        self.batch, self.seq, self.layers = batch, seq, layers
        self.tokens = batch * seq
        self._encoder = tf.saved_model.load(encoder_dir)
        rng = tf.random.Generator.from_seed(0)
        self._ids = rng.uniform([batch, seq], 1000, 30000, tf.int32)
        self._mask = tf.ones([batch, seq], tf.int32)
        self._shapes = {  # name: (count per layer, a shape, b shape, transpose_b)
            "projection": (4, [batch * seq, hidden], [hidden, hidden], False),
            "ffn_in": (1, [batch * seq, hidden], [hidden, ffn], False),
            "ffn_out": (1, [batch * seq, ffn], [ffn, hidden], False),
            "scores": (1, [batch, heads, seq, hidden // heads], [batch, heads, seq, hidden // heads], True),
            "context": (1, [batch, heads, seq, seq], [batch, heads, seq, hidden // heads], False),
        }
        self._operands = {dtype: {name: (rng.normal(a), rng.normal(b)) for name, (_, a, b, _) in self._shapes.items()}
                          for dtype in ("fp32",)}
        self._operands["bf16"] = {name: (tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16))
                                  for name, (a, b) in self._operands["fp32"].items()}

        import runtime

        # The whole encoder as the pipeline runs it (the module rebuilt from the export's variables, with
        # oneDNN's fused LayerNorms on this CPU; bf16 with bfloat16 weights); the form it runs for --pooling
        # pooled, whose last block computes [CLS] alone (fp32_cls: cls_outputs); for comparison, the
        # SavedModel's own __call__.
        self._encode = {"fp32": _encode_fn(tf, runtime.load_encoder_call(encoder_dir, precision="fp32")),
                        "fp32_cls": _encode_fn(tf, runtime.load_encoder_call(encoder_dir, precision="fp32",
                                                                             cls_only=True)),
                        "bf16": _encode_fn(tf, runtime.load_encoder_call(encoder_dir, precision="bf16")),
                        "fp32_saved_model": _encode_fn(tf, self._encoder)}
        self.best = {f"{kind}_{precision}{suffix}": 0.0 for kind, precisions in (("ceiling", ("fp32", "bf16")),
                                                                                 ("engine", self._encode))
                     for precision in precisions for suffix in ("", "_cpu")}

    def ceiling(self, precision: str, reps: int = 3) -> tuple[float, float]:
        """Tokens/s (wall, CPU-normalised) if the encoder's matmuls were all it computed, at tf.matmul speed."""
        import tensorflow as tf

        wall = cpu = 0.0
        for name, (count, _, _, transpose_b) in self._shapes.items():
            a, b = self._operands[precision][name]
            seconds = _best_seconds(lambda a=a, b=b, t=transpose_b: tf.matmul(a, b, transpose_b=t), reps)
            wall, cpu = wall + count * seconds[0], cpu + count * seconds[1]
        return self.tokens / (wall * self.layers), self.tokens / (cpu * self.layers)

    def engine(self, precision: str, reps: int = 3) -> tuple[float, float]:
        """Tokens/s (wall, CPU-normalised) of the exported encoder at batch x seq: fp32 and bf16 as the
        pipeline runs them (runtime.load_encoder_call) for all outputs, fp32_cls for [CLS] vectors only,
        fp32_saved_model the SavedModel's `__call__`."""
        wall, cpu = _best_seconds(lambda: self._encode[precision](self._ids, self._mask), reps)
        return self.tokens / wall, self.tokens / cpu

    def run_round(self, reps: int = 3) -> None:
        for kind, precision in (("ceiling", "fp32"), ("engine", "fp32"), ("engine", "fp32_cls"),
                                ("engine", "fp32_saved_model"), ("ceiling", "bf16"), ("engine", "bf16")):
            key = f"{kind}_{precision}"
            wall, cpu = (self.ceiling if kind == "ceiling" else self.engine)(precision, reps)
            self._keep_best(key, wall, cpu)
        if "real_lengths_fp32" in self.best:
            self._keep_best("real_lengths_fp32", *self.real_lengths())

    def _keep_best(self, key: str, wall: float, cpu: float) -> None:
        self.best[key] = max(self.best[key], wall)
        self.best[key + "_cpu"] = max(self.best[key + "_cpu"], cpu)

    def add_real_lengths(self, preprocessor_dir: str, texts: list[str], batch_size: int = 512,
                         token_budget: int = 4096) -> None:
        """Also time, in every round, the fp32 encoder alone (as the pipeline runs it for --pooling pooled) over
        the sub-batches the pipeline computes for `texts` (batches of `batch_size`, each sorted and cut by
        runtime.plan_sub_batches): the engine at real lengths, with no Beam, tokenisation or writing
        around it. Against the engine at 32 x 128 it gives the cost of padding and of the short sub-batches;
        against the pipeline end to end, the cost of the rest."""
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  Registers the preprocessor's ops.

        import runtime

        preprocessor = tf.saved_model.load(preprocessor_dir)
        self._sub_batches, self.real_tokens, self.computed_tokens = [], 0, 0
        for start in range(0, len(texts), batch_size):
            tokens = preprocessor.tokenize(tf.constant(texts[start:start + batch_size]))
            packed = preprocessor.bert_pack_inputs([tokens], seq_length=tf.constant(self.seq))
            word_ids, mask = packed["input_word_ids"].numpy(), packed["input_mask"].numpy()
            lengths = mask.sum(axis=1)
            for rows in runtime.plan_sub_batches(lengths, token_budget):
                width = int(lengths[rows].max())
                self._sub_batches.append((tf.constant(word_ids[rows, :width]), tf.constant(mask[rows, :width])))
                self.real_tokens += int(lengths[rows].sum())
                self.computed_tokens += len(rows) * width
        for key in ("real_lengths_fp32", "real_lengths_fp32_cpu"):
            self.best[key] = 0.0

    def real_lengths(self) -> tuple[float, float]:
        """Real tokens/s (wall, CPU-normalised) of one pass over the sub-batches of add_real_lengths."""
        encode = self._encode["fp32_cls"]
        start, start_cpu = time.perf_counter(), time.process_time()
        for word_ids, mask in self._sub_batches:
            encode(word_ids, mask).numpy()
        wall, cpu = time.perf_counter() - start, (time.process_time() - start_cpu) / os.cpu_count()
        return self.real_tokens / wall, self.real_tokens / cpu

    def gflops(self, tokens_per_second: float) -> float:
        return tokens_per_second * matmul_flops_per_token(self.seq, layers=self.layers) / 1e9


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cold_start(model_dir: str, texts: list[str], batch_size: int = 512) -> dict:
    """In a fresh process: model load (+ warm-up) time and memory, first-batch stall, cost of new shapes."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    import runtime
    from transforms import embed

    result = {}
    batch = [(text,) for text in texts[:batch_size]]
    handler = embed.EmbeddingModelHandler(model_dir + "/encoder", model_dir + "/preprocessor",
                                          max_batch_size=batch_size)
    rss_before = _rss_bytes()
    start = time.perf_counter()
    embedder = handler.load_model()
    result["load_s"] = time.perf_counter() - start
    result["model_rss_bytes"] = _rss_bytes() - rss_before
    for label, model in (("warm", embedder), ("cold", None)):
        if model is None:  # The same models without load_model's warm-up: what the first batch paid before.
            encoder = runtime.load_encoder_call(model_dir + "/encoder", precision="fp32", cls_only=True)
            model = runtime.Embedder(tf.saved_model.load(model_dir + "/preprocessor"), encoder, seq_length=128,
                                     pooling="pooled", normalize=False, with_sequence=False, token_budget=4096)
        start = time.perf_counter()
        model.embed(batch)
        first = time.perf_counter() - start
        start = time.perf_counter()
        model.embed(batch)
        result[f"first_batch_s_{label}"], result[f"steady_batch_s_{label}"] = first, time.perf_counter() - start
    # A new (rows, width) shape after warm-up: no retracing, only oneDNN's per-shape setup.
    word_ids = tf.random.uniform([256, 128], 1000, 30000, tf.int32)
    rng = np.random.default_rng(0)
    extra = []
    for _ in range(12):
        width = int(rng.integers(8, 129))
        rows = int(rng.integers(1, max(2, 2048 // width)))
        args = (word_ids[:rows, :width], tf.ones([rows, width], tf.int32), tf.zeros([rows, width], tf.int32))
        times = []
        for _ in range(2):
            start = time.perf_counter()
            embedder.encode(*args)
            times.append(time.perf_counter() - start)
        extra.append(times[0] - times[1])
    result["new_shape_extra_s"] = float(np.median(extra))
    result["encode_traces"] = int(embedder.encode.experimental_get_tracing_count())
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "latency":
        print("usage: python -m bench.engine latency MODEL_DIR TEXTS_JSONL", file=sys.stderr)
        return 2
    with open(argv[2], encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    print(json.dumps(cold_start(argv[1], texts)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(sys.argv[1:]))
