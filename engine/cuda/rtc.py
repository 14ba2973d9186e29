"""The NVRTC exposure: kernels/*.cu compiled at run time by cupy.RawModule.

The launchers here mirror csrc/*.cu one for one -- same names, same arguments as the
pybind11 functions of engine._cuda_ext (minus `stream`: CuPy launches on its current
stream), same grids and block sizes (the rules live in engine/cuda/common.py and
csrc/launch_common.h). The glue in engine/cuda/<family>.py calls either set unchanged.

Where the .cu files are found (kernels_dir): $ENGINE_KERNELS_DIR, else engine/cuda/kernels/
(package data in a wheel or regular install, copied there by setup.py's build_py), else
the checkout's kernels/ (editable install, source tree).
"""
from __future__ import annotations

import functools
import glob
import hashlib
import os

import numpy as np

from engine.cuda.common import BLOCK, cdiv, cupy, gemm_tile, grid_1d, mse_partial_blocks

_HERE = os.path.dirname(os.path.abspath(__file__))

# Options for NVRTC, here and in tests/test_cuda_build.py (which compiles every file with
# them). CuPy adds the target architecture itself. No fast math: the same numerics as the
# nvcc build, so both exposures agree.
RTC_BASE_OPTIONS = ("-std=c++17",)


def kernels_dir() -> str:
    """The directory holding kernels/*.cu (see the module docstring for the search order)."""
    candidates = [os.environ.get("ENGINE_KERNELS_DIR"), os.path.join(_HERE, "kernels"),
                  os.path.join(os.path.dirname(os.path.dirname(_HERE)), "kernels")]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "common.cuh")):
            return path
    raise FileNotFoundError("engine.cuda: kernel sources not found; looked in "
                            + ", ".join(p for p in candidates if p) + " (set ENGINE_KERNELS_DIR)")


@functools.lru_cache(maxsize=None)
def rtc_options() -> tuple[str, ...]:
    """RTC_BASE_OPTIONS plus the include path of common.cuh. CuPy's compile cache is keyed
    on the source and the options but not on included headers, so a digest of the headers
    is passed as a macro: editing common.cuh recompiles every kernel file."""
    directory = kernels_dir()
    digest = hashlib.sha1()
    for path in sorted(glob.glob(os.path.join(directory, "*.cuh"))):
        with open(path, "rb") as f:
            digest.update(f.read())
    return RTC_BASE_OPTIONS + (f"-I{directory}", f"-DENGINE_HEADERS_SHA1={digest.hexdigest()[:16]}")


@functools.lru_cache(maxsize=None)
def _module(filename: str):
    with open(os.path.join(kernels_dir(), filename)) as f:
        source = f.read()
    return cupy().RawModule(code=source, options=rtc_options())


@functools.lru_cache(maxsize=None)
def _kernel(filename: str, name: str):
    return _module(filename).get_function(name)


def _launch(filename: str, name: str, grid, block, *args) -> None:
    _kernel(filename, name)(grid if isinstance(grid, tuple) else (grid,), (block,), args)


# exact C types of scalar kernel arguments (CuPy would pass a Python int as long long)
i32, i64, f32, f64 = np.int32, np.int64, np.float32, np.float64
NULL = np.uint64(0)  # a null pointer argument


def _ptr(a):
    return NULL if a is None else a


class RtcLaunchers:
    """Launchers over cupy.RawModule; names and arguments as engine._cuda_ext's."""

    exposure = "rtc"

    # ---- im2col.cu
    def im2col(self, x, cols, kh, kw, sh, sw, ph, pw):
        n, c, h, w = x.shape
        p, q = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        total = n * c * kh * kw * p * q
        if total:
            _launch("im2col.cu", "im2col_forward_kernel", grid_1d(total), BLOCK, x, cols, i32(n), i32(c), i32(h),
                    i32(w), i32(kh), i32(kw), i32(p), i32(q), i32(sh), i32(sw), i32(ph), i32(pw))

    def col2im(self, cols, x, kh, kw, sh, sw, ph, pw):
        n, c, h, w = x.shape
        p, q = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if x.size:
            _launch("im2col.cu", "col2im_forward_kernel", grid_1d(x.size), BLOCK, cols, x, i32(n), i32(c), i32(h),
                    i32(w), i32(kh), i32(kw), i32(p), i32(q), i32(sh), i32(sw), i32(ph), i32(pw))

    # ---- gemm.cu
    def gemm(self, a, b, c, trans_a, trans_b, bias, bias_axis, relu):
        m, k = (a.shape[-1], a.shape[-2]) if trans_a else (a.shape[-2], a.shape[-1])
        n = b.shape[-2] if trans_b else b.shape[-1]
        batch = max(a.shape[0] if a.ndim == 3 else 1, b.shape[0] if b.ndim == 3 else 1)
        outputs = c.shape[0] if c.ndim == 3 else 1
        if m == 0 or n == 0:
            return
        per_output = cdiv(batch, outputs)
        stride_a = a.shape[-2] * a.shape[-1] if a.ndim == 3 else 0
        stride_b = b.shape[-2] * b.shape[-1] if b.ndim == 3 else 0

        def aligned(x, ld, stride):
            return x.data.ptr % 16 == 0 and ld % 4 == 0 and stride % 4 == 0

        vec = ((1 if aligned(a, a.shape[-1], stride_a) else 0) | (2 if aligned(b, b.shape[-1], stride_b) else 0)
               | (4 if aligned(c, n, m * n) else 0))
        tile = gemm_tile(m, n, outputs)
        name = f"gemm_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}_{tile}x{tile}_kernel"
        _launch("gemm.cu", name, (cdiv(n, tile), cdiv(m, tile), outputs), 256, i32(m), i32(n), i32(k), a,
                i32(a.shape[-1]), i64(stride_a), b, i32(b.shape[-1]), i64(stride_b), c, i32(n), i64(m * n),
                i32(batch), i32(per_output), _ptr(bias), i32(bias_axis), i32(bool(relu)), i32(vec))

    def gemm_reduce_splits(self, partial, out):
        if out.size:
            _launch("gemm.cu", "gemm_reduce_splits_kernel", grid_1d(out.size), BLOCK, partial, out,
                    i32(partial.shape[0]), i64(out.size))

    # ---- pool.cu
    def max_pool2d_forward(self, x, y, argmax, kh, kw, sh, sw, ph, pw):
        n, c, h, w = x.shape
        p, q = y.shape[2:]
        if y.size:
            _launch("pool.cu", "max_pool2d_forward_kernel", grid_1d(y.size), BLOCK, x, y, argmax, i32(n * c), i32(h),
                    i32(w), i32(p), i32(q), i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw))

    def max_pool2d_backward(self, dy, argmax, dx):
        dx.fill(0)  # the kernel adds into dx (cudaMemsetAsync in csrc/pool.cu)
        if dy.size:
            n, c, h, w = dx.shape
            _launch("pool.cu", "max_pool2d_backward_kernel", grid_1d(n * c), BLOCK, dy, argmax, dx, i32(n * c),
                    i32(h * w), i32(dy.shape[2] * dy.shape[3]))

    def avg_pool2d_forward(self, x, y, kh, kw, sh, sw, ph, pw, count_include_pad):
        n, c, h, w = x.shape
        p, q = y.shape[2:]
        if y.size:
            _launch("pool.cu", "avg_pool2d_forward_kernel", grid_1d(y.size), BLOCK, x, y, i32(n * c), i32(h), i32(w),
                    i32(p), i32(q), i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw), i32(bool(count_include_pad)))

    def avg_pool2d_backward(self, dy, dx, kh, kw, sh, sw, ph, pw, count_include_pad):
        n, c, h, w = dx.shape
        p, q = dy.shape[2:]
        if dx.size:
            _launch("pool.cu", "avg_pool2d_backward_kernel", grid_1d(dx.size), BLOCK, dy, dx, i32(n * c), i32(h),
                    i32(w), i32(p), i32(q), i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw),
                    i32(bool(count_include_pad)))

    # ---- batchnorm.cu
    @staticmethod
    def _channels(x):
        n, c = x.shape[:2]
        return n, c, x.size // max(1, n * c)

    def batch_norm_stats(self, x, save_mean, save_invstd, running_mean, running_var, momentum, eps):
        n, c, hw = self._channels(x)
        _launch("batchnorm.cu", "batch_norm_stats_kernel", c, BLOCK, x, save_mean, save_invstd, _ptr(running_mean),
                _ptr(running_var), i32(n), i32(c), i64(hw), f32(momentum), f32(eps))

    def batch_norm_eval_stats(self, running_mean, running_var, save_mean, save_invstd, eps):
        c = running_mean.size
        _launch("batchnorm.cu", "batch_norm_eval_stats_kernel", grid_1d(c), BLOCK, running_mean, running_var,
                save_mean, save_invstd, i32(c), f32(eps))

    def batch_norm_forward(self, x, mean, invstd, gamma, beta, y, relu):
        n, c, hw = self._channels(x)
        _launch("batchnorm.cu", "batch_norm_forward_kernel", grid_1d(x.size), BLOCK, x, mean, invstd, gamma, beta, y,
                i32(c), i64(hw), i64(x.size), i32(bool(relu)))

    def batch_norm_backward_reduce(self, dy, y, x, mean, invstd, dgamma, dbeta):
        n, c, hw = self._channels(x)
        _launch("batchnorm.cu", "batch_norm_backward_reduce_kernel", c, BLOCK, dy, _ptr(y), x, mean, invstd, dgamma,
                dbeta, i32(n), i32(c), i64(hw))

    def batch_norm_backward(self, dy, y, x, mean, invstd, gamma, dgamma, dbeta, dx, training):
        n, c, hw = self._channels(x)
        _launch("batchnorm.cu", "batch_norm_backward_kernel", grid_1d(x.size), BLOCK, dy, _ptr(y), x, mean, invstd,
                gamma, dgamma, dbeta, dx, i32(c), i64(hw), i64(x.size), i64(n * hw), i32(bool(training)))

    # ---- activation.cu
    @staticmethod
    def _elementwise(name, n, *args):
        if n:
            _launch("activation.cu", name, grid_1d(n), BLOCK, *args, i64(n))

    def relu_forward(self, x, y):
        self._elementwise("relu_forward_kernel", x.size, x, y)

    def relu_backward(self, dy, y, dx):
        self._elementwise("relu_backward_kernel", dy.size, dy, y, dx)

    def bias_relu_forward(self, x, b, y):
        n, c, hw = self._channels(x)
        if x.size:
            _launch("activation.cu", "bias_relu_forward_kernel", grid_1d(x.size), BLOCK, x, b, y, i64(x.size), i32(c),
                    i64(hw))

    def bias_relu_backward(self, dy, y, dx, db):
        n, c, hw = self._channels(dy)
        _launch("activation.cu", "bias_relu_backward_kernel", c, BLOCK, dy, y, dx, db, i32(n), i32(c), i64(hw))

    def bias_backward(self, dy, db):
        n, c, hw = self._channels(dy)
        _launch("activation.cu", "bias_backward_kernel", c, BLOCK, dy, db, i32(n), i32(c), i64(hw))

    def leaky_relu_forward(self, x, y, negative_slope):
        if x.size:
            _launch("activation.cu", "leaky_relu_forward_kernel", grid_1d(x.size), BLOCK, x, y, f32(negative_slope),
                    i64(x.size))

    def leaky_relu_backward(self, dy, x, dx, negative_slope):
        if dy.size:
            _launch("activation.cu", "leaky_relu_backward_kernel", grid_1d(dy.size), BLOCK, dy, x, dx,
                    f32(negative_slope), i64(dy.size))

    def sigmoid_forward(self, x, y):
        self._elementwise("sigmoid_forward_kernel", x.size, x, y)

    def sigmoid_backward(self, dy, y, dx):
        self._elementwise("sigmoid_backward_kernel", dy.size, dy, y, dx)

    def tanh_forward(self, x, y):
        self._elementwise("tanh_forward_kernel", x.size, x, y)

    def tanh_backward(self, dy, y, dx):
        self._elementwise("tanh_backward_kernel", dy.size, dy, y, dx)

    def add(self, a, b, out):
        self._elementwise("add_forward_kernel", a.size, a, b, out)

    # ---- dropout.cu
    def dropout_forward(self, x, y, mask, seed, p):
        if x.size:
            _launch("dropout.cu", "dropout_forward_kernel", grid_1d(x.size), BLOCK, x, y, mask, np.uint64(seed),
                    f64(p), f32(1.0 / (1.0 - p)), i64(x.size))

    def dropout_backward(self, dy, mask, dx, p):
        if dy.size:
            _launch("dropout.cu", "dropout_backward_kernel", grid_1d(dy.size), BLOCK, dy, mask, dx,
                    f32(1.0 / (1.0 - p)), i64(dy.size))

    # ---- softmax_xent.cu
    def softmax_xent_forward(self, logits, labels, loss, dlogits, row_loss):
        n, k = logits.shape
        _launch("softmax_xent.cu", "softmax_xent_forward_kernel", cdiv(n, BLOCK // 32), BLOCK, logits, labels,
                dlogits, row_loss, i32(n), i32(k))
        _launch("softmax_xent.cu", "mean_reduce_kernel", 1, BLOCK, row_loss, loss, i64(n), f32(n))

    def mse_loss_forward(self, pred, target, loss, partial):
        blocks = mse_partial_blocks(pred.size)
        _launch("softmax_xent.cu", "mse_partial_forward_kernel", blocks, BLOCK, pred, target, partial, i64(pred.size))
        _launch("softmax_xent.cu", "mean_reduce_kernel", 1, BLOCK, partial, loss, i64(blocks), f32(pred.size))

    def mse_loss_backward(self, pred, target, dloss, dpred):
        if pred.size:
            _launch("softmax_xent.cu", "mse_backward_kernel", grid_1d(pred.size), BLOCK, pred, target, dloss, dpred,
                    f32(2.0 / pred.size), i64(pred.size))

    def mse_partial_blocks(self, n):
        return mse_partial_blocks(n)

    # ---- optim.cu
    def sgd_update(self, param, grad, velocity, lr, momentum, weight_decay, nesterov):
        if param.size:
            _launch("optim.cu", "sgd_update_kernel", grid_1d(param.size), BLOCK, param, grad, _ptr(velocity), f32(lr),
                    f32(momentum), f32(weight_decay), i32(bool(nesterov)), i64(param.size))

    def adam_update(self, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
        if param.size:
            # step-dependent scalars in double from the float32 betas, rounded once (as csrc/optim.cu)
            bc1 = 1.0 - float(f32(beta1)) ** int(step)
            bc2 = 1.0 - float(f32(beta2)) ** int(step)
            _launch("optim.cu", "adam_update_kernel", grid_1d(param.size), BLOCK, param, grad, m, v, f32(lr),
                    f32(beta1), f32(beta2), f32(eps), f32(weight_decay), i32(bool(decoupled)), f32(bc1), f32(bc2),
                    i64(param.size))

    def rmsprop_update(self, param, grad, square_avg, lr, alpha, eps, weight_decay):
        if param.size:
            _launch("optim.cu", "rmsprop_update_kernel", grid_1d(param.size), BLOCK, param, grad, square_avg, f32(lr),
                    f32(alpha), f32(eps), f32(weight_decay), i64(param.size))

    def adagrad_update(self, param, grad, sum_sq, lr, eps, weight_decay):
        if param.size:
            _launch("optim.cu", "adagrad_update_kernel", grid_1d(param.size), BLOCK, param, grad, sum_sq, f32(lr),
                    f32(eps), f32(weight_decay), i64(param.size))


LAUNCHERS = tuple(name for name in vars(RtcLaunchers) if not name.startswith("_") and name != "exposure")
