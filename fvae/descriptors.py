"""Dense local descriptors: square patches on a regular grid, optional per-patch normalization,
PCA, and the xy position of each patch.

Descriptors of one image are ordered region by region (see :func:`patch_layout`) so that every
spatial-pyramid cell is a contiguous slice of the descriptor axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numpy.lib.stride_tricks import sliding_window_view

from .errors import InputError

PATCH_NORMALIZATIONS = ("none", "center", "standardize", "l2")
_NORM_EPS = 1e-6


@dataclass(frozen=True)
class PatchLayout:
    """Where the patches of an image lie and in which order they are taken.

    Attributes
    ----------
    pixels : ndarray of shape (n_patches, patch_size**2)
        Flat (row-major) pixel indices of each patch, in descriptor order.
    xy : ndarray of shape (n_patches, 2), float32
        Patch centres as (x, y) in [-0.5, 0.5], in descriptor order.
    regions : list of slice
        Contiguous descriptor ranges of the spatial cells. One slice covering everything without a
        pyramid; the four quadrants (top-left, top-right, bottom-left, bottom-right) with one.
    """

    pixels: np.ndarray
    xy: np.ndarray
    regions: list

    @property
    def n_patches(self) -> int:
        return len(self.pixels)


def patch_layout(image_shape, patch_size: int, stride: int, spatial_pyramid: bool) -> PatchLayout:
    """Grid of patches for ``image_shape`` and the order of descriptors.

    Raises
    ------
    InputError
        If a patch does not fit in the image, the stride is longer than it, or a pyramid
        quadrant would be empty.
    """
    h, w = image_shape
    if patch_size < 1 or stride < 1:
        raise InputError(f"patch_size and stride must be positive, got {patch_size} and {stride}")
    if patch_size > min(h, w):
        raise InputError(f"patch_size {patch_size} does not fit in {h}x{w} images")
    if stride > max(h, w):  # a step past the image: one patch a side, as any step from h - patch_size + 1 gives
        raise InputError(f"stride {stride} is longer than {h}x{w} images: at most {max(h, w)}")
    n_rows = (h - patch_size) // stride + 1
    n_cols = (w - patch_size) // stride + 1
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    centre_y = rows * stride + (patch_size - 1) / 2
    centre_x = cols * stride + (patch_size - 1) / 2
    if spatial_pyramid:
        bottom = centre_y > (h - 1) / 2
        right = centre_x > (w - 1) / 2
        cell = 2 * bottom + right
        counts = np.bincount(cell, minlength=4)
        if counts.min() == 0:
            raise InputError(
                f"spatial_pyramid needs patches in all four quadrants; {h}x{w} images with patch_size "
                f"{patch_size} and stride {stride} give a {n_rows}x{n_cols} grid: a smaller stride or patch_size "
                "gives more cells, or turn spatial_pyramid off"
            )
        order = np.argsort(cell, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(counts)])
        regions = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    else:
        order = np.arange(len(rows))
        regions = [slice(0, len(rows))]
    xy = np.stack([centre_x / w - 0.5, centre_y / h - 0.5], axis=1).astype(np.float32)
    # The patches of an index image: gathering pixels with this table is one flat np.take,
    # 1.5x faster than fancy-indexing a sliding-window view of every batch.
    windows = sliding_window_view(np.arange(h * w).reshape(h, w), (patch_size, patch_size))[::stride, ::stride]
    pixels = windows[rows[order], cols[order]].reshape(len(order), patch_size * patch_size)
    return PatchLayout(pixels, xy[order], regions)


def dense_patches(images: np.ndarray, layout: PatchLayout) -> np.ndarray:
    """Cut every image into the patches of ``layout``.

    Parameters
    ----------
    images : ndarray of shape (n, h, w)
    layout : PatchLayout

    Returns
    -------
    ndarray of shape (n, n_patches, patch_size**2), same dtype as ``images``
    """
    n = len(images)
    patches = np.take(images.reshape(n, -1), layout.pixels.ravel(), axis=1)
    return patches.reshape(n, layout.n_patches, layout.pixels.shape[1])


def normalize_patches(patches: np.ndarray, mode: str) -> np.ndarray:
    """Normalize each patch (last axis) in place and return it.

    ``center`` subtracts the patch mean, ``standardize`` also divides by the standard deviation,
    ``l2`` scales to unit L2 norm; flat patches are guarded by a small epsilon.
    """
    if mode == "none":
        return patches
    if mode not in PATCH_NORMALIZATIONS:
        raise InputError(f"patch_normalization must be one of {PATCH_NORMALIZATIONS}, got {mode!r}")
    if mode in ("center", "standardize"):
        patches -= patches.mean(axis=-1, keepdims=True)
    if mode == "standardize":
        patches /= patches.std(axis=-1, keepdims=True) + _NORM_EPS
    elif mode == "l2":
        patches /= np.linalg.norm(patches, axis=-1, keepdims=True) + _NORM_EPS
    return patches


def fit_pca(sample: np.ndarray, n_components: int, whiten: bool, random_state,
            sampled_from: str = "n_descriptor_samples", default_components: bool = False) -> np.ndarray:
    """Fit PCA on a sample of descriptors and return its projection matrix.

    ``sampled_from`` says what bounds the sample's size, and ``default_components`` whether
    ``n_components`` is fvae's choice rather than the caller's, for the error when it is too small.

    Returns
    -------
    projection : ndarray of shape (n_features, n_components), float32
        Principal axes as columns, whitening folded in. See :func:`project` for why no mean is
        subtracted.
    """
    from sklearn.decomposition import PCA

    n_samples, n_features = sample.shape
    if n_samples < 2:  # one point has no directions of variance; its "blank images?" refusal misled
        raise InputError(f"only {n_samples} descriptor is sampled ({sampled_from}): a PCA needs at least 2")
    if default_components and n_components > n_samples:  # name the choice as the default, not as the caller's
        raise InputError(f"only {n_samples} descriptors are sampled ({sampled_from}), fewer than the "
                         f"{n_components} dimensions of the default PCA: choose pca_components of at most {n_samples}")
    if not 1 <= n_components <= min(n_samples, n_features):
        limit = (f"patches of {n_features} pixels" if n_features <= n_samples
                 else f"only {n_samples} descriptors are sampled ({sampled_from})")
        raise InputError(f"pca_components must be in [1, {min(n_samples, n_features)}]: {limit}; got {n_components}")
    if not np.ptp(sample, axis=0).any():
        raise InputError(f"all {n_samples:,} sampled patches are the same (blank images?): the PCA has nothing to fit")
    pca = PCA(n_components=n_components, whiten=whiten, random_state=random_state).fit(sample)
    projection = pca.components_.T.copy()
    if whiten:
        projection /= np.sqrt(np.maximum(pca.explained_variance_, 1e-12))
    return projection.astype(np.float32)


def project(patches: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """Project ``(..., n_features)`` descriptors on the principal axes; float32 ``(..., n_components)``.

    The PCA mean is deliberately not subtracted: a GMM fitted on translated data gives the same
    Fisher Vectors, and without the shift the blank (all-zero) patch, the most frequent descriptor,
    lands exactly on the origin. The GMM's tight blank-patch components then sit at the origin too,
    where the expanded float32 forms of the Fisher Vector are exact instead of cancelling.
    """
    return patches @ projection
