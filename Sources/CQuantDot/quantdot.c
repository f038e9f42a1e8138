// See include/quantdot.h. Block layouts (ggml): Q4_1 = f16 d, f16 m, 16 bytes of nibbles (low
// nibble: value j, high nibble: value j + 16), w = d*q + m; Q4_0 = f16 d, 16 bytes, w = d*(q - 8);
// Q8_0 = f16 d, 32 int8, w = d*q.
// With x ≈ dx*qx (int16), a block contributes d*dx*Σ q*qx (+ m*Σx for Q4_1, - 8d*Σx for Q4_0).
#include "quantdot.h"

#include <math.h>
#include <string.h>

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  // subnormal: renormalise
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t load_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

static void quantize_i16_scalar(const float *x, int blocks, int16_t *q, float *scale, float *sum) {
    for (int b = 0; b < blocks; b++) {
        const float *xb = x + 32 * b;
        float amax = 0, s = 0;
        for (int j = 0; j < 32; j++) { float a = fabsf(xb[j]); amax = a > amax ? a : amax; s += xb[j]; }
        float d = amax / 32767.0f, id = d > 0 ? 1.0f / d : 0.0f;
        for (int j = 0; j < 32; j++) q[32 * b + j] = (int16_t)lrintf(xb[j] * id);
        scale[b] = d;
        sum[b] = s;
    }
}

// ---- portable reference (any CPU) ----

enum kind { Q4_1, Q4_0, Q8_0, Q4_K, Q5_K, Q6_K };

static float row_scalar(enum kind k, const uint8_t *row, int blocks, const int16_t *q, const float *scale, const float *sum) {
    float acc = 0;
    for (int b = 0; b < blocks; b++) {
        const int16_t *qx = q + 32 * b;
        int32_t s = 0;
        float d, off = 0;
        if (k == Q8_0) {
            const uint8_t *p = row + 34 * b;
            d = half_to_float(load_u16(p));
            for (int j = 0; j < 32; j++) s += (int32_t)(int8_t)p[2 + j] * qx[j];
        } else {
            const uint8_t *p = row + (k == Q4_1 ? 20 : 18) * b;
            d = half_to_float(load_u16(p));
            const uint8_t *n = p + (k == Q4_1 ? 4 : 2);
            for (int j = 0; j < 16; j++) s += (int32_t)(n[j] & 0x0F) * qx[j] + (int32_t)(n[j] >> 4) * qx[j + 16];
            off = k == Q4_1 ? half_to_float(load_u16(p + 2)) * sum[b] : k == Q4_0 ? -8.0f * d * sum[b] : 0.0f;
        }
        acc += d * scale[b] * (float)s + off;
    }
    return acc;
}

// ---- k-quants (256-value super-blocks; ggml's dequantize_row_q{4,5,6}_K) ----
// Q4_K (144 bytes): f16 d, f16 dmin, 12 bytes of 6-bit scales/mins for 8 sub-blocks of 32,
// 128 bytes of nibbles (64-value chunk c: low nibbles = sub-block 2c, high = 2c+1);
// w = d*sc*q - dmin*m. Q5_K (176): as Q4_K plus qh[32] (bit j of qh[l] = 5th bit of value l
// of sub-block j) before the nibbles. Q6_K (210): ql[128], qh[64], int8 scales[16] (one per 16
// values), f16 d; w = d*sc*(q - 32). A sub-block of 32 (or two of 16) meets one activation
// block, so the int32 dot stays exact and the scales apply per sub-block.

static inline void scale_min_k4(int j, const uint8_t *q, int *d, int *m) {
    if (j < 4) { *d = q[j] & 63; *m = q[j + 4] & 63; }
    else { *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4); *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
}

// One row of `blocks` 32-value activation blocks (blocks/8 super-blocks).
static float row_k_scalar(enum kind k, const uint8_t *row, int blocks, const int16_t *q, const float *scale, const float *sum) {
    float acc = 0;
    for (int sb = 0; sb < blocks / 8; sb++) {
        if (k == Q6_K) {
            const uint8_t *p = row + 210 * sb, *ql = p, *qh = p + 128;
            const int8_t *sc = (const int8_t *)(p + 192);
            float d = half_to_float(load_u16(p + 208));
            for (int c = 0; c < 2; c++) {
                for (int g = 0; g < 4; g++) {
                    int b = sb * 8 + 4 * c + g;
                    const int16_t *qx = q + 32 * b;
                    int32_t s0 = 0, s1 = 0;
                    for (int l = 0; l < 32; l++) {
                        int lo = (g & 1) ? ql[64 * c + 32 + l] : ql[64 * c + l];
                        int v = ((g >> 1) ? lo >> 4 : lo & 0xF) | (((qh[32 * c + l] >> (2 * g)) & 3) << 4);
                        if (l < 16) s0 += (v - 32) * qx[l]; else s1 += (v - 32) * qx[l];
                    }
                    acc += d * scale[b] * ((float)sc[8 * c + 2 * g] * (float)s0 + (float)sc[8 * c + 2 * g + 1] * (float)s1);
                }
            }
        } else {
            int five = k == Q5_K;
            const uint8_t *p = row + (five ? 176 : 144) * sb, *scs = p + 4, *qh = p + 16, *qs = p + (five ? 48 : 16);
            float d = half_to_float(load_u16(p)), dmin = half_to_float(load_u16(p + 2));
            for (int j = 0; j < 8; j++) {
                int b = sb * 8 + j, sc, m;
                scale_min_k4(j, scs, &sc, &m);
                const int16_t *qx = q + 32 * b;
                const uint8_t *n = qs + 32 * (j / 2);
                int32_t s = 0;
                for (int l = 0; l < 32; l++) {
                    int v = (n[l] >> (4 * (j & 1))) & 0xF;
                    if (five) v |= ((qh[l] >> j) & 1) << 4;
                    s += v * qx[l];
                }
                acc += d * (float)sc * scale[b] * (float)s - dmin * (float)m * sum[b];
            }
        }
    }
    return acc;
}

static void gemv_scalar(enum kind k, const uint8_t *w, size_t stride, int rows, int blocks,
                        const int16_t *q, const float *scale, const float *sum, float *y, int accumulate) {
    for (int r = 0; r < rows; r++) {
        const uint8_t *row = w + (size_t)r * stride;
        float v = k >= Q4_K ? row_k_scalar(k, row, blocks, q, scale, sum) : row_scalar(k, row, blocks, q, scale, sum);
        y[r] = accumulate ? y[r] + v : v;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static inline float hsum(__m256 a) {
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    t = _mm_add_ss(t, _mm_movehdup_ps(t));
    return _mm_cvtss_f32(t);
}

// The 32 block values of one row as two vectors of 16 int16 (values 0-15 and 16-31).
AVX2 static inline void nibbles(const uint8_t *n, __m256i *lo, __m256i *hi) {
    __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)n));
    *lo = _mm256_and_si256(v, _mm256_set1_epi16(0x0F));
    *hi = _mm256_srli_epi16(v, 4);
}

// One weight block's integer values (two vectors of 16 int16: values 0-15 and 16-31); returns d.
AVX2 static inline float decode_block(enum kind k, const uint8_t *blk, __m256i *lo, __m256i *hi) {
    if (k == Q8_0) {
        *lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 2)));
        *hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 18)));
    } else {
        nibbles(blk + (k == Q4_1 ? 4 : 2), lo, hi);
    }
    return _cvtsh_ss(load_u16(blk));
}

// One block's contribution to a row's eight lanes `a` and offset sum `o`, against one token's
// activations (xl, xh, block scale dx, block sum sx). The only place this arithmetic is written:
// the GEMV and the batched kernel both call it, so a row's result is the same on either.
AVX2 static inline void block_step(enum kind k, const uint8_t *blk, float d, __m256i lo, __m256i hi,
                                   __m256i xl, __m256i xh, float dx, float sx, __m256 *a, float *o) {
    __m256i s = _mm256_add_epi32(_mm256_madd_epi16(lo, xl), _mm256_madd_epi16(hi, xh));
    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d * dx), *a);
    if (k == Q4_1) *o += _cvtsh_ss(load_u16(blk + 2)) * sx;
    if (k == Q4_0) *o -= 8.0f * d * sx;
}

// Four rows at a time share the activation loads; prefetch reaches two row groups ahead (the
// rows a thread reads next are `row_stride` apart, too far for the hardware prefetcher to guess).
// A last group of fewer than four rows repeats its last row (computed, not stored), so every
// row runs the same instructions wherever it falls: its result cannot depend on which rows
// share its call (batch invariance; the scalar code is only for machines without AVX2).
#define GEMV_AVX2(NAME, KIND, BYTES)                                                                      \
AVX2 static void NAME(const uint8_t *w, size_t stride, int rows, int blocks, const int16_t *q,           \
                      const float *scale, const float *sum, float *y, int accumulate) {                  \
    for (int r = 0; r < rows; r += 4) {                                                                   \
        int nr = rows - r < 4 ? rows - r : 4;                                                             \
        const uint8_t *p[4];                                                                              \
        for (int i = 0; i < 4; i++) p[i] = w + (size_t)(r + (i < nr ? i : nr - 1)) * stride;              \
        __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()}; \
        float o[4] = {0, 0, 0, 0};                                                                        \
        for (int b = 0; b < blocks; b++) {                                                                \
            __m256i xl = _mm256_loadu_si256((const __m256i *)(q + 32 * b));                              \
            __m256i xh = _mm256_loadu_si256((const __m256i *)(q + 32 * b + 16));                         \
            float dx = scale[b], sx = sum[b];                                                             \
            for (int i = 0; i < 4; i++) {                                                                 \
                const uint8_t *blk = p[i] + (size_t)b * BYTES;                                            \
                _mm_prefetch((const char *)(blk + 8 * stride), _MM_HINT_T0);                              \
                __m256i lo, hi;                                                                           \
                float d = decode_block(KIND, blk, &lo, &hi);                                              \
                block_step(KIND, blk, d, lo, hi, xl, xh, dx, sx, &a[i], &o[i]);                           \
            }                                                                                             \
        }                                                                                                 \
        for (int i = 0; i < nr; i++) {                                                                    \
            float v = hsum(a[i]) + o[i];                                                                  \
            y[r + i] = accumulate ? y[r + i] + v : v;                                                     \
        }                                                                                                 \
    }                                                                                                     \
}

GEMV_AVX2(gemv_q4_1_avx2, Q4_1, 20)
GEMV_AVX2(gemv_q4_0_avx2, Q4_0, 18)
GEMV_AVX2(gemv_q8_0_avx2, Q8_0, 34)

// Batches: one row at a time against a tile of up to four tokens, so each weight block is
// decoded once per tile. Per row and token this is the GEMV's exact instruction sequence (the
// same int32 dot, the same fma into eight lanes, the same offset sum, the same final hsum), so
// a token's result equals its GEMV result bit for bit. A short tile repeats its last token.
#define GEMM_AVX2(NAME, KIND, BYTES)                                                                      \
AVX2 static void NAME(const uint8_t *w, size_t stride, int rows, int blocks, int n, const int16_t *q,    \
                      const float *scale, const float *sum, float *y, size_t y_stride, int accumulate) {  \
    for (int t0 = 0; t0 < n; t0 += 4) {                                                                   \
        int nt = n - t0 < 4 ? n - t0 : 4;                                                                 \
        int tt[4];                                                                                        \
        for (int j = 0; j < 4; j++) tt[j] = t0 + (j < nt ? j : nt - 1);                                   \
        for (int r = 0; r < rows; r++) {                                                                  \
            const uint8_t *row = w + (size_t)r * stride;                                                  \
            __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()}; \
            float o[4] = {0, 0, 0, 0};                                                                    \
            for (int b = 0; b < blocks; b++) {                                                            \
                const uint8_t *blk = row + (size_t)b * BYTES;                                             \
                _mm_prefetch((const char *)(blk + 4 * stride), _MM_HINT_T0);                              \
                __m256i lo, hi;                                                                           \
                float d = decode_block(KIND, blk, &lo, &hi);                                              \
                for (int j = 0; j < 4; j++) {                                                             \
                    size_t tb = (size_t)tt[j] * blocks + b;                                               \
                    const int16_t *qx = q + 32 * tb;                                                      \
                    __m256i xl = _mm256_loadu_si256((const __m256i *)qx);                                \
                    __m256i xh = _mm256_loadu_si256((const __m256i *)(qx + 16));                         \
                    block_step(KIND, blk, d, lo, hi, xl, xh, scale[tb], sum[tb], &a[j], &o[j]);          \
                }                                                                                         \
            }                                                                                             \
            for (int j = 0; j < nt; j++) {                                                                \
                float v = hsum(a[j]) + o[j];                                                              \
                float *out = y + (size_t)(t0 + j) * y_stride + r;                                         \
                *out = accumulate ? *out + v : v;                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}

GEMM_AVX2(gemm_q4_1_avx2, Q4_1, 20)
GEMM_AVX2(gemm_q4_0_avx2, Q4_0, 18)
GEMM_AVX2(gemm_q8_0_avx2, Q8_0, 34)


// k-quants: two rows at a time share the activation loads; a left-over row is computed twice
// (one result stored), so it runs the same instructions as every other row.
AVX2 static inline __m256i i8_dot(__m256i v8, __m256i xl, __m256i xh) {
    // 32 int8 values (as bytes of v8) against the block's 32 int16 activations.
    __m256i lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v8));
    __m256i hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v8, 1));
    return _mm256_add_epi32(_mm256_madd_epi16(lo, xl), _mm256_madd_epi16(hi, xh));
}

AVX2 static void gemv_q45k_avx2(int five, const uint8_t *w, size_t stride, int rows, int blocks, const int16_t *q,
                                const float *scale, const float *sum, float *y, int accumulate) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const size_t bytes = five ? 176 : 144;
    for (int r = 0; r < rows; r += 2) {
        int nr = rows - r < 2 ? rows - r : 2;
        __m256 a[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        float o[2] = {0, 0};
        for (int sb = 0; sb < blocks / 8; sb++) {
            for (int i = 0; i < 2; i++) {
                const uint8_t *p = w + (size_t)(r + (i < nr ? i : 0)) * stride + (size_t)sb * bytes;
                _mm_prefetch((const char *)(p + 4 * stride), _MM_HINT_T0);
                _mm_prefetch((const char *)(p + 4 * stride + 64), _MM_HINT_T0);
                _mm_prefetch((const char *)(p + 4 * stride + 128), _MM_HINT_T0);
                const uint8_t *scs = p + 4, *qs = p + (five ? 48 : 16);
                float d = _cvtsh_ss(load_u16(p)), dmin = _cvtsh_ss(load_u16(p + 2));
                __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(p + 16)) : _mm256_setzero_si256();
                for (int c = 0; c < 4; c++) {
                    __m256i n = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
                    for (int h = 0; h < 2; h++) {
                        int j = 2 * c + h, b = sb * 8 + j, sc, m;
                        scale_min_k4(j, scs, &sc, &m);
                        __m256i v = h ? _mm256_and_si256(_mm256_srli_epi16(n, 4), m4) : _mm256_and_si256(n, m4);
                        if (five) {
                            v = _mm256_or_si256(v, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
                            qh = _mm256_srli_epi16(qh, 1);  // bit j+1 of every byte moves to bit 0 (masked above)
                        }
                        __m256i xl = _mm256_loadu_si256((const __m256i *)(q + 32 * b));
                        __m256i xh = _mm256_loadu_si256((const __m256i *)(q + 32 * b + 16));
                        a[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i8_dot(v, xl, xh)), _mm256_set1_ps(d * (float)sc * scale[b]), a[i]);
                        o[i] -= dmin * (float)m * sum[b];
                    }
                }
            }
        }
        for (int i = 0; i < nr; i++) {
            float v = hsum(a[i]) + o[i];
            y[r + i] = accumulate ? y[r + i] + v : v;
        }
    }
}

AVX2 static void gemv_q6k_avx2(const uint8_t *w, size_t stride, int rows, int blocks, const int16_t *q,
                               const float *scale, const float *sum, float *y, int accumulate) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
    for (int r = 0; r < rows; r += 2) {
        int nr = rows - r < 2 ? rows - r : 2;
        __m256 a[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int sb = 0; sb < blocks / 8; sb++) {
            for (int i = 0; i < 2; i++) {
                const uint8_t *p = w + (size_t)(r + (i < nr ? i : 0)) * stride + (size_t)sb * 210;
                _mm_prefetch((const char *)(p + 4 * stride), _MM_HINT_T0);
                _mm_prefetch((const char *)(p + 4 * stride + 64), _MM_HINT_T0);
                _mm_prefetch((const char *)(p + 4 * stride + 128), _MM_HINT_T0);
                _mm_prefetch((const char *)(p + 4 * stride + 192), _MM_HINT_T0);
                const int8_t *sc = (const int8_t *)(p + 192);
                float d = _cvtsh_ss(load_u16(p + 208));
                for (int c = 0; c < 2; c++) {
                    __m256i l0 = _mm256_loadu_si256((const __m256i *)(p + 64 * c));
                    __m256i l1 = _mm256_loadu_si256((const __m256i *)(p + 64 * c + 32));
                    __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * c));
                    for (int g = 0; g < 4; g++) {
                        int b = sb * 8 + 4 * c + g;
                        __m256i lo = (g & 1) ? l1 : l0;
                        lo = (g >> 1) ? _mm256_and_si256(_mm256_srli_epi16(lo, 4), m4) : _mm256_and_si256(lo, m4);
                        __m256i hb = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), m2);
                        __m256i v = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hb, 4)), off);
                        __m256i xl = _mm256_loadu_si256((const __m256i *)(q + 32 * b));
                        __m256i xh = _mm256_loadu_si256((const __m256i *)(q + 32 * b + 16));
                        // Values 0-15 and 16-31 of the block have their own scales.
                        __m256i s0 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)), xl);
                        __m256i s1 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)), xh);
                        float f = d * scale[b];
                        a[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_set1_ps(f * (float)sc[8 * c + 2 * g]), a[i]);
                        a[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), _mm256_set1_ps(f * (float)sc[8 * c + 2 * g + 1]), a[i]);
                    }
                }
            }
        }
        for (int i = 0; i < nr; i++) {
            float v = hsum(a[i]);
            y[r + i] = accumulate ? y[r + i] + v : v;
        }
    }
}
AVX2 static void gemv_q4k_avx2(const uint8_t *w, size_t stride, int rows, int blocks, const int16_t *q,
                               const float *scale, const float *sum, float *y, int accumulate) {
    gemv_q45k_avx2(0, w, stride, rows, blocks, q, scale, sum, y, accumulate);
}
AVX2 static void gemv_q5k_avx2(const uint8_t *w, size_t stride, int rows, int blocks, const int16_t *q,
                               const float *scale, const float *sum, float *y, int accumulate) {
    gemv_q45k_avx2(1, w, stride, rows, blocks, q, scale, sum, y, accumulate);
}

static int has_avx2(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
// The same q and scale as the scalar version (a maximum is exact in any order); the block sum
// is added in another fixed order, so it can differ from the scalar one in the last bit.
AVX2 static void quantize_i16_avx2(const float *x, int blocks, int16_t *q, float *scale, float *sum) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (int b = 0; b < blocks; b++) {
        const float *xb = x + 32 * b;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8), v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, absmask), _mm256_and_ps(v1, absmask)),
                                 _mm256_max_ps(_mm256_and_ps(v2, absmask), _mm256_and_ps(v3, absmask)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float d = amax / 32767.0f, id = d > 0 ? 1.0f / d : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        // Round to nearest even, as lrintf in the default rounding mode.
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
        // packs works within 128-bit lanes; the permute restores element order.
        __m256i p01 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xD8);
        __m256i p23 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i2, i3), 0xD8);
        _mm256_storeu_si256((__m256i *)(q + 32 * b), p01);
        _mm256_storeu_si256((__m256i *)(q + 32 * b + 16), p23);
        scale[b] = d;
        sum[b] = hsum(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
    }
}

void fs_quantize_i16(const float *x, int blocks, int16_t *q, float *scale, float *sum) {
    if (has_avx2()) quantize_i16_avx2(x, blocks, q, scale, sum);
    else quantize_i16_scalar(x, blocks, q, scale, sum);
}

#define DISPATCH(AVX, KIND) \
    if (has_avx2()) { AVX(w, stride, rows, blocks, q, scale, sum, y, accumulate); return; } \
    gemv_scalar(KIND, w, stride, rows, blocks, q, scale, sum, y, accumulate);
#else
void fs_quantize_i16(const float *x, int blocks, int16_t *q, float *scale, float *sum) {
    quantize_i16_scalar(x, blocks, q, scale, sum);
}
#define DISPATCH(AVX, KIND) gemv_scalar(KIND, w, stride, rows, blocks, q, scale, sum, y, accumulate);
#endif

void fs_gemv_q4_1(const uint8_t *w, size_t stride, int rows, int blocks, const int16_t *q, const float *scale,
                  const float *sum, float *y, int accumulate) { DISPATCH(gemv_q4_1_avx2, Q4_1) }
void fs_gemv_q4_0(const uint8_t *w, size_t stride, int rows, int blocks, const int16_t *q, const float *scale,
                  const float *sum, float *y, int accumulate) { DISPATCH(gemv_q4_0_avx2, Q4_0) }
void fs_gemv_q8_0(const uint8_t *w, size_t stride, int rows, int blocks, const int16_t *q, const float *scale,
                  const float *sum, float *y, int accumulate) { DISPATCH(gemv_q8_0_avx2, Q8_0) }
void fs_gemv_q4_k(const uint8_t *w, size_t stride, int rows, int blocks, const int16_t *q, const float *scale,
                  const float *sum, float *y, int accumulate) { DISPATCH(gemv_q4k_avx2, Q4_K) }
void fs_gemv_q5_k(const uint8_t *w, size_t stride, int rows, int blocks, const int16_t *q, const float *scale,
                  const float *sum, float *y, int accumulate) { DISPATCH(gemv_q5k_avx2, Q5_K) }
void fs_gemv_q6_k(const uint8_t *w, size_t stride, int rows, int blocks, const int16_t *q, const float *scale,
                  const float *sum, float *y, int accumulate) { DISPATCH(gemv_q6k_avx2, Q6_K) }

// Batched form: token t's activations at q + t * blocks * 32, scale/sum + t * blocks; its outputs
// at y + t * y_stride. Without AVX2, the GEMV token after token (the same arithmetic as n = 1).
static void gemm_by_gemv(void (*gemv)(const uint8_t *, size_t, int, int, const int16_t *, const float *, const float *, float *, int),
                         const uint8_t *w, size_t stride, int rows, int blocks, int n, const int16_t *q,
                         const float *scale, const float *sum, float *y, size_t y_stride, int accumulate) {
    for (int t = 0; t < n; t++)
        gemv(w, stride, rows, blocks, q + (size_t)t * blocks * 32, scale + (size_t)t * blocks, sum + (size_t)t * blocks,
             y + (size_t)t * y_stride, accumulate);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GEMM_DISPATCH(AVX, GEMV) \
    if (has_avx2()) { AVX(w, stride, rows, blocks, n, q, scale, sum, y, y_stride, accumulate); return; } \
    gemm_by_gemv(GEMV, w, stride, rows, blocks, n, q, scale, sum, y, y_stride, accumulate);
#else
#define GEMM_DISPATCH(AVX, GEMV) gemm_by_gemv(GEMV, w, stride, rows, blocks, n, q, scale, sum, y, y_stride, accumulate);
#endif

void fs_gemm_q4_1(const uint8_t *w, size_t stride, int rows, int blocks, int n, const int16_t *q, const float *scale,
                  const float *sum, float *y, size_t y_stride, int accumulate) { GEMM_DISPATCH(gemm_q4_1_avx2, fs_gemv_q4_1) }
void fs_gemm_q4_0(const uint8_t *w, size_t stride, int rows, int blocks, int n, const int16_t *q, const float *scale,
                  const float *sum, float *y, size_t y_stride, int accumulate) { GEMM_DISPATCH(gemm_q4_0_avx2, fs_gemv_q4_0) }
void fs_gemm_q8_0(const uint8_t *w, size_t stride, int rows, int blocks, int n, const int16_t *q, const float *scale,
                  const float *sum, float *y, size_t y_stride, int accumulate) { GEMM_DISPATCH(gemm_q8_0_avx2, fs_gemv_q8_0) }
