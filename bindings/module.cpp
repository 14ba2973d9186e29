// module.cpp -- engine._cuda_ext: the pybind11 module exposing the launchers of csrc/.
//
// Every function takes device arrays as Python objects exposing __cuda_array_interface__
// (CuPy arrays), sizes and hyperparameters, and `stream`, the integer handle of the CUDA
// stream to launch on (cupy.cuda.get_current_stream().ptr; 0 is the legacy default stream).
// Before anything is launched it checks every array: CUDA array, dtype, C-contiguous,
// writable when written, and shapes consistent with each other -- raising TypeError or
// ValueError that names the op, what it expected and what it got. Outputs are allocated by
// the caller (engine/cuda/<family>.py); nothing here allocates or synchronises.
// Importing the module makes no CUDA call, so it imports on a machine without a GPU.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "../csrc/launch_common.h"  // mse_partial_blocks: the workspace size rule
#include "../csrc/launchers.h"

namespace py = pybind11;

namespace {

struct DeviceArray {
    void* ptr = nullptr;
    std::vector<int64_t> shape;
    int64_t size = 1;
    int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
    int ndim() const { return (int)shape.size(); }
};

std::string shape_str(const std::vector<int64_t>& shape) {
    std::ostringstream s;
    s << "(";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << (shape.size() == 1 ? ",)" : ")");
    return s.str();
}

[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }
[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }

const char* dtype_name(const std::string& typestr) {
    if (typestr == "<f4") return "float32";
    if (typestr == "<i4") return "int32";
    if (typestr == "<i8") return "int64";
    if (typestr == "|u1") return "uint8";
    if (typestr == "<f8") return "float64";
    if (typestr == "<f2") return "float16";
    return nullptr;
}

// Read obj.__cuda_array_interface__ (version 2 or 3) and check dtype, contiguity, writability.
DeviceArray as_array(const char* op, const char* name, py::handle obj, const char* typestr, bool writable) {
    if (!py::hasattr(obj, "__cuda_array_interface__"))
        type_error(std::string(op) + ": " + name + " must be a CUDA array (CuPy), got " +
                   std::string(py::str(py::type::of(obj).attr("__name__"))));
    py::dict cai = obj.attr("__cuda_array_interface__");
    DeviceArray a;
    for (auto d : cai["shape"].cast<py::tuple>()) a.shape.push_back(d.cast<int64_t>());
    for (int64_t d : a.shape) a.size *= d;
    const std::string got = cai["typestr"].cast<std::string>();
    if (got != typestr) {
        const char* g = dtype_name(got);
        type_error(std::string(op) + ": " + name + " must be " + dtype_name(typestr) + ", got " +
                   (g ? std::string(g) : got));
    }
    if (cai.contains("mask") && !cai["mask"].is_none())
        value_error(std::string(op) + ": " + name + " must not be a masked array");
    py::tuple data = cai["data"].cast<py::tuple>();
    a.ptr = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
    if (writable && data[1].cast<bool>()) value_error(std::string(op) + ": " + name + " is read-only but is written");
    if (cai.contains("strides") && !cai["strides"].is_none()) {
        // strides of a C-contiguous array (dimensions of extent 1 may carry any stride)
        py::tuple strides = cai["strides"].cast<py::tuple>();
        int64_t expect = (int64_t)(std::string(typestr) == "|u1" ? 1 : (typestr[2] - '0'));
        for (int i = a.ndim() - 1; i >= 0; --i) {
            if (a.shape[i] != 1 && strides[i].cast<int64_t>() != expect)
                value_error(std::string(op) + ": " + name + " must be C-contiguous, got shape " + shape_str(a.shape) +
                            " with strides " + std::string(py::str(strides)));
            expect *= a.shape[i];
        }
    }
    if (a.size > 0 && a.ptr == nullptr) value_error(std::string(op) + ": " + name + " has a null data pointer");
    return a;
}

DeviceArray in_f32(const char* op, const char* name, py::handle obj) { return as_array(op, name, obj, "<f4", false); }
DeviceArray out_f32(const char* op, const char* name, py::handle obj) { return as_array(op, name, obj, "<f4", true); }

void expect_shape(const char* op, const char* name, const DeviceArray& a, const std::vector<int64_t>& shape) {
    if (a.shape != shape)
        value_error(std::string(op) + ": expected " + name + " of shape " + shape_str(shape) + ", got " +
                    shape_str(a.shape));
}

void expect_rank(const char* op, const char* name, const DeviceArray& a, int lo, int hi) {
    if (a.ndim() < lo || a.ndim() > hi)
        value_error(std::string(op) + ": expected " + name + " of rank " + std::to_string(lo) +
                    (hi > lo ? " to " + std::to_string(hi) : "") + ", got shape " + shape_str(a.shape));
}

void expect_size(const char* op, const char* name, const DeviceArray& a, int64_t size) {
    if (a.size != size)
        value_error(std::string(op) + ": expected " + name + " with " + std::to_string(size) + " elements, got shape " +
                    shape_str(a.shape));
}

int as_int(const char* op, const char* what, int64_t v) {
    if (v < 0 || v > 2147483647) value_error(std::string(op) + ": " + what + " " + std::to_string(v) + " out of range");
    return (int)v;
}

cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// (N, C, rest...) -> (N, C, product of rest): the channel view used by bias and BN ops
void channel_dims(const char* op, const DeviceArray& a, int& N, int& C, int64_t& HW) {
    if (a.ndim() < 2) value_error(std::string(op) + ": expected an (N, C, ...) array, got shape " + shape_str(a.shape));
    N = as_int(op, "batch", a.dim(0));
    C = as_int(op, "channels", a.dim(1));
    HW = 1;
    for (int i = 2; i < a.ndim(); ++i) HW *= a.dim(i);
}

// ---------------------------------------------------------------- conv: im2col, gemm
void im2col(py::handle x_, py::handle cols_, int kh, int kw, int sh, int sw, int ph, int pw, uintptr_t stream) {
    const char* op = "im2col";
    DeviceArray x = in_f32(op, "x", x_), cols = out_f32(op, "cols", cols_);
    expect_rank(op, "x", x, 4, 4);
    if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0)
        value_error("im2col: expected kernel >= 1, stride >= 1, padding >= 0");
    const int64_t P = (x.dim(2) + 2 * ph - kh) / sh + 1, Q = (x.dim(3) + 2 * pw - kw) / sw + 1;
    if (x.dim(2) + 2 * ph < kh || x.dim(3) + 2 * pw < kw) value_error("im2col: kernel larger than the padded input");
    expect_shape(op, "cols", cols, {x.dim(0), x.dim(1) * kh * kw, P * Q});
    engine::im2col((const float*)x.ptr, (float*)cols.ptr, as_int(op, "N", x.dim(0)), as_int(op, "C", x.dim(1)),
                   as_int(op, "H", x.dim(2)), as_int(op, "W", x.dim(3)), kh, kw, sh, sw, ph, pw, as_stream(stream));
}

void col2im(py::handle cols_, py::handle x_, int kh, int kw, int sh, int sw, int ph, int pw, uintptr_t stream) {
    const char* op = "col2im";
    DeviceArray cols = in_f32(op, "cols", cols_), x = out_f32(op, "x", x_);
    expect_rank(op, "x", x, 4, 4);
    if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0)
        value_error("col2im: expected kernel >= 1, stride >= 1, padding >= 0");
    if (x.dim(2) + 2 * ph < kh || x.dim(3) + 2 * pw < kw) value_error("col2im: kernel larger than the padded input");
    const int64_t P = (x.dim(2) + 2 * ph - kh) / sh + 1, Q = (x.dim(3) + 2 * pw - kw) / sw + 1;
    expect_shape(op, "cols", cols, {x.dim(0), x.dim(1) * kh * kw, P * Q});
    engine::col2im((const float*)cols.ptr, (float*)x.ptr, as_int(op, "N", x.dim(0)), as_int(op, "C", x.dim(1)),
                   as_int(op, "H", x.dim(2)), as_int(op, "W", x.dim(3)), kh, kw, sh, sw, ph, pw, as_stream(stream));
}

// a, b: 2-D (shared by every batch) or 3-D (batch, rows, cols); c: 2-D (every batch summed
// into it) or 3-D (outputs, M, N), each output summing ceil(batch / outputs) batches.
void gemm(py::handle a_, py::handle b_, py::handle c_, bool trans_a, bool trans_b, py::object bias_, int bias_axis,
          bool relu, uintptr_t stream) {
    const char* op = "gemm";
    DeviceArray a = in_f32(op, "a", a_), b = in_f32(op, "b", b_), c = out_f32(op, "c", c_);
    expect_rank(op, "a", a, 2, 3);
    expect_rank(op, "b", b, 2, 3);
    expect_rank(op, "c", c, 2, 3);
    const int64_t M = trans_a ? a.dim(-1) : a.dim(-2), K = trans_a ? a.dim(-2) : a.dim(-1);
    const int64_t Kb = trans_b ? b.dim(-1) : b.dim(-2), N = trans_b ? b.dim(-2) : b.dim(-1);
    if (K != Kb)
        value_error("gemm: inner dimensions differ: op(a) is " + std::to_string(M) + "x" + std::to_string(K) +
                    ", op(b) is " + std::to_string(Kb) + "x" + std::to_string(N));
    if (c.dim(-2) != M || c.dim(-1) != N)
        value_error("gemm: expected c of " + std::to_string(M) + "x" + std::to_string(N) + " matrices, got shape " +
                    shape_str(c.shape));
    const int64_t batch_a = a.ndim() == 3 ? a.dim(0) : 0, batch_b = b.ndim() == 3 ? b.dim(0) : 0;
    if (batch_a && batch_b && batch_a != batch_b)
        value_error("gemm: batch sizes of a and b differ: " + shape_str(a.shape) + " vs " + shape_str(b.shape));
    const int64_t batch = std::max<int64_t>(1, std::max(batch_a, batch_b));
    const int64_t outputs = c.ndim() == 3 ? c.dim(0) : 1;
    if (outputs < 1 || outputs > batch)
        value_error("gemm: c holds " + std::to_string(outputs) + " outputs for a batch of " + std::to_string(batch));
    const int64_t per_output = (batch + outputs - 1) / outputs;
    if ((batch + per_output - 1) / per_output != outputs)
        value_error("gemm: " + std::to_string(outputs) + " outputs do not split a batch of " + std::to_string(batch) +
                    " into equal groups of " + std::to_string(per_output));
    const float* bias = nullptr;
    if (bias_axis != -1) {
        if (bias_.is_none()) value_error("gemm: bias_axis " + std::to_string(bias_axis) + " given without a bias");
        DeviceArray bb = in_f32(op, "bias", bias_);
        if (bias_axis != 0 && bias_axis != 1) value_error("gemm: expected bias_axis -1, 0 or 1, got " + std::to_string(bias_axis));
        expect_shape(op, "bias", bb, {bias_axis == 0 ? M : N});
        bias = (const float*)bb.ptr;
    } else if (!bias_.is_none()) {
        value_error("gemm: a bias needs bias_axis 0 (per row) or 1 (per column)");
    }
    engine::gemm(as_int(op, "M", M), as_int(op, "N", N), as_int(op, "K", K), (const float*)a.ptr,
                 as_int(op, "lda", a.dim(-1)), a.ndim() == 3 ? a.dim(-2) * a.dim(-1) : 0, trans_a,
                 (const float*)b.ptr, as_int(op, "ldb", b.dim(-1)), b.ndim() == 3 ? b.dim(-2) * b.dim(-1) : 0, trans_b,
                 (float*)c.ptr, as_int(op, "ldc", N), M * N, as_int(op, "batch", batch), as_int(op, "outputs", outputs),
                 bias, bias_axis, relu, as_stream(stream));
}

void gemm_reduce_splits(py::handle partial_, py::handle out_, uintptr_t stream) {
    const char* op = "gemm_reduce_splits";
    DeviceArray partial = in_f32(op, "partial", partial_), out = out_f32(op, "out", out_);
    if (partial.ndim() < 1 || partial.dim(0) < 1 || partial.size != partial.dim(0) * out.size)
        value_error("gemm_reduce_splits: expected partial of shape (splits, " + shape_str(out.shape) + "...), got " +
                    shape_str(partial.shape));
    engine::gemm_reduce_splits((const float*)partial.ptr, (float*)out.ptr, as_int(op, "splits", partial.dim(0)),
                               out.size, as_stream(stream));
}

// ---------------------------------------------------------------- pool
void pool_dims(const char* op, const DeviceArray& x, const DeviceArray& y, int& planes) {
    expect_rank(op, "x", x, 4, 4);
    expect_rank(op, "y", y, 4, 4);
    if (x.dim(0) != y.dim(0) || x.dim(1) != y.dim(1))
        value_error(std::string(op) + ": input " + shape_str(x.shape) + " and output " + shape_str(y.shape) +
                    " differ in N or C");
    planes = as_int(op, "N*C", x.dim(0) * x.dim(1));
}

void max_pool2d_forward(py::handle x_, py::handle y_, py::handle argmax_, int kh, int kw, int sh, int sw, int ph,
                        int pw, uintptr_t stream) {
    const char* op = "max_pool2d_forward";
    DeviceArray x = in_f32(op, "x", x_), y = out_f32(op, "y", y_);
    DeviceArray argmax = as_array(op, "argmax", argmax_, "<i4", true);
    int planes;
    pool_dims(op, x, y, planes);
    expect_shape(op, "argmax", argmax, y.shape);
    engine::max_pool2d_forward((const float*)x.ptr, (float*)y.ptr, (int*)argmax.ptr, planes, as_int(op, "H", x.dim(2)),
                               as_int(op, "W", x.dim(3)), as_int(op, "P", y.dim(2)), as_int(op, "Q", y.dim(3)), kh, kw,
                               sh, sw, ph, pw, as_stream(stream));
}

void max_pool2d_backward(py::handle dy_, py::handle argmax_, py::handle dx_, uintptr_t stream) {
    const char* op = "max_pool2d_backward";
    DeviceArray dy = in_f32(op, "dy", dy_), dx = out_f32(op, "dx", dx_);
    DeviceArray argmax = as_array(op, "argmax", argmax_, "<i4", false);
    int planes;
    pool_dims(op, dx, dy, planes);
    expect_shape(op, "argmax", argmax, dy.shape);
    engine::max_pool2d_backward((const float*)dy.ptr, (const int*)argmax.ptr, (float*)dx.ptr, planes,
                                as_int(op, "H*W", dx.dim(2) * dx.dim(3)), as_int(op, "P*Q", dy.dim(2) * dy.dim(3)),
                                as_stream(stream));
}

void avg_pool2d_forward(py::handle x_, py::handle y_, int kh, int kw, int sh, int sw, int ph, int pw,
                        bool count_include_pad, uintptr_t stream) {
    const char* op = "avg_pool2d_forward";
    DeviceArray x = in_f32(op, "x", x_), y = out_f32(op, "y", y_);
    int planes;
    pool_dims(op, x, y, planes);
    engine::avg_pool2d_forward((const float*)x.ptr, (float*)y.ptr, planes, as_int(op, "H", x.dim(2)),
                               as_int(op, "W", x.dim(3)), as_int(op, "P", y.dim(2)), as_int(op, "Q", y.dim(3)), kh, kw,
                               sh, sw, ph, pw, count_include_pad, as_stream(stream));
}

void avg_pool2d_backward(py::handle dy_, py::handle dx_, int kh, int kw, int sh, int sw, int ph, int pw,
                         bool count_include_pad, uintptr_t stream) {
    const char* op = "avg_pool2d_backward";
    DeviceArray dy = in_f32(op, "dy", dy_), dx = out_f32(op, "dx", dx_);
    int planes;
    pool_dims(op, dx, dy, planes);
    engine::avg_pool2d_backward((const float*)dy.ptr, (float*)dx.ptr, planes, as_int(op, "H", dx.dim(2)),
                                as_int(op, "W", dx.dim(3)), as_int(op, "P", dy.dim(2)), as_int(op, "Q", dy.dim(3)), kh,
                                kw, sh, sw, ph, pw, count_include_pad, as_stream(stream));
}

// ---------------------------------------------------------------- batchnorm
const float* optional_vec(const char* op, const char* name, py::handle obj, int64_t C, bool writable) {
    if (obj.is_none()) return nullptr;
    DeviceArray a = as_array(op, name, obj, "<f4", writable);
    expect_shape(op, name, a, {C});
    return (const float*)a.ptr;
}

const float* vec_in(const char* op, const char* name, py::handle obj, int64_t C) {
    DeviceArray a = in_f32(op, name, obj);
    expect_shape(op, name, a, {C});
    return (const float*)a.ptr;
}

float* vec_out(const char* op, const char* name, py::handle obj, int64_t C) {
    DeviceArray a = out_f32(op, name, obj);
    expect_shape(op, name, a, {C});
    return (float*)a.ptr;
}

void batch_norm_stats(py::handle x_, py::handle mean_, py::handle invstd_, py::handle running_mean_,
                      py::handle running_var_, float momentum, float eps, uintptr_t stream) {
    const char* op = "batch_norm_stats";
    DeviceArray x = in_f32(op, "x", x_);
    int N, C;
    int64_t HW;
    channel_dims(op, x, N, C, HW);
    engine::batch_norm_stats((const float*)x.ptr, vec_out(op, "save_mean", mean_, C),
                             vec_out(op, "save_invstd", invstd_, C),
                             const_cast<float*>(optional_vec(op, "running_mean", running_mean_, C, true)),
                             const_cast<float*>(optional_vec(op, "running_var", running_var_, C, true)), N, C, HW,
                             momentum, eps, as_stream(stream));
}

void batch_norm_eval_stats(py::handle running_mean_, py::handle running_var_, py::handle mean_, py::handle invstd_,
                           float eps, uintptr_t stream) {
    const char* op = "batch_norm_eval_stats";
    DeviceArray rm = in_f32(op, "running_mean", running_mean_);
    expect_rank(op, "running_mean", rm, 1, 1);
    const int64_t C = rm.dim(0);
    engine::batch_norm_eval_stats((const float*)rm.ptr, vec_in(op, "running_var", running_var_, C),
                                  vec_out(op, "save_mean", mean_, C), vec_out(op, "save_invstd", invstd_, C),
                                  as_int(op, "C", C), eps, as_stream(stream));
}

void batch_norm_forward(py::handle x_, py::handle mean_, py::handle invstd_, py::handle gamma_, py::handle beta_,
                        py::handle y_, bool relu, uintptr_t stream) {
    const char* op = "batch_norm_forward";
    DeviceArray x = in_f32(op, "x", x_), y = out_f32(op, "y", y_);
    int N, C;
    int64_t HW;
    channel_dims(op, x, N, C, HW);
    expect_shape(op, "y", y, x.shape);
    engine::batch_norm_forward((const float*)x.ptr, vec_in(op, "mean", mean_, C), vec_in(op, "invstd", invstd_, C),
                               vec_in(op, "gamma", gamma_, C), vec_in(op, "beta", beta_, C), (float*)y.ptr, N, C, HW,
                               relu, as_stream(stream));
}

void batch_norm_backward_reduce(py::handle dy_, py::handle y_, py::handle x_, py::handle mean_, py::handle invstd_,
                                py::handle dgamma_, py::handle dbeta_, uintptr_t stream) {
    const char* op = "batch_norm_backward_reduce";
    DeviceArray dy = in_f32(op, "dy", dy_), x = in_f32(op, "x", x_);
    int N, C;
    int64_t HW;
    channel_dims(op, x, N, C, HW);
    expect_shape(op, "dy", dy, x.shape);
    const float* y = nullptr;
    if (!y_.is_none()) {
        DeviceArray ya = in_f32(op, "y", y_);
        expect_shape(op, "y", ya, x.shape);
        y = (const float*)ya.ptr;
    }
    engine::batch_norm_backward_reduce((const float*)dy.ptr, y, (const float*)x.ptr, vec_in(op, "mean", mean_, C),
                                       vec_in(op, "invstd", invstd_, C), vec_out(op, "dgamma", dgamma_, C),
                                       vec_out(op, "dbeta", dbeta_, C), N, C, HW, as_stream(stream));
}

void batch_norm_backward(py::handle dy_, py::handle y_, py::handle x_, py::handle mean_, py::handle invstd_,
                         py::handle gamma_, py::handle dgamma_, py::handle dbeta_, py::handle dx_, bool training,
                         uintptr_t stream) {
    const char* op = "batch_norm_backward";
    DeviceArray dy = in_f32(op, "dy", dy_), x = in_f32(op, "x", x_), dx = out_f32(op, "dx", dx_);
    int N, C;
    int64_t HW;
    channel_dims(op, x, N, C, HW);
    expect_shape(op, "dy", dy, x.shape);
    expect_shape(op, "dx", dx, x.shape);
    const float* y = nullptr;
    if (!y_.is_none()) {
        DeviceArray ya = in_f32(op, "y", y_);
        expect_shape(op, "y", ya, x.shape);
        y = (const float*)ya.ptr;
    }
    engine::batch_norm_backward((const float*)dy.ptr, y, (const float*)x.ptr, vec_in(op, "mean", mean_, C),
                                vec_in(op, "invstd", invstd_, C), vec_in(op, "gamma", gamma_, C),
                                vec_in(op, "dgamma", dgamma_, C), vec_in(op, "dbeta", dbeta_, C), (float*)dx.ptr, N, C,
                                HW, training, as_stream(stream));
}

// ---------------------------------------------------------------- activation
// out = f(in): same shapes
void unary(const char* op, void (*launch)(const float*, float*, int64_t, cudaStream_t), py::handle x_, py::handle y_,
           uintptr_t stream) {
    DeviceArray x = in_f32(op, "x", x_), y = out_f32(op, "y", y_);
    expect_shape(op, "y", y, x.shape);
    launch((const float*)x.ptr, (float*)y.ptr, x.size, as_stream(stream));
}

// out = f(a, b): same shapes
void binary(const char* op, const char* a_name, const char* b_name, const char* out_name,
            void (*launch)(const float*, const float*, float*, int64_t, cudaStream_t), py::handle a_, py::handle b_,
            py::handle out_, uintptr_t stream) {
    DeviceArray a = in_f32(op, a_name, a_), b = in_f32(op, b_name, b_), out = out_f32(op, out_name, out_);
    expect_shape(op, b_name, b, a.shape);
    expect_shape(op, out_name, out, a.shape);
    launch((const float*)a.ptr, (const float*)b.ptr, (float*)out.ptr, a.size, as_stream(stream));
}

void bias_relu_forward(py::handle x_, py::handle b_, py::handle y_, uintptr_t stream) {
    const char* op = "bias_relu_forward";
    DeviceArray x = in_f32(op, "x", x_), y = out_f32(op, "y", y_);
    int N, C;
    int64_t HW;
    channel_dims(op, x, N, C, HW);
    expect_shape(op, "y", y, x.shape);
    engine::bias_relu_forward((const float*)x.ptr, vec_in(op, "b", b_, C), (float*)y.ptr, N, C, HW,
                              as_stream(stream));
}

void bias_relu_backward(py::handle dy_, py::handle y_, py::handle dx_, py::handle db_, uintptr_t stream) {
    const char* op = "bias_relu_backward";
    DeviceArray dy = in_f32(op, "dy", dy_), y = in_f32(op, "y", y_), dx = out_f32(op, "dx", dx_);
    int N, C;
    int64_t HW;
    channel_dims(op, dy, N, C, HW);
    expect_shape(op, "y", y, dy.shape);
    expect_shape(op, "dx", dx, dy.shape);
    engine::bias_relu_backward((const float*)dy.ptr, (const float*)y.ptr, (float*)dx.ptr, vec_out(op, "db", db_, C), N,
                               C, HW, as_stream(stream));
}

void bias_backward(py::handle dy_, py::handle db_, uintptr_t stream) {
    const char* op = "bias_backward";
    DeviceArray dy = in_f32(op, "dy", dy_);
    int N, C;
    int64_t HW;
    channel_dims(op, dy, N, C, HW);
    engine::bias_backward((const float*)dy.ptr, vec_out(op, "db", db_, C), N, C, HW, as_stream(stream));
}

void leaky_relu_forward(py::handle x_, py::handle y_, float slope, uintptr_t stream) {
    const char* op = "leaky_relu_forward";
    DeviceArray x = in_f32(op, "x", x_), y = out_f32(op, "y", y_);
    expect_shape(op, "y", y, x.shape);
    engine::leaky_relu_forward((const float*)x.ptr, (float*)y.ptr, slope, x.size, as_stream(stream));
}

void leaky_relu_backward(py::handle dy_, py::handle x_, py::handle dx_, float slope, uintptr_t stream) {
    const char* op = "leaky_relu_backward";
    DeviceArray dy = in_f32(op, "dy", dy_), x = in_f32(op, "x", x_), dx = out_f32(op, "dx", dx_);
    expect_shape(op, "x", x, dy.shape);
    expect_shape(op, "dx", dx, dy.shape);
    engine::leaky_relu_backward((const float*)dy.ptr, (const float*)x.ptr, (float*)dx.ptr, slope, dy.size,
                                as_stream(stream));
}

// ---------------------------------------------------------------- dropout
void dropout_forward(py::handle x_, py::handle y_, py::handle mask_, uint64_t seed, double p, uintptr_t stream) {
    const char* op = "dropout_forward";
    DeviceArray x = in_f32(op, "x", x_), y = out_f32(op, "y", y_);
    DeviceArray mask = as_array(op, "mask", mask_, "|u1", true);
    expect_shape(op, "y", y, x.shape);
    expect_shape(op, "mask", mask, x.shape);
    if (!(p >= 0.0 && p < 1.0)) value_error("dropout_forward: expected 0 <= p < 1, got " + std::to_string(p));
    engine::dropout_forward((const float*)x.ptr, (float*)y.ptr, (unsigned char*)mask.ptr, seed, p, x.size,
                            as_stream(stream));
}

void dropout_backward(py::handle dy_, py::handle mask_, py::handle dx_, double p, uintptr_t stream) {
    const char* op = "dropout_backward";
    DeviceArray dy = in_f32(op, "dy", dy_), dx = out_f32(op, "dx", dx_);
    DeviceArray mask = as_array(op, "mask", mask_, "|u1", false);
    expect_shape(op, "mask", mask, dy.shape);
    expect_shape(op, "dx", dx, dy.shape);
    if (!(p >= 0.0 && p < 1.0)) value_error("dropout_backward: expected 0 <= p < 1, got " + std::to_string(p));
    engine::dropout_backward((const float*)dy.ptr, (const unsigned char*)mask.ptr, (float*)dx.ptr, p, dy.size,
                             as_stream(stream));
}

// ---------------------------------------------------------------- loss
void softmax_xent_forward(py::handle logits_, py::handle labels_, py::handle loss_, py::handle dlogits_,
                          py::handle row_loss_, uintptr_t stream) {
    const char* op = "softmax_xent_forward";
    DeviceArray logits = in_f32(op, "logits", logits_), dlogits = out_f32(op, "dlogits", dlogits_);
    DeviceArray labels = as_array(op, "labels", labels_, "<i8", false);
    DeviceArray loss = out_f32(op, "loss", loss_), row_loss = out_f32(op, "row_loss", row_loss_);
    expect_rank(op, "logits", logits, 2, 2);
    expect_shape(op, "dlogits", dlogits, logits.shape);
    expect_shape(op, "labels", labels, {logits.dim(0)});
    expect_size(op, "loss", loss, 1);
    expect_size(op, "row_loss", row_loss, logits.dim(0));
    engine::softmax_xent_forward((const float*)logits.ptr, (const int64_t*)labels.ptr, (float*)loss.ptr,
                                 (float*)dlogits.ptr, (float*)row_loss.ptr, as_int(op, "N", logits.dim(0)),
                                 as_int(op, "K", logits.dim(1)), as_stream(stream));
}

void mse_loss_forward(py::handle pred_, py::handle target_, py::handle loss_, py::handle partial_, uintptr_t stream) {
    const char* op = "mse_loss_forward";
    DeviceArray pred = in_f32(op, "pred", pred_), target = in_f32(op, "target", target_);
    DeviceArray loss = out_f32(op, "loss", loss_), partial = out_f32(op, "partial", partial_);
    expect_shape(op, "target", target, pred.shape);
    expect_size(op, "loss", loss, 1);
    if (pred.size < 1) value_error("mse_loss_forward: expected at least one element, got shape " + shape_str(pred.shape));
    expect_size(op, "partial", partial, engine::mse_partial_blocks(pred.size));
    engine::mse_loss_forward((const float*)pred.ptr, (const float*)target.ptr, (float*)loss.ptr, (float*)partial.ptr,
                             pred.size, as_stream(stream));
}

void mse_loss_backward(py::handle pred_, py::handle target_, py::handle dloss_, py::handle dpred_, uintptr_t stream) {
    const char* op = "mse_loss_backward";
    DeviceArray pred = in_f32(op, "pred", pred_), target = in_f32(op, "target", target_);
    DeviceArray dloss = in_f32(op, "dloss", dloss_), dpred = out_f32(op, "dpred", dpred_);
    expect_shape(op, "target", target, pred.shape);
    expect_shape(op, "dpred", dpred, pred.shape);
    expect_size(op, "dloss", dloss, 1);
    engine::mse_loss_backward((const float*)pred.ptr, (const float*)target.ptr, (const float*)dloss.ptr,
                              (float*)dpred.ptr, pred.size, as_stream(stream));
}

// ---------------------------------------------------------------- optim
DeviceArray state(const char* op, const char* name, py::handle obj, const DeviceArray& param) {
    DeviceArray a = out_f32(op, name, obj);
    expect_size(op, name, a, param.size);
    return a;
}

void sgd_update(py::handle param_, py::handle grad_, py::object velocity_, float lr, float momentum,
                float weight_decay, bool nesterov, uintptr_t stream) {
    const char* op = "sgd_update";
    DeviceArray param = out_f32(op, "param", param_), grad = in_f32(op, "grad", grad_);
    expect_size(op, "grad", grad, param.size);
    float* velocity = nullptr;
    if (!velocity_.is_none()) velocity = (float*)state(op, "velocity", velocity_, param).ptr;
    else if (momentum != 0.0f) value_error("sgd_update: momentum != 0 needs a velocity array, got None");
    engine::sgd_update((float*)param.ptr, (const float*)grad.ptr, velocity, lr, momentum, weight_decay, nesterov,
                       param.size, as_stream(stream));
}

void adam_update(py::handle param_, py::handle grad_, py::handle m_, py::handle v_, int64_t step, float lr,
                 float beta1, float beta2, float eps, float weight_decay, bool decoupled, uintptr_t stream) {
    const char* op = "adam_update";
    DeviceArray param = out_f32(op, "param", param_), grad = in_f32(op, "grad", grad_);
    expect_size(op, "grad", grad, param.size);
    if (step < 1) value_error("adam_update: expected step >= 1 (it counts from 1), got " + std::to_string(step));
    engine::adam_update((float*)param.ptr, (const float*)grad.ptr, (float*)state(op, "m", m_, param).ptr,
                        (float*)state(op, "v", v_, param).ptr, step, lr, beta1, beta2, eps, weight_decay, decoupled,
                        param.size, as_stream(stream));
}

void rmsprop_update(py::handle param_, py::handle grad_, py::handle square_avg_, float lr, float alpha, float eps,
                    float weight_decay, uintptr_t stream) {
    const char* op = "rmsprop_update";
    DeviceArray param = out_f32(op, "param", param_), grad = in_f32(op, "grad", grad_);
    expect_size(op, "grad", grad, param.size);
    engine::rmsprop_update((float*)param.ptr, (const float*)grad.ptr,
                           (float*)state(op, "square_avg", square_avg_, param).ptr, lr, alpha, eps, weight_decay,
                           param.size, as_stream(stream));
}

void adagrad_update(py::handle param_, py::handle grad_, py::handle sum_sq_, float lr, float eps, float weight_decay,
                    uintptr_t stream) {
    const char* op = "adagrad_update";
    DeviceArray param = out_f32(op, "param", param_), grad = in_f32(op, "grad", grad_);
    expect_size(op, "grad", grad, param.size);
    engine::adagrad_update((float*)param.ptr, (const float*)grad.ptr, (float*)state(op, "sum_sq", sum_sq_, param).ptr,
                           lr, eps, weight_decay, param.size, as_stream(stream));
}

// Number of CUDA devices the runtime sees; 0 when there is no driver or no device. A CUDA
// call, so only on request, never at import.
int device_count() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // clear the error so later calls do not report it
        return 0;
    }
    return count;
}

}  // namespace

PYBIND11_MODULE(_cuda_ext, m) {
    m.doc() = "engine._cuda_ext: launchers of the hand-written CUDA kernels in kernels/ (built with nvcc). "
              "Arrays are CuPy arrays; stream is cupy.cuda.get_current_stream().ptr.";
    using namespace pybind11::literals;
    const auto s = "stream"_a = (uintptr_t)0;

    m.def("device_count", &device_count, "CUDA devices visible to the runtime (0 without driver or device)");

    m.def("im2col", &im2col, "x (N,C,H,W) -> cols (N,C*R*S,P*Q)", "x"_a, "cols"_a, "kh"_a, "kw"_a, "sh"_a, "sw"_a,
          "ph"_a, "pw"_a, s);
    m.def("col2im", &col2im, "cols (N,C*R*S,P*Q) -> x (N,C,H,W), overlaps summed", "cols"_a, "x"_a, "kh"_a, "kw"_a,
          "sh"_a, "sw"_a, "ph"_a, "pw"_a, s);
    m.def("gemm", &gemm, "c = epilogue(op(a) @ op(b)), batched; 2-D c sums the batch", "a"_a, "b"_a, "c"_a,
          "trans_a"_a, "trans_b"_a, "bias"_a, "bias_axis"_a, "relu"_a, s);
    m.def("gemm_reduce_splits", &gemm_reduce_splits, "out = partial.sum(axis=0), in a fixed order", "partial"_a,
          "out"_a, s);

    m.def("max_pool2d_forward", &max_pool2d_forward, "x -> (y, argmax int32)", "x"_a, "y"_a, "argmax"_a, "kh"_a,
          "kw"_a, "sh"_a, "sw"_a, "ph"_a, "pw"_a, s);
    m.def("max_pool2d_backward", &max_pool2d_backward, "dy, argmax -> dx", "dy"_a, "argmax"_a, "dx"_a, s);
    m.def("avg_pool2d_forward", &avg_pool2d_forward, "x -> y", "x"_a, "y"_a, "kh"_a, "kw"_a, "sh"_a, "sw"_a, "ph"_a,
          "pw"_a, "count_include_pad"_a, s);
    m.def("avg_pool2d_backward", &avg_pool2d_backward, "dy -> dx", "dy"_a, "dx"_a, "kh"_a, "kw"_a, "sh"_a, "sw"_a,
          "ph"_a, "pw"_a, "count_include_pad"_a, s);

    m.def("batch_norm_stats", &batch_norm_stats, "per-channel batch mean/invstd, running-stat update", "x"_a,
          "save_mean"_a, "save_invstd"_a, "running_mean"_a, "running_var"_a, "momentum"_a, "eps"_a, s);
    m.def("batch_norm_eval_stats", &batch_norm_eval_stats, "mean/invstd from the running statistics",
          "running_mean"_a, "running_var"_a, "save_mean"_a, "save_invstd"_a, "eps"_a, s);
    m.def("batch_norm_forward", &batch_norm_forward, "y = (x - mean) invstd gamma + beta (ReLU if relu)", "x"_a,
          "mean"_a, "invstd"_a, "gamma"_a, "beta"_a, "y"_a, "relu"_a, s);
    m.def("batch_norm_backward_reduce", &batch_norm_backward_reduce, "dgamma, dbeta (dy masked by y > 0 if y)",
          "dy"_a, "y"_a, "x"_a, "mean"_a, "invstd"_a, "dgamma"_a, "dbeta"_a, s);
    m.def("batch_norm_backward", &batch_norm_backward, "dx from dy and the reduced dgamma, dbeta", "dy"_a, "y"_a,
          "x"_a, "mean"_a, "invstd"_a, "gamma"_a, "dgamma"_a, "dbeta"_a, "dx"_a, "training"_a, s);

    m.def("relu_forward", [](py::handle x, py::handle y, uintptr_t st) { unary("relu_forward", engine::relu_forward, x, y, st); },
          "x"_a, "y"_a, s);
    m.def("relu_backward", [](py::handle dy, py::handle y, py::handle dx, uintptr_t st) {
              binary("relu_backward", "dy", "y", "dx", engine::relu_backward, dy, y, dx, st);
          }, "dy"_a, "y"_a, "dx"_a, s);
    m.def("bias_relu_forward", &bias_relu_forward, "y = relu(x + b along axis 1)", "x"_a, "b"_a, "y"_a, s);
    m.def("bias_relu_backward", &bias_relu_backward, "dx = dy (y > 0), db = dx summed but axis 1", "dy"_a, "y"_a,
          "dx"_a, "db"_a, s);
    m.def("bias_backward", &bias_backward, "db = dy summed over every axis but 1", "dy"_a, "db"_a, s);
    m.def("leaky_relu_forward", &leaky_relu_forward, "y = x > 0 ? x : slope x", "x"_a, "y"_a, "negative_slope"_a, s);
    m.def("leaky_relu_backward", &leaky_relu_backward, "dx = x > 0 ? dy : slope dy", "dy"_a, "x"_a, "dx"_a,
          "negative_slope"_a, s);
    m.def("sigmoid_forward", [](py::handle x, py::handle y, uintptr_t st) { unary("sigmoid_forward", engine::sigmoid_forward, x, y, st); },
          "x"_a, "y"_a, s);
    m.def("sigmoid_backward", [](py::handle dy, py::handle y, py::handle dx, uintptr_t st) {
              binary("sigmoid_backward", "dy", "y", "dx", engine::sigmoid_backward, dy, y, dx, st);
          }, "dy"_a, "y"_a, "dx"_a, s);
    m.def("tanh_forward", [](py::handle x, py::handle y, uintptr_t st) { unary("tanh_forward", engine::tanh_forward, x, y, st); },
          "x"_a, "y"_a, s);
    m.def("tanh_backward", [](py::handle dy, py::handle y, py::handle dx, uintptr_t st) {
              binary("tanh_backward", "dy", "y", "dx", engine::tanh_backward, dy, y, dx, st);
          }, "dy"_a, "y"_a, "dx"_a, s);
    m.def("add", [](py::handle a, py::handle b, py::handle c, uintptr_t st) {
              binary("add", "a", "b", "out", engine::add, a, b, c, st);
          }, "a"_a, "b"_a, "out"_a, s);

    m.def("dropout_forward", &dropout_forward, "counter-based mask (engine/reference/dropout.py), y = x mask / (1-p)",
          "x"_a, "y"_a, "mask"_a, "seed"_a, "p"_a, s);
    m.def("dropout_backward", &dropout_backward, "dx = dy mask / (1-p)", "dy"_a, "mask"_a, "dx"_a, "p"_a, s);

    m.def("softmax_xent_forward", &softmax_xent_forward, "mean loss (device scalar) and dlogits, fused", "logits"_a,
          "labels"_a, "loss"_a, "dlogits"_a, "row_loss"_a, s);
    m.def("mse_loss_forward", &mse_loss_forward, "mean squared error into a device scalar", "pred"_a, "target"_a,
          "loss"_a, "partial"_a, s);
    m.def("mse_loss_backward", &mse_loss_backward, "dpred = 2 (pred - target) / n * dloss", "pred"_a, "target"_a,
          "dloss"_a, "dpred"_a, s);
    m.def("mse_partial_blocks", &engine::mse_partial_blocks, "size of mse_loss_forward's partial workspace", "n"_a);

    m.def("sgd_update", &sgd_update, "in-place SGD (momentum, Nesterov, weight decay)", "param"_a, "grad"_a,
          "velocity"_a, "lr"_a, "momentum"_a, "weight_decay"_a, "nesterov"_a, s);
    m.def("adam_update", &adam_update, "in-place Adam / AdamW", "param"_a, "grad"_a, "m"_a, "v"_a, "step"_a, "lr"_a,
          "beta1"_a, "beta2"_a, "eps"_a, "weight_decay"_a, "decoupled"_a, s);
    m.def("rmsprop_update", &rmsprop_update, "in-place RMSprop", "param"_a, "grad"_a, "square_avg"_a, "lr"_a,
          "alpha"_a, "eps"_a, "weight_decay"_a, s);
    m.def("adagrad_update", &adagrad_update, "in-place Adagrad", "param"_a, "grad"_a, "sum_sq"_a, "lr"_a, "eps"_a,
          "weight_decay"_a, s);
}
