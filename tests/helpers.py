"""Shared test utilities: central finite differences, seeded random draws, IDX files written by hand."""
from __future__ import annotations

import gzip
import struct

import numpy as np


def numerical_grad(f, x: np.ndarray, dy: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d(sum(f(x) * dy))/dx by central differences in float64; f must be float64 pure."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = np.sum(np.asarray(f(x), dtype=np.float64) * dy)
        flat[i] = old - eps
        down = np.sum(np.asarray(f(x), dtype=np.float64) * dy)
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_idx(path, array, type_byte=0x08, magic=None):
    """An IDX file written by hand (independent of engine.data): header then big-endian data."""
    array = np.asarray(array)
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_byte]
    header = magic if magic is not None else struct.pack(">BBBB", 0, 0, type_byte, array.ndim)
    payload = header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(dtype).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def write_mnist_dir(root, gz: bool, n_train=12, n_test=5, hw=(5, 4), seed=0):
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *hw)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *hw)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    arrays["train-labels-idx1-ubyte"][:2] = [0, 9]  # both ends of the label range present
    arrays["t10k-labels-idx1-ubyte"] = rng.choice(arrays["train-labels-idx1-ubyte"], n_test)  # trained classes
    for name, a in arrays.items():
        write_idx(root / (name + suffix), a)
    return arrays
