/* The strict low-precision accumulator of lampc/numerics/accumulate.py, as a C kernel.

   Same arithmetic, same order, same bits as the eager reference (`lp_matmul(..., impl="eager")`):

       acc = +0;  for k = 0 .. K-1:  acc = RN(fl32(acc + fl32(a[m,k] * b[k,n])))

   The product and the sum are separate float32 operations: this file must be compiled with
   -ffp-contract=off (no FMA contraction) and without -ffast-math (lampc/kernels/cpu_build.py does).
   RN is the rounding of lampc/numerics/rounding.py on the int32 pattern of the accumulator:

       FP32 exponent range (m1..m22, bf16, tf32):   bits = (bits + ((bits >> d) & 1) + 2^(d-1) - 1) & ~(2^d - 1)
       own exponent range (fp16, fp8_*):             round_full() below, the same steps as _round_full_format_bits

   Layout: one task computes out[batch][m0:m1, n0:n1] (lampc/kernels/cpu.py splits the work). The columns of b it needs are packed once into
   panels of NR contiguous floats per k, so the inner loop reads two vectors of b and broadcasts one a[m,k] per
   row; MR rows x NR columns of accumulators stay in registers for the whole K loop. GCC's vector extensions lower
   the 16-lane vectors to whatever the build machine has (one AVX-512 register, two AVX2, four SSE).
   Blocked (block_k = b > 1): per block of b terms in order, S = fl32(... fl32(+0 + p_1) ... + p_b) in a second set
   of registers, then acc = RN(fl32(acc + S)) (BLOCKED_BODY, MR_BLOCKED rows so both sets stay in registers).
*/

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
#define NV 2               /* vectors of accumulators per row */
#define NR (LANES * NV)    /* columns per panel */
#define MR 6               /* rows per register block */
#define MR_BLOCKED 4       /* rows per register block of the blocked accumulator (two sets of registers) */

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef uint32_t vu __attribute__((vector_size(4 * LANES)));
typedef int32_t vs __attribute__((vector_size(4 * LANES)));

/* How the accumulator is rounded: mode 0 = to nearest, FP32 exponent range (d dropped bits); mode 1 = to nearest,
   own exponent range; mode 2 = toward zero, FP32 exponent range (the d low bits cleared: truncation). */
typedef struct {
    int32_t mode;
    int32_t dropped;          /* 23 - m */
    int32_t min_normal_exp;   /* emin + 127: the smallest normal biased exponent of the format */
    uint32_t overflow_bits;   /* pattern of the overflow threshold */
    uint32_t overflow_value;  /* pattern an overflowing magnitude becomes (inf, or the quiet NaN) */
} rounding_t;

#define SIGN_BIT 0x80000000u
#define ABS_MASK 0x7FFFFFFFu
#define INF_BITS 0x7F800000u
#define QUIET_NAN_BITS 0x7FC00000u

static inline vf round_fp32_range(vf x, int d, vu half_minus_one, vu keep_mask) {
    vu bits = (vu)x;
    vu lsb = (bits >> d) & 1u;
    bits = (bits + lsb + half_minus_one) & keep_mask;
    return (vf)bits;
}

static inline vs select_where(vs mask, vs yes, vs no) { return (yes & mask) | (no & ~mask); }

static inline vf round_full(vf x, const rounding_t *r) {
    const vs zero = {0};
    vu bits = (vu)x;
    vu sign = bits & SIGN_BIT;
    vs magnitude = (vs)(bits & ABS_MASK);
    vs biased_exp = magnitude >> 23;
    biased_exp = select_where(biased_exp < 1, zero + 1, biased_exp);   /* FP32 subnormals scale like E = 1 */
    vs base = (biased_exp - 1) << 23;
    vs sig = magnitude - base;                                          /* < 2^24 */
    vs below = r->min_normal_exp - biased_exp;                          /* extra bits below the normal range */
    below = select_where(below < 0, zero, below);
    vs dropped = r->dropped + below;
    dropped = select_where(dropped > 25, zero + 25, dropped);
    vs lsb = (sig >> dropped) & 1;
    vs rounded_sig = ((sig + ((zero + 1) << (dropped - 1)) - 1 + lsb) >> dropped) << dropped;
    /* a carry bumps the exponent; unsigned: for a NaN input base + rounded_sig passes 2^31 (then replaced below) */
    vs rounded = select_where(rounded_sig == 0, zero, (vs)((vu)base + (vu)rounded_sig));
    rounded = select_where(magnitude >= zero + (int32_t)r->overflow_bits, zero + (int32_t)r->overflow_value, rounded);
    rounded = select_where(magnitude > zero + (int32_t)INF_BITS, zero + (int32_t)QUIET_NAN_BITS, rounded);
    return (vf)((vu)rounded | sign);
}

/* What happens to the accumulator before it is stored: nothing (lp_matmul), or the producer's output
   y = RN(fl32(fl32(acc * scale) + bias[n])) as round_to computes it (lp_product; NaN becomes the quiet NaN). */
typedef struct {
    int32_t apply;
    int32_t has_scale;
    float scale;
    const float *bias;   /* N floats, or NULL */
} epilogue_t;

static inline vf epilogue(vf acc, const epilogue_t *e, vf bias, const rounding_t *r) {
    vf y = e->has_scale ? acc * e->scale : acc;
    if (e->bias != NULL) y = y + bias;
    if (r->mode == 1) return round_full(y, r);
    const int d = r->dropped;
    const vu half_minus_one = (vu){0} + (d > 0 ? (1u << (d - 1)) - 1u : 0u);
    const vu keep_mask = (vu){0} + (uint32_t)(~((1u << d) - 1u));
    vs is_nan = y != y;
    vs rounded = (vs)round_fp32_range(y, d, half_minus_one, keep_mask);
    return (vf)select_where(is_nan, (vs){0} + (int32_t)QUIET_NAN_BITS, rounded);
}

/* NaN inputs become the payload-free quiet NaN, so every NaN the arithmetic makes is one that the integer
   rounding keeps a NaN (the reference does the same to its operands: accumulate_reference.py `canonical_nans`). */
static inline float canonical_nan(float x) {
    if (x == x) return x;
    const uint32_t quiet = QUIET_NAN_BITS;
    float out;
    memcpy(&out, &quiet, sizeof out);
    return out;
}

/* The ROWS x NR accumulators of a register block, at +0; and their store (through the epilogue) into out_rows. */
#define ACCUMULATORS(ROWS)                                                                 \
    vf acc[ROWS][NV];                                                                      \
    for (int i = 0; i < ROWS; ++i)                                                         \
        for (int v = 0; v < NV; ++v) acc[i][v] = (vf){0}

#define STORE(ROWS)                                                                        \
    for (int i = 0; i < ROWS; ++i) {                                                       \
        float row[NR];                                                                     \
        if (e->apply)                                                                      \
            for (int v = 0; v < NV; ++v) acc[i][v] = epilogue(acc[i][v], e, bias_panel[v], r); \
        memcpy(row, acc[i], sizeof row);                                                   \
        float *dst = out_rows[i];                                                          \
        for (int j = 0; j < cols; ++j) dst[j] = row[j];                                    \
    }

/* Where rows [m0, m0 + ROWS) of a and of out start. */
#define ROW_POINTERS(ROWS)                                                                 \
    const float *a_rows[ROWS];                                                             \
    float *out_rows[ROWS];                                                                 \
    for (int i = 0; i < ROWS; ++i) {                                                       \
        a_rows[i] = a + (m0 + i) * sa_m;                                                   \
        out_rows[i] = out + (m0 + i) * so_m;                                               \
    }

/* One register block: rows [m0, m0 + rows) x the NR columns of `panel` (K x NR floats). rows <= MR. */
#define BLOCK_BODY(ROWS, ROUND)                                                            \
    do {                                                                                   \
        ACCUMULATORS(ROWS);                                                                \
        for (int64_t k = 0; k < K; ++k) {                                                  \
            vf bk[NV];                                                                     \
            memcpy(bk, panel + k * NR, sizeof bk);                                         \
            for (int i = 0; i < ROWS; ++i) {                                               \
                const float ak = canonical_nan(a_rows[i][k * sa_k]);                       \
                for (int v = 0; v < NV; ++v) {                                             \
                    vf product = ak * bk[v];                                               \
                    vf sum = acc[i][v] + product;                                          \
                    acc[i][v] = ROUND(sum);                                                \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        STORE(ROWS);                                                                       \
    } while (0)

/* The blocked accumulator over rows [m0, m0 + ROWS): sequential FP32 block sums, one rounding per block. */
#define BLOCKED_BODY(ROWS, ROUND)                                                          \
    do {                                                                                   \
        ACCUMULATORS(ROWS);                                                                \
        for (int64_t k0 = 0; k0 < K; k0 += block_k) {                                      \
            const int64_t k1 = k0 + block_k < K ? k0 + block_k : K;                        \
            vf sum[ROWS][NV];                                                              \
            for (int i = 0; i < ROWS; ++i)                                                 \
                for (int v = 0; v < NV; ++v) sum[i][v] = (vf){0};                          \
            for (int64_t k = k0; k < k1; ++k) {                                            \
                vf bk[NV];                                                                 \
                memcpy(bk, panel + k * NR, sizeof bk);                                     \
                for (int i = 0; i < ROWS; ++i) {                                           \
                    const float ak = canonical_nan(a_rows[i][k * sa_k]);                   \
                    for (int v = 0; v < NV; ++v) {                                         \
                        vf product = ak * bk[v];                                           \
                        sum[i][v] = sum[i][v] + product;                                   \
                    }                                                                      \
                }                                                                          \
            }                                                                              \
            for (int i = 0; i < ROWS; ++i)                                                 \
                for (int v = 0; v < NV; ++v) acc[i][v] = ROUND(acc[i][v] + sum[i][v]);    \
        }                                                                                  \
        STORE(ROWS);                                                                       \
    } while (0)

#define ROUND_RANGE(s) round_fp32_range((s), d, half_minus_one, keep_mask)
#define ROUND_ZERO(s) ((vf)((vu)(s) & keep_mask))
#define ROUND_FULL(s) round_full((s), r)

/* Lanes outside the format's normal range (subnormal, overflowing, inf, NaN; zero counts as inside): there
   round_full is needed. Inside it, round_full drops exactly `dropped` bits, as round_fp32_range does. */
static inline vs outside_normal(vf x, uint32_t min_normal_bits, uint32_t span) {
    vu magnitude = (vu)x & ABS_MASK;
    vs inside = ((magnitude - min_normal_bits) < span) | (magnitude == 0);
    return ~inside;
}

static inline int any_lane(vs mask) {
    int32_t any = 0;
    for (int l = 0; l < LANES; ++l) any |= mask[l];
    return any != 0;
}

/* BLOCK_BODY for a format with its own exponent range: per k step, the cheap rounding for the whole block
   unless one of its sums left the normal range, then round_full for the block (same bits either way). */
#define FULL_BLOCK_BODY(ROWS)                                                              \
    do {                                                                                   \
        ACCUMULATORS(ROWS);                                                                \
        for (int64_t k = 0; k < K; ++k) {                                                  \
            vf bk[NV], sum[ROWS][NV];                                                      \
            vs outside = {0};                                                              \
            memcpy(bk, panel + k * NR, sizeof bk);                                         \
            for (int i = 0; i < ROWS; ++i) {                                               \
                const float ak = canonical_nan(a_rows[i][k * sa_k]);                       \
                for (int v = 0; v < NV; ++v) {                                             \
                    vf product = ak * bk[v];                                               \
                    sum[i][v] = acc[i][v] + product;                                       \
                    outside |= outside_normal(sum[i][v], min_normal_bits, span);           \
                }                                                                          \
            }                                                                              \
            if (any_lane(outside)) {                                                       \
                for (int i = 0; i < ROWS; ++i)                                             \
                    for (int v = 0; v < NV; ++v) acc[i][v] = ROUND_FULL(sum[i][v]);        \
            } else {                                                                       \
                for (int i = 0; i < ROWS; ++i)                                             \
                    for (int v = 0; v < NV; ++v) acc[i][v] = ROUND_RANGE(sum[i][v]);       \
            }                                                                              \
        }                                                                                  \
        STORE(ROWS);                                                                       \
    } while (0)

static void panel_rows(const float *a, int64_t sa_m, int64_t sa_k, const float *panel, float *out, int64_t so_m,
                       int64_t M, int64_t K, int64_t block_k, int cols, const rounding_t *r,
                       const epilogue_t *e, const float *bias_columns) {
    vf bias_panel[NV];
    {
        float padded[NR] = {0};
        if (e->bias != NULL)
            for (int j = 0; j < cols; ++j) padded[j] = bias_columns[j];
        memcpy(bias_panel, padded, sizeof bias_panel);
    }
    const int d = r->dropped;
    const vu half_minus_one = (vu){0} + (d > 0 ? (1u << (d - 1)) - 1u : 0u);
    const vu keep_mask = (vu){0} + (uint32_t)(~((1u << d) - 1u));
    const uint32_t min_normal_bits = (uint32_t)r->min_normal_exp << 23;
    const uint32_t span = r->overflow_bits - min_normal_bits;
    int64_t m0 = 0;
    if (block_k > 1) {
        for (; m0 + MR_BLOCKED <= M; m0 += MR_BLOCKED) {
            ROW_POINTERS(MR_BLOCKED);
            if (r->mode == 0) BLOCKED_BODY(MR_BLOCKED, ROUND_RANGE);
            else if (r->mode == 2) BLOCKED_BODY(MR_BLOCKED, ROUND_ZERO);
            else BLOCKED_BODY(MR_BLOCKED, ROUND_FULL);
        }
        for (; m0 < M; ++m0) {
            ROW_POINTERS(1);
            if (r->mode == 0) BLOCKED_BODY(1, ROUND_RANGE);
            else if (r->mode == 2) BLOCKED_BODY(1, ROUND_ZERO);
            else BLOCKED_BODY(1, ROUND_FULL);
        }
        return;
    }
    for (; m0 + MR <= M; m0 += MR) {
        ROW_POINTERS(MR);
        if (r->mode == 0) BLOCK_BODY(MR, ROUND_RANGE);
        else if (r->mode == 2) BLOCK_BODY(MR, ROUND_ZERO);
        else FULL_BLOCK_BODY(MR);
    }
    for (; m0 < M; ++m0) {
        ROW_POINTERS(1);
        if (r->mode == 0) BLOCK_BODY(1, ROUND_RANGE);
        else if (r->mode == 2) BLOCK_BODY(1, ROUND_ZERO);
        else FULL_BLOCK_BODY(1);
    }
}

/* out[:, n0:n1] = low-precision a @ b (strict, or blocked for block_k > 1) for one matrix of the batch, then the
   epilogue e.
   a: M x K with strides (sa_m, sa_k); b: K x N with strides (sb_k, sb_n); out: M x N with row stride so_m. */
int lp_strict_columns(const float *a, int64_t sa_m, int64_t sa_k, const float *b, int64_t sb_k, int64_t sb_n,
                       float *out, int64_t so_m, int64_t M, int64_t K, int64_t block_k, int64_t n0,
                       int64_t n1, const rounding_t *r, const epilogue_t *e) {
    float *panel = aligned_alloc(64, (size_t)(K > 0 ? K : 1) * NR * sizeof(float));  /* a multiple of 64 bytes */
    if (panel == NULL) return -1;  /* the caller raises MemoryError: out is not written */
    for (int64_t p0 = n0; p0 < n1; p0 += NR) {
        const int cols = (int)(n1 - p0 < NR ? n1 - p0 : NR);
        for (int64_t k = 0; k < K; ++k) {
            const float *src = b + k * sb_k + p0 * sb_n;
            float *dst = panel + k * NR;
            int j = 0;
            for (; j < cols; ++j) dst[j] = canonical_nan(src[j * sb_n]);
            for (; j < NR; ++j) dst[j] = 0.0f;
        }
        panel_rows(a, sa_m, sa_k, panel, out + p0, so_m, M, K, block_k, cols, r, e,
                   e->bias != NULL ? e->bias + p0 : NULL);
    }
    free(panel);
    return 0;
}
