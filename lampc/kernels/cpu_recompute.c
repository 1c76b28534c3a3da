/* The sparse FP32 recompute of lampc/lookahead/recompute.py, as a C kernel: FP32 dot products at a few selected
   positions of a product, read in place through the operands' strides, written into the output in place.

       out (…, T, L) ≈ (q (…, T, D) @ k (…, D, L)) * scale (+ bias[L]),  at the flat positions `flat` of out

   Summation order (fixed, and the same for every stride, thread count and vector width):

       lane[j]   = sum over d = j, j + 16, j + 32, ... < D of fl32(q[d] * k[d]), in increasing d   (j = 0..15)
       s         = the lanes summed pairwise: lane[j] += lane[j + w] for w = 8, 4, 2, 1; s = lane[0]
       out[p]    = fl32(s * scale), then fl32(out[p] + bias[key]) when there is a bias

   Every lane starts at +0 and products and sums are separate FP32 operations: this file must be compiled with
   -ffp-contract=off and without -ffast-math (lampc/kernels/cpu_build.py does). A lane that holds no term of a
   short last block adds fl32(0 * 0) = +0, which changes no sum (a lane is never -0: it starts at +0), so the
   ragged end needs no case of its own. The recompute's contract is "the FP32 dot product of the same vectors, up
   to FP32 summation order": this order is one of them, 16 independent chains instead of one, so it vectorises
   (one AVX-512 register, two AVX2, four SSE), and its error bound is no worse than a sequential sum's (a term
   meets ceil(D / 16) + 4 additions, not up to D).

   Batch dimensions: the output's batch index of p is unravelled and each operand's position is the dot product of
   that index with the operand's batch strides (0 where it broadcasts or lacks the dimension: GQA expanded views,
   a weight shared by all rows). No operand is gathered or copied; the operands of the entry AHEAD places on are
   prefetched, since the selected columns are scattered (SmolLM2's lm_head, 113 MB of FP32 weight, out of cache:
   2-2.5x faster).

   `true_count` / `true_positions` are the scan `mask.reshape(-1).nonzero()` (flat positions in increasing
   order) over a contiguous bool mask, one 8-byte word at a time: words with no true byte (nearly all, at a
   recompute rate of 1%) cost one test.
*/

#include <stdint.h>
#include <string.h>

#define LANES 16

typedef float vf __attribute__((vector_size(4 * LANES)));

/* LANES consecutive terms starting at d of a vector with stride s (elements); the terms at or past D are +0. */
static inline vf load_block(const float *x, int64_t s, int64_t d, int64_t depth) {
    float block[LANES];
    const int64_t n = depth - d < LANES ? depth - d : LANES;
    if (s == 1 && n == LANES) {
        vf v;
        memcpy(&v, x + d, sizeof v);
        return v;
    }
    for (int64_t j = 0; j < LANES; ++j) block[j] = j < n ? x[(d + j) * s] : 0.0f;
    vf v;
    memcpy(&v, block, sizeof v);
    return v;
}

/* The dot product of q (stride sq) and k (stride sk) over D terms, in the order of the header. */
static inline float dot(const float *q, int64_t sq, const float *k, int64_t sk, int64_t depth) {
    vf acc = {0};
    for (int64_t d = 0; d < depth; d += LANES) {
        vf product = load_block(q, sq, d, depth) * load_block(k, sk, d, depth);
        acc = acc + product;
    }
    float lane[LANES];
    memcpy(lane, &acc, sizeof lane);
    for (int w = LANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; ++j) lane[j] = lane[j] + lane[j + w];
    return lane[0];
}

/* Where the operands of output position p start (elements from q and k), p in range. */
typedef struct {
    int64_t batch_dims, rows, keys, q_row_stride, k_key_stride;
    const int64_t *batch_sizes, *q_batch_strides, *k_batch_strides;
} layout_t;

static inline void locate(const layout_t *l, int64_t p, int64_t *q_offset, int64_t *k_offset) {
    const int64_t key = p % l->keys;
    int64_t rest = p / l->keys;
    const int64_t row = rest % l->rows;
    rest /= l->rows;
    int64_t qo = row * l->q_row_stride, ko = key * l->k_key_stride;
    for (int64_t b = l->batch_dims - 1; b >= 0; --b) {  /* innermost batch dimension first */
        const int64_t index = rest % l->batch_sizes[b];
        rest /= l->batch_sizes[b];
        qo += index * l->q_batch_strides[b];
        ko += index * l->k_batch_strides[b];
    }
    *q_offset = qo;
    *k_offset = ko;
}

#define AHEAD 4  /* entries ahead whose operands are prefetched: their columns are scattered in memory */

static inline void prefetch_vector(const float *x, int64_t s, int64_t depth) {
    if (s != 1) {
        __builtin_prefetch(x);
        return;
    }
    for (int64_t d = 0; d < depth; d += 64 / (int64_t)sizeof(float)) __builtin_prefetch(x + d);
}

/* out[flat[i]] for i in [0, count): see the header. Strides in elements; batch_* describe the output's batch
   dimensions (sizes) and each operand's stride along them (0: broadcast or absent). bias may be NULL. Positions
   outside [0, batch * rows * keys) are skipped and counted: the return value (0 when all were in range). */
int64_t lampc_recompute_sparse(float *out, const int64_t *flat, int64_t count, const float *q, const float *k,
                               const float *bias, int64_t batch_dims, const int64_t *batch_sizes,
                               const int64_t *q_batch_strides, const int64_t *k_batch_strides, int64_t rows,
                               int64_t keys, int64_t depth, int64_t q_row_stride, int64_t q_depth_stride,
                               int64_t k_depth_stride, int64_t k_key_stride, int64_t bias_stride, float scale) {
    const layout_t l = {batch_dims, rows, keys, q_row_stride, k_key_stride, batch_sizes, q_batch_strides,
                        k_batch_strides};
    int64_t total = rows * keys;
    for (int64_t b = 0; b < batch_dims; ++b) total *= batch_sizes[b];
    int64_t skipped = 0, q_offset, k_offset;
    for (int64_t i = 0; i < count; ++i) {
        if (i + AHEAD < count && flat[i + AHEAD] >= 0 && flat[i + AHEAD] < total) {
            locate(&l, flat[i + AHEAD], &q_offset, &k_offset);
            prefetch_vector(q + q_offset, q_depth_stride, depth);
            prefetch_vector(k + k_offset, k_depth_stride, depth);
        }
        const int64_t p = flat[i];
        if (p < 0 || p >= total) {
            ++skipped;
            continue;
        }
        locate(&l, p, &q_offset, &k_offset);
        float value = dot(q + q_offset, q_depth_stride, k + k_offset, k_depth_stride, depth) * scale;
        if (bias != NULL) value = value + bias[(p % keys) * bias_stride];
        out[p] = value;
    }
    return skipped;
}

/* 1 in each byte of the word that is nonzero, 0 elsewhere. */
static inline uint64_t true_bytes(uint64_t w) {
    w |= w >> 4;
    w |= w >> 2;
    w |= w >> 1;
    return w & 0x0101010101010101ull;
}

/* How many of mask[start .. end) are nonzero. */
int64_t lampc_true_count(const uint8_t *mask, int64_t start, int64_t end) {
    int64_t count = 0, i = start;
    for (; i + 8 <= end; i += 8) {
        uint64_t w;
        memcpy(&w, mask + i, sizeof w);
        if (w) count += __builtin_popcountll(true_bytes(w));
    }
    for (; i < end; ++i) count += mask[i] != 0;
    return count;
}

/* The positions i in [start, end) with mask[i] nonzero, in increasing order, written to positions[0 ..);
   returns how many (the caller sized `positions` with lampc_true_count). */
int64_t lampc_true_positions(const uint8_t *mask, int64_t start, int64_t end, int64_t *positions) {
    int64_t count = 0, i = start;
    for (; i + 8 <= end; i += 8) {
        uint64_t w;
        memcpy(&w, mask + i, sizeof w);
        if (!w) continue;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__  /* byte j of the word is bits 8j .. 8j + 7 */
        for (uint64_t t = true_bytes(w); t; t &= t - 1) positions[count++] = i + (__builtin_ctzll(t) >> 3);
#else
        for (int64_t j = 0; j < 8; ++j)
            if (mask[i + j]) positions[count++] = i + j;
#endif
    }
    for (; i < end; ++i)
        if (mask[i]) positions[count++] = i;
    return count;
}
