"""Extraction at dataset scale: speed and peak memory of ``fvae encode`` on full Fashion-MNIST.

Every measurement is a separate process, run as a user runs it; its wall time and peak resident
memory (``wait4``'s ru_maxrss) are taken by this script. Side by side in one run:

1. Fisher Vectors (default model: 21,760 dims) of all 70,000 images, streamed, ``--jobs 1`` and
   ``--jobs 2``, against a naive script that loads everything, transforms it in one call and saves.
2. VAE codes (default architecture, trained for one epoch: speed does not depend on quality),
   streamed against the same naive script.
3. Flat memory: a compact Fisher model (K=16, no pyramid) on the 70k images as an .npy file and on
   the same images repeated 10 times (700k, 549 MB of pixels) in a memory-mapped .npy.

Needs the Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist) and ~8 GB of
free disk in the work folder (outputs are deleted as soon as they are measured).

    cd benchmarks && ../.venv/bin/python extract_bench.py [--workdir /tmp/fvae-extract]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import FVAE, print_json

NAIVE = """
import sys, numpy as np, fvae
model, out, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
encoder = fvae.load(model)
if hasattr(encoder, "n_jobs"):
    encoder.set_params(n_jobs=jobs)
images = np.asarray(fvae.load_dataset("fashion-mnist").split("all").images)
np.save(out, encoder.transform(images))
"""


def measure(args, cwd, label):
    """Run a command; return its wall seconds and peak RSS in MB (of that process alone).

    Linux carries a process's peak RSS across fork and exec, so a child's ``ru_maxrss`` is at least
    this script's own RSS at the time: the script therefore stays small (about 40 MB, below every
    figure measured) and leaves the big arrays to subprocesses.
    """
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "FVAE_OFFLINE": "1"})
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    out, err = process.stdout.read(), process.stderr.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"{label} failed ({process.returncode}): {err.strip()[-2000:]}")
    rss_mb = usage.ru_maxrss / 1024
    print(f"{label:<34} {seconds:7.1f} s  peak RSS {rss_mb:8.0f} MB  {out.strip().splitlines()[-1] if out.strip() else ''}")
    return seconds, rss_mb


def remove_outputs(folder, stem):
    for path in Path(folder).glob(f"{stem}*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


MAKE_NPY = """
import sys, numpy as np, fvae
folder, times = sys.argv[1], int(sys.argv[2])
images = np.asarray(fvae.load_dataset("fashion-mnist").split("all").images)
np.save(f"{folder}/fashion70k.npy", images)
out = np.lib.format.open_memmap(f"{folder}/fashion700k.npy", mode="w+", dtype=np.uint8,
                                shape=(len(images) * times,) + images.shape[1:])
for i in range(times):
    out[i * len(images) : (i + 1) * len(images)] = images
out.flush()
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fvae-extract-"))
    work.mkdir(parents=True, exist_ok=True)
    cwd = str(work)
    encode = [FVAE, "encode", "--data", "fashion-mnist", "--split", "all", "--quiet", "--force"]

    print("setup: fitting the models (not timed here)")
    subprocess.run([FVAE, "fit", "fisher", "--data", "fashion-mnist", "-o", "fisher.npz", "--force"], cwd=cwd, check=True)
    subprocess.run([FVAE, "fit", "fisher", "--data", "fashion-mnist", "-o", "compact.npz", "--components", "16",
                    "--no-pyramid", "--force"], cwd=cwd, check=True)
    subprocess.run([FVAE, "fit", "vae", "--data", "fashion-mnist", "-o", "vae.npz", "--epochs", "1", "--quiet",
                    "--force"], cwd=cwd, check=True, capture_output=True)

    results = {}
    for jobs in (1, 2):
        results[f"fisher_jobs{jobs}"] = measure(encode + ["--model", "fisher.npz", "--jobs", str(jobs), "-o", "f.npy"],
                                                cwd, f"fisher streamed, --jobs {jobs}")
        remove_outputs(work, "f.")
    results["fisher_naive"] = measure([sys.executable, "-c", NAIVE, "fisher.npz", "naive.npy", "2"], cwd,
                                      "fisher naive (load all, 2 threads)")
    remove_outputs(work, "naive")
    results["vae"] = measure(encode + ["--method", "vae", "--model", "vae.npz", "-o", "v.npy"], cwd, "vae streamed")
    remove_outputs(work, "v.")
    results["vae_naive"] = measure([sys.executable, "-c", NAIVE, "vae.npz", "naive.npy", "1"], cwd, "vae naive (load all)")
    remove_outputs(work, "naive")

    subprocess.run([sys.executable, "-c", MAKE_NPY, str(work), "10"], check=True)  # 70k .npy and 700k .npy
    for size in ("70k", "700k"):
        results[f"compact_{size}"] = measure(
            [FVAE, "encode", "--data", f"fashion{size}.npy", "--model", "compact.npz", "--jobs", "2", "--quiet",
             "--force", "-o", f"c{size}.npy"], cwd, f"compact fisher, {size} memory-mapped")
        remove_outputs(work, f"c{size}.")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)

    n = 70_000
    fisher_s, fisher_rss = results["fisher_jobs2"]
    figures = {
        "fisher_70k_seconds": fisher_s,
        "fisher_70k_jobs1_seconds": results["fisher_jobs1"][0],
        "fisher_img_s": n / fisher_s,
        "fisher_naive_70k_seconds": results["fisher_naive"][0],
        "vae_70k_seconds": results["vae"][0],
        "vae_img_s": n / results["vae"][0],
        "vae_naive_70k_seconds": results["vae_naive"][0],
        "speedup_jobs2_vs_jobs1": results["fisher_jobs1"][0] / fisher_s,
        "fisher_peak_rss_mb": fisher_rss,
        "fisher_jobs1_peak_rss_mb": results["fisher_jobs1"][1],
        "fisher_naive_peak_rss_mb": results["fisher_naive"][1],
        "vae_peak_rss_mb": results["vae"][1],
        "vae_naive_peak_rss_mb": results["vae_naive"][1],
        "compact_70k_seconds": results["compact_70k"][0],
        "compact_700k_seconds": results["compact_700k"][0],
        "compact_70k_peak_rss_mb": results["compact_70k"][1],
        "compact_700k_peak_rss_mb": results["compact_700k"][1],
        "rss_ratio_700k_vs_70k": results["compact_700k"][1] / results["compact_70k"][1],
    }
    print(f"fisher 70k in {fisher_s:.1f} s (target < 60), jobs 2 vs 1: {figures['speedup_jobs2_vs_jobs1']:.2f}x; "
          f"peak RSS 700k / 70k: {figures['rss_ratio_700k_vs_70k']:.2f} (target <= 1.2)")
    print_json(figures)


if __name__ == "__main__":
    main()
