"""The helpers the benchmark scripts share (benchmarks/_common.py): their timings are what the
issues' targets are read from, so what they report is checked here."""

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import busy_cpu_seconds, interleaved_best, print_json  # noqa: E402


def spin(seconds=0.3):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return "done"


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="busy cores are read from Linux's /proc/stat")
def test_interleaved_best_logs_every_timing_with_the_cores_busy_during_it():
    logged = []
    results = interleaved_best({"spin": spin, "sleep": lambda: time.sleep(0.3)}, rounds=2,
                               log=lambda r, name, seconds, cores: logged.append((r, name, seconds, cores)))
    assert [(r, name) for r, name, _, _ in logged] == [(0, "spin"), (0, "sleep"), (1, "spin"), (1, "sleep")]
    assert results["spin"] == (min(s for _, name, s, _ in logged if name == "spin"), "done")
    spinning = [cores for _, name, _, cores in logged if name == "spin"]
    # one thread spinning keeps one core busy, whatever else runs; no timing shows more cores than exist
    assert all(0.5 <= cores <= os.cpu_count() + 0.1 for cores in spinning), logged
    assert all(cores <= os.cpu_count() + 0.1 for *_, cores in logged)


def test_busy_cpu_seconds_grows_with_work_and_is_none_without_proc_stat(monkeypatch):
    if Path("/proc/stat").exists():
        before = busy_cpu_seconds()
        spin(0.2)
        assert busy_cpu_seconds() - before >= 0.1

    def no_such_file(path, *args, **kwargs):
        raise FileNotFoundError(path)

    monkeypatch.setattr("builtins.open", no_such_file)
    assert busy_cpu_seconds() is None


def test_the_reference_matmuls_compute_the_product_they_are_credited_with():
    import numpy as np

    from _common import matmul_product, tf_matmul_product

    n = 64
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    numpy_product, numpy_flops = matmul_product(n)
    tf_product, tf_flops = tf_matmul_product(n)
    assert numpy_flops == tf_flops == 2 * n**3
    np.testing.assert_allclose(numpy_product(), a @ a, rtol=1e-5)
    np.testing.assert_allclose(tf_product(), (a.astype(np.float64) @ a).sum(), rtol=1e-4)


def _numpy_blas_is_openblas():
    from threadpoolctl import threadpool_info  # NumPy is loaded: _common imports it

    return any(info["internal_api"] == "openblas" and "numpy" in info["filepath"] for info in threadpool_info())


@pytest.mark.skipif(not _numpy_blas_is_openblas() or os.uname().machine != "x86_64",
                    reason="OPENBLAS_CORETYPE names x86-64 kernels of OpenBLAS, which this NumPy does not use")
def test_numpy_blas_kernels_are_the_ones_openblas_runs():
    import subprocess

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    code = "import _common; print(_common.numpy_blas_kernels())"
    for kernels in ("Haswell", "Nehalem"):  # AVX2 kernels, and SSE4.2 ones
        env = {**os.environ, "OPENBLAS_CORETYPE": kernels}
        named = subprocess.run([sys.executable, "-c", code], cwd=benchmarks, env=env, capture_output=True, text=True)
        assert named.stdout.strip() == kernels, named.stderr


def test_the_json_line_rounds_to_4_decimals_but_never_a_small_value_to_zero(capsys):
    import json

    print_json({"ratio": 0.99087, "rate": 5816.0557123, "p_value": 1.83236e-60, "zero": 0.0, "count": 7})
    # a McNemar p-value of 1e-60 was printed as 0.0, as if the test could be certain
    assert json.loads(capsys.readouterr().out) == {"ratio": 0.9909, "rate": 5816.0557, "p_value": 1.832e-60,
                                                   "zero": 0.0, "count": 7}


BENCHMARKS = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")
                    if not p.name.startswith("_"))


@pytest.mark.parametrize("script", BENCHMARKS)
def test_every_benchmark_answers_help_and_refuses_an_unknown_option_without_running(script):
    """evaluate_mnist.py and fisher_accuracy.py took --help (or a misspelt --quick) as nothing
    and started their 10-minute runs."""
    import subprocess

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    shown = subprocess.run([sys.executable, script, "--help"], cwd=benchmarks, capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0 and shown.stdout.startswith(f"usage: {script}"), shown.stderr
    refused = subprocess.run([sys.executable, script, "--quik"], cwd=benchmarks, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and f"{script}: error: unrecognized arguments: --quik" in refused.stderr
