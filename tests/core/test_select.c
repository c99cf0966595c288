/*
 * test_select.c - lc_select over in-memory channels: exactly one case fires,
 * the choice among ready cases is fair, blocked selects are woken by sends,
 * receives and close, and timeouts leave messages with their owner.
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

static int64_t tag_of(lc_msg *m)
{
    return lc_value_int(lc_msg_root(m));
}

/* With every case always ready, each must fire about 1/k of the time. */
static void test_select_is_fair_over_100k_rounds(void **st)
{
    LC_TEST_DEADLINE(60);
    enum { K = 3, ROUNDS = 100000 };
    lc_receiver *r[K];
    lc_sender *s[K];
    for (int i = 0; i < K; i++) {
        assert_int_equal(lc_pipe(&r[i], &s[i], 1), 0);
        assert_int_equal(lc_send(s[i], tag_msg(i), 0), 0);
    }
    long fired[K] = { 0 };
    int longest_streak = 0, streak = 0, prev = -1;
    for (int round = 0; round < ROUNDS; round++) {
        lc_case c[K];
        for (int i = 0; i < K; i++)
            c[i] = (lc_case){ .op = LC_CASE_RECV, .receiver = r[i] };
        int idx = lc_select(c, K, 0);
        assert_true(idx >= 0 && idx < K);
        assert_int_equal(c[idx].result, 0);
        assert_int_equal(tag_of(c[idx].msg), idx);
        for (int i = 0; i < K; i++)
            if (i != idx)
                assert_null(c[i].msg); /* exactly one case fired */
        fired[idx]++;
        streak = idx == prev ? streak + 1 : 1;
        if (streak > longest_streak)
            longest_streak = streak;
        prev = idx;
        /* put the message back so every case stays ready */
        assert_int_equal(lc_send(s[idx], c[idx].msg, 0), 0);
    }
    for (int i = 0; i < K; i++) {
        double share = (double)fired[i] / ROUNDS;
        if (share < 1.0 / K - 0.01 || share > 1.0 / K + 0.01)
            fail_msg("case %d fired %.4f of the rounds, expected %.4f +- 0.01", i, share, 1.0 / K);
    }
    /* a uniform choice makes a streak of 20 among 3 cases astronomically rare */
    assert_true(longest_streak < 20);
    for (int i = 0; i < K; i++) {
        lc_sender_release(s[i]);
        lc_receiver_release(r[i]);
    }
}

static void test_select_mixes_send_and_receive_cases(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r1, *r2;
    lc_sender *s1, *s2;
    assert_int_equal(lc_pipe(&r1, &s1, 0), 0); /* nobody receives: send case blocked */
    assert_int_equal(lc_pipe(&r2, &s2, 1), 0);
    lc_msg *out = tag_msg(1);
    lc_case c[3] = {
        { .op = LC_CASE_SEND, .sender = s1, .msg = out },
        { .op = LC_CASE_RECV, .receiver = r2 },
        { .op = LC_CASE_RECV, .receiver = NULL }, /* a nil channel: ignored */
    };
    assert_int_equal(lc_select(c, 3, 0), LC_ETIMEDOUT);
    assert_ptr_equal(c[0].msg, out);
    assert_int_equal(lc_send(s2, tag_msg(2), 0), 0);
    assert_int_equal(lc_select(c, 3, 1000), 1);
    assert_int_equal(tag_of(c[1].msg), 2);
    assert_ptr_equal(c[0].msg, out); /* the send case did not fire: still ours */
    lc_msg_free(c[1].msg);
    /* a buffered send case fires when there is room */
    lc_case c2[1] = { { .op = LC_CASE_SEND, .sender = s2, .msg = out } };
    assert_int_equal(lc_select(c2, 1, 0), 0);
    assert_null(c2[0].msg); /* taken */
    assert_int_equal(c2[0].result, 0);
    lc_sender_release(s1);
    lc_receiver_release(r1);
    lc_sender_release(s2);
    lc_receiver_release(r2);
}

typedef struct {
    lc_case *cases;
    size_t n;
    int64_t timeout;
    int ret;
} select_arg;

static void *select_thread(void *p)
{
    select_arg *a = p;
    a->ret = lc_select(a->cases, a->n, a->timeout);
    return NULL;
}

static void test_blocked_select_woken_by_send_on_one_case(void **st)
{
    LC_TEST_DEADLINE(10);
    enum { K = 4 };
    lc_receiver *r[K];
    lc_sender *s[K];
    lc_case c[K];
    for (int i = 0; i < K; i++) {
        assert_int_equal(lc_pipe(&r[i], &s[i], 0), 0);
        c[i] = (lc_case){ .op = LC_CASE_RECV, .receiver = r[i] };
    }
    select_arg a = { .cases = c, .n = K, .timeout = -1 };
    pthread_t t;
    pthread_create(&t, NULL, select_thread, &a);
    WAIT_UNTIL(lc__chan_waiting(NULL, r[2], false) == 1);
    assert_int_equal(lc_send(s[2], tag_msg(22), 1000), 0); /* rendezvous with the select */
    pthread_join(t, NULL);
    assert_int_equal(a.ret, 2);
    assert_int_equal(tag_of(c[2].msg), 22);
    lc_msg_free(c[2].msg);
    /* the select left no waiter behind on the other channels */
    for (int i = 0; i < K; i++) {
        assert_int_equal(lc__chan_waiting(NULL, r[i], false), 0);
        lc_msg *m = tag_msg(i);
        assert_int_equal(lc_send(s[i], m, 0), LC_ETIMEDOUT); /* nobody receives now */
        lc_msg_free(m);
        lc_sender_release(s[i]);
        lc_receiver_release(r[i]);
    }
}

static void test_blocked_select_send_case_taken_by_receiver(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r1, *r2;
    lc_sender *s1, *s2;
    assert_int_equal(lc_pipe(&r1, &s1, 0), 0);
    assert_int_equal(lc_pipe(&r2, &s2, 0), 0);
    lc_msg *m1 = tag_msg(1), *m2 = tag_msg(2);
    lc_case c[2] = { { .op = LC_CASE_SEND, .sender = s1, .msg = m1 },
                     { .op = LC_CASE_SEND, .sender = s2, .msg = m2 } };
    select_arg a = { .cases = c, .n = 2, .timeout = 5000 };
    pthread_t t;
    pthread_create(&t, NULL, select_thread, &a);
    WAIT_UNTIL(lc__chan_waiting(s2, NULL, true) == 1);
    lc_msg *got;
    assert_int_equal(lc_recv(r2, &got, 1000), 0);
    assert_ptr_equal(got, m2);
    pthread_join(t, NULL);
    assert_int_equal(a.ret, 1);
    assert_null(c[1].msg);
    assert_ptr_equal(c[0].msg, m1); /* the other offer was withdrawn, still ours */
    assert_int_equal(lc_recv(r1, &got, 0), LC_ETIMEDOUT);
    lc_msg_free(m1);
    lc_msg_free(m2);
    lc_sender_release(s1);
    lc_receiver_release(r1);
    lc_sender_release(s2);
    lc_receiver_release(r2);
}

static void test_close_wakes_blocked_select(void **st)
{
    LC_TEST_DEADLINE(10);
    lc_receiver *r1, *r2;
    lc_sender *s1, *s2;
    assert_int_equal(lc_pipe(&r1, &s1, 0), 0);
    assert_int_equal(lc_pipe(&r2, &s2, 0), 0);
    lc_case c[2] = { { .op = LC_CASE_RECV, .receiver = r1 }, { .op = LC_CASE_RECV, .receiver = r2 } };
    select_arg a = { .cases = c, .n = 2, .timeout = -1 };
    pthread_t t;
    pthread_create(&t, NULL, select_thread, &a);
    WAIT_UNTIL(lc__chan_waiting(NULL, r1, false) == 1);
    lc_close(s1);
    pthread_join(t, NULL);
    assert_int_equal(a.ret, 0);
    assert_int_equal(c[0].result, LC_EOF);
    assert_null(c[0].msg);
    lc_sender_release(s1);
    lc_receiver_release(r1);
    lc_sender_release(s2);
    lc_receiver_release(r2);
}

/* Many selecting consumers against many producers: every message exactly once. */
enum { SEL_PROD = 3, SEL_CONS = 3, SEL_PER = 20000 };

typedef struct {
    lc_sender *s[2];
    lc_receiver *r[2];
    int id;
    _Atomic int *seen;
    _Atomic int *errors;
} sel_arg;

static void *sel_producer(void *p)
{
    sel_arg *a = p;
    for (int i = 0; i < SEL_PER; i++) {
        lc_msg *m = lc_msg_new();
        lc_msg_set_root(m, lc_new_int(m, (int64_t)a->id * SEL_PER + i));
        /* offer on both channels; whichever has a taker first gets it */
        lc_case c[2] = { { .op = LC_CASE_SEND, .sender = a->s[0], .msg = m },
                         { .op = LC_CASE_SEND, .sender = a->s[1], .msg = m } };
        int idx = lc_select(c, 2, 10000);
        if (idx < 0 || c[idx].result != 0) {
            atomic_fetch_add(a->errors, 1);
            lc_msg_free(m);
            break;
        }
        if (c[1 - idx].msg != m) /* the other case must still hold it */
            atomic_fetch_add(a->errors, 1);
    }
    return NULL;
}

static void *sel_consumer(void *p)
{
    sel_arg *a = p;
    int open_ = 2;
    lc_receiver *rs[2] = { a->r[0], a->r[1] };
    while (open_ > 0) {
        lc_case c[2] = { { .op = LC_CASE_RECV, .receiver = rs[0] }, { .op = LC_CASE_RECV, .receiver = rs[1] } };
        int idx = lc_select(c, 2, 10000);
        if (idx < 0) {
            atomic_fetch_add(a->errors, 1);
            break;
        }
        if (c[idx].result == LC_EOF) {
            rs[idx] = NULL; /* a closed channel drops out, like a nil channel */
            open_--;
            continue;
        }
        int64_t v = lc_value_int(lc_msg_root(c[idx].msg));
        lc_msg_free(c[idx].msg);
        if (v < 0 || v >= SEL_PROD * SEL_PER)
            atomic_fetch_add(a->errors, 1);
        else
            atomic_fetch_add(&a->seen[v], 1);
    }
    return NULL;
}

static void run_select_stress(size_t cap0, size_t cap1)
{
    lc_receiver *r[2];
    lc_sender *s[2];
    assert_int_equal(lc_pipe(&r[0], &s[0], cap0), 0);
    assert_int_equal(lc_pipe(&r[1], &s[1], cap1), 0);
    _Atomic int *seen = calloc(SEL_PROD * SEL_PER, sizeof *seen);
    _Atomic int errors = 0;
    pthread_t th[SEL_PROD + SEL_CONS];
    sel_arg args[SEL_PROD + SEL_CONS];
    for (int i = 0; i < SEL_PROD + SEL_CONS; i++) {
        args[i] = (sel_arg){ .s = { s[0], s[1] }, .r = { r[0], r[1] }, .id = i, .seen = seen, .errors = &errors };
        pthread_create(&th[i], NULL, i < SEL_PROD ? sel_producer : sel_consumer, &args[i]);
    }
    for (int i = 0; i < SEL_PROD; i++)
        pthread_join(th[i], NULL);
    lc_close(s[0]);
    lc_close(s[1]);
    for (int i = SEL_PROD; i < SEL_PROD + SEL_CONS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&errors), 0);
    for (int i = 0; i < SEL_PROD * SEL_PER; i++)
        if (atomic_load(&seen[i]) != 1)
            fail_msg("message %d delivered %d times", i, atomic_load(&seen[i]));
    free(seen);
    for (int i = 0; i < 2; i++) {
        lc_sender_release(s[i]);
        lc_receiver_release(r[i]);
    }
}

static void test_select_stress_unbuffered_exactly_once(void **st)
{
    LC_TEST_DEADLINE(60);
    run_select_stress(0, 0);
}

static void test_select_stress_buffered_exactly_once(void **st)
{
    LC_TEST_DEADLINE(60);
    run_select_stress(8, 8);
}

/* one buffered ring and one unbuffered hand-off channel in the same selects */
static void test_select_stress_mixed_exactly_once(void **st)
{
    LC_TEST_DEADLINE(60);
    run_select_stress(0, 3);
}

static void test_select_same_channel_twice_and_many_cases(void **st)
{
    LC_TEST_DEADLINE(10);
    enum { K = 40 }; /* more than fit the select's stack scratch */
    lc_receiver *r;
    lc_sender *s;
    assert_int_equal(lc_pipe(&r, &s, 1), 0);
    lc_case c[K];
    for (int i = 0; i < K; i++)
        c[i] = (lc_case){ .op = LC_CASE_RECV, .receiver = r };
    assert_int_equal(lc_select(c, K, 0), LC_ETIMEDOUT);
    assert_int_equal(lc_send(s, tag_msg(5), 0), 0);
    int idx = lc_select(c, K, 0);
    assert_true(idx >= 0 && idx < K);
    assert_int_equal(tag_of(c[idx].msg), 5);
    lc_msg_free(c[idx].msg);
    /* blocked on K cases of one channel, woken by one send */
    for (int i = 0; i < K; i++)
        c[i] = (lc_case){ .op = LC_CASE_RECV, .receiver = r };
    select_arg a = { .cases = c, .n = K, .timeout = 5000 };
    pthread_t t;
    pthread_create(&t, NULL, select_thread, &a);
    WAIT_UNTIL(lc__chan_waiting(NULL, r, false) == K);
    assert_int_equal(lc_send(s, tag_msg(6), 1000), 0);
    pthread_join(t, NULL);
    assert_true(a.ret >= 0 && a.ret < K);
    assert_int_equal(tag_of(c[a.ret].msg), 6);
    lc_msg_free(c[a.ret].msg);
    assert_int_equal(lc__chan_waiting(NULL, r, false), 0);
    lc_sender_release(s);
    lc_receiver_release(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_select_is_fair_over_100k_rounds, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_select_mixes_send_and_receive_cases, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_blocked_select_woken_by_send_on_one_case, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_blocked_select_send_case_taken_by_receiver, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_close_wakes_blocked_select, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_select_stress_unbuffered_exactly_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_select_stress_buffered_exactly_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_select_stress_mixed_exactly_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_select_same_channel_twice_and_many_cases, lc_test_setup, lc_test_teardown),
    };
    return cmocka_run_group_tests_name("core/select", tests, NULL, NULL);
}
