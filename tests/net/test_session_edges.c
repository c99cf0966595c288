/*
 * test_session_edges.c - adversarial tests of session areas that
 * test_session_stress.c does not cover:
 *   - fd passing on unix carriers (SCM_RIGHTS): more fds in one message and
 *     in a burst than one sendmsg carries (LC_TRANSPORT_MAX_FDS), fds inside
 *     channels inside messages, a message with fds forwarded
 *     unix -> tcp -> unix, select send cases giving fd numbers back, peers
 *     freed / killed (peer_proc, SIGKILL) / stalled, receivers released,
 *     graceful close while messages with fds are queued: every fd closed
 *     exactly once (pipes' write ends get EPIPE; fds we keep stay valid);
 *   - listeners and dialing: accept racing lc_listener_close, dialing a
 *     listener being closed, many concurrent dials and accepts, dial
 *     timeouts against a full backlog, bad URLs, stale socket files,
 *     abstract names, re-listening on the same path;
 *   - flow control: a channel nobody reads next to channels that must keep
 *     flowing, send timeouts that lose nothing, a small max_pending_out with
 *     big messages, messages bigger than one SPDY frame, windows of 1..5
 *     bytes, a message over the receiver's max_message, a byte stream's
 *     direct write waking senders blocked on the output; toward a peer
 *     without windows, reading paused that resumes at half the window, stays
 *     paused for an unread byte stream, and still sees the peer hang up;
 *   - lc_select over two sessions plus pollable fds while one session dies,
 *     a network Sender's pollable fd, sends racing our own lc_session_close
 *     (also one that carries a byte stream).
 * A test that exposes a library bug is guarded by LC_KNOWN_BUG (nettest.h)
 * and runs only with LC_RUN_KNOWN_BUGS=1; none is guarded today.
 * LC_STRESS_SCALE=n multiplies the rounds (default 1); LC_EDGE_DEBUG=1 and
 * LC_EDGE_TRACE=1 print more.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <signal.h>
#include <stdatomic.h>
#include <sys/ioctl.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/un.h>
#include <linux/sockios.h>

#include "nettest.h"
#include "transport/transport.h"

/* ---- helpers ------------------------------------------------------------------ */


/* A message through each direction, so each side has read the other's
 * SETTINGS (its first frame): fds are passed as themselves from here. */
static void warm_pair(nt_pair *p)
{
    lc_sender *a, *b;
    lc_receiver *ra, *rb;
    assert_int_equal(lc_session_sender(p->client, &a), 0);
    assert_int_equal(lc_session_receiver(p->server, &ra, 5000), 0);
    assert_int_equal(lc_session_sender(p->server, &b), 0);
    assert_int_equal(lc_session_receiver(p->client, &rb, 5000), 0);
    assert_int_equal(lc_send(a, nt_msg_n(1), 5000), 0);
    nt_expect_n(ra, 1);
    assert_int_equal(lc_send(b, nt_msg_n(2), 5000), 0);
    nt_expect_n(rb, 2);
    lc_sender_release(a);
    lc_sender_release(b);
    lc_receiver_release(ra);
    lc_receiver_release(rb);
}

/* fd identity: device and inode */
typedef struct {
    dev_t dev;
    ino_t ino;
} fd_id;

static fd_id id_of(int fd)
{
    struct stat sb;
    fd_id r = { 0, 0 };
    if (fstat(fd, &sb) == 0) {
        r.dev = sb.st_dev;
        r.ino = sb.st_ino;
    }
    return r;
}

static bool same_id(fd_id a, fd_id b)
{
    return a.dev == b.dev && a.ino == b.ino;
}

/* A message {Tag: tag, Fds: [n read ends of pipes]}; w[i] gets the write
 * ends, ids[i] the pipes' identity. */
static lc_msg *msg_with_pipes(int tag, int n, int *w, fd_id *ids)
{
    lc_msg *m = lc_msg_new();
    lc_value *root = lc_new_map(m);
    lc_value *arr = lc_new_array(m);
    assert_int_equal(lc_map_set(m, root, "Tag", lc_new_int(m, tag)), 0);
    for (int i = 0; i < n; i++) {
        int pf[2];
        assert_int_equal(pipe2(pf, O_CLOEXEC), 0);
        if (ids)
            ids[i] = id_of(pf[0]);
        w[i] = pf[1];
        assert_int_equal(lc_array_append(m, arr, lc_new_stream(m, pf[0], LC_STREAM_READ)), 0);
    }
    assert_int_equal(lc_map_set(m, root, "Fds", arr), 0);
    assert_int_equal(lc_msg_set_root(m, root), 0);
    return m;
}

/* Reads exactly one byte from fd (blocking with a bound). */
static int read_byte(int fd, int timeout_ms)
{
    struct pollfd pf = { fd, POLLIN, 0 };
    if (poll(&pf, 1, timeout_ms) != 1)
        return -2;
    unsigned char c;
    ssize_t n = read(fd, &c, 1);
    return n == 1 ? c : -1;
}

/* Is fd at EOF within timeout_ms? */
static bool at_eof(int fd, int timeout_ms)
{
    struct pollfd pf = { fd, POLLIN, 0 };
    if (poll(&pf, 1, timeout_ms) != 1)
        return false;
    char c;
    return read(fd, &c, 1) == 0;
}

/* Checks a received {Tag, Fds} message: tag, count, and that byte
 * (tag*7+i)&0xff written on w[i] comes out of the i-th received fd; when
 * ids is given, also counts how many arrived as the very same pipe. Closes
 * the received fds; leaves w open. */
static int check_pipes_msg_ex(lc_msg *m, int tag, int n, const int *w, const fd_id *ids, bool substreams_dead);
static int check_pipes_msg(lc_msg *m, int tag, int n, const int *w, const fd_id *ids)
{
    return check_pipes_msg_ex(m, tag, n, w, ids, false);
}

/* substreams_dead: the session is gone, so an fd that is not the pipe
 * itself (a sub-stream's socketpair end) carries nothing any more: only
 * passed fds are checked then. */
static int check_pipes_msg_ex(lc_msg *m, int tag, int n, const int *w, const fd_id *ids, bool substreams_dead)
{
    int got_tag = -1;
    lc_value *arr = NULL;
    assert_int_equal(lc_unpack(m, "{s:i, s:v}", "Tag", &got_tag, "Fds", &arr), 0);
    assert_int_equal(got_tag, tag);
    assert_int_equal((int)lc_value_len(arr), n);
    int same = 0;
    for (int i = 0; i < n; i++) {
        int fd = lc_value_take_fd(lc_array_get(arr, (size_t)i), NULL);
        assert_true(fd >= 0);
        bool itself = ids && same_id(id_of(fd), ids[i]);
        if (itself)
            same++;
        if (substreams_dead && !itself) {
            close(fd);
            continue;
        }
        unsigned char c = (unsigned char)((tag * 7 + i) & 0xff);
        assert_int_equal(write(w[i], &c, 1), 1);
        int r = read_byte(fd, 5000);
        if (r != c)
            fprintf(stderr, "tag %d fd %d of %d: read %d, wanted %d\n", tag, i, n, r, c);
        assert_int_equal(r, c);
        close(fd);
    }
    return same;
}

static void close_all(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
}

/* Every fd in fds still open and still the same file. */
static void assert_still(const int *fds, const fd_id *ids, int n)
{
    for (int i = 0; i < n; i++) {
        if (fcntl(fds[i], F_GETFD) < 0) {
            fprintf(stderr, "fd %d (index %d) was closed behind our back\n", fds[i], i);
            fail();
        }
        if (!same_id(id_of(fds[i]), ids[i])) {
            fprintf(stderr, "fd %d (index %d) now names another file\n", fds[i], i);
            fail();
        }
    }
}

/* ---- 1. fd passing ------------------------------------------------------------- */

/* 150 fds in one message: 64 ride SCM_RIGHTS, the rest become sub-streams;
 * all arrive, in order, each reading its own pipe. */
static void test_fd_many_in_one_message(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30 * nt_scale());
    int rounds = 6 * nt_scale();
    enum { N = 150 };
    for (int r = 0; r < rounds; r++) {
        char url[128];
        nt_pair p;
        nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, NULL);
        warm_pair(&p);
        lc_sender *s;
        lc_receiver *rv;
        assert_int_equal(lc_session_sender(p.client, &s), 0);
        assert_int_equal(lc_session_receiver(p.server, &rv, 5000), 0);
        int w[N];
        fd_id ids[N];
        int n = r % 2 ? N : LC_TRANSPORT_MAX_FDS + 1;
        assert_int_equal(lc_send(s, msg_with_pipes(r, n, w, ids), 5000), 0);
        lc_msg *m;
        assert_int_equal(lc_recv(rv, &m, 5000), 0);
        int same = check_pipes_msg(m, r, n, w, ids);
        if (same != LC_TRANSPORT_MAX_FDS)
            fprintf(stderr, "round %d: %d of %d fds passed as themselves\n", r, same, n);
        assert_int_equal(same, LC_TRANSPORT_MAX_FDS);
        lc_msg_free(m);
        close_all(w, n);
        lc_sender_release(s);
        lc_receiver_release(rv);
        nt_close_pair(&p);
    }
}

/* Two threads, each on its own channel, send a burst of messages with 10
 * fds each (hundreds queued at once: several sendmsg batches of 64). Every
 * message's fds must be its own. */
typedef struct {
    lc_sender *s;
    int base, msgs, per;
    int *w;     /* msgs * per write ends */
    fd_id *ids;
    int rc;
} burst_arg;

static void *burst_fn(void *x)
{
    burst_arg *a = x;
    for (int i = 0; i < a->msgs; i++) {
        lc_msg *m = msg_with_pipes(a->base + i, a->per, a->w + i * a->per, a->ids + i * a->per);
        a->rc = lc_send(a->s, m, 5000);
        if (a->rc != 0) {
            lc_msg_free(m);
            return NULL;
        }
    }
    return NULL;
}

static void test_fd_burst_two_threads(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(40 * nt_scale());
    int rounds = 8 * nt_scale();
    enum { MSGS = 15, PER = 10 };
    for (int r = 0; r < rounds; r++) {
        char url[128];
        nt_pair p;
        nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, NULL);
        warm_pair(&p);
        lc_sender *s[2];
        lc_receiver *rv[2];
        for (int k = 0; k < 2; k++) {
            assert_int_equal(lc_session_sender(p.client, &s[k]), 0);
            assert_int_equal(lc_session_receiver(p.server, &rv[k], 5000), 0);
        }
        static int w[2][MSGS * PER];
        static fd_id ids[2][MSGS * PER];
        burst_arg a[2];
        pthread_t t[2];
        for (int k = 0; k < 2; k++) {
            a[k] = (burst_arg){ .s = s[k], .base = k * 1000, .msgs = MSGS, .per = PER, .w = w[k], .ids = ids[k] };
            pthread_create(&t[k], NULL, burst_fn, &a[k]);
        }
        for (int k = 0; k < 2; k++)
            pthread_join(t[k], NULL);
        assert_int_equal(a[0].rc, 0);
        assert_int_equal(a[1].rc, 0);
        /* receive interleaved: channel 1 first, in reverse pairs */
        int same = 0;
        for (int i = 0; i < MSGS; i++) {
            for (int k = 1; k >= 0; k--) {
                lc_msg *m;
                assert_int_equal(lc_recv(rv[k], &m, 5000), 0);
                same += check_pipes_msg(m, k * 1000 + i, PER, w[k] + i * PER, ids[k] + i * PER);
                lc_msg_free(m);
            }
        }
        assert_int_equal(same, 2 * MSGS * PER);
        for (int k = 0; k < 2; k++) {
            close_all(w[k], MSGS * PER);
            lc_sender_release(s[k]);
            lc_receiver_release(rv[k]);
        }
        nt_close_pair(&p);
    }
}

/* fds inside a message sent on a channel that itself travels inside a
 * message: {Reply: Sender} then on the received Sender a message with fds,
 * and a Receiver inside which messages with fds come. */
static void test_fd_nested_in_channels(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30 * nt_scale());
    int rounds = 10 * nt_scale();
    enum { PER = 5 };
    for (int r = 0; r < rounds; r++) {
        char url[128];
        nt_pair p;
        nt_open_pair(&p, nt_transport_url(r, url, sizeof url), NULL, NULL);
        if (r % 4 < 2)
            warm_pair(&p);
        lc_sender *s;
        lc_receiver *rv;
        assert_int_equal(lc_session_sender(p.client, &s), 0);
        assert_int_equal(lc_session_receiver(p.server, &rv, 5000), 0);
        /* client -> server: a Receiver (client feeds it) and a Sender
         * (client reads replies from it) */
        lc_receiver *feed_r, *reply_r;
        lc_sender *feed_s, *reply_s;
        assert_int_equal(lc_pipe(&feed_r, &feed_s, 4), 0);
        assert_int_equal(lc_pipe(&reply_r, &reply_s, 4), 0);
        assert_int_equal(lc_send(s, lc_pack("{s:R, s:S}", "In", feed_r, "Out", reply_s), 5000), 0);
        lc_msg *m;
        assert_int_equal(lc_recv(rv, &m, 5000), 0);
        lc_receiver *srv_in;
        lc_sender *srv_out;
        assert_int_equal(lc_unpack(m, "{s:R, s:S}", "In", &srv_in, "Out", &srv_out), 0);
        lc_msg_free(m);
        int w1[PER], w2[PER];
        for (int i = 0; i < 3; i++) {
            assert_int_equal(lc_send(feed_s, msg_with_pipes(100 + i, PER, w1, NULL), 5000), 0);
            assert_int_equal(lc_recv(srv_in, &m, 5000), 0);
            check_pipes_msg(m, 100 + i, PER, w1, NULL);
            lc_msg_free(m);
            close_all(w1, PER);
            assert_int_equal(lc_send(srv_out, msg_with_pipes(200 + i, PER, w2, NULL), 5000), 0);
            assert_int_equal(lc_recv(reply_r, &m, 5000), 0);
            check_pipes_msg(m, 200 + i, PER, w2, NULL);
            lc_msg_free(m);
            close_all(w2, PER);
        }
        lc_close(feed_s);
        assert_int_equal(lc_recv(srv_in, &m, 5000), LC_EOF);
        lc_close(srv_out);
        assert_int_equal(lc_recv(reply_r, &m, 5000), LC_EOF);
        lc_sender_release(feed_s);
        lc_sender_release(srv_out);
        lc_receiver_release(srv_in);
        lc_receiver_release(reply_r);
        lc_sender_release(s);
        lc_receiver_release(rv);
        nt_close_pair(&p);
    }
}

/* A message with fds goes A -unix-> B -tcp-> C -unix-> D: B's copies are
 * real fds that become sub-streams over tcp, C's are socketpair ends that go
 * as fds again. Bytes written on A's pipes come out at D, in order, then
 * EOF when A closes them. */
static void test_fd_forwarded_unix_tcp_unix(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(40 * nt_scale());
    int rounds = 6 * nt_scale();
    enum { PER = 8, MSGS = 3 };
    for (int r = 0; r < rounds; r++) {
        char u1[128], u3[128];
        nt_pair ab, bc, cd;
        nt_open_pair(&ab, nt_unix_url(u1, sizeof u1), NULL, NULL);
        nt_open_pair(&bc, "tcp://127.0.0.1:0", NULL, NULL);
        nt_open_pair(&cd, nt_unix_url(u3, sizeof u3), NULL, NULL);
        if (r % 2 == 0) {
            warm_pair(&ab);
            warm_pair(&cd);
        }
        lc_sender *sa, *sb, *sc;
        lc_receiver *rb, *rc, *rd;
        assert_int_equal(lc_session_sender(ab.client, &sa), 0);
        assert_int_equal(lc_session_receiver(ab.server, &rb, 5000), 0);
        assert_int_equal(lc_session_sender(bc.client, &sb), 0);
        assert_int_equal(lc_session_receiver(bc.server, &rc, 5000), 0);
        assert_int_equal(lc_session_sender(cd.client, &sc), 0);
        assert_int_equal(lc_session_receiver(cd.server, &rd, 5000), 0);
        int w[MSGS][PER];
        for (int i = 0; i < MSGS; i++)
            assert_int_equal(lc_send(sa, msg_with_pipes(i, PER, w[i], NULL), 5000), 0);
        for (int i = 0; i < MSGS; i++) {
            lc_msg *m;
            assert_int_equal(lc_recv(rb, &m, 5000), 0);
            assert_int_equal(lc_send(sb, m, 5000), 0);
            assert_int_equal(lc_recv(rc, &m, 5000), 0);
            assert_int_equal(lc_send(sc, m, 5000), 0);
        }
        for (int i = 0; i < MSGS; i++) {
            lc_msg *m;
            assert_int_equal(lc_recv(rd, &m, 5000), 0);
            int tag = -1;
            lc_value *arr;
            assert_int_equal(lc_unpack(m, "{s:i, s:v}", "Tag", &tag, "Fds", &arr), 0);
            assert_int_equal(tag, i);
            int fds[PER];
            for (int k = 0; k < PER; k++) {
                fds[k] = lc_value_take_fd(lc_array_get(arr, (size_t)k), NULL);
                assert_true(fds[k] >= 0);
            }
            lc_msg_free(m);
            /* a few bytes each, then EOF */
            for (int k = 0; k < PER; k++) {
                char buf[64];
                int len = snprintf(buf, sizeof buf, "m%d-f%d-hello", i, k);
                assert_int_equal(write(w[i][k], buf, (size_t)len), len);
                close(w[i][k]);
                char got[64];
                int off = 0;
                int64_t end = lc_test_now_us() + 5000000;
                while (off < len && lc_test_now_us() < end) {
                    struct pollfd pf = { fds[k], POLLIN, 0 };
                    if (poll(&pf, 1, 1000) != 1)
                        continue;
                    ssize_t n = read(fds[k], got + off, sizeof got - (size_t)off);
                    if (n <= 0)
                        break;
                    off += (int)n;
                }
                if (off != len || memcmp(got, buf, (size_t)len) != 0)
                    fprintf(stderr, "round %d msg %d fd %d: got %d bytes '%.*s', wanted '%s'\n", r, i, k, off, off,
                            got, buf);
                assert_int_equal(off, len);
                assert_memory_equal(got, buf, (size_t)len);
                assert_true(at_eof(fds[k], 5000));
                close(fds[k]);
            }
        }
        lc_sender_release(sa);
        lc_sender_release(sb);
        lc_sender_release(sc);
        lc_receiver_release(rb);
        lc_receiver_release(rc);
        lc_receiver_release(rd);
        nt_close_pair(&cd);
        nt_close_pair(&bc);
        nt_close_pair(&ab);
    }
}

/* Messages with fds queued unread on the server, then (mode) the receiver is
 * released, the server session is freed, the client session is freed, or
 * the client closes gracefully; every passed read end must end up closed
 * (writes on our write ends get EPIPE), nothing we kept is closed twice. */
enum { Q_RELEASE_RECEIVER, Q_FREE_SERVER, Q_FREE_CLIENT, Q_CLOSE_CLIENT, Q_MODES };
static const char *const q_names[] = { "release receiver", "free server", "free client", "close client" };

static bool write_gets_epipe(int fd, int timeout_ms)
{
    int64_t end = lc_test_now_us() + (int64_t)timeout_ms * 1000;
    for (;;) {
        char c = 'x';
        ssize_t n = write(fd, &c, 1);
        if (n < 0 && errno == EPIPE)
            return true;
        if (lc_test_now_us() > end)
            return false;
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
}

static void run_fd_queued_round(int mode, int r)
{
    enum { MSGS = 40, PER = 3 };
    char url[128];
    nt_pair p;
    lc_options o;
    lc_options_default(&o);
    o.recv_queue = 8; /* most of them wait in the session, not in the queue */
    nt_open_pair(&p, nt_unix_url(url, sizeof url), &o, &o);
    /* Unwarmed, the first messages may leave before the peer's SETTINGS is
     * read: their fds then go as pumped sub-streams. A graceful close reads
     * those to EOF first, and the write ends we keep would hold it for its
     * whole timeout (LC_ETIMEDOUT, as lc_session_close says): warm for it. */
    if (r % 3 != 2 || mode == Q_CLOSE_CLIENT)
        warm_pair(&p);
    lc_sender *s;
    lc_receiver *rv;
    assert_int_equal(lc_session_sender(p.client, &s), 0);
    assert_int_equal(lc_session_receiver(p.server, &rv, 5000), 0);
    /* fds of ours that must survive everything */
    int keep[8];
    fd_id keep_id[8];
    for (int i = 0; i < 8; i += 2) {
        int pf[2];
        assert_int_equal(pipe2(pf, O_CLOEXEC), 0);
        keep[i] = pf[0];
        keep[i + 1] = pf[1];
        keep_id[i] = id_of(pf[0]);
        keep_id[i + 1] = id_of(pf[1]);
    }
    static int w[MSGS * PER];
    static fd_id ids[MSGS * PER];
    for (int i = 0; i < MSGS; i++)
        assert_int_equal(lc_send(s, msg_with_pipes(i, PER, w + i * PER, ids + i * PER), 5000), 0);
    /* the first few are read (and their fds closed by us) */
    int nread = r % 4;
    for (int i = 0; i < nread; i++) {
        lc_msg *m;
        assert_int_equal(lc_recv(rv, &m, 5000), 0);
        check_pipes_msg(m, i, PER, w + i * PER, NULL);
        lc_msg_free(m);
    }
    /* the queue has filled up (everything has reached the server) */
    int64_t end = lc_test_now_us() + 5000000;
    /* (a slot freed by a recv is refilled at the next recv, not at once) */
    size_t want = o.recv_queue - (size_t)nread;
    while (lc_receiver_queued(rv) < want && lc_test_now_us() < end) {
        struct timespec ts = { 0, 200000 };
        nanosleep(&ts, NULL);
    }
    if (lc_receiver_queued(rv) < want) {
        fprintf(stderr, "%s round %d: %zu queued, session errors %s / %s\n", q_names[mode], r, lc_receiver_queued(rv),
                lc_strerror(lc_session_error(p.client)), lc_strerror(lc_session_error(p.server)));
        fail();
    }
    switch (mode) {
    case Q_RELEASE_RECEIVER:
        lc_receiver_release(rv);
        rv = NULL;
        break;
    case Q_FREE_SERVER:
        lc_session_free(p.server);
        p.server = NULL;
        break;
    case Q_FREE_CLIENT:
        lc_session_free(p.client);
        p.client = NULL;
        break;
    case Q_CLOSE_CLIENT:
        assert_int_equal(lc_session_close(p.client, 3000), 0);
        break;
    }
    if (rv != NULL) {
        /* drain what is left; each message's fds still work */
        int got = nread;
        for (;;) {
            lc_msg *m;
            int rc = lc_recv(rv, &m, mode == Q_FREE_SERVER ? 100 : 5000);
            if (rc != 0) {
                if (rc != LC_ESESSION && rc != LC_EOF && !(mode == Q_FREE_SERVER && rc == LC_ETIMEDOUT))
                    fprintf(stderr, "%s round %d: recv %s after %d\n", q_names[mode], r, lc_strerror(rc), got);
                break;
            }
            check_pipes_msg_ex(m, got, PER, w + got * PER, ids + got * PER,
                               mode == Q_FREE_SERVER || mode == Q_FREE_CLIENT);
            lc_msg_free(m);
            got++;
        }
        if (mode == Q_CLOSE_CLIENT && got != MSGS) {
            fprintf(stderr, "close client round %d: %d of %d messages after a graceful close\n", r, got, MSGS);
            fail();
        }
        lc_receiver_release(rv);
    }
    lc_sender_release(s);
    if (p.client)
        lc_session_free(p.client);
    if (p.server)
        lc_session_free(p.server);
    lc_listener_close(p.l);
    /* every read end is gone now */
    for (int i = 0; i < MSGS * PER; i++) {
        if (!write_gets_epipe(w[i], 3000)) {
            fprintf(stderr, "%s round %d: read end of pipe %d (msg %d) still open\n", q_names[mode], r, i, i / PER);
            lc_test_list_fds();
            fail();
        }
    }
    close_all(w, MSGS * PER);
    assert_still(keep, keep_id, 8);
    close_all(keep, 8);
}

static void run_fd_queued(int mode)
{
    signal(SIGPIPE, SIG_IGN);
    int rounds = 8 * nt_scale();
    for (int r = 0; r < rounds; r++)
        run_fd_queued_round(mode, r);
}

static void test_fd_queued_receiver_released(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(40 * nt_scale());
    run_fd_queued(Q_RELEASE_RECEIVER);
}

static void test_fd_queued_server_freed(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(40 * nt_scale());
    run_fd_queued(Q_FREE_SERVER);
}

static void test_fd_queued_client_freed(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(40 * nt_scale());
    run_fd_queued(Q_FREE_CLIENT);
}

static void test_fd_queued_client_graceful_close(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(40 * nt_scale());
    run_fd_queued(Q_CLOSE_CLIENT);
}

/* The client frees its session while another thread is still sending
 * messages with fds: every fd of a message whose lc_send failed is still
 * the caller's (closed by lc_msg_free); every accepted one either reaches
 * the server or is closed. */
typedef struct {
    lc_sender *s;
    atomic_int sent;
    int rc;
    int *w;
    int cap;
} fd_flood_arg;

static void *fd_flood_fn(void *x)
{
    fd_flood_arg *a = x;
    for (int i = 0; i < a->cap; i++) {
        lc_msg *m = msg_with_pipes(i, 2, a->w + 2 * i, NULL);
        a->rc = lc_send(a->s, m, 5000);
        if (a->rc != 0) {
            lc_msg_free(m);
            return NULL;
        }
        atomic_fetch_add(&a->sent, 1);
    }
    return NULL;
}

static void test_fd_sends_while_session_freed(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(40 * nt_scale());
    signal(SIGPIPE, SIG_IGN);
    int rounds = 12 * nt_scale();
    enum { CAP = 300 };
    for (int r = 0; r < rounds; r++) {
        char url[128];
        nt_pair p;
        nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, NULL);
        if (r % 2 == 0)
            warm_pair(&p);
        lc_sender *s;
        lc_receiver *rv;
        assert_int_equal(lc_session_sender(p.client, &s), 0);
        assert_int_equal(lc_session_receiver(p.server, &rv, 5000), 0);
        static int w[2 * CAP];
        for (int i = 0; i < 2 * CAP; i++)
            w[i] = -1;
        fd_flood_arg a = { .s = s, .w = w, .cap = CAP };
        pthread_t t;
        pthread_create(&t, NULL, fd_flood_fn, &a);
        assert_true(nt_wait_at_least(&a.sent, 1 + r % 20, 5000));
        if (r % 3 == 0)
            lc_session_free(p.server);
        else
            lc_session_free(p.client);
        pthread_join(t, NULL);
        lc_sender_release(s);
        lc_receiver_release(rv);
        if (r % 3 == 0)
            lc_session_free(p.client);
        else
            lc_session_free(p.server);
        lc_listener_close(p.l);
        int n = atomic_load(&a.sent) + (a.rc != 0 ? 1 : 0);
        if (n > CAP)
            n = CAP;
        for (int i = 0; i < 2 * n; i++) {
            if (w[i] >= 0 && !write_gets_epipe(w[i], 3000)) {
                fprintf(stderr, "round %d: read end of pipe %d still open (sent %d, rc %s)\n", r, i,
                        atomic_load(&a.sent), lc_strerror(a.rc));
                fail();
            }
        }
        close_all(w, 2 * CAP);
    }
}

/* Waits (bounded) until every pipe in w[0..n) has no reader left; returns
 * how many still have one. */
static int readers_left(const int *w, int n, int timeout_ms)
{
    int left = 0;
    for (int i = 0; i < n; i++)
        if (!write_gets_epipe(w[i], left ? 0 : timeout_ms))
            left++;
    return left;
}

/* Messages with passed fds that reach a channel whose receiver is gone (the
 * DATA arrives after the stream was reset: on_data drops it undecoded) or
 * that do not decode (over max_message): the fds they name must be closed
 * while the session lives on, not kept until lc_session_free. */
static void run_fd_unclaimed_round(int r, bool too_big)
{
    enum { MSGS = 60, PER = 2 };
    char url[128];
    lc_options so;
    lc_options_default(&so);
    if (too_big)
        so.limits.max_message = 4096;
    nt_pair p;
    nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, &so);
    warm_pair(&p);
    lc_sender *s;
    lc_receiver *rv;
    assert_int_equal(lc_session_sender(p.client, &s), 0);
    assert_int_equal(lc_session_receiver(p.server, &rv, 5000), 0);
    assert_int_equal(lc_send(s, nt_msg_n(0), 5000), 0);
    nt_expect_n(rv, 0);
    static int w[MSGS * PER];
    int n = 0, sent = 0;
    if (!too_big) {
        lc_receiver_release(rv);
        rv = NULL;
    }
    static char blob[8192];
    for (int i = 0; i < MSGS; i++) {
        lc_msg *m = msg_with_pipes(i, PER, w + n, NULL);
        if (too_big)
            assert_int_equal(lc_map_set(m, lc_msg_root(m), "B", lc_new_binary(m, blob, sizeof blob)), 0);
        n += PER;
        int rc = lc_send(s, m, 2000);
        if (rc != 0) {
            lc_msg_free(m); /* ours again: closes its read ends */
            break;
        }
        sent++;
    }
    if (too_big) {
        lc_msg *m;
        int rc = lc_recv(rv, &m, 5000);
        if (rc == 0)
            lc_msg_free(m);
        assert_int_equal(rc, LC_EPROTO);
    }
    /* a round trip on another channel: everything sent before has been
     * read by the server */
    warm_pair(&p);
    int left = readers_left(w, n, 2000);
    if (getenv("LC_EDGE_DEBUG"))
        fprintf(stderr, "round %d: %d messages sent\n", r, sent);
    if (left)
        fprintf(stderr, "round %d (%s): %d of %d passed fds (%d messages sent) still open in the live session\n", r,
                too_big ? "over max_message" : "receiver released", left, n, sent);
    lc_sender_release(s);
    lc_receiver_release(rv);
    nt_close_pair(&p);
    int after = readers_left(w, n, 2000);
    close_all(w, n);
    assert_int_equal(after, 0);
    assert_int_equal(left, 0);
}

static void test_fd_unclaimed_after_receiver_released(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    signal(SIGPIPE, SIG_IGN);
    for (int r = 0; r < 4 * nt_scale(); r++)
        run_fd_unclaimed_round(r, false);
}

static void test_fd_unclaimed_in_undecodable_message(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    signal(SIGPIPE, SIG_IGN);
    for (int r = 0; r < 4 * nt_scale(); r++)
        run_fd_unclaimed_round(r, true);
}

/* A body message (ext 7) with n passed pipes and a body of blob bytes. */
static lc_msg *body_with_pipes(int n, int *w, size_t blob)
{
    static char zero[8192];
    assert_true(blob <= sizeof zero);
    lc_msg *m = lc_msg_new();
    assert_int_equal(lc_msg_set_body(m, zero, blob, "application/octet-stream"), 0);
    for (int i = 0; i < n; i++) {
        int pf[2];
        assert_int_equal(pipe2(pf, O_CLOEXEC), 0);
        w[i] = pf[1];
        assert_true(lc_msg_attach(m, lc_new_stream(m, pf[0], LC_STREAM_READ)) >= 0);
    }
    return m;
}

/* [[[...[1]...]]], depth levels of arrays. */
static lc_msg *deep_msg(int depth)
{
    lc_msg *m = lc_msg_new();
    lc_value *root = lc_new_array(m), *cur = root;
    for (int i = 0; i < depth; i++) {
        lc_value *a = lc_new_array(m);
        assert_int_equal(lc_array_append(m, cur, a), 0);
        cur = a;
    }
    assert_int_equal(lc_array_append(m, cur, lc_new_int(m, 1)), 0);
    assert_int_equal(lc_msg_set_root(m, root), 0);
    return m;
}

typedef enum { REFUSED_BODY, REFUSED_BEHIND_QUEUE, REFUSED_EARLY_SUBCHANNEL } refused_case;

/* The other ways a refused message's passed fds are found: the message is
 * an opaque body (its refs are inside ext 7), the refusal is found only as
 * its channel's messages are delivered (40 ahead of it behind a queue of
 * 1, more than the session decodes ahead), or a sub-channel's bytes that
 * came before the message naming it do not decode and the passed fds come
 * in a later message on it. Each time the fds are closed while the session
 * lives (found in review: they stayed until lc_session_free). */
static void run_refused_case(refused_case c)
{
    char url[128];
    lc_options so;
    lc_options_default(&so);
    so.limits.max_message = 4096;
    so.limits.max_depth = 8;
    so.recv_queue = 1;
    nt_pair p;
    nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, &so);
    warm_pair(&p); /* both have read the other's SETTINGS: fds are passed */
    lc_sender *s;
    lc_receiver *rv;
    assert_int_equal(lc_session_sender(p.client, &s), 0);
    assert_int_equal(lc_send(s, nt_msg_n(0), 5000), 0);
    assert_int_equal(lc_session_receiver(p.server, &rv, 5000), 0);
    nt_expect_n(rv, 0);
    int w[2] = { -1, -1 };
    lc_msg *m;
    switch (c) {
    case REFUSED_BODY:
        assert_int_equal(lc_send(s, body_with_pipes(2, w, 8192), 5000), 0);
        assert_int_equal(lc_recv(rv, &m, 5000), LC_EPROTO);
        break;
    case REFUSED_BEHIND_QUEUE: {
        for (int i = 1; i <= 40; i++)
            assert_int_equal(lc_send(s, nt_msg_n(i), 5000), 0);
        static char blob[8192];
        lc_msg *big = msg_with_pipes(99, 2, w, NULL);
        assert_int_equal(lc_map_set(big, lc_msg_root(big), "B", lc_new_binary(big, blob, sizeof blob)), 0);
        assert_int_equal(lc_send(s, big, 5000), 0);
        warm_pair(&p); /* the server has read all of it */
        for (int i = 1; i <= 40; i++)
            nt_expect_n(rv, i);
        assert_int_equal(lc_recv(rv, &m, 5000), LC_EPROTO);
        break;
    }
    case REFUSED_EARLY_SUBCHANNEL: {
        assert_int_equal(lc_send(s, nt_msg_n(1), 5000), 0); /* fills the queue of 1 */
        lc_receiver *r2;
        lc_sender *s2;
        assert_int_equal(lc_pipe(&r2, &s2, 16), 0);
        assert_int_equal(lc_send(s, lc_pack("{s:R}", "R", r2), 5000), 0);
        /* bytes on the sub-channel before the message naming it is delivered */
        assert_int_equal(lc_send(s2, deep_msg(20), 5000), 0);
        warm_pair(&p);
        nt_expect_n(rv, 1);
        assert_int_equal(lc_recv(rv, &m, 5000), 0); /* {R}: binds the sub-channel */
        lc_receiver *got = NULL;
        assert_int_equal(lc_unpack(m, "{s:R}", "R", &got), 0);
        lc_msg_free(m);
        lc_msg *m2;
        assert_int_equal(lc_recv(got, &m2, 5000), LC_EPROTO);
        lc_msg *late = msg_with_pipes(5, 2, w, NULL);
        if (lc_send(s2, late, 5000) != 0)
            lc_msg_free(late); /* (already reset: ours again, closed) */
        warm_pair(&p);
        lc_receiver_release(got);
        lc_sender_release(s2);
        break;
    }
    }
    int left = readers_left(w, 2, 2000);
    lc_sender_release(s);
    lc_receiver_release(rv);
    nt_close_pair(&p);
    int after = readers_left(w, 2, 2000);
    close_all(w, 2);
    if (left)
        fail_msg("case %d: %d of 2 passed fds still open in the live session (%d after free)", (int)c, left, after);
    assert_int_equal(after, 0);
}

static void test_fd_unclaimed_refused_body_late_or_early(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    signal(SIGPIPE, SIG_IGN);
    run_refused_case(REFUSED_BODY);
    run_refused_case(REFUSED_BEHIND_QUEUE);
    run_refused_case(REFUSED_EARLY_SUBCHANNEL);
}

/* A real peer process (peer_proc echo over unix) is killed (SIGKILL) while
 * a thread sends it messages with passed fds. Every fd we passed is closed
 * once the session is freed: the kernel drops the dead peer's copies, ours
 * must not linger in the session's queue. */
typedef struct {
    lc_sender *s;
    int *w;
    int cap;
    atomic_int sent;
    int rc;
} kill_flood;

static void *kill_flood_fn(void *x)
{
    kill_flood *a = x;
    for (int i = 0; i < a->cap; i++) {
        lc_receiver *rr;
        lc_sender *rs;
        if (lc_pipe(&rr, &rs, 1) != 0)
            return NULL;
        lc_receiver_release(rr); /* the reply is not awaited */
        lc_msg *m = msg_with_pipes(i, 3, a->w + 3 * i, NULL);
        lc_map_set(m, lc_msg_root(m), "Value", lc_new_int(m, i));
        lc_map_set(m, lc_msg_root(m), "Ret", lc_new_sender(m, rs));
        a->rc = lc_send(a->s, m, 5000);
        if (a->rc != 0) {
            lc_msg_free(m);
            return NULL;
        }
        atomic_fetch_add(&a->sent, 1);
    }
    return NULL;
}

static void test_fd_peer_process_killed(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    signal(SIGPIPE, SIG_IGN);
    enum { CAP = 400 };
    for (int r = 0; r < 6 * nt_scale(); r++) {
        char url[128];
        nt_proc pp;
        const char *args[] = { "echo", nt_unix_url(url, sizeof url), NULL };
        nt_proc_start(&pp, args);
        const char *bound = nt_proc_line(&pp, 10000);
        assert_non_null(bound);
        lc_session *c;
        assert_int_equal(lc_dial(bound, NULL, &c, NULL), 0);
        lc_sender *s;
        assert_int_equal(lc_session_sender(c, &s), 0);
        /* one echo first: both sides have read the other's SETTINGS */
        lc_receiver *rr;
        lc_sender *rs;
        assert_int_equal(lc_pipe(&rr, &rs, 1), 0);
        assert_int_equal(lc_send(s, lc_pack("{s:I, s:S}", "Value", (int64_t)7, "Ret", rs), 5000), 0);
        lc_msg *m;
        assert_int_equal(lc_recv(rr, &m, 5000), 0);
        lc_msg_free(m);
        lc_receiver_release(rr);
        static int w[3 * CAP];
        for (int i = 0; i < 3 * CAP; i++)
            w[i] = -1;
        kill_flood a = { .s = s, .w = w, .cap = CAP };
        pthread_t t;
        pthread_create(&t, NULL, kill_flood_fn, &a);
        assert_true(nt_wait_at_least(&a.sent, 1 + (r * 37) % 150, 10000));
        kill(pp.pid, SIGKILL);
        int stt = nt_proc_wait(&pp);
        assert_true(WIFSIGNALED(stt));
        pthread_join(t, NULL);
        int sent = atomic_load(&a.sent);
        if (sent == CAP) {
            /* all went before the kill was noticed: the session must see
             * the end anyway */
            lc_receiver *x;
            assert_int_equal(lc_session_receiver(c, &x, 5000), LC_ESESSION);
        } else if (a.rc != LC_ESESSION) {
            fprintf(stderr, "round %d: send after the peer was killed: %s\n", r, lc_strerror(a.rc));
            fail();
        }
        lc_sender_release(s);
        lc_session_free(c);
        if (getenv("LC_EDGE_DEBUG"))
            fprintf(stderr, "round %d: %d sent, last rc %s\n", r, sent, lc_strerror(a.rc));
        int n = sent + (sent < CAP ? 1 : 0);
        int left = readers_left(w, 3 * n, 3000);
        if (left) {
            fprintf(stderr, "round %d: %d of %d passed read ends still open (sent %d)\n", r, left, 3 * n, sent);
            lc_test_list_fds();
        }
        close_all(w, 3 * CAP);
        assert_int_equal(left, 0);
    }
}

/*
 * A peer (raw SPDY over a socketpair) that announces fd passing and huge
 * windows, then never reads. Round r opens it on *raw and sends messages
 * each passing STALL_PER pipe read ends (their write ends in w, *n of them)
 * until the session's output fills up (lc_send times out); *sent counts the
 * messages taken, *snd is their Sender.
 */
enum { STALL_CAP = 400, STALL_PER = 4 };

static void stall_with_fds_queued(int r, nt_raw *raw, int *w, int *n, int *sent, lc_sender **snd)
{
    lc_options o;
    lc_options_default(&o);
    o.max_pending_out = 256 * 1024 * (size_t)(1 + r % 2);
    nt_raw_open(raw, &o);
    lc_buf b;
    lc__buf_init(&b);
    lc_spdy_setting set[2] = { { 0, LC_SPDY_SETTINGS_INITIAL_WINDOW_SIZE, 0x7fffffff },
                               { 0, LC_SETTINGS_LIBCHAN,
                                 LC_FEATURE_WINDOWS | LC_FEATURE_FDPASS | LC_FEATURE_FD_READY } };
    assert_int_equal(lc__spdy_put_settings(&b, 0, set, 2), 0);
    nt_raw_send(raw, &b);
    lc__buf_free(&b);
    int64_t end = lc_test_now_us() + 5000000;
    /* (FD_READY unasked: this peer reads fds from the start, so the
     * session passes them without asking first) */
    while (!atomic_load(&raw->s->peer_reads_fds) && lc_test_now_us() < end) {
        /* the library reads our SETTINGS when something drives it */
        lc_receiver *x;
        if (lc_session_receiver(raw->s, &x, 1) == 0)
            lc_receiver_release(x);
    }
    assert_true(atomic_load(&raw->s->peer_reads_fds));
    assert_int_equal(lc_session_sender(raw->s, snd), 0);
    static char blob[32 * 1024];
    int rc = 0;
    *n = *sent = 0;
    for (int i = 0; i < STALL_CAP; i++) {
        lc_msg *m = msg_with_pipes(i, STALL_PER, w + *n, NULL);
        assert_int_equal(lc_map_set(m, lc_msg_root(m), "B", lc_new_binary(m, blob, sizeof blob)), 0);
        *n += STALL_PER;
        rc = lc_send(*snd, m, 100);
        if (rc != 0) {
            lc_msg_free(m);
            break;
        }
        (*sent)++;
    }
    assert_int_equal(rc, LC_ETIMEDOUT); /* the output filled up */
}

/* The stalled peer of stall_with_fds_queued: lc_session_close times out;
 * lc_session_free then closes every fd still queued, and the ones in
 * flight go with the carrier. */
static void test_fd_queue_on_stalled_carrier(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    signal(SIGPIPE, SIG_IGN);
    for (int r = 0; r < 4 * nt_scale(); r++) {
        nt_raw raw;
        static int w[STALL_CAP * STALL_PER];
        int n, sent;
        lc_sender *snd;
        stall_with_fds_queued(r, &raw, w, &n, &sent, &snd);
        int64_t t0 = lc_test_now_us();
        int crc = lc_session_close(raw.s, 300);
        int64_t ms = (lc_test_now_us() - t0) / 1000;
        if (crc != LC_ETIMEDOUT || ms > 1500)
            fprintf(stderr, "round %d: lc_session_close on a stalled carrier: %s after %lld ms (%d sent)\n", r,
                    lc_strerror(crc), (long long)ms, sent);
        assert_int_equal(crc, LC_ETIMEDOUT);
        assert_true(ms <= 1500);
        lc_sender_release(snd);
        nt_raw_close(&raw); /* frees the session, closes our end (and the fds in flight) */
        int left = readers_left(w, n, 3000);
        if (left)
            fprintf(stderr, "round %d: %d of %d passed read ends still open (%d sent)\n", r, left, n, sent);
        close_all(w, n);
        assert_int_equal(left, 0);
    }
}

/* The same stalled peer, but it hangs up: the fds still queued to pass can
 * no longer go, and are closed with the session's end, while the
 * application still holds the session and its Sender (a holder waiting for
 * EOF on a pipe whose other end it passed waits for that). They stayed open
 * until lc_session_free (a review helper: 36 of 40 pipes). */
static void test_fd_queue_closed_when_the_session_dies(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    signal(SIGPIPE, SIG_IGN);
    for (int r = 0; r < 4 * nt_scale(); r++) {
        nt_raw raw;
        static int w[STALL_CAP * STALL_PER];
        int n, sent;
        lc_sender *snd;
        stall_with_fds_queued(r, &raw, w, &n, &sent, &snd);
        pthread_mutex_lock(&raw.s->wmu);
        size_t queued = raw.s->fdq_len;
        pthread_mutex_unlock(&raw.s->wmu);
        assert_true(queued > 0);
        /* the peer hangs up (its unread bytes, and the fds they carry, go) */
        close(raw.fd);
        raw.fd = -1;
        int64_t end = lc_test_now_us() + 10000000;
        while (lc_session_error(raw.s) == 0 && lc_test_now_us() < end)
            usleep(1000);
        assert_int_not_equal(lc_session_error(raw.s), 0);
        int left = readers_left(w, n, 3000);
        if (left)
            fprintf(stderr, "round %d: %d of %d passed read ends still open with the session held (%d sent, "
                            "%zu fds were queued)\n", r, left, n, sent, queued);
        lc_sender_release(snd);
        nt_raw_close(&raw);
        close_all(w, n);
        assert_int_equal(left, 0);
    }
}

/* ---- 2. listeners and dialing ---------------------------------------------------- */

typedef struct {
    lc_listener *l;
    int64_t timeout;
    atomic_int tid; /* published before lc_accept (lc_test_wait_asleep) */
    int rc;
    int64_t done_us;
    lc_session *s;
} acc_arg;

static void *acc_fn(void *x)
{
    acc_arg *a = x;
    atomic_store(&a->tid, lc_test_gettid());
    a->rc = lc_accept(a->l, &a->s, a->timeout);
    a->done_us = lc_test_now_us();
    return NULL;
}

/* lc_accept blocked in another thread while the listener is closed: like
 * Go's Listener.Close, the accept should come back at once with an error
 * rather than sleep out its whole timeout (or forever with -1). */
static void test_accept_woken_by_listener_close(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(20);
    for (int r = 0; r < 4; r++) {
        char url[128];
        lc_listener *l;
        assert_int_equal(lc_listen(nt_transport_url(r, url, sizeof url), NULL, &l, NULL), 0);
        acc_arg a = { .l = l, .timeout = 3000 };
        pthread_t t;
        pthread_create(&t, NULL, acc_fn, &a);
        /* the thread is asleep in lc_accept (polling the listener) before the close */
        if (!lc_test_wait_asleep(&a.tid, 10000))
            fail_msg("%s: the thread did not block in lc_accept within 10 s", url);
        int64_t t0 = lc_test_now_us();
        lc_listener_close(l);
        pthread_join(t, NULL);
        int64_t late_ms = (a.done_us - t0) / 1000;
        if (a.s)
            lc_session_free(a.s);
        if (late_ms > 500) {
            fprintf(stderr, "%s: lc_accept returned %s %lld ms after lc_listener_close\n", url, lc_strerror(a.rc),
                    (long long)late_ms);
            fail();
        }
        assert_int_equal(a.rc, LC_ECLOSED);
    }
}

/* Dialing a listener that was closed: a clear error naming the URL; the
 * socket file is gone; a new listener on the same path works. */
static void test_dial_closed_listener_and_relisten(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(20);
    for (int r = 0; r < 20 * nt_scale(); r++) {
        char url[128], bound[256];
        lc_listener *l;
        lc_error err = { 0 };
        nt_transport_url(r, url, sizeof url);
        assert_int_equal(lc_listen(url, NULL, &l, &err), 0);
        assert_int_equal(lc_listener_url(l, bound, sizeof bound), 0);
        lc_listener_close(l);
        if (r % 2 == 0) {
            struct stat sb;
            assert_int_equal(stat(bound + strlen("unix://"), &sb), -1);
            assert_int_equal(errno, ENOENT);
        }
        lc_session *s = (lc_session *)&err; /* must be set to NULL */
        memset(&err, 0, sizeof err);
        int rc = lc_dial(bound, NULL, &s, &err);
        if (!(rc == -ENOENT || rc == -ECONNREFUSED) || s != NULL || strstr(err.text, bound) == NULL) {
            fprintf(stderr, "dial %s after close: %d %s '%s'\n", bound, rc, lc_strerror(rc), err.text);
            fail();
        }
        if (r % 2 == 0) {
            /* the same path again: listen, dial, talk */
            nt_pair p;
            nt_open_pair(&p, bound, NULL, NULL);
            warm_pair(&p);
            nt_close_pair(&p);
        }
    }
}

/* Bad URLs: LC_EINVAL or LC_ENOTSUP, a text that says what is wrong, no
 * session, no leak. */
/*
 * An application that polls for new channels (lc_session_receiver with
 * timeout 0, as an event loop does) must get them as they come: each call
 * makes sure the carrier is read. It skipped that for a timeout of 0, and
 * right after a receiving thread had read the carrier itself (which leaves
 * the engine's watch disarmed, "lazy"), a new channel was seen only at the
 * backstop, up to 4 ms later. Checked without timing: after the poll the
 * session is no longer lazy.
 */
static void test_polled_session_receiver_sees_channels(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    nt_pair p;
    nt_open_pair(&p, "tcp://127.0.0.1:0", NULL, NULL);
    lc_sender *cs;
    lc_receiver *sr;
    assert_int_equal(lc_session_sender(p.client, &cs), 0);
    assert_int_equal(lc_session_receiver(p.server, &sr, 5000), 0);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(lc_send(cs, nt_msg_n(i), 5000), 0);
        nt_expect_n(sr, i); /* this thread reads the carrier itself */
        lc_receiver *y = NULL;
        int rc = lc_session_receiver(p.server, &y, 0);
        assert_int_equal(rc, LC_ETIMEDOUT);
        assert_false(atomic_load(&p.server->lazy));
        /* and a channel opened now is polled in */
        lc_sender *x;
        assert_int_equal(lc_session_sender(p.client, &x), 0);
        int64_t end = lc_test_now_us() + 5000000;
        while ((rc = lc_session_receiver(p.server, &y, 0)) == LC_ETIMEDOUT && lc_test_now_us() < end)
            sched_yield();
        assert_int_equal(rc, 0);
        lc_receiver_release(y);
        lc_sender_release(x);
    }
    lc_sender_release(cs);
    lc_receiver_release(sr);
    nt_close_pair(&p);
}

/* ---- wake-ups of waits that do not read the carrier ----------------------- */

/*
 * A thread that reads the carrier for its own channel (lc_recv on a network
 * Receiver) and drains it leaves the engine's watch disarmed ("lazy"); a
 * backstop timer arms it 4 ms later (LAZY_REARM_NS, session/read.c). A wait
 * that does not read the carrier itself must keep it read or watched while
 * it lasts, or what it waits for is seen only at the backstop. The tests
 * below measure such wake-ups: the median of their rounds must stay well
 * under the backstop (before their fixes nearly every round took 3-4 ms;
 * after, ~0.1 ms, ~0.5 ms under TSan).
 */
#define WAKE_BOUND_US 2000

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The median of v[0..n) (sorts v), all of them printed when over the bound. */
static int64_t wake_median(const char *what, int64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_i64);
    int64_t med = v[n / 2];
    if (med >= WAKE_BOUND_US || getenv("LC_EDGE_DEBUG")) {
        fprintf(stderr, "%s: wake-ups (us, sorted):", what);
        for (int i = 0; i < n; i++)
            fprintf(stderr, " %lld", (long long)v[i]);
        fprintf(stderr, "\n");
    }
    return med;
}

/* A server-to-client channel: the server's Sender, the client's Receiver. */
static void open_down(nt_pair *p, lc_sender **s, lc_receiver **r)
{
    assert_int_equal(lc_session_sender(p->server, s), 0);
    assert_int_equal(lc_send(*s, nt_msg_n(0), 5000), 0);
    assert_int_equal(lc_session_receiver(p->client, r, 5000), 0);
    nt_expect_n(*r, 0);
}

/* Has a thread come to receive on r, a network Receiver of session s? It
 * reads s's carrier (some thread does: the engine too, for a moment) or
 * waits on r without reading (it found another thread reading). */
static bool receiving(lc_session *s, lc_receiver *r)
{
    return atomic_load(&s->reader) != 0 || lc__chan_waiting(NULL, r, false) > 0;
}

/* Waits (5 s at most) until receiving(s, r). */
static void wait_receiving(lc_session *s, lc_receiver *r)
{
    int64_t end = lc_test_now_us() + 5000000;
    while (!receiving(s, r)) {
        assert_true(lc_test_now_us() < end);
        sched_yield();
    }
}

typedef struct send_when_reading {
    lc_session *s;
    lc_receiver *r;
    lc_sender *snd;
    int n;
    int rc;
} send_when_reading;

static void *send_when_reading_fn(void *x)
{
    send_when_reading *a = x;
    int64_t end = lc_test_now_us() + 5000000;
    while (!receiving(a->s, a->r) && lc_test_now_us() < end)
        sched_yield();
    a->rc = lc_send(a->snd, nt_msg_n(a->n), 5000);
    return NULL;
}

/* Receives {N: n} on r, a network Receiver of session s, reading s's carrier
 * on this thread: {N: n} is sent on snd (the peer's end of r) only once the
 * receive has begun. Its read then finds the message, drains the carrier and
 * leaves it unwatched (lazy). A message sent before could reach the carrier
 * before the read began, and the engine read it instead. (Then, or when the
 * engine reads at the moment the receive begins, the round tests nothing:
 * rare, and the tests look at the median.) */
static void recv_reading(lc_session *s, lc_sender *snd, lc_receiver *r, int n)
{
    send_when_reading a = { .s = s, .r = r, .snd = snd, .n = n };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, send_when_reading_fn, &a), 0);
    nt_expect_n(r, n);
    pthread_join(t, NULL);
    assert_int_equal(a.rc, 0);
}

typedef struct timed_recv {
    lc_receiver *r;
    int n; /* how many to receive */
    _Atomic int tid;
    atomic_int got;
    int rc;
    int64_t at_us; /* when the last came */
} timed_recv;

static void *timed_recv_fn(void *x)
{
    timed_recv *t = x;
    atomic_store(&t->tid, lc_test_gettid());
    t->rc = 0;
    for (int i = 0; i < t->n && t->rc == 0; i++) {
        lc_msg *m;
        t->rc = lc_recv(t->r, &m, 5000);
        t->at_us = lc_test_now_us();
        if (t->rc == 0) {
            lc_msg_free(m);
            atomic_fetch_add(&t->got, 1);
        }
    }
    return NULL;
}

/*
 * A thread blocked in lc_recv on one network Receiver while another thread
 * reads the carrier for its own Receiver (so the first found the reader
 * token taken and waits without reading) is woken as soon as its message
 * comes, also after the reading thread read again and drained the carrier.
 * It waited for the backstop: that drive left the carrier lazily unwatched
 * though a receiver still waited on it (10 of 10 rounds ~3.5 ms, a review
 * helper's lazy_recv). Over unix and TCP.
 */
static void test_recv_beside_a_reading_thread_is_woken_at_once(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    enum { ROUNDS = 10 };
    for (int t = 0; t < 2; t++) {
        char url[128];
        nt_pair p;
        nt_open_pair(&p, nt_transport_url(t, url, sizeof url), NULL, NULL);
        lc_sender *sx, *sy;
        lc_receiver *rx, *ry;
        open_down(&p, &sx, &rx);
        open_down(&p, &sy, &ry);
        int64_t lat[ROUNDS];
        for (int r = 0; r < ROUNDS; r++) {
            /* A reads X twice, reading the carrier itself */
            timed_recv a = { .r = rx, .n = 2 };
            pthread_t ta, tb;
            assert_int_equal(pthread_create(&ta, NULL, timed_recv_fn, &a), 0);
            wait_receiving(p.client, rx);
            /* B waits on Y beside it, without reading (unless the engine
             * held the carrier as A began: then B reads, A waits, and the
             * round tests nothing) */
            timed_recv b = { .r = ry, .n = 1 };
            assert_int_equal(pthread_create(&tb, NULL, timed_recv_fn, &b), 0);
            assert_true(lc_test_wait_asleep(&b.tid, 5000));
            /* A's first message; then its second, which it reads in a
             * drive of its own and drains the carrier with */
            assert_int_equal(lc_send(sx, nt_msg_n(1), 5000), 0);
            assert_true(nt_wait_at_least(&a.got, 1, 5000));
            wait_receiving(p.client, rx);
            assert_int_equal(lc_send(sx, nt_msg_n(2), 5000), 0);
            pthread_join(ta, NULL);
            assert_int_equal(a.rc, 0);
            /* B's message now: read at once, not at the backstop */
            int64_t t0 = lc_test_now_us();
            assert_int_equal(lc_send(sy, nt_msg_n(3), 5000), 0);
            pthread_join(tb, NULL);
            assert_int_equal(b.rc, 0);
            lat[r] = b.at_us - t0;
        }
        assert_true(wake_median(t == 0 ? "recv beside a reader (unix)" : "recv beside a reader (tcp)", lat,
                                ROUNDS) < WAKE_BOUND_US);
        lc_sender_release(sx);
        lc_sender_release(sy);
        lc_receiver_release(rx);
        lc_receiver_release(ry);
        nt_close_pair(&p);
    }
}

/* Answers each {R: Sender} that comes on r with {N: 7} on that Sender, until
 * r ends. */
static void *reply_server_fn(void *x)
{
    lc_receiver *r = x;
    for (;;) {
        lc_msg *m;
        if (lc_recv(r, &m, 5000) != 0)
            return NULL;
        lc_sender *reply = NULL;
        if (lc_unpack(m, "{s:S}", "R", &reply) == 0) {
            if (lc_send(reply, nt_msg_n(7), 5000) != 0)
                fprintf(stderr, "reply_server_fn: the reply failed\n");
            lc_sender_release(reply);
        }
        lc_msg_free(m);
    }
}

/*
 * A request carrying an unbuffered reply channel (lc_pipe capacity 0),
 * sent by a thread that has just read the carrier itself for a message on
 * another channel: the reply is received as soon as it comes. Nothing told
 * the session that the reply Receiver was waited on (the session fed only
 * buffered reply channels, and only those could be marked passive), so the
 * reply was read at the backstop (19 of 20 round trips ~4 ms, a review
 * helper's unbuf_reply; a buffered reply channel: 12-43 us). Over unix and
 * TCP.
 */
static void test_unbuffered_reply_channel_is_read_at_once(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    enum { ROUNDS = 10 };
    for (int t = 0; t < 2; t++) {
        char url[128];
        nt_pair p;
        nt_open_pair(&p, nt_transport_url(t, url, sizeof url), NULL, NULL);
        lc_sender *cs, *sx;
        lc_receiver *sr, *rx;
        assert_int_equal(lc_session_sender(p.client, &cs), 0);
        assert_int_equal(lc_send(cs, nt_msg_n(0), 5000), 0);
        assert_int_equal(lc_session_receiver(p.server, &sr, 5000), 0);
        nt_expect_n(sr, 0);
        open_down(&p, &sx, &rx);
        pthread_t srv;
        assert_int_equal(pthread_create(&srv, NULL, reply_server_fn, sr), 0);
        int64_t lat[ROUNDS];
        for (int r = 0; r < ROUNDS; r++) {
            /* this thread reads the carrier itself (and drains it) */
            recv_reading(p.client, sx, rx, r);
            lc_receiver *rr;
            lc_sender *rs;
            assert_int_equal(lc_pipe(&rr, &rs, 0), 0);
            int64_t t0 = lc_test_now_us();
            lc_msg *req = lc_pack("{s:S}", "R", rs);
            assert_non_null(req);
            assert_int_equal(lc_send(cs, req, 5000), 0);
            nt_expect_n(rr, 7);
            lat[r] = lc_test_now_us() - t0;
            lc_receiver_release(rr);
        }
        assert_true(wake_median(t == 0 ? "unbuffered reply (unix)" : "unbuffered reply (tcp)", lat, ROUNDS) <
                    WAKE_BOUND_US);
        assert_int_equal(lc_close(cs), 0);
        pthread_join(srv, NULL);
        lc_sender_release(cs);
        lc_sender_release(sx);
        lc_receiver_release(sr);
        lc_receiver_release(rx);
        nt_close_pair(&p);
    }
}

/*
 * A thread blocks on a reply channel (buffered, and unbuffered) before
 * another thread, which has just read the carrier itself and left it lazily
 * unwatched, sends the request carrying its Sender: the reply is read at
 * once, not at the backstop. A receiver that began its wait before the send
 * claimed the channel's feeding, but queued itself only after the claim
 * looked for waiters, was told to nobody and slept until the backstop: a
 * review helper widened that gap by 1 ms in a scratch build, 20 of 20 rounds
 * took 3.5-3.9 ms (select_wait now tells the feeder it finds once queued).
 * Unwidened the gap is too narrow to hit here: this test keeps the order
 * around it working.
 */
static void test_reply_waiter_before_its_request_is_woken_at_once(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(120);
    enum { ROUNDS = 10 };
    int caps[2] = { 1, 0 };
    int64_t meds[2];
    for (int ci = 0; ci < 2; ci++) {
        char url[128];
        nt_pair p;
        nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, NULL);
        lc_sender *cs, *sx;
        lc_receiver *sr, *rx;
        assert_int_equal(lc_session_sender(p.client, &cs), 0);
        assert_int_equal(lc_send(cs, nt_msg_n(0), 5000), 0);
        assert_int_equal(lc_session_receiver(p.server, &sr, 5000), 0);
        nt_expect_n(sr, 0);
        open_down(&p, &sx, &rx);
        pthread_t srv;
        assert_int_equal(pthread_create(&srv, NULL, reply_server_fn, sr), 0);
        int64_t lat[ROUNDS];
        for (int r = 0; r < ROUNDS; r++) {
            recv_reading(p.client, sx, rx, r);
            lc_receiver *rr;
            lc_sender *rs;
            assert_int_equal(lc_pipe(&rr, &rs, (size_t)caps[ci]), 0);
            timed_recv w = { .r = rr, .n = 1 };
            pthread_t tw;
            assert_int_equal(pthread_create(&tw, NULL, timed_recv_fn, &w), 0);
            assert_true(lc_test_wait_asleep(&w.tid, 5000));
            int64_t t0 = lc_test_now_us();
            lc_msg *req = lc_pack("{s:S}", "R", rs);
            assert_non_null(req);
            assert_int_equal(lc_send(cs, req, 5000), 0);
            pthread_join(tw, NULL);
            assert_int_equal(w.rc, 0);
            lat[r] = w.at_us - t0;
            lc_receiver_release(rr);
        }
        int64_t med = wake_median(caps[ci] ? "reply waiter, buffered" : "reply waiter, unbuffered", lat, ROUNDS);
        assert_int_equal(lc_close(cs), 0);
        pthread_join(srv, NULL);
        lc_sender_release(cs);
        lc_sender_release(sx);
        lc_receiver_release(sr);
        lc_receiver_release(rx);
        nt_close_pair(&p);
        meds[ci] = med;
    }
    assert_true(meds[0] < WAKE_BOUND_US && meds[1] < WAKE_BOUND_US);
}

/* How a sender waits for the window: its pollable fd and lc_send(0), a
 * blocked lc_send, a blocked lc_select send case. */
enum { WAIT_POLLFD, WAIT_SEND, WAIT_SELECT };

typedef struct window_waiter {
    lc_sender *s;
    int how;
    atomic_int tries; /* WAIT_POLLFD: sends that found the window spent */
    atomic_bool done;
    int rc;
    int64_t at_us; /* when the message went */
} window_waiter;

static const char window_blob[3000];

static void *window_waiter_fn(void *x)
{
    window_waiter *w = x;
    lc_msg *m = lc_pack("{s:b}", "B", window_blob, sizeof window_blob);
    if (w->how == WAIT_POLLFD) {
        struct pollfd pf = { lc_sender_pollfd(w->s), POLLIN, 0 };
        int64_t end = lc_test_now_us() + 5000000;
        while ((w->rc = lc_send(w->s, m, 0)) == LC_ETIMEDOUT && lc_test_now_us() < end) {
            atomic_fetch_add(&w->tries, 1);
            poll(&pf, 1, 100);
        }
    } else if (w->how == WAIT_SEND) {
        w->rc = lc_send(w->s, m, 5000);
    } else {
        lc_case c = { .op = LC_CASE_SEND, .sender = w->s, .msg = m };
        w->rc = lc_select(&c, 1, 5000);
        if (w->rc == 0)
            w->rc = c.result;
    }
    w->at_us = lc_test_now_us();
    if (w->rc != 0)
        lc_msg_free(m);
    atomic_store(&w->done, true);
    return NULL;
}

/* Rounds of: a client's sender waits (how) for the window the server has
 * not opened yet, a thread of the client reads a message itself (and drains
 * the carrier), then the server takes what filled the window: its
 * WINDOW_UPDATE must wake the waiting sender at once. The wake-ups' median.
 * A channel of its own for each round: the server grants in batches, once
 * all it got is in its queue (of 1 here), so on a channel used before, a
 * grant it still owed could come during the round and open the window. On
 * a fresh one the first 3000 bytes grant nothing, and those after them wait
 * behind them until the application takes them. */
static int64_t window_wake_median(int how)
{
    enum { ROUNDS = 8 };
    lc_options o;
    lc_options_default(&o);
    o.recv_queue = 1;
    o.stream_window = 8192;
    char url[128];
    nt_pair p;
    nt_open_pair(&p, nt_unix_url(url, sizeof url), &o, &o);
    lc_sender *sx;
    lc_receiver *rx;
    open_down(&p, &sx, &rx);
    int64_t lat[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        lc_sender *cs;
        lc_receiver *sr;
        assert_int_equal(lc_session_sender(p.client, &cs), 0);
        /* fill the window (3000-byte messages: three, the last overdraws) */
        int n = 0;
        for (;;) {
            lc_msg *m = lc_pack("{s:b}", "B", window_blob, sizeof window_blob);
            int rc = lc_send(cs, m, 0);
            if (rc == LC_ETIMEDOUT) {
                lc_msg_free(m);
                break;
            }
            assert_int_equal(rc, 0);
            n++;
        }
        assert_true(n > 0);
        assert_int_equal(lc_session_receiver(p.server, &sr, 5000), 0);
        window_waiter w = { .s = cs, .how = how };
        pthread_t tw;
        assert_int_equal(pthread_create(&tw, NULL, window_waiter_fn, &w), 0);
        int64_t end = lc_test_now_us() + 5000000;
        while (how == WAIT_POLLFD ? atomic_load(&w.tries) == 0 : lc__chan_waiting(cs, NULL, true) == 0) {
            assert_false(atomic_load(&w.done));
            assert_true(lc_test_now_us() < end);
            sched_yield();
        }
        /* this thread reads the carrier itself, and drains it */
        recv_reading(p.client, sx, rx, r);
        assert_false(atomic_load(&w.done)); /* (nothing opened the window yet) */
        /* the server takes what filled the window: a WINDOW_UPDATE comes */
        int64_t t0 = lc_test_now_us();
        lc_msg *m;
        for (int i = 0; i < n; i++) {
            assert_int_equal(lc_recv(sr, &m, 5000), 0);
            lc_msg_free(m);
        }
        pthread_join(tw, NULL);
        assert_int_equal(w.rc, 0);
        lat[r] = w.at_us - t0;
        assert_int_equal(lc_recv(sr, &m, 5000), 0); /* the waiter's */
        lc_msg_free(m);
        lc_sender_release(cs);
        lc_receiver_release(sr);
    }
    static const char *const names[] = { "sender pollfd", "blocked lc_send", "lc_select send case" };
    int64_t med = wake_median(names[how], lat, ROUNDS);
    lc_sender_release(sx);
    lc_receiver_release(rx);
    nt_close_pair(&p);
    return med;
}

/*
 * A Receiver we pump (attached to a message) runs out of window and holds
 * its next message, and then a receive on another channel of ours reads the
 * carrier itself and times out (it drained the carrier: lazily unwatched).
 * The peer's WINDOW_UPDATE, sent as its application reads, must resume the
 * pump at once. The pump's wait only armed the carrier once, and a drive
 * that got nothing skips the flush whose wake had re-armed it: 40 of 40
 * rounds took ~4.1 ms, the backstop (a review helper). A pump out of window
 * now turns lazy re-arming off for the session, as a sender waited on
 * without reading does (lc__feeder_passive).
 */
static void test_pump_out_of_window_resumes_at_once(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(120);
    enum { ROUNDS = 8, K = 6 };
    lc_options o;
    lc_options_default(&o);
    o.recv_queue = 1;
    o.stream_window = 8192;
    char url[128];
    nt_pair p;
    nt_open_pair(&p, nt_unix_url(url, sizeof url), &o, &o);
    lc_sender *sx;
    lc_receiver *rx;
    open_down(&p, &sx, &rx);
    int64_t lat[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        lc_sender *cs;
        lc_receiver *sr;
        assert_int_equal(lc_session_sender(p.client, &cs), 0);
        lc_receiver *lr;
        lc_sender *ls;
        assert_int_equal(lc_pipe(&lr, &ls, 16), 0);
        for (int i = 0; i < K; i++)
            assert_int_equal(lc_send(ls, lc_pack("{s:b}", "B", window_blob, sizeof window_blob), 0), 0);
        assert_int_equal(lc_send(cs, lc_pack("{s:R}", "Feed", lr), 5000), 0);
        assert_int_equal(lc_session_receiver(p.server, &sr, 5000), 0);
        lc_msg *m;
        assert_int_equal(lc_recv(sr, &m, 5000), 0);
        lc_receiver *feed;
        assert_int_equal(lc_unpack(m, "{s:R}", "Feed", &feed), 0);
        lc_msg_free(m);
        /* 3 of 3000 bytes fit the 8192-byte window (the 3rd overdraws it):
         * the pump has taken the 4th and holds it */
        int64_t end = lc_test_now_us() + 5000000;
        while (lc__sender_queued(ls) > K - 4) {
            assert_true(lc_test_now_us() < end);
            sched_yield();
        }
        lc_msg *none = NULL;
        assert_int_equal(lc_recv(rx, &none, 2), LC_ETIMEDOUT); /* reads the carrier, drains it */
        int64_t t0 = lc_test_now_us();
        int got = 0;
        for (; got < 3; got++) {
            assert_int_equal(lc_recv(feed, &m, 5000), 0);
            lc_msg_free(m);
        }
        /* the 4th only goes once the client has read the WINDOW_UPDATE */
        assert_int_equal(lc_recv(feed, &m, 5000), 0);
        lc_msg_free(m);
        lat[r] = lc_test_now_us() - t0;
        for (got = 4; got < K; got++) {
            assert_int_equal(lc_recv(feed, &m, 5000), 0);
            lc_msg_free(m);
        }
        assert_int_equal(lc_close(ls), 0);
        lc_sender_release(ls);
        assert_int_equal(lc_recv(feed, &m, 5000), LC_EOF);
        lc_receiver_release(feed);
        lc_sender_release(cs);
        lc_receiver_release(sr);
    }
    int64_t med = wake_median("pump out of window", lat, ROUNDS);
    lc_sender_release(sx);
    lc_receiver_release(rx);
    nt_close_pair(&p);
    assert_true(med < WAKE_BOUND_US);
}

/* Writes total bytes into fd, then closes it; done says how far it got. */
typedef struct counted_writer {
    int fd;
    size_t total;
    _Atomic size_t done;
} counted_writer;

static void *counted_writer_fn(void *x)
{
    counted_writer *w = x;
    static const char buf[65536];
    size_t done = 0;
    while (done < w->total) {
        size_t n = w->total - done < sizeof buf ? w->total - done : sizeof buf;
        ssize_t k = write(w->fd, buf, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        done += (size_t)k;
        atomic_store(&w->done, done);
    }
    close(w->fd);
    return NULL;
}

/* Waits (5 s at most) until w has stopped short of its end: the same count
 * on four looks in a row, 5 ms apart (what it writes into is full). */
static void wait_writer_stuck(counted_writer *w)
{
    int64_t end = lc_test_now_us() + 5000000;
    size_t last = (size_t)-1;
    int same = 0;
    while (same < 3) {
        assert_true(lc_test_now_us() < end);
        size_t d = atomic_load(&w->done);
        assert_true(d < w->total);
        same = d == last ? same + 1 : 0;
        last = d;
        struct timespec ts = { 0, 5000000 };
        nanosleep(&ts, NULL);
    }
}

/*
 * A byte stream we pump (a pipe, over TCP: as a sub-stream) runs out of
 * window while its receiver does not read, and then a receive on another
 * channel of ours reads the carrier itself and drains it (lazily unwatched).
 * When the receiver reads, the peer's WINDOW_UPDATEs must resume the pump
 * at once. Its wait for the window armed the carrier once, and the drive
 * undid that: 18 of 18 rounds stalled ~4 ms, the backstop (a review helper).
 * A byte stream out of window now turns lazy re-arming off for the session
 * (lc__feeder_passive). The figure is the longest gap between the reads of
 * the whole 1 MiB (the peer's engine always reads: its Receiver is polled).
 */
static void test_byte_stream_out_of_window_resumes_at_once(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(120);
    enum { ROUNDS = 6 };
    int64_t lat[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        lc_options o;
        lc_options_default(&o);
        o.stream_window = 8192;
        nt_pair p;
        nt_open_pair(&p, "tcp://127.0.0.1:0", &o, &o);
        lc_sender *sx;
        lc_receiver *rx;
        open_down(&p, &sx, &rx);
        lc_sender *cs;
        lc_receiver *sr;
        assert_int_equal(lc_session_sender(p.client, &cs), 0);
        int pp[2];
        assert_int_equal(pipe2(pp, O_CLOEXEC), 0);
        assert_int_equal(lc_send(cs, lc_pack("{s:F}", "Feed", pp[0]), 5000), 0);
        assert_int_equal(lc_session_receiver(p.server, &sr, 5000), 0);
        assert_true(lc_receiver_pollfd(sr) >= 0); /* the server's engine always reads */
        lc_msg *m;
        assert_int_equal(lc_recv(sr, &m, 5000), 0);
        int fd = -1;
        assert_int_equal(lc_unpack(m, "{s:F}", "Feed", &fd), 0);
        lc_msg_free(m);
        counted_writer w = { .fd = pp[1], .total = 1u << 20 };
        pthread_t tw;
        assert_int_equal(pthread_create(&tw, NULL, counted_writer_fn, &w), 0);
        wait_writer_stuck(&w); /* fd full, window spent, the pump waits, the pipe fills */
        recv_reading(p.client, sx, rx, r); /* drains the carrier, lazily unwatched */
        static char buf[65536];
        int64_t maxgap = 0, last = lc_test_now_us();
        size_t got = 0;
        for (;;) {
            struct pollfd pf = { fd, POLLIN, 0 };
            assert_int_equal(poll(&pf, 1, 5000), 1);
            ssize_t k = read(fd, buf, sizeof buf);
            int64_t now = lc_test_now_us();
            assert_true(k >= 0);
            if (k == 0)
                break;
            if (now - last > maxgap && got > 0)
                maxgap = now - last;
            last = now;
            got += (size_t)k;
        }
        assert_int_equal(got, w.total);
        lat[r] = maxgap;
        close(fd);
        pthread_join(tw, NULL);
        lc_sender_release(cs);
        lc_receiver_release(sr);
        lc_sender_release(sx);
        lc_receiver_release(rx);
        nt_close_pair(&p);
    }
    assert_true(wake_median("byte stream out of window", lat, ROUNDS) < WAKE_BOUND_US);
}


typedef struct blocked_accept {
    lc_session *s;
    _Atomic int tid; /* published before lc_session_receiver */
    int rc;
    int64_t at_us;
    lc_receiver *r;
} blocked_accept;

static void *blocked_accept_fn(void *x)
{
    blocked_accept *a = x;
    atomic_store(&a->tid, lc_test_gettid());
    a->rc = lc_session_receiver(a->s, &a->r, 5000);
    a->at_us = lc_test_now_us();
    return NULL;
}

/*
 * A thread blocked in lc_session_receiver (an accept loop) while another
 * thread reads the carrier itself for its own channel and drains it (lazily
 * unwatched): a channel the peer opens then is seen at once. The wait armed
 * the carrier once and was not counted among the waits that keep it
 * watched: 15 of 16 rounds ~4 ms, the backstop (a review helper).
 */
static void test_blocked_session_receiver_beside_a_reader_is_woken_at_once(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(120);
    enum { ROUNDS = 8 };
    char url[128];
    nt_pair p;
    nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, NULL);
    lc_sender *sx;
    lc_receiver *rx;
    open_down(&p, &sx, &rx);
    int64_t lat[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        blocked_accept a = { .s = p.client };
        pthread_t ta;
        assert_int_equal(pthread_create(&ta, NULL, blocked_accept_fn, &a), 0);
        assert_true(lc_test_wait_asleep(&a.tid, 5000));
        recv_reading(p.client, sx, rx, r); /* drains the carrier, lazily unwatched */
        int64_t t0 = lc_test_now_us();
        lc_sender *ns;
        assert_int_equal(lc_session_sender(p.server, &ns), 0);
        assert_int_equal(lc_send(ns, nt_msg_n(5), 5000), 0);
        pthread_join(ta, NULL);
        assert_int_equal(a.rc, 0);
        lat[r] = a.at_us - t0;
        nt_expect_n(a.r, 5);
        lc_receiver_release(a.r);
        lc_sender_release(ns);
    }
    int64_t med = wake_median("blocked session receiver", lat, ROUNDS);
    lc_sender_release(sx);
    lc_receiver_release(rx);
    nt_close_pair(&p);
    assert_true(med < WAKE_BOUND_US);
}

/*
 * A network Sender out of window, waited on without reading the carrier
 * (its pollable fd; a blocked lc_send; an lc_select send case), sees the
 * peer's WINDOW_UPDATE at once, also after another thread of ours read the
 * carrier itself and left it lazily unwatched. The pollable fd waited for
 * the backstop: lc_sender_pollfd did not tell the session that the window
 * would be waited on without reading (5 of 6 rounds ~3.7 ms, a review
 * helper's lazy_sendfd). A blocked send and a select send case recovered
 * only because that thread's reads woke them to try again, and the try
 * re-armed the carrier; now their waits keep it watched on purpose.
 */
static void test_sender_waiting_for_window_is_woken_at_once(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    /* (pollfd and select turn lazy re-arming off for their session: each
     * mode on a pair of its own) */
    assert_true(window_wake_median(WAIT_SEND) < WAKE_BOUND_US);
    assert_true(window_wake_median(WAIT_SELECT) < WAKE_BOUND_US);
    assert_true(window_wake_median(WAIT_POLLFD) < WAKE_BOUND_US);
}

/*
 * Polling a network Receiver with timeout 0 (lc_recv, lc_select), as a loop
 * that does other work between polls would, right after a blocking lc_recv
 * on it read the carrier itself: a message the peer sends is polled in as it
 * comes. A poll that found nothing left the carrier unwatched, and the
 * message came at the backstop (11 of 12 rounds ~3 ms, a review helper's
 * poll0; lc_session_receiver had the same flaw:
 * test_polled_session_receiver_sees_channels). Over unix and TCP.
 */
static void test_polled_recv_sees_messages_at_once(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    enum { ROUNDS = 10 };
    for (int t = 0; t < 2; t++) {
        char url[128];
        nt_pair p;
        nt_open_pair(&p, nt_transport_url(t, url, sizeof url), NULL, NULL);
        lc_sender *sx;
        lc_receiver *rx;
        open_down(&p, &sx, &rx);
        for (int use_select = 0; use_select < 2; use_select++) {
            int64_t lat[ROUNDS];
            for (int r = 0; r < ROUNDS; r++) {
                recv_reading(p.client, sx, rx, 2 * r); /* reads the carrier itself */
                int64_t t0 = 0;
                lc_msg *m = NULL;
                int rc;
                for (int i = 0;; i++) {
                    if (use_select) {
                        lc_case c = { .op = LC_CASE_RECV, .receiver = rx };
                        rc = lc_select(&c, 1, 0);
                        m = c.msg;
                    } else {
                        rc = lc_recv(rx, &m, 0);
                    }
                    if (i == 0) {
                        /* nothing yet: the peer sends now */
                        assert_int_equal(rc, LC_ETIMEDOUT);
                        t0 = lc_test_now_us();
                        assert_int_equal(lc_send(sx, nt_msg_n(2 * r + 1), 5000), 0);
                        continue;
                    }
                    if (rc != LC_ETIMEDOUT)
                        break;
                    assert_true(lc_test_now_us() - t0 < 5000000);
                    struct timespec other_work = { 0, 50000 };
                    nanosleep(&other_work, NULL);
                }
                lat[r] = lc_test_now_us() - t0;
                assert_int_equal(rc, 0);
                assert_int_equal(nt_msg_get_n(m), 2 * r + 1);
                lc_msg_free(m);
            }
            char what[64];
            snprintf(what, sizeof what, "%s(0) poll (%s)", use_select ? "lc_select" : "lc_recv",
                     t == 0 ? "unix" : "tcp");
            assert_true(wake_median(what, lat, ROUNDS) < WAKE_BOUND_US);
        }
        lc_sender_release(sx);
        lc_receiver_release(rx);
        nt_close_pair(&p);
    }
}

/*
 * Dialling a local port in the ephemeral range that nobody listens on, again
 * and again (a client waiting for its server to come up), never gives a
 * session: the kernel may pick that very port as the dial's own, and the
 * socket is then connected to itself (TCP simultaneous open). lc_dial
 * returned 0 after ~11000 tries here, a session talking to itself that also
 * kept the server from binding the port (found by a review helper).
 */
static void test_dial_never_connects_to_itself(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    int lo = 32768, hi = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f != NULL) {
        if (fscanf(f, "%d %d", &lo, &hi) != 2) {
            lo = 32768;
            hi = 60999;
        }
        fclose(f);
    }
    /* an even port (connect's half of the range) in the middle, free now */
    int port = 0;
    for (int p = (lo + hi) / 2 & ~1; p < hi && port == 0; p += 2) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)p) };
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0)
            port = p;
        close(fd);
    }
    assert_true(port != 0);
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
    lc_options o;
    lc_options_default(&o);
    o.dial_timeout_ms = 1000;
    int64_t end = lc_test_now_us() + 3000000;
    int tries = 0, other = 0;
    while (lc_test_now_us() < end) {
        lc_session *s = NULL;
        int rc = lc_dial(url, &o, &s, NULL);
        tries++;
        if (rc == 0) {
            fprintf(stderr, "lc_dial(%s) with nobody listening: a session, after %d tries\n", url, tries);
            lc_session_free(s);
            fail();
        }
        if (rc != -ECONNREFUSED)
            other++;
    }
    assert_int_equal(other, 0);
    assert_true(tries > 1000);
}

static void test_bad_urls(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(20);
    char longpath[300];
    memset(longpath, 'a', sizeof longpath);
    memcpy(longpath, "unix:///tmp/", 12);
    longpath[sizeof longpath - 1] = 0;
    const struct {
        const char *url;
        int code;
    } bad[] = {
        { "", LC_EINVAL },
        { "nothing", LC_EINVAL },
        { "unix://", LC_EINVAL },
        { "unix://@", LC_EINVAL },
        { longpath, LC_EINVAL },
        { "tcp://127.0.0.1", LC_EINVAL },
        { "tcp://127.0.0.1:", LC_EINVAL },
        { "tcp://127.0.0.1:65536", LC_EINVAL },
        { "tcp://127.0.0.1:-1", LC_EINVAL },
        { "tcp://127.0.0.1:80x", LC_EINVAL },
        { "tcp://[::1", LC_EINVAL },
        { "tcp://[]:80", LC_EINVAL },
        { "tcp://::1:80", LC_EINVAL },
        { "tcp://127.0.0.1:80/path", LC_EINVAL },
        { "tcp://user@127.0.0.1:80", LC_EINVAL },
        { "foo://x", LC_EINVAL },
        { "tls://127.0.0.1:1", LC_ENOTSUP },
        { "ws://127.0.0.1:1", LC_ENOTSUP },
        { "://x", LC_EINVAL },
        { "TCP://127.0.0.1:0x10", LC_EINVAL },
    };
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            lc_error err;
            memset(&err, 0, sizeof err);
            lc_session *s = (lc_session *)&err;
            int rc = lc_dial(bad[i].url, NULL, &s, &err);
            if (rc != bad[i].code || s != NULL || err.text[0] == 0 || err.code != rc) {
                fprintf(stderr, "dial '%.40s': %d %s, err {%d, '%s'}\n", bad[i].url, rc, lc_strerror(rc), err.code,
                        err.text);
                fail();
            }
            lc_listener *l = (lc_listener *)&err;
            memset(&err, 0, sizeof err);
            rc = lc_listen(bad[i].url, NULL, &l, &err);
            if (rc != bad[i].code || l != NULL || err.text[0] == 0 || err.code != rc) {
                fprintf(stderr, "listen '%.40s': %d %s, err {%d, '%s'}\n", bad[i].url, rc, lc_strerror(rc),
                        err.code, err.text);
                fail();
            }
        }
        /* NULLs: LC_EINVAL, a text in err like every other failure, *out NULL */
        lc_session *s = (lc_session *)&s;
        assert_int_equal(lc_dial(NULL, NULL, &s, NULL), LC_EINVAL);
        lc_error nerr = { 0 };
        assert_int_equal(lc_dial(NULL, NULL, &s, &nerr), LC_EINVAL);
        assert_true(s == NULL && nerr.code == LC_EINVAL && strstr(nerr.text, "no URL") != NULL);
        memset(&nerr, 0, sizeof nerr);
        assert_int_equal(lc_dial("tcp://127.0.0.1:1", NULL, NULL, &nerr), LC_EINVAL);
        assert_true(nerr.code == LC_EINVAL && strstr(nerr.text, "no output pointer") != NULL);
        lc_listener *l = (lc_listener *)&l;
        memset(&nerr, 0, sizeof nerr);
        assert_int_equal(lc_listen(NULL, NULL, &l, &nerr), LC_EINVAL);
        assert_true(l == NULL && nerr.code == LC_EINVAL && strstr(nerr.text, "no URL") != NULL);
        memset(&nerr, 0, sizeof nerr);
        assert_int_equal(lc_listen("tcp://127.0.0.1:0", NULL, NULL, &nerr), LC_EINVAL);
        assert_true(nerr.code == LC_EINVAL && nerr.text[0] != 0);
        assert_int_equal(lc_accept(NULL, &s, 0), LC_EINVAL);
        /* listening twice on one path / port */
        char url[128], bound[256];
        lc_listener *l1, *l2 = NULL;
        lc_error err = { 0 };
        assert_int_equal(lc_listen(nt_transport_url(round, url, sizeof url), NULL, &l1, &err), 0);
        assert_int_equal(lc_listener_url(l1, bound, sizeof bound), 0);
        int rc = lc_listen(bound, NULL, &l2, &err);
        if (rc != -EADDRINUSE || l2 != NULL || strstr(err.text, bound) == NULL) {
            fprintf(stderr, "second listen on %s: %d %s '%s'\n", bound, rc, lc_strerror(rc), err.text);
            fail();
        }
        /* (the first listener still working is test_failed_listen_leaves_no_phantom) */
        lc_listener_close(l1);
        /* the accept timeout with nothing queued */
        assert_int_equal(lc_listen(nt_transport_url(round, url, sizeof url), NULL, &l1, &err), 0);
        int64_t t0 = lc_test_now_us();
        s = (lc_session *)&err;
        assert_int_equal(lc_accept(l1, &s, 0), LC_ETIMEDOUT);
        assert_null(s);
        assert_int_equal(lc_accept(l1, &s, 50), LC_ETIMEDOUT);
        assert_true(lc_test_now_us() - t0 < 1000000);
        lc_listener_close(l1);
    }
}

/* 200 dials from 4 threads at once; half the clients free their session
 * straight away. Every accepted session either gives the one channel and
 * message its client sent, or ends. */
typedef struct {
    const char *url;
    int base, n;
    lc_session *keep[50];
    int rc;
    atomic_int *release;
} dial_arg;

static void *dial_fn(void *x)
{
    dial_arg *a = x;
    for (int i = 0; i < a->n; i++) {
        lc_session *s;
        lc_error err;
        a->keep[i] = NULL;
        int rc = lc_dial(a->url, NULL, &s, &err);
        if (rc != 0) {
            fprintf(stderr, "dial %s: %s\n", a->url, err.text);
            a->rc = rc;
            continue;
        }
        if ((a->base + i) % 2 == 0) {
            lc_session_free(s);
            continue;
        }
        lc_sender *snd;
        if ((rc = lc_session_sender(s, &snd)) == 0) {
            rc = lc_send(snd, nt_msg_n(a->base + i), 5000);
            lc_sender_release(snd);
        }
        if (rc != 0)
            a->rc = rc;
        a->keep[i] = s;
    }
    /* held until the server has read everything */
    int64_t end = lc_test_now_us() + 20000000;
    while (!atomic_load(a->release) && lc_test_now_us() < end) {
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    for (int i = 0; i < a->n; i++)
        lc_session_free(a->keep[i]);
    return NULL;
}

static void run_many_dials(const char *url_in)
{
    enum { T = 4, PER = 50, N = T * PER };
    lc_listener *l;
    char bound[256];
    assert_int_equal(lc_listen(url_in, NULL, &l, NULL), 0);
    assert_int_equal(lc_listener_url(l, bound, sizeof bound), 0);
    atomic_int release = 0;
    dial_arg a[T];
    pthread_t t[T];
    for (int k = 0; k < T; k++) {
        a[k] = (dial_arg){ .url = bound, .base = k * PER, .n = PER, .release = &release };
        pthread_create(&t[k], NULL, dial_fn, &a[k]);
    }
    static lc_session *srv[N];
    for (int i = 0; i < N; i++) {
        int rc = lc_accept(l, &srv[i], 5000);
        if (rc != 0)
            fprintf(stderr, "%s: accept %d: %s\n", bound, i, lc_strerror(rc));
        assert_int_equal(rc, 0);
    }
    static bool seen[N];
    memset(seen, 0, sizeof seen);
    int msgs = 0, ended = 0;
    for (int i = 0; i < N; i++) {
        lc_receiver *r;
        int rc = lc_session_receiver(srv[i], &r, 5000);
        if (rc == LC_ESESSION) {
            ended++;
            continue;
        }
        assert_int_equal(rc, 0);
        lc_msg *m;
        rc = lc_recv(r, &m, 5000);
        assert_int_equal(rc, 0);
        int n = nt_msg_get_n(m);
        lc_msg_free(m);
        assert_true(n >= 0 && n < N && n % 2 == 1 && !seen[n]);
        seen[n] = true;
        msgs++;
        lc_receiver_release(r);
    }
    atomic_store(&release, 1);
    for (int k = 0; k < T; k++) {
        pthread_join(t[k], NULL);
        assert_int_equal(a[k].rc, 0);
    }
    for (int i = 0; i < N; i++)
        lc_session_free(srv[i]);
    lc_listener_close(l);
    if (msgs != N / 2 || ended != N / 2)
        fprintf(stderr, "%s: %d messages, %d ended sessions\n", bound, msgs, ended);
    assert_int_equal(msgs, N / 2);
    assert_int_equal(ended, N / 2);
}

static void test_many_concurrent_dials(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60 * nt_scale());
    for (int r = 0; r < 2 * nt_scale(); r++) {
        char url[128];
        run_many_dials(nt_transport_url(r, url, sizeof url));
    }
}

static void on_alarm(int sig)
{
    (void)sig;
}

/* A listener that never accepts, with a full backlog: a bounded dial
 * returns LC_ETIMEDOUT on time, no leak. (lc_options.dial_timeout_ms 0
 * means the default, 10 s, as libchan.h says.) */
static void run_dial_timeout_full_backlog(void)
{
    for (int r = 0; r < 4; r++) {
        bool unix_ = r % 2 == 0;
        int lfd;
        char url[256];
        char path[108];
        if (unix_) {
            struct sockaddr_un sa = { .sun_family = AF_UNIX };
            snprintf(path, sizeof path, "/tmp/lc-edge-backlog-%d-%d.sock", (int)getpid(), r);
            unlink(path);
            strcpy(sa.sun_path, path);
            lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
            snprintf(url, sizeof url, "unix://%s", path);
        } else {
            struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
            lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
            socklen_t sl = sizeof sa;
            getsockname(lfd, (struct sockaddr *)&sa, &sl);
            snprintf(url, sizeof url, "tcp://127.0.0.1:%d", ntohs(sa.sin_port));
        }
        assert_int_equal(listen(lfd, 0), 0);
        /* fill the backlog with our own dials until one does not complete;
         * those that succeed sit in the backlog (freed at the end) */
        lc_session *sess[16];
        int nfill = 0;
        for (; nfill < 16; nfill++) {
            lc_options o;
            lc_options_default(&o);
            o.dial_timeout_ms = 300;
            int rc = lc_dial(url, &o, &sess[nfill], NULL);
            if (rc != 0) {
                assert_int_equal(rc, LC_ETIMEDOUT);
                break;
            }
        }
        assert_true(nfill < 16);
        lc_options o;
        lc_options_default(&o);
        for (int k = 1; k < 3; k++) {
            o.dial_timeout_ms = 200 * k;
            lc_session *s = (lc_session *)&o;
            lc_error err = { 0 };
            int64_t t0 = lc_test_now_us();
            int rc = lc_dial(url, &o, &s, &err);
            int64_t ms = (lc_test_now_us() - t0) / 1000;
            if (rc != LC_ETIMEDOUT || s != NULL || ms > o.dial_timeout_ms + 500 ||
                ms + 20 < o.dial_timeout_ms || err.text[0] == 0) {
                fprintf(stderr, "%s: dial with timeout %lld: %s after %lld ms '%s'\n", url,
                        (long long)o.dial_timeout_ms, lc_strerror(rc), (long long)ms, err.text);
                fail();
            }
        }
        /* the same under a signal every 50 ms (SA_RESTART): the dial still
         * ends on time (the unix dial restarted its full timeout after each
         * EINTR and never ended; found by a review helper) */
        struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART }, old_sa;
        sigemptyset(&sa.sa_mask);
        assert_int_equal(sigaction(SIGALRM, &sa, &old_sa), 0);
        struct itimerval it = { { 0, 50000 }, { 0, 50000 } }, off = { { 0, 0 }, { 0, 0 } };
        assert_int_equal(setitimer(ITIMER_REAL, &it, NULL), 0);
        o.dial_timeout_ms = 300;
        lc_session *s = NULL;
        int64_t t0 = lc_test_now_us();
        int rc = lc_dial(url, &o, &s, NULL);
        int64_t ms = (lc_test_now_us() - t0) / 1000;
        setitimer(ITIMER_REAL, &off, NULL);
        sigaction(SIGALRM, &old_sa, NULL);
        if (rc != LC_ETIMEDOUT || ms > 300 + 500)
            fail_msg("%s: dial with timeout 300 under SIGALRM every 50 ms: %s after %lld ms", url, lc_strerror(rc),
                     (long long)ms);
        for (int i = 0; i < nfill; i++)
            lc_session_free(sess[i]);
        close(lfd);
        if (unix_)
            unlink(path);
    }
}

static void test_dial_timeout_full_backlog(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    run_dial_timeout_full_backlog();
}

/* Timeouts too large to add to the clock are "no deadline in practice", as
 * -1 is, not a deadline in the past: lc_accept and a network lc_recv with
 * INT64_MAX block until something happens, and a session whose
 * ref_timeout_ms is INT64_MAX sleeps while idle (each overflowed: lc_accept
 * and lc_recv returned LC_ETIMEDOUT at once, the ref timer spun a core;
 * found by a review helper, UBSan: signed overflow). */
typedef struct {
    lc_listener *l;
    lc_receiver *r;
    _Atomic int tid;
    int rc;
    int n;
} huge_wait;

static void *huge_accept_fn(void *x)
{
    huge_wait *a = x;
    atomic_store(&a->tid, lc_test_gettid());
    lc_session *s = NULL;
    a->rc = lc_accept(a->l, &s, INT64_MAX);
    lc_session_free(s);
    return NULL;
}

static void *huge_recv_fn(void *x)
{
    huge_wait *a = x;
    atomic_store(&a->tid, lc_test_gettid());
    lc_msg *m = NULL;
    a->rc = lc_recv(a->r, &m, INT64_MAX);
    a->n = a->rc == 0 ? nt_msg_get_n(m) : -1;
    lc_msg_free(m);
    return NULL;
}

static double process_cpu_s(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static void test_huge_timeouts_wait(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    char url[128];
    lc_options so;
    lc_options_default(&so);
    so.ref_timeout_ms = INT64_MAX;
    nt_pair p;
    nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, &so);

    huge_wait a = { .l = p.l };
    pthread_t t;
    pthread_create(&t, NULL, huge_accept_fn, &a);
    if (!lc_test_wait_asleep(&a.tid, 5000)) {
        lc_listener_close(p.l); /* (ends the accept, if it is in one) */
        p.l = NULL;
        pthread_join(t, NULL);
        fail_msg("lc_accept(INT64_MAX) did not block: %s", lc_strerror(a.rc));
    }
    lc_listener_close(p.l);
    p.l = NULL;
    pthread_join(t, NULL);
    assert_int_equal(a.rc, LC_ECLOSED);

    lc_sender *s;
    huge_wait b = { 0 };
    assert_int_equal(lc_session_sender(p.client, &s), 0);
    assert_int_equal(lc_send(s, nt_msg_n(1), 5000), 0);
    assert_int_equal(lc_session_receiver(p.server, &b.r, 5000), 0);
    nt_expect_n(b.r, 1);
    pthread_create(&t, NULL, huge_recv_fn, &b);
    bool asleep = lc_test_wait_asleep(&b.tid, 5000);
    /* idle, with a waiting receiver: no timer spins */
    double c0 = process_cpu_s();
    struct timespec idle = { 0, 300000000 };
    nanosleep(&idle, NULL);
    double used = process_cpu_s() - c0;
    assert_int_equal(lc_send(s, nt_msg_n(2), 5000), 0);
    pthread_join(t, NULL);
    if (!asleep || b.rc != 0 || b.n != 2)
        fail_msg("lc_recv(INT64_MAX): %s, blocked %s, got {N: %d}", lc_strerror(b.rc), asleep ? "yes" : "no", b.n);
    if (used > 0.15)
        fail_msg("an idle session with ref_timeout_ms INT64_MAX used %.2f s of CPU in 0.3 s", used);
    lc_sender_release(s);
    lc_receiver_release(b.r);
    lc_session_free(p.client);
    lc_session_free(p.server);
}

/* A second lc_listen on a unix path that a live listener holds fails with
 * EADDRINUSE, as it should, and the live listener's lc_accept sees nothing of
 * it: not even while it is accepting at that moment. Its liveness check used
 * to connect and hang up, and an lc_accept running meanwhile returned that
 * probe as a session that was already over (a review helper: 280 in 2000);
 * it now asks the kernel's sock_diag. The accepting thread stops at the one
 * real client, dialed after the failed listens, which says who it is. */
typedef struct {
    lc_listener *l;
    int phantoms; /* sessions accepted before the real client */
    int rc;
} phantom_acceptor;

static void *phantom_accept_fn(void *x)
{
    phantom_acceptor *a = x;
    for (;;) {
        lc_session *s;
        if ((a->rc = lc_accept(a->l, &s, 20000)) != 0)
            return NULL;
        lc_receiver *rv;
        lc_msg *m = NULL;
        bool real = lc_session_receiver(s, &rv, 5000) == 0;
        if (real) {
            real = lc_recv(rv, &m, 5000) == 0;
            lc_msg_free(m);
            lc_receiver_release(rv);
        }
        lc_session_free(s);
        if (real)
            return NULL;
        a->phantoms++;
    }
}

static void test_failed_listen_leaves_no_phantom(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60 * nt_scale());
    char url[128];
    lc_listener *l1, *l2 = NULL;
    lc_error err = { 0 };
    assert_int_equal(lc_listen(nt_unix_url(url, sizeof url), NULL, &l1, &err), 0);
    bool diag = lc__unix_listening(url + strlen("unix://")) == 1;
    if (!diag)
        fprintf(stderr, "(no sock_diag for unix sockets here: lc_listen probes by connecting)\n");
    phantom_acceptor a = { .l = l1 };
    pthread_t t;
    pthread_create(&t, NULL, phantom_accept_fn, &a);
    for (int i = 0; i < 500; i++) {
        int rc = lc_listen(url, NULL, &l2, &err);
        if (rc != -EADDRINUSE || l2 != NULL)
            fail_msg("lc_listen %d on a live path: %s (%s)", i, lc_strerror(rc), err.text);
    }
    lc_session *c;
    lc_sender *tx;
    assert_int_equal(lc_dial(url, NULL, &c, NULL), 0);
    assert_int_equal(lc_session_sender(c, &tx), 0);
    assert_int_equal(lc_send(tx, lc_pack("{s:s}", "who", "the real client"), 5000), 0);
    pthread_join(t, NULL);
    lc_sender_release(tx);
    lc_session_free(c);
    lc_listener_close(l1);
    assert_int_equal(a.rc, 0);
    if (a.phantoms != 0 && diag)
        fail_msg("lc_accept returned %d sessions of failed lc_listen calls", a.phantoms);
}

/* lc_listen on one unix path from 4 threads at once: exactly one wins, the
 * others get -EADDRINUSE, and the winner is the one a dial reaches. Two
 * used to win now and then (12-19 rounds in 4000, a review helper): the
 * loser's stale-socket probe found the winner bound but not yet listening,
 * removed its file and bound its own. */
#define LISTEN_RACERS 4
typedef struct {
    pthread_barrier_t *bar;
    const char *url;
    lc_listener *l;
    int rc;
} listen_racer;

static void *listen_racer_fn(void *x)
{
    listen_racer *a = x;
    pthread_barrier_wait(a->bar);
    a->rc = lc_listen(a->url, NULL, &a->l, NULL);
    return NULL;
}

static void test_concurrent_listens_one_path(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60 * nt_scale());
    char url[128];
    nt_unix_url(url, sizeof url);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, LISTEN_RACERS);
    for (int r = 0; r < 1000; r++) {
        listen_racer a[LISTEN_RACERS];
        pthread_t t[LISTEN_RACERS];
        for (int i = 0; i < LISTEN_RACERS; i++) {
            a[i] = (listen_racer){ .bar = &bar, .url = url };
            pthread_create(&t[i], NULL, listen_racer_fn, &a[i]);
        }
        int won = 0, winner = -1;
        for (int i = 0; i < LISTEN_RACERS; i++) {
            pthread_join(t[i], NULL);
            if (a[i].rc == 0) {
                won++;
                winner = i;
            } else if (a[i].rc != -EADDRINUSE) {
                fail_msg("round %d: lc_listen: %s", r, lc_strerror(a[i].rc));
            }
        }
        for (int i = 0; i < LISTEN_RACERS; i++)
            if (a[i].rc == 0 && i != winner)
                lc_listener_close(a[i].l);
        if (won != 1) {
            if (winner >= 0)
                lc_listener_close(a[winner].l);
            fail_msg("round %d: %d of %d lc_listen calls on one path succeeded", r, won, LISTEN_RACERS);
        }
        if (r % 100 == 0) {
            /* the winner is the one listening there */
            lc_session *c, *s;
            assert_int_equal(lc_dial(url, NULL, &c, NULL), 0);
            assert_int_equal(lc_accept(a[winner].l, &s, 5000), 0);
            lc_session_free(c);
            lc_session_free(s);
        }
        lc_listener_close(a[winner].l);
    }
    pthread_barrier_destroy(&bar);
}

/* Dialers hammer a listener that accepts a few and is then closed: every
 * dial ends (a session, or -ENOENT / -ECONNREFUSED / -ECONNRESET / a
 * timeout), and a session whose connection was never accepted ends too. */
typedef struct {
    const char *url;
    atomic_int *closed;
    int ok, refused;
    int bad_rc;
    lc_session *sess[64];
    int nsess;
} hammer_arg;

static void *hammer_fn(void *x)
{
    hammer_arg *a = x;
    lc_options o;
    lc_options_default(&o);
    o.dial_timeout_ms = 2000;
    for (int i = 0; i < 64; i++) {
        bool after = atomic_load(a->closed);
        lc_session *s;
        lc_error err;
        int rc = lc_dial(a->url, &o, &s, &err);
        if (rc == 0) {
            a->sess[a->nsess++] = s;
            a->ok++;
        } else if (rc == -ENOENT || rc == -ECONNREFUSED || rc == -ECONNRESET) {
            a->refused++;
        } else {
            a->bad_rc = rc;
            fprintf(stderr, "dial %s: %s '%s'\n", a->url, lc_strerror(rc), err.text);
        }
        if (after && a->refused > 2)
            break;
    }
    return NULL;
}

static void test_dial_while_listener_closes(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    for (int r = 0; r < 6 * nt_scale(); r++) {
        char url[128], bound[256];
        lc_listener *l;
        assert_int_equal(lc_listen(nt_transport_url(r, url, sizeof url), NULL, &l, NULL), 0);
        assert_int_equal(lc_listener_url(l, bound, sizeof bound), 0);
        atomic_int closed = 0;
        enum { T = 3 };
        hammer_arg a[T];
        pthread_t t[T];
        for (int k = 0; k < T; k++) {
            a[k] = (hammer_arg){ .url = bound, .closed = &closed };
            pthread_create(&t[k], NULL, hammer_fn, &a[k]);
        }
        lc_session *acc[16];
        int nacc = 0;
        for (; nacc < 3 + r % 5; nacc++)
            assert_int_equal(lc_accept(l, &acc[nacc], 5000), 0);
        lc_listener_close(l);
        atomic_store(&closed, 1);
        for (int k = 0; k < T; k++)
            pthread_join(t[k], NULL);
        int ok = 0, ended = 0, alive = 0, other = 0;
        for (int k = 0; k < T; k++) {
            assert_int_equal(a[k].bad_rc, 0);
            ok += a[k].ok;
        }
        assert_true(ok >= nacc);
        /* accepted ones get a channel from the server; the others see the end */
        for (int i = 0; i < nacc; i++) {
            lc_sender *snd;
            assert_int_equal(lc_session_sender(acc[i], &snd), 0);
            assert_int_equal(lc_send(snd, nt_msg_n(1), 1000), 0);
            lc_sender_release(snd);
        }
        for (int k = 0; k < T; k++)
            for (int i = 0; i < a[k].nsess; i++) {
                lc_receiver *rv;
                int rc = lc_session_receiver(a[k].sess[i], &rv, 3000);
                if (rc == LC_ESESSION) {
                    ended++;
                } else if (rc == 0) {
                    nt_expect_n(rv, 1);
                    lc_receiver_release(rv);
                    alive++;
                } else {
                    fprintf(stderr, "%s round %d: a dialed session: %s\n", bound, r, lc_strerror(rc));
                    other++;
                }
            }
        if (alive != nacc || getenv("LC_EDGE_DEBUG"))
            fprintf(stderr, "%s round %d: %d dials ok, %d accepted, %d alive, %d ended\n", bound, r, ok, nacc, alive,
                    ended);
        for (int i = 0; i < nacc; i++)
            lc_session_free(acc[i]);
        for (int k = 0; k < T; k++)
            for (int i = 0; i < a[k].nsess; i++)
                lc_session_free(a[k].sess[i]);
        assert_int_equal(other, 0);
        assert_int_equal(alive + ended, ok);
        assert_int_equal(alive, nacc);
    }
}

/* Several threads accept on one listener at once while clients dial: each
 * connection is accepted exactly once, the rest time out cleanly. */
typedef struct {
    lc_listener *l;
    lc_session *got[64];
    int n;
    int bad;
} multi_acc;

static void *multi_acc_fn(void *x)
{
    multi_acc *a = x;
    for (;;) {
        lc_session *s;
        int rc = lc_accept(a->l, &s, 300);
        if (rc == LC_ETIMEDOUT)
            break;
        if (rc != 0) {
            a->bad = rc;
            break;
        }
        a->got[a->n++] = s;
        if (a->n == 64)
            break;
    }
    return NULL;
}

static void test_concurrent_accepts(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    for (int r = 0; r < 4 * nt_scale(); r++) {
        char url[128], bound[256];
        lc_listener *l;
        assert_int_equal(lc_listen(nt_transport_url(r, url, sizeof url), NULL, &l, NULL), 0);
        assert_int_equal(lc_listener_url(l, bound, sizeof bound), 0);
        enum { T = 4, N = 40 };
        multi_acc a[T];
        pthread_t t[T];
        for (int k = 0; k < T; k++) {
            a[k] = (multi_acc){ .l = l };
            pthread_create(&t[k], NULL, multi_acc_fn, &a[k]);
        }
        lc_session *c[N];
        for (int i = 0; i < N; i++) {
            assert_int_equal(lc_dial(bound, NULL, &c[i], NULL), 0);
            lc_sender *snd;
            assert_int_equal(lc_session_sender(c[i], &snd), 0);
            assert_int_equal(lc_send(snd, nt_msg_n(i), 5000), 0);
            lc_sender_release(snd);
        }
        for (int k = 0; k < T; k++)
            pthread_join(t[k], NULL);
        lc_listener_close(l);
        bool seen[N] = { false };
        int total = 0;
        for (int k = 0; k < T; k++) {
            assert_int_equal(a[k].bad, 0);
            for (int i = 0; i < a[k].n; i++) {
                lc_receiver *rv;
                assert_int_equal(lc_session_receiver(a[k].got[i], &rv, 5000), 0);
                lc_msg *m;
                assert_int_equal(lc_recv(rv, &m, 5000), 0);
                int n = nt_msg_get_n(m);
                lc_msg_free(m);
                lc_receiver_release(rv);
                assert_true(n >= 0 && n < N && !seen[n]);
                seen[n] = true;
                total++;
                lc_session_free(a[k].got[i]);
            }
        }
        for (int i = 0; i < N; i++)
            lc_session_free(c[i]);
        assert_int_equal(total, N);
    }
}

/* Unix paths: a stale socket file (its listener died without unlinking) is
 * replaced; a regular file at the path is not touched (EADDRINUSE); an
 * abstract name can be listened on again right after close; tcp://localhost
 * reaches a listener on 127.0.0.1. */
static void test_listen_paths_and_names(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    for (int r = 0; r < 4 * nt_scale(); r++) {
        char path[108], url[160];
        snprintf(path, sizeof path, "/tmp/lc-edge-stale-%d-%d.sock", (int)getpid(), r);
        unlink(path);
        snprintf(url, sizeof url, "unix://%s", path);
        /* stale socket */
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        strcpy(sa.sun_path, path);
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
        assert_int_equal(listen(fd, 1), 0);
        close(fd);
        nt_pair p;
        nt_open_pair(&p, url, NULL, NULL);
        warm_pair(&p);
        nt_close_pair(&p);
        struct stat sb;
        assert_int_equal(stat(path, &sb), -1);
        /* a regular file */
        fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "keep", 4), 4);
        close(fd);
        lc_listener *l = NULL;
        lc_error err = { 0 };
        int rc = lc_listen(url, NULL, &l, &err);
        if (rc != -ENOTSOCK)
            fprintf(stderr, "listen on a regular file: %s '%s'\n", lc_strerror(rc), err.text);
        assert_int_equal(rc, -ENOTSOCK); /* (was -EADDRINUSE: "in use" misled) */
        assert_non_null(strstr(err.text, "exists and is not a socket"));
        assert_int_equal(stat(path, &sb), 0);
        assert_int_equal((int)sb.st_size, 4);
        unlink(path);
        /* abstract, twice in a row */
        for (int k = 0; k < 2; k++) {
            snprintf(url, sizeof url, "unix://@lc-edge-abstract-%d-%d", (int)getpid(), r);
            nt_open_pair(&p, url, NULL, NULL);
            warm_pair(&p);
            nt_close_pair(&p);
        }
        /* localhost names */
        lc_listener *tl;
        char bound[256];
        assert_int_equal(lc_listen("tcp://127.0.0.1:0", NULL, &tl, NULL), 0);
        assert_int_equal(lc_listener_url(tl, bound, sizeof bound), 0);
        const char *port = strrchr(bound, ':') + 1;
        snprintf(url, sizeof url, "tcp://localhost:%s", port);
        p.l = tl;
        rc = lc_dial(url, NULL, &p.client, &err);
        if (rc != 0)
            fprintf(stderr, "dial %s: %s\n", url, err.text);
        assert_int_equal(rc, 0);
        assert_int_equal(lc_accept(tl, &p.server, 5000), 0);
        warm_pair(&p);
        nt_close_pair(&p);
        /* a too small buffer for the URL */
        assert_int_equal(lc_listen("tcp://127.0.0.1:0", NULL, &tl, NULL), 0);
        char tiny[8];
        assert_int_equal(lc_listener_url(tl, tiny, sizeof tiny), LC_ERANGE);
        lc_listener_close(tl);
    }
}

/* ---- 3. flow control and backpressure ------------------------------------------- */

/* 4 threads send on one channel nobody reads (small window and queue), with
 * a short timeout: once blocked they get LC_ETIMEDOUT. Meanwhile another
 * channel must keep flowing. Then the stuck channel is drained: exactly the
 * accepted messages, each thread's in order. */
typedef struct {
    lc_sender *s;
    int id;
    int accepted;
    int timeouts;
    int other;
} stuck_arg;

static void *stuck_fn(void *x)
{
    stuck_arg *a = x;
    static const char blob[2048];
    while (a->timeouts < 3 && a->accepted < 100000) {
        lc_msg *m = lc_pack("{s:i, s:i, s:b}", "T", a->id, "N", a->accepted, "B", blob, sizeof blob);
        int rc = lc_send(a->s, m, 100);
        if (rc == 0) {
            a->accepted++;
        } else {
            lc_msg_free(m);
            if (rc == LC_ETIMEDOUT)
                a->timeouts++;
            else {
                a->other = rc;
                break;
            }
        }
    }
    return NULL;
}

static void test_unread_channel_others_flow(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60 * nt_scale());
    for (int r = 0; r < 4 * nt_scale(); r++) {
        char url[128];
        lc_options o;
        lc_options_default(&o);
        o.stream_window = 16 * 1024;
        o.recv_queue = 4;
        nt_pair p;
        nt_open_pair(&p, nt_transport_url(r, url, sizeof url), &o, &o);
        lc_sender *stuck, *flow;
        lc_receiver *r_stuck, *r_flow;
        assert_int_equal(lc_session_sender(p.client, &stuck), 0);
        assert_int_equal(lc_session_sender(p.client, &flow), 0);
        assert_int_equal(lc_session_receiver(p.server, &r_stuck, 5000), 0);
        assert_int_equal(lc_session_receiver(p.server, &r_flow, 5000), 0);
        enum { T = 4 };
        stuck_arg a[T];
        pthread_t t[T];
        for (int k = 0; k < T; k++) {
            a[k] = (stuck_arg){ .s = stuck, .id = k };
            pthread_create(&t[k], NULL, stuck_fn, &a[k]);
        }
        /* the other channel flows, with a round-trip bound per message */
        for (int i = 0; i < 300; i++) {
            int64_t t0 = lc_test_now_us();
            assert_int_equal(lc_send(flow, nt_msg_n(i), 2000), 0);
            nt_expect_n(r_flow, i);
            int64_t ms = (lc_test_now_us() - t0) / 1000;
            if (ms > 1000) {
                fprintf(stderr, "%s round %d: message %d on the free channel took %lld ms\n", url, r, i, (long long)ms);
                fail();
            }
        }
        for (int k = 0; k < T; k++)
            pthread_join(t[k], NULL);
        int total = 0;
        for (int k = 0; k < T; k++) {
            assert_int_equal(a[k].other, 0);
            assert_int_equal(a[k].timeouts, 3);
            total += a[k].accepted;
        }
        /* drain: exactly what was accepted, per thread in order */
        int next[T] = { 0 };
        int got = 0;
        for (;;) {
            lc_msg *m;
            int rc = lc_recv(r_stuck, &m, got == total ? 300 : 5000);
            if (rc == LC_ETIMEDOUT)
                break;
            assert_int_equal(rc, 0);
            int tid = -1, n = -1;
            assert_int_equal(lc_unpack(m, "{s:i, s:i, *}", "T", &tid, "N", &n), 0);
            lc_msg_free(m);
            assert_true(tid >= 0 && tid < T);
            if (n != next[tid])
                fprintf(stderr, "%s round %d: thread %d message %d, wanted %d\n", url, r, tid, n, next[tid]);
            assert_int_equal(n, next[tid]);
            next[tid]++;
            got++;
        }
        if (got != total)
            fprintf(stderr, "%s round %d: %d received, %d accepted\n", url, r, got, total);
        assert_int_equal(got, total);
        lc_sender_release(stuck);
        lc_sender_release(flow);
        lc_receiver_release(r_stuck);
        lc_receiver_release(r_flow);
        nt_close_pair(&p);
    }
}

/* A big binary message: pattern check. */
static lc_msg *big_msg(int tag, size_t len)
{
    uint8_t *b = malloc(len);
    assert_non_null(b);
    for (size_t i = 0; i < len; i++)
        b[i] = (uint8_t)((i * 131 + (size_t)tag * 7) >> 3);
    lc_msg *m = lc_pack("{s:i, s:b}", "T", tag, "B", b, len);
    free(b);
    assert_non_null(m);
    return m;
}

static void check_big(lc_msg *m, int tag, size_t len)
{
    int t = -1;
    const void *p;
    size_t n;
    assert_int_equal(lc_unpack(m, "{s:i, s:b}", "T", &t, "B", &p, &n), 0);
    assert_int_equal(t, tag);
    assert_int_equal(n, len);
    const uint8_t *b = p;
    for (size_t i = 0; i < len; i++)
        if (b[i] != (uint8_t)((i * 131 + (size_t)tag * 7) >> 3)) {
            fprintf(stderr, "tag %d: byte %zu of %zu differs\n", tag, i, len);
            fail();
        }
}

typedef struct {
    lc_sender *s;
    int tag0, n;
    size_t len;
    int rc;
} big_arg;

static void *big_fn(void *x)
{
    big_arg *a = x;
    for (int i = 0; i < a->n; i++) {
        lc_msg *m = big_msg(a->tag0 + i, a->len);
        a->rc = lc_send(a->s, m, 10000);
        if (a->rc != 0) {
            lc_msg_free(m);
            return NULL;
        }
    }
    return NULL;
}

/* Messages larger than one SPDY frame (2^24 - 1 bytes), toward default and
 * tiny windows. */
static void test_message_bigger_than_a_frame(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60 * nt_scale());
    for (int r = 0; r < 4 * nt_scale(); r++) {
        char url[128];
        lc_options o;
        lc_options_default(&o);
        if (r >= 2)
            o.stream_window = 1024; /* tiny: the message overdraws it */
        nt_pair p;
        nt_open_pair(&p, nt_transport_url(r, url, sizeof url), &o, &o);
        lc_sender *s;
        lc_receiver *rv;
        assert_int_equal(lc_session_sender(p.client, &s), 0);
        assert_int_equal(lc_session_receiver(p.server, &rv, 5000), 0);
        size_t len = LC_SPDY_MAX_LENGTH + 4096 + (size_t)r;
        int nbig = r < 2 ? 2 : 1;
        big_arg a = { .s = s, .tag0 = 1, .n = nbig, .len = len };
        pthread_t t;
        pthread_create(&t, NULL, big_fn, &a);
        for (int i = 0; i < nbig; i++) {
            lc_msg *m;
            int rc = lc_recv(rv, &m, 20000);
            if (rc != 0)
                fprintf(stderr, "%s round %d: recv %s (session %s)\n", url, r, lc_strerror(rc),
                        lc_strerror(lc_session_error(p.server)));
            assert_int_equal(rc, 0);
            check_big(m, 1 + i, len);
            lc_msg_free(m);
        }
        pthread_join(t, NULL);
        assert_int_equal(a.rc, 0);
        /* and a small one after */
        assert_int_equal(lc_send(s, nt_msg_n(7), 5000), 0);
        nt_expect_n(rv, 7);
        lc_sender_release(s);
        lc_receiver_release(rv);
        nt_close_pair(&p);
    }
}

/* A small max_pending_out, 3 threads sending 1 MiB messages on one channel
 * and on their own channels. */
/* Last frames of a session (LC_EDGE_TRACE=1), dumped when a round fails. */
typedef struct {
    pthread_mutex_t mu;
    char lines[256][128];
    unsigned n;
    int64_t t0;
} trace_ring;

static void trace_ring_fn(void *ctx, const char *line)
{
    trace_ring *t = ctx;
    pthread_mutex_lock(&t->mu);
    snprintf(t->lines[t->n % 256], sizeof t->lines[0], "%8lld %s", (long long)(lc_test_now_us() - t->t0), line);
    t->n++;
    pthread_mutex_unlock(&t->mu);
}

static void trace_ring_dump(trace_ring *t, const char *who)
{
    unsigned from = t->n > 256 ? t->n - 256 : 0;
    for (unsigned i = from; i < t->n; i++)
        if (strstr(t->lines[i % 256], "len=0") == NULL || strstr(t->lines[i % 256], "FIN"))
            fprintf(stderr, "  %s %s\n", who, t->lines[i % 256]);
}

static trace_ring tr_client = { .mu = PTHREAD_MUTEX_INITIALIZER }, tr_server = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void run_small_pending_out(int r)
{
    {
        char url[128];
        lc_options o;
        lc_options_default(&o);
        o.max_pending_out = 32 * 1024; /* far below one message */
        o.stream_window = r % 2 ? 64 * 1024 : 1024 * 1024;
        lc_options co = o, so = o;
        if (getenv("LC_EDGE_TRACE")) {
            tr_client.n = tr_server.n = 0;
            tr_client.t0 = tr_server.t0 = lc_test_now_us();
            co.trace = trace_ring_fn;
            co.trace_ctx = &tr_client;
            so.trace = trace_ring_fn;
            so.trace_ctx = &tr_server;
        }
        nt_pair p;
        nt_open_pair(&p, nt_transport_url(r, url, sizeof url), &co, &so);
        enum { T = 3, MSGS = 4 };
        bool shared = r >= 2;
        lc_sender *s[T];
        lc_receiver *rv[T];
        for (int k = 0; k < T; k++) {
            if (k == 0 || !shared) {
                assert_int_equal(lc_session_sender(p.client, &s[k]), 0);
                assert_int_equal(lc_session_receiver(p.server, &rv[k], 5000), 0);
            } else {
                s[k] = lc_sender_retain(s[0]);
                rv[k] = NULL;
            }
        }
        size_t len = 512 * 1024 + 17;
        big_arg a[T];
        pthread_t t[T];
        for (int k = 0; k < T; k++) {
            a[k] = (big_arg){ .s = s[k], .tag0 = k * 100, .n = MSGS, .len = len };
            pthread_create(&t[k], NULL, big_fn, &a[k]);
        }
        int next[T] = { 0 };
        for (int i = 0; i < T * MSGS; i++) {
            lc_receiver *from = shared ? rv[0] : rv[i % T];
            lc_msg *m;
            int rc = lc_recv(from, &m, 10000);
            if (rc != 0) {
                fprintf(stderr, "%s round %d (%s, window %u): recv %d of %d: %s; session errors %s / %s; next %d %d %d\n",
                        url, r, shared ? "one channel" : "own channels", o.stream_window, i, T * MSGS,
                        lc_strerror(rc), lc_strerror(lc_session_error(p.client)),
                        lc_strerror(lc_session_error(p.server)), next[0], next[1], next[2]);
                for (int k = 0; k < T; k++) {
                    pthread_join(t[k], NULL);
                    fprintf(stderr, "  sender %d: %s; receiver queued %zu\n", k, lc_strerror(a[k].rc),
                            rv[k] ? lc_receiver_queued(rv[k]) : 0);
                }
                lc_session *ss[2] = { p.client, p.server };
                for (int k = 0; k < 2; k++) {
                    pthread_mutex_lock(&ss[k]->wmu);
                    fprintf(stderr, "  %s: out %zu, inflight %zu/%zu, writing %d, paused %d, reader %d\n",
                            k ? "server" : "client", ss[k]->out.len, ss[k]->inflight_off, ss[k]->inflight.len,
                            (int)ss[k]->writing, (int)ss[k]->paused, atomic_load(&ss[k]->reader));
                    pthread_mutex_unlock(&ss[k]->wmu);
                }
                int64_t t1 = lc_test_now_us();
                rc = lc_recv(from, &m, 5000);
                fprintf(stderr, "  a second recv: %s after %lld ms\n", lc_strerror(rc),
                        (long long)(lc_test_now_us() - t1) / 1000);
                if (getenv("LC_EDGE_TRACE")) {
                    trace_ring_dump(&tr_client, "client");
                    trace_ring_dump(&tr_server, "server");
                }
                if (rc == 0)
                    lc_msg_free(m);
                fail();
            }
            int tag = -1;
            assert_int_equal(lc_unpack(m, "{s:i, *}", "T", &tag), 0);
            int k = tag / 100;
            assert_true(k >= 0 && k < T);
            assert_int_equal(tag % 100, next[k]);
            check_big(m, tag, len);
            next[k]++;
            lc_msg_free(m);
        }
        for (int k = 0; k < T; k++) {
            pthread_join(t[k], NULL);
            assert_int_equal(a[k].rc, 0);
            lc_sender_release(s[k]);
            lc_receiver_release(rv[k]);
        }
        nt_close_pair(&p);
    }
}

static void test_small_pending_out_big_messages(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60 * nt_scale());
    for (int r = 0; r < 4 * nt_scale(); r++)
        run_small_pending_out(r);
}

/* The configuration of test_small_pending_out_big_messages that used to
 * fail now and then: tcp, 3 threads each on its own channel, 512 KiB
 * messages, max_pending_out 32 KiB, stream_window 64 KiB. With
 * LC_EDGE_TRACE=1 the frames showed it: one thread's 4 messages went out
 * within 26 ms, the other two threads sent nothing until their lc_send's
 * 10 s deadline. They got LC__WOULD_BLOCK on a full output (pending_out >=
 * max_pending_out) and waited for wake_blocked_senders, which only the
 * EPOLLOUT path (output_ready) called: when the writing thread's own
 * flush_locked drained the output without EAGAIN (loopback TCP takes 512
 * KiB at once), nobody woke them (with timeout -1 they would have hung for
 * good). output.c's wake_after_flush_locked wakes them now. */
static void test_senders_blocked_on_full_output_not_woken(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(600);
    for (int r = 0; r < 40 * nt_scale(); r++)
        run_small_pending_out(1);
}

/* ---- a byte stream's direct write and senders blocked on a full output ---- */

/* Writes 48 KiB blocks into a pipe (its write end non-blocking), 100 us
 * apart, until told to stop. */
typedef struct {
    int fd;
    atomic_int stop;
} pipe_feed;

static void *pipe_feed_fn(void *x)
{
    pipe_feed *a = x;
    static const char block[49152];
    while (!atomic_load(&a->stop)) {
        struct pollfd pfd = { a->fd, POLLOUT, 0 };
        if (poll(&pfd, 1, 20) != 1)
            continue;
        ssize_t w = write(a->fd, block, sizeof block);
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            break;
        struct timespec gap = { 0, 100000 };
        nanosleep(&gap, NULL);
    }
    return NULL;
}

/* Reads fd to its EOF, each read waited for at most timeout_ms; got: the
 * bytes, or -1 when a wait timed out or a read failed before EOF. */
typedef struct {
    int fd;
    int timeout_ms;
    long got;
} fd_sink;

static void *fd_sink_fn(void *x)
{
    fd_sink *a = x;
    char buf[65536];
    a->got = 0;
    for (;;) {
        struct pollfd pfd = { a->fd, POLLIN, 0 };
        if (poll(&pfd, 1, a->timeout_ms) != 1) {
            a->got = -1;
            return NULL;
        }
        ssize_t n = read(a->fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            a->got = -1;
        if (n <= 0)
            return NULL;
        a->got += n;
    }
}

/* Receives on a network Receiver until its channel ends. */
static void *chan_sink_fn(void *x)
{
    lc_receiver *r = x;
    lc_msg *m;
    while (lc_recv(r, &m, 10000) == 0)
        lc_msg_free(m);
    return NULL;
}

/*
 * A byte stream's frame written straight to the carrier (bytes_write_direct,
 * taken when the output is empty) counts in the output while the write
 * lasts. An lc_send on another channel that found the output full then
 * (max_pending_out 4 KiB, below one 64 KiB frame) blocked, and when the
 * direct write wrote everything nobody woke it: it slept until some later
 * write happened to, or to its timeout (for ever with -1; each send here
 * gets 2 s). A pipe feeds a byte stream (48 KiB every 100 us: each frame
 * above max_pending_out, the carrier never full, whose partial writes would
 * wake the sender) for 800 ms while small messages go out on another
 * channel, a little apart (the direct write needs an empty output): none may
 * take more than 750 ms. Before the fix one waited out its 2 s in 30 runs of
 * 30, most within the first few hundred sends. It also caught a second lost
 * wake-up, rarer (CI under TSan): a drain between a sender's failed try and
 * its re-check once queued cleared senders_blocked with nobody to wake, and
 * the re-check did not set it again (net_writable).
 */
static void test_direct_write_wakes_blocked_senders(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    lc_options co;
    lc_options_default(&co);
    co.max_pending_out = 4096;
    nt_pair p;
    /* tcp: the pipe goes as a byte stream (over unix it may go as itself) */
    nt_open_pair(&p, "tcp://127.0.0.1:0", &co, NULL);
    int pf[2];
    assert_int_equal(pipe2(pf, O_CLOEXEC), 0);
    assert_int_equal(fcntl(pf[1], F_SETFL, O_NONBLOCK), 0);
    lc_sender *sb, *sm;
    lc_receiver *rb, *rm;
    assert_int_equal(lc_session_sender(p.client, &sb), 0);
    lc_msg *m = lc_msg_new();
    lc_value *root = lc_new_map(m);
    lc_map_set(m, root, "F", lc_new_stream(m, pf[0], LC_STREAM_READ));
    lc_msg_set_root(m, root);
    assert_int_equal(lc_send(sb, m, 5000), 0);
    assert_int_equal(lc_session_receiver(p.server, &rb, 5000), 0);
    assert_int_equal(lc_recv(rb, &m, 5000), 0);
    fd_sink sink = { .fd = -1, .timeout_ms = 10000 };
    assert_int_equal(lc_unpack(m, "{s:F}", "F", &sink.fd), 0);
    lc_msg_free(m);
    assert_int_equal(lc_session_sender(p.client, &sm), 0);
    assert_int_equal(lc_send(sm, nt_msg_n(-1), 5000), 0);
    assert_int_equal(lc_session_receiver(p.server, &rm, 5000), 0);
    nt_expect_n(rm, -1);

    pipe_feed feed = { .fd = pf[1] };
    pthread_t tf, ts, tc;
    assert_int_equal(pthread_create(&ts, NULL, fd_sink_fn, &sink), 0);
    assert_int_equal(pthread_create(&tc, NULL, chan_sink_fn, rm), 0);
    assert_int_equal(pthread_create(&tf, NULL, pipe_feed_fn, &feed), 0);
    int n = 0, rc = 0;
    int64_t worst_us = 0;
    int64_t until = lc_test_now_us() + 800000;
    while (lc_test_now_us() < until && worst_us <= 750000) {
        lc_msg *x = nt_msg_n(n);
        int64_t t0 = lc_test_now_us();
        rc = lc_send(sm, x, 2000);
        int64_t dt = lc_test_now_us() - t0;
        if (dt > worst_us)
            worst_us = dt;
        if (rc != 0) {
            lc_msg_free(x);
            break;
        }
        n++;
        /* a gap between sends (not a wait for anything): a sender that
         * sends back to back seldom leaves the output empty */
        struct timespec gap = { 0, 100000 };
        nanosleep(&gap, NULL);
    }
    atomic_store(&feed.stop, 1);
    pthread_join(tf, NULL);
    close(pf[1]);
    assert_int_equal(lc_close(sm), 0);
    pthread_join(ts, NULL);
    pthread_join(tc, NULL);
    if (rc != 0 || worst_us > 750000)
        fprintf(stderr, "send %d on the other channel: %s, the slowest took %lld ms (byte stream: %ld bytes)\n", n,
                lc_strerror(rc), (long long)worst_us / 1000, sink.got);
    close(sink.fd);
    lc_sender_release(sb);
    lc_sender_release(sm);
    lc_receiver_release(rb);
    lc_receiver_release(rm);
    nt_close_pair(&p);
    assert_int_equal(rc, 0);
    assert_true(worst_us <= 750000);
    assert_true(sink.got > 0);
}

/* ---- a full queue toward a peer without windows -------------------------- */

typedef struct slow_flood {
    nt_raw *p;
    lc_buf b; /* written by the thread: blocks while the session stops reading */
} slow_flood;

static void *slow_flood_fn(void *x)
{
    slow_flood *f = x;
    nt_raw_send(f->p, &f->b);
    return NULL;
}

/*
 * Toward a peer without windows (a Go peer; here the raw peer, which sends
 * no SETTINGS), a channel whose local queue is full stalls the session's
 * other channels only once it holds more than one stream_window of bytes
 * not yet decoded: until then the session goes on reading for them. Past
 * it the session stops reading (memory stays bounded: that window and one
 * read), and reads again once the slow channel's receiver catches up.
 * Everything arrives, in order. The session used to stop reading as soon
 * as one queue was full, so the fast channel here waited for the slow one.
 */
static void test_full_queue_stalls_others_only_past_a_window(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    lc_options o;
    lc_options_default(&o);
    o.recv_queue = 4;
    o.stream_window = 64u << 10;
    nt_raw p;
    nt_raw_open(&p, &o);
    lc_buf b;
    lc__buf_init(&b);
    nt_put_syn(&p, &b, 1, 1, 0, 0); /* the slow channel, read only at the end */
    nt_put_syn(&p, &b, 3, 2, 0, 0); /* the fast one */
    for (int i = 0; i < 20; i++)
        nt_put_n(&b, 1, i);
    nt_raw_send(&p, &b);
    lc_receiver *slow, *fast;
    assert_int_equal(lc_session_receiver(p.s, &slow, 5000), 0);
    assert_int_equal(lc_session_receiver(p.s, &fast, 5000), 0);
    int64_t end = lc_test_now_us() + 5000000;
    while (lc_receiver_queued(slow) < (size_t)o.recv_queue && lc_test_now_us() < end)
        sched_yield();
    assert_int_equal(lc_receiver_queued(slow), o.recv_queue); /* full: its 16 others wait */

    /* a few bytes held for the slow channel: the fast one still flows */
    for (int i = 0; i < 5; i++)
        nt_put_n(&b, 3, 1000 + i);
    nt_raw_send(&p, &b);
    for (int i = 0; i < 5; i++)
        nt_expect_n(fast, 1000 + i);

    /* 1 MiB more for the slow channel: the session stops reading past its
     * window, so the fast channel's next message waits behind it */
    static uint8_t blob[16u << 10];
    slow_flood f = { &p, { 0 } };
    lc__buf_init(&f.b);
    for (int i = 0; i < 64; i++)
        nt_put_msg(&f.b, 1, lc_pack("{s:i, s:b}", "N", 20 + i, "Blob", blob, sizeof blob));
    nt_put_n(&f.b, 3, 2000);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, slow_flood_fn, &f), 0);
    end = lc_test_now_us() + 10000000;
    bool paused = false;
    while (!paused && lc_test_now_us() < end) {
        pthread_mutex_lock(&p.s->mu);
        paused = p.s->paused;
        pthread_mutex_unlock(&p.s->mu);
        if (!paused)
            sched_yield();
    }
    assert_true(paused);
    pthread_mutex_lock(&p.s->mu);
    /* held for the slow channel: under the window plus one read (512 KiB)
     * and the message that crossed the line */
    bool bounded = !lc__stalled_over_locked(p.s, o.stream_window + (512u << 10) + sizeof blob + 64);
    pthread_mutex_unlock(&p.s->mu);
    assert_true(bounded);

    /* the slow receiver catches up: everything arrives, in order */
    for (int i = 0; i < 84; i++)
        nt_expect_n(slow, i); /* (its Blob, when it has one, beside N) */
    nt_expect_n(fast, 2000);
    pthread_join(t, NULL);
    lc__buf_free(&f.b);
    lc__buf_free(&b);
    lc_receiver_release(slow);
    lc_receiver_release(fast);
    nt_raw_close(&p);
}

/*
 * lc_recv on a network Receiver blocks at most timeout_ms also when the
 * session pauses reading while the receiving thread itself reads the
 * carrier (drive): after the pause it waits only for what is left of the
 * timeout. It waited the whole timeout again, ~1.8 s for 1 s here (found by
 * a review helper). The flood for the full slow channel comes once the
 * receive is reading (drives counted), 800 ms into its timeout: that delay
 * is the time the receive must not be granted twice, not a synchronisation.
 */
typedef struct late_flood {
    nt_raw *p;
    lc_buf b;
    unsigned drives0;
    int64_t start_us;
    _Atomic bool drove; /* the receiving thread read the carrier */
} late_flood;

static void *late_flood_fn(void *x)
{
    late_flood *f = x;
    int64_t end = f->start_us + 800000;
    while (atomic_load(&f->p->s->drives) == f->drives0 && lc_test_now_us() < end)
        sched_yield();
    atomic_store(&f->drove, atomic_load(&f->p->s->drives) != f->drives0);
    for (int64_t now; (now = lc_test_now_us()) < end;) {
        struct timespec ts = { 0, (long)(end - now) * 1000 };
        nanosleep(&ts, NULL);
    }
    nt_raw_send(f->p, &f->b);
    return NULL;
}

static void test_recv_timeout_counts_time_spent_reading(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    lc_options o;
    lc_options_default(&o);
    o.recv_queue = 4;
    o.stream_window = 64u << 10;
    nt_raw p;
    nt_raw_open(&p, &o);
    lc_buf b;
    lc__buf_init(&b);
    nt_put_syn(&p, &b, 1, 1, 0, 0); /* slow: its queue fills, read at the end */
    nt_put_syn(&p, &b, 3, 2, 0, 0); /* fast: the receive waits on it */
    for (int i = 0; i < 4; i++)
        nt_put_n(&b, 1, i);
    nt_raw_send(&p, &b);
    lc_receiver *slow, *fast;
    assert_int_equal(lc_session_receiver(p.s, &slow, 5000), 0);
    assert_int_equal(lc_session_receiver(p.s, &fast, 5000), 0);
    int64_t end = lc_test_now_us() + 5000000;
    while ((lc_receiver_queued(slow) < 4 || atomic_load(&p.s->reader) != 0) && lc_test_now_us() < end)
        sched_yield();
    assert_int_equal(lc_receiver_queued(slow), 4);

    /* past the window for the slow channel: reading pauses */
    static uint8_t blob[16u << 10];
    late_flood f = { .p = &p };
    lc__buf_init(&f.b);
    for (int i = 0; i < 64; i++)
        nt_put_msg(&f.b, 1, lc_pack("{s:i, s:b}", "N", 20 + i, "Blob", blob, sizeof blob));
    f.drives0 = atomic_load(&p.s->drives);
    f.start_us = lc_test_now_us();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, late_flood_fn, &f), 0);
    lc_msg *m = NULL;
    int rc = lc_recv(fast, &m, 1000);
    int64_t took_ms = (lc_test_now_us() - f.start_us) / 1000;
    bool paused = atomic_load(&p.s->paused);
    printf("lc_recv(1000 ms): %s after %lld ms, paused %d\n", lc_strerror(rc), (long long)took_ms, (int)paused);
    assert_int_equal(rc, LC_ETIMEDOUT);
    for (int i = 0; i < 4; i++)
        nt_expect_n(slow, i);
    for (int i = 0; i < 64; i++)
        nt_expect_n(slow, 20 + i); /* (the flood thread then ends) */
    pthread_join(t, NULL);
    assert_true(atomic_load(&f.drove)); /* the case under test happened */
    assert_true(paused);
    assert_true(took_ms >= 999);
    assert_true(took_ms < 1500); /* ~1800 before (slack for loaded sanitizer runs) */
    lc__buf_free(&f.b);
    lc__buf_free(&b);
    lc_receiver_release(slow);
    lc_receiver_release(fast);
    nt_raw_close(&p);
}

/* Waits until the session's reading is paused (or resumed: want false).
 * True once it is. */
static bool wait_paused(lc_session *s, bool want, int timeout_ms)
{
    int64_t end = lc_test_now_us() + (int64_t)timeout_ms * 1000;
    while (atomic_load(&s->paused) != want) {
        if (lc_test_now_us() > end)
            return false;
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    return true;
}

/* Waits until the session has read everything written on our end of the
 * raw peer's socketpair (SIOCOUTQ: nothing queued). */
static bool wait_all_read(nt_raw *p, int timeout_ms)
{
    int64_t end = lc_test_now_us() + (int64_t)timeout_ms * 1000;
    for (;;) {
        int q = -1;
        assert_int_equal(ioctl(p->fd, SIOCOUTQ, &q), 0);
        if (q == 0)
            return true;
        if (lc_test_now_us() > end)
            return false;
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
}

/* A channel nobody reads holds at most recv_queue messages decoded ahead of
 * its queue (never more than its queue holds): messages that are not plain
 * (here a float32) are held as values, ~50 bytes per byte of tiny elements,
 * and with recv_queue 1 it held 33 of them (a review helper). */
static void test_decode_ahead_within_recv_queue(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    enum { N = 40 };
    lc_options o;
    lc_options_default(&o);
    o.recv_queue = 1;
    nt_raw p;
    nt_raw_open(&p, &o);
    lc_buf b;
    lc__buf_init(&b);
    nt_put_syn(&p, &b, 1, 1, 0, 0);
    for (int i = 0; i < N; i++) {
        /* {"N": i, "F": float32 1.5} */
        const uint8_t msg[] = { 0x82, 0xa1, 'N', (uint8_t)i, 0xa1, 'F', 0xca, 0x3f, 0xc0, 0x00, 0x00 };
        assert_int_equal(lc__spdy_put_data(&b, 1, 0, msg, sizeof msg), 0);
    }
    assert_int_equal(lc__spdy_put_ping(&b, 1), 0);
    nt_raw_send(&p, &b);
    assert_int_equal(nt_raw_expect(&p, LC_SPDY_PING, 0, NULL, 5000), 1); /* all of it read */
    lc_receiver *r;
    assert_int_equal(lc_session_receiver(p.s, &r, 5000), 0);
    pthread_mutex_lock(&p.s->mu);
    lc_stream *x = lc__map_get(&p.s->streams, 1);
    size_t ahead = x != NULL ? x->npending : 0;
    pthread_mutex_unlock(&p.s->mu);
    if (ahead > o.recv_queue)
        fprintf(stderr, "%zu messages decoded ahead of a queue of %u\n", ahead, o.recv_queue);
    assert_true(ahead <= o.recv_queue);
    for (int i = 0; i < N; i++)
        nt_expect_n(r, i);
    lc_receiver_release(r);
    lc__buf_free(&b);
    nt_raw_close(&p);
}

/*
 * Reading paused past stream_window toward a peer without windows resumes
 * once the channels with a full queue hold at most half of it (PROTOCOL.md
 * 6.3), also while the application reads such a channel only in part. With
 * the default recv_queue (256) the deliveries that made room never asked to
 * resume: reading came back only once the full channel's bytes were all
 * decoded, and a message on another channel waited meanwhile (for good, if
 * the application waited for it before reading the rest). Here channel A
 * (1 KiB messages, stream_window 256 KiB) fills its queue and passes the
 * window, the session pauses, one message for channel C waits in the
 * socket; A is read until it holds under 2/5 of the window undecoded: C's
 * message must come (it did not within 2 s).
 */
static void test_paused_reading_resumes_at_half_window(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    lc_options o;
    lc_options_default(&o); /* recv_queue 256 */
    o.stream_window = 256u << 10;
    nt_raw p;
    nt_raw_open(&p, &o);
    lc_buf b;
    lc__buf_init(&b);
    nt_put_syn(&p, &b, 1, 1, 0, 0); /* A: filled, read in part */
    nt_put_syn(&p, &b, 3, 2, 0, 0); /* C: one message */
    nt_raw_send(&p, &b);
    lc_receiver *a, *c;
    assert_int_equal(lc_session_receiver(p.s, &a, 5000), 0);
    assert_int_equal(lc_session_receiver(p.s, &c, 5000), 0);
    /* A's queue (256), and some more, all read by the session: under the window */
    static uint8_t blob[1000];
    int na1 = o.recv_queue + 42, na = na1 + 400;
    for (int i = 0; i < na1; i++)
        nt_put_msg(&b, 1, lc_pack("{s:i, s:b}", "N", i, "Blob", blob, sizeof blob));
    nt_raw_send(&p, &b);
    int64_t end = lc_test_now_us() + 5000000;
    while (lc_receiver_queued(a) < (size_t)o.recv_queue && lc_test_now_us() < end)
        sched_yield();
    assert_int_equal(lc_receiver_queued(a), o.recv_queue);
    assert_true(wait_all_read(&p, 5000));
    bool paused = true;
    nt_undecoded(p.s, 1, &paused);
    assert_false(paused);
    /* 400 KB more for A, from a thread (the session stops reading them):
     * past the window, the session pauses */
    slow_flood f = { &p, { 0 } };
    lc__buf_init(&f.b);
    for (int i = na1; i < na; i++)
        nt_put_msg(&f.b, 1, lc_pack("{s:i, s:b}", "N", i, "Blob", blob, sizeof blob));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, slow_flood_fn, &f), 0);
    bool did_pause = wait_paused(p.s, true, 5000);
    pthread_join(t, NULL); /* (what the session did not read fits in the socket) */
    lc__buf_free(&f.b);
    size_t held = nt_undecoded(p.s, 1, NULL);
    if (!did_pause)
        fprintf(stderr, "not paused: A holds %zu bytes undecoded\n", held);
    assert_true(did_pause);
    /* one message for C, behind the pause */
    nt_put_n(&b, 3, -7);
    nt_raw_send(&p, &b);
    assert_int_equal(lc_receiver_queued(c), 0);
    /* A is read in order until it holds under 2/5 of the window */
    int got = 0;
    do {
        nt_expect_n(a, got); /* (its Blob beside N) */
        got++;
        held = nt_undecoded(p.s, 1, &paused);
    } while (paused && held >= o.stream_window / 5 * 2 && got < na);
    int64_t t0 = lc_test_now_us();
    lc_msg *m = NULL;
    int rc = lc_recv(c, &m, 2000);
    if (rc != 0)
        fprintf(stderr, "A read to %d of %d, holds %zu bytes undecoded (half the window: %u), paused %d: C's message: "
                "%s after %lld ms\n", got, na, held, o.stream_window / 2, (int)paused, lc_strerror(rc),
                (long long)(lc_test_now_us() - t0) / 1000);
    assert_int_equal(rc, 0);
    assert_int_equal(nt_msg_get_n(m), -7);
    lc_msg_free(m);
    /* the rest of A, in order */
    for (; got < na; got++)
        nt_expect_n(a, got);
    /* resumed: the pause's watch for the hang-up alone is gone (it stayed
     * armed for good, one more epoll_ctl after every callback) */
    pthread_mutex_lock(&p.s->wmu);
    uint32_t armed = p.s->watch != NULL ? lc__engine_armed(p.s->watch) : 0;
    pthread_mutex_unlock(&p.s->wmu);
    assert_int_equal(armed & EPOLLRDHUP, 0);
    lc__buf_free(&b);
    lc_receiver_release(a);
    lc_receiver_release(c);
    nt_raw_close(&p);
}

/* Bytes the session buffers for stream id's fd, not written to it yet. */
static size_t fd_buffered(lc_session *s, uint32_t id)
{
    pthread_mutex_lock(&s->mu);
    lc_stream *x = lc__map_get(&s->streams, id);
    size_t n = x != NULL ? fd_queued(x) : 0;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/*
 * An inbound byte stream whose fd nobody reads pauses reading toward a peer
 * without windows once 1 MiB is buffered for it (PROTOCOL.md 6.3), and stays
 * paused while another channel of the session hands the application what it
 * had queued: each such delivery used to resume reading, one more read (up
 * to 512 KiB) came in, with more messages for that channel, and the unread
 * fd's buffer grew without bound (22 MiB here, as fast as the peer wrote).
 * The peer writes 60000 bytes for the byte stream then a message for
 * channel 5, again and again, up to 24 MiB or until the session has taken
 * nothing for 300 ms; whenever the peer's writes stall, the application
 * takes one message of channel 5 if one is there. The fd's buffer must stay
 * under 1 MiB, one read and a frame.
 */
static void test_paused_byte_stream_stays_paused_beside_other_channels(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    nt_raw p;
    nt_raw_open(&p, NULL);
    lc_buf b;
    lc__buf_init(&b);
    nt_put_syn(&p, &b, 1, 2, 0, 0);
    nt_put_syn(&p, &b, 3, 10, 2, 0); /* the byte stream: a sub-stream of 1 */
    static const uint8_t fmsg[] = { 0x81, 0xa1, 'F', 0xd6, 0x03, 0, 0, 0, 10 }; /* {F: byte stream, ref 10} */
    assert_int_equal(lc__spdy_put_data(&b, 1, 0, fmsg, sizeof fmsg), 0);
    nt_put_syn(&p, &b, 5, 20, 0, 0); /* the other channel */
    nt_raw_send(&p, &b);
    lc_receiver *r, *r5;
    assert_int_equal(lc_session_receiver(p.s, &r, 5000), 0);
    lc_msg *m;
    assert_int_equal(lc_recv(r, &m, 5000), 0);
    int fd = -1;
    assert_int_equal(lc_unpack(m, "{s:F}", "F", &fd), 0); /* never read */
    lc_msg_free(m);
    assert_int_equal(lc_session_receiver(p.s, &r5, 5000), 0);
    static uint8_t junk[60000];
    assert_int_equal(lc__spdy_put_data(&b, 3, 0, junk, sizeof junk), 0);
    nt_put_n(&b, 5, 1);
    int fl = fcntl(p.fd, F_GETFL);
    assert_int_equal(fcntl(p.fd, F_SETFL, fl | O_NONBLOCK), 0);
    size_t off = 0, wrote = 0, most = 0;
    int got5 = 0;
    int64_t last = lc_test_now_us(), end = last + 10000000;
    while (wrote < (24u << 20) && lc_test_now_us() - last < 300000 && lc_test_now_us() < end) {
        ssize_t n = send(p.fd, b.data + off, b.len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off = (off + (size_t)n) % b.len;
            wrote += (size_t)n;
            last = lc_test_now_us();
        } else {
            assert_true(n < 0 && (errno == EAGAIN || errno == EINTR));
            if (lc_recv(r5, &m, 0) == 0) {
                lc_msg_free(m);
                got5++;
            } else {
                struct pollfd pfd = { p.fd, POLLOUT, 0 };
                poll(&pfd, 1, 20);
            }
        }
        size_t q = fd_buffered(p.s, 3);
        if (q > most)
            most = q;
    }
    /* 1 MiB (bytes.c BYTES_BUF), the read that passed it, a frame */
    size_t bound = (1u << 20) + (512u << 10) + sizeof junk;
    if (most > bound || getenv("LC_EDGE_DEBUG"))
        fprintf(stderr, "the peer wrote %zu KiB, channel 5 gave %d messages; buffered for the unread fd: at most %zu "
                "KiB (bound %zu KiB)\n", wrote >> 10, got5, most >> 10, bound >> 10);
    assert_int_equal(lc_session_error(p.s), 0);
    close(fd);
    lc__buf_free(&b);
    lc_receiver_release(r);
    lc_receiver_release(r5);
    nt_raw_close(&p);
    assert_true(most <= bound);
    assert_true(wrote < (24u << 20));
}

/* A raw peer (the test, no SETTINGS) over TCP: a session accepted on a tcp
 * listener at port 0, our end a plain socket (nt_raw_close closes both;
 * the listener is the caller's). */
static void nt_raw_open_tcp(nt_raw *r, const lc_options *o, lc_listener **l)
{
    memset(r, 0, sizeof *r);
    lc_error err = { 0 };
    assert_int_equal(lc_listen("tcp://127.0.0.1:0", o, l, &err), 0);
    char url[256];
    assert_int_equal(lc_listener_url(*l, url, sizeof url), 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(strrchr(url, ':') + 1)) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    r->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(r->fd >= 0);
    assert_int_equal(connect(r->fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(lc_accept(*l, &r->s, 5000), 0);
    lc__spdy_deflater_init(&r->z, 6);
    lc__spdy_decoder_init(&r->d, NULL);
}

typedef struct {
    lc_session *s;
    atomic_int done;
    int rc;
} session_closer;

static void *session_closer_fn(void *x)
{
    session_closer *a = x;
    a->rc = lc_session_close(a->s, -1);
    atomic_store(&a->done, 1);
    return NULL;
}

/*
 * A session whose reading is paused (a peer without windows flooded a
 * channel that is not read) must still notice the peer hanging up:
 * lc_session_close(s, -1), which half-closes and then waits for the peer's
 * hang-up (PROTOCOL.md 3.10, step 6), returns. Reading stopped for good
 * while paused, the hang-up was never seen and the close waited for ever.
 * TCP; peer_first: the peer has hung up before the close, as a process
 * that exits (our end closed, unread bytes and all); else it hangs up once
 * it has read our GOAWAY and our end, and the close returns 0.
 */
static void run_close_while_paused(bool peer_first)
{
    lc_options o;
    lc_options_default(&o);
    o.stream_window = 64u << 10;
    o.recv_queue = 4;
    nt_raw p;
    lc_listener *l;
    nt_raw_open_tcp(&p, &o, &l);
    lc_buf b;
    lc__buf_init(&b);
    nt_put_syn(&p, &b, 1, 1, 0, 0); /* flooded, never read */
    nt_put_syn(&p, &b, 3, 2, 0, 0);
    nt_raw_send(&p, &b);
    lc_receiver *a, *c;
    assert_int_equal(lc_session_receiver(p.s, &a, 5000), 0);
    assert_int_equal(lc_session_receiver(p.s, &c, 5000), 0);
    static uint8_t blob[1000];
    for (int i = 0; i < 300; i++)
        nt_put_msg(&b, 1, lc_pack("{s:i, s:b}", "N", i, "Blob", blob, sizeof blob));
    /* written until the session pauses (what it leaves stays in the socket) */
    int fl = fcntl(p.fd, F_GETFL);
    assert_int_equal(fcntl(p.fd, F_SETFL, fl | O_NONBLOCK), 0);
    size_t off = 0;
    int64_t end = lc_test_now_us() + 5000000;
    while (off < b.len && !atomic_load(&p.s->paused) && lc_test_now_us() < end) {
        ssize_t n = send(p.fd, b.data + off, b.len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
        } else {
            assert_true(n < 0 && (errno == EAGAIN || errno == EINTR));
            struct pollfd pfd = { p.fd, POLLOUT, 0 };
            poll(&pfd, 1, 10);
        }
    }
    assert_true(wait_paused(p.s, true, 5000));
    /* the peer hangs up, having read what the session wrote (its SETTINGS):
     * a FIN. (With unread bytes the kernel sends a RST instead, which the
     * session's next write meets: the close returned on that.) */
    if (peer_first) {
        uint8_t sink[4096];
        while (recv(p.fd, sink, sizeof sink, MSG_DONTWAIT) > 0)
            ;
        close(p.fd);
        p.fd = -1;
    }
    session_closer sc = { .s = p.s };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, session_closer_fn, &sc), 0);
    if (!peer_first) {
        /* the peer reads our GOAWAY and our end (half-close), then hangs
         * up: the close, reading (and dropping) what the peer had sent
         * while paused, sees that and returns 0 */
        assert_int_equal(fcntl(p.fd, F_SETFL, fl), 0);
        assert_int_equal(nt_goaway_then_eof(&p), LC_SPDY_GOAWAY_OK);
        close(p.fd);
        p.fd = -1;
    }
    bool returned = nt_wait_at_least(&sc.done, 1, 2000);
    if (!returned) {
        fprintf(stderr, "lc_session_close(s, -1) still waits 2 s after the peer hung up (session error %s)\n",
                lc_strerror(lc_session_error(p.s)));
        lc_session_free(p.s); /* (lets it return) */
        p.s = NULL;
    }
    pthread_join(t, NULL);
    if (getenv("LC_EDGE_DEBUG"))
        fprintf(stderr, "lc_session_close: %s; session error %s\n", lc_strerror(sc.rc),
                p.s ? lc_strerror(lc_session_error(p.s)) : "-");
    lc__buf_free(&b);
    lc_receiver_release(a);
    lc_receiver_release(c);
    nt_raw_close(&p);
    lc_listener_close(l);
    assert_true(returned);
    if (!peer_first)
        assert_int_equal(sc.rc, 0);
}

static void test_close_while_paused_does_not_wait_for_ever(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    run_close_while_paused(true);  /* the peer hung up before the close */
    run_close_while_paused(false); /* the peer hangs up once it has our GOAWAY */
}

/* A message over the receiver's max_message: the receiving side reports a
 * clear error on that channel (or ends the session) and nothing hangs; a
 * message just under the limit passes. */
static void test_message_over_receiver_limit(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30 * nt_scale());
    for (int r = 0; r < 4 * nt_scale(); r++) {
        char url[128];
        lc_options so;
        lc_options_default(&so);
        so.limits.max_message = 256 * 1024;
        nt_pair p;
        nt_open_pair(&p, nt_transport_url(r, url, sizeof url), NULL, &so);
        lc_sender *s, *s2;
        lc_receiver *rv, *rv2;
        assert_int_equal(lc_session_sender(p.client, &s), 0);
        assert_int_equal(lc_session_sender(p.client, &s2), 0);
        assert_int_equal(lc_session_receiver(p.server, &rv, 5000), 0);
        assert_int_equal(lc_session_receiver(p.server, &rv2, 5000), 0);
        /* just under: the encoded message is len + a few header bytes */
        size_t under = 256 * 1024 - 64;
        assert_int_equal(lc_send(s, big_msg(1, under), 5000), 0);
        lc_msg *m;
        assert_int_equal(lc_recv(rv, &m, 5000), 0);
        check_big(m, 1, under);
        lc_msg_free(m);
        /* over */
        assert_int_equal(lc_send(s, big_msg(2, 300 * 1024), 5000), 0);
        int rc = lc_recv(rv, &m, 5000);
        if (rc == 0)
            lc_msg_free(m);
        if (rc == 0 || rc == LC_ETIMEDOUT) {
            fprintf(stderr, "%s: a message over max_message: recv %s\n", url, lc_strerror(rc));
            fail();
        }
        /* the other channel: still works, or the session ended with a reason */
        int rc2 = lc_send(s2, nt_msg_n(5), 2000);
        if (rc2 == 0) {
            int rc3 = lc_recv(rv2, &m, 3000);
            if (rc3 == 0) {
                assert_int_equal(nt_msg_get_n(m), 5);
                lc_msg_free(m);
            } else {
                assert_int_equal(rc3, LC_ESESSION);
                assert_true(lc_session_error(p.server) != 0);
            }
        }
        lc_sender_release(s);
        lc_sender_release(s2);
        lc_receiver_release(rv);
        lc_receiver_release(rv2);
        nt_close_pair(&p);
    }
}

/* A peer that grants tiny windows (1..5 bytes): messages both ways on
 * channels, and a byte stream both ways (never overdrawn: each DATA frame
 * is at most the window), arrive intact and in time. */
typedef struct {
    int fd;
    size_t len;
    int seed;
    int rc;
} bs_writer;

static void *bs_write_fn(void *x)
{
    bs_writer *a = x;
    uint8_t buf[512];
    size_t off = 0;
    while (off < a->len) {
        size_t n = a->len - off < sizeof buf ? a->len - off : sizeof buf;
        for (size_t i = 0; i < n; i++)
            buf[i] = (uint8_t)((off + i) * 13 + (size_t)a->seed);
        size_t done = 0;
        while (done < n) {
            ssize_t w = write(a->fd, buf + done, n - done);
            if (w <= 0) {
                a->rc = -errno;
                return NULL;
            }
            done += (size_t)w;
        }
        off += n;
    }
    shutdown(a->fd, SHUT_WR);
    return NULL;
}

static void bs_read_check(int fd, size_t len, int seed, const char *what)
{
    size_t off = 0;
    uint8_t buf[700];
    int64_t end = lc_test_now_us() + 8000000;
    for (;;) {
        struct pollfd pf = { fd, POLLIN, 0 };
        int64_t left = (end - lc_test_now_us()) / 1000;
        if (left <= 0 || poll(&pf, 1, (int)left) != 1) {
            fprintf(stderr, "%s: timed out after %zu of %zu bytes\n", what, off, len);
            fail();
        }
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) {
            fprintf(stderr, "%s: read: %s after %zu bytes\n", what, strerror(errno), off);
            fail();
        }
        if (n == 0)
            break;
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != (uint8_t)((off + (size_t)i) * 13 + (size_t)seed)) {
                fprintf(stderr, "%s: byte %zu differs\n", what, off + (size_t)i);
                fail();
            }
        off += (size_t)n;
    }
    if (off != len)
        fprintf(stderr, "%s: %zu of %zu bytes before EOF\n", what, off, len);
    assert_int_equal(off, len);
}

static void test_tiny_windows(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60 * nt_scale());
    for (int r = 0; r < 6 * nt_scale(); r++) {
        char url[128];
        lc_options o;
        lc_options_default(&o);
        o.stream_window = 1 + (uint32_t)(r / 2) % 5;
        nt_pair p;
        nt_open_pair(&p, nt_transport_url(r, url, sizeof url), &o, &o);
        lc_sender *s, *back;
        lc_receiver *rv, *rback;
        assert_int_equal(lc_session_sender(p.client, &s), 0);
        assert_int_equal(lc_session_receiver(p.server, &rv, 5000), 0);
        assert_int_equal(lc_session_sender(p.server, &back), 0);
        assert_int_equal(lc_session_receiver(p.client, &rback, 5000), 0);
        /* messages: 200 each way, interleaved */
        for (int i = 0; i < 200; i++) {
            assert_int_equal(lc_send(s, nt_msg_n(i), 5000), 0);
            assert_int_equal(lc_send(back, nt_msg_n(i), 5000), 0);
            if (i % 10 == 9)
                for (int k = i - 9; k <= i; k++) {
                    nt_expect_n(rv, k);
                    nt_expect_n(rback, k);
                }
        }
        /* a byte stream (duplex; over unix it may be the fd itself, over
         * tcp it is a sub-stream under the tiny window) */
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(lc_send(s, lc_pack("{s:F}", "Fd", sv[1]), 5000), 0);
        lc_msg *m;
        assert_int_equal(lc_recv(rv, &m, 5000), 0);
        int fd = -1;
        assert_int_equal(lc_unpack(m, "{s:F}", "Fd", &fd), 0);
        lc_msg_free(m);
        size_t len = 6000;
        bs_writer wa = { .fd = sv[0], .len = len, .seed = 1 }, wb = { .fd = fd, .len = len, .seed = 2 };
        pthread_t ta, tb;
        pthread_create(&ta, NULL, bs_write_fn, &wa);
        pthread_create(&tb, NULL, bs_write_fn, &wb);
        char what[160];
        snprintf(what, sizeof what, "%s window %u, client -> server", url, o.stream_window);
        bs_read_check(fd, len, 1, what);
        snprintf(what, sizeof what, "%s window %u, server -> client", url, o.stream_window);
        bs_read_check(sv[0], len, 2, what);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        assert_int_equal(wa.rc, 0);
        assert_int_equal(wb.rc, 0);
        close(fd);
        close(sv[0]);
        lc_sender_release(s);
        lc_sender_release(back);
        lc_receiver_release(rv);
        lc_receiver_release(rback);
        nt_close_pair(&p);
    }
}

/* The receiving process is out of fds (RLIMIT_NOFILE) when 64 passed fds
 * arrive: recvmsg truncates them (MSG_CTRUNC). That is a local resource
 * problem, not the peer breaking the protocol: neither side should report
 * LC_EPROTO. */
#include <sys/resource.h>
static void test_fd_passing_receiver_out_of_fds(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(20);
    char url[128];
    nt_pair p;
    nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, NULL);
    warm_pair(&p);
    lc_sender *s;
    lc_receiver *rv;
    assert_int_equal(lc_session_sender(p.client, &s), 0);
    assert_int_equal(lc_session_receiver(p.server, &rv, 5000), 0);
    int w[64];
    lc_msg *m = msg_with_pipes(1, 64, w, NULL);
    struct rlimit old, low;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    low = old;
    /* below what is open now (both sessions are in this process: the
     * sending side closes its 64 copies once sent, and a limit above the
     * count would let the receiver reuse those numbers) */
    low.rlim_cur = (rlim_t)lc_test_count_fds() - 24;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    int rc = lc_send(s, m, 5000);
    if (rc != 0)
        lc_msg_free(m);
    lc_msg *got = NULL;
    int rrc = lc_recv(rv, &got, 3000);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    lc_msg_free(got);
    int se = lc_session_error(p.server), ce = lc_session_error(p.client);
    if (se != -EMFILE || ce == LC_EPROTO)
        fprintf(stderr, "send %s, recv %s, server session error %s (%d), client %s (%d)\n", lc_strerror(rc),
                lc_strerror(rrc), lc_strerror(se), se, lc_strerror(ce), ce);
    close_all(w, 64);
    lc_sender_release(s);
    lc_receiver_release(rv);
    nt_close_pair(&p);
    assert_int_equal(se, -EMFILE); /* ours, said as such */
    assert_true(ce != LC_EPROTO);
}

/* ---- 4. select over two sessions and pollable fds, one session dies ------------- */

typedef struct {
    int fds[3];
    atomic_int stop;
    atomic_int wakes;
} poller_arg;

static void *poller_fn(void *x)
{
    poller_arg *a = x;
    while (!atomic_load(&a->stop)) {
        struct pollfd pf[3];
        for (int i = 0; i < 3; i++)
            pf[i] = (struct pollfd){ a->fds[i], POLLIN, 0 };
        int n = poll(pf, 3, 50);
        if (n > 0) {
            atomic_fetch_add(&a->wakes, 1);
            struct timespec ts = { 0, 1000000 };
            nanosleep(&ts, NULL); /* level-triggered: do not spin */
        }
    }
    return NULL;
}

static void test_select_two_sessions_one_dies(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60 * nt_scale());
    for (int r = 0; r < 12 * nt_scale(); r++) {
        char u1[128], u2[128];
        lc_options o;
        lc_options_default(&o);
        o.stream_window = 8 * 1024;
        o.recv_queue = 4;
        nt_pair p1, p2;
        nt_open_pair(&p1, nt_transport_url(r, u1, sizeof u1), &o, &o);
        nt_open_pair(&p2, nt_transport_url(r + 1, u2, sizeof u2), &o, &o);
        /* A: send on p1 (peer reads slowly), B: receive on p2 (peer sends) */
        lc_sender *send1, *feed2;
        lc_receiver *recv1, *recv2;
        assert_int_equal(lc_session_sender(p1.client, &send1), 0);
        assert_int_equal(lc_session_receiver(p1.server, &recv1, 5000), 0);
        assert_int_equal(lc_session_sender(p2.server, &feed2), 0);
        assert_int_equal(lc_session_receiver(p2.client, &recv2, 5000), 0);
        lc_receiver *mem_r;
        lc_sender *mem_s;
        assert_int_equal(lc_pipe(&mem_r, &mem_s, 0), 0);
        poller_arg pa = { .fds = { lc_sender_pollfd(send1), lc_receiver_pollfd(recv2), lc_receiver_pollfd(mem_r) } };
        for (int i = 0; i < 3; i++)
            assert_true(pa.fds[i] >= 0);
        pthread_t pt;
        pthread_create(&pt, NULL, poller_fn, &pa);
        /* p2's peer feeds a few then dies at round-dependent points */
        int fed = 5 + r % 7;
        for (int i = 0; i < fed; i++)
            assert_int_equal(lc_send(feed2, nt_msg_n(i), 5000), 0);
        static const char blob[1024];
        int sent1 = 0, got2 = 0;
        bool dead_seen = false;
        int killed_at = r % 3 == 0 ? 0 : 2 + r % 5;
        int iter = 0;
        int64_t t_kill = 0;
        while (!dead_seen) {
            if (iter == killed_at) {
                t_kill = lc_test_now_us();
                if (r % 2)
                    lc_session_free(p2.server);
                else
                    shutdown(lc__conn_fd(p2.server->conn), SHUT_RDWR);
            }
            lc_case cs[3] = {
                { .op = LC_CASE_SEND, .sender = send1, .msg = lc_pack("{s:i, s:b}", "N", sent1, "B", blob, sizeof blob) },
                { .op = LC_CASE_RECV, .receiver = recv2 },
                { .op = LC_CASE_RECV, .receiver = mem_r },
            };
            int rc = lc_select(cs, 3, 5000);
            if (cs[0].msg && !(rc == 0 && cs[0].result == 0))
                lc_msg_free(cs[0].msg);
            if (rc < 0) {
                fprintf(stderr, "round %d: select %s after %d sends, %d receives\n", r, lc_strerror(rc), sent1, got2);
                fail();
            }
            if (rc == 0) {
                assert_int_equal(cs[0].result, 0);
                sent1++;
                /* the slow reader of p1: take one now and then */
                if (sent1 % 3 == 0) {
                    lc_msg *m;
                    assert_int_equal(lc_recv(recv1, &m, 5000), 0);
                    lc_msg_free(m);
                }
            } else if (rc == 1) {
                if (cs[1].result == 0) {
                    assert_int_equal(nt_msg_get_n(cs[1].msg), got2);
                    got2++;
                    lc_msg_free(cs[1].msg);
                } else {
                    if (cs[1].result != LC_ESESSION && cs[1].result != LC_EOF)
                        fprintf(stderr, "round %d: dead session's receive case: %s\n", r, lc_strerror(cs[1].result));
                    assert_true(cs[1].result == LC_ESESSION || cs[1].result == LC_EOF);
                    assert_null(cs[1].msg);
                    dead_seen = true;
                }
            } else {
                fail(); /* nobody feeds mem */
            }
            iter++;
            if (t_kill && !dead_seen && lc_test_now_us() - t_kill > 3000000) {
                fprintf(stderr, "round %d: no end seen 3 s after the kill\n", r);
                fail();
            }
        }
        assert_true(got2 <= fed);
        /* p1 still works: drain it all, send one more */
        lc_msg *m;
        int drained = sent1 / 3;
        while (drained < sent1) {
            assert_int_equal(lc_recv(recv1, &m, 5000), 0);
            int n = -1;
            lc_unpack(m, "{s:i, *}", "N", &n);
            assert_int_equal(n, drained);
            lc_msg_free(m);
            drained++;
        }
        assert_int_equal(lc_send(send1, nt_msg_n(-5), 5000), 0);
        assert_int_equal(lc_recv(recv1, &m, 5000), 0);
        lc_msg_free(m);
        /* the dead receiver's pollfd is readable (recv would not block) */
        struct pollfd pf = { pa.fds[1], POLLIN, 0 };
        assert_int_equal(poll(&pf, 1, 1000), 1);
        assert_int_equal(lc_recv(recv2, &m, 0), LC_ESESSION);
        atomic_store(&pa.stop, 1);
        pthread_join(pt, NULL);
        lc_sender_release(send1);
        lc_sender_release(feed2);
        lc_receiver_release(recv1);
        lc_receiver_release(recv2);
        lc_sender_release(mem_s);
        lc_receiver_release(mem_r);
        if (r % 2)
            p2.server = NULL;
        lc_session_free(p2.client);
        lc_session_free(p2.server);
        lc_listener_close(p2.l);
        nt_close_pair(&p1);
    }
}

/* lc_select with send cases whose messages carry passed fds, on two
 * channels with tiny windows (so cases often would block and the fd numbers
 * they took are given back), while another thread lc_sends messages with
 * fds on a third channel: every message's fds are its own pipes. */
typedef struct {
    lc_receiver *rv[3];
    int *w[3];
    fd_id *ids[3];
    int per, msgs;
    int got[3];
    int done_rc;
} sel_reader;

static void *sel_reader_fn(void *x)
{
    sel_reader *a = x;
    int total = 0;
    while (total < 3 * a->msgs) {
        lc_case cs[3];
        for (int k = 0; k < 3; k++)
            cs[k] = (lc_case){ .op = LC_CASE_RECV, .receiver = a->got[k] < a->msgs ? a->rv[k] : NULL };
        int rc = lc_select(cs, 3, 5000);
        if (rc < 0 || cs[rc].result != 0) {
            a->done_rc = rc < 0 ? rc : cs[rc].result;
            return NULL;
        }
        int k = rc;
        int i = a->got[k];
        int tag = -1;
        lc_value *arr;
        if (lc_unpack(cs[k].msg, "{s:i, s:v}", "Tag", &tag, "Fds", &arr) != 0 || tag != k * 1000 + i) {
            fprintf(stderr, "channel %d: message %d has tag %d\n", k, i, tag);
            a->done_rc = -1;
            lc_msg_free(cs[k].msg);
            return NULL;
        }
        for (int j = 0; j < a->per; j++) {
            int fd = lc_value_take_fd(lc_array_get(arr, (size_t)j), NULL);
            fd_id want = a->ids[k][i * a->per + j];
            if (!same_id(id_of(fd), want)) {
                fprintf(stderr, "channel %d message %d fd %d: another pipe\n", k, i, j);
                a->done_rc = -2;
            }
            close(fd);
        }
        lc_msg_free(cs[k].msg);
        a->got[k]++;
        total++;
    }
    return NULL;
}

typedef struct {
    lc_sender *s;
    int *w;
    fd_id *ids;
    int per, msgs, rc;
} plain_fd_sender;

static void *plain_fd_send_fn(void *x)
{
    plain_fd_sender *a = x;
    for (int i = 0; i < a->msgs; i++) {
        lc_msg *m = msg_with_pipes(2000 + i, a->per, a->w + i * a->per, a->ids + i * a->per);
        a->rc = lc_send(a->s, m, 5000);
        if (a->rc != 0) {
            lc_msg_free(m);
            return NULL;
        }
    }
    return NULL;
}

static void test_fd_select_sends_rollback(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    enum { PER = 3, MSGS = 60 };
    for (int r = 0; r < 6 * nt_scale(); r++) {
        char url[128];
        lc_options o;
        lc_options_default(&o);
        o.stream_window = 64 + 64 * (uint32_t)(r % 3);
        o.recv_queue = 2;
        nt_pair p;
        nt_open_pair(&p, nt_unix_url(url, sizeof url), &o, &o);
        warm_pair(&p);
        lc_sender *s[3];
        lc_receiver *rv[3];
        for (int k = 0; k < 3; k++) {
            assert_int_equal(lc_session_sender(p.client, &s[k]), 0);
            assert_int_equal(lc_session_receiver(p.server, &rv[k], 5000), 0);
        }
        static int w[3][MSGS * PER];
        static fd_id ids[3][MSGS * PER];
        sel_reader rd = { .rv = { rv[0], rv[1], rv[2] }, .w = { w[0], w[1], w[2] }, .ids = { ids[0], ids[1], ids[2] },
                          .per = PER, .msgs = MSGS };
        plain_fd_sender ps = { .s = s[2], .w = w[2], .ids = ids[2], .per = PER, .msgs = MSGS };
        pthread_t tr, tp;
        pthread_create(&tr, NULL, sel_reader_fn, &rd);
        pthread_create(&tp, NULL, plain_fd_send_fn, &ps);
        int sent[2] = { 0, 0 };
        lc_msg *pending[2] = { NULL, NULL };
        while (sent[0] < MSGS || sent[1] < MSGS) {
            lc_case cs[2];
            for (int k = 0; k < 2; k++) {
                if (sent[k] < MSGS && pending[k] == NULL)
                    pending[k] = msg_with_pipes(k * 1000 + sent[k], PER, w[k] + sent[k] * PER, ids[k] + sent[k] * PER);
                cs[k] = (lc_case){ .op = LC_CASE_SEND, .sender = sent[k] < MSGS ? s[k] : NULL, .msg = pending[k] };
            }
            int rc = lc_select(cs, 2, 5000);
            if (rc < 0 || cs[rc].result != 0) {
                fprintf(stderr, "round %d: select %s / %s\n", r, lc_strerror(rc), rc >= 0 ? lc_strerror(cs[rc].result) : "");
                fail();
            }
            pending[rc] = NULL; /* taken */
            sent[rc]++;
        }
        pthread_join(tp, NULL);
        pthread_join(tr, NULL);
        assert_int_equal(ps.rc, 0);
        if (rd.done_rc != 0)
            fprintf(stderr, "round %d: reader ended with %d after %d/%d/%d\n", r, rd.done_rc, rd.got[0], rd.got[1],
                    rd.got[2]);
        assert_int_equal(rd.done_rc, 0);
        for (int k = 0; k < 3; k++) {
            close_all(w[k], MSGS * PER);
            lc_sender_release(s[k]);
            lc_receiver_release(rv[k]);
        }
        nt_close_pair(&p);
    }
}

/* A network Sender's pollable fd: once lc_send(.., 0) says LC_ETIMEDOUT
 * because the window is spent, the fd should not stay readable (an event
 * loop would spin), and it must become readable once the peer reads. */
static void test_sender_pollfd_follows_window(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    for (int r = 0; r < 6 * nt_scale(); r++) {
        char url[128];
        lc_options o;
        lc_options_default(&o);
        o.stream_window = 4096;
        o.recv_queue = 2;
        nt_pair p;
        nt_open_pair(&p, nt_transport_url(r, url, sizeof url), &o, &o);
        warm_pair(&p);
        lc_sender *s;
        lc_receiver *rv;
        assert_int_equal(lc_session_sender(p.client, &s), 0);
        assert_int_equal(lc_session_receiver(p.server, &rv, 5000), 0);
        int pfd = lc_sender_pollfd(s);
        assert_true(pfd >= 0);
        static const char blob[1000];
        int sent = 0, spins = 0;
        int64_t end = lc_test_now_us() + 5000000;
        /* an event loop: poll, then send without blocking */
        for (;;) {
            struct pollfd pf = { pfd, POLLIN, 0 };
            int pr = poll(&pf, 1, 300);
            if (pr == 0)
                break; /* not ready: the window is spent */
            lc_msg *m = lc_pack("{s:i, s:b}", "N", sent, "B", blob, sizeof blob);
            int rc = lc_send(s, m, 0);
            if (rc == 0)
                sent++;
            else {
                lc_msg_free(m);
                assert_int_equal(rc, LC_ETIMEDOUT);
                spins++;
            }
            if (lc_test_now_us() > end)
                break;
        }
        if (spins > 50 || lc_test_now_us() > end) {
            fprintf(stderr, "%s round %d: the sender's pollfd stays readable with the window spent: %d sends, %d "
                            "would-block sends in a row\n",
                    url, r, sent, spins);
            fail();
        }
        assert_true(sent > 0);
        /* the peer reads everything: ready again */
        for (int i = 0; i < sent; i++) {
            lc_msg *m;
            assert_int_equal(lc_recv(rv, &m, 5000), 0);
            assert_int_equal(nt_msg_get_n(m), i);
            lc_msg_free(m);
        }
        struct pollfd pf = { pfd, POLLIN, 0 };
        int pr = poll(&pf, 1, 3000);
        if (pr != 1)
            fprintf(stderr, "%s round %d: the sender's pollfd not readable after the peer read all\n", url, r);
        assert_int_equal(pr, 1);
        lc_msg *m = nt_msg_n(-1);
        assert_int_equal(lc_send(s, m, 0), 0);
        nt_expect_n(rv, -1);
        lc_sender_release(s);
        lc_receiver_release(rv);
        nt_close_pair(&p);
    }
}

/* lc_session_close on our side while (a) a byte stream we send never
 * reaches EOF (we keep its write end open), (b) a thread is blocked in
 * lc_send on a spent window: close returns within its timeout with
 * LC_ETIMEDOUT (not everything could go), the blocked send returns at once
 * with an error, and messages sent before still arrive. */
static void test_own_close_with_open_stream_and_blocked_sender(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    for (int r = 0; r < 6 * nt_scale(); r++) {
        char url[128];
        lc_options o;
        lc_options_default(&o);
        o.stream_window = 8 * 1024;
        o.recv_queue = 2;
        nt_pair p;
        nt_open_pair(&p, nt_transport_url(r, url, sizeof url), &o, &o);
        /* tcp: the pipe becomes a sub-stream the client pumps; over unix
         * it may be passed as itself (then close has nothing to read) */
        lc_sender *s, *full;
        lc_receiver *rv, *rfull;
        assert_int_equal(lc_session_sender(p.client, &s), 0);
        assert_int_equal(lc_session_sender(p.client, &full), 0);
        assert_int_equal(lc_session_receiver(p.server, &rv, 5000), 0);
        assert_int_equal(lc_session_receiver(p.server, &rfull, 5000), 0);
        int pf[2];
        assert_int_equal(pipe2(pf, O_CLOEXEC), 0);
        lc_msg *m = lc_msg_new();
        lc_value *root = lc_new_map(m);
        lc_map_set(m, root, "Fd", lc_new_stream(m, pf[0], LC_STREAM_READ));
        lc_msg_set_root(m, root);
        assert_int_equal(lc_send(s, m, 5000), 0);
        assert_int_equal(write(pf[1], "abc", 3), 3);
        nt_filler bs = { .s = full, .timeout_ms = 10000 };
        pthread_t t;
        pthread_create(&t, NULL, nt_filler_fn, &bs);
        assert_true(nt_wait_at_least(&bs.sent, 3, 5000));
        /* the filler is (soon) blocked on the window: the server does not read rfull */
        int before = atomic_load(&bs.sent); /* (sends during the close: test_sends_racing_own_close) */
        int64_t t0 = lc_test_now_us();
        int crc = lc_session_close(p.client, 400);
        int64_t ms = (lc_test_now_us() - t0) / 1000;
        pthread_join(t, NULL);
        int64_t late = (bs.done_us - t0) / 1000;
        if (ms > 1500 || late > 1500 || bs.rc == 0 || bs.rc == LC_ETIMEDOUT)
            fprintf(stderr, "%s round %d: close %s after %lld ms; blocked send %s %lld ms after the close began\n",
                    url, r, lc_strerror(crc), (long long)ms, lc_strerror(bs.rc), (long long)late);
        assert_true(ms <= 1500);
        assert_true(late <= 1500);
        assert_true(bs.rc == LC_ESESSION || bs.rc == LC_ECLOSED);
        /* what was accepted before the close arrives */
        lc_msg *got;
        assert_int_equal(lc_recv(rv, &got, 5000), 0);
        int fd = -1;
        assert_int_equal(lc_unpack(got, "{s:F}", "Fd", &fd), 0);
        lc_msg_free(got);
        char buf[8];
        int rb = 0;
        int64_t end = lc_test_now_us() + 3000000;
        while (rb < 3 && lc_test_now_us() < end) {
            struct pollfd pfd = { fd, POLLIN, 0 };
            if (poll(&pfd, 1, 500) != 1)
                continue;
            ssize_t n = read(fd, buf + rb, sizeof buf - (size_t)rb);
            if (n <= 0)
                break;
            rb += (int)n;
        }
        if (rb != 3)
            fprintf(stderr, "%s round %d: %d of 3 stream bytes arrived (close %s)\n", url, r, rb, lc_strerror(crc));
        assert_int_equal(rb, 3);
        int got_n = 0;
        for (;;) {
            int rc = lc_recv(rfull, &got, 3000);
            if (rc != 0)
                break;
            assert_int_equal(nt_msg_get_n(got), got_n);
            got_n++;
            lc_msg_free(got);
        }
        if (got_n < before)
            fprintf(stderr, "%s round %d: %d of %d messages accepted before the close arrived (close %s)\n", url, r,
                    got_n, before, lc_strerror(crc));
        assert_true(got_n >= before || crc != 0);
        close(fd);
        close(pf[1]);
        lc_sender_release(s);
        lc_sender_release(full);
        lc_receiver_release(rv);
        lc_receiver_release(rfull);
        nt_close_pair(&p);
    }
}

/* Threads keep sending while another thread calls lc_session_close: every
 * lc_send that returned 0 must reach the peer (or the send must fail). */
typedef struct {
    lc_sender *s;
    int id;
    atomic_int accepted;
    int rc;
} close_racer;

static void *close_racer_fn(void *x)
{
    close_racer *a = x;
    for (;;) {
        lc_msg *m = lc_pack("{s:i, s:i}", "T", a->id, "N", atomic_load(&a->accepted));
        a->rc = lc_send(a->s, m, 3000);
        if (a->rc != 0) {
            lc_msg_free(m);
            break;
        }
        atomic_fetch_add(&a->accepted, 1);
    }
    return NULL;
}

static void test_sends_racing_own_close(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    int lost_rounds = 0, rounds = 20 * nt_scale();
    for (int r = 0; r < rounds; r++) {
        char url[128];
        nt_pair p;
        nt_open_pair(&p, nt_transport_url(r, url, sizeof url), NULL, NULL);
        enum { T = 2 };
        lc_sender *s[T];
        lc_receiver *rv[T];
        for (int k = 0; k < T; k++) {
            assert_int_equal(lc_session_sender(p.client, &s[k]), 0);
            assert_int_equal(lc_session_receiver(p.server, &rv[k], 5000), 0);
        }
        close_racer a[T];
        pthread_t t[T];
        for (int k = 0; k < T; k++) {
            a[k] = (close_racer){ .s = s[k], .id = k };
            pthread_create(&t[k], NULL, close_racer_fn, &a[k]);
        }
        assert_true(nt_wait_at_least(&a[0].accepted, 1 + r % 50, 5000));
        int before[T];
        for (int k = 0; k < T; k++)
            before[k] = atomic_load(&a[k].accepted); /* accepted before the close began */
        int crc = lc_session_close(p.client, 2000);
        int at_return[T];
        for (int k = 0; k < T; k++)
            at_return[k] = atomic_load(&a[k].accepted);
        for (int k = 0; k < T; k++)
            pthread_join(t[k], NULL);
        int lost = 0;
        for (int k = 0; k < T; k++) {
            int got = 0;
            lc_msg *m;
            int rc;
            while ((rc = lc_recv(rv[k], &m, 3000)) == 0) {
                int tid = -1, n = -1;
                lc_unpack(m, "{s:i, s:i}", "T", &tid, "N", &n);
                lc_msg_free(m);
                assert_int_equal(tid, k);
                assert_int_equal(n, got);
                got++;
            }
            int acc = atomic_load(&a[k].accepted);
            if (got != acc) {
                fprintf(stderr, "%s round %d: thread %d: %d accepted (%d before lc_session_close, %d when it "
                                "returned), %d received (close %s, last send %s, recv ended with %s)\n",
                        url, r, k, acc, before[k], at_return[k], got, lc_strerror(crc), lc_strerror(a[k].rc),
                        lc_strerror(rc));
                lost++;
                if (got < before[k] && crc == 0)
                    fprintf(stderr, "  ... and %d of them were accepted BEFORE the close, which returned 0\n",
                            before[k] - got);
            }
            lc_sender_release(s[k]);
            lc_receiver_release(rv[k]);
        }
        if (lost)
            lost_rounds++;
        nt_close_pair(&p);
    }
    if (lost_rounds)
        fprintf(stderr, "accepted messages lost in %d of %d rounds\n", lost_rounds, rounds);
    assert_int_equal(lost_rounds, 0);
}

/* ---- lc_session_close racing a send that carries a byte stream ------------ */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* One round's two threads: the sender says when it calls lc_send, the
 * closer (spinning meanwhile: it places the close, it waits for nothing)
 * calls lc_session_close delay_ns later. */
typedef struct {
    lc_sender *s;
    lc_session *client;
    int fd; /* the byte stream's source: the message owns it */
    int64_t delay_ns;
    atomic_llong send_at;
    int send_rc, close_rc;
    int64_t send_end, close_at; /* when lc_send returned, lc_session_close was called */
} stream_close_race;

static void *race_send_fn(void *x)
{
    stream_close_race *a = x;
    lc_msg *m = lc_msg_new();
    lc_value *root = lc_new_map(m);
    lc_map_set(m, root, "F", lc_new_stream(m, a->fd, LC_STREAM_READ));
    lc_msg_set_root(m, root);
    atomic_store(&a->send_at, now_ns());
    a->send_rc = lc_send(a->s, m, 5000);
    a->send_end = now_ns();
    if (a->send_rc != 0)
        lc_msg_free(m);
    return NULL;
}

static void *race_close_fn(void *x)
{
    stream_close_race *a = x;
    int64_t at;
    while ((at = atomic_load(&a->send_at)) == 0)
        ;
    at += a->delay_ns;
    while (now_ns() < at)
        ;
    a->close_at = now_ns();
    a->close_rc = lc_session_close(a->client, 5000);
    return NULL;
}

/*
 * lc_session_close racing an lc_send whose message carries a byte stream:
 * either the send fails, or a close that returns 0 has read the stream's fd
 * to its EOF and sent all of it (PROTOCOL.md 3.10, step 2). Between the
 * send's unlock of wmu and the start of the stream's pump, the sub-stream
 * was in the table but not counted as a send in progress, so the close went
 * by it: both returned 0 and the peer read none of the stream's bytes, then
 * EOF (in about 1 round of 20 here). The close starts at a point within
 * the send that moves from round to round over the send's length (as last
 * measured: sanitizers make it longer).
 */
static void test_close_waits_for_stream_sent_concurrently(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    enum { PAYLOAD = 100000 };
    static char data[PAYLOAD];
    memset(data, 'x', sizeof data);
    int rounds = 150 * nt_scale(), lost = 0, refused = 0, r = 0;
    int64_t send_len = 40000; /* ns, the last sends' length (a running mean) */
    int64_t end = lc_test_now_us() + 2000000 * (int64_t)nt_scale();
    for (; r < rounds && lc_test_now_us() < end; r++) {
        nt_pair p;
        nt_open_pair(&p, "tcp://127.0.0.1:0", NULL, NULL);
        lc_sender *s;
        lc_receiver *rv;
        assert_int_equal(lc_session_sender(p.client, &s), 0);
        assert_int_equal(lc_send(s, nt_msg_n(0), 5000), 0); /* each side has the other's SETTINGS */
        assert_int_equal(lc_session_receiver(p.server, &rv, 5000), 0);
        nt_expect_n(rv, 0);
        /* the stream's source holds all its bytes and their EOF */
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        int sz = 1 << 20;
        assert_int_equal(setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz), 0);
        assert_int_equal(write(sv[1], data, sizeof data), PAYLOAD);
        assert_int_equal(shutdown(sv[1], SHUT_WR), 0);
        stream_close_race a = { .s = s, .client = p.client, .fd = sv[0], .delay_ns = send_len * ((r * 7) % 16) / 16 };
        pthread_t ts, tc;
        assert_int_equal(pthread_create(&tc, NULL, race_close_fn, &a), 0);
        assert_int_equal(pthread_create(&ts, NULL, race_send_fn, &a), 0);
        /* the peer: the message and its stream's bytes, or the channel's end */
        long got = -1;
        lc_msg *m;
        if (lc_recv(rv, &m, 5000) == 0) {
            fd_sink sink = { .fd = -1, .timeout_ms = 5000 };
            if (lc_unpack(m, "{s:F}", "F", &sink.fd) == 0) {
                fd_sink_fn(&sink);
                got = sink.got;
                close(sink.fd);
            }
            lc_msg_free(m);
        }
        pthread_join(ts, NULL);
        pthread_join(tc, NULL);
        int64_t at = atomic_load(&a.send_at);
        send_len = (3 * send_len + (a.send_end - at)) / 4;
        if (a.send_rc != 0)
            refused++;
        if (a.send_rc == 0 && a.close_rc == 0 && got != PAYLOAD && ++lost <= 3)
            fprintf(stderr,
                    "round %d: lc_send 0, lc_session_close 0, the peer read %ld of %d bytes (the close began %lld "
                    "ns into the send, which took %lld ns)\n",
                    r, got, PAYLOAD, (long long)(a.close_at - at), (long long)(a.send_end - at));
        close(sv[1]);
        lc_sender_release(s);
        lc_receiver_release(rv);
        nt_close_pair(&p);
    }
    if (lost || getenv("LC_EDGE_DEBUG"))
        fprintf(stderr, "%d rounds: %d sends refused, %d lost their stream's bytes (sends of ~%lld us)\n", r, refused,
                lost, (long long)send_len / 1000);
    assert_int_equal(lost, 0);
}

/*
 * A message whose channel end was already taken out (lc_value_take_sender)
 * cannot be encoded: lc_send on a network channel fails with LC_ETAKEN
 * before anything is queued, the message stays the caller's (its other
 * attachments still in it), and the channel goes on: the next message is
 * the first the peer sees. Over unix and TCP.
 */
static void test_send_with_a_taken_attachment_fails_cleanly(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    for (int t = 0; t < 2; t++) {
        char url[128];
        nt_pair p;
        nt_open_pair(&p, nt_transport_url(t, url, sizeof url), NULL, NULL);
        lc_sender *snd;
        assert_int_equal(lc_session_sender(p.client, &snd), 0);
        lc_receiver *r1, *r2;
        lc_sender *s1, *s2;
        assert_int_equal(lc_pipe(&r1, &s1, 1), 0);
        assert_int_equal(lc_pipe(&r2, &s2, 1), 0);
        /* B comes first: it is encoded (a sub-stream for it) before A fails */
        lc_msg *m = lc_pack("{s:i, s:S, s:S}", "N", 1, "B", s2, "A", s1);
        assert_non_null(m);
        int err = 0;
        lc_sender *a = lc_value_take_sender(lc_map_get(lc_msg_root(m), "A"), &err);
        assert_non_null(a);
        pthread_mutex_lock(&p.client->mu);
        size_t streams_before = p.client->streams.len;
        pthread_mutex_unlock(&p.client->mu);
        assert_int_equal(lc_send(snd, m, 5000), LC_ETAKEN);
        pthread_mutex_lock(&p.client->mu);
        assert_int_equal(p.client->streams.len, streams_before); /* no sub-stream for B left behind */
        pthread_mutex_unlock(&p.client->mu);
        /* still the caller's, with B inside: freeing it releases B */
        lc_msg_free(m);
        assert_int_equal(lc_recv(r2, &m, 1000), LC_EOF);
        assert_int_equal(lc_send(snd, nt_msg_n(2), 5000), 0);
        lc_receiver *rr;
        assert_int_equal(lc_session_receiver(p.server, &rr, 5000), 0);
        nt_expect_n(rr, 2);
        assert_int_equal(lc_close(snd), 0);
        assert_int_equal(nt_recv_rc(rr, 5000), LC_EOF);
        assert_int_equal(lc_session_error(p.client), 0);
        assert_int_equal(lc_session_error(p.server), 0);
        lc_sender_release(a);
        lc_receiver_release(r1);
        lc_receiver_release(r2);
        lc_receiver_release(rr);
        lc_sender_release(snd);
        nt_close_pair(&p);
    }
}

int main(void)
{
    lc__engine_default(); /* its fds live as long as the process */
    nt_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fd_many_in_one_message, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_burst_two_threads, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_nested_in_channels, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_forwarded_unix_tcp_unix, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_queued_receiver_released, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_queued_server_freed, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_queued_client_freed, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_queued_client_graceful_close, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_sends_while_session_freed, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_queue_on_stalled_carrier, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_queue_closed_when_the_session_dies, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_peer_process_killed, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_unclaimed_after_receiver_released, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_unclaimed_in_undecodable_message, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_unclaimed_refused_body_late_or_early, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_accept_woken_by_listener_close, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_dial_closed_listener_and_relisten, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_bad_urls, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_many_concurrent_dials, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_dial_timeout_full_backlog, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_huge_timeouts_wait, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_failed_listen_leaves_no_phantom, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_listens_one_path, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_dial_while_listener_closes, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_accepts, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_listen_paths_and_names, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_unread_channel_others_flow, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_message_bigger_than_a_frame, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_small_pending_out_big_messages, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_full_queue_stalls_others_only_past_a_window, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_senders_blocked_on_full_output_not_woken, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_message_over_receiver_limit, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_tiny_windows, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_passing_receiver_out_of_fds, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_fd_select_sends_rollback, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_sender_pollfd_follows_window, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_own_close_with_open_stream_and_blocked_sender, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_sends_racing_own_close, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_send_with_a_taken_attachment_fails_cleanly, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_select_two_sessions_one_dies, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_direct_write_wakes_blocked_senders, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_close_waits_for_stream_sent_concurrently, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_paused_reading_resumes_at_half_window, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_decode_ahead_within_recv_queue, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_paused_byte_stream_stays_paused_beside_other_channels, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_close_while_paused_does_not_wait_for_ever, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_recv_timeout_counts_time_spent_reading, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_polled_session_receiver_sees_channels, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_recv_beside_a_reading_thread_is_woken_at_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_unbuffered_reply_channel_is_read_at_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_reply_waiter_before_its_request_is_woken_at_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_pump_out_of_window_resumes_at_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_byte_stream_out_of_window_resumes_at_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_blocked_session_receiver_beside_a_reader_is_woken_at_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_sender_waiting_for_window_is_woken_at_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_polled_recv_sees_messages_at_once, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_dial_never_connects_to_itself, lc_test_setup, lc_test_teardown),
    };
    return cmocka_run_group_tests_name("net/session_edges", tests, NULL, NULL);
}
