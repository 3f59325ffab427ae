// Declarations of the C++ kernels that bindings.cpp exposes, one block per op family.
// Each takes raw pointers, plain sizes and the thread count; Python validated the rest.
#pragma once

#include "common.hpp"

namespace fastcnn {

// activation.cpp (T = float or double; flat arrays of n elements). Arrays of at most one
// chunk run on the calling thread: starting the pool costs more than the work.
constexpr index_t ELEMENTWISE_CHUNK = index_t(1) << 16;
template <typename T> void relu(const T *x, T *y, index_t n, int threads);
template <typename T>
void relu_backward(const T *grad_y, const T *x, T *grad_x, index_t n, int threads);
template <typename T> void leaky_relu(const T *x, T *y, T slope, index_t n, int threads);
template <typename T>
void leaky_relu_backward(const T *grad_y, const T *x, T *grad_x, T slope, index_t n, int threads);
template <typename T> void sigmoid(const T *x, T *y, index_t n, int threads);
template <typename T>
void sigmoid_backward(const T *grad_y, const T *y, T *grad_x, index_t n, int threads);
template <typename T> void tanh(const T *x, T *y, index_t n, int threads);
template <typename T>
void tanh_backward(const T *grad_y, const T *y, T *grad_x, index_t n, int threads);
template <typename T>
void dropout(const T *x, const bool *mask, T *y, T scale, index_t n, int threads);

// conv2d.cpp: NCHW, weight (K, C / G, R, S); pad_h / pad_w are the top / left padding, the
// output size P x Q implies the rest. bias may be null.
struct ConvShape {
    index_t N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, dh, dw, G;
};
template <typename T>
void conv2d_direct(const T *x, const T *w, const T *bias, T *y, const ConvShape &g, int threads);
template <typename T>
void conv2d_direct_input_gradient(const T *grad_y, const T *w, T *grad_x, const ConvShape &g,
                                  int threads);
template <typename T>
void conv2d_direct_weight_gradient(const T *grad_y, const T *x, T *grad_w, const ConvShape &g,
                                   int threads);
template <typename T>
void conv2d_im2col(const T *x, const T *w, const T *bias, T *y, const ConvShape &g, int threads);
template <typename T>
void conv2d_im2col_input_gradient(const T *grad_y, const T *w, T *grad_x, const ConvShape &g,
                                  int threads);
template <typename T>
void conv2d_im2col_weight_gradient(const T *grad_y, const T *x, T *grad_w, const ConvShape &g,
                                   int threads);
// small_channels.cpp: few channels per group; the input gradient of stride 1 only.
template <typename T>
void conv2d_small_channels(const T *x, const T *w, const T *bias, T *y, const ConvShape &g,
                           int threads);
template <typename T>
void conv2d_small_channels_input_gradient(const T *grad_y, const T *w, T *grad_x,
                                          const ConvShape &g, int threads);
template <typename T>
void conv2d_small_channels_weight_gradient(const T *grad_y, const T *x, T *grad_w,
                                           const ConvShape &g, int threads);
// winograd.cpp: 3x3, stride 1, dilation 1 only (cpp.py's CONV2D_TAKES); no weight gradient.
// Up to WINOGRAD_FEW_TILES 4x4 output tiles (N ceil(P / 4) ceil(Q / 4)), each task transforms
// the part of the filter it uses instead of reading one transform stored for the call.
constexpr index_t WINOGRAD_FEW_TILES = 64;
template <typename T>
void conv2d_winograd(const T *x, const T *w, const T *bias, T *y, const ConvShape &g,
                     int threads);
template <typename T>
void conv2d_winograd_input_gradient(const T *grad_y, const T *w, T *grad_x, const ConvShape &g,
                                    int threads);
template <typename T>
void conv2d_bias_gradient(const T *grad_y, T *grad_bias, const ConvShape &g, int threads);
// pool2d.cpp (T = float or double; NCHW planes, y of P x Q per plane; indices: int64 flat
// positions in the H x W plane, -1 for a window wholly in the padding). Pieces of about
// POOL_CHUNK input elements (whole planes) run on one thread: small inputs start no pool.
constexpr index_t POOL_CHUNK = index_t(1) << 15;
// The 2x2 pools with indices take rows of fewer outputs than this a chunk across rows.
constexpr index_t POOL_SHORT_ROW = 16;
struct PoolGeometry {
    index_t planes, H, W, P, Q, R, S, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};
template <typename T> void max_pool2d(const T *x, T *y, const PoolGeometry &g, int threads);
template <typename T>
void max_pool2d_indices(const T *x, T *y, std::int64_t *indices, const PoolGeometry &g,
                        int threads);
// The 2x2 / 2 pool with no padding or dilation and every window inside x.
template <typename T> void max_pool2d_2x2(const T *x, T *y, const PoolGeometry &g, int threads);
template <typename T>
void max_pool2d_2x2_indices(const T *x, T *y, std::int64_t *indices, const PoolGeometry &g,
                            int threads);
template <typename T>
void max_pool2d_backward(const T *grad_y, const T *x, T *grad_x, const PoolGeometry &g,
                         int threads);
template <typename T>
void max_pool2d_backward_2x2(const T *grad_y, const T *x, T *grad_x, const PoolGeometry &g,
                             int threads);
template <typename T>
void max_pool2d_backward_indices(const T *grad_y, const std::int64_t *indices, T *grad_x,
                                 const PoolGeometry &g, int threads);
// divisor_override 0: none.
template <typename T>
void avg_pool2d(const T *x, T *y, const PoolGeometry &g, bool count_include_pad,
                index_t divisor_override, int threads);
template <typename T>
void avg_pool2d_backward(const T *grad_y, T *grad_x, const PoolGeometry &g,
                         bool count_include_pad, index_t divisor_override, int threads);
// The 2x2 / 2 average with every window inside x (each divisor 4, or the override).
template <typename T>
void avg_pool2d_2x2(const T *x, T *y, const PoolGeometry &g, index_t divisor_override,
                    int threads);
template <typename T>
void avg_pool2d_backward_2x2(const T *grad_y, T *grad_x, const PoolGeometry &g,
                             index_t divisor_override, int threads);
// softmax.cpp (T = float or double; (rows, classes) arrays reduced along their rows; labels
// int64 in [0, classes), -1 for a row ignored; one loss per row). Inputs of at most one
// block run on the calling thread; larger ones in blocks of whole rows of about this many
// elements.
constexpr index_t SOFTMAX_BLOCK = index_t(1) << 15;
template <typename T> void softmax(const T *x, T *y, index_t rows, index_t classes, int threads);
template <typename T>
void log_softmax(const T *x, T *y, index_t rows, index_t classes, int threads);
template <typename T>
void cross_entropy(const T *logits, const std::int64_t *labels, const T *weight,
                   double smoothing, T *losses, index_t rows, index_t classes, int threads);
template <typename T>
void cross_entropy_backward(const T *logits, const std::int64_t *labels, const T *weight,
                            double smoothing, const T *row_scale, T *grad_logits, index_t rows,
                            index_t classes, int threads);
template <typename T>
void soft_cross_entropy(const T *logits, const T *targets, T *losses, index_t rows,
                        index_t classes, int threads);
template <typename T>
void soft_cross_entropy_backward(const T *logits, const T *targets, const T *row_scale,
                                 T *grad_logits, index_t rows, index_t classes, int threads);

// linear.cpp (T = float or double; x (rows, in), weight (out, in), y and grad_y (rows, out);
// bias, grad_x and grad_bias may be nullptr). Products of fewer FLOPs (2 rows in out) than
// LINEAR_THREADED_FLOPS run on one thread (Python passes 1); the bias gradient sums columns
// in chunks of COLUMN_SUM_CHUNK.
constexpr index_t LINEAR_THREADED_FLOPS = index_t(1) << 21;
constexpr index_t COLUMN_SUM_CHUNK = 256;
template <typename T>
void linear(const T *x, const T *weight, const T *bias, T *y, index_t rows, index_t in_features,
            index_t out_features, int threads);
template <typename T>
void linear_backward(const T *grad_y, const T *x, const T *weight, T *grad_x, T *grad_weight,
                     T *grad_bias, index_t rows, index_t in_features, index_t out_features,
                     int threads);

// batch_norm.cpp (T = float or double; x, grad_y, y, grad_x (N, C, L) flat; the statistics
// and per-channel terms double arrays of C; sums (C, 4): sum d, d^2, g, g d, d = x - shift).
// Pieces of about BATCH_NORM_PIECE elements run on one thread.
constexpr index_t BATCH_NORM_PIECE = index_t(1) << 15;
template <typename T>
void batch_norm_statistics(const T *x, double *mean, double *var, index_t N, index_t C,
                           index_t L, int threads);
template <typename T>
void batch_norm_normalize(const T *x, const double *mean, const double *scale,
                          const double *shift, T *y, index_t N, index_t C, index_t L,
                          int threads);
template <typename T>
void batch_norm_gradient_sums(const T *grad_y, const T *x, const double *shift, double *sums,
                              index_t N, index_t C, index_t L, int threads);
template <typename T>
void batch_norm_input_gradient(const T *grad_y, const T *x, const double *mean,
                               const double *scale, const double *constant, const double *slope,
                               T *grad_x, index_t N, index_t C, index_t L, int threads);

}  // namespace fastcnn
