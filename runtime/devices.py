"""What this machine offers the engine: GPUs, oneDNN on the CPU, bfloat16 CPU instructions."""

from __future__ import annotations

import logging

__all__ = ["allow_gpu_memory_growth", "skip_needless_rewrites", "onednn_runs_on_cpu", "cpu_has_bf16"]


def allow_gpu_memory_growth() -> None:
    """Lets each process take GPU memory as it needs it, not all at once.

    Dataflow runs several SDK processes per VM (and NVIDIA MPS shares one GPU between them): the first to load
    would starve the rest. A GPU already initialised by an earlier load in this process is left as it is.
    """
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as err:  # The GPU is initialised already: an earlier load in this process set it.
            logging.debug("GPU memory growth left as it is for %s: %s", gpu.name, err)


def skip_needless_rewrites() -> None:
    """Turns off the graph passes that only cost time for these graphs on a CPU, for the whole process.

    Grappler optimises each traced function at its first call. Four of its default passes do nothing for an
    encoder or a preprocessor run on a CPU: the memory optimizer (swaps tensors to host memory and recomputes
    them, for GPU and training graphs), the layout optimizer (transposes convolutions and pooling between NHWC
    and NCHW; neither has any), and the two MLIR (TFG) pipelines, which convert the whole graph to MLIR and back
    to sort it, infer shapes and sink ops into conditionals: the graph that comes out is the same, node for
    node. Over the bf16 encoder, whose matmul weights are constants in its graph, each conversion copies them:
    together these passes took most of its first call (see BENCHMARKS.md). Where a GPU is visible,
    TensorFlow's defaults stay.

    TensorFlow derives each thread's function-call config from the context's config at the thread's first call,
    so this must come before any function runs (runtime.load calls it first). No public API turns these passes
    off: they are set in the context's base config, where TensorFlow keeps what
    tf.compat.v1.enable_eager_execution(config=...) gives; a TensorFlow without that attribute keeps them on.
    """
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    try:
        from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
        from tensorflow.python.eager import context

        eager = context.context()
        base = eager._config if eager._config is not None else config_pb2.ConfigProto()  # noqa: SLF001
        rewrites = base.graph_options.rewrite_options
        rewrites.memory_optimization = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
        rewrites.disable_tfg_optimizer = True
        rewrites.experimental_conditional_code_motion = rewriter_config_pb2.RewriterConfig.OFF
        eager._config = base  # noqa: SLF001
    except (ImportError, AttributeError) as err:
        logging.debug("grappler's memory optimizer and TFG passes left on: %s", err)
    # Public; it also makes this thread re-read the context's config for its next function call.
    tf.config.optimizer.set_experimental_options({"layout_optimizer": False})


def onednn_runs_on_cpu() -> bool:
    """Whether graphs run on a CPU with oneDNN's rewrites.

    TensorFlow's default on x86, off with TF_ENABLE_ONEDNN_OPTS=0, and beside the point (False) where a GPU takes
    the encoder.
    """
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return False
    try:  # No public API tells; this is what TensorFlow's own tests ask.
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return False
    return bool(_pywrap_util_port.IsMklEnabled())


def cpu_has_bf16() -> bool:
    """Whether the CPU has AVX512_BF16 or AMX (False without /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
