/*
 * test_async.c - the channel core's hooks for the session layer: callback
 * operations (lc__send_async / lc__recv_async / lc__async_cancel) and network
 * Senders (lc__net_sender_new), exercised with real threads. The "network" is
 * a bounded outbox with the ops a session provides.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "libchan.h"
#include "core/chan_internal.h"
#include "testutil.h"

#define WAIT_UNTIL(cond)   \
    do {                   \
        while (!(cond))    \
            sched_yield(); \
    } while (0)

static lc_msg *tag_msg(int64_t tag)
{
    lc_msg *m = lc_msg_new();
    assert_non_null(m);
    assert_int_equal(lc_msg_set_root(m, lc_new_int(m, tag)), 0);
    return m;
}

typedef struct {
    _Atomic int calls;
    int result;
    lc_msg *msg;
} cb_record;

static void record_cb(void *ctx, int result, lc_msg *m)
{
    cb_record *r = ctx;
    r->result = result;
    r->msg = m;
    atomic_fetch_add(&r->calls, 1);
}

static void test_async_recv_completes_on_send(void **st)
{
    LC_TEST_DEADLINE(10);
    for (size_t cap = 0; cap <= 2; cap += 2) {
        lc_receiver *r;
        lc_sender *s;
        assert_int_equal(lc_pipe(&r, &s, cap), 0);
        cb_record rec = { 0 };
        lc_msg *m = NULL;
        lc_async *op;
        assert_int_equal(lc__recv_async(r, &m, record_cb, &rec, &op), LC__PENDING);
        assert_null(m);
        assert_int_equal(atomic_load(&rec.calls), 0);
        lc_msg *sent = tag_msg(7);
        /* the send completes the pending receive, running the callback */
        assert_int_equal(lc_send(s, sent, 1000), 0);
        WAIT_UNTIL(atomic_load(&rec.calls) == 1);
        assert_int_equal(rec.result, 0);
        assert_ptr_equal(rec.msg, sent);
        lc_msg_free(rec.msg);
        /* completes at once when possible: no callback */
        if (cap > 0) {
            assert_int_equal(lc_send(s, tag_msg(8), 0), 0);
            assert_int_equal(lc__recv_async(r, &m, record_cb, &rec, &op), 0);
            assert_int_equal(lc_value_int(lc_msg_root(m)), 8);
            lc_msg_free(m);
            assert_int_equal(atomic_load(&rec.calls), 1);
        }
        lc_sender_release(s);
        lc_receiver_release(r);
    }
}

static void test_async_send_completes_on_receive(void **st)
{
    LC_TEST_DEADLINE(10);
    for (size_t cap = 0; cap <= 1; cap++) {
        lc_receiver *r;
        lc_sender *s;
        assert_int_equal(lc_pipe(&r, &s, cap), 0);
        if (cap)
            assert_int_equal(lc_send(s, tag_msg(0), 0), 0); /* full */
        cb_record rec = { 0 };
        lc_async *op;
        lc_msg *m = tag_msg(1);
        assert_int_equal(lc__send_async(s, m, record_cb, &rec, &op), LC__PENDING);
        lc_msg *got;
        assert_int_equal(lc_recv(r, &got, 1000), 0);
        if (cap) { /* the queued one first, then ours moved in */
            assert_int_equal(lc_value_int(lc_msg_root(got)), 0);
            lc_msg_free(got);
            assert_int_equal(lc_recv(r, &got, 1000), 0);
        }
        assert_ptr_equal(got, m);
        lc_msg_free(got);
        WAIT_UNTIL(atomic_load(&rec.calls) == 1);
        assert_int_equal(rec.result, 0);
        lc_sender_release(s);
        lc_receiver_release(r);
    }
}

static void test_async_close_and_cancel(void **st)
{
    LC_TEST_DEADLINE(10);
    for (size_t cap = 0; cap <= 1; cap++) {
        lc_receiver *r;
        lc_sender *s;
        assert_int_equal(lc_pipe(&r, &s, cap), 0);
        cb_record rrec = { 0 }, srec = { 0 };
        lc_async *rop, *sop;
        lc_msg *m = NULL;
        assert_int_equal(lc__recv_async(r, &m, record_cb, &rrec, &rop), LC__PENDING);
        /* a cancelled operation never calls back */
        assert_true(lc__async_cancel(rop));
        assert_int_equal(lc__recv_async(r, &m, record_cb, &rrec, &rop), LC__PENDING);
        lc_close(s);
        WAIT_UNTIL(atomic_load(&rrec.calls) == 1);
        assert_int_equal(rrec.result, LC_EOF);
        assert_null(rrec.msg);
        /* send on the closed channel fails at once; the message stays ours */
        lc_msg *out = tag_msg(3);
        assert_int_equal(lc__send_async(s, out, record_cb, &srec, &sop), LC_ECLOSED);
        assert_int_equal(atomic_load(&srec.calls), 0);
        lc_msg_free(out);
        lc_sender_release(s);
        lc_receiver_release(r);
    }
    /* a pending send woken by close reports LC_ECLOSED and does not take m */
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 0), 0);
    cb_record rec = { 0 };
    lc_async *op;
    lc_msg *out = tag_msg(4);
    assert_int_equal(lc__send_async(s, out, record_cb, &rec, &op), LC__PENDING);
    lc_close(s);
    WAIT_UNTIL(atomic_load(&rec.calls) == 1);
    assert_int_equal(rec.result, LC_ECLOSED);
    lc_msg_free(out);
    lc_sender_release(s);
    lc_receiver_release(r);
}

/* A forwarder driven only by callbacks, like a session's pump: moves every
 * message from channel A to channel B while threads produce and consume. */
enum { FW_PROD = 2, FW_PER = 20000 };

typedef struct pump {
    lc_receiver *from;
    lc_sender *to;
    _Atomic int done;
    _Atomic long moved;
} pump;

static void pump_run(pump *p);

static void pump_sent(void *ctx, int result, lc_msg *m)
{
    pump *p = ctx;
    (void)m;
    if (result != 0) {
        atomic_store(&p->done, -1);
        return;
    }
    atomic_fetch_add(&p->moved, 1);
    pump_run(p);
}

static void pump_forward(pump *p, lc_msg *m);

static void pump_got(void *ctx, int result, lc_msg *m)
{
    pump *p = ctx;
    if (result == LC_EOF) {
        lc_close(p->to);
        atomic_store(&p->done, 1);
        return;
    }
    pump_forward(p, m);
}

/* hands m on to B; continues the pump unless it must wait for a callback */
static void pump_forward(pump *p, lc_msg *m)
{
    lc_async *op;
    int rc = lc__send_async(p->to, m, pump_sent, p, &op);
    if (rc == LC__PENDING)
        return;
    if (rc != 0) {
        lc_msg_free(m);
        atomic_store(&p->done, -1);
        return;
    }
    atomic_fetch_add(&p->moved, 1);
    pump_run(p);
}

static void pump_run(pump *p)
{
    for (;;) {
        lc_msg *m;
        lc_async *op;
        int rc = lc__recv_async(p->from, &m, pump_got, p, &op);
        if (rc == LC__PENDING)
            return;
        if (rc == LC_EOF) {
            lc_close(p->to);
            atomic_store(&p->done, 1);
            return;
        }
        lc_async *sop;
        rc = lc__send_async(p->to, m, pump_sent, p, &sop);
        if (rc == LC__PENDING)
            return;
        if (rc != 0) {
            lc_msg_free(m);
            atomic_store(&p->done, -1);
            return;
        }
        atomic_fetch_add(&p->moved, 1);
    }
}

typedef struct {
    lc_sender *s;
    lc_receiver *r;
    int id;
    _Atomic int *seen;
    _Atomic int *errors;
} fw_arg;

static void *fw_producer(void *x)
{
    fw_arg *a = x;
    int rc;
    for (int i = 0; i < FW_PER; i++)
        if ((rc = lc_send(a->s, tag_msg((int64_t)a->id * FW_PER + i), 10000)) != 0) {
            fprintf(stderr, "producer %d: send %d: %s\n", a->id, i, lc_strerror(rc));
            atomic_fetch_add(a->errors, 1);
            break;
        }
    return NULL;
}

static void *fw_consumer(void *x)
{
    fw_arg *a = x;
    lc_msg *m;
    int rc;
    while ((rc = lc_recv(a->r, &m, 10000)) == 0) {
        int64_t v = lc_value_int(lc_msg_root(m));
        lc_msg_free(m);
        if (v < 0 || v >= FW_PROD * FW_PER)
            atomic_fetch_add(a->errors, 1);
        else
            atomic_fetch_add(&a->seen[v], 1);
    }
    if (rc != LC_EOF) {
        fprintf(stderr, "consumer %d: recv: %s\n", a->id, lc_strerror(rc));
        atomic_fetch_add(a->errors, 1);
    }
    return NULL;
}

static void run_forwarder(size_t cap_a, size_t cap_b)
{
    lc_receiver *ra, *rb;
    lc_sender *sa, *sb;
    assert_int_equal(lc_pipe(&ra, &sa, cap_a), 0);
    assert_int_equal(lc_pipe(&rb, &sb, cap_b), 0);
    pump p = { .from = ra, .to = sb };
    pump_run(&p);
    _Atomic int *seen = calloc(FW_PROD * FW_PER, sizeof *seen);
    _Atomic int errors = 0;
    pthread_t th[FW_PROD + 2];
    fw_arg args[FW_PROD + 2];
    for (int i = 0; i < FW_PROD + 2; i++) {
        args[i] = (fw_arg){ .s = sa, .r = rb, .id = i, .seen = seen, .errors = &errors };
        pthread_create(&th[i], NULL, i < FW_PROD ? fw_producer : fw_consumer, &args[i]);
    }
    for (int i = 0; i < FW_PROD; i++)
        pthread_join(th[i], NULL);
    lc_close(sa); /* the pump sees EOF, closes B, consumers end */
    for (int i = FW_PROD; i < FW_PROD + 2; i++)
        pthread_join(th[i], NULL);
    if (atomic_load(&errors))
        fprintf(stderr, "forwarder A cap %zu, B cap %zu: moved %ld, done %d, A waiting s/r %zu/%zu, B waiting s/r %zu/%zu\n",
                cap_a, cap_b, atomic_load(&p.moved), atomic_load(&p.done),
                lc__chan_waiting(sa, NULL, true), lc__chan_waiting(sa, NULL, false),
                lc__chan_waiting(sb, NULL, true), lc__chan_waiting(sb, NULL, false));
    assert_int_equal(atomic_load(&errors), 0);
    assert_int_equal(atomic_load(&p.done), 1);
    assert_int_equal(atomic_load(&p.moved), FW_PROD * FW_PER);
    for (int i = 0; i < FW_PROD * FW_PER; i++)
        if (atomic_load(&seen[i]) != 1)
            fail_msg("message %d forwarded %d times", i, atomic_load(&seen[i]));
    free(seen);
    lc_sender_release(sa);
    lc_receiver_release(ra);
    lc_sender_release(sb);
    lc_receiver_release(rb);
}

static void test_callback_forwarder_exactly_once(void **st)
{
    LC_TEST_DEADLINE(60);
    const char *only = getenv("LC_FW_ONLY");
    if (!only || *only == '0') run_forwarder(0, 0);
    if (!only || *only == '1') run_forwarder(4, 0);
    if (!only || *only == '2') run_forwarder(0, 4);
    if (!only || *only == '3') run_forwarder(16, 16);
}

/* ---- network Senders ----------------------------------------------------- */

enum { OUTBOX = 4 };

typedef struct fake_net {
    pthread_mutex_t mu;
    lc_msg *box[OUTBOX];
    int n;
    bool closed;
    _Atomic int close_calls, release_calls;
    lc_chan *chan;
} fake_net;

static int fn_try_send(void *ctx, lc_msg *m)
{
    fake_net *f = ctx;
    pthread_mutex_lock(&f->mu);
    int rc;
    if (f->closed)
        rc = LC_ECLOSED;
    else if (f->n == OUTBOX)
        rc = LC__WOULD_BLOCK;
    else {
        f->box[f->n++] = m;
        rc = 0;
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

static bool fn_writable(void *ctx)
{
    fake_net *f = ctx;
    pthread_mutex_lock(&f->mu);
    bool w = f->closed || f->n < OUTBOX;
    pthread_mutex_unlock(&f->mu);
    return w;
}

static void fn_close(void *ctx)
{
    fake_net *f = ctx;
    pthread_mutex_lock(&f->mu);
    f->closed = true;
    pthread_mutex_unlock(&f->mu);
    atomic_fetch_add(&f->close_calls, 1);
}

static void fn_release(void *ctx)
{
    fake_net *f = ctx;
    atomic_fetch_add(&f->release_calls, 1);
}

static const lc__net_ops fake_ops = { fn_try_send, fn_writable, fn_close, fn_release, NULL, NULL, NULL };

/* the "carrier" drained by another thread: frees messages, wakes senders */
static int fn_drain(fake_net *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->n;
    for (int i = 0; i < f->n; i++)
        lc_msg_free(f->box[i]);
    f->n = 0;
    pthread_mutex_unlock(&f->mu);
    lc__chan_wake_senders(f->chan);
    return n;
}

typedef struct {
    lc_sender *s;
    int count;
    _Atomic int sent;
    int rc;
} ns_arg;

static void *net_sender_thread(void *x)
{
    ns_arg *a = x;
    for (int i = 0; i < a->count; i++) {
        lc_msg *m = tag_msg(i);
        a->rc = lc_send(a->s, m, 10000);
        if (a->rc != 0) {
            lc_msg_free(m);
            return NULL;
        }
        atomic_fetch_add(&a->sent, 1);
    }
    return NULL;
}

static void test_net_sender_blocks_until_drained_and_closes_once(void **st)
{
    LC_TEST_DEADLINE(20);
    fake_net f = { .mu = PTHREAD_MUTEX_INITIALIZER };
    lc_sender *s = lc__net_sender_new(&fake_ops, &f, &f.chan);
    assert_non_null(s);
    assert_ptr_equal(lc__net_sender_ctx(s, &fake_ops), &f);
    lc_receiver *other_r;
    lc_sender *other_s;
    assert_int_equal(lc_pipe(&other_r, &other_s, 0), 0);
    assert_null(lc__net_sender_ctx(other_s, &fake_ops));

    ns_arg a = { .s = s, .count = 1000 };
    pthread_t t;
    pthread_create(&t, NULL, net_sender_thread, &a);
    int drained = 0;
    while (drained < 1000)
        drained += fn_drain(&f); /* the sender blocks whenever the box is full */
    pthread_join(t, NULL);
    assert_int_equal(a.rc, 0);
    assert_int_equal(atomic_load(&a.sent), 1000);

    /* select over a network send case and an in-memory receive case */
    for (int i = 0; i < OUTBOX; i++)
        assert_int_equal(lc_send(s, tag_msg(i), 0), 0);
    lc_msg *m = tag_msg(99);
    lc_case c[2] = { { .op = LC_CASE_SEND, .sender = s, .msg = m },
                     { .op = LC_CASE_RECV, .receiver = other_r } };
    assert_int_equal(lc_select(c, 2, 0), LC_ETIMEDOUT); /* box full, nothing to receive */
    fn_drain(&f);
    assert_int_equal(lc_select(c, 2, 1000), 0);
    assert_null(c[0].msg);

    assert_int_equal(lc_close(s), 0);
    assert_int_equal(lc_close(s), LC_ECLOSED);
    lc_msg *late = tag_msg(1);
    assert_int_equal(lc_send(s, late, 0), LC_ECLOSED);
    lc_msg_free(late);
    assert_int_equal(atomic_load(&f.close_calls), 1);
    assert_int_equal(atomic_load(&f.release_calls), 0);
    lc_sender_release(s);
    assert_int_equal(atomic_load(&f.close_calls), 1);
    assert_int_equal(atomic_load(&f.release_calls), 1);
    pthread_mutex_lock(&f.mu);
    for (int i = 0; i < f.n; i++)
        lc_msg_free(f.box[i]);
    f.n = 0;
    pthread_mutex_unlock(&f.mu);
    lc_sender_release(other_s);
    lc_receiver_release(other_r);
}

/* Room watches: fire once the ring has the asked room, exactly once, on the
 * receiving thread; cancel withdraws; a released Receiver fires LC_ECLOSED. */
/*
 * lc__close_error (the session's close with an error: LC_EPROTO, LC_ESESSION)
 * on a channel already closed returns LC_ECLOSED and changes nothing: its
 * receivers get LC_EOF, every one of them, buffered or not. It used to set the
 * error before looking, so a second receive got it after a first had LC_EOF.
 */
static void test_close_error_after_close_changes_nothing(void **st)
{
    (void)st;
    for (size_t cap = 0; cap < 5; cap += 4) {
        lc_receiver *r;
        lc_sender *s;
        assert_int_equal(lc_pipe(&r, &s, cap), 0);
        assert_int_equal(lc_close(s), 0);
        lc_msg *m = NULL;
        assert_int_equal(lc_recv(r, &m, 0), LC_EOF);
        assert_int_equal(lc__close_error(s, LC_ESESSION), LC_ECLOSED);
        assert_int_equal(lc_recv(r, &m, 0), LC_EOF);
        lc_sender_release(s);
        lc_receiver_release(r);
        /* and on an open one it is the end */
        assert_int_equal(lc_pipe(&r, &s, cap), 0);
        assert_int_equal(lc__close_error(s, LC_EPROTO), 0);
        assert_int_equal(lc_recv(r, &m, 0), LC_EPROTO);
        assert_int_equal(lc__close_error(s, LC_ESESSION), LC_ECLOSED);
        assert_int_equal(lc_recv(r, &m, 0), LC_EPROTO);
        lc_sender_release(s);
        lc_receiver_release(r);
    }
}

static void test_room_watch(void **st)
{
    LC_TEST_DEADLINE(10);
    (void)st;
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 8), 0);
    cb_record rec = { 0 };
    lc_async *op;
    assert_int_equal(lc__room_watch(s, 4, record_cb, &rec, &op), 0); /* empty: room now */
    for (int i = 0; i < 8; i++)
        assert_int_equal(lc_send(s, tag_msg(i), 0), 0);
    assert_int_equal(lc__room_watch(s, 4, record_cb, &rec, &op), LC__PENDING);
    lc_async *op2;
    assert_int_equal(lc__room_watch(s, 1, record_cb, &rec, &op2), LC_EINVAL); /* one at a time */
    lc_msg *m;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(lc_recv(r, &m, 0), 0);
        assert_int_equal(lc_value_int(lc_msg_root(m)), i);
        lc_msg_free(m);
        assert_int_equal(atomic_load(&rec.calls), 0); /* 1..3 free: not yet */
    }
    assert_int_equal(lc_recv(r, &m, 0), 0);
    lc_msg_free(m);
    assert_int_equal(atomic_load(&rec.calls), 1); /* ran inside that receive */
    assert_int_equal(rec.result, 0);
    /* refill, watch, cancel: never fires */
    for (int i = 0; i < 4; i++)
        assert_int_equal(lc_send(s, tag_msg(i), 0), 0);
    assert_int_equal(lc__room_watch(s, 8, record_cb, &rec, &op), LC__PENDING);
    assert_true(lc__room_cancel(s, op));
    assert_int_equal(lc_recv(r, &m, 0), 0);
    lc_msg_free(m);
    assert_int_equal(atomic_load(&rec.calls), 1);
    /* the last Receiver goes: the watch learns nobody will make room */
    assert_int_equal(lc__room_watch(s, 8, record_cb, &rec, &op), LC__PENDING);
    lc_receiver_release(r);
    assert_int_equal(atomic_load(&rec.calls), 2);
    assert_int_equal(rec.result, LC_ECLOSED);
    lc_msg *late = tag_msg(9);
    assert_int_equal(lc_send(s, late, 0), LC_ECLOSED); /* not taken */
    lc_msg_free(late);
    lc_sender_release(s);
    /* not a ring */
    assert_int_equal(lc_pipe(&r, &s, 0), 0);
    assert_int_equal(lc__room_watch(s, 1, record_cb, &rec, &op), LC_EINVAL);
    lc_sender_release(s);
    lc_receiver_release(r);
}

/* A filler that only ever sends when a watch said there is room, against a
 * consumer on another thread: every message arrives, in order, and the
 * filler never waits forever (a lost wake-up would hang to the deadline). */
typedef struct {
    lc_sender *s;
    _Atomic long next;     /* next tag to send */
    long total;
    _Atomic int done;
} filler;

static void fill(filler *f);

static void fill_cb(void *ctx, int result, lc_msg *m)
{
    filler *f = ctx;
    (void)m;
    assert_int_equal(result, 0);
    fill(f);
}

static void fill(filler *f)
{
    for (;;) {
        long t = atomic_load(&f->next);
        if (t == f->total) {
            atomic_store(&f->done, 1);
            return;
        }
        lc_msg *m = tag_msg(t);
        int rc = lc_send(f->s, m, 0);
        if (rc == 0) {
            atomic_store(&f->next, t + 1);
            continue;
        }
        assert_int_equal(rc, LC_ETIMEDOUT);
        lc_msg_free(m);
        lc_async *op;
        rc = lc__room_watch(f->s, 16, fill_cb, f, &op);
        if (rc == LC__PENDING)
            return; /* fill_cb goes on, on the consumer's thread */
        assert_int_equal(rc, 0);
    }
}

static void test_room_watch_refills_in_batches(void **st)
{
    LC_TEST_DEADLINE(30);
    (void)st;
    lc_receiver *r;
    filler f = { .total = 200000 };
    assert_int_equal(lc_pipe(&r, &f.s, 64), 0);
    fill(&f);
    for (long i = 0; i < f.total; i++) {
        lc_msg *m;
        /* the filler only runs inside our receives: a ring left empty
         * with nobody watching would time out here */
        int rc = lc_recv(r, &m, 5000);
        assert_int_equal(rc, 0);
        assert_int_equal(lc_value_int(lc_msg_root(m)), i);
        lc_msg_free(m);
    }
    assert_int_equal(atomic_load(&f.done), 1);
    lc_sender_release(f.s);
    lc_receiver_release(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_async_recv_completes_on_send, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_room_watch, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_close_error_after_close_changes_nothing, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_room_watch_refills_in_batches, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_async_send_completes_on_receive, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_async_close_and_cancel, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_callback_forwarder_exactly_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_net_sender_blocks_until_drained_and_closes_once, lc_test_setup, lc_test_teardown),
    };
    return cmocka_run_group_tests_name("core/async", tests, NULL, NULL);
}
