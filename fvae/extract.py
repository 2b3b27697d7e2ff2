"""Batch feature extraction: encode a split batch by batch and write features, labels and a JSON
sidecar, each atomically (a temporary name, renamed when complete)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .data import Split
from .errors import InputError
from .persist import atomic_output, fvae_version, refuse_overwrite


def output_paths(out) -> dict[str, Path]:
    """Files written for features at ``out`` (``x.npy``): ``x.labels.npy``, ``x.json``, ``x.model.npz``."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".npy" else out
    return {
        "features": out,
        "labels": stem.with_name(stem.name + ".labels.npy"),
        "sidecar": stem.with_name(stem.name + ".json"),
        "model": stem.with_name(stem.name + ".model.npz"),
    }


def extract_features(
    encoder,
    split: Split,
    out,
    *,
    metadata: dict,
    batch_size: int = 1024,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Encode ``split`` with a fitted encoder and write its features, labels and sidecar.

    Features go straight into a preallocated ``.npy`` (``open_memmap``), batch by batch, so the
    output never has to fit in memory twice.

    Parameters
    ----------
    encoder : fitted transformer
    split : Split
    out : path-like
        The features file, ``.npy``.
    metadata : dict
        Written into the sidecar (source, split, model checksum, ...).
    batch_size : int, default=1024
    force : bool, default=False
        Overwrite existing outputs.
    progress : callable, default=None
        Called with the number of images encoded after each batch.

    Returns
    -------
    dict
        The sidecar's content.
    """
    paths = output_paths(out)
    refuse_overwrite(paths["features"], paths["labels"], paths["sidecar"], force=force)
    needs_labels = bool(getattr(encoder, "conditional", False))  # a conditional VAE encodes (image, label)
    if needs_labels and split.labels is None:
        raise InputError("this conditional VAE needs labels, and the split has none")
    n = len(split)
    started = time.perf_counter()
    with atomic_output(paths["features"], force=force) as tmp:
        features = None  # allocated once the first batch tells the dimension
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            batch = encoder.transform(split.images[rows], split.labels[rows]) if needs_labels else encoder.transform(split.images[rows])
            if features is None:
                features = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, batch.shape[1]))
            features[start : start + len(batch)] = batch
            if progress:
                progress(len(batch))
        dim = features.shape[1]
        features.flush()
        del features
    seconds = time.perf_counter() - started
    if split.labels is not None:
        with atomic_output(paths["labels"], force=force) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.asarray(split.labels, dtype=np.int64), allow_pickle=False)
    sidecar = {
        **metadata,
        "n_images": n,
        "shape": [n, int(dim)],
        "dtype": "float32",
        "features": paths["features"].name,
        "labels": paths["labels"].name if split.labels is not None else None,
        "encode_seconds": round(seconds, 3),
        "images_per_second": round(n / seconds, 1) if seconds > 0 else None,
        "fvae_version": fvae_version(),
    }
    # Written last: a sidecar beside the features means the whole set is complete.
    with atomic_output(paths["sidecar"], force=force) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar
