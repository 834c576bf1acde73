"""Imports TensorFlow and registers tensorflow_text's ops without the Keras that neither needs here."""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

__all__ = ["import_tensorflow", "register_text_ops", "text_op_library"]

# What TensorFlow 2.21's __init__ imports eagerly, and with it all of Keras (and scikit-learn where installed):
# Keras 3's, or tf_keras' with TF_USE_LEGACY_KERAS. TensorFlow catches the ImportError.
_EAGER_KERAS = ("keras.src.optimizers", "tf_keras.src.optimizers")


def import_tensorflow():
    """Imports TensorFlow without its eager import of Keras; returns the module.

    TensorFlow imports Keras' optimizers on import so that SavedModels holding Keras optimizers load as Keras
    objects; the encoders and preprocessors run here hold none, and the import costs seconds of every process's
    start (see BENCHMARKS.md). Keras stays importable: `tf.keras` and `import keras` work as usual afterwards.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    blocked = [name for name in _EAGER_KERAS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # Importing it raises ImportError.
    try:
        import tensorflow as tf
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return tf


def register_text_ops() -> None:
    """Registers every op of tensorflow_text (a preprocessor's graph uses some) before a preprocessor loads.

    Loads its op libraries directly: `import tensorflow_text` also imports its Keras layers, and so Keras (see
    import_tensorflow). Where the libraries are not where tensorflow_text keeps them, imports the package.
    """
    libraries = _text_libraries()
    if "tensorflow_text" in sys.modules or not libraries:
        import tensorflow_text  # noqa: F401

        return
    tf = import_tensorflow()
    for library in libraries.values():
        tf.load_op_library(library)


def text_op_library(name: str):
    """One op library of tensorflow_text, e.g. "_regex_split_ops", as the module of its generated op functions
    (`regex_split_with_offsets`, ...), loaded without importing the package (and Keras, see register_text_ops)."""
    library = _text_libraries().get(name)
    if library is None:  # Not where tensorflow_text keeps them: its module's own copy, e.g. gen_regex_split_ops.
        import importlib

        module = name.lstrip("_")
        return getattr(importlib.import_module(f"tensorflow_text.python.ops.{module}"), f"gen_{module}")
    return import_tensorflow().load_op_library(library)


def _text_libraries() -> dict[str, str]:
    """tensorflow_text's op libraries by name ("_regex_split_ops": its path); empty where it keeps none."""
    spec = importlib.util.find_spec("tensorflow_text")
    paths = (glob.glob(os.path.join(os.path.dirname(spec.origin), "python", "ops", "_*.so"))
             if spec is not None and spec.origin else [])
    return {os.path.basename(path)[:-len(".so")]: path for path in sorted(paths)}
