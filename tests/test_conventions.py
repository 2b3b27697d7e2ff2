"""scikit-learn's estimator conventions, checked on images for both encoders.

``sklearn.utils.estimator_checks.check_estimator`` feeds estimators random tabular data of a
few columns, which no image encoder can take, so the checks that matter are written here on
images: fit leaves its input and parameters alone, refits give the same model, and encoding
does not depend on how the images are batched, ordered, laid out or stored. Also the package's
public names, as tab completion and ``help`` find them.
"""

import copy
import inspect
import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils import get_tags

import fvae

ENCODERS = {
    "fisher": lambda: fvae.FisherVectorEncoder(patch_size=3, stride=1, n_components=4, pca_components=4,
                                               n_descriptor_samples=3000, random_state=0),
    "vae": lambda: fvae.VAEEncoder(arch="mlp", hidden=(16,), latent_dim=3, epochs=2, verbose=0, random_state=0),
}


@pytest.fixture(scope="module", params=sorted(ENCODERS))
def fitted(request, digits):
    """(name, unfitted maker, fitted encoder, its codes of the test images)."""
    make = ENCODERS[request.param]
    encoder = make().fit(digits.train.images[:400])
    return request.param, make, encoder, encoder.transform(digits.test.images[:50])


def test_fit_leaves_its_input_and_parameters_alone_and_refits_identically(fitted, digits):
    _, make, _, codes = fitted
    images = digits.train.images[:400].copy()
    encoder = make()
    params = copy.deepcopy(encoder.get_params())
    encoder.fit(images)
    np.testing.assert_array_equal(images, digits.train.images[:400])
    assert encoder.get_params() == params
    np.testing.assert_array_equal(encoder.transform(digits.test.images[:50]), codes)
    np.testing.assert_array_equal(encoder.fit(images).transform(digits.test.images[:50]), codes)


def test_codes_do_not_depend_on_batching_order_or_memory_layout(fitted, digits, tmp_path):
    _, _, encoder, codes = fitted
    images = digits.test.images[:50]
    order = np.random.default_rng(0).permutation(len(images))
    np.testing.assert_allclose(encoder.transform(images[order]), codes[order], atol=1e-6)
    np.testing.assert_allclose(np.concatenate([encoder.transform(images[:7]), encoder.transform(images[7:])]), codes,
                               atol=1e-6)
    np.testing.assert_allclose(encoder.transform(np.asfortranarray(images)), codes, atol=1e-6)
    np.save(tmp_path / "images.npy", images)
    read_only = np.load(tmp_path / "images.npy", mmap_mode="r")  # as joblib hands large arrays to workers
    np.testing.assert_array_equal(encoder.transform(read_only), codes)
    assert encoder.transform(images.astype(np.float64) / 255).dtype == np.float32


def test_scikit_learn_tags_say_what_the_encoder_takes_and_returns(fitted, digits):
    # BaseEstimator's defaults said: 2-D input only, negative values welcome, float64 out for float64 in
    _, _, encoder, codes = fitted
    tags = get_tags(encoder)
    assert tags.input_tags.three_d_array and tags.input_tags.two_d_array  # (n, h, w), or rows with image_shape
    assert tags.transformer_tags.preserves_dtype == ["float32"]
    for dtype in (np.float32, np.float64):
        assert encoder.transform((digits.test.images[:5] / 255).astype(dtype)).dtype == np.float32
    assert tags.input_tags.positive_only
    with pytest.raises(fvae.InputError, match=r"must lie in \[0, 1\]"):
        encoder.transform(-(digits.test.images[:5] / 255))


def test_a_pickled_encoder_gives_the_same_codes(fitted, digits):
    _, _, encoder, codes = fitted
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(encoder)).transform(digits.test.images[:50]), codes)
    assert clone(encoder).get_params() == encoder.get_params()


def test_a_dataframe_s_pixel_columns_are_checked_by_name_as_scikit_learn_checks_columns(fitted, digits, tmp_path):
    """A DataFrame of flat images names its columns (OpenML's mnist_784: pixel1..pixel784). The
    same columns in another order were encoded silently, as another image; now, as in any
    scikit-learn estimator, they are refused, and the names outlive saving and loading."""
    import pandas as pd

    _, make, _, _ = fitted
    h, w = digits.train.images.shape[1:]
    columns = [f"pixel{i + 1}" for i in range(h * w)]
    train = pd.DataFrame(digits.train.images[:400].reshape(400, -1), columns=columns)
    test = pd.DataFrame(digits.test.images[:50].reshape(50, -1), columns=columns)
    encoder = make().set_params(image_shape=(h, w)).fit(train)
    assert list(encoder.feature_names_in_) == columns
    codes = encoder.transform(test)
    with pytest.raises(ValueError, match="feature names should match those that were passed during fit"):
        encoder.transform(test[columns[::-1]])
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        encoder.transform(test.to_numpy())  # flat rows without names: their order cannot be checked
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # images of shape (n, h, w) are not columns: nothing to warn of
        np.testing.assert_array_equal(encoder.transform(digits.test.images[:50]), codes)
    encoder.save(tmp_path / "model.npz")
    loaded = type(encoder).load(tmp_path / "model.npz")
    assert list(loaded.feature_names_in_) == columns
    np.testing.assert_array_equal(loaded.transform(test), codes)
    with pytest.raises(ValueError, match="feature names should match"):
        loaded.transform(test[columns[::-1]])
    # a refit on unnamed images forgets the names, in the estimator and in its file
    encoder.fit(digits.train.images[:400])
    assert not hasattr(encoder, "feature_names_in_")
    encoder.save(tmp_path / "model.npz", force=True)
    assert not hasattr(type(encoder).load(tmp_path / "model.npz"), "feature_names_in_")


def test_fisher_pipeline_cross_validates_in_worker_processes(digits):
    pipeline = make_pipeline(ENCODERS["fisher"](), LogisticRegression(max_iter=300))
    scores = cross_val_score(pipeline, digits.train.images[:400], digits.train.labels[:400], cv=2, n_jobs=2)
    assert scores.shape == (2,) and scores.min() > 0.6  # 10 classes: chance is 0.1


def test_every_public_name_is_listed_for_tab_completion_and_resolves():
    # the encoders are imported on first use: before, dir(fvae), which IPython and editors complete
    # from, had none of them
    assert set(fvae.__all__) <= set(dir(fvae))
    assert dir(fvae) == sorted(dir(fvae))
    for name in fvae.__all__:
        assert getattr(fvae, name) is not None


def test_fvae_evaluate_shows_the_signature_of_the_function_it_calls():
    # fvae.evaluate is the module made callable: inspect, help() and IPython's "?" read
    # (*args, **kwargs) from its __call__ before
    from fvae.evaluate import evaluate

    assert inspect.signature(fvae.evaluate) == inspect.signature(evaluate)
    assert list(inspect.signature(fvae.evaluate).parameters)[:3] == ["train", "test", "settings"]
