"""The variational autoencoder: Keras model (:mod:`.model`), training and evaluation
(:mod:`.train`), and the scikit-learn transformer :class:`VAEEncoder` (:mod:`.encoder`).

Importing this package imports TensorFlow; the rest of fvae does not.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if not os.environ.get("FVAE_TF_LOGS"):
    # TensorFlow's C++ warnings, errors kept: an allocation that fails prints a 40-line allocator
    # dump on stderr before the Python error that says the same in one line. Set before the import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_tensorflow_quietly():
    """Import TensorFlow with the C++ side's stderr silenced.

    TensorFlow 2.21 prints absl INFO lines (oneDNN, CUDA stubs) and a failed CUDA probe on every
    import, whatever TF_CPP_MIN_LOG_LEVEL says; on a command line that is noise around fvae's own
    one-line messages. Python exceptions still propagate. FVAE_TF_LOGS=1 shows everything, the
    C++ warnings included.
    """
    if os.environ.get("FVAE_TF_LOGS"):
        import tensorflow as tf

        return tf
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe happens here, inside the quiet block
        return tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()

from .encoder import VAEEncoder  # noqa: E402

__all__ = ["VAEEncoder"]
