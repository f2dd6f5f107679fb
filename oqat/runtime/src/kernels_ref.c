/* Scalar reference kernels: the definition every SIMD path is tested against bit for bit, and
 * the path for CPUs without one. Packed 1x1 weights: the header, then int8 codes [cout][cin]. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* The SIMD max/min semantics (second operand when unordered or equal), so -0.0 and NaN give the
   same result on every path. */
static float max_f(float a, float b) { return a > b ? a : b; }
static float min_f(float a, float b) { return a < b ? a : b; }

float oq_epilogue_value(const oq_epilogue *e, int r, int c, int32_t acc) {
  int32_t s = acc + (e->acc_bias ? e->acc_bias[c] : 0);
  float y = (float)s * e->scale[c];
  y = y + e->shift[c];
  if (e->residual) y = y + e->residual[(size_t)r * e->ld_res + c];
  switch (e->act) {
    case OQ_ACT_RELU: y = max_f(y, 0.0f); break;
    case OQ_ACT_RELU6: y = min_f(max_f(y, 0.0f), 6.0f); break;
    case OQ_ACT_HSWISH: {
      float t = min_f(max_f(y + 3.0f, 0.0f), 6.0f);
      y = y * t;
      y = y / 6.0f;
      break;
    }
    default: break;
  }
  return y;
}

/* The code u (0..qp-qn) of the next quantizer for y: rint(clamp(y / step)) - qn. */
static int code_of(const oq_epilogue *e, float y) {
  float q = y / e->step;
  q = min_f(max_f(q, (float)e->qn), (float)e->qp);
  return (int)nearbyintf(q) - e->qn;  /* default mode: round half to even */
}

void oq_epilogue_store(const oq_epilogue *e, int r, int c, float y) {
  size_t i = (size_t)r * e->ld_out + c;
  if (e->out_f32)
    e->out_f32[i] = y;
  else
    e->out_u8[i] = (uint8_t)code_of(e, y);
}

/* ---- threshold epilogue ----
 * Why the code is monotone in acc where oq_thresholds accepts: (float)s, y * scale (scale >= 0:
 * non-decreasing; < 0: non-increasing), y + shift, relu, relu6, y / step (step > 0), the clamp
 * and rint are each monotone in the value (signed zeros give the same code), and with finite
 * operands no NaN arises except h_swish(-inf) = -inf * 0; h_swish is non-decreasing for y >= 0
 * (a product of non-negative non-decreasing factors) and <= 0 (or NaN) below, which a quantizer
 * with qn = 0 maps to code 0, its least. So with x = acc ^ flip (flip = -1: x = -acc - 1) the
 * code is a non-decreasing step function of x, and u = #{j : x > T_j} where T_j + 1 is the least
 * x whose code is >= j. */

/* The float epilogue's code of acc (no residual: any row). */
static int acc_code(const oq_epilogue *e, int c, int32_t acc) { return code_of(e, oq_epilogue_value(e, 0, c, acc)); }

static int qualifies(const oq_epilogue *e, int cout, int32_t acc_min, int32_t acc_max) {
  int n = e->qp - e->qn;
  if (e->out_f32 || !e->out_u8 || e->residual || n < 1 || n > OQ_THRESHOLDS_MAX) return 0;
  if (e->act == OQ_ACT_HSWISH && e->qn != 0) return 0;
  if (!(e->step > 0.0f && isfinite(e->step)) || acc_min > acc_max || acc_min == INT32_MIN || acc_max == INT32_MAX)
    return 0;
  for (int c = 0; c < cout; c++) {
    int64_t b = e->acc_bias ? e->acc_bias[c] : 0;
    if (!isfinite(e->scale[c]) || !isfinite(e->shift[c])) return 0;
    if (acc_min + b < INT32_MIN || acc_max + b > INT32_MAX) return 0;
  }
  return 1;
}

/* The least x in [lo, hi] whose code (of acc = x ^ flip) is >= j, or hi + 1 if none. */
static int32_t least_reaching(const oq_epilogue *e, int c, int32_t flip, int32_t lo, int32_t hi, int j) {
  int64_t a = lo, b = (int64_t)hi + 1;  /* the answer is in [a, b] */
  while (a < b) {
    int64_t mid = a + (b - a) / 2;
    if (acc_code(e, c, (int32_t)mid ^ flip) >= j)
      b = mid;
    else
      a = mid + 1;
  }
  return (int32_t)a;
}

int oq_thresholds(const oq_epilogue *e, int cout, int32_t acc_min, int32_t acc_max, int32_t *out) {
  if (!qualifies(e, cout, acc_min, acc_max)) return 0;
  int n = e->qp - e->qn, ld = oq_thresholds_ld(cout);
  for (int c = 0; c < ld; c++) {
    if (c >= cout) {  /* padding lanes: any values (their codes are never stored) */
      for (int j = 0; j <= n; j++) out[(size_t)j * ld + c] = 0;
      continue;
    }
    int32_t flip = e->scale[c] < 0.0f ? -1 : 0;
    int32_t lo = flip ? ~acc_max : acc_min, hi = flip ? ~acc_min : acc_max;
    out[c] = flip;
    for (int j = 1; j <= n; j++) out[(size_t)j * ld + c] = least_reaching(e, c, flip, lo, hi, j) - 1;
  }
  return 1;
}

/* The code u = #{j : (acc ^ flip) > T_j} of channel c. */
static uint8_t threshold_code(const oq_epilogue *e, int cout, int c, int32_t acc) {
  int ld = oq_thresholds_ld(cout), u = 0;
  int32_t x = acc ^ e->thresholds[c];
  for (int j = 1; j <= e->qp - e->qn; j++) u += x > e->thresholds[(size_t)j * ld + c];
  return (uint8_t)u;
}

/* The epilogue of output (r, c) of a conv with cout channels: thresholds or floats. */
static void epilogue_acc(const oq_epilogue *e, int cout, int r, int c, int32_t acc) {
  if (e->thresholds)
    e->out_u8[(size_t)r * e->ld_out + c] = threshold_code(e, cout, c, acc);
  else
    oq_epilogue_store(e, r, c, oq_epilogue_value(e, r, c, acc));
}

static size_t pack1x1_size(int cout, int cin, int wbits) {
  (void)wbits;
  return sizeof(oq_packed1x1) + (size_t)cout * cin;
}

static void pack1x1(const int8_t *codes, int cout, int cin, int wbits, int abits, void *dst) {
  oq_packed1x1 *h = dst;
  memset(h, 0, sizeof *h);
  h->magic = OQ_PACK_SCALAR;
  h->cout = cout, h->cin = cin, h->wbits = wbits, h->abits = abits;
  memcpy(h + 1, codes, (size_t)cout * cin);
}

static size_t scratch1x1_size(int cout, int cin, int wbits) {
  (void)cout, (void)cin, (void)wbits;
  return 0;
}

static void conv1x1(const uint8_t *a, int lda, int rows, const void *packed, const oq_epilogue *e,
                    void *scratch) {
  const oq_packed1x1 *h = packed;
  const int8_t *wt = (const int8_t *)(h + 1);
  (void)scratch;
  if (h->magic != OQ_PACK_SCALAR) abort();  /* weights packed by another path */
  for (int r = 0; r < rows; r++) {
    const uint8_t *ar = a + (size_t)r * lda;
    for (int c = 0; c < h->cout; c++) {
      const int8_t *wc = wt + (size_t)c * h->cin;
      int32_t acc = 0;
      for (int k = 0; k < h->cin; k++) acc += (int32_t)ar[k] * wc[k];
      epilogue_acc(e, h->cout, r, c, acc);
    }
  }
}

static void dwconv(const uint8_t *a, int h, int w, int c, int k, int stride, const int8_t *wt,
                   uint8_t pad_u, const oq_epilogue *e, int oy0, int oy1) {
  int pad = k / 2, wo = (w - 1) / stride + 1;
  for (int oy = oy0; oy < oy1; oy++)
    for (int ox = 0; ox < wo; ox++)
      for (int ch = 0; ch < c; ch++) {
        int32_t acc = 0;
        for (int ky = 0; ky < k; ky++) {
          int iy = oy * stride + ky - pad;
          for (int kx = 0; kx < k; kx++) {
            int ix = ox * stride + kx - pad;
            int inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
            int32_t u = inside ? a[((size_t)iy * w + ix) * c + ch] : pad_u;
            acc += u * wt[(ky * k + kx) * c + ch];
          }
        }
        epilogue_acc(e, c, oy * wo + ox, ch, acc);
      }
}

const oq_kernels oq_kernels_scalar = {
    .name = "scalar",
    .pack1x1_size = pack1x1_size,
    .pack1x1 = pack1x1,
    .conv1x1 = conv1x1,
    .scratch1x1_size = scratch1x1_size,
    .dwconv = dwconv,
};
