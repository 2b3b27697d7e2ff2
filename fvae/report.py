"""Figures (matplotlib, Agg backend; the GIF with Pillow). Every writer goes through
:func:`~fvae.persist.atomic_output`, so a figure file is either complete or absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import to_unit_float
from .persist import atomic_output


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tile(images: np.ndarray, n_cols: int | None = None, pad: int = 1) -> np.ndarray:
    """Arrange (n, h, w) images in a grid with ``pad`` pixels of white gap: one 2-D array."""
    images = np.asarray(images, dtype=np.float32)
    n, h, w = images.shape
    n_cols = n_cols or int(np.ceil(np.sqrt(n)))
    n_rows = int(np.ceil(n / n_cols))
    cells = np.ones((n_rows * n_cols, h + pad, w + pad), dtype=np.float32)
    cells[:n, :h, :w] = images
    grid = cells.reshape(n_rows, n_cols, h + pad, w + pad).transpose(0, 2, 1, 3)
    return grid.reshape(n_rows * (h + pad), n_cols * (w + pad))[:-pad or None, :-pad or None]


def save_grid(images, path, *, n_cols=None, title=None, row_labels=None, force=True) -> Path:
    """Save images in [0, 1] as one grid PNG (row labels on the left, e.g. a class per row)."""
    plt = _pyplot()
    grid = tile(images, n_cols)
    height = max(2.0, 6.0 * grid.shape[0] / grid.shape[1])
    fig, ax = plt.subplots(figsize=(6, height))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    if row_labels is not None:
        h = images.shape[1]
        ax.set_yticks([(h + 1) * i + h / 2 for i in range(len(row_labels))], [str(r) for r in row_labels])
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title)
    return _save(fig, path, force)


def save_gif(frames, path, *, seconds_per_frame=0.3, scale=3, force=True) -> Path:
    """Assemble 2-D frames in [0, 1] (e.g. one sample grid per epoch) into a looping GIF."""
    from PIL import Image

    pictures = [
        Image.fromarray((np.clip(f, 0, 1) * 255).astype(np.uint8)).resize(
            (f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST)
        for f in frames
    ]
    with atomic_output(path, force=force) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:],
                         duration=int(seconds_per_frame * 1000), loop=0)
    return Path(path)


def save_reconstructions(originals, reconstructions, path, *, n=16, force=True) -> Path:
    """Originals (top row) above their reconstructions (bottom row)."""
    pairs = np.concatenate([originals[:n], reconstructions[:n]])
    return save_grid(pairs, path, n_cols=min(n, len(originals)), title="originals (top) | reconstructions (bottom)",
                     force=force)


def save_embedding(codes, labels, path, *, title="latent codes", force=True) -> Path:
    """2-D scatter of codes coloured by class; PCA to 2-D when the codes are wider."""
    plt = _pyplot()
    codes = np.asarray(codes, dtype=np.float64)
    axes_label = ("z1", "z2")
    if codes.shape[1] > 2:
        from sklearn.decomposition import PCA

        codes = PCA(n_components=2, random_state=0).fit_transform(codes)
        axes_label = ("PC 1", "PC 2")
    fig, ax = plt.subplots(figsize=(6, 5))
    scatter = ax.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=4, alpha=0.7)
    if labels is not None:
        fig.colorbar(scatter, ax=ax, label="class")
    ax.set_xlabel(axes_label[0])
    ax.set_ylabel(axes_label[1])
    ax.set_title(title)
    return _save(fig, path, force)


def save_curves(history: dict, path, *, force=True) -> Path:
    """Training and validation ELBO, reconstruction term and KL per epoch."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key in zip(axes, ("elbo", "reconstruction", "kl")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in history:
                ax.plot(np.arange(1, len(history[prefix + key]) + 1), history[prefix + key], style,
                        label="validation" if prefix else "train")
        ax.set_title(f"{key} (nats)")
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    return _save(fig, path, force)


def _save(fig, path, force) -> Path:
    plt = _pyplot()
    try:
        with atomic_output(path, force=force) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(path)


def vae_figures(encoder, images, labels, out_dir, *, frames=(), force=True) -> list[Path]:
    """The VAE's figures in ``out_dir``: samples, reconstructions, latent codes in 2-D, training
    curves, the training-progress GIF (from ``frames``) and, for latent_dim 2, the 20x20 manifold.

    Parameters
    ----------
    encoder : fitted VAEEncoder
    images, labels : test images (n, h, w) and their labels (or None)
    out_dir : path-like
    frames : list of 2-D arrays
        One sample grid per epoch, from the training callback.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    images = images[:2000]
    labels = None if labels is None else labels[:2000]
    cond = bool(encoder.conditional)
    if cond:
        n_classes = encoder.n_classes_
        rows = [encoder.sample(10, label=c, random_state=0) for c in range(n_classes)]
        written.append(save_grid(np.concatenate(rows), out / "samples.png", n_cols=10, row_labels=range(n_classes),
                                 title="samples, one row per class", force=force))
    else:
        written.append(save_grid(encoder.sample(64, random_state=0), out / "samples.png", n_cols=8,
                                 title="samples from the prior", force=force))
    codes = encoder.transform(images, labels if cond else None)[:, : encoder.latent_dim]
    written.append(save_reconstructions(to_unit_float(images, "figures"),
                                        encoder.inverse_transform(codes, labels if cond else None),
                                        out / "reconstructions.png", force=force))
    written.append(save_embedding(codes, labels, out / "latent.png",
                                  title="test codes (posterior means)" + (", PCA" if encoder.latent_dim > 2 else ""),
                                  force=force))
    if encoder.latent_dim == 2 and not cond:
        grid = np.linspace(-3, 3, 20, dtype=np.float32)
        z = np.array([[x, y] for y in grid[::-1] for x in grid], dtype=np.float32)
        written.append(save_grid(encoder.inverse_transform(z), out / "manifold.png", n_cols=20,
                                 title="latent manifold over [-3, 3]^2", force=force))
    if encoder.history_:
        written.append(save_curves(encoder.history_, out / "training_curves.png", force=force))
    if frames:
        written.append(save_gif(list(frames), out / "training.gif", force=force))
    return written
