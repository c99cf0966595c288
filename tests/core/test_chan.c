/*
 * test_chan.c - in-memory channels (src/core) with real threads: delivery
 * without loss or duplicates, rendezvous, close, release, timeouts, pollable
 * fds. Threads never call cmocka asserts; they report through atomics, and the
 * main thread asserts. Synchronisation is on channel state, never on sleeps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "libchan.h"
#include "core/chan_internal.h"
#include "testutil.h"

/* Spins (yielding) until cond holds; the test's deadline bounds it. */
#define WAIT_UNTIL(cond)        \
    do {                        \
        while (!(cond))         \
            sched_yield();      \
    } while (0)

static lc_msg *int_msg(int64_t producer, int64_t seq)
{
    lc_msg *m = lc_msg_new();
    assert_non_null(m);
    lc_value *map = lc_new_map(m);
    assert_int_equal(lc_map_set(m, map, "P", lc_new_int(m, producer)), 0);
    assert_int_equal(lc_map_set(m, map, "N", lc_new_int(m, seq)), 0);
    assert_int_equal(lc_msg_set_root(m, map), 0);
    return m;
}

static void msg_ints(lc_msg *m, int64_t *producer, int64_t *seq)
{
    lc_value *root = lc_msg_root(m);
    *producer = lc_value_int(lc_map_get(root, "P"));
    *seq = lc_value_int(lc_map_get(root, "N"));
}

/* ---- N producers x M consumers ------------------------------------------- */

enum { NPROD = 4, NCONS = 4, PER_PROD = 25000 };

typedef struct {
    lc_sender *s;
    lc_receiver *r;
    int id;
    _Atomic int *seen;        /* NPROD * PER_PROD counters */
    _Atomic int *errors;
    _Atomic int *producers_left;
} pc_arg;

static void *producer(void *p)
{
    pc_arg *a = p;
    for (int i = 0; i < PER_PROD; i++) {
        lc_msg *m = lc_msg_new();
        lc_value *map = lc_new_map(m);
        if (lc_map_set(m, map, "P", lc_new_int(m, a->id)) || lc_map_set(m, map, "N", lc_new_int(m, i)) ||
            lc_msg_set_root(m, map) || lc_send(a->s, m, 10000) != 0) {
            atomic_fetch_add(a->errors, 1);
            lc_msg_free(m);
            break;
        }
    }
    /* the last producer out closes the channel */
    if (atomic_fetch_sub(a->producers_left, 1) == 1)
        lc_close(a->s);
    return NULL;
}

static void *consumer(void *p)
{
    pc_arg *a = p;
    int64_t last[NPROD];
    for (int i = 0; i < NPROD; i++)
        last[i] = -1;
    for (;;) {
        lc_msg *m;
        int rc = lc_recv(a->r, &m, 10000);
        if (rc == LC_EOF)
            break;
        if (rc != 0) {
            atomic_fetch_add(a->errors, 1);
            break;
        }
        int64_t pr, seq;
        msg_ints(m, &pr, &seq);
        lc_msg_free(m);
        if (pr < 0 || pr >= NPROD || seq < 0 || seq >= PER_PROD || seq <= last[pr]) {
            atomic_fetch_add(a->errors, 1); /* out of range, or out of order */
            continue;
        }
        last[pr] = seq;
        atomic_fetch_add(&a->seen[pr * PER_PROD + seq], 1);
    }
    return NULL;
}

static void run_producers_consumers(size_t capacity)
{
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, capacity), 0);
    _Atomic int *seen = calloc(NPROD * PER_PROD, sizeof *seen);
    _Atomic int errors = 0, left = NPROD;
    pthread_t th[NPROD + NCONS];
    pc_arg args[NPROD + NCONS];
    for (int i = 0; i < NPROD + NCONS; i++) {
        args[i] = (pc_arg){ .s = s, .r = r, .id = i < NPROD ? i : i - NPROD, .seen = seen,
                            .errors = &errors, .producers_left = &left };
        assert_int_equal(pthread_create(&th[i], NULL, i < NPROD ? producer : consumer, &args[i]), 0);
    }
    for (int i = 0; i < NPROD + NCONS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&errors), 0);
    for (int i = 0; i < NPROD * PER_PROD; i++)
        if (atomic_load(&seen[i]) != 1)
            fail_msg("message %d/%d delivered %d times", i / PER_PROD, i % PER_PROD, atomic_load(&seen[i]));
    free(seen);
    lc_sender_release(s);
    lc_receiver_release(r);
}

static void test_producers_consumers_buffered_no_loss_no_duplicate(void **st)
{
    LC_TEST_DEADLINE(60);
    run_producers_consumers(64);
}

static void test_producers_consumers_unbuffered_no_loss_no_duplicate(void **st)
{
    LC_TEST_DEADLINE(60);
    run_producers_consumers(0);
}

/* ---- rendezvous ----------------------------------------------------------- */

typedef struct {
    lc_sender *s;
    lc_msg *m;
    _Atomic int done;
    int rc;
} send_arg;

static void *sender_thread(void *p)
{
    send_arg *a = p;
    a->rc = lc_send(a->s, a->m, -1);
    atomic_store(&a->done, 1);
    return NULL;
}

static void test_unbuffered_send_completes_only_when_received(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 0), 0);
    /* nobody receives: a try-once send cannot complete */
    lc_msg *m = int_msg(1, 1);
    assert_int_equal(lc_send(s, m, 0), LC_ETIMEDOUT);
    assert_int_equal(lc_send(s, m, 20), LC_ETIMEDOUT);

    send_arg a = { .s = s, .m = m };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, sender_thread, &a), 0);
    WAIT_UNTIL(lc__chan_waiting(s, NULL, true) == 1);
    assert_int_equal(atomic_load(&a.done), 0); /* blocked until a receiver comes */
    lc_msg *got;
    assert_int_equal(lc_recv(r, &got, 1000), 0);
    assert_ptr_equal(got, m); /* passed by pointer: the very same message */
    pthread_join(t, NULL);
    assert_int_equal(a.rc, 0);
    assert_int_equal(atomic_load(&a.done), 1);
    lc_msg_free(got);
    lc_sender_release(s);
    lc_receiver_release(r);
}

static void test_buffered_fifo_and_full(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 3), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(lc_send(s, int_msg(0, i), 0), 0);
    assert_int_equal(lc_receiver_queued(r), 3);
    lc_msg *extra = int_msg(0, 3);
    assert_int_equal(lc_send(s, extra, 0), LC_ETIMEDOUT); /* full: pushes back */
    for (int i = 0; i < 3; i++) {
        lc_msg *m;
        int64_t p, n;
        assert_int_equal(lc_recv(r, &m, 0), 0);
        msg_ints(m, &p, &n);
        assert_int_equal(n, i);
        lc_msg_free(m);
    }
    lc_msg *m;
    assert_int_equal(lc_recv(r, &m, 0), LC_ETIMEDOUT);
    assert_null(m);
    lc_msg_free(extra);
    lc_sender_release(s);
    lc_receiver_release(r);
}

/* ---- close ---------------------------------------------------------------- */

enum { NBLOCKED = 8 };

typedef struct {
    lc_receiver *r;
    lc_sender *s;
    lc_msg *m;
    int rc;
} blocked_arg;

static void *blocked_recv(void *p)
{
    blocked_arg *a = p;
    lc_msg *m = NULL;
    a->rc = lc_recv(a->r, &m, -1);
    a->m = m;
    return NULL;
}

static void *blocked_send(void *p)
{
    blocked_arg *a = p;
    a->rc = lc_send(a->s, a->m, -1);
    return NULL;
}

/* Starts NBLOCKED threads receiving on r and waits until all are blocked. */
static void block_receivers(lc_receiver *r, pthread_t t[NBLOCKED], blocked_arg a[NBLOCKED])
{
    for (int i = 0; i < NBLOCKED; i++) {
        a[i] = (blocked_arg){ .r = r, .rc = 12345 };
        pthread_create(&t[i], NULL, blocked_recv, &a[i]);
    }
    WAIT_UNTIL(lc__chan_waiting(NULL, r, false) == NBLOCKED);
}

static void test_close_wakes_every_blocked_receiver(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 0), 0);
    pthread_t t[NBLOCKED];
    blocked_arg a[NBLOCKED];
    block_receivers(r, t, a);
    assert_int_equal(lc_close(s), 0);
    for (int i = 0; i < NBLOCKED; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(a[i].rc, LC_EOF);
        assert_null(a[i].m);
    }
    assert_int_equal(lc_close(s), LC_ECLOSED); /* second close */
    lc_msg *m = int_msg(0, 0);
    assert_int_equal(lc_send(s, m, 0), LC_ECLOSED); /* send after close */
    lc_msg_free(m);
    lc_sender_release(s);
    lc_receiver_release(r);
}

/* lc_send_last on in-memory channels: the message, then the end; a send that
 * fails closes nothing and leaves the message with the caller. */
static void test_send_last_sends_then_closes(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 2), 0);
    assert_int_equal(lc_send(s, int_msg(0, 1), 0), 0);
    assert_int_equal(lc_send_last(s, int_msg(0, 2), 0), 0);
    lc_msg *m;
    int64_t p, n;
    for (int64_t want = 1; want <= 2; want++) {
        assert_int_equal(lc_recv(r, &m, 0), 0);
        msg_ints(m, &p, &n);
        assert_int_equal(n, want);
        lc_msg_free(m);
    }
    assert_int_equal(lc_recv(r, &m, 0), LC_EOF);
    m = int_msg(0, 3);
    assert_int_equal(lc_send(s, m, 0), LC_ECLOSED);
    assert_int_equal(lc_send_last(s, m, 0), LC_ECLOSED); /* still ours */
    assert_int_equal(lc_close(s), LC_ECLOSED);           /* closed once */
    lc_msg_free(m);
    lc_sender_release(s);
    lc_receiver_release(r);

    /* unbuffered, nobody receiving: it times out and the channel stays open */
    assert_int_equal(lc_pipe(&r, &s, 0), 0);
    m = int_msg(0, 4);
    assert_int_equal(lc_send_last(s, m, 0), LC_ETIMEDOUT);
    lc_msg *got;
    assert_int_equal(lc_recv(r, &got, 0), LC_ETIMEDOUT); /* not LC_EOF */
    assert_null(got);
    assert_int_equal(lc_close(s), 0); /* the first close */
    assert_int_equal(lc_send_last(NULL, m, 0), LC_EINVAL);
    assert_int_equal(lc_send_last(s, NULL, 0), LC_EINVAL);
    lc_msg_free(m);
    lc_sender_release(s);
    lc_receiver_release(r);
}

/* ---- a wait that times out as it is claimed --------------------------------- */

typedef struct edge_arg {
    lc_sender *s;
    _Atomic int64_t wait_started_us; /* when the receiver began its wait (0: not waiting) */
    _Atomic bool stop;
    long sent;
} edge_arg;

/* Sends each message at about the moment the receiver's 1 ms wait expires,
 * a little earlier or later each time, so that some sends claim the
 * receiver just as it gives up. */
static void *edge_sender(void *p)
{
    edge_arg *a = p;
    unsigned k = 0;
    while (!atomic_load(&a->stop)) {
        int64_t t0 = atomic_load(&a->wait_started_us);
        if (t0 == 0)
            continue;
        int64_t at = t0 + 1000 - 60 + (int64_t)(k++ % 120); /* 940..1059 us after */
        while (lc_test_now_us() < at && !atomic_load(&a->stop))
            ;
        atomic_store(&a->wait_started_us, 0);
        lc_msg *m = int_msg(1, a->sent);
        if (lc_send(a->s, m, 1000) != 0) {
            lc_msg_free(m);
            break;
        }
        a->sent++;
    }
    return NULL;
}

/* Counts m (freed) as the next message; a wrong number is counted in *bad
 * (lost, repeated or out of order). */
static void take_in_order(lc_msg *m, long *got, long *bad)
{
    int64_t p, n;
    msg_ints(m, &p, &n);
    if (n != *got)
        (*bad)++;
    (*got)++;
    lc_msg_free(m);
}

/*
 * A receive whose deadline passes just as a sender claims it must still wait
 * for that sender's wake-up. It did not when the wait had gone to sleep: the
 * second wait took the word's "sleeping" for "woken" and returned; the
 * sender's late wake-up then hit a later wait of the same thread (which
 * returned garbage, leaving its entry queued on the channel: a use after
 * return; fuzz_session under TSan crashed on it). Every lc_recv here must
 * give a message or LC_ETIMEDOUT, every message exactly once, in order.
 */
static void test_wait_claimed_as_it_times_out(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    for (size_t cap = 0; cap <= 1; cap++) {
        lc_receiver *r;
        edge_arg a = { 0 };
        assert_int_equal(lc_pipe(&r, &a.s, cap), 0);
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, edge_sender, &a), 0);
        long got = 0, timeouts = 0, other = 0;
        int64_t end = lc_test_now_us() + 1500000;
        while (lc_test_now_us() < end) {
            lc_msg *m = NULL;
            atomic_store(&a.wait_started_us, lc_test_now_us());
            int rc = lc_recv(r, &m, 1);
            if (rc == 0)
                take_in_order(m, &got, &other);
            else if (rc == LC_ETIMEDOUT)
                timeouts++;
            else
                other++;
        }
        atomic_store(&a.stop, true);
        /* what the sender still had in hand */
        lc_msg *m;
        while (lc_recv(r, &m, 50) == 0)
            take_in_order(m, &got, &other);
        pthread_join(t, NULL);
        printf("capacity %zu: %ld received, %ld timeouts, %ld sent\n", cap, got, timeouts, a.sent);
        assert_int_equal(other, 0);
        assert_int_equal(got, a.sent);
        /* (how many waits timed out depends on the machine's load: the
         * sends aim at the deadline, some land before it, some after) */
        assert_true(got > 100);
        lc_sender_release(a.s);
        lc_receiver_release(r);
    }
}

/* A batch handed over at once (what a session does with what it decoded)
 * wakes as many blocked receivers as it brings messages, and stops at a full
 * ring, leaving the rest with the caller. */
static void test_batch_wakes_every_receiver_it_feeds(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 2 * NBLOCKED), 0);
    pthread_t t[NBLOCKED];
    blocked_arg a[NBLOCKED];
    block_receivers(r, t, a);
    lc_msg *ms[3 * NBLOCKED];
    for (int i = 0; i < 3 * NBLOCKED; i++)
        ms[i] = int_msg(0, i);
    size_t taken = 99;
    assert_int_equal(lc__send_batch(s, ms, NBLOCKED, &taken), 0);
    assert_int_equal(taken, NBLOCKED);
    bool seen[NBLOCKED] = { false };
    for (int i = 0; i < NBLOCKED; i++) {
        pthread_join(t[i], NULL); /* each woken: none is left waiting */
        assert_int_equal(a[i].rc, 0);
        int64_t p, v;
        msg_ints(a[i].m, &p, &v);
        assert_true(v >= 0 && v < NBLOCKED && !seen[v]);
        seen[v] = true;
        lc_msg_free(a[i].m);
    }
    /* 2*NBLOCKED fit, in order; the ring is then full */
    assert_int_equal(lc__send_batch(s, ms + NBLOCKED, 2 * NBLOCKED, &taken), 0);
    assert_int_equal(taken, 2 * NBLOCKED);
    lc_msg *extra = int_msg(0, -1);
    assert_int_equal(lc__send_batch(s, &extra, 1, &taken), LC_ETIMEDOUT);
    assert_int_equal(taken, 0);
    for (int i = NBLOCKED; i < 3 * NBLOCKED; i++) {
        lc_msg *m;
        int64_t p, v;
        assert_int_equal(lc_recv(r, &m, 0), 0);
        msg_ints(m, &p, &v);
        assert_int_equal(v, i);
        lc_msg_free(m);
    }
    lc_receiver_release(r); /* nobody receives any more: the batch is refused */
    assert_int_equal(lc__send_batch(s, &extra, 1, &taken), LC_ECLOSED);
    assert_int_equal(taken, 0);
    lc_msg_free(extra);
    /* an unbuffered channel has no ring: nothing is taken */
    lc_receiver *ur;
    lc_sender *us;
    assert_int_equal(lc_pipe(&ur, &us, 0), 0);
    lc_msg *um = int_msg(0, 0);
    assert_int_equal(lc__send_batch(us, &um, 1, &taken), LC_EINVAL);
    assert_int_equal(taken, 0);
    lc_msg_free(um);
    lc_sender_release(us);
    lc_receiver_release(ur);
    lc_sender_release(s);
}

static void test_close_wakes_every_blocked_sender(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 1), 0);
    assert_int_equal(lc_send(s, int_msg(0, 0), 0), 0); /* buffer now full */
    pthread_t t[NBLOCKED];
    blocked_arg a[NBLOCKED];
    for (int i = 0; i < NBLOCKED; i++) {
        a[i] = (blocked_arg){ .s = s, .m = int_msg(1, i), .rc = 12345 };
        pthread_create(&t[i], NULL, blocked_send, &a[i]);
    }
    WAIT_UNTIL(lc__chan_waiting(s, NULL, true) == NBLOCKED);
    assert_int_equal(lc_close(s), 0);
    for (int i = 0; i < NBLOCKED; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(a[i].rc, LC_ECLOSED);
        lc_msg_free(a[i].m); /* a failed send leaves the message with its owner */
    }
    /* what was queued before close is still delivered, then end-of-channel */
    lc_msg *m;
    assert_int_equal(lc_recv(r, &m, 0), 0);
    lc_msg_free(m);
    assert_int_equal(lc_recv(r, &m, 0), LC_EOF);
    assert_int_equal(lc_recv(r, &m, -1), LC_EOF);
    lc_sender_release(s);
    lc_receiver_release(r);
}

static void test_release_last_sender_closes_channel(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 4), 0);
    lc_sender *s2 = lc_sender_retain(s);
    assert_int_equal(lc_send(s, int_msg(0, 0), 0), 0);
    lc_sender_release(s);
    lc_msg *m;
    assert_int_equal(lc_recv(r, &m, 0), 0); /* one reference still alive */
    lc_msg_free(m);
    assert_int_equal(lc_recv(r, &m, 0), LC_ETIMEDOUT);
    lc_sender_release(s2);
    assert_int_equal(lc_recv(r, &m, 0), LC_EOF);
    lc_receiver_release(r);
}

static void test_release_last_receiver_fails_senders_and_frees_queue(void **st)
{
    LC_TEST_DEADLINE(10);
    int fds_before = lc_test_count_fds();
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 2), 0);
    int p[2];
    assert_int_equal(pipe(p), 0);
    lc_msg *m = lc_msg_new();
    assert_int_equal(lc_msg_set_root(m, lc_new_stream(m, p[0], LC_STREAM_READ)), 0);
    assert_int_equal(lc_send(s, m, 0), 0);
    assert_int_equal(lc_send(s, int_msg(0, 1), 0), 0);
    /* a sender blocked on the full buffer is failed when the receiver goes */
    blocked_arg a = { .s = s, .m = int_msg(0, 2), .rc = 12345 };
    pthread_t t;
    pthread_create(&t, NULL, blocked_send, &a);
    WAIT_UNTIL(lc__chan_waiting(s, NULL, true) == 1);
    lc_receiver_release(r);
    pthread_join(t, NULL);
    assert_int_equal(a.rc, LC_ECLOSED);
    lc_msg_free(a.m);
    /* the queued message's fd was closed with it */
    assert_int_equal(fcntl(p[0], F_GETFD), -1);
    close(p[1]);
    assert_int_equal(lc_test_count_fds(), fds_before);
    lc_msg *m2 = int_msg(0, 3);
    assert_int_equal(lc_send(s, m2, -1), LC_ECLOSED);
    lc_msg_free(m2);
    lc_sender_release(s);
}

/* ---- timeouts ------------------------------------------------------------- */

static void test_timeouts_are_accurate(void **st)
{
    LC_TEST_DEADLINE(20);
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 0), 0);
    const int64_t timeouts[] = { 1, 10, 50, 120 };
    for (size_t k = 0; k < sizeof timeouts / sizeof *timeouts; k++) {
        int64_t best = INT64_MAX;
        for (int attempt = 0; attempt < 3; attempt++) {
            lc_msg *m;
            int64_t t0 = lc_test_now_us();
            assert_int_equal(lc_recv(r, &m, timeouts[k]), LC_ETIMEDOUT);
            int64_t over = lc_test_now_us() - t0 - timeouts[k] * 1000;
            /* never early */
            if (over < 0)
                fail_msg("timeout %lld ms returned %lld us early", (long long)timeouts[k], (long long)-over);
            /* a loaded CI machine may delay one wake-up, never all of them */
            if (over > 100000)
                fail_msg("timeout %lld ms overshot by %lld us", (long long)timeouts[k], (long long)over);
            if (over < best)
                best = over;
        }
        if (best > 5000)
            fail_msg("timeout %lld ms: best of 3 overshot by %lld us (> 5 ms)", (long long)timeouts[k],
                     (long long)best);
        /* the same for a blocked send and a select */
        lc_msg *m = int_msg(0, 0);
        int64_t t0 = lc_test_now_us();
        assert_int_equal(lc_send(s, m, timeouts[k]), LC_ETIMEDOUT);
        assert_true(lc_test_now_us() - t0 >= timeouts[k] * 1000);
        lc_case c[1] = { { .op = LC_CASE_SEND, .sender = s, .msg = m } };
        t0 = lc_test_now_us();
        assert_int_equal(lc_select(c, 1, timeouts[k]), LC_ETIMEDOUT);
        assert_true(lc_test_now_us() - t0 >= timeouts[k] * 1000);
        assert_ptr_equal(c[0].msg, m); /* not taken */
        lc_msg_free(m);
    }
    lc_sender_release(s);
    lc_receiver_release(r);
}

/* ---- pollable fds --------------------------------------------------------- */

static bool readable(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static void test_pollfd_tracks_readiness(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 1), 0);
    int rfd = lc_receiver_pollfd(r), sfd = lc_sender_pollfd(s);
    assert_true(rfd >= 0 && sfd >= 0);
    assert_int_equal(lc_receiver_pollfd(r), rfd); /* stable */
    assert_false(readable(rfd));
    assert_true(readable(sfd)); /* room in the buffer */
    assert_int_equal(lc_send(s, int_msg(0, 0), 0), 0);
    assert_true(readable(rfd));
    assert_true(readable(rfd)); /* level-triggered: stays readable */
    assert_false(readable(sfd)); /* full */
    lc_msg *m;
    assert_int_equal(lc_recv(r, &m, 0), 0);
    lc_msg_free(m);
    assert_false(readable(rfd));
    assert_true(readable(sfd));
    lc_close(s);
    assert_true(readable(rfd)); /* a receive would not block: it returns LC_EOF */
    lc_sender_release(s);
    lc_receiver_release(r);
}

static void test_pollfd_unbuffered_sees_waiting_sender(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 0), 0);
    int rfd = lc_receiver_pollfd(r);
    assert_false(readable(rfd));
    send_arg a = { .s = s, .m = int_msg(0, 7) };
    pthread_t t;
    pthread_create(&t, NULL, sender_thread, &a);
    /* an event loop would wait in poll(): do exactly that, with a deadline */
    struct pollfd p = { .fd = rfd, .events = POLLIN };
    assert_int_equal(poll(&p, 1, 5000), 1);
    lc_msg *m;
    assert_int_equal(lc_recv(r, &m, 0), 0);
    pthread_join(t, NULL);
    assert_int_equal(a.rc, 0);
    lc_msg_free(m);
    assert_false(readable(rfd));
    lc_sender_release(s);
    lc_receiver_release(r);
}

/*
 * lc__receiver_abandon (a session ending while it pumps a Receiver the
 * application also kept): a receive blocked then, and every later one, ends
 * with the error at once, and the pollable fd says so, buffered or not.
 * Unbuffered, later receives waited for ever and the fd stayed quiet: only
 * closed ended a receive (found by a review helper; here the 2 s receive
 * timed out, before the fix).
 */
static void never_called(void *ctx, int result, lc_msg *m)
{
    (void)ctx;
    (void)result;
    (void)m;
    abort();
}

static void test_abandoned_receiver_ends_every_receive(void **st)
{
    LC_TEST_DEADLINE(20);
    const size_t caps[] = { 0, 4 };
    for (size_t k = 0; k < 2; k++) {
        lc_receiver *r;
        lc_sender *s;
        assert_int_equal(lc_pipe(&r, &s, caps[k]), 0);
        int rfd = lc_receiver_pollfd(r);
        assert_true(rfd >= 0);
        assert_false(readable(rfd));
        pthread_t t;
        blocked_arg a = { .r = r, .rc = 12345 };
        pthread_create(&t, NULL, blocked_recv, &a);
        WAIT_UNTIL(lc__chan_waiting(NULL, r, false) == 1);
        lc__receiver_abandon(r, LC_ESESSION);
        pthread_join(t, NULL);
        assert_int_equal(a.rc, LC_ESESSION);
        assert_null(a.m);
        assert_true(readable(rfd));
        lc_msg *m = (lc_msg *)&m;
        assert_int_equal(lc_recv(r, &m, 0), LC_ESESSION);
        assert_null(m);
        assert_int_equal(lc_recv(r, &m, 2000), LC_ESESSION);
        lc_case c = { .op = LC_CASE_RECV, .receiver = r };
        assert_int_equal(lc_select(&c, 1, 2000), 0);
        assert_int_equal(c.result, LC_ESESSION);
        assert_null(c.msg);
        lc_async *op;
        int arc = lc__recv_async(r, &m, never_called, NULL, &op);
        if (arc == LC__PENDING)
            assert_true(lc__async_cancel(op));
        assert_int_equal(arc, LC_ESESSION);
        assert_null(m);
        lc_msg *x = int_msg(0, 1);
        assert_int_equal(lc_send(s, x, 0), LC_ECLOSED);
        lc_msg_free(x);
        lc_sender_release(s);
        lc_receiver_release(r);
    }
}

/* ---- attachments travel by pointer ---------------------------------------- */

static void test_channel_end_travels_inside_a_message(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *registry_r, *inbox_r;
    lc_sender *registry_s, *inbox_s;
    assert_int_equal(lc_pipe(&registry_r, &registry_s, 1), 0);
    assert_int_equal(lc_pipe(&inbox_r, &inbox_s, 1), 0);
    /* a worker registers by sending its own Sender */
    lc_msg *reg = lc_msg_new();
    lc_value *map = lc_new_map(reg);
    assert_int_equal(lc_map_set(reg, map, "Inbox", lc_new_sender(reg, inbox_s)), 0);
    assert_int_equal(lc_msg_set_root(reg, map), 0);
    assert_int_equal(lc_send(registry_s, reg, 0), 0);

    lc_msg *got;
    assert_int_equal(lc_recv(registry_r, &got, 0), 0);
    int err;
    lc_sender *to_worker = lc_value_take_sender(lc_map_get(lc_msg_root(got), "Inbox"), &err);
    assert_non_null(to_worker);
    assert_int_equal(lc_value_take_sender(lc_map_get(lc_msg_root(got), "Inbox"), &err), NULL);
    assert_int_equal(err, LC_ETAKEN);
    lc_msg_free(got);
    assert_int_equal(lc_send(to_worker, int_msg(9, 9), 0), 0);
    lc_msg *job;
    assert_int_equal(lc_recv(inbox_r, &job, 0), 0);
    int64_t p, n;
    msg_ints(job, &p, &n);
    assert_int_equal(p, 9);
    lc_msg_free(job);
    /* the taken reference was the only Sender: releasing it ends the channel */
    lc_sender_release(to_worker);
    assert_int_equal(lc_recv(inbox_r, &job, 0), LC_EOF);
    lc_receiver_release(inbox_r);
    lc_sender_release(registry_s);
    lc_receiver_release(registry_r);
}

static void test_invalid_arguments(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r;
    lc_sender *s;
    lc_msg *m = NULL;
    assert_int_equal(lc_pipe(NULL, &s, 0), LC_EINVAL);
    assert_int_equal(lc_send(NULL, m, 0), LC_EINVAL);
    assert_int_equal(lc_recv(NULL, &m, 0), LC_EINVAL);
    assert_int_equal(lc_close(NULL), LC_EINVAL);
    assert_int_equal(lc_pipe(&r, &s, 0), 0);
    assert_int_equal(lc_send(s, NULL, 0), LC_EINVAL);
    lc_case bad = { .op = 99, .sender = s };
    assert_int_equal(lc_select(&bad, 1, 0), LC_EINVAL);
    lc_case nullmsg = { .op = LC_CASE_SEND, .sender = s };
    assert_int_equal(lc_select(&nullmsg, 1, 0), LC_EINVAL);
    assert_int_equal(lc_select(NULL, 0, -1), LC_EINVAL); /* would block forever */
    assert_int_equal(lc_select(NULL, 0, 0), LC_ETIMEDOUT);
    lc_sender_release(NULL);
    lc_receiver_release(NULL);
    lc_sender_release(s);
    lc_receiver_release(r);
}


/* ---- close racing traffic: exactly once ----------------------------------- */

enum { RACE_PROD = 3, RACE_MAX = 200000 };

typedef struct {
    lc_sender *s;
    lc_receiver *r;
    int id;
    _Atomic int *sent;     /* per message: 1 when lc_send returned 0 */
    _Atomic int *received; /* per message: receive count */
    _Atomic long *total_received;
    _Atomic int *errors;
} race_arg;

static void *race_producer(void *p)
{
    race_arg *a = p;
    for (int i = a->id; i < RACE_MAX; i += RACE_PROD) {
        lc_msg *m = lc_msg_new();
        lc_msg_set_root(m, lc_new_int(m, i));
        int rc = lc_send(a->s, m, 10000);
        if (rc == 0) {
            atomic_store(&a->sent[i], 1);
            continue;
        }
        lc_msg_free(m); /* a failed send leaves the message with us */
        if (rc != LC_ECLOSED)
            atomic_fetch_add(a->errors, 1);
        break;
    }
    return NULL;
}

static void *race_consumer(void *p)
{
    race_arg *a = p;
    for (;;) {
        lc_msg *m;
        int rc = lc_recv(a->r, &m, 10000);
        if (rc == LC_EOF)
            return NULL;
        if (rc != 0) {
            atomic_fetch_add(a->errors, 1);
            return NULL;
        }
        int64_t v = lc_value_int(lc_msg_root(m));
        lc_msg_free(m);
        if (v < 0 || v >= RACE_MAX)
            atomic_fetch_add(a->errors, 1);
        else
            atomic_fetch_add(&a->received[v], 1);
        atomic_fetch_add(a->total_received, 1);
    }
}

/* Producers keep sending while the channel is closed under them: every send
 * that succeeded is received exactly once, every failed one is not. */
static void run_close_race(size_t capacity)
{
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, capacity), 0);
    _Atomic int *sent = calloc(RACE_MAX, sizeof *sent);
    _Atomic int *received = calloc(RACE_MAX, sizeof *received);
    _Atomic long total = 0;
    _Atomic int errors = 0;
    pthread_t th[RACE_PROD + 2];
    race_arg args[RACE_PROD + 2];
    for (int i = 0; i < RACE_PROD + 2; i++) {
        args[i] = (race_arg){ .s = s, .r = r, .id = i, .sent = sent, .received = received,
                              .total_received = &total, .errors = &errors };
        pthread_create(&th[i], NULL, i < RACE_PROD ? race_producer : race_consumer, &args[i]);
    }
    /* close in the middle of the traffic */
    WAIT_UNTIL(atomic_load(&total) >= 5000);
    assert_int_equal(lc_close(s), 0);
    for (int i = 0; i < RACE_PROD + 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&errors), 0);
    long ok = 0;
    for (int i = 0; i < RACE_MAX; i++) {
        int snt = atomic_load(&sent[i]), rcv = atomic_load(&received[i]);
        if (snt != rcv)
            fail_msg("message %d: sent %d, received %d", i, snt, rcv);
        ok += snt;
    }
    assert_true(ok >= 5000 && ok < RACE_MAX); /* the close really cut traffic */
    free(sent);
    free(received);
    lc_sender_release(s);
    lc_receiver_release(r);
}

static void test_close_racing_producers_buffered_exactly_once(void **st)
{
    LC_TEST_DEADLINE(60);
    run_close_race(16);
}

static void test_close_racing_producers_unbuffered_exactly_once(void **st)
{
    LC_TEST_DEADLINE(60);
    run_close_race(0);
}

/* The consumer of run_send_last_race: reads to the end, remembers the last
 * value before it. */
typedef struct last_arg {
    lc_receiver *r;
    _Atomic int *received;
    _Atomic long *total;
    int64_t last;
    int rc, errors;
} last_arg;

static void *last_consumer(void *p)
{
    last_arg *a = p;
    lc_msg *m;
    while ((a->rc = lc_recv(a->r, &m, 10000)) == 0) {
        int64_t v = lc_value_int(lc_msg_root(m));
        lc_msg_free(m);
        a->last = v;
        if (v >= 0 && v < RACE_MAX)
            atomic_fetch_add(&a->received[v], 1);
        else if (v != -1)
            a->errors++;
        atomic_fetch_add(a->total, 1);
    }
    return NULL;
}

/* Producers keep sending on Senders of the channel while one lc_send_last
 * goes: its message is the last one received, then the end (LC_EOF), and
 * every other send that succeeded is received exactly once. A send of
 * another Sender could slip in between the last message and the end when
 * lc_send_last was lc_send followed by lc_close. */
static void run_send_last_race(size_t capacity)
{
    for (int round = 0; round < 20; round++) {
        lc_receiver *r;
        lc_sender *s;
        assert_int_equal(lc_pipe(&r, &s, capacity), 0);
        _Atomic int *sent = calloc(RACE_MAX, sizeof *sent);
        _Atomic int *received = calloc(RACE_MAX, sizeof *received);
        _Atomic long total = 0;
        _Atomic int errors = 0;
        pthread_t th[RACE_PROD + 1];
        race_arg args[RACE_PROD];
        last_arg la = { .r = r, .received = received, .total = &total, .last = -2 };
        for (int i = 0; i < RACE_PROD; i++) {
            args[i] = (race_arg){ .s = s, .r = r, .id = i, .sent = sent, .received = received,
                                  .total_received = &total, .errors = &errors };
            pthread_create(&th[i], NULL, race_producer, &args[i]);
        }
        pthread_create(&th[RACE_PROD], NULL, last_consumer, &la);
        WAIT_UNTIL(atomic_load(&total) >= 2000);
        lc_msg *m = lc_msg_new();
        lc_msg_set_root(m, lc_new_int(m, -1));
        assert_int_equal(lc_send_last(s, m, 10000), 0);
        for (int i = 0; i < RACE_PROD + 1; i++)
            pthread_join(th[i], NULL);
        assert_int_equal(atomic_load(&errors), 0);
        assert_int_equal(la.errors, 0);
        assert_int_equal(la.rc, LC_EOF);
        if (la.last != -1)
            fail_msg("capacity %zu, round %d: %lld came after the last message", capacity, round,
                     (long long)la.last);
        for (int i = 0; i < RACE_MAX; i++)
            if (atomic_load(&sent[i]) != atomic_load(&received[i]))
                fail_msg("message %d: sent %d, received %d", i, atomic_load(&sent[i]), atomic_load(&received[i]));
        free(sent);
        free(received);
        lc_sender_release(s);
        lc_receiver_release(r);
    }
}

static void test_send_last_racing_other_senders_is_last(void **st)
{
    LC_TEST_DEADLINE(60);
    run_send_last_race(16);
    run_send_last_race(0);
}

/* The receiver goes away while producers are sending: every producer ends
 * with LC_ECLOSED and queued messages are freed (ASan checks the leak side). */
static void test_receiver_release_racing_senders(void **st)
{
    LC_TEST_DEADLINE(60);
    for (size_t capacity = 0; capacity <= 4; capacity += 4) {
        lc_receiver *r;
        lc_sender *s;
        assert_int_equal(lc_pipe(&r, &s, capacity), 0);
        _Atomic int *sent = calloc(RACE_MAX, sizeof *sent);
        _Atomic int errors = 0;
        pthread_t th[RACE_PROD];
        race_arg args[RACE_PROD];
        for (int i = 0; i < RACE_PROD; i++) {
            args[i] = (race_arg){ .s = s, .id = i, .sent = sent, .errors = &errors };
            pthread_create(&th[i], NULL, race_producer, &args[i]);
        }
        for (int i = 0; i < 1000; i++) {
            lc_msg *m;
            assert_int_equal(lc_recv(r, &m, 10000), 0);
            lc_msg_free(m);
        }
        lc_receiver_release(r);
        for (int i = 0; i < RACE_PROD; i++)
            pthread_join(th[i], NULL);
        assert_int_equal(atomic_load(&errors), 0);
        free(sent);
        lc_sender_release(s);
    }
}

/* Every LC_E code explains itself in words of its own; other negative
 * values are -errno codes and read as strerror says; anything else is
 * "unknown error". */
static void test_strerror_covers_every_code(void **st)
{
    (void)st;
    static const int codes[] = { LC_OK,        LC_EINVAL, LC_ENOMEM, LC_ETIMEDOUT, LC_ECLOSED, LC_EBADF,
                                 LC_EOF,       LC_ETRUNCATED, LC_ETRAILING, LC_EDEPTH, LC_ETOOBIG, LC_EBADMSG,
                                 LC_ETYPE,     LC_ENOKEY, LC_EFORMAT, LC_ETAKEN, LC_ERANGE, LC_ENOTSUP,
                                 LC_EPROTO,    LC_ESESSION, LC_ENOHOST };
    enum { N = sizeof codes / sizeof codes[0] };
    const char *text[N];
    for (int i = 0; i < N; i++) {
        text[i] = lc_strerror(codes[i]);
        assert_non_null(text[i]);
        assert_true(strlen(text[i]) > 4);
        assert_string_not_equal(text[i], "unknown error");
        for (int j = 0; j < i; j++)
            assert_string_not_equal(text[i], text[j]);
    }
    assert_string_equal(lc_strerror(-ECONNRESET), strerror(ECONNRESET));
    assert_string_equal(lc_strerror(-1016), "unknown error");
    assert_string_equal(lc_strerror(7), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_producers_consumers_buffered_no_loss_no_duplicate, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_producers_consumers_unbuffered_no_loss_no_duplicate, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_unbuffered_send_completes_only_when_received, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_buffered_fifo_and_full, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_close_wakes_every_blocked_receiver, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_close_wakes_every_blocked_sender, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_send_last_sends_then_closes, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_wait_claimed_as_it_times_out, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_batch_wakes_every_receiver_it_feeds, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_release_last_sender_closes_channel, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_release_last_receiver_fails_senders_and_frees_queue, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_timeouts_are_accurate, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_pollfd_tracks_readiness, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_pollfd_unbuffered_sees_waiting_sender, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_abandoned_receiver_ends_every_receive, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_channel_end_travels_inside_a_message, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_invalid_arguments, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_close_racing_producers_buffered_exactly_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_close_racing_producers_unbuffered_exactly_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_send_last_racing_other_senders_is_last, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_receiver_release_racing_senders, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_strerror_covers_every_code, lc_test_setup, lc_test_teardown),
    };
    return cmocka_run_group_tests_name("core/chan", tests, NULL, NULL);
}
