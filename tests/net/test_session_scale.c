/*
 * test_session_scale.c - many channels and many sessions at once, and
 * channels that must not hold each other up:
 *   - 1000 channels open at the same time on one session, each a request
 *     with a reply Sender, served by a pool of threads; the same in small and
 *     deterministic with a raw peer: 100 channels' messages and FINs in one
 *     read, and one message naming 40 Receivers whose data came first;
 *   - 100 sessions dialled to one listener from 10 threads, served by a pool;
 *   - a slow consumer (channel 1 never read) does not stop channel 2 on the
 *     same session (per-stream windows between two libchan peers), and the
 *     flood on channel 1 is held back by its window, not queued without bound.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdatomic.h>

#include "nettest.h"

/* ---- 1000 channels on one session -------------------------------------------- */

#define NCHAN 1000
#define CLIENT_THREADS 4
#define SERVER_THREADS 4

typedef struct {
    lc_session *s;
    atomic_int next;            /* channel slots claimed by server threads */
    atomic_int handled;
    atomic_int errors;
    lc_receiver *rs[NCHAN];     /* kept until the client has closed them all */
} chan_server;

static void *chan_server_fn(void *x)
{
    chan_server *a = x;
    for (;;) {
        int slot = atomic_fetch_add(&a->next, 1);
        if (slot >= NCHAN)
            return NULL;
        lc_receiver *r;
        if (lc_session_receiver(a->s, &r, 10000) != 0) {
            atomic_fetch_add(&a->errors, 1);
            return NULL;
        }
        a->rs[slot] = r;
        lc_msg *m;
        int idx;
        lc_sender *ret;
        if (lc_recv(r, &m, 10000) != 0 || lc_unpack(m, "{s:i, s:S}", "I", &idx, "Ret", &ret) != 0) {
            atomic_fetch_add(&a->errors, 1);
            return NULL;
        }
        lc_msg_free(m);
        lc_msg *rep = lc_pack("{s:i}", "Twice", 2 * idx);
        if (lc_send(ret, rep, 10000) != 0) {
            lc_msg_free(rep);
            atomic_fetch_add(&a->errors, 1);
        }
        lc_close(ret);
        lc_sender_release(ret);
        atomic_fetch_add(&a->handled, 1);
    }
}

typedef struct {
    lc_session *s;
    int first, n;
    int ok;
} chan_client;

#define CFAIL(what, rc)                                                            \
    do {                                                                           \
        fprintf(stderr, "client %d, channel %d: %s: %s\n", c->first, i, (what),    \
                lc_strerror(rc));                                                 \
        return NULL;                                                               \
    } while (0)

static void *chan_client_fn(void *x)
{
    chan_client *c = x;
    lc_sender *ch[NCHAN / CLIENT_THREADS];
    lc_receiver *rr[NCHAN / CLIENT_THREADS];
    int rc;
    /* every channel is opened and used before any reply is read: all of them
     * are open at once */
    for (int i = 0; i < c->n; i++) {
        lc_sender *rs;
        if ((rc = lc_session_sender(c->s, &ch[i])) != 0)
            CFAIL("lc_session_sender", rc);
        if ((rc = lc_pipe(&rr[i], &rs, 1)) != 0)
            CFAIL("lc_pipe", rc);
        lc_msg *m = lc_pack("{s:i, s:S}", "I", c->first + i, "Ret", rs);
        if ((rc = lc_send(ch[i], m, 10000)) != 0) {
            lc_msg_free(m);
            CFAIL("lc_send", rc);
        }
    }
    for (int i = 0; i < c->n; i++) {
        lc_msg *m;
        int twice = -1;
        if ((rc = lc_recv(rr[i], &m, 10000)) != 0)
            CFAIL("reply", rc);
        lc_unpack(m, "{s:i}", "Twice", &twice);
        lc_msg_free(m);
        if (twice != 2 * (c->first + i))
            CFAIL("wrong reply", 0);
        if ((rc = lc_recv(rr[i], &m, 10000)) != LC_EOF)
            CFAIL("end of the reply channel", rc);
        lc_receiver_release(rr[i]);
        lc_close(ch[i]);
        lc_sender_release(ch[i]);
        c->ok++;
    }
    return NULL;
}

static void test_thousand_channels_on_one_session(void **st)
{
    LC_TEST_DEADLINE(60);
    char url[128];
    nt_pair p;
    nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, NULL);
    chan_server *sv = calloc(1, sizeof *sv);
    assert_non_null(sv);
    sv->s = p.server;
    pthread_t ts[SERVER_THREADS], tc[CLIENT_THREADS];
    chan_client cc[CLIENT_THREADS];
    for (int i = 0; i < SERVER_THREADS; i++)
        assert_int_equal(pthread_create(&ts[i], NULL, chan_server_fn, sv), 0);
    for (int i = 0; i < CLIENT_THREADS; i++) {
        cc[i] = (chan_client){ .s = p.client, .first = i * (NCHAN / CLIENT_THREADS), .n = NCHAN / CLIENT_THREADS };
        assert_int_equal(pthread_create(&tc[i], NULL, chan_client_fn, &cc[i]), 0);
    }
    int ok = 0;
    for (int i = 0; i < CLIENT_THREADS; i++) {
        pthread_join(tc[i], NULL);
        ok += cc[i].ok;
    }
    for (int i = 0; i < SERVER_THREADS; i++)
        pthread_join(ts[i], NULL);
    assert_int_equal(atomic_load(&sv->errors), 0);
    assert_int_equal(atomic_load(&sv->handled), NCHAN);
    assert_int_equal(ok, NCHAN);
    /* every channel the client closed ends on the server side */
    for (int i = 0; i < NCHAN; i++) {
        lc_msg *m = NULL;
        assert_int_equal(lc_recv(sv->rs[i], &m, 10000), LC_EOF);
        lc_receiver_release(sv->rs[i]);
    }
    assert_int_equal(lc_session_error(p.client), 0);
    assert_int_equal(lc_session_error(p.server), 0);
    free(sv);
    nt_close_pair(&p);
}

/* ---- a long session of fresh reply channels ------------------------------------ */

/*
 * Every request carries a fresh reply Sender: one sub-stream opened and ended
 * per request, all session long. What the session keeps per stream must go
 * with it: its tables stay sized for the streams alive (the stream table
 * used to double on every rebuild while tombstones filled it, and every
 * named ref was remembered forever).
 */
#define NFRESH 3000

typedef struct {
    lc_session *s;
    int handled, errors;
} fresh_server;

static void *fresh_server_fn(void *x)
{
    fresh_server *a = x;
    lc_receiver *r;
    if (lc_session_receiver(a->s, &r, 10000) != 0) {
        a->errors++;
        return NULL;
    }
    for (int i = 0; i < NFRESH; i++) {
        lc_msg *m;
        int idx;
        lc_sender *ret;
        if (lc_recv(r, &m, 10000) != 0 || lc_unpack(m, "{s:i, s:S}", "I", &idx, "Ret", &ret) != 0) {
            a->errors++;
            break;
        }
        lc_msg_free(m);
        lc_msg *rep = lc_pack("{s:i}", "Twice", 2 * idx);
        if (lc_send(ret, rep, 10000) != 0) {
            lc_msg_free(rep);
            a->errors++;
        }
        lc_sender_release(ret); /* closes it: FIN */
        a->handled++;
    }
    lc_receiver_release(r);
    return NULL;
}

static void test_fresh_reply_channels_leave_no_trace(void **st)
{
    LC_TEST_DEADLINE(120);
    char url[128];
    nt_pair p;
    nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, NULL);
    fresh_server sv = { .s = p.server };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fresh_server_fn, &sv), 0);
    lc_sender *snd;
    assert_int_equal(lc_session_sender(p.client, &snd), 0);
    for (int i = 0; i < NFRESH; i++) {
        lc_receiver *rr;
        lc_sender *rs;
        assert_int_equal(lc_pipe(&rr, &rs, 1), 0);
        assert_int_equal(lc_send(snd, lc_pack("{s:i, s:S}", "I", i, "Ret", rs), 10000), 0);
        lc_msg *m;
        int twice = -1;
        assert_int_equal(lc_recv(rr, &m, 10000), 0);
        assert_int_equal(lc_unpack(m, "{s:i}", "Twice", &twice), 0);
        assert_int_equal(twice, 2 * i);
        lc_msg_free(m);
        assert_int_equal(lc_recv(rr, &m, 10000), LC_EOF);
        lc_receiver_release(rr);
    }
    pthread_join(t, NULL);
    assert_int_equal(sv.errors, 0);
    assert_int_equal(sv.handled, NFRESH);
    lc_session *both[2] = { p.client, p.server };
    for (int i = 0; i < 2; i++) {
        lc_session *s = both[i];
        pthread_mutex_lock(&s->mu);
        size_t streams_cap = s->streams.cap, peer_refs_cap = s->peer_refs.cap;
        pthread_mutex_unlock(&s->mu);
        /* a handful of streams alive at a time: small tables, whatever churned */
        if (streams_cap > 64 || peer_refs_cap > 64)
            fail_msg("%s: stream table of %zu slots, peer refs in %zu slots after %d requests",
                     i == 0 ? "client" : "server", streams_cap, peer_refs_cap, NFRESH);
    }
    lc_sender_release(snd);
    assert_int_equal(lc_session_error(p.client), 0);
    assert_int_equal(lc_session_error(p.server), 0);
    nt_close_pair(&p);
}

/*
 * SPDY/3 stream ids are 31 bits and never reused: a side opens at most 2^30
 * streams on a session. At the end of them (the test starts near it), opening
 * a channel and sending a message that carries a channel end fail with
 * LC_ERANGE, without queuing any frame; the session and its open channels go
 * on (the ids used to wrap into ids already used: the peer's protocol error).
 */
static void test_stream_ids_used_up(void **st)
{
    LC_TEST_DEADLINE(30);
    char url[128];
    nt_pair p;
    nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, NULL);
    lc_sender *a;
    assert_int_equal(lc_session_sender(p.client, &a), 0);
    lc_receiver *ra;
    assert_int_equal(lc_session_receiver(p.server, &ra, 5000), 0);
    pthread_mutex_lock(&p.client->wmu);
    p.client->next_id = LC_SPDY_MAX_STREAM_ID - 2; /* two ids left: ..fd, ..ff */
    pthread_mutex_unlock(&p.client->wmu);
    /* a message carrying two channel ends needs both */
    lc_receiver *r1, *r2;
    lc_sender *s1, *s2;
    assert_int_equal(lc_pipe(&r1, &s1, 1), 0);
    assert_int_equal(lc_pipe(&r2, &s2, 1), 0);
    lc_msg *m = lc_pack("{s:S, s:S}", "A", s1, "B", s2);
    assert_int_equal(lc_send(a, m, 5000), 0);
    lc_msg *got;
    assert_int_equal(lc_recv(ra, &got, 5000), 0);
    lc_sender *g1, *g2;
    assert_int_equal(lc_unpack(got, "{s:S, s:S}", "A", &g1, "B", &g2), 0);
    lc_msg_free(got);
    /* none left */
    lc_sender *b = NULL;
    assert_int_equal(lc_session_sender(p.client, &b), LC_ERANGE);
    assert_null(b);
    lc_receiver *r3;
    lc_sender *s3;
    assert_int_equal(lc_pipe(&r3, &s3, 1), 0);
    m = lc_pack("{s:S}", "C", s3);
    assert_int_equal(lc_send(a, m, 5000), LC_ERANGE);
    lc_msg_free(m); /* still ours (and s3 with it) */
    lc_receiver_release(r3);
    /* what is open still works, both ways */
    assert_int_equal(lc_send(a, lc_pack("{s:i}", "N", 1), 5000), 0);
    nt_expect_n(ra, 1);
    assert_int_equal(lc_send(g2, lc_pack("{s:i}", "N", 2), 5000), 0);
    nt_expect_n(r2, 2);
    assert_int_equal(lc_session_error(p.client), 0);
    assert_int_equal(lc_session_error(p.server), 0);
    lc_sender_release(g1);
    lc_sender_release(g2);
    lc_receiver_release(r1);
    lc_receiver_release(r2);
    lc_receiver_release(ra);
    lc_sender_release(a);
    nt_close_pair(&p);
}

/*
 * The same, deterministic: a raw peer opens 100 channels, then sends one
 * message and the FIN on each of them in a single write (so the session
 * handles them in one read batch). Every receiver gets its message, then EOF.
 */
#define NBATCH 100

static void test_hundred_channels_in_one_read(void **st)
{
    LC_TEST_DEADLINE(30);
    nt_raw p;
    nt_raw_open(&p, NULL);
    lc_buf b;
    lc__buf_init(&b);
    for (uint32_t i = 0; i < NBATCH; i++)
        nt_put_syn(&p, &b, 1 + 2 * i, 2 + i, 0, 0);
    nt_raw_send(&p, &b);
    lc_receiver *r[NBATCH];
    for (int i = 0; i < NBATCH; i++)
        assert_int_equal(lc_session_receiver(p.s, &r[i], 5000), 0);
    for (uint32_t i = 0; i < NBATCH; i++) {
        nt_put_msg(&b, 1 + 2 * i, lc_pack("{s:i}", "N", (int)i));
        assert_int_equal(lc__spdy_put_data(&b, 1 + 2 * i, LC_SPDY_FLAG_FIN, NULL, 0), 0);
    }
    nt_raw_send(&p, &b);
    int lost = 0;
    for (int i = 0; i < NBATCH; i++) {
        lc_msg *m = NULL;
        int rc = lc_recv(r[i], &m, 5000);
        int n = -1;
        if (rc == 0) {
            lc_unpack(m, "{s:i}", "N", &n);
            lc_msg_free(m);
            rc = lc_recv(r[i], &m, 5000);
        }
        if (n != i || rc != LC_EOF) {
            if (lost++ == 0)
                fprintf(stderr, "channel %d: message %s, then %s\n", i, n == i ? "ok" : "lost", lc_strerror(rc));
        }
        lc_receiver_release(r[i]);
    }
    if (lost)
        fprintf(stderr, "%d of %d channels lost their message\n", lost, NBATCH);
    assert_int_equal(lost, 0);
    assert_int_equal(lc_session_error(p.s), 0);
    lc__buf_free(&b);
    nt_raw_close(&p);
}

/*
 * One message naming 40 Receivers whose sub-streams already carried their
 * messages and FIN (another implementation may send a sub-stream's data
 * before the message that names it, PROTOCOL.md section 3): once the message
 * is delivered, each of the 40 Receivers gets its message, then EOF.
 */
#define NENDS 40

static void test_message_naming_forty_early_receivers(void **st)
{
    LC_TEST_DEADLINE(30);
    nt_raw p;
    nt_raw_open(&p, NULL);
    lc_buf b;
    lc__buf_init(&b);
    nt_put_syn(&p, &b, 1, 2, 0, 0);
    uint8_t msg[6 + 6 * NENDS] = { 0x81, 0xa1, 'R', 0xdc, 0x00, NENDS };
    for (uint32_t i = 0; i < NENDS; i++) {
        uint32_t id = 3 + 2 * i, ref = 100 + i;
        nt_put_syn(&p, &b, id, ref, 2, 0);
        nt_put_msg(&b, id, lc_pack("{s:i}", "N", (int)i));
        assert_int_equal(lc__spdy_put_data(&b, id, LC_SPDY_FLAG_FIN, NULL, 0), 0);
        uint8_t *e = msg + 6 + 6 * i;
        e[0] = 0xd6;
        e[1] = 5;
        lc__spdy_put32(e + 2, ref);
    }
    assert_int_equal(lc__spdy_put_data(&b, 1, 0, msg, sizeof msg), 0);
    nt_raw_send(&p, &b);
    lc_receiver *r;
    assert_int_equal(lc_session_receiver(p.s, &r, 5000), 0);
    lc_msg *m;
    assert_int_equal(lc_recv(r, &m, 5000), 0);
    lc_value *arr = lc_map_get(lc_msg_root(m), "R");
    assert_non_null(arr);
    assert_int_equal(lc_value_len(arr), NENDS);
    int lost = 0;
    for (int i = 0; i < NENDS; i++) {
        lc_receiver *sub = lc_value_take_receiver(lc_array_get(arr, (size_t)i), NULL);
        assert_non_null(sub);
        lc_msg *sm = NULL;
        int64_t timeout = lost ? 100 : 5000; /* one wait is enough to tell */
        int rc = lc_recv(sub, &sm, timeout);
        int n = -1;
        if (rc == 0) {
            lc_unpack(sm, "{s:i}", "N", &n);
            lc_msg_free(sm);
            rc = lc_recv(sub, &sm, timeout);
        }
        if (n != i || rc != LC_EOF) {
            if (lost++ == 0)
                fprintf(stderr, "receiver %d: message %s, then %s\n", i, n == i ? "ok" : "missing", lc_strerror(rc));
        }
        lc_receiver_release(sub);
    }
    if (lost)
        fprintf(stderr, "%d of %d receivers did not get their messages\n", lost, NENDS);
    assert_int_equal(lost, 0);
    lc_msg_free(m);
    lc_receiver_release(r);
    lc__buf_free(&b);
    nt_raw_close(&p);
}

/* ---- 100 sessions on one listener -------------------------------------------- */

#define NSESS 100
#define DIAL_THREADS 10
#define POOL 4
#define PER_SESSION 3

typedef struct {
    lc_listener *l;
    lc_session *sess[NSESS];
    lc_receiver *rs[NSESS];
    lc_receiver *work_r;        /* accepted session indexes, for the pool */
    lc_sender *work_s;
    atomic_int handled;
    atomic_int errors;
} sess_server;

static void *acceptor_fn(void *x)
{
    sess_server *a = x;
    for (int i = 0; i < NSESS; i++) {
        if (lc_accept(a->l, &a->sess[i], 10000) != 0) {
            atomic_fetch_add(&a->errors, 1);
            break;
        }
        if (lc_send(a->work_s, lc_pack("{s:i}", "Idx", i), 10000) != 0)
            atomic_fetch_add(&a->errors, 1);
    }
    lc_close(a->work_s);
    return NULL;
}

static void *sess_worker_fn(void *x)
{
    sess_server *a = x;
    lc_msg *w;
    while (lc_recv(a->work_r, &w, 20000) == 0) {
        int idx;
        lc_unpack(w, "{s:i}", "Idx", &idx);
        lc_msg_free(w);
        lc_receiver *r;
        if (lc_session_receiver(a->sess[idx], &r, 10000) != 0) {
            atomic_fetch_add(&a->errors, 1);
            continue;
        }
        a->rs[idx] = r;
        for (int k = 0; k < PER_SESSION; k++) {
            lc_msg *m;
            int n;
            lc_sender *ret;
            if (lc_recv(r, &m, 10000) != 0 || lc_unpack(m, "{s:i, s:S}", "N", &n, "Ret", &ret) != 0) {
                atomic_fetch_add(&a->errors, 1);
                break;
            }
            lc_msg_free(m);
            lc_msg *rep = lc_pack("{s:i}", "Echo", n);
            if (lc_send(ret, rep, 10000) != 0) {
                lc_msg_free(rep);
                atomic_fetch_add(&a->errors, 1);
            }
            lc_close(ret);
            lc_sender_release(ret);
            atomic_fetch_add(&a->handled, 1);
        }
    }
    return NULL;
}

typedef struct {
    const char *url;
    int id;
    int ok;
} dialer;

#define PER_DIALER (NSESS / DIAL_THREADS)

static void *dialer_fn(void *x)
{
    dialer *d = x;
    lc_session *s[PER_DIALER] = { 0 };
    lc_sender *ch[PER_DIALER] = { 0 };
    lc_receiver *rr[PER_DIALER][PER_SESSION];
    /* all sessions of this thread are up, and all requests sent, before any
     * reply is read */
    for (int i = 0; i < PER_DIALER; i++) {
        if (lc_dial(d->url, NULL, &s[i], NULL) != 0 || lc_session_sender(s[i], &ch[i]) != 0)
            return NULL;
        for (int k = 0; k < PER_SESSION; k++) {
            lc_sender *rs;
            if (lc_pipe(&rr[i][k], &rs, 1) != 0)
                return NULL;
            lc_msg *m = lc_pack("{s:i, s:S}", "N", (d->id * PER_DIALER + i) * 10 + k, "Ret", rs);
            if (lc_send(ch[i], m, 10000) != 0) {
                lc_msg_free(m);
                return NULL;
            }
        }
    }
    for (int i = 0; i < PER_DIALER; i++) {
        int good = 0;
        for (int k = 0; k < PER_SESSION; k++) {
            lc_msg *m;
            int echo = -1;
            if (lc_recv(rr[i][k], &m, 10000) == 0) {
                lc_unpack(m, "{s:i}", "Echo", &echo);
                lc_msg_free(m);
            }
            if (echo == (d->id * PER_DIALER + i) * 10 + k && lc_recv(rr[i][k], &m, 10000) == LC_EOF)
                good++;
            lc_receiver_release(rr[i][k]);
        }
        lc_close(ch[i]);
        lc_sender_release(ch[i]);
        if (lc_session_close(s[i], 10000) == 0 && good == PER_SESSION)
            d->ok++;
        lc_session_free(s[i]);
    }
    return NULL;
}

static void run_many_sessions(const char *url)
{
    sess_server *a = calloc(1, sizeof *a);
    assert_non_null(a);
    lc_error err = { 0 };
    assert_int_equal(lc_listen(url, NULL, &a->l, &err), 0);
    char bound[256];
    assert_int_equal(lc_listener_url(a->l, bound, sizeof bound), 0);
    assert_int_equal(lc_pipe(&a->work_r, &a->work_s, NSESS), 0);
    pthread_t ta, tw[POOL], td[DIAL_THREADS];
    dialer d[DIAL_THREADS];
    assert_int_equal(pthread_create(&ta, NULL, acceptor_fn, a), 0);
    for (int i = 0; i < POOL; i++)
        assert_int_equal(pthread_create(&tw[i], NULL, sess_worker_fn, a), 0);
    for (int i = 0; i < DIAL_THREADS; i++) {
        d[i] = (dialer){ .url = bound, .id = i };
        assert_int_equal(pthread_create(&td[i], NULL, dialer_fn, &d[i]), 0);
    }
    int ok = 0;
    for (int i = 0; i < DIAL_THREADS; i++) {
        pthread_join(td[i], NULL);
        ok += d[i].ok;
    }
    pthread_join(ta, NULL);
    for (int i = 0; i < POOL; i++)
        pthread_join(tw[i], NULL);
    assert_int_equal(atomic_load(&a->errors), 0);
    assert_int_equal(atomic_load(&a->handled), NSESS * PER_SESSION);
    assert_int_equal(ok, NSESS);
    /* each client closed its channel, then its session (cleanly) */
    for (int i = 0; i < NSESS; i++) {
        lc_msg *m = NULL;
        assert_int_equal(lc_recv(a->rs[i], &m, 10000), LC_EOF);
        lc_receiver_release(a->rs[i]);
        lc_receiver *more;
        assert_int_equal(lc_session_receiver(a->sess[i], &more, 10000), LC_ESESSION);
        assert_int_equal(lc_session_error(a->sess[i]), LC_ESESSION);
        lc_session_free(a->sess[i]);
    }
    lc_receiver_release(a->work_r);
    lc_sender_release(a->work_s);
    lc_listener_close(a->l);
    free(a);
}

static void test_hundred_sessions_on_one_tcp_listener(void **st)
{
    LC_TEST_DEADLINE(60);
    run_many_sessions("tcp://127.0.0.1:0");
}

static void test_hundred_sessions_on_one_unix_listener(void **st)
{
    LC_TEST_DEADLINE(60);
    char url[128];
    run_many_sessions(nt_unix_url(url, sizeof url));
}

/* ---- a slow consumer does not block a fast channel --------------------------- */

#define FLOOD 2000

typedef struct {
    lc_sender *ch;
    atomic_int sent;
    int rc;
} flood_arg;

static void *flood_fn(void *x)
{
    flood_arg *f = x;
    static char pad[1025];
    memset(pad, 'f', sizeof pad - 1);
    for (int i = 0; i < FLOOD; i++) {
        lc_msg *m = lc_pack("{s:i, s:s}", "Seq", i, "Pad", pad);
        f->rc = lc_send(f->ch, m, 20000);
        if (f->rc != 0) {
            lc_msg_free(m);
            return NULL;
        }
        atomic_fetch_add(&f->sent, 1);
    }
    return NULL;
}

/* The round trip on the fast channel: a request with a reply Sender. */
static void round_trip(lc_sender *fast, lc_receiver *fast_in, int i)
{
    lc_receiver *rr;
    lc_sender *rs;
    assert_int_equal(lc_pipe(&rr, &rs, 1), 0);
    assert_int_equal(lc_send(fast, lc_pack("{s:i, s:S}", "N", i, "Ret", rs), 5000), 0);
    lc_msg *m;
    int rc = lc_recv(fast_in, &m, 5000);
    if (rc != 0)
        fprintf(stderr, "fast channel, round trip %d: %s\n", i, lc_strerror(rc));
    assert_int_equal(rc, 0);
    int n;
    lc_sender *ret;
    assert_int_equal(lc_unpack(m, "{s:i, s:S}", "N", &n, "Ret", &ret), 0);
    assert_int_equal(n, i);
    lc_msg_free(m);
    assert_int_equal(lc_send(ret, lc_pack("{s:i}", "N", -i), 5000), 0);
    lc_close(ret);
    lc_sender_release(ret);
    assert_int_equal(lc_recv(rr, &m, 5000), 0);
    assert_int_equal(lc_unpack(m, "{s:i}", "N", &n), 0);
    assert_int_equal(n, -i);
    lc_msg_free(m);
    lc_receiver_release(rr);
}

static void run_slow_consumer(const char *url)
{
    /* small queues and windows so the flood is many times both */
    lc_options o;
    lc_options_default(&o);
    o.recv_queue = 4;
    o.stream_window = 64 * 1024;
    nt_pair p;
    nt_open_pair(&p, url, &o, &o);
    lc_sender *slow, *fast;
    assert_int_equal(lc_session_sender(p.client, &slow), 0);
    assert_int_equal(lc_session_sender(p.client, &fast), 0);
    lc_receiver *slow_in, *fast_in;
    /* the first message tells which channel is which */
    assert_int_equal(lc_send(slow, lc_pack("{s:i, s:s}", "Seq", -1, "Pad", ""), 5000), 0);
    assert_int_equal(lc_session_receiver(p.server, &slow_in, 5000), 0);
    assert_int_equal(lc_session_receiver(p.server, &fast_in, 5000), 0);
    /* one round trip first: each side has read the other's SETTINGS */
    round_trip(fast, fast_in, 0);

    flood_arg f = { .ch = slow };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, flood_fn, &f), 0);
    /* slow_in is not read: the fast channel keeps going */
    for (int i = 1; i <= 20; i++)
        round_trip(fast, fast_in, i);
    /* the flood is held back by its window, not queued without bound */
    assert_true(atomic_load(&f.sent) < FLOOD);
    assert_true(lc_receiver_queued(slow_in) <= o.recv_queue);

    /* now the slow reader catches up: everything arrives, in order */
    lc_msg *m;
    for (int i = -1; i < FLOOD; i++) {
        int rc = lc_recv(slow_in, &m, 10000);
        if (rc != 0)
            fprintf(stderr, "slow channel, message %d: %s\n", i, lc_strerror(rc));
        assert_int_equal(rc, 0);
        int seq;
        assert_int_equal(lc_unpack(m, "{s:i}", "Seq", &seq), 0);
        assert_int_equal(seq, i);
        lc_msg_free(m);
    }
    pthread_join(t, NULL);
    assert_int_equal(f.rc, 0);
    assert_int_equal(atomic_load(&f.sent), FLOOD);
    lc_close(slow);
    lc_close(fast);
    assert_int_equal(lc_recv(slow_in, &m, 5000), LC_EOF);
    assert_int_equal(lc_recv(fast_in, &m, 5000), LC_EOF);
    lc_sender_release(slow);
    lc_sender_release(fast);
    lc_receiver_release(slow_in);
    lc_receiver_release(fast_in);
    nt_close_pair(&p);
}

static void test_slow_consumer_does_not_block_fast_channel_unix(void **st)
{
    LC_TEST_DEADLINE(60);
    char url[128];
    run_slow_consumer(nt_unix_url(url, sizeof url));
}

static void test_slow_consumer_does_not_block_fast_channel_tcp(void **st)
{
    LC_TEST_DEADLINE(60);
    run_slow_consumer("tcp://127.0.0.1:0");
}

int main(void)
{
    lc__engine_default(); /* its fds live as long as the process */
    nt_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_thousand_channels_on_one_session, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fresh_reply_channels_leave_no_trace, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_stream_ids_used_up, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_hundred_channels_in_one_read, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_message_naming_forty_early_receivers, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_hundred_sessions_on_one_tcp_listener, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_hundred_sessions_on_one_unix_listener, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_slow_consumer_does_not_block_fast_channel_unix, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_slow_consumer_does_not_block_fast_channel_tcp, lc_test_setup, lc_test_teardown),
    };
    return cmocka_run_group_tests_name("net/session_scale", tests, NULL, NULL);
}
