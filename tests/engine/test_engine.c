/*
 * test_engine.c - the event engine (src/engine): one-shot arming, interest
 * that survives other reports, arming from other threads, removal while other
 * threads dispatch (a stress test meant for TSan and ASan), timers in order and
 * on time, cancel semantics, several threads driving one engine, shutdown with
 * work pending. Worker threads never call cmocka asserts; they count errors in
 * atomics that the main thread checks. No test sleeps to synchronise.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "libchan.h"
#include "engine/engine.h"
#include "testutil.h"

/* Spins (yielding) until cond holds; the test's deadline bounds it. */
#define WAIT_UNTIL(cond)        \
    do {                        \
        while (!(cond))         \
            sched_yield();      \
    } while (0)

static lc_engine *new_engine(bool with_thread)
{
    lc_engine *e = NULL;
    assert_int_equal(lc__engine_new(&e, with_thread), 0);
    assert_non_null(e);
    return e;
}

/* ---- one-shot arming ------------------------------------------------------ */

typedef struct counter {
    _Atomic int calls;
    _Atomic uint32_t last;
    _Atomic int in_cb;
    _Atomic int overlaps;
    _Atomic(lc_watch *) w;
    _Atomic int rearm_until; /* re-arm EPOLLIN from inside while calls < this */
    _Atomic(pthread_t *) thread_seen;
} counter;

static void count_cb(void *ctx, uint32_t revents)
{
    counter *c = ctx;
    if (atomic_fetch_add(&c->in_cb, 1) != 0)
        atomic_fetch_add(&c->overlaps, 1);
    atomic_store(&c->last, revents);
    pthread_t *seen = atomic_load(&c->thread_seen);
    if (seen != NULL)
        *seen = pthread_self();
    int n = atomic_fetch_add(&c->calls, 1) + 1;
    lc_watch *w = atomic_load(&c->w);
    if (w != NULL && n < atomic_load(&c->rearm_until))
        lc__engine_arm(w, EPOLLIN);
    atomic_fetch_sub(&c->in_cb, 1);
}

static void test_oneshot_fires_once_until_rearmed(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(false);
    int efd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK); /* stays readable */
    counter c = {0};
    lc_watch *w;
    assert_int_equal(lc__engine_add(e, efd, EPOLLIN, count_cb, &c, &w), 0);
    assert_int_equal(lc__watch_fd(w), efd);

    assert_int_equal(lc__engine_run(e, 1000), 1);
    assert_int_equal(atomic_load(&c.calls), 1);
    assert_true(atomic_load(&c.last) & EPOLLIN);
    /* still readable, but not re-armed: nothing more */
    for (int i = 0; i < 5; i++)
        assert_int_equal(lc__engine_run(e, 0), 0);
    assert_int_equal(lc__engine_run(e, 30), 0);
    assert_int_equal(atomic_load(&c.calls), 1);

    assert_int_equal(lc__engine_arm(w, EPOLLIN), 0);
    assert_int_equal(lc__engine_run(e, 1000), 1);
    assert_int_equal(atomic_load(&c.calls), 2);
    assert_int_equal(lc__engine_run(e, 0), 0);

    /* re-arming from inside the callback */
    atomic_store(&c.w, w);
    atomic_store(&c.rearm_until, 6);
    assert_int_equal(lc__engine_arm(w, EPOLLIN), 0);
    while (atomic_load(&c.calls) < 6)
        assert_true(lc__engine_run(e, 1000) >= 0);
    assert_int_equal(lc__engine_run(e, 0), 0);
    assert_int_equal(atomic_load(&c.calls), 6);

    size_t nw;
    lc__engine_stats(e, &nw, NULL);
    assert_int_equal(nw, 1);
    lc__engine_del(w);
    lc__engine_stats(e, &nw, NULL);
    assert_int_equal(nw, 0);
    lc__engine_free(e);
    close(efd);
}

static void test_added_disarmed_never_fires(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(false);
    int efd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
    counter c = {0};
    lc_watch *w;
    assert_int_equal(lc__engine_add(e, efd, 0, count_cb, &c, &w), 0);
    assert_int_equal(lc__engine_run(e, 20), 0);
    assert_int_equal(atomic_load(&c.calls), 0);
    assert_int_equal(lc__engine_arm(w, EPOLLIN), 0);
    assert_int_equal(lc__engine_run(e, 1000), 1);
    lc__engine_del(w);
    lc__engine_free(e);
    close(efd);
}

/* Arming OUT while IN is armed: an OUT report leaves IN armed. */
static void test_unreported_interest_stays_armed(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(false);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
    counter c = {0};
    lc_watch *w;
    assert_int_equal(lc__engine_add(e, sv[0], EPOLLIN, count_cb, &c, &w), 0);
    assert_int_equal(lc__engine_run(e, 20), 0); /* nothing to read */
    assert_int_equal(lc__engine_arm(w, EPOLLOUT), 0);
    assert_int_equal(lc__engine_run(e, 1000), 1);
    assert_int_equal(atomic_load(&c.last) & (EPOLLIN | EPOLLOUT), EPOLLOUT);
    /* OUT was consumed; IN is still wanted: writable does not fire again */
    assert_int_equal(lc__engine_run(e, 20), 0);
    assert_int_equal(write(sv[1], "x", 1), 1);
    assert_int_equal(lc__engine_run(e, 1000), 1);
    assert_true(atomic_load(&c.last) & EPOLLIN);
    assert_int_equal(atomic_load(&c.calls), 2);
    lc__engine_del(w);
    lc__engine_free(e);
    close(sv[0]);
    close(sv[1]);
}

/* lc__engine_arm_instead moves the interest: what it drops is not reported
 * any more (a session's hang-up watch while paused, then EPOLLIN again). */
static void test_arm_instead_drops_the_old_interest(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(false);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
    counter c = {0};
    lc_watch *w;
    assert_int_equal(lc__engine_add(e, sv[0], EPOLLRDHUP, count_cb, &c, &w), 0);
    assert_int_equal(lc__engine_armed(w), EPOLLRDHUP);
    assert_int_equal(lc__engine_arm_instead(w, EPOLLIN, EPOLLRDHUP | EPOLLIN), 0); /* (events win) */
    assert_int_equal(lc__engine_armed(w), EPOLLIN);
    assert_int_equal(lc__engine_run(e, 20), 0);
    /* the peer's half-close: readable (EOF), but RDHUP was dropped */
    assert_int_equal(shutdown(sv[1], SHUT_WR), 0);
    assert_int_equal(lc__engine_run(e, 1000), 1);
    assert_int_equal(atomic_load(&c.last) & (EPOLLIN | EPOLLRDHUP), EPOLLIN);
    assert_int_equal(lc__engine_armed(w), 0); /* consumed: nothing left behind */
    lc__engine_del(w);
    lc__engine_free(e);
    close(sv[0]);
    close(sv[1]);
}

/* ---- a disarmed watch leaves epoll ----------------------------------------- */

/* The eventpoll fds of this process, as a bitmap of fd numbers < 1024. */
static void eventpoll_fds(bool out[1024])
{
    memset(out, 0, 1024 * sizeof *out);
    for (int fd = 0; fd < 1024; fd++) {
        char path[64], target[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n > 0) {
            target[n] = '\0';
            out[fd] = strcmp(target, "anon_inode:[eventpoll]") == 0;
        }
    }
}

/* Whether epoll instance epfd has fd registered (its fdinfo lists "tfd: fd"). */
static bool epoll_has(int epfd, int fd)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", epfd);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    bool found = false;
    int tfd;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "tfd: %d", &tfd) == 1 && tfd == fd)
            found = true;
    fclose(f);
    return found;
}

/* Whether e's one watch, on fd, is registered: in the epoll set epfd (the
 * kernel's own account), or in the poll backend's list. */
static bool registered(lc_engine *e, int epfd, int fd)
{
    return lc__engine_uses_poll(e) ? lc__engine_polled(e) == 1 : epoll_has(epfd, fd);
}

/*
 * A watch disarmed on purpose is not left registered with no interest: epoll
 * on the file's wait queue made every write to it take the wake-up path (a
 * session's carrier, read by a thread itself, paid that for every message);
 * the poll backend would poll it for nothing. Arming it again registers it
 * again, and readiness that came meanwhile is reported.
 */
static void test_disarmed_watch_is_unregistered(void **state)
{
    LC_TEST_DEADLINE(20);
    bool before[1024], after[1024];
    eventpoll_fds(before);
    lc_engine *e = new_engine(false);
    eventpoll_fds(after);
    int epfd = -1;
    for (int fd = 0; fd < 1024; fd++)
        if (after[fd] && !before[fd])
            epfd = fd;
    assert_true(lc__engine_uses_poll(e) ? epfd < 0 : epfd >= 0); /* poll: no epoll at all */

    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
    counter c = {0};
    lc_watch *w;
    assert_int_equal(lc__engine_add(e, sv[0], EPOLLIN, count_cb, &c, &w), 0);
    assert_true(registered(e, epfd, sv[0]));
    assert_int_equal(lc__engine_disarm(w, EPOLLIN), 1);
    assert_false(registered(e, epfd, sv[0]));
    assert_int_equal(lc__engine_disarm(w, EPOLLIN), 0); /* nothing left to disarm */

    assert_int_equal(write(sv[1], "x", 1), 1);
    assert_int_equal(lc__engine_run(e, 20), 0);
    assert_int_equal(atomic_load(&c.calls), 0);

    assert_int_equal(lc__engine_arm(w, EPOLLIN), 0);
    assert_true(registered(e, epfd, sv[0]));
    assert_int_equal(lc__engine_run(e, 1000), 1);
    assert_int_equal(atomic_load(&c.calls), 1);
    assert_true(atomic_load(&c.last) & EPOLLIN);

    /* fired (one-shot): epoll keeps it registered with no interest until
     * the next arm or disarm decides; the poll list dropped it at once */
    assert_true(lc__engine_uses_poll(e) ? !registered(e, epfd, sv[0]) : registered(e, epfd, sv[0]));
    assert_int_equal(lc__engine_arm(w, EPOLLIN), 0);
    assert_int_equal(lc__engine_disarm(w, EPOLLIN), 1);
    assert_false(registered(e, epfd, sv[0]));
    lc__engine_del(w); /* (from the detached state too) */
    lc__engine_free(e);
    close(sv[0]);
    close(sv[1]);
}

/* ---- other threads -------------------------------------------------------- */

typedef struct arm_arg {
    lc_watch *w;
} arm_arg;

static void *arm_thread(void *p)
{
    arm_arg *a = p;
    lc__engine_arm(a->w, EPOLLIN);
    return NULL;
}

static void test_arm_from_another_thread_runs_on_engine_thread(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(true);
    int efd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
    counter c = {0};
    pthread_t seen;
    atomic_store(&c.thread_seen, &seen);
    lc_watch *w;
    assert_int_equal(lc__engine_add(e, efd, 0, count_cb, &c, &w), 0);
    arm_arg a = {w};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, arm_thread, &a), 0);
    pthread_join(t, NULL);
    WAIT_UNTIL(atomic_load(&c.calls) == 1);
    assert_false(pthread_equal(seen, pthread_self()));
    assert_false(pthread_equal(seen, t));
    lc__engine_del(w);
    assert_int_equal(atomic_load(&c.calls), 1);
    lc__engine_free(e);
    close(efd);
}

/* Several threads drive one engine; each watch's callback re-arms itself and
 * consumes bytes; no callback may overlap itself, and every byte arrives. */
enum { RUN_WATCHES = 8, RUN_BYTES = 2000, RUN_DRIVERS = 4 };

typedef struct pipe_watch {
    int rd, wr;
    lc_watch *w;
    _Atomic int in_cb;
    _Atomic int *overlaps;
    _Atomic long *received;
} pipe_watch;

static void pipe_cb(void *ctx, uint32_t revents)
{
    pipe_watch *p = ctx;
    if (atomic_fetch_add(&p->in_cb, 1) != 0)
        atomic_fetch_add(p->overlaps, 1);
    char buf[7]; /* small reads: the callback runs many times */
    ssize_t n = read(p->rd, buf, sizeof buf);
    if (n > 0)
        atomic_fetch_add(p->received, n);
    atomic_fetch_sub(&p->in_cb, 1);
    lc__engine_arm(p->w, EPOLLIN);
}

typedef struct driver_arg {
    lc_engine *e;
    _Atomic bool *stop;
    _Atomic int *errors;
} driver_arg;

static void *driver(void *p)
{
    driver_arg *d = p;
    while (!atomic_load(d->stop))
        if (lc__engine_run(d->e, 5) < 0)
            atomic_fetch_add(d->errors, 1);
    return NULL;
}

static void test_any_thread_may_drive(void **state)
{
    LC_TEST_DEADLINE(60);
    lc_engine *e = new_engine(false);
    _Atomic int overlaps = 0, errors = 0;
    _Atomic long received = 0;
    _Atomic bool stop = false;
    pipe_watch pw[RUN_WATCHES];
    for (int i = 0; i < RUN_WATCHES; i++) {
        int fds[2];
        assert_int_equal(pipe2(fds, O_CLOEXEC | O_NONBLOCK), 0);
        pw[i].rd = fds[0];
        pw[i].wr = fds[1];
        atomic_init(&pw[i].in_cb, 0);
        pw[i].overlaps = &overlaps;
        pw[i].received = &received;
        assert_int_equal(lc__engine_add(e, fds[0], 0, pipe_cb, &pw[i], &pw[i].w), 0);
        assert_int_equal(lc__engine_arm(pw[i].w, EPOLLIN), 0);
    }
    driver_arg d = {e, &stop, &errors};
    pthread_t t[RUN_DRIVERS];
    for (int i = 0; i < RUN_DRIVERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, driver, &d), 0);
    char chunk[13];
    memset(chunk, 'z', sizeof chunk);
    long sent = 0;
    for (int round = 0; sent < (long)RUN_WATCHES * RUN_BYTES; round++) {
        for (int i = 0; i < RUN_WATCHES; i++) {
            ssize_t n = write(pw[i].wr, chunk, sizeof chunk);
            if (n > 0)
                sent += n;
        }
        if ((round & 7) == 0)
            sched_yield();
    }
    WAIT_UNTIL(atomic_load(&received) == sent);
    atomic_store(&stop, true);
    for (int i = 0; i < RUN_DRIVERS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&overlaps), 0);
    assert_int_equal(atomic_load(&errors), 0);
    for (int i = 0; i < RUN_WATCHES; i++) {
        lc__engine_del(pw[i].w);
        close(pw[i].rd);
        close(pw[i].wr);
    }
    lc__engine_free(e);
}

/* ---- removal -------------------------------------------------------------- */

typedef struct stress_ctx {
    _Atomic(lc_watch *) w;
    _Atomic int in_cb;
    _Atomic int calls;
    _Atomic bool deleted;      /* set by the worker after lc__engine_del returned */
    int self_delete_at;        /* > 0: the callback deletes the watch at that call */
    _Atomic bool self_deleted; /* set by the callback after deleting itself */
    _Atomic int *errors;
} stress_ctx;

static void stress_cb(void *ctx, uint32_t revents)
{
    stress_ctx *c = ctx;
    if (atomic_load(&c->deleted))
        atomic_fetch_add(c->errors, 1); /* ran after del returned */
    if (atomic_fetch_add(&c->in_cb, 1) != 0)
        atomic_fetch_add(c->errors, 1); /* two threads at once */
    int n = atomic_fetch_add(&c->calls, 1) + 1;
    lc_watch *w = atomic_load(&c->w);
    atomic_fetch_sub(&c->in_cb, 1);
    if (w == NULL)
        return;
    if (c->self_delete_at > 0 && n >= c->self_delete_at) {
        lc__engine_del(w);
        /* last touch of ctx: the worker frees it once it sees this */
        atomic_store(&c->self_deleted, true);
        return;
    }
    lc__engine_arm(w, EPOLLIN);
}

enum { STRESS_WORKERS = 4, STRESS_DRIVERS = 2 };

typedef struct stress_arg {
    lc_engine *e;
    int iterations;
    unsigned seed;
    _Atomic int *errors;
    _Atomic long *total_calls;
} stress_arg;

static void *stress_worker(void *p)
{
    stress_arg *a = p;
    unsigned seed = a->seed;
    for (int i = 0; i < a->iterations; i++) {
        stress_ctx *c = calloc(1, sizeof *c);
        c->errors = a->errors;
        int mode = rand_r(&seed) % 4;
        if (mode == 3)
            c->self_delete_at = 1 + rand_r(&seed) % 4;
        int efd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK); /* always readable */
        lc_watch *w;
        if (efd < 0 || lc__engine_add(a->e, efd, 0, stress_cb, c, &w) != 0) {
            atomic_fetch_add(a->errors, 1);
            free(c);
            if (efd >= 0)
                close(efd);
            continue;
        }
        atomic_store(&c->w, w);
        if (lc__engine_arm(w, EPOLLIN) != 0)
            atomic_fetch_add(a->errors, 1);
        if (mode == 3) {
            WAIT_UNTIL(atomic_load(&c->self_deleted));
        } else {
            if (mode == 1) /* delete while it fires continuously */
                WAIT_UNTIL(atomic_load(&c->calls) >= 2);
            int spins = rand_r(&seed) % 500;
            for (int k = 0; k < spins; k++)
                if ((k & 63) == 0)
                    lc__engine_arm(w, EPOLLIN | ((k & 64) ? EPOLLOUT : 0));
            lc__engine_del(w);
            atomic_store(&c->deleted, true);
        }
        atomic_fetch_add(a->total_calls, atomic_load(&c->calls));
        close(efd);
        free(c); /* a late callback would be a use-after-free under ASan */
    }
    return NULL;
}

static void test_del_while_other_threads_dispatch(void **state)
{
    LC_TEST_DEADLINE(100);
    lc_engine *e = new_engine(true);
    _Atomic int errors = 0;
    _Atomic long total = 0;
    _Atomic bool stop = false;
    driver_arg d = {e, &stop, &errors};
    pthread_t drivers[STRESS_DRIVERS], workers[STRESS_WORKERS];
    stress_arg args[STRESS_WORKERS];
    for (int i = 0; i < STRESS_DRIVERS; i++)
        assert_int_equal(pthread_create(&drivers[i], NULL, driver, &d), 0);
    int iterations = getenv("LC_STRESS_ITER") ? atoi(getenv("LC_STRESS_ITER")) : 600;
    for (int i = 0; i < STRESS_WORKERS; i++) {
        args[i] = (stress_arg){e, iterations, (unsigned)(1234 + i), &errors, &total};
        assert_int_equal(pthread_create(&workers[i], NULL, stress_worker, &args[i]), 0);
    }
    for (int i = 0; i < STRESS_WORKERS; i++)
        pthread_join(workers[i], NULL);
    atomic_store(&stop, true);
    for (int i = 0; i < STRESS_DRIVERS; i++)
        pthread_join(drivers[i], NULL);
    size_t nw;
    lc__engine_stats(e, &nw, NULL);
    lc__engine_free(e);
    print_message("del stress: %d watches, %ld callbacks\n", STRESS_WORKERS * iterations,
                  atomic_load(&total));
    assert_int_equal(atomic_load(&errors), 0);
    assert_int_equal(nw, 0);
    assert_true(atomic_load(&total) > 0);
}

/* A callback blocked on a gate; lc__engine_del from another thread must not
 * return before the callback does. */
typedef struct gate_ctx {
    _Atomic bool entered, open, exited;
    _Atomic bool del_started, del_returned;
    _Atomic bool exited_before_return;
    lc_watch *w;
    lc_engine *e;
    lc_timer_id tid;
    _Atomic int cancel_result;
} gate_ctx;

static void gate_cb(void *ctx, uint32_t revents)
{
    gate_ctx *g = ctx;
    atomic_store(&g->entered, true);
    WAIT_UNTIL(atomic_load(&g->open));
    atomic_store(&g->exited, true);
}

static void *del_thread(void *p)
{
    gate_ctx *g = p;
    atomic_store(&g->del_started, true);
    lc__engine_del(g->w);
    atomic_store(&g->exited_before_return, atomic_load(&g->exited));
    atomic_store(&g->del_returned, true);
    return NULL;
}

static void test_del_waits_for_running_callback(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(true);
    int efd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
    gate_ctx g = {0};
    assert_int_equal(lc__engine_add(e, efd, EPOLLIN, gate_cb, &g, &g.w), 0);
    WAIT_UNTIL(atomic_load(&g.entered));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, del_thread, &g), 0);
    WAIT_UNTIL(atomic_load(&g.del_started));
    for (int i = 0; i < 1000; i++)
        sched_yield(); /* give del time to reach its wait */
    assert_false(atomic_load(&g.del_returned));
    atomic_store(&g.open, true);
    pthread_join(t, NULL);
    assert_true(atomic_load(&g.exited_before_return));
    lc__engine_free(e);
    close(efd);
}

static void self_del_cb(void *ctx, uint32_t revents)
{
    counter *c = ctx;
    atomic_fetch_add(&c->calls, 1);
    lc__engine_del(atomic_load(&c->w));
    /* still ours to use until we return */
    atomic_store(&c->last, revents);
}

static void test_del_from_own_callback(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(false);
    int efd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
    counter c = {0};
    lc_watch *w;
    assert_int_equal(lc__engine_add(e, efd, 0, self_del_cb, &c, &w), 0);
    atomic_store(&c.w, w);
    assert_int_equal(lc__engine_arm(w, EPOLLIN), 0);
    assert_int_equal(lc__engine_run(e, 1000), 1);
    assert_int_equal(atomic_load(&c.calls), 1);
    assert_true(atomic_load(&c.last) & EPOLLIN);
    size_t nw;
    lc__engine_stats(e, &nw, NULL);
    assert_int_equal(nw, 0);
    assert_int_equal(lc__engine_run(e, 20), 0);
    /* the slot is reused by the next watch; the old one stays silent */
    counter c2 = {0};
    assert_int_equal(lc__engine_add(e, efd, EPOLLIN, count_cb, &c2, &w), 0);
    assert_int_equal(lc__engine_run(e, 1000), 1);
    assert_int_equal(atomic_load(&c.calls), 1);
    assert_int_equal(atomic_load(&c2.calls), 1);
    lc__engine_del(w);
    lc__engine_free(e);
    close(efd);
}

static void test_add_errors(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(false);
    counter c = {0};
    lc_watch *w;
    assert_int_equal(lc__engine_add(e, -1, EPOLLIN, count_cb, &c, &w), LC_EINVAL);
    assert_int_equal(lc__engine_add(e, 1000000, EPOLLIN, count_cb, &c, &w), -EBADF);
    int efd = eventfd(0, EFD_CLOEXEC);
    lc_watch *w1;
    assert_int_equal(lc__engine_add(e, efd, EPOLLIN, count_cb, &c, &w1), 0);
    assert_int_equal(lc__engine_add(e, efd, EPOLLIN, count_cb, &c, &w), -EEXIST);
    size_t nw;
    lc__engine_stats(e, &nw, NULL);
    assert_int_equal(nw, 1);
    lc__engine_del(w1);
    lc__engine_free(e);
    close(efd);
}

/*
 * A regular file has no readiness to wait for (epoll refuses it with EPERM):
 * it is always ready, each arming runs the callback once at the next round
 * with what was armed (IN, OUT), a hang-up alone never fires, one watch per
 * fd still holds, a directory is refused, and arming from another thread
 * wakes the engine's own sleeping thread. /dev/null (no poll method) too.
 */
static void test_regular_file_is_always_ready(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(false);
    char path[] = "/tmp/lc-engine-file-XXXXXX";
    int fd = mkostemp(path, O_CLOEXEC);
    assert_true(fd >= 0);
    unlink(path);
    counter c = {0};
    lc_watch *w;
    assert_int_equal(lc__engine_add(e, fd, EPOLLIN, count_cb, &c, &w), 0);
    assert_int_equal(lc__engine_run(e, 1000), 1);
    assert_int_equal(atomic_load(&c.last), EPOLLIN);
    assert_int_equal(lc__engine_run(e, 0), 0); /* one-shot */
    assert_int_equal(lc__engine_run(e, 20), 0);
    assert_int_equal(atomic_load(&c.calls), 1);

    assert_int_equal(lc__engine_arm(w, EPOLLIN | EPOLLOUT), 0);
    assert_int_equal(lc__engine_run(e, 1000), 1);
    assert_int_equal(atomic_load(&c.last), EPOLLIN | EPOLLOUT);
    assert_int_equal(lc__engine_armed(w), 0);

    /* a hang-up alone: never reported, stays armed */
    assert_int_equal(lc__engine_arm(w, EPOLLRDHUP), 0);
    assert_int_equal(lc__engine_run(e, 20), 0);
    assert_int_equal(lc__engine_armed(w), EPOLLRDHUP);
    assert_int_equal(lc__engine_disarm(w, EPOLLRDHUP), 1);

    /* armed, then disarmed before a round: nothing */
    assert_int_equal(lc__engine_arm(w, EPOLLIN), 0);
    assert_int_equal(lc__engine_disarm(w, EPOLLIN), 1);
    assert_int_equal(lc__engine_run(e, 20), 0);
    assert_int_equal(atomic_load(&c.calls), 2);

    /* re-armed from inside its callback: once per round */
    atomic_store(&c.w, w);
    atomic_store(&c.rearm_until, 5);
    assert_int_equal(lc__engine_arm(w, EPOLLIN), 0);
    for (int i = 3; i <= 5; i++) {
        assert_int_equal(lc__engine_run(e, 1000), 1);
        assert_int_equal(atomic_load(&c.calls), i);
    }
    assert_int_equal(lc__engine_run(e, 0), 0);
    assert_int_equal(atomic_load(&c.overlaps), 0);
    atomic_store(&c.w, NULL);

    lc_watch *w2;
    assert_int_equal(lc__engine_add(e, fd, EPOLLIN, count_cb, &c, &w2), -EEXIST);
    int dir = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(dir >= 0);
    assert_int_equal(lc__engine_add(e, dir, EPOLLIN, count_cb, &c, &w2), -EPERM);
    close(dir);

    /* deleted while on the ready list: never runs, and the fd may go */
    assert_int_equal(lc__engine_arm(w, EPOLLIN), 0);
    lc__engine_del(w);
    assert_int_equal(lc__engine_run(e, 20), 0);
    assert_int_equal(atomic_load(&c.calls), 5);
    size_t nw;
    lc__engine_stats(e, &nw, NULL);
    assert_int_equal(nw, 0);
    /* the same fd again, as a new watch */
    assert_int_equal(lc__engine_add(e, fd, EPOLLOUT, count_cb, &c, &w), 0);
    assert_int_equal(lc__engine_run(e, 1000), 1);
    assert_int_equal(atomic_load(&c.last), EPOLLOUT);
    lc__engine_del(w);
    lc__engine_free(e);

    /* armed from this thread, run by the engine's own sleeping thread */
    e = new_engine(true);
    counter d = {0};
    pthread_t seen = pthread_self();
    atomic_store(&d.thread_seen, &seen);
    assert_int_equal(lc__engine_add(e, fd, 0, count_cb, &d, &w), 0);
    assert_int_equal(lc__engine_arm(w, EPOLLIN), 0);
    WAIT_UNTIL(atomic_load(&d.calls) == 1);
    assert_false(pthread_equal(seen, pthread_self()));
    lc__engine_del(w);
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    assert_true(null >= 0);
    assert_int_equal(lc__engine_add(e, null, EPOLLOUT, count_cb, &d, &w), 0);
    WAIT_UNTIL(atomic_load(&d.calls) == 2);
    assert_true(atomic_load(&d.last) & EPOLLOUT);
    lc__engine_del(w);
    lc__engine_free(e);
    close(null);
    close(fd);
}

/* ---- backends ------------------------------------------------------------- */

/* One watch fires once on engine e (driven by this thread), then e is freed. */
static void fires_once(lc_engine *e)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
    counter c = {0};
    lc_watch *w;
    assert_int_equal(lc__engine_add(e, sv[0], EPOLLIN, count_cb, &c, &w), 0);
    assert_int_equal(write(sv[1], "x", 1), 1);
    assert_int_equal(lc__engine_run(e, 5000), 1);
    assert_int_equal(atomic_load(&c.calls), 1);
    assert_true(atomic_load(&c.last) & EPOLLIN);
    assert_int_equal(lc__engine_run(e, 0), 0); /* one-shot: not again */
    lc__engine_del(w);
    lc__engine_free(e);
    close(sv[0]);
    close(sv[1]);
}

/* Either backend on request, whatever the environment says; auto follows
 * LIBCHAN_ENGINE. */
static void test_backend_choice(void **state)
{
    LC_TEST_DEADLINE(20);
    const char *was = getenv("LIBCHAN_ENGINE");
    char *saved = was != NULL ? strdup(was) : NULL;
    lc_engine *e = NULL;
    assert_int_equal(lc__engine_new_backend(&e, false, LC__ENGINE_POLL), 0);
    assert_true(lc__engine_uses_poll(e));
    fires_once(e);
    assert_int_equal(lc__engine_new_backend(&e, false, LC__ENGINE_EPOLL), 0);
    assert_false(lc__engine_uses_poll(e));
    fires_once(e);
    assert_int_equal(lc__engine_new_backend(&e, false, (lc__engine_backend)42), LC_EINVAL);

    assert_int_equal(setenv("LIBCHAN_ENGINE", "poll", 1), 0);
    e = new_engine(false);
    assert_true(lc__engine_uses_poll(e));
    lc__engine_free(e);
    assert_int_equal(setenv("LIBCHAN_ENGINE", "epoll", 1), 0);
    e = new_engine(false);
    assert_false(lc__engine_uses_poll(e));
    lc__engine_free(e);
    assert_int_equal(setenv("LIBCHAN_ENGINE", "bogus", 1), 0); /* auto: epoll here */
    e = new_engine(false);
    assert_false(lc__engine_uses_poll(e));
    lc__engine_free(e);

    if (saved != NULL)
        assert_int_equal(setenv("LIBCHAN_ENGINE", saved, 1), 0);
    else
        assert_int_equal(unsetenv("LIBCHAN_ENGINE"), 0);
    free(saved);
}

/* ---- timers --------------------------------------------------------------- */

enum { NTIMERS = 40 };

typedef struct timer_log {
    _Atomic int n;
    int order[NTIMERS];
    int64_t fired_at[NTIMERS];
} timer_log;

typedef struct timer_arg {
    timer_log *log;
    int id;
} timer_arg;

static void log_cb(void *ctx)
{
    timer_arg *a = ctx;
    int k = atomic_load(&a->log->n);
    a->log->order[k] = a->id;
    a->log->fired_at[a->id] = lc__now_ns();
    atomic_store(&a->log->n, k + 1); /* callbacks of one engine thread: no race */
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void test_timers_fire_in_order_and_on_time(void **state)
{
    LC_TEST_DEADLINE(20);
    /* Every timer is in the heap before anything drives the engine: added
     * while it ran, a preempted main thread could add a timer already due
     * after a later one fired, and the order check would be meaningless. */
    lc_engine *e = new_engine(false);
    timer_log log = {0};
    timer_arg args[NTIMERS];
    int64_t deadline[NTIMERS];
    int64_t t0 = lc__now_ns();
    unsigned seed = 42;
    for (int i = 0; i < NTIMERS; i++) {
        /* shuffled deadlines 5..80 ms ahead, some equal (ties keep add order) */
        deadline[i] = t0 + (int64_t)(5 + (rand_r(&seed) % 16) * 5) * 1000000;
        args[i] = (timer_arg){&log, i};
        lc_timer_id id;
        assert_int_equal(lc__engine_timer_add(e, deadline[i], log_cb, &args[i], &id), 0);
        assert_true(id != 0);
    }
    _Atomic int errors = 0;
    _Atomic bool stop = false;
    driver_arg d = {e, &stop, &errors};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, driver, &d), 0);
    WAIT_UNTIL(atomic_load(&log.n) == NTIMERS);
    atomic_store(&stop, true);
    pthread_join(t, NULL);
    assert_int_equal(atomic_load(&errors), 0);
    int64_t worst = 0, sum = 0, lateness[NTIMERS];
    for (int k = 0; k < NTIMERS; k++) {
        int i = log.order[k];
        if (k > 0) {
            int p = log.order[k - 1];
            if (!(deadline[p] < deadline[i] || (deadline[p] == deadline[i] && p < i)))
                fail_msg("timer %d (due %+.3f ms) fired after timer %d (due %+.3f ms)", i,
                         (deadline[i] - t0) / 1e6, p, (deadline[p] - t0) / 1e6);
        }
        int64_t late = log.fired_at[i] - deadline[i];
        if (late < 0)
            fail_msg("timer %d fired %.3f ms early", i, -late / 1e6);
        lateness[k] = late;
        sum += late;
        if (late > worst)
            worst = late;
    }
    qsort(lateness, NTIMERS, sizeof lateness[0], cmp_i64);
    int64_t median = lateness[NTIMERS / 2];
    print_message("timers: lateness mean %.3f ms, median %.3f ms, worst %.3f ms\n",
                  sum / 1e6 / NTIMERS, median / 1e6, worst / 1e6);
    /* Typically ~0.1 ms. The bounds are loose because the machine (2 cores)
     * may be busy with other builds; a scheduling hiccup can delay a few. */
    if (median >= 10 * 1000000LL || worst >= 500 * 1000000LL)
        fail_msg("timers late: median %.3f ms, worst %.3f ms", median / 1e6, worst / 1e6);
    size_t nt;
    lc__engine_stats(e, NULL, &nt);
    assert_int_equal(nt, 0);
    lc__engine_free(e);
}

static void flag_cb(void *ctx)
{
    atomic_store((_Atomic bool *)ctx, true);
}

static void test_timer_added_from_outside_wakes_sleeping_engine(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(true);
    _Atomic bool far = false, near = false;
    lc_timer_id id_far, id_near;
    /* the engine thread sleeps until the far timer... */
    assert_int_equal(lc__engine_timer_add(e, lc__now_ns() + 10LL * 1000000000, flag_cb, &far, &id_far), 0);
    int64_t t0 = lc__now_ns();
    /* ...so the near one must wake it */
    assert_int_equal(lc__engine_timer_add(e, t0 + 5 * 1000000, flag_cb, &near, &id_near), 0);
    WAIT_UNTIL(atomic_load(&near));
    int64_t took = lc__now_ns() - t0;
    /* woken for it, not at the far deadline; loose bound for a busy machine */
    if (took < 5 * 1000000 || took > 1000LL * 1000000)
        fail_msg("near timer fired after %.3f ms", took / 1e6);
    assert_false(atomic_load(&far));
    assert_true(lc__engine_timer_cancel(e, id_far));
    assert_false(lc__engine_timer_cancel(e, id_far));  /* already cancelled */
    assert_false(lc__engine_timer_cancel(e, id_near)); /* already fired */
    assert_false(lc__engine_timer_cancel(e, 0));
    lc__engine_free(e);
}

/* One round driven by a thread of its own (timeout_ms: 0 for 100), which
 * publishes its tid first (to be seen asleep in the engine's wait). */
typedef struct once_arg {
    lc_engine *e;
    _Atomic int *errors;
    int timeout_ms;
    _Atomic int tid;
    _Atomic bool done; /* its round has returned */
} once_arg;

static void *run_once(void *p)
{
    once_arg *a = p;
    atomic_store(&a->tid, lc_test_gettid());
    if (lc__engine_run(a->e, a->timeout_ms ? a->timeout_ms : 100) < 0)
        atomic_fetch_add(a->errors, 1);
    atomic_store(&a->done, true);
    return NULL;
}

/* A thread driving one round (and not looping) may be the one woken when a
 * deadline comes; the timer must still fire, by it or by the engine thread. */
static void test_single_round_driver_does_not_lose_timers(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(true);
    _Atomic int errors = 0;
    for (int i = 0; i < 20; i++) {
        once_arg a = { e, &errors, 0, 0, false };
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, run_once, &a), 0);
        _Atomic bool fired = false;
        lc_timer_id id;
        assert_int_equal(lc__engine_timer_add(e, lc__now_ns() + 2 * 1000000, flag_cb, &fired, &id), 0);
        WAIT_UNTIL(atomic_load(&fired));
        pthread_join(t, NULL);
    }
    assert_int_equal(atomic_load(&errors), 0);
    lc__engine_free(e);
}

static void fired_cb(void *ctx, uint32_t revents)
{
    (void)revents;
    atomic_store((_Atomic int *)ctx, 1);
}

/*
 * A watch armed while two threads wait in one engine (its own thread and
 * one driving a single round, as engine.h allows) runs. On the poll(2)
 * backend the one wake-up that tells the pollers to take a new snapshot was
 * taken by one of them only: the thread driving one round drained it and
 * returned, the engine's thread slept on with its old snapshot, and the
 * watch's callback never ran (86 of 200 rounds in a review helper's
 * reproducer). The engine's eventfd and timerfd keep epoll out of that.
 */
static void test_watch_armed_while_two_threads_wait(void **state)
{
    LC_TEST_DEADLINE(30);
    lc_engine *e = new_engine(true);
    _Atomic int errors = 0;
    for (int i = 0, tries = 0; i < 20; tries++) {
        assert_true(tries < 400);
        int fds[2];
        assert_int_equal(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
        assert_int_equal(write(fds[1], "x", 1), 1); /* readable already */
        _Atomic int fired = 0;
        lc_watch *w;
        assert_int_equal(lc__engine_add(e, fds[0], 0, fired_cb, &fired, &w), 0);
        once_arg a = { e, &errors, 5000, 0, false };
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, run_once, &a), 0);
        /* asleep in its round; or the round returned at once (a wake-up
         * left for another round, the engine's thread being busy): then
         * this try sets up nothing, and the next one tries again */
        int64_t end = lc_test_now_us() + 10000000;
        bool asleep = false;
        while (!asleep && !atomic_load(&a.done) && lc_test_now_us() < end)
            asleep = lc_test_wait_asleep(&a.tid, 50);
        if (asleep) {
            assert_int_equal(lc__engine_arm(w, EPOLLIN), 0);
            WAIT_UNTIL(atomic_load(&fired) > 0);
            i++;
        }
        pthread_join(t, NULL);
        lc__engine_del(w);
        close(fds[0]);
        close(fds[1]);
        assert_true(asleep || atomic_load(&a.done)); /* never asleep, never done: stuck */
    }
    assert_int_equal(atomic_load(&errors), 0);
    lc__engine_free(e);
}

static void test_timer_cancel_prevents_callback(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(true);
    _Atomic bool a = false, b = false, c = false;
    int64_t now = lc__now_ns();
    lc_timer_id ia, ib, ic;
    assert_int_equal(lc__engine_timer_add(e, now + 10 * 1000000, flag_cb, &a, &ia), 0);
    assert_int_equal(lc__engine_timer_add(e, now + 20 * 1000000, flag_cb, &b, &ib), 0);
    assert_int_equal(lc__engine_timer_add(e, now + 30 * 1000000, flag_cb, &c, &ic), 0);
    assert_true(lc__engine_timer_cancel(e, ib));
    WAIT_UNTIL(atomic_load(&c));
    assert_true(atomic_load(&a));
    assert_false(atomic_load(&b));
    /* posting: deadline 0 runs soon on the engine thread */
    _Atomic bool posted = false;
    lc_timer_id ip;
    assert_int_equal(lc__engine_timer_add(e, 0, flag_cb, &posted, &ip), 0);
    WAIT_UNTIL(atomic_load(&posted));
    lc__engine_free(e);
}

static void gate_timer_cb(void *ctx)
{
    gate_cb(ctx, 0);
}

static void *cancel_thread(void *p)
{
    gate_ctx *g = p;
    atomic_store(&g->del_started, true);
    atomic_store(&g->cancel_result, lc__engine_timer_cancel(g->e, g->tid) ? 1 : 0);
    atomic_store(&g->exited_before_return, atomic_load(&g->exited));
    atomic_store(&g->del_returned, true);
    return NULL;
}

static void test_timer_cancel_waits_for_running_callback(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(true);
    gate_ctx g = {0};
    g.e = e;
    atomic_store(&g.cancel_result, -1);
    assert_int_equal(lc__engine_timer_add(e, 0, gate_timer_cb, &g, &g.tid), 0);
    WAIT_UNTIL(atomic_load(&g.entered));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, cancel_thread, &g), 0);
    WAIT_UNTIL(atomic_load(&g.del_started));
    for (int i = 0; i < 1000; i++)
        sched_yield();
    assert_false(atomic_load(&g.del_returned));
    atomic_store(&g.open, true);
    pthread_join(t, NULL);
    assert_int_equal(atomic_load(&g.cancel_result), 0);
    assert_true(atomic_load(&g.exited_before_return));
    lc__engine_free(e);
}

typedef struct self_cancel {
    lc_engine *e;
    lc_timer_id id;
    _Atomic int result;
} self_cancel;

static void self_cancel_cb(void *ctx)
{
    self_cancel *s = ctx;
    atomic_store(&s->result, lc__engine_timer_cancel(s->e, s->id) ? 1 : 0);
}

static void test_timer_cancel_from_own_callback(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(false);
    self_cancel s = {e, 0, -1};
    assert_int_equal(lc__engine_timer_add(e, 0, self_cancel_cb, &s, &s.id), 0);
    assert_int_equal(lc__engine_run(e, 1000), 1);
    assert_int_equal(atomic_load(&s.result), 0);
    lc__engine_free(e);
}

/* A timer callback that adds a due timer does not make the round endless. */
typedef struct chain {
    lc_engine *e;
    _Atomic int n;
} chain;

static void chain_cb(void *ctx)
{
    chain *c = ctx;
    lc_timer_id id;
    if (atomic_fetch_add(&c->n, 1) < 100)
        lc__engine_timer_add(c->e, 0, chain_cb, c, &id);
}

static void test_timer_added_by_timer_waits_a_round(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(false);
    chain c = {e, 0};
    lc_timer_id id;
    assert_int_equal(lc__engine_timer_add(e, 0, chain_cb, &c, &id), 0);
    assert_int_equal(lc__engine_run(e, 0), 1);
    assert_int_equal(lc__engine_run(e, 0), 1);
    assert_int_equal(atomic_load(&c.n), 2);
    while (atomic_load(&c.n) < 101)
        assert_true(lc__engine_run(e, 0) >= 0);
    assert_int_equal(lc__engine_run(e, 0), 0);
    lc__engine_free(e);
}

/* ---- shutdown ------------------------------------------------------------- */

static void test_free_with_pending_watches_and_timers(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(true);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
    counter c = {0};
    lc_watch *w1, *w2;
    assert_int_equal(lc__engine_add(e, sv[0], EPOLLIN, count_cb, &c, &w1), 0); /* armed, idle */
    assert_int_equal(lc__engine_add(e, sv[1], 0, count_cb, &c, &w2), 0);       /* disarmed */
    _Atomic bool fired = false;
    lc_timer_id id;
    for (int i = 0; i < 100; i++)
        assert_int_equal(lc__engine_timer_add(e, lc__now_ns() + 3600LL * 1000000000, flag_cb,
                                              &fired, &id), 0);
    lc__engine_free(e); /* joins the thread, frees everything; fds stay ours */
    assert_false(atomic_load(&fired));
    assert_int_equal(atomic_load(&c.calls), 0);
    close(sv[0]);
    close(sv[1]);
}

static void *sleepy_driver(void *p)
{
    driver_arg *d = p;
    int rc;
    while ((rc = lc__engine_run(d->e, -1)) >= 0)
        ;
    if (rc != LC_ECLOSED)
        atomic_fetch_add(d->errors, 1);
    return NULL;
}

static void test_stop_wakes_every_sleeping_runner(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = new_engine(true);
    _Atomic int errors = 0;
    driver_arg d = {e, NULL, &errors};
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&t[i], NULL, sleepy_driver, &d), 0);
    /* some wake-ups that the runners drain, racing with the stop */
    for (int i = 0; i < 100; i++)
        lc__engine_wake(e);
    lc__engine_stop(e);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&errors), 0);
    assert_int_equal(lc__engine_run(e, 0), LC_ECLOSED);
    lc_timer_id id;
    assert_int_equal(lc__engine_timer_add(e, 0, flag_cb, NULL, &id), LC_ECLOSED);
    lc__engine_free(e);
}

static void test_default_engine_lifecycle(void **state)
{
    LC_TEST_DEADLINE(20);
    lc_engine *e = lc__engine_default();
    assert_non_null(e);
    assert_ptr_equal(lc__engine_default(), e);
    _Atomic bool fired = false;
    lc_timer_id id;
    assert_int_equal(lc__engine_timer_add(e, 0, flag_cb, &fired, &id), 0);
    WAIT_UNTIL(atomic_load(&fired));
    /* pending work at shutdown is dropped cleanly */
    assert_int_equal(lc__engine_timer_add(e, lc__now_ns() + 3600LL * 1000000000, flag_cb, &fired, &id), 0);
    lc__engine_shutdown();
    lc__engine_shutdown(); /* idempotent */
    e = lc__engine_default(); /* a new one */
    assert_non_null(e);
    atomic_store(&fired, false);
    assert_int_equal(lc__engine_timer_add(e, 0, flag_cb, &fired, &id), 0);
    WAIT_UNTIL(atomic_load(&fired));
    lc__engine_shutdown();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_oneshot_fires_once_until_rearmed, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_added_disarmed_never_fires, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_disarmed_watch_is_unregistered, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_unreported_interest_stays_armed, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_arm_instead_drops_the_old_interest, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_arm_from_another_thread_runs_on_engine_thread, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_any_thread_may_drive, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_del_while_other_threads_dispatch, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_del_waits_for_running_callback, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_del_from_own_callback, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_add_errors, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_regular_file_is_always_ready, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_backend_choice, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_timers_fire_in_order_and_on_time, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_timer_added_from_outside_wakes_sleeping_engine, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_single_round_driver_does_not_lose_timers, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_watch_armed_while_two_threads_wait, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_timer_cancel_prevents_callback, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_timer_cancel_waits_for_running_callback, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_timer_cancel_from_own_callback, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_timer_added_by_timer_waits_a_round, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_free_with_pending_watches_and_timers, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_stop_wakes_every_sleeping_runner, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_default_engine_lifecycle, lc_test_setup, lc_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
