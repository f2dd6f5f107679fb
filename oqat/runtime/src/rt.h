/* Internals of the runtime shared by the reader, the executor and the full-precision ops. */
#ifndef OQAT_RT_INTERNAL_H
#define OQAT_RT_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "../include/oqat_rt.h"
#include "kernels.h"

/* The file's op types (oqat/runtime/model_file.py is the format's statement). */
enum { OP_STEM = 1, OP_QUANT, OP_CONV1X1, OP_DWCONV, OP_SE, OP_POOL, OP_LINEAR };
extern const char *const oq_op_names[OP_LINEAR + 1]; /* by type: "stem", "quant", ... */

typedef struct {
  int type, input, residual; /* value ids; residual -1: none */
  int act, k, stride, wbits;
  int h, w, c;               /* input shape */
  int ho, wo, co;            /* output shape */
  int out_codes, qn, qp;     /* writes uint8 codes of (step, qn, qp), else float32 */
  float step;
  int in_qn, in_bits;        /* the input codes' quantizer (conv ops) */
  char *name;
  void *packed;              /* conv1x1: weights in the kernels' layout (64-byte aligned) */
  int8_t *dw;                /* dwconv: [k*k][c] */
  int32_t *acc_bias;         /* conv ops: qn * sum of each channel's weight codes, NULL when qn = 0 */
  float *scale, *shift;      /* conv ops and stem: the epilogue's [co] */
  int32_t *thresholds;       /* conv ops writing few codes: the epilogue as integer compares, or NULL */
  double *stem_w;            /* stem: [k*k*cin][lanes], the float64 the sums take */
  float *fw, *fb;            /* SE reduce [mid][c], [mid]; linear [co][c], [co] */
  float *fw2, *fb2;          /* SE expand [c][mid], [c] */
  int mid;                   /* SE */
} oq_op;

typedef struct {
  size_t offset, bytes;      /* in the arena, per image (scaled by the images of a run) */
} oq_value;

typedef struct oq_pool oq_pool;

/* fp.c, compiled once per instruction set: the full-precision ops and the quantizer, each on
   one image (the stem on its output rows oy0..oy1-1). The stem's weights stem_w are
   [k][k][cin][co rounded up to OQ_STEM_LANES], zero past co. Scratch: the stem k * (w + k) * cin
   doubles then 8 * co floats; SE c doubles then (2 c + mid) floats; pooling c doubles then c floats. */
enum { OQ_STEM_LANES = 8 };
typedef struct {
  void (*stem)(const oq_op *op, const float *x, float *y_f32, uint8_t *y_u8, int oy0, int oy1, void *scratch);
  void (*quantize)(const float *y, size_t n, float step, int qn, int qp, uint8_t *out);
  void (*se)(const oq_op *op, const float *x, float *out_f32, uint8_t *out_u8, void *scratch);
  void (*pool)(const oq_op *op, const float *x, float *out_f32, uint8_t *out_u8, void *scratch);
  void (*linear)(const oq_op *op, const float *x, float *out);
} oq_fp_ops;
extern const oq_fp_ops oq_fp_base, oq_fp_avx2, oq_fp_avx512;

struct oqat_rt_model {
  int in_c, in_h, in_w, num_classes;
  int n_ops;
  oq_op *ops;
  oq_value *values;          /* n_ops + 1 */
  size_t arena_per_image;
  const oq_kernels *kernels;
  const oq_fp_ops *fp;       /* the full-precision ops built for the kernels' instruction set */
  size_t file_code_bytes, resident_code_bytes, resident_float_bytes;
  /* run state, one run at a time */
  pthread_mutex_t run_lock;
  int threads;
  oq_pool *pool;
  size_t scratch_bytes;      /* per thread */
  unsigned char *scratch;    /* threads * scratch_bytes */
  unsigned char *arena;
  int arena_images;
};

/* errors: a one-line message for oqat_rt_last_error, -1 or NULL to the caller */
int oq_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* reader.c */
oqat_rt_model *oq_read(const unsigned char *data, size_t size, const char *isa);
void oq_free_ops(oqat_rt_model *m);

/* threads.c: fn(ctx, task, thread) for task 0..n_tasks-1 over the pool and the caller */
typedef void oq_task_fn(void *ctx, int task, int thread);
oq_pool *oq_pool_new(int workers);
void oq_pool_free(oq_pool *p);
void oq_pool_run(oq_pool *p, oq_task_fn *fn, void *ctx, int n_tasks);

/* The epilogue's activation, with the kernels' max/min (second operand when unordered). */
static inline float oq_max(float a, float b) { return a > b ? a : b; }
static inline float oq_min(float a, float b) { return a < b ? a : b; }
static inline float oq_act(float y, int act) {
  switch (act) {
    case OQ_ACT_RELU: return oq_max(y, 0.0f);
    case OQ_ACT_RELU6: return oq_min(oq_max(y, 0.0f), 6.0f);
    case OQ_ACT_HSWISH: {
      float t = oq_min(oq_max(y + 3.0f, 0.0f), 6.0f);
      y = y * t;
      return y / 6.0f;
    }
    default: return y;
  }
}

/* A quantizer's stored code u = rint(clamp(y / step, qn, qp)) - qn, rounding half to even:
   adding and subtracting 1.5 * 2^23 rounds any |v| < 2^22 to an integer in the default mode. */
static inline uint8_t oq_code(float y, float step, int qn, int qp) {
  float v = oq_min(oq_max(y / step, (float)qn), (float)qp);
  v = (v + 12582912.0f) - 12582912.0f;
  return (uint8_t)((int)v - qn);
}

#endif
