"""Helpers shared by the benchmark scripts (not part of the library)."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST_TEST = ROOT.parent / "shared" / "data" / "mnist-test"
#: The ``fvae`` command of the environment running the benchmark.
FVAE = str(Path(sys.executable).with_name("fvae"))


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since it booted, summed over its cores
    (Linux's /proc/stat: user, nice, system, irq, softirq); None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:8]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = ticks
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def interleaved_best(fns: dict, rounds=3, log=None):
    """Best wall time of each function over ``rounds`` rounds that run them in turn.

    Interleaving makes the ratio of two timings robust to a noisy machine: both sides see the
    same slow and fast periods. ``log(round, name, seconds, busy_cores)``, if given, sees every
    timing with the machine's average number of busy cores during it (None where unknown), which
    tells a slow timing of a multithreaded function that ran on fewer cores from a slow CPU.
    Returns ``{name: (seconds, last result)}``.
    """
    results = {name: (float("inf"), None) for name in fns}
    for round_ in range(rounds):
        for name, fn in fns.items():
            busy = busy_cpu_seconds()
            start = time.perf_counter()
            value = fn()
            elapsed = time.perf_counter() - start
            if log is not None:
                cores = None if busy is None else (busy_cpu_seconds() - busy) / elapsed
                log(round_, name, elapsed, cores)
            results[name] = (min(results[name][0], elapsed), value)
    return results


def matmul_product(n=4096):
    """One NumPy float32 n x n matmul as a function, and its FLOPs: the machine's reference rate.

    Time it among the measured functions (:func:`interleaved_best`), not once afterwards: this
    machine's speed switches between two levels ~1.7x apart, and a rate taken in a single
    window of a second landed in either (211 or 285 GFLOP/s in two runs of vae_bench.py).
    """
    a = _square_matrix(n)
    return (lambda: a @ a), 2 * n**3


def tf_matmul_product(n=4096):
    """:func:`matmul_product` in TensorFlow: the rate of the library (oneDNN) that runs the VAE
    loops' convolutions. It can differ from NumPy's BLAS: on an AMD EPYC with AVX-512
    (2026-11-23) TensorFlow's was 2.1x NumPy's, because that machine's environment sets
    OPENBLAS_CORETYPE=Haswell and OpenBLAS ran its AVX2 kernels (see :func:`numpy_blas_kernels`);
    unset, OpenBLAS chose SkylakeX and NumPy's rate was 460 GFLOP/s against TensorFlow's 406
    (2026-11-24). TensorFlow is imported here, not by the scripts that need only NumPy's rate."""
    import tensorflow as tf

    a = tf.constant(_square_matrix(n))
    product = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, a)))  # a scalar back: no 64 MB copy
    product()  # traced outside the timing
    return (lambda: product().numpy()), 2 * n**3


def numpy_blas_kernels() -> str | None:
    """The kernels NumPy's BLAS runs, as threadpoolctl reports them ("Haswell", "SkylakeX"), or
    None where it does not say: OpenBLAS picks them by CPU unless OPENBLAS_CORETYPE names them,
    and the two can differ 2x in matmul rate on one machine."""
    from threadpoolctl import threadpool_info

    numpy_blas = [info for info in threadpool_info() if info["user_api"] == "blas" and "numpy" in info["filepath"]]
    return (numpy_blas or [{}])[0].get("architecture")


def _square_matrix(n):
    return np.random.default_rng(0).random((n, n), dtype=np.float32)


def print_json(figures: dict):
    """The last line of every benchmark: its figures as one JSON object, floats to 4 decimals (4
    significant digits below 1e-4, so that a small p-value is not printed as 0)."""
    print(json.dumps({k: (_rounded(v) if isinstance(v, float) else v) for k, v in figures.items()}))


def _rounded(value: float) -> float:
    return float(f"{value:.4g}") if 0 < abs(value) < 1e-4 else round(value, 4)
