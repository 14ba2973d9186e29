"""The one dispatch point: which implementation of an op runs.

Every op family lives in four files with the same name:

    engine/reference/<family>.py   NumPy float64: the spec (short, obviously correct)
    engine/cpu/<family>.py         Numba kernels for float32 on the CPU
    kernels/<family>.cu            CUDA C++ kernels (one source, two exposures)
    engine/cuda/<family>.py        glue: allocate CuPy outputs, launch the kernels

A *backend* is a module-like object exposing every name in ``OPS`` with the same
signature. Nothing outside this file chooses between backends: the functional API,
the layers and the executor ask ``backend_for(array)`` (or ``get_backend(name)``)
and call the op by name.

Backend-level ops trust their inputs: shapes, dtypes and hyperparameters have
already been checked by ``engine.functional`` (or by the executor at trace time).
Conventions shared by all ops:

* layout NCHW, C-contiguous; weights of conv2d are (K, C, R, S), of linear (O, I);
* ``stride``, ``padding`` and ``kernel`` arrive as (h, w) pairs of ints;
* every op accepts ``out=`` (an array, or a tuple for several outputs, in the
  order of the return value) and writes into it instead of allocating; it returns
  what it wrote. The executor uses this to reuse buffers every step.
"""
from __future__ import annotations

import importlib
import os
import types

# name -> signature (documentation and the contract checked by tests/test_backend_contract.py)
OPS = {
    # conv.py -- convolution by im2col + GEMM
    "im2col": "(x, kernel, stride, padding, out=None) -> cols (N, C*R*S, P*Q); rows c-major, then r, then s",
    "col2im": "(cols, x_shape, kernel, stride, padding, out=None) -> x (N, C, H, W), overlapping cells summed",
    "gemm": "(a, b, trans_a=False, trans_b=False, out=None) -> op(a) @ op(b), 2-D",
    "conv2d_forward": "(x, w, b, stride, padding, out=None) -> y (N, K, P, Q); b may be None",
    "conv2d_backward_data": "(dy, w, x_shape, stride, padding, out=None) -> dx",
    "conv2d_backward_weight": "(dy, x, w_shape, stride, padding, out=None) -> dw",
    # linear.py -- dense layers and bias gradients
    "linear_forward": "(x, w, b, out=None) -> y = x @ w.T + b; x (N, I), w (O, I), b (O,) or None",
    "linear_backward_data": "(dy, w, out=None) -> dx = dy @ w",
    "linear_backward_weight": "(dy, x, out=None) -> dw = dy.T @ x",
    "bias_backward": "(dy, out=None) -> db: dy summed over every axis but axis 1",
    "add": "(a, b, out=None) -> a + b, same shapes (residual joins, gradient accumulation)",
    # pool.py
    "max_pool2d_forward": "(x, kernel, stride, padding, out=None) -> (y, argmax int32 flat h*W+w in the (n, c) plane)",
    "max_pool2d_backward": "(dy, argmax, x_shape, out=None) -> dx",
    "avg_pool2d_forward": "(x, kernel, stride, padding, count_include_pad=True, out=None) -> y",
    "avg_pool2d_backward": "(dy, x_shape, kernel, stride, padding, count_include_pad=True, out=None) -> dx",
    # batchnorm.py -- x is (N, C) or (N, C, H, W); statistics per channel
    "batch_norm_forward": "(x, gamma, beta, running_mean, running_var, training, momentum, eps, out=None) -> (y, save_mean, save_invstd)",
    "batch_norm_backward": "(dy, x, gamma, save_mean, save_invstd, training, out=None) -> (dx, dgamma, dbeta)",
    "batch_norm_relu_forward": "(x, gamma, beta, running_mean, running_var, training, momentum, eps, out=None) -> (y, save_mean, save_invstd)",
    "batch_norm_relu_backward": "(dy, y, x, gamma, save_mean, save_invstd, training, out=None) -> (dx, dgamma, dbeta)",
    # activation.py
    "relu_forward": "(x, out=None) -> y",
    "relu_backward": "(dy, y, out=None) -> dx = dy * (y > 0)",
    "bias_relu_forward": "(x, b, out=None) -> relu(x + b), b broadcast along axis 1",
    "bias_relu_backward": "(dy, y, out=None) -> (dx, db)",
    "leaky_relu_forward": "(x, negative_slope, out=None) -> y",
    "leaky_relu_backward": "(dy, x, negative_slope, out=None) -> dx",
    "sigmoid_forward": "(x, out=None) -> y",
    "sigmoid_backward": "(dy, y, out=None) -> dx = dy * y * (1 - y)",
    "tanh_forward": "(x, out=None) -> y",
    "tanh_backward": "(dy, y, out=None) -> dx = dy * (1 - y**2)",
    # dropout.py -- counter-based mask, identical on every backend for a seed
    "dropout_forward": "(x, p, seed, out=None) -> (y, mask uint8)",
    "dropout_backward": "(dy, mask, p, out=None) -> dx",
    # loss.py
    "softmax_cross_entropy_forward": "(logits, labels, out=None) -> (loss 0-d array, dlogits = (softmax - onehot) / N)",
    "mse_loss_forward": "(pred, target, out=None) -> loss 0-d array, mean over all elements",
    "mse_loss_backward": "(pred, target, dloss, out=None) -> dpred = 2 (pred - target) / numel * dloss",
    # optim.py -- in-place updates of flat float32 arrays (all parameters in one launch)
    "sgd_update": "(param, grad, velocity, lr, momentum, weight_decay, nesterov) -> None",
    "adam_update": "(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled) -> None",
    "rmsprop_update": "(param, grad, square_avg, lr, alpha, eps, weight_decay) -> None",
    "adagrad_update": "(param, grad, sum_sq, lr, eps, weight_decay) -> None",
}

FAMILIES = ("conv", "linear", "pool", "batchnorm", "activation", "dropout", "loss", "optim")

# backend name -> package whose submodules are the op families. The CUDA backend has two
# exposures of the same kernels/*.cu: the pybind11 extension ("cuda-ext") and CuPy
# RawModule compiled by NVRTC at run time ("cuda-rtc"); "cuda" picks CUDA_EXPOSURE.
_PACKAGES = {"reference": "engine.reference", "numba": "engine.cpu",
             "cuda": "engine.cuda", "cuda-ext": "engine.cuda", "cuda-rtc": "engine.cuda"}
_cache: dict[str, types.SimpleNamespace] = {}

CPU_BACKEND = os.environ.get("ENGINE_CPU_BACKEND", "numba")
# "auto": the compiled extension when it imports, else NVRTC through CuPy
CUDA_EXPOSURE = os.environ.get("ENGINE_CUDA_EXPOSURE", "auto")


def _load(name: str) -> types.SimpleNamespace:
    if name.startswith("cuda"):
        from engine.cuda import make_backend, extension_available
        exposure = name[5:] or CUDA_EXPOSURE
        if exposure == "auto":
            exposure = "ext" if extension_available() else "rtc"
        return make_backend(exposure)  # namespace of OPS launching through that exposure
    package = _PACKAGES[name]
    ops = {}
    for family in FAMILIES:
        module = importlib.import_module(f"{package}.{family}")
        ops.update({op: getattr(module, op) for op in OPS if hasattr(module, op)})
    missing = sorted(set(OPS) - set(ops))
    if missing:
        raise NotImplementedError(f"backend {name!r} lacks ops {missing}")
    return types.SimpleNamespace(name=name, **ops)


def get_backend(name: str) -> types.SimpleNamespace:
    """Backend by name: 'reference', 'numba', 'cuda', 'cuda-ext' or 'cuda-rtc'."""
    if name not in _PACKAGES:
        raise ValueError(f"get_backend: expected one of {sorted(_PACKAGES)}, got {name!r}")
    if name not in _cache:
        _cache[name] = _load(name)
    return _cache[name]


def is_cuda_array(a) -> bool:
    return type(a).__module__.startswith("cupy")


def backend_for(*arrays) -> types.SimpleNamespace:
    """The backend for arrays: CuPy arrays run on 'cuda'; NumPy float32 on CPU_BACKEND
    (Numba); NumPy float64 on the float64 'reference' (the fast kernels are float32 only)."""
    arrays = [a for a in arrays if a is not None and hasattr(a, "shape")]
    kinds = {is_cuda_array(a) for a in arrays}
    if len(kinds) > 1:
        raise ValueError("backend_for: expected all arrays on one device, got a mix of NumPy and CuPy arrays")
    if kinds == {True}:
        return get_backend("cuda")
    if any(a.dtype == "float64" for a in arrays):
        return get_backend("reference")
    return get_backend(CPU_BACKEND)


def array_module(a):
    """numpy or cupy, whichever holds `a`."""
    if is_cuda_array(a):
        import cupy
        return cupy
    import numpy
    return numpy
