import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from conftest import relative_error
from fvae import FisherVectorEncoder, InputError, ModelFileError, fisher
from fvae.fisher import fisher_vector_dim, fisher_vectors, gmm_terms
import reference

SMALL = dict(n_components=8, pca_components=6, patch_size=3, stride=1, n_descriptor_samples=5000, random_state=0)
NORMALIZATIONS = list(itertools.product([False, True], [False, True], [False, True]))  # improved, wg, intra


def reference_batch(encoder, images):
    descriptors = encoder.descriptors(images).astype(np.float64)
    cells = encoder._layout(encoder.image_shape_).regions if encoder.spatial_pyramid else None
    return np.stack([
        reference.fisher_vector(
            d, encoder.weights_, encoder.means_, encoder.covariances_, cells=cells,
            improved=encoder.improved, alpha=encoder.alpha, weight_gradients=encoder.weight_gradients,
            intra_normalization=encoder.intra_normalization,
        )
        for d in descriptors
    ])


@pytest.mark.parametrize("xy,pyramid", list(itertools.product([False, True], [False, True])))
def test_batched_fv_matches_float64_reference_for_every_option(digits, xy, pyramid):
    encoder = FisherVectorEncoder(xy=xy, spatial_pyramid=pyramid, **SMALL).fit(digits.train.images)
    images = digits.test.images[:40]
    for improved, weight_gradients, intra in NORMALIZATIONS:
        encoder.set_params(improved=improved, weight_gradients=weight_gradients, intra_normalization=intra)
        fast = encoder.transform(images)
        assert fast.dtype == np.float32
        assert fast.shape == (len(images), encoder.n_features_out_)
        err = relative_error(fast, reference_batch(encoder, images))
        assert err < 1e-4, (improved, weight_gradients, intra, err)


@pytest.mark.parametrize("alpha,tolerance", [(1.0, 1e-4), (0.3, 5e-4)])
def test_other_power_exponents_match_reference(digits, alpha, tolerance):
    """alpha = 0.5 has its own square-root path in the compiled loop; the general power is checked here.

    A power below 1/2 magnifies float32 rounding in near-empty components ((1e-9)^0.3 = 2e-3), and
    intra-normalization then scales those blocks up: 2.4e-4 against float64 for alpha 0.3 with
    intra-normalization, the same as numpy's float32 gave before the compiled loops.
    """
    encoder = FisherVectorEncoder(alpha=alpha, spatial_pyramid=True, **SMALL).fit(digits.train.images)
    images = digits.test.images[:20]
    for weight_gradients, intra in itertools.product([False, True], [False, True]):
        encoder.set_params(weight_gradients=weight_gradients, intra_normalization=intra)
        err = relative_error(encoder.transform(images), reference_batch(encoder, images))
        assert err < (tolerance if intra else 1e-4), (alpha, weight_gradients, intra, err)


def test_compiled_exp_matches_numpy_over_the_log_posterior_range():
    x = np.linspace(fisher.LOG_POSTERIOR_FLOOR, 0.0, 200_001, dtype=np.float32)
    fast = np.array([fisher._exp_of_log_posterior(v) for v in x[::97]], dtype=np.float64)
    exact = np.exp(x[::97].astype(np.float64))
    assert np.max(np.abs(fast - exact) / exact) < 5e-7  # numpy's float32 exp: 1.8e-7


def test_compiled_softmax_matches_float64_with_its_floor():
    rng = np.random.default_rng(3)
    loglik = (rng.standard_normal((64, 3000)) * rng.uniform(0.1, 300, size=3000)).astype(np.float32)
    loglik[:, :10] -= 1e4  # every component unlikely: the max subtraction must still give a distribution
    loglik[5, 10:20] = loglik[:, 10:20].max(axis=0) + 200  # one component certain
    fast = loglik.copy()
    fisher._posteriors_in_place(fast)
    shifted = np.maximum(loglik.astype(np.float64) - loglik.max(axis=0), fisher.LOG_POSTERIOR_FLOOR)
    exact = np.exp(shifted) / np.exp(shifted).sum(axis=0)
    np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-30)  # float32 l - max of |l| up to ~1e3
    np.testing.assert_allclose(fast.sum(axis=0), 1.0, rtol=1e-5)
    assert (fast[5, 10:20] > 1 - 1e-6).all()


def test_real_mnist_defaults_match_reference_including_centred_components(mnist_test_images, caplog):
    images, _ = mnist_test_images
    encoder = FisherVectorEncoder(random_state=0, n_descriptor_samples=20000).fit(images)
    assert "GMM did not converge" not in caplog.text  # it did not in scikit-learn's 100 EM iterations
    # The hard case is present: tight blank-patch components whose variance sits at the floor.
    floor = encoder.covariances_.min()
    assert (encoder.covariances_[:, :-2].max(axis=1) < 20 * floor).any()
    err = relative_error(encoder.transform(images[:25]), reference_batch(encoder, images[:25]))
    assert err < 1e-4


def test_tight_far_component_stays_exact():
    """A component 1e3 standard deviations from the origin: the expanded float32 form fails here."""
    rng = np.random.default_rng(1)
    means = rng.normal(size=(4, 5))
    means[0] = 3.0
    variances = np.full((4, 5), 0.5)
    variances[0] = 1e-5
    weights = np.array([0.4, 0.2, 0.2, 0.2])
    x = rng.normal(size=(6, 30, 5)).astype(np.float32)
    x[:, :15] = (means[0] + rng.normal(scale=3e-3, size=(6, 15, 5))).astype(np.float32)
    terms = gmm_terms(weights, means, variances)
    assert list(terms.centred) == [0]
    fast = fisher_vectors(x, terms, improved=False)
    ref = np.stack([reference.fisher_vector(xi, weights, means, variances, improved=False) for xi in x])
    assert relative_error(fast, ref) < 1e-4


def test_matches_skimage_with_weight_gradients_and_opposite_sigma_sign(digits):
    from skimage.feature import fisher_vector as skimage_fisher_vector
    from sklearn.mixture import GaussianMixture

    encoder = FisherVectorEncoder(spatial_pyramid=False, weight_gradients=True, **SMALL).fit(digits.train.images)
    gm = GaussianMixture(n_components=encoder.n_components, covariance_type="diag")
    gm.weights_, gm.means_, gm.covariances_ = encoder.weights_, encoder.means_, encoder.covariances_
    gm.precisions_cholesky_ = 1 / np.sqrt(encoder.covariances_)
    descriptors = encoder.descriptors(digits.test.images[:20]).astype(np.float64)
    K, D = encoder.means_.shape
    for improved in (False, True):
        encoder.set_params(improved=improved)
        ours = encoder.transform(digits.test.images[:20])
        theirs = np.stack([skimage_fisher_vector(d, gm, improved=improved) for d in descriptors])
        theirs[:, K + K * D :] *= -1  # skimage's G_sigma is the negative of Perronnin/VLFeat's
        assert relative_error(ours, theirs) < 1e-4
        # and the sign really differs: without the flip the variance blocks disagree
        raw = np.stack([skimage_fisher_vector(d, gm, improved=improved) for d in descriptors])
        assert relative_error(ours[:, K + K * D :], raw[:, K + K * D :]) > 1.0


@pytest.mark.parametrize("intra", [False, True])
def test_improved_fv_has_unit_norm(digits, intra):
    encoder = FisherVectorEncoder(intra_normalization=intra, **SMALL).fit(digits.train.images)
    norms = np.linalg.norm(encoder.transform(digits.test.images), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_images=st.integers(1, 9), n_desc=st.integers(4, 40))
def test_descriptor_order_and_batch_split_do_not_change_the_fv(seed, n_images, n_desc):
    rng = np.random.default_rng(seed)
    K, D = 5, 4
    terms = gmm_terms(rng.dirichlet(np.ones(K)) + 1e-3, rng.normal(size=(K, D)), rng.uniform(0.1, 2, (K, D)))
    x = rng.normal(size=(n_images, n_desc, D)).astype(np.float32)
    together = fisher_vectors(x, terms, weight_gradients=True)
    permuted = fisher_vectors(x[:, rng.permutation(n_desc)], terms, weight_gradients=True)
    split = rng.integers(0, n_images + 1)
    pieces = np.concatenate([fisher_vectors(x[:split], terms, weight_gradients=True),
                             fisher_vectors(x[split:], terms, weight_gradients=True)])
    # Summation order only changes rounding; so does a smaller batch, a smaller matrix product,
    # which some BLAS kernels round differently (the power normalization magnifies it near 0).
    assert relative_error(permuted, together) < 1e-4
    assert relative_error(pieces, together) < 1e-4


def test_transform_is_independent_of_threads_and_batch(digits):
    from threadpoolctl import threadpool_limits

    images = digits.test.images
    encoder = FisherVectorEncoder(**SMALL).fit(digits.train.images)
    one = encoder.transform(images)
    two = clone(encoder).set_params(n_jobs=2).fit(digits.train.images).transform(images)
    np.testing.assert_array_equal(one, two)
    for blas_threads in (1, 2):  # a Dask worker runs with one BLAS thread, this process with every core
        with threadpool_limits(blas_threads, user_api="blas"):
            np.testing.assert_array_equal(encoder.transform(images), one)
    # A smaller batch is a smaller matrix product, which some BLAS kernels round differently
    # (elementwise, the power normalization magnifies that near 0: compared as the batch split is).
    assert relative_error(encoder.transform(images[:7]), one[:7]) < 1e-4
    np.testing.assert_array_equal(clone(encoder).set_params(n_jobs=-1).fit(digits.train.images).transform(images), one)
    # more threads than blocks of images run as many as there are blocks (joblib refused 10**20 with a ValueError)
    np.testing.assert_array_equal(encoder.set_params(n_jobs=10**20).transform(images), one)
    for bad in (0, 1.5, "2"):  # joblib: "n_jobs == 0 in Parallel has no meaning"; 0 used to run as 1
        with pytest.raises(InputError, match=r"^n_jobs must be None, a number of threads >= 1, or negative"):
            encoder.set_params(n_jobs=bad).transform(images)


def _threads_asked_in_a_daemon(n_jobs, answers):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            answers.put(FisherVectorEncoder(n_jobs=n_jobs)._n_threads())
        except Warning as warning:
            answers.put(f"{type(warning).__name__}: {warning}")


def test_threads_are_counted_without_asking_the_process_backend():
    import multiprocessing

    from joblib import cpu_count

    # A Dask worker is a daemon process: joblib.effective_n_jobs warned there and answered 1
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    for n_jobs in (2, -1):
        worker = context.Process(target=_threads_asked_in_a_daemon, args=(n_jobs, answers), daemon=True)
        worker.start()
        worker.join(60)
        assert answers.get(timeout=5) == (2 if n_jobs == 2 else cpu_count())
    assert FisherVectorEncoder(n_jobs=-cpu_count() - 5)._n_threads() == 1  # never fewer than one


def test_output_dimension_formula(digits):
    for pyramid, wg in itertools.product([False, True], [False, True]):
        enc = FisherVectorEncoder(spatial_pyramid=pyramid, weight_gradients=wg, **SMALL).fit(digits.train.images)
        D = SMALL["pca_components"] + 2
        assert enc.n_features_out_ == (5 if pyramid else 1) * (2 * 8 * D + 8 * wg)
        assert enc.n_features_out_ == fisher_vector_dim(8, D, 5 if pyramid else 1, wg)
        assert enc.transform(digits.test.images[:2]).shape[1] == enc.n_features_out_


def test_same_seed_same_model(digits):
    a = FisherVectorEncoder(**SMALL).fit(digits.train.images)
    b = FisherVectorEncoder(**SMALL).fit(digits.train.images)
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.transform(digits.test.images), b.transform(digits.test.images))


def test_sklearn_conventions(digits):
    encoder = FisherVectorEncoder(**SMALL)
    assert encoder.get_params()["n_components"] == 8
    with pytest.raises(NotFittedError):
        encoder.transform(digits.test.images)
    flat = digits.train.images.reshape(len(digits.train.images), -1)
    pipe = make_pipeline(FisherVectorEncoder(image_shape=(8, 8), **SMALL), LogisticRegression(C=10, max_iter=2000))
    pipe.fit(flat, digits.train.labels)
    accuracy = pipe.score(digits.test.images.reshape(len(digits.test.images), -1), digits.test.labels)
    assert accuracy > 0.9
    assert clone(pipe).get_params()["fishervectorencoder__n_components"] == 8
    # images as Keras keeps them, (n, h, w, 1), encode as (n, h, w) do
    fitted = FisherVectorEncoder(**SMALL).fit(digits.train.images)
    np.testing.assert_array_equal(FisherVectorEncoder(**SMALL).fit(digits.train.images[..., None]).transform(
        digits.test.images[:20, ..., None]), fitted.transform(digits.test.images[:20]))


def test_bad_inputs_raise_clear_errors(digits):
    encoder = FisherVectorEncoder(**SMALL).fit(digits.train.images)
    with pytest.raises(InputError, match="model expects 8x8"):
        encoder.transform(np.zeros((2, 9, 9), np.uint8))
    nan = digits.test.images[:2].astype(np.float32) / 255
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        encoder.transform(nan)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        encoder.transform(digits.test.images[:2].astype(np.float32))
    with pytest.raises(InputError, match="image_shape"):
        FisherVectorEncoder(**SMALL).fit(digits.train.images.reshape(len(digits.train.images), -1))
    with pytest.raises(InputError, match="quadrants"):
        FisherVectorEncoder(patch_size=7, stride=2).fit(digits.train.images)
    with pytest.raises(InputError, match="patch_normalization"):
        FisherVectorEncoder(patch_normalization="zca").fit(digits.train.images)
    for mode in ("center", "standardize"):  # was "all ... patches are the same (blank images?)"
        with pytest.raises(InputError, match=rf"^patch_normalization {mode} subtracts each patch's mean, which "
                                             r"leaves every 1x1 patch 0 \(patch_size 1\)"):
            FisherVectorEncoder(**{**SMALL, "patch_size": 1, "pca_components": 1, "patch_normalization": mode}).fit(
                digits.train.images)
    # the PCA's limit is named by what sets it: the patch size, or the descriptor sample
    with pytest.raises(InputError, match=r"^pca_components must be in \[1, 9\]: patches of 9 pixels; got 12$"):
        FisherVectorEncoder(**{**SMALL, "patch_size": 3, "pca_components": 12}).fit(digits.train.images)
    with pytest.raises(InputError, match=r"^pca_components must be in \[1, 5\]: only 5 descriptors are sampled"):
        FisherVectorEncoder(**{**SMALL, "n_descriptor_samples": 5}).fit(digits.train.images)
    # fvae's own PCA dimension is named as the default, which the caller did not choose
    with pytest.raises(InputError, match=r"^only 10 descriptors are sampled \(n_descriptor_samples\), fewer than the 12 "
                                         r"dimensions of the default PCA: choose pca_components of at most 10$"):
        FisherVectorEncoder(n_components=2, n_descriptor_samples=10).fit(digits.train.images)
    with pytest.raises(InputError, match=r"^n_components 8 is more than the 7 descriptors sampled to fit the GMM "
                                         r"\(n_descriptor_samples\)$"):
        FisherVectorEncoder(**{**SMALL, "n_descriptor_samples": 7, "pca_components": 2}).fit(digits.train.images)
    # when the images have fewer patches than n_descriptor_samples, raising it would not help: say so
    with pytest.raises(InputError, match=r"^pca_components must be in \[1, 4\]: only 4 descriptors are sampled "
                                         r"\(all the patches of 1 image\); got 6$"):
        FisherVectorEncoder(**{**SMALL, "patch_size": 7, "spatial_pyramid": False}).fit(digits.train.images[:1])
    with pytest.raises(InputError, match=r"^n_components 80 is more than the 72 descriptors sampled to fit the GMM "
                                         r"\(all the patches of 2 images\)$"):
        FisherVectorEncoder(**{**SMALL, "n_components": 80}).fit(digits.train.images[:2])
    with pytest.raises(InputError, match=r"^all 1,800 sampled patches are the same \(blank images\?\)"):
        FisherVectorEncoder(**SMALL).fit(np.zeros((50, 8, 8), np.uint8))  # 50 x 36 patches
    for name, value in (("reg_covar", -1.0), ("reg_covar", np.nan), ("tol", 0.0), ("tol", np.nan), ("alpha", np.nan),
                        ("n_components", True), ("stride", True)):  # before: True was 1, or a TypeError
        with pytest.raises(InputError, match=f"^{name} must be"):
            FisherVectorEncoder(**{name: value}).fit(digits.train.images)


def test_binarized_images_as_booleans_encode_like_black_and_white_uint8(digits):
    encoder = FisherVectorEncoder(**SMALL).fit(digits.train.images)
    binary = digits.test.images[:20] > 127
    np.testing.assert_array_equal(encoder.transform(binary), encoder.transform(binary.astype(np.uint8) * 255))


def test_save_load_round_trip_is_bit_identical(digits, tmp_path):
    encoder = FisherVectorEncoder(**SMALL).fit(digits.train.images)
    path = tmp_path / "model.npz"
    checksum = encoder.save(path)
    loaded = FisherVectorEncoder.load(path)
    assert loaded.checksum_ == checksum
    assert loaded.get_params() == encoder.get_params()
    # a refit is no longer the file's model: its checksum goes (encode's sidecar would cite it)
    assert not hasattr(FisherVectorEncoder.load(path).fit(digits.train.images[:300]), "checksum_")
    np.testing.assert_array_equal(loaded.transform(digits.test.images), encoder.transform(digits.test.images))
    # the threads that encode are not part of the model: the same fit saves the same file
    assert encoder.set_params(n_jobs=2).save(tmp_path / "threads.npz") == checksum
    assert (tmp_path / "threads.npz").read_bytes() == path.read_bytes()  # byte for byte: no save date either
    assert FisherVectorEncoder.load(tmp_path / "threads.npz").n_jobs is None
    # the arrays are plain .npy members: numpy reads them without pickle
    with np.load(path, allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["means_"], encoder.means_)


def test_default_patches_are_chosen_at_fit_from_the_image_size(digits, tmp_path):
    # FisherVectorEncoder() used to fail on the 8x8 digits (7x7 patches leave no 2x2 pyramid) while
    # the CLI adapted its patches; None now leaves the choice to fit, and the file keeps it
    from fvae.persist import save_model

    encoder = FisherVectorEncoder(n_components=4, n_descriptor_samples=3000, random_state=0).fit(digits.train.images)
    assert (encoder.patch_size, encoder.stride, encoder.pca_components) == (None, None, None)  # as given
    assert (encoder.patch_size_, encoder.stride_, encoder.pca_components_) == (4, 1, 12)
    assert encoder.transform(digits.test.images[:3]).shape == (3, fisher_vector_dim(4, 12 + 2, 5))
    encoder.save(tmp_path / "chosen.npz")
    loaded = FisherVectorEncoder.load(tmp_path / "chosen.npz")
    assert loaded.get_params() == encoder.get_params()
    assert (loaded.patch_size_, loaded.stride_, loaded.pca_components_) == (4, 1, 12)
    np.testing.assert_array_equal(loaded.transform(digits.test.images), encoder.transform(digits.test.images))
    # a refit that fails (blank 20x20 images: nothing for the PCA) leaves the previous fit whole,
    # its 4x4 patches too, not the 7x7 ones chosen for the new size
    before = encoder.transform(digits.test.images[:5])
    with pytest.raises(InputError, match="sampled patches are the same"):
        encoder.fit(np.zeros((30, 20, 20), np.uint8))
    assert (encoder.patch_size_, encoder.stride_, encoder.pca_components_) == (4, 1, 12)
    np.testing.assert_array_equal(encoder.transform(digits.test.images[:5]), before)
    # a file from before None was a choice has the numbers in its parameters and no size arrays
    explicit = {**encoder.get_params(), "patch_size": 4, "stride": 1, "pca_components": 12}
    save_model(tmp_path / "old.npz", method="fisher", params=explicit, input_shape=(8, 8),
               arrays={name: getattr(encoder, name) for name in ("pca_projection_", "weights_", "means_", "covariances_")})
    old = FisherVectorEncoder.load(tmp_path / "old.npz")
    assert (old.patch_size_, old.stride_, old.pca_components_) == (4, 1, 12)
    np.testing.assert_array_equal(old.transform(digits.test.images), encoder.transform(digits.test.images))


def test_load_refuses_modified_newer_or_foreign_files(digits, tmp_path):
    import json
    import zipfile

    encoder = FisherVectorEncoder(**SMALL).fit(digits.train.images)
    path = tmp_path / "model.npz"
    encoder.save(path)
    with pytest.raises(FileExistsError, match="--force"):
        encoder.save(path)

    def rewrite(target, edit=lambda header: None, corrupt_means=False):
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(target, "w") as dst:
            for name in src.namelist():
                data = src.read(name)
                if name == "header.json":
                    header = json.loads(data)
                    edit(header)
                    data = json.dumps(header)
                elif name == "means_.npy" and corrupt_means:
                    data = data[:-8] + np.float64(1.5).tobytes()
                dst.writestr(name, data)

    rewrite(tmp_path / "newer.npz", lambda h: h.update(format_version=99))
    with pytest.raises(ModelFileError, match="upgrade fvae"):
        FisherVectorEncoder.load(tmp_path / "newer.npz")
    rewrite(tmp_path / "vae.npz", lambda h: h.update(method="vae"))
    with pytest.raises(ModelFileError, match="not a 'fisher' model"):
        FisherVectorEncoder.load(tmp_path / "vae.npz")
    rewrite(tmp_path / "params.npz", lambda h: h["params"].update(n_components=9))
    with pytest.raises(ModelFileError, match="checksum"):
        FisherVectorEncoder.load(tmp_path / "params.npz")
    rewrite(tmp_path / "bitrot.npz", corrupt_means=True)
    with pytest.raises(ModelFileError, match="checksum"):
        FisherVectorEncoder.load(tmp_path / "bitrot.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="not an fvae model"):
        FisherVectorEncoder.load(tmp_path / "junk.npz")
    # images where the model goes: before, Python's KeyError "There is no item named 'header.json' ..."
    np.savez(tmp_path / "images.npz", images=np.zeros((2, 8, 8)), labels=np.arange(2))
    with pytest.raises(ModelFileError, match=r"^.*images.npz: not an fvae model file but an archive of images, labels "
                                             r"\(images go to --data\)$"):
        FisherVectorEncoder.load(tmp_path / "images.npz")
    np.savez(tmp_path / "many.npz", *np.zeros((7, 1)))
    with pytest.raises(ModelFileError, match=r"an archive of arr_0, arr_1, arr_2, arr_3, arr_4 and 2 more \(images"):
        FisherVectorEncoder.load(tmp_path / "many.npz")


def test_kernels_compile_without_a_writable_cache_location(tmp_path):
    """A read-only install run without a home: numba refuses cache=True; fvae compiles per process."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    package = tmp_path / "site" / "fvae"
    shutil.copytree(Path(fisher.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "__pycache__").write_text("")  # a file where numba would put its cache
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("")  # and no user cache folder either
    script = (
        "from fvae import FisherVectorEncoder, load_dataset\n"
        "d = load_dataset('digits')\n"
        "enc = FisherVectorEncoder(n_components=4, pca_components=4, patch_size=3, random_state=0)\n"
        "fv = enc.fit(d.train.images[:200]).transform(d.test.images[:5])\n"
        "print(fv.shape, abs((fv ** 2).sum(axis=1) - 1).max() < 1e-5)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), PYTHONPATH=str(tmp_path / "site"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"(5, {4 * 5 * 2 * 6}) True"


@pytest.mark.parametrize("shape, given, expected", [
    ((28, 28), {}, (7, 2, 32)),
    ((8, 8), {}, (4, 1, 12)),
    ((13, 40), {}, (4, 1, 12)),  # the smaller side decides
    ((28, 28), {"patch_size": 4}, (4, 2, 16)),  # PCA never asks for more dimensions than a patch has
    ((8, 8), {"stride": 2, "pca_components": 5}, (4, 2, 5)),
])
def test_patch_defaults_fill_only_what_the_user_left_out(shape, given, expected):
    chosen = fisher.patch_defaults(shape, **given)
    assert (chosen["patch_size"], chosen["stride"], chosen["pca_components"]) == expected


def test_patch_defaults_refuse_images_smaller_than_the_default_patch_but_not_a_given_one():
    with pytest.raises(InputError, match=r"^3x5 images are smaller than the default 4x4 patches: choose a "
                                         r"patch_size of at most 3$"):
        fisher.patch_defaults((3, 5))
    assert fisher.patch_defaults((3, 5), patch_size=2)["patch_size"] == 2
