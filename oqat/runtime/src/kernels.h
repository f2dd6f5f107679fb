/* Compute kernels of oqat's quantized convolutions: a 1x1 conv (a GEMM over NHWC rows) and a
 * depthwise kxk conv, on integer codes, with the epilogue of oqat/quant/requant.py fused.
 *
 * Changes to the contract first given (also in /tmp/kernels_contract_changes.txt):
 *  - oq_kernels_error(): why oq_kernels_select / oq_kernels_by_name returned NULL.
 *  - A packed 1x1 weight buffer starts with an oq_packed1x1 header that records cout, cin,
 *    wbits, abits and which path packed it; conv1x1 needs only the pointer. Weights packed by
 *    one path must be used with that same path (conv1x1 of another path aborts on the mismatch).
 *    The packed buffer must be 64-byte aligned (aligned_alloc(64, ...)); its size is
 *    pack1x1_size(cout, cin, wbits) and does not depend on abits.
 *  - Scratch of conv1x1 must be 64-byte aligned too.
 *  - Threshold epilogue (oq_epilogue.thresholds, built by oq_thresholds): where the output is the
 *    next quantizer's codes, with no residual, the code is a monotone step function of the exact
 *    sum acc, so it is a count of integer compares against per-channel thresholds, bit-identical
 *    to the float epilogue (see oq_thresholds).
 *
 * The arithmetic (every path gives bit-identical outputs to the scalar reference):
 *   acc = sum_k u[r][k] * w[c][k], exact in int32; u: activation codes 0..255, w: weight codes
 *   -2^(b-1)..2^(b-1)-1 (1 bit: -1..1). Then in float32, one rounding per operation, no FMA:
 *   y = (float)(acc + acc_bias[c]) * scale[c]; y = y + shift[c]; y = y + residual[r][c];
 *   act: relu max(y,0); relu6 min(max(y,0),6); h_swish (y * min(max(y+3,0),6)) / 6;
 *   out_f32 = y, or out_u8 = rint(min(max(y / step, qn), qp)) - qn (round half to even).
 *   max(a,b) is "a > b ? a : b" and min(a,b) "a < b ? a : b" (as the SIMD instructions do, so
 *   relu(-0.0) is +0.0 on every path).
 *
 * Run-time choice of a path: oq_kernels_select() reads the CPU (cpuid, and xgetbv for the OS's
 * support of the registers) and returns the best path; the environment variable
 * OQAT_RT_ISA=scalar|avx2|avx512vnni forces one. An unknown name, or a path this CPU or OS
 * cannot run, makes it return NULL; oq_kernels_error() then says why (print it).
 */
#ifndef OQAT_KERNELS_H
#define OQAT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

enum { OQ_ACT_NONE = 0, OQ_ACT_RELU = 1, OQ_ACT_RELU6 = 2, OQ_ACT_HSWISH = 3 };

typedef struct {
  const float *scale, *shift;          /* [cout] */
  const int32_t *acc_bias;             /* [cout] or NULL: added to the exact integer sum first */
  int act;                             /* OQ_ACT_* */
  const float *residual; int ld_res;   /* NULL or [rows][ld_res] floats added after shift */
  float *out_f32;                      /* non-NULL: write act(y) as float [rows][ld_out] */
  uint8_t *out_u8;                     /* else: write u = rint(clamp(act(y)/step, qn, qp)) - qn */
  int ld_out; float step; int qn, qp;
  /* NULL, or what oq_thresholds built from this same epilogue (and its cout):
     [1 + qp - qn][oq_thresholds_ld(cout)] int32, row 0 a per-channel flip (0, or -1 where
     scale < 0), rows j = 1..qp-qn thresholds T_j; a path may then write the code as
     u = #{j : (acc ^ flip[c]) > T_j[c]}, which equals the float epilogue's, or ignore them
     where the float epilogue is faster (scalar and avx2's conv1x1 use them, avx512vnni and
     avx2's int16 depthwise do not), so the float fields must stay valid. */
  const int32_t *thresholds;
} oq_epilogue;

/* Most codes (qp - qn) a threshold epilogue takes (3-bit codes): at 4 bits 15 compares cost
   more than the float epilogue on every path measured. */
enum { OQ_THRESHOLDS_MAX = 7 };

/* Row stride of the thresholds of cout channels: rounded up to 16 so that every path may load
   whole vectors (the padding lanes' codes are computed and never stored). */
static inline int oq_thresholds_ld(int cout) { return (cout + 15) / 16 * 16; }

/* Builds the thresholds of e (its scale, shift, acc_bias, act, step, qn, qp over cout channels)
   into out ((1 + qp - qn) * oq_thresholds_ld(cout) int32) such that for every acc in
   [acc_min, acc_max] the threshold code equals the float epilogue's code exactly. Returns 1, or
   0 (out untouched) where the epilogue does not qualify: float output, a residual, more than
   OQ_THRESHOLDS_MAX codes, h_swish into a signed quantizer (qn < 0: h_swish is not monotone
   below -1.5), a scale or shift that is not finite, a step that is not finite and positive,
   acc + acc_bias that could leave int32, or acc_min == INT32_MIN or acc_max == INT32_MAX. */
int oq_thresholds(const oq_epilogue *e, int cout, int32_t acc_min, int32_t acc_max, int32_t *out);

typedef struct {
  const char *name;                    /* "scalar", "avx2", "avx512vnni", ... */
  size_t (*pack1x1_size)(int cout, int cin, int wbits);
  /* codes [cout][cin] int8 of wbits bits; abits: the width of the activation codes the conv
     will see (it may choose the inner loop, and conv1x1 may then rely on every code being below
     2^abits: avx2 at abits <= 2 and wbits <= 2 looks products up by the codes' low 2 bits);
     dst: pack1x1_size bytes, 64-byte aligned */
  void (*pack1x1)(const int8_t *codes, int cout, int cin, int wbits, int abits, void *dst);
  /* rows x cin uint8 codes (row stride lda) times the packed weights, epilogue per row and
     channel; scratch: at least scratch1x1_size bytes, 64-byte aligned, private to the thread */
  void (*conv1x1)(const uint8_t *a, int lda, int rows, const void *packed, const oq_epilogue *e,
                  void *scratch);
  size_t (*scratch1x1_size)(int cout, int cin, int wbits);
  /* depthwise kxk (k odd), stride s, 'same' padding (pad = k/2): input [h][w][c] codes, weights
     [k*k][c] int8, pad_u = the stored code of zero; writes output rows oy0..oy1-1 of
     [ho][wo][c], ho = (h-1)/s+1, wo = (w-1)/s+1 (epilogue rows index oy*wo+ox) */
  void (*dwconv)(const uint8_t *a, int h, int w, int c, int k, int stride, const int8_t *wt,
                 uint8_t pad_u, const oq_epilogue *e, int oy0, int oy1);
} oq_kernels;

const oq_kernels *oq_kernels_select(void);  /* best for this CPU; env OQAT_RT_ISA forces one */
const oq_kernels *oq_kernels_by_name(const char *name);  /* NULL if unknown or not runnable here */
const char *oq_kernels_error(void);         /* why the last lookup returned NULL ("" if it did not) */

/* The header every packed 1x1 weight buffer starts with (64 bytes, then the path's layout). */
typedef struct {
  uint32_t magic;                      /* which path's layout follows (OQ_PACK_*) */
  int32_t cout, cin, wbits, abits;
  int32_t layout;                      /* path-specific choice of inner loop */
  int32_t pad_[10];
} oq_packed1x1;

enum {
  OQ_PACK_SCALAR = 0x3153514fu,        /* "OQS1": int8 codes [cout][cin] */
  OQ_PACK_AVX2 = 0x3241514fu,          /* "OQA2" */
  OQ_PACK_AVX512 = 0x3556514fu,        /* "OQV5" */
};

/* ---- internal to the kernel files: the shared scalar epilogue and the path tables ---- */

/* The epilogue of one output value (row r, channel c) in scalar float32; every SIMD path
   computes exactly these operations in this order. */
float oq_epilogue_value(const oq_epilogue *e, int r, int c, int32_t acc);
void oq_epilogue_store(const oq_epilogue *e, int r, int c, float y);

extern const oq_kernels oq_kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const oq_kernels oq_kernels_avx2;
extern const oq_kernels oq_kernels_avx512vnni;
#endif

#endif
