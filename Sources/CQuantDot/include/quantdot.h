// Integer dot products of ggml weight blocks (Q4_1, Q4_0, Q8_0; Q4_K, Q5_K, Q6_K) with activations
// quantized to int16 per 32-value block: the decode GEMV behind Kernels' QuantizedLinear.
//
// Why C: the kernel needs vpmaddwd (16-bit multiply, pairwise add into 32-bit lanes). Swift's
// SIMD widening multiplies compile to vpmulld on 32-bit lanes and the fp32 path tops out at
// ~18 GFLOP/s per core here; this file reaches ~39 (BENCHMARKS.md, "Quantized decode GEMV").
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Asks the core to start loading the cache line at `p` (a hint: no fault, no effect on
/// results). Swift has no prefetch; the attention kernels use it on the KV rows they will read
/// next, which lie a row stride apart and which the hardware prefetchers do not run ahead on.
static inline void fs_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }
/// The same into the outer caches only (L2), for lines needed later than the next few hundred
/// cycles, which would crowd L1.
static inline void fs_prefetch_l2(const void *p) { __builtin_prefetch(p, 0, 2); }

/// Quantizes `blocks` blocks of 32 floats: q = round(x / d) with d = max|x| / 32767 per block
/// (`scale[b]`), and `sum[b]` = the exact fp32 sum of the block's x (offset terms use it).
void fs_quantize_i16(const float *x, int blocks, int16_t *q, float *scale, float *sum);

/// y[r] (= or +=, by `accumulate`) for rows [0, rows) of a matrix whose row r starts at
/// `w + r * row_stride` and holds `blocks` ggml blocks of the given type. `q`, `scale`, `sum`
/// come from fs_quantize_i16. Accumulation is exact in int32 within a block and fp32 across blocks.
void fs_gemv_q4_1(const uint8_t *w, size_t row_stride, int rows, int blocks,
                  const int16_t *q, const float *scale, const float *sum, float *y, int accumulate);
void fs_gemv_q4_0(const uint8_t *w, size_t row_stride, int rows, int blocks,
                  const int16_t *q, const float *scale, const float *sum, float *y, int accumulate);
void fs_gemv_q8_0(const uint8_t *w, size_t row_stride, int rows, int blocks,
                  const int16_t *q, const float *scale, const float *sum, float *y, int accumulate);
/// k-quants (256-value super-blocks): `blocks` still counts 32-value activation blocks and must
/// be a multiple of 8.
void fs_gemv_q4_k(const uint8_t *w, size_t row_stride, int rows, int blocks,
                  const int16_t *q, const float *scale, const float *sum, float *y, int accumulate);
void fs_gemv_q5_k(const uint8_t *w, size_t row_stride, int rows, int blocks,
                  const int16_t *q, const float *scale, const float *sum, float *y, int accumulate);
void fs_gemv_q6_k(const uint8_t *w, size_t row_stride, int rows, int blocks,
                  const int16_t *q, const float *scale, const float *sum, float *y, int accumulate);

/// The GEMV for `n` tokens at once: token t's quantized activations at `q + t * blocks * 32`, its
/// scales and sums at `scale + t * blocks`, `sum + t * blocks`, its outputs at `y + t * y_stride`.
/// Each weight block is decoded once per tile of tokens; every output has exactly the bits the
/// GEMV gives that token alone (batch invariance).
void fs_gemm_q4_1(const uint8_t *w, size_t row_stride, int rows, int blocks, int n, const int16_t *q,
                  const float *scale, const float *sum, float *y, size_t y_stride, int accumulate);
void fs_gemm_q4_0(const uint8_t *w, size_t row_stride, int rows, int blocks, int n, const int16_t *q,
                  const float *scale, const float *sum, float *y, size_t y_stride, int accumulate);
void fs_gemm_q8_0(const uint8_t *w, size_t row_stride, int rows, int blocks, int n, const int16_t *q,
                  const float *scale, const float *sum, float *y, size_t y_stride, int accumulate);

#ifdef __cplusplus
}
#endif
