/*
 * bench_chan.c - in-memory channel speed, each figure printed next to
 * baselines measured in the same run, with the ratio:
 *   - unbuffered ping-pong round trip vs a mutex+condvar ping-pong and a
 *     spinning hand-off (the floor: two cache-line transfers per round trip);
 *   - buffered one-way msgs/s vs a mutex+condvar bounded queue and a spinning
 *     single-producer ring.
 * Usage: bench_chan [seconds-per-figure, default 1]. Nothing is asserted.
 */
#include "libchan.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double g_seconds = 1.0;

static inline void relax(void)
{
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
}

/* ---- round trip: libchan -------------------------------------------------- */

typedef struct {
    lc_receiver *in;
    lc_sender *out;
} echo_arg;

static void *chan_echo(void *p)
{
    echo_arg *a = p;
    lc_msg *m;
    while (lc_recv(a->in, &m, -1) == 0)
        if (lc_send(a->out, m, -1) != 0) {
            lc_msg_free(m);
            break;
        }
    return NULL;
}

static double rt_chan(long *iters_out)
{
    lc_receiver *r1, *r2;
    lc_sender *s1, *s2;
    lc_pipe(&r1, &s1, 0);
    lc_pipe(&r2, &s2, 0);
    echo_arg a = { r1, s2 };
    pthread_t t;
    pthread_create(&t, NULL, chan_echo, &a);
    lc_msg *m = lc_msg_new();
    lc_msg_set_root(m, lc_new_int(m, 1));
    long n = 0;
    double t0 = now_s(), t1;
    do {
        for (int i = 0; i < 1000; i++) {
            lc_send(s1, m, -1);
            lc_recv(r2, &m, -1);
        }
        n += 1000;
        t1 = now_s();
    } while (t1 - t0 < g_seconds);
    lc_close(s1);
    pthread_join(t, NULL);
    lc_msg_free(m);
    lc_sender_release(s1);
    lc_sender_release(s2);
    lc_receiver_release(r1);
    lc_receiver_release(r2);
    *iters_out = n;
    return (t1 - t0) / n * 1e9;
}

/* ---- round trip: mutex + condvar ------------------------------------------- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void *slot;
    bool full, stop;
} cv_box;

static void cv_put(cv_box *b, void *p)
{
    pthread_mutex_lock(&b->mu);
    b->slot = p;
    b->full = true;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void *cv_take(cv_box *b)
{
    pthread_mutex_lock(&b->mu);
    while (!b->full && !b->stop)
        pthread_cond_wait(&b->cv, &b->mu);
    void *p = b->full ? b->slot : NULL;
    b->full = false;
    pthread_mutex_unlock(&b->mu);
    return p;
}

static cv_box cv_ping = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, false, false };
static cv_box cv_pong = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, false, false };

static void *cv_echo(void *p)
{
    (void)p;
    void *m;
    while ((m = cv_take(&cv_ping)) != NULL)
        cv_put(&cv_pong, m);
    return NULL;
}

static double rt_condvar(void)
{
    pthread_t t;
    pthread_create(&t, NULL, cv_echo, NULL);
    int token;
    long n = 0;
    double t0 = now_s(), t1;
    do {
        for (int i = 0; i < 1000; i++) {
            cv_put(&cv_ping, &token);
            cv_take(&cv_pong);
        }
        n += 1000;
        t1 = now_s();
    } while (t1 - t0 < g_seconds);
    pthread_mutex_lock(&cv_ping.mu);
    cv_ping.stop = true;
    pthread_cond_signal(&cv_ping.cv);
    pthread_mutex_unlock(&cv_ping.mu);
    pthread_join(t, NULL);
    return (t1 - t0) / n * 1e9;
}

/* ---- round trip: spin hand-off -------------------------------------------- */

static _Atomic(void *) spin_ping, spin_pong;
static _Atomic bool spin_stop;

static void *spin_echo(void *p)
{
    (void)p;
    for (;;) {
        void *m;
        while ((m = atomic_exchange_explicit(&spin_ping, NULL, memory_order_acquire)) == NULL) {
            if (atomic_load_explicit(&spin_stop, memory_order_relaxed))
                return NULL;
            relax();
        }
        atomic_store_explicit(&spin_pong, m, memory_order_release);
    }
}

static double rt_spin(void)
{
    pthread_t t;
    pthread_create(&t, NULL, spin_echo, NULL);
    int token;
    long n = 0;
    double t0 = now_s(), t1;
    do {
        for (int i = 0; i < 1000; i++) {
            atomic_store_explicit(&spin_ping, &token, memory_order_release);
            while (atomic_exchange_explicit(&spin_pong, NULL, memory_order_acquire) == NULL)
                relax();
        }
        n += 1000;
        t1 = now_s();
    } while (t1 - t0 < g_seconds);
    atomic_store(&spin_stop, true);
    pthread_join(t, NULL);
    return (t1 - t0) / n * 1e9;
}

/* ---- one-way: libchan ------------------------------------------------------ */

enum { QCAP = 1024, POOL = 4096 };

typedef struct {
    lc_receiver *r;
    bool free_msgs;
    long got;
} drain_arg;

static void *chan_drain(void *p)
{
    drain_arg *a = p;
    lc_msg *m;
    while (lc_recv(a->r, &m, -1) == 0) {
        if (a->free_msgs)
            lc_msg_free(m);
        a->got++;
    }
    return NULL;
}

/* fresh = true: every message is built with lc_msg_new and freed by the
 * receiver (what an application pays); false: a pool of prebuilt messages is
 * cycled, which measures the channel alone. */
static double oneway_chan(bool fresh)
{
    lc_receiver *r;
    lc_sender *s;
    lc_pipe(&r, &s, QCAP);
    lc_msg **pool = NULL;
    if (!fresh) {
        /* the receiver never touches them, and at most QCAP+1 are in flight,
         * so reusing POOL > QCAP+1 pointers is safe */
        pool = malloc(POOL * sizeof *pool);
        for (int i = 0; i < POOL; i++) {
            pool[i] = lc_msg_new();
            lc_msg_set_root(pool[i], lc_new_int(pool[i], i));
        }
    }
    drain_arg a = { r, fresh, 0 };
    pthread_t t;
    pthread_create(&t, NULL, chan_drain, &a);
    long n = 0;
    double t0 = now_s(), t1;
    do {
        for (int i = 0; i < 10000; i++) {
            lc_msg *m;
            if (fresh) {
                m = lc_msg_new();
                lc_msg_set_root(m, lc_new_int(m, i));
            } else {
                m = pool[i % POOL];
            }
            lc_send(s, m, -1);
        }
        n += 10000;
        t1 = now_s();
    } while (t1 - t0 < g_seconds);
    lc_close(s);
    pthread_join(t, NULL);
    t1 = now_s(); /* include the drain: every message was received */
    if (pool) {
        for (int i = 0; i < POOL; i++)
            lc_msg_free(pool[i]);
        free(pool);
    }
    lc_sender_release(s);
    lc_receiver_release(r);
    return n / (t1 - t0);
}

/* ---- one-way: mutex + condvar bounded queue -------------------------------- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    void *buf[QCAP];
    size_t head, count;
    bool closed;
} cv_queue;

static cv_queue cvq = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, { 0 }, 0, 0, false };

static void *cvq_drain(void *p)
{
    long *got = p;
    for (;;) {
        pthread_mutex_lock(&cvq.mu);
        while (cvq.count == 0 && !cvq.closed)
            pthread_cond_wait(&cvq.not_empty, &cvq.mu);
        if (cvq.count == 0) {
            pthread_mutex_unlock(&cvq.mu);
            return NULL;
        }
        cvq.head = (cvq.head + 1) % QCAP;
        cvq.count--;
        pthread_cond_signal(&cvq.not_full);
        pthread_mutex_unlock(&cvq.mu);
        (*got)++;
    }
}

static double oneway_condvar(void)
{
    long got = 0;
    pthread_t t;
    pthread_create(&t, NULL, cvq_drain, &got);
    int token;
    long n = 0;
    double t0 = now_s(), t1;
    do {
        for (int i = 0; i < 10000; i++) {
            pthread_mutex_lock(&cvq.mu);
            while (cvq.count == QCAP)
                pthread_cond_wait(&cvq.not_full, &cvq.mu);
            cvq.buf[(cvq.head + cvq.count) % QCAP] = &token;
            cvq.count++;
            pthread_cond_signal(&cvq.not_empty);
            pthread_mutex_unlock(&cvq.mu);
        }
        n += 10000;
        t1 = now_s();
    } while (t1 - t0 < g_seconds);
    pthread_mutex_lock(&cvq.mu);
    cvq.closed = true;
    pthread_cond_signal(&cvq.not_empty);
    pthread_mutex_unlock(&cvq.mu);
    pthread_join(t, NULL);
    t1 = now_s();
    return n / (t1 - t0);
}

/* ---- one-way: spinning single-producer/single-consumer ring --------------- */

static struct {
    _Alignas(64) _Atomic size_t head;
    _Alignas(64) _Atomic size_t tail;
    _Alignas(64) void *buf[QCAP];
    _Atomic bool done;
} ring;

static void *ring_drain(void *p)
{
    long *got = p;
    size_t h = 0;
    for (;;) {
        size_t t;
        while ((t = atomic_load_explicit(&ring.tail, memory_order_acquire)) == h) {
            if (atomic_load_explicit(&ring.done, memory_order_acquire) &&
                atomic_load_explicit(&ring.tail, memory_order_acquire) == h)
                return NULL;
            relax();
        }
        while (h != t) {
            (void)ring.buf[h % QCAP];
            h++;
            (*got)++;
        }
        atomic_store_explicit(&ring.head, h, memory_order_release);
    }
}

static double oneway_spin(void)
{
    long got = 0;
    pthread_t th;
    pthread_create(&th, NULL, ring_drain, &got);
    int token;
    long n = 0;
    size_t tail = 0;
    double t0 = now_s(), t1;
    do {
        for (int i = 0; i < 10000; i++) {
            while (tail - atomic_load_explicit(&ring.head, memory_order_acquire) == QCAP)
                relax();
            ring.buf[tail % QCAP] = &token;
            tail++;
            atomic_store_explicit(&ring.tail, tail, memory_order_release);
        }
        n += 10000;
        t1 = now_s();
    } while (t1 - t0 < g_seconds);
    atomic_store_explicit(&ring.done, true, memory_order_release);
    pthread_join(th, NULL);
    t1 = now_s();
    return n / (t1 - t0);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        g_seconds = atof(argv[1]) > 0 ? atof(argv[1]) : 1.0;
    long iters;
    printf("in-memory channels (%.1f s per figure)\n\n", g_seconds);

    double chan_rt = rt_chan(&iters);
    double cv_rt = rt_condvar();
    double spin_rt = rt_spin();
    printf("unbuffered ping-pong round trip\n");
    printf("  libchan          %8.0f ns\n", chan_rt);
    printf("  mutex+condvar    %8.0f ns   libchan/condvar = %.2fx\n", cv_rt, chan_rt / cv_rt);
    printf("  spin hand-off    %8.0f ns   libchan/spin    = %.2fx\n\n", spin_rt, chan_rt / spin_rt);

    double chan_pool = oneway_chan(false);
    double chan_fresh = oneway_chan(true);
    double cv_ow = oneway_condvar();
    double spin_ow = oneway_spin();
    printf("buffered one-way (capacity %d)\n", QCAP);
    printf("  libchan, prebuilt messages   %6.2f M msgs/s   libchan/condvar = %.2fx   libchan/spin = %.2fx\n",
           chan_pool / 1e6, chan_pool / cv_ow, chan_pool / spin_ow);
    printf("  libchan, new+free per msg    %6.2f M msgs/s   libchan/condvar = %.2fx\n", chan_fresh / 1e6,
           chan_fresh / cv_ow);
    printf("  mutex+condvar queue          %6.2f M msgs/s\n", cv_ow / 1e6);
    printf("  spinning SPSC ring           %6.2f M msgs/s\n", spin_ow / 1e6);
    return 0;
}
