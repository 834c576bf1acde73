"""Embeds texts with a preprocessor + encoder SavedModel pair through Beam RunInference."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import apache_beam as beam

import runtime
from transforms import records
from transforms.files import BeamFiles

__all__ = ["EmbeddingModelHandler", "Embed", "EmbedTexts", "chunk_records"]

_MODEL_MANAGER = "apache_beam.ml.inference.model_manager"


@contextlib.contextmanager
def _without_model_manager():
    """Imports RunInference's module without its ModelManager, which Beam 2.77 imports with it, and with that
    torch and scipy wherever torch is installed: seconds of start-up (see BENCHMARKS.md) for a class that only
    RunInference(use_model_manager=True) uses, and which Beam then imports itself. Beam's memory metric, which
    that failed import also turns off, is turned back on."""
    if "apache_beam.ml.inference.base" in sys.modules or _MODEL_MANAGER in sys.modules:
        yield
        return
    sys.modules[_MODEL_MANAGER] = None  # An ImportError, which Beam catches.
    try:
        yield
    finally:
        del sys.modules[_MODEL_MANAGER]
        base = sys.modules.get("apache_beam.ml.inference.base")
        if base is not None and getattr(base, "resource", False) is None:
            import resource

            base.resource = resource


with _without_model_manager():
    from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference


# With --chunking, the most text (code points) Beam hands to the model at once, whatever --batch_size says: a
# batch of long documents stays within a bounded size (a longer document goes alone).
_CHUNKING_BATCH_CHARS = 1 << 20


class EmbeddingModelHandler(ModelHandler[tuple, runtime.Embedding, Any]):
    """Loads a preprocessor + encoder SavedModel pair once per worker and embeds batches of texts.

    Each example is a tuple of one text, or two for pairs ([CLS] a [SEP] b [SEP]). Tokenisation, packing,
    encoding and pooling all run in the TensorFlow graph.

    Loading is runtime.load's work (handles read through Beam's FileSystems, so gs:// works wherever Beam's
    does); this class adds what Beam needs: batch sizes, model sharing and the tokens_computed counter.

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
      pairs: whether every input is a pair (True) or a single text (False), when known: loading then warms up
        only that form. None (unknown): both.
      precision: "fp32", or "bf16" to run the encoder's matrix multiplications in bfloat16 on CPUs with
        AVX512_BF16 or AMX (close to fp32 and faster, see BENCHMARKS.md). Encoders exported by model.export
        run rebuilt with frozen bfloat16 weights; any other SavedModel runs with TensorFlow's automatic mixed
        precision, which applies to every graph of the loading process: one precision per process.
      chunking: a runtime.ChunkSettings: cut each text into chunks of whole words and embed every chunk
        (Embedder.embed_documents); a result is then the list of the text's ChunkEmbeddings. Single texts only.
      prompt: text prepended to every text before tokenizing (runtime.resolve_prompt picks the model's).

    Raises:
      ValueError: for an unknown pooling or precision.
    """

    def __init__(self, encoder: str, preprocessor: str, seq_length: int = 128, pooling: str = "pooled",
                 normalize: bool = False, with_sequence: bool = False, max_batch_size: int = 512,
                 token_budget: int = 4096, large_model: bool = False, model_copies: int | None = None,
                 precision: str = "fp32", chunking: runtime.ChunkSettings | None = None,
                 pairs: bool | None = None, prompt: str = ""):
        runtime.check_settings(pooling=pooling, precision=precision)
        batch_size, weight = max_batch_size, {}
        if chunking:
            # Batches weighed in code points (Beam 2.77's BatchElements takes no max_batch_weight): at most
            # _CHUNKING_BATCH_CHARS of text, and at most max_batch_size texts since each weighs at least its share.
            batch_size = _CHUNKING_BATCH_CHARS
            weight = {"element_size_fn": functools.partial(_text_chars, least=_CHUNKING_BATCH_CHARS // max_batch_size)}
        # Whole batches, not Beam's adaptive sizes that start at 1: sorting a large batch is what keeps padding low.
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size, large_model=large_model,
                         model_copies=model_copies, **weight)
        self.chunking = chunking
        self._encoder_handle, self._preprocessor_handle = encoder, preprocessor
        self._seq_length, self._pooling, self._normalize = seq_length, pooling, normalize
        self._with_sequence, self._token_budget = with_sequence, token_budget
        self._precision, self._pairs, self._prompt = precision, pairs, prompt

    def load_model(self) -> runtime.Embedder:
        # Loading takes seconds to minutes (staging, TensorFlow, tracing): a run that is only loading says so.
        logging.info("Loading the model %s ...", self._encoder_handle)
        start = time.monotonic()
        model = runtime.load(self._encoder_handle, self._preprocessor_handle, seq_length=self._seq_length,
                             pooling=self._pooling, normalize=self._normalize, precision=self._precision,
                             with_sequence=self._with_sequence, token_budget=self._token_budget, files=BeamFiles(),
                             pairs=self._pairs, chunking=self.chunking, prompt=self._prompt)
        logging.info("Model loaded in %.1f s; embedding.", time.monotonic() - start)
        return model

    def run_inference(self, batch: Sequence[tuple], model: runtime.Embedder,
                      inference_args: dict | None = None) -> Iterable[PredictionResult]:
        if not batch:  # BatchElements hands on an empty batch before a text that outweighs a whole batch.
            return []
        if self.chunking:
            embedded = model.embed_documents([texts[0] for texts in batch], self.chunking)
            results = embedded.documents
        else:
            embedded = model.embed(list(batch))
            results = embedded.embeddings
        if len(results) != len(batch):
            raise RuntimeError(f"The model returned {len(results)} results for {len(batch)} inputs.")
        records.counter(records.TOKENS_COMPUTED).inc(embedded.tokens_computed)
        if embedded.unknown_only:
            records.counter(records.UNKNOWN_ONLY).inc(embedded.unknown_only)
        return [PredictionResult(example, result) for example, result in zip(batch, results, strict=True)]

    def get_num_bytes(self, batch: Sequence[tuple]) -> int:
        return sum(len(text.encode("utf-8")) for texts in batch for text in texts)

    def get_metrics_namespace(self) -> str:
        # RunInference's own metrics (failed_batches_counter, latencies) stay apart from the record counters.
        return records.NAMESPACE + "_runinference"


def _text_chars(element, least: int) -> int:
    """A (key, texts) element's weight in a batch: its code points, at least `least`."""
    return max(least, sum(len(text) for text in element[1]))


class Embed(beam.PTransform):
    """(key, texts) -> (key, Embedding) through RunInference, plus (key, texts, error) for failed batches.

    Keys travel with their texts through inference (KeyedModelHandler); results are never matched back by
    position. Returns a tuple (embedded, failed). With a chunking handler, `embedded` holds one element per
    document, (key, [(chunk key, Embedding)]) with records.chunk_key's keys (and each chunk's text with
    `chunk_text`); chunk_records turns them into one (key, Embedding) per chunk.
    """

    def __init__(self, handler: EmbeddingModelHandler, chunk_text: bool = False):
        super().__init__()
        self._handler, self._chunk_text = handler, chunk_text

    def expand(self, keyed_texts):
        results, errors = (keyed_texts
                           | "RunInference" >> RunInference(KeyedModelHandler(self._handler))
                           .with_exception_handling())
        take = _TakeChunks(self._chunk_text) if self._handler.chunking else _TakeInference()
        embedded = results | "TakeInference" >> beam.ParDo(take)
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


class _TakeChunks(beam.DoFn):
    """(key, PredictionResult of a document's ChunkEmbeddings) -> (key, [(chunk key, Embedding)]); counts
    documents, chunks, their tokens and the documents cut into more than one chunk."""

    def __init__(self, chunk_text: bool):
        self._chunk_text = chunk_text
        self._documents = records.counter(records.EMBEDDED)
        self._chunks = records.counter(records.CHUNKS)
        self._tokens = records.counter(records.TOKENS_EMBEDDED)
        self._chunked = records.counter(records.DOCUMENTS_CHUNKED)

    def process(self, element):
        key, prediction = element
        text = prediction.example[0]
        chunks = []
        for chunk in prediction.inference:
            where = records.ChunkKey(key.id, chunk.index, chunk.count, chunk.char_start, chunk.char_end,
                                     text[chunk.char_start:chunk.char_end] if self._chunk_text else None)
            chunks.append((records.chunk_key(key, where), runtime.Embedding(chunk.vector, chunk.tokens, False)))
            self._tokens.inc(chunk.tokens)
        self._documents.inc()
        self._chunks.inc(len(chunks))
        if len(chunks) > 1:
            self._chunked.inc()
        yield key, chunks


def chunk_records(documents):
    """Embed's chunked output, (key, [(chunk key, Embedding)]) per document -> one (chunk key, Embedding) per chunk."""
    return documents | "OneRecordPerChunk" >> beam.FlatMap(lambda document: document[1])


def _split_failed_batch(batch_and_error):
    """One failure per record of a batch that raised; Beam's element is (batch, (class, repr, traceback))."""
    batch, (_, error, _) = batch_and_error
    records.counter(records.FAILED_PREFIX + "inference_error").inc(len(batch))
    for key, texts in batch:
        yield key, texts, error


class EmbedTexts(beam.PTransform):
    """(key, text) -> (key, vector) for your own Beam pipelines, plus the Failures of texts that could not be
    embedded. What `python -m pipeline.run` does between reading and writing, without its options.

    Keys are yours (any picklable value) and travel with their texts: results are never matched back by
    position. Instead of texts, all elements may hold (first, second) pairs, embedded as [CLS] first [SEP] second
    [SEP] (a batch mixing the two fails, into `failures`). Pooling,
    normalisation and the longest input come from the model when model.export recorded them (a
    sentence-transformers checkpoint), else from the arguments or their defaults, as on the command line.

        with beam.Pipeline() as p:
            vectors, failures = (p | beam.Create([("a", "the cat sat"), ("b", "a dog barked")])
                                 | EmbedTexts(model_dir="models/minilm"))

    Args:
      model_dir: a directory model.export wrote (encoder/ and preprocessor/), local or gs://.
      encoder, preprocessor: the two SavedModel handles instead of model_dir.
      pooling, normalize, seq_length: as --pooling, --normalize, --seq_length; None: the model's own, else the
        command line's default.
      **handler_options: EmbeddingModelHandler's other arguments (precision, max_batch_size, token_budget,
        large_model, model_copies).

    Returns:
      EmbedTexts.Result(embeddings, failures): (key, float32 vector) pairs, and transforms.records.Failures.
    """

    class Result(NamedTuple):
        embeddings: beam.PCollection
        failures: beam.PCollection

    def __init__(self, model_dir: str | None = None, *, encoder: str | None = None, preprocessor: str | None = None,
                 pooling: str | None = None, normalize: bool | None = None, seq_length: int | None = None,
                 **handler_options):
        super().__init__()
        if bool(model_dir) == bool(encoder and preprocessor):
            raise ValueError("EmbedTexts needs model_dir, or encoder and preprocessor (not both).")
        if model_dir:
            encoder, preprocessor = model_dir.rstrip("/") + "/encoder", model_dir.rstrip("/") + "/preprocessor"
        self.settings = runtime.resolve_settings(encoder, pooling=pooling, normalize=normalize, seq_length=seq_length,
                                                 files=BeamFiles())
        self._handler = EmbeddingModelHandler(encoder, preprocessor, seq_length=self.settings.seq_length,
                                              pooling=self.settings.pooling, normalize=self.settings.normalize,
                                              **handler_options)

    def expand(self, keyed_texts):
        as_tuples = keyed_texts | "TextsAsTuples" >> beam.MapTuple(_as_tuple)
        embedded, failed = as_tuples | "Embed" >> Embed(self._handler)
        vectors = embedded | "TakeVectors" >> beam.MapTuple(lambda key, embedding: (key, embedding.vector))
        failures = failed | "ToFailures" >> beam.MapTuple(_user_key_failure)
        return self.Result(vectors, failures)


def _as_tuple(key, text):
    return key, (text,) if isinstance(text, str) else tuple(text)


def _user_key_failure(key, texts, error):
    return records.inference_failure(records.RecordKey(str(key), "", "EmbedTexts"), texts, error)
