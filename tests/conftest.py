import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST_TEST = ROOT.parent / "shared" / "data" / "mnist-test"

# Tests never touch the network: the real download path is exercised only with a stub.
os.environ["FVAE_OFFLINE"] = "1"

from fvae import persist  # noqa: E402  (after FVAE_OFFLINE is set)

#: The installed console script, which the subprocess tests run as a user does.
FVAE = str(Path(sys.executable).parent / "fvae")


def write_image_folder(folder, images, class_folders):
    """An image-folder source: image i saved as ``folder/<class_folders[i]>/<i>.png``."""
    from PIL import Image

    for i, (image, name) in enumerate(zip(images, class_folders)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / name / f"{i}.png")


def write_named_digits(folder, split, names, per_class):
    """An image-folder source of the first ``per_class`` images of each digit ``names`` names
    (digit -> subfolder), from ``split``; returns the rows of ``split`` it holds."""
    rows = np.concatenate([np.flatnonzero(split.labels == digit)[:per_class] for digit in names])
    write_image_folder(folder, split.images[rows], [names[digit] for digit in split.labels[rows]])
    return rows


def as_from_a_terminal():
    """``preexec_fn`` of a child the test will Ctrl-C. A suite started in the background
    ("make test &", nohup) hands its children SIGINT ignored, and Python keeps it so: the child
    would never see the Ctrl-C. A terminal's never is."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def pythons_ctrl_c():
    """Python's own SIGINT handler for the test, as in a terminal. A suite started in the background
    ("make test &", nohup) runs with SIGINT ignored, and fvae rightly leaves that alone."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def fvae_cli(*args, cwd, wait=True):
    """Run ``fvae ARGS`` in ``cwd``; the finished process (text output captured), or with
    ``wait=False`` the running one (to interrupt it)."""
    command = [FVAE, *map(str, args)]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=as_from_a_terminal)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)


#: Tests of output_lock, which takes no lock where Python has no fcntl
needs_flock = pytest.mark.skipif(persist.fcntl is None,
                                 reason="Windows has no flock: there fvae writes its outputs without a lock")


@contextlib.contextmanager
def lock_held_by_another_process(output):
    """``fvae.persist.output_lock(output)`` held by a child process, as a running fvae command
    holds it, for the block; yields the child (``.pid``; a test may kill it)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom fvae.persist import output_lock\nwith output_lock(sys.argv[1]):\n"
                               "    print('locked', flush=True)\n    sys.stdin.read()", str(output)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
        holder.stdout.close()


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """No test sees the developer's ./data, $FVAE_DATA_DIR or Keras cache."""
    monkeypatch.delenv("FVAE_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def digits():
    import fvae

    return fvae.load_dataset("digits")


@pytest.fixture(scope="session")
def shared_mnist_test():
    """The official MNIST test set in ../shared (an idx folder with only t10k files)."""
    if not (SHARED_MNIST_TEST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"{SHARED_MNIST_TEST} is missing: the shared MNIST test set is not beside this checkout")
    return SHARED_MNIST_TEST


@pytest.fixture(scope="session")
def mnist_test_images(shared_mnist_test):
    """300 real MNIST test images from ../shared (blank borders: the numerically hard case)."""
    from fvae.data import read_idx

    images = read_idx(shared_mnist_test / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(shared_mnist_test / "t10k-labels-idx1-ubyte.gz")
    return np.asarray(images[:300]), np.asarray(labels[:300], dtype=np.int64)


def relative_error(a, b):
    """Largest per-row ||a - b|| / ||b||."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-300)))
