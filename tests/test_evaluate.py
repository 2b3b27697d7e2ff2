"""``fvae evaluate``: the probes, the report and its schema, and the CLI end to end."""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings  # "settings" here are evaluate's
from hypothesis import strategies as st

from conftest import fvae_cli, write_image_folder, write_named_digits
import fvae
from fvae.data import Split, to_unit_float
from fvae.evaluate import (
    SCHEMA_PATH, Settings, _PixelPCA, _significance, evaluate, image_errors, knn_probe, label_efficiency, logistic_probe,
    paired_error_tests, paired_tests, parse_methods, pixel_errors, ProbeSpace, ridge_probe, shared_images,
    stratified_subset,
)
from fvae.errors import InputError
from fvae.report import markdown_report

FIGURES = ("confusion_matrices", "label_efficiency", "embeddings", "reconstructions", "vae_samples",
           "vae_training_curves")


def _validate(report):
    json.dumps(report, allow_nan=False)  # strict JSON: a NaN would be written as the bare word NaN
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the dev extra: pip install -e '.[dev]'")
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(report, schema, cls=jsonschema.Draft202012Validator)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One full ``fvae evaluate --quick`` on digits, run as a user runs it."""
    cwd = tmp_path_factory.mktemp("evaluate")
    result = fvae_cli("evaluate", "--data", "digits", "--quick", "--vae-seconds", "8", "--name", "d", cwd=cwd)
    return cwd, result


# -- probes ----------------------------------------------------------------------------------------


def test_raw_pixel_logistic_regression_on_digits_is_above_90_percent(digits):
    train = to_unit_float(digits.train.images).reshape(len(digits.train), -1)
    test = to_unit_float(digits.test.images).reshape(len(digits.test), -1)
    result, predictions = logistic_probe(ProbeSpace(train, test), digits.train.labels, digits.test.labels,
                                         c_grid=(0.1, 1.0))
    assert result["accuracy"] > 0.90 and result["accuracy"] == np.mean(predictions == digits.test.labels)
    assert result["C"] in (0.1, 1.0) and 0.9 < result["cv_accuracy"] <= 1.0
    confusion = np.asarray(result["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == len(digits.test)
    assert np.trace(confusion) / confusion.sum() == pytest.approx(result["accuracy"])
    # the probe fits in float32 (memory-bound L-BFGS, half the bytes): the same predictions as the
    # plain float64 fit on the standardized pixels at the chosen C
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    reference = make_pipeline(StandardScaler(), LogisticRegression(C=result["C"], max_iter=1000)).fit(
        train.astype(np.float64), digits.train.labels)
    np.testing.assert_array_equal(predictions, reference.predict(test.astype(np.float64)))


def _mcnemar_exact_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from its definition: twice the smaller binomial tail of the
    discordant images under p = 1/2, at most 1."""
    n = only_first + only_second
    tail = sum(math.comb(n, i) for i in range(min(only_first, only_second) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The 95% Wilson score interval from its formula."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@hypothesis_settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 60), p_first=st.floats(0, 1), p_second=st.floats(0, 1))
def test_paired_tests_count_the_disagreements_and_give_mcnemars_exact_p_value(seed, n, p_first, p_second):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    wrong = (truth + 1) % 3
    predictions = {name: np.where(rng.random(n) < p, truth, wrong)
                   for name, p in (("fisher", p_first), ("vae", p_second), ("raw", 0.5))}
    tests = paired_tests(predictions, truth)
    assert [t["encodings"] for t in tests] == [["fisher", "vae"], ["fisher", "raw"], ["vae", "raw"]]
    for t in tests:
        first, second = (predictions[name] == truth for name in t["encodings"])
        assert t["only_first_correct"] == sum(a and not b for a, b in zip(first, second))
        assert t["only_second_correct"] == sum(b and not a for a, b in zip(first, second))
        # the accuracies differ by exactly the disagreements' difference
        assert first.mean() - second.mean() == pytest.approx((t["only_first_correct"] - t["only_second_correct"]) / n)
        assert t["p_value"] == pytest.approx(_mcnemar_exact_p(t["only_first_correct"], t["only_second_correct"]),
                                             rel=1e-9)


def test_paired_tests_tell_a_real_lead_from_chance():
    truth = np.zeros(1000, dtype=int)
    better = np.where(np.arange(1000) < 980, 0, 1)  # 98.0%
    worse = np.where(np.arange(1000) < 940, 0, 1)  # 94.0%, wrong on all that `better` misses and 40 more
    close = np.where((np.arange(1000) < 975) | (np.arange(1000) >= 997), 0, 1)  # 97.8%: 5 more right, 3 less
    first, second = paired_tests({"fisher": better, "vae": worse, "pca": close}, truth)[:2]
    assert (first["only_first_correct"], first["only_second_correct"]) == (40, 0)
    assert first["p_value"] == pytest.approx(2 / 2 ** 40)
    assert (second["only_first_correct"], second["only_second_correct"]) == (5, 3)
    assert second["p_value"] == pytest.approx(_mcnemar_exact_p(5, 3)) and second["p_value"] > 0.5
    assert paired_tests({"pca": truth, "raw": truth}, truth)[0]["p_value"] == 1.0  # no disagreement at all


@hypothesis_settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 50), shift=st.floats(-0.05, 0.05))
def test_paired_error_tests_are_the_paired_t_test_of_the_per_image_errors(seed, n, shift):
    from scipy.stats import t as student

    rng = np.random.default_rng(seed)
    pixels = rng.random((n, 4, 3))
    reconstructions = {"vae": pixels + rng.normal(0, 0.1, pixels.shape),
                       "pca": pixels + rng.normal(0, 0.1, pixels.shape) + shift, "raw": pixels}
    errors = {name: image_errors(pixels, r) for name, r in reconstructions.items()}
    for name, r in reconstructions.items():  # the images' errors average to the MSE the report gives
        assert errors[name].mean() == pytest.approx(pixel_errors(pixels, r)["mse"], rel=1e-12)
        assert errors[name][0] == pytest.approx(np.mean((pixels[0] - r[0]) ** 2), rel=1e-12)
    tests = paired_error_tests(errors)
    assert [t["encodings"] for t in tests] == [["vae", "pca"], ["vae", "raw"], ["pca", "raw"]]
    for t in tests:
        first, second = (errors[name] for name in t["encodings"])
        d = first - second
        assert (t["first_lower"], t["second_lower"]) == (np.sum(d < 0), np.sum(d > 0))
        assert t["mean_difference"] == pytest.approx(d.mean(), rel=1e-12, abs=1e-15)
        # t = mean / (sd / sqrt(n)) with n - 1 degrees of freedom, two-sided
        statistic = d.mean() / (d.std(ddof=1) / np.sqrt(n))
        assert t["p_value"] == pytest.approx(2 * student.sf(abs(statistic), n - 1), rel=1e-6, abs=1e-300)
    assert paired_error_tests({"pca": errors["raw"], "raw": errors["raw"]})[0]["p_value"] == 1.0  # all equal


def test_probe_accuracies_come_with_their_wilson_interval(digits):
    train = to_unit_float(digits.train.images[:200]).reshape(200, -1)
    test = to_unit_float(digits.test.images).reshape(len(digits.test), -1)
    knn, predictions = knn_probe(train, digits.train.labels[:200], test, digits.test.labels)
    correct = int(np.sum(predictions == digits.test.labels))
    assert knn["accuracy"] == correct / len(test) < 1
    assert knn["accuracy_ci95"] == pytest.approx(_wilson_interval(correct, len(test)), rel=1e-9)
    low, high = knn["accuracy_ci95"]
    assert low < knn["accuracy"] < high
    # all right: the interval still has width, ending at 1
    logistic, _ = logistic_probe(ProbeSpace(test, test), digits.test.labels, digits.test.labels, c_grid=(100.0,))
    assert logistic["accuracy"] == 1.0
    assert logistic["accuracy_ci95"] == pytest.approx(_wilson_interval(len(test), len(test)), rel=1e-9)
    assert logistic["accuracy_ci95"][0] < 0.995 and logistic["accuracy_ci95"][1] == 1.0


def test_the_logistic_probe_fits_under_one_blas_thread_and_gives_the_threads_back(digits, monkeypatch):
    # Each L-BFGS step multiplies the codes by a thin (d, classes) matrix; BLAS threads sharing it
    # made the probes 1.6-9x slower on 2 cores.
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}

    seen = []
    fit = LogisticRegression.fit

    def fit_noting_the_threads(self, X, y, *args, **kwargs):
        seen.append(blas_threads())
        return fit(self, X, y, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", fit_noting_the_threads)
    train = to_unit_float(digits.train.images[:300]).reshape(300, -1)
    test = to_unit_float(digits.test.images).reshape(len(digits.test), -1)
    with threadpool_limits(limits=2, user_api="blas"):
        result, _ = logistic_probe(ProbeSpace(train, test), digits.train.labels[:300], digits.test.labels,
                                   c_grid=(0.1, 1.0))
        after = blas_threads()
    assert len(seen) == 3 * 2 + 1  # 3 folds x 2 values of C, then the chosen C on every train row
    assert all(threads == {1} for threads in seen)
    assert after == {2}
    assert result["accuracy"] > 0.85


def test_pca_reconstruction_error_falls_as_its_dimension_grows(digits):
    test = to_unit_float(digits.test.images)
    train = to_unit_float(digits.train.images)
    own, probe = [], []
    for dim in (2, 4, 8, 16, 32):
        pca = _PixelPCA(dim, seed=0).fit(digits.train.images)
        codes_test = pca.transform(digits.test.images)
        own.append(pixel_errors(test, pca.inverse_transform(codes_test, test.shape[1:]))["mse"])
        space = ProbeSpace(pca.transform(digits.train.images), codes_test)
        probe.append(ridge_probe(space, train, test, alphas=(1e-3, 1e-1, 10.0))[0]["mse"])
    assert all(a > b for a, b in zip(own, own[1:])), own
    assert all(a > b for a, b in zip(probe, probe[1:])), probe
    # a linear probe from PCA codes can do no better than PCA's own (optimal linear) inverse, up to clipping
    assert probe[-1] == pytest.approx(own[-1], rel=0.15)


def test_row_space_reduction_gives_the_same_classifier_as_the_wide_features():
    """The fast path for codes wider than the train set (fit in row-space coordinates, lift the
    weights back) against the obviously correct fit on the original features, also on a subset."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    train = rng.standard_normal((60, 400))
    test = rng.standard_normal((25, 400))
    labels = np.arange(60) % 3
    train[:, :5] += labels[:, None]
    space = ProbeSpace(train, test, standardize=False)
    assert space.train.shape == (60, 60)
    for c, rows in ((0.01, np.arange(60)), (1.0, np.arange(60)), (1.0, np.arange(0, 60, 2))):
        wide = LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(train[rows], labels[rows])
        narrow = LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(space.train[rows], labels[rows])
        lifted = test @ space.lift(narrow.coef_.T) + narrow.intercept_
        np.testing.assert_allclose(lifted, wide.decision_function(test), atol=1e-5)
        np.testing.assert_array_equal(space.predict(narrow), wide.predict(test))
    # the probe on 12 labelled rows (narrower than the 60 coordinates: reduced once more)
    rows = np.arange(0, 60, 5)
    test_labels = np.arange(25) % 3
    wide = LogisticRegression(C=1.0, max_iter=5000).fit(train[rows], labels[rows])
    probe, predictions = logistic_probe(space, labels[rows], test_labels, c_grid=(1.0,), rows=rows)
    np.testing.assert_array_equal(predictions, wide.predict(test))
    assert probe["accuracy"] == pytest.approx(np.mean(wide.predict(test) == test_labels))


@pytest.mark.parametrize("width", [30, 300], ids=["narrow", "wide"])
def test_ridge_from_the_probe_space_equals_scikit_learns_ridgecv(width, monkeypatch):
    """The ridge probe's closed-form leave-one-out choice and fit, from the probe space's own
    decomposition, against scikit-learn's RidgeCV on the same standardized codes."""
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    train, test = rng.standard_normal((80, width)), rng.standard_normal((20, width))
    targets = train[:, :4] @ rng.standard_normal((4, 6)) + 0.3 * rng.standard_normal((80, 6)) + 2.0
    alphas = (0.01, 1.0, 30.0, 1000.0)
    monkeypatch.setattr(ProbeSpace, "BLOCK_VALUES", 7 * width)  # 3 blocks of test rows, several of train columns
    given = train.copy(), test.copy()
    alpha, predicted = ProbeSpace(train, test).ridge(targets, alphas)
    np.testing.assert_array_equal(train, given[0])  # standardized in copies, not in place
    np.testing.assert_array_equal(test, given[1])
    scaler = StandardScaler().fit(train)
    reference = RidgeCV(alphas=alphas).fit(scaler.transform(train), targets)
    assert alpha == reference.alpha_
    np.testing.assert_allclose(predicted, reference.predict(scaler.transform(test)), rtol=1e-6, atol=1e-8)


@hypothesis_settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 24), extra=st.integers(-20, 40),
       block_values=st.integers(1, 400), dtype=st.sampled_from([np.float32, np.float64]))
def test_the_probe_space_in_any_blocks_is_the_standardized_codes_reduced_exactly(seed, n, extra, block_values,
                                                                                 dtype):
    """Against whole-array arithmetic: the train coordinates keep the standardized codes' Gram
    matrix, lifted weights act on the codes as the coefficients act on the coordinates
    (``Xs V beta = U S beta``), and the test products are the standardized test codes' own, for
    codes narrower or wider than the train set and blocks of any size."""
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    d = max(1, n + extra)
    train = (rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d) + rng.uniform(-5, 5, d)).astype(dtype)
    test = rng.standard_normal((7, d)).astype(dtype)
    given = train.copy(), test.copy()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ProbeSpace, "BLOCK_VALUES", block_values)
        space = ProbeSpace(train, test)
        beta = rng.standard_normal((space.train.shape[1], 3))
        weights = space.lift(beta)
        test_times = space._test_times(weights)
    np.testing.assert_array_equal(train, given[0])
    np.testing.assert_array_equal(test, given[1])
    scaler = StandardScaler().fit(train.astype(np.float64))
    standardized, standardized_test = scaler.transform(train.astype(np.float64)), scaler.transform(test.astype(np.float64))
    scale = max(1.0, float(np.abs(standardized).max())) ** 2 * d
    np.testing.assert_allclose(space.train @ space.train.T, standardized @ standardized.T, atol=1e-9 * scale)
    np.testing.assert_allclose(standardized @ weights, space.train @ beta, atol=1e-8 * scale * np.abs(beta).max())
    np.testing.assert_allclose(test_times, standardized_test @ weights, rtol=1e-12, atol=1e-12 * scale)


def test_the_probe_space_standardizes_wide_codes_a_block_at_a_time(monkeypatch):
    # 10,000 train and test Fisher Vectors peaked at 10.7 GB, then 7.5 GB: standardized float64
    # copies of the codes beside the float32 codes they were made from. Memory as NumPy reports it
    # to tracemalloc.
    import tracemalloc

    rng = np.random.default_rng(0)
    n, d = 500, 16000  # wider than the train set: the row-space path
    train = rng.random((n, d), dtype=np.float32)
    test = rng.random((1000, d), dtype=np.float32)
    targets = rng.random((n, 10))
    ProbeSpace(train[:5, :9], test[:2, :9]).ridge(targets[:5], (1.0,))  # its imports, not traced below
    monkeypatch.setattr(ProbeSpace, "BLOCK_VALUES", 32 * d)
    tracemalloc.start()
    try:
        space = ProbeSpace(train, test)
        space.train32
        held = tracemalloc.get_traced_memory()[0]
        space.ridge(targets, (1.0, 10.0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    train64, block64, gram64 = train.size * 8, ProbeSpace.BLOCK_VALUES * 8, n * n * 8
    assert peak < 3 * block64 + 5 * gram64 < train64 / 2  # before: more than train64 + 3 * gram64 + block64
    # the basis U and the float32 coordinates, not also the float64 coordinates U S (one more gram64)
    assert held < 2 * gram64


def test_ridge_breaks_an_exact_tie_of_leave_one_out_errors_towards_the_smallest_alpha():
    """Codes with as many uncorrelated directions as the centred train rows span (n - 1 PCA codes
    of n images) standardize to equal singular values: every alpha has the same LOO error, and
    which won was the CPU's rounding (the largest, predicting the mean, on an AVX2 machine)."""
    rng = np.random.default_rng(0)
    n = 40
    centred = rng.standard_normal((n, n))
    centred -= centred.mean(axis=0)
    codes = np.linalg.svd(centred, full_matrices=False)[0][:, : n - 1]  # orthonormal, centred
    targets = rng.random((n, 16))
    alphas = tuple(float(a) for a in np.logspace(-2, 5, 8))
    for seed in range(5):  # several rotations of the same codes: rounding differs, the tie does not
        rotation = np.linalg.qr(np.random.default_rng(seed).standard_normal((n - 1, n - 1)))[0]
        alpha, _ = ProbeSpace(codes @ rotation * 3.0, codes[:2]).ridge(targets, alphas)
        assert alpha == alphas[0]


def test_label_efficiency_curve_uses_stratified_subsets(digits):
    train = to_unit_float(digits.train.images).reshape(len(digits.train), -1)
    test = to_unit_float(digits.test.images).reshape(len(digits.test), -1)
    subset = stratified_subset(digits.train.labels, 100, seed=0)
    assert len(subset) == len(set(subset)) == 100
    assert set(digits.train.labels[subset]) == set(range(10))
    np.testing.assert_array_equal(subset, stratified_subset(digits.train.labels, 100, seed=0))
    curve = label_efficiency(ProbeSpace(train, test), digits.train.labels, digits.test.labels,
                             counts=(100, 500, 5000), repeats=2, c_grid=(1.0,))
    assert [p["n_labels"] for p in curve] == [100, 500, len(train)]  # 5000 > the train set: left out
    assert [len(p["accuracies"]) for p in curve] == [2, 2, 1]
    assert curve[0]["accuracy_mean"] < curve[-1]["accuracy_mean"]


def test_vae_reconstruction_bce_is_the_models_own_reconstruction_term(digits):
    """BCE against the model's targets (thresholded pixels), equal to -log p(x|z=mean) as the model
    computes it, not against the grey levels."""
    from keras import ops

    from fvae.evaluate import vae_reconstruction
    from fvae.vae import VAEEncoder

    vae = VAEEncoder(arch="mlp", hidden=(32,), latent_dim=3, epochs=2, random_state=0).fit(digits.train.images)
    pixels = to_unit_float(digits.test.images)
    codes = vae.transform(digits.test.images)
    scores, means = vae_reconstruction(vae, codes, pixels)
    model = vae.model_
    expected = -ops.convert_to_numpy(model.log_likelihood(model.targets(pixels), model.decode(codes))).mean()
    assert scores["bce"] == pytest.approx(float(expected), rel=1e-4)
    assert scores["mse"] == pytest.approx(float(np.mean((means - pixels) ** 2)), rel=1e-6)


def test_methods_are_parsed_and_checked():
    assert parse_methods("raw, fisher") == ("fisher", "raw")
    assert parse_methods("RAW,Pca,raw") == ("pca", "raw")
    with pytest.raises(InputError, match="^--methods 'fisher,sift': 'sift' is not an encoding; choose from fisher, "
                                         r"vae, pca, raw \(comma-separated\)$"):
        parse_methods("fisher,sift")
    with pytest.raises(InputError, match="^--methods 'PCA, hog': 'hog' is not an encoding; choose from"):
        parse_methods("PCA, hog")
    with pytest.raises(InputError, match="^--methods 'Sift, HOG': 'Sift', 'HOG' are not encodings; choose from"):
        parse_methods("Sift, HOG")
    with pytest.raises(InputError, match="^--methods ' , ': choose from fisher, vae, pca, raw"):
        parse_methods(" , ")


@pytest.mark.parametrize("field, value, message", [
    ("methods", ("sift",), r"^methods must be a tuple of names from fisher, vae, pca, raw, got \('sift',\)"),
    ("methods", "fisher,pca", r"^methods must be a tuple .* \(parse_methods turns 'fisher,pca' into one\)$"),
    ("methods", (), r"^methods must be a tuple"),
    ("max_train", 0, r"^max_train must be a whole number >= 2, got 0$"),
    ("max_train", 1, r"^max_train must be a whole number >= 2, got 1$"),  # was sklearn's error: a one-class probe
    ("seed", -1, r"^seed must be a whole number in \[0, 2\*\*32 - 1\], got -1$"),
    ("seed", 2**32, r"^seed must be a whole number in \[0, 2\*\*32 - 1\], got 4294967296$"),  # was numpy's error
    ("vae_seconds", float("nan"), r"^vae_seconds must be positive, got nan$"),
])
def test_library_settings_are_checked_when_made(field, value, message):
    # Before: ("sift",) ran an evaluation of nothing, max_train=0 failed deep in numpy.
    with pytest.raises(InputError, match=message):
        Settings(**{field: value})


SOURCES = {"train": {"source": "digits", "location": "sklearn", "split": "train"},
           "test": {"source": "digits", "location": "sklearn", "split": "test"}}


def test_library_evaluate_validates_against_the_schema(digits):
    settings = Settings(methods=("pca", "raw"), quick=True)
    report, artifacts = evaluate(digits.train, digits.test, settings, data=SOURCES)
    _validate({"name": "library", **report, "figures": []})
    assert report["encodings"]["pca"]["dim"] == 64 and report["vae"] is None  # the VAE latent's size, all 64 pixels
    assert set(artifacts["reconstructions"]) == {"pca", "ridge_pca", "ridge_raw"}
    text = markdown_report({"name": "library", **report})
    assert '"acc @100 labels" is from one stratified draw;' in text  # --quick draws once
    assert "Pixels are in [0, 1]. PCA has as many components as the evaluation VAE's latent (64).\n" in text
    assert "posterior's means" not in text  # no vae row, so no note on its codes
    with pytest.raises(fvae.DataError, match="^the test split has no labels, and evaluate needs labelled test images"):
        evaluate(digits.train, Split(digits.test.images, None), settings)
    with pytest.raises(fvae.DataError, match="^mine.npy has no labels, and evaluate needs labelled test images"):
        evaluate(digits.train, Split(digits.test.images, None), settings, data={"test": {"source": "mine.npy"}})
    with pytest.raises(fvae.DataError, match="^train images are 8x8, test images 8x7: they must have the same size$"):
        evaluate(digits.train, Split(digits.test.images[:, :, :7], digits.test.labels), settings)
    # before: scikit-learn's traceback from the logistic probe
    one_class = Split(digits.train.images, np.full(len(digits.train), 3))
    with pytest.raises(fvae.DataError, match="^mine.npz: its train images are all of class three, and evaluate's "
                                             "classifiers need two classes or more$"):
        evaluate(one_class, digits.test, settings,
                 data={"train": {"source": "mine.npz"}, "class_names": ["zero", "one", "two", "three"]})


def test_library_evaluate_checks_splits_built_by_hand_as_the_loaders_check_files(digits):
    """Before: labels one short of the images were scored without a word, and string labels, flat
    images or float pixels ended in numpy's errors (int(), unpacking, void type promotion)."""
    settings = Settings(methods=("pca", "raw"), quick=True)
    train, test = digits.train, digits.test
    refused = {
        "the train split: 1437 images but labels of shape (1436,)": Split(train.images, train.labels[:-1]),
        "the train split: expected images of shape (n, h, w), found (1437, 64): one flat image per row? reshape "
        "them first: x.reshape(-1, 8, 8)":
            Split(train.images.reshape(len(train), -1), train.labels),
        "the train split: labels must be integers, found dtype <U1 (class names? number them: "
        "np.unique(y, return_inverse=True)[1])": Split(train.images, np.array(list("abcdefghij"))[train.labels]),
    }
    for message, split in refused.items():
        with pytest.raises(fvae.DataError, match=f"^{re.escape(message)}$"):
            evaluate(split, test, settings)
    reference, _ = evaluate(train, test, settings)
    # what the loaders take from a file is taken here too: pixels in [0, 1], a list, a column of labels
    as_read, _ = evaluate(Split(train.images / 255.0, list(train.labels)), Split(test.images, test.labels[:, None]),
                          settings)
    for name in ("pca", "raw"):
        assert (as_read["encodings"][name]["classification"]["logistic"]["accuracy"]
                == reference["encodings"][name]["classification"]["logistic"]["accuracy"])


def test_one_test_image_gets_no_t_test_p_value_rather_than_nan(digits):
    """Before: report.json held "p_value": NaN (not JSON) and the reading said "p = nan"."""
    one = Split(digits.test.images[:1], digits.test.labels[:1])
    report, _ = evaluate(digits.train, one, Settings(methods=("pca", "raw"), quick=True), data=SOURCES)
    _validate({"name": "one", **report, "figures": []})
    (test,) = report["paired_tests"]["ridge"]
    assert test["encodings"] == ["pca", "raw"] and test["p_value"] is None
    text = markdown_report({"name": "one", **report})
    assert "test: digits (1 image), 8x8 pixels" in text
    assert "nan" not in text
    ridge_tests = {"paired_tests": {"ridge": [test]}}  # the reading's sentence where it compares two encodings
    assert _significance(ridge_tests, "ridge", ["pca"], ["raw"]) == ", a difference one test image is too few to test"
    assert paired_error_tests({"pca": np.array([0.5]), "raw": np.array([0.5])})[0]["p_value"] == 1.0  # no difference


def test_a_full_run_draws_the_labelled_images_three_times_and_reads_their_spread(digits):
    report, _ = evaluate(digits.train, digits.test, Settings(methods=("pca", "raw")), data=SOURCES)
    _validate({"name": "full", **report, "figures": []})
    point = report["encodings"]["raw"]["label_efficiency"][0]
    assert point["n_labels"] == 100 and len(point["accuracies"]) == 3
    assert point["accuracy_std"] == pytest.approx(np.std(point["accuracies"]))
    line = fvae.evaluate.reading(report)[2]
    leader = line.split(", ")[1].split(" ")[0]
    spread = report["encodings"][leader]["label_efficiency"][0]["accuracy_std"]
    assert line.endswith(f" (mean of 3 draws of the labelled images, sd {100 * spread:.1f} points).")


PUBLIC_EVALUATE = """
import sys
import fvae
{first}
from fvae.evaluate import Settings
data = fvae.load_dataset("digits")
report, _ = fvae.evaluate(data.train, data.test, Settings(methods=("raw",), quick=True))
print(report["encodings"]["raw"]["classification"]["logistic"]["accuracy"])
assert fvae.evaluate is sys.modules["fvae.evaluate"] and "evaluate" in fvae.__all__
"""


@pytest.mark.parametrize("first", ["", "import fvae.evaluate", "from fvae.evaluate import evaluate"])
def test_fvae_evaluate_is_the_function_whatever_was_imported_first(digits, first):
    """The public API has ``fvae.evaluate(train, test)``; before, after ``import fvae`` it was an
    AttributeError, and once the module was imported, a module."""
    run = subprocess.run([sys.executable, "-c", PUBLIC_EVALUATE.format(first=first)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    expected = evaluate(digits.train, digits.test, Settings(methods=("raw",), quick=True))[0]
    assert float(run.stdout) == expected["encodings"]["raw"]["classification"]["logistic"]["accuracy"] > 0.9


def test_shared_images_are_found_whole_as_a_set_of_their_bytes_finds_them():
    rng = np.random.default_rng(0)
    others = rng.integers(0, 3, (300, 2, 3), dtype=np.uint8)  # few grey levels: many near misses
    images = np.concatenate([others[::7], rng.integers(0, 3, (200, 2, 3), dtype=np.uint8)])
    seen = {image.tobytes() for image in others}
    np.testing.assert_array_equal(shared_images(images, others), [image.tobytes() in seen for image in images])
    assert shared_images(images, others)[:43].all()
    as_floats = shared_images(images.astype(np.float32) / 255, others.astype(np.float32) / 255)
    np.testing.assert_array_equal(as_floats, shared_images(images, others))


def test_test_images_that_are_train_images_are_counted_and_all_of_them_refused(digits, caplog):
    settings = Settings(methods=("raw",), quick=True)
    with pytest.raises(fvae.DataError, match="^every test image of mine.npz is also a train image: the scores would "
                                             "hold nothing out$"):
        evaluate(digits.train, Split(digits.train.images[:50], digits.train.labels[:50]), settings,
                 data={"test": {"source": "mine.npz"}})
    leaky = Split(np.concatenate([digits.test.images, digits.train.images[:5]]),
                  np.concatenate([digits.test.labels, digits.train.labels[:5]]))
    sources = {what: {"source": "digits", "location": "sklearn", "split": what} for what in ("train", "test")}
    with caplog.at_level("WARNING", logger="fvae"):
        report, _ = evaluate(digits.train, leaky, settings, data=sources)
    assert report["data"]["n_test_in_train"] == 5
    assert caplog.messages == ["5 of the 365 test images of digits are also train images, pixel for pixel: the "
                               "scores count them as held out"]
    assert "test: digits (365 images, 5 of them also train images), 8x8" in markdown_report({"name": "x", **report})
    _validate({"name": "x", **report, "figures": []})
    assert evaluate(digits.train, digits.test, settings)[0]["data"]["n_test_in_train"] == 0
    one = Split(np.concatenate([digits.test.images, digits.train.images[:1]]),
                np.concatenate([digits.test.labels, digits.train.labels[:1]]))
    caplog.clear()
    with caplog.at_level("WARNING", logger="fvae"):
        report, _ = evaluate(digits.train, one, settings, data=sources)
    assert caplog.messages == ["1 of the 361 test images of digits is also a train image, pixel for pixel: the "
                               "scores count it as held out"]
    assert "test: digits (361 images, 1 of them also a train image), 8x8" in markdown_report({"name": "x", **report})


def test_test_images_of_classes_no_train_image_has_are_counted_and_all_of_them_refused(digits, caplog):
    settings = Settings(methods=("raw",), quick=True)
    low = digits.train.labels < 5
    train = Split(digits.train.images[low], digits.train.labels[low])  # classes 0..4 only
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    sources = {"train": {"source": "low.npz", "location": "low.npz", "split": "all"},
               "test": {"source": "mine.npz", "location": "mine.npz", "split": "all"}, "class_names": names}
    high = digits.test.labels >= 5
    with pytest.raises(fvae.DataError, match="^every test image of mine.npz is of classes five, six, seven, eight, "
                                             "nine, which no train image has: no classifier could get one right$"):
        evaluate(train, Split(digits.test.images[high], digits.test.labels[high]), settings, data=sources)
    with caplog.at_level("WARNING", logger="fvae"):
        report, _ = evaluate(train, digits.test, settings, data=sources)
    n_high = int(high.sum())
    assert report["data"]["n_test_of_untrained_classes"] == n_high and report["data"]["untrained_classes"] == [5, 6, 7, 8, 9]
    assert caplog.messages == [f"{n_high} of the {len(digits.test)} test images of mine.npz are of classes five, six, "
                               "seven, eight, nine, which no train image has: the classifiers' scores count them as "
                               "mistakes"]
    # every one of them is a mistake, so the accuracy is at most the share of the other classes
    assert report["encodings"]["raw"]["classification"]["logistic"]["accuracy"] <= 1 - n_high / len(digits.test)
    assert (f"test: mine.npz ({len(digits.test)} images, {n_high} of them of classes five, six, seven, eight, nine, "
            "which no train image has), 8x8") in markdown_report({"name": "x", **report})
    _validate({"name": "x", **report, "figures": []})
    one = (digits.test.labels <= 5) & (np.cumsum(digits.test.labels == 5) <= 1)  # a single image of class 5
    caplog.clear()
    with caplog.at_level("WARNING", logger="fvae"):
        report, _ = evaluate(train, Split(digits.test.images[one], digits.test.labels[one]), settings, data=sources)
    assert caplog.messages == [f"1 of the {int(one.sum())} test images of mine.npz is of class five, which no train "
                               "image has: the classifiers' scores count it as mistakes"]
    assert "1 of them of class five, which no train image has), 8x8" in markdown_report({"name": "x", **report})
    caplog.clear()
    with caplog.at_level("WARNING", logger="fvae"):
        report, _ = evaluate(digits.train, digits.test, settings, data=sources)
    assert caplog.messages == [] and report["data"]["n_test_of_untrained_classes"] == 0
    assert "which no train image has" not in markdown_report({"name": "x", **report})


def test_a_max_train_under_the_number_of_classes_is_refused(digits, tmp_path):
    """--max-train 5 on the ten digits fitted the probes on five classes, and the test images of
    the other five counted as mistakes, without a word."""
    with pytest.raises(InputError, match="^max_train 5 is fewer than the 10 classes of the train images: the probes "
                                         "need an image of each, so give at least 10$"):
        evaluate(digits.train, digits.test, Settings(methods=("raw",), quick=True, max_train=5))
    report, _ = evaluate(digits.train, digits.test, Settings(methods=("raw",), quick=True, max_train=10))
    assert report["data"]["n_probe_train"] == 10
    result = fvae_cli("evaluate", "--data", "digits", "--methods", "raw", "--max-train", "5", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == (
        "fvae: error: --max-train 5 is fewer than the 10 classes of the train images: the probes need an image of "
        "each, so give at least 10\n")
    assert not (tmp_path / "runs").exists()


def test_a_stratified_subset_smaller_than_the_classes_takes_one_image_of_each_of_n_classes(digits):
    labels = digits.train.labels
    for n in (2, 5, 9):
        subset = stratified_subset(labels, n, seed=n)
        assert len(np.unique(labels[subset])) == n  # before: drawn at random, often two of one class
        np.testing.assert_array_equal(subset, stratified_subset(labels, n, seed=n))
    # a class of one image cannot be stratified: it is kept all the same
    lonely = np.r_[np.zeros(99, int), 1]
    subset = stratified_subset(lonely, 10, seed=0)
    assert len(subset) == len(set(subset)) == 10 and set(lonely[subset]) == {0, 1}


def test_the_report_and_its_figures_name_the_classes(digits, tmp_path, monkeypatch):
    from fvae import report as report_module

    def only(split, digits_kept):
        kept = np.isin(split.labels, digits_kept)
        return Split(split.images[kept], split.labels[kept])

    train, test = only(digits.train, [3, 7]), only(digits.test, [3, 7])
    settings = Settings(methods=("pca", "raw"), quick=True)
    names = [f"digit {i}" for i in range(10)]  # label i is names[i], as a source gives them
    report, artifacts = evaluate(train, test, settings, data={"class_names": names})
    assert report["data"]["classes"] == [3, 7] and report["data"]["class_names"] == ["digit 3", "digit 7"]
    assert evaluate(train, test, settings)[0]["data"]["class_names"] == ["3", "7"]  # unnamed: the labels

    figures = {}

    def keep_figure(fig, path, force, tight=False):
        figures[Path(path).name] = fig
        return Path(path)

    monkeypatch.setattr(report_module, "_save", keep_figure)
    report_module.evaluation_figures({"name": "named", **report}, artifacts, tmp_path)
    confusion = figures["confusion_matrices.png"].axes[0]
    for ticks in (confusion.get_xticklabels(), confusion.get_yticklabels()):
        assert [t.get_text() for t in ticks] == ["digit 3", "digit 7"]  # before: 0 and 1, the matrix's rows
    colour_bar = figures["embeddings.png"].axes[-1]  # one colour and one named tick per class
    assert [t.get_text() for t in colour_bar.get_yticklabels()] == ["digit 3", "digit 7"]


# -- the CLI end to end ----------------------------------------------------------------------------


def test_cli_writes_every_file_valid(cli_run):
    from PIL import Image

    cwd, result = cli_run
    assert result.returncode == 0, result.stderr
    run = cwd / "runs" / "d"
    report = json.loads((run / "report.json").read_text())
    _validate(report)
    assert list(report["encodings"]) == ["fisher", "vae", "pca", "raw"]
    assert report["settings"]["quick"] is True and report["data"]["n_test"] == 360
    for name in FIGURES:
        assert f"figures/{name}.png" in report["figures"]
        with Image.open(run / "figures" / f"{name}.png") as picture:
            assert picture.format == "PNG" and picture.size[0] > 100
    markdown = (run / "report.md").read_text()
    assert markdown.startswith("# fvae evaluate: d\n") and "## Reading" in markdown
    assert all(f"](figures/{name}.png)" in markdown for name in FIGURES)
    for encoding in ("fisher", "vae", "pca", "raw"):
        assert f"| {encoding} " in markdown and f"| {encoding} " in result.stdout  # the table, printed too
    fisher_dim = report["encodings"]["fisher"]["dim"]
    assert fisher_dim > 1000 and f"| fisher   | {fisher_dim:,} |" in markdown  # 8,960, not 8960
    assert (run / "models" / "fisher.npz").exists() and (run / "models" / "vae.npz").exists()
    assert report["encodings"]["vae"]["cost"]["model_path"] == "models/vae.npz"
    assert not list((cwd / "runs").glob(".*"))  # no temporary folder left behind


@pytest.mark.parametrize("likelihood, binarization, note", [
    ("bernoulli", "none", "cross-entropy against the grey pixels"),
    ("gaussian", "threshold", "nats of a density, not of a probability"),  # before: no word of it
    ("bernoulli", "dynamic", None),  # binarized pixels: the ELBO papers report
    ("bernoulli", "threshold", None),
])
def test_the_report_says_when_the_vae_s_elbo_is_not_one_of_binarized_images(likelihood, binarization, note):
    from fvae.report import _vae_targets_note

    report = {"settings": {"vae_params": {"likelihood": likelihood, "binarization": binarization}}}
    said = _vae_targets_note(report)
    if note is None:
        assert said == ""
    else:
        assert note in said and said.endswith(" the ELBOs of binarized images that papers report.")


def test_cli_report_numbers_are_consistent(cli_run):
    cwd, result = cli_run
    assert result.returncode == 0, result.stderr
    report = json.loads((cwd / "runs" / "d" / "report.json").read_text())
    enc = report["encodings"]
    assert enc["raw"]["classification"]["logistic"]["accuracy"] > 0.9
    assert enc["fisher"]["classification"]["logistic"]["accuracy"] > 0.9
    assert enc["pca"]["dim"] == report["vae"]["test"]["latent_dim"] == 64
    assert enc["vae"]["dim"] == 128  # means and log-variances
    # the saved model encodes them too: `fvae encode --model runs/d/models/vae.npz` gave 64 means only
    assert fvae.load(cwd / "runs" / "d" / "models" / "vae.npz").n_features_out_ == 128
    fisher_params = report["settings"]["fisher_params"]  # as used: the patches fit chose for 8x8 images
    assert (fisher_params["patch_size"], fisher_params["stride"], fisher_params["pca_components"]) == (4, 1, 12)
    assert report["settings"]["vae_params"]["latent_dim"] == 64
    # trained on the grey pixels every encoding is scored on reconstructing, and the report says
    # its ELBO is not one of binarized images
    assert report["settings"]["vae_params"]["binarization"] == "none"
    assert "cross-entropy against the grey pixels" in (cwd / "runs" / "d" / "report.md").read_text()
    assert report["data"]["class_names"] == [str(digit) for digit in range(10)]
    # a parameter fit does not choose stays as given: image_shape None (the images were not flat)
    assert fisher_params["image_shape"] is None and report["settings"]["vae_params"]["image_shape"] is None
    assert enc["raw"]["reconstruction"]["ridge"]["mse"] < 1e-3  # pixels reconstruct themselves
    assert enc["vae"]["reconstruction"]["own"]["bce"] > 0
    assert report["vae"]["test"]["iwae_bound"] >= report["vae"]["test"]["elbo"] - 0.5
    for e in enc.values():
        assert e["label_efficiency"][-1]["accuracy_mean"] == e["classification"]["logistic"]["accuracy"]
        assert np.asarray(e["classification"]["knn"]["confusion"]).sum() == 360
    pairs = [[a, b] for i, a in enumerate(enc) for b in list(enc)[i + 1:]]
    for probe in ("logistic", "knn"):  # every two encodings, their accuracies apart by their disagreements
        tests = report["paired_tests"][probe]
        assert [t["encodings"] for t in tests] == pairs
        for t in tests:
            first, second = (enc[name]["classification"][probe]["accuracy"] for name in t["encodings"])
            assert round(360 * (first - second)) == t["only_first_correct"] - t["only_second_correct"]
            assert 0 < t["p_value"] <= 1
    # the reconstructions' tests: their mean differences are the differences of the table's MSEs
    assert [t["encodings"] for t in report["paired_tests"]["ridge"]] == pairs
    for t in report["paired_tests"]["ridge"]:
        first, second = (enc[name]["reconstruction"]["ridge"]["mse"] for name in t["encodings"])
        assert t["mean_difference"] == pytest.approx(first - second, abs=1e-7)
    (own,) = report["paired_tests"]["own"]
    assert own["encodings"] == ["vae", "pca"] and own["first_lower"] + own["second_lower"] == 360
    mse = {name: enc[name]["reconstruction"]["own"]["mse"] for name in ("vae", "pca")}
    assert own["mean_difference"] == pytest.approx(mse["vae"] - mse["pca"], abs=1e-7)
    assert result.stdout.splitlines()[-1].endswith(" figures and models/fisher.npz, models/vae.npz")
    training = report["vae"]["training"]
    assert f" Trained {training['epochs_run']} epochs ({training['stopped_by']})" in markdown_report(report)
    training["epochs_run"] = 1  # a --vae-seconds too short for a second epoch read "Trained 1 epochs"
    assert f" Trained 1 epoch ({training['stopped_by']}), best epoch " in markdown_report(report)


def test_cli_reuses_saved_models_and_refuses_to_overwrite(cli_run, tmp_path):
    cwd, result = cli_run
    assert result.returncode == 0, result.stderr
    first = json.loads((cwd / "runs" / "d" / "report.json").read_text())
    before = (cwd / "runs" / "d" / "report.json").stat().st_mtime_ns

    again = fvae_cli("evaluate", "--data", "digits", "--quick", "--name", "d", cwd=cwd)
    assert again.returncode == 2 and again.stderr == (
        "fvae: error: runs/d exists; pass --force to overwrite it, or --name to write another run beside it\n")
    assert (cwd / "runs" / "d" / "report.json").stat().st_mtime_ns == before

    # the same split from two files: --data (train only) and --test-data
    digits = fvae.load_dataset("digits")
    np.savez(tmp_path / "train.npz", x_train=digits.train.images, y_train=digits.train.labels)
    np.savez(tmp_path / "test.npz", x_test=digits.test.images, y_test=digits.test.labels)
    model = cwd / "runs" / "d" / "models" / "fisher.npz"
    reuse = fvae_cli("evaluate", "--data", tmp_path / "train.npz", "--test-data", tmp_path / "test.npz", "--quick",
                     "--methods", "fisher,raw", "--fisher-model", model, "--runs-dir", tmp_path, "--name", "reuse",
                     cwd=cwd)
    assert reuse.returncode == 0, reuse.stderr
    second = json.loads((tmp_path / "reuse" / "report.json").read_text())
    _validate(second)
    assert second["encodings"]["fisher"]["cost"]["reused_model"] is True
    assert reuse.stdout.splitlines()[-1].endswith(" figures")  # it fitted no model, so names none
    assert not (tmp_path / "reuse" / "models").exists()
    assert second["data"]["train"]["split"] == "all" and second["data"]["test"]["source"].endswith("test.npz")
    assert second["encodings"]["fisher"]["classification"] == first["encodings"]["fisher"]["classification"]
    assert "vae_samples.png" not in " ".join(second["figures"])


def test_macro_f1_averages_over_the_classes_tested_or_predicted_not_all_the_train_classes():
    """A perfect probe on a test set of 3 of the train source's 10 classes scored macro-F1 0.3:
    the 7 classes with no test image and no prediction counted as F1 0."""
    from fvae.evaluate import _scores

    classes = np.arange(10)
    perfect = _scores([0, 1, 2, 2], [0, 1, 2, 2], classes)
    assert perfect["macro_f1"] == 1.0 and perfect["accuracy"] == 1.0
    assert np.array(perfect["confusion"]).shape == (10, 10)  # every train class still has its row and column
    # a class predicted but never tested counts, with F1 0: classes 0 (F1 1), 1 (F1 2/3), 5 (F1 0)
    wrong = _scores([0, 1, 1], [0, 1, 5], classes)
    assert wrong["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_cli_a_test_folder_of_some_classes_is_scored_by_class_name(tmp_path, digits):
    """Two image folders number their classes each by its own subfolders: a test folder of dogs
    and foxes has them as 0 and 1, which the train folder calls cat and dog."""
    from fvae.evaluate import load_splits

    write_named_digits(tmp_path / "train", digits.train, {3: "cat", 7: "dog", 0: "fox"}, per_class=40)
    write_named_digits(tmp_path / "test", digits.test, {7: "dog", 0: "fox"}, per_class=20)
    train, test, description = load_splits(tmp_path / "train", tmp_path / "test")
    assert description["class_names"] == ["cat", "dog", "fox"]
    # every image of the test folder (before: the 20% fvae holds out of a folder), named as the train folder
    assert np.bincount(test.labels).tolist() == [0, 20, 20]  # (before: 0 and 1, cat and dog to the train folder)
    assert description["test"]["split"] == "all"

    result = fvae_cli("evaluate", "--data", "train", "--test-data", "test", "--methods", "raw", "--quick", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "runs" / "train" / "report.json").read_text())
    assert report["encodings"]["raw"]["classification"]["logistic"]["accuracy"] >= 0.9  # before: 0.0

    write_image_folder(tmp_path / "test", digits.test.images[:1], ["wolf"])
    unknown = fvae_cli("evaluate", "--data", "train", "--test-data", "test", "--methods", "raw", "--name", "wolf",
                       cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "Traceback" not in unknown.stderr
    assert "test: class wolf is not a class of train (cat, dog, fox)" in unknown.stderr
    assert not (tmp_path / "runs" / "wolf").exists()


def test_cli_folders_of_digit_subfolders_are_scored_by_class_name(tmp_path, digits):
    """A test folder of subfolders "1" and "2" numbers them 0 and 1; to a train folder of "0", "1"
    and "2" they are classes 1 and 2."""
    write_named_digits(tmp_path / "train", digits.train, {0: "0", 1: "1", 2: "2"}, per_class=40)
    write_named_digits(tmp_path / "test", digits.test, {1: "1", 2: "2"}, per_class=20)
    result = fvae_cli("evaluate", "--data", "train", "--test-data", "test", "--methods", "raw", "--quick", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "runs" / "train" / "report.json").read_text())
    assert report["data"]["class_names"] == ["0", "1", "2"]
    assert report["encodings"]["raw"]["classification"]["logistic"]["accuracy"] >= 0.9  # before: 0.0


def test_cli_warns_of_test_images_whose_class_the_train_folder_lacks(tmp_path, digits):
    """A train/test folder whose test folder has a class subfolder the train folder lacks: before,
    the report counted those images as mistakes without a word."""
    write_named_digits(tmp_path / "pets" / "train", digits.train, {0: "cat", 1: "dog"}, per_class=30)
    write_named_digits(tmp_path / "pets" / "test", digits.test, {0: "cat", 1: "dog", 2: "fox"}, per_class=10)
    result = fvae_cli("evaluate", "--data", "pets", "--methods", "raw", "--quick", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ("fvae: WARNING: 10 of the 30 test images of pets are of class fox, which no train image "
                             "has: the classifiers' scores count them as mistakes\n")
    report = (tmp_path / "runs" / "pets" / "report.md").read_text()
    assert "test: pets (30 images, 10 of them of class fox, which no train image has), 8x8 pixels, 3 classes" in report
    shutil.rmtree(tmp_path / "pets" / "test" / "cat")
    shutil.rmtree(tmp_path / "pets" / "test" / "dog")
    refused = fvae_cli("evaluate", "--data", "pets", "--methods", "raw", "--name", "foxes", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr == ("fvae: error: every test image of pets is of class fox, which no train image has: "
                              "no classifier could get one right\n")
    assert not (tmp_path / "runs" / "foxes").exists()


def test_cli_evaluates_a_folder_of_four_images(tmp_path, digits):
    """Two classes of two images: fvae holds one out, which neither scikit-learn's stratified
    split nor the embeddings' PCA to 2-D took (two tracebacks)."""
    write_named_digits(tmp_path / "four", digits.train, {3: "three", 7: "seven"}, per_class=2)
    result = fvae_cli("evaluate", "--data", "four", "--methods", "pca,raw", "--quick", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "runs" / "four" / "report.json").read_text())
    assert (report["data"]["n_train"], report["data"]["n_test"]) == (3, 1)
    assert (tmp_path / "runs" / "four" / "figures" / "embeddings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_embeddings_of_one_code_or_of_one_dimension_are_drawn():
    """A test split of one image has no principal axes: it sits at the origin. 1-D codes (a VAE
    with latent_dim 1) are spread by class, a row each (before: an IndexError)."""
    from fvae import report

    plt = report._pyplot()
    fig, (one, line, wide) = plt.subplots(1, 3)
    np.testing.assert_array_equal(report._scatter_2d(one, np.ones((1, 5)), np.array([1]), "one").get_offsets(),
                                  [[0.0, 0.0]])
    points = report._scatter_2d(line, np.array([[0.5], [-1.0], [2.0]]), np.array([7, 3, 7]), "1-D")
    np.testing.assert_array_equal(points.get_offsets(), [[0.5, 1], [-1.0, 0], [2.0, 1]])
    assert [tick.get_text() for tick in line.get_yticklabels()] == ["3", "7"] and line.get_ylabel() == "class"
    codes = np.random.default_rng(0).normal(size=(20, 4))
    from sklearn.decomposition import PCA

    np.testing.assert_allclose(report._scatter_2d(wide, codes, None, "4-D").get_offsets(),
                               PCA(n_components=2, random_state=0).fit_transform(codes))
    plt.close(fig)


def test_cli_bad_input_is_one_line_and_leaves_nothing(tmp_path):
    np.savez(tmp_path / "unlabelled.npz", x_train=np.zeros((20, 8, 8), np.uint8), x_test=np.zeros((5, 8, 8), np.uint8))
    np.savez(tmp_path / "train.npz", x_train=np.arange(20 * 64, dtype=np.uint8).reshape(20, 8, 8), y_train=np.arange(20) % 2)
    np.save(tmp_path / "images.npy", np.zeros((20, 8, 8), np.uint8))
    np.savez(tmp_path / "cats.npz", x=np.arange(20 * 64, dtype=np.uint8).reshape(20, 8, 8), y=np.array(["cat"] * 20))
    for name in ("pets.npz", "copy.npz"):
        np.savez(tmp_path / name, x=np.arange(20 * 64, dtype=np.uint8).reshape(20, 8, 8), y=np.array(["cat", "dog"] * 10))
    bigger = np.random.default_rng(0).integers(0, 256, (40, 12, 12), dtype=np.uint8)
    fvae.FisherVectorEncoder(n_components=2, pca_components=4, patch_size=4, stride=2, spatial_pyramid=False,
                             random_state=0).fit(bigger).save(tmp_path / "f12.npz")
    cases = [
        (["--data", "digits", "--methods", "fisher", "--fisher-model", "f12.npz"],
         "fvae: error: images are 8x8, but f12.npz was fitted on 12x12 images (--image-size 12x12 resizes an image "
         "folder's files)\n"),
        (["--data", "unlabelled.npz", "--methods", "raw"],
         "fvae: error: unlabelled.npz has no labels, and evaluate needs labelled train images"),
        # was "has no test split, only train images; this needs a test split", with no way round it
        (["--data", "train.npz", "--methods", "raw"],
         "fvae: error: train.npz has only train images, and evaluate tests on the test split of --data: pass a source "
         "of test images as --test-data\n"),
        # was "has no train split, only test images; this needs a train split", with no way round it
        (["--data", "images.npy", "--methods", "raw"],
         "fvae: error: images.npy has only test images, and evaluate trains on --data: pass a source of train images "
         "as --data, and this one as --test-data\n"),
        (["--data", "digits", "--test-data", "images.npy", "--methods", "raw"],
         "images.npy has no labels, and evaluate needs labelled test images: give an idx folder, a Keras-style .npz "
         "or an image folder with a subfolder per class\n"),
        # a wrong saved model fails before anything is fitted (here: fisher)
        (["--data", "digits", "--methods", "fisher,vae", "--vae-model", "f12.npz"],
         "fvae: error: f12.npz: holds a 'fisher' model, not a 'vae' model\n"),
        (["--data", "digits", "--methods", "raw", "--fisher-model", "f12.npz"],
         "a saved fisher model (f12.npz) is given, but fisher is not among the methods compared (raw): "
         "add fisher to them, or leave the model out\n"),
        # the saved models are checked from their headers before the data is read
        (["--data", "nowhere", "--methods", "fisher", "--fisher-model", "missing.npz"],
         "fvae: error: missing.npz: no such model file\n"),
        (["--data", "digits", "--methods", "fisher,sift"], "choose from fisher, vae, pca, raw"),
        (["--data", "digits", "--test-data", "nowhere"], "nowhere: no such file or folder"),
        (["--data", "digits", "--test-data", "digits", "--methods", "raw"],  # was scored on its own train images
         "fvae: error: --test-data digits is --data itself, whose every image trains: leave out --test-data to test "
         "on the test split of digits\n"),
        (["--data", "pets.npz", "--test-data", "copy.npz", "--methods", "raw"],
         "fvae: error: every test image of copy.npz is also a train image: the scores would hold nothing out\n"),
        (["--data", "cats.npz", "--methods", "raw"],  # was scikit-learn's traceback
         "fvae: error: cats.npz: its train images are all of class cat, and evaluate's classifiers need two "
         "classes or more\n"),
    ]
    for args, message in cases:
        result = fvae_cli("evaluate", *args, "--name", "bad", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("fvae: error:") and message in result.stderr
        assert "Traceback" not in result.stderr and "fitting" not in result.stderr
        assert not (tmp_path / "runs").exists()  # nor the folder of runs it would have made


def _encoding(dim, logistic, knn, few, ridge, own=None):
    """The parts of one report["encodings"] entry that ``reading`` looks at."""
    entry = {"dim": dim, "cost": {"encode_images_per_second": 1000.0},
             "classification": {"logistic": {"accuracy": logistic}, "knn": {"accuracy": knn}},
             "label_efficiency": [{"n_labels": 100, "accuracy_mean": few}],
             "reconstruction": {"ridge": {"mse": ridge}}}
    if own is not None:
        entry["reconstruction"]["own"] = {"mse": own, "psnr": -10 * np.log10(max(own, 1e-12))}
    return entry


def test_reading_names_every_encoding_in_a_tie_and_says_when_pca_is_lossless():
    report = {"data": {"image_shape": [8, 8]}, "encodings": {
        "fisher": _encoding(8960, 0.99, 0.9667, 0.91, 0.0049),
        "vae": _encoding(128, 0.92, 0.8278, 0.83, 0.0224, own=0.0566),
        "pca": _encoding(64, 0.95, 0.9778, 0.77, 0.0021, own=0.0),
        "raw": _encoding(64, 0.99, 0.9778, 0.88, 0.0),
    }}
    lines = fvae.evaluate.reading(report)
    assert lines[0] == ("For classification, **fisher** and **raw** codes serve best: logistic regression "
                        "reaches 99.0% on the test set, against 95.0% for pca.")
    assert lines[1] == "With 5-nearest neighbours instead, pca and raw lead (97.8%), against 96.7% for fisher."
    assert lines[4] == ("PCA with 64 components keeps all 64 pixels of 8x8 images, so it reconstructs exactly: "
                        "no yardstick for the VAE's decoder (MSE 0.0566) at this size.")
    # a narrower PCA is the yardstick
    report["data"]["image_shape"] = [28, 28]
    assert fvae.evaluate.reading(report)[4].startswith("The VAE's own decoder does not beat PCA of the same dimension (64)")
    assert fvae.evaluate.pca_size_note(report) == "PCA has as many components as the evaluation VAE's latent (64)."


def test_reading_says_tie_when_every_encoding_scores_the_same():
    # was "fisher, pca and raw lead (100.0%)", as if someone trailed
    report = {"data": {"image_shape": [40, 60]}, "encodings": {
        "fisher": _encoding(21760, 1.0, 1.0, 0.9, 0.0337),
        "pca": _encoding(47, 1.0, 1.0, 0.9, 0.0292, own=0.0292),
        "raw": _encoding(2400, 1.0, 0.95, 0.9, 0.0),
    }}
    lines = fvae.evaluate.reading(report)
    assert lines[0] == ("For classification, **fisher**, **pca** and **raw** codes serve equally well: logistic "
                        "regression reaches 100.0% on the test set.")
    assert lines[1] == "With 5-nearest neighbours instead, fisher and pca lead (100.0%), against 95.0% for raw."
    assert lines[2] == "With only 100 labelled train images, fisher, pca and raw tie at 90.0%."
    # three draws of the 100 labelled images: their spread is said (one draw's is unknown)
    report["encodings"]["fisher"]["label_efficiency"][0].update(accuracies=[0.88, 0.9, 0.92], accuracy_std=0.01633)
    assert fvae.evaluate.reading(report)[2] == ("With only 100 labelled train images, fisher, pca and raw tie at "
                                                "90.0% (mean of 3 draws of the labelled images, sd 1.6 points).")
    report["encodings"]["raw"]["classification"]["knn"]["accuracy"] = 1.0
    assert fvae.evaluate.reading(report)[1] == "With 5-nearest neighbours instead, fisher, pca and raw tie (100.0%)."
    assert lines[-1] == ("Cost: fisher codes are the widest (21,760 dims, 1,000 images/s to encode); pca 47 dims, "
                         "raw 2,400 dims.")
    # PCA of 8x8 images keeps all 64 pixels: was "pca codes are the widest (64 dims ...); raw 64 dims"
    report["encodings"] = {"pca": _encoding(64, 0.9, 0.9, 0.8, 0.01, own=0.0), "raw": _encoding(64, 0.9, 0.9, 0.8, 0.0)}
    report["encodings"]["raw"]["cost"]["encode_images_per_second"] = 2e6
    assert fvae.evaluate.reading(report)[-1] == ("Cost: pca and raw codes are equally wide (64 dims; 1,000 and "
                                                 "2,000,000 images/s to encode).")
    # one learned encoding beside raw: was "pca codes keep the most pixel information", though raw keeps more
    assert fvae.evaluate.reading(report)[3] == ("Through a linear probe (ridge from codes to pixels), pca codes "
                                                "reconstruct the test images with MSE 0.0100 (raw pixels, the "
                                                "probe's ceiling: 0.0000).")
    # no ceiling where the raw pixels' probe does worse (three train images: before, "the probe's ceiling: 0.0493")
    report["encodings"]["raw"]["reconstruction"]["ridge"]["mse"] = 0.05
    assert fvae.evaluate.reading(report)[3].endswith("with MSE 0.0100 (raw pixels, through the same probe: 0.0500).")
    report["encodings"]["raw"]["reconstruction"]["ridge"]["mse"] = 0.0
    report["encodings"]["vae"] = _encoding(32, 0.9, 0.9, 0.8, 0.01, own=0.02)
    assert fvae.evaluate.reading(report)[-1] == ("Cost: pca and raw codes are the widest (64 dims; 1,000 and "
                                                 "2,000,000 images/s to encode); vae 32 dims.")


def test_reading_gives_the_leaders_interval_and_whether_its_lead_is_significant():
    report = {"data": {"image_shape": [28, 28]}, "encodings": {
        "fisher": _encoding(21760, 0.982, 0.897, 0.83, 0.024),
        "vae": _encoding(128, 0.942, 0.951, 0.70, 0.013, own=0.009),
        "pca": _encoding(64, 0.90, 0.935, 0.62, 0.008, own=0.0095),
        "raw": _encoding(784, 0.90, 0.923, 0.71, 0.0),
    }}
    report["encodings"]["fisher"]["classification"]["logistic"]["accuracy_ci95"] = [0.9723, 0.9884]

    def pair(first, second, p_value):
        return {"encodings": [first, second], "only_first_correct": 0, "only_second_correct": 0, "p_value": p_value}

    report["paired_tests"] = {
        "logistic": [pair("fisher", "vae", 2e-9), pair("fisher", "pca", 1e-20), pair("vae", "pca", 1e-5)],
        "knn": [pair("fisher", "vae", 1e-8), pair("vae", "pca", 0.0312), pair("vae", "raw", 0.4)],
        "ridge": [pair("vae", "pca", 3e-4), pair("fisher", "pca", 1e-30)],
        "own": [pair("vae", "pca", 0.2)],
    }
    lines = fvae.evaluate.reading(report)
    assert lines[0] == ("For classification, **fisher** codes serve best: logistic regression reaches 98.2% "
                        "(95% CI 97.2-98.8%) on the test set, against 94.2% for vae, a difference significant at 5% "
                        "(McNemar's exact test on the test images: p < 0.001).")
    assert lines[1] == ("With 5-nearest neighbours instead, vae leads (95.1%), against 93.5% for pca, a difference "
                        "significant at 5% (p = 0.0312).")
    assert lines[3] == ("Through the same linear probe (ridge from codes to pixels), pca codes keep the most pixel "
                        "information of the learned encodings (test MSE 0.0080), against 0.0130 for vae, a difference significant at 5% "
                        "(paired t-test on the test images' errors: p < 0.001).")
    assert lines[4] == ("The VAE's own decoder beats PCA of the same dimension (64): MSE 0.0090 (20.5 dB) against "
                        "0.0095 (20.2 dB), a difference not significant at 5% (p = 0.2).")
    # two runners-up: the lead is significant only if it is over each of them (the largest p-value)
    report["encodings"]["raw"]["classification"]["knn"]["accuracy"] = 0.935
    assert fvae.evaluate.reading(report)[1] == ("With 5-nearest neighbours instead, vae leads (95.1%), against 93.5% "
                                                "for pca and raw, a difference not significant at 5% (p = 0.4).")


def test_reading_of_one_encoding_gives_its_numbers_without_a_contest():
    report = {"data": {"image_shape": [8, 8]}, "encodings": {"pca": _encoding(64, 0.95, 0.9778, 0.77, 0.0021, own=0.0)}}
    assert fvae.evaluate.reading(report) == [
        "Only **pca** was evaluated: logistic regression on its codes reaches 95.0% on the test set, 5-nearest "
        "neighbours 97.8%, and 77.0% with only 100 labelled train images.",
        "Through a linear probe (ridge from codes to pixels) its codes reconstruct the test images with MSE 0.0021.",
        "Cost: 64 dims, 1,000 images/s to encode.",
    ]
    report["encodings"]["pca"]["classification"]["logistic"]["accuracy_ci95"] = [0.9223, 0.9679]
    assert fvae.evaluate.reading(report)[0].startswith("Only **pca** was evaluated: logistic regression on its codes "
                                                      "reaches 95.0% (95% CI 92.2-96.8%) on the test set, ")
    report["encodings"] = {"raw": _encoding(64, 0.99, 0.9778, 0.88, 0.0)}  # pixels: nothing to reconstruct
    assert [line.split(":")[0] for line in fvae.evaluate.reading(report)] == ["Only **raw** was evaluated", "Cost"]


def test_fewer_probe_images_than_neighbours_are_reported_as_the_k_the_probe_used(digits):
    train, test = (digits.train.labels < 3), (digits.test.labels < 3)  # three classes, a probe image of each
    report, _ = evaluate(Split(digits.train.images[train], digits.train.labels[train]),
                         Split(digits.test.images[test], digits.test.labels[test]),
                         Settings(methods=("raw",), quick=True, max_train=3))
    assert report["encodings"]["raw"]["classification"]["knn"]["k"] == 3
    text = markdown_report({"name": "few", **report})
    assert "| 3-NN acc |" in text and "; 3-NN on the codes as they are;" in text  # before: 5-NN, as if it were
    assert "5-NN" not in text and "3-nearest neighbours" in text
    # one image per class: no cross-validation (was "C from [...] by 3-fold cross-validation")
    assert report["encodings"]["raw"]["classification"]["logistic"]["cv_folds"] is None
    _validate({"name": "few", **report, "data": {**report["data"], **SOURCES}, "figures": []})
    assert "standardized codes, C=1, as a class has a single probe image, too few for cross-validation;" in text
    report, _ = evaluate(digits.train, digits.test, Settings(methods=("raw",), quick=True, max_train=20))
    assert report["encodings"]["raw"]["classification"]["logistic"]["cv_folds"] == 2  # two images per class
    _validate({"name": "few", **report, "data": {**report["data"], **SOURCES}, "figures": []})
    assert "by 2-fold cross-validation on the train codes;" in markdown_report({"name": "few", **report})


def test_pca_of_few_train_images_keeps_one_component_fewer_than_images(digits):
    # 40 centred train images span 39 directions. A 40th component was rounding noise, which the
    # probes' standardization blew up: its ridge reconstruction (MSE 0.34) was worse than predicting
    # the train mean (0.076).
    index = np.concatenate([np.flatnonzero(digits.train.labels == c)[:4] for c in range(10)])
    train = fvae.Split(digits.train.images[index], digits.train.labels[index])
    report, _ = evaluate(train, digits.test, Settings(methods=("pca",), quick=True))
    pca = report["encodings"]["pca"]
    mean_image_mse = np.mean((digits.test.images / 255.0 - (train.images / 255.0).mean(axis=0)) ** 2)
    assert pca["dim"] == 39
    assert pca["reconstruction"]["ridge"]["mse"] < 0.1 * mean_image_mse


def test_pca_size_note_says_when_too_few_pixels_or_train_images_cap_it():
    report = {"data": {"image_shape": [28, 28]}, "vae": {"test": {"latent_dim": 64}},
              "encodings": {"vae": _encoding(128, 0.9, 0.9, 0.7, 0.01, own=0.012),
                            "pca": _encoding(47, 0.9, 0.9, 0.6, 0.01, own=0.009)}}
    assert fvae.evaluate.pca_size_note(report) == ("PCA has 47 components, one fewer than there are train images: "
                                                   "centred, they span no more (the VAE latent has 64).")
    assert fvae.evaluate.reading(report)[4] == ("The VAE's own decoder does not beat PCA with 47 components: "
                                                "MSE 0.0120 (19.2 dB) against 0.0090 (20.5 dB).")
    report["data"]["image_shape"], report["encodings"]["pca"]["dim"] = [6, 6], 36
    assert fvae.evaluate.pca_size_note(report) == "PCA has 36 components, as many as there are pixels (the VAE latent has 64)."
    report["encodings"]["pca"]["dim"] = 64
    del report["vae"], report["encodings"]["vae"]
    report["data"]["image_shape"] = [28, 28]
    assert fvae.evaluate.pca_size_note(report) == "PCA has as many components as the evaluation VAE's latent (64)."
