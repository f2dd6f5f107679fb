/* Damaged and hostile model files against the reader: fuzz MODEL
 * Every truncation, every byte flipped (checksum left wrong, then made right, so the damage
 * reaches the structure checks), and hostile values in every word of the header, the op records
 * and the blob table. Each must load cleanly or fail with a message; a file that loads is run.
 * Prints the counts; exits 1 on a failure without a message. Run it under ASan and UBSan. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oqat_rt.h"

static uint32_t crc32(const unsigned char *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
  }
  return c ^ 0xFFFFFFFFu;
}

static void fix_crc(unsigned char *p, size_t n) {
  uint32_t c = crc32(p, n - 4);
  for (int i = 0; i < 4; i++) p[n - 4 + i] = (unsigned char)(c >> (8 * i));
}

static int loaded, rejected, silent;

/* Load; run a model that loads (when its input and activations are small); count. */
static void try_load(const unsigned char *p, size_t n) {
  oqat_rt_model *m = oqat_rt_load_memory(p, n, NULL);
  if (!m) {
    rejected++;
    if (!oqat_rt_last_error()[0]) silent++;
    return;
  }
  loaded++;
  int c, h, w;
  oqat_rt_input_shape(m, &c, &h, &w);
  oqat_rt_memory mem;
  oqat_rt_memory_use(m, &mem);
  if ((size_t)c * h * w <= (1u << 16) && mem.arena_bytes_per_image <= (16u << 20)) {
    float *x = calloc((size_t)c * h * w, sizeof *x), *y = malloc(sizeof *y * oqat_rt_num_classes(m));
    if (x && y && oqat_rt_run(m, x, 1, y) != 0) silent += !oqat_rt_last_error()[0];
    free(x), free(y);
  }
  oqat_rt_free(m);
}

int main(int argc, char **argv) {
  FILE *f = argc > 1 ? fopen(argv[1], "rb") : NULL;
  if (!f) return fprintf(stderr, "usage: fuzz MODEL\n"), 2;
  static unsigned char file[1 << 20];
  size_t n = fread(file, 1, sizeof file, f);
  fclose(f);
  unsigned char *p = malloc(n);
  try_load(file, n);
  if (loaded != 1) return fprintf(stderr, "the model itself does not load: %s\n", oqat_rt_last_error()), 1;
  for (size_t len = 0; len < n; len++) { /* a copy of each length, so ASan sees any read past it */
    unsigned char *t = malloc(len ? len : 1);
    memcpy(t, file, len);
    try_load(t, len);
    free(t);
  }
  int truncated = rejected;
  for (size_t i = 0; i < n; i++)
    for (int fix = 0; fix < 2; fix++) {
      memcpy(p, file, n);
      p[i] ^= (unsigned char)(fix ? 0x01 << (i % 8) : 0xFF);
      if (fix) fix_crc(p, n);
      try_load(p, n);
    }
  uint32_t hostile[] = {0, 1, 2, 3, 64, 4097, 8193, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFEu, 0xFFFFFFFFu};
  uint32_t n_ops = (uint32_t)file[24] | (uint32_t)file[25] << 8, n_blobs = (uint32_t)file[28] | (uint32_t)file[29] << 8;
  size_t words = (64 + n_ops * 80 + (size_t)n_blobs * 24) / 4;
  for (size_t wd = 0; wd < words && 4 * wd + 4 <= n - 4; wd++)
    for (size_t v = 0; v < sizeof hostile / sizeof hostile[0]; v++) {
      memcpy(p, file, n);
      for (int b = 0; b < 4; b++) p[4 * wd + b] = (unsigned char)(hostile[v] >> (8 * b));
      fix_crc(p, n);
      try_load(p, n);
    }
  printf("bytes %zu truncated %d loaded %d rejected %d silent %d\n", n, truncated, loaded, rejected, silent);
  free(p);
  return silent || truncated != (int)n ? 1 : 0;
}
