/*
 * test_session_nest.c - channels nested several levels deep over one session,
 * over unix and TCP. The chain (each arrow is a channel end carried inside a
 * message sent on the previous level's channel):
 *
 *   level 0  top-level channel `req`, client -> server
 *   level 1  req carries {Op, Ret: S1}: a Sender of a client pipe; the server
 *            replies on it
 *   level 2  the server's reply on S1 is {Sub: S2}: a Sender of a server pipe
 *            (the server keeps its Receiver); the client sends requests on it
 *   level 3  each request on S2 is {N, Ret: S3}: a Sender of another client
 *            pipe; the server answers on it
 *   level 4  each answer on S3 is {Sq, Feed: R4}: a Receiver of a server pipe
 *            holding N messages; the client drains it
 *
 * Messages flow at every level, requests are pipelined, and closes travel
 * back down the chain (EOF at every level).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "nettest.h"

#define NREQ 10

typedef struct {
    lc_session *s;
    int rc;          /* first failure, 0 if none */
    int line;        /* where it failed */
    int handled;
} nest_server;

#define SCHECK(cond)                       \
    do {                                   \
        if (!(cond)) {                     \
            if (a->rc == 0)                \
                a->rc = -1;                \
            a->line = __LINE__;            \
            goto out;                      \
        }                                  \
    } while (0)

static void *nest_server_fn(void *x)
{
    nest_server *a = x;
    lc_receiver *top = NULL, *r2 = NULL;
    lc_sender *ret1 = NULL, *s2 = NULL;
    lc_msg *m = NULL;
    SCHECK(lc_session_receiver(a->s, &top, 5000) == 0);
    /* level 1: the request with the first reply Sender */
    SCHECK(lc_recv(top, &m, 5000) == 0);
    const char *op;
    SCHECK(lc_unpack(m, "{s:s, s:S}", "Op", &op, "Ret", &ret1) == 0);
    SCHECK(strcmp(op, "open") == 0);
    lc_msg_free(m);
    m = NULL;
    /* level 2: reply with a Sender of a channel whose Receiver we keep */
    SCHECK(lc_pipe(&r2, &s2, 4) == 0);
    m = lc_pack("{s:S, s:s}", "Sub", s2, "Hello", "level2");
    s2 = NULL; /* taken by lc_pack */
    SCHECK(m != NULL);
    SCHECK(lc_send(ret1, m, 5000) == 0);
    m = NULL;
    /* level 3: requests on S2, each with its own reply Sender */
    int rc;
    while ((rc = lc_recv(r2, &m, 5000)) == 0) {
        int n;
        lc_sender *ret3;
        SCHECK(lc_unpack(m, "{s:i, s:S}", "N", &n, "Ret", &ret3) == 0);
        lc_msg_free(m);
        m = NULL;
        /* level 4: a Receiver with n messages in it, then closed */
        lc_receiver *r4;
        lc_sender *s4;
        SCHECK(lc_pipe(&r4, &s4, (size_t)n + 1) == 0);
        for (int j = 0; j < n; j++)
            SCHECK(lc_send(s4, lc_pack("{s:i, s:i}", "N", n, "J", j), 0) == 0);
        lc_close(s4);
        lc_sender_release(s4);
        lc_msg *rep = lc_pack("{s:i, s:R}", "Sq", n * n, "Feed", r4);
        SCHECK(rep != NULL);
        rc = lc_send(ret3, rep, 5000);
        if (rc != 0)
            lc_msg_free(rep);
        lc_close(ret3);
        lc_sender_release(ret3);
        SCHECK(rc == 0);
        a->handled++;
    }
    SCHECK(rc == LC_EOF); /* the client closed S2 */
    /* back on level 1: a summary, then the end of the reply channel */
    SCHECK(lc_send(ret1, lc_pack("{s:i}", "Done", a->handled), 5000) == 0);
    SCHECK(lc_close(ret1) == 0);
    /* level 0 ends when the client closes req */
    SCHECK(lc_recv(top, &m, 5000) == LC_EOF);
    m = NULL;
out:
    lc_msg_free(m);
    lc_sender_release(s2);
    lc_receiver_release(r2);
    lc_sender_release(ret1);
    lc_receiver_release(top);
    return NULL;
}

static void run_nest(const char *url)
{
    nt_pair p;
    nt_open_pair(&p, url, NULL, NULL);
    nest_server sa = { .s = p.server };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, nest_server_fn, &sa), 0);

    /* level 0 and 1 */
    lc_sender *req;
    assert_int_equal(lc_session_sender(p.client, &req), 0);
    lc_receiver *r1;
    lc_sender *s1;
    assert_int_equal(lc_pipe(&r1, &s1, 2), 0);
    assert_int_equal(lc_send(req, lc_pack("{s:s, s:S}", "Op", "open", "Ret", s1), 5000), 0);

    /* level 2: the server's Sender comes back on our pipe */
    lc_msg *m;
    assert_int_equal(lc_recv(r1, &m, 5000), 0);
    lc_sender *sub;
    const char *hello;
    assert_int_equal(lc_unpack(m, "{s:S, s:s}", "Sub", &sub, "Hello", &hello), 0);
    assert_string_equal(hello, "level2");
    lc_msg_free(m);

    /* level 3: pipelined requests, each with a reply Sender */
    lc_receiver *r3[NREQ];
    for (int i = 0; i < NREQ; i++) {
        lc_sender *s3;
        assert_int_equal(lc_pipe(&r3[i], &s3, 1), 0);
        assert_int_equal(lc_send(sub, lc_pack("{s:i, s:S}", "N", i, "Ret", s3), 5000), 0);
    }
    for (int i = 0; i < NREQ; i++) {
        assert_int_equal(lc_recv(r3[i], &m, 5000), 0);
        int sq;
        lc_receiver *feed;
        assert_int_equal(lc_unpack(m, "{s:i, s:R}", "Sq", &sq, "Feed", &feed), 0);
        assert_int_equal(sq, i * i);
        lc_msg_free(m);
        /* level 4: the Receiver carries i messages, then ends */
        for (int j = 0; j < i; j++) {
            assert_int_equal(lc_recv(feed, &m, 5000), 0);
            int n, jj;
            assert_int_equal(lc_unpack(m, "{s:i, s:i}", "N", &n, "J", &jj), 0);
            assert_int_equal(n, i);
            assert_int_equal(jj, j);
            lc_msg_free(m);
        }
        assert_int_equal(lc_recv(feed, &m, 5000), LC_EOF);
        lc_receiver_release(feed);
        /* the server closed its level-3 reply Sender */
        assert_int_equal(lc_recv(r3[i], &m, 5000), LC_EOF);
        lc_receiver_release(r3[i]);
    }

    /* closing level 2 ends the server's loop; level 1 gets the summary and EOF */
    assert_int_equal(lc_close(sub), 0);
    lc_sender_release(sub);
    assert_int_equal(lc_recv(r1, &m, 5000), 0);
    int done;
    assert_int_equal(lc_unpack(m, "{s:i}", "Done", &done), 0);
    assert_int_equal(done, NREQ);
    lc_msg_free(m);
    assert_int_equal(lc_recv(r1, &m, 5000), LC_EOF);
    lc_receiver_release(r1);

    assert_int_equal(lc_close(req), 0);
    pthread_join(t, NULL);
    if (sa.rc != 0)
        fprintf(stderr, "server failed at line %d\n", sa.line);
    assert_int_equal(sa.rc, 0);
    assert_int_equal(sa.handled, NREQ);
    lc_sender_release(req);
    /* both sessions are still healthy */
    assert_int_equal(lc_session_error(p.client), 0);
    assert_int_equal(lc_session_error(p.server), 0);
    nt_close_pair(&p);
}

static void test_nest_four_levels_over_unix(void **st)
{
    LC_TEST_DEADLINE(30);
    char url[128];
    run_nest(nt_unix_url(url, sizeof url));
}

static void test_nest_four_levels_over_tcp(void **st)
{
    LC_TEST_DEADLINE(30);
    run_nest("tcp://127.0.0.1:0");
}

/*
 * The same chain with the roles of the top level swapped and a Receiver at
 * level 1: the server opens the top-level channel and sends {Jobs: R}, a
 * Receiver of a server pipe; every job on it carries a Sender (level 2) on
 * which the client answers with {Ack: S} (level 3), a Sender of a client
 * pipe the server then writes a final word on.
 */
typedef struct {
    lc_session *s;
    int rc, line;
    int acks;
} rev_server;

static void *rev_server_fn(void *x)
{
    rev_server *a = x;
    lc_sender *top = NULL, *js = NULL;
    lc_receiver *jr = NULL;
    lc_receiver *replies[NREQ] = { 0 };
    lc_msg *m = NULL;
    SCHECK(lc_session_sender(a->s, &top) == 0);
    SCHECK(lc_pipe(&jr, &js, NREQ) == 0);
    SCHECK(lc_send(top, lc_pack("{s:R}", "Jobs", jr), 5000) == 0);
    jr = NULL;
    for (int i = 0; i < NREQ; i++) {
        lc_sender *rs;
        SCHECK(lc_pipe(&replies[i], &rs, 1) == 0);
        SCHECK(lc_send(js, lc_pack("{s:i, s:S}", "Job", i, "Ret", rs), 5000) == 0);
    }
    SCHECK(lc_close(js) == 0);
    for (int i = 0; i < NREQ; i++) {
        SCHECK(lc_recv(replies[i], &m, 5000) == 0);
        int job;
        lc_sender *ack;
        SCHECK(lc_unpack(m, "{s:i, s:S}", "Job", &job, "Ack", &ack) == 0);
        lc_msg_free(m);
        m = NULL;
        int rc = job == i ? 0 : -1;
        if (rc == 0) {
            lc_msg *w = lc_pack("{s:i}", "Final", job * 3);
            rc = lc_send(ack, w, 5000);
            if (rc != 0)
                lc_msg_free(w);
        }
        lc_close(ack);
        lc_sender_release(ack);
        SCHECK(rc == 0);
        SCHECK(lc_recv(replies[i], &m, 5000) == LC_EOF);
        a->acks++;
    }
    SCHECK(lc_close(top) == 0);
out:
    lc_msg_free(m);
    for (int i = 0; i < NREQ; i++)
        lc_receiver_release(replies[i]);
    lc_receiver_release(jr);
    lc_sender_release(js);
    lc_sender_release(top);
    return NULL;
}

static void run_reverse(const char *url)
{
    nt_pair p;
    nt_open_pair(&p, url, NULL, NULL);
    rev_server sa = { .s = p.server };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, rev_server_fn, &sa), 0);

    lc_receiver *top;
    assert_int_equal(lc_session_receiver(p.client, &top, 5000), 0);
    lc_msg *m;
    assert_int_equal(lc_recv(top, &m, 5000), 0);
    lc_receiver *jobs;
    assert_int_equal(lc_unpack(m, "{s:R}", "Jobs", &jobs), 0);
    lc_msg_free(m);
    lc_receiver *finals[NREQ];
    for (int i = 0; i < NREQ; i++) {
        assert_int_equal(lc_recv(jobs, &m, 5000), 0);
        int job;
        lc_sender *ret;
        assert_int_equal(lc_unpack(m, "{s:i, s:S}", "Job", &job, "Ret", &ret), 0);
        assert_int_equal(job, i);
        lc_msg_free(m);
        lc_sender *as;
        assert_int_equal(lc_pipe(&finals[i], &as, 1), 0);
        assert_int_equal(lc_send(ret, lc_pack("{s:i, s:S}", "Job", job, "Ack", as), 5000), 0);
        assert_int_equal(lc_close(ret), 0);
        lc_sender_release(ret);
    }
    assert_int_equal(lc_recv(jobs, &m, 5000), LC_EOF);
    lc_receiver_release(jobs);
    for (int i = 0; i < NREQ; i++) {
        assert_int_equal(lc_recv(finals[i], &m, 5000), 0);
        int f;
        assert_int_equal(lc_unpack(m, "{s:i}", "Final", &f), 0);
        assert_int_equal(f, i * 3);
        lc_msg_free(m);
        assert_int_equal(lc_recv(finals[i], &m, 5000), LC_EOF);
        lc_receiver_release(finals[i]);
    }
    assert_int_equal(lc_recv(top, &m, 5000), LC_EOF);
    lc_receiver_release(top);
    pthread_join(t, NULL);
    if (sa.rc != 0)
        fprintf(stderr, "server failed at line %d\n", sa.line);
    assert_int_equal(sa.rc, 0);
    assert_int_equal(sa.acks, NREQ);
    nt_close_pair(&p);
}

static void test_nest_receiver_first_over_unix(void **st)
{
    LC_TEST_DEADLINE(30);
    char url[128];
    run_reverse(nt_unix_url(url, sizeof url));
}

static void test_nest_receiver_first_over_tcp(void **st)
{
    LC_TEST_DEADLINE(30);
    run_reverse("tcp://127.0.0.1:0");
}

int main(void)
{
    lc__engine_default(); /* its fds live as long as the process */
    nt_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_nest_four_levels_over_unix, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_nest_four_levels_over_tcp, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_nest_receiver_first_over_unix, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_nest_receiver_first_over_tcp, lc_test_setup, lc_test_teardown),
    };
    return cmocka_run_group_tests_name("net/session_nest", tests, NULL, NULL);
}
