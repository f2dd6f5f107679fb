/* The full-precision parts of a network (the stem conv with its folded BN and activation, SE,
 * global pooling, the classifier) and the quantizer, as oqat/quant/requant.py computes them: each
 * reduction summed in float64 and rounded to float32 once, everything after it in float32, one
 * rounding per operation. Compiled once per instruction set (OQ_FP names the table): the sums
 * vectorize over channels or over fixed partial sums, each summed in the same order in every
 * build, so every build gives the same bits. */
#include <string.h>

#include "rt.h"

#ifndef OQ_FP
#define OQ_FP oq_fp_base
#endif

static void quantize(const float *y, size_t n, float step, int qn, int qp, uint8_t *out) {
  for (size_t i = 0; i < n; i++) out[i] = oq_code(y[i], step, qn, qp);
}

/* Output channels summed at once: one register of doubles of this build (the padded weight rows,
   OQ_STEM_LANES wide, hold a whole number of them). */
#if defined(__AVX512F__)
enum { V = 8 };
#elif defined(__AVX__)
enum { V = 4 };
#else
enum { V = 2 };
#endif
typedef double lanes_t __attribute__((vector_size(V * sizeof(double))));

/* oq_act over n values, one loop per activation so that each vectorizes. */
static void activate(float *y, size_t n, int act) {
  switch (act) {
    case OQ_ACT_RELU: for (size_t i = 0; i < n; i++) y[i] = oq_act(y[i], OQ_ACT_RELU); break;
    case OQ_ACT_RELU6: for (size_t i = 0; i < n; i++) y[i] = oq_act(y[i], OQ_ACT_RELU6); break;
    case OQ_ACT_HSWISH: for (size_t i = 0; i < n; i++) y[i] = oq_act(y[i], OQ_ACT_HSWISH); break;
  }
}

/* The float64 sums of n pixels (ox..ox+n-1 of the k rows in img) over output channels j0..j0+V-1:
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

/* sums() of 8 pixels with the chains in named registers (an array of them stays in memory). */
static void sums8(const oq_op *op, const double *img, int pw, int lanes, int ox, int j0, lanes_t *acc) {
  int k = op->k, cin = op->c, row = k * cin;
  size_t d = (size_t)op->stride * cin;
  lanes_t a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
  for (int ky = 0; ky < k; ky++) {
    const double *in = img + ((size_t)ky * pw + (size_t)ox * op->stride) * cin;
    const double *wt = op->stem_w + (size_t)ky * row * lanes + j0;
    for (int p = 0; p < row; p++) {
      lanes_t wv;
      memcpy(&wv, wt + (size_t)p * lanes, sizeof wv);
      a0 += in[p] * wv, a1 += in[d + p] * wv, a2 += in[2 * d + p] * wv, a3 += in[3 * d + p] * wv;
      a4 += in[4 * d + p] * wv, a5 += in[5 * d + p] * wv, a6 += in[6 * d + p] * wv, a7 += in[7 * d + p] * wv;
    }
  }
  acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3, acc[4] = a4, acc[5] = a5, acc[6] = a6, acc[7] = a7;
}

/* scratch: k rows of the padded image as float64 [k][w + 2 pad][cin] (zero borders: padding
   adds exact zeros), so that each kernel row's inputs are contiguous */
static void stem(const oq_op *op, const float *x, float *y_f32, uint8_t *y_u8, int oy0, int oy1, void *scratch) {
  enum { L = OQ_STEM_LANES, BLOCK = 8 };
  int k = op->k, s = op->stride, pad = k / 2, cin = op->c, co = op->co, h = op->h, w = op->w;
  int pw = w + 2 * pad, lanes = (co + L - 1) / L * L;
  double *img = scratch;
  float *sum = (float *)(img + (size_t)k * pw * cin);  /* a block's sums, rounded once, [pixel][channel] */
  memset(img, 0, (size_t)k * pw * cin * sizeof *img);  /* the left and right borders stay zero */
  for (int oy = oy0; oy < oy1; oy++) {
    for (int ky = 0; ky < k; ky++) {
      int iy = oy * s + ky - pad;
      double *dst = img + (size_t)ky * pw * cin;
      if (iy < 0 || iy >= h) {
        memset(dst, 0, (size_t)pw * cin * sizeof *dst);
        continue;
      }
      for (int ci = 0; ci < cin; ci++) {
        const float *src = x + ((size_t)ci * h + iy) * w;
        for (int ix = 0; ix < w; ix++) dst[(size_t)(ix + pad) * cin + ci] = src[ix];
      }
    }
    for (int ox = 0; ox < op->wo; ox += BLOCK) {
      int n = op->wo - ox < BLOCK ? op->wo - ox : BLOCK;
      for (int j0 = 0; j0 < co; j0 += V) {
        lanes_t acc[BLOCK];
        if (n == BLOCK)
          sums8(op, img, pw, lanes, ox, j0, acc);
        else
          sums(op, img, pw, lanes, ox, n, j0, acc);
        for (int q = 0; q < n; q++)
          for (int j = j0; j < co && j < j0 + V; j++) sum[q * co + j] = (float)acc[q][j - j0];
      }
      /* the epilogue over whole pixels, channels innermost: loops the compiler vectorizes */
      size_t base = ((size_t)oy * op->wo + ox) * co;
      for (int q = 0; q < n; q++)
        for (int j = 0; j < co; j++) sum[q * co + j] = sum[q * co + j] * op->scale[j] + op->shift[j];
      activate(sum, (size_t)n * co, op->act);
      if (y_f32)
        memcpy(y_f32 + base, sum, (size_t)n * co * sizeof *sum);
      else
        for (int i = 0; i < n * co; i++) y_u8[base + i] = oq_code(sum[i], op->step, op->qn, op->qp);
    }
  }
}

/* Per channel, the float64 mean over n pixels of x [n][c], rounded to float32. */
static void mean(const float *x, int n, int c, double *sum, float *out) {
  for (int j = 0; j < c; j++) sum[j] = 0;
  for (int p = 0; p < n; p++)
    for (int j = 0; j < c; j++) sum[j] += (double)x[(size_t)p * c + j];
  for (int j = 0; j < c; j++) out[j] = (float)(sum[j] / n);
}

/* out[o] = float32(b[o] + sum_i w[o][i] * x[i]) summed in float64, in LANES partial sums (in a
   fixed order, so they vectorize and give the same bits everywhere). */
static void dense(const float *w, const float *b, const float *x, int n_in, int n_out, float *out) {
  enum { LANES = 8 };
  for (int o = 0; o < n_out; o++) {
    const float *wo = w + (size_t)o * n_in;
    double part[LANES] = {0}, s = 0;
    int i = 0;
    for (; i + LANES <= n_in; i += LANES)
      for (int j = 0; j < LANES; j++) part[j] += (double)wo[i + j] * (double)x[i + j];
    for (; i < n_in; i++) s += (double)wo[i] * (double)x[i];
    for (int j = 0; j < LANES; j++) s += part[j];
    out[o] = (float)(s + (double)b[o]);
  }
}

static void se(const oq_op *op, const float *x, float *out_f32, uint8_t *out_u8, void *scratch) {
  int n = op->h * op->w, c = op->c;
  double *sum = scratch;
  float *pooled = (float *)(sum + c), *gate = pooled + c, *z = gate + c;
  mean(x, n, c, sum, pooled);
  dense(op->fw, op->fb, pooled, c, op->mid, z);
  for (int j = 0; j < op->mid; j++) z[j] = oq_max(z[j], 0.0f);
  dense(op->fw2, op->fb2, z, op->mid, c, gate);
  for (int j = 0; j < c; j++) gate[j] = oq_min(oq_max(gate[j] + 3.0f, 0.0f), 6.0f) / 6.0f;
  for (size_t p = 0; p < (size_t)n * c; p += c) /* x * gate, float or the project conv's codes */
    if (out_f32)
      for (int j = 0; j < c; j++) out_f32[p + j] = x[p + j] * gate[j];
    else
      for (int j = 0; j < c; j++) out_u8[p + j] = oq_code(x[p + j] * gate[j], op->step, op->qn, op->qp);
}

static void pool_mean(const oq_op *op, const float *x, float *out_f32, uint8_t *out_u8, void *scratch) {
  double *sum = scratch;
  float *pooled = (float *)(sum + op->c);
  mean(x, op->h * op->w, op->c, sum, out_f32 ? out_f32 : pooled);
  if (out_u8) quantize(pooled, op->c, op->step, op->qn, op->qp, out_u8);
}

static void linear(const oq_op *op, const float *x, float *out) { dense(op->fw, op->fb, x, op->c, op->co, out); }

const oq_fp_ops OQ_FP = {stem, quantize, se, pool_mean, linear};
