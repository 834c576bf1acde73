"""Exports an encoder and its preprocessor as TF Hub-style SavedModels, and reloads an exported encoder.

`export_model(output_dir, ...)` writes OUTPUT_DIR/encoder and OUTPUT_DIR/preprocessor. The preprocessor's
contract is in model/preprocessor.py. The encoder's (the TF Hub BERT text-encoder API, as tensorflow/models
`official/nlp/tools/export_tfhub_lib.py` writes it) follows.

Inputs. `__call__` and the inference-only functions below take one dict of int32 tensors, each [batch, seq],
any batch size and any seq from 1 to max_position_embeddings:
  input_word_ids: token ids, [CLS] first.
  input_mask: 1 on real tokens, 0 on padding.
  input_type_ids: optional segment ids. DistilBERT has no token-type embeddings: it accepts and ignores them,
    so that BERT preprocessors plug in unchanged. BERT reads them, and takes all zeros without them.

`encoder(inputs, training=False)` returns a dict:
  pooled_output: float32 [batch, hidden]. BERT: tanh(dense(the last block's [CLS] vector)). DistilBERT has no
    pooler: the last block's [CLS] vector itself, sequence_output[:, 0], as in the published TF Hub DistilBERT.
  sequence_output: float32 [batch, seq, hidden], the last block's output.
  encoder_outputs: a list of num_layers float32 [batch, seq, hidden], one per block, the last equal to
    sequence_output.
  `training` is a Python bool; dropout is active only with training=True.

It is a Reusable SavedModel: `variables`, `trainable_variables` (every variable) and `regularization_losses`
(empty), so that `hub.KerasLayer(path, trainable=True)` fine-tunes it.

`signatures["serving_default"]` takes input_word_ids and input_mask as keyword arguments; for BERT also
input_type_ids, which it requires (DistilBERT's signature has no such input). It returns the flat dict
pooled_output, sequence_output and encoder_outputs_0 .. encoder_outputs_{num_layers-1}, dtypes and shapes as
above.

Inference-only functions (no `training` argument; dropout off; same inputs, same variables):
  onednn_call(inputs): the dict of `encoder(inputs, training=False)`, with each LayerNorm in the form that
    TensorFlow's oneDNN graph rewriter fuses into one kernel. Equal to `__call__` up to float32 rounding.
    Faster where oneDNN runs the graph on CPU (TensorFlow's default on x86), slower elsewhere (GPU, ARM,
    TF_ENABLE_ONEDNN_OPTS=0); see BENCHMARKS.md.
  cls_call(inputs) and onednn_cls_call(inputs): only pooled_output and cls_output, both float32 [batch, hidden],
    cls_output being sequence_output[:, 0] (DistilBERT: equal to pooled_output), as `__call__` and
    `onednn_call` compute them up to float32 rounding. The last block computes the [CLS] token alone
    (Encoder.cls_outputs): faster, see BENCHMARKS.md. No sequence_output, no encoder_outputs.

Other attributes:
  get_config(): a scalar tf.string, the architecture as JSON (model.config.EncoderConfig's fields).
    `load_encoder` reads it to rebuild the module, and its presence marks an encoder that this module wrote.
  vocab_file: the WordPiece vocabulary given to the export (the checkpoint's), as an Asset; absent without one.
  assets.extra/sentence_embedding.json (SENTENCE_CONFIG_PATH, a file beside the graph; only for
    sentence-transformers checkpoints): {"pooling": "mean" | "cls", "normalize": bool, "max_seq_length": int},
    how the checkpoint's vectors are meant to be pooled.

Everything computes in float32. For bfloat16 inference, `load_encoder(encoder_dir, compute_dtype=tf.bfloat16)`
rebuilds the Encoder module from the SavedModel, which then computes its matrix multiplications in bfloat16
(LayerNorm and softmax statistics stay float32) on the same float32 weights.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from model import config as config_lib
from model.encoder import Encoder

__all__ = ["ENCODER_DIR", "PREPROCESSOR_DIR", "SENTENCE_CONFIG_PATH", "export_model", "export_encoder",
           "write_sentence_config", "read_config", "load_encoder"]

ENCODER_DIR, PREPROCESSOR_DIR = "encoder", "preprocessor"
# Inside the encoder SavedModel: {"pooling": "mean"|"cls", "normalize": bool, "max_seq_length": int}, written for
# sentence-transformers checkpoints; the pipeline's defaults for --pooling, --normalize and --seq_length.
SENTENCE_CONFIG_PATH = "assets.extra/sentence_embedding.json"


def _input_specs(with_type_ids: bool) -> dict:
    names = ["input_word_ids", "input_mask"] + (["input_type_ids"] if with_type_ids else [])
    return {name: tf.TensorSpec([None, None], tf.int32, name=name) for name in names}


def _serving_signature(encoder: Encoder):
    specs = _input_specs(with_type_ids=encoder.config.family == "bert")

    @tf.function(input_signature=[specs])
    def serve(inputs):
        outputs = encoder(inputs, training=False)
        flat = {"pooled_output": outputs["pooled_output"], "sequence_output": outputs["sequence_output"]}
        for i, layer_output in enumerate(outputs["encoder_outputs"]):
            flat[f"encoder_outputs_{i}"] = layer_output
        return flat

    return serve


def _inference_call(encoder: Encoder, inputs, *, onednn: bool, cls: bool):
    """encoder(inputs, training=False), or with `cls` encoder.cls_outputs(inputs), traced in float32 and, with
    `onednn`, with oneDNN's fused kernels (see Encoder.use_onednn_kernels); the variables are the same.
    Afterwards the module has its compute dtype back and oneDNN's kernels off, the portable form that
    `__call__` and training trace."""
    saved_dtype = encoder.compute_dtype
    encoder.compute_dtype = tf.float32
    encoder.use_onednn_kernels(onednn)
    try:
        return encoder.cls_outputs(inputs) if cls else encoder(inputs, training=False)
    finally:
        encoder.compute_dtype = saved_dtype
        encoder.use_onednn_kernels(False)


def export_encoder(output_dir: str, *, encoder: Encoder, vocab_file: str | None = None) -> None:
    """Saves an encoder as a Reusable SavedModel with the interface of this module's docstring.

    Args:
      output_dir: where to write the SavedModel (a local directory).
      encoder: the module to save; its variables are saved as they are.
      vocab_file: the WordPiece vocabulary, kept in the SavedModel as the `vocab_file` asset; None for none.
    """

    @tf.function
    def call(inputs, training=False):
        return encoder(inputs, training=training)

    @tf.function
    def onednn_call(inputs):
        return _inference_call(encoder, inputs, onednn=True, cls=False)

    @tf.function
    def cls_call(inputs):
        return _inference_call(encoder, inputs, onednn=False, cls=True)

    @tf.function
    def onednn_cls_call(inputs):
        return _inference_call(encoder, inputs, onednn=True, cls=True)

    for with_type_ids in (False, True):
        for training in (False, True):
            call.get_concrete_function(_input_specs(with_type_ids), training=training)
    for function in (onednn_call, cls_call, onednn_cls_call):
        for with_type_ids in (False, True):
            function.get_concrete_function(_input_specs(with_type_ids))

    config_json = json.dumps(encoder.config.to_dict(), sort_keys=True)
    root = tf.train.Checkpoint()
    root.encoder = encoder  # load_encoder restores the module from this checkpoint path.
    root.__call__ = call
    root.onednn_call = onednn_call
    root.cls_call = cls_call
    root.onednn_cls_call = onednn_cls_call
    root.variables = list(encoder.variables)
    root.trainable_variables = list(encoder.trainable_variables)
    root.regularization_losses = []
    root.get_config = tf.function(lambda: tf.constant(config_json), input_signature=[])
    if vocab_file:
        root.vocab_file = tf.saved_model.Asset(vocab_file)
    tf.saved_model.save(root, output_dir, signatures={"serving_default": _serving_signature(encoder)})


def export_model(output_dir: str, *, encoder: Encoder, vocab_file: str, do_lower_case: bool,
                 default_seq_length: int = 128, sentence_config: dict | None = None) -> tuple[str, str]:
    """Exports an encoder and its preprocessor side by side.

    Args:
      output_dir: where to write OUTPUT_DIR/encoder and OUTPUT_DIR/preprocessor (a local directory).
      encoder: the encoder module to save.
      vocab_file: its WordPiece vocabulary, one token per line.
      do_lower_case: whether the preprocessor lowercases and strips accents (True for an uncased vocabulary).
      default_seq_length: the length the preprocessor pads to when called directly.
      sentence_config: how the vectors are meant to be pooled (convert.read_sentence_config: pooling, normalize,
        max_seq_length), recorded beside the encoder in SENTENCE_CONFIG_PATH, where the pipeline reads its
        defaults; None records nothing.

    Returns:
      The encoder's and the preprocessor's directories.
    """
    from model.preprocessor import export_preprocessor

    encoder_dir = os.path.join(output_dir, ENCODER_DIR)
    preprocessor_dir = os.path.join(output_dir, PREPROCESSOR_DIR)
    export_encoder(encoder_dir, encoder=encoder, vocab_file=vocab_file)
    if sentence_config:
        write_sentence_config(encoder_dir, sentence_config=sentence_config)
    export_preprocessor(preprocessor_dir, vocab_file=vocab_file, do_lower_case=do_lower_case,
                        default_seq_length=default_seq_length,
                        max_seq_length=encoder.config.max_position_embeddings)
    return encoder_dir, preprocessor_dir


def write_sentence_config(encoder_dir: str, *, sentence_config: dict) -> str:
    """Records how the encoder's vectors are meant to be pooled, in encoder_dir/SENTENCE_CONFIG_PATH.

    assets.extra/ is the SavedModel folder for files that higher-level tools keep beside a model and that the
    graph does not load (TensorFlow Serving's convention).

    Args:
      encoder_dir: an exported encoder SavedModel.
      sentence_config: its keys pooling, normalize, max_seq_length, prompts and default_prompt_name are written;
        others are left out.

    Returns:
      The path of the file written.
    """
    path = os.path.join(encoder_dir, SENTENCE_CONFIG_PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    keys = ("pooling", "normalize", "max_seq_length", "prompts", "default_prompt_name")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({key: sentence_config[key] for key in keys if key in sentence_config}, f, indent=1, sort_keys=True)
        f.write("\n")
    return path


def read_config(encoder_dir: str) -> config_lib.EncoderConfig | None:
    """The architecture `get_config()` returns, read from saved_model.pb without loading the SavedModel.

    Loading restores every exported function (seconds for a full-size encoder); the config is a constant in
    `get_config`'s graph. None when the file holds no such function or not in the form export_encoder writes:
    then load the SavedModel and ask it.

    Args:
      encoder_dir: the SavedModel's directory (local).
    """
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(encoder_dir, "saved_model.pb")
    if not tf.io.gfile.exists(path):  # E.g. saved_model.pbtxt.
        return None
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    if len(saved_model.meta_graphs) != 1:
        return None
    meta_graph = saved_model.meta_graphs[0]
    objects = meta_graph.object_graph_def
    node_id = next((child.node_id for child in objects.nodes[0].children if child.local_name == "get_config"),
                   None) if objects.nodes else None
    if node_id is None or objects.nodes[node_id].WhichOneof("kind") != "function":
        return None
    names = list(objects.nodes[node_id].function.concrete_functions)
    functions = [function for function in meta_graph.graph_def.library.function if function.signature.name in names]
    if len(names) != 1 or len(functions) != 1:
        return None
    constants = [node.attr["value"].tensor.string_val for node in functions[0].node_def if node.op == "Const"]
    if len(constants) != 1 or len(constants[0]) != 1:
        return None
    return config_lib.EncoderConfig(**json.loads(constants[0][0]))


def load_encoder(encoder_dir: str, *, compute_dtype=tf.float32, saved_model=None,
                 config: config_lib.EncoderConfig | None = None) -> Encoder:
    """Rebuilds the Encoder module of an encoder SavedModel that export_encoder wrote, with its weights.

    Args:
      encoder_dir: the SavedModel's directory (local).
      compute_dtype: the module's compute dtype: tf.float32, or tf.bfloat16 for bfloat16 matrix multiplications
        on the float32 weights.
      saved_model: that SavedModel already loaded, if it is (it is only asked for its config).
      config: its config (read_config), if known: then the SavedModel is not loaded at all.

    Returns:
      The module, its variables restored from the SavedModel.

    Raises:
      ValueError: for a SavedModel without `get_config` (not written by export_encoder), or whose variables do
        not cover the rebuilt module.
    """
    if config is None:
        loaded = saved_model if saved_model is not None else tf.saved_model.load(encoder_dir)
        if not hasattr(loaded, "get_config"):
            raise ValueError(f"{encoder_dir} was not exported by model.export (it has no get_config).")
        config = config_lib.EncoderConfig(**json.loads(loaded.get_config().numpy()))
        del loaded
    encoder = Encoder(config, compute_dtype=compute_dtype, random_init=False)
    # The SavedModel's variables are a checkpoint of export_encoder's root object, whose `encoder` is the module.
    status = tf.train.Checkpoint(encoder=encoder).read(os.path.join(encoder_dir, "variables", "variables"))
    try:
        status.assert_existing_objects_matched()
    except AssertionError as err:
        raise ValueError(f"The variables of {encoder_dir} do not match its config: {err}") from err
    status.expect_partial()  # The root's other objects (functions, variable lists) are not needed here.
    return encoder
