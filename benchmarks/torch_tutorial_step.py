"""The TensorFlow tutorial's training step written in PyTorch: what another framework's CPU kernels
make of the step that vae_bench.py times in TensorFlow.

An orientation for vae_bench.py's `speedup_vs_tutorial`, not a peer of a target: PyTorch is not a
dependency of fvae, so this runs in an environment of its own, and reads Fashion-MNIST's idx file
itself, with NumPy only:

    python -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch numpy
    /tmp/torch-venv/bin/python benchmarks/torch_tutorial_step.py [--images 60000] [--rounds 3]

(``pip install torch`` may bring several GB of CUDA packages; a CPU build is enough.)

Same model as vae_bench.py's ``TutorialCVAE`` (Conv2D 32/64 stride 2, valid padding; Dense 100;
Dense 7x7x32 -> ConvTranspose 64, 32 stride 2 -> 1; latent 50), the same single-sample Monte
Carlo ELBO, batch 100, Adam 1e-4, threshold-binarized images. Each epoch is timed in NCHW and
channels-last layouts, in turn; each layout keeps its best.
"""

import argparse
import gzip
import json
import math
import sys
import time

import numpy as np

try:  # not in fvae's environment: --help works there, and main() says what is missing
    import torch
    from torch import nn
except ImportError:
    torch = nn = None

FASHION_TRAIN = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
LATENT = 50
BATCH = 100
LOG_2PI = math.log(2 * math.pi)


def binarized_fashion(n: int):
    """The first ``n`` Fashion-MNIST training images, thresholded at 0.5, as a (n, 1, 28, 28) float32 tensor."""
    with gzip.open(FASHION_TRAIN) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    return torch.from_numpy((pixels / 255.0 > 0.5).astype(np.float32))


def tutorial_model():
    """The tutorial's encoder and decoder; "same" padding of a stride-2 transposed convolution is
    padding 1 with output padding 1 here."""
    encoder = nn.Sequential(
        nn.Conv2d(1, 32, 3, stride=2), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 6 * 64, 2 * LATENT),
    )
    decoder = nn.Sequential(
        nn.Linear(LATENT, 7 * 7 * 32), nn.ReLU(), nn.Unflatten(1, (32, 7, 7)),
        nn.ConvTranspose2d(32, 64, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(32, 1, 3, stride=1, padding=1),
    )
    return encoder, decoder


def training_step(encoder, decoder, optimizer):
    """One step of the tutorial's loss: -mean(log p(x|z) + log p(z) - log q(z|x)), z sampled once."""

    def step(x):
        mean, log_var = encoder(x).chunk(2, dim=1)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        logits = decoder(z)
        log_px_z = -nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
        log_pz = (-0.5 * (z**2 + LOG_2PI)).sum(1)
        log_qz_x = (-0.5 * ((z - mean) ** 2 * torch.exp(-log_var) + log_var + LOG_2PI)).sum(1)
        loss = -(log_px_z + log_pz - log_qz_x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def epoch_seconds(step, images, layout) -> float:
    """Wall time of one shuffled epoch of ``step`` over ``images`` in ``layout``."""
    order = torch.randperm(len(images))
    started = time.perf_counter()
    for start in range(0, len(images), BATCH):
        step(images[order[start:start + BATCH]].contiguous(memory_format=layout))
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60000, help="Fashion-MNIST training images per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="epochs timed per layout")
    args = parser.parse_args()
    if torch is None:
        sys.exit("torch_tutorial_step.py: PyTorch is not installed here; it runs in an environment of its own "
                 "(see its --help or benchmarks/README.md)")
    torch.manual_seed(0)
    images = binarized_fashion(args.images)
    encoder, decoder = tutorial_model()
    step = training_step(encoder, decoder, torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], 1e-4))
    for start in range(0, 10 * BATCH, BATCH):  # warm-up: oneDNN's kernels are chosen on first use
        step(images[start:start + BATCH])
    layouts = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    best = {name: math.inf for name in layouts}
    for round_ in range(args.rounds):
        for name, layout in layouts.items():
            seconds = epoch_seconds(step, images, layout)
            best[name] = min(best[name], seconds)
            print(f"  round {round_ + 1} {name:13s} {len(images) / seconds:6.0f} img/s", flush=True)
    rates = {name: round(len(images) / seconds, 1) for name, seconds in best.items()}
    print(f"PyTorch {torch.__version__} on {torch.get_num_threads()} threads: the tutorial's step at "
          + ", ".join(f"{rate:.0f} img/s ({name})" for name, rate in rates.items()) + " (best epochs)")
    print(json.dumps({**{f"torch_{name}_img_s": rate for name, rate in rates.items()},
                      "torch_img_s": max(rates.values()), "torch_version": torch.__version__,
                      "torch_threads": torch.get_num_threads(), "images": len(images)}))


if __name__ == "__main__":
    main()
