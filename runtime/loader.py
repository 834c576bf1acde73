"""Loading an exported preprocessor + encoder pair into a warmed-up Embedder, and checking its settings."""

from __future__ import annotations

import concurrent.futures

import numpy as np

from runtime import devices, imports
from runtime.chunking import ChunkSettings
from runtime.engine import POOLING_MODES, Embedder, wordpieces
from runtime.files import LOCAL, Files
from runtime.handles import resolve_handle, resolve_prompt, resolve_settings
from runtime.precision import PRECISIONS, load_encoder_call, use_precision

__all__ = ["check_settings", "load", "count_wordpieces", "embed_texts"]


def check_settings(*, pooling: str = "pooled", precision: str = "fp32") -> None:
    """Refuses a pooling or precision the engine does not know, before anything loads.

    Raises:
      ValueError: naming the setting, its choices and the value given.
    """
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, not {pooling!r}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}.")


def load(encoder: str, preprocessor: str, *, seq_length: int = 128, pooling: str = "pooled",
         normalize: bool = False, precision: str = "fp32", with_sequence: bool = False, token_budget: int = 4096,
         files: Files = LOCAL, pairs: bool | None = None, chunking: ChunkSettings | None = None,
         prompt: str = "") -> Embedder:
    """Loads a preprocessor + encoder SavedModel pair, picks the encoder call to run, and warms it up.

    Registers tensorflow_text's ops first (they must be before the preprocessor loads), lets GPU memory grow and,
    on a CPU, skips graph passes that do nothing for these graphs (devices.skip_needless_rewrites).
    The encoder runs the fastest call that gives the outputs wanted (see load_encoder_call): for pooling "pooled"
    or "cls" without token vectors, the [CLS]-only form where the export has one.

    Args:
      encoder: encoder SavedModel handle: local path, a URI `files` reads (gs://...), or TF Hub URL.
      preprocessor: preprocessor SavedModel handle (tokenize and bert_pack_inputs signatures), likewise.
      seq_length: the longest packed input; longer inputs are truncated round-robin.
      pooling: one of POOLING_MODES.
      normalize: L2-normalise each vector.
      precision: one of PRECISIONS. "bf16" also sets a process-wide TensorFlow switch for encoders without a
        bfloat16 call of their own (see use_precision): one precision per process.
      with_sequence: also return the unpadded token vectors.
      token_budget: the most padded tokens encoded at once (at least seq_length).
      files: reads handles that are not local paths or URLs; they are staged to local disk once per machine.
      pairs: whether the inputs will be pairs (True) or single texts (False), when known: only that form is warmed
        up, and the other traces at its first batch (seconds). None warms up both.
      chunking: how documents will be cut (Embedder.embed_documents), when they will be: the functions it runs
        are warmed up instead (the late mode's token vectors, the word splitting).
      prompt: text prepended to every input before tokenizing (runtime.resolve_prompt); "" for none.

    Returns:
      The Embedder, its graph functions traced.

    Raises:
      ValueError: for an unknown pooling or precision, or an encoder that takes no BERT-style inputs.
    """
    check_settings(pooling=pooling, precision=precision)
    tf = imports.import_tensorflow()
    imports.register_text_ops()
    devices.allow_gpu_memory_growth()
    devices.skip_needless_rewrites()
    cls_only = pooling in ("pooled", "cls") and not with_sequence
    encoder_call = load_encoder_call(resolve_handle(encoder, files=files), precision=precision, cls_only=cls_only)
    use_precision(precision, native_bf16=encoder_call.native_bf16)
    embedder = Embedder(None, encoder_call, seq_length=seq_length, pooling=pooling, normalize=normalize,
                        with_sequence=with_sequence, token_budget=token_budget, precision=precision, prompt=prompt)
    # The first call of each graph function traces and optimises it: pay that here, not in the first batch.
    # Later shapes need no retracing (every signature has unknown dimensions). The encoder's first call is
    # mostly grappler in C++, which releases the GIL (seconds for bf16's constant weights): it runs in a thread
    # while this one loads the preprocessor, which is Python (see BENCHMARKS.md). Tracing is Python too: done
    # first, here.
    late = chunking is not None and chunking.mode == "late"
    embedder.trace_encoder(token_vectors=late)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="warm-up-encoder") as pool:
        encoder_warmed = pool.submit(embedder.warm_up_encoder, late)
        embedder.preprocessor = tf.saved_model.load(resolve_handle(preprocessor, files=files))
        embedder.warm_up_inputs(pairs, chunking=chunking is not None)
        encoder_warmed.result()
    return embedder


def count_wordpieces(preprocessor: str, text: str, *, files: Files = LOCAL) -> int:
    """How many wordpieces the preprocessor makes of `text` (a prompt, to size chunks around it). Loads the
    preprocessor alone: about a second."""
    tf = imports.import_tensorflow()
    imports.register_text_ops()
    return len(wordpieces(tf.saved_model.load(resolve_handle(preprocessor, files=files)), text))


def embed_texts(model_dir: str, texts, *, prompt_name: str | None = None, prompt: str | None = None,
                pooling: str | None = None, normalize: bool | None = None, seq_length: int | None = None,
                files: Files = LOCAL) -> np.ndarray:
    """Embeds a few texts in this process, exactly as `python -m pipeline.run --model_dir MODEL_DIR` embeds a
    corpus (the same engine; pooling, normalisation, length and prompt from the flags' counterparts here, else the
    model's own): a query to search an output with, say.

        vectors = runtime.embed_texts("out/models/all-MiniLM-L6-v2", ["how do cats sleep?"], prompt_name="query")

    Loads the model on every call (seconds): for many texts, run the pipeline or keep a runtime.load'ed Embedder.

    Returns:
      float32 [len(texts), dimension], one row per text, in order.

    Raises:
      ValueError: for a prompt the model does not declare, or settings the engine does not know.
    """
    root = model_dir.rstrip("/")
    encoder, preprocessor = f"{root}/encoder", f"{root}/preprocessor"
    settings = resolve_settings(encoder, pooling=pooling, normalize=normalize, seq_length=seq_length, files=files)
    chosen = resolve_prompt(encoder, prompt_name=prompt_name, prompt=prompt, files=files)
    embedder = load(encoder, preprocessor, seq_length=settings.seq_length, pooling=settings.pooling,
                    normalize=settings.normalize, files=files, pairs=False, prompt=chosen.text)
    embedded = embedder.embed([(text,) for text in texts]).embeddings
    return np.stack([embedding.vector for embedding in embedded]) if embedded else np.zeros((0, 0), np.float32)
