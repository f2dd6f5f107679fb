/* The full-precision parts of a network (SE, global pooling, classifier) and the quantizer, as
 * oqat/requant.py computes them: each reduction summed in float64 and rounded to float32 once,
 * everything after it in float32, one rounding per operation. */
#include "rt.h"

void oq_quantize(const float *y, size_t n, float step, int qn, int qp, uint8_t *out) {
  for (size_t i = 0; i < n; i++) out[i] = oq_code(y[i], step, qn, qp);
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

void oq_se(const oq_op *op, const float *x, float *out_f32, uint8_t *out_u8, void *scratch) {
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

void oq_pool_mean(const oq_op *op, const float *x, float *out_f32, uint8_t *out_u8, void *scratch) {
  double *sum = scratch;
  float *pooled = (float *)(sum + op->c);
  mean(x, op->h * op->w, op->c, sum, out_f32 ? out_f32 : pooled);
  if (out_u8) oq_quantize(pooled, op->c, op->step, op->qn, op->qp, out_u8);
}

void oq_linear(const oq_op *op, const float *x, float *out) { dense(op->fw, op->fb, x, op->c, op->co, out); }
