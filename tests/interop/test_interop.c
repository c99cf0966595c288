/*
 * test_interop.c - C sessions against a Go libchan peer (tests/gopeer: the
 * libchan protocol on spdystream, as docker/libchan speaks it), both as real
 * processes over TCP and unix sockets.
 *
 *   test_interop CASE GOPEER    runs one case (cmocka test name); GOPEER is
 *                               the gopeer binary, or NONE (no Go: exit 77)
 *
 * Each case starts gopeer with posix_spawn, its stdout on a pipe (the
 * LISTENING / REPLY / STREAM / COUNT / ERROR lines of tests/gopeer/README.md)
 * and its stderr collected by a thread (one line per event: printed when a
 * case fails, grepped for "peer did not ..." complaints, waited for). No
 * fixed ports (port 0, the LISTENING line says which), no sleeps; a per-case
 * deadline kills gopeer before failing (SIGQUIT first when it does not exit:
 * its goroutine stacks are printed), the teardown kills and reaps it after a
 * failed assertion; fd counts are compared before/after each case.
 *
 * A case that exposes a library bug runs only with LC_RUN_KNOWN_BUGS=1; in
 * TSan builds the known data races are suppressed (tsan-known-bugs.supp)
 * unless LC_RUN_KNOWN_BUGS=1.
 * LC_INTEROP_VERBOSE=1 prints gopeer's stdout and stderr after every case;
 * LC_INTEROP_RECORD=DIR puts `gopeer relay` between the two sides and
 * records DIR/CASE.c2s and .s2c (client to server and back; read them with
 * `gopeer dump`).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "codec/codec.h"
#include "engine/engine.h"
#include "libchan.h"
#include "session/session_internal.h"
#include "spdy/spdy.h"
#include "testutil.h"

#include "gopeer_proc.h"

/* Reads fd to EOF into buf (at most cap bytes); -1 on error or timeout. */
static ssize_t read_to_eof(int fd, char *buf, size_t cap)
{
    size_t have = 0;
    for (;;) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, IO_TIMEOUT_MS) != 1)
            return -1;
        ssize_t n = read(fd, buf + have, cap - have);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            return (ssize_t)have;
        have += (size_t)n;
        if (have == cap)
            return (ssize_t)have;
    }
}

/* Checks that a map's keys are exactly keys[0..n) in that order. */
static void expect_keys(lc_msg *m, const char *const *keys, size_t n)
{
    lc_value *root = lc_msg_root(m);
    assert_int_equal(lc_value_type(root), LC_MAP);
    assert_int_equal(lc_value_len(root), n);
    for (size_t i = 0; i < n; i++) {
        lc_value *k = lc_map_key(root, i);
        assert_int_equal(lc_value_type(k), LC_STRING);
        assert_string_equal(lc_value_string(k, NULL), keys[i]);
    }
}

/* ---- 1. C client -> gopeer serve --echo --once --------------------------------------- */

static void run_c_client_echo(const char *listen_url)
{
    gp_proc g;
    char url[256];
    gp_serve(&g, listen_url, "--echo", url, sizeof url);

    lc_error err = { 0 };
    lc_session *c;
    int rc = lc_dial(url, NULL, &c, &err);
    if (rc != 0)
        fail_msg("lc_dial(%s): %s %s", url, lc_strerror(rc), err.text);
    lc_sender *req;
    assert_int_equal(lc_session_sender(c, &req), 0);
    lc_receiver *rr;
    lc_sender *rs;
    assert_int_equal(lc_pipe(&rr, &rs, 1), 0);
    int sp[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);

    /* exactly the go-echo request: Value, Data, Ret, Stream */
    lc_msg *m = lc_msg_new();
    lc_value *map = lc_new_map(m);
    assert_int_equal(lc_map_set(m, map, "Value", lc_new_int(m, 42)), 0);
    assert_int_equal(lc_map_set(m, map, "Data", lc_new_string(m, "hello")), 0);
    assert_int_equal(lc_map_set(m, map, "Ret", lc_new_sender(m, rs)), 0);
    assert_int_equal(lc_map_set(m, map, "Stream", lc_new_stream(m, sp[1], LC_STREAM_DUPLEX)), 0);
    assert_int_equal(lc_msg_set_root(m, map), 0);
    assert_int_equal(lc_send(req, m, IO_TIMEOUT_MS), 0);
    assert_int_equal(write_all(sp[0], "stream-bytes", 12), 0);
    assert_int_equal(shutdown(sp[0], SHUT_WR), 0);

    lc_msg *rep;
    rc = lc_recv(rr, &rep, IO_TIMEOUT_MS);
    if (rc != 0) {
        gp_dump(&g, "no reply");
        fail_msg("reply: %s", lc_strerror(rc));
    }
    static const char *const want_keys[] = { "Echo", "Data" };
    expect_keys(rep, want_keys, 2);
    int64_t echo;
    const char *data;
    assert_int_equal(lc_unpack(rep, "{s:I, s:s}", "Echo", &echo, "Data", &data), 0);
    assert_int_equal(echo, 42);
    assert_string_equal(data, "hello");
    lc_msg_free(rep);
    assert_int_equal(lc_recv(rr, &rep, IO_TIMEOUT_MS), LC_EOF); /* Go closed Ret */

    char buf[64];
    ssize_t n = read_to_eof(sp[0], buf, sizeof buf);
    if (n != 12) {
        gp_dump(&g, "stream");
        fail_msg("echoed stream: %zd bytes", n);
    }
    assert_memory_equal(buf, "stream-bytes", 12);
    close(sp[0]);

    assert_int_equal(lc_close(req), 0);
    lc_sender_release(req);
    lc_receiver_release(rr);
    assert_int_equal(lc_session_close(c, IO_TIMEOUT_MS), 0);
    lc_session_free(c);
    gp_expect_exit0(&g);
    gp_finish(&g);
}

static void c_client_echo_tcp(void **st)
{
    IP_DEADLINE(30);
    run_c_client_echo("tcp://127.0.0.1:0");
}

static void c_client_echo_unix(void **st)
{
    IP_DEADLINE(30);
    const char *u = unix_url();
    run_c_client_echo(u);
    unlink(u + 7); /* gopeer --once exits without removing its socket file */
}

/* ---- C server side helpers ------------------------------------------------------- */

/* Listens on tcp://127.0.0.1:0 and starts `gopeer dial URL args...`. */
static void c_server_start(gp_proc *g, lc_listener **l, const char *const *dial_args)
{
    lc_error err = { 0 };
    assert_int_equal(lc_listen("tcp://127.0.0.1:0", NULL, l, &err), 0);
    char url[256];
    assert_int_equal(lc_listener_url(*l, url, sizeof url), 0);
    gp_maybe_relay(url, sizeof url);
    const char *args[8] = { "dial", url };
    size_t n = 2;
    for (size_t i = 0; dial_args[i] != NULL && n < 7; i++)
        args[n++] = dial_args[i];
    args[n] = NULL;
    gp_start(g, args);
}

/* After the Go client is done with its channels: it half-closes the carrier and
 * waits for us to close it. The session ends (LC_ESESSION) on the carrier's EOF;
 * then we close our side. */
static void c_server_finish(gp_proc *g, lc_session *sv, lc_listener *l)
{
    lc_receiver *r;
    int rc = lc_session_receiver(sv, &r, IO_TIMEOUT_MS);
    if (rc != LC_ESESSION) {
        gp_dump(g, "session did not end");
        if (rc == 0)
            lc_receiver_release(r);
        fail_msg("after the Go client finished, lc_session_receiver returned %s (want LC_ESESSION)",
                 lc_strerror(rc));
    }
    lc_session_close(sv, IO_TIMEOUT_MS); /* the carrier is gone: its result is not the point */
    lc_session_free(sv);
    lc_listener_close(l);
}

/* ---- 2. gopeer dial --request-echo -> C server ------------------------------------- */

static void go_client_echo_with(bool send_last)
{
    IP_DEADLINE(30);
    gp_proc g;
    lc_listener *l;
    const char *dargs[] = { "--request-echo", NULL };
    c_server_start(&g, &l, dargs);
    lc_session *sv;
    assert_int_equal(lc_accept(l, &sv, IO_TIMEOUT_MS), 0);
    lc_receiver *r;
    assert_int_equal(lc_session_receiver(sv, &r, IO_TIMEOUT_MS), 0);
    lc_msg *m;
    int rc = lc_recv(r, &m, IO_TIMEOUT_MS);
    if (rc != 0) {
        gp_dump(&g, "no request");
        fail_msg("request: %s", lc_strerror(rc));
    }
    static const char *const want_keys[] = { "Value", "Data", "Ret", "Stream" };
    expect_keys(m, want_keys, 4);
    assert_int_equal(lc_value_stream_mode(lc_map_get(lc_msg_root(m), "Stream")), LC_STREAM_DUPLEX);
    int64_t value;
    const char *data;
    lc_sender *ret;
    int stream;
    assert_int_equal(lc_unpack(m, "{s:I, s:s, s:S, s:F}", "Value", &value, "Data", &data, "Ret", &ret, "Stream",
                               &stream),
                     0);
    assert_int_equal(value, 42);
    assert_string_equal(data, "hello");
    /* like the Go echo server: reply on Ret, close Ret (or both in one
     * frame: DATA with FIN, which spdystream ends the stream on too) */
    lc_msg *rep = lc_pack("{s:I, s:s}", "Echo", value, "Data", data);
    if (send_last) {
        assert_int_equal(lc_send_last(ret, rep, IO_TIMEOUT_MS), 0);
    } else {
        assert_int_equal(lc_send(ret, rep, IO_TIMEOUT_MS), 0);
        assert_int_equal(lc_close(ret), 0);
    }
    lc_sender_release(ret);
    lc_msg_free(m);
    /* echo the stream's bytes as they come; at EOF close our side */
    char buf[4096];
    size_t total = 0;
    for (;;) {
        struct pollfd p = { stream, POLLIN, 0 };
        assert_int_equal(poll(&p, 1, IO_TIMEOUT_MS), 1);
        ssize_t n = read(stream, buf, sizeof buf);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        assert_true(n >= 0);
        if (n == 0)
            break;
        total += (size_t)n;
        assert_int_equal(write_all(stream, buf, (size_t)n), 0);
    }
    assert_int_equal(total, 12);
    close(stream);
    /* the Go client closed its channel after the request */
    assert_int_equal(lc_recv(r, &m, IO_TIMEOUT_MS), LC_EOF);
    lc_receiver_release(r);

    gp_expect_line(&g, "REPLY {\"Echo\":42,\"Data\":\"hello\"}");
    gp_expect_line(&g, "RET EOF");
    gp_expect_line(&g, "STREAM stream-bytes");
    c_server_finish(&g, sv, l);
    gp_expect_exit0(&g);
    gp_expect_no_complaint(&g);
    gp_finish(&g);
}

static void go_client_echo(void **st)
{
    (void)st;
    go_client_echo_with(false);
}

/* The reply and the end of Ret in one DATA frame (lc_send_last). */
static void go_client_echo_send_last(void **st)
{
    (void)st;
    go_client_echo_with(true);
}

/* ---- 3. one-way, both directions --------------------------------------------------- */

#define ONEWAY_N 10000

static void go_oneway_to_c(void **st)
{
    IP_DEADLINE(30);
    gp_proc g;
    lc_listener *l;
    const char *dargs[] = { "--oneway", "10000", NULL };
    c_server_start(&g, &l, dargs);
    lc_session *sv;
    assert_int_equal(lc_accept(l, &sv, IO_TIMEOUT_MS), 0);
    lc_receiver *r;
    assert_int_equal(lc_session_receiver(sv, &r, IO_TIMEOUT_MS), 0);
    for (int i = 0; i < ONEWAY_N; i++) {
        lc_msg *m;
        int rc = lc_recv(r, &m, IO_TIMEOUT_MS);
        if (rc != 0) {
            gp_dump(&g, "oneway");
            fail_msg("message %d: %s", i, lc_strerror(rc));
        }
        int64_t v = -1;
        assert_int_equal(lc_unpack(m, "{s:I}", "Value", &v), 0);
        assert_int_equal(lc_value_len(lc_msg_root(m)), 1);
        if (v != i)
            fail_msg("message %d: Value %lld", i, (long long)v);
        lc_msg_free(m);
    }
    lc_msg *m;
    assert_int_equal(lc_recv(r, &m, IO_TIMEOUT_MS), LC_EOF);
    lc_receiver_release(r);
    c_server_finish(&g, sv, l);
    gp_expect_exit0(&g);
    gp_expect_no_complaint(&g);
    gp_finish(&g);
}

/* Counts the non-empty DATA frames a session writes (its trace hook). */
static void count_data_frames(void *ctx, const char *line)
{
    if (strncmp(line, ">> DATA ", 8) == 0 && strstr(line, " len=0") == NULL)
        atomic_fetch_add((_Atomic long *)ctx, 1);
}

static void c_oneway_to_go(void **st)
{
    IP_DEADLINE(30);
    gp_proc g;
    char url[256];
    gp_serve(&g, "tcp://127.0.0.1:0", "--count", url, sizeof url);
    lc_error err = { 0 };
    lc_session *c;
    /* a burst of small messages shares DATA frames (PROTOCOL.md allows it):
     * the Go decoder must see every one of them */
    static _Atomic long frames;
    atomic_store(&frames, 0);
    lc_options o;
    lc_options_default(&o);
    o.trace = count_data_frames;
    o.trace_ctx = (void *)&frames;
    assert_int_equal(lc_dial(url, &o, &c, &err), 0);
    lc_sender *s;
    assert_int_equal(lc_session_sender(c, &s), 0);
    for (int i = 0; i < ONEWAY_N; i++) {
        lc_msg *m = lc_pack("{s:i}", "Value", i);
        int rc = lc_send(s, m, IO_TIMEOUT_MS);
        if (rc != 0) {
            lc_msg_free(m);
            gp_dump(&g, "oneway");
            fail_msg("send %d: %s", i, lc_strerror(rc));
        }
    }
    assert_int_equal(lc_close(s), 0);
    gp_expect_line(&g, "COUNT 10000");
    lc_sender_release(s);
    assert_int_equal(lc_session_close(c, IO_TIMEOUT_MS), 0);
    lc_session_free(c);
    long nf = atomic_load(&frames);
    printf("c_oneway_to_go: %d messages in %ld DATA frames\n", ONEWAY_N, nf);
    assert_true(nf > 0 && nf < ONEWAY_N);
    gp_expect_exit0(&g);
    gp_finish(&g);
}

/* ---- 4. a C Receiver travels to Go --------------------------------------------------- */

/* {"Value":7,"Ret":<Sender>,"Events":<Receiver>}: gopeer replies {"Echo":7} on
 * Ret, then passes every message of Events on to Ret, then closes Ret. */
static void c_receiver_to_go(void **st)
{
    IP_DEADLINE(30);
    gp_proc g;
    char url[256];
    gp_serve(&g, "tcp://127.0.0.1:0", "--echo", url, sizeof url);
    lc_error err = { 0 };
    lc_session *c;
    assert_int_equal(lc_dial(url, NULL, &c, &err), 0);
    lc_sender *req;
    assert_int_equal(lc_session_sender(c, &req), 0);
    lc_receiver *rr, *er;
    lc_sender *rs, *es;
    assert_int_equal(lc_pipe(&rr, &rs, 1), 0);
    assert_int_equal(lc_pipe(&er, &es, 0), 0);
    lc_msg *m = lc_pack("{s:i, s:S, s:R}", "Value", 7, "Ret", rs, "Events", er);
    assert_non_null(m);
    assert_int_equal(lc_send(req, m, IO_TIMEOUT_MS), 0);
    /* messages sent on our end of Events reach Go, which sends them back on Ret */
    for (int i = 0; i < 5; i++) {
        lc_msg *e = lc_pack("{s:i, s:s}", "N", i, "Tag", "event");
        int rc = lc_send(es, e, IO_TIMEOUT_MS);
        if (rc != 0) {
            lc_msg_free(e);
            gp_dump(&g, "events");
            fail_msg("event %d: %s", i, lc_strerror(rc));
        }
    }
    assert_int_equal(lc_close(es), 0);
    lc_sender_release(es);

    lc_msg *rep;
    int rc = lc_recv(rr, &rep, IO_TIMEOUT_MS);
    if (rc != 0) {
        gp_dump(&g, "no reply");
        fail_msg("reply: %s", lc_strerror(rc));
    }
    int64_t echo = 0;
    assert_int_equal(lc_unpack(rep, "{s:I}", "Echo", &echo), 0);
    assert_int_equal(lc_value_len(lc_msg_root(rep)), 1);
    assert_int_equal(echo, 7);
    lc_msg_free(rep);
    for (int i = 0; i < 5; i++) {
        rc = lc_recv(rr, &rep, IO_TIMEOUT_MS);
        if (rc != 0) {
            gp_dump(&g, "passed-on event");
            fail_msg("passed-on event %d: %s", i, lc_strerror(rc));
        }
        int64_t nv = -1;
        const char *tag;
        assert_int_equal(lc_unpack(rep, "{s:I, s:s}", "N", &nv, "Tag", &tag), 0);
        assert_int_equal(nv, i);
        assert_string_equal(tag, "event");
        lc_msg_free(rep);
    }
    assert_int_equal(lc_recv(rr, &rep, IO_TIMEOUT_MS), LC_EOF);
    lc_receiver_release(rr);
    assert_int_equal(lc_close(req), 0);
    lc_sender_release(req);
    assert_int_equal(lc_session_close(c, IO_TIMEOUT_MS), 0);
    lc_session_free(c);
    gp_expect_exit0(&g);
    gp_finish(&g);
}

/* ---- ext 2 / ext 3 byte streams to Go ------------------------------------------------ */

/* {"Value":1,"Ret":S,"In":ext 3}: Go drains In (we write 64 KiB and EOF)
 * and replies. (ext 2 is c_out_stream_early_fin.) */
static void c_stream_modes_to_go(void **st)
{
    IP_DEADLINE(30);
    gp_proc g;
    char url[256];
    gp_serve(&g, "tcp://127.0.0.1:0", "--echo", url, sizeof url);
    lc_error err = { 0 };
    lc_session *c;
    assert_int_equal(lc_dial(url, NULL, &c, &err), 0);
    lc_sender *req;
    assert_int_equal(lc_session_sender(c, &req), 0);
    lc_receiver *rr;
    lc_sender *rs;
    assert_int_equal(lc_pipe(&rr, &rs, 1), 0);
    int inp[2];
    assert_int_equal(pipe2(inp, O_CLOEXEC), 0); /* we write inp[1] -> Go reads */
    lc_msg *m = lc_msg_new();
    lc_value *map = lc_new_map(m);
    assert_int_equal(lc_map_set(m, map, "Value", lc_new_int(m, 1)), 0);
    assert_int_equal(lc_map_set(m, map, "Ret", lc_new_sender(m, rs)), 0);
    assert_int_equal(lc_map_set(m, map, "In", lc_new_stream(m, inp[0], LC_STREAM_READ)), 0);
    assert_int_equal(lc_msg_set_root(m, map), 0);
    assert_int_equal(lc_send(req, m, IO_TIMEOUT_MS), 0);

    size_t n = 65536;
    char *data = malloc(n);
    memset(data, 'x', n);
    assert_int_equal(write_all(inp[1], data, n), 0);
    close(inp[1]);
    free(data);

    lc_msg *rep;
    assert_int_equal(lc_recv(rr, &rep, IO_TIMEOUT_MS), 0);
    int64_t echo = 0;
    assert_int_equal(lc_unpack(rep, "{s:I}", "Echo", &echo), 0);
    assert_int_equal(echo, 1);
    lc_msg_free(rep);
    assert_int_equal(lc_recv(rr, &rep, IO_TIMEOUT_MS), LC_EOF);
    lc_receiver_release(rr);
    /* Go logs this once it has read In to its end (FIN). Waited for: closing
     * the session before our pump has sent the bytes would lose them (see
     * c_stream_bytes_before_session_close) */
    bool drained = gp_wait_stderr(&g, "read 65536 bytes (<nil>)", IO_TIMEOUT_MS);
    if (!drained)
        gp_dump(&g, "In not drained");
    assert_true(drained);
    assert_int_equal(lc_close(req), 0);
    lc_sender_release(req);
    assert_int_equal(lc_session_close(c, IO_TIMEOUT_MS), 0);
    lc_session_free(c);
    gp_expect_exit0(&g);
    gp_finish(&g);
}

/* {"Value": value, key: a byte stream of fd in mode}: a request to the Go
 * echo with one stream. */
static lc_msg *value_and_stream(int value, const char *key, int fd, lc_stream_mode mode)
{
    lc_msg *m = lc_msg_new();
    lc_value *map = lc_new_map(m);
    assert_int_equal(lc_map_set(m, map, "Value", lc_new_int(m, value)), 0);
    assert_int_equal(lc_map_set(m, map, key, lc_new_stream(m, fd, mode)), 0);
    assert_int_equal(lc_msg_set_root(m, map), 0);
    return m;
}

/* An ext 2 stream (LC_STREAM_WRITE: the peer writes, we read) whose FIN
 * the peer sends while the sending thread is still setting the stream up
 * must still reach EOF. It used to be a known bug: on_data's bytes_kick ->
 * bytes_close on the engine thread raced with bytes_start (run after the
 * message was flushed), and the fd was then never closed, even by
 * lc_session_free: 6-15 of 200 lost in every run. Fixed by setting byte
 * streams up before their SYN_STREAM leaves (c27efbf). gopeer closes every
 * Out stream as soon as it decodes the message. Up to 200 messages
 * {"Value":i,"Out":ext 2} on one channel, each read to EOF (1 s each;
 * stops at the third loss). */
static void c_out_stream_early_fin(void **st)
{
    IP_DEADLINE(60);
    gp_proc g;
    char url[256];
    gp_serve(&g, "tcp://127.0.0.1:0", "--echo", url, sizeof url);
    lc_error err = { 0 };
    lc_session *c;
    assert_int_equal(lc_dial(url, NULL, &c, &err), 0);
    lc_sender *req;
    assert_int_equal(lc_session_sender(c, &req), 0);
    int lost = 0, first_lost = -1;
    for (int i = 0; i < 200; i++) {
        int outp[2];
        assert_int_equal(pipe2(outp, O_CLOEXEC), 0); /* Go writes -> we read outp[0] */
        assert_int_equal(lc_send(req, value_and_stream(i, "Out", outp[1], LC_STREAM_WRITE), IO_TIMEOUT_MS), 0);
        struct pollfd p = { outp[0], POLLIN, 0 };
        char b;
        if (poll(&p, 1, 1000) != 1 || read(outp[0], &b, 1) != 0) {
            if (lost++ == 0)
                first_lost = i;
        }
        close(outp[0]);
        if (lost == 3)
            break; /* enough to show it; each costs a second */
    }
    assert_int_equal(lc_close(req), 0);
    lc_sender_release(req);
    assert_int_equal(lc_session_close(c, IO_TIMEOUT_MS), 0);
    lc_session_free(c);
    gp_expect_exit0(&g);
    gp_finish(&g);
    if (lost)
        fail_msg("%d Out streams never got EOF (first: message %d)", lost, first_lost);
}

/* Bytes written into a stream fd (and its EOF) just before
 * lc_session_close are flushed by it: the close lets the pump that copies
 * fd -> DATA finish (a known gap until c27efbf: the pump was cut off).
 * {"Value":1,"In":ext 3 over a socketpair}; once gopeer has the message,
 * 64 KiB and EOF go into our end and lc_session_close follows at once:
 * gopeer must read all 65536 bytes. (spdystream reports carrier loss as a
 * clean EOF, so a Go reader could not even tell the stream was cut short.) */
static void c_stream_bytes_before_session_close(void **st)
{
    IP_DEADLINE(30);
    gp_proc g;
    char url[256];
    gp_serve(&g, "tcp://127.0.0.1:0", "--echo", url, sizeof url);
    lc_error err = { 0 };
    lc_session *c;
    assert_int_equal(lc_dial(url, NULL, &c, &err), 0);
    lc_sender *req;
    assert_int_equal(lc_session_sender(c, &req), 0);
    int sp[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
    assert_int_equal(lc_send(req, value_and_stream(1, "In", sp[1], LC_STREAM_READ), IO_TIMEOUT_MS), 0);
    assert_int_equal(lc_close(req), 0);
    lc_sender_release(req);
    /* Go has the message, so its SYN_REPLYs are out (a SYN_REPLY that
     * cannot be written makes spdystream block that stream's Close forever) */
    assert_true(gp_wait_stderr(&g, "channel 2: message", IO_TIMEOUT_MS));
    size_t n = 65536;
    char *data = malloc(n);
    memset(data, 'y', n);
    assert_int_equal(write_all(sp[0], data, n), 0); /* fits the socket buffers */
    free(data);
    assert_int_equal(shutdown(sp[0], SHUT_WR), 0);
    assert_int_equal(lc_session_close(c, IO_TIMEOUT_MS), 0);
    lc_session_free(c);
    close(sp[0]);
    gp_expect_exit0(&g);
    char *e = gp_stderr(&g);
    bool all = strstr(e, "read 65536 bytes") != NULL;
    if (!all)
        fprintf(stderr, "---- gopeer stderr ----\n%s----\n", e);
    free(e);
    gp_finish(&g);
    assert_true(all);
}

/* A one-way byte stream (ext 3: Go reads it) and lc_session_close at once:
 * Go reads every byte. The stream, which Go never sends on, left our table
 * with our FIN and counted as answered, so the close did not wait for Go's
 * SYN_REPLY; spdystream, reading our GOAWAY first, failed that SYN_REPLY
 * and dropped the stream's bytes (a review helper: 6 of 90 rounds). 100
 * rounds, a fresh gopeer each. */
static void c_oneway_stream_then_close_at_once(void **st)
{
    IP_DEADLINE(120);
    enum { ROUNDS = 100, N = 10000 };
    static char data[N];
    memset(data, 'x', sizeof data);
    int lost = 0;
    for (int round = 0; round < ROUNDS; round++) {
        gp_proc g;
        char url[256];
        gp_serve(&g, "tcp://127.0.0.1:0", "--echo", url, sizeof url);
        lc_error err = { 0 };
        lc_session *c;
        assert_int_equal(lc_dial(url, NULL, &c, &err), 0);
        lc_sender *req;
        assert_int_equal(lc_session_sender(c, &req), 0);
        int p[2];
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        assert_int_equal(write_all(p[1], data, N), 0); /* (fits the pipe) */
        close(p[1]);
        assert_int_equal(lc_send(req, value_and_stream(1, "In", p[0], LC_STREAM_READ), IO_TIMEOUT_MS), 0);
        assert_int_equal(lc_close(req), 0);
        lc_sender_release(req);
        assert_int_equal(lc_session_close(c, IO_TIMEOUT_MS), 0);
        lc_session_free(c);
        gp_expect_exit0(&g);
        char *e = gp_stderr(&g);
        if (strstr(e, "read 10000 bytes (<nil>)") == NULL && lost++ == 0)
            fprintf(stderr, "round %d ---- gopeer stderr ----\n%s----\n", round, e);
        free(e);
        gp_finish(&g);
    }
    assert_int_equal(lost, 0);
}

/* ---- big message, big stream ----------------------------------------------------------- */

typedef struct pump_arg {
    int fd;
    const char *data;
    size_t len;
    int rc;
} pump_arg;

static void *writer(void *x)
{
    pump_arg *a = x;
    a->rc = write_all(a->fd, a->data, a->len);
    shutdown(a->fd, SHUT_WR);
    return NULL;
}

static void c_big_to_go(void **st)
{
    IP_DEADLINE(30);
    gp_proc g;
    char url[256];
    gp_serve(&g, "tcp://127.0.0.1:0", "--echo", url, sizeof url);
    lc_error err = { 0 };
    lc_session *c;
    assert_int_equal(lc_dial(url, NULL, &c, &err), 0);
    lc_sender *req;
    assert_int_equal(lc_session_sender(c, &req), 0);
    lc_receiver *rr;
    lc_sender *rs;
    assert_int_equal(lc_pipe(&rr, &rs, 1), 0);
    int sp[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);

    size_t slen = 100000, blen = 1 << 20;
    char *s = malloc(slen + 1), *b = malloc(blen), *got = malloc(blen + 1);
    for (size_t i = 0; i < slen; i++)
        s[i] = (char)('a' + i % 26);
    s[slen] = '\0';
    for (size_t i = 0; i < blen; i++)
        b[i] = (char)(i * 7 + i / 4096);
    lc_msg *m = lc_pack("{s:i, s:s, s:S, s:F}", "Value", 1, "Data", s, "Ret", rs, "Stream", sp[1]);
    assert_non_null(m);
    assert_int_equal(lc_send(req, m, IO_TIMEOUT_MS), 0);
    pump_arg wa = { sp[0], b, blen, 0 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, writer, &wa), 0);

    lc_msg *rep;
    int rc = lc_recv(rr, &rep, IO_TIMEOUT_MS);
    if (rc != 0) {
        gp_dump(&g, "no reply");
        fail_msg("reply: %s", lc_strerror(rc));
    }
    const char *data;
    size_t dlen;
    int64_t echo;
    assert_int_equal(lc_unpack(rep, "{s:I, s:s#}", "Echo", &echo, "Data", &data, &dlen), 0);
    assert_int_equal(echo, 1);
    assert_int_equal(dlen, slen);
    assert_memory_equal(data, s, slen);
    lc_msg_free(rep);
    assert_int_equal(lc_recv(rr, &rep, IO_TIMEOUT_MS), LC_EOF);

    ssize_t n = read_to_eof(sp[0], got, blen + 1);
    pthread_join(t, NULL);
    assert_int_equal(wa.rc, 0);
    if (n != (ssize_t)blen) {
        gp_dump(&g, "big stream");
        fail_msg("echoed stream: %zd bytes of %zu", n, blen);
    }
    assert_memory_equal(got, b, blen);
    close(sp[0]);
    free(s);
    free(b);
    free(got);
    lc_receiver_release(rr);
    assert_int_equal(lc_close(req), 0);
    lc_sender_release(req);
    assert_int_equal(lc_session_close(c, IO_TIMEOUT_MS), 0);
    lc_session_free(c);
    gp_expect_exit0(&g);
    gp_finish(&g);
}

/* ---- many channels at once ------------------------------------------------------------ */

#define MANY_CHANNELS 4
#define MANY_REQUESTS 25

typedef struct many_arg {
    lc_session *c;
    int id;
    int rc; /* 0, or the request number that failed + 1 */
    int err;
} many_arg;

static void *many_client(void *x)
{
    many_arg *a = x;
    lc_sender *req;
    if ((a->err = lc_session_sender(a->c, &req)) != 0) {
        a->rc = -1;
        return NULL;
    }
    for (int i = 0; i < MANY_REQUESTS && a->rc == 0; i++) {
        lc_receiver *rr;
        lc_sender *rs;
        lc_pipe(&rr, &rs, 1);
        int64_t v = a->id * 1000 + i;
        lc_msg *m = lc_pack("{s:I, s:s, s:S}", "Value", v, "Data", "many", "Ret", rs);
        lc_msg *rep = NULL;
        int64_t echo = -1;
        if ((a->err = lc_send(req, m, IO_TIMEOUT_MS)) != 0) {
            lc_msg_free(m);
        } else if ((a->err = lc_recv(rr, &rep, IO_TIMEOUT_MS)) == 0) {
            if ((a->err = lc_unpack(rep, "{s:I}", "Echo", &echo)) == 0 && echo != v)
                a->err = LC_ETYPE;
            lc_msg_free(rep);
            rep = NULL;
            if (a->err == 0) { /* then Go closes Ret */
                a->err = lc_recv(rr, &rep, IO_TIMEOUT_MS);
                a->err = a->err == LC_EOF ? 0 : (a->err == 0 ? LC_ETRAILING : a->err);
                lc_msg_free(rep);
            }
        }
        if (a->err != 0)
            a->rc = i + 1;
        lc_receiver_release(rr);
    }
    lc_close(req);
    lc_sender_release(req);
    return NULL;
}

static void c_many_channels_to_go(void **st)
{
    IP_DEADLINE(30);
    gp_proc g;
    char url[256];
    gp_serve(&g, "tcp://127.0.0.1:0", "--echo", url, sizeof url);
    lc_error err = { 0 };
    lc_session *c;
    assert_int_equal(lc_dial(url, NULL, &c, &err), 0);
    many_arg a[MANY_CHANNELS];
    pthread_t t[MANY_CHANNELS];
    for (int i = 0; i < MANY_CHANNELS; i++) {
        a[i] = (many_arg){ .c = c, .id = i + 1 };
        assert_int_equal(pthread_create(&t[i], NULL, many_client, &a[i]), 0);
    }
    bool ok = true;
    for (int i = 0; i < MANY_CHANNELS; i++) {
        pthread_join(t[i], NULL);
        if (a[i].rc != 0) {
            fprintf(stderr, "channel %d: request %d: %s\n", i, a[i].rc - 1, lc_strerror(a[i].err));
            ok = false;
        }
    }
    if (!ok) {
        gp_dump(&g, "many");
        fail_msg("some requests failed");
    }
    assert_int_equal(lc_session_close(c, IO_TIMEOUT_MS), 0);
    lc_session_free(c);
    gp_expect_exit0(&g);
    gp_finish(&g);
}

/* ---- spdystream and our first frames: SETTINGS and WINDOW_UPDATE ---------------------- */

/* Our sessions open with SETTINGS {INITIAL_WINDOW_SIZE, LC_SETTINGS_LIBCHAN
 * marker} and may send WINDOW_UPDATE; a Go peer must ignore both. Played raw,
 * independent of what the session sends today: SETTINGS, then the go-oneway
 * vector's client bytes with a WINDOW_UPDATE for stream 1 after its
 * SYN_STREAM, into `gopeer serve --count --once` with spdystream's DEBUG log:
 * COUNT 3, both frames logged as read and ignored, no frame read error. */
static void go_ignores_settings_and_window_update(void **st)
{
    IP_DEADLINE(30);
    char path[512];
    snprintf(path, sizeof path, "%s/go-oneway.client-to-server.bin", LC_SPDY_VECTORS_DIR);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("%s: %s", path, strerror(errno));
    uint8_t vec[1024];
    size_t vlen = fread(vec, 1, sizeof vec, f);
    fclose(f);
    assert_true(vlen > 8);
    size_t first = 8 + ((size_t)vec[5] << 16 | (size_t)vec[6] << 8 | vec[7]); /* the SYN_STREAM */
    assert_int_equal(vec[0], 0x80); /* a control frame */
    assert_int_equal(vec[3], LC_SPDY_SYN_STREAM);
    assert_true(first < vlen);

    lc_buf b;
    lc__buf_init(&b);
    lc_spdy_setting set[2] = { { 0, LC_SPDY_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 20 },
                               { 0, LC_SETTINGS_LIBCHAN, LC_FEATURE_WINDOWS } };
    assert_int_equal(lc__spdy_put_settings(&b, 0, set, 2), 0);
    assert_int_equal(lc__buf_append(&b, vec, first), 0);
    assert_int_equal(lc__spdy_put_window_update(&b, 1, 65536), 0);
    assert_int_equal(lc__buf_append(&b, vec + first, vlen - first), 0);

    gp_proc g;
    char url[256];
    gp_serve_env(&g, "tcp://127.0.0.1:0", "--count", url, sizeof url, "DEBUG=1");
    const char *port = strrchr(url, ':');
    assert_non_null(port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port + 1)) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(write_all(fd, b.data, b.len), 0);
    lc__buf_free(&b);
    gp_expect_line(&g, "COUNT 3");
    /* both frames were read before the FIN that ended the count; their
     * (frame worker) log lines come soon: wait before closing, as spdystream
     * drops the frames still queued when the connection ends */
    bool settings = gp_wait_stderr(&g, "unhandled frame type: *spdy.SettingsFrame", IO_TIMEOUT_MS);
    bool window = gp_wait_stderr(&g, "unhandled frame type: *spdy.WindowUpdateFrame", IO_TIMEOUT_MS);
    /* end the connection: gopeer --once then exits */
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    char sink[4096];
    assert_true(read_to_eof(fd, sink, sizeof sink) >= 0);
    close(fd);
    gp_expect_exit0(&g);
    char *e = gp_stderr(&g);
    bool read_error = strstr(e, "frame read error") != NULL;
    if (!settings || !window || read_error)
        fprintf(stderr, "---- gopeer stderr ----\n%s----\n", e);
    free(e);
    gp_finish(&g);
    assert_true(settings);
    assert_true(window);
    assert_false(read_error);
}

/* ---- main ---------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    int rc = ip_prelude(argc, argv);
    if (rc >= 0)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(c_client_echo_tcp, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(c_client_echo_unix, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(go_client_echo, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(go_client_echo_send_last, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(go_oneway_to_c, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(c_oneway_to_go, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(c_receiver_to_go, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(c_stream_modes_to_go, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(c_out_stream_early_fin, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(c_stream_bytes_before_session_close, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(c_oneway_stream_then_close_at_once, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(c_big_to_go, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(c_many_channels_to_go, ip_setup, ip_teardown),
        cmocka_unit_test_setup_teardown(go_ignores_settings_and_window_update, ip_setup, ip_teardown),
    };
    return IP_RUN("interop", tests, argv[1]);
}
