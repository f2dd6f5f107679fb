/* Run-time choice of a kernel path: what the CPU and the OS support, overridable by
 * OQAT_RT_ISA. No ISA-specific code here (compiled without any -m flag). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static char error_[160];

#if defined(__x86_64__)
#include <cpuid.h>

/* XCR0: which register states the OS saves (bit 1 SSE, 2 AVX, 5-7 the AVX-512 opmask and
   upper halves); a CPU feature is usable only when its state is saved too. */
static unsigned long long xcr0(void) {
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((unsigned long long)hi << 32) | lo;
}

static int has_avx2(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
  if (!osxsave || !avx || !fma || (xcr0() & 0x6) != 0x6) return 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  return (b >> 5) & 1;
}

static int has_avx512vnni(void) {
  unsigned a, b, c, d;
  if (!has_avx2() || (xcr0() & 0xe6) != 0xe6) return 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  int f = (b >> 16) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1, vnni = (c >> 11) & 1;
  return f && bw && vl && vnni;
}
#endif

typedef struct {
  const oq_kernels *k;
  int (*runnable)(void);
} path;

static int always(void) { return 1; }

/* Best first. */
static const path paths_[] = {
#if defined(__x86_64__)
    {&oq_kernels_avx512vnni, has_avx512vnni},
    {&oq_kernels_avx2, has_avx2},
#endif
    {&oq_kernels_scalar, always},
};
enum { n_paths = sizeof paths_ / sizeof paths_[0] };

const char *oq_kernels_error(void) { return error_; }

const oq_kernels *oq_kernels_by_name(const char *name) {
  error_[0] = 0;
  for (int i = 0; i < n_paths; i++) {
    if (strcmp(paths_[i].k->name, name) != 0) continue;
    if (paths_[i].runnable()) return paths_[i].k;
    snprintf(error_, sizeof error_, "kernel path '%s' is not supported by this CPU or OS", name);
    return NULL;
  }
  int n = snprintf(error_, sizeof error_, "unknown kernel path '%.40s' (known:", name);
  for (int i = 0; i < n_paths && n < (int)sizeof error_; i++)
    n += snprintf(error_ + n, sizeof error_ - n, " %s", paths_[i].k->name);
  if (n < (int)sizeof error_) snprintf(error_ + n, sizeof error_ - n, ")");
  return NULL;
}

const oq_kernels *oq_kernels_select(void) {
  const char *forced = getenv("OQAT_RT_ISA");
  if (forced && *forced) return oq_kernels_by_name(forced);
  error_[0] = 0;
  for (int i = 0; i < n_paths; i++)
    if (paths_[i].runnable()) return paths_[i].k;
  return &oq_kernels_scalar;  /* unreachable: scalar is always runnable */
}
