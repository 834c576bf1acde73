"""Which encoder call runs, at which precision: fp32 or bf16, whole or [CLS]-only, oneDNN's fused form or not."""

from __future__ import annotations

import logging

from runtime import devices

__all__ = ["PRECISIONS", "EncoderCall", "load_encoder_call", "use_precision"]

PRECISIONS = ("fp32", "bf16")
# What every call of an encoder model.export wrote takes (input_type_ids optional: DistilBERT ignores them).
_EXPORTED_INPUTS = ("input_word_ids", "input_mask", "input_type_ids")


class EncoderCall:
    """One function of a loaded encoder (a SavedModel or a rebuilt Encoder module), kept with its owner.

    The owner holds the variables the function reads, and they are deleted with it: keeping the function alone
    would leave it reading freed variables.

    Attributes:
      owner: the loaded SavedModel, or the Encoder module rebuilt from it.
      form: the name of the function run: "__call__", or a rebuilt module's "cls_outputs".
      native_bf16: whether the function computes in bfloat16 by itself (else grappler must, see use_precision).
      input_keys: the inputs it takes, when known (model.export's encoders take all three, see its docstring);
        None: the Embedder tries a call to find out.
    """

    def __init__(self, owner, form: str = "__call__", *, native_bf16: bool = False,
                 input_keys: tuple[str, ...] | None = None):
        self.owner, self.form, self.native_bf16, self.input_keys = owner, form, native_bf16, input_keys
        self._function = owner if form == "__call__" else getattr(owner, form)

    def __call__(self, inputs):
        return self._function(inputs)


def load_encoder_call(path: str, *, precision: str = "fp32", cls_only: bool = False) -> EncoderCall:
    """Loads the encoder SavedModel at local `path` and picks the fastest call that gives the outputs wanted.

    An encoder model.export wrote is rebuilt as its Encoder module from its config and variables
    (model.export_lib.load_encoder), without loading the SavedModel's functions, which takes seconds (see
    BENCHMARKS.md); where oneDNN runs, its LayerNorms (and in bf16 its softmax) trace as oneDNN's fused kernels:
    the graph of the export's `onednn_call`, the same vectors. bf16 computes in bfloat16 with the matmul weights
    frozen as bfloat16 constants (oneDNN's AMX kernels only take those). Any other SavedModel: its `__call__`,
    which for bf16 use_precision then hands to grappler. How much faster each is: see BENCHMARKS.md.

    Args:
      path: a local encoder SavedModel directory (runtime.resolve_handle makes one of any handle).
      precision: one of PRECISIONS.
      cls_only: only [CLS] vectors are wanted (pooling "pooled" or "cls", no token vectors). An encoder that
        model.export wrote then runs `cls_outputs`, whose last block computes the [CLS] token alone: the same
        vectors, faster. That form returns pooled_output and cls_output only.

    Returns:
      The call, with its owner, form and whether it computes bf16 by itself.
    """
    import tensorflow as tf

    from model import export_lib

    config, saved_model = export_lib.read_config(path), None
    if config is None:  # Not model.export's, or its config not where read_config looks: load and ask.
        saved_model = tf.saved_model.load(path)
        if not hasattr(saved_model, "get_config"):
            return EncoderCall(saved_model)
    bf16 = precision == "bf16"
    module = export_lib.load_encoder(path, compute_dtype=tf.bfloat16 if bf16 else tf.float32, config=config,
                                     saved_model=saved_model)
    module.use_onednn_kernels(devices.onednn_runs_on_cpu())
    if bf16:
        module.freeze_matmul_weights()
    return EncoderCall(module, "cls_outputs" if cls_only else "__call__", native_bf16=bf16,
                       input_keys=_EXPORTED_INPUTS)


def use_precision(precision: str, *, native_bf16: bool) -> None:
    """Sets grappler's oneDNN auto mixed precision for bf16 with an encoder that has no bfloat16 call of its own.

    It rewrites MatMul/BatchMatMul (and the ops between them) of the float32 graph to bfloat16: faster, though
    less than the rebuilt bfloat16 encoder of model.export's models (see BENCHMARKS.md). TensorFlow holds this
    switch per process, not per function, and applies it to every graph run afterwards, so it is set either way
    on each load: one precision per process.

    Args:
      precision: one of PRECISIONS.
      native_bf16: whether the encoder call computes bf16 by itself (EncoderCall.native_bf16).
    """
    import tensorflow as tf

    wanted = precision == "bf16" and not native_bf16
    option = "auto_mixed_precision_onednn_bfloat16"
    if tf.config.optimizer.get_experimental_options().get(option, False) != wanted:
        tf.config.optimizer.set_experimental_options({option: wanted})
    if precision == "bf16" and not devices.cpu_has_bf16():
        logging.warning("precision bf16 without AVX512_BF16 or AMX on this CPU (or no /proc/cpuinfo): oneDNN "
                        "emulates bfloat16 and may be slower than fp32. GPU kernels are not affected.")
