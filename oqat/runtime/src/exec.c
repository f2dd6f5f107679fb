/* The executor and the public API: buffer planning, running ops over a batch, threads. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rt.h"

#define ALIGN 64
/* A batch runs in chunks of images whose activations take about this much (they stay in cache
   across the ops of a chunk). */
#define CHUNK_BYTES ((size_t)4 << 20)
/* An op is split over threads only where each task has at least this much work (about a
   multiply-add each); below, waking a thread costs more than it saves. Up to TASKS_PER_THREAD
   tasks a thread, so that a thread the scheduler delays holds back little. Measured on a 2-core
   EPYC (Zen 5), batch 1: mini at 28 px splits no op; mbv3 S at 224 px runs 1.5x faster on 2
   threads when the second core is free, and slower when another process holds it (a task a
   descheduled worker holds waits for its next time slice): there, run one thread a request. */
#define MIN_TASK_WORK 400000.0
#define TASKS_PER_THREAD 4
#define MAX_THREADS 256
#define MAX_FILE ((size_t)1 << 31)

static _Thread_local char error_[512];

int oq_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(error_, sizeof error_, fmt, ap);
  va_end(ap);
  return -1;
}

const char *oqat_rt_last_error(void) { return error_; }

static size_t round_up(size_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }

static size_t value_bytes(const oq_op *o) { return (size_t)o->ho * o->wo * o->co * (o->out_codes ? 1 : 4); }

/* Offsets of every value in a per-image arena: first fit among the values alive at once (a value
   lives from the op that writes it to the last op that reads it). The input and the logits live
   in the caller's buffers. */
static int plan(oqat_rt_model *m) {
  int n = m->n_ops;
  int *last = calloc(n + 1, sizeof *last), *placed = calloc(n + 1, sizeof *placed);
  m->values = calloc(n + 1, sizeof *m->values);
  if (!last || !placed || !m->values) {
    free(last), free(placed);
    return oq_error("out of memory");
  }
  for (int v = 1; v <= n; v++) last[v] = v - 1;
  for (int i = 0; i < n; i++) {
    last[m->ops[i].input] = i;
    if (m->ops[i].residual >= 0) last[m->ops[i].residual] = i;
  }
  int n_placed = 0;
  size_t top = 0;
  for (int v = 1; v < n; v++) {
    size_t size = round_up(value_bytes(&m->ops[v - 1])), offset = 0;
    for (int moved = 1; moved;) { /* slide past every live value this one overlaps */
      moved = 0;
      for (int j = 0; j < n_placed; j++) {
        const oq_value *o = &m->values[placed[j]];
        int alive = last[placed[j]] >= v - 1;
        if (alive && offset < o->offset + o->bytes && o->offset < offset + size) offset = o->offset + o->bytes, moved = 1;
      }
    }
    m->values[v] = (oq_value){offset, size};
    placed[n_placed++] = v;
    if (offset + size > top) top = offset + size;
  }
  free(last), free(placed);
  m->arena_per_image = top;
  if (top > ((size_t)1 << 30)) return oq_error("activations need %zu bytes per image (more than 1 GiB)", top);
  return 0;
}

/* Scratch each thread needs: the largest of the kernels' 1x1 scratch and the float ops' sums. */
static size_t scratch_bytes(const oqat_rt_model *m) {
  size_t most = 0;
  for (int i = 0; i < m->n_ops; i++) {
    const oq_op *o = &m->ops[i];
    size_t n = o->type == OP_CONV1X1 ? m->kernels->scratch1x1_size(o->co, o->c, o->wbits)
               : o->type == OP_STEM  ? sizeof(double) * o->k * (o->w + o->k) * o->c + sizeof(float) * 8 * o->co
               : o->type == OP_SE    ? sizeof(double) * o->c + sizeof(float) * (2 * (size_t)o->c + o->mid)
               : o->type == OP_POOL  ? (sizeof(double) + sizeof(float)) * o->c
                                     : 0;
    if (n > most) most = n;
  }
  return round_up(most);
}

static oqat_rt_model *finish_load(oqat_rt_model *m) {
  if (!m) return NULL;
  const char *isa = m->kernels->name;
  m->fp = &oq_fp_base;
#if defined(__x86_64__)
  if (!strcmp(isa, "avx2")) m->fp = &oq_fp_avx2;
  if (!strcmp(isa, "avx512vnni")) m->fp = &oq_fp_avx512;
#endif
  m->scratch_bytes = scratch_bytes(m);
  pthread_mutex_init(&m->run_lock, NULL);
  if (plan(m) != 0 || oqat_rt_set_threads(m, 1) != 0) {
    oqat_rt_free(m);
    return NULL;
  }
  return m;
}

oqat_rt_model *oqat_rt_load_memory(const void *data, size_t size, const char *isa) {
  return finish_load(oq_read(data, size, isa));
}

oqat_rt_model *oqat_rt_load(const char *path, const char *isa) {
  FILE *f = path ? fopen(path, "rb") : NULL;
  if (!f) return oq_error("cannot open '%.300s'", path ? path : "(null)"), NULL;
  unsigned char *data = NULL;
  long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
  if (size < 0 || (size_t)size > MAX_FILE || fseek(f, 0, SEEK_SET) != 0) {
    fclose(f);
    return oq_error("cannot read '%.300s' (not a regular file of at most 2 GiB)", path), NULL;
  }
  data = malloc(size ? (size_t)size : 1);
  size_t got = data ? fread(data, 1, (size_t)size, f) : 0;
  fclose(f);
  if (!data || got != (size_t)size) {
    free(data);
    return oq_error("cannot read '%.300s'", path), NULL;
  }
  oqat_rt_model *m = oqat_rt_load_memory(data, (size_t)size, isa);
  free(data);
  if (!m) {
    char why[sizeof error_];
    memcpy(why, error_, sizeof why);
    oq_error("'%.200s': %.300s", path, why);
  }
  return m;
}

void oqat_rt_free(oqat_rt_model *m) {
  if (!m) return;
  oq_pool_free(m->pool);
  oq_free_ops(m);
  pthread_mutex_destroy(&m->run_lock);
  free(m->values);
  free(m->scratch);
  free(m->arena);
  free(m);
}

void oqat_rt_input_shape(const oqat_rt_model *m, int *channels, int *height, int *width) {
  if (channels) *channels = m->in_c;
  if (height) *height = m->in_h;
  if (width) *width = m->in_w;
}

int oqat_rt_num_classes(const oqat_rt_model *m) { return m->num_classes; }
const char *oqat_rt_isa(const oqat_rt_model *m) { return m->kernels->name; }

const char *oqat_rt_default_isa(void) {
  const oq_kernels *k = oq_kernels_select();
  if (!k) oq_error("%s", oq_kernels_error());
  return k ? k->name : NULL;
}
int oqat_rt_threads(const oqat_rt_model *m) { return m->threads; }

int oqat_rt_set_threads(oqat_rt_model *m, int threads) {
  if (!m || threads < 1 || threads > MAX_THREADS) return oq_error("threads must be 1..%d, got %d", MAX_THREADS, threads);
  if (threads == m->threads) return 0;
  oq_pool *pool = threads > 1 ? oq_pool_new(threads - 1) : NULL;
  unsigned char *scratch = aligned_alloc(ALIGN, threads * m->scratch_bytes + ALIGN);
  if ((threads > 1 && !pool) || !scratch) {
    oq_pool_free(pool);
    free(scratch);
    return oq_error("cannot start %d threads", threads);
  }
  pthread_mutex_lock(&m->run_lock);
  oq_pool *old = m->pool;
  free(m->scratch);
  m->threads = threads, m->pool = pool, m->scratch = scratch;
  pthread_mutex_unlock(&m->run_lock);
  oq_pool_free(old);
  return 0;
}

void oqat_rt_memory_use(const oqat_rt_model *m, oqat_rt_memory *out) {
  *out = (oqat_rt_memory){m->file_code_bytes, m->resident_code_bytes, m->resident_float_bytes, m->arena_per_image};
}

/* --- running ---------------------------------------------------------------------------- */

typedef struct {
  const oqat_rt_model *m;
  const oq_op *op;
  int images, n_tasks;
  size_t rows;
  const unsigned char *in, *res;
  unsigned char *out;
} job;

static unsigned char *value(const oqat_rt_model *m, int v, int images, const float *input, float *logits) {
  if (v == 0) return (unsigned char *)input;
  if (v == m->n_ops) return (unsigned char *)logits;
  return m->arena + m->values[v].offset * images;
}

/* The rows an op splits into (independent units of work) and the work of one. */
static size_t op_rows(const oq_op *o, int images, double *work) {
  double kk = (double)o->k * o->k;
  switch (o->type) {
    case OP_STEM: *work = (double)o->wo * o->co * kk * o->c; return (size_t)images * o->ho;
    case OP_DWCONV: *work = (double)o->wo * o->c * kk; return (size_t)images * o->ho;
    case OP_CONV1X1: *work = (double)o->c * o->co; return (size_t)images * o->h * o->w;
    case OP_QUANT: *work = o->c; return (size_t)images * o->h * o->w;
    case OP_SE: *work = 2.0 * o->h * o->w * o->c; return images;
    case OP_POOL: *work = (double)o->h * o->w * o->c; return images;
    default: *work = (double)o->c * o->co; return images;
  }
}

static oq_epilogue epilogue(const oq_op *o, const unsigned char *res, unsigned char *out) {
  return (oq_epilogue){.scale = o->scale, .shift = o->shift, .acc_bias = o->acc_bias, .act = o->act,
                       .residual = (const float *)res, .ld_res = o->co,
                       .out_f32 = o->out_codes ? NULL : (float *)out, .out_u8 = o->out_codes ? out : NULL,
                       .ld_out = o->co, .step = o->step, .qn = o->qn, .qp = o->qp, .thresholds = o->thresholds};
}

/* Rows r0..r1-1 of a per-image-line op (stem, depthwise): one call per image they touch. */
static void lines(const job *j, size_t r0, size_t r1, void *scratch) {
  const oq_op *o = j->op;
  size_t in_bytes = (size_t)o->h * o->w * o->c * (o->type == OP_STEM ? 4 : 1);
  size_t out_px = (size_t)o->ho * o->wo * o->co, out_bytes = out_px * (o->out_codes ? 1 : 4);
  for (size_t r = r0; r < r1;) {
    size_t n = r / o->ho;
    int oy0 = (int)(r % o->ho), oy1 = (size_t)o->ho < oy0 + (r1 - r) ? o->ho : oy0 + (int)(r1 - r);
    const unsigned char *in = j->in + n * in_bytes;
    unsigned char *out = j->out + n * out_bytes;
    if (o->type == OP_STEM) {
      j->m->fp->stem(o, (const float *)in, o->out_codes ? NULL : (float *)out, o->out_codes ? out : NULL, oy0, oy1,
                      scratch);
    } else {
      oq_epilogue e = epilogue(o, NULL, out);
      j->m->kernels->dwconv(in, o->h, o->w, o->c, o->k, o->stride, o->dw, (uint8_t)-o->in_qn, &e, oy0, oy1);
    }
    r += oy1 - oy0;
  }
}

static void run_task(void *ctx, int task, int thread) {
  const job *j = ctx;
  const oq_op *o = j->op;
  size_t r0 = j->rows * task / j->n_tasks, r1 = j->rows * (task + 1) / j->n_tasks;
  void *scratch = j->m->scratch + (size_t)thread * j->m->scratch_bytes;
  size_t in_px = (size_t)o->h * o->w * o->c, out_px = (size_t)o->ho * o->wo * o->co;
  size_t osize = o->out_codes ? 1 : 4;
  switch (o->type) {
    case OP_STEM: case OP_DWCONV: lines(j, r0, r1, scratch); break;
    case OP_QUANT:
      j->m->fp->quantize((const float *)j->in + r0 * o->c, (r1 - r0) * o->c, o->step, o->qn, o->qp, j->out + r0 * o->c);
      break;
    case OP_CONV1X1: {
      oq_epilogue e = epilogue(o, j->res ? j->res + r0 * o->co * 4 : NULL, j->out + r0 * o->co * osize);
      j->m->kernels->conv1x1(j->in + r0 * o->c, o->c, (int)(r1 - r0), o->packed, &e, scratch);
      break;
    }
    default:
      for (size_t n = r0; n < r1; n++) {
        const float *x = (const float *)j->in + n * in_px;
        unsigned char *out = j->out + n * out_px * osize;
        float *of = o->out_codes ? NULL : (float *)out;
        if (o->type == OP_SE) j->m->fp->se(o, x, of, o->out_codes ? out : NULL, scratch);
        if (o->type == OP_POOL) j->m->fp->pool(o, x, of, o->out_codes ? out : NULL, scratch);
        if (o->type == OP_LINEAR) j->m->fp->linear(o, x, of);
      }
  }
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int run(oqat_rt_model *m, const float *input, int batch, float *logits, oqat_rt_visit visit, void *user,
               double *seconds) {
  if (!input || !logits || batch < 1) return oq_error("run needs input, logits and a batch >= 1");
  size_t per_chunk = CHUNK_BYTES / (m->arena_per_image ? m->arena_per_image : 1);
  int chunk = per_chunk < 1 ? 1 : per_chunk < (size_t)batch ? (int)per_chunk : batch;
  if (chunk > m->arena_images) {
    unsigned char *arena = aligned_alloc(ALIGN, m->arena_per_image * chunk + ALIGN);
    if (!arena) return oq_error("out of memory for the activations of %d images", chunk);
    free(m->arena);
    m->arena = arena, m->arena_images = chunk;
  }
  size_t in_image = (size_t)m->in_c * m->in_h * m->in_w;
  for (int first = 0; first < batch; first += chunk) {
    int images = batch - first < chunk ? batch - first : chunk;
    const float *x = input + first * in_image;
    float *y = logits + (size_t)first * m->num_classes;
    for (int i = 0; i < m->n_ops; i++) {
      const oq_op *o = &m->ops[i];
      job j = {m, o, images, 1, 0, value(m, o->input, images, x, y),
               o->residual >= 0 ? value(m, o->residual, images, x, y) : NULL, value(m, i + 1, images, x, y)};
      double work;
      j.rows = op_rows(o, images, &work);
      double tasks = work * j.rows / MIN_TASK_WORK, most = TASKS_PER_THREAD * m->threads;
      if (m->threads > 1 && tasks >= 2) j.n_tasks = (int)(tasks < most ? tasks : most);
      if ((size_t)j.n_tasks > j.rows) j.n_tasks = (int)j.rows;
      double start = seconds ? now() : 0;
      oq_pool_run(m->pool, run_task, &j, j.n_tasks);
      if (seconds) seconds[i] += now() - start;
      if (visit) visit(user, i, first, images, j.out, value_bytes(o) * images);
    }
  }
  return 0;
}

int oqat_rt_run_trace(oqat_rt_model *m, const float *input, int batch, float *logits, oqat_rt_visit visit,
                      void *user) {
  if (!m) return oq_error("run needs a model");
  pthread_mutex_lock(&m->run_lock); /* the arena and the scratch are the model's */
  int rc = run(m, input, batch, logits, visit, user, NULL);
  pthread_mutex_unlock(&m->run_lock);
  return rc;
}

int oqat_rt_run_timed(oqat_rt_model *m, const float *input, int batch, float *logits, double *seconds) {
  if (!m || !seconds) return oq_error("a timed run needs a model and its seconds");
  pthread_mutex_lock(&m->run_lock);
  int rc = run(m, input, batch, logits, NULL, NULL, seconds);
  pthread_mutex_unlock(&m->run_lock);
  return rc;
}

int oqat_rt_run(oqat_rt_model *m, const float *input, int batch, float *logits) {
  return oqat_rt_run_trace(m, input, batch, logits, NULL, NULL);
}

int oqat_rt_num_ops(const oqat_rt_model *m) { return m->n_ops; }

int oqat_rt_op_info(const oqat_rt_model *m, int i, oqat_rt_op *out) {
  if (!m || i < 0 || i >= m->n_ops) return oq_error("no op %d", i);
  const oq_op *o = &m->ops[i];
  *out = (oqat_rt_op){o->name ? o->name : "", oq_op_names[o->type], o->input, o->residual, o->ho, o->wo, o->co,
                      o->out_codes, o->qn, o->qp, o->step};
  return 0;
}
