/* The strict look-ahead's elementwise tail (lampc/lookahead/softmax.py `select` for the strict rule), one pass.

   Given the low-precision scores s, the consumer's probabilities a (the masked softmax, computed by torch) and
   the usable entries (visible and finite), per entry, in the reference's float32 operations and order:

       weight = ((2 * a) * (1 - a)) * |s|          strict_sensitivity
       sel    = (weight > tau && usable) || !isfinite(s)

   tau is the float32 the reference compares with (torch casts a Python float to the tensor's dtype).
   Compiled with -ffp-contract=off: the products stay separately rounded, as in the reference.
*/

#include <math.h>
#include <stdint.h>

void lp_strict_select(const float *s, const float *a, const uint8_t *usable, uint8_t *selected, int64_t n,
                      float tau) {
    for (int64_t i = 0; i < n; ++i) {
        const float score = s[i];
        const float weight = ((2.0f * a[i]) * (1.0f - a[i])) * fabsf(score);
        const int finite = isfinite(score);
        selected[i] = (uint8_t)(((weight > tau) && usable[i]) || !finite);
    }
}
