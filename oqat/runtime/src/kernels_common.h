/* What the SIMD kernel files share, in plain C (each includes it): the packing of 1x1 weights
 * (each path picks its own channel tile; see kernels_avx512.c for the layout), loads of
 * activation quads, and the depthwise arguments and exactness bound. */
#ifndef OQAT_KERNELS_COMMON_H
#define OQAT_KERNELS_COMMON_H

#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* Width at which weights are stored: 1-bit codes (-1..1) need 2 bits, 3 bits are stored in 4. */
static inline int oq_pack_store_bits(int wbits) { return wbits <= 2 ? 2 : wbits <= 4 ? 4 : 8; }

/* Channels of tile t: `tile` for all but the last, whose rest is rounded up to whole vectors. */
static inline int oq_pack_tile_channels(int cout, int t, int tile, int lanes) {
  int rest = cout - t * tile;
  return rest >= tile ? tile : (rest + lanes - 1) / lanes * lanes;
}

/* Bytes of a tile of nc channels in the kernel layout [ceil(cin/4)][nc][4], rounded to 64. */
static inline size_t oq_pack_tile_bytes(int cin, int nc) {
  return ((size_t)(cin + 3) / 4 * nc * 4 + 63) / 64 * 64;
}

static inline size_t oq_pack_size(int cout, int cin, int wbits, int tile, int lanes) {
  size_t n = sizeof(oq_packed1x1);
  for (int t = 0; t * tile < cout; t++)
    n += oq_pack_tile_bytes(cin, oq_pack_tile_channels(cout, t, tile, lanes)) * oq_pack_store_bits(wbits) / 8;
  return n;
}

/* Offset from the header's end of tile t's stored bytes (all tiles before it are full). */
static inline size_t oq_pack_tile_offset(int cin, int wbits, int t, int tile) {
  return (size_t)t * oq_pack_tile_bytes(cin, tile) * oq_pack_store_bits(wbits) / 8;
}

/* Layout bytes in chunks of 64, stored at s bits as unsigned codes w + 2^(s-1): field f of
   stored byte j is layout byte j + f * (64 * s / 8). */
static inline void oq_pack_store(const int8_t *layout, size_t n, int s, uint8_t *dst) {
  if (s == 8) {
    memcpy(dst, layout, n);
    return;
  }
  int nb = 64 * s / 8, fields = 8 / s;
  for (size_t i = 0; i < n; i += 64, dst += nb)
    for (int j = 0; j < nb; j++) {
      unsigned byte = 0;
      for (int f = 0; f < fields; f++) byte |= (unsigned)(layout[i + j + f * nb] + (1 << (s - 1))) << (f * s);
      dst[j] = (uint8_t)byte;
    }
}

static inline void oq_pack(const int8_t *codes, int cout, int cin, int wbits, int abits, int tile, int lanes,
                           uint32_t magic, int32_t layout_id, void *dst) {
  oq_packed1x1 *h = dst;
  memset(h, 0, sizeof *h);
  h->magic = magic;
  h->cout = cout, h->cin = cin, h->wbits = wbits, h->abits = abits, h->layout = layout_id;
  int s = oq_pack_store_bits(wbits), k4 = (cin + 3) / 4;
  int8_t *layout = malloc(oq_pack_tile_bytes(cin, tile));
  if (!layout) abort();
  uint8_t *out = (uint8_t *)(h + 1);
  for (int t = 0; t * tile < cout; t++) {
    int nc = oq_pack_tile_channels(cout, t, tile, lanes);
    size_t n = oq_pack_tile_bytes(cin, nc);
    memset(layout, 0, n);
    for (int kq = 0; kq < k4; kq++)
      for (int j = 0; j < nc; j++)
        for (int b = 0; b < 4; b++) {
          int c = t * tile + j, k = kq * 4 + b;
          if (c < cout && k < cin) layout[((size_t)kq * nc + j) * 4 + b] = codes[(size_t)c * cin + k];
        }
    oq_pack_store(layout, n, s, out);
    out += n * s / 8;
  }
  free(layout);
}

static inline uint32_t oq_quad(const uint8_t *p) {
  uint32_t x;
  memcpy(&x, p, 4);
  return x;
}

/* The last n < 4 codes of a row, without reading past it. */
static inline uint32_t oq_quad_tail(const uint8_t *p, int n) {
  uint32_t x = 0;
  memcpy(&x, p, n);
  return x;
}

/* The next quantizer's code rint(clamp(y / step)) is an integer, so a SIMD epilogue may compute
 * y * (1/step) instead of y / step (and fold h_swish's "/ 6" in: v * (1/(6 step))) whenever that
 * cannot change the integer. Both quotients are within 4 roundings (relative 2^-21.9) of the
 * exact v / (6 step). Clamped to [qn, qp] (|q| <= 256, and clamping moves neither farther from the
 * other) they differ by less than 2^-13.9, so where the clamped fast value is within
 * OQ_TIE_SAFE = 0.5 - 2^-11 of its nearest integer, both round to that integer. A vector with a
 * lane farther off (near a tie, ~0.1% of lanes) takes the divisions instead.
 * fast is 0 where the reciprocals could be inexact beyond that (a step near over- or underflow). */
#define OQ_TIE_SAFE (0.5f - 0x1p-11f)

typedef struct {
  float r, r6;  /* 1/step and 1/(6 step), each rounded once from double */
  int fast;
} oq_recip;

static inline oq_recip oq_recip_of(const oq_epilogue *e) {
  oq_recip q = {0, 0, 0};
  double s = e->step;
  if (e->out_f32 || !(s >= 0x1p-60 && s <= 0x1p60)) return q;
  q.r = (float)(1.0 / s), q.r6 = (float)(1.0 / (6.0 * s)), q.fast = 1;
  return q;
}

typedef struct {
  const uint8_t *a;
  int h, w, c, k, stride, wo;
  const int8_t *wt;
  uint8_t pad_u;
  const oq_epilogue *e;
  oq_recip rc;
} oq_dw_args;

/* The input rows [*y0, *y1) that output rows oy0..oy1-1 read. */
static inline void oq_dw_input_rows(const oq_dw_args *d, int oy0, int oy1, int *y0, int *y1) {
  int pad = d->k / 2;
  *y0 = oy0 * d->stride - pad, *y1 = (oy1 - 1) * d->stride - pad + d->k;
  *y0 = *y0 < 0 ? 0 : *y0, *y1 = *y1 > d->h ? d->h : *y1;
}

/* Whether every depthwise sum fits int16, given the largest code read (padding included). */
static inline int oq_dw_fits_int16(const oq_dw_args *d, int max_code) {
  int wmax = 0, n = d->k * d->k * d->c;
  for (int i = 0; i < n; i++) wmax = abs(d->wt[i]) > wmax ? abs(d->wt[i]) : wmax;
  return (long)d->k * d->k * max_code * wmax <= 32767;
}

#endif
