/* The model file reader: every size, offset, count, enum and bound is checked before it is
 * used (oqat/runtime/model_file.py states the format and the same rules), so a damaged,
 * truncated or hostile file is a one-line error, never an out-of-bounds read. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"

#define HEADER_BYTES 64
#define OP_BYTES 80
#define BLOB_BYTES 24
#define ALIGN 64
#define NONE 0xFFFFFFFFu

enum { KIND_F32 = 1, KIND_CODES = 2, KIND_TEXT = 3 };
/* Bounds no valid network comes near: products of them fit size_t, int32 sums of codes stay exact
   (8192 * 255 * 128 < 2^31), and one image's activations stay under MAX_ARENA. */
enum { MAX_CHANNELS = 8192, MAX_SIDE = 4096, MAX_IN_CHANNELS = 64, MAX_OPS = 4096, MAX_K = 11, MAX_STRIDE = 4,
       MAX_NAME = 256 };
#define MAX_ARENA ((size_t)1 << 30)

/* The op record's fields, 20 little-endian words (model_file.OP_FIELDS). */
enum { F_TYPE, F_INPUT, F_RES, F_OUT_CODES, F_COUT, F_K, F_STRIDE, F_ACT, F_WBITS, F_STEP, F_QN, F_QP, F_NAME,
       F_BLOB0, F_RESERVED = 17, N_FIELDS = 20 };

const char *const oq_op_names[OP_LINEAR + 1] = {"?", "stem", "quant", "conv1x1", "dwconv", "se", "pool", "linear"};

typedef struct {
  const unsigned char *p;
  size_t body_end, blob_table; /* the data ends before the checksum; the blob table's offset */
  uint32_t n_blobs;
} file;

static uint32_t u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t u64(const unsigned char *p) { return (uint64_t)u32(p) | (uint64_t)u32(p + 4) << 32; }
static float as_f32(uint32_t v) {
  float f;
  memcpy(&f, &v, sizeof f);
  return f;
}

static uint32_t crc32(const unsigned char *p, size_t n) {
  uint32_t table[256];
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

/* Bits a code of `bits`-bit weights is stored in: enough for the signed levels (1 bit: -1..1). */
static int code_width(int bits) { return bits == 1 ? 2 : bits; }
/* Bits of the stored codes u = q - qn of a quantizer (0..qp-qn). */
static int bit_length(unsigned v) {
  int n = 0;
  for (; v; v >>= 1) n++;
  return n;
}

/* Blob `index` of `kind` holding `count` items in `nbytes` bytes, or NULL with the error set. */
static const unsigned char *blob(const file *f, uint32_t index, uint32_t kind, size_t count, size_t nbytes,
                                 const char *where) {
  if (index >= f->n_blobs) return oq_error("%s: blob index %u out of range", where, index), NULL;
  const unsigned char *e = f->p + f->blob_table + (size_t)index * BLOB_BYTES;
  uint64_t offset = u64(e), size = u64(e + 8);
  if (u32(e + 16) != kind || u32(e + 20) != count || size != nbytes)
    return oq_error("%s: blob %u holds kind %u, %u items, %llu bytes; expected kind %u, %zu items, %zu bytes",
                    where, index, u32(e + 16), u32(e + 20), (unsigned long long)size, kind, count, nbytes), NULL;
  return f->p + offset; /* in bounds: every entry was checked against the file */
}

static char *text(const file *f, uint32_t index, const char *where) {
  if (index >= f->n_blobs) return oq_error("%s: name blob %u out of range", where, index), NULL;
  const unsigned char *e = f->p + f->blob_table + (size_t)index * BLOB_BYTES;
  uint32_t n = u32(e + 20);
  if (n > MAX_NAME) return oq_error("%s: name longer than %d bytes", where, MAX_NAME), NULL;
  const unsigned char *s = blob(f, index, KIND_TEXT, n, n, where);
  char *out = s ? calloc(n + 1, 1) : NULL;
  if (s && !out) oq_error("out of memory");
  if (out) memcpy(out, s, n);
  return out;
}

static void *alloc(size_t n) {
  void *p = calloc(n ? n : 1, 1);
  if (!p) oq_error("out of memory (%zu bytes)", n);
  return p;
}

static float *floats(const file *f, uint32_t index, size_t count, const char *where, size_t *resident) {
  const unsigned char *src = blob(f, index, KIND_F32, count, 4 * count, where);
  float *out = src ? alloc(4 * count) : NULL;
  if (!out) return NULL;
  for (size_t i = 0; i < count; i++) out[i] = as_f32(u32(src + 4 * i));
  *resident += 4 * count;
  return out;
}

/* Weight codes at `bits` (the little-endian bit stream of oqat.nets.packed.pack) as int8, each
   checked to be a code of the quantizer. */
static int8_t *codes(const file *f, uint32_t index, size_t count, int bits, const char *where, size_t *file_bytes) {
  int width = code_width(bits), qn = bits == 1 ? -1 : -(1 << (bits - 1)), qp = bits == 1 ? 1 : (1 << (bits - 1)) - 1;
  size_t nbytes = (count * width + 7) / 8;
  const unsigned char *src = blob(f, index, KIND_CODES, count, nbytes, where);
  int8_t *out = src ? alloc(count) : NULL;
  if (!out) return NULL;
  for (size_t i = 0; i < count; i++) {
    size_t bit = i * width, byte = bit / 8;
    unsigned v = src[byte] | (byte + 1 < nbytes ? (unsigned)src[byte + 1] << 8 : 0u);
    int q = (int)((v >> (bit % 8)) & ((1u << width) - 1)) + qn;
    if (q > qp) {
      free(out);
      return oq_error("%s: weight code %d out of the %d-bit range", where, q, bits), NULL;
    }
    out[i] = (int8_t)q;
  }
  *file_bytes += nbytes;
  return out;
}

/* qn * the sum of each output channel's weight codes (w[o * so + i * si], i < n): the integer
   term that turns sums over stored codes u = q - qn into sums over q. */
static int32_t *acc_bias(const int8_t *w, int cout, int n, int so, int si, int qn, size_t *resident) {
  if (qn == 0) return NULL;
  int32_t *out = alloc(sizeof *out * cout);
  if (!out) return NULL;
  for (int o = 0; o < cout; o++) {
    int32_t s = 0;
    for (int i = 0; i < n; i++) s += w[(size_t)o * so + (size_t)i * si];
    out[o] = qn * s;
  }
  *resident += sizeof *out * cout;
  return out;
}

static void *aligned(size_t n) {
  void *p = aligned_alloc(ALIGN, (n + ALIGN - 1) / ALIGN * ALIGN);
  if (!p) oq_error("out of memory (%zu bytes)", n);
  return p;
}

/* The weights of a checked op `o` from its blob ids. */
static int load_weights(oqat_rt_model *m, const file *f, oq_op *o, const uint32_t *ids, const char *where) {
  size_t *fl = &m->resident_float_bytes;
  switch (o->type) {
    case OP_STEM: {
      float *w = floats(f, ids[0], (size_t)o->co * o->c * o->k * o->k, where, &(size_t){0});
      size_t kk = (size_t)o->k * o->k, lanes = (o->co + OQ_STEM_LANES - 1) / OQ_STEM_LANES * OQ_STEM_LANES;
      o->stem_w = w ? alloc(sizeof(double) * lanes * o->c * kk) : NULL;
      if (o->stem_w) /* [co][ci][ky][kx] -> [ky][kx][ci][lanes]: the sums vectorize over co */
        for (int co = 0; co < o->co; co++)
          for (int ci = 0; ci < o->c; ci++)
            for (size_t p = 0; p < kk; p++) o->stem_w[(p * o->c + ci) * lanes + co] = w[(co * o->c + ci) * kk + p];
      free(w);
      *fl += sizeof(double) * lanes * o->c * kk;
      if (!o->stem_w) return -1;
      break;
    }
    case OP_CONV1X1: {
      int8_t *w = codes(f, ids[0], (size_t)o->co * o->c, o->wbits, where, &m->file_code_bytes);
      if (!w) return -1;
      o->acc_bias = acc_bias(w, o->co, o->c, o->c, 1, o->in_qn, fl);
      size_t n = m->kernels->pack1x1_size(o->co, o->c, o->wbits);
      o->packed = o->acc_bias || !o->in_qn ? aligned(n) : NULL; /* NULL too when acc_bias failed */
      if (o->packed) m->kernels->pack1x1(w, o->co, o->c, o->wbits, o->in_bits, o->packed);
      free(w);
      if (!o->packed) return -1;
      m->resident_code_bytes += n;
      break;
    }
    case OP_DWCONV:
      o->dw = codes(f, ids[0], (size_t)o->k * o->k * o->c, o->wbits, where, &m->file_code_bytes);
      if (!o->dw) return -1;
      m->resident_code_bytes += (size_t)o->k * o->k * o->c;
      o->acc_bias = acc_bias(o->dw, o->c, o->k * o->k, 1, o->c, o->in_qn, fl);
      if (o->in_qn && !o->acc_bias) return -1;
      break;
    case OP_SE:
      if (!(o->fw = floats(f, ids[0], (size_t)o->mid * o->c, where, fl)) || !(o->fb = floats(f, ids[1], o->mid, where, fl))
          || !(o->fw2 = floats(f, ids[2], (size_t)o->c * o->mid, where, fl)) || !(o->fb2 = floats(f, ids[3], o->c, where, fl)))
        return -1;
      return 0;
    case OP_LINEAR:
      if (!(o->fw = floats(f, ids[0], (size_t)o->co * o->c, where, fl)) || !(o->fb = floats(f, ids[1], o->co, where, fl)))
        return -1;
      return 0;
    default:
      return 0;
  }
  if (!(o->scale = floats(f, ids[1], o->co, where, fl)) || !(o->shift = floats(f, ids[2], o->co, where, fl))) return -1;
  return 0;
}

/* Where a conv writes at most OQ_THRESHOLDS_MAX codes and no residual, its epilogue as the
   kernels' integer compares (the same codes; oq_thresholds says where it does not qualify). */
static int thresholds(oqat_rt_model *m, oq_op *o) {
  int levels = o->qp - o->qn;
  if (!o->out_codes || o->residual >= 0 || levels > OQ_THRESHOLDS_MAX) return 0;
  size_t n = (size_t)(1 + levels) * oq_thresholds_ld(o->co) * sizeof(int32_t);
  int32_t *t = malloc(n);
  if (!t) return oq_error("out of memory"), -1;
  /* |acc| <= fan-in * the largest code * the largest |weight code| (< 2^31 by the reader's bounds) */
  int32_t bound = (o->type == OP_DWCONV ? o->k * o->k : o->c) * ((1 << o->in_bits) - 1) * (1 << (o->wbits - 1));
  oq_epilogue e = {.scale = o->scale, .shift = o->shift, .acc_bias = o->acc_bias, .act = o->act,
                   .out_u8 = (uint8_t *)t /* says "codes out"; not written */, .ld_out = o->co, .step = o->step,
                   .qn = o->qn, .qp = o->qp};
  if (oq_thresholds(&e, o->co, -bound, bound, t)) {
    o->thresholds = t;
    m->resident_float_bytes += n;
  } else {
    free(t);
  }
  return 0;
}

/* Which fields each op type uses (the others must be 0) and how many blobs it has. */
static int uses(int type, int field) {
  switch (field) {
    case F_COUT: return type == OP_STEM || type == OP_CONV1X1 || type == OP_SE || type == OP_LINEAR;
    case F_K: case F_STRIDE: return type == OP_STEM || type == OP_DWCONV;
    case F_WBITS: return type == OP_CONV1X1 || type == OP_DWCONV;
    default: return 0;
  }
}
static int n_blobs_of(int type) {
  return type == OP_SE ? 4 : type == OP_LINEAR ? 2 : type == OP_STEM || type == OP_CONV1X1 || type == OP_DWCONV ? 3 : 0;
}

/* Op i from its record, checked against the values before it; fills its shapes. */
static int read_op(oqat_rt_model *m, const file *f, int i) {
  const unsigned char *r = f->p + HEADER_BYTES + (size_t)i * OP_BYTES;
  uint32_t w[N_FIELDS];
  for (int j = 0; j < N_FIELDS; j++) w[j] = u32(r + 4 * j);
  oq_op *o = &m->ops[i];
  char where[96];
  snprintf(where, sizeof where, "op %d", i);
  if (w[F_TYPE] < OP_STEM || w[F_TYPE] > OP_LINEAR) return oq_error("%s: unknown type %u", where, w[F_TYPE]);
  int t = o->type = (int)w[F_TYPE];
  if (w[F_NAME] != NONE && !(o->name = text(f, w[F_NAME], where))) return -1;
  snprintf(where, sizeof where, "op %d (%s '%.40s')", i, oq_op_names[t], o->name ? o->name : "");
  for (int j = F_RESERVED; j < N_FIELDS; j++)
    if (w[j]) return oq_error("%s: reserved field %d is not 0", where, j);
  if (w[F_INPUT] > (uint32_t)i || (w[F_INPUT] == 0) != (t == OP_STEM))
    return oq_error("%s: input value %u is not an earlier value of its kind", where, w[F_INPUT]);
  const oq_op *src = w[F_INPUT] ? &m->ops[w[F_INPUT] - 1] : NULL;
  o->input = (int)w[F_INPUT];
  o->h = src ? src->ho : m->in_h, o->w = src ? src->wo : m->in_w, o->c = src ? src->co : m->in_c;
  int in_codes = src && src->out_codes;
  if (in_codes != (t == OP_CONV1X1 || t == OP_DWCONV))
    return oq_error("%s: input is %s", where, in_codes ? "codes, expected float" : "float, expected codes");
  if (in_codes) o->in_qn = src->qn, o->in_bits = bit_length((unsigned)(src->qp - src->qn));
  for (int j = F_COUT; j <= F_WBITS; j++)
    if (j != F_ACT && (w[j] != 0) != uses(t, j))
      return oq_error("%s: field %d is %s", where, j, w[j] ? "set but unused" : "missing");
  if (w[F_ACT] > OQ_ACT_HSWISH || (w[F_ACT] && t != OP_STEM && t != OP_CONV1X1 && t != OP_DWCONV))
    return oq_error("%s: bad activation %u", where, w[F_ACT]);
  if (w[F_COUT] > MAX_CHANNELS || (w[F_K] && (w[F_K] % 2 == 0 || w[F_K] > MAX_K)) || w[F_STRIDE] > MAX_STRIDE
      || w[F_WBITS] > 8)
    return oq_error("%s: channels, kernel, stride or bits out of range", where);
  o->act = (int)w[F_ACT], o->k = (int)w[F_K], o->stride = (int)w[F_STRIDE], o->wbits = (int)w[F_WBITS];
  o->ho = o->h, o->wo = o->w, o->co = o->c;
  switch (t) {
    case OP_STEM: case OP_DWCONV:
      o->ho = (o->h - 1) / o->stride + 1, o->wo = (o->w - 1) / o->stride + 1;
      if (t == OP_STEM) o->co = (int)w[F_COUT];
      break;
    case OP_CONV1X1: case OP_LINEAR: o->co = (int)w[F_COUT]; break;
    case OP_SE: o->mid = (int)w[F_COUT]; break;
    case OP_POOL: o->ho = o->wo = 1; break;
  }
  if (t == OP_LINEAR && (o->h != 1 || o->w != 1)) return oq_error("%s: input is not pooled", where);
  o->out_codes = (int)w[F_OUT_CODES];
  int32_t qn = (int32_t)w[F_QN], qp = (int32_t)w[F_QP];
  float step = as_f32(w[F_STEP]);
  if (w[F_OUT_CODES] == 1) {
    if (t == OP_LINEAR || !isfinite(step) || !(step > 0) || qn < -128 || qn > 0 || qp <= 0 || qp > 255 - qn)
      return oq_error("%s: bad output quantizer (step %g, range %d..%d)", where, step, qn, qp);
    o->step = step, o->qn = qn, o->qp = qp;
  } else if (w[F_OUT_CODES] != 0 || w[F_STEP] || qn || qp || t == OP_QUANT) {
    return oq_error("%s: bad output type", where);
  }
  o->residual = -1;
  if (w[F_RES] != NONE) {
    const oq_op *res = w[F_RES] && w[F_RES] <= (uint32_t)i ? &m->ops[w[F_RES] - 1] : NULL;
    if (t != OP_CONV1X1 || !res || res->out_codes || res->ho != o->ho || res->wo != o->wo || res->co != o->co)
      return oq_error("%s: bad residual value %u", where, w[F_RES]);
    o->residual = (int)w[F_RES];
  }
  const uint32_t *ids = w + F_BLOB0;
  for (int j = n_blobs_of(t); j < 4; j++)
    if (ids[j] != NONE) return oq_error("%s: unused blob %d is set", where, j);
  if (load_weights(m, f, o, ids, where) != 0) return -1;
  return t == OP_CONV1X1 || t == OP_DWCONV ? thresholds(m, o) : 0;
}

oqat_rt_model *oq_read(const unsigned char *p, size_t size, const char *isa) {
  if (!p || size < HEADER_BYTES + 4) return oq_error("not an oqat runtime model: %zu bytes", p ? size : 0), NULL;
  if (memcmp(p, "OQRT", 4) != 0) return oq_error("not an oqat runtime model (bad magic)"), NULL;
  if (u32(p + 4) != 1) return oq_error("model file version %u; this runtime reads version 1", u32(p + 4)), NULL;
  if (u64(p + 40) != size)
    return oq_error("truncated or padded file: %zu bytes, its header says %llu", size,
                    (unsigned long long)u64(p + 40)), NULL;
  for (int i = 36; i < HEADER_BYTES; i++)
    if (p[i] && (i < 40 || i >= 48)) return oq_error("header reserved bytes are not 0"), NULL;
  if (u32(p + size - 4) != crc32(p, size - 4)) return oq_error("checksum mismatch: the file is damaged"), NULL;
  uint32_t in_c = u32(p + 8), in_h = u32(p + 12), in_w = u32(p + 16), ncls = u32(p + 20);
  uint32_t n_ops = u32(p + 24), n_blobs = u32(p + 28);
  if (!in_c || in_c > MAX_IN_CHANNELS || !in_h || in_h > MAX_SIDE || !in_w || in_w > MAX_SIDE)
    return oq_error("bad input shape %u x %u x %u", in_c, in_h, in_w), NULL;
  if (!ncls || ncls > MAX_CHANNELS) return oq_error("bad class count %u", ncls), NULL;
  if (!n_ops || n_ops > MAX_OPS || n_blobs > 8 * MAX_OPS) return oq_error("bad op or blob count"), NULL;
  uint32_t meta = u32(p + 32);
  file f = {p, size - 4, HEADER_BYTES + (size_t)n_ops * OP_BYTES, n_blobs};
  size_t data_start = f.blob_table + (size_t)n_blobs * BLOB_BYTES;
  if (data_start > f.body_end) return oq_error("truncated file: its tables run past the end"), NULL;
  for (uint32_t i = 0; i < n_blobs; i++) {
    const unsigned char *e = p + f.blob_table + (size_t)i * BLOB_BYTES;
    uint64_t offset = u64(e), nbytes = u64(e + 8);
    if (offset % ALIGN || offset < data_start || offset > f.body_end || nbytes > f.body_end - offset)
      return oq_error("blob %u out of bounds", i), NULL;
    if (u32(e + 16) < KIND_F32 || u32(e + 16) > KIND_TEXT) return oq_error("blob %u of unknown kind", i), NULL;
  }
  if (meta != NONE) { /* what wrote the file, for people: checked, not read */
    const unsigned char *e = meta < n_blobs ? p + f.blob_table + (size_t)meta * BLOB_BYTES : NULL;
    if (!e || u32(e + 16) != KIND_TEXT || u64(e + 8) != u32(e + 20))
      return oq_error("metadata blob %u is not a text", meta), NULL;
  }
  oqat_rt_model *m = calloc(1, sizeof *m);
  if (!m) return oq_error("out of memory"), NULL;
  m->in_c = (int)in_c, m->in_h = (int)in_h, m->in_w = (int)in_w, m->num_classes = (int)ncls;
  m->kernels = isa ? oq_kernels_by_name(isa) : oq_kernels_select();
  if (!m->kernels) {
    oq_error("%s", oq_kernels_error());
    free(m);
    return NULL;
  }
  m->ops = calloc(n_ops, sizeof *m->ops);
  if (!m->ops) {
    free(m);
    return oq_error("out of memory"), NULL;
  }
  m->n_ops = (int)n_ops;
  for (int i = 0; i < m->n_ops; i++)
    if (read_op(m, &f, i) != 0) goto fail;
  const oq_op *last = &m->ops[m->n_ops - 1];
  if (last->type != OP_LINEAR || last->out_codes || last->co != m->num_classes) {
    oq_error("the last op must be the classifier of %d classes", m->num_classes);
    goto fail;
  }
  return m;
fail:
  oq_free_ops(m);
  free(m);
  return NULL;
}

void oq_free_ops(oqat_rt_model *m) {
  for (int i = 0; m->ops && i < m->n_ops; i++) {
    oq_op *o = &m->ops[i];
    void *owned[] = {o->name, o->packed, o->dw, o->acc_bias, o->thresholds, o->scale, o->shift, o->stem_w, o->fw, o->fb, o->fw2, o->fb2};
    for (size_t j = 0; j < sizeof owned / sizeof owned[0]; j++) free(owned[j]);
  }
  free(m->ops);
  m->ops = NULL;
}
