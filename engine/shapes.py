"""Shape rules written once: the output shape of every op whose output is not shaped like
its input. Plain functions of shape tuples, no checks: engine.checks validates the
arguments (and names what is wrong) before any of these runs, and the references, the
Numba and CUDA implementations, the cards and the layers all use these same functions.
The C++/CUDA side has its twin of the window formula in kernels/common.cuh.
"""
from __future__ import annotations


def window_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Floor-mode cells of a window sliding over `size` cells with `padding` on both sides
    (conv and pooling): (size + 2*padding - kernel) // stride + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def window_output_hw(h: int, w: int, kernel, stride, padding) -> tuple[int, int]:
    """(P, Q) of a 2-D window: window_output_size along H and along W."""
    return (window_output_size(h, kernel[0], stride[0], padding[0]),
            window_output_size(w, kernel[1], stride[1], padding[1]))


def adaptive_window(i: int, size: int, out: int) -> tuple[int, int]:
    """[start, end) of output cell i of an adaptive pool turning `size` cells into `out`:
    floor(i*size/out) to ceil((i+1)*size/out), as PyTorch's. Windows overlap when out does
    not divide size, and repeat cells when out > size."""
    return (i * size) // out, -(-((i + 1) * size) // out)


def conv2d_shape(x_shape, w_shape, stride, padding) -> tuple:
    """x (N, C, H, W) convolved with w (K, C, R, S) -> (N, K, P, Q)."""
    n, _, h, w = x_shape
    k, _, r, s = w_shape
    return (n, k) + window_output_hw(h, w, (r, s), stride, padding)


def pool2d_shape(x_shape, kernel, stride, padding) -> tuple:
    """x (N, C, H, W) pooled -> (N, C, P, Q)."""
    n, c, h, w = x_shape
    return (n, c) + window_output_hw(h, w, kernel, stride, padding)


def im2col_shape(x_shape, kernel, stride, padding) -> tuple:
    """x (N, C, H, W) -> cols (N, C*R*S, P*Q)."""
    n, c, h, w = x_shape
    p, q = window_output_hw(h, w, kernel, stride, padding)
    return (n, c * kernel[0] * kernel[1], p * q)


def linear_shape(x_shape, w_shape) -> tuple:
    """x (N, I) through w (O, I) -> (N, O)."""
    return (x_shape[0], w_shape[0])
