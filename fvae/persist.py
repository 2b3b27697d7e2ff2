"""Saving and loading models as data, never code, and writing any output file atomically.

A model file is a zip archive (readable by ``numpy.load`` for its arrays) holding:

- ``header.json``: format version, fvae version, method, hyper-parameters, input shape, checksum;
- ``<name>.npy`` for every fitted array, read back with ``allow_pickle=False``;
- optionally other members (the VAE stores its Keras ``.keras`` file there).

The checksum is SHA-256 over the method, the parameters (canonical JSON), the input shape and every
member's bytes; loading verifies it, so a corrupt or edited file is refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from .errors import ModelFileError, OutputExistsError, OutputInUseError

try:
    import fcntl
except ImportError:  # Windows: outputs are written without a lock
    fcntl = None

#: The newest model format this fvae reads and writes. 2: a conditional VAE's classes other than
#: 0..n-1; 3: a conditional VAE's classes are strings. A file is written in the oldest format that
#: holds it, so older fvae versions read every file they would read right, and refuse the others.
FORMAT_VERSION = 3
HEADER = "header.json"
#: What a loaded estimator knows of the file it came from, not of its fit: a refit forgets it.
FILE_ATTRIBUTES = ("checksum_", "class_names_")
METHODS = ("fisher", "vae")
#: Parameters that say how an estimator runs (threads, progress output), not what it learned:
#: never saved, so that the same fit writes the same file wherever it ran.
RUNTIME_PARAMS = ("n_jobs", "verbose")
#: The date of every member fvae writes into a zip archive (the earliest a zip can carry), so that
#: the same content gives the same bytes: model files, the Keras member, .npz features.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def fvae_version() -> str:
    from . import __version__

    return __version__


def _writable(path, force: bool, otherwise: str | None = None) -> tuple[Path, list[Path]]:
    """``path`` as a Path, refused if it exists (unless ``force``; the refusal names ``otherwise``
    as the other way out), its missing folders created.

    Returns the path and the folders this call created, innermost first, for
    :func:`_remove_empty` to take away again when the write fails.
    """
    path = Path(path)
    refuse_overwrite(path, force=force, otherwise=otherwise)
    created = list(itertools.takewhile(lambda folder: not folder.exists(), path.parents))
    _refuse_file_as_folder(path.parents[len(created)], path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, created


def _refuse_file_as_folder(ancestor: Path, path: Path) -> None:
    """Refuse a file where ``path`` needs a folder: mkdir would say only "File exists" or "Not a
    directory", which does not tell which of the two paths is in the way."""
    if not ancestor.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"a file, not a folder, so {path} cannot be written in it",
                                 str(ancestor))


def _remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders``, in order, that is still empty: a failed write leaves behind no
    folder it made (one that something else has written into meanwhile stays)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


#: The errors of a write that the disk (or the user's quota) has no room for
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says that the disk (or the user's quota) has no room for a write."""
    if not isinstance(exc, OSError):
        return False
    # NumPy's tofile (np.save to a file) says so in words only, without an errno
    return exc.errno in DISK_FULL or (exc.errno is None and "not enough free space" in str(exc).lower())


def name_a_full_disk(exc: BaseException, path, temporary) -> None:
    """Raise a full disk's error again as one that names ``path``, the output the user gave.

    A write (not an open) that finds the disk full raises an error without a file name, and one
    that has a name has the hidden ``temporary`` file or folder that the output is written under
    (gone by the time the user reads it). Any other exception is left for the caller to raise.
    """
    if not is_disk_full(exc):
        return
    named = Path(exc.filename) if exc.filename else None
    if named is None or named == temporary or temporary in named.parents:
        raise disk_full_error(path, cause=exc) from exc


def disk_full_error(path, *, cause: OSError | None = None, detail: str = "") -> OSError:
    """The error of a full disk (``cause``'s: ENOSPC, or EDQUOT for a quota) for ``path``, the
    output the user named, its message followed by ``detail``."""
    code = cause.errno if cause is not None and cause.errno in DISK_FULL else errno.ENOSPC
    return OSError(code, os.strerror(code) + detail, str(path))


def readable_size(n_bytes: float) -> str:
    """``n_bytes`` as people read sizes: "512 B", "17.8 KB", "5.2 MB", "6.0 GB" ("0" for none)."""
    if n_bytes == 0:
        return "0"
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024


def _fresh_name_beside(path: Path, suffix: str) -> Path:
    """A hidden name beside ``path`` that no other run picks: ``.NAME.PID.RANDOM<suffix>``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}{suffix}")


def _refuse_folder(path: Path) -> None:
    """A folder where a file is to be written is refused even with ``force``: replacing it would
    throw away all it holds, and the rename at the end would fail anyway."""
    if path.is_dir():
        raise OutputExistsError(f"{path}: a folder, not a file")


def refuse_replacing_foreign_folder(path, *, what: str, marks: tuple[str, ...]) -> None:
    """Refuse, even with ``force``, to replace at ``path`` anything but an earlier output of its
    kind: a folder that holds none of ``marks`` is the user's own (``--force`` replaces fvae's
    outputs, never a folder of photos named ``x.zarr``), and a file is not a folder to replace.

    Parameters
    ----------
    path : path-like
        Where a folder output (a run, a .zarr store) is to be written.
    what : str
        The output's kind, for the message: "an fvae run", "a Zarr store".
    marks : tuple of str
        Names of which an earlier output of this kind holds at least one (``report.json``).

    Raises
    ------
    OutputExistsError
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path}: a file, not a folder: {what} is a folder; remove it or choose another name")
    if path.is_dir() and any(path.iterdir()) and not any((path / mark).exists() for mark in marks):
        raise OutputExistsError(f"{path}: a folder that is not {what} (it has no {marks[0]}): --force replaces only "
                                "fvae's own outputs; remove it or choose another name")


def _make_temporary(path: Path, created: list[Path], make) -> None:
    """Call ``make()``, which creates the temporary file or folder beside ``path``. Should that
    fail (a read-only folder, a full disk), take away the folders :func:`_writable` made and
    raise the error for ``path``, the name the user gave, not the hidden temporary one."""
    try:
        make()
    except OSError as exc:
        _remove_empty(created)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def _new_file_beside(path, force: bool) -> tuple[Path, Path, list[Path]]:
    """``path`` as a Path (refused if it exists, unless ``force``), a new empty hidden file beside
    it, and the folders made for the two (see :func:`_writable`)."""
    path, created = _writable(path, force)
    new = _fresh_name_beside(path, ".part")
    # Not mkstemp: its 0600 would survive the rename. Mode 0666 lets the user's umask decide,
    # as for any file a program writes; O_EXCL keeps mkstemp's guarantee of a new file.
    _make_temporary(path, created, lambda: os.close(os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    return path, new, created


@contextlib.contextmanager
def atomic_output(path, *, force: bool = False):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``force`` is false: checked before any work, and again at its end
        (see :func:`move_into_place`).
    """
    _refuse_folder(Path(path))
    path, tmp, created = _new_file_beside(path, force)
    try:
        yield tmp
        move_into_place(tmp, path, force=force)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _remove_empty(created)
        name_a_full_disk(exc, path, tmp)
        raise


def move_into_place(source, path, *, force: bool) -> None:
    """Rename the finished file ``source`` to ``path``; without ``force``, never over anything.

    The check that ``path`` does not exist comes before the work that writes ``source``, which
    may take hours, and something that takes no lock (an editor, ``cp``) may write ``path``
    meanwhile: ``os.replace`` would replace it without a word. A hard link is made only where the
    name is free, so it puts the file in place and refuses a taken name in one step. Where the
    filesystem has no hard links (FAT, some network mounts) the check just before the rename
    has to do.

    Raises
    ------
    OutputExistsError
        If ``path`` exists now and ``force`` is false, or is a folder.
    """
    source, path = Path(source), Path(path)
    if force:
        _refuse_folder(path)
        os.replace(source, path)
        return
    try:
        os.link(source, path)
    except FileExistsError:
        raise appeared_meanwhile_error(path) from None
    except OSError:
        if os.path.lexists(path):
            raise appeared_meanwhile_error(path) from None
        os.replace(source, path)
        return
    source.unlink()


def appeared_meanwhile_error(path, otherwise: str | None = None, *, what_now: str | None = None) -> OutputExistsError:
    """The error for an output that was not at ``path`` when the command checked, and is now.

    ``what_now`` says what became of the work and what the user can do; by default, that the
    output is discarded and ``--force`` (or ``otherwise``, when given) is the way out.
    """
    if what_now is None:
        what_now = "this command's output is discarded: pass --force to replace it" + (f", or {otherwise}"
                                                                                        if otherwise else "")
    return OutputExistsError(f"{path}: appeared while this command ran, and is left as it is; {what_now}")


def remove_path(path) -> None:
    """Remove the file or folder at ``path``, if any, as far as it can be (a link, not what it
    points to)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def move_folder_into_place(source, path, *, force: bool, otherwise: str | None = None) -> None:
    """Rename the finished folder ``source`` to ``path``.

    Without ``force``, never over anything that appeared at ``path`` during the work (see
    :func:`move_into_place`): a folder rename fails by itself over a file or a folder that holds
    anything, and the check before it keeps an empty folder too. With ``force`` what is at
    ``path`` is replaced, and removed only once ``source`` is in place; should that rename fail,
    it is put back, or where it cannot be, kept under a hidden name that the error gives.

    Raises
    ------
    OutputExistsError
        If something is at ``path`` and ``force`` is false.
    """
    path = Path(path)
    old = None
    try:
        if os.path.lexists(path):
            if not force:
                raise appeared_meanwhile_error(path, otherwise)
            old = _fresh_name_beside(path, ".old")  # a folder is not renamed over one that holds anything
            os.replace(path, old)
        os.replace(source, path)
    except BaseException as exc:
        if old is not None and not os.path.lexists(path):
            with contextlib.suppress(OSError):  # should this fail too, the earlier folder stays where it is
                os.replace(old, path)
                old = None
        if old is not None and isinstance(exc, OSError):
            raise OSError(exc.errno, f"{exc.strerror or exc}; the earlier folder is kept as {old}", str(path)) from exc
        if not force and getattr(exc, "errno", None) in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            raise appeared_meanwhile_error(path, otherwise) from None  # it appeared after the check
        raise
    if old is not None:
        remove_path(old)


def save_npy(path, array, *, force: bool = False) -> Path:
    """Write ``array`` as a ``.npy`` file (no pickles) through :func:`atomic_output`."""
    with atomic_output(path, force=force) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path, *, force: bool = False, otherwise: str | None = None, what: str = "fvae's output",
                     marks: tuple[str, ...] = ()):
    """Yield a temporary folder beside ``path``; it becomes ``path`` only if the block succeeds.

    A run folder therefore appears complete or not at all. With ``force`` an existing ``path`` is
    replaced, and removed only once the new folder is in place; should that last step fail, the
    old folder is put back (:func:`move_folder_into_place`). ``otherwise``, when given, is named
    in the refusal of an existing ``path`` as the way out that keeps it (evaluate's "--name to
    write another run beside it"). Where ``marks`` are given, ``path`` is replaced only if it is
    an earlier output of the kind ``what`` names (see :func:`refuse_replacing_foreign_folder`).

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``force`` is false (checked before any work, and again at its
        end: see :func:`move_folder_into_place`), or is not an earlier output.
    """
    if marks:
        refuse_replacing_foreign_folder(path, what=what, marks=marks)
    path, created = _writable(path, force, otherwise)
    tmp = _fresh_name_beside(path, ".part")
    _make_temporary(path, created, tmp.mkdir)  # not mkdtemp, whose 0700 the run folder would keep; the umask decides
    try:
        yield tmp
        move_folder_into_place(tmp, path, force=force, otherwise=otherwise)
    except BaseException as exc:
        remove_path(tmp)
        _remove_empty(created)
        name_a_full_disk(exc, path, tmp)
        raise


#: The outputs whose lock this process holds (see :func:`output_lock`)
_LOCKED_OUTPUTS: set[Path] = set()


@contextlib.contextmanager
def output_lock(path):
    """Hold the lock of the output ``path`` (a file or folder) while a command writes it.

    A second process that asks for the same lock is refused at once. Without it, a second
    ``fvae encode`` to the same file took the first one's partial output for an interrupted
    run's and, with ``--force`` as its message said, deleted it under the running one, which
    then failed at its end after all its work.

    The lock is an exclusive ``flock`` on ``PATH.lock``, which holds the holder's process id for
    the message and is removed when the block ends. The kernel releases the lock of a process
    however it ends, so a lock file left by a killed process locks nothing. Asking again for a
    lock this process holds is a no-op, so a command and the library function it calls may both
    ask. Where no lock can be taken (Windows; a folder that takes no files, which the command's
    own checks then refuse with a clearer message) the block runs without one.

    Raises
    ------
    OutputInUseError
        If another process holds the lock of ``path``.
    """
    path = Path(path)
    key = path.absolute()
    lock, created, fd = path.with_name(path.name + ".lock"), [], None
    if fcntl is not None and key not in _LOCKED_OUTPUTS:
        try:
            lock, created = _writable(lock, force=True)
            fd = _locked_file(lock, path)
        except OSError:
            _remove_empty(created)
    if fd is None:
        yield
        return
    _LOCKED_OUTPUTS.add(key)
    try:
        yield
    finally:
        _LOCKED_OUTPUTS.discard(key)
        lock.unlink(missing_ok=True)  # before the lock is let go, so that no other process holds a lock on it
        os.close(fd)
        _remove_empty(created)


def _locked_file(lock: Path, path: Path) -> int:
    """Open ``lock``, lock it, write this process's id into it, and return its descriptor.

    Raises
    ------
    OutputInUseError
        If another process holds the lock.
    OSError
        If ``lock`` cannot be created or locked at all.
    """
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise OutputInUseError(f"{path}: another fvae command{f' (pid {holder})' if holder else ''} is writing it "
                                   "now; wait for it to end, or stop it first") from None
        except OSError:
            os.close(fd)
            raise
        # The holder before this process removes the file once done, and may have done so after
        # it was opened here: the lock counts only on the file that is at ``lock`` now.
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        os.close(fd)


def refuse_overwrite(*paths, force: bool = False, otherwise: str | None = None) -> None:
    """Raise :class:`OutputExistsError` for the first of ``paths`` that exists, unless ``force``;
    its message names ``--force``, and ``otherwise`` as another way out when given."""
    if force:
        return
    for path in paths:
        if Path(path).exists():
            instead = f", or {otherwise}" if otherwise else ""
            raise OutputExistsError(f"{path} exists; pass --force to overwrite it{instead}")


def refuse_replacing_inputs(outputs, inputs: dict, *, otherwise: str = "write to another name") -> None:
    """Refuse, even with ``force``, to write an output over a file the command reads: an output
    that is one of ``inputs``, or a folder (a run, a .zarr store) that holds one. ``--force``
    means "replace my old outputs", not "destroy my data or model": a sample grid written over
    its own --model, or a run replaced with the model it was told to reuse, loses that file.

    Parameters
    ----------
    outputs : iterable of path-like
        What the command writes (files or folders).
    inputs : dict
        The files it reads, keyed by the option naming each (``{"--model": path}``); a None
        path (an option not given) and a name that is no file (``digits``) are passed over.
    otherwise : str, default="write to another name"
        The way out, named in the message.

    Raises
    ------
    OutputExistsError
        Naming the output and the input it would replace.
    """
    for output in map(Path, outputs):
        if not output.exists():
            continue  # an input exists, so a missing output replaces none
        for option, path in inputs.items():
            if path is None or not Path(path).exists():
                continue
            if os.path.samefile(output, path):
                raise OutputExistsError(f"{output} is the {option} this command reads, so even --force does not "
                                        f"replace it: {otherwise}")
            if output.is_dir() and output.resolve() in Path(path).resolve().parents:
                raise OutputExistsError(f"{output} holds {option} {path}, which this command reads, so even --force "
                                        f"does not replace it: {otherwise}")


def refuse_unwritable(path, *, force: bool = False, folder: bool = False) -> None:
    """Refuse now an output that could not be written at the end of a long run: one that exists
    (unless ``force``), a folder in the place of a file, or one in a folder that takes no files
    (read-only, full, a path under /proc). A file is made beside ``path`` and removed again to
    find out, and the folders made for it are removed too, so the check leaves nothing behind.

    Parameters
    ----------
    path : path-like
    force : bool
        Whether an existing ``path`` may be replaced.
    folder : bool
        Whether ``path`` is to be a folder (a .zarr store), so that one in its place is no error.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``force`` is false, or is a folder where a file is to be.
    OSError
        If the file could not be created, naming ``path``.
    """
    if not folder:
        _refuse_folder(Path(path))
    _, trial, created = _new_file_beside(path, force)
    trial.unlink()
    _remove_empty(created)


def history_paths(model_path) -> dict[str, Path]:
    """Where the training history of a model file goes: ``<stem>.history.json`` and ``.csv``."""
    model_path = Path(model_path)
    stem = model_path.with_suffix("")
    return {"json": stem.with_name(stem.name + ".history.json"), "csv": stem.with_name(stem.name + ".history.csv")}


def _checksum(method: str, params: dict, input_shape, members: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([method, params, list(input_shape)], sort_keys=True).encode())
    for name in sorted(members):
        digest.update(name.encode())
        digest.update(members[name])
    return digest.hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # not np.ascontiguousarray: it turns a 0-d array (a saved scalar) into shape (1,)
    np.lib.format.write_array(buffer, np.asarray(array, order="C"), allow_pickle=False)
    return buffer.getvalue()


def forget_file(estimator) -> None:
    """Drop what ``estimator`` knew of the file it was loaded from (:data:`FILE_ATTRIBUTES`): a
    refit replaced that file's model."""
    for name in FILE_ATTRIBUTES:
        estimator.__dict__.pop(name, None)


#: The member holding the column names an encoder was fitted with (``feature_names_in_``), in
#: files of encoders fitted on a DataFrame; older fvae versions ignore it, encoding alike.
PIXEL_NAMES = "feature_names_in_"


def pixel_names_member(estimator) -> dict:
    """``{PIXEL_NAMES: names}`` for an estimator fitted with column names, else ``{}``: the
    names as a fixed-width string array, which ``.npy`` holds without pickle."""
    names = getattr(estimator, PIXEL_NAMES, None)
    return {} if names is None else {PIXEL_NAMES: np.asarray(names, dtype=str)}


def restore_pixel_names(estimator, members: dict) -> None:
    """Give a loaded estimator the column names its file holds, as scikit-learn keeps them (an
    object array of str), so that it checks a DataFrame's columns as the saved one did."""
    if PIXEL_NAMES in members:
        setattr(estimator, PIXEL_NAMES, np.asarray(members[PIXEL_NAMES].tolist(), dtype=object))


def save_model(path, *, method: str, params: dict, arrays: dict, input_shape, force: bool = False,
               files: dict[str, bytes] | None = None, format_version: int = 1) -> str:
    """Write a model file atomically and return its checksum.

    Parameters
    ----------
    path : path-like
    method : str
        ``"fisher"`` or ``"vae"``.
    params : dict
        JSON-serializable hyper-parameters (``get_params()``); :data:`RUNTIME_PARAMS` are left out.
    arrays : dict of str to ndarray
    input_shape : tuple
    force : bool, default=False
        Overwrite an existing file.
    files : dict of str to bytes, default=None
        Extra members stored as they are.
    format_version : int, default=1
        The oldest format that holds what the file holds (see :data:`FORMAT_VERSION`).
    """
    members = {f"{name}.npy": _npy_bytes(np.asarray(value)) for name, value in arrays.items()}
    members.update(files or {})
    params = {name: value for name, value in params.items() if name not in RUNTIME_PARAMS}
    params = json.loads(json.dumps(params, default=_jsonable))
    header = {
        "format_version": format_version,
        "fvae_version": fvae_version(),
        "method": method,
        "params": params,
        "input_shape": list(input_shape),
        "arrays": sorted(arrays),
        "checksum": _checksum(method, params, input_shape, members),
    }
    with atomic_output(path, force=force) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            header_text = json.dumps(header, indent=2, sort_keys=True)
            archive.writestr(zipfile.ZipInfo(HEADER, date_time=ZIP_DATE), header_text)
            for name, payload in members.items():
                archive.writestr(zipfile.ZipInfo(name, date_time=ZIP_DATE), payload)
    return header["checksum"]


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, np.ndarray)):
        return list(value)
    raise TypeError(f"parameter value {value!r} cannot be saved as JSON (use an int seed, not a RandomState)")


def read_header(path) -> dict:
    """The JSON header of a model file.

    Raises
    ------
    ModelFileError
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if HEADER not in archive.namelist():
                raise ModelFileError(f"{path}: not an fvae model file but {_members(archive)}")
            return json.loads(archive.read(HEADER))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such model file") from None
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError) as exc:
        raise ModelFileError(f"{path}: not an fvae model file ({exc})") from None


def _members(archive: zipfile.ZipFile, shown: int = 5) -> str:
    """'an archive of images, labels (images go to --data)': what an archive without a header
    holds (an .npz's arrays, named without '.npy'), the first few."""
    names = [name.removesuffix(".npy") for name in archive.namelist()]
    if not names:
        return "an empty archive"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"an archive of {', '.join(names[:shown])}{more} (images go to --data)"


def saved_method(path, expected: str | None = None) -> str:
    """The method of the model saved in ``path``, ``"fisher"`` or ``"vae"``, from its header.

    Raises
    ------
    ModelFileError
        If the file is not an fvae model, holds another method than ``expected`` (when given),
        or a method this version does not know.
    """
    return _checked_method(read_header(path), path, expected)


def _checked_method(header: dict, path, expected: str | None) -> str:
    found = header.get("method")
    if expected is not None and found != expected:
        raise ModelFileError(f"{path}: holds a {found!r} model, not a {expected!r} model")
    if found not in METHODS:
        raise ModelFileError(f"{path}: unknown model method {found!r}")
    return found


def load_model(path, *, method: str | None = None) -> tuple[dict, dict]:
    """Read and verify a model file.

    Parameters
    ----------
    path : path-like
    method : str, default=None
        If given, the file must hold a model of this method.

    Returns
    -------
    header : dict
    members : dict
        Arrays by name (``"means_"``) and the raw bytes of other members by file name.

    Raises
    ------
    ModelFileError
        Newer format version, another or an unknown method, or a checksum mismatch.
    """
    path = Path(path)
    header = read_header(path)
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written in model format {version} by fvae {header.get('fvae_version')}; this fvae "
            f"({fvae_version()}) reads formats up to {FORMAT_VERSION}: upgrade fvae"
        )
    _checked_method(header, path, method)
    try:
        with zipfile.ZipFile(path) as archive:
            raw = {name: archive.read(name) for name in archive.namelist() if name != HEADER}
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path}: cannot read ({exc})") from None
    expected = _checksum(header["method"], header["params"], header["input_shape"], raw)
    if expected != header.get("checksum"):
        raise ModelFileError(f"{path}: checksum mismatch: the file is corrupt or was modified")
    members = {}
    for name, payload in raw.items():
        if name.endswith(".npy"):
            members[name[:-4]] = np.lib.format.read_array(io.BytesIO(payload), allow_pickle=False)
        else:
            members[name] = payload
    return header, members
