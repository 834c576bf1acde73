"""Runs an exported preprocessor + encoder pair on this machine: staging, checks, engine, precision; no Beam."""

from runtime.chunking import CHUNKING_MODES, ChunkSettings
from runtime.devices import allow_gpu_memory_growth, cpu_has_bf16, onednn_runs_on_cpu, skip_needless_rewrites
from runtime.embedding import ChunkEmbedding, EmbeddedBatch, EmbeddedDocuments, Embedding
from runtime.engine import POOLING_MODES, SUB_BATCH_OVERHEAD_TOKENS, Embedder, plan_sub_batches
from runtime.files import LOCAL, FileInfo, Files, LocalFiles
from runtime.handles import (
    DEFAULT_POOLING,
    DEFAULT_SEQ_LENGTH,
    MAX_SEQ_LENGTH,
    SENTENCE_CONFIG_PATH,
    Prompt,
    Settings,
    check_models,
    check_seq_length,
    embedding_dimension,
    model_defaults,
    model_fingerprint,
    model_max_seq_length,
    resolve_handle,
    resolve_prompt,
    resolve_settings,
    stage_locally,
)
from runtime.imports import import_tensorflow, register_text_ops
from runtime.loader import check_settings, count_wordpieces, embed_texts, load
from runtime.precision import PRECISIONS, EncoderCall, load_encoder_call, use_precision

__all__ = ["load", "embed_texts", "check_settings", "Embedder", "Embedding", "EmbeddedBatch", "ChunkEmbedding",
           "EmbeddedDocuments",
           "ChunkSettings", "CHUNKING_MODES", "EncoderCall", "load_encoder_call",
           "use_precision", "plan_sub_batches", "POOLING_MODES", "PRECISIONS", "SUB_BATCH_OVERHEAD_TOKENS",
           "SENTENCE_CONFIG_PATH", "DEFAULT_POOLING", "DEFAULT_SEQ_LENGTH", "MAX_SEQ_LENGTH", "Settings",
           "resolve_settings", "resolve_prompt", "Prompt", "count_wordpieces",
           "resolve_handle", "stage_locally", "model_defaults", "check_models",
           "check_seq_length", "model_max_seq_length", "model_fingerprint", "embedding_dimension", "Files",
           "FileInfo", "LocalFiles", "LOCAL", "allow_gpu_memory_growth", "skip_needless_rewrites",
           "onednn_runs_on_cpu", "cpu_has_bf16", "import_tensorflow", "register_text_ops"]
