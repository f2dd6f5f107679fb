/* Scalar reference kernels: the definition every SIMD path is tested against bit for bit, and
 * the path for CPUs without one. Packed 1x1 weights: the header, then int8 codes [cout][cin]. */
#include <math.h>
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

void oq_epilogue_store(const oq_epilogue *e, int r, int c, float y) {
  size_t i = (size_t)r * e->ld_out + c;
  if (e->out_f32) {
    e->out_f32[i] = y;
    return;
  }
  float q = y / e->step;
  q = min_f(max_f(q, (float)e->qn), (float)e->qp);
  e->out_u8[i] = (uint8_t)((int)nearbyintf(q) - e->qn);  /* default mode: round half to even */
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
      oq_epilogue_store(e, r, c, oq_epilogue_value(e, r, c, acc));
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
        int r = oy * wo + ox;
        oq_epilogue_store(e, r, ch, oq_epilogue_value(e, r, ch, acc));
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
