/* A small pool of threads that share the tasks of one op with the calling thread. Between ops a
 * worker waits busy for SPIN_NS, then sleeps on a condition variable: the ops of a network at
 * batch 1 take tens of microseconds each, about what a sleeping thread takes to wake, so
 * without the short spin the caller had done every task before a worker woke (mbv3 at 224 px
 * ran no faster on 2 threads than on 1); beyond it, a shared machine loses nothing to spinning.
 *
 * The caller never waits for a worker that has not started: tasks are claimed one at a time
 * from a counter tagged with the op's generation, and the caller waits only until every task is
 * done. A worker the scheduler wakes late finds the tasks taken (or a newer generation) and
 * goes back to sleep, so a busy machine costs at most the tasks a worker actually holds. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

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
  int n_tasks, stop;
  uint32_t generation;
  _Atomic uint64_t next; /* generation << 32 | the next task */
  atomic_int done;       /* tasks of this generation finished */
};

#define SPIN_NS 100000

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Busy-waits up to SPIN_NS while *v == old; the caller then checks under the mutex. */
static void spin_while_equal(const _Atomic uint64_t *v, uint64_t mask, uint64_t old) {
  long long end = now_ns() + SPIN_NS;
  for (int i = 0; (atomic_load_explicit(v, memory_order_acquire) & mask) == old; i++)
    if ((i & 63) == 63 && now_ns() > end) return;
}

/* Task t of generation gen, or -1 when they are all taken or gen is over. */
static int claim(oq_pool *p, uint32_t gen, int n) {
  uint64_t v = atomic_load(&p->next);
  while ((uint32_t)(v >> 32) == gen && (int)(uint32_t)v < n)
    if (atomic_compare_exchange_weak(&p->next, &v, v + 1)) return (int)(uint32_t)v;
  return -1;
}

static void take_tasks(oq_pool *p, uint32_t gen, oq_task_fn *fn, void *ctx, int n, int thread) {
  for (int t; (t = claim(p, gen, n)) >= 0;) {
    fn(ctx, t, thread);
    if (atomic_fetch_add(&p->done, 1) + 1 == n) {
      pthread_mutex_lock(&p->mu);
      pthread_cond_signal(&p->finished);
      pthread_mutex_unlock(&p->mu);
    }
  }
}

static void *work(void *arg) {
  worker *self = arg;
  oq_pool *p = self->pool;
  uint32_t seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    pthread_mutex_unlock(&p->mu);
    spin_while_equal(&p->next, ~(uint64_t)0 << 32, (uint64_t)seen << 32);
    pthread_mutex_lock(&p->mu);
    while (p->generation == seen && !p->stop) pthread_cond_wait(&p->start, &p->mu);
    if (p->stop) break;
    seen = p->generation;
    oq_task_fn *fn = p->fn;
    void *ctx = p->ctx;
    int n = p->n_tasks;
    pthread_mutex_unlock(&p->mu);
    take_tasks(p, seen, fn, ctx, n, self->index);
    pthread_mutex_lock(&p->mu);
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
  uint32_t gen = ++p->generation;
  p->fn = fn, p->ctx = ctx, p->n_tasks = n_tasks;
  atomic_store(&p->done, 0);
  atomic_store(&p->next, (uint64_t)gen << 32);
  pthread_cond_broadcast(&p->start);
  pthread_mutex_unlock(&p->mu);
  take_tasks(p, gen, fn, ctx, n_tasks, 0);
  long long end = now_ns() + SPIN_NS;
  for (int i = 0; atomic_load(&p->done) < n_tasks; i++)
    if ((i & 63) == 63 && now_ns() > end) break;
  pthread_mutex_lock(&p->mu);
  while (atomic_load(&p->done) < n_tasks) pthread_cond_wait(&p->finished, &p->mu);
  pthread_mutex_unlock(&p->mu);
}
