"""fvae: encode images as Fisher Vectors or VAE latent codes, and compare them honestly.

Public names are imported on first use, so ``fvae --help`` starts fast and TensorFlow is loaded
only when a VAE is built or loaded.
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    DataError, FvaeError, InputError, ModelFileError, OutputExistsError, OutputInUseError, TrainingDiverged,
    TrainingInterrupted,
)

_LAZY = {
    "Dataset": "data",
    "Split": "data",
    "load_dataset": "data",
    "FisherVectorEncoder": "fisher",
    "VAEEncoder": "vae",
}


def __getattr__(name):
    import importlib

    if name == "evaluate":  # the module fvae.evaluate, callable as its evaluate() (see there)
        return importlib.import_module(".evaluate", __name__)
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'fvae' has no attribute {name!r}")


def __dir__():
    # the lazy names too, so that tab completion in IPython and editors offers them
    return sorted(set(globals()) | set(__all__))


def load(path, method=None):
    """Load any saved fvae encoder; the file's header says which kind it is.

    Parameters
    ----------
    path : path-like
    method : {"fisher", "vae"}, default=None
        If given, the file must hold this kind of model.

    Raises
    ------
    ModelFileError
        If the file is not an fvae model, holds another method than ``method``, or a method this
        version does not know.
    """
    from .persist import saved_method

    if saved_method(path, method) == "fisher":
        from .fisher import FisherVectorEncoder

        return FisherVectorEncoder.load(path)
    from .vae import VAEEncoder

    return VAEEncoder.load(path)


__all__ = [
    "Dataset",
    "Split",
    "load_dataset",
    "load",
    "FisherVectorEncoder",
    "VAEEncoder",
    "evaluate",
    "FvaeError",
    "DataError",
    "InputError",
    "ModelFileError",
    "OutputExistsError",
    "OutputInUseError",
    "TrainingDiverged",
    "TrainingInterrupted",
]
