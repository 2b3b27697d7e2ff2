"""Batch feature extraction at dataset scale: streaming, resumable, local or on a Dask cluster.

Images are read chunk by chunk (memory-mapped idx/.npy files, gzip streams, image files; see
``load_dataset(lazy=True)``), each chunk is encoded and written into a preallocated output, so peak
memory does not grow with the dataset. Until the run is complete the output lives under a
temporary name (``<out>.part``) beside a manifest of the finished chunks (``<out>.part.json``); a
run killed at any point and restarted with ``resume=True`` encodes only the missing chunks and
ends with output byte-identical to an uninterrupted run. Chunks are always the same rows (chunk
``i`` is rows ``i * batch_size`` onwards), and each is encoded on its own, so the bytes do not
depend on which run, process or worker encoded it.

Output formats, chosen by the suffix of ``out``: ``.npy`` (default), ``.npz`` (``features`` and
``labels`` in one archive) and ``.zarr`` (a Zarr v3 array that Dask workers write into directly).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from .data import ImageFiles, Split, check_fitted_size, class_names_of, kept_by_position, labels_named_as, only_numbered
from .errors import DataError, FvaeError, InputError, OutputExistsError
from .persist import (
    ZIP_DATE, appeared_meanwhile_error, atomic_output, disk_full_error, fvae_version, is_disk_full,
    move_folder_into_place, move_into_place, output_lock, readable_size, refuse_overwrite,
    refuse_replacing_foreign_folder, refuse_unwritable, remove_path, save_npy,
)

FORMATS = (".npy", ".npz", ".zarr")
#: A folder that holds one of these is a Zarr store (format 3, or 2's array or group), which
#: ``--force`` may replace; any other folder is the user's own.
ZARR_MARKS = ("zarr.json", ".zarray", ".zgroup")
NEEDS_DASK = "running on Dask needs dask[distributed]: pip install 'fvae[dask]'"


def output_format(out) -> str:
    """``.npy``, ``.npz`` or ``.zarr`` from the output path; anything else is refused."""
    suffix = Path(out).suffix.lower()
    if Path(out).name.lower() in FORMATS:  # "-o .npy": Python reads it as a hidden file without suffix
        raise InputError(f"{out}: the features file needs a name before {Path(out).name}")
    if suffix not in FORMATS:
        raise InputError(f"{out}: the features file must end in .npy, .npz or .zarr")
    return suffix


def output_paths(out) -> dict[str, Path]:
    """Files written for features at ``out`` (``x.npy``): ``x.labels.npy``, ``x.json``, ``x.model.npz``,
    and while a run is unfinished ``x.npy.part`` with its manifest ``x.npy.part.json``."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix.lower() in FORMATS else out
    return {
        "features": out,
        "labels": stem.with_name(stem.name + ".labels.npy"),
        "sidecar": stem.with_name(stem.name + ".json"),
        "model": stem.with_name(stem.name + ".model.npz"),
        "partial": out.with_name(out.name + ".part"),
        "manifest": out.with_name(out.name + ".part.json"),
    }


# ----------------------------------------------------------------------------------------------------
# writers: a preallocated output that chunks are written into, in any order


class _NpyWriter:
    """Rows written into a preallocated ``.npy``: the file is created at full size by
    ``open_memmap``, then each chunk is written through a memory map of its own rows only and
    unmapped, so the written pages do not accumulate in the process's resident memory."""

    def __init__(self, path: Path, shape, *, reopen: bool):
        self.path = path
        if not reopen:
            np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=tuple(shape)).flush()
        existing = np.load(path, mmap_mode="r")
        if existing.shape != tuple(shape) or existing.dtype != np.float32:
            raise InputError(f"{path}: the partial output has shape {existing.shape}, expected {tuple(shape)}; "
                             "pass --force to start over")
        self.offset, self.row_bytes = existing.offset, shape[1] * 4
        self.shape = tuple(shape)
        del existing
        _allocate_on_disk(path)

    def write(self, start: int, rows: np.ndarray) -> None:
        target = np.memmap(self.path, dtype=np.float32, mode="r+", offset=self.offset + start * self.row_bytes,
                           shape=rows.shape)
        target[:] = rows
        del target  # unmapped, not synced: a killed process's pages still reach the file

    def finish(self, out: Path, labels, *, force: bool) -> None:
        if out.suffix.lower() == ".npz":
            _pack_npz(self.path, labels, out, force=force)
            self.path.unlink()
        else:
            move_into_place(self.path, out, force=force)


def _allocate_on_disk(path: Path) -> None:
    """Give the file its disk blocks now. ``open_memmap`` makes a sparse file, and a write through
    a memory map into a page that a full disk cannot back kills the process with SIGBUS: no
    message, exit code 135. Allocated up front, a full disk is an ``OSError`` before any work.

    Where the filesystem cannot allocate ahead (or Python has no ``posix_fallocate``: macOS,
    Windows), the free space is checked instead.
    """
    size = path.stat().st_size
    try:
        with open(path, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, size)
        return
    except AttributeError:
        pass
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, cause=exc) from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    unallocated = size - getattr(path.stat(), "st_blocks", 0) * 512
    if shutil.disk_usage(path.parent).free < unallocated:
        raise disk_full_error(path)


def _pack_npz(features_npy: Path, labels, out: Path, *, force: bool) -> None:
    """Stream an .npy file (and the labels) into an uncompressed .npz, with fixed member dates."""
    with atomic_output(out, force=force) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        member = zipfile.ZipInfo("features.npy", date_time=ZIP_DATE)
        with open(features_npy, "rb") as source, archive.open(member, "w", force_zip64=True) as target:
            shutil.copyfileobj(source, target, 1 << 24)
        if labels is not None:
            member = zipfile.ZipInfo("labels.npy", date_time=ZIP_DATE)
            with archive.open(member, "w") as target:
                np.lib.format.write_array(target, np.asarray(labels, dtype=np.int64), allow_pickle=False)


class _ZarrWriter:
    """A Zarr v3 array, one Zarr chunk per extraction chunk, so workers can write their rows
    directly and concurrently."""

    def __init__(self, path: Path, shape, chunk_rows: int, *, reopen: bool):
        zarr = _import_zarr()
        self.path = path
        if reopen:
            self.array = zarr.open_array(str(path), mode="r+")
            if self.array.shape != tuple(shape):
                raise InputError(f"{path}: the partial output has shape {self.array.shape}, expected {tuple(shape)}; "
                                 "pass --force to start over")
        else:
            self.array = zarr.create_array(str(path), shape=tuple(shape), chunks=(chunk_rows, shape[1]),
                                           dtype="float32", fill_value=0.0, overwrite=True)

    def write(self, start: int, rows: np.ndarray) -> None:
        self.array[start : start + len(rows)] = rows

    def finish(self, out: Path, labels, *, force: bool) -> None:
        if labels is not None:
            self.array.attrs["labels_file"] = output_paths(out)["labels"].name
        move_folder_into_place(self.path, out, force=force)


def _import_zarr():
    try:
        import zarr
    except ImportError:
        raise InputError("writing .zarr needs the zarr package: pip install 'fvae[dask]'") from None
    return zarr


def _open_writer(fmt: str, path: Path, shape, chunk_rows: int, reopen: bool):
    if fmt == ".zarr":
        return _ZarrWriter(path, shape, chunk_rows, reopen=reopen)
    return _NpyWriter(path, shape, reopen=reopen)


# ----------------------------------------------------------------------------------------------------
# the manifest of finished chunks


def _shown(value) -> str:
    """A setting as an error message shows it: checksums and long paths cut short."""
    text = str(value)
    return text if len(text) <= 40 else text[:12] + "..."


def _files_digest(names: list[str]) -> str:
    """A list of file names as the manifest of a run identifies it: '70,000 files, sha256 1a2b3c4d5e6f'."""
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return f"{len(names):,} files, sha256 {digest[:12]}"


class Manifest:
    """What an unfinished run is (``identity``) and which chunks are done, saved atomically after
    every chunk, always after the chunk's rows are written: it never lists a chunk not in the file."""

    def __init__(self, path: Path, identity: dict):
        self.path = path
        self.identity = identity
        self.done: set[int] = set()

    @classmethod
    def resume(cls, path: Path, identity: dict) -> "Manifest":
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable manifest of the interrupted run ({exc}); pass --force to start over") from None
        before = saved.get("identity", {})
        differs = sorted(k for k in identity if before.get(k) != identity[k])
        if differs:
            changes = "; ".join(f"{k} was {_shown(before.get(k))}, now {_shown(identity[k])}" for k in differs)
            raise InputError(f"{path}: the interrupted run had other settings ({changes}); "
                             "repeat its command with --resume, or pass --force to start over")
        manifest = cls(path, identity)
        manifest.done = set(saved["done"])
        return manifest

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"identity": self.identity, "done": sorted(self.done)}))
        os.replace(tmp, self.path)

    def mark(self, chunk: int) -> None:
        self.done.add(chunk)
        self.save()


# ----------------------------------------------------------------------------------------------------
# encoding chunks


def encode_chunk(encoder, images, labels=None) -> np.ndarray:
    """Encode one chunk of images (with labels for a conditional VAE); float32 rows.

    Labels are integers, as labels files hold them: a VAE fitted on strings is given
    ``classes_[labels]`` (see :func:`labelled_for`).
    """
    if labels is None:
        return np.asarray(encoder.transform(images), dtype=np.float32)
    if fitted_on_strings(encoder):
        labels = encoder.classes_[labels]
    return np.asarray(encoder.transform(images, labels), dtype=np.float32)


def fitted_on_strings(encoder) -> bool:
    """Whether ``encoder`` is a conditional VAE fitted on string labels ("cat", "dog"): they name
    themselves, and labels files hold their positions in its ``classes_``."""
    classes = getattr(encoder, "classes_", None)
    return bool(getattr(encoder, "conditional", False)) and classes is not None and classes.dtype.kind == "U"


def _encode_into_zarr(encoder, images, labels, path: str, start: int) -> int | OSError:
    """Worker side of a Zarr run: encode a chunk and write it into the shared array.

    Returns the number of rows written, or the error of a full disk: returned, not raised, as a
    worker logs a traceback of every task that raises, under the CLI's one-line message.
    """
    zarr = _import_zarr()
    rows = encode_chunk(encoder, images, labels)
    try:
        zarr.open_array(path, mode="r+")[start : start + len(rows)] = rows
    except OSError as exc:
        if is_disk_full(exc):
            return exc
        raise
    return len(rows)


def _chunk_inputs(split, rows: slice, needs_labels: bool):
    """The pixels of one chunk (read now, for a lazy split) and its labels when the encoder needs them."""
    return np.asarray(split.images[rows]), (split.labels[rows] if needs_labels else None)


def _chunk_done(manifest, progress, index: int, rows: slice) -> None:
    """Record a chunk whose rows are in the output."""
    manifest.mark(index)
    if progress:
        progress(rows.stop - rows.start)


def _run_local(encoder, split, chunks, needs_labels, writer, manifest, progress):
    for index, rows in chunks:
        writer.write(rows.start, encode_chunk(encoder, *_chunk_inputs(split, rows, needs_labels)))
        _chunk_done(manifest, progress, index, rows)


def _run_dask(client, encoder, split, chunks, needs_labels, writer, manifest, progress, zarr_path):
    """Ship the model once, send each chunk's pixels to a worker, write results as they arrive.

    At most a few chunks per worker are in flight, so the client's memory stays bounded. With a
    Zarr output the workers write their rows themselves and only counts come back.
    """
    from distributed import as_completed

    if "n_jobs" in encoder.get_params():  # the workers are the parallelism: threads in each task
        encoder = copy.copy(encoder).set_params(n_jobs=1)  # would only oversubscribe their cores
    # hash=False: a fresh key per run. With content hashing, a second run with the same model would
    # share the key of the first, and the first run's release could drop the model under it.
    model = client.scatter(encoder, broadcast=True, hash=False)
    window = 2 * max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    pending = iter(chunks)
    futures = as_completed()
    where = {}

    def submit_next() -> bool:
        item = next(pending, None)
        if item is None:
            return False
        index, rows = item
        images, labels = _chunk_inputs(split, rows, needs_labels)
        if zarr_path is not None:
            future = client.submit(_encode_into_zarr, model, images, labels, zarr_path, rows.start, pure=False)
        else:
            future = client.submit(encode_chunk, model, images, labels, pure=False)
        where[future.key] = (index, rows)
        futures.add(future)
        return True

    for _ in range(window):
        if not submit_next():
            break
    for future in futures:
        index, rows = where.pop(future.key)
        result = future.result()
        if isinstance(result, OSError):
            raise result
        if zarr_path is None:
            writer.write(rows.start, result)
        _chunk_done(manifest, progress, index, rows)
        future.release()
        submit_next()


# ----------------------------------------------------------------------------------------------------
# the whole extraction


def _explain_a_full_disk(exc: BaseException, out: Path, detail: str) -> None:
    """Raise ``exc`` again, naming ``out`` and adding ``detail``, if it is a full disk's error;
    leave any other exception to the caller."""
    if is_disk_full(exc):
        raise disk_full_error(out, cause=exc, detail=f" {detail}") from exc


def refuse_existing_outputs(out, *, force: bool, resume: bool) -> None:
    """Refuse to run where outputs exist: finished ones unless ``force``, an interrupted run's
    partial output unless ``resume`` or ``force``. Cheap: callers check before loading anything.

    Raises
    ------
    OutputExistsError
    """
    paths = output_paths(out)
    if resume and not force and paths["features"].exists() and not paths["partial"].exists():
        raise OutputExistsError(f"{paths['features']} exists and is finished: there is nothing to resume "
                                "(pass --force to encode it again)")
    zarr_store = output_format(out) == ".zarr"
    if zarr_store:
        refuse_replacing_foreign_folder(paths["features"], what="a Zarr store", marks=ZARR_MARKS)
    refuse_overwrite(paths["features"], paths["labels"], paths["sidecar"], force=force)
    # where every output goes takes files, and no folder is in the way of a file's
    refuse_unwritable(paths["features"], force=True, folder=zarr_store)
    if not (resume or force) and (paths["partial"].exists() or paths["manifest"].exists()):
        raise OutputExistsError(f"{paths['partial']}: an interrupted run's partial output exists; "
                                "pass --resume to finish it or --force to start over")


def _refuse_outputs_written_meanwhile(paths: dict) -> None:
    """Refuse to finish a run over an output that something else wrote while it encoded (the
    check before the run found none); the partial output stays for ``--resume``.

    Raises
    ------
    OutputExistsError
    """
    for name in ("features", "labels", "sidecar"):
        if os.path.lexists(paths[name]):
            raise appeared_meanwhile_error(paths[name], what_now="the encoded features are kept: move it away, "
                                                                 "then finish with --resume")


def _where(metadata: dict) -> str:
    """'SOURCE (SPLIT split): ' for messages, when the metadata names them."""
    return f"{metadata['source']} ({metadata['split']} split): " if {"source", "split"} <= metadata.keys() else ""


def _check_image_size(encoder, split: Split, metadata: dict) -> None:
    """Refuse, before any output exists, images of another size than the model was fitted on."""
    if hasattr(encoder, "image_shape_"):
        check_fitted_size(split.images.shape[1:], encoder.image_shape_, metadata.get("model") or "the model",
                          _where(metadata), files=isinstance(split.images, ImageFiles))


def labelled_for(encoder, split: Split, class_names, source: str, model: str) -> tuple[Split, tuple]:
    """``split`` with the labels a conditional VAE was fitted with, and the names of those labels.

    Two image folders number their classes each by its own subfolders: a folder of dogs and
    foxes calls them 0 and 1, where a VAE fitted on cat, dog and fox knows them as 1 and 2. So
    where the model file and the source both name their classes, the labels are matched by name
    (:func:`fvae.data.labels_named_as`) and numbered as the model numbers them. A VAE fitted on
    string labels is named by them, and its labels are positions in its ``classes_`` (labels
    files hold integers; :func:`encode_chunk` gives it the names). Any other encoder gets
    ``split`` and ``class_names`` as they are.

    Parameters
    ----------
    encoder : fitted encoder
    split : Split
    class_names : tuple of str
        The source's: label i is ``class_names[i]``.
    source, model : str
        The source's and the model file's names, for messages.

    Raises
    ------
    DataError
        If the source has images of a class the model does not know, or only numbers its
        classes ("0".."n-1", as idx files and arrays do) where the model was fitted on strings
        that are not numbers.
    """
    model_names = _model_class_names(encoder)
    if not model_names:
        return split, class_names
    # labels_named_as would keep the numbers, which are no positions in those names
    if (fitted_on_strings(encoder) and split.labels is not None and only_numbered(class_names)
            and kept_by_position(tuple(class_names), model_names)):
        raise DataError(f"{source} only numbers its classes, and {model} was fitted on class names "
                        f"({', '.join(model_names)}): encode a source that names them, such as a folder "
                        "of one subfolder per class")
    renamed = labels_named_as(split, class_names, model_names, source, model)
    return (split, class_names) if renamed is split else (renamed, model_names)


def _model_class_names(encoder) -> tuple[str, ...]:
    """A conditional VAE's class names, indexed as labels files number its classes: by position
    in ``classes_`` for string labels; by label for integers, from its file (a label it does not
    name is its own name); () where neither names them."""
    if fitted_on_strings(encoder):
        return tuple(encoder.classes_.tolist())
    names = getattr(encoder, "class_names_", {}) if getattr(encoder, "conditional", False) else {}
    return tuple(class_names_of(range(max(names) + 1), names)) if names else ()


def _check_labels(encoder, split: Split, metadata: dict) -> None:
    """Refuse, before any output exists, unlabelled images for a conditional VAE, which encodes
    each image with its label, and labels that are no class position of a VAE fitted on strings."""
    if not getattr(encoder, "conditional", False):
        return
    model = metadata.get("model") or "the model"
    if split.labels is None:
        raise InputError(f"{_where(metadata)}no labels, and {model} is a conditional VAE: it encodes each image "
                         "with its label")
    if fitted_on_strings(encoder):
        n = len(encoder.classes_)
        outside = split.labels[(split.labels < 0) | (split.labels >= n)]
        if outside.size:
            raise InputError(f"{_where(metadata)}label {outside[0]} is no class of {model}: it was fitted on class "
                             f"names, and its labels are their positions 0..{n - 1} "
                             f"({', '.join(encoder.classes_.tolist())})")


def extract_features(
    encoder,
    split: Split,
    out,
    *,
    metadata: dict,
    batch_size: int = 1024,
    force: bool = False,
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
    client=None,
) -> dict:
    """Encode ``split`` with a fitted encoder and write its features, labels and sidecar.

    Parameters
    ----------
    encoder : fitted transformer with ``n_features_out_``
    split : Split
        Images may be lazy (:class:`fvae.data.LazyImages`) or memory-mapped: they are read one
        chunk at a time. Labels are integers; for a VAE fitted on string labels, positions in its
        ``classes_`` (:func:`labelled_for` renumbers a source's labels so).
    out : path-like
        The features file: ``.npy``, ``.npz`` or ``.zarr``.
    metadata : dict
        Written into the sidecar (source, split, model checksum, ...) and, with the batch size and
        the shape, identifies a run for ``resume``.
    batch_size : int, default=1024
        Images per chunk: the unit of encoding, writing and resuming.
    force : bool, default=False
        Overwrite finished outputs and discard an interrupted run's partial output.
    resume : bool, default=False
        Finish an interrupted run: keep its finished chunks, encode the others.
    progress : callable, default=None
        Called with the number of images of each finished chunk (also those finished earlier).
    client : distributed.Client, default=None
        Encode the chunks on this Dask cluster instead of in this process.

    Returns
    -------
    dict
        The sidecar's content.

    Raises
    ------
    OutputExistsError
        If a finished output exists (without ``force``), or an interrupted run's partial output
        exists and neither ``resume`` nor ``force`` is given.
    OutputInUseError
        If another process is writing ``out`` now (see :func:`fvae.persist.output_lock`).
    """
    with output_lock(out):
        return _write_features(encoder, split, Path(out), metadata=metadata, batch_size=batch_size, force=force,
                               resume=resume, progress=progress, client=client)


def _write_features(encoder, split: Split, out: Path, *, metadata: dict, batch_size: int, force: bool, resume: bool,
                    progress, client) -> dict:
    """:func:`extract_features`, its output locked."""
    fmt = output_format(out)
    paths = output_paths(out)
    refuse_existing_outputs(out, force=force, resume=resume)
    partial, manifest_path = paths["partial"], paths["manifest"]
    if force:
        remove_path(partial)
        remove_path(manifest_path)
    needs_labels = bool(getattr(encoder, "conditional", False))  # a conditional VAE encodes (image, label)
    _check_labels(encoder, split, metadata)
    _check_image_size(encoder, split, metadata)
    n, dim = len(split), int(encoder.n_features_out_)
    identity = {**metadata, "n_images": n, "dim": dim, "batch_size": batch_size, "format": fmt}
    if "files" in identity:  # an image folder's files: a digest, not 70,000 names rewritten after every chunk
        identity["files"] = _files_digest(identity["files"])
    reopen = resume and partial.exists() and manifest_path.exists()
    manifest = Manifest.resume(manifest_path, identity) if reopen else Manifest(manifest_path, identity)
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer = _open_writer(fmt, partial, (n, dim), batch_size, reopen)
    except OSError as exc:
        if not reopen:
            remove_path(partial)
        _explain_a_full_disk(exc, out, f"for {readable_size(4 * n * dim)} of features "
                                       f"({readable_size(shutil.disk_usage(partial.parent).free)} free there)")
        raise
    if not reopen:
        manifest.save()
    chunks = [(i, slice(start, min(start + batch_size, n))) for i, start in enumerate(range(0, n, batch_size))]
    todo = [(i, rows) for i, rows in chunks if i not in manifest.done]
    if progress and len(todo) < len(chunks):
        progress(n - sum(rows.stop - rows.start for _, rows in todo))

    started = time.perf_counter()
    try:
        if client is None:
            _run_local(encoder, split, todo, needs_labels, writer, manifest, progress)
        else:
            _run_dask(client, encoder, split, todo, needs_labels, writer, manifest, progress,
                      str(partial) if fmt == ".zarr" else None)
    except FvaeError:
        # Bad input (a corrupt file found mid-way): no output, partial or not, is left behind.
        # Anything else (Ctrl-C, a kill, a crash, a full disk) keeps the finished chunks for --resume.
        remove_path(partial)
        remove_path(manifest_path)
        raise
    except OSError as exc:
        _explain_a_full_disk(exc, out, f"after {len(manifest.done)} of {len(chunks)} chunks: free some space, "
                                       "then finish with --resume")
        raise
    seconds = time.perf_counter() - started
    encoded = sum(rows.stop - rows.start for _, rows in todo)

    # The labels first: should the disk be full, the features are still the partial output that
    # --resume finishes (once renamed, a run is finished and there is nothing to resume).
    separate_labels = split.labels is not None and fmt != ".npz"
    labels_written = False
    try:
        if not force:
            _refuse_outputs_written_meanwhile(paths)
        if separate_labels:
            save_npy(paths["labels"], np.asarray(split.labels, dtype=np.int64), force=force)
            labels_written = True
        writer.finish(out, split.labels, force=force)
    except OSError as exc:
        if labels_written and partial.exists():
            remove_path(paths["labels"])
        if isinstance(exc, OutputExistsError):  # written in the instant between the check and the rename
            _refuse_outputs_written_meanwhile(paths)
        _explain_a_full_disk(exc, out, "once every chunk was encoded: free some space, then finish with --resume")
        raise
    sidecar = {
        **metadata,
        "n_images": n,
        "shape": [n, dim],
        "dtype": "float32",
        "format": fmt.lstrip("."),
        "features": out.name,
        "labels": (out.name + ":labels" if fmt == ".npz" else paths["labels"].name) if split.labels is not None else None,
        "batch_size": batch_size,
        "resumed_chunks": len(chunks) - len(todo),
        "encode_seconds": round(seconds, 3),
        "images_per_second": round(encoded / seconds, 1) if seconds > 0 and encoded else None,
        "fvae_version": fvae_version(),
    }
    # Written last: a sidecar beside the features means the whole set is complete.
    with atomic_output(paths["sidecar"], force=force) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    remove_path(manifest_path)
    return sidecar


def check_scheduler_address(scheduler: str) -> None:
    """Refuse a Dask scheduler address that cannot be dialled (no port, unknown scheme) at once,
    before any work; Dask itself would only say so, with a traceback, when connecting.

    Raises
    ------
    InputError
        If the address is malformed, or dask[distributed] is not installed.
    """
    try:
        from distributed.comm.addressing import get_address_host_port
    except ImportError:
        raise InputError(NEEDS_DASK) from None
    try:
        get_address_host_port(scheduler)
    except ValueError as exc:
        raise InputError(f"{scheduler!r} is not a Dask scheduler address: {exc}; expected tcp://HOST:PORT") from None


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, *, workers: int | None = None):
    """A Dask ``Client`` for a ``with`` block: connected to ``scheduler`` (``tcp://host:port``), or
    to a new local cluster of ``workers`` single-threaded processes on 127.0.0.1, shut down on exit.

    Raises
    ------
    InputError
        If dask[distributed] is not installed, or the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError(NEEDS_DASK) from None
    if scheduler is not None:
        check_scheduler_address(scheduler)
        try:
            client = Client(scheduler)  # waits for Dask's distributed.comm.timeouts.connect, 30 s by default
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
        with client:
            yield client
        return
    # The scheduler serves HTTP even without a dashboard, by default on port 8787; where another
    # cluster holds that port, Dask prints a UserWarning. Any free port will do. The workers' own
    # warnings (a task cancelled when a failed run shuts the cluster down, an event loop held by a
    # long chunk) would print under the command's one-line error or between its progress lines.
    # A Ctrl-C in a terminal reaches every process of the command, and each worker died of it
    # with a traceback of its own. Started with SIGINT ignored (a spawned Python keeps it so), the
    # workers leave the shutdown, and its one message of what was kept, to this process.
    with _sigint_handled_by(signal.SIG_IGN):
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=":0", silence_logs=logging.ERROR)
    # After Ctrl-C the cluster is shut down on purpose: its warnings of lost workers and cancelled
    # tasks would bury the message that says what was kept. So would a traceback that Tornado logs
    # when the Ctrl-C lands inside distributed.utils.sync before its future exists (a NameError in
    # its cancel callback, a race in Dask), which the loop thread logs at once: the logs are
    # silenced in the signal handler, before the KeyboardInterrupt is raised.
    logs = [logging.getLogger(name) for name in ("distributed", "tornado.application")]
    levels = [log.level for log in logs]

    def silence():
        for log in logs:
            log.setLevel(logging.CRITICAL + 1)

    try:
        with cluster, Client(cluster) as client, _before_ctrl_c(silence):
            yield client
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def _before_ctrl_c(action):
    """A context in which SIGINT calls ``action()`` first, then SIGINT's handler before it (which
    raises KeyboardInterrupt, or waits for a step's end); nothing changes where SIGINT is ignored
    or left to the system."""
    before = signal.getsignal(signal.SIGINT)
    if not callable(before):
        return contextlib.nullcontext()

    def on_sigint(signum, frame):
        action()
        before(signum, frame)

    return _sigint_handled_by(on_sigint)


@contextlib.contextmanager
def _sigint_handled_by(handler):
    """SIGINT handled by ``handler`` in the block, then by the handler before it; nothing changes
    outside the main thread, where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
