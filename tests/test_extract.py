"""Streaming extraction: chunked output equals in-memory transform, kill-and-resume, formats,
corrupt input, and Dask."""

import errno
import gzip
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FVAE, as_from_a_terminal, fvae_cli, lock_held_by_another_process, needs_flock
import fvae
from fvae.data import GzipIdxImages
from fvae.extract import extract_features, output_paths
from fvae.fisher import FisherVectorEncoder
from fvae.persist import fcntl, output_lock


def _write_idx(folder, images, labels, prefix="t10k"):
    """A gzip-compressed idx pair, as MNIST ships it."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    header = bytes([0, 0, 8, 3]) + np.array([n, h, w], dtype=">u4").tobytes()
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(header + images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + np.array([n], dtype=">u4").tobytes() + labels.astype(np.uint8).tobytes())
    return folder


@pytest.fixture(scope="module")
def mnist_like(tmp_path_factory):
    """3,000 real MNIST test images as a gzip idx folder, and a small Fisher model fitted on others."""
    from conftest import SHARED_MNIST_TEST

    if not SHARED_MNIST_TEST.is_dir():
        pytest.skip(f"needs the official MNIST test set at {SHARED_MNIST_TEST} (../shared/data/mnist-test)")
    test = fvae.load_dataset(SHARED_MNIST_TEST).test
    root = tmp_path_factory.mktemp("stream")
    folder = _write_idx(root / "mnist3k", test.images[:3000], test.labels[:3000])
    model = FisherVectorEncoder(n_components=8, pca_components=8, n_descriptor_samples=5000,
                                random_state=0).fit(test.images[5000:5500])
    model.save(root / "fisher.npz")
    return folder, root / "fisher.npz", test.images[:3000]


def test_lazy_gzip_images_read_chunk_by_chunk_equal_the_whole(mnist_like):
    folder, _, images = mnist_like
    lazy = fvae.load_dataset(folder, lazy=True).test.images
    assert isinstance(lazy, GzipIdxImages) and lazy.shape == images.shape
    for rows in (slice(0, 7), slice(7, 1000), slice(2990, 3000), slice(5, 9), slice(0, 3000)):  # forward, back
        np.testing.assert_array_equal(lazy[rows], images[rows])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lazy))[10:20], images[10:20])
    picked = np.array([2500, 7, 7, 1200])
    np.testing.assert_array_equal(lazy[picked], images[picked])  # fancy indexing: one spanning read


def test_streamed_output_equals_in_memory_transform(mnist_like, tmp_path):
    folder, model_path, images = mnist_like
    encoder = fvae.load(model_path)
    split = fvae.load_dataset(folder, lazy=True).test
    sidecar = extract_features(encoder, split, tmp_path / "f.npy", metadata={"source": "t"}, batch_size=700)
    streamed = np.load(tmp_path / "f.npy")
    np.testing.assert_allclose(streamed, encoder.transform(images), rtol=1e-5, atol=1e-6)
    assert sidecar["shape"] == [3000, encoder.n_features_out_] and sidecar["resumed_chunks"] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "f.labels.npy"), split.labels)
    assert not (tmp_path / "f.npy.part").exists() and not (tmp_path / "f.npy.part.json").exists()

    extract_features(encoder, split, tmp_path / "g.npz", metadata={"source": "t"}, batch_size=700)
    with np.load(tmp_path / "g.npz") as archive:
        np.testing.assert_array_equal(archive["features"], streamed)
        np.testing.assert_array_equal(archive["labels"], split.labels)
    zarr = pytest.importorskip("zarr", reason="zarr is in the dask extra: pip install 'fvae[dask]'")
    extract_features(encoder, split, tmp_path / "h.zarr", metadata={"source": "t"}, batch_size=700)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "h.zarr"), mode="r")[:], streamed)


def _finished_chunks_once_there_are(n, run, paths) -> list:
    """Wait until the running encode ``run`` has finished ``n`` chunks; the manifest's list of them."""
    deadline = time.time() + 120
    done = []
    while time.time() < deadline and run.poll() is None:
        if paths["manifest"].exists():
            try:
                done = json.loads(paths["manifest"].read_text())["done"]
            except ValueError:  # caught between write and rename: read again
                done = []
            if len(done) >= n:
                break
        time.sleep(0.02)
    assert run.poll() is None, "the run ended before it could be killed; make the input larger"
    return done


# SIGTERM (kill, timeout, a batch system's time limit) used to kill at once, as SIGKILL does
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "Ctrl-C", "SIGTERM"])
def test_killed_run_resumes_to_identical_bytes(mnist_like, tmp_path, sig):
    folder, model_path, _ = mnist_like
    common = ["encode", "--model", model_path, "--data", folder, "--batch-size", "50", "--quiet"]
    whole = fvae_cli(*common, "-o", "whole.npy", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr

    paths = output_paths(tmp_path / "cut.npy")
    run = fvae_cli(*common, "-o", "cut.npy", cwd=tmp_path, wait=False)
    done = _finished_chunks_once_there_are(5, run, paths)
    os.kill(run.pid, sig)
    _, stderr = run.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert run.returncode == -signal.SIGKILL
    else:
        assert run.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], stderr
        assert stderr == ("fvae: interrupted; the finished chunks are kept in cut.npy.part: run the same command "
                          "with --resume to finish\n")
    assert not paths["features"].exists() and paths["partial"].exists() and 5 <= len(done) < 60

    refused = fvae_cli(*common, "-o", "cut.npy", cwd=tmp_path)
    assert refused.returncode == 2 and "pass --resume to finish it or --force" in refused.stderr

    resumed = fvae_cli(*common, "-o", "cut.npy", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "chunks kept from the interrupted run" in resumed.stdout
    assert (tmp_path / "cut.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    assert not paths["partial"].exists() and not paths["manifest"].exists()
    again = fvae_cli(*common, "-o", "cut.npy", "--resume", cwd=tmp_path)
    assert again.returncode == 2, again.stderr  # finished: never rewritten, and not told to pass --force to resume
    assert again.stderr == "fvae: error: cut.npy exists and is finished: there is nothing to resume (pass --force to encode it again)\n"


def test_ctrl_c_on_a_local_dask_cluster_is_one_message(mnist_like, tmp_path):
    """A terminal's Ctrl-C reaches every process of the command, the workers too: each printed a
    traceback, and the scheduler warned of lost workers, around fvae's one line."""
    pytest.importorskip("distributed", reason="dask[distributed] is in the dask extra: pip install 'fvae[dask]'")
    folder, model_path, _ = mnist_like
    paths = output_paths(tmp_path / "cut.npy")
    run = subprocess.Popen([FVAE, "encode", "--model", str(model_path), "--data", str(folder), "--batch-size", "50",
                            "--dask", "--jobs", "2", "--quiet", "-o", "cut.npy"], cwd=tmp_path, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                           preexec_fn=as_from_a_terminal)
    _finished_chunks_once_there_are(2, run, paths)
    os.killpg(run.pid, signal.SIGINT)  # the whole process group, as a terminal sends it
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr and "distributed.scheduler" not in stderr
    assert stderr.endswith("fvae: interrupted; the finished chunks are kept in cut.npy.part: run the same command "
                           "with --resume to finish\n")
    assert paths["partial"].exists()


def test_the_dask_logs_are_silenced_before_ctrl_c_raises(pythons_ctrl_c):
    """Dask's loop thread logs at once what a Ctrl-C breaks (a NameError traceback from a race in
    distributed.utils.sync failed the test above in one CI run): the logs must be silent before
    the KeyboardInterrupt exists, not only once it is caught."""
    from fvae.extract import _before_ctrl_c

    calls = []
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with _before_ctrl_c(lambda: calls.append("silenced")):
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                calls.append("interrupted")
                raise
    assert calls == ["silenced", "interrupted"]
    assert signal.getsignal(signal.SIGINT) is before
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's: it stays ignored
    try:
        with _before_ctrl_c(lambda: calls.append("never")):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert calls == ["silenced", "interrupted"]


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a 2 MB tmpfs, a disk that really fills up, and a function that resizes it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("a full disk is made by mounting a small tmpfs, and this system has no mount command")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk is made by mounting a small tmpfs, which needs root: {mounted.stderr.strip()}")

    def resize(size: str):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)

    try:
        yield disk, resize
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory, digits):
    """A Fisher model whose codes of the 360 digits test images take 6.2 MB."""
    path = tmp_path_factory.mktemp("digits_model") / "fisher.npz"
    FisherVectorEncoder(n_components=32, random_state=0).fit(digits.train.images[:300]).save(path)
    return path


def test_a_full_disk_is_one_line_that_says_what_to_do_and_resume_finishes(small_disk, digits_model, tmp_path):
    """On a disk with too little room, the .npy output, written through a memory map of a sparse
    file, killed the process with SIGBUS: exit code 135 and no message at all."""
    disk, resize = small_disk
    encode = ["encode", "--model", digits_model, "--data", "digits", "--quiet"]
    for name in ("x.npy", "x.npz"):
        full = fvae_cli(*encode, "-o", name, cwd=disk)
        assert full.returncode == 2, full.stderr
        assert re.fullmatch(rf"fvae: error: {re.escape(name)}: No space left on device for 6\.2 MB of features "
                            r"\((1\.9|2\.0) MB free there\)\n", full.stderr), full.stderr
        assert not os.listdir(disk)

    # room for the features but not for the .npz that they are then packed into
    resize("10M")
    full = fvae_cli(*encode, "-o", "x.npz", cwd=disk)
    assert (full.returncode, full.stderr) == (2, "fvae: error: x.npz: No space left on device once every chunk was "
                                                 "encoded: free some space, then finish with --resume\n")
    assert sorted(os.listdir(disk)) == ["x.npz.part", "x.npz.part.json"]
    resize("20M")
    assert fvae_cli(*encode, "-o", "x.npz", "--resume", cwd=disk).returncode == 0
    assert fvae_cli(*encode, "-o", "x.npz", cwd=tmp_path).returncode == 0
    assert (disk / "x.npz").read_bytes() == (tmp_path / "x.npz").read_bytes()


@pytest.mark.parametrize("where", [[], ["--dask", "--jobs", "2"]], ids=["local", "dask"])
def test_a_zarr_store_that_fills_the_disk_keeps_its_chunks_for_resume(small_disk, digits_model, tmp_path, where):
    """A Dask worker whose write finds the disk full logged a traceback of its own, and the
    cluster's shutdown a warning of every task cut short, around the one-line error."""
    zarr = pytest.importorskip("zarr", reason="zarr is in the dask extra: pip install 'fvae[dask]'")
    if where:
        pytest.importorskip("distributed", reason="dask[distributed] is in the dask extra: pip install 'fvae[dask]'")
    disk, resize = small_disk
    encode = ["encode", "--model", digits_model, "--data", "digits", "--batch-size", "50", "--quiet", *where]
    full = fvae_cli(*encode, "-o", "x.zarr", cwd=disk)
    assert full.returncode == 2, full.stderr
    assert re.fullmatch(r"fvae: error: x\.zarr: No space left on device after [0-7] of 8 chunks: free some space, "
                        r"then finish with --resume\n", full.stderr), full.stderr
    resize("20M")
    assert fvae_cli(*encode, "-o", "x.zarr", "--resume", cwd=disk).returncode == 0
    assert fvae_cli(*encode, "-o", "whole.npy", cwd=tmp_path).returncode == 0
    np.testing.assert_array_equal(zarr.open_array(str(disk / "x.zarr"), mode="r")[:], np.load(tmp_path / "whole.npy"))


def test_a_forced_zarr_store_that_cannot_be_put_in_place_gives_back_the_earlier_one(digits_model, digits, tmp_path,
                                                                                    monkeypatch):
    """--force removed the earlier store before renaming the new one into place: should that
    rename fail, neither was left, only the partial output."""
    zarr = pytest.importorskip("zarr", reason="zarr is in the dask extra: pip install 'fvae[dask]'")
    encoder, split = fvae.load(digits_model), digits.test
    out, paths = tmp_path / "x.zarr", output_paths(tmp_path / "x.zarr")
    extract_features(encoder, split, out, metadata={"source": "digits"}, batch_size=100)
    earlier = zarr.open_array(str(out), mode="r")[:]
    real_replace = os.replace

    def replace_failing_into_place(source, target):
        if Path(source) == paths["partial"]:  # the new store's move into place; not the earlier one's
            raise OSError(errno.EIO, "Input/output error")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_failing_into_place)
    with pytest.raises(OSError, match="Input/output error"):
        fewer = fvae.Split(split.images[:150], split.labels[:150])
        extract_features(encoder, fewer, out, metadata={"source": "digits"}, batch_size=100, force=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], earlier)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".old")]  # no hidden copy left


@pytest.mark.parametrize("suffix", [".npy", ".zarr"])
def test_a_disk_that_fills_while_the_run_finishes_leaves_it_to_resume(digits_model, digits, tmp_path, monkeypatch,
                                                                      suffix):
    """The features were renamed into place before the labels were written: with the labels
    refused by a full disk, --resume found a finished output and nothing to resume."""
    import fvae.extract

    if suffix == ".zarr":
        pytest.importorskip("zarr", reason="zarr is in the dask extra: pip install 'fvae[dask]'")
    encoder, split = fvae.load(digits_model), digits.test
    settings = dict(metadata={"source": "digits"}, batch_size=100)
    out, paths = tmp_path / f"x{suffix}", output_paths(tmp_path / f"x{suffix}")
    real_save_npy = fvae.extract.save_npy
    for failing in ("save_npy", "finish"):
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        if failing == "save_npy":
            monkeypatch.setattr(fvae.extract, "save_npy", full)
        else:
            monkeypatch.setattr(fvae.extract, "save_npy", real_save_npy)
            monkeypatch.setattr(fvae.extract._ZarrWriter if suffix == ".zarr" else fvae.extract._NpyWriter, "finish", full)
        with pytest.raises(OSError) as raised:
            extract_features(encoder, split, out, **settings, resume=True)
        assert raised.value.filename == str(out)
        assert raised.value.strerror == ("No space left on device once every chunk was encoded: free some space, "
                                         "then finish with --resume")
        assert sorted(p.name for p in tmp_path.iterdir()) == [paths["partial"].name, paths["manifest"].name]
        monkeypatch.undo()
    sidecar = extract_features(encoder, split, out, **settings, resume=True)
    assert sidecar["resumed_chunks"] == 4
    whole = tmp_path / "whole" / "x.npy"
    extract_features(encoder, split, whole, **settings)
    got = np.load(out) if suffix == ".npy" else pytest.importorskip("zarr").open_array(str(out), mode="r")[:]
    np.testing.assert_array_equal(got, np.load(whole))
    np.testing.assert_array_equal(np.load(paths["labels"]), split.labels)


@pytest.mark.parametrize("suffix, appears", [(".npy", "features"), (".npy", "labels"), (".npy", "sidecar"),
                                             (".npz", "features"), (".zarr", "features")])
def test_an_output_that_appears_during_the_run_is_kept_and_the_run_is_left_to_resume(digits_model, digits, tmp_path,
                                                                                    suffix, appears):
    """Whether the outputs exist is checked before the encoding, which may take hours; at its end
    the features, labels and sidecar were renamed over whatever something else had written there
    meanwhile (an editor, ``cp``: a program that takes no lock)."""
    if suffix == ".zarr":
        pytest.importorskip("zarr", reason="zarr is in the dask extra: pip install 'fvae[dask]'")
    encoder, split = fvae.load(digits_model), digits.test
    settings = dict(metadata={"source": "digits"}, batch_size=100)
    out = tmp_path / f"x{suffix}"
    paths = output_paths(out)
    theirs = paths[appears]

    def written_by_something_else_at_the_last_chunk(n_rows):
        if n_rows == 60:  # 360 images in chunks of 100: the last chunk's rows
            theirs.write_bytes(b"theirs")

    with pytest.raises(fvae.OutputExistsError) as refused:
        extract_features(encoder, split, out, progress=written_by_something_else_at_the_last_chunk, **settings)
    assert str(refused.value) == (f"{theirs}: appeared while this command ran, and is left as it is; the encoded "
                                  "features are kept: move it away, then finish with --resume")
    assert theirs.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([theirs.name, paths["partial"].name,
                                                                 paths["manifest"].name])
    theirs.rename(tmp_path / "moved away")
    assert extract_features(encoder, split, out, resume=True, **settings)["resumed_chunks"] == 4
    whole = tmp_path / "whole" / "x.npy"
    extract_features(encoder, split, whole, **settings)
    if suffix == ".npy":
        got = np.load(out)
    elif suffix == ".npz":
        got = np.load(out)["features"]
    else:
        got = pytest.importorskip("zarr").open_array(str(out), mode="r")[:]
    np.testing.assert_array_equal(got, np.load(whole))


def test_where_space_cannot_be_allocated_ahead_the_free_space_is_checked(tmp_path, monkeypatch):
    """macOS has no posix_fallocate, and some filesystems refuse it: a memory-mapped write that a
    full disk cannot back must still not be where the run finds out."""
    from fvae.extract import _allocate_on_disk

    path = tmp_path / "f.npy.part"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(1000, 100)).flush()  # sparse: 400 KB

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    def free_space(n_bytes):
        monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**12, 10**12 - n_bytes, n_bytes))

    for no_preallocation in ("refused", "missing"):
        if no_preallocation == "refused":
            monkeypatch.setattr(os, "posix_fallocate", unsupported)
        else:
            monkeypatch.delattr(os, "posix_fallocate")
        free_space(300_000)
        with pytest.raises(OSError) as full:
            _allocate_on_disk(path)
        assert (full.value.errno, full.value.filename) == (errno.ENOSPC, str(path))
        free_space(500_000)
        _allocate_on_disk(path)


class _Stop(Exception):
    pass


def _interrupted_after(chunks, encoder, split, out, **settings):
    """Run extract_features and stop it, as a kill would, once ``chunks`` chunks are written."""
    seen = []

    def progress(n):
        seen.append(n)
        if len(seen) == chunks:
            raise _Stop

    with pytest.raises(_Stop):
        extract_features(encoder, split, out, progress=progress, **settings)


def test_resume_refuses_other_settings(mnist_like, tmp_path):
    folder, model_path, _ = mnist_like
    encoder = fvae.load(model_path)
    split = fvae.load_dataset(folder, lazy=True).test
    paths = output_paths(tmp_path / "f.npy")
    _interrupted_after(2, encoder, split, paths["features"], metadata={"source": "t"}, batch_size=500)
    assert json.loads(paths["manifest"].read_text())["done"] == [0, 1]
    with pytest.raises(fvae.InputError, match=r"had other settings \(batch_size was 500, now 400\); repeat its command with --resume"):
        extract_features(encoder, split, paths["features"], metadata={"source": "t"}, batch_size=400, resume=True)
    with pytest.raises(fvae.OutputExistsError, match="pass --resume"):
        extract_features(encoder, split, paths["features"], metadata={"source": "t"}, batch_size=500)
    sidecar = extract_features(encoder, split, paths["features"], metadata={"source": "t"}, batch_size=500, resume=True)
    assert sidecar["resumed_chunks"] == 2


@needs_flock
def test_a_run_writing_an_output_keeps_every_other_process_off_it(digits_model, digits, tmp_path):
    """A second encode to the same file took the running one's partial output for an interrupted
    run's; with --force, as its message said, it deleted it under the running one, which then
    failed at its end after all its work."""
    encoder = fvae.load(digits_model)
    paths = output_paths(tmp_path / "f.npy")
    lock = tmp_path / "f.npy.lock"
    settings = {"metadata": {"source": "digits"}, "batch_size": 100}
    _interrupted_after(1, encoder, digits.test, paths["features"], **settings)
    written = {path: path.read_bytes() for path in (paths["partial"], paths["manifest"])}
    with lock_held_by_another_process(paths["features"]) as holder:
        assert lock.read_text() == f"{holder.pid}\n"
        for how in ({"force": True}, {"resume": True}, {}):
            with pytest.raises(fvae.OutputInUseError, match=rf"f\.npy: another fvae command \(pid {holder.pid}\) is "
                                                             "writing it now; wait for it to end, or stop it first"):
                extract_features(encoder, digits.test, paths["features"], **settings, **how)
        assert {path: path.read_bytes() for path in written} == written
    assert not lock.exists()  # the holder took its lock file away
    sidecar = extract_features(encoder, digits.test, paths["features"], **settings, resume=True)
    assert sidecar["resumed_chunks"] == 1 and not lock.exists()
    images = digits.test.images  # chunk by chunk: a batch of another size is another matrix product
    np.testing.assert_array_equal(np.load(paths["features"]),
                                  np.concatenate([encoder.transform(images[s : s + 100]) for s in range(0, 360, 100)]))


@needs_flock
def test_the_lock_file_of_a_killed_process_locks_nothing(digits_model, digits, tmp_path):
    encoder = fvae.load(digits_model)
    out = tmp_path / "f.npy"
    with lock_held_by_another_process(out) as holder:
        holder.kill()
        holder.wait()
        assert (tmp_path / "f.npy.lock").exists()  # a kill -9 leaves it, but the kernel let go of its lock
        extract_features(encoder, digits.test, out, metadata={}, batch_size=200)
    assert np.load(out).shape == (360, encoder.n_features_out_)
    assert not (tmp_path / "f.npy.lock").exists()


def test_a_command_and_the_library_function_it_calls_share_the_lock(digits_model, digits, tmp_path):
    out = tmp_path / "new" / "f.npy"
    with output_lock(out):
        extract_features(fvae.load(digits_model), digits.test, out, metadata={}, batch_size=200)
        assert (out.parent / "f.npy.lock").exists() == (fcntl is not None)  # the command's lock, still held
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.json", "f.labels.npy", "f.npy"]
    with pytest.raises(fvae.OutputExistsError), output_lock(tmp_path / "none" / "f.npy"):
        raise fvae.OutputExistsError("refused")
    assert not (tmp_path / "none").exists()  # the folder made for a lock alone is taken away with it


def test_the_manifest_identifies_an_image_folder_by_a_digest_of_its_file_names(mnist_like, tmp_path):
    """The sidecar lists every file; the manifest, rewritten after every chunk, holds their digest."""
    folder, model_path, _ = mnist_like
    encoder = fvae.load(model_path)
    split = fvae.load_dataset(folder, lazy=True).test
    paths = output_paths(tmp_path / "f.npy")
    names = [f"class{i % 10}/{i}.png" for i in range(len(split))]
    _interrupted_after(1, encoder, split, paths["features"], metadata={"files": names}, batch_size=500)
    identity = json.loads(paths["manifest"].read_text())["identity"]
    assert re.fullmatch(r"3,000 files, sha256 [0-9a-f]{12}", identity["files"])
    renamed = [*names[:-1], "class9/new.png"]
    with pytest.raises(fvae.InputError, match=r"had other settings \(files was 3,000 files, sha256 [0-9a-f]{12}, now "
                                              r"3,000 files, sha256 [0-9a-f]{12}\)"):
        extract_features(encoder, split, paths["features"], metadata={"files": renamed}, batch_size=500, resume=True)
    sidecar = extract_features(encoder, split, paths["features"], metadata={"files": names}, batch_size=500,
                               resume=True)
    assert sidecar["resumed_chunks"] == 1 and json.loads(paths["sidecar"].read_text())["files"] == names


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_input_fails_with_one_line_and_no_output(mnist_like, tmp_path, damage):
    folder, model_path, images = mnist_like
    bad = _write_idx(tmp_path / "bad", images, np.zeros(len(images)))
    target = bad / "t10k-images-idx3-ubyte.gz"
    payload = bytearray(target.read_bytes())
    if damage == "truncated":
        payload = payload[: len(payload) // 2]
    else:  # garbage in the middle of the deflate stream: found only when that chunk is read
        payload[len(payload) // 2 : len(payload) // 2 + 64] = bytes(64)
    target.write_bytes(bytes(payload))
    result = fvae_cli("encode", "--model", model_path, "--data", bad, "--batch-size", "500", "-o", "f.npy", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"fvae: error: {target}") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("f.")]


def test_vae_encoder_pickles_through_the_keras_format(digits):
    from fvae.vae import VAEEncoder

    vae = VAEEncoder(arch="mlp", hidden=(32,), latent_dim=3, epochs=2, random_state=0).fit(digits.train.images)
    state = vae.__getstate__()
    assert "model_" not in state and state["_keras_bytes"][:2] == b"PK"  # a .keras zip, not pickled objects
    copy = pickle.loads(pickle.dumps(vae))
    np.testing.assert_array_equal(copy.transform(digits.test.images), vae.transform(digits.test.images))


def test_a_conditional_vae_on_unlabelled_images_is_refused_naming_the_source(digits, tmp_path):
    from typer.testing import CliRunner

    from fvae.cli import app
    from fvae.vae import VAEEncoder

    images, labels = digits.train.images[:200], digits.train.labels[:200]
    VAEEncoder(arch="mlp", hidden=(16,), latent_dim=2, epochs=1, conditional=True,
               random_state=0).fit(images, labels).save(tmp_path / "cvae.npz")
    np.save(tmp_path / "mine.npy", images)
    result = CliRunner().invoke(app, ["encode", "--data", str(tmp_path / "mine.npy"), "--model", str(tmp_path / "cvae.npz"),
                                      "-o", str(tmp_path / "codes.npy")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"fvae: error: {tmp_path / 'mine.npy'} (test split): no labels, and {tmp_path / 'cvae.npz'} is a conditional "
        "VAE: it encodes each image with its label")
    assert not list(tmp_path.glob("codes*"))


def test_dask_local_cluster_output_equals_local_output(mnist_like, tmp_path):
    pytest.importorskip("distributed", reason="dask[distributed] is in the dask extra: pip install 'fvae[dask]'")
    from fvae.extract import dask_client

    folder, model_path, _ = mnist_like
    encoder = fvae.load(model_path)
    split = fvae.load_dataset(folder, lazy=True).test
    local = extract_features(encoder, split, tmp_path / "local.npy", metadata={"source": "t"}, batch_size=400)
    with dask_client(workers=2) as client:
        assert all(w.startswith("tcp://127.0.0.1:") for w in client.scheduler_info()["workers"])
        extract_features(encoder, split, tmp_path / "dask.npy", metadata={"source": "t"}, batch_size=400,
                         client=client)
        extract_features(encoder, split, tmp_path / "shared.zarr", metadata={"source": "t"}, batch_size=400,
                         client=client)
    assert local["shape"] == [3000, encoder.n_features_out_]
    expected = (tmp_path / "local.npy").read_bytes()
    assert (tmp_path / "dask.npy").read_bytes() == expected
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "shared.zarr"), mode="r")[:], np.load(tmp_path / "local.npy"))


def test_cli_dask_zarr_and_vae_on_workers_equal_local(mnist_like, tmp_path):
    """``fvae encode`` on Dask as a user runs it: a Fisher model to .zarr written by the workers of
    a running cluster (``--scheduler tcp://...``), and a VAE (shipped through Keras' format) on a
    cluster of its own (``--dask``), gathered into .npy; both equal the local output."""
    pytest.importorskip("distributed", reason="dask[distributed] is in the dask extra: pip install 'fvae[dask]'")
    import zarr
    from distributed import LocalCluster

    from fvae.vae import VAEEncoder

    folder, model_path, images = mnist_like
    VAEEncoder(arch="mlp", hidden=(64,), latent_dim=4, epochs=1, random_state=0).fit(images[:500]).save(tmp_path / "vae.npz")
    common = ["--data", folder, "--batch-size", "500", "--quiet"]
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None)
    # --jobs 2 with --dask: two worker processes, each encoding on one thread
    runs = (("fisher", model_path, ".zarr", ["--scheduler", cluster.scheduler_address]),
            ("fisher", model_path, ".npy", ["--dask", "--jobs", "2"]),
            ("vae", tmp_path / "vae.npz", ".npy", ["--dask", "--jobs", "2"]))
    try:
        outputs = {}
        for run, (method, model, suffix, where) in enumerate(runs):
            if method not in outputs:
                local = fvae_cli("encode", "--method", method, "--model", model, *common, "-o", f"{method}-local.npy",
                                 cwd=tmp_path)
                assert local.returncode == 0, local.stderr
                outputs[method] = np.load(tmp_path / f"{method}-local.npy")
            remote = fvae_cli("encode", "--method", method, "--model", model, *common, *where,
                              "-o", f"dask-{run}{suffix}", cwd=tmp_path)
            assert remote.returncode == 0, remote.stderr
            # a cluster of its own warned: port 8787 taken (by the one above); joblib, from each worker,
            # that the encoder's --jobs 2 threads became 1 inside a Dask worker
            assert "Warning" not in remote.stderr, remote.stderr
    finally:
        cluster.close()
    for run, (method, model, suffix, where) in enumerate(runs):
        expected = outputs[method]
        if suffix == ".zarr":
            got = zarr.open_array(str(tmp_path / f"dask-{run}.zarr"), mode="r")[:]
        else:
            got = np.load(tmp_path / f"dask-{run}.npy")
        np.testing.assert_array_equal(got, expected)
        sidecar = json.loads((tmp_path / f"dask-{run}.json").read_text())
        assert sidecar["format"] == suffix.lstrip(".") and sidecar["shape"] == list(expected.shape)


def test_an_unreachable_scheduler_is_refused_before_fitting(tmp_path, monkeypatch):
    """Without --model, encode fits first: a wrong port failed only after the fit, leaving its model."""
    pytest.importorskip("distributed", reason="dask[distributed] is in the dask extra: pip install 'fvae[dask]'")
    with socket.socket() as unused:  # a free port, closed again: nothing listens on it
        unused.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{unused.getsockname()[1]}"
    monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "2s")  # Dask's own setting, which fvae keeps
    result = fvae_cli("encode", "--data", "digits", "-o", "f.npy", "--scheduler", address, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"fvae: error: cannot reach the Dask scheduler at {address} ("), result.stderr
    assert "after 2 s" in result.stderr and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("address, detail", [
    ("nonsense", "missing port number"),
    ("tcp://somehost", "missing port number"),
    ("foo://somehost:8786", "unknown address scheme 'foo'"),
])
def test_a_malformed_scheduler_address_is_refused_before_any_work(tmp_path, address, detail):
    pytest.importorskip("distributed", reason="dask[distributed] is in the dask extra: pip install 'fvae[dask]'")
    # Without --model, encode would fit first; the address is checked before that.
    result = fvae_cli("encode", "--data", "digits", "-o", "f.npy", "--scheduler", address, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"fvae: error: {address!r} is not a Dask scheduler address: ")
    assert detail in result.stderr and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
