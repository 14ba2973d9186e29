// optim.cu -- optimizer updates, in place, over one flat float32 parameter array.
//
// All parameters of a model live in one flat buffer (and so do their gradients and the
// optimizer state), so one launch updates everything. Semantics are those of
// engine/reference/optim.py (PyTorch's, dampening 0). Scalars that depend only on the step
// (Adam's bias corrections) are computed on the host in double and passed in.
// Launch: 1-D grid-stride loop, ENGINE_BLOCK threads, any grid.
//   sgd_update_kernel      g = grad + wd p; v = mu v + g; g = nesterov ? g + mu v : v; p -= lr g
//                          (momentum == 0: plain SGD, velocity untouched and may be null)
//   adam_update_kernel     decoupled: p *= 1 - lr wd (AdamW), else g += wd p (L2);
//                          m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//                          p -= lr (m / bc1) / (sqrt(v / bc2) + eps)
//   rmsprop_update_kernel  g += wd p; sq = alpha sq + (1-alpha) g^2; p -= lr g / (sqrt(sq) + eps)
//   adagrad_update_kernel  g += wd p; sum += g^2; p -= lr g / (sqrt(sum) + eps)
//   adadelta_update_kernel g += wd p; sq = rho sq + (1-rho) g^2; d = sqrt(acc + eps) / sqrt(sq + eps) g;
//                          acc = rho acc + (1-rho) d^2; p -= lr d
//   weight_penalty_update_kernel  grad += l1 sign(p) + l2 p; p *= shrink (L1, L2 and decoupled
//                          decay where the optimizer's kernel does not apply them itself)
#include "common.cuh"

extern "C" __global__ void sgd_update_kernel(float* param, const float* grad, float* velocity, float lr,
                                             float momentum, float weight_decay, int nesterov, i64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float p = param[i];
        float g = grad[i] + weight_decay * p;
        if (momentum != 0.0f) {
            const float v = momentum * velocity[i] + g;
            velocity[i] = v;
            g = nesterov ? g + momentum * v : v;
        }
        param[i] = p - lr * g;
    }
}
ENGINE_EXPORT_KERNEL(sgd_update_kernel)

extern "C" __global__ void adam_update_kernel(float* param, const float* grad, float* m, float* v, float lr,
                                              float beta1, float beta2, float eps, float weight_decay,
                                              int decoupled, float bias_correction1, float bias_correction2,
                                              i64 n) {
    GRID_STRIDE_LOOP(i, n) {
        float p = param[i];
        float g = grad[i];
        if (decoupled) p *= 1.0f - lr * weight_decay;
        else g += weight_decay * p;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = p - lr * (mi / bias_correction1) / (sqrtf(vi / bias_correction2) + eps);
    }
}
ENGINE_EXPORT_KERNEL(adam_update_kernel)

extern "C" __global__ void rmsprop_update_kernel(float* param, const float* grad, float* square_avg, float lr,
                                                 float alpha, float eps, float weight_decay, i64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float p = param[i];
        const float g = grad[i] + weight_decay * p;
        const float sq = alpha * square_avg[i] + (1.0f - alpha) * g * g;
        square_avg[i] = sq;
        param[i] = p - lr * g / (sqrtf(sq) + eps);
    }
}
ENGINE_EXPORT_KERNEL(rmsprop_update_kernel)

extern "C" __global__ void adagrad_update_kernel(float* param, const float* grad, float* sum_sq, float lr,
                                                 float eps, float weight_decay, i64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float p = param[i];
        const float g = grad[i] + weight_decay * p;
        const float s = sum_sq[i] + g * g;
        sum_sq[i] = s;
        param[i] = p - lr * g / (sqrtf(s) + eps);
    }
}
ENGINE_EXPORT_KERNEL(adagrad_update_kernel)

extern "C" __global__ void adadelta_update_kernel(float* param, const float* grad, float* square_avg,
                                                  float* acc_delta, float lr, float rho, float eps,
                                                  float weight_decay, i64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float p = param[i];
        const float g = grad[i] + weight_decay * p;
        const float sq = rho * square_avg[i] + (1.0f - rho) * g * g;
        const float acc = acc_delta[i];
        const float delta = sqrtf(acc + eps) / sqrtf(sq + eps) * g;
        square_avg[i] = sq;
        acc_delta[i] = rho * acc + (1.0f - rho) * delta * delta;
        param[i] = p - lr * delta;
    }
}
ENGINE_EXPORT_KERNEL(adadelta_update_kernel)

extern "C" __global__ void weight_penalty_update_kernel(float* param, float* grad, float l1, float l2, float shrink,
                                                        i64 n) {
    GRID_STRIDE_LOOP(i, n) {
        const float p = param[i];
        const float sign = p > 0.0f ? 1.0f : (p < 0.0f ? -1.0f : 0.0f);
        grad[i] = grad[i] + l1 * sign + l2 * p;
        param[i] = p * shrink;
    }
}
ENGINE_EXPORT_KERNEL(weight_penalty_update_kernel)
