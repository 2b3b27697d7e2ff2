"""fvae: encode images as Fisher Vectors or VAE latent codes, and compare them honestly.

TensorFlow is imported only when a VAE is built or loaded, so ``import fvae`` and the Fisher path
start fast.
"""

__version__ = "0.1.0"

from .data import Dataset, Split, load_dataset  # noqa: E402
from .errors import DataError, FvaeError, InputError, ModelFileError, OutputExistsError  # noqa: E402
from .fisher import FisherVectorEncoder  # noqa: E402


def load(path):
    """Load any saved fvae encoder; the file's header says which kind it is."""
    from .persist import read_header

    method = read_header(path).get("method")
    if method == "fisher":
        return FisherVectorEncoder.load(path)
    raise ModelFileError(f"{path}: unknown model method {method!r}")


__all__ = [
    "Dataset",
    "Split",
    "load_dataset",
    "load",
    "FisherVectorEncoder",
    "FvaeError",
    "DataError",
    "InputError",
    "ModelFileError",
    "OutputExistsError",
]
