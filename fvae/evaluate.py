"""Compare encodings on one train/test split: classification, reconstruction and cost.

The library side of ``fvae evaluate``. Every encoding is fitted on the train images only and
scored on the test images with the same probes:

- ``fisher``: Fisher Vectors; ``vae``: the VAE's posterior q(z|x) in full, its means and
  log-variances; ``pca``: PCA of the pixels with as many components as the VAE latent; ``raw``:
  the pixels in [0, 1].
- Classification: multinomial logistic regression on standardized codes, C chosen by stratified
  cross-validation on the train codes only; k-nearest neighbours on the codes as they are
  (Euclidean); accuracy with its 95% Wilson interval, macro-F1 and the confusion matrix of each.
  Every two encodings are compared on the same test images by McNemar's exact test (a two-sided
  binomial test on the images one classifies correctly and the other not), so that a lead the
  test set is too small to tell from chance is read as such.
- Label efficiency: the same logistic probe when only 100, 500, 1000 or all train labels are
  used (stratified subsets, fixed seeds, C chosen inside each subset).
- Reconstruction: one linear probe for every encoding (ridge regression from standardized codes to
  pixels, alpha by exact leave-one-out error on train), and each model's own reconstruction
  where it has one (the VAE's decoder, PCA's inverse). Every two encodings' errors are compared
  image by image by a paired t-test.
- Cost: fit seconds, encode images/s (timed on the test images), code dimension, model bytes.

``fvae.evaluate(train, test, ...)`` calls :func:`evaluate`: this module is callable as it.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import math
import platform
import sys
import tempfile
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import (
    Split, check_fitted_size, checked_split, class_names_of, image_sizes_differ, is_whole_number, to_unit_float,
    untrained_classes,
)
from .errors import DataError, InputError
from .persist import readable_size

METHODS = ("fisher", "vae", "pca", "raw")
LABEL_COUNTS = (100, 500, 1000)
KNN_K = 5
CV_FOLDS = 3
MAX_ITER = 1000
#: The p-value below which the reading calls a difference between two encodings significant.
SIGNIFICANCE = 0.05
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")

log = logging.getLogger("fvae.evaluate")


@dataclass(frozen=True)
class Settings:
    """What ``evaluate`` does; every field is recorded in the report.

    Attributes
    ----------
    methods : tuple of str
        Encodings to compare, a subset of ``METHODS``.
    quick : bool
        A few-minute run: shorter VAE training, fewer C values, one label-efficiency draw.
    seed : int
        Seeds every fit, subset and split.
    vae_seconds : float
        Training budget of a VAE fitted here (early stopping may end it sooner).
    max_train : int
        The probes are fitted on at most this many train images (a stratified sample, the same for
        every encoding); the encoders themselves see the whole train split.
    """

    methods: tuple = METHODS
    quick: bool = False
    seed: int = 0
    vae_seconds: float | None = None
    max_train: int = 10_000

    def __post_init__(self):
        if isinstance(self.methods, str) or not self.methods or not set(self.methods) <= set(METHODS):
            raise InputError(f"methods must be a tuple of names from {', '.join(METHODS)}, got {self.methods!r} "
                             "(parse_methods turns 'fisher,pca' into one)")
        if not (is_whole_number(self.seed) and self.seed < 2**32):  # numpy's seed range
            raise InputError(f"seed must be a whole number in [0, 2**32 - 1], got {self.seed!r}")
        if not is_whole_number(self.max_train, 2):  # a classifier needs two classes, so two images
            raise InputError(f"max_train must be a whole number >= 2, got {self.max_train!r}")
        # written as "not (inside)" so that NaN is refused too
        if self.vae_seconds is not None and not 0 < self.vae_seconds < math.inf:
            raise InputError(f"vae_seconds must be positive, got {self.vae_seconds!r}")

    @property
    def c_grid(self) -> tuple:
        return (1e-2, 1e-1, 1.0) if self.quick else (1e-3, 1e-2, 1e-1, 1.0, 10.0)

    @property
    def label_repeats(self) -> int:
        return 1 if self.quick else 3

    @property
    def vae_budget(self) -> float:
        if self.vae_seconds is not None:
            return float(self.vae_seconds)
        return 60.0 if self.quick else 300.0

    @property
    def ridge_alphas(self) -> tuple:
        return tuple(float(a) for a in np.logspace(-2, 5, 8))

    def as_dict(self) -> dict:
        return {
            "methods": list(self.methods), "quick": self.quick, "seed": self.seed,
            "vae_seconds": self.vae_budget, "max_train": self.max_train, "c_grid": list(self.c_grid),
            "cv_folds": CV_FOLDS, "knn_k": KNN_K, "label_counts": list(LABEL_COUNTS),
            "label_repeats": self.label_repeats, "ridge_alphas": list(self.ridge_alphas),
        }


def parse_methods(text: str) -> tuple:
    """``"fisher,pca"`` -> ``("fisher", "pca")``, in the canonical order and any case; unknown
    names refused."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name.lower() not in METHODS]
    if not names or unknown:
        which = ""
        if unknown:
            which = ", ".join(map(repr, unknown)) + (" is not an encoding; " if len(unknown) == 1 else " are not encodings; ")
        raise InputError(f"--methods {text!r}: {which}choose from {', '.join(METHODS)} (comma-separated)")
    chosen = {name.lower() for name in names}
    return tuple(m for m in METHODS if m in chosen)


# ----------------------------------------------------------------------------------------------------
# encoders


def default_encoder(method: str, *, seed: int = 0, vae_seconds: float | None = None):
    """The encoder ``fvae encode`` fits when it is given no model: the method's defaults (which
    for Fisher Vectors adapt the patches to the image size at fit), seeded."""
    if method == "vae":
        from .vae import VAEEncoder

        return VAEEncoder(random_state=seed, max_seconds=vae_seconds)
    if method == "fisher":
        from .fisher import FisherVectorEncoder

        return FisherVectorEncoder(random_state=seed)
    raise InputError(f"no default encoder for method {method!r}")


@dataclass
class Encoding:
    """One encoding's codes of the train (probe sample) and test images, and what it cost.

    ``encode_images_per_second`` is timed on the test images, encoded after the train images so
    that one-off costs (compiling, tracing) are not in it.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    fit_seconds: float | None
    encode_images_per_second: float
    model_bytes: int
    model_path: str | None
    estimator: object = None


class _Pixels:
    """The ``raw`` encoding: pixels in [0, 1], flattened."""

    def transform(self, X):
        return to_unit_float(X, "raw").reshape(len(X), -1)


class _PixelPCA:
    """The ``pca`` encoding: scikit-learn's PCA of the flattened pixels in [0, 1]."""

    def __init__(self, n_components: int, seed: int):
        from sklearn.decomposition import PCA

        self.pca = PCA(n_components=n_components, random_state=seed)

    def fit(self, X):
        self.pca.fit(_Pixels().transform(X))
        return self

    def transform(self, X):
        return self.pca.transform(_Pixels().transform(X)).astype(np.float32)

    def inverse_transform(self, Z, image_shape):
        return self.pca.inverse_transform(Z).reshape((len(Z),) + tuple(image_shape)).astype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.pca.components_.nbytes + self.pca.mean_.nbytes)


def _timed_transform(estimator, images) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    codes = np.asarray(estimator.transform(images), dtype=np.float32)
    return codes, len(images) / max(time.perf_counter() - started, 1e-9)


EVALUATION_VAE = {"latent_dim": 64, "binarization": "none", "return_log_var": True}


def evaluation_encoder(method: str, *, seed: int = 0, vae_seconds: float | None = None):
    """The encoder ``fvae evaluate`` fits: :func:`default_encoder`, except for the VAE's
    :data:`EVALUATION_VAE` settings.

    A 64-dimensional latent: measured on MNIST (5k train, official 10k test), its codes classify
    better than the default 32 dimensions (93.8% against 92.9% with logistic regression on means
    and log-variances) and its decoder still beats PCA of the same dimension.

    Its codes are the whole posterior, means and log-variances (``return_log_var``), in the run and
    in its saved model, so that ``fvae encode --model runs/NAME/models/vae.npz`` writes the codes
    the run compared.

    Grey targets (``binarization="none"``: cross-entropy against the pixels as they are), not the
    default thresholded ones: every encoding is scored on reconstructing the grey pixels, and a
    VAE trained to reproduce them thresholded was handicapped on grey data. Measured with the
    default 300 s budget, thresholded -> grey: on MNIST (5k train, official 10k test) logistic
    accuracy 93.5% -> 94.1%, 5-NN 94.5% -> 95.2%, own reconstruction MSE 0.0081 both; on
    Fashion-MNIST with --quick (60 s) 82.5% -> 83.7% and MSE 0.0291 -> 0.0153.
    """
    encoder = default_encoder(method, seed=seed, vae_seconds=vae_seconds)
    return encoder.set_params(**EVALUATION_VAE) if method == "vae" else encoder


def given_models(methods, fisher_model=None, vae_model=None) -> dict:
    """The saved models a run reuses (method -> path), checked from their headers alone, which
    needs neither the data nor TensorFlow: each is an fvae model file of its method, and that
    method is among ``methods``.

    Raises
    ------
    InputError, ModelFileError
    """
    from .persist import saved_method

    paths = {method: path for method, path in (("fisher", fisher_model), ("vae", vae_model)) if path is not None}
    unused = [method for method in paths if method not in methods]
    if unused:
        method = unused[0]
        raise InputError(f"a saved {method} model ({paths[method]}) is given, but {method} is not among the methods "
                         f"compared ({', '.join(methods)}): add {method} to them, or leave the model out")
    for method, path in paths.items():
        saved_method(path, method)
    return paths


def _load_given(method, model_path, image_shape):
    """The saved model a run reuses, checked before any work: its method, image size, and that it
    can encode without labels."""
    from . import load

    encoder = load(model_path, method=method)
    # the splits no longer know whether they were read from image files
    check_fitted_size(image_shape, encoder.image_shape_, model_path, files=None)
    if method == "vae" and encoder.conditional:
        raise InputError(f"{model_path}: a conditional VAE needs the labels to encode, which would leak "
                         "the test labels into the codes; evaluate an unconditional VAE")
    return encoder


def _fit_and_save(method, train_images, settings, models_dir):
    """(encoder, fit seconds, model file path).

    The model is saved as ``<models_dir>/<method>.npz`` (with its training history for a VAE), so
    that a later run can reuse it.
    """
    vae_seconds = settings.vae_budget if method == "vae" else None
    encoder = evaluation_encoder(method, seed=settings.seed, vae_seconds=vae_seconds)
    log.info("fitting %s on %s train images%s", method, f"{len(train_images):,}",
             f" (at most {vae_seconds:.0f} s)" if vae_seconds else "")
    started = time.perf_counter()
    encoder.fit(train_images)
    seconds = time.perf_counter() - started
    path = Path(models_dir) / f"{method}.npz"
    encoder.save(path, force=True)
    if method == "vae":
        from .vae.encoder import write_history

        write_history(encoder.history_, path, force=True)
    return encoder, seconds, path


def encode_all(train: Split, test: Split, probe_index, settings: Settings, *, fisher_model=None, vae_model=None,
               models_dir, keep_models=True) -> dict[str, Encoding]:
    """Fit (or load) every encoding of ``settings.methods`` and encode the probe-train and test images.

    The model path of an encoding fitted here is given relative to the parent of ``models_dir``
    (the run folder: ``models/fisher.npz``), or None when ``keep_models`` is false.

    PCA gets as many components as the VAE latent (the evaluation VAE's, 64, when no VAE is
    compared), at most the number of pixels and of train images.
    """
    image_shape = train.images.shape[1:]
    # every given model is checked before anything is fitted, so a wrong one fails at once
    paths = given_models(settings.methods, fisher_model, vae_model)
    given = {method: _load_given(method, path, image_shape) for method, path in paths.items()}
    encodings = {}
    latent_dim = None
    for method in ("fisher", "vae"):
        if method not in settings.methods:
            continue
        if method in given:
            encoder, seconds, path = given[method], None, Path(paths[method])
        else:
            encoder, seconds, path = _fit_and_save(method, train.images, settings, models_dir)
        if method == "vae":
            latent_dim = encoder.latent_dim
            encoder.set_params(return_log_var=True)  # the codes are the whole posterior: means, log-variances
        log.info("encoding %s + %s images with %s", f"{len(probe_index):,}", f"{len(test):,}", method)
        # Train images first: the timed test encoding then runs warm (numba's compiled loops loaded,
        # TensorFlow's graph traced), so images/s is the steady-state speed.
        codes_train = np.asarray(encoder.transform(train.images[probe_index]), dtype=np.float32)
        codes_test, speed = _timed_transform(encoder, test.images)
        shown_path = str(path) if seconds is None else (f"{Path(models_dir).name}/{path.name}" if keep_models else None)
        encodings[method] = Encoding(method, codes_train, codes_test, seconds, speed, path.stat().st_size,
                                     shown_path, encoder)
    if "pca" in settings.methods:
        # n centred images span at most n - 1 directions: an nth component would be rounding noise,
        # which standardizing in the probes blows up to the size of the signal
        dim = min(latent_dim or EVALUATION_VAE["latent_dim"], int(np.prod(image_shape)), max(len(train) - 1, 1))
        started = time.perf_counter()
        pca = _PixelPCA(dim, settings.seed).fit(train.images)
        seconds = time.perf_counter() - started
        codes_train = pca.transform(train.images[probe_index])
        codes_test, speed = _timed_transform(pca, test.images)
        encodings["pca"] = Encoding("pca", codes_train, codes_test, seconds, speed, pca.nbytes, None, pca)
    if "raw" in settings.methods:
        pixels = _Pixels()
        codes_train = pixels.transform(train.images[probe_index])
        codes_test, speed = _timed_transform(pixels, test.images)
        encodings["raw"] = Encoding("raw", codes_train, codes_test, 0.0, speed, 0, None, pixels)
    return encodings


# ----------------------------------------------------------------------------------------------------
# classification probes


def _scores(y_true, y_pred, classes) -> dict:
    """Accuracy with its 95% Wilson interval, macro-F1 and the confusion matrix (rows and columns:
    ``classes``, all the train source's classes, so that every probe's matrix has one shape).

    Macro-F1 averages over the classes the test set holds or the probe predicts, as scikit-learn's
    own default does: a class of neither has no F1, and counting it as 0 would score a perfect
    probe on a test set of 3 of 10 classes 0.3.
    """
    from scipy.stats import binomtest
    from sklearn.metrics import confusion_matrix, f1_score

    correct = int(np.count_nonzero(np.asarray(y_true) == np.asarray(y_pred)))
    interval = binomtest(correct, len(y_true)).proportion_ci(confidence_level=0.95, method="wilson")
    return {
        "accuracy": correct / len(y_true),
        "accuracy_ci95": [float(interval.low), float(interval.high)],
        "macro_f1": float(f1_score(y_true, y_pred, labels=np.union1d(y_true, y_pred), average="macro",
                                   zero_division=0)),
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def _choose_c(codes, labels, c_grid, seed) -> tuple[float, float | None, int | None]:
    """C with the best mean accuracy over stratified folds of the (standardized) train codes, that
    accuracy, and the number of folds: ``CV_FOLDS``, fewer when the smallest class has fewer
    images, and none (C=1) when it has one.

    Within a fold the C values are fitted in increasing order, each starting from the previous
    solution (warm start): the same optima, in far fewer iterations. Ties go to the smaller C.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    smallest = np.unique(labels, return_counts=True)[1].min()
    folds = min(CV_FOLDS, int(smallest))
    if folds < 2:
        return 1.0, None, None
    grid = sorted(c_grid)
    accuracy = np.zeros(len(grid))
    for fit, held_out in StratifiedKFold(folds, shuffle=True, random_state=seed).split(codes, labels):
        model = LogisticRegression(max_iter=MAX_ITER, warm_start=True)
        for i, c in enumerate(grid):
            model.set_params(C=c).fit(codes[fit], labels[fit])
            accuracy[i] += model.score(codes[held_out], labels[held_out]) / folds
    best = int(np.argmax(accuracy))
    return float(grid[best]), float(accuracy[best]), folds


class ProbeSpace:
    """Train and test codes prepared for the logistic probe: standardized with the train codes'
    statistics, and, when wider than the train set, the train codes reduced exactly to row-space
    coordinates.

    When codes are wider than there are train images (Fisher Vectors: 21,760 dims for 5,000
    images), an L2-penalized linear model's weights lie in the span of the train rows, so fitting
    it on n coordinates in an orthonormal basis of that span instead of the d features gives the
    same model for any C and any subset of the train rows, at a fraction of the cost. The basis
    comes from the eigendecomposition of the train Gram matrix ``X X^T = U S^2 U^T``: the train
    coordinates are ``U S``; directions with negligible singular values (rank deficiency) are
    dropped. A model fitted on (rows of) them has coefficients in that basis; :meth:`predict`
    lifts them back to feature weights, ``w = X^T U S^-1 beta``, an n x d x classes product, so the
    test codes are never projected (that would cost as much as the Gram matrix again).

    Memory: wide codes are never copied whole. Their statistics and Gram matrix are computed a
    block of columns at a time, and the lift and the test predictions standardize a block of rows
    at a time, each block a float64 copy of about :attr:`BLOCK_VALUES` values (for 10,000 Fisher
    Vectors a whole copy would be 1.7 GB). Of their decomposition only the basis U (n x r) is
    kept: the coordinates U S are made from it when asked for. Narrower codes are copied once, as
    float64, and standardized in place.
    """

    #: Code values standardized at a time, as float64 (134 MB).
    BLOCK_VALUES = 2 ** 24

    def __init__(self, train_codes, test_codes, *, standardize: bool = True):
        self._codes, self._test_codes = train_codes, test_codes
        self._mean, self._scale = self._statistics(train_codes) if standardize else (None, None)
        if self._wide:
            self._svd = self._row_space_svd()
        else:
            self._narrow = self._standardized(train_codes)
            self._svd = None  # made when the ridge probe first needs it

    def _statistics(self, codes) -> tuple[np.ndarray, np.ndarray]:
        """The mean and scale of each column of ``codes``, as :class:`StandardScaler` computes
        them from a float64 copy, a block of columns at a time."""
        from sklearn.preprocessing import StandardScaler

        means, scales = [], []
        for columns in self._blocks(codes, axis=1):
            scaler = StandardScaler().fit(np.array(codes[:, columns], dtype=np.float64))
            means.append(scaler.mean_)
            scales.append(scaler.scale_)
        return np.concatenate(means), np.concatenate(scales)

    def _blocks(self, codes, axis: int) -> list[slice]:
        """Slices of ``codes`` along ``axis`` (0: rows, 1: columns) of about :attr:`BLOCK_VALUES` values each."""
        step = max(1, self.BLOCK_VALUES // max(codes.shape[1 - axis], 1))
        return [slice(start, start + step) for start in range(0, codes.shape[axis], step)]

    def _row_space_svd(self) -> tuple[np.ndarray, np.ndarray, None]:
        """``(U, S, None)``: the row-space coordinates ``U S`` of the standardized train codes as
        their own SVD, from the eigendecomposition of their Gram matrix, summed a block of columns
        at a time."""
        from scipy.linalg import eigh
        from scipy.linalg.blas import dsyrk

        n = len(self._codes)
        gram = np.zeros((n, n), order="F")  # BLAS's layout, so that dsyrk adds to it in place
        for columns in self._blocks(self._codes, axis=1):
            # A block's transpose is Fortran-ordered (no copy), and trans=1 adds block @ block.T to
            # the upper triangle. The block is a temporary of the call, so only one is alive at a time.
            gram = dsyrk(1.0, self._standardized(self._codes[:, columns], columns).T, beta=1.0, c=gram,
                         trans=1, overwrite_c=1)
        eigenvalues, eigenvectors = eigh(gram, lower=False, overwrite_a=True, check_finite=False)
        # ascending: the negligible directions are the first columns, and a slice is a view
        first = int(np.searchsorted(eigenvalues, eigenvalues.max(initial=0.0) * 1e-10, side="right"))
        return eigenvectors[:, first:], np.sqrt(eigenvalues[first:]), None

    @property
    def _wide(self) -> bool:
        """Codes wider than the train set, whose :attr:`train` is their row-space coordinates."""
        return self._codes.shape[1] > self._codes.shape[0]

    @property
    def train(self) -> np.ndarray:
        """What the probe is fitted on (n, r), in float64: the standardized codes, or, for wide
        codes, their row-space coordinates, made anew on each access (:meth:`rows` makes a few)."""
        return self.rows(slice(None))

    def rows(self, index) -> np.ndarray:
        """Rows of :attr:`train`, without making the others."""
        if not self._wide:
            return self._narrow[index]
        basis, singular, _ = self._svd
        return basis[index] * singular

    @functools.cached_property
    def train32(self) -> np.ndarray:
        """:attr:`train` in float32, what the logistic probe fits on: its L-BFGS passes over the
        codes are bound by memory bandwidth, and float32 halves the bytes (1.8x faster on 10,000
        Fashion-MNIST images' pixels, test accuracy the same to 1e-4)."""
        if not self._wide:
            return self._narrow.astype(np.float32)
        basis, singular, _ = self._svd
        return np.multiply(basis, singular, out=np.empty(basis.shape, np.float32), casting="same_kind")

    def lift(self, beta: np.ndarray) -> np.ndarray:
        """Feature weights (d, k) of coefficients (r, k) given in :attr:`train`'s basis."""
        if not self._wide:
            return beta
        basis, singular, _ = self._svd
        coordinates = basis @ (beta / singular[:, None])
        weights = np.zeros((self._codes.shape[1], beta.shape[1]))
        for rows in self._blocks(self._codes, axis=0):
            weights += self._standardized(self._codes[rows]).T @ coordinates[rows]
        return weights

    def _test_times(self, weights: np.ndarray) -> np.ndarray:
        """The standardized test codes (m, d) times ``weights`` (d, k), in float64."""
        out = np.empty((len(self._test_codes), weights.shape[1]))
        for rows in self._blocks(self._test_codes, axis=0):
            out[rows] = self._standardized(self._test_codes[rows]) @ weights
        return out

    def _standardized(self, codes, columns=slice(None)) -> np.ndarray:
        """A float64 copy of ``codes`` (of the given columns), standardized with the train codes'
        statistics, as :meth:`StandardScaler.transform` does it."""
        copy = np.array(codes, dtype=np.float64)
        if self._mean is not None:
            copy -= self._mean[columns]
            copy /= self._scale[columns]
        return copy

    def ridge(self, targets: np.ndarray, alphas) -> tuple[float, np.ndarray]:
        """Ridge regression (with an intercept) from :attr:`train` to ``targets`` (n, p), alpha by
        exact leave-one-out error over all targets; returns alpha and the test predictions.

        Computed from the SVD ``train = U S V^T`` (for wide codes the Gram eigendecomposition done
        already): fitted values ``U diag(s^2 / (s^2 + alpha)) U^T Yc``, leverages
        ``1/n + sum_j U_ij^2 s_j^2 / (s_j^2 + alpha)`` (the codes are centred, so U is orthogonal
        to the intercept), LOO residuals ``(y - fitted) / (1 - leverage)``: what scikit-learn's
        ``RidgeCV`` computes, without a second decomposition.
        """
        if self._svd is None:
            u, s, vt = np.linalg.svd(self._narrow, full_matrices=False)
            self._svd = (u, s, vt)
        u, s, vt = self._svd
        mean = targets.mean(axis=0)
        centred = targets - mean
        projected = u.T @ centred

        def leave_one_out_error(alpha):
            shrink = s ** 2 / (s ** 2 + alpha)
            leverage = 1.0 / len(targets) + np.einsum("ij,j,ij->i", u, shrink, u)  # no (n, r) u ** 2
            residual = (centred - u @ (shrink[:, None] * projected)) / (1.0 - leverage)[:, None]
            return float(np.mean(residual ** 2))

        errors = {alpha: leave_one_out_error(alpha) for alpha in alphas}
        # Ties within rounding go to the smallest alpha. They are exact ties: n - 1 standardized
        # PCA codes of n train images have equal singular values, and then every alpha has the
        # same LOO error, so the largest alpha (predict the mean) won on one CPU's rounding and
        # the smallest (PCA's own reconstruction) on another's.
        best = min(errors.values())
        alpha = min(a for a, error in errors.items() if error <= best * (1 + 1e-8))
        beta = (s / (s ** 2 + alpha))[:, None] * projected
        if vt is not None:
            beta = vt.T @ beta
        return float(alpha), self._test_times(self.lift(beta)) + mean

    def predict(self, model, inner: "ProbeSpace | None" = None) -> np.ndarray:
        """Test-set predictions of a linear classifier fitted on (rows of) :attr:`train`, or on the
        ``inner`` space of such rows."""
        coefficients = model.coef_.T if inner is None else inner.lift(model.coef_.T)
        scores = self._test_times(self.lift(coefficients)) + model.intercept_
        if scores.shape[1] == 1:  # two classes: one score, positive for classes_[1]
            return model.classes_[(scores[:, 0] > 0).astype(int)]
        return model.classes_[np.argmax(scores, axis=1)]


def logistic_probe(space: ProbeSpace, train_labels, test_labels, *, c_grid, seed=0, classes=None,
                   rows=None) -> tuple[dict, np.ndarray]:
    """Multinomial logistic regression on standardized codes, C by cross-validation on train only.

    Parameters
    ----------
    space : ProbeSpace
        The train and test codes, prepared.
    rows : array of int, default=None
        Fit on these train rows only (with ``train_labels`` of the same length).

    Returns
    -------
    scores : dict
        ``accuracy``, ``accuracy_ci95``, ``macro_f1``, ``confusion`` (rows: true class), ``C``,
        ``cv_accuracy`` and ``cv_folds`` (both None when a class has a single train image, too few
        for CV, and C=1 was used) and ``converged``.
    predictions : ndarray of shape (n_test,)
        The predicted class of each test image.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    classes = np.unique(train_labels) if classes is None else classes
    train, inner = space.train32, None
    if rows is not None:
        train = space.rows(rows)
        if train.shape[1] > train.shape[0]:  # a few labelled rows: reduce again to their own span (exact)
            inner = ProbeSpace(train, None, standardize=False)
            train = inner.train
        train = train.astype(np.float32)
    # One BLAS thread: each L-BFGS step multiplies the codes by a (d, classes) matrix, a product
    # too thin for threads to share; on 2 cores a step took 1.6-9x as long with both threads.
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("always", ConvergenceWarning)
        c, cv_accuracy, cv_folds = _choose_c(train, train_labels, c_grid, seed)
        model = LogisticRegression(C=c, max_iter=MAX_ITER).fit(train, train_labels)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    predictions = space.predict(model, inner)
    scores = {**_scores(test_labels, predictions, classes), "C": c, "cv_accuracy": cv_accuracy,
              "cv_folds": cv_folds, "converged": converged}
    return scores, predictions


def knn_probe(train_codes, train_labels, test_codes, test_labels, *, k=KNN_K,
              classes=None) -> tuple[dict, np.ndarray]:
    """k-nearest neighbours (Euclidean, on the codes as they are): the scores (``k``, accuracy
    and its interval, macro-F1, confusion) and the predicted class of each test image."""
    from sklearn.neighbors import KNeighborsClassifier

    classes = np.unique(train_labels) if classes is None else classes
    k = min(k, len(train_labels))
    model = KNeighborsClassifier(n_neighbors=k).fit(train_codes, train_labels)
    predictions = model.predict(test_codes)
    return {"k": k, **_scores(test_labels, predictions, classes)}, predictions


def paired_tests(predictions: dict, test_labels) -> list[dict]:
    """McNemar's exact test between every two encodings' predictions of the same test images.

    Parameters
    ----------
    predictions : dict
        Encoding name -> predicted class of each test image, in table order.
    test_labels : array-like of shape (n_test,)

    Returns
    -------
    list of dict
        One per pair, in table order: ``encodings`` (the two names), ``only_first_correct`` and
        ``only_second_correct`` (the test images one classifies correctly and the other not) and
        ``p_value``, two-sided: the probability of so uneven a split of those images if both
        encodings were equally accurate (1 when they disagree on none).
    """
    from scipy.stats import binomtest

    truth = np.asarray(test_labels)
    correct = {name: np.asarray(predicted) == truth for name, predicted in predictions.items()}
    tests = []
    for first, second in itertools.combinations(correct, 2):
        only_first = int(np.count_nonzero(correct[first] & ~correct[second]))
        only_second = int(np.count_nonzero(correct[second] & ~correct[first]))
        discordant = only_first + only_second
        p_value = binomtest(only_first, discordant).pvalue if discordant else 1.0
        tests.append({"encodings": [first, second], "only_first_correct": only_first,
                      "only_second_correct": only_second, "p_value": float(p_value)})
    return tests


def stratified_subset(labels, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` train images drawn with every class in proportion: at least one each, or
    one each of ``n`` classes drawn at random when there are more classes than ``n``."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    if n >= len(labels):
        return index
    try:
        chosen, _ = train_test_split(index, train_size=n, stratify=labels, random_state=seed)
    except ValueError:  # fewer images than classes, or a class of one image: no proportions to keep
        rng = np.random.default_rng(seed)
        shuffled = rng.permutation(index)
        _, first = np.unique(labels[shuffled], return_index=True)  # a random image of each class
        chosen = np.concatenate([rng.permutation(shuffled[first]), np.delete(shuffled, first)])[:n]
    return np.sort(chosen)


def label_efficiency(space: ProbeSpace, train_labels, test_labels, *, counts=LABEL_COUNTS, repeats=3,
                     c_grid, seed=0, full_accuracy=None) -> list[dict]:
    """Logistic-probe test accuracy when only ``n`` train labels are known, for each n in ``counts``
    smaller than the train set and at least the number of classes, then all of them.

    Each count is drawn ``repeats`` times (seeds ``seed``, ``seed + 1``, ...): the mean, the
    standard deviation and every accuracy are reported. The codes are standardized with the
    statistics of all train images, labelled or not (only the labels are scarce), and C is chosen
    by cross-validation inside each subset.
    """
    classes = np.unique(train_labels)
    points = []
    for n in counts:
        if not len(classes) <= n < len(train_labels):
            continue
        accuracies = []
        for r in range(repeats):
            idx = stratified_subset(train_labels, n, seed + r)
            scores, _ = logistic_probe(space, train_labels[idx], test_labels, c_grid=c_grid, seed=seed + r,
                                       classes=classes, rows=idx)
            accuracies.append(scores["accuracy"])
        points.append(_curve_point(n, accuracies))
    if full_accuracy is None:
        full_accuracy = logistic_probe(space, train_labels, test_labels, c_grid=c_grid, seed=seed,
                                       classes=classes)[0]["accuracy"]
    points.append(_curve_point(len(train_labels), [full_accuracy]))
    return points


def _curve_point(n: int, accuracies: list) -> dict:
    return {"n_labels": int(n), "accuracy_mean": float(np.mean(accuracies)),
            "accuracy_std": float(np.std(accuracies)), "accuracies": [float(a) for a in accuracies]}


# ----------------------------------------------------------------------------------------------------
# reconstruction probes


def paired_error_tests(errors: dict) -> list[dict]:
    """A paired t-test between every two encodings' reconstruction errors of the same test images.

    Parameters
    ----------
    errors : dict
        Encoding name -> the squared error per pixel of each test image (:func:`image_errors`),
        in table order.

    Returns
    -------
    list of dict
        One per pair, in table order: ``encodings`` (the two names), ``first_lower`` and
        ``second_lower`` (the test images each reconstructs better), ``mean_difference`` (the
        first's MSE minus the second's) and ``p_value``, two-sided, of a mean difference this far
        from 0 (1 when every image's errors are equal; None for one test image, which leaves the
        t-test no degree of freedom).
    """
    from scipy.stats import ttest_rel

    tests = []
    for first, second in itertools.combinations(errors, 2):
        difference = errors[first] - errors[second]
        if not np.any(difference):
            p_value = 1.0
        elif len(difference) < 2:
            p_value = None
        else:
            p_value = float(ttest_rel(errors[first], errors[second]).pvalue)
        tests.append({"encodings": [first, second], "first_lower": int(np.count_nonzero(difference < 0)),
                      "second_lower": int(np.count_nonzero(difference > 0)),
                      "mean_difference": float(difference.mean()), "p_value": p_value})
    return tests


def image_errors(originals, reconstructions) -> np.ndarray:
    """The mean squared error per pixel of each image (float64, shape (n,)), whose mean is
    :func:`pixel_errors`' MSE."""
    squared = (np.asarray(originals, np.float64) - np.asarray(reconstructions, np.float64)) ** 2
    return squared.reshape(len(squared), -1).mean(axis=1)


def pixel_errors(originals, reconstructions) -> dict:
    """Mean squared error per pixel (images in [0, 1]) and the PSNR of that error in dB."""
    mse = float(image_errors(originals, reconstructions).mean())  # every image has as many pixels
    return {"mse": mse, "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12)))}


def ridge_probe(space: ProbeSpace, train_pixels, test_pixels, *, alphas) -> tuple[dict, np.ndarray]:
    """Linear reconstruction probe: ridge from standardized codes to pixels, fitted on train.

    Alpha is chosen by exact leave-one-out error on the train codes (:meth:`ProbeSpace.ridge`,
    reusing the decomposition the logistic probe made); the predictions are clipped to [0, 1]
    before scoring.

    Returns
    -------
    scores : dict
        ``mse``, ``psnr``, ``alpha``.
    reconstructions : ndarray, same shape as ``test_pixels``
    """
    alpha, predicted = space.ridge(np.asarray(train_pixels, np.float64).reshape(len(train_pixels), -1), alphas)
    predicted = np.clip(predicted, 0.0, 1.0).reshape(test_pixels.shape)
    return {**pixel_errors(test_pixels, predicted), "alpha": alpha}, predicted.astype(np.float32)


def vae_reconstruction(encoder, test_codes, test_pixels, *, seed=0) -> tuple[dict, np.ndarray]:
    """The VAE decoder's reconstruction of the test images from their posterior means.

    Returns
    -------
    scores : dict
        ``bce``: cross-entropy in nats per image against the model's own targets (its fixed
        binarization for a binarized Bernoulli VAE, the grey levels otherwise); ``mse`` and
        ``psnr`` against the grey levels.
    reconstructions : ndarray (n, h, w)
    """
    from keras import ops

    from .vae.train import fixed_binarization

    model = encoder.model_
    means = encoder.inverse_transform(test_codes[:, : encoder.latent_dim])
    # the model's own rule makes the targets (fixed draw for dynamic binarization, then VAE.targets)
    targets = ops.convert_to_numpy(model.targets(fixed_binarization(test_pixels, model.target_binarization, seed)))
    p = np.clip(means.astype(np.float64), 1e-7, 1 - 1e-7)
    bce = -(targets * np.log(p) + (1 - targets) * np.log1p(-p)).reshape(len(p), -1).sum(axis=1)
    return {"bce": float(bce.mean()), **pixel_errors(test_pixels, means)}, means


# ----------------------------------------------------------------------------------------------------
# the whole evaluation


def _labelled(split: Split | None, what: str, source: str | None = None) -> Split:
    named = source or f"the {what} split"
    if split is None or len(split) == 0:
        raise DataError(f"{named} has no {what} images, and evaluate needs them")
    if split.labels is None:
        raise DataError(f"{named} has no labels, and evaluate needs labelled {what} images: give an idx folder, "
                        "a Keras-style .npz or an image folder with a subfolder per class")
    return checked_split(split, named)


def _two_classes(train_labels: np.ndarray, source: str | None, names_by_label: dict) -> None:
    """Refuse train images of one class: no classifier can be fitted on them."""
    present = np.unique(train_labels)
    if len(present) < 2:
        where = f"{source}: its train images" if source else "the train images"
        name = class_names_of(present, names_by_label)[0]
        raise DataError(f"{where} are all of class {name}, and evaluate's classifiers need two classes or more")


def shared_images(images: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Which of ``images`` are, pixel for pixel, one of ``others`` (a boolean per image)."""

    def as_rows(batch):  # one opaque item per image, so that whole images are compared
        flat = np.ascontiguousarray(np.asarray(batch).reshape(len(batch), -1))
        return flat.view(np.dtype((np.void, flat.shape[1] * flat.itemsize))).ravel()

    return np.isin(as_rows(images), as_rows(others))


def _test_images_in_train(train_images, test_images, sources: dict) -> int:
    """How many test images are also train images. All of them is refused: the scores would hold
    nothing out; some of them is warned of, as the scores count them."""
    shared = int(shared_images(test_images, train_images).sum())
    test_name = f" of {sources['test']}" if sources.get("test") else ""
    if shared == len(test_images):
        raise DataError(f"every test image{test_name} is also a train image: the scores would hold nothing out")
    if shared:
        verb, noun = ("is", "a train image") if shared == 1 else ("are", "train images")
        log.warning("%s of the %s test images%s %s also %s, pixel for pixel: the scores count %s as held out",
                    f"{shared:,}", f"{len(test_images):,}", test_name, verb, noun, "it" if shared == 1 else "them")
    return shared


def _room_for_every_class(train_labels, max_train: int) -> None:
    """Refuse a ``max_train`` under the number of train classes: the probes would see only some
    of them, and count every test image of the others as a mistake."""
    n_classes = len(np.unique(train_labels))
    if max_train < n_classes:
        raise InputError(f"max_train {max_train:,} is fewer than the {n_classes:,} classes of the train images: the "
                         f"probes need an image of each, so give at least {n_classes:,}")


def _test_classes_not_trained_on(train_labels, test_labels, sources: dict, names_by_label: dict) -> tuple[list, int]:
    """The classes of test images that no train image has, and how many test images are of them:
    no classifier can predict them. Every test image being of such a class is refused, as every
    prediction would be wrong; some of them are warned of, as the scores count them as mistakes."""
    outside, untrained = untrained_classes(test_labels, train_labels)
    if not untrained:
        return [], 0
    names = ", ".join(class_names_of(untrained, names_by_label))
    n_untrained = int(outside.sum())
    test_name = f" of {sources['test']}" if sources.get("test") else ""
    classes = f"{'class' if len(untrained) == 1 else 'classes'} {names}, which no train image has"
    if n_untrained == len(test_labels):
        raise DataError(f"every test image{test_name} is of {classes}: no classifier could get one right")
    log.warning("%s of the %s test images%s %s of %s: the classifiers' scores count %s as mistakes",
                f"{n_untrained:,}", f"{len(test_labels):,}", test_name, "is" if n_untrained == 1 else "are",
                classes, "it" if n_untrained == 1 else "them")
    return untrained, n_untrained


def run_name(source: str) -> str:
    """A folder name for a source: ``mnist`` -> ``mnist``, ``../data/mnist-test`` -> ``mnist-test``."""
    import re

    stem = Path(str(source)).name or "run"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(stem).stem if "." in stem else stem) or "run"


def load_splits(data, test_data=None, data_dir=None, image_size=None) -> tuple[Split, Split, dict]:
    """Train and test splits for an evaluation, and their description for the report.

    Without ``test_data`` the source's own train and test splits are used. With it, every image
    of ``data`` trains (its train and test splits together), since none of them is tested on, and
    every image of ``test_data`` tests: its own test split where it has one, else all of it (not
    the 20% fvae holds out of an image folder or a one-set ``.npz``). Where both sources name
    their classes, the test labels follow the train source's names. ``image_size`` resizes the
    files of image folders, both sources' (:func:`~fvae.data.load_dataset`). Whether the splits
    are labelled and well formed is :func:`evaluate`'s to check, before any work.
    """
    from .data import labels_named_as, load_dataset

    source = load_dataset(data, data_dir, image_size=image_size)
    if test_data is None:
        if source.train is None:
            raise DataError(f"{source.name} has only test images, and evaluate trains on --data: pass a source of "
                            f"train images as --data, and this one as --test-data")
        if source.test is None:
            raise DataError(f"{source.name} has only train images, and evaluate tests on the test split of --data: "
                            f"pass a source of test images as --test-data")
        train, test = source.split("train"), source.split("test")
        test_source, test_split, train_split = source, "test", "train"
    else:
        test_source = load_dataset(test_data, data_dir, image_size=image_size)
        if test_source.location == source.location:
            raise DataError(f"--test-data {test_data} is --data itself, whose every image trains: leave out "
                            f"--test-data to test on the test split of {source.name}")
        test_split = "all" if test_source.held_out_by_fvae or test_source.test is None else "test"
        test, train, train_split = test_source.split(test_split), source.split("all"), "all"
        test = labels_named_as(test, test_source.class_names, source.class_names, test_source.name, source.name)
    description = {
        "train": {"source": source.name, "location": source.location, "split": train_split},
        "test": {"source": test_source.name, "location": test_source.location, "split": test_split},
        "class_names": list(source.class_names),  # label i is class_names[i], as the train source names them
    }
    if image_size is not None:
        description["resized_to"] = list(image_size)
    return train, test, description


def versions() -> dict:
    """Versions of Python and the libraries whose numbers the report holds."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("fvae", "numpy", "scipy", "scikit-learn", "tensorflow", "keras"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def evaluate(train: Split, test: Split, settings: Settings = Settings(), *, fisher_model=None, vae_model=None,
             models_dir=None, data: dict | None = None) -> tuple[dict, dict]:
    """Fit, encode and probe every encoding; the numbers of the report and what the figures need.

    Parameters
    ----------
    train, test : Split
        Labelled images of the same shape.
    settings : Settings
    fisher_model, vae_model : path-like, default=None
        Saved models to reuse instead of fitting.
    models_dir : path-like, default=None
        Where fitted models are saved (``fisher.npz``, ``vae.npz``); a temporary folder if None.
    data : dict, default=None
        Description of the sources for the report (name, location, splits).

    Returns
    -------
    report : dict
        Every number, following ``report.schema.json`` (without ``name`` and ``figures``, which
        :func:`fvae.report.write_run` adds).
    artifacts : dict
        ``encodings`` (name -> Encoding), ``reconstructions`` (name -> test images), ``test``:
        what the figures are drawn from.
    """
    started = time.perf_counter()
    sources = {what: (data or {}).get(what, {}).get("source") for what in ("train", "test")}
    train, test = _labelled(train, "train", sources.get("train")), _labelled(test, "test", sources.get("test"))
    if differ := image_sizes_differ(train, test):
        raise DataError(f"{differ}: they must have the same size")
    classes = np.unique(np.concatenate([train.labels, test.labels]))
    names_by_label = dict(enumerate((data or {}).get("class_names", ())))
    _two_classes(train.labels, sources.get("train"), names_by_label)
    untrained, n_untrained = _test_classes_not_trained_on(train.labels, test.labels, sources, names_by_label)
    n_test_in_train = _test_images_in_train(train.images, test.images, sources)
    _room_for_every_class(train.labels, settings.max_train)
    probe_index = stratified_subset(train.labels, settings.max_train, settings.seed)
    probe_labels = train.labels[probe_index]
    with tempfile.TemporaryDirectory() as scratch:
        encodings = encode_all(train, test, probe_index, settings, fisher_model=fisher_model, vae_model=vae_model,
                               models_dir=models_dir or scratch, keep_models=models_dir is not None)
        test_pixels = to_unit_float(test.images, "test")
        train_pixels = to_unit_float(train.images[probe_index], "train")
        results, reconstructions = {}, {}
        predictions = {"logistic": {}, "knn": {}}
        vae_section = None
        for name, enc in encodings.items():
            log.info("probing %s codes (%s dims)", name, f"{enc.test.shape[1]:,}")
            space = ProbeSpace(enc.train, enc.test)
            logistic, predictions["logistic"][name] = logistic_probe(
                space, probe_labels, test.labels, c_grid=settings.c_grid, seed=settings.seed, classes=classes)
            curve = label_efficiency(space, probe_labels, test.labels, repeats=settings.label_repeats,
                                     c_grid=settings.c_grid, seed=settings.seed, full_accuracy=logistic["accuracy"])
            ridge, reconstructions[f"ridge_{name}"] = ridge_probe(space, train_pixels, test_pixels,
                                                                  alphas=settings.ridge_alphas)
            del space
            knn, predictions["knn"][name] = knn_probe(enc.train, probe_labels, enc.test, test.labels, classes=classes)
            own = None
            if name == "vae":
                own, reconstructions["vae"] = vae_reconstruction(enc.estimator, enc.test, test_pixels, seed=settings.seed)
                vae_section = _vae_section(enc.estimator, test.images, settings.seed)
            elif name == "pca":
                reconstructions["pca"] = enc.estimator.inverse_transform(enc.test, test_pixels.shape[1:])
                own = pixel_errors(test_pixels, reconstructions["pca"])
            results[name] = {
                "dim": int(enc.test.shape[1]),
                "cost": {"fit_seconds": enc.fit_seconds, "encode_images_per_second": enc.encode_images_per_second,
                         "model_bytes": enc.model_bytes, "model_path": enc.model_path,
                         "reused_model": enc.fit_seconds is None},
                "classification": {"logistic": logistic, "knn": knn},
                "label_efficiency": curve,
                "reconstruction": {"ridge": ridge, "own": own},
            }
    report = {
        "schema": "fvae-evaluate-report",
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "settings": {**settings.as_dict(), "fisher_model": _str_or_none(fisher_model),
                     "vae_model": _str_or_none(vae_model),
                     "fisher_params": _params(encodings.get("fisher")), "vae_params": _params(encodings.get("vae"))},
        "data": {**(data or {}), "image_shape": list(train.images.shape[1:]), "n_train": len(train),
                 "n_probe_train": len(probe_index), "n_test": len(test), "n_test_in_train": n_test_in_train,
                 "n_test_of_untrained_classes": n_untrained,
                 "untrained_classes": untrained, "classes": [int(c) for c in classes],
                 "class_names": class_names_of(classes, names_by_label)},
        "encodings": results,
        "paired_tests": _all_paired_tests(predictions, test.labels, test_pixels, reconstructions),
        "vae": vae_section,
        "seconds": time.perf_counter() - started,
    }
    artifacts = {"encodings": encodings, "reconstructions": reconstructions, "test_pixels": test_pixels,
                 "test_labels": test.labels}
    return report, artifacts


def _all_paired_tests(predictions: dict, test_labels, test_pixels, reconstructions: dict) -> dict:
    """report.json's ``paired_tests``: of the classifiers' predictions (``logistic``, ``knn``), of
    the ridge probe's reconstructions (``ridge``), and of the models' own (``own``: the VAE's
    decoder and PCA's inverse, where both were evaluated)."""
    tests = {probe: paired_tests(predicted, test_labels) for probe, predicted in predictions.items()}
    ridge = {name: image_errors(test_pixels, reconstructions[f"ridge_{name}"]) for name in predictions["logistic"]}
    tests["ridge"] = paired_error_tests(ridge)
    if "vae" in reconstructions and "pca" in reconstructions:
        tests["own"] = paired_error_tests({name: image_errors(test_pixels, reconstructions[name])
                                           for name in ("vae", "pca")})
    return tests


def _str_or_none(value):
    return None if value is None else str(value)


def _params(encoding: Encoding | None):
    """The encoder's parameters as used: those its ``fit`` chooses when None (``_chosen_at_fit``:
    Fisher's patch size, say) are reported as the values chosen, the fitted ``NAME_``."""
    if encoding is None:
        return None
    import json

    from .persist import _jsonable

    estimator = encoding.estimator
    params = estimator.get_params()
    for name in getattr(estimator, "_chosen_at_fit", ()):
        params[name] = getattr(estimator, f"{name}_")
    return json.loads(json.dumps(params, default=_jsonable))


def _vae_section(encoder, test_images, seed) -> dict:
    history = encoder.history_ or {}
    training = {key: history.get(key) for key in ("epochs_run", "best_epoch", "stopped_by")}
    elapsed = history.get("seconds") or [None]  # cumulative seconds at the end of each epoch
    return {"test": encoder.evaluate(test_images, iwae_k=16, seed=seed), "training": {**training, "seconds": elapsed[-1]}}


# ----------------------------------------------------------------------------------------------------
# reading the numbers


# {k}: the neighbours the k-NN probe used (knn_neighbours)
TABLE_COLUMNS = ("encoding", "dim", "logistic acc", "macro-F1", "{k}-NN acc", "acc @100 labels",
                 "ridge recon MSE", "own recon MSE", "fit s", "encode img/s", "model size")


def comparison_rows(report: dict) -> list[list[str]]:
    """The comparison table as text cells, one row per encoding (header first)."""
    rows = [[column.format(k=knn_neighbours(report)) for column in TABLE_COLUMNS]]
    for name, r in report["encodings"].items():
        c = r["classification"]
        few = _accuracy_with_100_labels(r)
        own = r["reconstruction"]["own"]
        fit = r["cost"]["fit_seconds"]
        rows.append([
            name, f"{r['dim']:,}", f"{c['logistic']['accuracy']:.4f}", f"{c['logistic']['macro_f1']:.4f}",
            f"{c['knn']['accuracy']:.4f}", "-" if few is None else f"{few:.4f}",
            f"{r['reconstruction']['ridge']['mse']:.4f}", "-" if own is None else f"{own['mse']:.4f}",
            "reused" if fit is None else f"{fit:.1f}", f"{r['cost']['encode_images_per_second']:,.0f}",
            readable_size(r["cost"]["model_bytes"]),
        ])
    return rows


def _point_at_100_labels(encoding: dict) -> dict | None:
    """An encoding's label-efficiency point at 100 labels, or None when the train split has fewer images."""
    return next((p for p in encoding["label_efficiency"] if p["n_labels"] == 100), None)


def _accuracy_with_100_labels(encoding: dict) -> float | None:
    """An encoding's mean accuracy at 100 labels (the table's "acc @100 labels"), or None."""
    point = _point_at_100_labels(encoding)
    return None if point is None else point["accuracy_mean"]


def _spread_of_draws(encoding: dict) -> str:
    """' (mean of 3 draws of the labelled images, sd 1.2 points)' for the 100-label point of a
    curve drawn more than once; '' for a single draw, whose spread is unknown."""
    point = _point_at_100_labels(encoding)
    draws = len(point.get("accuracies", ()))
    if draws < 2:
        return ""
    return f" (mean of {draws} draws of the labelled images, sd {100 * point['accuracy_std']:.1f} points)"


def knn_neighbours(report: dict) -> int:
    """The neighbours the k-NN probe used: ``KNN_K``, or every train image when there are fewer."""
    first = next(iter(report["encodings"].values()))
    return first["classification"]["knn"].get("k", KNN_K)


def markdown_table(report: dict) -> str:
    rows = comparison_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _leaders(scores: dict[str, float], *, lowest: bool = False) -> list[str]:
    """The names sharing the best score (accuracies over one test set tie exactly), in table order."""
    best = (min if lowest else max)(scores.values())
    return [name for name, score in scores.items() if score == best]


def _names(names: list[str], bold: bool = False) -> str:
    marked = [f"**{name}**" if bold else name for name in names]
    return marked[0] if len(marked) == 1 else ", ".join(marked[:-1]) + " and " + marked[-1]


def _all_tie(leaders: list[str], scores: dict) -> bool:
    """Whether the ``leaders`` of ``scores`` (:func:`_leaders`) are all of them, two or more."""
    return 1 < len(leaders) == len(scores)


def _lead(names: list[str], scores: dict) -> str:
    """The leaders ``names`` of ``scores`` and their verb: one leads, some lead, all tie."""
    if len(names) == 1:
        return f"{names[0]} leads"
    return f"{_names(names)} {'tie' if _all_tie(names, scores) else 'lead'}"


def reading(report: dict) -> list[str]:
    """A few plain sentences on what the table says: who classifies best, with few labels, who
    reconstructs best, and at what cost. Encodings that tie are named together."""
    enc = report["encodings"]
    if len(enc) == 1:
        return _reading_of_one(report)
    lines = []
    logistic = {n: enc[n]["classification"]["logistic"]["accuracy"] for n in enc}
    best = _leaders(logistic)
    verdict = "serve equally well" if _all_tie(best, logistic) else "serve best"
    sentence = (f"For classification, {_names(best, bold=True)} codes {verdict}: logistic regression reaches "
                f"{_pct(logistic[best[0]])}{_interval(enc[best[0]]['classification']['logistic'])} on the test set")
    lines.append(sentence + _runner_up(report, "logistic", logistic, best,
                                       test_name="McNemar's exact test on the test images") + ".")
    knn = {n: enc[n]["classification"]["knn"]["accuracy"] for n in enc}
    by_knn = _leaders(knn)
    lines.append(f"With {knn_neighbours(report)}-nearest neighbours instead, {_lead(by_knn, knn)} "
                 f"({_pct(knn[by_knn[0]])}){_runner_up(report, 'knn', knn, by_knn)}.")
    at_100 = {n: _accuracy_with_100_labels(enc[n]) for n in enc}
    few = {n: accuracy for n, accuracy in at_100.items() if accuracy is not None}
    if few:
        leaders = _leaders(few)
        at = "at" if _all_tie(leaders, few) else "with"
        lines.append(f"With only 100 labelled train images, {_lead(leaders, few)} {at} {_pct(few[leaders[0]])}"
                     f"{_spread_of_draws(enc[leaders[0]])}.")
    learned = {n: enc[n]["reconstruction"]["ridge"]["mse"] for n in enc if n != "raw"}  # raw: no contest
    if len(learned) == 1:  # no contest: raw pixels are the probe's ceiling, not a rival
        (name, mse), = learned.items()
        raw = enc["raw"]["reconstruction"]["ridge"]["mse"]
        # a ceiling where there are train images enough for the probe to learn the identity
        ceiling = "the probe's ceiling" if raw <= mse else "through the same probe"
        lines.append(f"Through a linear probe (ridge from codes to pixels), {name} codes reconstruct the test images "
                     f"with MSE {_mse(mse)} (raw pixels, {ceiling}: {_mse(raw)}).")
    elif learned:
        ridge = _leaders(learned, lowest=True)
        runner_up = _runner_up(report, "ridge", learned, ridge, shown=_mse, lowest=True,
                               test_name="paired t-test on the test images' errors")
        among = " of the learned encodings" if "raw" in enc else ""
        lines.append(f"Through the same linear probe (ridge from codes to pixels), {_names(ridge)} codes keep the most "
                     f"pixel information{among} (test MSE {_mse(learned[ridge[0]])}){runner_up}.")
    if "vae" in enc and "pca" in enc:
        lines.append(_vae_against_pca(report))
    lines.append(_cost(enc))
    return lines


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def _mse(value: float) -> str:
    return f"{value:.4f}"


def _interval(scores: dict) -> str:
    """' (95% CI 97.2-98.9%)' for an accuracy reported with its interval; '' for one without."""
    if "accuracy_ci95" not in scores:
        return ""
    low, high = scores["accuracy_ci95"]
    return f" (95% CI {100 * low:.1f}-{_pct(high)})"


def _runner_up(report: dict, probe: str, scores: dict, leaders: list[str], *, shown=_pct, lowest=False,
               test_name: str | None = None) -> str:
    """', against 94.2% for vae' (each score ``shown`` as a percentage by default) and, where the
    report has the paired tests, whether the leaders' lead over the runners-up is significant
    (:func:`_significance`); '' when every encoding leads."""
    others = {n: score for n, score in scores.items() if n not in leaders}
    if not others:
        return ""
    second = _leaders(others, lowest=lowest)
    return (f", against {shown(others[second[0]])} for {_names(second)}"
            + _significance(report, probe, leaders, second, test_name))


def _significance(report: dict, probe: str, leaders: list[str], others: list[str], test_name: str | None = None) -> str:
    """', a difference significant at 5% (p < 0.001)': whether the paired tests of ``probe`` in the
    report set each of the ``leaders`` apart from each of the ``others`` (by the largest p-value of
    those pairs); '' for a report without those tests."""
    tests = report.get("paired_tests", {}).get(probe, [])
    p_values = [t["p_value"] for t in tests if {*t["encodings"]} & {*leaders} and {*t["encodings"]} & {*others}]
    if not p_values:
        return ""
    if None in p_values:
        return ", a difference one test image is too few to test"
    p_value = max(p_values)
    verdict = "significant" if p_value < SIGNIFICANCE else "not significant"
    shown = "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3g}"
    return f", a difference {verdict} at {SIGNIFICANCE:.0%} ({f'{test_name}: ' if test_name else ''}{shown})"


def _cost(enc: dict) -> str:
    """The Cost sentence of :func:`reading`: the widest codes (all that tie) and their encode speed."""
    dims = {n: enc[n]["dim"] for n in enc}
    widest = _leaders(dims)
    speeds = " and ".join(f"{enc[n]['cost']['encode_images_per_second']:,.0f}" for n in widest)
    width = f"{dims[widest[0]]:,} dims"
    if len(widest) == 1:
        head = f"{widest[0]} codes are the widest ({width}, {speeds} images/s to encode)"
    else:
        how = "equally wide" if _all_tie(widest, dims) else "the widest"
        head = f"{_names(widest)} codes are {how} ({width}; {speeds} images/s to encode)"
    narrower = ", ".join(f"{n} {dims[n]:,} dims" for n in enc if n not in widest)
    return f"Cost: {head}" + (f"; {narrower}" if narrower else "") + "."


def _reading_of_one(report: dict) -> list[str]:
    """:func:`reading` for a run of one encoding: its numbers, with nothing to compare them to."""
    name, entry = next(iter(report["encodings"].items()))
    classification = entry["classification"]
    sentence = (f"Only **{name}** was evaluated: logistic regression on its codes reaches "
                f"{_pct(classification['logistic']['accuracy'])}{_interval(classification['logistic'])} on the test "
                f"set, {knn_neighbours(report)}-nearest neighbours "
                f"{_pct(classification['knn']['accuracy'])}")
    few = _accuracy_with_100_labels(entry)
    if few is not None:
        sentence += f", and {_pct(few)} with only 100 labelled train images"
    lines = [sentence + "."]
    if name != "raw":
        lines.append(f"Through a linear probe (ridge from codes to pixels) its codes reconstruct the test images "
                     f"with MSE {_mse(entry['reconstruction']['ridge']['mse'])}.")
    lines.append(f"Cost: {entry['dim']:,} dims, {entry['cost']['encode_images_per_second']:,.0f} images/s to encode.")
    return lines


def _vae_against_pca(report: dict) -> str:
    """The VAE decoder's reconstruction against PCA's, unless PCA keeps every pixel dimension."""
    pca = report["encodings"]["pca"]
    v, p = report["encodings"]["vae"]["reconstruction"]["own"], pca["reconstruction"]["own"]
    h, w = report["data"]["image_shape"]
    if pca["dim"] >= h * w:
        return (f"PCA with {pca['dim']} components keeps all {h * w} pixels of {h}x{w} images, so it reconstructs "
                f"exactly: no yardstick for the VAE's decoder (MSE {_mse(v['mse'])}) at this size.")
    verdict = "beats" if v["mse"] < p["mse"] else "does not beat"
    pca_size = (f"of the same dimension ({pca['dim']})" if pca["dim"] == _latent_dim(report)
                else f"with {pca['dim']} components")
    return (f"The VAE's own decoder {verdict} PCA {pca_size}: "
            f"MSE {_mse(v['mse'])} ({v['psnr']:.1f} dB) against {_mse(p['mse'])} ({p['psnr']:.1f} dB)"
            f"{_significance(report, 'own', ['vae'], ['pca'])}.")


def _latent_dim(report: dict) -> int:
    """The compared VAE's latent size; without one, the evaluation VAE's, which PCA's size follows."""
    return report["vae"]["test"]["latent_dim"] if report.get("vae") else EVALUATION_VAE["latent_dim"]


def pca_size_note(report: dict) -> str:
    """One sentence on PCA's number of components: the VAE latent's, unless the pixels or the train
    images are fewer."""
    dim, latent = report["encodings"]["pca"]["dim"], _latent_dim(report)
    whose = "the VAE latent" if report.get("vae") else "the evaluation VAE's latent"
    if dim == latent:
        return f"PCA has as many components as {whose} ({latent})."
    h, w = report["data"]["image_shape"]
    if dim == h * w:
        return f"PCA has {dim} components, as many as there are pixels ({whose} has {latent})."
    return (f"PCA has {dim} components, one fewer than there are train images: centred, they span no more "
            f"({whose} has {latent}).")


class _CallableModule(types.ModuleType):
    """This module, callable as its :func:`evaluate`.

    The public API has ``fvae.evaluate`` as the function, but once ``fvae.evaluate`` is imported
    Python makes the package's attribute of that name this module; so the module is the function too.
    """

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
# inspect.signature, help() and IPython's "fvae.evaluate?" read a callable's __signature__ first
__signature__ = inspect.signature(evaluate)
