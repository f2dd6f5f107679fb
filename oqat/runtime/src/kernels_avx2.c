/* avx2 kernels. FIRST CUT: forwards to the scalar reference until the SIMD kernels land. */
#include "kernels.h"

#if defined(__x86_64__)
static size_t pack1x1_size(int cout, int cin, int wbits) {
  return oq_kernels_scalar.pack1x1_size(cout, cin, wbits);
}
static void pack1x1(const int8_t *codes, int cout, int cin, int wbits, int abits, void *dst) {
  oq_kernels_scalar.pack1x1(codes, cout, cin, wbits, abits, dst);
}
static size_t scratch1x1_size(int cout, int cin, int wbits) {
  return oq_kernels_scalar.scratch1x1_size(cout, cin, wbits);
}
static void conv1x1(const uint8_t *a, int lda, int rows, const void *packed, const oq_epilogue *e,
                    void *scratch) {
  oq_kernels_scalar.conv1x1(a, lda, rows, packed, e, scratch);
}
static void dwconv(const uint8_t *a, int h, int w, int c, int k, int stride, const int8_t *wt,
                   uint8_t pad_u, const oq_epilogue *e, int oy0, int oy1) {
  oq_kernels_scalar.dwconv(a, h, w, c, k, stride, wt, pad_u, e, oy0, oy1);
}

const oq_kernels oq_kernels_avx2 = {
    .name = "avx2",
    .pack1x1_size = pack1x1_size,
    .pack1x1 = pack1x1,
    .conv1x1 = conv1x1,
    .scratch1x1_size = scratch1x1_size,
    .dwconv = dwconv,
};
#endif
