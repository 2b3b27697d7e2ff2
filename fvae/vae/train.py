"""Training and evaluating a :class:`~fvae.vae.model.VAE`: tf.data input, Adam, KL warm-up,
early stopping on the validation ELBO with the best weights restored, and the evaluation
numbers (ELBO and its terms, active units, the importance-weighted bound)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from ..errors import TrainingDiverged
from .model import gaussian_log_density

log = logging.getLogger("fvae")


def _not_retracing(record: logging.LogRecord) -> bool:
    """A logging filter that drops TensorFlow's "N out of the last M calls ... triggered
    tf.function retracing" warning."""
    return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def retracing_warnings_dropped():
    """Within the block, TensorFlow's warning about retraced functions is not shown.

    Each fit compiles the train and test steps of a new model. TensorFlow counts those tracings
    across models, so from the second VAE fitted in one process (a cross-validation, a notebook)
    it warns of "excessive retracing" to avoid. Nothing can be avoided: a new model must be
    traced. Only within fvae's own fits, so that the user's own functions still get the warning;
    FVAE_TF_LOGS=1 shows it as it shows TensorFlow's other logs.
    """
    if os.environ.get("FVAE_TF_LOGS"):
        yield
        return
    logger = logging.getLogger("tensorflow")
    logger.addFilter(_not_retracing)
    try:
        yield
    finally:
        logger.removeFilter(_not_retracing)


def fixed_binarization(images: np.ndarray, mode: str, seed: int) -> np.ndarray:
    """Evaluation data for a dynamically binarized VAE: one fixed, seeded Bernoulli draw, so that
    scores compare across epochs and runs. Other modes are deterministic already: unchanged (a
    thresholded VAE's encoder sees grey levels, as in training; ``VAE.targets`` thresholds)."""
    if mode == "dynamic":
        return (np.random.default_rng(seed).random(images.shape, dtype=np.float32) < images).astype(np.float32)
    return images


def make_dataset(images, labels, batch_size: int, *, shuffle: bool, seed: int) -> tf.data.Dataset:
    """A batched, prefetched tf.data pipeline of (images) or (images, labels).

    tf.data's autotuning is off. On a 2-core machine with it on, about half the epochs ran at
    ~60% speed, each core idle half the time, in fvae's loop and the tutorial's alike; the
    pipeline slices arrays already in memory, so there is nothing for it to tune.
    """
    items = images if labels is None else (images, labels)
    data = tf.data.Dataset.from_tensor_slices(items)
    if shuffle:
        data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.batch(batch_size).prefetch(2).with_options(options)


class KLWarmup(keras.callbacks.Callback):
    """Ramp the loss's KL weight linearly from beta/warmup to beta over ``warmup_epochs`` epochs."""

    def __init__(self, beta: float, warmup_epochs: int):
        super().__init__()
        self.beta, self.warmup_epochs = beta, warmup_epochs

    def on_epoch_begin(self, epoch, logs=None):
        fraction = min(1.0, (epoch + 1) / self.warmup_epochs) if self.warmup_epochs else 1.0
        self.model.kl_weight.assign(self.beta * fraction)


def diverged(logs) -> bool:
    """Whether an epoch's loss or validation ELBO (in its Keras ``logs``) is NaN or infinite."""
    return any(logs.get(name) is not None and not math.isfinite(logs[name]) for name in ("loss", "val_elbo"))


class BestOnValidationElbo(keras.callbacks.Callback):
    """Stop when the validation ELBO has not improved for ``patience`` epochs, or when
    ``max_seconds`` have passed, and end with the weights of the best epoch.

    The time limit is checked before every step, so training ends within one step of it: the
    epoch it cuts short is validated and judged like a whole one (Keras does both after a stop).

    Epochs before ``start_epoch`` (those of a KL warm-up, whose loss weighs the KL less than
    beta) count neither as best nor against the patience; if training ends before it, or
    without a validation ELBO at all, the last weights are kept and are the best epoch.

    An epoch whose loss or validation ELBO is NaN or infinite stops training ("diverged"); its
    weights are never kept, and ``diverged_in`` is its index (None while none has).
    """

    def __init__(self, patience: int, max_seconds: float | None = None, start_epoch: int = 0):
        super().__init__()
        self.patience, self.max_seconds, self.start_epoch = patience, max_seconds, start_epoch

    def on_train_begin(self, logs=None):
        self.best, self.best_epoch, self.kept_weights = -math.inf, -1, None
        self.last_epoch, self.diverged_in = -1, None
        self.started = time.perf_counter()
        self.stop_reason, self.cut_short = "epoch limit", False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if diverged(logs):
            self.model.stop_training, self.stop_reason, self.diverged_in = True, "diverged", epoch
            return
        self.last_epoch = epoch
        elbo = logs.get("val_elbo")
        if elbo is not None and epoch >= self.start_epoch:
            if elbo > self.best:  # finite: a non-finite epoch stopped training above
                self.best, self.best_epoch = float(elbo), epoch
            if epoch - max(self.best_epoch, self.start_epoch) >= self.patience:
                self.model.stop_training, self.stop_reason = True, "early stopping"
        if self.best_epoch in (epoch, -1):  # the weights training ends with, were it to end now
            self.kept_weights = self.model.get_weights()
        if self._out_of_time():
            self.model.stop_training, self.stop_reason = True, "time limit"

    def on_train_batch_begin(self, batch, logs=None):
        # a begin hook: Keras passes it no logs, so it adds no per-step synchronization (an end
        # hook would turn off Keras' asynchronous dispatch and convert every step's logs)
        if self._out_of_time():
            self.model.stop_training, self.stop_reason, self.cut_short = True, "time limit", True

    def _out_of_time(self) -> bool:
        return self.max_seconds is not None and time.perf_counter() - self.started >= self.max_seconds

    def on_train_end(self, logs=None):
        if self.best_epoch < 0:  # none judged best: the last finite epoch is (-1 if none was)
            self.best_epoch = self.last_epoch
        if self.kept_weights is not None:
            self.model.set_weights(self.kept_weights)

    def interrupted(self):
        """End an interrupted training as a stopped one, with the weights it would have ended
        with after its last finished epoch. Keras calls no ``on_train_end`` then."""
        self.stop_reason = "interrupted"
        self.on_train_end()


class DeferredCtrlC(keras.callbacks.Callback):
    """Ctrl-C (SIGINT) during ``fit``, raised as ``KeyboardInterrupt`` at the next step or epoch
    boundary instead of wherever Python happened to be.

    Python raises it at the next bytecode, which can be inside a callback that a C extension
    called (NumPy's ``__array__`` under TensorFlow's conversion, in a figure callback's decode):
    the extension then fails with ``SystemError: ... returned a result with an exception set``
    and training is lost. A second Ctrl-C before the boundary interrupts at once.
    """

    def __init__(self):
        super().__init__()
        self.requested = False

    @contextlib.contextmanager
    def installed(self):
        """Handle SIGINT while in the block, where Python's own handler is in place (not in
        another thread, nor under a handler the program set itself)."""
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            yield
            return
        signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _on_sigint(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def _raise_if_requested(self, *args, **kwargs):
        if self.requested:
            raise KeyboardInterrupt

    on_epoch_begin = on_train_batch_begin = on_test_batch_begin = _raise_if_requested


class EpochLines(keras.callbacks.Callback):
    """One line per epoch on stderr, so that stdout keeps only results: the loss, the ELBO, its
    reconstruction term and KL (nats, plain decimals), the validation ELBO and the epoch's time.
    The validation ELBO is marked ``(best)`` when ``stopper`` (which runs first) took the epoch
    as the best so far, and ``(warm-up)`` in the epochs it does not judge; an epoch the time
    limit ended before its last step says so."""

    def __init__(self, epochs: int, stopper: BestOnValidationElbo):
        super().__init__()
        self.epochs, self.stopper = epochs, stopper

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def close(self):
        """Nothing to take down: the lines are printed as they come."""

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        line = f"epoch {epoch + 1}/{self.epochs}  {_terms(logs)}"
        if "val_elbo" in logs:
            line += f"  val_elbo {logs['val_elbo']:.2f}"
            if epoch < self.stopper.start_epoch:
                line += " (warm-up)"
            elif epoch == self.stopper.best_epoch:
                line += " (best)"
        cut = "  (cut short by the time limit)" if self.stopper.cut_short else ""
        print(f"{line}  {time.perf_counter() - self.started:.1f} s{cut}", file=sys.stderr, flush=True)


class EpochProgressBar(EpochLines):
    """:class:`EpochLines` plus a rich progress bar through each epoch's ``steps``, with the
    running loss, ELBO, reconstruction term and KL (a terminal's view)."""

    def __init__(self, epochs: int, steps: int, stopper: BestOnValidationElbo):
        super().__init__(epochs, stopper)
        self.steps = steps
        self.progress = None

    def on_epoch_begin(self, epoch, logs=None):
        from ..report import progress_bar

        super().on_epoch_begin(epoch, logs)
        self.progress, self.task = progress_bar(f"epoch {epoch + 1}/{self.epochs}", self.steps)
        self.progress.start()

    def on_train_batch_end(self, batch, logs=None):
        self.progress.update(self.task, completed=batch + 1, info=_terms(logs or {}))

    def on_epoch_end(self, epoch, logs=None):
        self.close()
        super().on_epoch_end(epoch, logs)

    def close(self):
        """Take the bar down (at the end of an epoch, or when training stops in one)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _terms(logs) -> str:
    return "  ".join(f"{name} {float(logs[name]):.2f}" for name in ("loss", "elbo", "reconstruction", "kl")
                     if name in logs)


def train(model, images, labels=None, *, epochs: int, batch_size: int, learning_rate: float,
          validation_fraction: float, patience: int, warmup_epochs: int, max_seconds: float | None,
          seed: int, callbacks=(), verbose: int = 0, jit_compile=False, steps_per_execution: int = 1) -> dict:
    """Train ``model`` on float32 images in [0, 1] and return the history.

    A ``validation_fraction`` of the images (seeded permutation) is held out for early stopping;
    binarized models see it with one fixed binarization so that epochs compare fairly. Progress
    goes to stderr: ``verbose`` 0 shows none, 1 a progress bar through each epoch and a line
    per epoch (:class:`EpochProgressBar`), 2 the lines only (:class:`EpochLines`).

    An interrupt (Ctrl-C, ``KeyboardInterrupt``) once an epoch has finished stops training as
    early stopping would: the best epoch's weights are kept and ``stopped_by`` says
    ``"interrupted"``. Before the first epoch finishes, it propagates. A Ctrl-C is raised at the
    next step or epoch boundary (:class:`DeferredCtrlC`).

    Returns
    -------
    dict
        Per-epoch lists (``loss``, ``elbo``, ``reconstruction``, ``kl`` and their ``val_``
        versions, ``seconds``), plus ``best_epoch`` (0-based), ``stopped_by`` (``"epoch limit"``,
        ``"early stopping"``, ``"time limit"``, ``"interrupted"`` or ``"diverged"``),
        ``epochs_run``, and ``train_images`` and ``validation_images`` (the images trained on
        and those held out).

    Raises
    ------
    TrainingDiverged
        If the first epoch's loss or validation ELBO is NaN or infinite: no weights are worth
        keeping.
    """
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = int(round(validation_fraction * len(images))) if validation_fraction else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    if validation_fraction and not n_val:
        too_few = "1 image is" if len(images) == 1 else f"{len(images):,} images are"
        log.warning("%s too few to hold out %g%% of them for validation: no early stopping, the last "
                    "epoch's weights are kept", too_few, 100 * validation_fraction)
    train_data = make_dataset(images[train_idx], None if labels is None else labels[train_idx], batch_size,
                              shuffle=True, seed=seed)
    val_data = None
    if n_val:
        val_images = fixed_binarization(images[val_idx], model.target_binarization, seed)
        val_data = make_dataset(val_images, None if labels is None else labels[val_idx], 1024, shuffle=False, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)
    stopper = BestOnValidationElbo(patience, max_seconds, start_epoch=max(warmup_epochs - 1, 0))
    record = _EpochRecord()
    if verbose == 1:
        shown = [EpochProgressBar(epochs, steps=math.ceil(len(train_idx) / batch_size), stopper=stopper)]
    else:
        shown = [EpochLines(epochs, stopper)] if verbose else []
    ctrl_c = DeferredCtrlC()
    interrupted = None  # where, if it was
    try:
        with ctrl_c.installed(), retracing_warnings_dropped():
            model.fit(train_data, validation_data=val_data, epochs=epochs, verbose=0, shuffle=False,
                      callbacks=[ctrl_c, KLWarmup(model.beta, warmup_epochs), stopper, record, *shown, *callbacks])
        if ctrl_c.requested:  # pressed after the last boundary: training ended anyway, but the user asked to stop
            interrupted = f"after epoch {len(record.seconds)}"
    except KeyboardInterrupt:
        if not record.seconds:  # not one epoch finished: nothing worth keeping
            raise
        interrupted = f"in epoch {len(record.seconds) + 1}"
    finally:  # Keras calls no callback when fit is interrupted: take a bar down, or the cursor stays hidden
        for shower in shown:
            shower.close()
    if interrupted:
        stopper.interrupted()
        log.warning("interrupted %s: training stopped there, with the weights of epoch %d", interrupted,
                    stopper.best_epoch + 1)
    if stopper.diverged_in is not None:
        _report_divergence(stopper, record, learning_rate, model)
    result = dict(record.history)
    result["seconds"] = record.seconds
    result["best_epoch"] = stopper.best_epoch  # the last epoch when nothing was validated
    result["stopped_by"] = stopper.stop_reason
    result["epochs_run"] = len(record.seconds)
    result["train_images"], result["validation_images"] = len(train_idx), n_val
    if result["epochs_run"] < warmup_epochs:
        log.warning("the KL warm-up did not finish (%d of %d epochs): the KL weight reached %.3g, not beta = %g; "
                    "the last epoch's weights are kept", result["epochs_run"], warmup_epochs,
                    model.beta * result["epochs_run"] / warmup_epochs, model.beta)
    model.kl_weight.assign(model.beta)
    return result


def _report_divergence(stopper: BestOnValidationElbo, record: "_EpochRecord", learning_rate: float, model) -> None:
    """Warn that training stopped at a non-finite epoch, or raise :class:`TrainingDiverged`
    when no epoch before it finished with finite numbers, so that no NaN weights are kept."""
    epoch = stopper.diverged_in
    numbers = ", ".join(f"{name} {record.history[name][epoch]:g}" for name in ("loss", "val_elbo")
                        if name in record.history)
    if stopper.best_epoch < 0:
        raise TrainingDiverged(f"training diverged in epoch {epoch + 1} ({numbers}), with no earlier epoch to keep: "
                               f"try a lower learning rate than {learning_rate:g}{_settings_that_overflow(model)}")
    log.warning("training diverged in epoch %d (%s): stopped there, with the weights of epoch %d", epoch + 1,
                numbers, stopper.best_epoch + 1)


def _settings_that_overflow(model) -> str:
    """', or less dropout than 0.99, ...': the model's settings that can overflow float32 at any
    learning rate, each where it is set beyond its default."""
    # Dropout scales the units it keeps by 1 / (1 - dropout), 100 for 0.99, layer after layer; beta
    # scales the KL term and 1 / variance the squared errors, and Adam squares their gradients.
    advice = []
    if model.dropout:
        advice.append(f"less dropout than {model.dropout:g}")
    if model.beta > 1:
        advice.append(f"a smaller beta than {model.beta:g}")
    if model.gaussian_variance is not None and model.gaussian_variance < 1:
        advice.append(f"a larger Gaussian variance than {model.gaussian_variance:g}")
    return "".join(f", or {item}" for item in advice)


class _EpochRecord(keras.callbacks.Callback):
    """Each finished epoch's logs and its time since training began. Unlike the History that
    ``fit`` returns, it is still there when ``fit`` is interrupted."""

    def on_train_begin(self, logs=None):
        self.history, self.seconds, self.started = {}, [], time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        self.seconds.append(round(time.perf_counter() - self.started, 3))


def _batches(n: int, batch_size: int):
    return (slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size))


def active_units(model, images, labels=None, *, threshold: float = 0.01, batch_size: int = 1024) -> int:
    """Latent dimensions whose posterior mean varies across images: Cov_x(E_q[z_j]) > threshold
    (Burda et al. 2016)."""
    means = np.concatenate([
        ops.convert_to_numpy(model.encode(images[s], None if labels is None else labels[s])[0])
        for s in _batches(len(images), batch_size)
    ])
    return int((means.var(axis=0) > threshold).sum())


def _noise(seed: int, purpose: int) -> np.random.Generator:
    # The pair keeps the ELBO's, the IWAE bound's and the binarization's draws independent.
    return np.random.default_rng([seed, purpose])


def elbo_per_image(model, images, labels=None, *, seed: int = 0, batch_size: int = 1024):
    """The ELBO's reconstruction term log p(x|z) and KL per image, in nats: one z per image,
    drawn with ``seed``, on one fixed binarization of ``images`` (float32 in [0, 1]); the same
    seed gives the same numbers.

    Returns
    -------
    reconstruction, kl : ndarray of shape (n_images,)
    """
    images = fixed_binarization(np.asarray(images, dtype=np.float32), model.target_binarization, seed)
    return _elbo_terms_of_prepared(model, images, labels, seed=seed, batch_size=batch_size)


def _elbo_terms_of_prepared(model, images, labels, *, seed, batch_size):
    """:func:`elbo_per_image` on images already given their fixed binarization."""
    rng = _noise(seed, 1)
    reconstruction, kl = [], []
    for s in _batches(len(images), batch_size):
        eps = rng.standard_normal((s.stop - s.start, model.latent_dim), dtype=np.float32)
        rec, k = model.elbo_terms(images[s], None if labels is None else labels[s], eps=eps)
        reconstruction.append(ops.convert_to_numpy(rec))
        kl.append(ops.convert_to_numpy(k))
    return np.concatenate(reconstruction), np.concatenate(kl)


#: Latent samples decoded per call by :func:`iwae_bound`: 8,192 28x28 images through the conv
#: decoder took 2.4 GB; a larger k is decoded in slices (k = 512 took 21 GB in one call).
IWAE_SAMPLES_PER_CALL = 8192


def iwae_bound(model, images, labels=None, *, k: int = 64, seed: int = 0, batch_size: int = 128,
               samples_per_call: int = IWAE_SAMPLES_PER_CALL) -> np.ndarray:
    """Importance-weighted lower bound on log p(x) per image (Burda et al. 2016), k samples.

    ``log (1/k) sum_i p(x, z_i) / q(z_i | x)`` with z_i ~ q(z|x); k = 1 is the ELBO, and the
    bound tightens as k grows. A batch's samples are decoded at most ``samples_per_call`` at a
    time, so memory does not grow with k (the literature's k = 5,000 included); ``seed`` draws
    them, and the same seed gives the same samples however they are sliced.
    """
    rng = _noise(seed, 2)
    out = []
    for s in _batches(len(images), batch_size):
        x = images[s]
        y = None if labels is None else labels[s]
        mean, log_var = model.encode(x, y)
        targets = model.targets(ops.convert_to_tensor(x))
        per_slice = max(1, samples_per_call // len(x))
        log_sums = [_log_sum_of_weights(model, mean, log_var, targets, y, rng, s_k.stop - s_k.start)
                    for s_k in _batches(k, per_slice)]
        out.append(ops.convert_to_numpy(ops.logsumexp(ops.stack(log_sums), axis=0)) - math.log(k))
    return np.concatenate(out)


def _log_sum_of_weights(model, mean, log_var, targets, labels, rng, k):
    """``log sum_i p(x, z_i) / q(z_i | x)`` per image over ``k`` fresh samples z_i ~ q(z|x),
    decoded in one call."""
    n = ops.shape(mean)[0]
    eps = rng.standard_normal((k, n, model.latent_dim), dtype=np.float32)
    z = mean[None] + ops.exp(0.5 * log_var)[None] * eps  # (k, n, L)
    flat_z = ops.reshape(z, (k * n, model.latent_dim))
    flat_y = None if labels is None else ops.tile(ops.convert_to_tensor(labels), (k,))
    decoded = model.decode(flat_z, flat_y)
    log_px = ops.reshape(model.log_likelihood(ops.tile(targets, (k, 1, 1)), decoded), (k, n))
    log_pz = gaussian_log_density(z, 0.0, 0.0)  # the prior N(0, I)
    log_qz = gaussian_log_density(z, mean[None], log_var[None])
    return ops.logsumexp(log_px + log_pz - log_qz, axis=0)


def evaluate(model, images, labels=None, *, iwae_k: int = 64, seed: int = 0, batch_size: int = 1024) -> dict:
    """Test-set numbers, in nats per image: ELBO, its reconstruction term and KL, the IWAE bound
    with ``iwae_k`` samples, and the number of active latent units.

    Binarized models are scored on one fixed, seeded binarization of ``images``, and every
    sample is drawn with ``seed``: the same seed gives the same numbers.
    """
    images = fixed_binarization(np.asarray(images, dtype=np.float32), model.target_binarization, seed)
    reconstruction, kl = _elbo_terms_of_prepared(model, images, labels, seed=seed, batch_size=batch_size)
    result = {
        "elbo": float(np.mean(reconstruction - kl)),
        "reconstruction": float(np.mean(reconstruction)),
        "kl": float(np.mean(kl)),
        "active_units": active_units(model, images, labels),
        "latent_dim": model.latent_dim,
        "n_images": len(images),
    }
    if iwae_k:
        result["iwae_bound"] = float(np.mean(iwae_bound(model, images, labels, k=iwae_k, seed=seed)))
        result["iwae_k"] = iwae_k
    return result


class EpochSamples(keras.callbacks.Callback):
    """Decode one fixed set of latent vectors after every epoch and keep the grid (for the GIF):
    64 prior draws, or for a conditional VAE 10 draws per class, one row per class. The classes
    are the model's own one-hot positions, read when training begins.

    Parameters
    ----------
    latent_dim : int
    seed : int, default=0
        Seeds the latent vectors.
    """

    def __init__(self, latent_dim: int, seed: int = 0):
        super().__init__()
        self.latent_dim, self.seed = latent_dim, seed
        self.frames = []

    def on_train_begin(self, logs=None):
        rng = np.random.default_rng(self.seed)
        n_classes = self.model.n_classes
        if n_classes:
            z = rng.standard_normal((10, self.latent_dim)).astype(np.float32)
            self.z, self.labels, self.n_cols = np.tile(z, (n_classes, 1)), np.repeat(np.arange(n_classes, dtype=np.int32), 10), 10
        else:
            self.z, self.labels, self.n_cols = rng.standard_normal((64, self.latent_dim)).astype(np.float32), None, 8

    def on_epoch_end(self, epoch, logs=None):
        from ..report import tile

        if diverged(logs or {}):  # the last epoch: training stops, and its weights are not kept
            return
        images = ops.convert_to_numpy(self.model.mean_image(self.model.decode(self.z, self.labels)))
        self.frames.append(tile(images, self.n_cols))
