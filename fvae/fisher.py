r"""Fisher Vectors: diagonal GMM fit and the batched Fisher Vector computation.

The math (Perronnin et al. 2010, Sánchez et al. 2013). An image has T local descriptors
:math:`x_t \in R^D`; the GMM has weights :math:`w_k`, means :math:`\mu_k` and standard deviations
:math:`\sigma_k` (diagonal); :math:`\gamma_t(k)` is the posterior of component k for descriptor t.

.. math::

    G^\alpha_k  &= \frac{1}{T\sqrt{w_k}}  \sum_t (\gamma_t(k) - w_k)                          \\
    G^\mu_k     &= \frac{1}{T\sqrt{w_k}}  \sum_t \gamma_t(k) \frac{x_t - \mu_k}{\sigma_k}      \\
    G^\sigma_k  &= \frac{1}{T\sqrt{2w_k}} \sum_t \gamma_t(k) \left[\frac{(x_t-\mu_k)^2}{\sigma_k^2} - 1\right]

Sign convention: fvae follows Perronnin/VLFeat for :math:`G^\sigma`. ``skimage.feature.fisher_vector``
returns its negative; its :math:`G^\alpha` and :math:`G^\mu` are the same as ours.

Layout of one spatial cell: ``[G_alpha (K, only with weight gradients), G_mu (K x D), G_sigma (K x D)]``,
component-major inside each block (``G_mu[k, d]`` at ``k * D + d``) — the layout of scikit-image.
With a spatial pyramid the cells are: whole image, then top-left, top-right, bottom-left, bottom-right.
Dimension: ``n_cells * (2 K D + K * weight_gradients)``.

Normalization, in this order: signed power ``sign(z)|z|^alpha`` (improved FV), optional
intra-normalization (each component's ``[G_alpha_k, G_mu_k, G_sigma_k]`` within a cell divided by
``max(its L2 norm, 1e-3)``, so that components with no posterior mass stay near zero instead of
being blown up to unit length), then L2 of the whole vector (improved FV), its norm clamped at 1e-12.

How it is computed: many images per BLAS call. Log-likelihoods of all descriptors against all
components are one matrix product ``[-1/(2 sigma^2); mu/sigma^2; offset]^T [x**2, x, 1]^T``, laid
out (K, descriptors) so that the log-sum-exp softmax reduces over long contiguous rows; the first
and second order statistics of every image are batched products ``gamma x`` and ``gamma x**2``; the
gradients are then ``a S2 + b S1 + c S0`` with per-(k, d) coefficients precomputed in
:func:`gmm_terms`. The expanded forms cancel catastrophically in float32 for components
whose mean is far from the origin relative to their width (the tight "blank patch" modes), so those
few components (``max_d mu^2 / sigma^2 > 1e3``) get their log-likelihood and statistics computed
centred, ``x - mu_k``, which is exact. Log-posteriors below -60 are clipped (posterior < 1e-26):
float32 denormals are two orders of magnitude slower on x86 and change nothing at that size.

The matrix products go to BLAS; the elementwise work between them (building ``[x^2, x, 1]``, the
softmax, the gradients with their normalization) is in a few loops compiled by numba, each one
pass over memory where numpy needed one pass per operation. They are compiled on first use and
cached next to this file (about 2 s, once per machine).
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass

import llvmlite.ir
import numba
import numpy as np
from joblib import Parallel, cpu_count, delayed
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import ThreadpoolController

from .data import (
    check_image_batch, check_pixel_names, image_encoder_tags, is_whole_number, record_pixel_names, to_unit_float,
)
from .descriptors import PATCH_NORMALIZATIONS, PatchLayout, dense_patches, fit_pca, normalize_patches, patch_layout, project
from .errors import InputError
from .persist import forget_file, load_model, pixel_names_member, restore_pixel_names, save_model
from .report import counted

log = logging.getLogger("fvae")

#: Components with ``max_d mu^2 / sigma^2`` above this are computed centred (see module docstring).
CENTRED_RISK = 1e3
#: Log-posterior floor relative to the best component of a descriptor.
LOG_POSTERIOR_FLOOR = -60.0
#: Intra-normalization divides a component's block by max(norm, this): a component with almost no
#: posterior mass in a cell has a block of rounding noise, which plain normalization would blow up
#: to unit length.
INTRA_NORM_FLOOR = 1e-3
#: Descriptors per block: keeps the working set of one block in the CPU cache.
BLOCK_DESCRIPTORS = 6144


@dataclass(frozen=True)
class GmmTerms:
    """The diagonal GMM with everything the batched FV needs precomputed (float32 unless noted).

    The first ``n_varying`` dimensions vary per image; the last ``n_positions`` are patch positions,
    the same for every image, so their terms are precomputed exactly (nothing to cancel).

    The per-descriptor features are ``[x^2, x, 1]`` of the varying dimensions, so the
    log-likelihoods, offset included, are one matrix product.
    """

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D)
    variances: np.ndarray  # (K, D)
    loglik_matrix: np.ndarray  # (2V + 1, K): [-1/(2 var); mu/var; offset] of the varying dimensions
    centred: np.ndarray  # indices of components whose varying dimensions are computed centred
    centred_half_precision: np.ndarray  # (r, V): -1/(2 var) of those
    centred_offset: np.ndarray  # (r,): log w - sum(log(2 pi var))/2 of those
    position_loglik: np.ndarray | None  # (T, K): -1/2 sum_p (pos - mu)^2 / var, exact
    position_centred: np.ndarray | None  # (K, T, 2P): [(pos - mu)^2, pos - mu], exact
    sigma_coefficients: np.ndarray  # (3, K, D): G_sigma * T = a S2 + b S1 + c S0
    mu_coefficients: np.ndarray  # (2, K, D): G_mu * T = e S1 + f S0

    @property
    def n_components(self) -> int:
        return len(self.weights)

    @property
    def n_features(self) -> int:
        return self.means.shape[1]

    @property
    def n_positions(self) -> int:
        return 0 if self.position_loglik is None else self.position_centred.shape[2] // 2

    @property
    def n_varying(self) -> int:
        return self.n_features - self.n_positions


def gmm_terms(weights, means, variances, positions: np.ndarray | None = None) -> GmmTerms:
    """Precompute the GMM terms of the batched Fisher Vector.

    Parameters
    ----------
    weights : array-like of shape (n_components,)
    means, variances : array-like of shape (n_components, n_features)
    positions : ndarray of shape (n_descriptors, n_positions), default=None
        Features shared by every image (patch xy), one row per descriptor: the GMM's last
        ``n_positions`` dimensions. :func:`fisher_vectors` then takes descriptors without them.
    """
    weights = np.asarray(weights, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    variances = np.asarray(variances, dtype=np.float64)
    if means.ndim != 2 or means.shape != variances.shape or weights.shape != (means.shape[0],):
        raise InputError("GMM shapes disagree: weights (K,), means and variances (K, D)")
    if (variances <= 0).any() or (weights <= 0).any():
        raise InputError("GMM variances and weights must be positive")
    k, d = means.shape
    n_positions = 0 if positions is None else positions.shape[1]
    v = d - n_positions
    precision = 1.0 / variances
    log_norm = np.log(weights) - 0.5 * np.log(2 * np.pi * variances).sum(axis=1)
    centred = np.flatnonzero((means[:, :v] ** 2 * precision[:, :v]).max(axis=1, initial=0.0) > CENTRED_RISK)
    # Means as the expanded forms see them: zero where the statistics arrive already centred.
    expanded_mu = means.copy()
    expanded_mu[:, v:] = 0.0
    expanded_mu[centred] = 0.0
    loglik_matrix = np.concatenate([
        -0.5 * precision[:, :v].T,
        (expanded_mu * precision)[:, :v].T,
        [log_norm - 0.5 * (expanded_mu**2 * precision).sum(axis=1)],
    ])
    loglik_matrix[:, centred] = 0.0  # their rows of log-likelihoods are computed centred
    position_loglik = position_centred = None
    if n_positions:
        diff = np.asarray(positions, dtype=np.float64)[None] - means[:, None, v:]  # (K, T, P)
        position_loglik = (-0.5 * (diff**2 / variances[:, None, v:]).sum(axis=2).T).astype(np.float32)
        position_centred = np.concatenate([diff**2, diff], axis=2).astype(np.float32)
    # sum g (x-mu)^2 / var - S0 = S2/var - 2 (mu/var) S1 + (mu^2/var - 1) S0, and sum g (x-mu) / sigma likewise.
    sigma_scale = 1.0 / np.sqrt(2 * weights)[:, None]
    mu_scale = 1.0 / (np.sqrt(weights)[:, None] * np.sqrt(variances))
    sigma_coefficients = np.stack([
        precision * sigma_scale,
        -2 * expanded_mu * precision * sigma_scale,
        (expanded_mu**2 * precision - 1) * sigma_scale,
    ])
    mu_coefficients = np.stack([mu_scale, -expanded_mu * mu_scale])
    return GmmTerms(
        weights=weights.astype(np.float32),
        means=means.astype(np.float32),
        variances=variances.astype(np.float32),
        loglik_matrix=loglik_matrix.astype(np.float32),
        centred=centred,
        centred_half_precision=(-0.5 * precision[centred, :v]).astype(np.float32),
        centred_offset=log_norm[centred].astype(np.float32),
        position_loglik=position_loglik,
        position_centred=position_centred,
        sigma_coefficients=sigma_coefficients.astype(np.float32),
        mu_coefficients=mu_coefficients.astype(np.float32),
    )


def fisher_vector_dim(n_components: int, n_features: int, n_cells: int = 1, weight_gradients: bool = False) -> int:
    """Length of a Fisher Vector: ``n_cells * (2 K D + K * weight_gradients)``."""
    return n_cells * n_components * (2 * n_features + int(weight_gradients))


def fisher_vectors(
    descriptors: np.ndarray,
    gmm: GmmTerms,
    *,
    cells: list | None = None,
    improved: bool = True,
    alpha: float = 0.5,
    weight_gradients: bool = False,
    intra_normalization: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Fisher Vectors of a batch of images.

    Parameters
    ----------
    descriptors : ndarray of shape (n_images, n_descriptors, gmm.n_varying)
        Local descriptors of each image, float32, without the position features held by ``gmm``.
    gmm : GmmTerms
        From :func:`gmm_terms`.
    cells : list of slice, default=None
        Contiguous ranges of the descriptor axis forming spatial cells. ``None`` is one cell, the
        whole image. With more than one cell the whole image is added as the first cell (the
        pyramid's level 0), computed as the sum of the cells' statistics.
    improved : bool, default=True
        Signed power normalization with ``alpha``, then L2 normalization.
    alpha : float, default=0.5
    weight_gradients : bool, default=False
        Include the K gradients with respect to the mixture weights.
    intra_normalization : bool, default=False
        Divide each component's gradients within each cell by their L2 norm (floored, see above).
    out : ndarray of shape (n_images, dim), default=None
        Where to write the result.

    Returns
    -------
    ndarray of shape (n_images, dim), float32
        ``dim = fisher_vector_dim(K, D, n_cells, weight_gradients)``; see the module docstring for
        the layout.
    """
    descriptors = np.asarray(descriptors, dtype=np.float32)
    n_images, n_descriptors, n_varying = descriptors.shape
    if n_varying != gmm.n_varying:
        raise InputError(f"descriptors have {n_varying} features but the GMM expects {gmm.n_varying}")
    if gmm.n_positions and gmm.position_loglik.shape[0] != n_descriptors:
        raise InputError(f"{n_descriptors} descriptors per image, but the GMM's positions are for {gmm.position_loglik.shape[0]}")
    cells = cells or [slice(0, n_descriptors)]
    n_cells = len(cells) + (len(cells) > 1)
    dim = fisher_vector_dim(gmm.n_components, gmm.n_features, n_cells, weight_gradients)
    if out is None:
        out = np.empty((n_images, dim), dtype=np.float32)
    counts = np.array([c.stop - c.start for c in cells], dtype=np.float64)
    if len(cells) > 1:
        counts = np.concatenate([[counts.sum()], counts])
    inverse_counts = (1.0 / counts).astype(np.float32)
    step = max(1, BLOCK_DESCRIPTORS // n_descriptors)
    for start in range(0, n_images, step):
        block = descriptors[start : start + step]
        s0, s1, s2 = _cell_statistics(block, gmm, cells)
        view = out[start : start + len(block)].reshape(len(block), n_cells, -1)
        _normalized_gradients(
            s0, s1, s2, inverse_counts, gmm.weights, gmm.mu_coefficients, gmm.sigma_coefficients,
            weight_gradients, improved, np.float32(alpha), intra_normalization, view,
        )
    return out


@functools.cache
def _blas() -> ThreadpoolController:
    """The thread pools of the libraries loaded so far, numpy's BLAS among them, found once:
    ``threadpool_limits`` looks them up on every call (4 ms), too slow for a transform of a few
    images."""
    return ThreadpoolController()


def _cell_statistics(x: np.ndarray, gmm: GmmTerms, cells: list):
    """Posterior-weighted statistics of each cell and image.

    Returns
    -------
    s0 : ndarray of shape (C, B, K)
        ``sum_t gamma``.
    s1, s2 : ndarrays of shape (C, B, K, D)
        ``sum_t gamma x`` and ``sum_t gamma x^2`` for the varying dimensions of the expanded
        components; centred, ``sum_t gamma (x - mu)`` and ``sum_t gamma (x - mu)^2``, for the
        positions and the centred components (:attr:`GmmTerms.mu_coefficients` and
        :attr:`GmmTerms.sigma_coefficients` know which). With more than one cell, cell 0 is the
        whole image.
    """
    n_images, n_descriptors, v = x.shape
    k, d, p = gmm.n_components, gmm.n_features, gmm.n_positions
    features = np.empty((n_images, n_descriptors, 2 * v + 1), dtype=np.float32)  # [x^2, x, 1]
    _quadratic_features(x.reshape(-1, v), features.reshape(-1, 2 * v + 1))

    # Log-likelihoods as (K, B*T): one product, and the softmax then reduces over K across long
    # contiguous rows (the reductions run at SIMD speed).
    loglik = gmm.loglik_matrix.T @ features.reshape(n_images * n_descriptors, -1).T
    centred = _centred_terms(x, gmm)
    for j, comp in enumerate(gmm.centred):
        loglik[comp] = centred[j, ..., :v].reshape(-1, v) @ gmm.centred_half_precision[j] + gmm.centred_offset[j]
    by_image = loglik.reshape(k, n_images, n_descriptors)
    if p:
        by_image += gmm.position_loglik.T[:, None, :]
    _posteriors_in_place(loglik)
    posteriors = by_image.transpose(1, 0, 2)  # (B, K, T) view

    n_stat_cells = len(cells) + (len(cells) > 1)
    first = n_stat_cells - len(cells)
    s0 = np.empty((n_stat_cells, n_images, k), dtype=np.float32)
    s1 = np.empty((n_stat_cells, n_images, k, d), dtype=np.float32)
    s2 = np.empty_like(s1)
    for c, cell in enumerate(cells, start=first):
        gamma = posteriors[:, :, cell]
        np.einsum("bkt->bk", gamma, out=s0[c])  # 3x faster than np.sum over the short last axis
        np.matmul(gamma, features[:, cell, v : 2 * v], out=s1[c, ..., :v])
        np.matmul(gamma, features[:, cell, :v], out=s2[c, ..., :v])
        for j, comp in enumerate(gmm.centred):
            exact = np.matmul(gamma[:, comp : comp + 1], centred[j][:, cell])[:, 0]  # (B, 2V)
            s2[c, :, comp, :v] = exact[:, :v]
            s1[c, :, comp, :v] = exact[:, v:]
        if p:
            pos = np.matmul(gamma.transpose(1, 0, 2), gmm.position_centred[:, cell])  # (K, B, 2P)
            s2[c, ..., v:] = pos[..., :p].transpose(1, 0, 2)
            s1[c, ..., v:] = pos[..., p:].transpose(1, 0, 2)
    if first:
        for s in (s0, s1, s2):
            np.sum(s[1:], axis=0, out=s[0])
    return s0, s1, s2


def _centred_terms(x: np.ndarray, gmm: GmmTerms) -> np.ndarray:
    """``[(x - mu_k)^2, x - mu_k]`` of the varying dimensions for the centred components: (r, B, T, 2V)."""
    n_features = x.shape[-1]
    terms = np.empty((len(gmm.centred),) + x.shape[:2] + (2 * n_features,), dtype=np.float32)
    for j, comp in enumerate(gmm.centred):
        diff = terms[j, ..., n_features:]
        np.subtract(x, gmm.means[comp, :n_features], out=diff)
        np.multiply(diff, diff, out=terms[j, ..., :n_features])
    return terms


# ----------------------------------------------------------------------------------------------------
# compiled loops
#
# The elementwise passes (building [x^2, x, 1], the softmax, the gradients and their normalization)
# cost more than the matrix products when each is a separate numpy pass over memory; here each is
# one or two passes. Checked against the float64 reference in tests/reference.py.

#: Compiler flags: reassociation lets the sums over a row vectorize, contraction gives FMAs; no
#: assumptions about NaN or infinity, so bad values propagate as they would in numpy. Every kernel
#: also uses numpy's error model (x / 0 is inf, not ZeroDivisionError): Python's check on each
#: division is a branch that stops the loops from vectorizing.
_NUMBA_OPTIONS = dict(fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")
#: Taylor coefficients of exp(r) for |r| <= ln(2)/2: the truncation error after degree 7 is below
#: 1e-8, under float32 rounding.
_EXP_TAYLOR = tuple(1.0 / math.factorial(n) for n in range(8))
#: ln 2 split in two (Cody and Waite): ``i * _LN2_HIGH`` is exact in float32 for |i| < 2^15, so the
#: reduced argument keeps float32 precision however large i is.
_LN2_HIGH, _LN2_LOW = 0.693359375, -2.12194440e-4
_TINY = float(np.finfo(np.float32).tiny)


#: Small kernels inlined into the compiled loops that call them (never called from Python).
_inline = numba.njit(inline="always", **_NUMBA_OPTIONS)


def _compiled(function):
    """Compile a kernel with numba, cached on disk where numba finds a writable place for it.

    The cache lives next to this file or in the user's cache folder; with neither writable (a
    read-only install run by a user without a home) numba refuses ``cache=True``, and the kernel is
    then compiled once per process instead.
    """
    options = dict(nogil=True, **_NUMBA_OPTIONS)
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, **options)(function)


@numba.extending.intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 ``bits`` (builds 2^i from its exponent)."""
    signature = numba.types.float32(numba.types.int32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], llvmlite.ir.FloatType())

    return signature, codegen


@_inline
def _exp_of_log_posterior(x):
    """``exp(x)`` for float32 ``x`` in [LOG_POSTERIOR_FLOOR, 0], relative error 2e-7 (numpy's: 1.8e-7).

    Written out because numba's ``math.exp`` is a scalar library call, 8x slower than this
    vectorized version: ``x = i ln 2 + r`` with integer i and |r| <= ln(2)/2, then ``exp(r)`` by
    its Taylor series and ``2^i`` from its exponent bits (i >= -87 > -127: always a normal float).
    """
    i = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
    r = x - i * np.float32(_LN2_HIGH) - i * np.float32(_LN2_LOW)
    c = _EXP_TAYLOR
    p = np.float32(c[7])
    p = p * r + np.float32(c[6])
    p = p * r + np.float32(c[5])
    p = p * r + np.float32(c[4])
    p = p * r + np.float32(c[3])
    p = p * r + np.float32(c[2])
    p = p * r + np.float32(c[1])
    p = p * r + np.float32(c[0])
    return p * _float32_from_bits((np.int32(i) + np.int32(127)) << np.int32(23))


@_compiled
def _quadratic_features(x, out):
    """Write ``[x^2, x, 1]`` of each row of ``x`` (N, V) into ``out`` (N, 2V + 1)."""
    n, v = x.shape
    for t in range(n):
        for d in range(v):
            out[t, d] = x[t, d] * x[t, d]
            out[t, v + d] = x[t, d]
        out[t, 2 * v] = 1.0


@_compiled
def _posteriors_in_place(loglik):
    """Posteriors from (K, N) float32 log-likelihoods, in place: softmax over K for each column.

    Log-posteriors are floored at ``LOG_POSTERIOR_FLOOR`` (see the module docstring).
    """
    k, n = loglik.shape
    best = loglik[0].copy()
    for j in range(1, k):
        for t in range(n):
            best[t] = max(best[t], loglik[j, t])
    total = np.zeros(n, dtype=np.float32)
    for j in range(k):
        for t in range(n):
            e = _exp_of_log_posterior(max(loglik[j, t] - best[t], np.float32(LOG_POSTERIOR_FLOOR)))
            loglik[j, t] = e
            total[t] += e
    for t in range(n):
        total[t] = np.float32(1.0) / total[t]
    for j in range(k):
        for t in range(n):
            loglik[j, t] *= total[t]


@_inline
def _signed_power(z, alpha):
    """``sign(z) |z|^alpha`` in place, as ``z (|z| + tiny)^(alpha - 1)``: zero stays zero, and no sign
    test in the loop (alpha 1/2, the default, takes a square root instead of a power)."""
    tiny = np.float32(_TINY)
    if alpha == 0.5:
        for i in range(z.size):
            z[i] = z[i] / np.sqrt(abs(z[i]) + tiny)
    else:
        exponent = alpha - np.float32(1.0)
        for i in range(z.size):
            z[i] = z[i] * (abs(z[i]) + tiny) ** exponent


@_inline
def _intra_normalize(fv, k, d, offset, sigma_offset):
    """Divide each component's ``[G_alpha_k, G_mu_k, G_sigma_k]`` in each cell of ``fv`` (C, dim) by its floored norm."""
    for c in range(fv.shape[0]):
        for j in range(k):
            squares = np.float32(0.0)
            if offset:
                squares += fv[c, j] * fv[c, j]
            for i in range(d):
                squares += fv[c, offset + j * d + i] ** 2 + fv[c, sigma_offset + j * d + i] ** 2
            scale = np.float32(1.0) / max(np.sqrt(squares), np.float32(INTRA_NORM_FLOOR))
            if offset:
                fv[c, j] *= scale
            for i in range(d):
                fv[c, offset + j * d + i] *= scale
                fv[c, sigma_offset + j * d + i] *= scale


@_compiled
def _normalized_gradients(s0, s1, s2, inverse_counts, weights, mu_coefficients, sigma_coefficients,
                          weight_gradients, improved, alpha, intra, out):
    """Gradients of every cell of every image from its statistics, normalized, written to ``out``.

    Parameters
    ----------
    s0 : (C, B, K); s1, s2 : (C, B, K, D)
        From :func:`_cell_statistics`.
    inverse_counts : (C,)
        1 / descriptors per cell.
    weights : (K,)
    mu_coefficients : (2, K, D); sigma_coefficients : (3, K, D)
        From :func:`gmm_terms`: ``G_mu T = e S1 + f S0`` and ``G_sigma T = a S2 + b S1 + c S0``.
    weight_gradients, improved, alpha, intra
        As in :func:`fisher_vectors`: signed power (if improved), intra-normalization, then L2 of
        the whole vector (if improved).
    out : (B, C, dim_per_cell)
    """
    n_cells, n_images, k, d = s1.shape
    offset = k if weight_gradients else 0
    sigma_offset = offset + k * d
    for b in range(n_images):
        for c in range(n_cells):
            inv_t = inverse_counts[c]
            if weight_gradients:
                for j in range(k):
                    out[b, c, j] = (s0[c, b, j] * inv_t - weights[j]) / np.sqrt(weights[j])
            for j in range(k):
                n0 = s0[c, b, j]
                for i in range(d):
                    out[b, c, offset + j * d + i] = (
                        mu_coefficients[0, j, i] * s1[c, b, j, i] + mu_coefficients[1, j, i] * n0
                    ) * inv_t
                for i in range(d):
                    out[b, c, sigma_offset + j * d + i] = (
                        sigma_coefficients[0, j, i] * s2[c, b, j, i]
                        + sigma_coefficients[1, j, i] * s1[c, b, j, i]
                        + sigma_coefficients[2, j, i] * n0
                    ) * inv_t
        row = out[b].ravel()
        if improved:
            _signed_power(row, alpha)
        if intra:
            _intra_normalize(out[b], k, d, offset, sigma_offset)
        if improved:
            total = np.float32(0.0)
            for i in range(row.size):
                total += row[i] * row[i]
            scale = np.float32(1.0) / max(np.sqrt(total), np.float32(1e-12))
            for i in range(row.size):
                row[i] *= scale


def fit_gmm(samples: np.ndarray, n_components: int, *, reg_covar: float, max_iter: int, tol: float, random_state,
            sampled_from: str = "n_descriptor_samples"):
    """Fit a diagonal GMM with scikit-learn on a sample of descriptors.

    ``sampled_from`` says what bounds the sample's size, for the error when it is too small.

    ``reg_covar`` is relative: the variance floor is ``reg_covar`` times the mean per-dimension
    variance of ``samples``, so it means the same with or without whitening.

    Returns
    -------
    weights : (K,), means : (K, D), variances : (K, D), all float64
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    if len(samples) < n_components:
        raise InputError(f"n_components {n_components} is more than the {len(samples):,} descriptors sampled to fit "
                         f"the GMM ({sampled_from})")
    floor = reg_covar * float(samples.var(axis=0).mean())
    gmm = GaussianMixture(
        n_components=n_components,
        covariance_type="diag",
        reg_covar=max(floor, 1e-10),
        max_iter=max_iter,
        tol=tol,
        random_state=random_state,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        gmm.fit(samples)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("GMM did not converge in %d EM iterations (tol %g); using it as it is "
                    "(max_iter raises the limit: fvae fit fisher --em-iter, and fvae evaluate --fisher-model "
                    "to reuse that fit)", max_iter, tol)
    return gmm.weights_.astype(np.float64), gmm.means_.astype(np.float64), gmm.covariances_.astype(np.float64)


def patch_defaults(image_shape, *, patch_size=None, stride=None, pca_components=None) -> dict:
    """The patch size, stride and PCA dimension, with fvae's choice for each one not given.

    7x7 patches at stride 2 reduced to 32 dimensions, except on images under 14 pixels a side
    (such as the 8x8 digits), where those leave too few patches for the 2x2 spatial pyramid:
    4x4 patches at stride 1, reduced to 12 dimensions. The PCA dimension chosen is never more
    than a patch's pixels.

    Parameters
    ----------
    image_shape : tuple of (h, w)
    patch_size, stride, pca_components : int or None, default=None
        The user's choices; None for fvae's.

    Returns
    -------
    dict
        ``patch_size``, ``stride`` and ``pca_components``, as :class:`FisherVectorEncoder` takes them.

    Raises
    ------
    InputError
        If the images are smaller than the default patch (a patch size the user gives is checked
        with the rest of the layout, by :func:`~fvae.descriptors.patch_layout`).
    """
    small = min(image_shape) < 14
    if patch_size is None:
        patch_size = 4 if small else 7
        if patch_size > min(image_shape):
            h, w = image_shape
            raise InputError(f"{h}x{w} images are smaller than the default {patch_size}x{patch_size} patches: "
                             f"choose a patch_size of at most {min(h, w)}")
    if stride is None:
        stride = 1 if small else 2
    if pca_components is None:
        pca_components = min(12 if small else 32, patch_size**2)
    return {"patch_size": patch_size, "stride": stride, "pca_components": pca_components}


# ----------------------------------------------------------------------------------------------------
# the estimator


class FisherVectorEncoder(TransformerMixin, BaseEstimator):
    """Encode images as improved Fisher Vectors of dense patches.

    Pipeline: dense ``patch_size`` patches every ``stride`` pixels -> optional per-patch
    normalization -> PCA (fitted on a random sample of descriptors) -> optional xy position ->
    diagonal GMM -> Fisher Vector (optionally over a 1x1 + 2x2 spatial pyramid) -> normalization.

    Parameters
    ----------
    n_components : int, default=64
        GMM components K.
    pca_components : int, default=None
        Dimension of the PCA-reduced patch descriptor (D is this, plus 2 with ``xy``). None: 32,
        or 12 on images under 14 pixels a side, never more than a patch's pixels.
    patch_size : int, default=None
        Side of the square patches in pixels. None: 7, or 4 on images under 14 pixels a side.
    stride : int, default=None
        Step between patches in pixels. None: 2, or 1 on images under 14 pixels a side.

        What None chooses (:func:`patch_defaults`) is decided in ``fit`` from the image size, so
        the defaults also suit the 8x8 digits, where 7x7 patches would leave too few for the 2x2
        pyramid; the values used are the attributes ``patch_size_``, ``stride_`` and
        ``pca_components_``.
    patch_normalization : {"none", "center", "standardize", "l2"}, default="none"
    whiten : bool, default=False
        Whiten the PCA output.
    xy : bool, default=True
        Append each patch's centre (x, y), scaled to [-0.5, 0.5], to its descriptor.
    spatial_pyramid : bool, default=True
        Fisher Vectors of the whole image and of its four quadrants, concatenated.
    improved : bool, default=True
        Signed power normalization with ``alpha``, then L2 normalization.
    alpha : float, default=0.5
    weight_gradients : bool, default=False
        Include gradients with respect to the mixture weights (scikit-image's 2KD + K layout).
    intra_normalization : bool, default=False
        L2-normalize each component's block within each cell.
    n_descriptor_samples : int, default=50_000
        Descriptors sampled at random from the training images to fit the PCA and the GMM.
    reg_covar : float, default=1e-3
        GMM variance floor, relative to the mean variance of the descriptors.
    max_iter : int, default=200
        EM iterations of the GMM, at most. Twice scikit-learn's 100: on MNIST's patches EM took
        84 to 158 iterations to reach ``tol``.
    tol : float, default=1e-3
        EM convergence threshold on the per-descriptor log-likelihood.
    image_shape : tuple of (h, w), default=None
        Needed when images are passed flat, as (n, h * w).
    n_jobs : int, default=None
        Threads encoding blocks of images in parallel (None or 1: one; -1: every core, as joblib counts).
    random_state : int, RandomState instance or None, default=None
        Seeds the descriptor sample, the PCA and the GMM.

    Attributes
    ----------
    image_shape_ : tuple of (h, w)
    n_features_in_ : int
        Pixels per image.
    patch_size_, stride_, pca_components_ : int
        The patch geometry and PCA dimension used: the parameters, or what None chose.
    pca_projection_ : ndarray of shape (patch_size_**2, pca_components_)
    weights_ : ndarray of shape (n_components,)
    means_, covariances_ : ndarray of shape (n_components, n_features)
    n_features_out_ : int
        Length of a Fisher Vector, see :func:`fisher_vector_dim`.
    checksum_ : str
        Only on a loaded encoder, until it is refitted: the model file's checksum.
    """

    def __init__(
        self,
        *,
        n_components=64,
        pca_components=None,
        patch_size=None,
        stride=None,
        patch_normalization="none",
        whiten=False,
        xy=True,
        spatial_pyramid=True,
        improved=True,
        alpha=0.5,
        weight_gradients=False,
        intra_normalization=False,
        n_descriptor_samples=50_000,
        reg_covar=1e-3,
        max_iter=200,
        tol=1e-3,
        image_shape=None,
        n_jobs=None,
        random_state=None,
    ):
        self.n_components = n_components
        self.pca_components = pca_components
        self.patch_size = patch_size
        self.stride = stride
        self.patch_normalization = patch_normalization
        self.whiten = whiten
        self.xy = xy
        self.spatial_pyramid = spatial_pyramid
        self.improved = improved
        self.alpha = alpha
        self.weight_gradients = weight_gradients
        self.intra_normalization = intra_normalization
        self.n_descriptor_samples = n_descriptor_samples
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.tol = tol
        self.image_shape = image_shape
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X, y=None):
        """Fit the PCA and the GMM on a random sample of patches of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_images, h, w), (n_images, h, w, 1) or (n_images, h * w)
            uint8 pixels (0..255) or floats in [0, 1].
        y : ignored

        Returns
        -------
        self
        """
        self._check_params()
        images = check_image_batch(X, self.image_shape, "fit")
        sizes = patch_defaults(images.shape[1:], patch_size=self.patch_size, stride=self.stride,
                               pca_components=self.pca_components)
        if sizes["patch_size"] == 1 and self.patch_normalization in ("center", "standardize"):
            raise InputError(f"patch_normalization {self.patch_normalization} subtracts each patch's mean, which "
                             "leaves every 1x1 patch 0 (patch_size 1): take larger patches, or patch_normalization "
                             "none or l2")
        layout = patch_layout(images.shape[1:], sizes["patch_size"], sizes["stride"], self.spatial_pyramid)
        rng = check_random_state(self.random_state)
        n_total = len(images) * layout.n_patches
        n_samples = min(self.n_descriptor_samples, n_total)
        picks = np.sort(rng.choice(n_total, size=n_samples, replace=False))
        image_idx, patch_idx = np.divmod(picks, layout.n_patches)
        patches = images.reshape(len(images), -1)[image_idx[:, None], layout.pixels[patch_idx]]
        patches = normalize_patches(to_unit_float(patches, "fit"), self.patch_normalization)
        # a bigger n_descriptor_samples helps only while the images have more patches than it
        sampled_from = ("n_descriptor_samples" if n_samples < n_total
                        else f"all the patches of {counted(len(images), 'image')}")
        projection = fit_pca(patches, sizes["pca_components"], self.whiten, rng, sampled_from,
                             default_components=self.pca_components is None)
        descriptors = project(patches, projection)
        if self.xy:
            descriptors = np.concatenate([descriptors, layout.xy[patch_idx]], axis=1)
        gmm = fit_gmm(descriptors, self.n_components, reg_covar=self.reg_covar, max_iter=self.max_iter, tol=self.tol,
                      random_state=rng, sampled_from=sampled_from)
        # set together at the end: a refit that fails keeps the previous fit whole
        for name in self._chosen_at_fit:
            setattr(self, f"{name}_", sizes[name])
        self.pca_projection_ = projection
        self.weights_, self.means_, self.covariances_ = gmm
        self.image_shape_ = tuple(int(s) for s in images.shape[1:])
        self.n_features_in_ = int(np.prod(self.image_shape_))
        record_pixel_names(self, X)
        forget_file(self)
        return self

    def transform(self, X):
        """Fisher Vectors of images.

        Parameters
        ----------
        X : array-like of shape (n_images, h, w), (n_images, h, w, 1) or (n_images, h * w)
            Same size as the training images.

        Returns
        -------
        ndarray of shape (n_images, n_features_out_), float32
        """
        check_is_fitted(self, "means_")
        check_pixel_names(self, X)
        images = check_image_batch(X, self.image_shape_, "transform")
        layout = self._layout(self.image_shape_)
        gmm = gmm_terms(self.weights_, self.means_, self.covariances_, positions=layout.xy if self.xy else None)
        out = np.empty((len(images), self.n_features_out_), dtype=np.float32)
        step = max(1, BLOCK_DESCRIPTORS // layout.n_patches)
        starts = range(0, len(images), step)

        def encode(start):
            block = slice(start, start + step)
            self._encode_block(images[block], layout, gmm, out[block])

        n_jobs = min(self._n_threads(), len(starts))  # a thread more than the blocks would idle
        # One BLAS thread, whatever n_jobs: OpenBLAS's float32 products (its AVX2 kernels at
        # least) round differently with the number of threads, so a chunk encoded here and in a
        # Dask worker (which distributed starts with one BLAS thread) differed in the last bits.
        with _blas().limit(limits=1, user_api="blas"):
            if n_jobs == 1 or len(starts) == 1:
                for start in starts:
                    encode(start)
            else:
                # numpy and BLAS release the GIL: threads share `out` and scale without pickling.
                Parallel(n_jobs=n_jobs, prefer="threads")(delayed(encode)(s) for s in starts)
        return out

    def _patch_descriptors(self, images: np.ndarray, layout: PatchLayout) -> np.ndarray:
        """PCA-reduced patch descriptors without positions: ``(n_images, n_patches, pca_components_)``."""
        patches = dense_patches(to_unit_float(images, "transform"), layout)
        return project(normalize_patches(patches, self.patch_normalization), self.pca_projection_)

    def _encode_block(self, images: np.ndarray, layout: PatchLayout, gmm: GmmTerms, out: np.ndarray) -> None:
        fisher_vectors(
            self._patch_descriptors(images, layout),
            gmm,
            cells=layout.regions if self.spatial_pyramid else None,
            improved=self.improved,
            alpha=self.alpha,
            weight_gradients=self.weight_gradients,
            intra_normalization=self.intra_normalization,
            out=out,
        )

    def descriptors(self, X) -> np.ndarray:
        """The PCA-reduced (and xy-augmented) local descriptors, ``(n_images, n_patches, D)``."""
        check_is_fitted(self, "means_")
        check_pixel_names(self, X)
        images = check_image_batch(X, self.image_shape_, "descriptors")
        layout = self._layout(self.image_shape_)
        descriptors = self._patch_descriptors(images, layout)
        if self.xy:
            descriptors = np.concatenate([descriptors, np.broadcast_to(layout.xy, descriptors.shape[:2] + (2,))], axis=2)
        return descriptors

    def __sklearn_tags__(self):
        return image_encoder_tags(super().__sklearn_tags__())

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "means_")
        return np.asarray([f"fisher{i}" for i in range(self.n_features_out_)], dtype=object)

    def _layout(self, image_shape) -> PatchLayout:
        return patch_layout(image_shape, self.patch_size_, self.stride_, self.spatial_pyramid)

    @property
    def n_features_out_(self) -> int:
        """Length of the Fisher Vectors ``transform`` returns with the current parameters."""
        check_is_fitted(self, "means_")
        n_cells = 5 if self.spatial_pyramid else 1
        return fisher_vector_dim(len(self.weights_), self.means_.shape[1], n_cells, self.weight_gradients)

    def _n_threads(self) -> int:
        """The threads ``n_jobs`` asks for, counted as joblib's threading backend counts them
        (-1: every core, -2: all but one). Not ``joblib.effective_n_jobs``: it asks the default
        process backend, which in a daemon process (a Dask worker) warns and answers 1."""
        if self.n_jobs is None:
            return 1
        if not is_whole_number(self.n_jobs, -math.inf) or self.n_jobs == 0:
            raise InputError(f"n_jobs must be None, a number of threads >= 1, or negative (-1: every core), "
                             f"got {self.n_jobs!r}")
        return self.n_jobs if self.n_jobs > 0 else max(1, cpu_count() + 1 + self.n_jobs)

    def _check_params(self) -> None:
        if self.patch_normalization not in PATCH_NORMALIZATIONS:
            raise InputError(f"patch_normalization must be one of {PATCH_NORMALIZATIONS}, got {self.patch_normalization!r}")
        for name in ("n_components", "pca_components", "patch_size", "stride", "n_descriptor_samples", "max_iter"):
            value = getattr(self, name)
            if not (is_whole_number(value, 1) or (value is None and name in self._chosen_at_fit)):
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < self.alpha <= 1:
            raise InputError(f"alpha must be in (0, 1], got {self.alpha}")
        # written as "not (inside)" so that NaN is refused too
        if not 0 <= self.reg_covar < math.inf:
            raise InputError(f"reg_covar must be >= 0, got {self.reg_covar}")
        if not 0 < self.tol < math.inf:
            raise InputError(f"tol must be positive, got {self.tol}")

    # persistence -------------------------------------------------------------------------------

    _fitted_arrays = ("pca_projection_", "weights_", "means_", "covariances_")
    #: Parameters that None leaves to fit; the values used are saved as the 0-d arrays NAME_.
    _chosen_at_fit = ("patch_size", "stride", "pca_components")

    def save(self, path, *, force: bool = False) -> str:
        """Save the fitted encoder (arrays in .npz, JSON header; no pickle). Returns the checksum."""
        check_is_fitted(self, "means_")
        return save_model(
            path,
            method="fisher",
            params=self.get_params(),
            arrays={name: getattr(self, name) for name in self._fitted_arrays}
            | {f"{name}_": np.asarray(getattr(self, f"{name}_"), np.int64) for name in self._chosen_at_fit}
            | pixel_names_member(self),
            input_shape=self.image_shape_,
            force=force,
        )

    @classmethod
    def load(cls, path) -> "FisherVectorEncoder":
        """Load an encoder saved by :meth:`save`; its output is bit-identical to the saved one's."""
        header, arrays = load_model(path, method="fisher")
        encoder = cls(**header["params"])
        for name in cls._fitted_arrays:
            setattr(encoder, name, arrays[name])
        for name in cls._chosen_at_fit:
            # files saved before None was a choice hold only the parameter, always a number
            used = arrays.get(f"{name}_", header["params"][name])
            setattr(encoder, f"{name}_", int(used))
        encoder.image_shape_ = tuple(header["input_shape"])
        encoder.n_features_in_ = int(np.prod(encoder.image_shape_))
        restore_pixel_names(encoder, arrays)
        encoder.checksum_ = header["checksum"]
        return encoder
