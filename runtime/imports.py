"""Imports TensorFlow and registers tensorflow_text's ops without the Keras that neither needs here."""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

__all__ = ["import_tensorflow", "register_text_ops"]

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
    spec = importlib.util.find_spec("tensorflow_text")
    libraries = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "python", "ops", "_*.so"))
                       if spec is not None and spec.origin else [])
    if "tensorflow_text" in sys.modules or not libraries:
        import tensorflow_text  # noqa: F401

        return
    tf = import_tensorflow()
    for library in libraries:
        tf.load_op_library(library)
