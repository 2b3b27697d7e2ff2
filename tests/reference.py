"""Slow, obviously-correct float64 Fisher Vector, one image at a time, straight from the formulas
of DESIGN.md. The batched float32 implementation is checked against this."""

import numpy as np


def posteriors(x, weights, means, variances):
    """gamma_t(k) for descriptors x (T, D), by direct evaluation of each Gaussian."""
    log_p = np.empty((len(x), len(weights)))
    for k in range(len(weights)):
        diff = x - means[k]
        log_p[:, k] = (
            np.log(weights[k])
            - 0.5 * np.sum(np.log(2 * np.pi * variances[k]))
            - 0.5 * np.sum(diff**2 / variances[k], axis=1)
        )
    log_p -= log_p.max(axis=1, keepdims=True)
    p = np.exp(log_p)
    return p / p.sum(axis=1, keepdims=True)


def cell_gradients(x, weights, means, variances, weight_gradients):
    """[G_alpha (K)], G_mu (K*D), G_sigma (K*D) of one set of descriptors."""
    x = np.asarray(x, dtype=np.float64)
    T = len(x)
    gamma = posteriors(x, weights, means, variances)
    g_alpha, g_mu, g_sigma = [], [], []
    for k in range(len(weights)):
        sigma = np.sqrt(variances[k])
        g = gamma[:, k : k + 1]
        g_alpha.append(np.sum(gamma[:, k] - weights[k]) / (T * np.sqrt(weights[k])))
        g_mu.append(np.sum(g * (x - means[k]) / sigma, axis=0) / (T * np.sqrt(weights[k])))
        g_sigma.append(np.sum(g * ((x - means[k]) ** 2 / variances[k] - 1), axis=0) / (T * np.sqrt(2 * weights[k])))
    parts = [np.ravel(g_mu), np.ravel(g_sigma)]
    if weight_gradients:
        parts.insert(0, np.asarray(g_alpha))
    return np.concatenate(parts)


def fisher_vector(x, weights, means, variances, *, cells=None, improved=True, alpha=0.5,
                  weight_gradients=False, intra_normalization=False):
    """Fisher Vector of one image's descriptors x (T, D), float64, per DESIGN.md."""
    weights, means, variances = (np.asarray(a, dtype=np.float64) for a in (weights, means, variances))
    K = len(weights)
    groups = [x] if not cells else [x] + [x[c] for c in cells]
    blocks = [cell_gradients(g, weights, means, variances, weight_gradients) for g in groups]
    if improved:
        blocks = [np.sign(b) * np.abs(b) ** alpha for b in blocks]
    if intra_normalization:
        normalized = []
        for b in blocks:
            b = b.copy()
            offset = K if weight_gradients else 0
            D = (len(b) - offset) // (2 * K)
            for k in range(K):
                idx = list(range(offset + k * D, offset + (k + 1) * D))
                idx += list(range(offset + K * D + k * D, offset + K * D + (k + 1) * D))
                if weight_gradients:
                    idx.append(k)
                b[idx] /= max(np.linalg.norm(b[idx]), 1e-3)  # documented floor: empty components stay ~0
            normalized.append(b)
        blocks = normalized
    fv = np.concatenate(blocks)
    if improved:
        fv /= max(np.linalg.norm(fv), 1e-12)
    return fv
