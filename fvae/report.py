"""Figures (matplotlib, Agg backend; the GIF with Pillow), and the terminal's progress bar.
Every writer goes through :func:`~fvae.persist.atomic_output`, so a figure file is either
complete or absent."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
import warnings
from pathlib import Path

import numpy as np

from .data import class_names_of, to_unit_float
from .errors import InputError
from .persist import atomic_output, history_paths, refuse_overwrite, refuse_unwritable

log = logging.getLogger("fvae")
#: The family matplotlib draws text in unless told otherwise; it comes with matplotlib.
BASE_FONT = "DejaVu Sans"
#: Whether an enclosing :func:`drawing_names` block has chosen the fonts (and told what is missing).
_fonts_chosen = contextvars.ContextVar("fvae_fonts_chosen", default=False)


def counted(n: int, noun: str) -> str:
    """'1 image', '2 images', '1,000 images'."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def progress_bar(description: str, total: int):
    """A transient rich progress bar on stderr: the description, the bar, done/total, a free
    ``info`` field and the time left. Returns ``(progress, task)``; the caller starts and stops
    it (or uses ``progress`` as a context manager) and sets ``info`` with ``progress.update``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    return progress, progress.add_task(description, total=total, info="")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _characters(texts) -> set[int]:
    """The code points a font needs to draw ``texts`` (spaces need none)."""
    return {ord(c) for text in texts for c in str(text) if not c.isspace()}


@functools.lru_cache(maxsize=None)
def _characters_of_font(path: str) -> frozenset[int]:
    """The code points the font file at ``path`` has glyphs for: none if it cannot be read."""
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def fonts_for(texts) -> tuple[list[tuple[str, str]], str]:
    """The fonts that draw ``texts``, and the characters of them that no installed font has.

    Returns ``(fonts, missing)``: ``fonts`` lists ``(family, file)`` pairs, DejaVu Sans first,
    then, for the characters it lacks (Chinese class names, say), each installed font that has
    some the ones before it lack (regular faces first, then by name, so the choice is the same
    on every run; never matplotlib's Last Resort font, whose glyphs are boxes). Only where DejaVu
    Sans lacks a character are the other fonts read.
    """
    from matplotlib import font_manager

    base = font_manager.findfont(BASE_FONT, fallback_to_default=True)
    fonts, missing = [(BASE_FONT, base)], _characters(texts) - _characters_of_font(base)
    if not missing:  # the common case: the installed fonts are neither listed nor read
        return fonts, ""
    regular_first = sorted(font_manager.fontManager.ttflist, key=lambda e: (
        e.style != "normal", e.weight not in (400, "normal", "regular"), e.name, e.fname))
    for entry in regular_first:
        if entry.name.startswith("Last Resort"):  # matplotlib's: a box for every character there is
            continue
        found = missing & _characters_of_font(entry.fname)
        if found:
            fonts.append((entry.name, entry.fname))
            missing -= found
            if not missing:
                break
    return fonts, "".join(map(chr, sorted(missing)))


def _names_in(class_names) -> list[str]:
    """The names of a ``class_names`` given as label -> name, as a sequence, or None."""
    if class_names is None:
        return []
    return [str(name) for name in (class_names.values() if isinstance(class_names, dict) else class_names)]


@contextlib.contextmanager
def drawing_names(names):
    """Within the block, figures draw ``names`` (class names) in fonts that have their characters.

    matplotlib draws in DejaVu Sans, which has no Chinese or Japanese, say: class folders named
    so came out as boxes, with a two-line warning per figure and character. Here the installed
    fonts that have them follow DejaVu Sans in the font family, as matplotlib's fallback; the
    characters no font here has are told once, in one line. An inner block (save_samples within
    vae_figures) keeps the outer block's choice.
    """
    if _fonts_chosen.get():
        yield
        return
    import matplotlib

    fonts, missing = fonts_for(names)
    if missing:
        log.warning("figures: no font here has %s (in the class names), so they are drawn as boxes; "
                    "a font that has them, once installed, is used", " ".join(missing))
    token = _fonts_chosen.set(True)
    font_log = logging.getLogger("matplotlib.font_manager")
    level = font_log.level
    # a fallback font without a regular face: "Failed to find font weight normal", then it uses another
    font_log.setLevel(logging.ERROR)
    try:
        with matplotlib.rc_context({"font.family": [family for family, _ in fonts]}), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
            yield
    finally:
        font_log.setLevel(level)
        _fonts_chosen.reset(token)


def _gif_font(texts, size: int = 14):
    """Pillow's own font, or where ``texts`` go beyond Latin-1, the font file that has the most
    of their characters (DejaVu Sans on a tie): Pillow draws a text in one font, without fallback."""
    from PIL import ImageFont

    needed = _characters(texts)
    if all(code < 256 for code in needed):
        return ImageFont.load_default(size=size)
    fonts, _ = fonts_for(texts)
    path = max((path for _, path in fonts), key=lambda path: len(needed & _characters_of_font(path)))
    return ImageFont.truetype(path, size)


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


DPI = 100
GRID_PIXELS = 480  # small grids are enlarged to about this side, by a whole factor
GRID_MAX_PIXELS = 4096  # larger grids are reduced by a whole factor, each pixel the mean of its block
CAPTION_PIXELS = 20
PANEL_GAP = 10  # white pixels between panels (a grid's images are 1 apart)
MANIFOLD_SIDE = 20  # latent points a side of the manifold figure


def _grid_scale(shape) -> int:
    """The whole factor that enlarges a grid of this (height, width) to about GRID_PIXELS a side."""
    return max(1, round(GRID_PIXELS / max(shape)))


def _reduced(grid: np.ndarray, factor: int) -> np.ndarray:
    """``grid`` with each ``factor`` x ``factor`` block replaced by its mean (white past the edges)."""
    h, w = (-(-side // factor) * factor for side in grid.shape)
    padded = np.ones((h, w), dtype=grid.dtype)
    padded[: grid.shape[0], : grid.shape[1]] = grid
    return padded.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def save_grid(images, path, *, n_cols=None, title=None, row_labels=None, force=True) -> Path:
    """Save images in [0, 1] as one grid PNG (row labels on the left, e.g. a class per row).

    Every image pixel becomes a whole square of screen pixels, never a fraction: a grid wider than
    the figure used to be resampled, dropping rows and columns of the 20x20 manifold's digits. A
    grid over GRID_MAX_PIXELS a side (the manifold of 256-pixel images: 5,139) is reduced instead,
    by block means.
    """
    images = np.asarray(images)
    labels = None
    if row_labels is not None:
        row_height = images.shape[1] + 1
        labels = [(row_height * i + row_height / 2, str(label)) for i, label in enumerate(row_labels)]
    return _save_canvas(tile(images, n_cols), path, title=title, row_labels=labels, force=force)


def save_panels(panels, path, *, names, title=None, n_cols=5, force=True) -> Path:
    """Save 2-D images in [0, 1] of one shape (e.g. a manifold grid per class) as one PNG, up to
    ``n_cols`` a row, each under its name and drawn as :func:`save_grid` draws a grid."""
    panels = np.asarray(panels, dtype=np.float32)
    n, height, width = panels.shape
    cells = np.ones((n, CAPTION_PIXELS + height, width), dtype=np.float32)  # white room for the name
    cells[:, CAPTION_PIXELS:] = panels
    n_cols = min(n_cols, n)
    captions = [((i // n_cols) * (CAPTION_PIXELS + height + PANEL_GAP) + CAPTION_PIXELS / 2,
                 (i % n_cols) * (width + PANEL_GAP) + width / 2, str(name)) for i, name in enumerate(names)]
    return _save_canvas(tile(cells, n_cols, pad=PANEL_GAP), path, title=title, captions=captions, force=force)


def _save_canvas(grid, path, *, title=None, row_labels=None, captions=(), force=True) -> Path:
    """Draw a 2-D array in [0, 1] with each of its pixels a whole square of screen pixels (reduced
    by block means first when over GRID_MAX_PIXELS a side) and save it as a PNG.

    ``row_labels`` are ``(y, text)`` pairs drawn on the left, ``captions`` ``(y, x, text)``
    triples drawn centred there; both in pixels of ``grid``.
    """
    plt = _pyplot()
    reduction = -(-max(grid.shape) // GRID_MAX_PIXELS)
    if reduction > 1:
        grid = _reduced(grid, reduction)
    scale = _grid_scale(grid.shape)
    shown = scale / max(reduction, 1)  # screen pixels per pixel of the given grid
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    left, top = (30 if row_labels is not None else 0), (30 if title else 0)  # room for the labels and the title
    width, height = grid.shape[1] + left, grid.shape[0] + top
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((left / width, 0, grid.shape[1] / width, grid.shape[0] / height))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.spines[:].set_visible(False)  # a frame would be drawn over the outer images' edge pixels
    ax.set_xticks([])
    if row_labels is not None:
        ax.set_yticks([y * shown for y, _ in row_labels], [text for _, text in row_labels])
    else:
        ax.set_yticks([])
    for y, x, text in captions:
        ax.text(x * shown, y * shown, text, ha="center", va="center")
    if title:
        ax.set_title(title)
    return _save(fig, path, force, tight=True)  # tight: a title wider than a narrow grid is kept whole


def save_gif(frames, path, *, captions=None, row_labels=None, seconds_per_frame=0.3, last_frame_seconds=2.0,
             force=True) -> Path:
    """Assemble 2-D frames in [0, 1] (e.g. one sample grid per epoch) into a looping GIF.

    Each frame is enlarged as :func:`save_grid` enlarges a grid, under its caption when
    ``captions`` gives one per frame (e.g. "epoch 3"), with ``row_labels`` (e.g. a class per row
    of a :func:`tile` of images) on its left; the last frame is held longer, so the trained
    model's samples can be looked at before the loop starts over.
    """
    from PIL import Image, ImageDraw

    scale = _grid_scale(frames[0].shape)
    font = _gif_font([*(captions or ()), *(row_labels or ())])
    top = CAPTION_PIXELS if captions is not None else 0
    left, row_pitch = 0, 0.0
    if row_labels is not None:
        left = 8 + math.ceil(max(font.getlength(str(text)) for text in row_labels))
        row_pitch = (frames[0].shape[0] + 1) * scale / len(row_labels)  # a tile's rows: the last has no gap below
    pictures = []
    for i, frame in enumerate(frames):
        grid = Image.fromarray((np.clip(frame, 0, 1) * 255).astype(np.uint8)).resize(
            (frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
        picture = Image.new("L", (left + grid.width, top + grid.height), 255)
        picture.paste(grid, (left, top))
        draw = ImageDraw.Draw(picture)
        if captions is not None:
            draw.text((4, 2), captions[i], fill=0, font=font)
        for row, text in enumerate(row_labels or ()):
            draw.text((left - 4, top + row_pitch * (row + 0.5)), str(text), fill=0, font=font, anchor="rm")
        pictures.append(picture)
    durations = [round(seconds_per_frame * 1000)] * (len(pictures) - 1) + [round(last_frame_seconds * 1000)]
    with atomic_output(path, force=force) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return Path(path)


def save_reconstructions(originals, reconstructions, path, *, n=16, force=True) -> Path:
    """Originals (top row) above their reconstructions (bottom row)."""
    pairs = np.concatenate([originals[:n], reconstructions[:n]])
    return save_grid(pairs, path, n_cols=min(n, len(originals)), title="originals (top) | reconstructions (bottom)",
                     force=force)


#: Up to this many classes get a colour each (tab10, tab20) and a named tick; more share a colour map.
MAX_NAMED_CLASSES = 20


def _class_colours(labels) -> dict:
    """``scatter`` keywords colouring points by class: one colour per class, each class's colour
    the same in every panel, or a continuous map over the labels when there are too many classes."""
    classes = np.unique(labels)
    if len(classes) > MAX_NAMED_CLASSES:
        return {"c": labels, "cmap": "viridis"}
    from matplotlib.colors import BoundaryNorm, ListedColormap

    palette = _pyplot().get_cmap("tab10" if len(classes) <= 10 else "tab20").colors[: len(classes)]
    return {"c": np.searchsorted(classes, labels), "cmap": ListedColormap(palette),
            "norm": BoundaryNorm(np.arange(len(classes) + 1) - 0.5, len(classes))}


def _scatter_2d(ax, codes, labels, title):
    """Codes in 2-D coloured by class on ``ax``: PCA to 2-D when the codes are wider, and 1-D
    codes spread by class (one row of points per class)."""
    codes = np.asarray(codes, dtype=np.float64)
    axes_label = ("z1", "z2")
    if codes.shape[1] > 2:
        axes_label = ("PC 1", "PC 2")
        codes = _first_two_principal_components(codes)
    elif codes.shape[1] == 1:
        axes_label, classes, rows = ("z1", ""), [], np.zeros(len(codes))
        if labels is not None:
            axes_label = ("z1", "class")
            classes, rows = np.unique(labels, return_inverse=True)
        ax.set_yticks(np.arange(len(classes)), labels=[str(c) for c in classes])
        codes = np.column_stack([codes[:, 0], rows])
    colours = {} if labels is None else _class_colours(labels)
    scatter = ax.scatter(codes[:, 0], codes[:, 1], s=4, alpha=0.7, **colours)
    ax.set_xlabel(axes_label[0])
    ax.set_ylabel(axes_label[1])
    ax.set_title(title)
    return scatter


def _first_two_principal_components(codes: np.ndarray) -> np.ndarray:
    """The codes' coordinates (n, 2) on their first two principal axes; a single code (a test
    split of one image) has none, and sits at the origin."""
    from sklearn.decomposition import PCA

    if len(codes) < 2:
        return np.zeros((len(codes), 2))
    return PCA(n_components=2, random_state=0).fit_transform(codes)


def _class_colorbar(fig, scatter, axes, labels, class_names=None) -> None:
    """The colour bar of a scatter coloured by :func:`_class_colours`: a tick per class, named by
    ``class_names`` (label -> name) where it names the label."""
    bar = fig.colorbar(scatter, ax=axes, label="class")
    classes = np.unique(labels)
    if len(classes) <= MAX_NAMED_CLASSES:
        bar.set_ticks(np.arange(len(classes)), labels=class_names_of(classes, class_names))


def save_embedding(codes, labels, path, *, title="latent codes", class_names=None, force=True) -> Path:
    """2-D scatter of codes coloured by class (``class_names``: label -> name); PCA to 2-D when
    the codes are wider."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    scatter = _scatter_2d(ax, codes, labels, title)
    if labels is not None:
        _class_colorbar(fig, scatter, ax, labels, class_names)
    return _save(fig, path, force)


def save_embeddings(codes: dict, labels, path, *, class_names=None, force=True) -> Path:
    """One 2-D scatter per encoding (name -> codes), side by side, coloured by class
    (``class_names``: label -> name)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(codes), figsize=(4.2 * len(codes), 4), squeeze=False, layout="constrained")
    for ax, (name, z) in zip(axes[0], codes.items()):
        scatter = _scatter_2d(ax, z, labels, f"{name} ({z.shape[1]} dims)")
    _class_colorbar(fig, scatter, list(axes[0]), labels, class_names)
    return _save(fig, path, force)


def save_confusion_matrices(matrices: dict, path, *, class_names=None, force=True) -> Path:
    """Row-normalized confusion matrices (name -> counts, rows = true class), one panel each, the
    classes named on both axes by ``class_names`` (default: 0, 1, ...)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.8 * len(matrices), 3.8), squeeze=False, layout="constrained")
    ticks = np.arange(len(next(iter(matrices.values()))))
    tick_names = [str(c) for c in (ticks if class_names is None else class_names)]
    long_names = max(len(text) for text in tick_names) > 2
    for ax, (name, counts) in zip(axes[0], matrices.items()):
        counts = np.asarray(counts, dtype=np.float64)
        rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        accuracy = np.trace(counts) / max(counts.sum(), 1)
        ax.set_title(f"{name}: {100 * accuracy:.1f}%")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(ticks, tick_names, rotation=90 if long_names else 0, fontsize=7 if long_names else None)
        ax.set_yticks(ticks, tick_names, fontsize=7 if long_names else None)
    return _save(fig, path, force, tight=True)  # square panels: the layout alone cut the titles


def save_label_efficiency(curves: dict, path, *, force=True) -> Path:
    """Test accuracy against the number of train labels (name -> curve points), log x axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        n = [p["n_labels"] for p in points]
        ax.errorbar(n, [p["accuracy_mean"] for p in points], yerr=[p["accuracy_std"] for p in points],
                    marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("labelled train images")
    ax.set_ylabel("test accuracy (logistic regression)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path, force)


def save_curves(history: dict, path, *, force=True) -> Path:
    """Training and validation ELBO, reconstruction term and KL per epoch, and the epoch whose
    weights training kept (``history["best_epoch"]``) as a dotted line."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key in zip(axes, ("elbo", "reconstruction", "kl")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in history:
                ax.plot(np.arange(1, len(history[prefix + key]) + 1), history[prefix + key], style,
                        label="validation" if prefix else "train")
        if history.get("best_epoch") is not None:  # 0-based; the axis counts epochs from 1
            ax.axvline(history["best_epoch"] + 1, color="0.5", linestyle=":", linewidth=1.2,
                       label=f"kept: epoch {history['best_epoch'] + 1}")
        ax.set_title(f"{key} (nats)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.tight_layout()
    return _save(fig, path, force)


def _save(fig, path, force, tight=False) -> Path:
    plt = _pyplot()
    try:
        with atomic_output(path, force=force) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight" if tight else None, pad_inches=0.05)
    finally:
        plt.close(fig)
    return Path(path)


def save_samples(encoder, path, *, n=64, label=None, random_state=0, class_names=None, force=True) -> int:
    """Draw ``n`` images from a fitted VAE's prior and save them as a grid; returns how many.

    A conditional VAE draws ``label``'s class, or without one every class: one row per class of
    ``ceil(n / n_classes)`` samples (so ``n`` is rounded up to whole rows), named by
    ``class_names`` (label -> name) where it names them.
    """
    from .vae.encoder import draw_samples

    images, _ = draw_samples(encoder, n, label=label, random_state=random_state)
    with drawing_names(_names_in(class_names)):
        if encoder.conditional and label is None:
            save_grid(images, path, n_cols=len(images) // encoder.n_classes_,
                      row_labels=class_names_of(encoder.classes_, class_names), title="samples, one row per class",
                      force=force)
        else:
            title = "samples from the prior" if label is None else f"class {class_names_of([label], class_names)[0]}"
            save_grid(images, path, title=title, force=force)
    return len(images)


def manifold_latents(side: int = MANIFOLD_SIDE, extent: float = 3.0) -> np.ndarray:
    """A ``side`` x ``side`` grid of 2-D latent vectors over [-extent, extent]^2, row by row from
    the top (largest z_2) and left to right (z_1 growing): float32 of shape (side * side, 2)."""
    axis = np.linspace(-extent, extent, side, dtype=np.float32)
    z_1, z_2 = np.meshgrid(axis, axis[::-1])
    return np.stack([z_1.ravel(), z_2.ravel()], axis=1)


def save_manifold(encoder, path, *, class_names=None, force=True) -> Path:
    """The images a fitted VAE with a 2-D latent decodes from a 20x20 grid over [-3, 3]^2; a
    conditional VAE draws it once per class, a panel each, named by ``class_names`` (label ->
    name) where it names them (Kingma et al. 2014's handwriting styles, the class held fixed)."""
    z = manifold_latents()
    title = "latent manifold over [-3, 3]^2"
    if not encoder.conditional:
        return save_grid(encoder.inverse_transform(z), path, n_cols=MANIFOLD_SIDE, title=title, force=force)
    panels = [tile(encoder.sample(len(z), label=c, z=z), MANIFOLD_SIDE) for c in encoder.classes_]
    return save_panels(panels, path, names=class_names_of(encoder.classes_, class_names),
                       title=title + ", a panel per class", force=force)


def spread_rows(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` row indices evenly spread over ``n`` rows: splits are often sorted by class,
    and the first rows would show only the first class."""
    return np.linspace(0, n - 1, min(n, k)).astype(int)


def vae_figure_names(latent_dim: int) -> list[str]:
    """The files :func:`vae_figures` writes for an encoder with a training history and frames."""
    manifold = ["manifold.png"] if latent_dim == 2 else []
    return ["samples.png", "reconstructions.png", "latent.png", *manifold, "training_curves.png", "training.gif"]


def refuse_vae_outputs(model_path, figures_dir, *, latent_dim: int, force: bool) -> None:
    """Before a VAE is trained: its model file, its history files and its figures (``figures_dir``,
    unless None) can be written without overwriting any file (unless ``force``), their folders
    take files, and neither ``figures_dir`` nor a parent of it is a file.

    Needs no TensorFlow, so that ``fvae fit vae`` refuses at once instead of after importing it.
    """
    refuse_overwrite(model_path, *history_paths(model_path).values(), force=force)
    refuse_unwritable(model_path, force=True)  # its folder takes files, before hours of training
    if figures_dir is None:
        return
    figures_dir = Path(figures_dir)
    existing = figures_dir  # the folder or its nearest existing parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"--figures {figures_dir}: {'a file' if existing == figures_dir else f'{existing} is a file'}, "
                         "not a folder")
    names = vae_figure_names(latent_dim)
    refuse_overwrite(*(figures_dir / name for name in names), force=force)
    refuse_unwritable(figures_dir / names[0], force=True)  # the folder takes files


def vae_figures(encoder, images, labels, out_dir, *, frames=(), class_names=None, force=True) -> list[Path]:
    """The VAE's figures in ``out_dir``: samples, reconstructions, latent codes in 2-D, training
    curves, the training-progress GIF (from ``frames``) and, for latent_dim 2, the 20x20 manifold
    (a panel per class for a conditional VAE).

    Parameters
    ----------
    encoder : fitted VAEEncoder
    images, labels : test images (n, h, w) and their labels (or None)
    out_dir : path-like
    frames : list of 2-D arrays
        One sample grid per epoch, from the training callback.
    class_names : dict of int to str, default=None
        Names of the classes (label -> name) for the samples' rows and the latent plot's colours.
    """
    with drawing_names(_names_in(class_names)):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = {name: out / name for name in vae_figure_names(encoder.latent_dim)}
        written = []
        shown = spread_rows(len(images), 2000)
        images = images[shown]
        labels = None if labels is None else labels[shown]
        cond = bool(encoder.conditional)
        cond_labels = labels if cond else None
        save_samples(encoder, path["samples.png"], class_names=class_names, force=force)
        written.append(path["samples.png"])
        codes = encoder.transform(images, cond_labels)[:, : encoder.latent_dim]
        picked = spread_rows(len(images), 16)
        decoded = encoder.inverse_transform(codes[picked], None if cond_labels is None else cond_labels[picked])
        written.append(save_reconstructions(to_unit_float(images[picked], "figures"), decoded,
                                            path["reconstructions.png"], force=force))
        title = "test codes (posterior means)" + (", PCA" if encoder.latent_dim > 2 else "")
        written.append(save_embedding(codes, labels, path["latent.png"], title=title, class_names=class_names,
                                      force=force))
        if "manifold.png" in path:
            written.append(save_manifold(encoder, path["manifold.png"], class_names=class_names, force=force))
        if encoder.history_:
            written.append(save_curves(encoder.history_, path["training_curves.png"], force=force))
        if frames:
            # the callback keeps one frame per finished epoch, from the first
            captions = [f"epoch {epoch}" for epoch in range(1, len(frames) + 1)]
            rows = class_names_of(encoder.classes_, class_names) if cond else None  # EpochSamples: a row per class
            written.append(save_gif(list(frames), path["training.gif"], captions=captions, row_labels=rows,
                                    force=force))
        return written


# ----------------------------------------------------------------------------------------------------
# the report of ``fvae evaluate``

RECONSTRUCTION_ROWS = (("vae", "VAE decoder"), ("pca", "PCA inverse"), ("ridge_fisher", "ridge <- fisher"),
                       ("ridge_vae", "ridge <- vae"), ("ridge_pca", "ridge <- pca"), ("ridge_raw", "ridge <- raw"))


def evaluation_figures(report: dict, artifacts: dict, out_dir, *, n_shown: int = 2000) -> list[Path]:
    """The figures of an evaluation in ``out_dir``: confusion matrices, the label-efficiency curve,
    the reconstruction grid, 2-D embeddings of every encoding and, with a VAE, its samples and
    training curves. Returns the paths written."""
    encodings, data = report["encodings"], report["data"]
    with drawing_names(data["class_names"]):
        out = Path(out_dir)
        n_test = len(artifacts["test_labels"])
        shown_rows = spread_rows(n_test, n_shown)
        labels = artifacts["test_labels"][shown_rows]
        written = [
            save_confusion_matrices({n: e["classification"]["logistic"]["confusion"] for n, e in encodings.items()},
                                    out / "confusion_matrices.png", class_names=data["class_names"]),
            save_label_efficiency({n: e["label_efficiency"] for n, e in encodings.items()},
                                  out / "label_efficiency.png"),
            save_embeddings({n: e.test[shown_rows] for n, e in artifacts["encodings"].items()}, labels,
                            out / "embeddings.png", class_names=dict(zip(data["classes"], data["class_names"]))),
        ]
        shown = [(key, title) for key, title in RECONSTRUCTION_ROWS if key in artifacts["reconstructions"]]
        picked = spread_rows(n_test, 12)
        rows = [artifacts["test_pixels"][picked]] + [artifacts["reconstructions"][key][picked] for key, _ in shown]
        written.append(save_grid(np.concatenate(rows), out / "reconstructions.png", n_cols=len(picked),
                                 row_labels=["original"] + [title for _, title in shown],
                                 title="test images and their reconstructions"))
        if "vae" in artifacts["encodings"]:
            vae = artifacts["encodings"]["vae"].estimator
            save_samples(vae, out / "vae_samples.png")
            written.append(out / "vae_samples.png")
            if vae.history_:
                written.append(save_curves(vae.history_, out / "vae_training_curves.png"))
        return written


def _c_choice(report: dict) -> str:
    """How the logistic probe's C was chosen: by the folds it used, or not at all (C=1) when a
    class has a single probe image."""
    logistic = next(iter(report["encodings"].values()))["classification"]["logistic"]
    folds = logistic.get("cv_folds", report["settings"]["cv_folds"])  # older reports lack cv_folds
    if folds is None:
        return "C=1, as a class has a single probe image, too few for cross-validation"
    return f"C from {report['settings']['c_grid']} by {folds}-fold cross-validation on the train codes"


def _label_draws(repeats: int) -> str:
    return "from one stratified draw" if repeats == 1 else f"the mean over {repeats} stratified draws"


def _code_notes(report: dict) -> str:
    """What the vae and pca rows hold, for those of them in the report."""
    from .evaluate import pca_size_note

    notes = []
    if "vae" in report["encodings"]:
        notes.append(" The vae codes are the posterior's means and log-variances.")
    if "pca" in report["encodings"]:
        notes.append(" " + pca_size_note(report))
    return "".join(notes)


def _vae_targets_note(report: dict) -> str:
    """What the VAE's ELBO is measured against, when that is not binarized pixels: its numbers do
    not compare with the ELBOs of binarized MNIST that papers report."""
    params = report["settings"].get("vae_params") or {}
    if params.get("likelihood") == "bernoulli" and params.get("binarization") == "none":
        return (" Its decoder is scored by cross-entropy against the grey pixels, the ones every encoding "
                "reconstructs here, so these are not the ELBOs of binarized images that papers report.")
    if params.get("likelihood") == "gaussian":
        return (" Its decoder is a Gaussian density over the grey pixels, so these are nats of a density, not of "
                "a probability: they do not compare with the ELBOs of binarized images that papers report.")
    return ""


def _also_trained_on(data: dict) -> str:
    """', N of them also train images' when some test images are (reports before it was counted: '')."""
    shared = data.get("n_test_in_train", 0)
    if not shared:
        return ""
    return ", 1 of them also a train image" if shared == 1 else f", {shared:,} of them also train images"


def _of_untrained_classes(data: dict) -> str:
    """', N of them of classes A, B, which no train image has' (reports before it was counted: '')."""
    count, untrained = data.get("n_test_of_untrained_classes", 0), data.get("untrained_classes", [])
    if not count:
        return ""
    names = class_names_of(untrained, dict(zip(data["classes"], data.get("class_names", ()))))
    classes = f"class {names[0]}" if len(names) == 1 else f"classes {', '.join(names)}"
    them = "1 of them" if count == 1 else f"{count:,} of them"
    return f", {them} of {classes}, which no train image has"


def markdown_report(report: dict) -> str:
    """``report.md``: the comparison table, a plain reading of it, the figures and the settings."""
    from .evaluate import knn_neighbours, markdown_table, reading

    data, settings = report["data"], report["settings"]
    train, test = data.get("train", {}), data.get("test", {})
    h, w = data["image_shape"]
    resized = " (image files resized to it)" if "resized_to" in data else ""
    lines = [
        f"# fvae evaluate: {report['name']}",
        "",
        f"Train: {train.get('source', '?')} ({data['n_train']:,} images; the probes use {data['n_probe_train']:,}), "
        f"test: {test.get('source', '?')} ({counted(data['n_test'], 'image')}{_also_trained_on(data)}"
        f"{_of_untrained_classes(data)}), {h}x{w} pixels{resized}, "
        f"{len(data['classes'])} classes. Seed {settings['seed']}{', quick run' if settings['quick'] else ''}; "
        f"{report['seconds']:.0f} s in all; fvae {report['versions'].get('fvae')}, {report['created']}.",
        "",
        "## Comparison",
        "",
        markdown_table(report),
        "",
        f"Logistic regression on standardized codes, {_c_choice(report)}; "
        f"{knn_neighbours(report)}-NN on the codes as they are; "
        f"\"acc @100 labels\" is {_label_draws(settings['label_repeats'])}; ridge recon MSE is a linear probe "
        "from codes to pixels (same for every encoding), own recon MSE the model's own reconstruction. "
        "Pixels are in [0, 1]." + _code_notes(report),
        "",
        "## Reading",
        "",
        *[f"- {sentence}" for sentence in reading(report)],
        "",
    ]
    if report.get("vae"):
        t, tr = report["vae"]["test"], report["vae"]["training"]
        lines += [
            "## VAE",
            "",
            f"Test ELBO {t['elbo']:.2f} nats/image (reconstruction {t['reconstruction']:.2f}, KL {t['kl']:.2f}), "
            f"IWAE bound (k={t['iwae_k']}) {t['iwae_bound']:.2f}, {t['active_units']}/{t['latent_dim']} active units."
            + (f" Trained {counted(tr['epochs_run'], 'epoch')} ({tr['stopped_by']}), best epoch {tr['best_epoch'] + 1}."
               if tr.get("epochs_run") else " Reused a saved model.") + _vae_targets_note(report),
            "",
        ]
    lines += ["## Figures", ""]
    lines += [f"![{Path(f).stem}]({f})" for f in report.get("figures", [])]
    return "\n".join(lines) + "\n"


def write_run(report: dict, artifacts: dict, run_dir, name: str) -> dict:
    """Write ``report.json``, ``report.md`` and ``figures/*.png`` into ``run_dir`` (a fresh folder).

    Returns the report with its ``name`` and ``figures`` (paths relative to ``run_dir``) filled in.
    """
    import json

    from .persist import _jsonable

    run_dir = Path(run_dir)
    figures = evaluation_figures(report, artifacts, run_dir / "figures")
    report = {"name": name, **report, "figures": [str(p.relative_to(run_dir)) for p in figures]}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    (run_dir / "report.md").write_text(markdown_report(report))
    return report
