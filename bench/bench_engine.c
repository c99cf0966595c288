/*
 * bench_engine.c - what the event engine (src/engine) costs over raw epoll,
 * measured in the same run:
 *   1. dispatch: an always-ready fd, one-shot, re-armed from its callback,
 *      driven by the calling thread, against a raw epoll_wait + EPOLL_CTL_MOD loop;
 *   2. wake round trip: another thread arms/writes, the engine thread's callback
 *      answers, against a raw thread blocked in epoll_wait doing the same;
 *   3. timer add + cancel, per pair.
 * 1 and 2 run on both backends (epoll, and the poll(2) one); the baselines
 * are raw epoll.
 */
#include "engine/engine.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

static double now_s(void)
{
    return lc__now_ns() / 1e9;
}

/* ---- 1. dispatch ------------------------------------------------------------- */

typedef struct rearm {
    lc_watch *w;
    long n;
} rearm;

static void rearm_cb(void *ctx, uint32_t revents)
{
    rearm *r = ctx;
    r->n++;
    lc__engine_arm(r->w, EPOLLIN);
}

static double bench_dispatch_engine(long rounds, lc__engine_backend backend)
{
    lc_engine *e;
    if (lc__engine_new_backend(&e, false, backend) != 0)
        exit(1);
    int fd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
    rearm r = {0};
    lc__engine_add(e, fd, 0, rearm_cb, &r, &r.w);
    lc__engine_arm(r.w, EPOLLIN);
    double t0 = now_s();
    while (r.n < rounds)
        lc__engine_run(e, -1);
    double t = now_s() - t0;
    lc__engine_del(r.w);
    lc__engine_free(e);
    close(fd);
    return t / rounds * 1e9;
}

static double bench_dispatch_raw(long rounds)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int fd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = 7};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    long n = 0;
    double t0 = now_s();
    while (n < rounds) {
        struct epoll_event out[8];
        int k = epoll_wait(ep, out, 8, -1);
        for (int i = 0; i < k; i++) {
            n++;
            epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
        }
    }
    double t = now_s() - t0;
    close(fd);
    close(ep);
    return t / rounds * 1e9;
}

/* ---- 2. wake round trip ------------------------------------------------------ */

typedef struct echo {
    int in, out;
    lc_watch *w;
} echo;

static void echo_cb(void *ctx, uint32_t revents)
{
    echo *x = ctx;
    uint64_t v;
    if (read(x->in, &v, sizeof v) == sizeof v) {
        v = 1;
        if (write(x->out, &v, sizeof v) != sizeof v)
            abort();
    }
    lc__engine_arm(x->w, EPOLLIN);
}

static void ping(int in, int out)
{
    uint64_t v = 1;
    if (write(in, &v, sizeof v) != sizeof v || read(out, &v, sizeof v) != sizeof v)
        abort();
}

static double bench_wake_engine(long rounds, lc__engine_backend backend)
{
    lc_engine *e;
    if (lc__engine_new_backend(&e, true, backend) != 0)
        exit(1);
    echo x = {eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), eventfd(0, EFD_CLOEXEC), NULL};
    lc__engine_add(e, x.in, EPOLLIN, echo_cb, &x, &x.w);
    double t0 = now_s();
    for (long i = 0; i < rounds; i++)
        ping(x.in, x.out);
    double t = now_s() - t0;
    lc__engine_del(x.w);
    lc__engine_free(e);
    close(x.in);
    close(x.out);
    return t / rounds * 1e9;
}

typedef struct raw_echo {
    int ep, in, out;
    _Atomic bool stop;
} raw_echo;

static void *raw_echo_thread(void *p)
{
    raw_echo *x = p;
    while (!atomic_load(&x->stop)) {
        struct epoll_event ev;
        if (epoll_wait(x->ep, &ev, 1, 100) == 1) {
            uint64_t v;
            if (read(x->in, &v, sizeof v) == sizeof v) {
                v = 1;
                if (write(x->out, &v, sizeof v) != sizeof v)
                    abort();
            }
        }
    }
    return NULL;
}

static double bench_wake_raw(long rounds)
{
    raw_echo x = {epoll_create1(EPOLL_CLOEXEC), eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
                  eventfd(0, EFD_CLOEXEC), false};
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
    epoll_ctl(x.ep, EPOLL_CTL_ADD, x.in, &ev);
    pthread_t t;
    pthread_create(&t, NULL, raw_echo_thread, &x);
    double t0 = now_s();
    for (long i = 0; i < rounds; i++)
        ping(x.in, x.out);
    double el = now_s() - t0;
    atomic_store(&x.stop, true);
    pthread_join(t, NULL);
    close(x.in);
    close(x.out);
    close(x.ep);
    return el / rounds * 1e9;
}

/* ---- 3. timers --------------------------------------------------------------- */

static void nop_timer(void *ctx)
{
    (void)ctx;
}

static double bench_timer_add_cancel(long rounds)
{
    lc_engine *e;
    if (lc__engine_new(&e, false) != 0)
        exit(1);
    /* a far timer at the root, so adds below it do not touch the timerfd */
    lc_timer_id far, id;
    lc__engine_timer_add(e, lc__now_ns() + 3600LL * 1000000000, nop_timer, NULL, &far);
    double t0 = now_s();
    for (long i = 0; i < rounds; i++) {
        lc__engine_timer_add(e, lc__now_ns() + 7200LL * 1000000000, nop_timer, NULL, &id);
        lc__engine_timer_cancel(e, id);
    }
    double t = now_s() - t0;
    lc__engine_free(e);
    return t / rounds * 1e9;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    double de = bench_dispatch_engine(n, LC__ENGINE_EPOLL), dp = bench_dispatch_engine(n, LC__ENGINE_POLL);
    double dr = bench_dispatch_raw(n);
    printf("dispatch+rearm   engine %8.0f ns   raw epoll %8.0f ns   ratio %.2f\n", de, dr, de / dr);
    printf("  on poll(2)     engine %8.0f ns                        ratio %.2f\n", dp, dp / dr);
    long w = n / 10;
    double we = bench_wake_engine(w, LC__ENGINE_EPOLL), wp = bench_wake_engine(w, LC__ENGINE_POLL);
    double wr = bench_wake_raw(w);
    printf("wake round trip  engine %8.0f ns   raw epoll %8.0f ns   ratio %.2f\n", we, wr, we / wr);
    printf("  on poll(2)     engine %8.0f ns                        ratio %.2f\n", wp, wp / wr);
    printf("timer add+cancel %8.0f ns\n", bench_timer_add_cancel(n));
    return 0;
}
