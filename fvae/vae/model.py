r"""The VAE as a Keras 3 model.

Encoder :math:`q(z|x) = N(\mu(x), \mathrm{diag}\,\sigma^2(x))` with a log-variance head, prior
:math:`N(0, I)`, reparameterized sample :math:`z = \mu + \sigma \epsilon`. Per image, in nats:

.. math::

    \mathrm{ELBO}(x) = \log p(x|z) - \mathrm{KL}(q(z|x)\,\|\,p(z)), \qquad
    \mathrm{KL} = \tfrac12 \sum_j \left(\mu_j^2 + \sigma_j^2 - 1 - \log \sigma_j^2\right)

Likelihoods: ``bernoulli`` (logits; the targets are the binarized or the grey pixels) and
``gaussian`` (sigmoid mean, fixed or learned variance):
:math:`\log p(x|z) = -\tfrac12 \sum_i [(x_i - m_i)^2/s^2 + \log 2\pi s^2]`. A learned
variance is the σ-VAE's calibrated decoder (Rybkin et al. 2021): one variance shared by all
pixels, set in each training step to its maximum-likelihood value, the batch's mean squared
error, and kept for evaluation as BatchNorm keeps its statistics. Learned by Adam instead, it
needs thousands of steps to fall from 1 to the data's ~0.01, and while it is large the KL term
wins: on 8x8 digits every latent unit collapsed.
Training minimizes :math:`-(\log p(x|z) - \beta_t \mathrm{KL})`, where :math:`\beta_t` ramps
linearly from 0 to ``beta`` over the warm-up epochs.

Architectures: ``mlp`` (Dense hidden layers) and ``conv``, the TensorFlow tutorial's
(Conv2D 32 and 64 with stride 2, Dense; decoder Dense -> (h/4, w/4, 32) -> Conv2DTranspose 64
and 32 with stride 2 -> a 3x3 Conv2DTranspose to one channel), cropped to any image size.
A conditional VAE feeds the one-hot label to both the encoder and the decoder.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers, ops

ARCHITECTURES = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")
#: Floor of a learned Gaussian variance: the variance of 8-bit quantization noise, (1/255)^2 / 12;
#: finer is not in the data, and the likelihood of a perfect fit would grow without bound.
MIN_OUTPUT_VARIANCE = (1 / 255) ** 2 / 12
BINARIZATIONS = ("none", "threshold", "dynamic")
LOG_2PI = math.log(2 * math.pi)


def binarize(images, mode: str, seed_generator=None):
    """Binarize pixels in [0, 1]: ``threshold`` at 0.5, or ``dynamic`` (Bernoulli draw per pixel)."""
    if mode == "threshold":
        return ops.cast(images > 0.5, "float32")
    if mode == "dynamic":
        noise = keras.random.uniform(ops.shape(images), seed=seed_generator)
        return ops.cast(noise < images, "float32")
    return images


def kl_divergence(mean, log_var):
    """Closed-form KL(N(mean, exp(log_var)) || N(0, I)) per row, in nats."""
    return 0.5 * ops.sum(ops.square(mean) + ops.exp(log_var) - 1.0 - log_var, axis=-1)


def gaussian_log_density(z, mean, log_var):
    """log N(z; mean, exp(log_var)) summed over the last axis."""
    return -0.5 * ops.sum(LOG_2PI + log_var + ops.square(z - mean) * ops.exp(-log_var), axis=-1)


def _dropped(x, dropout):
    """``x`` through a Dropout layer when ``dropout`` > 0 (none at all otherwise, so a model
    without dropout has exactly the layers it always had)."""
    return layers.Dropout(dropout)(x) if dropout else x


def _dense_stack(x, sizes, dropout):
    for units in sizes:
        x = _dropped(layers.Dense(units, activation="relu")(x), dropout)
    return x


def _label_channels(labels, h, w):
    """One-hot labels (n, n_classes) as constant (n, h, w, n_classes) feature maps."""
    return layers.UpSampling2D((h, w))(layers.Reshape((1, 1, labels.shape[-1]))(labels))


def _build_encoder(image_shape, arch, hidden, latent_dim, n_classes, dropout, *, labels_as_channels):
    h, w = image_shape
    images = keras.Input(shape=(h, w), name="images")
    inputs = [images]
    if n_classes:
        labels = keras.Input(shape=(n_classes,), name="labels")
        inputs.append(labels)
    if arch == "conv":
        x = layers.Reshape((h, w, 1))(images)
        if n_classes and labels_as_channels:
            x = layers.Concatenate()([x, _label_channels(labels, h, w)])
        padding = "valid" if min(h, w) >= 7 else "same"  # the tutorial's valid padding where it fits
        x = _dropped(layers.Conv2D(32, 3, strides=2, padding=padding, activation="relu")(x), dropout)
        x = _dropped(layers.Conv2D(64, 3, strides=2, padding=padding, activation="relu")(x), dropout)
        x = layers.Flatten()(x)
    else:
        x = layers.Flatten()(images)
    if n_classes:
        x = layers.Concatenate()([x, labels])
    if arch == "mlp":
        x = _dense_stack(x, hidden, dropout)
    mean = layers.Dense(latent_dim, name="mean")(x)
    log_var = layers.Dense(latent_dim, name="log_var")(x)
    return keras.Model(inputs, [mean, log_var], name="encoder")


def _build_decoder(image_shape, arch, hidden, latent_dim, n_classes, dropout):
    h, w = image_shape
    z = keras.Input(shape=(latent_dim,), name="z")
    inputs = [z]
    x = z
    if n_classes:
        labels = keras.Input(shape=(n_classes,), name="labels")
        inputs.append(labels)
        x = layers.Concatenate()([z, labels])
    if arch == "conv":
        base_h, base_w = -(-h // 4), -(-w // 4)
        x = _dropped(layers.Dense(base_h * base_w * 32, activation="relu")(x), dropout)
        x = layers.Reshape((base_h, base_w, 32))(x)
        x = _dropped(layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu")(x), dropout)
        x = _dropped(layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(x), dropout)
        x = layers.Conv2DTranspose(1, 3, strides=1, padding="same")(x)
        if (4 * base_h, 4 * base_w) != (h, w):
            x = layers.Cropping2D(((0, 4 * base_h - h), (0, 4 * base_w - w)))(x)
        logits = layers.Reshape((h, w))(x)
    else:
        x = _dense_stack(x, reversed(hidden), dropout)
        logits = layers.Reshape((h, w))(layers.Dense(h * w)(x))
    return keras.Model(inputs, logits, name="decoder")


@keras.saving.register_keras_serializable(package="fvae")
class VAE(keras.Model):
    """Variational autoencoder for (h, w) images with pixels in [0, 1].

    Parameters
    ----------
    image_shape : tuple of (h, w)
    latent_dim : int, default=32
    arch : {"mlp", "conv"}, default="mlp"
    hidden : tuple of int, default=(512, 256)
        Hidden layer sizes of the MLP encoder (the decoder mirrors them).
    likelihood : {"bernoulli", "gaussian"}, default="bernoulli"
    binarization : {"none", "threshold", "dynamic"}, default="threshold"
        How Bernoulli targets are made from grey pixels: kept grey (``none``, cross-entropy),
        thresholded at 0.5, or drawn afresh for every batch (``dynamic``).
    gaussian_variance : float or None, default=None
        Fixed output variance of the Gaussian likelihood; ``None`` learns one, shared by all
        pixels (set in each training step to the batch's mean squared error).
    beta : float, default=1.0
        Weight of the KL term in the training loss.
    dropout : float, default=0.0
        Dropout after each hidden layer: the MLP's Dense layers; in the conv VAE, after every
        convolution but the output one and after the decoder's Dense layer.
    n_classes : int, default=0
        Above 0, a conditional VAE: one-hot labels go into the encoder and the decoder.
    labels_as_channels : bool, default=True
        Conditional conv VAE: the one-hot label also enters the encoder as ``n_classes`` constant
        channels beside the image, so its convolutions can take the class out of the code, not
        only its last linear layer. Otherwise the codes keep the class, and prior samples follow
        the label they are drawn with only about half the time (mnist-5k: 0.52 against 0.79).
        Files saved before this option load with it off.
    seed : int, default=0
        Seeds the sampling noise.
    """

    def __init__(self, image_shape, latent_dim=32, arch="mlp", hidden=(512, 256), likelihood="bernoulli",
                 binarization="threshold", gaussian_variance=None, beta=1.0, dropout=0.0, n_classes=0,
                 labels_as_channels=True, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.latent_dim = int(latent_dim)
        self.arch = arch
        self.hidden = tuple(int(u) for u in hidden)
        self.likelihood = likelihood
        self.binarization = binarization
        self.gaussian_variance = gaussian_variance
        self.beta = float(beta)
        self.dropout = float(dropout)
        self.n_classes = int(n_classes)
        self.labels_as_channels = bool(labels_as_channels)
        self.seed = int(seed)
        args = (self.image_shape, arch, self.hidden, self.latent_dim, self.n_classes, self.dropout)
        self.encoder = _build_encoder(*args, labels_as_channels=self.labels_as_channels)
        self.decoder = _build_decoder(*args)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.output_log_var = None
        if likelihood == "gaussian":
            # One value per pixel: files of earlier versions learned each pixel's variance.
            self.output_log_var = self.add_weight(
                shape=(self.image_shape[0] * self.image_shape[1],), trainable=False, name="output_log_var",
                initializer=keras.initializers.Constant(0.0 if gaussian_variance is None else math.log(gaussian_variance)),
            )
        # KL weight of the loss, stepped by the warm-up callback; not the ELBO's.
        self.kl_weight = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.beta),
                                         trainable=False, name="kl_weight")
        self.built = True  # every weight exists now: saving and loading need no sample call
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "elbo", "reconstruction", "kl")}

    # -- pieces -------------------------------------------------------------------------------

    def _one_hot(self, labels):
        return ops.one_hot(ops.cast(labels, "int32"), self.n_classes)

    def _inputs(self, images, one_hot):
        # Keras refuses a list mixing NumPy arrays and tensors.
        images = ops.convert_to_tensor(images, "float32")
        return [images, one_hot] if self.n_classes else [images]

    def encode(self, images, labels=None, training=False):
        """Posterior mean and log-variance, each (n, latent_dim)."""
        one_hot = self._one_hot(labels) if self.n_classes else None
        return self.encoder(self._inputs(images, one_hot), training=training)

    def decode(self, z, labels=None, training=False):
        """Decoder output before the link: logits (bernoulli) or pre-sigmoid means (gaussian)."""
        one_hot = self._one_hot(labels) if self.n_classes else None
        return self.decoder(self._inputs(z, one_hot), training=training)

    def mean_image(self, decoded):
        """Pixel means in [0, 1] from the decoder output."""
        return ops.sigmoid(decoded)

    def log_likelihood(self, targets, decoded, fit_variance=False):
        """log p(x|z) per image, in nats.

        With ``fit_variance`` (a training step), a learned Gaussian variance is first set to its
        maximum-likelihood value for this batch, the mean squared error (at least
        ``MIN_OUTPUT_VARIANCE``), and the likelihood is taken at it.
        """
        n = ops.shape(targets)[0]
        targets = ops.reshape(targets, (n, -1))
        decoded = ops.reshape(decoded, (n, -1))
        if self.likelihood == "bernoulli":
            # -BCE with logits, stable form: t*l - softplus(l)
            return ops.sum(targets * decoded - ops.softplus(decoded), axis=-1)
        squared = ops.square(targets - ops.sigmoid(decoded))
        log_var = self.output_log_var
        if fit_variance and self.gaussian_variance is None:
            # At the optimum the likelihood's gradient in the variance is 0, so stopping it there
            # leaves the other gradients as they are.
            mse = ops.maximum(ops.stop_gradient(ops.mean(squared)), MIN_OUTPUT_VARIANCE)
            log_var = ops.full(ops.shape(self.output_log_var), ops.log(mse))
            self.output_log_var.assign(log_var)
        return -0.5 * ops.sum(LOG_2PI + log_var + squared * ops.exp(-log_var), axis=-1)

    @property
    def target_binarization(self) -> str:
        """The binarization the likelihood's targets get: ``binarization`` for a Bernoulli VAE,
        ``"none"`` for a Gaussian one."""
        return self.binarization if self.likelihood == "bernoulli" else "none"

    def targets(self, images):
        """What the likelihood scores: the pixels, binarized per :attr:`target_binarization`."""
        return binarize(images, self.target_binarization, self.seed_generator)

    def elbo_terms(self, images, labels=None, eps=None, training=False):
        """Per-image reconstruction term log p(x|z) and KL, with z = mu + sigma * eps.

        Parameters
        ----------
        images : tensor of shape (n, h, w), float32 in [0, 1]
            Already-binary images are left as they are by every binarization.
        labels : tensor of shape (n,), int, only for a conditional VAE
        eps : tensor of shape (n, latent_dim), default=None
            The standard normal noise; drawn from the model's seed generator when None.
        training : bool, default=False
            A training step: dropout is on, and a learned Gaussian variance is fitted to the
            batch (:meth:`log_likelihood`).
        """
        mean, log_var = self.encode(images, labels, training=training)
        if eps is None:
            eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        z = mean + ops.exp(0.5 * log_var) * eps
        decoded = self.decode(z, labels, training=training)
        reconstruction = self.log_likelihood(self.targets(images), decoded, fit_variance=training)
        return reconstruction, kl_divergence(mean, log_var)

    # -- Keras protocol -----------------------------------------------------------------------

    def _unpack(self, data):
        if isinstance(data, (tuple, list)):
            images = data[0]
            labels = data[1] if len(data) > 1 else None
        else:
            images, labels = data, None
        if self.n_classes and labels is None:
            raise ValueError("a conditional VAE needs labels with its images")
        return images, labels

    def call(self, inputs, training=False):
        """Reconstruction (pixel means) from the posterior mean; ``inputs`` is images or (images, labels)."""
        images, labels = self._unpack(inputs)
        mean, _ = self.encode(images, labels, training=training)
        return self.mean_image(self.decode(mean, labels, training=training))

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _loss(self, data, training):
        """Training loss -(log p(x|z) - kl_weight * KL), with both terms per image."""
        images, labels = self._unpack(data)
        reconstruction, kl = self.elbo_terms(images, labels, training=training)
        return -ops.mean(reconstruction - self.kl_weight * kl), reconstruction, kl

    def _update_trackers(self, loss, reconstruction, kl):
        self.trackers["loss"].update_state(loss)
        self.trackers["elbo"].update_state(ops.mean(reconstruction - kl))
        self.trackers["reconstruction"].update_state(ops.mean(reconstruction))
        self.trackers["kl"].update_state(ops.mean(kl))
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, reconstruction, kl = self._loss(data, training=True)
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        return self._update_trackers(loss, reconstruction, kl)

    def test_step(self, data):
        loss, reconstruction, kl = self._loss(data, training=False)
        return self._update_trackers(loss, reconstruction, kl)

    def get_config(self):
        return {
            "name": self.name,
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "arch": self.arch,
            "hidden": list(self.hidden),
            "likelihood": self.likelihood,
            "binarization": self.binarization,
            "gaussian_variance": self.gaussian_variance,
            "beta": self.beta,
            "dropout": self.dropout,
            "n_classes": self.n_classes,
            "labels_as_channels": self.labels_as_channels,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        # Files saved before the option have no key, and an encoder built without the channels.
        return cls(**{"labels_as_channels": False, **config})
