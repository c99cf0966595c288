/*
 * test_session_chaos.c - random channel operations from six threads at once:
 * lc_send, lc_recv, lc_select (2-4 cases), lc_send_last on reply channels,
 * byte streams (pipes: passed as fds on unix, pumped on TCP) and Receivers
 * sent to be read remotely (pumped by the session), over in-memory channels
 * (rings and unbuffered) and network Senders of two session pairs (unix and
 * TCP), while in-memory channels are closed and replaced under the threads.
 * In the second run one session pair is freed midway; in the third it is
 * first closed gracefully under the traffic.
 *
 * What it checks: no call hangs (a watchdog fails the test when no
 * operation completes for 10 s), every thread finishes, results are only
 * the expected codes, and, under the sanitizers, no race, no use after free
 * and nothing left allocated once everything is released (LeakSanitizer at
 * exit; the suite's fd count).
 *
 * It found that lc_session_free left the session allocated when a channel
 * nobody had accepted was full (test_free_with_a_full_unaccepted_channel).
 * Messages carrying a Sender travel only on network Senders and are answered
 * at once: a message queued in a channel whose Sender it carries would be a
 * reference cycle of the test's own making.
 * LC_STRESS_SCALE=n multiplies the operations (default 1).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>

#include "nettest.h"

enum { NPOOL = 8, NWORK = 6, NNET_PER_PAIR = 4 };

typedef struct chaos {
    pthread_mutex_t mu; /* the pool's slots */
    lc_sender *pool_s[NPOOL];
    lc_receiver *pool_r[NPOOL];
    lc_sender *net_s[2 * NNET_PER_PAIR];
    int nnet;
    long ops_per_worker;
    atomic_long progress;
    atomic_int stop;
    atomic_int errors; /* results no operation may give */
    atomic_int done;   /* workers finished */
} chaos;

static unsigned rnd(unsigned *st)
{
    *st = *st * 1103515245u + 12345u;
    return *st >> 8;
}

/* Retained handles of pool slot i (either may be NULL: not wanted). */
static void pool_get(chaos *c, int i, lc_sender **s, lc_receiver **r)
{
    pthread_mutex_lock(&c->mu);
    if (s)
        *s = lc_sender_retain(c->pool_s[i]);
    if (r)
        *r = lc_receiver_retain(c->pool_r[i]);
    pthread_mutex_unlock(&c->mu);
}

/* Closes slot i's channel and puts a new one in its place. */
static void pool_renew(chaos *c, int i, unsigned *st)
{
    lc_sender *s;
    lc_receiver *r;
    if (lc_pipe(&r, &s, rnd(st) % 2 ? 4 : 0) != 0) {
        atomic_fetch_add(&c->errors, 1);
        return;
    }
    pthread_mutex_lock(&c->mu);
    lc_sender *os = c->pool_s[i];
    lc_receiver *orr = c->pool_r[i];
    c->pool_s[i] = s;
    c->pool_r[i] = r;
    pthread_mutex_unlock(&c->mu);
    lc_close(os);
    lc_sender_release(os);
    lc_receiver_release(orr);
}

/* A message; for a network Sender sometimes one carrying a pool Sender. */
static lc_msg *make_msg(chaos *c, unsigned *st, bool net)
{
    int k = (int)(rnd(st) % 4);
    if (k == 0 && net) {
        lc_sender *s;
        pool_get(c, (int)(rnd(st) % NPOOL), &s, NULL);
        return lc_pack("{s:i, s:S}", "V", 1, "Ret", s);
    }
    return lc_pack("{s:i}", "V", k);
}

/* A byte stream received: read to its end (1 s at most without bytes),
 * closed. */
static void drain_stream(int fd)
{
    char buf[64];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            struct pollfd p = { fd, POLLIN, 0 };
            if (poll(&p, 1, 1000) == 1)
                continue;
        }
        break;
    }
    close(fd);
}

/* A received message: its byte stream read, answered on its Ret
 * (lc_send_last or lc_send), freed. */
static void handle(lc_msg *m, unsigned *st)
{
    lc_value *bytes = lc_map_get(lc_msg_root(m), "Bytes");
    if (bytes != NULL && lc_value_type(bytes) == LC_STREAM) {
        int fd = lc_value_take_fd(bytes, NULL);
        if (fd >= 0)
            drain_stream(fd);
    }
    lc_value *inbox = lc_map_get(lc_msg_root(m), "Inbox");
    if (inbox != NULL && lc_value_type(inbox) == LC_RECEIVER) {
        /* a channel someone sent us to read: a few of its messages */
        lc_receiver *r = lc_value_take_receiver(inbox, NULL);
        lc_msg *got;
        for (int i = 0; i < 3 && r != NULL && lc_recv(r, &got, 5) == 0; i++)
            lc_msg_free(got);
        lc_receiver_release(r);
    }
    int v;
    lc_sender *ret = NULL;
    if (lc_unpack(m, "{s:i, s:S}", "V", &v, "Ret", &ret) == 0 && ret != NULL) {
        lc_msg *r = lc_pack("{s:i}", "V", 9);
        int rc = rnd(st) % 2 ? lc_send_last(ret, r, rnd(st) % 5) : lc_send(ret, r, rnd(st) % 5);
        if (rc != 0)
            lc_msg_free(r);
        lc_sender_release(ret);
    }
    lc_msg_free(m);
}

/* Results an operation may give here: success, a timeout, a channel ended
 * or closed, its session gone. */
static void check_rc(chaos *c, int rc)
{
    if (rc != 0 && rc != LC_ETIMEDOUT && rc != LC_ECLOSED && rc != LC_EOF && rc != LC_ESESSION)
        atomic_fetch_add(&c->errors, 1);
}

typedef struct worker_arg {
    chaos *c;
    unsigned seed;
} worker_arg;

static void *worker_fn(void *x)
{
    worker_arg *a = x;
    chaos *c = a->c;
    unsigned st = a->seed;
    for (long n = 0; n < c->ops_per_worker && !atomic_load(&c->stop); n++) {
        unsigned op = rnd(&st) % 10;
        if (op < 3) {
            bool net = rnd(&st) % 2 != 0;
            lc_sender *s;
            if (net)
                s = lc_sender_retain(c->net_s[rnd(&st) % (unsigned)c->nnet]);
            else
                pool_get(c, (int)(rnd(&st) % NPOOL), &s, NULL);
            lc_msg *m = make_msg(c, &st, net);
            int rc = lc_send(s, m, rnd(&st) % 10);
            check_rc(c, rc);
            if (rc != 0)
                lc_msg_free(m);
            lc_sender_release(s);
        } else if (op < 6) {
            lc_receiver *r;
            pool_get(c, (int)(rnd(&st) % NPOOL), NULL, &r);
            lc_msg *m;
            int rc = lc_recv(r, &m, rnd(&st) % 10);
            check_rc(c, rc);
            if (rc == 0)
                handle(m, &st);
            lc_receiver_release(r);
        } else if (op < 9) {
            lc_case cs[4];
            lc_sender *hs[4] = { NULL };
            lc_receiver *hr[4] = { NULL };
            int nc = 2 + (int)(rnd(&st) % 3);
            for (int i = 0; i < nc; i++) {
                memset(&cs[i], 0, sizeof cs[i]);
                unsigned k = rnd(&st) % 3;
                if (k == 0) {
                    pool_get(c, (int)(rnd(&st) % NPOOL), NULL, &hr[i]);
                    cs[i].op = LC_CASE_RECV;
                    cs[i].receiver = hr[i];
                } else {
                    bool net = k == 1;
                    if (net)
                        hs[i] = lc_sender_retain(c->net_s[rnd(&st) % (unsigned)c->nnet]);
                    else
                        pool_get(c, (int)(rnd(&st) % NPOOL), &hs[i], NULL);
                    cs[i].op = LC_CASE_SEND;
                    cs[i].sender = hs[i];
                    cs[i].msg = make_msg(c, &st, net);
                }
            }
            int fired = lc_select(cs, (size_t)nc, rnd(&st) % 10);
            if (fired >= 0)
                check_rc(c, cs[fired].result);
            else if (fired != LC_ETIMEDOUT)
                atomic_fetch_add(&c->errors, 1);
            for (int j = 0; j < nc; j++) {
                if (cs[j].op == LC_CASE_SEND)
                    lc_msg_free(cs[j].msg); /* NULL once taken */
                else if (j == fired && cs[j].msg != NULL)
                    handle(cs[j].msg, &st);
                lc_sender_release(hs[j]);
                lc_receiver_release(hr[j]);
            }
        } else if (rnd(&st) % 4 == 0) {
            /* a Receiver of a pool channel on a network Sender: the session
             * pumps that channel to whoever gets it */
            lc_receiver *r;
            pool_get(c, (int)(rnd(&st) % NPOOL), NULL, &r);
            lc_msg *m = lc_pack("{s:R}", "Inbox", r);
            lc_sender *s = lc_sender_retain(c->net_s[rnd(&st) % (unsigned)c->nnet]);
            int rc = lc_send(s, m, rnd(&st) % 10);
            check_rc(c, rc);
            if (rc != 0)
                lc_msg_free(m); /* releases r */
            lc_sender_release(s);
        } else if (rnd(&st) % 2 == 0) {
            /* a byte stream: a pipe's read end on a network Sender (passed
             * as an fd on unix, pumped as a sub-stream on TCP), a few bytes
             * written, then its end */
            int pfd[2];
            if (pipe2(pfd, O_CLOEXEC) != 0) {
                atomic_fetch_add(&c->errors, 1);
                pfd[0] = pfd[1] = -1;
            }
            lc_msg *m = lc_msg_new();
            lc_value *map = lc_new_map(m);
            if (pfd[0] >= 0)
                lc_map_set(m, map, "Bytes", lc_new_stream(m, pfd[0], LC_STREAM_READ));
            lc_msg_set_root(m, map);
            lc_sender *s = lc_sender_retain(c->net_s[rnd(&st) % (unsigned)c->nnet]);
            int rc = lc_send(s, m, rnd(&st) % 10);
            check_rc(c, rc);
            if (rc != 0)
                lc_msg_free(m); /* closes the read end */
            lc_sender_release(s);
            if (pfd[1] >= 0) {
                (void)!write(pfd[1], "chaos", 5); /* EPIPE once nobody reads: SIGPIPE is ignored */
                close(pfd[1]);
            }
        } else if (rnd(&st) % 10 == 0) {
            pool_renew(c, (int)(rnd(&st) % NPOOL), &st);
        }
        atomic_fetch_add(&c->progress, 1);
    }
    atomic_fetch_add(&c->done, 1);
    return NULL;
}

/* The server side of a pair: accepts channels one at a time and reads each
 * until it is quiet for 1 s; requests carrying a Ret are answered, others
 * go into the pool. The channels it does not get to fill up. */
typedef struct acceptor_arg {
    chaos *c;
    lc_session *s;
} acceptor_arg;

static void *acceptor_fn(void *x)
{
    acceptor_arg *a = x;
    unsigned st = 99;
    lc_receiver *r;
    while (!atomic_load(&a->c->stop) && lc_session_receiver(a->s, &r, -1) == 0) {
        lc_msg *m;
        while (!atomic_load(&a->c->stop) && lc_recv(r, &m, 1000) == 0) {
            if (rnd(&st) % 2 || lc_map_get(lc_msg_root(m), "Ret") != NULL ||
                lc_map_get(lc_msg_root(m), "Inbox") != NULL) {
                handle(m, &st);
                continue;
            }
            lc_sender *s;
            pool_get(a->c, (int)(rnd(&st) % NPOOL), &s, NULL);
            if (lc_send(s, m, 5) != 0)
                lc_msg_free(m);
            lc_sender_release(s);
        }
        lc_receiver_release(r);
    }
    return NULL;
}

/* Waits for the workers; false when no operation completed for 10 s. */
static bool wait_workers(chaos *c)
{
    long last = -1;
    int quiet = 0;
    while (atomic_load(&c->done) < NWORK) {
        long p = atomic_load(&c->progress);
        quiet = p == last ? quiet + 1 : 0;
        last = p;
        if (quiet >= 100)
            return false;
        usleep(100000);
    }
    return true;
}

/* A pair's server goes: closed (its acceptor's calls fail from then on),
 * the acceptor joined, then freed; and its client. No call on a session
 * may start once lc_session_free has begun. */
static void pair_end(nt_pair *p, pthread_t acceptor)
{
    lc_session_free(p->client);
    lc_session_close(p->server, 200);
    pthread_join(acceptor, NULL);
    lc_session_free(p->server);
}

typedef enum { ALL_ALONG, FREED_MIDWAY, CLOSED_MIDWAY } chaos_mode;

static void run_chaos(chaos_mode mode)
{
    chaos c = { .ops_per_worker = 20000L * nt_scale() };
    pthread_mutex_init(&c.mu, NULL);
    unsigned st = 5;
    for (int i = 0; i < NPOOL; i++)
        assert_int_equal(lc_pipe(&c.pool_r[i], &c.pool_s[i], rnd(&st) % 2 ? 4 : 0), 0);
    nt_pair p[2];
    pthread_t at[2];
    acceptor_arg aa[2];
    for (int t = 0; t < 2; t++) {
        char url[128];
        nt_open_pair(&p[t], nt_transport_url(t, url, sizeof url), NULL, NULL);
        aa[t] = (acceptor_arg){ &c, p[t].server };
        pthread_create(&at[t], NULL, acceptor_fn, &aa[t]);
        for (int k = 0; k < NNET_PER_PAIR; k++)
            assert_int_equal(lc_session_sender(p[t].client, &c.net_s[c.nnet++]), 0);
    }
    pthread_t w[NWORK];
    worker_arg wa[NWORK];
    for (int i = 0; i < NWORK; i++) {
        wa[i] = (worker_arg){ &c, (unsigned)(i + 1) * 7919u + 1 };
        pthread_create(&w[i], NULL, worker_fn, &wa[i]);
    }
    int gone = 0;
    if (mode != ALL_ALONG) {
        /* a third of the way: pair 0 goes under the workers: freed (its
         * client at once; its server closed, its acceptor joined, then
         * freed), or its client closed gracefully first, which refuses the
         * sends after it (LC_ESESSION) */
        int64_t end = lc_test_now_us() + 30 * 1000000;
        while (atomic_load(&c.progress) < c.ops_per_worker * NWORK / 3 && lc_test_now_us() < end)
            usleep(1000);
        if (mode == CLOSED_MIDWAY) {
            int rc = lc_session_close(p[0].client, 2000);
            if (rc != 0 && rc != LC_ESESSION && rc != LC_ETIMEDOUT)
                fail_msg("lc_session_close under traffic: %s", lc_strerror(rc));
        }
        pair_end(&p[0], at[0]);
        gone = 1;
    }
    if (!wait_workers(&c))
        fail_msg("no operation completed for 10 s (%ld done): a hang", atomic_load(&c.progress));
    for (int i = 0; i < NWORK; i++)
        pthread_join(w[i], NULL);
    atomic_store(&c.stop, 1);
    for (int t = gone; t < 2; t++)
        pair_end(&p[t], at[t]);
    for (int t = 0; t < 2; t++)
        lc_listener_close(p[t].l);
    for (int i = 0; i < c.nnet; i++)
        lc_sender_release(c.net_s[i]);
    for (int i = 0; i < NPOOL; i++) {
        lc_sender_release(c.pool_s[i]);
        lc_receiver_release(c.pool_r[i]);
    }
    pthread_mutex_destroy(&c.mu);
    assert_int_equal(atomic_load(&c.errors), 0);
    assert_int_equal(atomic_load(&c.progress), c.ops_per_worker * NWORK);
}

static void test_chaos(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(120 * nt_scale());
    run_chaos(ALL_ALONG);
}

static void test_chaos_session_freed_midway(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(120 * nt_scale());
    run_chaos(FREED_MIDWAY);
}

static void test_chaos_session_closed_midway(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(120 * nt_scale());
    run_chaos(CLOSED_MIDWAY);
}

int main(void)
{
    lc__engine_default(); /* its fds live as long as the process */
    signal(SIGPIPE, SIG_IGN); /* writes into pipes whose reader went */
    nt_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_chaos, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_chaos_session_freed_midway, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_chaos_session_closed_midway, lc_test_setup, lc_test_teardown),
    };
    return cmocka_run_group_tests_name("net/session_chaos", tests, NULL, NULL);
}
