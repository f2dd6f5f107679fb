/* The full-precision stem conv (kxk, stride s, 'same' padding) and its folded BN and activation:
 * each output's sum in float64, rounded to float32, then the epilogue in float32. Compiled once
 * per instruction set (OQ_STEM names the function): the sums vectorize over output channels,
 * each channel summed in the same order in every build, so every build gives the same bits. */
#include <string.h>

#include "rt.h"

#ifndef OQ_STEM
#define OQ_STEM oq_stem_base
#endif

typedef double lanes_t __attribute__((vector_size(OQ_STEM_LANES * sizeof(double))));

/* The float64 sums of n pixels (ox..ox+n-1 of the k rows in img) over output channels j0..j0+L-1:
   one chain of adds per pixel, so n chains run at once. */
static inline void sums(const oq_op *op, const double *img, int pw, int lanes, int ox, int n, int j0, lanes_t *acc) {
  int k = op->k, s = op->stride, cin = op->c, row = k * cin;
  for (int q = 0; q < n; q++) acc[q] = (lanes_t){0};
  for (int ky = 0; ky < k; ky++) {
    const double *in = img + ((size_t)ky * pw + (size_t)ox * s) * cin;
    const double *wt = op->stem_w + (size_t)ky * row * lanes + j0;
    for (int p = 0; p < row; p++) {
      lanes_t wv;
      memcpy(&wv, wt + (size_t)p * lanes, sizeof wv);
      for (int q = 0; q < n; q++) acc[q] += in[(size_t)q * s * cin + p] * wv;
    }
  }
}

/* scratch: k rows of the padded image as float64 [k][w + 2 pad][cin] (zero borders: padding
   adds exact zeros), so that each kernel row's inputs are contiguous */
void OQ_STEM(const oq_op *op, const float *x, float *y_f32, uint8_t *y_u8, int oy0, int oy1, double *scratch) {
  enum { L = OQ_STEM_LANES, BLOCK = 4 };
  int k = op->k, s = op->stride, pad = k / 2, cin = op->c, co = op->co, h = op->h, w = op->w;
  int pw = w + 2 * pad, lanes = (co + L - 1) / L * L;
  double *img = scratch;
  for (int oy = oy0; oy < oy1; oy++) {
    for (int ky = 0; ky < k; ky++)
      for (int px = 0; px < pw; px++)
        for (int ci = 0; ci < cin; ci++) {
          int iy = oy * s + ky - pad, ix = px - pad;
          int inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
          img[((size_t)ky * pw + px) * cin + ci] = inside ? x[((size_t)ci * h + iy) * w + ix] : 0.0;
        }
    for (int ox = 0; ox < op->wo; ox += BLOCK) {
      int n = op->wo - ox < BLOCK ? op->wo - ox : BLOCK;
      for (int j0 = 0; j0 < lanes; j0 += L) {
        lanes_t acc[BLOCK];
        if (n == BLOCK)
          sums(op, img, pw, lanes, ox, BLOCK, j0, acc);
        else
          sums(op, img, pw, lanes, ox, n, j0, acc);
        for (int q = 0; q < n; q++) {
          size_t base = ((size_t)oy * op->wo + ox + q) * co;
          for (int j = j0; j < co && j < j0 + L; j++) {
            float y = (float)acc[q][j - j0] * op->scale[j];
            y = oq_act(y + op->shift[j], op->act);
            if (y_f32)
              y_f32[base + j] = y;
            else
              y_u8[base + j] = oq_code(y, op->step, op->qn, op->qp);
          }
        }
      }
    }
  }
}
