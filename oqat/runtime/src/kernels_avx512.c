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
 * Depthwise: vpdpbusd over quads of vertical taps, 64 channels per group (see "depthwise" below).
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

/* ---- depthwise ----
 * vpdpbusd over vertical tap quads. For a group of 64 channels, the codes of 4 input rows (taps
 * ky = 4q..4q+3 of one column) are interleaved bytewise so that each int32 lane holds one
 * channel's 4 codes, and the weights of the same 4 taps likewise (zero past ky = k-1): one
 * vpdpbusd adds 16 channels x 4 taps, exact in int32 at every width (no int16 bound to check).
 * vpunpck* works within 128-bit lanes, so vector m of a group holds channel 16L + 4m + j in lane
 * 4L + j; the sums are put back in channel order before the epilogue. A column's quads are built
 * once per output row into a row buffer and read by every output pixel that uses the column (k of
 * them at stride 1), and 4 output pixels share each loaded weight vector. */

enum { DW_GROUP = 64, DW_NP = 4 };

/* Four vectors of 64 codes (rows r0..r3 of 64 channels) as 4 vectors of byte quads, in the
   order above. */
static inline void interleave4(__m512i r0, __m512i r1, __m512i r2, __m512i r3, __m512i *out) {
  __m512i a = _mm512_unpacklo_epi8(r0, r1), b = _mm512_unpackhi_epi8(r0, r1);
  __m512i c = _mm512_unpacklo_epi8(r2, r3), d = _mm512_unpackhi_epi8(r2, r3);
  _mm512_store_si512(out + 0, _mm512_unpacklo_epi16(a, c));
  _mm512_store_si512(out + 1, _mm512_unpackhi_epi16(a, c));
  _mm512_store_si512(out + 2, _mm512_unpacklo_epi16(b, d));
  _mm512_store_si512(out + 3, _mm512_unpackhi_epi16(b, d));
}

static __mmask64 group_mask(int n) { return n >= DW_GROUP ? ~(__mmask64)0 : ((__mmask64)1 << n) - 1; }

/* The weights of group g as quads: wq[(q * k + kx) * 4 + m]. */
static void dw_pack_weights(const oq_dw_args *d, int g, int nq, __m512i *wq) {
  __mmask64 m = group_mask(d->c - g * DW_GROUP);
  for (int q = 0; q < nq; q++)
    for (int kx = 0; kx < d->k; kx++) {
      __m512i r[4];
      for (int i = 0; i < 4; i++) {
        int ky = 4 * q + i;
        r[i] = ky < d->k ? _mm512_maskz_loadu_epi8(m, d->wt + (size_t)(ky * d->k + kx) * d->c + g * DW_GROUP)
                         : _mm512_setzero_si512();
      }
      interleave4(r[0], r[1], r[2], r[3], wq + (q * d->k + kx) * 4);
    }
}

/* The input quads of output row oy, group g: x[(q * wp + pad + ix) * 4 + m] for the image's
   columns ix (the padding columns around them are filled once by the caller). Rows outside the
   image read the padding codes at padv, rows past the kernel the zeros at zero (their weights
   are zero), with a step of 0: the loop over the columns has no branches. */
static void dw_build_row(const oq_dw_args *d, int g, int nq, int wp, int oy, const __m512i *padv,
                         const __m512i *zero, __m512i *x) {
  int pad = d->k / 2;
  __mmask64 m = group_mask(d->c - g * DW_GROUP);
  for (int q = 0; q < nq; q++) {
    const uint8_t *row[4];
    size_t step[4];
    for (int i = 0; i < 4; i++) {
      int ky = 4 * q + i, iy = oy * d->stride - pad + ky;
      int inside = ky < d->k && iy >= 0 && iy < d->h;
      row[i] = inside ? d->a + (size_t)iy * d->w * d->c + g * DW_GROUP : (const uint8_t *)(ky < d->k ? padv : zero);
      step[i] = inside ? (size_t)d->c : 0;
    }
    __m512i *xq = x + ((size_t)q * wp + pad) * 4;
    for (int ix = 0; ix < d->w; ix++, xq += 4) {
      interleave4(_mm512_maskz_loadu_epi8(m, row[0]), _mm512_maskz_loadu_epi8(m, row[1]),
                  _mm512_maskz_loadu_epi8(m, row[2]), _mm512_maskz_loadu_epi8(m, row[3]), xq);
      row[0] += step[0], row[1] += step[1], row[2] += step[2], row[3] += step[3];
    }
  }
}

/* The sums of np output pixels ox.. of a row (their quads in x) for the 4 vectors m, from init. */
static inline __attribute__((always_inline)) void dw_sums(const oq_dw_args *d, int nq, int wp, const __m512i *x,
                                                          const __m512i *wq, int ox, int np, const __m512i init[4],
                                                          __m512i acc[DW_NP][4]) {
#pragma GCC unroll 4
  for (int p = 0; p < np; p++)
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) acc[p][m] = init[m];
  for (int q = 0; q < nq; q++)
    for (int kx = 0; kx < d->k; kx++) {
      const __m512i *w = wq + (q * d->k + kx) * 4;
      __m512i wv[4];
#pragma GCC unroll 4
      for (int m = 0; m < 4; m++) wv[m] = _mm512_load_si512(w + m);
#pragma GCC unroll 4
      for (int p = 0; p < np; p++) {
        const __m512i *xp = x + ((size_t)q * wp + (size_t)(ox + p) * d->stride + kx) * 4;
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++) acc[p][m] = _mm512_dpbusd_epi32(acc[p][m], _mm512_load_si512(xp + m), wv[m]);
      }
    }
}

/* 4 vectors of 16 lanes as their 4x4 transpose of 128-bit lanes (out[n] lane m = in[m] lane n):
   sums in the interleaved order to channel order, and per-channel operands the other way. */
static void transpose_lanes(const __m512i in[4], __m512i out[4]) {
  __m512i t0 = _mm512_shuffle_i32x4(in[0], in[1], _MM_SHUFFLE(1, 0, 1, 0));
  __m512i t1 = _mm512_shuffle_i32x4(in[2], in[3], _MM_SHUFFLE(1, 0, 1, 0));
  __m512i t2 = _mm512_shuffle_i32x4(in[0], in[1], _MM_SHUFFLE(3, 2, 3, 2));
  __m512i t3 = _mm512_shuffle_i32x4(in[2], in[3], _MM_SHUFFLE(3, 2, 3, 2));
  out[0] = _mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(2, 0, 2, 0));
  out[1] = _mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(3, 1, 3, 1));
  out[2] = _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(2, 0, 2, 0));
  out[3] = _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(3, 1, 3, 1));
}

/* The epilogue operands of a group of 64 channels c0..: per 16 channels in channel order (ch,
   for epilogue16), and, where the output is u8 codes without a residual and oq_recip's
   reciprocal applies (fast), in the interleaved order of the sums with the constants in
   registers (a store of u8 codes may alias the epilogue, so nothing is read through e). */
typedef struct {
  chan16 ch[4];
  int nv, c0, fast, act, qn_zero;
  __mmask64 store;
  __m512 scale[4], shift[4], qn, qp, recip;
  __m512i bias[4], qn_i;
} dw_group;

static void dw_group_of(const oq_dw_args *d, int g, dw_group *gr) {
  const oq_epilogue *e = d->e;
  gr->c0 = g * DW_GROUP, gr->nv = 0;
  for (; gr->nv < 4 && gr->c0 + gr->nv * LANES < d->c; gr->nv++) {
    int c0 = gr->c0 + gr->nv * LANES;
    gr->ch[gr->nv] = channels16(e, c0, lanes_mask(d->c - c0));
  }
  gr->fast = d->rc.fast && e->out_u8 && !e->residual;
  for (int m = 0; m < 4; m++) gr->bias[m] = _mm512_setzero_si512();
  if (!gr->fast) return;
  __m512i sc[4], sh[4], bi[4];
  for (int n = 0; n < 4; n++) {
    int live = n < gr->nv;
    sc[n] = live ? _mm512_castps_si512(gr->ch[n].scale) : _mm512_setzero_si512();
    sh[n] = live ? _mm512_castps_si512(gr->ch[n].shift) : _mm512_setzero_si512();
    bi[n] = live ? gr->ch[n].bias : _mm512_setzero_si512();
  }
  __m512i t[4];
  transpose_lanes(sc, t);
  for (int m = 0; m < 4; m++) gr->scale[m] = _mm512_castsi512_ps(t[m]);
  transpose_lanes(sh, t);
  for (int m = 0; m < 4; m++) gr->shift[m] = _mm512_castsi512_ps(t[m]);
  transpose_lanes(bi, gr->bias);
  for (int n = 0; n < gr->nv; n++) gr->ch[n].bias = _mm512_setzero_si512();  /* the sums start at the bias */
  gr->store = group_mask(d->c - gr->c0), gr->act = e->act, gr->qn_zero = e->qn == 0;
  gr->qn = _mm512_set1_ps((float)e->qn), gr->qp = _mm512_set1_ps((float)e->qp), gr->qn_i = _mm512_set1_epi32(e->qn);
  gr->recip = _mm512_set1_ps(e->act == OQ_ACT_HSWISH ? d->rc.r6 : d->rc.r);
}

/* The fast path of epilogue16 on a pixel's 4 vectors of sums in their interleaved order: the
   codes are put in channel order by the packs (which undo the unpacks' interleaving) and stored
   as one vector. Returns 0, having stored nothing, where a lane is near a tie (the caller then
   takes epilogue16, with its divisions). */
static inline __attribute__((always_inline)) int dw_codes(const oq_dw_args *d, const dw_group *gr, int r,
                                                          const __m512i acc[4]) {
  const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.0f), three = _mm512_set1_ps(3.0f);
  __mmask16 safe = 0xffff;
  __m512i u[4];
#pragma GCC unroll 4
  for (int m = 0; m < 4; m++) {
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[m]), gr->scale[m]);
    y = _mm512_add_ps(y, gr->shift[m]);
    if (gr->act == OQ_ACT_RELU) y = _mm512_max_ps(y, zero);
    if (gr->act == OQ_ACT_RELU6) y = _mm512_min_ps(_mm512_max_ps(y, zero), six);
    if (gr->act == OQ_ACT_HSWISH)  /* y * min(max(y + 3, 0), 6); the / 6 is in recip */
      y = _mm512_mul_ps(y, _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(y, three), zero), six));
    __m512 q = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(y, gr->recip), gr->qn), gr->qp);
    __m512 qr = _mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    safe &= _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(q, qr)), _mm512_set1_ps(OQ_TIE_SAFE), _CMP_LT_OQ);
    u[m] = _mm512_cvttps_epi32(qr);
    if (!gr->qn_zero) u[m] = _mm512_sub_epi32(u[m], gr->qn_i);
  }
  if (safe != 0xffff) return 0;
  /* codes are 0..255: the packs do not saturate */
  __m512i b = _mm512_packus_epi16(_mm512_packus_epi32(u[0], u[1]), _mm512_packus_epi32(u[2], u[3]));
  _mm512_mask_storeu_epi8(d->e->out_u8 + (size_t)r * d->e->ld_out + gr->c0, gr->store, b);
  return 1;
}

/* The epilogue of output pixel r of a group: dw_codes, or the sums back in channel order
   through epilogue16. */
static inline __attribute__((always_inline)) void dw_epilogue(const oq_dw_args *d, const dw_group *gr, int r,
                                                              const __m512i acc[4]) {
  if (gr->fast && dw_codes(d, gr, r, acc)) return;
  __m512i z[4];
  transpose_lanes(acc, z);
  for (int n = 0; n < gr->nv; n++) epilogue16(d->e, &d->rc, &gr->ch[n], r, z[n]);
}

static inline __attribute__((always_inline)) void dw_pixels(const oq_dw_args *d, int nq, int wp, const __m512i *x,
                                                            const __m512i *wq, const dw_group *gr, int oy, int ox,
                                                            int np) {
  __m512i acc[DW_NP][4];
  dw_sums(d, nq, wp, x, wq, ox, np, gr->bias, acc);
  for (int p = 0; p < np; p++) dw_epilogue(d, gr, oy * d->wo + ox + p, acc[p]);
}

static void dw_row(const oq_dw_args *d, int nq, int wp, const __m512i *x, const __m512i *wq, const dw_group *gr,
                   int oy) {
  int ox = 0;
  for (; ox + DW_NP <= d->wo; ox += DW_NP) dw_pixels(d, nq, wp, x, wq, gr, oy, ox, DW_NP);
  for (; ox < d->wo; ox++) dw_pixels(d, nq, wp, x, wq, gr, oy, ox, 1);
}

static void dwconv(const uint8_t *a, int h, int w, int c, int k, int stride, const int8_t *wt,
                   uint8_t pad_u, const oq_epilogue *e, int oy0, int oy1) {
  if (oy0 >= oy1) return;
  oq_dw_args d = {a, h, w, c, k, stride, (w - 1) / stride + 1, wt, pad_u, e, oq_recip_of(e)};
  int nq = (k + 3) / 4, pad = k / 2, wp = w + 2 * pad;
  size_t nx = (size_t)nq * wp * 4, nw = (size_t)nq * k * 4;
  __m512i *x = aligned_alloc(64, (nx + nw + 2) * sizeof(__m512i)), *wq = x + nx, *consts = wq + nw;
  if (!x) abort();
  const __m512i padv = _mm512_set1_epi8((char)pad_u);
  consts[0] = padv, consts[1] = _mm512_setzero_si512();
  for (int q = 0; q < nq; q++)
    for (int i = 0; i < pad; i++)
      for (int m = 0; m < 4; m++) {
        x[((size_t)q * wp + i) * 4 + m] = padv;
        x[((size_t)q * wp + pad + w + i) * 4 + m] = padv;
      }
  for (int g = 0; g * DW_GROUP < c; g++) {
    dw_group gr;
    dw_group_of(&d, g, &gr);
    dw_pack_weights(&d, g, nq, wq);
    for (int oy = oy0; oy < oy1; oy++) {
      dw_build_row(&d, g, nq, wp, oy, consts, consts + 1, x);
      dw_row(&d, nq, wp, x, wq, &gr, oy);
    }
  }
  free(x);
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
