/*
 * test_session_oom.c - out of memory inside a session: a chosen allocation
 * fails (calloc is wrapped with the linker's --wrap, see CMakeLists.txt, as
 * in tests/msg/test_msg_oom.c), and what the library promises for a failed
 * call must still hold.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "libchan.h"
#include "nettest.h"
#include "testutil.h"

/* ---- fault injection ------------------------------------------------------ */

void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);

/* Armed on one thread only: the session's engine thread allocates too. */
static _Thread_local bool armed;
static atomic_bool failed;

/* A stream table's growth past its first 16 slots (lc_map, map.c) fails. */
void *__wrap_calloc(size_t n, size_t size)
{
    if (armed && size == sizeof(((lc_map *)0)->slots[0]) && n > 16) {
        armed = false;
        atomic_store(&failed, true);
        return NULL;
    }
    return __real_calloc(n, size);
}

/* ---- tests --------------------------------------------------------------- */

enum { NRECV = 8, NSEND = 8 };

/*
 * lc_send of a message carrying Receivers and Senders, each of which opens a
 * sub-stream: the stream table cannot grow while the sub-streams register.
 * The send fails (LC_ESESSION: the session ends of LC_ENOMEM), and the
 * message is still the caller's with its channel ends (libchan.h): each
 * still works in memory. The session's end closed the Senders and abandoned
 * the Receivers that had been registered before the failure (a review
 * helper: "channel closed", "session ended").
 */
static void test_send_fails_on_stream_table_growth_and_keeps_the_ends(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    char url[128];
    nt_pair p;
    nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, NULL);
    lc_sender *out;
    assert_int_equal(lc_session_sender(p.client, &out), 0);
    lc_receiver *r[NRECV], *pr[NSEND];
    lc_sender *s[NRECV], *ps[NSEND];
    lc_msg *m = lc_msg_new();
    lc_value *arr = lc_new_array(m);
    for (int i = 0; i < NRECV; i++) {
        assert_int_equal(lc_pipe(&r[i], &s[i], 4), 0);
        assert_int_equal(lc_array_append(m, arr, lc_new_receiver(m, r[i])), 0);
    }
    for (int i = 0; i < NSEND; i++) {
        assert_int_equal(lc_pipe(&pr[i], &ps[i], 4), 0);
        assert_int_equal(lc_array_append(m, arr, lc_new_sender(m, lc_sender_retain(ps[i]))), 0);
    }
    assert_int_equal(lc_msg_set_root(m, arr), 0);
    atomic_store(&failed, false);
    armed = true;
    int rc = lc_send(out, m, 5000);
    armed = false;
    assert_true(atomic_load(&failed)); /* the table's growth was what failed */
    assert_int_equal(rc, LC_ESESSION);
    assert_int_equal(lc_session_error(p.client), LC_ENOMEM);
    /* the message's Receivers: their Senders still reach them */
    int broken = 0;
    for (int i = 0; i < NRECV; i++) {
        lc_receiver *got = lc_value_take_receiver(lc_array_get(lc_msg_root(m), (size_t)i), NULL);
        assert_non_null(got);
        int src = lc_send(s[i], nt_msg_n(i), 0);
        lc_msg *x = NULL;
        int rrc = src == 0 ? lc_recv(got, &x, 5000) : src;
        if (rrc != 0) {
            fprintf(stderr, "Receiver %d of the failed message: %s\n", i, lc_strerror(rrc));
            broken++;
        } else {
            assert_int_equal(nt_msg_get_n(x), i);
        }
        lc_msg_free(x);
        lc_receiver_release(got);
    }
    /* the message's Senders: still open, into their Receivers */
    for (int i = 0; i < NSEND; i++) {
        lc_sender *got = lc_value_take_sender(lc_array_get(lc_msg_root(m), (size_t)(NRECV + i)), NULL);
        assert_non_null(got);
        lc_msg *n = nt_msg_n(100 + i);
        int src = lc_send(got, n, 0);
        lc_msg *x = NULL;
        int rrc = src == 0 ? lc_recv(pr[i], &x, 5000) : src;
        if (src != 0)
            lc_msg_free(n);
        if (rrc != 0) {
            fprintf(stderr, "Sender %d of the failed message: %s\n", i, lc_strerror(rrc));
            broken++;
        } else {
            assert_int_equal(nt_msg_get_n(x), 100 + i);
        }
        lc_msg_free(x);
        lc_sender_release(got);
    }
    lc_msg_free(m);
    for (int i = 0; i < NRECV; i++)
        lc_sender_release(s[i]);
    for (int i = 0; i < NSEND; i++) {
        lc_sender_release(ps[i]);
        lc_receiver_release(pr[i]);
    }
    lc_sender_release(out);
    nt_close_pair(&p);
    assert_int_equal(broken, 0);
}

int main(void)
{
    lc__engine_default(); /* (its fds stay for the process: not counted per test) */
    nt_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_send_fails_on_stream_table_growth_and_keeps_the_ends, lc_test_setup,
                                        lc_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
