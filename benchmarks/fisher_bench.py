"""Fisher Vector encoding speed: fvae against scikit-image's fisher_vector, side by side.

Same data and GMM for both: 2,000 official MNIST test images, 7x7 patches at stride 2 (121
descriptors per image), PCA to 32 dimensions, a diagonal GMM with K=64, improved FV with weight
gradients (scikit-image always computes them), so both produce the same 2KD + K numbers. scikit-image
encodes one image per call, as its documentation shows, and is given the PCA descriptors for free;
fvae's time covers everything from uint8 pixels (patches, PCA, FV). Both on 1 thread, then on 2.

    python benchmarks/fisher_bench.py [--images 2000]
"""

import argparse
import platform

import numpy as np
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from _common import MNIST_TEST, interleaved_best, matmul_product, numpy_blas_kernels, print_json
from fvae import FisherVectorEncoder, load_dataset


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()

    images = load_dataset(MNIST_TEST).test.images[: args.images]
    encoder = FisherVectorEncoder(
        n_components=64, pca_components=32, patch_size=7, stride=2, xy=False, spatial_pyramid=False,
        improved=True, weight_gradients=True, random_state=0,  # skimage's 2KD + K output
    ).fit(images)
    descriptors = encoder.descriptors(images).astype(np.float64)
    n_images, n_desc, dim = descriptors.shape
    gmm = GaussianMixture(n_components=64, covariance_type="diag")
    gmm.weights_, gmm.means_, gmm.covariances_ = encoder.weights_, encoder.means_, encoder.covariances_
    gmm.precisions_cholesky_ = 1 / np.sqrt(encoder.covariances_)

    from skimage.feature import fisher_vector

    def skimage_all():
        return np.stack([fisher_vector(d, gmm, improved=True) for d in descriptors])

    figures = {"images": n_images, "descriptors_per_image": n_desc, "K": 64, "D": dim, "machine": platform.processor() or platform.machine(),
               "numpy_blas_kernels": numpy_blas_kernels()}
    for threads in (1, 2):
        with threadpool_limits(threads):
            encoder.set_params(n_jobs=threads)
            product, product_flops = matmul_product()
            timings = interleaved_best({"fvae": lambda: encoder.transform(images), "skimage": skimage_all,
                                        "matmul": product}, rounds=4)
            (fvae_s, ours), (sk_s, theirs) = timings["fvae"], timings["skimage"]
            mm = product_flops / timings["matmul"][0] / 1e9
        flops = 8 * n_images * n_desc * 64 * dim
        figures.update({
            f"fvae_img_s_{threads}thread": n_images / fvae_s,
            f"skimage_img_s_{threads}thread": n_images / sk_s,
            f"speedup_vs_skimage_{threads}thread": sk_s / fvae_s,
            f"fvae_gflops_{threads}thread": flops / fvae_s / 1e9,
            f"matmul_gflops_{threads}thread": mm,
        })
        if threads == 1:
            figures["gflops_fraction_of_matmul"] = flops / fvae_s / 1e9 / mm
            K = 64
            theirs[:, K + K * dim :] *= -1  # skimage's variance block has the opposite sign
            figures["max_rel_diff_vs_skimage"] = float(np.max(np.linalg.norm(ours - theirs, axis=1)))
        print(f"{threads} thread(s): fvae {n_images / fvae_s:8.0f} img/s   skimage {n_images / sk_s:7.0f} img/s   "
              f"ratio {sk_s / fvae_s:5.1f}x   fvae {flops / fvae_s / 1e9:5.1f} GFLOP/s vs matmul {mm:6.1f} GFLOP/s")
    print_json(figures)


if __name__ == "__main__":
    main()
