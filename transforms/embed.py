"""Embeds texts with a preprocessor + encoder SavedModel pair through Beam RunInference."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from transforms import records

__all__ = ["POOLING_MODES", "PRECISIONS", "SENTENCE_CONFIG_PATH", "EmbeddingModelHandler", "Embedding", "Embed",
           "model_fingerprint", "model_defaults", "check_models", "check_seq_length", "plan_sub_batches",
           "resolve_handle", "stage_locally"]

POOLING_MODES = ("pooled", "cls", "mean")
_NAMESPACE = "embeddings"
_ENCODER_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
PRECISIONS = ("fp32", "bf16")
# Written by model.export beside the encoder of a sentence-transformers checkpoint (model.export's
# SENTENCE_CONFIG_PATH; a test keeps the two equal): how the model's vectors are meant to be pooled.
SENTENCE_CONFIG_PATH = "assets.extra/sentence_embedding.json"
# The fixed cost of one encoder call (dispatch, streaming every weight through the cache), in tokens of compute:
# measured for the full-size DistilBERT on 2-core CPUs (BENCHMARKS.md). fp32: about 20-50 tokens; throughput was
# flat from 16 to 128 on AVX-512 (Zen 5), and 64 beat 256 by 4% on AMX (Xeon). bf16: 60-120 tokens on
# AVX512_BF16 (flat from 64 to 256) but about 475 on AMX, whose matmuls are so fast that dispatch weighs more;
# 512 beat 128 by 12% there. It makes plan_sub_batches prefer fewer, slightly more padded sub-batches over many
# tiny exact ones.
SUB_BATCH_OVERHEAD_TOKENS = {"fp32": 64, "bf16": 512}


class Embedding(NamedTuple):
    """What the model handler returns for one input.

    Attributes:
      vector: float32 [hidden], pooled (and normalised when asked).
      tokens: real tokens fed to the encoder, [CLS] and [SEP] included.
      truncated: whether the packed input was cut to seq_length.
      sequence: float32 [tokens, hidden] token vectors, or None unless asked for.
    """

    vector: np.ndarray
    tokens: int
    truncated: bool
    sequence: np.ndarray | None = None


def resolve_handle(handle: str) -> str:
    """Returns a path `tf.saved_model.load` can read: URLs through tensorflow_hub, gs:// staged locally."""
    if handle.startswith(("http://", "https://")):
        import tensorflow_hub as hub

        return hub.resolve(handle)
    if "://" in handle and not handle.startswith("file://"):
        return stage_locally(handle)
    return handle


def stage_locally(uri: str) -> str:
    """Copies a SavedModel directory from any Beam filesystem (gs://...) to local disk, once per machine.

    TensorFlow's own gs:// support talks to a fixed endpoint, so models are read through Beam's FileSystems
    (which honour the Google client libraries' settings) into TMPDIR/staged_models/URI_HASH/VERSION, where
    VERSION hashes every file's path, size and modification time: a model re-exported to the same URI is
    staged afresh, an unchanged one is reused by every later call and process on the machine.

    One process copies while the others wait on a file lock; the copy is made in a scratch directory,
    checked against the listed sizes and renamed into place, so no process ever sees a half-written copy,
    even if a copier dies. The copier then removes older versions of the same URI and abandoned scratch
    directories. A process still loading a version that was just replaced fails to load and is retried.

    Raises:
      ValueError: when no saved_model.pb lies directly under `uri`.
    """
    prefix = uri.rstrip("/") + "/"
    # Directory placeholders (zero-byte objects named like "dir/") hold no data.
    files = [metadata for metadata in FileSystems.match([prefix + "**"])[0].metadata_list
             if not metadata.path.endswith("/")]
    if not any(metadata.path == prefix + "saved_model.pb" for metadata in files):
        raise ValueError(f"{uri} is not a SavedModel directory: there is no {prefix}saved_model.pb.")
    listing = sorted((m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in files)
    home = os.path.join(tempfile.gettempdir(), "staged_models", hashlib.sha256(prefix.encode()).hexdigest()[:16])
    target = os.path.join(home, hashlib.sha256(repr(listing).encode()).hexdigest()[:16])
    if os.path.isfile(os.path.join(target, "saved_model.pb")):
        return target
    os.makedirs(home, exist_ok=True)
    with _exclusive_lock(os.path.join(home, ".lock")):
        if not os.path.isfile(os.path.join(target, "saved_model.pb")):
            _copy_into_place(files, prefix, target)
            _remove_all_but(home, keep={os.path.basename(target), ".lock"})
            logging.info("Staged %s to %s", uri, target)
    return target


@contextlib.contextmanager
def _exclusive_lock(path: str):
    """Holds an exclusive flock on `path`; the kernel releases it if the process dies."""
    try:
        import fcntl
    except ImportError:  # Not POSIX: the atomic rename alone keeps copies whole.
        yield
        return
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _copy_into_place(files, prefix: str, target: str) -> None:
    """Copies `files` (FileMetadata under `prefix`) to a scratch directory, then renames it to `target`."""
    home = os.path.dirname(target)
    scratch = tempfile.mkdtemp(dir=home, prefix=".staging-")
    try:
        for metadata in files:
            relative = os.path.normpath(metadata.path[len(prefix):])
            if os.path.isabs(relative) or relative == ".." or relative.startswith(".." + os.sep):
                raise ValueError(f"Refusing to stage {metadata.path}: it points outside {prefix}.")
            destination = os.path.join(scratch, relative)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            # Uncompressed: an asset named *.gz is copied as is, not inflated.
            with FileSystems.open(metadata.path, compression_type=CompressionTypes.UNCOMPRESSED) as source, \
                    open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            if os.path.getsize(destination) != metadata.size_in_bytes:
                raise OSError(f"Staging {metadata.path} copied {os.path.getsize(destination)} bytes of "
                              f"{metadata.size_in_bytes}; did it change while being read?")
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    try:
        os.rename(scratch, target)
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        if not os.path.isfile(os.path.join(target, "saved_model.pb")):
            raise
        # Else a stager that took no lock (a non-POSIX system) renamed its complete copy first.


def _remove_all_but(home: str, keep: set[str]) -> None:
    """Removes older staged versions and abandoned scratch directories (best effort)."""
    for name in os.listdir(home):
        if name not in keep:
            shutil.rmtree(os.path.join(home, name), ignore_errors=True)


def _is_url(handle: str) -> bool:
    return handle.startswith(("http://", "https://"))


def _read_bytes(path: str) -> bytes | None:
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return f.read()


def model_defaults(encoder: str) -> dict:
    """What the encoder's exporter recorded of its use: {"pooling", "normalize", "max_seq_length"}, maybe empty.

    model.export writes it for sentence-transformers checkpoints (e.g. mean pooling and L2 normalisation for
    all-MiniLM-L6-v2); other SavedModels and TF Hub URLs have none.
    """
    if _is_url(encoder):
        return {}
    raw = _read_bytes(encoder.rstrip("/") + "/" + SENTENCE_CONFIG_PATH)
    if raw is None:
        return {}
    try:
        recorded = json.loads(raw.decode("utf-8"))
    except ValueError as err:
        raise ValueError(f"--encoder {encoder}: {SENTENCE_CONFIG_PATH} is not valid JSON ({err}); re-export "
                         "the model with model.export.") from err
    defaults = {}
    if recorded.get("pooling") in POOLING_MODES:
        defaults["pooling"] = recorded["pooling"]
    if isinstance(recorded.get("normalize"), bool):
        defaults["normalize"] = recorded["normalize"]
    if isinstance(recorded.get("max_seq_length"), int):
        defaults["max_seq_length"] = recorded["max_seq_length"]
    return defaults


def check_models(encoder: str, preprocessor: str) -> None:
    """Fails fast, before a pipeline starts, on model handles that cannot work.

    Checks that local and gs:// handles are SavedModel directories and, when both carry their WordPiece
    vocabulary as an asset (as model.export writes them), that the vocabularies are the same. URL handles
    are checked when workers load them.
    """
    for flag, handle in (("--encoder", encoder), ("--preprocessor", preprocessor)):
        if _is_url(handle):
            continue
        if not FileSystems.exists(handle.rstrip("/") + "/saved_model.pb"):
            what = "does not exist" if not FileSystems.exists(handle) else "is not a SavedModel (no saved_model.pb)"
            raise ValueError(f"{flag} {handle} {what}.")
    if _is_url(encoder) or _is_url(preprocessor):
        return
    encoder_vocab = _read_bytes(encoder.rstrip("/") + "/assets/vocab.txt")
    preprocessor_vocab = _read_bytes(preprocessor.rstrip("/") + "/assets/vocab.txt")
    if encoder_vocab is not None and preprocessor_vocab is not None and encoder_vocab != preprocessor_vocab:
        sizes = f"{len(encoder_vocab.splitlines())} vs {len(preprocessor_vocab.splitlines())} tokens"
        raise ValueError(f"--encoder {encoder} and --preprocessor {preprocessor} use different vocabularies "
                         f"({sizes}); export both from the same checkpoint.")


def check_seq_length(preprocessor: str, seq_length: int) -> None:
    """Refuses a --seq_length beyond what the preprocessor packs (its `max_seq_length`, as model.export writes).

    Loads the preprocessor (small: a vocabulary and a graph); handles without that attribute are not checked.
    """
    if _is_url(preprocessor):
        return
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  Registers the preprocessor's ops.

    limit = getattr(tf.saved_model.load(resolve_handle(preprocessor)), "max_seq_length", None)
    if limit is not None and seq_length > int(limit.numpy()):
        raise ValueError(f"--seq_length {seq_length} exceeds the longest input the model takes "
                         f"({int(limit.numpy())} tokens, --preprocessor {preprocessor}).")


def model_fingerprint(encoder: str, preprocessor: str, pooling: str, normalize: bool, seq_length: int,
                      precision: str = "fp32") -> str:
    """A short hash naming what made an embedding: both models' graphs and weights index, pooling, length.

    For local and gs:// handles it hashes saved_model.pb and variables/variables.index (whose entries carry
    each tensor's checksum); for URLs, the URL itself. A reduced precision changes the hash; fp32 adds nothing,
    so fingerprints from before the precision option stay valid.
    """
    digest = hashlib.sha256()
    for handle in (encoder, preprocessor):
        digest.update(handle.encode() if _is_url(handle) else b"")
        for name in ("saved_model.pb", "variables/variables.index"):
            if not _is_url(handle):
                digest.update(_read_bytes(handle.rstrip("/") + "/" + name) or b"")
    digest.update(f"pooling={pooling};normalize={normalize};seq_length={seq_length}".encode())
    if precision != "fp32":
        digest.update(f";precision={precision}".encode())
    return digest.hexdigest()[:16]


class _Embedder:
    """The loaded models plus the graph that packs, encodes and pools a batch; one per worker (or machine).

    Inputs are plain Python and outputs numpy, so the object also works behind Beam's MultiProcessShared
    proxy when one copy serves every process on a machine.
    """

    def __init__(self, preprocessor, encoder, seq_length: int, pooling: str, normalize: bool,
                 with_sequence: bool, token_budget: int, precision: str = "fp32"):
        """`encoder` is what runs a batch: a loaded encoder SavedModel or a callable with its call convention,
        or the [CLS]-only form that returns pooled_output and cls_output instead (see _encoder_to_run);
        `precision` only tunes the sub-batch planning."""
        import tensorflow as tf

        self._preprocessor = preprocessor
        self._encoder = encoder
        self._seq_length, self._with_sequence, self._token_budget = seq_length, with_sequence, token_budget
        self._encoder_keys = self._accepted_encoder_keys()
        self._call_overhead = SUB_BATCH_OVERHEAD_TOKENS[precision]
        text_spec = tf.TensorSpec([None], tf.string)
        id_spec = tf.TensorSpec([None, None], tf.int32)

        @tf.function(input_signature=[text_spec])
        def pack_one(texts):
            return self._pack([texts])

        @tf.function(input_signature=[text_spec, text_spec])
        def pack_two(first, second):
            return self._pack([first, second])

        @tf.function(input_signature=[id_spec, id_spec, id_spec])
        def encode(word_ids, mask, type_ids):
            inputs = {"input_word_ids": word_ids, "input_mask": mask, "input_type_ids": type_ids}
            outputs = self._encoder({key: inputs[key] for key in self._encoder_keys})
            if pooling == "pooled":
                vectors = outputs["pooled_output"]
            elif pooling == "cls":
                vectors = outputs["cls_output"] if "cls_output" in outputs else outputs["sequence_output"][:, 0]
            else:
                sequence = outputs["sequence_output"]
                weights = tf.cast(mask, sequence.dtype)[:, :, tf.newaxis]
                vectors = tf.reduce_sum(sequence * weights, axis=1) / tf.maximum(
                    tf.reduce_sum(weights, axis=1), 1e-9)
            if normalize:
                vectors = tf.math.l2_normalize(vectors, axis=-1)
            return (vectors, outputs["sequence_output"]) if with_sequence else (vectors,)

        self._pack_fns = {1: pack_one, 2: pack_two}
        self._encode = encode

    def _accepted_encoder_keys(self) -> tuple[str, ...]:
        """The published TF Hub DistilBERT takes no input_type_ids; BERT encoders need them."""
        import tensorflow as tf

        probe = {"input_word_ids": tf.zeros([1, 2], tf.int32), "input_mask": tf.ones([1, 2], tf.int32),
                 "input_type_ids": tf.zeros([1, 2], tf.int32)}
        for keys in (_ENCODER_KEYS, _ENCODER_KEYS[:2]):
            try:
                self._encoder({key: probe[key] for key in keys})
                return keys
            except (ValueError, TypeError):
                continue
        raise ValueError("The encoder accepts neither (input_word_ids, input_mask, input_type_ids) nor "
                         "(input_word_ids, input_mask); is it a TF Hub BERT-style text encoder?")

    def _pack(self, segments):
        import tensorflow as tf

        tokenized = [self._preprocessor.tokenize(texts) for texts in segments]
        # Tokens each row would need untruncated: its word pieces plus [CLS] and one [SEP] per segment.
        needed = tf.add_n([tf.cast(t.merge_dims(-2, -1).row_lengths(), tf.int32) for t in tokenized])
        needed += len(segments) + 1
        packed = self._preprocessor.bert_pack_inputs(tokenized, seq_length=tf.constant(self._seq_length))
        return packed["input_word_ids"], packed["input_mask"], packed["input_type_ids"], needed

    def embed(self, texts: Sequence[tuple[str, ...]]) -> list[Embedding]:
        """Embeds a batch; results come back in input order, one per input."""
        segments = list(zip(*texts, strict=True))
        word_ids, mask, type_ids, needed = (t.numpy() for t in self._pack_fns[len(segments)](*segments))
        lengths = mask.sum(axis=1)
        vectors = np.zeros((len(texts), 0), np.float32)
        sequences: list[np.ndarray | None] = [None] * len(texts)
        # Sort by length and pad each sub-batch only to its own longest row: real text is mostly short.
        for chunk in plan_sub_batches(lengths, self._token_budget, self._call_overhead):
            width = int(lengths[chunk].max())
            chunk_vectors, *chunk_sequence = self._encode(word_ids[chunk, :width], mask[chunk, :width],
                                                          type_ids[chunk, :width])
            if vectors.shape[1] == 0:
                vectors = np.zeros((len(texts), chunk_vectors.shape[-1]), np.float32)
            vectors[chunk] = chunk_vectors.numpy()
            if self._with_sequence:
                chunk_sequence = chunk_sequence[0].numpy()
                for row, index in enumerate(chunk):
                    sequences[index] = chunk_sequence[row, :lengths[index]]
        return [Embedding(vectors[i], int(lengths[i]), bool(needed[i] > self._seq_length), sequences[i])
                for i in range(len(texts))]


def plan_sub_batches(lengths: np.ndarray, token_budget: int,
                     call_overhead: int = SUB_BATCH_OVERHEAD_TOKENS["fp32"]) -> list[np.ndarray]:
    """Splits a batch into sub-batches of rows of similar length, each padded only to its own longest row.

    Sorted by length, every sub-batch is a run of neighbours, so the best split is found exactly by dynamic
    programming over the sorted lengths: it minimises the padded tokens computed plus `call_overhead` tokens'
    worth of fixed cost per encoder call, keeping each sub-batch's padded size (rows x longest) within
    `token_budget` (a single row longer than the budget goes alone). Deterministic: the same lengths always
    give the same sub-batches.

    Args:
      lengths: tokens per row.
      token_budget: the most padded tokens in one sub-batch.
      call_overhead: the fixed cost of one encoder call, in tokens.

    Returns:
      Row indices, one array per sub-batch, each in ascending length order.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    widths = np.maximum(lengths[order], 1)
    cost = np.zeros(len(order) + 1)  # cost[end]: the cheapest split of the `end` shortest rows.
    start_of = np.zeros(len(order) + 1, np.int64)
    for end in range(1, len(order) + 1):
        width = widths[end - 1]
        starts = np.arange(max(0, end - max(1, token_budget // width)), end)
        candidates = cost[starts] + (end - starts) * width + call_overhead
        best = int(np.argmin(candidates))
        cost[end], start_of[end] = candidates[best], starts[best]
    sub_batches, end = [], len(order)
    while end > 0:
        sub_batches.append(order[start_of[end]:end])
        end = start_of[end]
    return sub_batches[::-1]


def _allow_gpu_memory_growth(tf) -> None:
    """Lets each process take GPU memory as it needs it, not all at once: Dataflow runs several SDK
    processes per VM (and NVIDIA MPS shares one GPU between them), and the first to load would starve the rest."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as err:  # The GPU is initialised already: an earlier load in this process set it.
            logging.debug("GPU memory growth left as it is for %s: %s", gpu.name, err)


def _encoder_to_run(tf, path: str, precision: str, cls_only: bool = False):
    """The encoder call to run, and whether it computes bf16 by itself (else grappler must, see _use_precision).

    fp32: the SavedModel's `onednn_call` (model.export writes one: each LayerNorm fused into one kernel, about
    3.5% faster) where oneDNN runs the graph on CPU, else its `__call__`. bf16, for an encoder model.export
    wrote: its module rebuilt from the SavedModel (model.export.load_encoder), the computation of its
    `bfloat16_call` with the matmul weights frozen as bfloat16 constants (oneDNN's AMX kernels only take
    those: 2.3x faster on an AMX CPU) and, where oneDNN runs, LayerNorm and softmax as oneDNN's bfloat16
    kernels (no casts; 1.2-1.5x there). bf16 for another SavedModel with a `bfloat16_call`: that; without one:
    the float32 graph.

    With `cls_only` (only [CLS] vectors wanted: --pooling pooled or cls, no token vectors), an encoder that
    model.export wrote runs the form whose last block computes the [CLS] token alone (`onednn_cls_call` or
    `cls_call`; bf16: Encoder.cls_outputs): about 14% faster for DistilBERT, the same vectors. That form
    returns pooled_output and cls_output only.
    """
    encoder = tf.saved_model.load(path)
    onednn = _onednn_runs_on_cpu(tf)
    if precision != "bf16":
        for name, wanted in (("onednn_cls_call", cls_only and onednn), ("cls_call", cls_only),
                             ("onednn_call", onednn)):
            if wanted and hasattr(encoder, name):
                return _BoundCall(encoder, name), False
        return encoder, False
    if hasattr(encoder, "get_config"):
        from model import export_lib

        module = export_lib.load_encoder(path, compute_dtype=tf.bfloat16, saved_model=encoder)
        module.use_onednn_kernels(onednn)
        module.freeze_matmul_weights()
        return (_BoundCall(module, "cls_outputs") if cls_only else module), True
    if hasattr(encoder, "bfloat16_call"):
        return _BoundCall(encoder, "bfloat16_call"), True
    return encoder, False


class _BoundCall:
    """A function of a loaded SavedModel or an Encoder module that keeps its owner alive: the owner holds the
    variables the function reads, and they are deleted with it."""

    def __init__(self, owner, name: str):
        self.owner, self.name = owner, name
        self._function = getattr(owner, name)

    def __call__(self, inputs):
        return self._function(inputs)


def _onednn_runs_on_cpu(tf) -> bool:
    """Whether graphs run on a CPU with oneDNN's rewrites: TensorFlow's default on x86, off with
    TF_ENABLE_ONEDNN_OPTS=0, and beside the point where a GPU takes the encoder."""
    if tf.config.list_physical_devices("GPU"):
        return False
    try:  # No public API tells; this is what TensorFlow's own tests ask.
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return False
    return bool(_pywrap_util_port.IsMklEnabled())


def _use_precision(tf, precision: str, native_bf16: bool) -> None:
    """bf16 for an encoder without its own bfloat16_call: grappler's oneDNN auto mixed precision.

    It rewrites MatMul/BatchMatMul (and the ops between them) of the float32 graph to bfloat16: about 1.4x on
    DistilBERT, against 1.7x for the bfloat16_call that model.export writes. TensorFlow holds this switch per
    process, not per function, and applies it to every graph run afterwards, so it is set either way on each load.
    """
    wanted = precision == "bf16" and not native_bf16
    option = "auto_mixed_precision_onednn_bfloat16"
    if tf.config.optimizer.get_experimental_options().get(option, False) != wanted:
        tf.config.optimizer.set_experimental_options({option: wanted})
    if precision == "bf16" and not _cpu_has_bf16():
        logging.warning("precision bf16 without AVX512_BF16 or AMX on this CPU (or no /proc/cpuinfo): oneDNN "
                        "emulates bfloat16 and may be slower than fp32. GPU kernels are not affected.")


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class EmbeddingModelHandler(ModelHandler[tuple, Embedding, Any]):
    """Loads a preprocessor + encoder SavedModel pair once per worker and embeds batches of texts.

    Each example is a tuple of one text, or two for pairs ([CLS] a [SEP] b [SEP]). Tokenisation, packing,
    encoding and pooling all run in the TensorFlow graph.

    Args:
      encoder: encoder SavedModel handle: local path, gs:// path, or TF Hub URL.
      preprocessor: preprocessor SavedModel handle (tokenize and bert_pack_inputs signatures).
      seq_length: the longest packed input; longer inputs are truncated round-robin.
      pooling: "pooled" (the encoder's pooled_output), "cls" or "mean" (over the attention mask).
      normalize: L2-normalise each vector.
      with_sequence: also return the unpadded token vectors.
      max_batch_size: how many texts Beam hands to the model at once (fewer only at the end of a bundle). The
        more texts, the closer in length the rows of each sub-batch, the less padding.
      token_budget: the most padded tokens encoded at once; batches are cut into length-sorted sub-batches.
      large_model: hold one copy of the models per machine, shared by every worker process.
      model_copies: hold exactly this many copies per machine.
      precision: "fp32", or "bf16" to run the encoder's matrix multiplications in bfloat16 on CPUs with
        AVX512_BF16 or AMX (cosine to fp32 above 0.999 on the benchmark). Encoders exported by model.export
        run rebuilt with frozen bfloat16 weights (about 1.6x faster, about 4x with AMX); any other SavedModel
        runs its bfloat16_call if it has one, else TensorFlow's automatic
        mixed precision (about 1.4x), which applies to every graph of the loading process: one precision per
        process.
    """

    def __init__(self, encoder: str, preprocessor: str, seq_length: int = 128, pooling: str = "pooled",
                 normalize: bool = False, with_sequence: bool = False, max_batch_size: int = 512,
                 token_budget: int = 4096, large_model: bool = False, model_copies: int | None = None,
                 precision: str = "fp32"):
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, not {pooling!r}.")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}.")
        # Whole batches, not Beam's adaptive sizes that start at 1: sorting a large batch is what keeps padding low.
        super().__init__(min_batch_size=max_batch_size, max_batch_size=max_batch_size, large_model=large_model,
                         model_copies=model_copies)
        self._encoder_handle, self._preprocessor_handle = encoder, preprocessor
        self._seq_length, self._pooling, self._normalize = seq_length, pooling, normalize
        self._with_sequence, self._token_budget = with_sequence, max(token_budget, seq_length)
        self._precision = precision

    def load_model(self) -> _Embedder:
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  Registers the ops the preprocessor's graph uses.

        _allow_gpu_memory_growth(tf)
        preprocessor = tf.saved_model.load(resolve_handle(self._preprocessor_handle))
        wants_cls_only = self._pooling in ("pooled", "cls") and not self._with_sequence
        encoder, native_bf16 = _encoder_to_run(tf, resolve_handle(self._encoder_handle), self._precision,
                                               wants_cls_only)
        _use_precision(tf, self._precision, native_bf16)
        embedder = _Embedder(preprocessor, encoder, self._seq_length, self._pooling, self._normalize,
                             self._with_sequence, self._token_budget, self._precision)
        # The first call of each graph function traces and optimises it (about a second): pay that here, not
        # in the first batch. Later shapes need no retracing (every signature has unknown dimensions).
        embedder.embed([("warm up",)])
        embedder.embed([("warm", "up")])
        return embedder

    def run_inference(self, batch: Sequence[tuple], model: _Embedder,
                      inference_args: dict | None = None) -> Iterable[PredictionResult]:
        embeddings = model.embed(list(batch))
        if len(embeddings) != len(batch):
            raise RuntimeError(f"The model returned {len(embeddings)} results for {len(batch)} inputs.")
        # Padded tokens the encoder computed (the model may sit in another process: replan from the lengths).
        lengths = np.array([embedding.tokens for embedding in embeddings])
        beam.metrics.Metrics.counter(_NAMESPACE, "tokens_computed").inc(
            sum(len(rows) * int(lengths[rows].max())
                for rows in plan_sub_batches(lengths, self._token_budget, SUB_BATCH_OVERHEAD_TOKENS[self._precision])))
        return [PredictionResult(example, embedding) for example, embedding in zip(batch, embeddings, strict=True)]

    def get_num_bytes(self, batch: Sequence[tuple]) -> int:
        return sum(len(text.encode("utf-8")) for texts in batch for text in texts)

    def get_metrics_namespace(self) -> str:
        # RunInference's own metrics (failed_batches_counter, latencies) stay apart from the record counters.
        return _NAMESPACE + "_runinference"


class Embed(beam.PTransform):
    """(key, texts) -> (key, Embedding) through RunInference, plus (key, texts, error) for failed batches.

    Keys travel with their texts through inference (KeyedModelHandler); results are never matched back by
    position. Returns a tuple (embedded, failed).
    """

    def __init__(self, handler: EmbeddingModelHandler):
        super().__init__()
        self._handler = handler

    def expand(self, keyed_texts):
        results, errors = (keyed_texts
                           | "RunInference" >> RunInference(KeyedModelHandler(self._handler))
                           .with_exception_handling())
        embedded = results | "TakeInference" >> beam.ParDo(_TakeInference())
        failed = errors.failed_inferences | "SplitFailedBatches" >> beam.FlatMap(_split_failed_batch)
        return embedded, failed


class _TakeInference(beam.DoFn):
    """(key, PredictionResult) -> (key, Embedding); counts what was embedded, once for every sink."""

    def __init__(self):
        self._embedded = records.counter(records.EMBEDDED)
        self._tokens = records.counter(records.TOKENS_EMBEDDED)
        self._truncated = records.counter(records.TRUNCATED)

    def process(self, element):
        key, prediction = element
        embedding = prediction.inference
        self._embedded.inc()
        self._tokens.inc(embedding.tokens)
        if embedding.truncated:
            self._truncated.inc()
        yield key, embedding


def _split_failed_batch(batch_and_error):
    """One failure per record of a batch that raised; Beam's element is (batch, (class, repr, traceback))."""
    batch, (_, error, _) = batch_and_error
    beam.metrics.Metrics.counter(_NAMESPACE, "failed_inference_error").inc(len(batch))
    for key, texts in batch:
        yield key, texts, error
