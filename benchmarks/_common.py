"""Helpers shared by the benchmark scripts (not part of the library)."""

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST_TEST = ROOT.parent / "shared" / "data" / "mnist-test"
#: The ``fvae`` command of the environment running the benchmark.
FVAE = str(Path(sys.executable).with_name("fvae"))


def best_of(fn, repeats=3):
    """Smallest wall time of ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def interleaved_best(fns: dict, rounds=3, log=None):
    """Best wall time of each function over ``rounds`` rounds that run them in turn.

    Interleaving makes the ratio of two timings robust to a noisy machine: both sides see the
    same slow and fast periods. ``log(round, name, seconds)``, if given, sees every timing.
    Returns ``{name: (seconds, last result)}``.
    """
    results = {name: (float("inf"), None) for name in fns}
    for round_ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            value = fn()
            elapsed = time.perf_counter() - start
            if log is not None:
                log(round_, name, elapsed)
            results[name] = (min(results[name][0], elapsed), value)
    return results


def matmul_gflops(n=4096, repeats=3):
    """NumPy float32 n x n matmul throughput under the current thread limits."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    seconds, _ = best_of(lambda: a @ a, repeats)
    return 2 * n**3 / seconds / 1e9


def print_json(figures: dict):
    """The last line of every benchmark: its figures as one JSON object."""
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}))
