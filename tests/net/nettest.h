/*
 * nettest.h - helpers shared by the session tests in tests/net: session
 * pairs over real sockets, unique unix socket paths, a raw SPDY peer over a
 * socketpair (frames built with src/spdy encoders, the session's output read
 * back and decoded), helper processes (tests/net/peer_proc.c) spawned with
 * their stdout on a pipe, and the known-bug switch. Header-only, like
 * testutil.h; include it after cmocka.h.
 */
#ifndef LC_NETTEST_H
#define LC_NETTEST_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "libchan.h"
#include "session/session_internal.h"
#include "spdy/spdy.h"
#include "testutil.h"

extern char **environ;

/* ---- known bugs -------------------------------------------------------------- */

/* A test that exposes a library bug runs only with LC_RUN_KNOWN_BUGS=1 in the
 * environment; otherwise it prints why it is skipped and passes. */
#define LC_KNOWN_BUG(why)                                                         \
    do {                                                                          \
        const char *kb_ = getenv("LC_RUN_KNOWN_BUGS");                            \
        if (kb_ == NULL || strcmp(kb_, "1") != 0) {                               \
            printf("SKIP: known bug: %s (run with LC_RUN_KNOWN_BUGS=1)\n", (why)); \
            fflush(stdout);                                                       \
            skip();                                                               \
        }                                                                         \
    } while (0)

/* LC_TEST_FILTER=pattern (cmocka's wildcards) runs only the matching tests. */
static inline void nt_filter_from_env(void)
{
    const char *f = getenv("LC_TEST_FILTER");
    if (f != NULL && *f != '\0')
        cmocka_set_test_filter(f);
}

/* ---- urls and pairs ---------------------------------------------------------- */

/* A unix URL no other test (or test program) uses: pid + counter. */
static inline const char *nt_unix_url(char *buf, size_t len)
{
    static int seq;
    snprintf(buf, len, "unix:///tmp/lc-net-%d-%d.sock", (int)getpid(), ++seq);
    return buf;
}

/* ---- stress helpers (test_session_stress.c, test_session_edges.c) ------------ */

/* LC_STRESS_SCALE=n multiplies a stress test's rounds (default 1). */
static inline int nt_scale(void)
{
    const char *s = getenv("LC_STRESS_SCALE");
    int n = s ? atoi(s) : 1;
    return n > 0 ? n : 1;
}

/* Waits (polling, with a bound) until *v >= target. True when it got there. */
static inline bool nt_wait_at_least(atomic_int *v, int target, int timeout_ms)
{
    int64_t end = lc_test_now_us() + (int64_t)timeout_ms * 1000;
    while (atomic_load(v) < target) {
        if (lc_test_now_us() > end)
            return false;
        struct timespec ts = { 0, 50000 };
        nanosleep(&ts, NULL);
    }
    return true;
}

/* Round i's URL: unix (a fresh path) on even rounds, tcp port 0 on odd. */
static inline const char *nt_transport_url(int i, char *buf, size_t len)
{
    if (i % 2 == 0)
        return nt_unix_url(buf, len);
    snprintf(buf, len, "tcp://127.0.0.1:0");
    return buf;
}

/* The message {N: n}, and its n (-1 if it is not such a message). */
static inline lc_msg *nt_msg_n(int n)
{
    return lc_pack("{s:i}", "N", n);
}

static inline int nt_msg_get_n(lc_msg *m)
{
    int n = -1;
    if (lc_unpack(m, "{s:i}", "N", &n) != 0)
        return -1;
    return n;
}

/* A thread that sends {N: k, Blob: 1 KiB} on s until a send fails (after
 * timeout_ms each): toward a peer that never reads, the window runs out and
 * the last send blocks. rc is its result, done_us when it returned. */
typedef struct nt_filler {
    lc_sender *s;
    int64_t timeout_ms;
    int rc;
    int64_t done_us;
    atomic_int sent;
} nt_filler;

static inline void *nt_filler_fn(void *x)
{
    nt_filler *a = x;
    static const char blob[1024];
    for (;;) {
        lc_msg *m = lc_pack("{s:i, s:b}", "N", atomic_load(&a->sent), "Blob", blob, sizeof blob);
        a->rc = lc_send(a->s, m, a->timeout_ms);
        if (a->rc != 0) {
            lc_msg_free(m);
            break;
        }
        atomic_fetch_add(&a->sent, 1);
    }
    a->done_us = lc_test_now_us();
    return NULL;
}

typedef struct nt_pair {
    lc_listener *l;
    lc_session *client, *server;
} nt_pair;

/* Listens on url (with server options so), dials it (client options co),
 * accepts. */
static inline void nt_open_pair(nt_pair *p, const char *url, const lc_options *co, const lc_options *so)
{
    lc_error err = { 0 };
    int rc = lc_listen(url, so, &p->l, &err);
    if (rc != 0)
        fprintf(stderr, "lc_listen(%s): %s %s\n", url, lc_strerror(rc), err.text);
    assert_int_equal(rc, 0);
    char bound[256];
    assert_int_equal(lc_listener_url(p->l, bound, sizeof bound), 0);
    rc = lc_dial(bound, co, &p->client, &err);
    if (rc != 0)
        fprintf(stderr, "lc_dial(%s): %s %s\n", bound, lc_strerror(rc), err.text);
    assert_int_equal(rc, 0);
    assert_int_equal(lc_accept(p->l, &p->server, 5000), 0);
}

static inline void nt_close_pair(nt_pair *p)
{
    lc_session_free(p->client);
    lc_session_free(p->server);
    lc_listener_close(p->l);
}

/* Receives the next message on r (5 s at most) and checks it is {N: n}. */
static inline void nt_expect_n(lc_receiver *r, int n)
{
    lc_msg *m;
    int rc = lc_recv(r, &m, 5000);
    if (rc != 0)
        fprintf(stderr, "expected {N:%d}, got %s\n", n, lc_strerror(rc));
    assert_int_equal(rc, 0);
    int got;
    assert_int_equal(lc_unpack(m, "{s:i}", "N", &got), 0);
    assert_int_equal(got, n);
    lc_msg_free(m);
}

/*
 * A server thread for requests {Value: v, Ret: Sender} on the peer's first
 * channel: one reply {Echo: v} on each Ret, every Ret kept until the requests
 * end (a subscriber's long-lived reply channel, held by the server as long
 * as the subscription). rc: how the requests' channel ended, 0 for
 * LC_EOF, or what failed first.
 */
typedef struct nt_keeper {
    lc_session *s;
    atomic_int handled;
    int rc;
} nt_keeper;

static inline void *nt_keeper_fn(void *x)
{
    nt_keeper *a = x;
    lc_receiver *r;
    size_t n = 0, cap = 0;
    lc_sender **kept = NULL;
    a->rc = lc_session_receiver(a->s, &r, 5000);
    if (a->rc != 0)
        return NULL;
    lc_msg *m;
    while ((a->rc = lc_recv(r, &m, 5000)) == 0) {
        int64_t v;
        lc_sender *ret;
        a->rc = lc_unpack(m, "{s:I, s:S}", "Value", &v, "Ret", &ret);
        lc_msg_free(m);
        if (a->rc != 0)
            break;
        if (n == cap) {
            lc_sender **nk = realloc(kept, (cap ? 2 * cap : 64) * sizeof *kept);
            if (nk == NULL) {
                lc_sender_release(ret);
                a->rc = LC_ENOMEM;
                break;
            }
            kept = nk;
            cap = cap ? 2 * cap : 64;
        }
        kept[n++] = ret;
        lc_msg *rep = lc_pack("{s:I}", "Echo", v);
        if ((a->rc = lc_send(ret, rep, 5000)) != 0) {
            lc_msg_free(rep);
            break;
        }
        atomic_fetch_add(&a->handled, 1);
    }
    if (a->rc == LC_EOF)
        a->rc = 0;
    for (size_t i = 0; i < n; i++)
        lc_sender_release(kept[i]);
    free(kept);
    lc_receiver_release(r);
    return NULL;
}

/* ---- a raw SPDY peer ----------------------------------------------------------- */

/*
 * The test plays the client end of a socketpair byte by byte; the library
 * runs a server session (even stream ids) on the other end. The peer's
 * header blocks go through one deflater (one zlib stream per direction, as
 * SPDY/3 wants); what the session writes back goes through one decoder.
 */
typedef struct nt_raw {
    int fd;          /* our end */
    lc_session *s;   /* the library's session on the other end */
    lc_spdy_deflater z;
    lc_spdy_decoder d;
    uint8_t in[4096];
    size_t in_len, in_off;
} nt_raw;

static inline void nt_raw_open(nt_raw *r, const lc_options *o)
{
    memset(r, 0, sizeof *r);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
    r->fd = sv[0];
    assert_int_equal(lc__session_from_fd(sv[1], false, o, &r->s), 0);
    lc__spdy_deflater_init(&r->z, 6);
    lc__spdy_decoder_init(&r->d, NULL);
}

static inline void nt_raw_close(nt_raw *r)
{
    lc_session_free(r->s);
    if (r->fd >= 0)
        close(r->fd);
    lc__spdy_deflater_free(&r->z);
    lc__spdy_decoder_free(&r->d);
}

/* Writes the whole buffer to the carrier and empties it. */
static inline void nt_raw_send(nt_raw *r, lc_buf *b)
{
    size_t off = 0;
    while (off < b->len) {
        ssize_t n = write(r->fd, b->data + off, b->len - off);
        assert_true(n > 0);
        off += (size_t)n;
    }
    b->len = 0;
}

/* Appends SYN_STREAM id with libchan-ref ref (and libchan-parent-ref parent
 * when it is not 0). */
static inline void nt_put_syn(nt_raw *r, lc_buf *b, uint32_t id, uint64_t ref, uint64_t parent, uint8_t flags)
{
    char rb[24], pb[24];
    int rn = snprintf(rb, sizeof rb, "%llu", (unsigned long long)ref);
    lc_spdy_header h[2] = { { "libchan-ref", 11, rb, (size_t)rn } };
    size_t nh = 1;
    if (parent) {
        int pn = snprintf(pb, sizeof pb, "%llu", (unsigned long long)parent);
        h[1] = (lc_spdy_header){ "libchan-parent-ref", 18, pb, (size_t)pn };
        nh = 2;
    }
    assert_int_equal(lc__spdy_put_syn_stream(b, &r->z, id, 0, 0, 0, flags, h, nh), 0);
}

/* Appends a DATA frame carrying the msgpack encoding of a plain message. */
static inline void nt_put_msg(lc_buf *b, uint32_t id, lc_msg *m)
{
    uint8_t *enc;
    size_t len;
    assert_int_equal(lc_msgpack_encode(m, &enc, &len), 0);
    assert_int_equal(lc__spdy_put_data(b, id, 0, enc, len), 0);
    free(enc);
    lc_msg_free(m);
}

/* Reads and decodes what the session writes until the decoder has the next
 * frame event (a DATA frame's payload may come in several, data_last on the
 * last) before the absolute deadline end_us; *f gets it (its pointers are
 * valid until the next call). Returns 1, 0 on timeout, -1 when the carrier
 * ends first. */
static inline int nt_raw_next(nt_raw *r, lc_spdy_frame *f, int64_t end_us)
{
    for (;;) {
        while (r->in_off < r->in_len) {
            size_t used;
            int rc = lc__spdy_decode(&r->d, r->in + r->in_off, r->in_len - r->in_off, &used, f);
            assert_true(rc >= 0);
            r->in_off += used;
            if (rc == 0)
                break;
            return 1;
        }
        r->in_len = r->in_off = 0;
        int64_t left = (end_us - lc_test_now_us()) / 1000;
        if (left <= 0)
            return 0;
        struct pollfd pfd = { r->fd, POLLIN, 0 };
        int pr = poll(&pfd, 1, (int)left);
        if (pr == 0)
            return 0;
        assert_int_equal(pr, 1);
        ssize_t n = read(r->fd, r->in, sizeof r->in);
        if (n <= 0)
            return -1;
        r->in_len = (size_t)n;
    }
}

/* Reads and decodes what the session writes until a frame of type `type`
 * (and, when stream_id is not 0, of that stream) shows up; *out (may be NULL)
 * gets a copy of its fixed fields (pointers are not valid afterwards).
 * Returns 1 when found, 0 on timeout, -1 when the carrier ends first. */
static inline int nt_raw_expect(nt_raw *r, int type, uint32_t stream_id, lc_spdy_frame *out, int timeout_ms)
{
    int64_t end = lc_test_now_us() + (int64_t)timeout_ms * 1000;
    lc_spdy_frame f;
    int rc;
    while ((rc = nt_raw_next(r, &f, end)) == 1) {
        if (f.type == type && (stream_id == 0 || f.stream_id == stream_id) &&
            (f.type != LC_SPDY_DATA || f.data_last)) {
            if (out) {
                *out = f;
                out->headers = NULL;
                out->data = NULL;
            }
            return 1;
        }
    }
    return rc;
}

/* ---- raw peer checks (test_session_malformed.c, test_session_hostile.c) -------- */

/* A DATA frame on stream id carrying {N: n}. */
static inline void nt_put_n(lc_buf *b, uint32_t id, int n)
{
    nt_put_msg(b, id, lc_pack("{s:i}", "N", n));
}

/* lc_recv's result (the message, if any, is freed). */
static inline int nt_recv_rc(lc_receiver *r, int64_t timeout_ms)
{
    lc_msg *m = NULL;
    int rc = lc_recv(r, &m, timeout_ms);
    lc_msg_free(m);
    return rc;
}

/* The session is still fine: a new channel (stream id `id`, ref `ref`)
 * carries a message and its end. */
static inline void nt_check_alive(nt_raw *p, uint32_t id, uint64_t ref)
{
    lc_buf b;
    lc__buf_init(&b);
    nt_put_syn(p, &b, id, ref, 0, 0);
    nt_put_n(&b, id, 4242);
    assert_int_equal(lc__spdy_put_data(&b, id, LC_SPDY_FLAG_FIN, NULL, 0), 0);
    nt_raw_send(p, &b);
    lc__buf_free(&b);
    lc_receiver *r;
    assert_int_equal(lc_session_receiver(p->s, &r, 5000), 0);
    nt_expect_n(r, 4242);
    assert_int_equal(nt_recv_rc(r, 5000), LC_EOF);
    lc_receiver_release(r);
    assert_int_equal(lc_session_error(p->s), 0);
}

/* Reads what the session writes until the carrier ends; the status of the
 * last GOAWAY on the way, or -1 if there was none. */
static inline int nt_goaway_then_eof(nt_raw *p)
{
    int status = -1;
    for (;;) {
        lc_spdy_frame f = { 0 };
        int rc = nt_raw_expect(p, LC_SPDY_GOAWAY, 0, &f, 5000);
        assert_true(rc != 0); /* not a timeout: the session closes the carrier */
        if (rc < 0)
            return status;
        status = (int)f.status;
    }
}

/* Bytes of stream id the session holds not decoded yet (its channel's
 * stream decoder: behind a full queue or a message waiting for a
 * reference); *paused (may be NULL) gets whether reading is paused. */
static inline size_t nt_undecoded(lc_session *s, uint32_t id, bool *paused)
{
    pthread_mutex_lock(&s->mu);
    size_t n = 0;
    lc_stream *x = lc__map_get(&s->streams, id);
    if (x != NULL && x->sd_init)
        lc__sd_rest(&x->sd, &n);
    if (paused)
        *paused = s->paused;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Streams in s's table. */
static inline size_t nt_streams_len(lc_session *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->streams.len;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Passed fds the session holds, not claimed by a message yet. */
static inline size_t nt_fds_unclaimed(lc_session *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->in_fds.len;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* ---- helper processes ---------------------------------------------------------- */

#ifdef LC_PEER_PROC
typedef struct nt_proc {
    pid_t pid;
    int out;  /* read end of the child's stdout */
    char line[256];
} nt_proc;

/* Starts peer_proc with argv[1..] = args (NULL-terminated); its stdout comes
 * back on p->out. posix_spawn (vfork + exec): nothing of this process's
 * threads is needed in the child. */
static inline void nt_proc_start(nt_proc *p, const char *const *args)
{
    int pf[2];
    assert_int_equal(pipe2(pf, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pf[1], 1); /* dup2 clears CLOEXEC */
    const char *argv[16] = { LC_PEER_PROC };
    size_t n = 1;
    while (args[n - 1] != NULL && n < 15) {
        argv[n] = args[n - 1];
        n++;
    }
    argv[n] = NULL;
    int rc = posix_spawn(&p->pid, LC_PEER_PROC, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(pf[1]);
    assert_int_equal(rc, 0);
    p->out = pf[0];
}

/* Reads one line the child printed (without the newline) into p->line.
 * Returns the line, or NULL on EOF / timeout. */
static inline const char *nt_proc_line(nt_proc *p, int timeout_ms)
{
    size_t n = 0;
    int64_t end = lc_test_now_us() + (int64_t)timeout_ms * 1000;
    for (;;) {
        int64_t left = (end - lc_test_now_us()) / 1000;
        struct pollfd pfd = { p->out, POLLIN, 0 };
        if (left <= 0 || poll(&pfd, 1, (int)left) != 1)
            return NULL;
        char c;
        if (read(p->out, &c, 1) != 1)
            return NULL;
        if (c == '\n')
            break;
        if (n + 1 < sizeof p->line)
            p->line[n++] = c;
    }
    p->line[n] = '\0';
    return p->line;
}

/* Waits for the child and returns its wait status. */
static inline int nt_proc_wait(nt_proc *p)
{
    int st = 0;
    pid_t w;
    do
        w = waitpid(p->pid, &st, 0);
    while (w < 0 && errno == EINTR);
    assert_int_equal(w, p->pid);
    close(p->out);
    p->out = -1;
    return st;
}
#endif

#endif
