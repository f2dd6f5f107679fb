/* Compares every kernel path bit for bit with the scalar reference: conv1x1 and dwconv on odd
 * shapes, all weight and activation widths 1..8, every activation, residual or not, float or
 * code output, scales of both signs (and zero), codes drawn from a fixed seed (a share of cases
 * at the extreme codes, to reach the largest sums). Where an epilogue qualifies for thresholds
 * (oq_thresholds), the path's threshold output must equal the scalar float output too.
 *
 *   kernel_test            test the path OQAT_RT_ISA names, or every path this CPU runs
 * Exit status: 0 pass, 1 mismatch, 77 the named path cannot run here (the reason is printed).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static uint64_t rng_ = 0x5eed0a7;

static uint32_t rnd(void) {  /* splitmix64 */
  uint64_t z = (rng_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return (uint32_t)((z ^ (z >> 31)) >> 32);
}
static int rnd_int(int lo, int hi) { return lo + (int)(rnd() % (uint32_t)(hi - lo + 1)); }
static float rnd_float(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() >> 8) / 16777216.0f; }
static int pick(const int *v, int n) { return v[rnd() % (uint32_t)n]; }
#define PICK(v) pick(v, (int)(sizeof v / sizeof v[0]))

static int wmin(int bits) { return bits == 1 ? -1 : -(1 << (bits - 1)); }
static int wmax(int bits) { return bits == 1 ? 1 : (1 << (bits - 1)) - 1; }

/* extreme: every code at the end of its range that makes the sums largest in magnitude (1), or
   the largest weight code (2: the largest sums of a kernel that offsets weights to unsigned) */
static void fill_codes(uint8_t *a, size_t na, int abits, int8_t *w, size_t nw, int wbits, int extreme) {
  int umax = (1 << abits) - 1, wext = extreme == 2 ? wmax(wbits) : wmin(wbits);
  for (size_t i = 0; i < na; i++) a[i] = (uint8_t)(extreme ? umax : rnd() % 4 == 0 ? umax : rnd_int(0, umax));
  for (size_t i = 0; i < nw; i++)
    w[i] = (int8_t)(extreme ? wext : rnd() % 4 == 0 ? wext : rnd_int(wmin(wbits), wmax(wbits)));
}

typedef struct {
  float *scale, *shift, *residual;
  int32_t *bias;
  oq_epilogue e;
  size_t out_bytes;
} epi;

/* A random epilogue for `rows` x `cout` outputs whose values spread over the output codes;
   tie: scale = step and shift = (m + 1/2) step (step not a power of two), so that y / step lands
   on or within a few ulps of a half-integer, where 1/step in place of a division would round
   wrong; with h_swish, m puts y past 3, where h_swish(y) is about y. thr: the output fit for
   thresholds (codes of at most 4 bits, no residual), except the activation and sign. */
static void make_epilogue(epi *p, int rows, int cout, double typical, int tie, int thr) {
  p->scale = malloc(sizeof(float) * cout), p->shift = malloc(sizeof(float) * cout);
  p->bias = malloc(sizeof(int32_t) * cout);
  oq_epilogue *e = &p->e;
  memset(e, 0, sizeof *e);
  int ob = rnd_int(1, thr ? 4 : 8), sign = rnd() % 2;
  e->qn = sign ? -(1 << (ob - 1)) : 0, e->qp = sign ? (1 << (ob - 1)) - 1 : (1 << ob) - 1;
  if (ob == 1 && sign) e->qn = -1, e->qp = 1;
  e->step = tie ? rnd_float(0.05f, 0.3f) : rnd_float(3.0f, 12.0f) / (float)(e->qp - e->qn);
  e->act = tie ? (rnd() % 2 ? OQ_ACT_NONE : OQ_ACT_HSWISH) : rnd_int(0, 3);
  for (int c = 0; c < cout; c++) {
    p->scale[c] = tie ? e->step : rnd() % 16 == 0 ? 0.0f : rnd_float(0.5f, 4.0f) / (float)(typical + 1);
    if (rnd() % 3 == 0) p->scale[c] = -p->scale[c];
    p->shift[c] = tie ? e->step * (e->act == OQ_ACT_HSWISH ? ceilf(3.0f / e->step) + 0.5f : 0.5f)
                     : rnd_float(-3.0f, 3.0f);
    p->bias[c] = rnd_int(-50, 50);
  }
  e->scale = p->scale, e->shift = p->shift;
  e->acc_bias = !tie && rnd() % 2 ? p->bias : NULL;
  e->ld_res = cout + rnd_int(0, 3);
  p->residual = NULL;
  if (!tie && !thr && rnd() % 2) {
    size_t n = (size_t)rows * e->ld_res;
    p->residual = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) p->residual[i] = rnd_float(-4.0f, 4.0f);
  }
  e->residual = p->residual;
  e->ld_out = cout + rnd_int(0, 5);
  int f32 = !tie && !thr && rnd() % 3 == 0;
  p->out_bytes = (size_t)rows * e->ld_out * (f32 ? sizeof(float) : 1);
  void *out = malloc(p->out_bytes);
  memset(out, 0xa5, p->out_bytes);  /* the gaps between rows must stay untouched */
  e->out_f32 = f32 ? out : NULL, e->out_u8 = f32 ? NULL : out;
}

static void *out_of(const epi *p) { return p->e.out_f32 ? (void *)p->e.out_f32 : (void *)p->e.out_u8; }

/* A second epilogue like p, writing to its own buffer. */
static epi copy_epilogue(const epi *p) {
  epi q = *p;
  void *out = malloc(p->out_bytes);
  memcpy(out, out_of(p), p->out_bytes);
  if (p->e.out_f32) q.e.out_f32 = out; else q.e.out_u8 = out;
  return q;
}

static void free_epilogue(epi *p, epi *q) {
  free(p->scale), free(p->shift), free(p->bias), free(p->residual), free(out_of(p)), free(out_of(q));
}

static void *alloc64(size_t n) { return aligned_alloc(64, (n + 63) / 64 * 64 + 64); }

static int failures_;

static void report(const char *what, const char *path, const epi *p, const epi *q, const char *shape) {
  failures_++;
  if (failures_ > 10) return;
  const uint8_t *x = out_of(p), *y = out_of(q);
  size_t i = 0;
  while (i < p->out_bytes && x[i] == y[i]) i++;
  fprintf(stderr, "MISMATCH %s [%s] %s act=%d res=%d bias=%d f32=%d q=[%d,%d]: first differing byte %zu\n", what,
          path, shape, p->e.act, p->e.residual != NULL, p->e.acc_bias != NULL, p->e.out_f32 != NULL, p->e.qn,
          p->e.qp, i);
}

static int threshold_cases_;

/* Thresholds of p's epilogue (cout channels, sums within +-bound) into t, which must be a fresh
   copy of p; NULL where oq_thresholds refuses, which it must do exactly for h_swish into a
   signed quantizer and for more than OQ_THRESHOLDS_MAX codes (make_epilogue's thr cases qualify
   otherwise). */
static int32_t *thresholds_of(const epi *p, epi *t, int cout, int32_t bound) {
  int32_t *thr = malloc(sizeof(int32_t) * (size_t)(p->e.qp - p->e.qn + 1) * oq_thresholds_ld(cout));
  int ok = oq_thresholds(&p->e, cout, -bound, bound, thr);
  if (ok != (p->e.qp - p->e.qn <= OQ_THRESHOLDS_MAX && !(p->e.act == OQ_ACT_HSWISH && p->e.qn < 0))) {
    failures_++;
    fprintf(stderr, "oq_thresholds returned %d for act=%d q=[%d,%d]\n", ok, p->e.act, p->e.qn, p->e.qp);
  }
  if (!ok) {
    free(thr);
    return NULL;
  }
  threshold_cases_++;
  t->e.thresholds = thr;
  return thr;
}

static void check_conv1x1(const oq_kernels *k, int rows, int cin, int cout, int abits, int wbits, int extreme,
                          int tie, int thr) {
  const oq_kernels *ref = &oq_kernels_scalar;
  int lda = cin + (rnd() % 2 ? rnd_int(1, 9) : 0);
  size_t na = (size_t)(rows - 1) * lda + cin;  /* no slack after the last row */
  uint8_t *a = malloc(na);
  int8_t *w = malloc((size_t)cout * cin);
  fill_codes(a, na, abits, w, (size_t)cout * cin, wbits, extreme);
  epi p, q, t;
  double umax = (1 << abits) - 1, wm = -wmin(wbits);
  make_epilogue(&p, rows, cout, sqrt((double)cin) * umax * wm / 2, tie, thr);
  q = copy_epilogue(&p), t = copy_epilogue(&p);
  int32_t *th = thr ? thresholds_of(&p, &t, cout, (int32_t)(cin * umax * wm)) : NULL;
  void *pr = alloc64(ref->pack1x1_size(cout, cin, wbits)), *pk = alloc64(k->pack1x1_size(cout, cin, wbits));
  void *sr = alloc64(ref->scratch1x1_size(cout, cin, wbits)), *sk = alloc64(k->scratch1x1_size(cout, cin, wbits));
  ref->pack1x1(w, cout, cin, wbits, abits, pr);
  k->pack1x1(w, cout, cin, wbits, abits, pk);
  ref->conv1x1(a, lda, rows, pr, &p.e, sr);
  k->conv1x1(a, lda, rows, pk, &q.e, sk);
  if (th) k->conv1x1(a, lda, rows, pk, &t.e, sk);
  char shape[120];
  snprintf(shape, sizeof shape, "rows=%d cin=%d cout=%d lda=%d a%d w%d extreme=%d", rows, cin, cout, lda, abits,
           wbits, extreme);
  if (memcmp(out_of(&p), out_of(&q), p.out_bytes) != 0) report("conv1x1", k->name, &p, &q, shape);
  if (th && memcmp(out_of(&p), out_of(&t), p.out_bytes) != 0) report("conv1x1 thresholds", k->name, &p, &t, shape);
  free(a), free(w), free(pr), free(pk), free(sr), free(sk), free(th), free(out_of(&t));
  free_epilogue(&p, &q);
}

static void check_dwconv(const oq_kernels *k, int h, int w, int c, int ks, int stride, int abits, int wbits,
                         int extreme, int tie, int thr) {
  int ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1;
  uint8_t *a = malloc((size_t)h * w * c);
  int8_t *wt = malloc((size_t)ks * ks * c);
  fill_codes(a, (size_t)h * w * c, abits, wt, (size_t)ks * ks * c, wbits, extreme);
  uint8_t pad_u = (uint8_t)(extreme || rnd() % 2 ? 0 : rnd_int(0, (1 << abits) - 1));
  int oy0 = rnd() % 3 ? 0 : rnd_int(0, ho - 1), oy1 = rnd() % 3 ? ho : rnd_int(oy0, ho);
  epi p, q, t;
  double umax = (1 << abits) - 1, wm = -wmin(wbits);
  make_epilogue(&p, ho * wo, c, ks * umax * wm / 2, tie, thr);
  q = copy_epilogue(&p), t = copy_epilogue(&p);
  int32_t *th = thr ? thresholds_of(&p, &t, c, (int32_t)(ks * ks * umax * wm)) : NULL;
  oq_kernels_scalar.dwconv(a, h, w, c, ks, stride, wt, pad_u, &p.e, oy0, oy1);
  k->dwconv(a, h, w, c, ks, stride, wt, pad_u, &q.e, oy0, oy1);
  if (th) k->dwconv(a, h, w, c, ks, stride, wt, pad_u, &t.e, oy0, oy1);
  char shape[140];
  snprintf(shape, sizeof shape, "h=%d w=%d c=%d k=%d s=%d rows %d..%d pad_u=%d a%d w%d extreme=%d", h, w, c, ks,
           stride, oy0, oy1, pad_u, abits, wbits, extreme);
  if (memcmp(out_of(&p), out_of(&q), p.out_bytes) != 0) report("dwconv", k->name, &p, &q, shape);
  if (th && memcmp(out_of(&p), out_of(&t), p.out_bytes) != 0) report("dwconv thresholds", k->name, &p, &t, shape);
  free(a), free(wt), free(th), free(out_of(&t));
  free_epilogue(&p, &q);
}

static void test_path(const oq_kernels *k) {
  static const int rows_[] = {1, 2, 3, 5, 6, 7, 13, 17, 31, 33, 49, 100};
  static const int cin_[] = {1, 2, 3, 4, 5, 7, 8, 16, 17, 24, 31, 33, 40, 64, 100, 129};
  static const int cout_[] = {1, 3, 8, 15, 16, 17, 24, 31, 33, 40, 63, 64, 65, 72, 100, 129};
  static const int big_cin_[] = {545, 961, 1100};
  static const int hw_[] = {1, 2, 3, 4, 5, 7, 8, 9, 14, 15};
  static const int c_[] = {1, 3, 8, 15, 16, 17, 31, 32, 33, 40, 72, 100};
  int cases = 0;
  for (int abits = 1; abits <= 8; abits++)
    for (int wbits = 1; wbits <= 8; wbits++) {
      /* thresholds: on the near-tie case, an extreme one and three more */
      for (int i = 0; i < 10; i++, cases++)
        check_conv1x1(k, PICK(rows_), PICK(cin_), PICK(cout_), abits, wbits, i == 0 || i == 9, i == 1, i == 1 || i >= 6);
      check_conv1x1(k, rnd_int(1, 8), PICK(big_cin_), PICK(cout_), abits, wbits, 1, 0, 1);
      check_conv1x1(k, rnd_int(1, 8), PICK(big_cin_), PICK(cout_), abits, wbits, 0, 0, 0);
      if (abits <= 2 && wbits <= 2) {  /* avx2's lookup kernel: more shapes, both extremes, every epilogue */
        for (int i = 0; i < 48; i++, cases++)
          check_conv1x1(k, PICK(rows_), PICK(cin_), PICK(cout_), abits, wbits, i % 3, i % 8 == 1, i % 2);
        /* past 2 * 2 * 1820 input channels, avx2's u16 sums are widened more than once */
        for (int i = 0; i < 2; i++, cases++)
          check_conv1x1(k, rnd_int(1, 6), 7283 + 2 * i, rnd_int(1, 40), abits, wbits, 2, 0, i);
      }
      for (int i = 0; i < 6; i++, cases++)
        check_dwconv(k, PICK(hw_), PICK(hw_), PICK(c_), 3 + 2 * rnd_int(0, 2), rnd_int(1, 2), abits, wbits, i == 0,
                     i == 1, i % 2 == 0);
      cases += 2;
    }
  printf("%s: %d cases (%d with thresholds), %d mismatches\n", k->name, cases, threshold_cases_, failures_);
}

static int test_dispatch(void) {
  if (oq_kernels_by_name("no-such-path") || !strstr(oq_kernels_error(), "unknown")) {
    fprintf(stderr, "oq_kernels_by_name accepted an unknown path\n");
    return 1;
  }
  if (!oq_kernels_by_name("scalar")) {
    fprintf(stderr, "the scalar path must always run\n");
    return 1;
  }
  return 0;
}

int main(void) {
  if (test_dispatch()) return 1;
  const char *forced = getenv("OQAT_RT_ISA");
  static const char *all[] = {"avx2", "avx512vnni"};
  if (forced && *forced) {
    const oq_kernels *k = oq_kernels_select();
    if (!k) {
      printf("SKIP: %s\n", oq_kernels_error());
      return strstr(oq_kernels_error(), "unknown") ? 1 : 77;
    }
    test_path(k);
  } else {
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
      const oq_kernels *k = oq_kernels_by_name(all[i]);
      if (k) test_path(k);
      else printf("skipped %s: %s\n", all[i], oq_kernels_error());
    }
  }
  return failures_ ? 1 : 0;
}
