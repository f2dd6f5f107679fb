/* AVX-512 (F, BW, VL, VNNI) kernels.
 *
 * 1x1 conv: a 6-row x 64-channel register tile of int32 sums, vpdpbusd (4 u8 activations times
 * 4 s8 weights summed into int32, no intermediate saturation), so exact for every width 1..8.
 * Kernel layout of weights ("c4"): channel tiles of 64 (the last one 16, 32 or 48 wide); within
 * a tile [K4 = ceil(cin/4)][tile channels][4] int8, zero-padded past cin and cout.
 * Stored at their true width: 2 bits (wbits <= 2), 4 bits (<= 4) or 8 bits, as unsigned codes
 * w + 2^(s-1): every 64 layout bytes become 64*s/8 bytes, field f of byte j holding layout byte
 * j + f*(64*s/8). A 2- or 4-bit tile is expanded into the thread's scratch once per call.
 *
 * Depthwise: 16 channels per vector (32 with int16 sums), 4 output pixels share each tap's weights.
 *
 * Both ignore oq_epilogue.thresholds: counting compares into mask registers measured slower here
 * than the float epilogue (AMD Zen 5, 2- to 4-bit codes, conv1x1 and depthwise).
 */
#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#include "kernels_common.h"

enum { LANES = 16, NRV = 4, TILE = LANES * NRV, MR = 6 };

static size_t pack1x1_size(int cout, int cin, int wbits) {
  return oq_pack_size(cout, cin, wbits, TILE, LANES);
}

static void pack1x1(const int8_t *codes, int cout, int cin, int wbits, int abits, void *dst) {
  oq_pack(codes, cout, cin, wbits, abits, TILE, LANES, OQ_PACK_AVX512, 0, dst);
}

static size_t scratch1x1_size(int cout, int cin, int wbits) {
  (void)cout;
  return oq_pack_store_bits(wbits) == 8 ? 0 : oq_pack_tile_bytes(cin, TILE);
}

/* 64 layout bytes from their 2- or 4-bit storage. */
static void expand_tile(const uint8_t *src, int bits, size_t layout_bytes, int8_t *dst) {
  const __m512i shifts2 = _mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0);
  const __m512i shifts4 = _mm512_set_epi32(4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i mask = _mm512_set1_epi8(bits == 2 ? 3 : 15);
  const __m512i bias = _mm512_set1_epi8(bits == 2 ? 2 : 8);
  for (size_t i = 0; i < layout_bytes; i += 64) {
    __m512i x;
    if (bits == 2) {
      x = _mm512_srlv_epi32(_mm512_broadcast_i32x4(_mm_loadu_si128((const void *)src)), shifts2);
      src += 16;
    } else {
      x = _mm512_srlv_epi32(_mm512_broadcast_i64x4(_mm256_loadu_si256((const void *)src)), shifts4);
      src += 32;
    }
    _mm512_store_si512(dst + i, _mm512_sub_epi8(_mm512_and_si512(x, mask), bias));
  }
}

static __mmask16 lanes_mask(int n) {
  return n >= LANES ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* The per-channel operands of 16 output channels c0.. (lanes in m), shared by all rows. */
typedef struct {
  __m512 scale, shift;
  __m512i bias;
  __mmask16 m;
  int c0;
} chan16;

static chan16 channels16(const oq_epilogue *e, int c0, __mmask16 m) {
  chan16 ch = {_mm512_maskz_loadu_ps(m, e->scale + c0), _mm512_maskz_loadu_ps(m, e->shift + c0),
               e->acc_bias ? _mm512_maskz_loadu_epi32(m, e->acc_bias + c0) : _mm512_setzero_si512(), m, c0};
  return ch;
}

static __m512 clamp16(const oq_epilogue *e, __m512 q) {
  return _mm512_min_ps(_mm512_max_ps(q, _mm512_set1_ps((float)e->qn)), _mm512_set1_ps((float)e->qp));
}

/* Integer codes rint(q) - qn (q clamped) of the lanes in m, as bytes at out. */
static void store_codes(const oq_epilogue *e, __m512 rounded, __mmask16 m, uint8_t *out) {
  __m512i u = _mm512_sub_epi32(_mm512_cvttps_epi32(rounded), _mm512_set1_epi32(e->qn));
  /* narrowed in a register: the memory form of vpmovdb is slow on AMD Zen 4/5 */
  _mm_mask_storeu_epi8(out, m, _mm512_cvtepi32_epi8(u));
}

/* The epilogue of one row r of 16 channels: the float operations of oq_epilogue_value and
   oq_epilogue_store in the same order, except the divisions that oq_recip proves cannot change
   an output code. */
static inline void epilogue16(const oq_epilogue *e, const oq_recip *rc, const chan16 *ch, int r, __m512i acc) {
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc, ch->bias)), ch->scale);
  y = _mm512_add_ps(y, ch->shift);
  if (e->residual) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(ch->m, e->residual + (size_t)r * e->ld_res + ch->c0));
  const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.0f);
  int hswish = e->act == OQ_ACT_HSWISH;
  if (e->act == OQ_ACT_RELU) y = _mm512_max_ps(y, zero);
  if (e->act == OQ_ACT_RELU6) y = _mm512_min_ps(_mm512_max_ps(y, zero), six);
  if (hswish) {  /* y * min(max(y + 3, 0), 6), divided by 6 below */
    __m512 t = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(y, _mm512_set1_ps(3.0f)), zero), six);
    y = _mm512_mul_ps(y, t);
  }
  size_t o = (size_t)r * e->ld_out + ch->c0;
  if (rc->fast) {
    __m512 q = clamp16(e, _mm512_mul_ps(y, _mm512_set1_ps(hswish ? rc->r6 : rc->r)));
    __m512 qr = _mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 off = _mm512_abs_ps(_mm512_sub_ps(q, qr));
    if (_mm512_cmp_ps_mask(off, _mm512_set1_ps(OQ_TIE_SAFE), _CMP_LT_OQ) == 0xffff) {
      store_codes(e, qr, ch->m, e->out_u8 + o);
      return;
    }
  }
  if (hswish) y = _mm512_div_ps(y, six);
  if (e->out_f32) {
    _mm512_mask_storeu_ps(e->out_f32 + o, ch->m, y);
    return;
  }
  __m512 q = clamp16(e, _mm512_div_ps(y, _mm512_set1_ps(e->step)));
  store_codes(e, _mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), ch->m, e->out_u8 + o);
}

/* Integer sums of rows a[0..MR-1] with the nrv*16 channels of a tile in the c4 layout. */
static inline __attribute__((always_inline)) void sums(const uint8_t *const a[MR], int cin, const int8_t *w,
                                                       int nrv, __m512i acc[MR][NRV]) {
  __m512i s[MR][NRV];
#pragma GCC unroll 6
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int j = 0; j < nrv; j++) s[i][j] = _mm512_setzero_si512();
  int k4 = cin / 4, tail = cin % 4;
  for (int kq = 0; kq <= k4; kq++, w += nrv * 64) {
    if (kq == k4 && !tail) break;
    __m512i wv[NRV];
#pragma GCC unroll 4
    for (int j = 0; j < nrv; j++) wv[j] = _mm512_loadu_si512(w + 64 * j);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
      uint32_t q = kq < k4 ? oq_quad(a[i] + 4 * kq) : oq_quad_tail(a[i] + 4 * kq, tail);
      __m512i b = _mm512_set1_epi32((int)q);
#pragma GCC unroll 4
      for (int j = 0; j < nrv; j++) s[i][j] = _mm512_dpbusd_epi32(s[i][j], b, wv[j]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int j = 0; j < nrv; j++) acc[i][j] = s[i][j];
}

typedef void sums_fn(const uint8_t *const a[MR], int cin, const int8_t *w, __m512i acc[MR][NRV]);
static void sums1(const uint8_t *const a[MR], int cin, const int8_t *w, __m512i acc[MR][NRV]) { sums(a, cin, w, 1, acc); }
static void sums2(const uint8_t *const a[MR], int cin, const int8_t *w, __m512i acc[MR][NRV]) { sums(a, cin, w, 2, acc); }
static void sums3(const uint8_t *const a[MR], int cin, const int8_t *w, __m512i acc[MR][NRV]) { sums(a, cin, w, 3, acc); }
static void sums4(const uint8_t *const a[MR], int cin, const int8_t *w, __m512i acc[MR][NRV]) { sums(a, cin, w, 4, acc); }
static sums_fn *const sums_by_nrv[NRV + 1] = {NULL, sums1, sums2, sums3, sums4};


static void conv1x1(const uint8_t *a, int lda, int rows, const void *packed, const oq_epilogue *e,
                    void *scratch) {
  const oq_packed1x1 *h = packed;
  if (h->magic != OQ_PACK_AVX512) abort();  /* weights packed by another path */
  int s = oq_pack_store_bits(h->wbits);
  oq_recip rc = oq_recip_of(e);
  for (int t = 0; t * TILE < h->cout; t++) {
    int nc = oq_pack_tile_channels(h->cout, t, TILE, LANES);
    const uint8_t *stored = (const uint8_t *)(h + 1) + oq_pack_tile_offset(h->cin, h->wbits, t, TILE);
    const int8_t *w = (const int8_t *)stored;
    if (s != 8) {
      expand_tile(stored, s, oq_pack_tile_bytes(h->cin, nc), scratch);
      w = scratch;
    }
    sums_fn *f = sums_by_nrv[nc / LANES];
    chan16 ch[NRV];
    for (int j = 0; j < nc / LANES; j++) {
      int c0 = t * TILE + j * LANES;
      ch[j] = channels16(e, c0, lanes_mask(h->cout - c0));
    }
    for (int r0 = 0; r0 < rows; r0 += MR) {
      /* rows past the end repeat the last one: their sums are computed and dropped */
      const uint8_t *ar[MR];
      for (int i = 0; i < MR; i++) ar[i] = a + (size_t)(r0 + i < rows ? r0 + i : rows - 1) * lda;
      __m512i acc[MR][NRV];
      f(ar, h->cin, w, acc);
      for (int i = 0; i < MR && r0 + i < rows; i++)
        for (int j = 0; j < nc / LANES; j++)
          if (ch[j].c0 < h->cout) epilogue16(e, &rc, &ch[j], r0 + i, acc[i][j]);
    }
  }
}

/* ---- depthwise ---- */

/* Largest code in the input rows that output rows oy0..oy1-1 read (and the padding code). */
static int max_code(const oq_dw_args *d, int oy0, int oy1) {
  int y0, y1;
  oq_dw_input_rows(d, oy0, oy1, &y0, &y1);
  const uint8_t *p = d->a + (size_t)y0 * d->w * d->c, *end = d->a + (size_t)y1 * d->w * d->c;
  __m512i m = _mm512_set1_epi8((char)d->pad_u);
  for (; p + 64 <= end; p += 64) m = _mm512_max_epu8(m, _mm512_loadu_si512(p));
  int best = 0;
  uint8_t lanes[64];
  _mm512_storeu_si512(lanes, m);
  for (int i = 0; i < 64; i++) best = lanes[i] > best ? lanes[i] : best;
  for (; p < end; p++) best = *p > best ? *p : best;
  return best;
}

/* One output pixel, 32 channels at a time: int16 products (exact: |u*w| <= 255*128), summed in
   int16 when the caller proved every sum fits (wide = 0), else in int32. */
static inline __attribute__((always_inline)) void dw_pixel(const oq_dw_args *d, int oy, int ox, int wide) {
  int pad = d->k / 2, iy0 = oy * d->stride - pad, ix0 = ox * d->stride - pad, r = oy * d->wo + ox;
  const __m512i padv = _mm512_set1_epi16(d->pad_u);
  for (int cb = 0; cb < d->c; cb += 32) {
    int n = d->c - cb;
    __mmask32 m = n >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << n) - 1);
    __m512i acc = _mm512_setzero_si512(), lo = acc, hi = acc;
    for (int ky = 0; ky < d->k; ky++) {
      int iy = iy0 + ky;
      for (int kx = 0; kx < d->k; kx++) {
        int ix = ix0 + kx;
        __m512i u = padv;
        if (iy >= 0 && iy < d->h && ix >= 0 && ix < d->w)
          u = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, d->a + ((size_t)iy * d->w + ix) * d->c + cb));
        __m512i wv = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, d->wt + (size_t)(ky * d->k + kx) * d->c + cb));
        __m512i p = _mm512_mullo_epi16(u, wv);
        if (wide) {
          lo = _mm512_add_epi32(lo, _mm512_cvtepi16_epi32(_mm512_castsi512_si256(p)));
          hi = _mm512_add_epi32(hi, _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(p, 1)));
        } else {
          acc = _mm512_add_epi16(acc, p);
        }
      }
    }
    if (!wide) {
      lo = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(acc));
      hi = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(acc, 1));
    }
    chan16 ch = channels16(d->e, cb, (__mmask16)m);
    epilogue16(d->e, &d->rc, &ch, r, lo);
    if (n > 16) {
      ch = channels16(d->e, cb + 16, (__mmask16)(m >> 16));
      epilogue16(d->e, &d->rc, &ch, r, hi);
    }
  }
}

static void dw_rows16(const oq_dw_args *d, int oy0, int oy1) {
  for (int oy = oy0; oy < oy1; oy++)
    for (int ox = 0; ox < d->wo; ox++) dw_pixel(d, oy, ox, 0);
}

static void dw_rows32(const oq_dw_args *d, int oy0, int oy1) {
  for (int oy = oy0; oy < oy1; oy++)
    for (int ox = 0; ox < d->wo; ox++) dw_pixel(d, oy, ox, 1);
}

static void dwconv(const uint8_t *a, int h, int w, int c, int k, int stride, const int8_t *wt,
                   uint8_t pad_u, const oq_epilogue *e, int oy0, int oy1) {
  if (oy0 >= oy1) return;
  oq_dw_args d = {a, h, w, c, k, stride, (w - 1) / stride + 1, wt, pad_u, e, oq_recip_of(e)};
  if (oq_dw_fits_int16(&d, max_code(&d, oy0, oy1)))
    dw_rows16(&d, oy0, oy1);
  else
    dw_rows32(&d, oy0, oy1);
}

const oq_kernels oq_kernels_avx512vnni = {
    .name = "avx512vnni",
    .pack1x1_size = pack1x1_size,
    .pack1x1 = pack1x1,
    .conv1x1 = conv1x1,
    .scratch1x1_size = scratch1x1_size,
    .dwconv = dwconv,
};
#endif
