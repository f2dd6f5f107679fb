/* The full-precision stem conv (kxk, stride s, 'same' padding) and its folded BN and activation:
 * each output's sum in float64, rounded to float32, then the epilogue in float32. Compiled once
 * per instruction set (OQ_STEM names the function): the sums vectorize over output channels,
 * each channel's still summed in the same order, so every build gives the same bits. */
#include "rt.h"

#ifndef OQ_STEM
#define OQ_STEM oq_stem_base
#endif

void OQ_STEM(const oq_op *op, const float *x, float *y_f32, uint8_t *y_u8, int oy0, int oy1, double *acc) {
  int k = op->k, s = op->stride, pad = op->k / 2, cin = op->c, co = op->co, h = op->h, w = op->w;
  for (int oy = oy0; oy < oy1; oy++)
    for (int ox = 0; ox < op->wo; ox++) {
      for (int j = 0; j < co; j++) acc[j] = 0;
      for (int ky = 0; ky < k; ky++) {
        int iy = oy * s + ky - pad;
        if (iy < 0 || iy >= h) continue; /* padding adds exact zeros */
        for (int kx = 0; kx < k; kx++) {
          int ix = ox * s + kx - pad;
          if (ix < 0 || ix >= w) continue;
          for (int ci = 0; ci < cin; ci++) {
            double v = x[((size_t)ci * h + iy) * w + ix];
            const double *restrict wr = op->stem_w + ((size_t)(ky * k + kx) * cin + ci) * co;
            double *restrict a = acc;
            for (int j = 0; j < co; j++) a[j] += v * wr[j];
          }
        }
      }
      size_t base = ((size_t)oy * op->wo + ox) * co;
      for (int j = 0; j < co; j++) {
        float y = (float)acc[j] * op->scale[j];
        y = oq_act(y + op->shift[j], op->act);
        if (y_f32)
          y_f32[base + j] = y;
        else
          y_u8[base + j] = oq_code(y, op->step, op->qn, op->qp);
      }
    }
}
