/* AVX2 kernels.
 *
 * 1x1 conv: a 4-row x 16-channel register tile. vpmaddubsw multiplies 4 u8 activation codes
 * (broadcast) by 4 s8 weight codes per channel into two int16 pair sums, which are added in
 * int16 (vpaddw) for as many steps as cannot overflow (abits=4, wbits=4: 136 steps of 4 codes;
 * 2x2 bits: 2730) and then widened to int32 (vpmaddwd by ones). A pair sum saturates only at
 * 8-bit activations x 8-bit weights: there the activations are split into nibbles and the tile
 * is summed twice (hi * 16 + lo).
 * Weights: the c4 layout and true-width storage of kernels_avx512.c with tiles of 16 channels
 * (the last one 8 or 16).
 * 2-bit (and 1-bit) activations x 2-bit (and 1-bit) weights take a lookup kernel instead (see
 * "2-bit lookup" below: vpshufb over tables indexed by activation pairs, 64 MACs per vpshufb +
 * vpaddb), ~1.3x to 1.7x the vpmaddubsw loop on MobileNetV3's 1x1 shapes (Zen 5, AVX2 path).
 *
 * Depthwise: where int16 sums are exact, vpmaddubsw over vertical tap pairs, 32 channels per group
 * (see "depthwise with int16 sums" below), with its own float epilogue of u8 codes (operands
 * loaded once per group, 32 codes per store), which it takes over thresholds too; else 16
 * channels per vector, int16 products summed in int32.
 *
 * Epilogue: with oq_epilogue.thresholds (codes of <= 3 bits), 1-7 integer compares per 8
 * outputs, which measured faster here than the float operations (whose partial vectors need
 * vpmaskmov loads), by ~30% at 2 bits on the small-cin expand convs; inlined, and in the lookup
 * kernel packed to bytes 16 channels at a time (the epilogue was a third of its time there).
 */
#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#include "kernels_common.h"

enum { LANES = 8, NRV = 2, TILE = LANES * NRV, MR = 4 };

/* Layout bytes from their 2- or 4-bit storage, 64 at a time. */
static void expand_tile(const uint8_t *src, int bits, size_t layout_bytes, int8_t *dst) {
  const __m256i mask = _mm256_set1_epi8(bits == 2 ? 3 : 15), bias = _mm256_set1_epi8(bits == 2 ? 2 : 8);
  const __m256i sh01 = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2), sh23 = _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6);
  for (size_t i = 0; i < layout_bytes; i += 64) {
    __m256i lo, hi;
    if (bits == 2) {
      __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128((const void *)src));
      lo = _mm256_srlv_epi32(x, sh01), hi = _mm256_srlv_epi32(x, sh23);
      src += 16;
    } else {
      __m256i x = _mm256_loadu_si256((const void *)src);
      lo = x, hi = _mm256_srli_epi32(x, 4);
      src += 32;
    }
    _mm256_store_si256((void *)(dst + i), _mm256_sub_epi8(_mm256_and_si256(lo, mask), bias));
    _mm256_store_si256((void *)(dst + i + 32), _mm256_sub_epi8(_mm256_and_si256(hi, mask), bias));
  }
}

static __m256i lanes_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static __m256 clamp8(const oq_epilogue *e, __m256 q) {
  return _mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps((float)e->qn)), _mm256_set1_ps((float)e->qp));
}

/* Codes u (int32 lanes, 0..255) of lanes 0..n-1 as bytes at out. */
static void store_u(__m256i u, int n, uint8_t *out) {
  __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
  __m128i b = _mm_packus_epi16(w16, w16);  /* codes are 0..255: no saturation */
  if (n >= 8) {
    _mm_storel_epi64((void *)out, b);
  } else {
    uint8_t tmp[16];
    _mm_storeu_si128((void *)tmp, b);
    memcpy(out, tmp, n);
  }
}

/* Integer codes rint(q) - qn of lanes 0..n-1 (q clamped and rounded), as bytes at out. */
static void store_codes(const oq_epilogue *e, __m256 rounded, int n, uint8_t *out) {
  store_u(_mm256_sub_epi32(_mm256_cvttps_epi32(rounded), _mm256_set1_epi32(e->qn)), n, out);
}

/* u = #{j : x > T_j} over n thresholds t[j * ld] (vpcmpgtd gives -1 per true compare);
   inlined with n constant, so that the loop unrolls. */
static inline __attribute__((always_inline)) __m256i count_above8(__m256i x, const int32_t *t, size_t ld, int n) {
  __m256i u = _mm256_setzero_si256();
  for (int j = 1; j <= n; j++) u = _mm256_sub_epi32(u, _mm256_cmpgt_epi32(x, _mm256_loadu_si256((const void *)(t + j * ld))));
  return u;
}

/* The threshold epilogue of 8 channels c0.. of a conv with cout channels (rows padded to 16:
   whole vectors load), u = #{j : (acc ^ flip) > T_j}. */
static inline __attribute__((always_inline)) __m256i threshold_codes8(const oq_epilogue *e, int cout, int c0,
                                                                       __m256i acc) {
  size_t ld = oq_thresholds_ld(cout);
  const int32_t *t = e->thresholds + c0;
  __m256i x = _mm256_xor_si256(acc, _mm256_loadu_si256((const void *)t));
  switch (e->qp - e->qn) {  /* 1..OQ_THRESHOLDS_MAX */
    case 1: return count_above8(x, t, ld, 1);
    case 2: return count_above8(x, t, ld, 2);
    case 3: return count_above8(x, t, ld, 3);
    case 4: return count_above8(x, t, ld, 4);
    case 5: return count_above8(x, t, ld, 5);
    case 6: return count_above8(x, t, ld, 6);
    default: return count_above8(x, t, ld, 7);
  }
}

/* The epilogue of 8 channels c0..min(c0+8, cout)-1 of row r: the threshold codes, or the float
   operations of oq_epilogue_value and oq_epilogue_store in the same order, except the divisions
   that oq_recip proves cannot change an output code. */
static void epilogue8(const oq_epilogue *e, const oq_recip *rc, int r, int c0, int cout, __m256i acc) {
  int n = cout - c0;
  size_t o = (size_t)r * e->ld_out + c0;
  if (e->thresholds) {
    store_u(threshold_codes8(e, cout, c0, acc), n, e->out_u8 + o);
    return;
  }
  __m256i m = lanes_mask(n);
  if (e->acc_bias) acc = _mm256_add_epi32(acc, _mm256_maskload_epi32(e->acc_bias + c0, m));
  __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_maskload_ps(e->scale + c0, m));
  y = _mm256_add_ps(y, _mm256_maskload_ps(e->shift + c0, m));
  if (e->residual) y = _mm256_add_ps(y, _mm256_maskload_ps(e->residual + (size_t)r * e->ld_res + c0, m));
  const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.0f);
  int hswish = e->act == OQ_ACT_HSWISH;
  if (e->act == OQ_ACT_RELU) y = _mm256_max_ps(y, zero);
  if (e->act == OQ_ACT_RELU6) y = _mm256_min_ps(_mm256_max_ps(y, zero), six);
  if (hswish) {  /* y * min(max(y + 3, 0), 6), divided by 6 below */
    __m256 t = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(y, _mm256_set1_ps(3.0f)), zero), six);
    y = _mm256_mul_ps(y, t);
  }
  if (rc->fast) {
    __m256 q = clamp8(e, _mm256_mul_ps(y, _mm256_set1_ps(hswish ? rc->r6 : rc->r)));
    __m256 qr = _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 off = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(q, qr));
    if (_mm256_movemask_ps(_mm256_cmp_ps(off, _mm256_set1_ps(OQ_TIE_SAFE), _CMP_LT_OQ)) == 0xff) {
      store_codes(e, qr, n, e->out_u8 + o);
      return;
    }
  }
  if (hswish) y = _mm256_div_ps(y, six);
  if (e->out_f32)
    _mm256_maskstore_ps(e->out_f32 + o, m, y);
  else
    store_codes(e, _mm256_round_ps(clamp8(e, _mm256_div_ps(y, _mm256_set1_ps(e->step))),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), n, e->out_u8 + o);
}

/* Activation codes for the nibble split: 0 all 8 bits, 1 the low nibble, 2 the high one. */
static inline __attribute__((always_inline)) __m256i nibble(__m256i b, int nib) {
  if (nib == 2) b = _mm256_srli_epi16(b, 4);
  return nib ? _mm256_and_si256(b, _mm256_set1_epi8(15)) : b;
}

/* One step of 4 codes: rows' quads q[i] times the tile's weights at w, into int16 sums. */
static inline __attribute__((always_inline)) void step(const uint32_t q[MR], const int8_t *w, int nrv, int nib,
                                                       __m256i s[MR][NRV]) {
  __m256i wv[NRV];
#pragma GCC unroll 2
  for (int j = 0; j < nrv; j++) wv[j] = _mm256_loadu_si256((const void *)(w + 32 * j));
#pragma GCC unroll 4
  for (int i = 0; i < MR; i++) {
    __m256i b = nibble(_mm256_set1_epi32((int)q[i]), nib);
#pragma GCC unroll 2
    for (int j = 0; j < nrv; j++) s[i][j] = _mm256_add_epi16(s[i][j], _mm256_maddubs_epi16(b, wv[j]));
  }
}

/* Integer sums of rows a[0..MR-1] with the nrv*8 channels of a tile in the c4 layout; int16
   sums are widened every `period` steps. */
static inline __attribute__((always_inline)) void sums(const uint8_t *const a[MR], int cin, const int8_t *w,
                                                       int period, int nrv, int nib, __m256i acc[MR][NRV]) {
  const __m256i ones = _mm256_set1_epi16(1);
  int k4 = (cin + 3) / 4, full = cin / 4;
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < nrv; j++) acc[i][j] = _mm256_setzero_si256();
  for (int kb = 0; kb < k4; kb += period) {
    int ke = kb + period < k4 ? kb + period : k4;
    __m256i s[MR][NRV];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
      for (int j = 0; j < nrv; j++) s[i][j] = _mm256_setzero_si256();
    int kq = kb;
    for (; kq < ke && kq < full; kq++) {
      uint32_t q[MR];
#pragma GCC unroll 4
      for (int i = 0; i < MR; i++) q[i] = oq_quad(a[i] + 4 * kq);
      step(q, w + (size_t)kq * nrv * 32, nrv, nib, s);
    }
    if (kq < ke) {  /* the last, partial quad */
      uint32_t q[MR];
      for (int i = 0; i < MR; i++) q[i] = oq_quad_tail(a[i] + 4 * kq, cin - 4 * kq);
      step(q, w + (size_t)kq * nrv * 32, nrv, nib, s);
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 2
      for (int j = 0; j < nrv; j++) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(s[i][j], ones));
  }
}

typedef void sums_fn(const uint8_t *const a[MR], int cin, const int8_t *w, int period, __m256i acc[MR][NRV]);

static void sums_1(const uint8_t *const a[MR], int cin, const int8_t *w, int period, __m256i acc[MR][NRV]) {
  sums(a, cin, w, period, 1, 0, acc);
}
static void sums_2(const uint8_t *const a[MR], int cin, const int8_t *w, int period, __m256i acc[MR][NRV]) {
  sums(a, cin, w, period, 2, 0, acc);
}

/* 8-bit activations x 8-bit weights: hi * 16 + lo over the activations' nibbles. */
static void sums_nibbles(const uint8_t *const a[MR], int cin, const int8_t *w, int nrv, __m256i acc[MR][NRV]) {
  __m256i hi[MR][NRV];
  int period = 32767 / (2 * 15 * 128);
  if (nrv == 1) {
    sums(a, cin, w, period, 1, 1, acc), sums(a, cin, w, period, 1, 2, hi);
  } else {
    sums(a, cin, w, period, 2, 1, acc), sums(a, cin, w, period, 2, 2, hi);
  }
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < nrv; j++) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_slli_epi32(hi[i][j], 4));
}

/* Steps of 4 codes whose int16 sums cannot overflow (0: a single pair sum may saturate). */
static int int16_period(int abits, int wbits) {
  int umax = (1 << abits) - 1, wmax = wbits == 1 ? 1 : 1 << (wbits - 1);
  return 32767 / (2 * umax * wmax);
}

static void c4_conv1x1(const uint8_t *a, int lda, int rows, const oq_packed1x1 *h, const oq_epilogue *e,
                       void *scratch) {
  int s = oq_pack_store_bits(h->wbits), period = int16_period(h->abits, h->wbits);
  oq_recip rc = oq_recip_of(e);
  for (int t = 0; t * TILE < h->cout; t++) {
    int nc = oq_pack_tile_channels(h->cout, t, TILE, LANES), nrv = nc / LANES;
    const uint8_t *stored = (const uint8_t *)(h + 1) + oq_pack_tile_offset(h->cin, h->wbits, t, TILE);
    const int8_t *w = (const int8_t *)stored;
    if (s != 8) {
      expand_tile(stored, s, oq_pack_tile_bytes(h->cin, nc), scratch);
      w = scratch;
    }
    for (int r0 = 0; r0 < rows; r0 += MR) {
      /* rows past the end repeat the last one: their sums are computed and dropped */
      const uint8_t *ar[MR];
      for (int i = 0; i < MR; i++) ar[i] = a + (size_t)(r0 + i < rows ? r0 + i : rows - 1) * lda;
      __m256i acc[MR][NRV];
      if (period == 0)
        sums_nibbles(ar, h->cin, w, nrv, acc);
      else
        (nrv == 1 ? sums_1 : sums_2)(ar, h->cin, w, period, acc);
      for (int i = 0; i < MR && r0 + i < rows; i++)
        for (int j = 0; j < nrv; j++) {
          int c0 = t * TILE + j * LANES;
          if (c0 < h->cout) epilogue8(e, &rc, r0 + i, c0, h->cout, acc[i][j]);
        }
    }
  }
}

/* ---- 2-bit lookup 1x1 conv (abits <= 2, wbits <= 2) ----
 *
 * Input channels go in pairs (2p, 2p+1). A pixel's activation pair a = (a0, a1) (codes 0..3)
 * has only 16 values, so its products with every weight pair are one of 16 tables of 16 bytes:
 * T_a[i] = a0 * u0 + a1 * u1 over the unsigned weight pair i = u0 | u1 << 2 (u = w + 2, 0..3;
 * 1-bit codes -1..1 fit too), entries 0..18. The weights are stored as those 4-bit indices, 32
 * channels per tile, two pairs per byte ([ceil(pairs/2)][32]: pair 2j in the low nibble, 2j+1
 * in the high one; 2 bits per weight, as compact as the c4 storage). Per pixel and pair one
 * vpshufb of the channels' indices into the broadcast table T_a gives 32 channels' pair sums
 * (64 MACs) and one vpaddb adds them in u8, for LUT_U8_STEPS pairs (14 * 18 <= 255); the u8
 * sums are then split into even and odd channels' u16 sums (vpand, vpsrlw), widened to int32
 * at the end, and sum_k a_k * w_k = sum_k a_k * u_k - 2 * sum_k a_k.
 * Each row's table offsets 16 * (a0 + 4 a1) and code sum are computed once per row (vectors)
 * and reused over every tile. */
enum { LUT_TILE = 32, LUT_MR = 4, LUT_U8_STEPS = 14, LUT_LAYOUT = 1 };
/* Weight vectors (two pairs each) whose u16 sums cannot overflow: 2 * 1820 * 18 <= 65535. */
enum { LUT_U16_VECTORS = 1820 };

#define LUT_E(r, i) (((r) & 3) * ((i) & 3) + ((r) >> 2) * ((i) >> 2))
#define LUT_ROW(r)                                                                                    \
  {LUT_E(r, 0),  LUT_E(r, 1),  LUT_E(r, 2),  LUT_E(r, 3),  LUT_E(r, 4),  LUT_E(r, 5),  LUT_E(r, 6),  \
   LUT_E(r, 7),  LUT_E(r, 8),  LUT_E(r, 9),  LUT_E(r, 10), LUT_E(r, 11), LUT_E(r, 12), LUT_E(r, 13), \
   LUT_E(r, 14), LUT_E(r, 15)}
/* lut_tables[a0 + 4 a1][u0 + 4 u1] = a0 * u0 + a1 * u1 */
static _Alignas(64) const uint8_t lut_tables[16][16] = {
    LUT_ROW(0), LUT_ROW(1), LUT_ROW(2),  LUT_ROW(3),  LUT_ROW(4),  LUT_ROW(5),  LUT_ROW(6),  LUT_ROW(7),
    LUT_ROW(8), LUT_ROW(9), LUT_ROW(10), LUT_ROW(11), LUT_ROW(12), LUT_ROW(13), LUT_ROW(14), LUT_ROW(15)};

static int lut_applies(int wbits, int abits) { return wbits <= 2 && abits <= 2; }

/* Weight vectors of a tile: two channel pairs each. */
static int lut_vectors(int cin) { return ((cin + 1) / 2 + 1) / 2; }

static size_t lut_pack_size(int cout, int cin) {
  return sizeof(oq_packed1x1) + (size_t)(cout + LUT_TILE - 1) / LUT_TILE * lut_vectors(cin) * LUT_TILE;
}

/* Bytes of one row's table offsets (two per weight vector), rounded for whole-vector stores. */
static size_t lut_offsets_ld(int cin) { return ((size_t)lut_vectors(cin) * 2 + 63) / 64 * 64; }

/* The unsigned weight pair index of channel c at input channels (2p, 2p+1); channels past cout
   or cin count as weight 0 (their activation is 0, or their sums are dropped). */
static unsigned lut_index(const int8_t *codes, int cout, int cin, int c, int p) {
  unsigned i = 0;
  for (int b = 0; b < 2; b++) {
    int k = 2 * p + b, w = c < cout && k < cin ? codes[(size_t)c * cin + k] : 0;
    i |= (unsigned)(w + 2) << (2 * b);
  }
  return i;
}

static void lut_pack(const int8_t *codes, int cout, int cin, int wbits, int abits, void *dst) {
  oq_packed1x1 *h = dst;
  memset(h, 0, sizeof *h);
  h->magic = OQ_PACK_AVX2;
  h->cout = cout, h->cin = cin, h->wbits = wbits, h->abits = abits, h->layout = LUT_LAYOUT;
  uint8_t *out = (uint8_t *)(h + 1);
  int nv = lut_vectors(cin);
  for (int t = 0; t * LUT_TILE < cout; t++)
    for (int j = 0; j < nv; j++)
      for (int c = 0; c < LUT_TILE; c++, out++)
        *out = (uint8_t)(lut_index(codes, cout, cin, t * LUT_TILE + c, 2 * j) |
                         lut_index(codes, cout, cin, t * LUT_TILE + c, 2 * j + 1) << 4);
}

/* Table offsets 16 * (a_2p + 4 a_2p+1) of 64 codes x0, x1 (32 offsets at off), masked to 2 bits
   so that no code indexes past the tables; adds the codes' sum to *sum. */
static void lut_offsets64(__m256i x0, __m256i x1, uint8_t *off, __m256i *sum) {
  const __m256i m3 = _mm256_set1_epi8(3), mul = _mm256_set1_epi16(16 | 64 << 8);
  x0 = _mm256_and_si256(x0, m3), x1 = _mm256_and_si256(x1, m3);
  *sum = _mm256_add_epi64(*sum, _mm256_add_epi64(_mm256_sad_epu8(x0, _mm256_setzero_si256()),
                                                 _mm256_sad_epu8(x1, _mm256_setzero_si256())));
  __m256i o = _mm256_packus_epi16(_mm256_maddubs_epi16(x0, mul), _mm256_maddubs_epi16(x1, mul));
  _mm256_storeu_si256((void *)off, _mm256_permute4x64_epi64(o, 0xd8));  /* packus works per lane */
}

static __m256i load32(const uint8_t *p) { return _mm256_loadu_si256((const void *)p); }

/* A row's table offsets off[p] for its lut_vectors(cin) * 2 pairs (0, the all-zero table, past
   cin), and the sum of its codes; `readable` bytes from a may be read (>= cin). The last codes
   are loaded whole and masked where 64 bytes can be read, else copied (at the buffer's end: a
   copy there costs a failed store forwarding); off has lut_offsets_ld(cin) bytes. */
static int lut_offsets(const uint8_t *a, int cin, size_t readable, uint8_t *off) {
  __m256i sum = _mm256_setzero_si256();
  int k = 0;
  for (; k + 64 <= cin; k += 64) lut_offsets64(load32(a + k), load32(a + k + 32), off + k / 2, &sum);
  if (k < cin && readable >= (size_t)k + 64) {
    const __m256i n = _mm256_set1_epi8((char)(cin - k));
    const __m256i i0 = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                                        21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
    const __m256i i1 = _mm256_add_epi8(i0, _mm256_set1_epi8(32));
    lut_offsets64(_mm256_and_si256(load32(a + k), _mm256_cmpgt_epi8(n, i0)),
                  _mm256_and_si256(load32(a + k + 32), _mm256_cmpgt_epi8(n, i1)), off + k / 2, &sum);
  } else if (k < cin) {
    uint8_t tail[64] = {0};
    memcpy(tail, a + k, cin - k);
    lut_offsets64(load32(tail), load32(tail + 32), off + k / 2, &sum);
  }
  int64_t s[4];
  _mm256_storeu_si256((void *)s, sum);
  return (int)(s[0] + s[1] + s[2] + s[3]);
}

static inline __m256i lut_table(const uint8_t *o) {
  return _mm256_broadcastsi128_si256(_mm_load_si128((const void *)((const uint8_t *)lut_tables + *o)));
}

/* Adds the u16 sums of even and odd channels into int32 sums of channels 0..31 in order
   (unpack interleaves them per 128-bit lane: lo holds channels 0-7 | 16-23, hi 8-15 | 24-31). */
static inline void lut_widen(__m256i ev, __m256i od, __m256i acc[4]) {
  __m256i lo = _mm256_unpacklo_epi16(ev, od), hi = _mm256_unpackhi_epi16(ev, od);
  acc[0] = _mm256_add_epi32(acc[0], _mm256_cvtepu16_epi32(_mm256_castsi256_si128(lo)));
  acc[1] = _mm256_add_epi32(acc[1], _mm256_cvtepu16_epi32(_mm256_castsi256_si128(hi)));
  acc[2] = _mm256_add_epi32(acc[2], _mm256_cvtepu16_epi32(_mm256_extracti128_si256(lo, 1)));
  acc[3] = _mm256_add_epi32(acc[3], _mm256_cvtepu16_epi32(_mm256_extracti128_si256(hi, 1)));
}

/* Adds to acc the sums of the rows whose table offsets are off[i] with the tile's weight vectors
   [j0, j1): in u8 for LUT_U8_STEPS pairs, then in u16 per even (ev) and odd (od) channel. */
static inline __attribute__((always_inline)) void lut_sums16(const uint8_t *const off[LUT_MR], const uint8_t *w,
                                                             int j0, int j1, __m256i acc[LUT_MR][4]) {
  const __m256i nib = _mm256_set1_epi8(15), low = _mm256_set1_epi16(0xff);
  __m256i ev[LUT_MR], od[LUT_MR];
#pragma GCC unroll 8
  for (int i = 0; i < LUT_MR; i++) ev[i] = od[i] = _mm256_setzero_si256();
  for (int jb = j0; jb < j1; jb += LUT_U8_STEPS / 2) {
    int je = jb + LUT_U8_STEPS / 2 < j1 ? jb + LUT_U8_STEPS / 2 : j1;
    __m256i s[LUT_MR];
#pragma GCC unroll 8
    for (int i = 0; i < LUT_MR; i++) s[i] = _mm256_setzero_si256();
    for (int j = jb; j < je; j++) {
      __m256i v = _mm256_loadu_si256((const void *)(w + (size_t)j * LUT_TILE));
      __m256i lo = _mm256_and_si256(v, nib), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
#pragma GCC unroll 8
      for (int i = 0; i < LUT_MR; i++) {
        s[i] = _mm256_add_epi8(s[i], _mm256_shuffle_epi8(lut_table(off[i] + 2 * j), lo));
        s[i] = _mm256_add_epi8(s[i], _mm256_shuffle_epi8(lut_table(off[i] + 2 * j + 1), hi));
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < LUT_MR; i++) {
      ev[i] = _mm256_add_epi16(ev[i], _mm256_and_si256(s[i], low));
      od[i] = _mm256_add_epi16(od[i], _mm256_srli_epi16(s[i], 8));
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < LUT_MR; i++) lut_widen(ev[i], od[i], acc[i]);
}

/* The exact int32 sums of rows off[i] (code sums asum[i]) with the 32 channels of a tile (not
   inlined: in the caller its loop lost registers to the epilogue's, -40%). */
static __attribute__((noinline)) void lut_sums(const uint8_t *const off[LUT_MR], const int asum[LUT_MR],
                                               const uint8_t *w, int nv, __m256i acc[LUT_MR][4]) {
  for (int i = 0; i < LUT_MR; i++)
    for (int q = 0; q < 4; q++) acc[i][q] = _mm256_set1_epi32(-2 * asum[i]);
  for (int j0 = 0; j0 < nv; j0 += LUT_U16_VECTORS)
    lut_sums16(off, w, j0, j0 + LUT_U16_VECTORS < nv ? j0 + LUT_U16_VECTORS : nv, acc);
}

/* Threshold codes of channels c..c+15 (c + 16 <= oq_thresholds_ld(cout)) of row r as bytes;
   packs and packus work per 128-bit lane, hence the permute. */
static __m128i threshold_codes16(const oq_epilogue *e, int cout, int c, __m256i acc0, __m256i acc1) {
  __m256i p = _mm256_packs_epi32(threshold_codes8(e, cout, c, acc0), threshold_codes8(e, cout, c + 8, acc1));
  p = _mm256_permute4x64_epi64(p, 0xd8);
  return _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
}

/* The epilogue of channels c0..min(c0 + 32, cout) - 1 of row r: with thresholds, 16 codes are
   packed to bytes and stored at once (at 2 bits the epilogue was a third of the time of the
   small-cin convs), else epilogue8 per 8 channels. */
static void lut_epilogue(const oq_epilogue *e, const oq_recip *rc, int r, int c0, int cout, const __m256i acc[4]) {
  if (!e->thresholds) {
    for (int q = 0; q < 4 && c0 + q * LANES < cout; q++) epilogue8(e, rc, r, c0 + q * LANES, cout, acc[q]);
    return;
  }
  uint8_t *out = e->out_u8 + (size_t)r * e->ld_out;
  for (int q = 0; q < 4 && c0 + q * LANES < cout; q += 2) {
    int c = c0 + q * LANES;
    __m128i b = threshold_codes16(e, cout, c, acc[q], acc[q + 1]);
    int n = cout - c;
    if (n >= 16) {
      _mm_storeu_si128((void *)(out + c), b);
    } else if (n == 8) {  /* MobileNet's channel counts are multiples of 8: no copy */
      _mm_storel_epi64((void *)(out + c), b);
    } else {
      uint8_t tmp[16];
      _mm_storeu_si128((void *)tmp, b);
      memcpy(out + c, tmp, n);
    }
  }
}

static void lut_conv1x1(const uint8_t *a, int lda, int rows, const oq_packed1x1 *h, const oq_epilogue *e,
                        uint8_t *scratch) {
  int nv = lut_vectors(h->cin);
  size_t ld = lut_offsets_ld(h->cin);
  oq_recip rc = oq_recip_of(e);
  const uint8_t *w = (const uint8_t *)(h + 1);
  for (int r0 = 0; r0 < rows; r0 += LUT_MR) {
    /* rows past the end repeat the last one: their sums are computed and dropped */
    const uint8_t *off[LUT_MR];
    int asum[LUT_MR];
    for (int i = 0; i < LUT_MR; i++) {
      off[i] = scratch + i * ld;
      if (r0 + i < rows)
        asum[i] = lut_offsets(a + (size_t)(r0 + i) * lda, h->cin, (size_t)(rows - 1 - r0 - i) * lda + h->cin,
                              scratch + i * ld);
      else
        off[i] = off[i - 1], asum[i] = asum[i - 1];
    }
    for (int t = 0; t * LUT_TILE < h->cout; t++) {
      __m256i acc[LUT_MR][4];
      lut_sums(off, asum, w + (size_t)t * nv * LUT_TILE, nv, acc);
      for (int i = 0; i < LUT_MR && r0 + i < rows; i++) lut_epilogue(e, &rc, r0 + i, t * LUT_TILE, h->cout, acc[i]);
    }
  }
}

/* ---- the 1x1 entry points: the lookup kernel where it applies, else the c4 layout ---- */

static size_t pack1x1_size(int cout, int cin, int wbits) {
  size_t c4 = oq_pack_size(cout, cin, wbits, TILE, LANES);  /* the size may not depend on abits */
  return wbits <= 2 && lut_pack_size(cout, cin) > c4 ? lut_pack_size(cout, cin) : c4;
}

static void pack1x1(const int8_t *codes, int cout, int cin, int wbits, int abits, void *dst) {
  if (lut_applies(wbits, abits))
    lut_pack(codes, cout, cin, wbits, abits, dst);
  else
    oq_pack(codes, cout, cin, wbits, abits, TILE, LANES, OQ_PACK_AVX2, 0, dst);
}

static size_t scratch1x1_size(int cout, int cin, int wbits) {
  (void)cout;
  size_t c4 = oq_pack_store_bits(wbits) == 8 ? 0 : oq_pack_tile_bytes(cin, TILE), lut = LUT_MR * lut_offsets_ld(cin);
  return wbits <= 2 && lut > c4 ? lut : c4;
}

static void conv1x1(const uint8_t *a, int lda, int rows, const void *packed, const oq_epilogue *e,
                    void *scratch) {
  const oq_packed1x1 *h = packed;
  if (h->magic != OQ_PACK_AVX2) abort();  /* weights packed by another path */
  if (h->layout == LUT_LAYOUT)
    lut_conv1x1(a, lda, rows, h, e, scratch);
  else
    c4_conv1x1(a, lda, rows, h, e, scratch);
}

/* ---- depthwise ---- */

static int max_code(const oq_dw_args *d, int oy0, int oy1) {
  int y0, y1;
  oq_dw_input_rows(d, oy0, oy1, &y0, &y1);
  const uint8_t *p = d->a + (size_t)y0 * d->w * d->c, *end = d->a + (size_t)y1 * d->w * d->c;
  __m256i m = _mm256_set1_epi8((char)d->pad_u);
  for (; p + 32 <= end; p += 32) m = _mm256_max_epu8(m, _mm256_loadu_si256((const void *)p));
  uint8_t lanes[32];
  _mm256_storeu_si256((void *)lanes, m);
  int best = 0;
  for (int i = 0; i < 32; i++) best = lanes[i] > best ? lanes[i] : best;
  for (; p < end; p++) best = *p > best ? *p : best;
  return best;
}

/* 16 codes at p, or the n < 16 left at the end of a pixel's channels (8 directly: MobileNet's
   channel counts are multiples of 8, and a copy through memory per tap halved those shapes). */
static inline __m128i load16(const void *p, int n) {
  if (n >= 16) return _mm_loadu_si128(p);
  if (n == 8) return _mm_loadl_epi64(p);
  uint8_t tmp[16] = {0};
  memcpy(tmp, p, n);
  return _mm_loadu_si128((const void *)tmp);
}

/* One output pixel, 16 channels at a time: int16 products (exact: |u*w| <= 255*128), summed in
   int16 when the caller proved every sum fits (wide = 0), else in int32. */
static inline __attribute__((always_inline)) void dw_pixel(const oq_dw_args *d, int oy, int ox, int wide) {
  int pad = d->k / 2, iy0 = oy * d->stride - pad, ix0 = ox * d->stride - pad, r = oy * d->wo + ox;
  const __m256i padv = _mm256_set1_epi16(d->pad_u);
  for (int cb = 0; cb < d->c; cb += 16) {
    int n = d->c - cb;
    __m256i acc = _mm256_setzero_si256(), lo = acc, hi = acc;
    for (int ky = 0; ky < d->k; ky++) {
      int iy = iy0 + ky;
      for (int kx = 0; kx < d->k; kx++) {
        int ix = ix0 + kx;
        __m256i u = padv;
        if (iy >= 0 && iy < d->h && ix >= 0 && ix < d->w)
          u = _mm256_cvtepu8_epi16(load16(d->a + ((size_t)iy * d->w + ix) * d->c + cb, n));
        __m256i wv = _mm256_cvtepi8_epi16(load16(d->wt + (size_t)(ky * d->k + kx) * d->c + cb, n));
        __m256i p = _mm256_mullo_epi16(u, wv);
        if (wide) {
          lo = _mm256_add_epi32(lo, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(p)));
          hi = _mm256_add_epi32(hi, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(p, 1)));
        } else {
          acc = _mm256_add_epi16(acc, p);
        }
      }
    }
    if (!wide) {
      lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc));
      hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc, 1));
    }
    epilogue8(d->e, &d->rc, r, cb, d->c, lo);
    if (n > 8) epilogue8(d->e, &d->rc, r, cb + 8, d->c, hi);
  }
}

/* ---- depthwise with int16 sums: vpmaddubsw over vertical tap pairs ----
 * For a group of 32 channels, the codes of 2 input rows (taps ky = 2q, 2q+1 of one column) are
 * interleaved bytewise so that each int16 lane holds one channel's 2 codes, and the weights of
 * the same 2 taps likewise (zero past ky = k-1): one vpmaddubsw multiplies 16 channels x 2 taps
 * into int16 pair sums, which vpaddw adds. Exact where the caller proved every sum fits int16
 * (then no pair sum saturates either). vpunpck* works within 128-bit lanes, so vector m of a
 * group holds channel 16L + 8m + j in lane 8L + j; the sums are put back in order before the
 * epilogue. A column's pairs are built once per output row into a row buffer and read by every
 * output pixel that uses the column, and 4 output pixels share each loaded weight vector. */

enum { DW_GROUP = 32, DW_NP = 4 };

/* The codes of channels 0..n-1 at p (zeros past them). */
static inline __m256i dw_load32(const uint8_t *p, int n) {
  if (n >= 32) return _mm256_loadu_si256((const void *)p);
  __m128i lo = load16(p, n < 16 ? n : 16), hi = n > 16 ? load16(p + 16, n - 16) : _mm_setzero_si128();
  return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

/* Two vectors of 32 codes (rows r0, r1 of 32 channels) as 2 vectors of byte pairs. */
static inline void interleave2(__m256i r0, __m256i r1, __m256i *out) {
  _mm256_store_si256(out, _mm256_unpacklo_epi8(r0, r1));
  _mm256_store_si256(out + 1, _mm256_unpackhi_epi8(r0, r1));
}

/* The weights of group g as pairs: wq[(q * k + kx) * 2 + m]. */
static void dw_pack_weights(const oq_dw_args *d, int g, int nq, __m256i *wq) {
  int n = d->c - g * DW_GROUP;
  for (int q = 0; q < nq; q++)
    for (int kx = 0; kx < d->k; kx++) {
      __m256i r[2];
      for (int i = 0; i < 2; i++) {
        int ky = 2 * q + i;
        r[i] = ky < d->k ? dw_load32((const uint8_t *)d->wt + (size_t)(ky * d->k + kx) * d->c + g * DW_GROUP, n)
                         : _mm256_setzero_si256();
      }
      interleave2(r[0], r[1], wq + (q * d->k + kx) * 2);
    }
}

/* The input pairs of output row oy, group g: x[(q * wp + pad + ix) * 2 + m] for the image's
   columns ix (the padding columns around them are filled once by the caller). Rows outside the
   image read the padding codes at padv, rows past the kernel the zeros at zero (their weights
   are zero), with a step of 0: the loop over the columns has no branches. */
static void dw_build_row(const oq_dw_args *d, int g, int nq, int wp, int oy, const __m256i *padv,
                         const __m256i *zero, __m256i *x) {
  int pad = d->k / 2, n = d->c - g * DW_GROUP;
  for (int q = 0; q < nq; q++) {
    const uint8_t *row[2];
    size_t step[2];
    for (int i = 0; i < 2; i++) {
      int ky = 2 * q + i, iy = oy * d->stride - pad + ky;
      int inside = ky < d->k && iy >= 0 && iy < d->h;
      row[i] = inside ? d->a + (size_t)iy * d->w * d->c + g * DW_GROUP : (const uint8_t *)(ky < d->k ? padv : zero);
      step[i] = inside ? (size_t)d->c : 0;
    }
    __m256i *xq = x + ((size_t)q * wp + pad) * 2;
    for (int ix = 0; ix < d->w; ix++, xq += 2) {
      interleave2(dw_load32(row[0], n), dw_load32(row[1], n), xq);
      row[0] += step[0], row[1] += step[1];
    }
  }
}

/* The float epilogue's operands of a group of 32 channels c0.., 8 channels per vector, where
   the output is u8 codes without a residual and oq_recip's reciprocal applies (fast; thresholds
   are ignored: this measured as fast or faster at 2-bit codes); constants in registers (a store
   of u8 codes may alias the epilogue). */
typedef struct {
  int c0, n, fast, act;
  __m256 scale[4], shift[4], qn, qp, recip;
  __m256i bias[4], qn_i;
} dw_group;

static void dw_group_of(const oq_dw_args *d, int g, dw_group *gr) {
  const oq_epilogue *e = d->e;
  gr->c0 = g * DW_GROUP, gr->n = d->c - gr->c0;
  gr->fast = d->rc.fast && e->out_u8 && !e->residual;
  if (!gr->fast) return;
  for (int i = 0; i < 4; i++) {
    int c0 = gr->c0 + 8 * i;
    __m256i m = lanes_mask(d->c - c0);
    gr->scale[i] = _mm256_maskload_ps(e->scale + c0, m), gr->shift[i] = _mm256_maskload_ps(e->shift + c0, m);
    gr->bias[i] = e->acc_bias ? _mm256_maskload_epi32(e->acc_bias + c0, m) : _mm256_setzero_si256();
  }
  gr->act = e->act;
  gr->qn = _mm256_set1_ps((float)e->qn), gr->qp = _mm256_set1_ps((float)e->qp), gr->qn_i = _mm256_set1_epi32(e->qn);
  gr->recip = _mm256_set1_ps(e->act == OQ_ACT_HSWISH ? d->rc.r6 : d->rc.r);
}

/* The fast path of epilogue8 on the 32 channels of a pixel (acc[i]: channels c0 + 8i..), the
   codes packed and stored together. Returns 0, having stored nothing, where a lane is near a tie
   (the caller then takes epilogue8, with its divisions). */
static inline __attribute__((always_inline)) int dw_codes(const oq_dw_args *d, const dw_group *gr, int r,
                                                          const __m256i acc[4]) {
  const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.0f), three = _mm256_set1_ps(3.0f);
  __m256 unsafe = zero;
  __m256i u[4];
  for (int i = 0; i < 4; i++) {
    __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc[i], gr->bias[i])), gr->scale[i]);
    y = _mm256_add_ps(y, gr->shift[i]);
    if (gr->act == OQ_ACT_RELU) y = _mm256_max_ps(y, zero);
    if (gr->act == OQ_ACT_RELU6) y = _mm256_min_ps(_mm256_max_ps(y, zero), six);
    if (gr->act == OQ_ACT_HSWISH)  /* y * min(max(y + 3, 0), 6); the / 6 is in recip */
      y = _mm256_mul_ps(y, _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(y, three), zero), six));
    __m256 q = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(y, gr->recip), gr->qn), gr->qp);
    __m256 qr = _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 off = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(q, qr));
    unsafe = _mm256_or_ps(unsafe, _mm256_cmp_ps(off, _mm256_set1_ps(OQ_TIE_SAFE), _CMP_NLT_UQ));
    u[i] = _mm256_sub_epi32(_mm256_cvttps_epi32(qr), gr->qn_i);
  }
  if (_mm256_movemask_ps(unsafe)) return 0;
  /* codes are 0..255: the packs do not saturate; they leave 4-channel dwords in the order
     0, 2, 4, 6, 1, 3, 5, 7, which vpermd puts back */
  __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(u[0], u[1]), _mm256_packus_epi32(u[2], u[3]));
  b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  uint8_t *out = d->e->out_u8 + (size_t)r * d->e->ld_out + gr->c0;
  if (gr->n >= 32) {
    _mm256_storeu_si256((void *)out, b);
  } else {
    uint8_t tmp[32];
    _mm256_storeu_si256((void *)tmp, b);
    memcpy(out, tmp, gr->n);
  }
  return 1;
}

/* The epilogue of output pixel r of a group: the int16 sums widened (vector m's 128-bit halves
   hold channels 8m.. and 16 + 8m..), then dw_codes or epilogue8. */
static inline __attribute__((always_inline)) void dw_epilogue(const oq_dw_args *d, const dw_group *gr, int r,
                                                              __m256i acc0, __m256i acc1) {
  __m256i acc[4] = {_mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc0)),
                    _mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc1)),
                    _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc0, 1)),
                    _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc1, 1))};
  if (gr->fast && dw_codes(d, gr, r, acc)) return;
  for (int i = 0; i < 4 && 8 * i < gr->n; i++) epilogue8(d->e, &d->rc, r, gr->c0 + 8 * i, d->c, acc[i]);
}

/* np output pixels ox.. of row oy: int16 sums of both vectors m, then the epilogue. */
static inline __attribute__((always_inline)) void dw_pixels(const oq_dw_args *d, const dw_group *gr, int nq, int wp,
                                                            const __m256i *x, const __m256i *wq, int oy, int ox,
                                                            int np) {
  __m256i acc[DW_NP][2];
  for (int p = 0; p < np; p++) acc[p][0] = acc[p][1] = _mm256_setzero_si256();
  for (int q = 0; q < nq; q++)
    for (int kx = 0; kx < d->k; kx++) {
      const __m256i *w = wq + (q * d->k + kx) * 2;
      __m256i w0 = _mm256_load_si256(w), w1 = _mm256_load_si256(w + 1);
      for (int p = 0; p < np; p++) {
        const __m256i *xp = x + ((size_t)q * wp + (size_t)(ox + p) * d->stride + kx) * 2;
        acc[p][0] = _mm256_add_epi16(acc[p][0], _mm256_maddubs_epi16(_mm256_load_si256(xp), w0));
        acc[p][1] = _mm256_add_epi16(acc[p][1], _mm256_maddubs_epi16(_mm256_load_si256(xp + 1), w1));
      }
    }
  for (int p = 0; p < np; p++) dw_epilogue(d, gr, oy * d->wo + ox + p, acc[p][0], acc[p][1]);
}

static void dw_rows16(const oq_dw_args *d, int oy0, int oy1) {
  int nq = (d->k + 1) / 2, pad = d->k / 2, wp = d->w + 2 * pad;
  size_t nx = (size_t)nq * wp * 2, nw = (size_t)nq * d->k * 2;
  __m256i *x = aligned_alloc(32, (nx + nw + 2) * sizeof(__m256i)), *wq = x + nx, *consts = wq + nw;
  if (!x) abort();
  const __m256i padv = _mm256_set1_epi8((char)d->pad_u);
  consts[0] = padv, consts[1] = _mm256_setzero_si256();
  for (int q = 0; q < nq; q++)
    for (int i = 0; i < pad; i++)
      for (int m = 0; m < 2; m++) {
        x[((size_t)q * wp + i) * 2 + m] = padv;
        x[((size_t)q * wp + pad + d->w + i) * 2 + m] = padv;
      }
  for (int g = 0; g * DW_GROUP < d->c; g++) {
    dw_group gr;
    dw_group_of(d, g, &gr);
    dw_pack_weights(d, g, nq, wq);
    for (int oy = oy0; oy < oy1; oy++) {
      dw_build_row(d, g, nq, wp, oy, consts, consts + 1, x);
      int ox = 0;
      for (; ox + DW_NP <= d->wo; ox += DW_NP) dw_pixels(d, &gr, nq, wp, x, wq, oy, ox, DW_NP);
      for (; ox < d->wo; ox++) dw_pixels(d, &gr, nq, wp, x, wq, oy, ox, 1);
    }
  }
  free(x);
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

const oq_kernels oq_kernels_avx2 = {
    .name = "avx2",
    .pack1x1_size = pack1x1_size,
    .pack1x1 = pack1x1,
    .conv1x1 = conv1x1,
    .scratch1x1_size = scratch1x1_size,
    .dwconv = dwconv,
};
#endif
