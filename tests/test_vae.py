"""The VAE: its ELBO against a NumPy hand computation, the KL, the IWAE bound, training, the
scikit-learn transformer, persistence, and the CLI end to end."""

import io
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
from sklearn.base import clone

pytest.importorskip("tensorflow", reason="the VAE needs TensorFlow, a core dependency of fvae")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from conftest import fvae_cli, write_named_digits  # noqa: E402
import fvae  # noqa: E402
from fvae import InputError, ModelFileError  # noqa: E402
from fvae.persist import load_model, save_model  # noqa: E402
from fvae.vae import VAEEncoder  # noqa: E402
from fvae.vae.model import MIN_OUTPUT_VARIANCE, VAE, kl_divergence  # noqa: E402
from fvae.vae.train import EpochSamples, iwae_bound  # noqa: E402

TINY = dict(arch="mlp", hidden=(64,), latent_dim=4, epochs=4, batch_size=64, random_state=0)
#: A conditional VAE trained one epoch: for what it does with its classes, not how well it draws.
ONE_EPOCH_CONDITIONAL = dict(arch="mlp", hidden=(16,), latent_dim=2, epochs=1, conditional=True, random_state=0)


@pytest.fixture(scope="module")
def trained(digits):
    """One small MLP VAE on digits, shared by the tests that only read it."""
    return VAEEncoder(**{**TINY, "epochs": 8}).fit(digits.train.images)


def _set_weights(model, seed):
    rng = np.random.default_rng(seed)
    for w in model.trainable_weights:
        w.assign(rng.normal(scale=0.5, size=w.shape).astype(np.float32))


def _dense(model, name=None):
    return [layer for layer in model.layers if layer.__class__.__name__ == "Dense" and (name is None or layer.name == name)]


def _numpy_elbo_terms(model, x, eps):
    """The ELBO's terms written out from the formulas, with the model's weights."""
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    hidden, = [layer for layer in _dense(model.encoder) if layer.name not in ("mean", "log_var")]
    (mean_layer,), (log_var_layer,) = _dense(model.encoder, "mean"), _dense(model.encoder, "log_var")
    flat = x.reshape(len(x), -1).astype(np.float64)
    h = relu(flat @ hidden.kernel.numpy() + hidden.bias.numpy())
    mu = h @ mean_layer.kernel.numpy() + mean_layer.bias.numpy()
    log_var = h @ log_var_layer.kernel.numpy() + log_var_layer.bias.numpy()
    z = mu + np.exp(0.5 * log_var) * eps
    dec_hidden, dec_out = _dense(model.decoder)
    logits = relu(z @ dec_hidden.kernel.numpy() + dec_hidden.bias.numpy()) @ dec_out.kernel.numpy() + dec_out.bias.numpy()
    if model.likelihood == "bernoulli":
        p = 1 / (1 + np.exp(-logits))
        reconstruction = np.sum(flat * np.log(p) + (1 - flat) * np.log(1 - p), axis=1)
    else:
        var = model.gaussian_variance
        mean = 1 / (1 + np.exp(-logits))
        reconstruction = -0.5 * np.sum(np.log(2 * np.pi * var) + (flat - mean) ** 2 / var, axis=1)
    kl = 0.5 * np.sum(mu**2 + np.exp(log_var) - 1 - log_var, axis=1)
    return reconstruction, kl


@pytest.mark.parametrize("likelihood,variance", [("bernoulli", None), ("gaussian", 0.3)])
def test_elbo_terms_equal_a_numpy_hand_computation(likelihood, variance):
    model = VAE((3, 2), latent_dim=2, arch="mlp", hidden=(5,), likelihood=likelihood, binarization="none",
                gaussian_variance=variance)
    _set_weights(model, seed=1)
    rng = np.random.default_rng(2)
    x = rng.random((7, 3, 2)).astype(np.float32)
    eps = rng.standard_normal((7, 2)).astype(np.float32)
    reconstruction, kl = (np.asarray(t) for t in model.elbo_terms(x, eps=eps))
    expected_rec, expected_kl = _numpy_elbo_terms(model, x, eps.astype(np.float64))
    np.testing.assert_allclose(reconstruction, expected_rec, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(kl, expected_kl, rtol=1e-5, atol=1e-5)
    assert np.all(kl > 0)


def test_a_learned_gaussian_variance_is_set_to_the_batch_optimum_in_training_steps():
    model = VAE((3, 2), latent_dim=2, arch="mlp", hidden=(5,), likelihood="gaussian", binarization="none")
    rng = np.random.default_rng(4)
    targets = rng.random((7, 6)).astype(np.float32)
    decoded = rng.normal(size=(7, 6)).astype(np.float32)
    squared = (targets.astype(np.float64) - 1 / (1 + np.exp(-decoded.astype(np.float64)))) ** 2

    def numpy_log_likelihood(log_var):
        return -0.5 * np.sum(np.log(2 * np.pi) + log_var + squared / np.exp(log_var), axis=1)

    start = np.asarray(model.log_likelihood(targets, decoded))  # evaluation: the stored variance (1)
    np.testing.assert_allclose(start, numpy_log_likelihood(0.0), rtol=1e-5)
    np.testing.assert_array_equal(model.output_log_var.numpy(), 0.0)
    fitted = np.asarray(model.log_likelihood(targets, decoded, fit_variance=True))
    optimum = np.log(squared.mean())
    np.testing.assert_allclose(model.output_log_var.numpy(), optimum, rtol=1e-5)  # stored, one value
    np.testing.assert_allclose(fitted, numpy_log_likelihood(optimum), rtol=1e-5)
    for step in (-0.1, 0.1):  # it is the maximum of the batch's likelihood
        assert numpy_log_likelihood(optimum + step).sum() < fitted.sum()
    # a perfect fit stops at the variance of 8-bit quantization noise
    model.log_likelihood(1 / (1 + np.exp(-decoded)), decoded, fit_variance=True)
    np.testing.assert_allclose(model.output_log_var.numpy(), np.log(MIN_OUTPUT_VARIANCE), rtol=1e-5)
    assert MIN_OUTPUT_VARIANCE == pytest.approx((1 / 255) ** 2 / 12)


def test_a_learned_variance_gaussian_vae_on_digits_keeps_its_latent_units(digits):
    # Learned by Adam from 1, the variance stayed large and the KL term won: 0 of 32 units active
    # after 10 epochs (and after 30).
    vae = VAEEncoder(likelihood="gaussian", epochs=10, random_state=0).fit(digits.train.images)
    assert vae.evaluate(digits.test.images, iwae_k=0)["active_units"] >= 8


def test_closed_form_kl_equals_monte_carlo():
    rng = np.random.default_rng(3)
    mean = rng.normal(size=(1, 3)).astype(np.float32)
    log_var = rng.normal(scale=0.5, size=(1, 3)).astype(np.float32)
    z = mean + np.exp(0.5 * log_var) * rng.standard_normal((400_000, 3))
    log_q = -0.5 * np.sum(np.log(2 * np.pi) + log_var + (z - mean) ** 2 / np.exp(log_var), axis=1)
    log_p = -0.5 * np.sum(np.log(2 * np.pi) + z**2, axis=1)
    monte_carlo = np.mean(log_q - log_p)
    closed = float(np.asarray(kl_divergence(mean, log_var))[0])
    standard_error = np.std(log_q - log_p) / math.sqrt(len(z))
    assert abs(closed - monte_carlo) < 4 * standard_error + 1e-6


def test_the_keras_model_fits_with_validation_data_evaluates_predicts_and_reloads_through_keras(digits, tmp_path):
    images = digits.train.images.astype(np.float32) / 255
    train, held_out = images[:1000], images[1000:]
    model = VAE((8, 8), latent_dim=4, arch="conv", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(train, epochs=3, batch_size=100, validation_data=(held_out,), verbose=0).history
    terms = ("loss", "elbo", "reconstruction", "kl")
    assert set(history) == {f"{prefix}{name}" for prefix in ("", "val_") for name in terms}
    assert history["val_loss"][-1] < history["val_loss"][0] - 1.0
    np.testing.assert_allclose(history["val_loss"], -np.asarray(history["val_elbo"]), rtol=1e-5)  # beta 1
    scores = model.evaluate(held_out, batch_size=100, return_dict=True, verbose=0)
    assert scores["elbo"] == pytest.approx(scores["reconstruction"] - scores["kl"], rel=1e-5)
    assert scores["kl"] > 0
    reconstructions = model.predict(held_out[:5], verbose=0)  # call: the posterior mean, decoded
    assert reconstructions.shape == (5, 8, 8) and 0 <= reconstructions.min() and reconstructions.max() <= 1
    model.save(tmp_path / "vae.keras")
    reloaded = keras.saving.load_model(tmp_path / "vae.keras", safe_mode=True)  # registered: no custom_objects
    assert isinstance(reloaded, VAE) and reloaded.get_config() == model.get_config()
    np.testing.assert_array_equal(reloaded.predict(held_out[:5], verbose=0), reconstructions)

    conditional = VAE((8, 8), latent_dim=2, arch="mlp", hidden=(16,), n_classes=10, seed=0)
    conditional.compile(optimizer="adam")
    labels = digits.train.labels
    history = conditional.fit(train, labels[:1000], epochs=1, batch_size=100,
                              validation_data=(held_out, labels[1000:]), verbose=0).history
    assert np.isfinite(history["val_elbo"]).all()
    assert conditional.predict((held_out[:3], labels[1000:1003]), verbose=0).shape == (3, 8, 8)
    with pytest.raises(ValueError, match="a conditional VAE needs labels with its images"):
        conditional.evaluate(held_out, verbose=0)


def test_iwae_bound_is_above_the_elbo_and_grows_with_k(trained, digits):
    images = digits.test.images[:300].astype(np.float32) / 255
    from fvae.vae.train import fixed_binarization

    binary = fixed_binarization(images, "dynamic", seed=0)
    model = trained.model_
    rec, kl = model.elbo_terms(binary)
    elbo = float(np.mean(np.asarray(rec) - np.asarray(kl)))
    bounds = {k: float(np.mean(iwae_bound(model, binary, k=k))) for k in (1, 8, 64)}
    assert abs(bounds[1] - elbo) < 1.0  # k = 1 is the ELBO itself (up to sampling noise)
    assert elbo < bounds[8] < bounds[64]


def _iwae_reference(model, images, k, seed):
    """The IWAE bound of a thresholding Bernoulli VAE written out per image from its formula,
    log (1/k) sum_i p(x, z_i) / q(z_i|x), in float64, with the draws iwae_bound makes: eps of
    shape (k, n, L) from fvae's seeded stream. The encoder sees the grey pixels, the likelihood
    scores them thresholded at 0.5."""
    from scipy.special import logsumexp

    assert model.target_binarization == "threshold"
    eps = np.random.default_rng([seed, 2]).standard_normal((k, len(images), model.latent_dim), dtype=np.float32)
    mean, log_var = (np.asarray(a, dtype=np.float64) for a in model.encode(images))
    bounds = []
    for i, x in enumerate((images.reshape(len(images), -1) > 0.5).astype(np.float64)):
        z = mean[i] + np.exp(0.5 * log_var[i]) * eps[:, i]  # (k, L)
        logits = np.asarray(model.decode(z.astype(np.float32)), dtype=np.float64).reshape(k, -1)
        log_px = np.sum(x * logits - np.logaddexp(0, logits), axis=1)
        log_pz = np.sum(-0.5 * (np.log(2 * np.pi) + z**2), axis=1)
        log_qz = np.sum(-0.5 * (np.log(2 * np.pi) + log_var[i] + (z - mean[i]) ** 2 / np.exp(log_var[i])), axis=1)
        bounds.append(logsumexp(log_px + log_pz - log_qz) - np.log(k))
    return np.array(bounds)


def test_iwae_bound_equals_its_formula_however_its_samples_are_sliced(trained, digits):
    images = digits.test.images[:6].astype(np.float32) / 255
    model = trained.model_
    whole = iwae_bound(model, images, k=50, seed=3)  # all 300 samples in one call
    np.testing.assert_allclose(whole, _iwae_reference(model, images, k=50, seed=3), rtol=1e-5)
    # 1 and 7 samples of each image per call: 50 and 8 slices, the last one short; same draws
    for per_call in (6, 42):
        np.testing.assert_allclose(iwae_bound(model, images, k=50, seed=3, samples_per_call=per_call), whole, rtol=1e-6)


def test_short_training_lowers_the_validation_loss(trained):
    history = trained.history_
    assert len(history["val_loss"]) == 8
    assert history["val_loss"][-1] < history["val_loss"][0] - 1.0
    assert history["best_epoch"] == int(np.argmax(history["val_elbo"]))
    # The best epoch's weights are the ones kept.
    assert history["stopped_by"] == "epoch limit"


@pytest.mark.parametrize("n, too_few", [(4, "4 images are"), (1, "1 image is")])
def test_too_few_images_for_a_validation_split_say_there_is_no_early_stopping(digits, caplog, n, too_few):
    with caplog.at_level(logging.WARNING, logger="fvae"):
        vae = VAEEncoder(arch="mlp", hidden=(8,), latent_dim=2, epochs=2, random_state=0).fit(digits.train.images[:n])
    assert vae.history_["stopped_by"] == "epoch limit" and "val_elbo" not in vae.history_
    assert [r.getMessage() for r in caplog.records] == [
        f"{too_few} too few to hold out 10% of them for validation: no early stopping, the last epoch's weights "
        "are kept"]


def test_transform_is_deterministic_and_sklearn_shaped(trained, digits):
    codes = trained.transform(digits.test.images)
    assert codes.shape == (len(digits.test.images), 4) and codes.dtype == np.float32
    np.testing.assert_array_equal(codes, trained.transform(digits.test.images))
    flat = trained.transform(digits.test.images.reshape(len(digits.test.images), -1).astype(np.float32) / 255)
    np.testing.assert_allclose(flat, codes, atol=1e-5)
    assert trained.inverse_transform(codes[:5]).shape == (5, 8, 8)
    broken = codes[:5].copy()
    broken[2, 1] = np.nan  # it was decoded to an image of NaN
    with pytest.raises(InputError, match=r"^inverse_transform: codes contain NaN or infinite values$"):
        trained.inverse_transform(broken)
    assert trained.sample(6).shape == (6, 8, 8)
    with pytest.raises(InputError, match=r"^this VAE is not conditional, so it draws no chosen class "
                                         r"\(fit one with conditional=True, --conditional\)$"):
        trained.sample(6, label=3)
    for bad in (-1, 2.5):
        with pytest.raises(InputError, match=rf"^sample: n must be a whole number >= 0, got {bad}$"):
            trained.sample(bad)
    # before: "inverse_transform: codes ...", a method not called, and z of twice the width was taken
    for z in (np.zeros((3, 5)), np.zeros((3, 8))):
        with pytest.raises(InputError, match=rf"^sample: z must have shape \(n, 4\), got \(3, {z.shape[1]}\)$"):
            trained.sample(3, z=z)
    np.testing.assert_array_equal(trained.sample(5, z=codes[:5]), trained.inverse_transform(codes[:5]))
    # before: "must have shape (n, 4)", though the (n, 8) of transform with return_log_var is taken too
    with pytest.raises(InputError, match=r"^inverse_transform: codes must have shape \(n, 4\) or \(n, 8\) "
                                         r"\(means, then log-variances\), got \(3, 5\)$"):
        trained.inverse_transform(np.zeros((3, 5)))
    for method, argument in (("transform", digits.test.images[:3]), ("inverse_transform", codes[:3])):
        for bad in (0, 2.5):  # before: range() arg 3 must not be zero, and a TypeError for 2.5
            with pytest.raises(InputError, match=rf"^{method}: batch_size must be a whole number >= 1, got {bad}$"):
                getattr(trained, method)(argument, batch_size=bad)
    with pytest.raises(InputError, match=r"^evaluate: iwae_k must be a whole number >= 0 \(0: no IWAE bound\), got -3$"):
        trained.evaluate(digits.test.images[:10], iwae_k=-3)
    assert "iwae_bound" not in trained.evaluate(digits.test.images[:10], iwae_k=0)
    params = clone(trained).get_params()
    assert params["latent_dim"] == 4 and params["hidden"] == (64,)


def test_scores_are_seeded_elbos_and_select_a_model_in_a_grid_search(trained, digits):
    from sklearn.model_selection import GridSearchCV

    images = digits.test.images
    per_image = trained.score_samples(images)
    assert per_image.shape == (len(images),) and np.all(per_image < 0)
    np.testing.assert_array_equal(per_image, trained.score_samples(images))  # seeded: calls agree
    assert trained.score(images) == pytest.approx(per_image.mean(), rel=1e-6)
    numbers = trained.evaluate(images, iwae_k=8)
    assert numbers == trained.evaluate(images, iwae_k=8)  # every number seeded, IWAE bound included
    assert numbers["elbo"] == pytest.approx(trained.score(images), rel=1e-6)  # the same draws
    # one posterior sample per image: another seed moves the ELBO a little, not a lot
    assert numbers["elbo"] != trained.evaluate(images, iwae_k=0, seed=1)["elbo"]
    assert abs(numbers["elbo"] - trained.evaluate(images, iwae_k=0, seed=1)["elbo"]) < 1.0
    # score is what GridSearchCV maximizes when no scoring is given: the held-out ELBO
    # (one latent dimension explains digits ~2-4 nats worse than eight after 10 epochs, seeds 0-2)
    search = GridSearchCV(VAEEncoder(**{**TINY, "epochs": 10, "validation_fraction": 0.0}),
                          {"latent_dim": [1, 8]}, cv=2)
    search.fit(digits.train.images[:600])
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_params_["latent_dim"] == 8
    refit = search.best_estimator_.history_  # without a validation split: every epoch runs, the last is kept
    assert (refit["epochs_run"], refit["best_epoch"], refit["stopped_by"]) == (10, 9, "epoch limit")


def test_same_seed_same_weights(digits):
    a = VAEEncoder(**{**TINY, "epochs": 2}).fit(digits.train.images[:400])
    b = VAEEncoder(**{**TINY, "epochs": 2}).fit(digits.train.images[:400])
    for wa, wb in zip(a.model_.get_weights(), b.model_.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_fitting_vaes_one_after_another_shows_no_retracing_warning():
    """From the second fit in one process TensorFlow warned of "excessive retracing" to avoid: a
    false alarm, a new model's steps must be traced, shown to every user of a cross-validation."""
    script = ("import numpy as np; from fvae import VAEEncoder; x = np.random.default_rng(0).random((200, 8, 8))\n"
              "for seed in range(3): VAEEncoder(arch='mlp', hidden=(8,), latent_dim=2, epochs=2, "
              "random_state=seed).fit(x).transform(x)\nprint('fitted')")
    env = {k: v for k, v in os.environ.items() if k != "FVAE_TF_LOGS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert (done.returncode, done.stdout) == (0, "fitted\n"), done.stderr
    assert "retracing" not in done.stderr


def test_the_retracing_warning_is_dropped_only_within_fvaes_fits(caplog):
    from fvae.vae.train import retracing_warnings_dropped

    tf_log = logging.getLogger("tensorflow")
    retracing = "5 out of the last 6 calls to <function f> triggered tf.function retracing."
    with caplog.at_level(logging.WARNING, logger="tensorflow"), retracing_warnings_dropped():
        tf_log.warning(retracing)
        tf_log.warning("another warning")
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        tf_log.warning(retracing)  # the user's own functions, outside a fit
    assert [r.getMessage() for r in caplog.records if r.name == "tensorflow"] == ["another warning", retracing]


def test_save_load_round_trip_gives_identical_codes(trained, digits, tmp_path):
    checksum = trained.save(tmp_path / "vae.npz")
    loaded = fvae.load(tmp_path / "vae.npz")
    assert isinstance(loaded, VAEEncoder) and loaded.checksum_ == checksum
    np.testing.assert_array_equal(loaded.transform(digits.test.images), trained.transform(digits.test.images))
    with pytest.raises(ModelFileError, match="not a 'fisher' model"):
        fvae.load(tmp_path / "vae.npz", method="fisher")
    shown = clone(trained).set_params(verbose=2)
    shown.model_, shown.image_shape_ = trained.model_, trained.image_shape_  # the same fit, shown differently
    assert shown.save(tmp_path / "shown.npz") == checksum  # how training was shown is not part of the model
    # nor when it was saved: Keras stamps its archive with the time, which the file leaves out
    with zipfile.ZipFile(tmp_path / "vae.npz") as outer:
        keras_archive = zipfile.ZipFile(io.BytesIO(outer.read("model.keras")))
    assert {info.date_time for info in keras_archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert "date_saved" not in json.loads(keras_archive.read("metadata.json"))


def test_figures_show_every_class_of_a_class_sorted_test_split(trained, digits, tmp_path, monkeypatch):
    from fvae import report
    from fvae.data import to_unit_float

    order = np.argsort(digits.test.labels, kind="stable")
    images, labels = digits.test.images[order], digits.test.labels[order]
    shown = {}
    real_save_grid = report.save_grid

    def save_grid(images, path, **kw):  # the reconstruction grid's top row: the originals shown
        if path.name == "reconstructions.png":
            shown["originals"] = images[: kw["n_cols"]]
        return real_save_grid(images, path, **kw)

    monkeypatch.setattr(report, "save_grid", save_grid)
    monkeypatch.setattr(report, "save_embedding", lambda codes, lab, path, **kw: shown.setdefault("labels", lab))
    report.vae_figures(trained, images, labels, tmp_path)
    unit = to_unit_float(images, "test")
    picked = [int(np.flatnonzero((unit == row).all(axis=(1, 2)))[0]) for row in shown["originals"]]
    assert len(set(labels[picked])) == 10
    assert len(shown["labels"]) == len(labels) and set(shown["labels"]) == set(range(10))


def test_figures_of_unlabelled_images_draw_without_warnings(trained, digits, tmp_path):
    import warnings

    from fvae import report

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warned that a colour map without colours is ignored
        written = report.vae_figures(trained, digits.test.images[:50], None, tmp_path)
    assert (tmp_path / "latent.png") in written and (tmp_path / "latent.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_conditional_vae_learns_its_classes_from_the_labels(tmp_path, monkeypatch):
    from fvae import report
    from fvae.persist import read_header
    from fvae.vae.encoder import KERAS_MEMBER, keras_bytes

    digits = fvae.load_dataset("digits").train
    chosen = np.isin(digits.labels, [3, 7])
    images, labels = digits.images[chosen], digits.labels[chosen]
    with pytest.raises(InputError, match="^fit: a conditional VAE needs labels: pass y, the class of each image$"):
        VAEEncoder(**ONE_EPOCH_CONDITIONAL).fit(images)
    vae = VAEEncoder(**ONE_EPOCH_CONDITIONAL).fit(images, labels)
    for method in (vae.transform, vae.inverse_transform):  # as a Pipeline's predict would call them
        with pytest.raises(InputError, match=f"^{method.__name__}: a conditional VAE needs labels: pass y"):
            method(images[:2] if method == vae.transform else np.zeros((2, 2), np.float32))
    # before: classes 0..7, six of them never seen, and sample(label=5) drew from an untrained one-hot
    assert vae.classes_.tolist() == [3, 7] and vae.n_classes_ == vae.model_.n_classes == 2
    with pytest.raises(InputError, match="^label 5: this model knows classes 3, 7$"):
        vae.sample(2, label=5)
    with pytest.raises(InputError, match=r"^transform: label 5 is not a class this model was fitted on \(3, 7\)$"):
        vae.transform(images[:2], np.array([3, 5]))
    z = np.zeros((1, 2), np.float32)
    second_class = vae.model_.mean_image(vae.model_.decode(z, np.array([1], np.int32)))  # one-hot position 1
    np.testing.assert_array_equal(vae.sample(1, label=7, z=z), keras.ops.convert_to_numpy(second_class).reshape(1, 8, 8))
    with pytest.raises(InputError, match=r"^sample: n = 3, but len\(z\) = 1: they must agree$"):
        vae.sample(3, label=7, z=z)  # before: n was ignored, and one image came back
    assert report.save_samples(vae, tmp_path / "rows.png", n=4) == 4  # 2 rows (3 and 7) of 2, not 8 rows of 1

    vae.save(tmp_path / "c37.npz")
    assert read_header(tmp_path / "c37.npz")["format_version"] == 2  # an older fvae would misread 3 and 7
    loaded = VAEEncoder.load(tmp_path / "c37.npz")
    assert loaded.classes_.tolist() == [3, 7]
    np.testing.assert_array_equal(loaded.transform(images[:5], labels[:5]), vae.transform(images[:5], labels[:5]))

    # the training GIF has one row per class too: 2 rows of 10 draws, not one per label up to the largest
    from fvae.data import Split
    from fvae.vae.encoder import fit_and_save

    drawn = []
    real_save_gif = report.save_gif
    monkeypatch.setattr(report, "save_gif", lambda frames, path, **kw: drawn.append(frames) or real_save_gif(frames, path, **kw))
    fit_and_save(VAEEncoder(**ONE_EPOCH_CONDITIONAL), Split(images, labels), None, tmp_path / "g.npz", figures_dir=tmp_path / "figs")
    assert drawn[0][0].shape == (2 * 9 - 1, 10 * 9 - 1)

    zero_based = VAEEncoder(**ONE_EPOCH_CONDITIONAL).fit(digits.images[:300], digits.labels[:300])
    zero_based.save(tmp_path / "c10.npz")
    assert read_header(tmp_path / "c10.npz")["format_version"] == 1  # nothing an older fvae would misread
    # a file written before classes_ were saved: its classes are 0..n-1
    save_model(tmp_path / "before.npz", method="vae", params=zero_based.get_params(),
               arrays={"n_classes_": np.asarray(10)}, input_shape=zero_based.image_shape_,
               files={KERAS_MEMBER: keras_bytes(zero_based.model_)})
    assert VAEEncoder.load(tmp_path / "before.npz").classes_.tolist() == list(range(10))


def test_a_conditional_vae_takes_whole_float_and_boolean_labels_as_class_numbers():
    """y.astype(float) (a pandas column with a gap becomes one) and booleans were refused as "labels
    must be ... integers or ... strings", though fvae's data sources read both as class numbers."""
    digits = fvae.load_dataset("digits").train
    images, labels = digits.images[:200], digits.labels[:200]
    as_ints = VAEEncoder(**ONE_EPOCH_CONDITIONAL).fit(images, labels)
    as_floats = VAEEncoder(**ONE_EPOCH_CONDITIONAL).fit(images, labels.astype(np.float64))
    assert as_floats.classes_.dtype == np.int64 and as_floats.classes_.tolist() == as_ints.classes_.tolist()
    np.testing.assert_array_equal(as_floats.transform(images[:5], labels[:5] * 1.0), as_ints.transform(images[:5], labels[:5]))
    assert VAEEncoder(**ONE_EPOCH_CONDITIONAL).fit(images, labels > 4).classes_.tolist() == [0, 1]
    for bad in (0.5, np.nan):
        with pytest.raises(InputError, match=r"^fit: labels must be 200 integers or 200 strings, got shape \(200,\) "
                                             r"dtype float64$"):
            VAEEncoder(**ONE_EPOCH_CONDITIONAL).fit(images, np.where(labels == 1, bad, labels))


def test_a_conditional_vae_takes_string_labels_as_classifiers_do(tmp_path):
    """A scikit-learn user's labels are often names ("cat", a pandas column of objects)."""
    from fvae.persist import read_header

    digits = fvae.load_dataset("digits").train
    chosen = np.isin(digits.labels, [3, 7])
    images = digits.images[chosen]
    words = np.where(digits.labels[chosen] == 3, "three", "seven")
    vae = VAEEncoder(**ONE_EPOCH_CONDITIONAL).fit(images, words.astype(object))  # before: "labels must be ... integers"
    assert vae.classes_.tolist() == ["seven", "three"]
    z = np.zeros((1, 2), np.float32)
    second_class = vae.model_.mean_image(vae.model_.decode(z, np.array([1], np.int32)))  # one-hot position 1
    np.testing.assert_array_equal(vae.sample(1, label="three", z=z),
                                  keras.ops.convert_to_numpy(second_class).reshape(1, 8, 8))
    np.testing.assert_array_equal(vae.transform(images[:4], words[:4]), vae.transform(images[:4], list(words[:4])))
    with pytest.raises(InputError, match="^label 3: this model knows classes seven, three$"):
        vae.sample(1, label=3)
    with pytest.raises(InputError, match=r"^transform: label 3 is not a class this model was fitted on \(seven, three\)$"):
        vae.transform(images[:2], np.array([3, 3]))
    with pytest.raises(InputError, match=r"^fit: labels must be 3 integers or 3 strings, got a mix"):
        VAEEncoder(**ONE_EPOCH_CONDITIONAL).fit(images[:3], np.array(["three", 7, "seven"], dtype=object))

    vae.save(tmp_path / "words.npz")
    assert read_header(tmp_path / "words.npz")["format_version"] == 3  # an fvae that knows integer classes only refuses it
    loaded = VAEEncoder.load(tmp_path / "words.npz")
    assert loaded.classes_.tolist() == ["seven", "three"] and loaded.class_names_ == {}
    np.testing.assert_array_equal(loaded.transform(images[:5], words[:5]), vae.transform(images[:5], words[:5]))

    # the CLI draws such a model's classes by their labels, and names the rows with them
    by_word = fvae_cli("sample", "--model", "words.npz", "-n", "2", "--label", "three", "-o", "three.png", cwd=tmp_path)
    assert by_word.returncode == 0, by_word.stderr
    number = fvae_cli("sample", "--model", "words.npz", "--label", "1", "-o", "one.png", cwd=tmp_path)
    assert number.returncode == 2 and "'1' names no class: this model's classes are seven, three" in number.stderr
    every = fvae_cli("sample", "--model", "words.npz", "-n", "4", "-o", "rows.png", cwd=tmp_path)
    assert every.returncode == 0 and "2 of each of 2 classes" in every.stdout + every.stderr


def test_cli_encode_gives_a_string_labelled_vae_the_class_names_of_an_image_folder(tmp_path, digits):
    """A VAE fitted in Python on labels "seven" and "three", encoding a folder of seven/ and three/."""
    chosen = np.isin(digits.train.labels, [3, 7])
    words = np.where(digits.train.labels[chosen] == 3, "three", "seven")
    VAEEncoder(**ONE_EPOCH_CONDITIONAL).fit(digits.train.images[chosen], words).save(tmp_path / "words.npz")
    write_named_digits(tmp_path / "new", digits.test, {7: "seven", 3: "three"}, per_class=10)
    encode = fvae_cli("encode", "--model", "words.npz", "--data", "new", "--split", "all", "-o", "codes.npy", "--quiet",
                      cwd=tmp_path)
    assert encode.returncode == 0, encode.stderr  # before: "label 0 is not a class this model was fitted on"
    labels = np.load(tmp_path / "codes.labels.npy")
    sidecar = json.loads((tmp_path / "codes.json").read_text())
    source = fvae.load_dataset(str(tmp_path / "new")).split("all")
    assert sidecar["class_names"] == ["seven", "three"]  # the model's classes, numbered as its classes_
    names = np.array(sidecar["class_names"])[labels]
    assert names.tolist() == np.array(["seven", "three"])[source.labels].tolist()
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"),
                                  fvae.load(tmp_path / "words.npz").transform(source.images, names))

    # a source that only numbers its classes says nothing of which is "seven": refused, nothing written
    np.savez(tmp_path / "numbered.npz", x_test=source.images, y_test=source.labels)
    numbered = fvae_cli("encode", "--model", "words.npz", "--data", "numbered.npz", "-o", "n.npy", cwd=tmp_path)
    assert numbered.returncode == 2 and numbered.stderr.count("\n") == 1, numbered.stderr
    assert "numbered.npz only numbers its classes" in numbered.stderr and "seven, three" in numbered.stderr
    assert not list(tmp_path.glob("n.*"))
    # through the library, such a model's labels are positions in its classes_: others are refused before any output
    from fvae.data import Split
    from fvae.extract import extract_features

    with pytest.raises(InputError, match=r"^label 2 is no class of the model: .* positions 0\.\.1 \(seven, three\)$"):
        extract_features(fvae.load(tmp_path / "words.npz"), Split(source.images, source.labels + 1),
                         tmp_path / "api.npy", metadata={})  # unchecked, classes_[labels] raises IndexError
    assert not list(tmp_path.glob("api.*"))


def test_a_refit_that_fails_keeps_the_previous_fit_whole():
    class FailsAtOnce(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            raise RuntimeError("no training today")

    digits = fvae.load_dataset("digits").train
    vae = VAEEncoder(**ONE_EPOCH_CONDITIONAL)
    vae.fit(digits.images[:200], digits.labels[:200])
    before = vae.transform(digits.images[:5], digits.labels[:5])
    smaller = digits.images[:200, :7, :7]
    with pytest.raises(RuntimeError, match="no training today"):
        vae.fit(smaller, np.where(digits.labels[:200] < 5, 3, 7), callbacks=[FailsAtOnce()])
    assert vae.image_shape_ == (8, 8) and vae.classes_.tolist() == list(range(10))
    np.testing.assert_array_equal(vae.transform(digits.images[:5], digits.labels[:5]), before)


def test_a_newer_format_version_is_refused(trained, tmp_path):
    trained.save(tmp_path / "vae.npz")
    with zipfile.ZipFile(tmp_path / "vae.npz") as src, zipfile.ZipFile(tmp_path / "newer.npz", "w") as dst:
        for item in src.infolist():
            payload = src.read(item)
            if item.filename == "header.json":
                header = json.loads(payload)
                header["format_version"] = 99
                payload = json.dumps(header).encode()
            dst.writestr(item, payload)
    with pytest.raises(ModelFileError, match="format 99"):
        VAEEncoder.load(tmp_path / "newer.npz")


def test_saved_scalars_keep_their_shape(tmp_path):
    save_model(tmp_path / "m.npz", method="vae", params={}, arrays={"n": np.asarray(10), "v": np.arange(3)},
               input_shape=(8, 8))
    _, members = load_model(tmp_path / "m.npz")
    assert members["n"].shape == () and int(members["n"]) == 10
    np.testing.assert_array_equal(members["v"], np.arange(3))


def test_conv_conditional_gaussian_variants_run_on_8x8(digits, tmp_path):
    images, labels = digits.train.images[:300], digits.train.labels[:300]
    conditional = VAEEncoder(arch="conv", latent_dim=3, epochs=2, conditional=True, random_state=0).fit(images, labels)
    assert conditional.transform(images[:10], labels[:10]).shape == (10, 3)
    assert conditional.sample(4, label=7).shape == (4, 8, 8)
    with pytest.raises(InputError, match="^label 12: this model knows classes 0..9$"):
        conditional.sample(4, label=12)
    with pytest.raises(InputError, match=r"^this VAE is conditional: name the class to draw \(label, --label\)$"):
        conditional.sample(4)
    with pytest.raises(InputError, match="needs labels"):
        conditional.transform(images[:10])
    conditional.save(tmp_path / "cvae.npz")
    loaded = VAEEncoder.load(tmp_path / "cvae.npz")
    assert loaded.conditional and loaded.n_classes_ == conditional.n_classes_ == 10
    np.testing.assert_array_equal(loaded.transform(images[:10], labels[:10]), conditional.transform(images[:10], labels[:10]))
    # dropout reaches the conv VAE too (it was silently MLP-only): in training, not in transform
    dropped = VAEEncoder(arch="conv", latent_dim=3, epochs=2, dropout=0.5, random_state=0).fit(images)
    n_dropout = [sum(type(layer).__name__ == "Dropout" for layer in part.layers)
                 for part in (dropped.model_.encoder, dropped.model_.decoder)]
    assert n_dropout == [2, 3]
    assert not any(type(layer).__name__ == "Dropout" for layer in conditional.model_.encoder.layers)
    x = images[:20].astype(np.float32) / 255
    mean_train = np.asarray(dropped.model_.encode(x, training=True)[0])
    assert not np.allclose(mean_train, np.asarray(dropped.model_.encode(x, training=True)[0]))
    np.testing.assert_array_equal(dropped.transform(images[:20]), dropped.transform(images[:20]))
    dropped.save(tmp_path / "dropped.npz")
    np.testing.assert_array_equal(VAEEncoder.load(tmp_path / "dropped.npz").transform(images[:20]),
                                  dropped.transform(images[:20]))
    gaussian = VAEEncoder(**{**TINY, "epochs": 2, "likelihood": "gaussian", "return_log_var": True}).fit(images)
    assert gaussian.transform(images[:5]).shape == (5, 8)
    assert np.isfinite(gaussian.history_["loss"]).all()
    # the learned output variance moved away from its start (log var 0)
    assert np.abs(gaussian.model_.output_log_var.numpy()).max() > 1e-3


def test_a_conditional_conv_encoder_sees_the_label_as_channels_and_old_files_load_without(digits, tmp_path):
    images, labels = digits.train.images[:200], digits.train.labels[:200]
    encoder = VAEEncoder(latent_dim=3, epochs=1, conditional=True, random_state=0).fit(images, labels)
    first_conv = next(layer for layer in encoder.model_.encoder.layers if type(layer).__name__ == "Conv2D")
    assert first_conv.kernel.shape == (3, 3, 1 + 10, 32)  # the image and one channel per class
    # a file saved before the option has no key in its config: it is rebuilt as it was saved
    config = {key: value for key, value in encoder.model_.get_config().items() if key != "labels_as_channels"}
    old = VAE.from_config(config)
    first_conv = next(layer for layer in old.encoder.layers if type(layer).__name__ == "Conv2D")
    assert not old.labels_as_channels and first_conv.kernel.shape == (3, 3, 1, 32)
    encoder.model_ = old
    encoder.save(tmp_path / "old.npz")
    loaded = VAEEncoder.load(tmp_path / "old.npz")
    assert not loaded.model_.labels_as_channels
    np.testing.assert_array_equal(loaded.transform(images, labels), encoder.transform(images, labels))


@pytest.mark.slow
def test_conditional_samples_follow_their_label():
    """Prior samples drawn with label c should look like a c to a classifier trained on real digits.

    With the label only at the conv encoder's last linear layer, the codes kept the class (a
    logistic probe read it from them) and the samples followed their label 0.55 of the time
    after 40 epochs; with the label as input channels, 0.81.
    """
    from sklearn.linear_model import LogisticRegression

    train = fvae.load_dataset("mnist-5k").train
    judge = LogisticRegression(max_iter=300, C=0.1).fit(train.images.reshape(len(train), -1) / 255.0, train.labels)
    encoder = VAEEncoder(conditional=True, epochs=40, random_state=0).fit(train.images, train.labels)
    wanted = np.repeat(np.arange(10), 50)
    samples = np.concatenate([encoder.sample(50, label=c, random_state=0) for c in range(10)])
    assert (judge.predict(samples.reshape(len(samples), -1)) == wanted).mean() > 0.7


def test_bad_parameters_are_refused_by_message(digits):
    with pytest.raises(InputError, match="arch must be one of"):
        VAEEncoder(arch="resnet").fit(digits.train.images[:50])
    with pytest.raises(InputError, match="latent_dim must be a positive integer"):
        VAEEncoder(latent_dim=0).fit(digits.train.images[:50])
    for name, value in (("beta", -1.0), ("beta", math.nan), ("learning_rate", 0.0), ("max_seconds", -3.0),
                        ("gaussian_variance", math.nan), ("warmup_epochs", -1), ("dropout", 1.0),
                        ("validation_fraction", math.nan), ("random_state", None), ("random_state", -1),
                        ("hidden", (0,)), ("hidden", "16,8"), ("hidden", (16.0,)), ("hidden", None),
                        ("latent_dim", True), ("hidden", (True,)), ("random_state", False),  # before: True was 1
                        # TensorFlow's int32 shapes: a ValueError converting a sequence to a tensor
                        ("hidden", (2**31,)), ("latent_dim", 2**31), ("batch_size", 10**20)):
        with pytest.raises(InputError, match=f"^{name} must be"):
            VAEEncoder(**{name: value}).fit(digits.train.images[:50])
    # a setting the chosen likelihood would ignore is refused, not dropped
    with pytest.raises(InputError, match="^gaussian_variance applies to likelihood='gaussian' only, not 'bernoulli'$"):
        VAEEncoder(gaussian_variance=0.1).fit(digits.train.images[:50])


def test_hidden_takes_one_int_as_one_layer_as_scikit_learns_mlps_do(digits):
    one = VAEEncoder(**{**TINY, "hidden": 16, "epochs": 1}).fit(digits.train.images[:100])
    listed = VAEEncoder(**{**TINY, "hidden": [16], "epochs": 1}).fit(digits.train.images[:100])
    assert one.model_.hidden == listed.model_.hidden == (16,) and one.get_params()["hidden"] == 16
    np.testing.assert_array_equal(one.transform(digits.test.images), listed.transform(digits.test.images))


def _drawn_grid(path, shape):
    """The (height, width) block of a grid PNG's grey levels that starts at its first black pixel
    (the grids drawn here start with one, and have no title)."""
    from PIL import Image

    with Image.open(path) as picture:
        grey = np.asarray(picture.convert("L"))
    top, left = np.argwhere(grey == 0).min(axis=0)
    return grey[top:top + shape[0], left:left + shape[1]]


@pytest.mark.parametrize("side, n, scale", [(28, 400, 1), (8, 64, 7)], ids=["manifold-like", "digits"])
def test_a_grid_png_shows_every_image_pixel_as_a_whole_square(tmp_path, side, n, scale):
    from fvae import report

    images = np.random.default_rng(0).integers(0, 2, (n, side, side)).astype(np.float32)
    images[0, 0, 0] = 0  # the grid's top-left pixel is black: where the grid starts in the picture
    expected = report.tile(images)  # 579 pixels wide for 20 columns of 28: wider than the old 6-inch figure
    expected = (np.repeat(np.repeat(expected, scale, axis=0), scale, axis=1) * 255).astype(np.uint8)
    report.save_grid(images, tmp_path / "grid.png")
    assert np.array_equal(_drawn_grid(tmp_path / "grid.png", expected.shape), expected)


def test_a_grid_too_large_to_show_whole_is_reduced_by_block_means(tmp_path, monkeypatch):
    from fvae import report

    monkeypatch.setattr(report, "GRID_MAX_PIXELS", 100)  # as a 20x20 manifold of 256-pixel images is to 4,096
    images = np.random.default_rng(0).integers(0, 2, (16, 28, 28)).astype(np.float32)
    images[0, :2, :2] = 0  # the first 2x2 block is black: where the grid starts in the picture
    report.save_grid(images, tmp_path / "big.png")  # a 115-pixel grid: halved, then enlarged 8x
    padded = np.ones((116, 116), np.float32)  # the grid, white past its edge to whole 2x2 blocks
    padded[:115, :115] = report.tile(images)
    halved = np.array([[padded[i:i + 2, j:j + 2].mean() for j in range(0, 116, 2)] for i in range(0, 116, 2)])
    expected = np.repeat(np.repeat(halved, 8, axis=0), 8, axis=1) * 255
    shown = _drawn_grid(tmp_path / "big.png", expected.shape).astype(np.float32)
    assert shown.shape == expected.shape and np.abs(shown - expected).max() <= 1  # the colormap rounds to 1/255


def test_panels_are_drawn_pixel_for_pixel_each_under_its_name(tmp_path):
    from PIL import Image

    from fvae import report

    rng = np.random.default_rng(0)
    panels = rng.integers(0, 2, (3, 40, 40)).astype(np.float32)
    panels[0, 0, 0] = 0  # the first panel's top-left pixel is black: where its picture starts
    report.save_panels(panels, tmp_path / "plain.png", names=["", "", ""])  # no text: only the panels are dark
    cell_height, gap = report.CAPTION_PIXELS + 40, report.PANEL_GAP
    canvas = np.ones((cell_height, 3 * 40 + 2 * gap), np.float32)  # one row of three: white gaps, white names
    for i in range(3):
        canvas[report.CAPTION_PIXELS:, i * (40 + gap):i * (40 + gap) + 40] = panels[i]
    scale = report._grid_scale(canvas.shape)  # 140 pixels wide: 3x
    expected = (np.repeat(np.repeat(canvas, scale, axis=0), scale, axis=1) * 255).astype(np.uint8)
    with Image.open(tmp_path / "plain.png") as picture:
        grey = np.asarray(picture.convert("L"))
    top, left = np.argwhere(grey == 0).min(axis=0) - (report.CAPTION_PIXELS * scale, 0)
    assert np.array_equal(grey[top:top + expected.shape[0], left:left + expected.shape[1]], expected)
    # with names, each is drawn in the white band above its own panel, centred on it
    report.save_panels(panels, tmp_path / "named.png", names=["one", "two", "three"])
    with Image.open(tmp_path / "named.png") as picture:
        band = np.asarray(picture.convert("L"))[top:top + report.CAPTION_PIXELS * scale, left:left + expected.shape[1]]
    for i in range(3):
        ink = np.argwhere(band[:, i * (40 + gap) * scale:(i * (40 + gap) + 40) * scale] < 128)
        assert len(ink) and abs(ink[:, 1].mean() - 20 * scale) < 4 * scale, i


def test_the_manifold_of_a_conditional_vae_has_a_panel_per_class(tmp_path, digits, monkeypatch):
    """Kingma et al. (2014)'s handwriting styles: the class held fixed, the 2-D latent varied."""
    from fvae import report

    picked = np.isin(digits.train.labels, [3, 7, 8])
    encoder = VAEEncoder(**ONE_EPOCH_CONDITIONAL).fit(digits.train.images[picked], digits.train.labels[picked])
    drawn = {}
    monkeypatch.setattr(report, "_save_canvas", lambda canvas, path, **kw: drawn.update(canvas=canvas, **kw) or path)
    report.save_manifold(encoder, tmp_path / "manifold.png", class_names={3: "three", 8: "eight"})
    z = report.manifold_latents()
    assert z.shape == (400, 2) and z[0].tolist() == [-3, 3] and z[19].tolist() == [3, 3] and z[-1].tolist() == [3, -3]
    side, top, gap = 20 * 9 - 1, report.CAPTION_PIXELS, report.PANEL_GAP
    assert drawn["canvas"].shape == (top + side, 3 * side + 2 * gap)
    for i, label in enumerate([3, 7, 8]):
        expected = report.tile(encoder.inverse_transform(z, np.full(400, label)), 20)
        np.testing.assert_array_equal(drawn["canvas"][top:, i * (side + gap):i * (side + gap) + side], expected)
    assert [text for _, _, text in drawn["captions"]] == ["three", "7", "eight"]
    assert [x for _, x, _ in drawn["captions"]] == [side / 2 + i * (side + gap) for i in range(3)]
    assert drawn["title"] == "latent manifold over [-3, 3]^2, a panel per class"


def test_a_title_wider_than_its_grid_is_drawn_whole(tmp_path):
    from PIL import Image

    from fvae import report

    title = "samples, one row per class"
    report.save_grid(np.zeros((30, 8, 8), np.float32), tmp_path / "narrow.png", n_cols=3, title=title,
                     row_labels=range(10))
    plt = report._pyplot()
    fig = plt.figure(dpi=report.DPI)
    title_width = fig.text(0, 0, title, fontsize="large").get_window_extent(fig.canvas.get_renderer()).width
    plt.close(fig)
    with Image.open(tmp_path / "narrow.png") as picture:
        assert picture.size[0] > title_width > (3 * 9 - 1) * report._grid_scale((10 * 9 - 1, 3 * 9 - 1))


#: A character DejaVu Sans, matplotlib's font, lacks and fonts that come with matplotlib have.
BEYOND_DEJAVU_SANS = "\u2312"  # ⌒, an arc
#: An unassigned code point: no font draws it (matplotlib's Last Resort font draws a box for it).
NO_FONT_HAS = "\u0378"


def test_class_names_beyond_matplotlibs_font_are_drawn_in_a_font_that_has_them(tmp_path, caplog):
    """Class folders named in Chinese came out as boxes, with matplotlib's two-line warning per
    figure and character; the GIF drew them as boxes without a word."""
    from PIL import Image, ImageFont

    from fvae import report

    fonts, missing = report.fonts_for(["cat", f"arc {BEYOND_DEJAVU_SANS}"])
    assert fonts[0][0] == "DejaVu Sans" and len(fonts) == 2 and missing == ""
    assert ord(BEYOND_DEJAVU_SANS) in report._characters_of_font(fonts[1][1])
    names = {0: "cat", 1: f"arc {BEYOND_DEJAVU_SANS}"}
    with caplog.at_level(logging.WARNING, logger="fvae"), warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "Glyph ... missing from font" would fail here
        with report.drawing_names(report._names_in(names)):
            report.save_grid(np.zeros((4, 8, 8)), tmp_path / "grid.png", n_cols=2, row_labels=names.values())
        report.save_gif([np.zeros((17, 17))], tmp_path / "t.gif", captions=["epoch 1"], row_labels=names.values())
    assert not caplog.records
    font = report._gif_font(names.values())
    assert ord(BEYOND_DEJAVU_SANS) in report._characters_of_font(font.path)
    assert report._gif_font(["αβγ"]).getname()[0] == "DejaVu Sans"  # beyond Latin-1, which Pillow's font has
    pillows_own = ImageFont.load_default(size=14).getname()
    assert report._gif_font(["epoch 1", "chien é"]).getname() == pillows_own != font.getname()  # Latin-1: as before
    with Image.open(tmp_path / "grid.png") as picture:
        assert picture.size[0] > 2 * 9 * report._grid_scale((17, 17))  # room was made for the names


def test_characters_no_font_has_are_told_once_in_one_line(tmp_path, caplog):
    from fvae import report

    names = ["cat", f"odd{NO_FONT_HAS}"]
    with caplog.at_level(logging.WARNING, logger="fvae"), warnings.catch_warnings():
        warnings.simplefilter("error")
        with report.drawing_names(names):
            with report.drawing_names(names):  # save_samples within vae_figures: told by the outer block only
                report.save_grid(np.zeros((2, 8, 8)), tmp_path / "grid.png", n_cols=1, row_labels=names)
            report.save_grid(np.zeros((2, 8, 8)), tmp_path / "again.png", n_cols=1, row_labels=names)
    assert [r.getMessage() for r in caplog.records] == [
        f"figures: no font here has {NO_FONT_HAS} (in the class names), so they are drawn as boxes; a font that "
        "has them, once installed, is used"]
    assert report.fonts_for(names) == ([("DejaVu Sans", report.fonts_for([])[0][0][1])], NO_FONT_HAS)


def test_the_training_gif_captions_each_epoch_and_holds_the_last_frame(tmp_path):
    from PIL import Image

    from fvae import report

    frame = report.tile(np.random.default_rng(0).integers(0, 2, (64, 28, 28)).astype(np.float32))  # 231 pixels
    path = tmp_path / "training.gif"
    report.save_gif([frame] * 3, path, captions=["epoch 1", "epoch 2", "epoch 3"])
    with Image.open(path) as gif:
        pictures, durations = [], []
        for i in range(gif.n_frames):
            gif.seek(i)
            pictures.append(np.asarray(gif.convert("L")))
            durations.append(gif.info["duration"])
    assert durations == [300, 300, 2000]
    caption = report.CAPTION_PIXELS
    assert pictures[0].shape == (caption + 2 * frame.shape[0], 2 * frame.shape[1])  # enlarged 2x, as samples.png
    assert np.array_equal(pictures[0][caption:], np.repeat(np.repeat(frame, 2, 0), 2, 1) * 255)
    assert not np.array_equal(pictures[0][:caption], pictures[1][:caption])  # "epoch 1" is not "epoch 2"
    assert (pictures[0][:caption] < 128).any()  # and a caption is drawn at all


def test_the_training_gif_names_the_rows_of_a_conditional_vae_on_their_left(tmp_path):
    from PIL import Image

    from fvae import report

    frame = report.tile(np.random.default_rng(0).integers(0, 2, (30, 28, 28)).astype(np.float32), 10)  # 3 rows
    report.save_gif([frame] * 2, tmp_path / "rows.gif", captions=["epoch 1", "epoch 2"],
                    row_labels=["T-shirt/top", "Sneaker", "Bag"])
    with Image.open(tmp_path / "rows.gif") as gif:
        picture = np.asarray(gif.convert("L"))
    caption, scale = report.CAPTION_PIXELS, report._grid_scale(frame.shape)
    width = frame.shape[1] * scale
    assert picture.shape[0] == caption + frame.shape[0] * scale
    assert np.array_equal(picture[caption:, -width:], np.repeat(np.repeat(frame, scale, 0), scale, 1) * 255)
    margin = picture[caption:, :-width]
    assert margin.shape[1] > 50  # room for "T-shirt/top"
    row_pitch = 29 * scale  # 28 pixels and a gap a row
    for row in range(3):  # each name within its own row's band, ending near the images
        ink = np.argwhere(margin[row * row_pitch:(row + 1) * row_pitch] < 128)
        assert len(ink) and margin.shape[1] - 12 <= ink[:, 1].max() < margin.shape[1], row


def test_cli_refuses_bad_outputs_and_models_before_tensorflow_loads(tmp_path):
    # Importing TensorFlow takes seconds: a file in the way or a wrong model is refused before it,
    # so these commands run here with TensorFlow made unimportable.
    (tmp_path / "mine.npz").write_bytes(b"not a model")
    (tmp_path / "new.history.json").write_text("{}")
    for folder, figure in (("figs", "samples.png"), ("figs2", "manifold.png")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / figure).write_bytes(b"a figure")
    fvae.FisherVectorEncoder(n_components=2, pca_components=4, patch_size=4, stride=2, spatial_pyramid=False,
                             random_state=0).fit(fvae.load_dataset("digits").train.images[:40]).save(tmp_path / "f.npz")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    fit = ["fit", "vae", "--data", "digits", "--arch", "mlp"]
    cases = [
        (fit + ["-o", "mine.npz"], "mine.npz exists; pass --force to overwrite it"),
        (fit + ["-o", "new.npz"], "new.history.json exists; pass --force to overwrite it"),
        (fit + ["-o", "other.npz", "--figures", "figs"], "figs/samples.png exists; pass --force to overwrite it"),
        # the manifold is drawn for a 2-D latent only: the check knows what this fit will draw
        (fit + ["-o", "other.npz", "--figures", "figs2", "--latent-dim", "2"],
         "figs2/manifold.png exists; pass --force to overwrite it"),
        (fit + ["-o", "other.npz", "--figures", "mine.npz/sub"], "--figures mine.npz/sub: mine.npz is a file, not a folder"),
        (["sample", "--model", "missing.npz", "-o", "s.png"], "missing.npz: no such model file"),
        (["sample", "--model", "mine.npz", "-o", "s.png"], "mine.npz: not an fvae model file (File is not a zip file)"),
        (["sample", "--model", "f.npz", "-o", "s.png"], "f.npz: holds a 'fisher' model, not a 'vae' model"),
    ]
    without_tensorflow = ("import sys; sys.modules['tensorflow'] = sys.modules['keras'] = None; sys.argv[0] = 'fvae'; "
                          "from fvae.cli import run; run()")
    for args, message in cases:
        result = subprocess.run([sys.executable, "-c", without_tensorflow, *args], cwd=tmp_path, capture_output=True,
                                text=True, timeout=300)
        assert (result.returncode, result.stderr) == (2, f"fvae: error: {message}\n"), args
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    # a latent of another size draws no manifold: nothing of it is in the way
    from fvae.report import refuse_vae_outputs

    refuse_vae_outputs(tmp_path / "other.npz", tmp_path / "figs2", latent_dim=32, force=False)


def test_cli_a_model_too_large_for_memory_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    # A hidden layer of 2**31 - 1 units (the most TensorFlow's int32 shapes hold) on 28x28 images:
    # 6.7 TB of weights, refused by the allocator on any machine. It once ended in a traceback after
    # TensorFlow's 40-line allocator dump.
    monkeypatch.delenv("FVAE_TF_LOGS", raising=False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    result = fvae_cli("fit", "vae", "--data", "mnist-5k", "--arch", "mlp", "--hidden", str(2**31 - 1), "-o", "m.npz",
                      cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2, f"fvae: error: out of memory: Unable to allocate a tensor of shape (784, {2**31 - 1}) and type float; "
           "the model or the batch is too large for this machine\n")
    assert not list(tmp_path.glob("m.*"))


def test_an_out_of_memory_error_is_told_in_one_line_and_others_are_not():
    from fvae.cli import _failed_allocation

    with pytest.raises(MemoryError) as numpy_refused:
        np.empty((2**20, 2**30))  # 8 PiB
    assert _failed_allocation(numpy_refused.value) == str(numpy_refused.value)
    assert "8.00 PiB" in str(numpy_refused.value)
    assert _failed_allocation(ValueError("not memory")) is None
    graph_error = tf.errors.ResourceExhaustedError(None, None, "Graph execution error:\n\n  File ...\n\nOOM when "
                                                   "allocating tensor with shape[128,5000000] and type float on ...")
    assert _failed_allocation(graph_error) == "Unable to allocate a tensor of shape (128, 5000000) and type float"


def _fit_small_vae_in_process(model_path, *options):
    """``fvae fit vae`` on digits with a one-layer MLP of 16 units, quiet, through typer's
    CliRunner (in this process: no interpreter and TensorFlow start per call)."""
    from typer.testing import CliRunner

    from fvae.cli import app

    return CliRunner().invoke(app, ["fit", "vae", "--data", "digits", "-o", str(model_path), "--arch", "mlp",
                                    "--hidden", "16", *options, "-q"])


@pytest.mark.parametrize("k, shown", [("0", None), ("40", "IWAE bound (k=40) -")])
def test_fit_vae_scores_the_iwae_bound_with_the_samples_it_is_given(tmp_path, k, shown):
    fit = _fit_small_vae_in_process(tmp_path / "v.npz", "--epochs", "1", "--iwae-k", k)
    assert fit.exit_code == 0, fit.output
    scores, = [line for line in fit.output.splitlines() if line.startswith("test: ELBO -")]
    assert re.search(r"\(reconstruction -[\d.]+, KL [\d.]+\), .*active units \d+/32$", scores), scores
    assert (shown in scores) if shown else ("IWAE" not in scores)


def test_cli_fit_encode_sample_and_figures_in_a_subprocess(tmp_path):
    from PIL import Image

    fit = fvae_cli("fit", "vae", "--data", "digits", "-o", "vae.npz", "--arch", "mlp", "--hidden", "64",
                "--latent-dim", "2", "--epochs", "3", "--figures", "figs", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    assert "test: ELBO" in fit.stdout and "IWAE bound (k=16)" in fit.stdout
    # progress on stderr, one plain line per epoch and no TensorFlow noise; stdout holds the results only
    lines = fit.stderr.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"], fit.stderr
    assert all(" reconstruction -" in line and " kl " in line and " val_elbo -" in line for line in lines)
    assert "e+0" not in fit.stderr and "Epoch" not in fit.stdout  # not Keras' -4.2073e+01 lines
    history = json.loads((tmp_path / "vae.history.json").read_text())
    assert len(history["val_elbo"]) == 3
    assert (tmp_path / "vae.history.csv").read_text().splitlines()[0].startswith("epoch,")
    for name in ("samples", "reconstructions", "latent", "manifold", "training_curves"):
        with Image.open(tmp_path / "figs" / f"{name}.png") as picture:
            assert picture.format == "PNG"
    with Image.open(tmp_path / "figs" / "training.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 3
    # figures already there are not overwritten without --force, and that is found before training
    figures_before = {p.name: p.read_bytes() for p in (tmp_path / "figs").iterdir()}
    tiny = ["fit", "vae", "--data", "digits", "--arch", "mlp", "--hidden", "16", "--epochs", "1", "--quiet"]
    clash = fvae_cli(*tiny, "-o", "second.npz", "--figures", "figs", cwd=tmp_path)
    assert clash.returncode == 2 and clash.stderr == "fvae: error: figs/samples.png exists; pass --force to overwrite it\n"
    assert {p.name: p.read_bytes() for p in (tmp_path / "figs").iterdir()} == figures_before
    not_a_folder = fvae_cli(*tiny, "-o", "second.npz", "--figures", "vae.npz", cwd=tmp_path)
    assert not_a_folder.returncode == 2
    assert not_a_folder.stderr == "fvae: error: --figures vae.npz: a file, not a folder\n"
    assert not list(tmp_path.glob("second*"))
    forced = fvae_cli(*tiny, "-o", "second.npz", "--figures", "figs", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "1 epoch (epoch limit)" in forced.stdout
    assert (tmp_path / "figs" / "samples.png").read_bytes() != figures_before["samples.png"]

    enc = fvae_cli("encode", "--method", "vae", "--model", "vae.npz", "--data", "digits", "-o", "codes.npy",
                "--quiet", cwd=tmp_path)
    assert enc.returncode == 0, enc.stderr
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (360, 2) and codes.dtype == np.float32
    np.testing.assert_array_equal(codes, fvae.load(tmp_path / "vae.npz").transform(fvae.load_dataset("digits").test.images))
    # without --method: the model file says it is a VAE, so --log-var applies
    with_var = fvae_cli("encode", "--model", "vae.npz", "--data", "digits", "-o", "codes2.npy", "--log-var", "--quiet",
                     cwd=tmp_path)
    assert with_var.returncode == 0, with_var.stderr
    both = np.load(tmp_path / "codes2.npy")
    assert both.shape == (360, 4) and json.loads((tmp_path / "codes2.json").read_text())["shape"] == [360, 4]
    np.testing.assert_array_equal(both[:, :2], codes)
    library = fvae.load(tmp_path / "vae.npz").set_params(return_log_var=True)
    np.testing.assert_array_equal(both, library.transform(fvae.load_dataset("digits").test.images))

    sample = fvae_cli("sample", "--model", "vae.npz", "-n", "16", "-o", "s.png", "-q", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    with Image.open(tmp_path / "s.png") as picture:
        assert picture.format == "PNG"
    again = fvae_cli("sample", "--model", "vae.npz", "-n", "16", "-o", "s.png", cwd=tmp_path)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
    as_array = fvae_cli("sample", "--model", "vae.npz", "-n", "16", "-o", "s.npy", cwd=tmp_path)
    assert as_array.stdout == "wrote 16 samples to s.npy\n", as_array.stderr  # no classes: no labels file
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), fvae.load(tmp_path / "vae.npz").sample(16, random_state=0))
    assert not (tmp_path / "s.labels.npy").exists()
    # a dataset labels each image with its class: refused for want of classes, before TensorFlow loads
    unlabelled = subprocess.run([sys.executable, "-c", "import sys; sys.modules['tensorflow'] = sys.modules['keras'] = "
                                 "None; sys.argv[0] = 'fvae'; from fvae.cli import run; run()", "sample", "--model",
                                 "vae.npz", "-o", "s.npz"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert (unlabelled.returncode, unlabelled.stderr) == (2, (
        "fvae: error: Invalid value for '--output': s.npz: a sample dataset labels each image with its class, and "
        "vae.npz is not a conditional VAE: write its samples as .npy (see 'fvae sample --help')\n"))
    assert not (tmp_path / "s.npz").exists()
    fisher_log_var = fvae_cli("encode", "--method", "fisher", "--data", "digits", "-o", "f.npy", "--log-var", cwd=tmp_path)
    assert fisher_log_var.returncode == 2 and "--log-var" in fisher_log_var.stderr and "vae only" in fisher_log_var.stderr
    wrong = fvae_cli("encode", "--method", "fisher", "--model", "vae.npz", "--data", "digits", "-o", "f.npy", cwd=tmp_path)
    assert wrong.returncode == 2 and wrong.stderr.strip() == "fvae: error: vae.npz: holds a 'vae' model, not a 'fisher' model"
    assert not (tmp_path / "f.npy").exists()


def test_cli_encode_without_a_model_trains_the_default_vae_and_shows_its_epochs(tmp_path):
    result = fvae_cli("encode", "--method", "vae", "--data", "digits", "-o", "codes.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("epoch 1/200  loss ")  # it trained in silence before
    assert "fitted vae on 1,437 train images" in result.stdout and "epoch" not in result.stdout
    model = fvae.load(tmp_path / "codes.model.npz")
    assert model.arch == "conv" and model.latent_dim == 32 and model.verbose == 0  # the file keeps no terminal setting
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), model.transform(fvae.load_dataset("digits").test.images))


def test_cli_conditional_vae_samples_a_chosen_class_in_a_subprocess(tmp_path):
    from PIL import Image

    fit = fvae_cli("fit", "vae", "--data", "digits", "-o", "cvae.npz", "--conditional", "--latent-dim", "4",
                "--epochs", "2", "--figures", "figs", "--quiet", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    with Image.open(tmp_path / "figs" / "samples.png") as picture:
        assert picture.format == "PNG"

    three = fvae_cli("sample", "--model", "cvae.npz", "-n", "8", "--label", "3", "-o", "three.png", cwd=tmp_path)
    assert three.returncode == 0, three.stderr
    with Image.open(tmp_path / "three.png") as picture:
        assert picture.format == "PNG"
    for label in ["12", "-1", "x"]:  # a number it does not know reads as a text that names nothing does
        unknown = fvae_cli("sample", "--model", "cvae.npz", "--label", label, "-o", "unknown.png", cwd=tmp_path)
        assert unknown.returncode == 2 and unknown.stderr == (
            f"fvae: error: Invalid value for '--label': '{label}' names no class: this model's classes are "
            "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 (see 'fvae sample --help')\n")
        assert not (tmp_path / "unknown.png").exists()
    # without --label every class is drawn, one row each (it used to be refused)
    every = fvae_cli("sample", "--model", "cvae.npz", "-n", "25", "-o", "every.png", cwd=tmp_path)
    assert every.returncode == 0, every.stderr
    assert every.stdout == "wrote 30 samples (3 of each of 10 classes) to every.png\n"
    most = fvae_cli("sample", "--model", "cvae.npz", "-n", "10000", "-o", "most.png", cwd=tmp_path)
    assert most.stdout == "wrote 10,000 samples (1,000 of each of 10 classes) to most.png\n", most.stderr
    with Image.open(tmp_path / "every.png") as picture:
        assert picture.format == "PNG" and picture.size[1] > picture.size[0]  # 10 rows of 3: taller than wide
    # the same draws as arrays: the pixels and their classes, an image source for fvae itself
    arrays = fvae_cli("sample", "--model", "cvae.npz", "-n", "25", "-o", "every.npy", cwd=tmp_path)
    assert arrays.returncode == 0, arrays.stderr
    assert arrays.stdout == "wrote 30 samples (3 of each of 10 classes) to every.npy and every.labels.npy\n"
    images, labels = np.load(tmp_path / "every.npy"), np.load(tmp_path / "every.labels.npy")
    drawn = [fvae.load(tmp_path / "cvae.npz").sample(3, label=c, random_state=0) for c in range(10)]
    np.testing.assert_array_equal(images, np.concatenate(drawn))  # every.png's rows, in order
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 3))
    assert images.dtype == np.float32 and images.shape == (30, 8, 8)
    np.testing.assert_array_equal(fvae.load_dataset(str(tmp_path / "every.npy")).test.images, np.rint(images * 255))
    one_class = fvae_cli("sample", "--model", "cvae.npz", "-n", "4", "--label", "3", "-o", "three.npy", cwd=tmp_path)
    assert one_class.stdout == "wrote 4 samples to three.npy and three.labels.npy\n", one_class.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "three.labels.npy"), [3, 3, 3, 3])
    # the labels file is not overwritten without --force either, and that is found before TensorFlow loads
    (tmp_path / "every.npy").unlink()
    labels_before = (tmp_path / "every.labels.npy").read_bytes()
    kept = subprocess.run([sys.executable, "-c", "import sys; sys.modules['tensorflow'] = sys.modules['keras'] = None; "
                           "sys.argv[0] = 'fvae'; from fvae.cli import run; run()", "sample", "--model", "cvae.npz",
                           "-o", "every.npy"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert (kept.returncode, kept.stderr) == (2, "fvae: error: every.labels.npy exists; pass --force to overwrite it\n")
    assert not (tmp_path / "every.npy").exists() and (tmp_path / "every.labels.npy").read_bytes() == labels_before

    enc = fvae_cli("encode", "--method", "vae", "--model", "cvae.npz", "--data", "digits", "-o", "codes.npy", "--quiet",
                cwd=tmp_path)
    assert enc.returncode == 0, enc.stderr
    test = fvae.load_dataset("digits").test
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"),
                                  fvae.load(tmp_path / "cvae.npz").transform(test.images, test.labels))


def test_cli_conditional_samples_as_a_dataset_train_the_probes_that_real_images_test(tmp_path):
    """``sample -o s.npz``: a conditional VAE's samples and their classes as one labelled source,
    so ``evaluate --data s.npz --test-data REAL`` scores "train on samples, test on real"."""
    from fvae.vae.encoder import draw_samples

    assert fit_tiny_conditional_vae(tmp_path, "digits", "cvae.npz").returncode == 0
    sample = fvae_cli("sample", "--model", "cvae.npz", "-n", "45", "-o", "synth.npz", cwd=tmp_path)
    assert sample.stdout == "wrote 50 samples (5 of each of 10 classes) to synth.npz\n", sample.stderr
    with np.load(tmp_path / "synth.npz") as saved:
        assert saved.files == ["images", "labels"]
        images, labels = saved["images"], saved["labels"]
    drawn, classes = draw_samples(fvae.load(tmp_path / "cvae.npz"), 45, random_state=0)
    np.testing.assert_array_equal(images, drawn)  # the .npy's and the grid's draws
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 5))  # numbered classes stay numbers
    source = fvae.load_dataset(str(tmp_path / "synth.npz"))
    everything = source.split("all")
    assert source.class_names == tuple("0123456789")
    np.testing.assert_array_equal(np.sort(everything.images.reshape(50, -1), axis=0),
                                  np.sort(np.rint(images * 255).reshape(50, -1), axis=0))
    np.testing.assert_array_equal(np.bincount(everything.labels), [5] * 10)

    evaluate = fvae_cli("evaluate", "--data", "synth.npz", "--test-data", "digits", "--methods", "raw", "--quick",
                        "--runs-dir", "runs", "--quiet", cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr
    data = json.loads((tmp_path / "runs" / "synth" / "report.json").read_text())["data"]
    assert (data["train"]["split"], data["n_train"], data["n_test_in_train"]) == ("all", 50, 0)
    assert (data["test"]["source"], data["n_test"]) == ("digits", 1797)  # all of it: fvae splits digits itself

    one = fvae_cli("sample", "--model", "cvae.npz", "-n", "3", "--label", "7", "-o", "seven.npz", cwd=tmp_path)
    assert one.stdout == "wrote 3 samples to seven.npz\n", one.stderr
    with np.load(tmp_path / "seven.npz") as saved:
        np.testing.assert_array_equal(saved["labels"], [7, 7, 7])
    again = fvae_cli("sample", "--model", "cvae.npz", "-o", "seven.npz", cwd=tmp_path)
    assert (again.returncode, again.stderr) == (2, "fvae: error: seven.npz exists; pass --force to overwrite it\n")


def test_cli_samples_of_a_conditional_vae_of_one_class_are_counted_without_rows(tmp_path, digits):
    sevens = digits.train.images[digits.train.labels == 7]
    np.savez(tmp_path / "sevens.npz", x=sevens, y=np.full(len(sevens), 7))
    assert fit_tiny_conditional_vae(tmp_path, "sevens.npz", "cvae.npz").returncode == 0
    sample = fvae_cli("sample", "--model", "cvae.npz", "-n", "5", "-o", "s.npz", cwd=tmp_path)
    assert sample.stdout == "wrote 5 samples to s.npz\n", sample.stderr  # before: "(5 of each of 1 classes)"
    with np.load(tmp_path / "s.npz") as saved:
        np.testing.assert_array_equal(saved["labels"], [7] * 5)


def fit_tiny_conditional_vae(cwd, data, output, *options, epochs=1):
    """``fvae fit vae --conditional`` of a tiny MLP (16 hidden units, 2-D latent) on ``data``."""
    return fvae_cli("fit", "vae", "--data", data, "-o", output, "--conditional", "--arch", "mlp", "--hidden", "16",
                    "--latent-dim", "2", "--epochs", epochs, "--quiet", *options, cwd=cwd)


def test_cli_encode_gives_a_conditional_vae_the_labels_it_was_fitted_with(tmp_path, digits):
    """Another image folder numbers its classes by its own subfolders: dogs and foxes are 0 and 1
    there, cat and dog to a VAE fitted on cat, dog and fox."""
    write_named_digits(tmp_path / "fitted", digits.train, {3: "cat", 7: "dog", 0: "fox"}, per_class=30)
    write_named_digits(tmp_path / "new", digits.test, {7: "dog", 0: "fox"}, per_class=30)
    fit = fit_tiny_conditional_vae(tmp_path, "fitted", "cvae.npz")
    assert fit.returncode == 0, fit.stderr
    encode = fvae_cli("encode", "--model", "cvae.npz", "--data", "new", "--split", "all", "-o", "codes.npy", "--quiet",
                      cwd=tmp_path)
    assert encode.returncode == 0, encode.stderr
    labels = np.load(tmp_path / "codes.labels.npy")
    sidecar = json.loads((tmp_path / "codes.json").read_text())
    source = fvae.load_dataset(str(tmp_path / "new")).split("all")
    assert sidecar["class_names"] == ["cat", "dog", "fox"]  # before: dog, fox, numbered 0 and 1
    assert np.array(sidecar["class_names"])[labels].tolist() == np.array(["dog", "fox"])[source.labels].tolist()
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"),
                                  fvae.load(tmp_path / "cvae.npz").transform(source.images, labels))


def test_cli_encode_matches_digit_named_classes_of_a_conditional_vae_by_name(tmp_path, digits):
    """A VAE fitted on a folder of subfolders "1", "2" and "3" numbers them 0, 1 and 2; an array's
    labels 1, 2 and 3 are those classes."""
    rows = write_named_digits(tmp_path / "fitted", digits.train, {1: "1", 2: "2", 3: "3"}, per_class=30)
    fit = fit_tiny_conditional_vae(tmp_path, "fitted", "cvae.npz")
    assert fit.returncode == 0, fit.stderr
    np.savez(tmp_path / "numbered.npz", x_test=digits.train.images[rows], y_test=digits.train.labels[rows])
    encode = fvae_cli("encode", "--model", "cvae.npz", "--data", "numbered.npz", "-o", "codes.npy", "--quiet",
                      cwd=tmp_path)
    assert encode.returncode == 0, encode.stderr  # before: label 3 was no class of the model
    labels = np.load(tmp_path / "codes.labels.npy")
    assert json.loads((tmp_path / "codes.json").read_text())["class_names"] == ["1", "2", "3"]
    np.testing.assert_array_equal(labels, digits.train.labels[rows] - 1)
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), fvae.load(tmp_path / "cvae.npz").transform(
        digits.train.images[rows], labels))


def test_a_label_number_is_no_class_where_the_class_names_are_numbers_themselves(tmp_path, digits):
    """Folders "1", "10", "2" are labels 0, 1, 2: before, --label 0 drew label 0, the class named "1"."""
    import typer

    from fvae.cli import _label_of

    rows = digits.train.labels < 3
    VAEEncoder(**ONE_EPOCH_CONDITIONAL).fit(digits.train.images[rows], digits.train.labels[rows]).save(
        tmp_path / "numbered.npz", class_names={0: "1", 1: "10", 2: "2"})
    encoder = fvae.load(tmp_path / "numbered.npz")
    assert [_label_of(name, encoder) for name in ("1", "10", "2")] == [0, 1, 2]
    for number in ("0", "3"):
        with pytest.raises(typer.BadParameter, match=rf"^'{number}' names no class: this model's classes are 1, 10, 2$"):
            _label_of(number, encoder)
    VAEEncoder(**ONE_EPOCH_CONDITIONAL).fit(digits.train.images[rows], digits.train.labels[rows]).save(
        tmp_path / "words.npz", class_names={0: "zero", 1: "one", 2: "two"})
    assert _label_of("0", fvae.load(tmp_path / "words.npz")) == 0  # names that are words: a number is a label


def test_cli_a_conditional_vae_on_named_classes_draws_them_by_name(tmp_path, digits):
    from PIL import Image

    # labels 0 and 1 by the folders' sorted names
    picked = write_named_digits(tmp_path / "imgs", digits.train, {3: "three", 7: "seven"}, per_class=40)
    fit = fit_tiny_conditional_vae(tmp_path, "imgs", "named.npz", "--figures", "figs", epochs=2)
    assert fit.returncode == 0, fit.stderr
    assert fvae.load(tmp_path / "named.npz").class_names_ == {0: "seven", 1: "three"}
    with Image.open(tmp_path / "figs" / "manifold.png") as manifold:  # two panels side by side, named
        assert manifold.format == "PNG" and manifold.width > 2 * (20 * 9 - 1) > manifold.height
    by_name = fvae_cli("sample", "--model", "named.npz", "-n", "4", "--label", "three", "-o", "by_name.png", cwd=tmp_path)
    by_label = fvae_cli("sample", "--model", "named.npz", "-n", "4", "--label", "1", "-o", "by_label.png", cwd=tmp_path)
    assert by_name.returncode == by_label.returncode == 0, by_name.stderr + by_label.stderr
    with Image.open(tmp_path / "by_name.png") as named, Image.open(tmp_path / "by_label.png") as numbered:
        np.testing.assert_array_equal(np.asarray(named), np.asarray(numbered))  # both titled "class three"
    # a name in another case, where only one name matches so (it was "names no class")
    any_case = fvae_cli("sample", "--model", "named.npz", "-n", "4", "--label", "Three", "-o", "any_case.png",
                        cwd=tmp_path)
    assert any_case.returncode == 0, any_case.stderr
    with Image.open(tmp_path / "by_name.png") as named, Image.open(tmp_path / "any_case.png") as cased:
        np.testing.assert_array_equal(np.asarray(named), np.asarray(cased))
    # as a dataset, the samples are labelled by name: another source's labels are matched by name
    as_dataset = fvae_cli("sample", "--model", "named.npz", "-n", "4", "-o", "named_samples.npz", cwd=tmp_path)
    assert as_dataset.returncode == 0, as_dataset.stderr
    with np.load(tmp_path / "named_samples.npz") as saved:
        np.testing.assert_array_equal(saved["labels"], ["seven", "seven", "three", "three"])
    assert fvae.load_dataset(str(tmp_path / "named_samples.npz")).class_names == ("seven", "three")
    unknown = fvae_cli("sample", "--model", "named.npz", "--label", "eight", "-o", "eight.png", cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    assert "'eight' names no class: this model's classes are seven, three" in unknown.stderr
    fvae.load(tmp_path / "named.npz").save(tmp_path / "copy.npz")  # before: the copy lost the names
    assert fvae.load(tmp_path / "copy.npz").class_names_ == {0: "seven", 1: "three"}
    # a refit is no longer the file's model: the file's names and checksum go with it
    refit = fvae.load(tmp_path / "named.npz").fit(digits.train.images[picked], (digits.train.labels[picked] == 3) * 1)
    assert not hasattr(refit, "class_names_") and not hasattr(refit, "checksum_")
    refit.save(tmp_path / "refit.npz")
    assert fvae.load(tmp_path / "refit.npz").class_names_ == {}


def test_training_curves_mark_whole_epochs_only(tmp_path, monkeypatch):
    from fvae import report

    drawn = []
    monkeypatch.setattr(report, "_save", lambda fig, path, force: drawn.append(fig) or path)
    history = {"elbo": [-42.0, -37.8, -31.3], "val_elbo": [-40.1, -34.2, -28.3], "reconstruction": [-42.0, -37.7, -31.1],
               "kl": [0.03, 0.02, 0.22]}
    report.save_curves(history, tmp_path / "curves.png")
    ticks = np.concatenate([ax.get_xticks() for ax in drawn[0].axes])
    assert len(ticks) and np.array_equal(ticks, np.round(ticks)), ticks
    assert all("kept" not in text.get_text() for text in drawn[0].axes[0].get_legend().get_texts())


def test_training_curves_mark_the_epoch_whose_weights_were_kept(tmp_path, monkeypatch):
    from fvae import report

    drawn = []
    monkeypatch.setattr(report, "_save", lambda fig, path, force: drawn.append(fig) or path)
    history = {"elbo": [-42.0, -37.8, -36.3], "val_elbo": [-40.1, -34.2, -35.3], "reconstruction": [-42.0, -37.7, -36.1],
               "kl": [0.03, 0.02, 0.22], "best_epoch": 1}  # 0-based, as train() records it: the second epoch
    report.save_curves(history, tmp_path / "curves.png")
    for ax in drawn[0].axes:
        assert [text.get_text() for text in ax.get_legend().get_texts()][-1] == "kept: epoch 2"
        assert ax.lines[-1].get_xdata()[0] == 2


class _Weights:
    """A stand-in for a Keras model: its 'weights' are the epoch that set them."""

    def __init__(self):
        self.weights, self.stop_training = None, False

    def get_weights(self):
        return self.weights

    def set_weights(self, weights):
        self.weights = weights


def _run_stopper(stopper, val_elbos):
    model = _Weights()
    stopper.set_model(model)
    stopper.on_train_begin()
    for epoch, elbo in enumerate(val_elbos):
        model.weights = epoch
        stopper.on_epoch_end(epoch, {"val_elbo": elbo})
        if model.stop_training:
            break
    stopper.on_train_end()
    return model.weights, epoch


def test_early_stopping_waits_for_the_kl_warm_up_to_finish():
    """During warm-up the loss weighs the KL less than beta, so an earlier epoch can have the
    better ELBO without being the model asked for: neither the best epoch nor the patience
    counts before the KL weight reaches beta (Keras' EarlyStopping(start_from_epoch=...))."""
    from fvae.vae.train import BestOnValidationElbo

    falling = [-10.0, -20.0, -30.0, -40.0, -50.0, -60.0]
    kept, last = _run_stopper(BestOnValidationElbo(patience=2), falling)
    assert (kept, last) == (0, 2)  # without warm-up: the best ELBO, as before
    stopper = BestOnValidationElbo(patience=2, start_epoch=3)  # a 4-epoch warm-up ends in epoch index 3
    kept, last = _run_stopper(stopper, falling)
    assert (kept, last, stopper.best_epoch, stopper.stop_reason) == (3, 5, 3, "early stopping")
    # a warm-up longer than the training: the last weights are kept, and that epoch is the best one
    stopper = BestOnValidationElbo(patience=2, start_epoch=10)
    kept, last = _run_stopper(stopper, falling)
    assert (kept, last, stopper.best_epoch, stopper.stop_reason) == (5, 5, 5, "epoch limit")
    # nothing validated (validation_fraction=0): the same, with the patience never counting
    stopper = BestOnValidationElbo(patience=2)
    kept, last = _run_stopper(stopper, [None] * 6)
    assert (kept, last, stopper.best_epoch, stopper.stop_reason) == (5, 5, 5, "epoch limit")


def test_a_diverged_epoch_is_never_kept_even_in_the_warm_up():
    from fvae.vae.train import BestOnValidationElbo

    stopper = BestOnValidationElbo(patience=5)
    assert _run_stopper(stopper, [-10.0, -5.0, -7.0, math.nan, -1.0]) == (1, 3)  # the best epoch before it
    assert (stopper.best_epoch, stopper.stop_reason, stopper.diverged_in) == (1, "diverged", 3)
    stopper = BestOnValidationElbo(patience=5, start_epoch=10)  # in the warm-up, the last epoch before it
    assert _run_stopper(stopper, [-10.0, -5.0, -math.inf, -1.0]) == (1, 2)
    assert (stopper.best_epoch, stopper.stop_reason, stopper.diverged_in) == (1, "diverged", 2)
    stopper = BestOnValidationElbo(patience=5)
    _run_stopper(stopper, [math.nan])
    assert (stopper.best_epoch, stopper.diverged_in) == (-1, 0)  # nothing to keep: train() raises


class _CountSteps(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.steps = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.steps += 1


def test_the_time_limit_cuts_an_epoch_short_and_that_epoch_is_validated(digits, capsys):
    # It was checked at epoch ends only, so a 45-s limit trained Fashion-MNIST's 20-s epochs for
    # 58 s. A limit already passed at the first step now stops training after that step.
    counter = _CountSteps()
    encoder = VAEEncoder(**{**TINY, "batch_size": 32, "max_seconds": 1e-9, "verbose": 2})
    encoder.fit(digits.train.images, callbacks=[counter])
    history = encoder.history_
    assert counter.steps == 1 and math.ceil(len(digits.train.images) * 0.9 / 32) > 1
    assert (history["epochs_run"], history["stopped_by"], history["best_epoch"]) == (1, "time limit", 0)
    assert np.isfinite(history["val_elbo"][0])  # the cut epoch was validated
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("epoch 1/4  ") and line.endswith(" s  (cut short by the time limit)")
    # an epoch that ends before the limit is not marked
    encoder.set_params(max_seconds=None).fit(digits.train.images)
    assert "cut short" not in capsys.readouterr().err


def test_cli_fit_vae_on_every_image_reports_no_test_numbers(tmp_path):
    fit = fvae_cli("fit", "vae", "--data", "digits", "--split", "all", "-o", "vae.npz", "--arch", "mlp",
                   "--hidden", "16", "--epochs", "1", "--quiet", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    assert fit.stdout.startswith("trained vae on 1,797 digits all images, 180 of them held out for validation, in ")
    assert "test: no numbers, the test images were trained on (--split all)" in fit.stdout
    assert "test: ELBO" not in fit.stdout
    np.save(tmp_path / "mine.npy", np.zeros((30, 8, 8), np.uint8))
    unlabelled = fvae_cli("fit", "vae", "--data", "mine.npy", "--split", "test", "--conditional", "-o", "c.npz",
                          cwd=tmp_path)
    assert unlabelled.returncode == 2 and unlabelled.stderr == (
        "fvae: error: mine.npy has no labels, and a conditional VAE (--conditional) needs them\n")
    assert not (tmp_path / "c.npz").exists()


def test_cli_marks_warm_up_epochs_and_warns_when_the_warm_up_cannot_finish(tmp_path):
    fit = fvae_cli("fit", "vae", "--data", "digits", "-o", "vae.npz", "--arch", "mlp", "--hidden", "16",
                   "--epochs", "2", "--warmup", "5", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    *epochs, warning = fit.stderr.splitlines()
    assert len(epochs) == 2 and all(line.split("  ")[-2].endswith(" (warm-up)") for line in epochs), fit.stderr
    assert warning == ("fvae: WARNING: the KL warm-up did not finish (2 of 5 epochs): the KL weight reached 0.4, "
                       "not beta = 1; the last epoch's weights are kept")
    assert "2 epochs (epoch limit), best epoch 2," in fit.stdout


@pytest.mark.parametrize("fraction", ["0", "0.5"])
def test_fit_vae_holds_out_the_validation_fraction_it_is_given(tmp_path, fraction):
    fit = _fit_small_vae_in_process(tmp_path / "v.npz", "--epochs", "3", "--validation-fraction", fraction)
    assert fit.exit_code == 0, fit.output
    history = json.loads((tmp_path / "v.history.json").read_text())
    assert fvae.load(tmp_path / "v.npz").validation_fraction == float(fraction)
    n_train = len(fvae.load_dataset("digits").train)
    if fraction == "0":  # nothing judged: every epoch runs and the last is kept
        assert (history["train_images"], history["validation_images"]) == (n_train, 0)
        assert "val_elbo" not in history and history["best_epoch"] == 2
        assert fit.output.startswith(f"trained vae on {n_train:,} digits train images in ")
        assert ": 3 epochs (epoch limit), kept epoch 3 (no validation split)\n" in fit.output
    else:
        held_out = round(n_train / 2)
        assert (history["train_images"], history["validation_images"]) == (n_train - held_out, held_out)
        assert len(history["val_elbo"]) == 3
        assert fit.output.startswith(f"trained vae on {n_train:,} digits train images, {held_out:,} of them held "
                                     "out for validation, in ")
        assert f"best epoch {history['best_epoch'] + 1}, validation ELBO -" in fit.output


class _CtrlC(keras.callbacks.Callback):
    """Raise KeyboardInterrupt, as Ctrl-C does, in the middle of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 2:
            raise KeyboardInterrupt


@pytest.mark.parametrize("validation_fraction", [0.1, 0.0], ids=["best-epoch", "no-validation"])
def test_ctrl_c_after_an_epoch_leaves_the_encoder_fitted_as_if_training_had_stopped_there(digits, validation_fraction):
    images = digits.train.images[:600]
    settings = {**TINY, "epochs": 50, "validation_fraction": validation_fraction}
    interrupted = VAEEncoder(**settings)
    with pytest.raises(fvae.TrainingInterrupted) as caught:
        interrupted.fit(images, callbacks=[_CtrlC(epoch=2)])
    assert isinstance(caught.value, KeyboardInterrupt)
    history = interrupted.history_
    assert (history["epochs_run"], history["stopped_by"]) == (2, "interrupted")
    assert len(history["elbo"]) == len(history["seconds"]) == 2
    # the weights are those a two-epoch training keeps (its best epoch, or its last without validation)
    two_epochs = VAEEncoder(**{**settings, "epochs": 2}).fit(images)
    assert history["best_epoch"] == two_epochs.history_["best_epoch"]
    np.testing.assert_array_equal(interrupted.transform(digits.test.images), two_epochs.transform(digits.test.images))


class _Diverges(keras.callbacks.Callback):
    """Make the weights NaN as epoch ``epoch`` (0-based) begins, as a too-large step does."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            for weight in self.model.trainable_weights:
                weight.assign(np.full(weight.shape, np.nan, dtype=np.float32))


@pytest.mark.parametrize("validation_fraction", [0.1, 0.0], ids=["best-epoch", "no-validation"])
def test_an_epoch_that_diverges_ends_training_with_the_weights_of_an_epoch_before_it(digits, caplog,
                                                                                     validation_fraction):
    images = digits.train.images[:600]
    settings = {**TINY, "epochs": 50, "validation_fraction": validation_fraction}
    samples = EpochSamples(TINY["latent_dim"])
    with caplog.at_level(logging.WARNING, logger="fvae"):
        diverged = VAEEncoder(**settings).fit(images, callbacks=[_Diverges(epoch=2), samples])
    history = diverged.history_
    assert (history["epochs_run"], history["stopped_by"]) == (3, "diverged") and math.isnan(history["loss"][2])
    assert len(samples.frames) == 2 and np.isfinite(samples.frames).all()  # the GIF shows no NaN epoch
    two_epochs = VAEEncoder(**{**settings, "epochs": 2}).fit(images)
    assert history["best_epoch"] == two_epochs.history_["best_epoch"]
    np.testing.assert_array_equal(diverged.transform(digits.test.images), two_epochs.transform(digits.test.images))
    numbers = "loss nan, val_elbo nan" if validation_fraction else "loss nan"
    assert caplog.messages == [f"training diverged in epoch 3 ({numbers}): stopped there, with the weights of "
                               f"epoch {history['best_epoch'] + 1}"]


def test_a_first_epoch_that_diverges_is_an_error_and_fits_nothing(digits):
    encoder = VAEEncoder(**{**TINY, "learning_rate": 0.01})
    with pytest.raises(fvae.TrainingDiverged, match=r"^training diverged in epoch 1 \(loss nan, val_elbo nan\), with "
                                                    r"no earlier epoch to keep: try a lower learning rate than 0\.01$"):
        encoder.fit(digits.train.images[:600], callbacks=[_Diverges(epoch=0)])
    assert not hasattr(encoder, "model_")


def test_a_dropout_that_overflows_the_first_epoch_is_named_beside_the_learning_rate(digits):
    # dropout 0.99 scales the kept units by 100 in each layer: it overflows at any learning rate,
    # and the error pointed at the learning rate only
    encoder = VAEEncoder(**{**TINY, "hidden": (512, 256), "dropout": 0.99, "epochs": 1})
    with pytest.raises(fvae.TrainingDiverged, match=r"with no earlier epoch to keep: try a lower learning rate than "
                                                    r"0\.001, or less dropout than 0\.99$"):
        encoder.fit(digits.train.images[:600])
    assert not hasattr(encoder, "model_")


@pytest.mark.parametrize("setting, named", [({"beta": 1e30}, "a smaller beta than 1e+30"),
                                            ({"likelihood": "gaussian", "gaussian_variance": 1e-30},
                                             "a larger Gaussian variance than 1e-30")])
def test_a_beta_or_variance_that_overflows_the_first_epoch_is_named_beside_the_learning_rate(digits, setting, named):
    # both overflow float32 at any learning rate: before, the error pointed at the learning rate only
    encoder = VAEEncoder(**{**TINY, "epochs": 1, **setting})
    with pytest.raises(fvae.TrainingDiverged, match=rf"with no earlier epoch to keep: try a lower learning rate than "
                                                    rf"0\.001, or {re.escape(named)}$"):
        encoder.fit(digits.train.images[:600])


def test_cli_a_learning_rate_that_diverges_is_one_line_and_writes_nothing(tmp_path):
    fit = fvae_cli("fit", "vae", "--data", "digits", "-o", "vae.npz", "--arch", "mlp", "--hidden", "16",
                   "--epochs", "3", "--learning-rate", "100", "--figures", "figs", cwd=tmp_path)
    assert fit.returncode == 2, fit.stderr
    assert fit.stderr.splitlines()[-1] == ("fvae: error: training diverged in epoch 1 (loss nan, val_elbo nan), with "
                                           "no earlier epoch to keep: try a lower learning rate than 100")
    assert not [path.name for path in tmp_path.iterdir() if path.name != "keras-home"]  # the tests' Keras folder


class _ArrayLike:
    """An array whose conversion runs Python code, called back from TensorFlow's C++."""

    def __array__(self, dtype=None, copy=None):
        return np.asarray([float(i) for i in range(1000)], dtype=np.float32)


class _RealCtrlC(keras.callbacks.Callback):
    """Send this process SIGINT at the end of epoch 2, then convert arrays in TensorFlow, as the
    figure callback does: where a real Ctrl-C after an epoch line lands."""

    finished = False

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):
                tf.convert_to_tensor(_ArrayLike())
            self.finished = True


@pytest.mark.usefixtures("pythons_ctrl_c")
def test_a_real_ctrl_c_waits_for_the_next_step_instead_of_breaking_into_a_callback(digits):
    # The CLI test's SIGINT once landed inside NumPy's __array__ under TensorFlow's conversion:
    # "SystemError: ... returned a result with an exception set", a traceback and exit code 1.
    # The handler now only marks the request, the callback runs to its end, and the next step
    # or epoch boundary raises it.
    encoder, ctrl_c = VAEEncoder(**{**TINY, "epochs": 50}), _RealCtrlC()
    with pytest.raises(fvae.TrainingInterrupted):
        encoder.fit(digits.train.images[:600], callbacks=[ctrl_c])
    assert ctrl_c.finished
    assert (encoder.history_["epochs_run"], encoder.history_["stopped_by"]) == (2, "interrupted")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own handler is back


@pytest.mark.usefixtures("pythons_ctrl_c")
def test_a_second_ctrl_c_interrupts_at_once():
    from fvae.vae.train import DeferredCtrlC

    ctrl_c = DeferredCtrlC()
    with ctrl_c.installed():
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(10_000))  # Python runs the handler within a few bytecodes
        assert ctrl_c.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(10_000))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_in_the_first_epoch_propagates_and_fits_nothing(digits):
    encoder = VAEEncoder(**TINY)
    with pytest.raises(KeyboardInterrupt) as caught:
        encoder.fit(digits.train.images[:600], callbacks=[_CtrlC(epoch=0)])
    assert not isinstance(caught.value, fvae.TrainingInterrupted)
    assert not hasattr(encoder, "model_")


# SIGTERM (kill, timeout, a batch system's time limit) killed the process at once: every epoch was lost
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["Ctrl-C", "SIGTERM"])
def test_cli_ctrl_c_in_fit_vae_saves_the_best_epoch_so_far(tmp_path, sig, code):
    run = fvae_cli("fit", "vae", "--data", "digits", "-o", "vae.npz", "--arch", "mlp", "--hidden", "16",
                   "--epochs", "5000", "--patience", "5000", "--figures", "figs", cwd=tmp_path, wait=False)
    lines = []
    for line in run.stderr:  # one line per finished epoch (stderr is a pipe)
        lines.append(line)
        if line.startswith("epoch 2/5000"):
            run.send_signal(sig)
            break
    stdout, rest = run.communicate(timeout=300)
    stderr = "".join(lines) + rest
    assert run.returncode == code, stderr
    assert "Traceback" not in stderr and "interrupted in epoch " in stderr
    history = json.loads((tmp_path / "vae.history.json").read_text())
    assert history["stopped_by"] == "interrupted" and 2 <= history["epochs_run"] < 5000
    assert f"{history['epochs_run']} epochs (interrupted), best epoch {history['best_epoch'] + 1}" in stdout
    assert "test: ELBO" in stdout and "figures: " in stdout
    codes = fvae.load(tmp_path / "vae.npz").transform(fvae.load_dataset("digits").test.images)
    assert codes.shape == (360, 32) and np.isfinite(codes).all()
