/* Speed of the runtime's 1x1 conv and depthwise kernels on MobileNetV3's shapes, one thread,
 * side by side with fp32 FMA kernels of the same shape (register-tiled, packed weights, bias and
 * h_swish fused: what a good fp32 runtime does). Built and run by benchmarks/kernel_speed.py.
 *
 *   kernel_speed [--tiny] [--bits 2,3,4,8]
 * Prints one line per shape and kernel: "shape rows cin cout kernel GMAC/s" (1x1) and
 * "dw h w c k stride kernel GMAC/s"; the kernels are fp32-avx2 and fp32-avx512 (FMA, where this
 * CPU runs them) and PATH:aAwW for each runnable path and width (activation and weight codes of
 * the same width, u8 h_swish output), PATH:aAwW+t the same with thresholds (<= 3 bits). Kernels
 * run in interleaved rounds and the best round counts (the machine is shared).
 */
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../oqat/runtime/src/kernels.h"

/* This thread's CPU time: the time other processes of the shared machine take the core away
   does not count (their cache and memory traffic still does). */
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* One kernel on one shape: fn(arg) is a call; reps calls take about the time budget. */
typedef struct {
  char name[40];
  void (*fn)(void *);
  void *arg;
  int reps;
  double best;  /* seconds per call, the best of the rounds */
} bench;

static void calibrate(bench *b, double budget) {
  b->fn(b->arg);
  double t0 = now();
  int n = 0;
  while (now() - t0 < budget / 4) b->fn(b->arg), n++;
  b->reps = (int)(n * 4 * budget / (now() - t0 + 1e-9)) + 1;
  b->best = 1e30;
}

/* Rounds over all kernels in turn, so that a burst of load from other processes slows all of
   them, and the best of the rounds is kept for each. */
static void run_rounds(bench *b, int n, int rounds) {
  for (int r = 0; r < rounds; r++)
    for (int i = 0; i < n; i++) {
      double s = now();
      for (int k = 0; k < b[i].reps; k++) b[i].fn(b[i].arg);
      double dt = (now() - s) / b[i].reps;
      b[i].best = dt < b[i].best ? dt : b[i].best;
    }
}

/* ---- fp32 reference GEMM: out[r][c] = hswish(sum_k a[r][k] * w[k][c] + bias[c]) ---- */

typedef struct {
  const float *a, *w, *bias;  /* w packed: tiles of NC channels, [cin][NC] each */
  float *out;
  int rows, cin, cout;
} f32_args;

__attribute__((target("avx2,fma"))) static void out_avx2(const f32_args *g, int r, int c, __m256 acc) {
  __m256 y = _mm256_add_ps(acc, _mm256_loadu_ps(g->bias + c));
  __m256 t = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(y, _mm256_set1_ps(3.0f)), _mm256_setzero_ps()), _mm256_set1_ps(6.0f));
  _mm256_storeu_ps(g->out + (size_t)r * g->cout + c, _mm256_mul_ps(_mm256_mul_ps(y, t), _mm256_set1_ps(1.0f / 6)));
}

__attribute__((target("avx512f,fma"))) static void out_avx512(const f32_args *g, int r, int c, __m512 acc) {
  __m512 y = _mm512_add_ps(acc, _mm512_loadu_ps(g->bias + c));
  __m512 t = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(y, _mm512_set1_ps(3.0f)), _mm512_setzero_ps()), _mm512_set1_ps(6.0f));
  _mm512_storeu_ps(g->out + (size_t)r * g->cout + c, _mm512_mul_ps(_mm512_mul_ps(y, t), _mm512_set1_ps(1.0f / 6)));
}

__attribute__((target("avx2,fma"))) static void f32_avx2(void *p) {
  enum { MR = 6, NC = 16 };
  const f32_args *g = p;
  for (int c0 = 0; c0 < g->cout; c0 += NC) {
    const float *w = g->w + (size_t)c0 * g->cin;
    for (int r0 = 0; r0 < g->rows; r0 += MR) {
      const float *ar[MR];
      for (int i = 0; i < MR; i++) ar[i] = g->a + (size_t)(r0 + i < g->rows ? r0 + i : g->rows - 1) * g->cin;
      __m256 s[MR][2];
#pragma GCC unroll 6
      for (int i = 0; i < MR; i++) s[i][0] = s[i][1] = _mm256_setzero_ps();
      for (int k = 0; k < g->cin; k++) {
        __m256 w0 = _mm256_loadu_ps(w + k * NC), w1 = _mm256_loadu_ps(w + k * NC + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
          __m256 b = _mm256_broadcast_ss(ar[i] + k);
          s[i][0] = _mm256_fmadd_ps(b, w0, s[i][0]), s[i][1] = _mm256_fmadd_ps(b, w1, s[i][1]);
        }
      }
      /* unrolled, so that the sums stay in registers (an indexed array would live in memory) */
#pragma GCC unroll 6
      for (int i = 0; i < MR; i++)
        if (r0 + i < g->rows) out_avx2(g, r0 + i, c0, s[i][0]), out_avx2(g, r0 + i, c0 + 8, s[i][1]);
    }
  }
}

__attribute__((target("avx512f,fma"))) static void f32_avx512(void *p) {
  enum { MR = 12, NC = 32 };
  const f32_args *g = p;
  for (int c0 = 0; c0 < g->cout; c0 += NC) {
    const float *w = g->w + (size_t)c0 * g->cin;
    for (int r0 = 0; r0 < g->rows; r0 += MR) {
      const float *ar[MR];
      for (int i = 0; i < MR; i++) ar[i] = g->a + (size_t)(r0 + i < g->rows ? r0 + i : g->rows - 1) * g->cin;
      __m512 s[MR][2];
#pragma GCC unroll 12
      for (int i = 0; i < MR; i++) s[i][0] = s[i][1] = _mm512_setzero_ps();
      for (int k = 0; k < g->cin; k++) {
        __m512 w0 = _mm512_loadu_ps(w + k * NC), w1 = _mm512_loadu_ps(w + k * NC + 16);
#pragma GCC unroll 12
        for (int i = 0; i < MR; i++) {
          __m512 b = _mm512_set1_ps(ar[i][k]);
          s[i][0] = _mm512_fmadd_ps(b, w0, s[i][0]), s[i][1] = _mm512_fmadd_ps(b, w1, s[i][1]);
        }
      }
#pragma GCC unroll 12
      for (int i = 0; i < MR; i++)
        if (r0 + i < g->rows) out_avx512(g, r0 + i, c0, s[i][0]), out_avx512(g, r0 + i, c0 + 16, s[i][1]);
    }
  }
}

/* Arguments of an fp32 GEMM of the shape (channels padded to the tile: they cost their MACs). */
static f32_args *f32_setup(int rows, int cin, int cout) {
  int cpad = (cout + 31) / 32 * 32;
  f32_args *g = malloc(sizeof *g);
  float *a = malloc(sizeof(float) * rows * cin), *w = calloc((size_t)cin * cpad, sizeof(float));
  for (int i = 0; i < rows * cin; i++) a[i] = (float)(i % 7);
  for (int i = 0; i < cin * cpad; i++) w[i] = (float)(i % 5) - 2;
  *g = (f32_args){a, w, calloc(cpad, sizeof(float)), malloc(sizeof(float) * rows * cpad), rows, cin, cpad};
  return g;
}

static void f32_free(f32_args *g) {
  free((void *)g->a), free((void *)g->w), free((void *)g->bias), free(g->out), free(g);
}

/* ---- the runtime's kernels ---- */

typedef struct {
  const oq_kernels *k;
  const uint8_t *a;
  int rows, cin;
  void *packed, *scratch;
  oq_epilogue e;
  int32_t *thr;
  /* depthwise */
  int h, w, c, ks, stride;
  int8_t *dw;
} q_args;

static void q_run(void *p) {
  q_args *g = p;
  g->k->conv1x1(g->a, g->cin, g->rows, g->packed, &g->e, g->scratch);
}

static void *alloc64(size_t n) { return aligned_alloc(64, (n + 63) / 64 * 64 + 64); }

static void dw_run(void *p) {
  q_args *g = p;
  g->k->dwconv(g->a, g->h, g->w, g->c, g->ks, g->stride, g->dw, 0, &g->e, 0, (g->h - 1) / g->stride + 1);
}

static uint8_t *random_codes(size_t n, int bits) {
  uint8_t *a = malloc(n);
  for (size_t i = 0; i < n; i++) a[i] = (uint8_t)(rand() % (1 << bits));
  return a;
}

static int8_t *random_weights(size_t n, int bits) {
  int8_t *w = malloc(n);
  for (size_t i = 0; i < n; i++) w[i] = (int8_t)(rand() % (1 << bits) - (1 << (bits - 1)));
  return w;
}

/* A u8 h_swish epilogue into `bits`-bit codes of rows x cout, its scale spreading sums of about
   `typical` over the codes; thr: with thresholds for sums within +-bound. */
static void epilogue_setup(q_args *g, int rows, int cout, int bits, double typical, int32_t bound, int thr) {
  float *scale = malloc(sizeof(float) * cout), *shift = malloc(sizeof(float) * cout);
  for (int c = 0; c < cout; c++) scale[c] = (float)(3.0 / typical) * (c % 2 ? 1 : -1), shift[c] = 0.1f;
  g->e = (oq_epilogue){.scale = scale, .shift = shift, .act = OQ_ACT_HSWISH, .out_u8 = malloc((size_t)rows * cout),
                       .ld_out = cout, .step = 6.0f / (1 << bits), .qn = 0, .qp = (1 << bits) - 1};
  if (!thr) return;
  g->thr = malloc(sizeof(int32_t) * (size_t)(g->e.qp + 1) * oq_thresholds_ld(cout));
  if (!oq_thresholds(&g->e, cout, -bound, bound, g->thr)) abort();
  g->e.thresholds = g->thr;
}

static q_args *q_setup(const oq_kernels *k, int rows, int cin, int cout, int bits, int thr) {
  q_args *g = calloc(1, sizeof *g);
  int8_t *w = random_weights((size_t)cin * cout, bits);
  g->k = k, g->a = random_codes((size_t)rows * cin, bits), g->rows = rows, g->cin = cin;
  g->packed = alloc64(k->pack1x1_size(cout, cin, bits)), g->scratch = alloc64(k->scratch1x1_size(cout, cin, bits));
  k->pack1x1(w, cout, cin, bits, bits, g->packed);
  free(w);
  int umax = (1 << bits) - 1, wm = 1 << (bits - 1);
  epilogue_setup(g, rows, cout, bits, sqrt(cin) * umax * wm / 2, cin * umax * wm, thr);
  return g;
}

static q_args *dw_setup(const oq_kernels *k, int h, int w, int c, int ks, int stride, int bits, int thr) {
  q_args *g = calloc(1, sizeof *g);
  int rows = ((h - 1) / stride + 1) * ((w - 1) / stride + 1), umax = (1 << bits) - 1, wm = 1 << (bits - 1);
  g->k = k, g->a = random_codes((size_t)h * w * c, bits), g->dw = random_weights((size_t)ks * ks * c, bits);
  g->h = h, g->w = w, g->c = c, g->ks = ks, g->stride = stride;
  epilogue_setup(g, rows, c, bits, ks * umax * wm / 2.0, ks * ks * umax * wm, thr);
  return g;
}

static void q_free(q_args *g) {
  free((void *)g->a), free(g->packed), free(g->scratch), free(g->dw), free(g->thr);
  free((void *)g->e.scale), free((void *)g->e.shift), free(g->e.out_u8), free(g);
}

/* All kernels on one shape, in rounds; prints one line each. */
static void bench_shape(int rows, int cin, int cout, const int *bits, int nbits, double budget, int rounds) {
  static const char *paths[] = {"avx2", "avx512vnni"};
  bench b[32];
  int n = 0;
  f32_args *g = f32_setup(rows, cin, cout);
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    b[n++] = (bench){"fp32-avx2", f32_avx2, g, 0, 0};
  if (__builtin_cpu_supports("avx512f")) b[n++] = (bench){"fp32-avx512", f32_avx512, g, 0, 0};
  for (size_t p = 0; p < sizeof paths / sizeof paths[0]; p++) {
    const oq_kernels *k = oq_kernels_by_name(paths[p]);
    for (int i = 0; k && i < nbits; i++)
      for (int thr = 0; thr < 1 + ((1 << bits[i]) - 1 <= OQ_THRESHOLDS_MAX); thr++, n++) {
        b[n] = (bench){"", q_run, q_setup(k, rows, cin, cout, bits[i], thr), 0, 0};
        snprintf(b[n].name, sizeof b[n].name, "%s:a%dw%d%s", k->name, bits[i], bits[i], thr ? "+t" : "");
      }
  }
  for (int i = 0; i < n; i++) calibrate(&b[i], budget);
  run_rounds(b, n, rounds);
  for (int i = 0; i < n; i++) {
    printf("shape %d %d %d %s %.2f\n", rows, cin, cout, b[i].name, (double)rows * cin * cout / b[i].best / 1e9);
    if (b[i].fn == q_run) q_free(b[i].arg);
  }
  f32_free(g);
  fflush(stdout);
}

/* ---- depthwise: fp32 (8 or 16 channels per FMA) and the runtime's ---- */

typedef struct {
  const float *a, *wt, *bias;  /* a [h][w][c], wt [k*k][c] */
  float *out;
  int h, w, c, k, stride;
} f32dw_args;

__attribute__((target("avx2,fma"))) static void f32dw_avx2(void *p) {
  const f32dw_args *g = p;
  int pad = g->k / 2, ho = (g->h - 1) / g->stride + 1, wo = (g->w - 1) / g->stride + 1;
  for (int oy = 0; oy < ho; oy++)
    for (int ox = 0; ox < wo; ox++)
      for (int c = 0; c < g->c; c += 8) {
        __m256 s = _mm256_setzero_ps();
        for (int ky = 0; ky < g->k; ky++) {
          int iy = oy * g->stride + ky - pad;
          if (iy < 0 || iy >= g->h) continue;
          for (int kx = 0; kx < g->k; kx++) {
            int ix = ox * g->stride + kx - pad;
            if (ix < 0 || ix >= g->w) continue;
            s = _mm256_fmadd_ps(_mm256_loadu_ps(g->a + ((size_t)iy * g->w + ix) * g->c + c),
                                _mm256_loadu_ps(g->wt + (size_t)(ky * g->k + kx) * g->c + c), s);
          }
        }
        f32_args o = {.bias = g->bias, .out = g->out, .cout = g->c};
        out_avx2(&o, oy * wo + ox, c, s);
      }
}

__attribute__((target("avx512f,fma"))) static void f32dw_avx512(void *p) {
  const f32dw_args *g = p;
  int pad = g->k / 2, ho = (g->h - 1) / g->stride + 1, wo = (g->w - 1) / g->stride + 1;
  for (int oy = 0; oy < ho; oy++)
    for (int ox = 0; ox < wo; ox++)
      for (int c = 0; c < g->c; c += 16) {
        __m512 s = _mm512_setzero_ps();
        for (int ky = 0; ky < g->k; ky++) {
          int iy = oy * g->stride + ky - pad;
          if (iy < 0 || iy >= g->h) continue;
          for (int kx = 0; kx < g->k; kx++) {
            int ix = ox * g->stride + kx - pad;
            if (ix < 0 || ix >= g->w) continue;
            s = _mm512_fmadd_ps(_mm512_loadu_ps(g->a + ((size_t)iy * g->w + ix) * g->c + c),
                                _mm512_loadu_ps(g->wt + (size_t)(ky * g->k + kx) * g->c + c), s);
          }
        }
        f32_args o = {.bias = g->bias, .out = g->out, .cout = g->c};
        out_avx512(&o, oy * wo + ox, c, s);
      }
}

/* All kernels on one depthwise shape, in rounds. The fp32 kernels run whole vectors: the last
   one of a pixel reads and writes into the next pixel's channels (the buffers have a vector of
   slack at the end), as a masked tail would cost the same. */
static void bench_dw(int h, int w, int c, int ks, int stride, const int *bits, int nbits, double budget, int rounds) {
  static const char *paths[] = {"avx2", "avx512vnni"};
  bench b[32];
  int n = 0, rows = ((h - 1) / stride + 1) * ((w - 1) / stride + 1);
  float *a = malloc(sizeof(float) * (h * w * c + 16)), *wt = malloc(sizeof(float) * (ks * ks * c + 16));
  for (int i = 0; i < h * w * c + 16; i++) a[i] = (float)(i % 7);
  for (int i = 0; i < ks * ks * c + 16; i++) wt[i] = (float)(i % 5) - 2;
  f32dw_args g = {a, wt, calloc(c + 16, sizeof(float)), malloc(sizeof(float) * (rows * c + 16)), h, w, c, ks, stride};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    b[n++] = (bench){"fp32-avx2", f32dw_avx2, &g, 0, 0};
  if (__builtin_cpu_supports("avx512f")) b[n++] = (bench){"fp32-avx512", f32dw_avx512, &g, 0, 0};
  for (size_t p = 0; p < sizeof paths / sizeof paths[0]; p++) {
    const oq_kernels *k = oq_kernels_by_name(paths[p]);
    for (int i = 0; k && i < nbits; i++)
      for (int thr = 0; thr < 1 + ((1 << bits[i]) - 1 <= OQ_THRESHOLDS_MAX); thr++, n++) {
        b[n] = (bench){"", dw_run, dw_setup(k, h, w, c, ks, stride, bits[i], thr), 0, 0};
        snprintf(b[n].name, sizeof b[n].name, "%s:a%dw%d%s", k->name, bits[i], bits[i], thr ? "+t" : "");
      }
  }
  for (int i = 0; i < n; i++) calibrate(&b[i], budget);
  run_rounds(b, n, rounds);
  for (int i = 0; i < n; i++) {
    printf("dw %d %d %d %d %d %s %.2f\n", h, w, c, ks, stride, b[i].name, (double)rows * c * ks * ks / b[i].best / 1e9);
    if (b[i].fn == dw_run) q_free(b[i].arg);
  }
  free(a), free(wt), free((void *)g.bias), free(g.out);
  fflush(stdout);
}

int main(int argc, char **argv) {
  static const int shapes[][3] = {{3136, 24, 72}, {3136, 72, 24},  {784, 40, 240}, {784, 240, 40},
                                  {196, 80, 480}, {196, 112, 672}, {196, 672, 112}, {49, 160, 960},
                                  {49, 960, 160}};
  /* h w c k stride */
  static const int dws[][5] = {{112, 112, 48, 3, 2}, {56, 56, 72, 3, 1}, {56, 56, 72, 5, 2}, {28, 28, 120, 5, 1},
                               {28, 28, 240, 3, 2},  {14, 14, 480, 3, 1}, {14, 14, 672, 5, 2}, {7, 7, 960, 5, 1}};
  int nshapes = sizeof shapes / sizeof shapes[0], ndw = sizeof dws / sizeof dws[0], bits[8] = {2, 3, 4, 8}, nbits = 4;
  double budget = 0.004;
  int rounds = 7;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tiny")) {
      nshapes = 2, ndw = 1, budget = 0.0005, rounds = 2;
    } else if (!strcmp(argv[i], "--bits") && i + 1 < argc) {
      nbits = 0;
      for (char *s = strtok(argv[++i], ","); s && nbits < 8; s = strtok(NULL, ",")) bits[nbits++] = atoi(s);
    } else {
      fprintf(stderr, "usage: kernel_speed [--tiny] [--bits 2,3,4,8]\n");
      return 2;
    }
  }
  for (int s = 0; s < nshapes; s++) bench_shape(shapes[s][0], shapes[s][1], shapes[s][2], bits, nbits, budget, rounds);
  for (int s = 0; s < ndw; s++) bench_dw(dws[s][0], dws[s][1], dws[s][2], dws[s][3], dws[s][4], bits, nbits, budget, rounds);
  return 0;
}
