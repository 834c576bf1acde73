"""What this machine offers the engine: GPUs, oneDNN on the CPU, bfloat16 CPU instructions."""

from __future__ import annotations

import logging

__all__ = ["allow_gpu_memory_growth", "onednn_runs_on_cpu", "cpu_has_bf16"]


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
