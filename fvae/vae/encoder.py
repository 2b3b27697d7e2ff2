"""``VAEEncoder``: the VAE as a scikit-learn transformer, with saving and loading."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..data import (
    Split, check_image_batch, check_pixel_names, class_names_of, image_encoder_tags, image_sizes_differ, integer_labels,
    is_whole_number, record_pixel_names, to_unit_float, untrained_classes,
)
from ..errors import InputError, ModelFileError, TrainingInterrupted
from ..persist import (ZIP_DATE, atomic_output, forget_file, history_paths, load_model, pixel_names_member,
                       refuse_overwrite, restore_pixel_names, save_model, save_npy)
from .model import ARCHITECTURES, BINARIZATIONS, LIKELIHOODS

KERAS_MEMBER = "model.keras"


#: TensorFlow holds tensor shapes as int32: a larger latent, layer or batch fails before any allocation.
TENSOR_SIZE_LIMIT = 2**31


class VAEEncoder(TransformerMixin, BaseEstimator):
    """Encode images as the posterior mean of a variational autoencoder.

    Parameters
    ----------
    latent_dim : int, default=32
    arch : {"mlp", "conv"}, default="conv"
        ``conv`` is the TensorFlow tutorial's convolutional VAE; ``mlp`` uses ``hidden``.
    hidden : tuple of int or int, default=(512, 256)
        Sizes of the MLP's hidden layers, the encoder's in this order and the decoder's in
        reverse; one int is one layer, as in scikit-learn's MLPs.
    likelihood : {"bernoulli", "gaussian"}, default="bernoulli"
    binarization : {"none", "threshold", "dynamic"}, default="threshold"
        Bernoulli targets: grey pixels (cross-entropy), thresholded at 0.5 (the TensorFlow
        tutorial's data, deterministic), or re-drawn every batch (the literature's dynamic
        binarization; its test ELBOs are ~15 nats lower on MNIST and not comparable with
        thresholded ones).
    gaussian_variance : float or None, default=None
        Fixed variance of the Gaussian likelihood; None learns one, shared by all pixels and set
        in each training step to the batch's mean squared error, its maximum-likelihood value
        (the σ-VAE's calibrated decoder; see :mod:`fvae.vae.model`).
    beta : float, default=1.0
    warmup_epochs : int, default=0
        Epochs over which the KL weight ramps up to ``beta``. Early stopping judges only the
        epochs after it (an earlier epoch, trained with a smaller KL weight, is not the model
        asked for); a warm-up longer than the training keeps the last epoch, with a warning.
    dropout : float, default=0.0
        Dropout after each hidden layer, in training only (see :class:`~fvae.vae.model.VAE`).
    conditional : bool, default=False
        Condition encoder and decoder on the labels (``fit``, ``transform`` and ``sample`` take them).
    epochs : int, default=200
        Upper bound; early stopping usually ends training sooner.
    batch_size : int, default=128
    learning_rate : float, default=1e-3
    validation_fraction : float, default=0.1
        Held-out share of the training images for early stopping.
    patience : int, default=10
        Epochs without a better validation ELBO before stopping.
    max_seconds : float, default=None
        Stop training after this long, within one step: the epoch it cuts short is validated
        and judged like a whole one, and the best weights so far are kept.
    return_log_var : bool, default=False
        ``transform`` returns ``[mean, log_var]`` (2 x latent_dim columns) instead of the mean.
    image_shape : tuple of (h, w), default=None
        Needed when images are passed flat.
    random_state : int, default=0
        Seeds the weights, the shuffling and the sampling noise: same seed, same model on CPU.
    verbose : int, default=0
        Training progress on stderr: 0 none, 1 a progress bar through each epoch and one line
        per epoch (loss, ELBO, its terms, validation ELBO), 2 the lines only.

    Attributes
    ----------
    model_ : fvae.vae.model.VAE
    history_ : dict
        Per-epoch training and validation numbers (see :func:`fvae.vae.train.train`).
    image_shape_ : tuple of (h, w)
    n_features_in_ : int
    classes_ : ndarray of shape (n_classes,)
        Only for a conditional VAE: the labels seen in ``fit``, sorted. Any integers, or strings
        (as scikit-learn's classifiers take them); the one-hot code of a label is its position here.
    n_classes_ : int
        Only for a conditional VAE: ``len(classes_)`` (a property).
    checksum_ : str
        Only on a loaded encoder, until it is refitted: the model file's checksum.
    class_names_ : dict of label to str
        Only on a loaded encoder, until it is refitted: the names its file gives a conditional
        VAE's classes (label -> name, see :meth:`save`); empty when it gives none (string labels
        name themselves).
    """

    def __init__(self, *, latent_dim=32, arch="conv", hidden=(512, 256), likelihood="bernoulli",
                 binarization="threshold", gaussian_variance=None, beta=1.0, warmup_epochs=0, dropout=0.0,
                 conditional=False, epochs=200, batch_size=128, learning_rate=1e-3, validation_fraction=0.1,
                 patience=10, max_seconds=None, return_log_var=False, image_shape=None, random_state=0,
                 verbose=0):
        self.latent_dim = latent_dim
        self.arch = arch
        self.hidden = hidden
        self.likelihood = likelihood
        self.binarization = binarization
        self.gaussian_variance = gaussian_variance
        self.beta = beta
        self.warmup_epochs = warmup_epochs
        self.dropout = dropout
        self.conditional = conditional
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.max_seconds = max_seconds
        self.return_log_var = return_log_var
        self.image_shape = image_shape
        self.random_state = random_state
        self.verbose = verbose

    # -- fitting --------------------------------------------------------------------------------

    def fit(self, X, y=None, *, callbacks=()):
        """Train the VAE on images ``X`` (labels ``y`` only for a conditional VAE).

        Parameters
        ----------
        X : array-like of shape (n_images, h, w), (n_images, h, w, 1) or (n_images, h * w)
            uint8 pixels (0..255) or floats in [0, 1].
        y : array-like of shape (n_images,), default=None
        callbacks : sequence of keras.callbacks.Callback
            Extra callbacks for Keras' ``fit`` (figures, for instance).

        Returns
        -------
        self

        Raises
        ------
        TrainingInterrupted
            On Ctrl-C once an epoch has finished, with the encoder fitted: the best epoch's
            weights, ``history_["stopped_by"] == "interrupted"``. It is a ``KeyboardInterrupt``;
            before the first epoch finishes, a plain one propagates and no model is kept.
        """
        import keras

        from .model import VAE
        from .train import train

        self._check_params()
        images = to_unit_float(check_image_batch(X, self.image_shape, "fit"), "fit")
        labels = self._valid_labels(y, len(images), "fit")
        classes = None if labels is None else np.unique(labels)
        keras.utils.set_random_seed(self.random_state)
        image_shape = tuple(int(s) for s in images.shape[1:])
        model = VAE(
            image_shape, latent_dim=self.latent_dim, arch=self.arch, hidden=self._hidden_sizes(),
            likelihood=self.likelihood, binarization=self.binarization, gaussian_variance=self.gaussian_variance,
            beta=self.beta, dropout=self.dropout, n_classes=0 if classes is None else len(classes),
            seed=self.random_state,
        )
        history = train(
            model, images, None if labels is None else _class_positions(labels, classes, "fit"),
            epochs=self.epochs, batch_size=self.batch_size,
            learning_rate=self.learning_rate, validation_fraction=self.validation_fraction,
            patience=self.patience, warmup_epochs=self.warmup_epochs, max_seconds=self.max_seconds,
            seed=self.random_state, callbacks=list(callbacks), verbose=self.verbose,
        )
        # set together once training is done (as FisherVectorEncoder.fit): a refit that fails keeps the previous fit
        self.model_, self.history_, self.image_shape_ = model, history, image_shape
        self.n_features_in_ = int(np.prod(image_shape))
        if classes is not None:
            self.classes_ = classes
        record_pixel_names(self, X)
        forget_file(self)
        if self.history_["stopped_by"] == "interrupted":
            raise TrainingInterrupted(f"interrupted after {self.history_['epochs_run']} epochs")
        return self

    def _check_params(self):
        if self.arch not in ARCHITECTURES:
            raise InputError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        if self.likelihood not in LIKELIHOODS:
            raise InputError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.binarization not in BINARIZATIONS:
            raise InputError(f"binarization must be one of {BINARIZATIONS}, got {self.binarization!r}")
        for name in ("latent_dim", "epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not is_whole_number(value, 1):
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        for name in ("latent_dim", "batch_size"):  # sizes of tensors, whose shapes TensorFlow holds as int32
            if getattr(self, name) >= TENSOR_SIZE_LIMIT:
                raise InputError(f"{name} must be below 2**31, got {getattr(self, name)!r}")
        for name in ("warmup_epochs", "random_state"):
            value = getattr(self, name)
            if not is_whole_number(value):
                raise InputError(f"{name} must be a non-negative integer, got {value!r}")
        self._hidden_sizes()
        # written as "not (inside)" so that NaN is refused too
        for name in ("validation_fraction", "dropout"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise InputError(f"{name} must be in [0, 1), got {value}")
        if not 0 <= self.beta < math.inf:
            raise InputError(f"beta must be >= 0, got {self.beta}")
        for name in ("learning_rate", "gaussian_variance", "max_seconds"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise InputError(f"{name} must be positive, got {value}")
        if self.gaussian_variance is not None and self.likelihood != "gaussian":
            raise InputError(f"gaussian_variance applies to likelihood='gaussian' only, not {self.likelihood!r}")

    def _hidden_sizes(self) -> tuple[int, ...]:
        """``hidden`` as a tuple of layer sizes: one whole number is one layer, as in
        scikit-learn's ``MLPClassifier(hidden_layer_sizes=...)``."""
        sizes = (self.hidden,) if is_whole_number(self.hidden, -math.inf) else self.hidden
        if isinstance(sizes, (str, bytes)) or not all(is_whole_number(size, 1) and size < TENSOR_SIZE_LIMIT
                                                      for size in np.ravel(sizes)):
            raise InputError(f"hidden must be layer sizes, positive integers below 2**31 such as (512, 256), "
                             f"got {self.hidden!r}")
        return tuple(int(size) for size in np.ravel(sizes))

    def _valid_labels(self, y, n, where):
        """A conditional VAE's labels, checked: ``n`` integers (int64; booleans and floats of whole
        numbers too) or ``n`` strings (str); None for an unconditional VAE."""
        if not self.conditional:
            return None
        if y is None:
            raise InputError(f"{where}: a conditional VAE needs labels: pass y, the class of each image")
        labels = np.asarray(y)
        if labels.dtype == object and labels.shape == (n,):  # a list or pandas column of names
            kinds = {_label_kind(t) for t in set(map(type, labels.tolist()))}
            if len(kinds) > 1:
                raise InputError(f"{where}: labels must be {n} integers or {n} strings, got a mix of "
                                 f"{', '.join(sorted(kinds))}")
            labels = np.array(labels.tolist())
        labels = integer_labels(labels)  # booleans and whole floats (pandas' 1.0), as fvae's sources read them
        if labels.shape != (n,) or labels.dtype.kind not in "iuU":
            raise InputError(f"{where}: labels must be {n} integers or {n} strings, got shape {labels.shape} "
                             f"dtype {labels.dtype}")
        return labels if labels.dtype.kind == "U" else labels.astype(np.int64)

    @property
    def n_classes_(self) -> int:
        """Only for a conditional VAE: ``len(classes_)``."""
        return len(self.classes_)

    # -- using ----------------------------------------------------------------------------------

    def _checked_inputs(self, X, y, where):
        """Images as float32 in [0, 1] and the labels a conditional VAE needs (None otherwise)."""
        check_is_fitted(self, "model_")
        check_pixel_names(self, X)
        images = to_unit_float(check_image_batch(X, self.image_shape_, where), where)
        return images, self._positions(y, len(images), where)

    def _positions(self, y, n, where):
        """A fitted conditional VAE's labels as positions in ``classes_`` (None if unconditional)."""
        labels = self._valid_labels(y, n, where)
        return None if labels is None else _class_positions(labels, self.classes_, where)

    def transform(self, X, y=None, *, batch_size=1024):
        """Posterior means (or ``[mean, log_var]``), float32 of shape (n_images, latent_dim[*2]).

        Deterministic: no sampling. A conditional VAE needs the labels ``y``.
        """
        from keras import ops

        _check_batch_size(batch_size, "transform")
        images, labels = self._checked_inputs(X, y, "transform")
        out = np.empty((len(images), self.n_features_out_), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            s = slice(start, start + batch_size)
            mean, log_var = self.model_.encode(images[s], None if labels is None else labels[s])
            parts = [mean, log_var] if self.return_log_var else [mean]
            out[s] = np.concatenate([ops.convert_to_numpy(p) for p in parts], axis=1)
        return out

    def fit_transform(self, X, y=None, **fit_params):
        return self.fit(X, y, **fit_params).transform(X, y)

    def inverse_transform(self, Z, y=None, *, batch_size=1024):
        """Decode latent codes to images: pixel means in [0, 1], float32 of shape (n, h, w)."""
        from keras import ops

        check_is_fitted(self, "model_")
        _check_batch_size(batch_size, "inverse_transform")
        Z = self._checked_codes(Z, "inverse_transform", "codes", with_log_var=True)
        Z = Z[:, : self.latent_dim]
        labels = self._positions(y, len(Z), "inverse_transform")
        out = np.empty((len(Z),) + self.image_shape_, dtype=np.float32)
        for start in range(0, len(Z), batch_size):
            s = slice(start, start + batch_size)
            decoded = self.model_.decode(Z[s], None if labels is None else labels[s])
            out[s] = ops.convert_to_numpy(self.model_.mean_image(decoded))
        return out

    def _checked_codes(self, Z, where: str, what: str, *, with_log_var: bool) -> np.ndarray:
        """``Z`` as float32 latent codes (n, latent_dim), or ``with_log_var`` also means and
        log-variances (n, 2 * latent_dim), as ``transform`` gives them with ``return_log_var``."""
        Z = np.asarray(Z, dtype=np.float32)
        widths = (self.latent_dim, 2 * self.latent_dim) if with_log_var else (self.latent_dim,)
        if Z.ndim != 2 or Z.shape[1] not in widths:
            shapes = " or ".join(f"(n, {width})" for width in widths)
            also = " (means, then log-variances)" if with_log_var else ""
            raise InputError(f"{where}: {what} must have shape {shapes}{also}, got {Z.shape}")
        if not np.isfinite(Z).all():
            raise InputError(f"{where}: {what} contain NaN or infinite values")
        return Z

    def sample(self, n, label=None, *, random_state=None, z=None):
        """Draw ``n`` images from the prior: decode z ~ N(0, I) (or the given ``z``).

        Parameters
        ----------
        n : int
        label : int or str, default=None
            The class to generate, one of ``classes_``; required for a conditional VAE, refused
            otherwise.
        random_state : int, default=None
            Seeds z; None uses the encoder's ``random_state``.
        z : ndarray of shape (n, latent_dim), default=None
            The latent vectors to decode instead of prior draws; ``n`` must be their number.
        """
        check_is_fitted(self, "model_")
        if self.conditional and label is None:
            raise InputError("this VAE is conditional: name the class to draw (label, --label)")
        if not self.conditional and label is not None:
            raise InputError("this VAE is not conditional, so it draws no chosen class "
                             "(fit one with conditional=True, --conditional)")
        if label is not None and not _is_one_of(label, self.classes_):
            raise InputError(f"label {label!r}: this model knows classes {_listed(self.classes_)}")
        if z is not None:
            z = self._checked_codes(z, "sample", "z", with_log_var=False)
            if n != len(z):
                raise InputError(f"sample: n = {n!r}, but len(z) = {len(z)}: they must agree")
        else:
            if not is_whole_number(n):
                raise InputError(f"sample: n must be a whole number >= 0, got {n!r}")
            seed = self.random_state if random_state is None else random_state
            z = np.random.default_rng(seed).standard_normal((n, self.latent_dim)).astype(np.float32)
        labels = None if label is None else np.full(len(z), label, dtype=self.classes_.dtype)
        return self.inverse_transform(z, labels)

    def evaluate(self, X, y=None, *, iwae_k=64, seed=0):
        """ELBO, reconstruction term, KL, active units and the IWAE bound (nats per image) on ``X``.

        Every sample is drawn with ``seed``: the same seed gives the same numbers.

        Parameters
        ----------
        X : array-like of shape (n_images, h, w), (n_images, h, w, 1) or (n_images, h * w)
        y : array-like of shape (n_images,), default=None
            The labels; a conditional VAE needs them.
        iwae_k : int, default=64
            Importance samples per image for the IWAE bound; 0 leaves the bound out.
        seed : int, default=0
        """
        from .train import evaluate

        if not is_whole_number(iwae_k):
            raise InputError(f"evaluate: iwae_k must be a whole number >= 0 (0: no IWAE bound), got {iwae_k!r}")
        images, labels = self._checked_inputs(X, y, "evaluate")
        return evaluate(self.model_, images, labels, iwae_k=iwae_k, seed=seed)

    def score_samples(self, X, y=None):
        """The ELBO of each image, a lower bound on its log-likelihood, in nats.

        One posterior sample per image, drawn with ``random_state``, so repeated calls agree.
        ``y`` is used only by a conditional VAE (which needs it).

        Returns
        -------
        ndarray of shape (n_images,)
        """
        from .train import elbo_per_image

        images, labels = self._checked_inputs(X, y, "score_samples")
        reconstruction, kl = elbo_per_image(self.model_, images, labels, seed=self.random_state)
        return reconstruction - kl

    def score(self, X, y=None):
        """Mean ELBO per image in nats (higher is better), as ``GaussianMixture.score`` gives the
        mean log-likelihood: model selection such as ``GridSearchCV`` over ``latent_dim`` or
        ``beta`` uses it on the held-out images."""
        return float(np.mean(self.score_samples(X, y)))

    @property
    def n_features_out_(self) -> int:
        return self.latent_dim * (2 if self.return_log_var else 1)

    def __sklearn_tags__(self):
        return image_encoder_tags(super().__sklearn_tags__())

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "model_")
        names = [f"z{i}" for i in range(self.latent_dim)]
        if self.return_log_var:
            names += [f"log_var{i}" for i in range(self.latent_dim)]
        return np.asarray(names, dtype=object)

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path, *, force: bool = False, class_names=None) -> str:
        """Save as an fvae model file: the JSON header plus the Keras ``.keras`` archive. Returns
        the checksum.

        Parameters
        ----------
        path : path-like
        force : bool, default=False
            Overwrite an existing file.
        class_names : dict of label to str, default=None
            A conditional VAE's classes by name (label -> name), kept in the file: the loaded
            encoder's ``class_names_`` (``fvae sample`` labels its rows with them and takes
            ``--label NAME``). Classes it does not name keep their label. None keeps the names
            this encoder was loaded with, if it was.

        A conditional VAE's classes decide the file's format version: 1 for 0..n-1, 2 for other
        integers, 3 for strings, so that an older fvae refuses what it would misread.
        """
        check_is_fitted(self, "model_")
        payload = keras_bytes(self.model_)
        arrays = {"n_classes_": np.asarray(getattr(self, "n_classes_", 0))} | pixel_names_member(self)
        if class_names is None:
            class_names = getattr(self, "class_names_", None)
        if self.conditional:
            arrays["classes_"] = self.classes_
            if class_names:  # older fvae versions ignore this member: no newer format needed
                arrays["class_names"] = np.asarray(class_names_of(self.classes_, class_names))
        format_version = _format_version(self.classes_) if self.conditional else 1
        params = {**self.get_params(), "hidden": self._hidden_sizes()}  # JSON has no int64 or arrays
        return save_model(path, method="vae", params=params, arrays=arrays, input_shape=self.image_shape_,
                          force=force, files={KERAS_MEMBER: payload}, format_version=format_version)

    @classmethod
    def load(cls, path) -> "VAEEncoder":
        """Load an encoder saved by :meth:`save` (Keras safe mode: no code is deserialized)."""
        header, members = load_model(path, method="vae")
        if KERAS_MEMBER not in members:
            raise ModelFileError(f"{path}: the Keras model is missing from the file")
        params = dict(header["params"])
        params["hidden"] = tuple(params["hidden"])  # JSON has no tuples
        encoder = cls(**params)
        try:
            encoder.model_ = keras_from_bytes(members[KERAS_MEMBER])
        except Exception as exc:  # Keras raises many types for a damaged archive
            raise ModelFileError(f"{path}: cannot load the Keras model ({exc})") from None
        encoder.image_shape_ = tuple(header["input_shape"])
        encoder.n_features_in_ = int(np.prod(encoder.image_shape_))
        encoder.class_names_ = {}
        if encoder.conditional:
            # .item(): files written before fvae kept 0-d arrays 0-d hold this scalar with shape (1,)
            n_classes = int(members["n_classes_"].item())
            encoder.classes_ = members.get("classes_", np.arange(n_classes, dtype=np.int64))  # format 1: 0..n-1
            names = members.get("class_names", ())
            encoder.class_names_ = {c: str(name) for c, name in zip(encoder.classes_.tolist(), names)}
        restore_pixel_names(encoder, members)
        encoder.history_ = None
        encoder.checksum_ = header["checksum"]
        return encoder


    # -- pickling (Dask ships fitted encoders to its workers) ---------------------------------------

    def __getstate__(self):
        """Pickle the Keras model through Keras' own format, never as raw Python objects."""
        state = self.__dict__.copy()
        model = state.pop("model_", None)
        if model is not None:
            state["_keras_bytes"] = keras_bytes(model)
        return state

    def __setstate__(self, state):
        state = dict(state)
        payload = state.pop("_keras_bytes", None)
        self.__dict__.update(state)
        if payload is not None:
            self.model_ = keras_from_bytes(payload)


def _check_batch_size(batch_size, where: str) -> None:
    if not is_whole_number(batch_size, 1):
        raise InputError(f"{where}: batch_size must be a whole number >= 1, got {batch_size!r}")


def _class_positions(labels, classes, where) -> np.ndarray:
    """Each label's position in the sorted ``classes`` (its one-hot index); a label that is not
    one of them is an InputError."""
    if (labels.dtype.kind == "U") != (classes.dtype.kind == "U"):  # numbers and strings do not sort together
        raise InputError(f"{where}: label {labels[0]} is not a class this model was fitted on ({_listed(classes)})")
    positions = np.searchsorted(classes, labels)
    known = classes[np.minimum(positions, len(classes) - 1)] == labels
    if not known.all():
        raise InputError(f"{where}: label {labels[~known][0]} is not a class this model was fitted on "
                         f"({_listed(classes)})")
    return positions.astype(np.int32)


def _format_version(classes) -> int:
    """The oldest model format that holds a conditional VAE with these classes: 1 for 0..n-1, 2
    for other integers (an older fvae would take label 3 of (3, 7) for the 4th class), 3 for
    strings (format 2 reads integer classes only)."""
    if classes.dtype.kind == "U":
        return 3
    return 1 if np.array_equal(classes, np.arange(len(classes))) else 2


def _label_kind(kind: type) -> str:
    """What a label of this Python type is, for telling strings from integers from the rest."""
    if issubclass(kind, str):
        return "strings"
    if issubclass(kind, (int, np.integer)) and not issubclass(kind, (bool, np.bool_)):
        return "integers"
    return kind.__name__


def _is_one_of(label, classes) -> bool:
    """Whether ``label`` is one of ``classes``, without numbers matching strings or True matching 1."""
    kind = "strings" if classes.dtype.kind == "U" else "integers"
    return _label_kind(type(label)) == kind and label in classes.tolist()


def _listed(classes) -> str:
    """Classes for a message: "0..9" when they run without a gap, else "3, 7" (the first 12)."""
    if (len(classes) > 2 and classes.dtype.kind != "U"
            and np.array_equal(classes, np.arange(classes[0], classes[0] + len(classes)))):
        return f"{classes[0]}..{classes[-1]}"
    shown = ", ".join(str(c) for c in classes[:12])
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > 12 else "")


def keras_bytes(model) -> bytes:
    """A Keras model as the bytes of its ``.keras`` archive: the same bytes for the same model.

    Keras stamps each save with its time (``date_saved`` in ``metadata.json``, and the weights'
    zip entry's date), so two saves of one fit differed, and so did the model files' checksums.
    The archive is rewritten without them: same members, same compression, entries dated
    :data:`~fvae.persist.ZIP_DATE`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        keras_path = Path(tmp) / KERAS_MEMBER
        model.save(keras_path)
        out = io.BytesIO()
        with zipfile.ZipFile(keras_path) as saved, zipfile.ZipFile(out, "w") as archive:
            for info in saved.infolist():
                payload = saved.read(info)
                if info.filename == "metadata.json":
                    metadata = json.loads(payload)
                    metadata.pop("date_saved", None)
                    payload = json.dumps(metadata).encode()
                archive.writestr(zipfile.ZipInfo(info.filename, date_time=ZIP_DATE), payload,
                                 compress_type=info.compress_type)
        return out.getvalue()


def keras_from_bytes(payload: bytes):
    """The model of a ``.keras`` archive's bytes, loaded in safe mode (no code is deserialized)."""
    import keras  # the VAE class is registered: this module imports .model

    fd, tmp = tempfile.mkstemp(suffix=".keras")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        return keras.saving.load_model(tmp, safe_mode=True, compile=False)
    finally:
        os.unlink(tmp)


def draw_samples(encoder: VAEEncoder, n: int, *, label=None, random_state=0) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw ``n`` images from a fitted VAE's prior, of ``label``'s class for a conditional VAE;
    without a label a conditional VAE draws every class, ``ceil(n / n_classes)`` each, class by
    class (so ``n`` is rounded up to whole classes).

    Returns
    -------
    images : ndarray of shape (m, h, w)
        Decoded pixel means, float32 in [0, 1].
    labels : ndarray of shape (m,) or None
        The class of each image (values of ``classes_``); None for an unconditional VAE.
    """
    if not (encoder.conditional and label is None):
        images = encoder.sample(n, label=label, random_state=random_state)
        return images, None if label is None else np.full(len(images), label, dtype=encoder.classes_.dtype)
    per_class = -(-n // encoder.n_classes_)
    # filled class by class rather than concatenated, so that the images are held once (a million at 28x28: 3.1 GB)
    images = np.empty((per_class * encoder.n_classes_,) + encoder.image_shape_, dtype=np.float32)
    for i, c in enumerate(encoder.classes_):
        images[i * per_class: (i + 1) * per_class] = encoder.sample(per_class, label=c, random_state=random_state)
    return images, np.repeat(encoder.classes_, per_class)


def save_sample_arrays(encoder: VAEEncoder, path, n: int, *, label=None, random_state=0, force=False) -> int:
    """:func:`draw_samples` saved as arrays: the images in ``path`` (a ``.npy`` that ``fvae``
    reads as an image source), and for a conditional VAE their classes where ``fvae encode``
    writes labels (``s.npy``: ``s.labels.npy``). Neither file is overwritten without ``force``.
    Returns how many images were drawn."""
    from ..extract import output_paths

    labels_path = output_paths(path)["labels"] if encoder.conditional else None
    refuse_overwrite(*filter(None, (path, labels_path)), force=force)
    images, labels = draw_samples(encoder, n, label=label, random_state=random_state)
    if labels_path is not None:
        save_npy(labels_path, labels, force=force)
    save_npy(path, images, force=force)
    return len(images)


def save_sample_dataset(encoder: VAEEncoder, path, n: int, *, label=None, random_state=0, force=False) -> int:
    """:func:`draw_samples` of a conditional VAE saved as a labelled image source: an ``.npz`` of
    ``images`` (float32 in [0, 1]) and ``labels``, which ``fvae`` reads as one labelled set.

    So ``fvae evaluate --data s.npz --test-data REAL`` fits every probe on the samples and tests
    it on real images: the "classification accuracy score" of a conditional generative model
    (Ravuri & Vinyals, 2019). The labels are the classes as the model names them: numbers for
    numbered classes, and names for named ones, so that a test source's labels are matched to
    them by name. Returns how many images were drawn.

    Raises
    ------
    InputError
        If the VAE is not conditional: its samples have no classes.
    """
    if not encoder.conditional:
        raise InputError("a sample dataset labels each image with its class, and this VAE is not conditional: "
                         "save its samples as .npy")
    refuse_overwrite(path, force=force)
    images, labels = draw_samples(encoder, n, label=label, random_state=random_state)
    with atomic_output(path, force=force) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, images=images, labels=_labels_as_named(encoder, labels))
    return len(images)


def _labels_as_named(encoder: VAEEncoder, labels: np.ndarray) -> np.ndarray:
    """``labels`` (values of ``classes_``) as the model names them: unchanged where every class is
    named by its own number, else each class's name."""
    names = class_names_of(encoder.classes_, getattr(encoder, "class_names_", None))
    if names == [str(c) for c in encoder.classes_.tolist()]:
        return labels
    return np.asarray(names)[_class_positions(labels, encoder.classes_, "labels")]


def write_history(history: dict, model_path, *, force: bool = False) -> dict[str, Path]:
    """Write the per-epoch history as JSON (everything) and CSV (one row per epoch)."""
    paths = history_paths(model_path)
    per_epoch = {k: v for k, v in history.items() if isinstance(v, list)}
    with atomic_output(paths["json"], force=force) as tmp:
        tmp.write_text(json.dumps(history, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = sorted(per_epoch)
    writer.writerow(["epoch", *columns])
    for i in range(max((len(v) for v in per_epoch.values()), default=0)):
        writer.writerow([i + 1, *(per_epoch[c][i] if i < len(per_epoch[c]) else "" for c in columns)])
    with atomic_output(paths["csv"], force=force) as tmp:
        tmp.write_text(buffer.getvalue())
    return paths


def fit_and_save(encoder: VAEEncoder, train, test, model_path, *, figures_dir=None, force=False, iwae_k=16,
                 class_names=None) -> dict:
    """Fit ``encoder`` on a train split, save it with its history, evaluate it on the test split
    (when there is one) and draw the figures. The library side of ``fvae fit vae``.

    ``class_names`` (label -> name) name the classes in the figures and, for a conditional VAE,
    in the model file.

    A Ctrl-C once an epoch has finished ends the training only: the best epoch so far is saved,
    evaluated and drawn like a finished training's, and ``interrupted`` says so.

    Test images of another size than the train images are not scored, and a conditional VAE is
    scored on the test images of the classes it was fitted on: it cannot encode another class.

    Returns
    -------
    dict
        ``checksum``, ``history`` paths, ``test`` numbers (or None), ``figures`` paths,
        ``interrupted``, and what of the test split was left out (:func:`_scorable_test`):
        ``not_scored``, ``untrained_classes``, ``n_test_of_untrained_classes``.
    """
    from ..report import refuse_vae_outputs
    from .train import EpochSamples

    refuse_vae_outputs(model_path, figures_dir, latent_dim=encoder.latent_dim, force=force)
    callbacks = [] if figures_dir is None else [EpochSamples(encoder.latent_dim)]
    interrupted = False
    try:
        encoder.fit(train.images, train.labels if encoder.conditional else None, callbacks=callbacks)
    except TrainingInterrupted:
        interrupted = True
    checksum = encoder.save(model_path, force=force, class_names=class_names)
    history = write_history(encoder.history_, model_path, force=force)
    test, left_out = _scorable_test(encoder, train, test)
    scores = None
    if test is not None and len(test):
        scores = encoder.evaluate(test.images, test.labels if encoder.conditional else None, iwae_k=iwae_k)
    figures = []
    if figures_dir is not None:
        from ..report import vae_figures

        shown = test if test is not None and len(test) else train
        figures = vae_figures(encoder, shown.images, shown.labels, figures_dir, frames=callbacks[0].frames,
                              class_names=class_names, force=force)
    return {"checksum": checksum, "history": history, "test": scores, "figures": figures, "interrupted": interrupted,
            **left_out}


def _scorable_test(encoder: VAEEncoder, train, test) -> tuple:
    """``(split, left_out)``: the images of ``test`` that the fitted ``encoder`` can be scored on
    (None for none), and what it leaves out: ``not_scored``, why no image is (test images of
    another size than the train images), and for a conditional VAE the ``untrained_classes`` of
    test images it has no one-hot input for, with their count ``n_test_of_untrained_classes``."""
    left_out = {"not_scored": None, "untrained_classes": [], "n_test_of_untrained_classes": 0}
    if test is None:
        return None, left_out
    if differ := image_sizes_differ(train, test):
        return None, {**left_out, "not_scored": f"{differ}, which a VAE of the train images cannot read"}
    if encoder.conditional and test.labels is not None:  # unlabelled, evaluate() says it needs labels
        outside, untrained = untrained_classes(test.labels, encoder.classes_)
        if untrained:
            test = Split(test.images[~outside], test.labels[~outside])
            left_out.update(untrained_classes=untrained, n_test_of_untrained_classes=int(outside.sum()))
    return test, left_out
