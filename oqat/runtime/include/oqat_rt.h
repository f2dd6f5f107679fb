/* oqat's low-bit CPU runtime: runs a network exported by oqat (oqat.runtime.write, a .oqrt
 * file) on its integer codes, with the arithmetic of oqat/quant/requant.py, so its codes equal
 * PyTorch's exact evaluation.
 *
 *   oqat_rt_model *m = oqat_rt_load("model.oqrt", NULL);
 *   if (!m) { fprintf(stderr, "%s\n", oqat_rt_last_error()); return 1; }
 *   int c, h, w;
 *   oqat_rt_input_shape(m, &c, &h, &w);              // images are float32 N x c x h x w
 *   float *logits = malloc(n * oqat_rt_num_classes(m) * sizeof *logits);
 *   if (oqat_rt_run(m, images, n, logits) != 0) fprintf(stderr, "%s\n", oqat_rt_last_error());
 *   oqat_rt_free(m);
 *
 * A model owns its buffers and its thread pool: runs of one model from several threads take
 * turns (separate models run at once). Functions that fail return NULL or -1 and leave a
 * one-line message for oqat_rt_last_error() (per calling thread).
 */
#ifndef OQAT_RT_H
#define OQAT_RT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct oqat_rt_model oqat_rt_model;

/* Load and check a model file. isa: a kernel path ("scalar", "avx2", "avx512vnni") or NULL for
   the best this CPU runs (or the environment's OQAT_RT_ISA). NULL on any error. */
oqat_rt_model *oqat_rt_load(const char *path, const char *isa);
/* The same from a file's bytes in memory (not kept: the model copies what it needs). */
oqat_rt_model *oqat_rt_load_memory(const void *data, size_t size, const char *isa);
void oqat_rt_free(oqat_rt_model *m);

/* The message of the last failure on this thread ("" if none). */
const char *oqat_rt_last_error(void);

void oqat_rt_input_shape(const oqat_rt_model *m, int *channels, int *height, int *width);
int oqat_rt_num_classes(const oqat_rt_model *m);
/* The kernel path in use ("scalar", "avx2", "avx512vnni"). */
const char *oqat_rt_isa(const oqat_rt_model *m);
/* The kernel path a model loaded now without one named would take (OQAT_RT_ISA forces one);
   NULL, with the reason for oqat_rt_last_error(), where OQAT_RT_ISA names none this CPU runs. */
const char *oqat_rt_default_isa(void);

/* Threads for later runs (1: the calling thread alone); layers too small to gain stay on one. */
int oqat_rt_set_threads(oqat_rt_model *m, int threads);
int oqat_rt_threads(const oqat_rt_model *m);

/* logits[batch][num_classes] of input[batch][channels][height][width] (float32, normalised as
   the network was trained). 0 on success, -1 on error. */
int oqat_rt_run(oqat_rt_model *m, const float *input, int batch, float *logits);

/* Memory of a loaded model: bytes its weight codes take in the file (at their bit width),
   bytes the weights take resident (codes in the kernels' layout plus the float parts), and the
   activation buffers' bytes per image. */
typedef struct {
  size_t file_code_bytes;      /* quantized weights, packed at their bits, as in the file */
  size_t resident_code_bytes;  /* the same weights as loaded (the kernels' layout) */
  size_t resident_float_bytes; /* scales, shifts, integer biases, stem, SE, classifier */
  size_t arena_bytes_per_image;
} oqat_rt_memory;
void oqat_rt_memory_use(const oqat_rt_model *m, oqat_rt_memory *out);

/* For checking a model op by op: its ops, in order (op i writes value i + 1; value 0 is the
   input), and a run that hands every op's output to `visit` as it is written: uint8 codes
   (u = q - qn) or float32, [n][h][w][c] for images first..first+n-1. */
typedef struct {
  const char *name;  /* the network's module name, e.g. "blocks.3.dw" */
  const char *type;  /* "stem", "quant", "conv1x1", "dwconv", "se", "pool", "linear" */
  int input, residual;  /* value ids (residual -1: none) */
  int h, w, c;          /* the output's shape */
  int is_codes, qn, qp; /* uint8 codes of a quantizer with range [qn, qp], or float32 */
  float step;
} oqat_rt_op;
int oqat_rt_num_ops(const oqat_rt_model *m);
int oqat_rt_op_info(const oqat_rt_model *m, int op, oqat_rt_op *out);
typedef void (*oqat_rt_visit)(void *user, int op, int first, int n, const void *data, size_t bytes);
int oqat_rt_run_trace(oqat_rt_model *m, const float *input, int batch, float *logits, oqat_rt_visit visit,
                      void *user);
/* A run that adds each op's wall time, in seconds, to seconds[op] (n_ops entries): where a
   run's time goes, timed inside the library so the timing costs two clock reads per op. */
int oqat_rt_run_timed(oqat_rt_model *m, const float *input, int batch, float *logits, double *seconds);

#ifdef __cplusplus
}
#endif
#endif
