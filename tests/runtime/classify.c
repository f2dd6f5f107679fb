/* Classify images with the oqat runtime alone, no Python in the loop:
 *   classify MODEL IMAGES N [THREADS]
 * IMAGES: raw float32 N x C x H x W (normalised as the network was trained). Prints, per image,
 * its top-1 class and its logits (%.9g, which reads back to the same float32). */
#include <stdio.h>
#include <stdlib.h>

#include "oqat_rt.h"

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: classify MODEL IMAGES N [THREADS]\n");
    return 2;
  }
  oqat_rt_model *m = oqat_rt_load(argv[1], NULL);
  if (!m) {
    fprintf(stderr, "%s\n", oqat_rt_last_error());
    return 1;
  }
  int c, h, w, n = atoi(argv[3]), k = oqat_rt_num_classes(m);
  oqat_rt_input_shape(m, &c, &h, &w);
  size_t count = (size_t)n * c * h * w;
  float *x = malloc(count * sizeof *x), *logits = malloc((size_t)n * k * sizeof *logits);
  FILE *f = fopen(argv[2], "rb");
  int ok = n > 0 && x && logits && f && fread(x, sizeof *x, count, f) == count;
  if (f) fclose(f);
  if (!ok) {
    fprintf(stderr, "cannot read %d images of %d x %d x %d from %s\n", n, c, h, w, argv[2]);
    return 1;
  }
  if ((argc > 4 && oqat_rt_set_threads(m, atoi(argv[4])) != 0) || oqat_rt_run(m, x, n, logits) != 0) {
    fprintf(stderr, "%s\n", oqat_rt_last_error());
    return 1;
  }
  for (int i = 0; i < n; i++) {
    const float *y = logits + (size_t)i * k;
    int top = 0;
    for (int j = 1; j < k; j++)
      if (y[j] > y[top]) top = j;
    printf("%d", top);
    for (int j = 0; j < k; j++) printf(" %.9g", y[j]);
    printf("\n");
  }
  printf("isa %s\n", oqat_rt_isa(m));
  free(x), free(logits);
  oqat_rt_free(m);
  return 0;
}
