import gzip
import logging
import zipfile

import numpy as np
import pytest
import scipy.sparse
from PIL import Image

from conftest import write_image_folder
import fvae
from fvae import DataError, InputError
from fvae.data import check_image_batch, describe_sources, image_file_names, read_idx, to_unit_float


def write_idx(path, array, compress=True):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    if compress:
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_idx_split(folder, prefix, images, labels, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if compress else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images, compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels, compress)


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (12, 5, 6), dtype=np.uint8), np.arange(12) % 3


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_round_trip(tmp_path, tiny, compress):
    images, labels = tiny
    write_idx_split(tmp_path / "d", "train", images, labels, compress)
    write_idx_split(tmp_path / "d", "t10k", images[:4], labels[:4], compress)
    ds = fvae.load_dataset(tmp_path / "d")
    np.testing.assert_array_equal(ds.train.images, images)
    np.testing.assert_array_equal(ds.train.labels, labels)
    assert ds.train.labels.dtype == np.int64
    assert len(ds.test) == 4 and ds.image_shape == (5, 6)
    assert len(ds.split("all")) == 16


def test_shared_mnist_test_folder_is_test_only(shared_mnist_test):
    ds = fvae.load_dataset(shared_mnist_test)
    assert ds.train is None
    assert ds.test.images.shape == (10000, 28, 28) and ds.test.images.dtype == np.uint8
    assert np.bincount(ds.test.labels).tolist()[:3] == [980, 1135, 1032]  # the official class counts
    with pytest.raises(DataError, match="has no train split, only test images; this needs a train split"):
        ds.split("train")


def test_corrupt_idx_files_name_the_file_and_problem(tmp_path, tiny):
    images, labels = tiny
    good = write_idx(tmp_path / "good.gz", images)
    raw = gzip.decompress(good.read_bytes())
    (tmp_path / "magic").write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(DataError, match=r"magic.*bad magic number 0x1234|magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(raw[:-7])
    with pytest.raises(DataError, match=r"short: header says 12x5x6 \(360 bytes.*353 bytes"):
        read_idx(tmp_path / "short")
    (tmp_path / "trunc.gz").write_bytes(good.read_bytes()[:-20])
    with pytest.raises(DataError, match="trunc.gz: truncated or corrupt gzip"):
        read_idx(tmp_path / "trunc.gz")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(tmp_path / "empty")


def test_idx_count_mismatch_and_missing_labels(tmp_path, tiny):
    images, labels = tiny
    write_idx_split(tmp_path / "a", "t10k", images, labels[:-1])
    with pytest.raises(DataError, match="12 images but t10k-labels-idx1-ubyte.gz has 11 labels"):
        fvae.load_dataset(tmp_path / "a")
    (tmp_path / "b").mkdir()
    write_idx(tmp_path / "b" / "t10k-images-idx3-ubyte.gz", images)
    with pytest.raises(DataError, match="labels missing"):
        fvae.load_dataset(tmp_path / "b")


@pytest.mark.parametrize("compress", [True, False])
def test_one_idx_images_file_is_its_split_labelled_by_the_file_beside_it(tmp_path, tiny, compress):
    images, labels = tiny
    write_idx_split(tmp_path / "d", "train", images, labels, compress)
    write_idx_split(tmp_path / "d", "t10k", images[:4], labels[:4], compress)
    ext = ".gz" if compress else ""
    test_only = fvae.load_dataset(tmp_path / "d" / f"t10k-images-idx3-ubyte{ext}")
    assert test_only.train is None and test_only.location == str(tmp_path / "d" / f"t10k-images-idx3-ubyte{ext}")
    np.testing.assert_array_equal(test_only.test.images, images[:4])
    np.testing.assert_array_equal(test_only.test.labels, labels[:4])
    train_only = fvae.load_dataset(tmp_path / "d" / f"train-images-idx3-ubyte{ext}", lazy=True)
    assert train_only.test is None and train_only.class_names == ("0", "1", "2")
    np.testing.assert_array_equal(train_only.train.images[:], images)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte(\.gz)?: holds labels only; pass its images file "
                                        r"\(t10k-images-\.\.\.\) or the folder"):
        fvae.load_dataset(tmp_path / "d" / f"t10k-labels-idx1-ubyte{ext}")


def test_an_idx_images_file_without_its_labels_or_with_another_name_is_refused(tmp_path, tiny):
    images, _ = tiny
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: labels missing"):
        fvae.load_dataset(tmp_path / "t10k-images-idx3-ubyte.gz")
    write_idx(tmp_path / "digits.idx3", images)
    with pytest.raises(DataError, match="digits.idx3: unsupported file type .* an idx file named as MNIST's"):
        fvae.load_dataset(tmp_path / "digits.idx3")


def test_labels_too_large_to_be_class_numbers_are_refused_in_npz_and_idx_files(tmp_path, tiny):
    """A label of 9,000,000 (an id) was taken as class 9,000,000: nine million class names, a 134 MB sidecar."""
    images, labels = tiny
    np.savez(tmp_path / "ids.npz", x=images, y=labels * 4_500_000)
    with pytest.raises(DataError, match=r"ids.npz\[y\]: label 9000000 is no class number \(classes are numbered 0, "
                                        r"1, 2, ... up to 100,000\): renumber them, e.g. np.unique"):
        fvae.load_dataset(tmp_path / "ids.npz")
    np.savez(tmp_path / "wide.npz", x=images, y=labels * 50_000)  # 100,000: the largest class number
    assert len(fvae.load_dataset(tmp_path / "wide.npz").class_names) == 100_001
    folder = tmp_path / "idx"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    for values, message in ((labels * 4_500_000, "label 9000000 is no class number"),
                            (labels - 1, "labels must be non-negative, found -1")):
        int32 = np.asarray(values, dtype=">i4")  # an idx file of int32 labels (type 0x0C)
        header = bytes([0, 0, 0x0C, 1]) + np.asarray(int32.shape, dtype=">u4").tobytes()
        (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header + int32.tobytes()))
        with pytest.raises(DataError, match=f"t10k-labels-idx1-ubyte.gz: {message}"):
            fvae.load_dataset(folder)


def test_an_npz_of_unlabelled_images_is_read_as_a_npy_is(tmp_path, tiny):
    """Before, an .npz without labels was refused, though encoding and fitting need none."""
    images, _ = tiny
    np.savez(tmp_path / "split.npz", x_train=images, x_test=images[:3])
    split = fvae.load_dataset(tmp_path / "split.npz")
    assert (split.train.labels, split.test.labels, split.class_names) == (None, None, ())
    np.testing.assert_array_equal(split.split("all").images, np.concatenate([images, images[:3]]))
    assert split.split("all").labels is None
    for name, arrays in (("images.npz", {"images": images}), ("x.npz", {"x": images}), ("savez.npz", {"arr_0": images})):
        np.savez(tmp_path / name, **arrays)
        one = fvae.load_dataset(tmp_path / name)
        assert one.train is None and one.test.labels is None  # test-only, as a .npy is
        np.testing.assert_array_equal(one.test.images, images)
    np.savez(tmp_path / "two.npz", images, images)  # arr_0 and arr_1: which are the images?
    with pytest.raises(DataError, match=r"two.npz: expected arrays .* or one array of images, found arr_0, arr_1$"):
        fvae.load_dataset(tmp_path / "two.npz")


def test_keras_npz(tmp_path, tiny):
    images, labels = tiny
    np.savez(tmp_path / "k.npz", x_train=images, y_train=labels, x_test=images[:3], y_test=labels[:3])
    ds = fvae.load_dataset(tmp_path / "k.npz")
    np.testing.assert_array_equal(ds.test.images, images[:3])
    np.savez(tmp_path / "partly.npz", x_train=images, y_train=labels, x_test=images[:3])
    with pytest.raises(DataError, match="labels missing: has x_test but no y_test"):
        fvae.load_dataset(tmp_path / "partly.npz")
    # one labelled set under a common pair of names is split 80/20, stratified, as an image folder is
    np.savez(tmp_path / "one.npz", images=images, labels=labels)
    one = fvae.load_dataset(tmp_path / "one.npz")
    assert (len(one.train), len(one.test)) == (9, 3) and sorted(one.test.labels.tolist()) == [0, 1, 2]
    assert {img.tobytes() for img in one.split("all").images} == {img.tobytes() for img in images}
    np.savez(tmp_path / "other.npz", pixels=images, classes=labels)
    with pytest.raises(DataError, match=r"other.npz: expected arrays x_train/y_train and/or x_test/y_test \(the y_ "
                                        r"arrays optional\), one labelled set \(x/y, X/y, images/labels\) or one array "
                                        r"of images, found pixels, classes$"):
        fvae.load_dataset(tmp_path / "other.npz")
    np.savez(tmp_path / "floats.npz", x_test=images / 255.0, y_test=labels)
    np.testing.assert_array_equal(fvae.load_dataset(tmp_path / "floats.npz").test.images, images)
    bad = (images / 255.0).astype(np.float32)
    bad[0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x_test=bad, y_test=labels)
    with pytest.raises(DataError, match="NaN"):
        fvae.load_dataset(tmp_path / "nan.npz")
    fvae.FisherVectorEncoder(patch_size=2, stride=1, n_components=2, pca_components=4).fit(images).save(
        tmp_path / "model.npz")
    with pytest.raises(DataError, match=r"^.*model.npz: an fvae model file \(fisher\), not images: pass it as a model "
                                        r"\(--model, --fisher-model or --vae-model\)$"):  # before: "expected arrays .."
        fvae.load_dataset(tmp_path / "model.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="broken.npz: not a readable .npz"):
        fvae.load_dataset(tmp_path / "broken.npz")


def test_arrays_of_an_npz_that_are_not_read_are_named_in_a_warning(tmp_path, tiny, caplog):
    """Before: an x_val/y_val pair (or any other array) was dropped without a word."""
    images, labels = tiny
    np.savez(tmp_path / "v.npz", x_train=images, y_train=labels, x_val=images[:3], y_val=labels[:3], x_test=images[:3],
             y_test=labels[:3])
    with caplog.at_level(logging.WARNING, logger="fvae"):
        assert len(fvae.load_dataset(tmp_path / "v.npz").train) == len(images)
    assert caplog.messages == [f"{tmp_path / 'v.npz'}: x_val, y_val left out: fvae reads only x_train, y_train, "
                               "x_test, y_test"]
    caplog.clear()
    np.savez(tmp_path / "one.npz", images=images, labels=labels, class_names=np.array(["a", "b", "c"]))
    with caplog.at_level(logging.WARNING, logger="fvae"):
        fvae.load_dataset(tmp_path / "one.npz")
    assert caplog.messages == [f"{tmp_path / 'one.npz'}: class_names left out: fvae reads only images, labels"]
    caplog.clear()
    np.savez(tmp_path / "k.npz", x_train=images, y_train=labels)
    with caplog.at_level(logging.WARNING, logger="fvae"):
        fvae.load_dataset(tmp_path / "k.npz")
    assert caplog.messages == []  # every array read, nothing to say
    with zipfile.ZipFile(tmp_path / "k.npz", "a") as archive:  # an array left out is not even read
        archive.writestr("x_val.npy", b"\x93NUMPY\x01\x00 a broken header")  # read, it is a ValueError
    assert len(fvae.load_dataset(tmp_path / "k.npz").train) == len(images)


@pytest.mark.parametrize("rows, sizes", [
    ([0, 1, 3, 4], (3, 1)),  # two classes of two: a test split of one cannot hold both (a traceback before)
    ([0, 1, 2, 3, 4, 5, 6], (5, 2)),  # three classes of two or three: nor can one of two
    ([0], (1, None)),  # one image: nothing can be held out (the train split was empty, a traceback)
])
def test_a_labelled_set_too_small_to_stratify_is_split_at_random_or_not_at_all(tmp_path, tiny, rows, sizes):
    images, labels = tiny  # labels 0, 1, 2, 0, 1, 2, ...
    np.savez(tmp_path / "few.npz", images=images[rows], labels=labels[rows])
    write_image_folder(tmp_path / "few", images[rows], [f"class{label}" for label in labels[rows]])
    for source in ("few.npz", "few"):
        few = fvae.load_dataset(tmp_path / source)
        assert (len(few.train), None if few.test is None else len(few.test)) == sizes
        assert sorted(img.tobytes() for img in few.split("all").images) == sorted(img.tobytes() for img in images[rows])
        assert sorted(few.split("all").labels.tolist()) == sorted(labels[rows].tolist())
    if sizes[1] is None:
        with pytest.raises(DataError, match=r"few has no test split, only train images"):
            few.split("test")


def test_an_npz_of_class_names_numbers_them_as_an_image_folder_numbers_its_subfolders(tmp_path, tiny):
    images, labels = tiny
    names = np.array(["dog", "cat", "fox"])  # as words, sorted: cat 0, dog 1, fox 2
    np.savez(tmp_path / "k.npz", x_train=images, y_train=names[labels], x_test=images[:2], y_test=names[labels[:2]])
    ds = fvae.load_dataset(tmp_path / "k.npz")
    assert ds.class_names == ("cat", "dog", "fox")
    np.testing.assert_array_equal(np.array(ds.class_names)[ds.train.labels], names[labels])
    np.testing.assert_array_equal(np.array(ds.class_names)[ds.test.labels], names[labels[:2]])
    # a class that only the test split has is named too
    np.savez(tmp_path / "fox.npz", x_train=images[:4], y_train=names[labels[:4] % 2], x_test=images, y_test=names[labels])
    assert fvae.load_dataset(tmp_path / "fox.npz").class_names == ("cat", "dog", "fox")
    # one labelled set of bytes, read as text
    np.savez(tmp_path / "one.npz", x=images, y=np.array([b"b", b"a", b"c"])[labels])
    one = fvae.load_dataset(tmp_path / "one.npz")
    assert one.class_names == ("a", "b", "c")
    every = one.split("all")
    by_image = {img.tobytes(): one.class_names[label] for img, label in zip(every.images, every.labels)}
    assert by_image == {img.tobytes(): "bac"[label] for img, label in zip(images, labels)}
    np.savez(tmp_path / "mixed.npz", x_train=images, y_train=names[labels], x_test=images, y_test=labels)
    with pytest.raises(DataError, match=r"mixed.npz: y_train holds class names but y_test holds int\d+ labels; "
                                        r"give both names or both numbers"):
        fvae.load_dataset(tmp_path / "mixed.npz")
    np.savez(tmp_path / "short.npz", x_test=images, y_test=names[labels[:-1]])
    with pytest.raises(DataError, match=r"short.npz\[y_test\]: 12 images but labels of shape \(11,\)"):
        fvae.load_dataset(tmp_path / "short.npz")


def test_float_labels_are_read_when_whole_and_refused_naming_the_first_that_is_not(tmp_path, tiny):
    """A float label of 0.5 or NaN was refused as "labels must be integers, found dtype float64",
    though float labels of whole numbers (as pandas gives them) are read."""
    images, labels = tiny
    np.savez(tmp_path / "whole.npz", images=images, labels=labels.astype(np.float64))
    assert sorted(fvae.load_dataset(tmp_path / "whole.npz").split("all").labels.tolist()) == sorted(labels.tolist())
    for bad, shown in ((0.5, "0.5"), (np.nan, "NaN"), (np.inf, "inf")):
        np.savez(tmp_path / "bad.npz", images=images, labels=np.where(labels == 1, bad, labels))
        with pytest.raises(DataError, match=rf"bad.npz\[labels\]: labels must be whole numbers, found {shown}$"):
            fvae.load_dataset(tmp_path / "bad.npz")
    # a whole float beyond int64 is not cast (it would wrap round to another number)
    np.savez(tmp_path / "huge.npz", images=images, labels=np.where(labels == 1, 1e30, labels))
    with pytest.raises(DataError, match=r"huge.npz\[labels\]: label 1e\+30 is no class number"):
        fvae.load_dataset(tmp_path / "huge.npz")


@pytest.mark.parametrize("layout", ["one-hot", "column"])
def test_one_hot_column_and_boolean_labels_are_read_as_class_numbers(tmp_path, tiny, layout):
    """keras.utils.to_categorical's one-hot rows were refused as "labels of shape (12, 3)",
    keras.datasets.cifar10's column of labels as "labels of shape (12, 1)", and a boolean label
    (is it a cat?) as "labels must be integers"."""
    images, labels = tiny
    np.savez(tmp_path / "numbers.npz", x_train=images, y_train=labels, x_test=images[:3], y_test=labels[:3])
    if layout == "one-hot":
        train, test = np.eye(3)[labels], np.eye(3, dtype=np.uint8)[labels[:3]]
    else:
        train, test = labels[:, None], labels[:3, None].astype(np.uint8)
    np.savez(tmp_path / "other.npz", x_train=images, y_train=train, x_test=images[:3], y_test=test)
    want, got = fvae.load_dataset(tmp_path / "numbers.npz"), fvae.load_dataset(tmp_path / "other.npz")
    assert got.class_names == want.class_names == ("0", "1", "2")
    np.testing.assert_array_equal(got.train.labels, want.train.labels)
    np.testing.assert_array_equal(got.test.labels, want.test.labels)
    np.savez(tmp_path / "bool.npz", images=images, labels=labels == 1)
    everything = fvae.load_dataset(tmp_path / "bool.npz").split("all")
    assert sorted(everything.labels.tolist()) == sorted((labels == 1).astype(int).tolist())
    # rows that are not one 1 among 0s (two classes at once, scores) are not taken for one-hot
    two_hot = np.eye(3)[labels] + np.eye(3)[(labels + 1) % 3]
    np.savez(tmp_path / "two.npz", images=images, labels=two_hot)
    with pytest.raises(DataError, match=r"two.npz\[labels\]: 12 images but labels of shape \(12, 3\)"):
        fvae.load_dataset(tmp_path / "two.npz")


@pytest.mark.parametrize("name, payload, message", [
    ("text.npz", b"x,y\n1,2\n", "not a .npz file (it does not start like one)"),
    ("text.npy", b"x,y\n1,2\n", "not a .npy file (it does not start like one)"),
    ("objects.npy", None, "holds Python objects, not numbers; fvae reads numeric arrays only"),
    ("objects.npz", None, "holds Python objects, not numbers; fvae reads numeric arrays only"),
])
def test_foreign_or_object_numpy_files_are_named_without_numpys_pickle_advice(tmp_path, name, payload, message):
    path = tmp_path / name
    objects = np.array([{"pixels": 1}, None], dtype=object)
    if payload is not None:
        path.write_bytes(payload)
    elif name.endswith(".npy"):
        np.save(path, objects, allow_pickle=True)
    else:
        np.savez(path, x_train=objects, y_train=np.zeros(2))
    with pytest.raises(DataError) as raised:
        fvae.load_dataset(path)
    assert str(raised.value) == f"{path}: {message}"  # numpy's advice to load a pickle is not passed on


def test_npy_is_unlabelled_test_only(tmp_path, tiny):
    np.save(tmp_path / "x.npy", tiny[0])
    ds = fvae.load_dataset(tmp_path / "x.npy")
    assert ds.train is None and ds.test.labels is None
    np.testing.assert_array_equal(ds.test.images, tiny[0])
    np.save(tmp_path / "binary.npy", tiny[0] > 127)  # binarized images: True is white
    np.testing.assert_array_equal(fvae.load_dataset(tmp_path / "binary.npy").test.images, (tiny[0] > 127) * 255)
    np.save(tmp_path / "complex.npy", tiny[0] + 0j)
    with pytest.raises(DataError, match="complex.npy: images must be real numbers, not dtype complex128"):
        fvae.load_dataset(tmp_path / "complex.npy")


def test_flat_rows_are_refused_with_the_reshape_that_gives_them_their_images_shape(tmp_path, tiny):
    """scikit-learn and OpenML keep images as flat rows; such an array was refused without a word
    on how to save it as images."""
    square = np.zeros((4, 64), np.uint8)
    np.save(tmp_path / "square.npy", square)
    np.savez(tmp_path / "square.npz", x_train=square, y_train=np.arange(4))
    np.save(tmp_path / "oblong.npy", tiny[0].reshape(12, -1))
    hints = {"square.npy": "(4, 64): one flat image per row? reshape them first: x.reshape(-1, 8, 8)",
             "square.npz[x_train]": "(4, 64): one flat image per row? reshape them first: x.reshape(-1, 8, 8)",
             "oblong.npy": "(12, 30): one flat image per row? reshape them first: x.reshape(-1, h, w)"}
    for name, hint in hints.items():
        path = tmp_path / name.removesuffix("[x_train]")
        for lazy in (False, True):
            with pytest.raises(DataError) as raised:
                fvae.load_dataset(path, lazy=lazy)
            assert str(raised.value) == f"{tmp_path / name}: expected images of shape (n, h, w), found {hint}"
    np.save(tmp_path / "ragged.npy", np.zeros(5, np.uint8))  # not rows of images: no reshape to offer
    with pytest.raises(DataError, match=r"ragged.npy: expected images of shape \(n, h, w\), found \(5,\)$"):
        fvae.load_dataset(tmp_path / "ragged.npy")


def test_image_folder_classes_split_and_grayscale(tmp_path, tiny):
    images, labels = tiny
    write_image_folder(tmp_path / "imgs", np.stack([images] * 3, axis=-1), [f"class{lab}" for lab in labels])  # RGB
    ds = fvae.load_dataset(tmp_path / "imgs")
    assert ds.class_names == ("class0", "class1", "class2")
    assert len(ds.train) + len(ds.test) == 12 and ds.image_shape == (5, 6)
    everything = ds.split("all")
    # grey RGB converts back to the same grey levels
    assert {img.tobytes() for img in everything.images} == {img.tobytes() for img in images}
    # streaming (lazy) loads decode later, but check every file's size when the source is opened,
    # so `encode` fails before it fits a model on the train split
    Image.fromarray(np.zeros((3, 5), np.uint8)).save(tmp_path / "imgs" / "class0" / "odd.png")
    for lazy in (False, True):
        with pytest.raises(DataError, match=r"odd.png: 3x5 pixels \(height x width\), the other images 5x6;"):
            fvae.load_dataset(tmp_path / "imgs", lazy=lazy)
    (tmp_path / "imgs" / "class0" / "odd.png").write_bytes(b"not a png")
    for lazy in (False, True):
        with pytest.raises(DataError, match="odd.png: cannot read image"):
            fvae.load_dataset(tmp_path / "imgs", lazy=lazy)


def test_image_size_resizes_image_files_of_any_sizes_and_refuses_arrays_of_another(tmp_path, tiny):
    """Image folders often hold images of many sizes, which were refused; image_size resizes
    each file as Keras' image_dataset_from_directory does: bilinear, aspect ratio not kept."""
    rng = np.random.default_rng(0)
    shapes = [(5, 6), (10, 12), (7, 3), (30, 20)] * 3
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    images[2] = np.full((7, 3), 77, np.uint8)  # a flat grey resizes to the same grey
    for i, (image, label) in enumerate(zip(images, tiny[1])):
        (tmp_path / "mixed" / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "mixed" / f"c{label}" / f"{i}.png")
    with pytest.raises(DataError, match="all images must have one size"):
        fvae.load_dataset(tmp_path / "mixed")
    read = fvae.load_dataset(tmp_path / "mixed", image_size=(5, 6)).split("all")
    lazy = fvae.load_dataset(tmp_path / "mixed", lazy=True, image_size=(5, 6)).split("all")
    assert read.images.shape == lazy.images.shape == (12, 5, 6) and read.images.dtype == np.uint8
    np.testing.assert_array_equal(lazy.images[:], read.images)
    rows = [int(name.rsplit("/", 1)[1][:-4]) for name in image_file_names(lazy.images, tmp_path / "mixed")]
    for row, image in zip(rows, read.images):
        if shapes[row] == (5, 6):
            np.testing.assert_array_equal(image, images[row])  # already of the size: unchanged
        else:  # Pillow's bilinear resize, (width, height) as Pillow orders them
            np.testing.assert_array_equal(image, np.asarray(Image.fromarray(images[row]).resize((6, 5), Image.BILINEAR)))
    assert (read.images[rows.index(2)] == 77).all()
    # a source of arrays has one size already: the same is no change, another is refused by name
    np.save(tmp_path / "x.npy", tiny[0])
    np.testing.assert_array_equal(fvae.load_dataset(tmp_path / "x.npy", image_size=(5, 6)).test.images, tiny[0])
    with pytest.raises(DataError, match=r"x.npy: its images are 5x6, and the image size 10x10 \(--image-size\) "
                                        "resizes only the files of an image folder, not arrays or idx files"):
        fvae.load_dataset(tmp_path / "x.npy", image_size=(10, 10))
    for bad in [(0, 5), (5,), "5x6", (5.0, 6), (True, 6), (8193, 5)]:
        with pytest.raises(fvae.InputError, match="image_size must be"):
            fvae.load_dataset(tmp_path / "mixed", image_size=bad)


def test_an_alpha_channel_is_dropped_as_keras_drops_it(tmp_path, tiny):
    images, labels = tiny
    alpha = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)  # transparency varies
    write_image_folder(tmp_path / "rgba", np.stack([images] * 3 + [alpha], axis=-1), [f"c{lab}" for lab in labels])
    write_image_folder(tmp_path / "la", np.stack([images, alpha], axis=-1), [f"c{lab}" for lab in labels])
    assert Image.open(tmp_path / "rgba" / "c0" / "0.png").mode == "RGBA"
    assert Image.open(tmp_path / "la" / "c0" / "0.png").mode == "LA"
    for folder in ("rgba", "la"):
        everything = fvae.load_dataset(tmp_path / folder).split("all").images
        assert {img.tobytes() for img in everything} == {img.tobytes() for img in images}  # not blended


def test_a_folder_of_images_without_classes_is_unlabelled_test_images_in_the_order_of_their_names(tmp_path, tiny):
    images, _ = tiny
    write_image_folder(tmp_path / "flat", images, [""] * len(images))  # flat/0.png .. flat/11.png
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    in_name_order = [int(name) for name in sorted(str(i) for i in range(len(images)))]  # 0, 1, 10, 11, 2, ...
    for lazy in (False, True):
        ds = fvae.load_dataset(tmp_path / "flat", lazy=lazy)
        assert ds.train is None and ds.test.labels is None and ds.class_names == ()
        np.testing.assert_array_equal(ds.test.images[:], images[in_name_order])
    names = image_file_names(fvae.load_dataset(tmp_path / "flat", lazy=True).test.images, tmp_path / "flat")
    assert names == [f"{i}.png" for i in in_name_order]
    assert image_file_names(fvae.load_dataset(tmp_path / "flat").test.images, tmp_path / "flat") is None  # read
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no idx files, no class subfolders and no images \(PNG, JPEG, BMP, GIF, TIFF or WebP\)$"):
        fvae.load_dataset(tmp_path / "empty")


def test_every_image_of_a_class_folder_keeps_its_file_name(tmp_path, tiny):
    images, labels = tiny
    write_image_folder(tmp_path / "imgs", images, [f"class{lab}" for lab in labels])
    everything = fvae.load_dataset(tmp_path / "imgs", lazy=True).split("all")  # fvae's train split, then its test
    names = image_file_names(everything.images, tmp_path / "imgs")
    assert sorted(names) == sorted(f"class{lab}/{i}.png" for i, lab in enumerate(labels))
    for name, image, label in zip(names, everything.images[:], everything.labels):
        folder, file = name.split("/")
        np.testing.assert_array_equal(image, images[int(file[:-4])])
        assert folder == f"class{label}"


@pytest.mark.parametrize("layout", ["classes", "train and test"])
def test_images_in_subfolders_of_a_class_folder_are_of_that_class(tmp_path, tiny, layout):
    """``cat/2019/a.png`` is a cat, as Keras's image_dataset_from_directory reads it. Before, only
    the images directly in ``cat/`` were read, and the rest were left out without a word."""
    images, labels = tiny
    nested = [f"c{lab}/{'old' if i % 2 else 'new/deeper'}" for i, lab in enumerate(labels)]
    root = tmp_path / "f"
    if layout == "train and test":
        nested = [f"{'train' if i < 9 else 'test'}/{folder}" for i, folder in enumerate(nested)]
    write_image_folder(root, images, nested)  # image i is FOLDER/i.png
    (root / "c0" if layout == "classes" else root / "train" / "c0").joinpath(".ipynb_checkpoints").mkdir()
    hidden = (root / "c0" if layout == "classes" else root / "train" / "c0") / ".ipynb_checkpoints" / "copy.png"
    Image.fromarray(images[0]).save(hidden)  # a hidden folder is left out at any depth
    lazy = fvae.load_dataset(root, lazy=True)
    assert lazy.class_names == ("c0", "c1", "c2")
    everything = lazy.split("all")
    names = image_file_names(everything.images, root)  # the path below the root, kept for the sidecar
    assert set(names) == {f"{folder}/{i}.png" for i, folder in enumerate(nested)}
    rows = [int(name.rsplit("/", 1)[1][:-4]) for name in names]
    np.testing.assert_array_equal(everything.images[:], images[rows])
    np.testing.assert_array_equal(everything.labels, labels[rows])
    read = fvae.load_dataset(root).split("all")
    np.testing.assert_array_equal(read.images, images[rows])
    np.testing.assert_array_equal(read.labels, labels[rows])


def test_16_bit_pngs_are_scaled_to_8_bits_and_deep_arrays_refused_with_how_to_scale_them(tmp_path):
    deep = np.array([[0, 257, 1000, 32768, 65535]], dtype=np.uint16)
    write_image_folder(tmp_path / "deep", [deep] * 6, ["a"] * 3 + ["b"] * 3)
    assert Image.open(tmp_path / "deep" / "a" / "0.png").mode.startswith("I")  # a real 16-bit file
    pixels = fvae.load_dataset(tmp_path / "deep").split("all").images
    # Pillow's convert("L") gave [0, 255, 255, 255, 255]: everything above 255 clipped to white
    assert pixels.shape == (6, 1, 5) and (pixels == [[0, 1, 4, 128, 255]]).all()
    # a uint16 array is not scaled (it may hold 8-, 12- or 16-bit levels): values above 255 are
    # refused with how to scale them, values within 0..255 read as grey levels
    np.save(tmp_path / "deep.npy", np.stack([deep] * 2))
    with pytest.raises(DataError, match=r"deep.npy: pixel values must lie in \[0, 255\] \(or \[0, 1\]\), found "
                                        r"\[0, 65535\]; scale uint16 images of a greater bit depth to 0..255 first"):
        fvae.load_dataset(tmp_path / "deep.npy")
    advised = np.rint(deep / (2**16 - 1) * 255)  # x * 255 first would overflow uint16
    np.save(tmp_path / "eight.npy", np.stack([advised.astype(np.uint16)] * 2))
    np.testing.assert_array_equal(fvae.load_dataset(tmp_path / "eight.npy").test.images, pixels[:2])


@pytest.mark.parametrize("suffix", [".bmp", ".gif", ".tif", ".tiff", ".webp"])
def test_lossless_formats_beside_png_read_the_same_grey_levels(tmp_path, tiny, suffix):
    """A class folder of .tif or .bmp files held "no PNG or JPEG images": the class was empty."""
    images, labels = tiny
    write_image_folder(tmp_path / "png", images, [f"c{lab}" for lab in labels])
    for png in (tmp_path / "png").rglob("*.png"):
        other = tmp_path / "other" / png.relative_to(tmp_path / "png").with_suffix(suffix)
        other.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).save(other, **({"lossless": True} if suffix == ".webp" else {}))
    assert not list((tmp_path / "other").rglob("*.png"))
    for lazy in (False, True):
        want, got = fvae.load_dataset(tmp_path / "png"), fvae.load_dataset(tmp_path / "other", lazy=lazy)
        assert got.class_names == want.class_names
        for split in ("train", "test"):
            np.testing.assert_array_equal(getattr(got, split).images[:], getattr(want, split).images)
            np.testing.assert_array_equal(getattr(got, split).labels, getattr(want, split).labels)


def test_a_floating_point_tiff_is_refused_not_clipped_to_black(tmp_path, tiny):
    """Pillow's convert("L") turned a TIFF of grey levels in [0, 1] into 0s and 1s."""
    images, labels = tiny
    write_image_folder(tmp_path / "f", images, [f"c{lab}" for lab in labels])
    Image.fromarray(images[0].astype(np.float32) / 255, mode="F").save(tmp_path / "f" / "c1" / "z.tif")
    for lazy in (False, True):
        with pytest.raises(DataError, match=r"z.tif: floating-point pixels, which fvae reads from a .npy of all the "
                                            r"images \(values in \[0, 1\] or \[0, 255\]\), not from image files$"):
            fvae.load_dataset(tmp_path / "f", lazy=lazy)


def test_a_class_subfolder_without_images_is_a_class_with_a_warning(tmp_path, tiny, caplog):
    images, labels = tiny
    write_image_folder(tmp_path / "f", images, [f"c{lab}" for lab in labels])
    (tmp_path / "f" / "d").mkdir()
    (tmp_path / "f" / "d" / "scan.heic").write_bytes(b"a format fvae does not read")
    with caplog.at_level(logging.WARNING, logger="fvae"):
        ds = fvae.load_dataset(tmp_path / "f")
    assert ds.class_names == ("c0", "c1", "c2", "d") and len(ds.split("all")) == 12
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'f' / 'd'}: no images (PNG, JPEG, BMP, GIF, TIFF or WebP), so class 'd' has none"]


def test_image_folder_with_train_and_test_subfolders(tmp_path, tiny):
    images, _ = tiny
    for split, n in (("train", 4), ("test", 2)):
        write_image_folder(tmp_path / "f" / split, np.concatenate([images[:n]] * 2), ["a"] * n + ["b"] * n)
    ds = fvae.load_dataset(tmp_path / "f")
    assert (len(ds.train), len(ds.test)) == (8, 4)
    assert ds.train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_train_and_test_folders_of_images_without_classes_are_unlabelled_splits(tmp_path, tiny):
    """Before: "f/test: class subfolders hold no images", of a folder that has no class subfolders."""
    images, _ = tiny
    write_image_folder(tmp_path / "f", images, ["train"] * 8 + ["test"] * 4)
    for lazy in (False, True):
        ds = fvae.load_dataset(tmp_path / "f", lazy=lazy)
        assert (ds.train.labels, ds.test.labels, ds.class_names) == (None, None, ())
        np.testing.assert_array_equal(ds.train.images[:], images[:8])
        np.testing.assert_array_equal(ds.test.images[:], images[[10, 11, 8, 9]])  # 10.png sorts before 8.png


def _hidden_things_in(folder, image):
    """What Jupyter, git and macOS leave in a folder, beside its images: hidden folders, one of
    them holding a real image, and a macOS "._" file with an image's name that is no image."""
    (folder / ".git").mkdir()
    (folder / ".ipynb_checkpoints").mkdir()
    Image.fromarray(image).save(folder / ".ipynb_checkpoints" / "copy.png")
    first_png = next(folder.rglob("[!.]*.png"))
    (first_png.parent / f"._{first_png.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")


@pytest.mark.parametrize("layout", ["classes", "train and test", "no classes"])
def test_hidden_files_and_folders_of_an_image_folder_are_left_out(tmp_path, tiny, layout):
    images, labels = tiny
    folder = tmp_path / "f"
    if layout == "train and test":
        for split, rows in (("train", slice(0, 9)), ("test", slice(9, 12))):
            write_image_folder(folder / split, images[rows], [f"c{lab}" for lab in labels[rows]])
    else:
        write_image_folder(folder, images, [f"c{lab}" for lab in labels] if layout == "classes" else [""] * 12)
    before = fvae.load_dataset(folder)
    _hidden_things_in(folder, images[0])
    if layout == "train and test":
        _hidden_things_in(folder / "train", images[0])
    for lazy in (False, True):
        after = fvae.load_dataset(folder, lazy=lazy)
        assert after.class_names == before.class_names
        for split in ("train", "test"):
            if getattr(before, split) is None:
                assert getattr(after, split) is None
                continue
            np.testing.assert_array_equal(getattr(after, split).images[:], getattr(before, split).images)
            np.testing.assert_array_equal(getattr(after, split).labels, getattr(before, split).labels)


def test_images_beside_class_subfolders_are_left_out_with_a_warning(tmp_path, tiny, caplog):
    images, labels = tiny
    write_image_folder(tmp_path / "f", images, [f"c{lab}" for lab in labels])
    Image.fromarray(images[0]).save(tmp_path / "f" / "stray.png")
    with caplog.at_level(logging.WARNING, logger="fvae"):
        ds = fvae.load_dataset(tmp_path / "f")
    assert len(ds.split("all")) == 12 and ds.class_names == ("c0", "c1", "c2")
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'f'}: stray.png is in no class subfolder, so it is left out"]
    caplog.clear()
    Image.fromarray(images[1]).save(tmp_path / "f" / "another.png")
    with caplog.at_level(logging.WARNING, logger="fvae"):
        fvae.load_dataset(tmp_path / "f")
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'f'}: 2 images (another.png, ...) are in no class subfolder, so they are left out"]


def test_named_sources():
    digits = fvae.load_dataset("digits")
    assert digits.image_shape == (8, 8) and (len(digits.train), len(digits.test)) == (1437, 360)
    assert digits.train.images.max() == 255
    small = fvae.load_dataset("mnist-5k")
    assert (len(small.train), len(small.test)) == (4000, 1000)
    assert np.bincount(small.test.labels).tolist() == [100] * 10  # stratified
    again = fvae.load_dataset("mnist-5k")
    np.testing.assert_array_equal(small.test.images, again.test.images)  # deterministic


def test_mnist_offline_falls_back_to_mnist_5k_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="fvae"):
        ds = fvae.load_dataset("mnist")
    assert ds.name == "mnist-5k"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "using mnist-5k" in messages[0] and "\n" not in messages[0]


def test_mnist_prefers_data_dir_then_keras_cache(tmp_path, tiny, monkeypatch):
    images, labels = tiny
    write_idx_split(tmp_path / "mine" / "mnist", "train", images, labels)
    assert len(fvae.load_dataset("mnist", data_dir=tmp_path / "mine").train) == 12
    with pytest.raises(DataError, match=r"mnie: no such folder \(data_dir, --data-dir\)$"):
        fvae.load_dataset("mnist", data_dir=tmp_path / "mnie")  # fell back to the 5k stand-in offline
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(DataError, match=r"notes.txt: a file, not a folder \(data_dir, --data-dir\)$"):
        fvae.load_dataset("mnist", data_dir=tmp_path / "notes.txt")  # before: "no such folder"
    for source in ("digits", "mnist-5k", str(tmp_path / "notes.txt")):  # before: ignored, as they search no folder
        with pytest.raises(DataError, match=r"mnie: no such folder \(data_dir, --data-dir\)$"):
            fvae.load_dataset(source, data_dir=tmp_path / "mnie")
    monkeypatch.setenv("FVAE_DATA_DIR", str(tmp_path / "mnie"))  # the same, mistyped in the environment
    with pytest.raises(DataError, match=r"^FVAE_DATA_DIR=.*mnie: no such folder \(point it at one, or unset it\)$"):
        fvae.load_dataset("mnist")
    monkeypatch.setenv("FVAE_DATA_DIR", str(tmp_path / "mine"))
    assert len(fvae.load_dataset("mnist").train) == 12
    monkeypatch.delenv("FVAE_DATA_DIR")
    cache = tmp_path / "keras-home" / "datasets"
    cache.mkdir(parents=True)
    np.savez(cache / "mnist.npz", x_train=images[:5], y_train=labels[:5], x_test=images[:2], y_test=labels[:2])
    ds = fvae.load_dataset("mnist")
    assert ds.name == "mnist" and len(ds.train) == 5


def test_mnist_download_path_is_used_when_reachable(tmp_path, tiny, monkeypatch):
    """The real download code, with the network replaced by a local payload of the right hash."""
    import hashlib
    import io

    import fvae.data as data

    images, labels = tiny
    buffer = io.BytesIO()
    np.savez(buffer, x_train=images, y_train=labels, x_test=images[:2], y_test=labels[:2])
    payload = buffer.getvalue()

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.delenv("FVAE_OFFLINE")
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: Response(payload))
    monkeypatch.setattr(data, "MNIST_SHA256", hashlib.sha256(payload).hexdigest())
    ds = fvae.load_dataset("mnist")
    assert ds.name == "mnist" and len(ds.train) == 12
    assert (tmp_path / "keras-home" / "datasets" / "mnist.npz").is_file()
    monkeypatch.setattr(data, "MNIST_SHA256", "0" * 64)
    (tmp_path / "keras-home" / "datasets" / "mnist.npz").unlink()
    with pytest.raises(OSError, match="checksum mismatch"):
        data.download_mnist()


def test_fashion_mnist_from_data_dir(tmp_path, tiny, monkeypatch):
    images, labels = tiny
    monkeypatch.setattr("fvae.data.DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        fvae.load_dataset("fashion-mnist")
    write_idx_split(tmp_path / "data" / "fashion-mnist", "t10k", images, labels)
    ds = fvae.load_dataset("fashion-mnist")  # ./data is searched (tests run in tmp_path)
    assert ds.name == "fashion-mnist" and len(ds.test) == 12
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot" and len(ds.class_names) == 10


def test_describe_sources_reports_availability(tmp_path, tiny):
    images, labels = tiny
    write_idx_split(tmp_path / "dd" / "mnist", "train", images, labels)
    rows = {r["name"]: r for r in describe_sources(tmp_path / "dd")}
    assert rows["mnist"]["available"] and rows["mnist"]["train"] == 12 and rows["mnist"]["image_shape"] == (5, 6)
    assert rows["digits"]["available"] and rows["digits"]["test"] == 360


def test_missing_or_unknown_source():
    with pytest.raises(DataError, match=r"not a named dataset \(mnist, mnist-5k, fashion-mnist, digits\)$"):
        fvae.load_dataset("imagenet-21k")
    for typed, meant in (("Digits", "digits"), ("fashion_mnist", "fashion-mnist"), ("fasion-mnist", "fashion-mnist"),
                         ("MNIST-5K", "mnist-5k"), ("mnist5k", "mnist-5k")):
        with pytest.raises(DataError, match=rf"^{typed}: no such file or folder, .*; did you mean {meant}\?$"):
            fvae.load_dataset(typed)
    with pytest.raises(DataError, match=r"\)$"):  # a path unlike any name gets no guess
        fvae.load_dataset("my_images/train")


@pytest.mark.parametrize("shape", [(5, 0, 12), (5, 12, 0), (5, 0, 0)])
def test_images_without_a_pixel_are_refused_by_name_not_by_a_numpy_reduction(tmp_path, tiny, shape):
    """Before: numpy's "zero-size array to reduction operation minimum which has no identity"."""
    h, w = shape[1:]
    np.save(tmp_path / "flat.npy", np.zeros(shape, np.float32))
    with pytest.raises(DataError, match=rf"^.*flat.npy: images are {h}x{w}, without a single pixel$"):
        fvae.load_dataset(str(tmp_path / "flat.npy"))
    write_idx_split(tmp_path / "idx", "t10k", np.zeros(shape, np.uint8), tiny[1][:5])
    with pytest.raises(DataError, match=rf"images are {h}x{w}, without a single pixel$"):
        fvae.load_dataset(str(tmp_path / "idx"))
    with pytest.raises(InputError, match=rf"^fit: images are {h}x{w}, without a single pixel$"):
        check_image_batch(np.zeros(shape), where="fit")


def test_estimator_input_validation():
    with pytest.raises(InputError, match="need image_shape"):
        check_image_batch(np.zeros((2, 64)))
    assert check_image_batch(np.zeros((2, 64)), (8, 8)).shape == (2, 8, 8)
    for shape in ((8,), 64, (8, 0), (8.0, 8)):
        with pytest.raises(InputError, match=r"^fit: image_shape must be \(h, w\), two whole numbers >= 1, got "):
            check_image_batch(np.zeros((2, 64)), shape, where="fit")
    with pytest.raises(InputError, match="no images"):
        check_image_batch(np.zeros((0, 8, 8)))
    with pytest.raises(InputError, match="real numbers, got dtype <U1"):
        check_image_batch(np.array([["a"]]))
    with pytest.raises(InputError, match="^fit: images must be arrays of real numbers, got dtype complex128$"):
        check_image_batch(np.zeros((2, 8, 8), complex), where="fit")  # not cast, dropping the imaginary part
    with pytest.raises(InputError, match=r"^fit: sparse matrices are not supported: pass dense images \(X.toarray\(\)\)$"):
        check_image_batch(scipy.sparse.csr_matrix(np.zeros((2, 64))), (8, 8), where="fit")
    np.testing.assert_allclose(to_unit_float(np.array([[[0, 255]]], np.uint8)), [[[0.0, 1.0]]])
    np.testing.assert_array_equal(to_unit_float(np.array([[[False, True]]])), [[[0.0, 1.0]]])  # not 1/255
    with pytest.raises(InputError, match=r"\[0, 255\]"):
        to_unit_float(np.array([[[0, 256]]]))


def test_estimator_input_in_keras_layout_is_read_and_one_image_or_colour_is_refused_by_name():
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    keras_layout = check_image_batch(images[..., None], (8, 8))  # (n, h, w, 1), as Keras keeps grey images
    np.testing.assert_array_equal(keras_layout, images)
    assert np.shares_memory(keras_layout, images)  # not copied
    # before: "rows of 8 pixels do not match image_shape 8x8"
    with pytest.raises(InputError, match=r"^transform: got one 8x8 image, not a batch of images: pass X\[None\] "
                                         r"for one image$"):
        check_image_batch(images[0], (8, 8), where="transform")
    assert check_image_batch(images[0, :1], (1, 8)).shape == (1, 1, 8)  # one flat row of a 1x8 image is a batch
    with pytest.raises(InputError, match=r"^fit: got colour images of shape \(3, 8, 8, 3\): fvae encodes grey "
                                         r"images; convert them first \(fvae.load_dataset converts the files it reads\)$"):
        check_image_batch(np.stack([images] * 3, axis=-1), where="fit")
    with pytest.raises(InputError, match=r"^fit: expected images of shape \(n, h, w\), \(n, h, w, 1\) or "
                                         r"\(n, h\*w\), got \(3, 8, 8, 2\)$"):
        check_image_batch(np.zeros((3, 8, 8, 2)), where="fit")


def test_labels_are_matched_by_name_where_both_sources_name_classes_by_numbers(caplog):
    """A folder of subfolders "1" and "2" numbers them 0 and 1; to an idx file, an array or a folder
    of "0".."2" they are classes 1 and 2. Words beside numbers have nothing to match."""
    from fvae.data import Split, labels_named_as

    images = np.zeros((4, 2, 2), np.uint8)
    folder = Split(images, np.array([0, 1, 1, 0]))
    numbered = ("0", "1", "2")  # an idx file's names: its label numbers
    assert labels_named_as(folder, ("1", "2"), numbered, "test", "train").labels.tolist() == [1, 2, 2, 1]
    # an idx file's names run up to its largest label: "0" has no image, so nothing is unknown
    idx = Split(images, np.array([2, 1, 1, 2]))
    assert labels_named_as(idx, numbered, ("1", "2"), "test", "train").labels.tolist() == [1, 0, 0, 1]
    assert labels_named_as(folder, ("1", "2"), ("1", "2"), "test", "train") is folder
    assert not caplog.records
    # words beside numbers are paired by position, and a warning says so: silently, a test set in
    # another order than the train set's scored as if every label were wrong
    assert labels_named_as(folder, ("cat", "dog"), numbered, "test", "train") is folder
    assert labels_named_as(Split(images, np.array([0, 1, 2, 0])), numbered, ("dog", "cat", "fox", "owl", "rat"),
                           "test", "train").labels.tolist() == [0, 1, 2, 0]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "train only numbers its classes, so its label i is taken to be class i of test (cat, dog): "
                    "check that they are in that order"),
        ("WARNING", "test only numbers its classes, so its label i is taken to be class i of train (dog, cat, fox, "
                    "owl, ...): check that they are in that order")]
    caplog.clear()
    assert labels_named_as(folder, ("01", "02"), numbered, "test", "train") is folder  # "01" is no label number
    assert len(caplog.records) == 1

    with pytest.raises(DataError, match=r"^test: class 0 is not a class of train \(1, 2\)$"):
        labels_named_as(Split(images, np.array([0, 1, 2, 1])), numbered, ("1", "2"), "test", "train")
    with pytest.raises(DataError, match=r"^test: classes 0, 3 are not classes of train \(1, 2\)$"):
        labels_named_as(Split(images, np.array([0, 3, 2, 1])), ("0", "1", "2", "3"), ("1", "2"), "test", "train")
