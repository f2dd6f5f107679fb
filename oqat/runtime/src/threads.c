/* A small pool of threads that share the tasks of one op with the calling thread. Workers
 * sleep on a condition variable between ops (no spinning: the machine may be shared). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "rt.h"

typedef struct {
  oq_pool *pool;
  int index;
} worker;

struct oq_pool {
  int workers;
  pthread_t *threads;
  worker *args;
  pthread_mutex_t mu;
  pthread_cond_t start, finished;
  oq_task_fn *fn;
  void *ctx;
  int n_tasks, busy, stop;
  unsigned long generation;
  atomic_int next;
};

static void take_tasks(oq_pool *p, oq_task_fn *fn, void *ctx, int n, int thread) {
  for (int t; (t = atomic_fetch_add(&p->next, 1)) < n;) fn(ctx, t, thread);
}

static void *work(void *arg) {
  worker *self = arg;
  oq_pool *p = self->pool;
  unsigned long seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (p->generation == seen && !p->stop) pthread_cond_wait(&p->start, &p->mu);
    if (p->stop) break;
    seen = p->generation;
    oq_task_fn *fn = p->fn;
    void *ctx = p->ctx;
    int n = p->n_tasks;
    pthread_mutex_unlock(&p->mu);
    take_tasks(p, fn, ctx, n, self->index);
    pthread_mutex_lock(&p->mu);
    if (--p->busy == 0) pthread_cond_signal(&p->finished);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

oq_pool *oq_pool_new(int workers) {
  oq_pool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->threads = calloc(workers, sizeof *p->threads);
  p->args = calloc(workers, sizeof *p->args);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->start, NULL);
  pthread_cond_init(&p->finished, NULL);
  if (!p->threads || !p->args) {
    oq_pool_free(p);
    return NULL;
  }
  for (int i = 0; i < workers; i++) {
    p->args[i] = (worker){p, i + 1};
    if (pthread_create(&p->threads[i], NULL, work, &p->args[i]) != 0) {
      oq_pool_free(p);
      return NULL;
    }
    p->workers++;
  }
  return p;
}

void oq_pool_free(oq_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->start);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->workers; i++) pthread_join(p->threads[i], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->start);
  pthread_cond_destroy(&p->finished);
  free(p->threads);
  free(p->args);
  free(p);
}

void oq_pool_run(oq_pool *p, oq_task_fn *fn, void *ctx, int n_tasks) {
  if (!p || n_tasks <= 1) {
    for (int t = 0; t < n_tasks; t++) fn(ctx, t, 0);
    return;
  }
  pthread_mutex_lock(&p->mu);
  p->fn = fn, p->ctx = ctx, p->n_tasks = n_tasks, p->busy = p->workers;
  atomic_store(&p->next, 0);
  p->generation++;
  pthread_cond_broadcast(&p->start);
  pthread_mutex_unlock(&p->mu);
  take_tasks(p, fn, ctx, n_tasks, 0);
  pthread_mutex_lock(&p->mu);
  while (p->busy) pthread_cond_wait(&p->finished, &p->mu);
  pthread_mutex_unlock(&p->mu);
}
