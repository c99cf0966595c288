/*
 * test_session_limits.c - the resource bounds of sessions (PROTOCOL.md 2.5,
 * 7: unclaimed passed fds, answers piling up toward a peer that does not
 * read, RST of a channel we receive on, lc_session_close waiting for
 * SYN_REPLYs) exercised with our library on both ends: sessions that flood
 * each other must neither stall nor lose messages, and the counters the
 * bounds rest on must come back to zero.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "nettest.h"
#include "engine/engine.h"

/* ---- helpers ------------------------------------------------------------------ */

static size_t fds_unclaimed(lc_session *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->in_fds.len;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static bool session_paused(lc_session *s)
{
    pthread_mutex_lock(&s->mu);
    bool p = s->paused;
    pthread_mutex_unlock(&s->mu);
    return p;
}

static size_t unreplied(lc_session *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->unreplied;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static size_t early_total(lc_session *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->early_total;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Keeps the engine thread (shared by every session of the process) busy for
 * a while: no session reads or writes from the engine meanwhile. */
typedef struct engine_stall {
    int ms;
    atomic_int started, done;
} engine_stall;

static void engine_stall_cb(void *ctx)
{
    engine_stall *e = ctx;
    atomic_store(&e->started, 1);
    struct timespec ts = { e->ms / 1000, (long)(e->ms % 1000) * 1000000 };
    nanosleep(&ts, NULL);
    atomic_store(&e->done, 1);
}

static void engine_stall_start(engine_stall *e, int ms)
{
    e->ms = ms;
    atomic_store(&e->started, 0);
    atomic_store(&e->done, 0);
    lc_timer_id id;
    assert_int_equal(lc__engine_timer_add(lc__engine_default(), 0, engine_stall_cb, e, &id), 0);
    assert_true(nt_wait_at_least(&e->started, 1, 5000));
}

static void engine_stall_wait(engine_stall *e)
{
    assert_true(nt_wait_at_least(&e->done, 1, 10000));
}

/* {N: n, F: [nfds passed fds, each a dup of fd]} */
static lc_msg *msg_with_fds(int n, int fd, int nfds)
{
    lc_msg *m = lc_msg_new();
    assert_non_null(m);
    lc_value *root = lc_new_map(m);
    assert_int_equal(lc_map_set(m, root, "N", lc_new_int(m, n)), 0);
    lc_value *arr = lc_new_array(m);
    for (int i = 0; i < nfds; i++) {
        int d = dup(fd);
        assert_true(d >= 0);
        assert_int_equal(lc_array_append(m, arr, lc_new_stream(m, d, LC_STREAM_READ)), 0);
    }
    assert_int_equal(lc_map_set(m, root, "F", arr), 0);
    assert_int_equal(lc_msg_set_root(m, root), 0);
    return m;
}

/* Receives {N: n, F: [nfds fds]}, closes the fds. 0 or the lc_recv error. */
static int expect_fds_msg(lc_receiver *r, int n, int nfds, int64_t timeout_ms)
{
    lc_msg *m = NULL;
    int rc = lc_recv(r, &m, timeout_ms);
    if (rc != 0)
        return rc;
    lc_value *root = lc_msg_root(m);
    assert_int_equal(lc_value_int(lc_map_get(root, "N")), n);
    lc_value *arr = lc_map_get(root, "F");
    assert_int_equal(lc_value_len(arr), (size_t)nfds);
    for (int i = 0; i < nfds; i++) {
        int fd = lc_value_take_fd(lc_array_get(arr, i), NULL);
        assert_true(fd >= 0);
        close(fd);
    }
    lc_msg_free(m);
    return 0;
}

/* ---- unclaimed passed fds ------------------------------------------------------ */

/*
 * Several messages that pass fds queued behind a big message: the sending
 * session sends the queued fds ahead of their messages' bytes, 64 per
 * one-byte write (PROTOCOL.md 7). 320 fds then arrive before any message
 * naming them: the receiving session must not pause for good with the
 * messages that would claim them still unread on the carrier.
 */
static void test_fds_queued_ahead_of_their_messages(void **st)
{
    (void)st;
    LC_KNOWN_BUG("more than 256 passed fds queued ahead of their messages' bytes pause the receiving session for good");
    LC_TEST_DEADLINE(20);
    enum { MSGS = 5, PER = 64, BIG = 3 << 20 };
    char url[128];
    nt_pair p;
    nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, NULL);
    lc_sender *s;
    lc_receiver *r;
    assert_int_equal(lc_session_sender(p.client, &s), 0);
    assert_int_equal(lc_send(s, nt_msg_n(-1), 5000), 0);
    assert_int_equal(lc_session_receiver(p.server, &r, 5000), 0);
    nt_expect_n(r, -1);
    /* fds passing is on once each side has read the other's SETTINGS */
    int64_t end = lc_test_now_us() + 5000000;
    while (!(atomic_load(&p.client->peer_fdpass) && atomic_load(&p.server->peer_fdpass)) && lc_test_now_us() < end) {
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    assert_true(atomic_load(&p.client->peer_fdpass));
    /* one channel per message that passes fds: the big message's window
     * does not hold them back */
    lc_sender *fs[MSGS];
    lc_receiver *fr[MSGS];
    for (int i = 0; i < MSGS; i++) {
        assert_int_equal(lc_session_sender(p.client, &fs[i]), 0);
        assert_int_equal(lc_send(fs[i], nt_msg_n(-1), 5000), 0);
        assert_int_equal(lc_session_receiver(p.server, &fr[i], 5000), 0);
        nt_expect_n(fr[i], -1);
    }
    int pf[2];
    assert_int_equal(pipe2(pf, O_CLOEXEC), 0);
    lc_msg *fdm[MSGS];
    for (int i = 0; i < MSGS; i++)
        fdm[i] = msg_with_fds(i, pf[0], PER);
    void *blob = calloc(1, BIG);
    assert_non_null(blob);
    lc_msg *big = lc_pack("{s:i, s:b}", "N", 100, "Blob", blob, (size_t)BIG);
    free(blob);
    /* the engine reads nothing meanwhile: the big message fills the
     * carrier, the others queue behind it */
    engine_stall es;
    engine_stall_start(&es, 300);
    uint64_t rx0 = atomic_load(&p.server->rx_reads);
    int64_t t0 = lc_test_now_us();
    assert_int_equal(lc_send(s, big, 5000), 0);
    for (int i = 0; i < MSGS; i++)
        assert_int_equal(lc_send(fs[i], fdm[i], 5000), 0);
    fprintf(stderr, "server reads meanwhile: %llu, %lld us, stall done %d\n", (unsigned long long)(atomic_load(&p.server->rx_reads) - rx0), (long long)(lc_test_now_us() - t0), atomic_load(&es.done));
    pthread_mutex_lock(&p.client->wmu);
    fprintf(stderr, "client: written %llu, pending %zu, fdq %zu\n", (unsigned long long)p.client->written_total,
            p.client->out.len + p.client->inflight.len - p.client->inflight_off, p.client->fdq_len);
    pthread_mutex_unlock(&p.client->wmu);
    engine_stall_wait(&es);
    lc_msg *m = NULL;
    int rc = lc_recv(r, &m, 2000);
    size_t held = fds_unclaimed(p.server);
    bool paused = session_paused(p.server);
    fprintf(stderr, "big message: %s; server: %zu fds unclaimed, paused %d\n", lc_strerror(rc), held, paused);
    lc_msg_free(m);
    int got = 0;
    if (rc == 0)
        for (; got < MSGS; got++) {
            rc = expect_fds_msg(fr[got], got, PER, 2000);
            if (rc != 0) {
                fprintf(stderr, "message %d: %s\n", got, lc_strerror(rc));
                break;
            }
        }
    lc_sender_release(s);
    lc_receiver_release(r);
    for (int i = 0; i < MSGS; i++) {
        lc_sender_release(fs[i]);
        lc_receiver_release(fr[i]);
    }
    nt_close_pair(&p);
    close(pf[0]);
    close(pf[1]);
    assert_int_equal(rc, 0);
    assert_int_equal(got, MSGS);
}

int main(void)
{
    lc__engine_default(); /* its fds live as long as the process */
    nt_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fds_queued_ahead_of_their_messages, lc_test_setup, lc_test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
