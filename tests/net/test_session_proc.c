/*
 * test_session_proc.c - sessions with other processes (tests/net/peer_proc.c,
 * started with posix_spawn; each prints its URL or "ready" on a pipe):
 *   - forwarding through a proxy process: A (this test) -> P -> B, requests
 *     carrying a reply Sender (and some a Receiver) reach B, B's replies come
 *     back to A through P, closes travel along;
 *   - a peer killed mid-frame, mid-message, or while flooding: our blocked
 *     lc_recv returns an error quickly, the messages before it are intact,
 *     nothing hangs, no fd is left behind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <signal.h>
#include <stdatomic.h>
#include <sys/stat.h>

#include "nettest.h"

/* ---- forwarding through a proxy process --------------------------------------- */

#define NPROXY 20

static void run_proxy(const char *a_url, const char *b_url)
{
    nt_proc b, p;
    const char *bargs[] = { "echo", b_url, NULL };
    nt_proc_start(&b, bargs);
    const char *bu = nt_proc_line(&b, 10000);
    assert_non_null(bu);
    const char *pargs[] = { "proxy", a_url, bu, NULL };
    nt_proc_start(&p, pargs);
    const char *pu = nt_proc_line(&p, 10000);
    assert_non_null(pu);

    lc_session *s;
    lc_error err = { 0 };
    assert_int_equal(lc_dial(pu, NULL, &s, &err), 0);
    /* two channels, requests pipelined on both */
    lc_sender *ch[2];
    assert_int_equal(lc_session_sender(s, &ch[0]), 0);
    assert_int_equal(lc_session_sender(s, &ch[1]), 0);
    lc_receiver *rr[NPROXY];
    for (int i = 0; i < NPROXY; i++) {
        lc_sender *rs;
        assert_int_equal(lc_pipe(&rr[i], &rs, 1), 0);
        lc_msg *m;
        if (i % 3 == 0) {
            /* with a Receiver holding 1..i: B sums what it reads through P */
            lc_receiver *fr;
            lc_sender *fs;
            assert_int_equal(lc_pipe(&fr, &fs, (size_t)i + 1), 0);
            for (int k = 1; k <= i; k++)
                assert_int_equal(lc_send(fs, lc_pack("{s:i}", "N", k), 0), 0);
            lc_close(fs);
            lc_sender_release(fs);
            m = lc_pack("{s:I, s:S, s:R}", "Value", (int64_t)i, "Ret", rs, "Feed", fr);
        } else {
            m = lc_pack("{s:I, s:S}", "Value", (int64_t)i, "Ret", rs);
        }
        assert_non_null(m);
        assert_int_equal(lc_send(ch[i % 2], m, 5000), 0);
    }
    for (int i = 0; i < NPROXY; i++) {
        lc_msg *m;
        int rc = lc_recv(rr[i], &m, 10000);
        if (rc != 0)
            fprintf(stderr, "reply %d: %s\n", i, lc_strerror(rc));
        assert_int_equal(rc, 0);
        int64_t echo, sum;
        const char *who;
        assert_int_equal(lc_unpack(m, "{s:I, s:s, s:I}", "Echo", &echo, "Who", &who, "Sum", &sum), 0);
        assert_int_equal(echo, i);
        assert_string_equal(who, "B");
        assert_int_equal(sum, i % 3 == 0 ? (int64_t)i * (i + 1) / 2 : 0);
        lc_msg_free(m);
        /* B closed its reply Sender: the close came through P */
        assert_int_equal(lc_recv(rr[i], &m, 10000), LC_EOF);
        lc_receiver_release(rr[i]);
    }
    for (int k = 0; k < 2; k++) {
        assert_int_equal(lc_close(ch[k]), 0);
        lc_sender_release(ch[k]);
    }
    assert_int_equal(lc_session_error(s), 0);
    assert_int_equal(lc_session_close(s, 5000), 0);
    lc_session_free(s);
    /* P sees the end of our session, closes its upstream; B sees that: both
     * exit 0 */
    int st = nt_proc_wait(&p);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    st = nt_proc_wait(&b);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* A and P on a unix socket, P and B on TCP. */
static void test_proxy_process_forwards_requests_and_replies(void **st)
{
    LC_TEST_DEADLINE(40);
    char url[128];
    run_proxy(nt_unix_url(url, sizeof url), "tcp://127.0.0.1:0");
}

static void test_proxy_process_over_tcp_both_ways(void **st)
{
    LC_TEST_DEADLINE(40);
    run_proxy("tcp://127.0.0.1:0", "tcp://127.0.0.1:0");
}

/* ---- passed fds past the kernel's in-flight limit -------------------------------- */

/*
 * An unprivileged process passes 2000 fds, one per message, to us; we read
 * none until its sends wait. The fds in flight in the socket count against
 * its RLIMIT_NOFILE (512): sendmsg fails with ETOOMANYREFS, which used to end
 * its session (a review helper: 1447 of 3000 sent, our reads then
 * LC_EPROTO). It is waited out now, and lc_send waits once FDQ_MAX fds are
 * queued: every message arrives, in order, each with its own open pipe.
 */
static void test_passed_fds_past_the_in_flight_limit(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(60);
    enum { N = 2000 };
    char url[128];
    nt_unix_url(url, sizeof url);
    lc_listener *l;
    lc_error err = { 0 };
    assert_int_equal(lc_listen(url, NULL, &l, &err), 0);
    assert_int_equal(chmod(url + strlen("unix://"), 0777), 0); /* (for uid 65534) */
    nt_proc c;
    char nbuf[16];
    snprintf(nbuf, sizeof nbuf, "%d", N);
    const char *args[] = { "pass-fds-limited", url, nbuf, NULL };
    nt_proc_start(&c, args);
    lc_session *s;
    assert_int_equal(lc_accept(l, &s, 10000), 0);
    lc_sender *hello;
    assert_int_equal(lc_session_sender(s, &hello), 0);
    assert_int_equal(lc_send(hello, lc_pack("{s:i}", "Hello", 1), 10000), 0);
    lc_receiver *r;
    assert_int_equal(lc_session_receiver(s, &r, 10000), 0);
    const char *line = nt_proc_line(&c, 20000);
    if (line == NULL || strcmp(line, "blocked") != 0)
        fail_msg("peer_proc said %s (want blocked); our session: %s", line ? line : "(nothing)",
                 lc_strerror(lc_session_error(s)));
    for (int i = 0; i < N; i++) {
        lc_msg *m;
        int rc = lc_recv(r, &m, 10000);
        if (rc != 0)
            fail_msg("message %d: %s (session: %s)", i, lc_strerror(rc), lc_strerror(lc_session_error(s)));
        int got, fd;
        assert_int_equal(lc_unpack(m, "{s:i, s:F}", "I", &got, "F", &fd), 0);
        lc_msg_free(m);
        assert_int_equal(got, i);
        struct stat sb;
        assert_int_equal(fstat(fd, &sb), 0);
        assert_true(S_ISFIFO(sb.st_mode));
        close(fd);
    }
    lc_msg *m;
    assert_int_equal(lc_recv(r, &m, 10000), LC_EOF);
    line = nt_proc_line(&c, 20000);
    if (line == NULL || strcmp(line, "sent 2000") != 0)
        fail_msg("peer_proc said %s (want sent 2000)", line ? line : "(nothing)");
    int ps = nt_proc_wait(&c);
    assert_true(WIFEXITED(ps) && WEXITSTATUS(ps) == 0);
    lc_sender_release(hello);
    lc_receiver_release(r);
    lc_session_free(s);
    lc_listener_close(l);
}

/* ---- a session that cannot start ------------------------------------------- */

/*
 * A process at its fd limit dials: the connection is made but the session
 * cannot start (the engine needs fds). lc_dial fails with a text in err, and
 * the process goes on: its next dial, with the limit raised, works. The
 * failure path released the session's own channel ends twice, a
 * use-after-free ASan reports in the peer process (found by a review
 * helper). In a process of its own: the engine is made by the first session.
 */
static void test_dial_when_session_cannot_start(void **st)
{
    (void)st;
    LC_TEST_DEADLINE(30);
    char url[128];
    nt_unix_url(url, sizeof url);
    lc_listener *l;
    lc_error err = { 0 };
    assert_int_equal(lc_listen(url, NULL, &l, &err), 0);
    nt_proc c;
    const char *args[] = { "dial-at-fd-limit", url, NULL };
    nt_proc_start(&c, args);
    lc_session *s;
    assert_int_equal(lc_accept(l, &s, 10000), 0); /* the second dial (the first one's conn is gone) */
    const char *line = nt_proc_line(&c, 10000);
    if (line == NULL || strncmp(line, "refused: ", 9) != 0)
        fprintf(stderr, "peer_proc dial-at-fd-limit said: %s\n", line ? line : "(nothing)");
    assert_true(line != NULL && strncmp(line, "refused: ", 9) == 0);
    int wst = nt_proc_wait(&c);
    assert_true(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    lc_session_free(s);
    lc_listener_close(l);
}

/* ---- peers killed mid-way ---------------------------------------------------- */

typedef struct {
    lc_receiver *r;
    int rc;
    atomic_int tid; /* published before lc_recv (lc_test_wait_asleep) */
} recv_arg;

static void *blocked_recv(void *x)
{
    recv_arg *a = x;
    lc_msg *m = NULL;
    atomic_store(&a->tid, lc_test_gettid());
    a->rc = lc_recv(a->r, &m, 20000);
    lc_msg_free(m);
    return NULL;
}

/* Listens on a fresh unix socket, starts `peer_proc MODE URL` and accepts
 * its session. */
static lc_session *accept_peer(const char *mode, nt_proc *c, lc_listener **l)
{
    char url[128];
    nt_unix_url(url, sizeof url);
    lc_error err = { 0 };
    assert_int_equal(lc_listen(url, NULL, l, &err), 0);
    const char *args[] = { mode, url, NULL };
    nt_proc_start(c, args);
    lc_session *s;
    assert_int_equal(lc_accept(*l, &s, 10000), 0);
    return s;
}

/* Waits until the session has written everything it queued. Else a write
 * after the kill (an answer queued by the read that delivered the message,
 * written later by the engine) could find the peer gone first: EPIPE ends
 * the session with -ECONNRESET and the channel with LC_ESESSION before the
 * reader reaches the cut frame (seen once in six runs of the suite under
 * ctest -j2). */
static bool output_drained(lc_session *s, int timeout_ms)
{
    int64_t end = lc_test_now_us() + (int64_t)timeout_ms * 1000;
    for (;;) {
        pthread_mutex_lock(&s->wmu);
        bool idle = pending_out(s) == 0 && !s->writing;
        pthread_mutex_unlock(&s->wmu);
        if (idle)
            return true;
        if (lc_test_now_us() > end)
            return false;
        struct timespec ts = { 0, 200000 };
        nanosleep(&ts, NULL);
    }
}

static void run_killed(const char *mode, int want1, int want2)
{
    lc_listener *l;
    nt_proc c;
    lc_session *s = accept_peer(mode, &c, &l);
    assert_non_null(nt_proc_line(&c, 10000)); /* everything it will send is sent */
    lc_receiver *r;
    assert_int_equal(lc_session_receiver(s, &r, 5000), 0);
    nt_expect_n(r, 1);

    recv_arg a = { .r = r, .rc = 12345 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, blocked_recv, &a), 0);
    /* the thread is asleep in lc_recv (in the channel, or polling the carrier
     * itself) before the kill */
    if (!lc_test_wait_asleep(&a.tid, 10000)) {
        kill(c.pid, SIGKILL); /* the peer waits to be killed: do not leave it behind */
        fail_msg("%s: the receiving thread did not block in lc_recv within 10 s", mode);
    }
    if (!output_drained(s, 10000)) {
        kill(c.pid, SIGKILL);
        fail_msg("%s: the session's output did not drain within 10 s", mode);
    }
    assert_int_equal(kill(c.pid, SIGKILL), 0);
    int64_t t0 = lc_test_now_us();
    pthread_join(t, NULL);
    int64_t took = lc_test_now_us() - t0;
    if (a.rc != want1 && a.rc != want2)
        fprintf(stderr, "%s: blocked recv got %s (session error: %s)\n", mode, lc_strerror(a.rc),
                lc_strerror(lc_session_error(s)));
    assert_true(a.rc == want1 || a.rc == want2);
    assert_true(took < 2000000);
    int wst = nt_proc_wait(&c);
    assert_true(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL);
    /* the channel stays failed, the session reports why */
    lc_msg *m = NULL;
    assert_true(lc_recv(r, &m, 0) == a.rc);
    int se = lc_session_error(s);
    if (se != want1 && se != want2)
        fprintf(stderr, "%s: session error %s\n", mode, lc_strerror(se));
    assert_true(se == want1 || se == want2);
    lc_receiver *more;
    assert_int_equal(lc_session_receiver(s, &more, 0), LC_ESESSION);
    lc_receiver_release(r);
    lc_session_free(s);
    lc_listener_close(l);
}

/* A DATA frame announced 100 bytes, 10 came, then the process died: the cut
 * is inside a frame, a protocol error. */
static void test_peer_killed_mid_frame(void **st)
{
    LC_TEST_DEADLINE(30);
    run_killed("partial-frame", LC_EPROTO, LC_EPROTO);
}

/* Whole frames, but the last message is cut in half: the carrier ended
 * between frames (a clean end as far as framing goes). */
static void test_peer_killed_mid_message(void **st)
{
    LC_TEST_DEADLINE(30);
    run_killed("partial-msg", LC_ESESSION, LC_ESESSION);
}

/* A libchan process sending 4 KiB messages as fast as it can is killed at
 * some point: we get an unbroken prefix of its sequence, then an error, and
 * never a hang. */
static void test_peer_killed_while_flooding(void **st)
{
    LC_TEST_DEADLINE(30);
    lc_listener *l;
    nt_proc c;
    lc_session *s = accept_peer("flood", &c, &l);
    assert_non_null(nt_proc_line(&c, 10000));
    lc_receiver *r;
    assert_int_equal(lc_session_receiver(s, &r, 5000), 0);
    int64_t next = 0;
    lc_msg *m;
    for (; next < 200; next++) {
        assert_int_equal(lc_recv(r, &m, 5000), 0);
        int64_t seq;
        assert_int_equal(lc_unpack(m, "{s:I, s:s}", "Seq", &seq, "Pad", NULL), 0);
        assert_int_equal(seq, next);
        lc_msg_free(m);
    }
    assert_int_equal(kill(c.pid, SIGKILL), 0);
    int64_t t0 = lc_test_now_us();
    int rc;
    while ((rc = lc_recv(r, &m, 5000)) == 0) {
        int64_t seq;
        assert_int_equal(lc_unpack(m, "{s:I}", "Seq", &seq), 0);
        assert_int_equal(seq, next);
        next++;
        lc_msg_free(m);
    }
    if (rc != LC_ESESSION && rc != LC_EPROTO)
        fprintf(stderr, "flood: after %lld messages: %s\n", (long long)next, lc_strerror(rc));
    /* killed between frames, or inside one (the sender's last write was
     * partial: its socket buffer was full), a cut the test above names */
    assert_true(rc == LC_ESESSION || rc == LC_EPROTO);
    assert_true(lc_test_now_us() - t0 < 3000000);
    int wst = nt_proc_wait(&c);
    assert_true(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL);
    lc_receiver_release(r);
    lc_session_free(s);
    lc_listener_close(l);
}

/* A process calls exit() while its sessions, channels and threads are all
 * still working (what C programs do): it exits with its status, without a
 * crash, a hang or a sanitizer report, and its peer sees the session end. */
static void test_exit_with_live_sessions(void **st)
{
    LC_TEST_DEADLINE(30);
    lc_listener *l;
    nt_proc c;
    lc_session *s = accept_peer("exit-live", &c, &l);
    lc_sender *to;
    assert_int_equal(lc_session_sender(s, &to), 0);
    lc_receiver *from;
    assert_int_equal(lc_session_receiver(s, &from, 10000), 0);
    /* keep both directions busy until the process has gone */
    int rc = 0;
    for (int64_t i = 0; rc == 0; i++) {
        lc_msg *m = lc_pack("{s:I}", "N", i);
        rc = lc_send(to, m, 5000);
        if (rc != 0) {
            lc_msg_free(m);
            break;
        }
        while ((rc = lc_recv(from, &m, 0)) == 0)
            lc_msg_free(m);
        if (rc == LC_ETIMEDOUT)
            rc = 0;
    }
    /* LC_EPROTO too: exit() may come while the peer's output is half
     * written (the rest waiting for room in its socket buffer, both sides
     * flooding), and a frame cut by a dying peer is reported as such (as in
     * test_peer_killed_mid_frame) */
    if (!(rc == LC_ESESSION || rc == LC_ECLOSED || rc == LC_EOF || rc == LC_EPROTO))
        fprintf(stderr, "exit-live: ended with %d (%s), session %d\n", rc, lc_strerror(rc), lc_session_error(s));
    assert_true(rc == LC_ESESSION || rc == LC_ECLOSED || rc == LC_EOF || rc == LC_EPROTO);
    int wst = nt_proc_wait(&c);
    if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0)
        fprintf(stderr, "exit-live: wait status %#x\n", wst);
    assert_true(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    lc_sender_release(to);
    lc_receiver_release(from);
    lc_session_free(s);
    lc_listener_close(l);
}

/* ---- a forked child that uses the library itself ---------------------------- */

/* The child's side: dial, one message, a graceful close. Its exit code says
 * which step failed. */
static int forked_child(const char *url)
{
    lc_session *s;
    lc_error err = { 0 };
    if (lc_dial(url, NULL, &s, &err) != 0)
        return 10;
    lc_sender *snd;
    if (lc_session_sender(s, &snd) != 0)
        return 11;
    lc_msg *m = lc_pack("{s:i}", "N", 42);
    if (lc_send(snd, m, 5000) != 0)
        return 12;
    if (lc_close(snd) != 0)
        return 13;
    if (lc_session_close(s, 5000) != 0)
        return 14;
    lc_sender_release(snd);
    lc_session_free(s);
    return 0;
}

/*
 * A process whose sessions are running forks a child (no exec) that uses
 * the library on its own: the parent's engine thread does not exist in the
 * child, so the library starts a new one there (engine.c,
 * default_after_fork). The child dials the parent, sends a message and
 * closes gracefully; the parent's own session goes on working.
 */
static void test_forked_child_starts_afresh(void **st)
{
    (void)st;
#if defined(__SANITIZE_THREAD__)
    printf("SKIP: TSan ends a child of a multithreaded process that starts threads (die_after_fork)\n");
    skip();
#elif defined(__SANITIZE_ADDRESS__)
    printf("SKIP: ASan's allocator is not fork-safe in this toolchain (see test_msg_value.c)\n");
    skip();
#endif
    LC_TEST_DEADLINE(30);
    char url[128];
    /* the parent's own session, busy before and after the fork */
    nt_pair p;
    nt_open_pair(&p, nt_unix_url(url, sizeof url), NULL, NULL);
    lc_sender *as;
    assert_int_equal(lc_session_sender(p.client, &as), 0);
    assert_int_equal(lc_send(as, lc_pack("{s:i}", "N", 1), 5000), 0);
    lc_receiver *br;
    assert_int_equal(lc_session_receiver(p.server, &br, 5000), 0);
    nt_expect_n(br, 1);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGALRM, SIG_DFL); /* not the test's deadline handler: a stuck child dies */
        alarm(10);
        _exit(forked_child(url));
    }
    lc_session *c;
    assert_int_equal(lc_accept(p.l, &c, 10000), 0);
    lc_receiver *cr;
    assert_int_equal(lc_session_receiver(c, &cr, 10000), 0);
    nt_expect_n(cr, 42);
    assert_int_equal(nt_recv_rc(cr, 10000), LC_EOF);
    lc_receiver_release(cr);
    lc_session_free(c); /* the hang-up the child's close waits for */
    int wst;
    assert_int_equal(waitpid(pid, &wst, 0), pid);
    if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0)
        fprintf(stderr, "forked child: wait status %#x\n", wst);
    assert_true(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    assert_int_equal(lc_send(as, lc_pack("{s:i}", "N", 2), 5000), 0);
    nt_expect_n(br, 2);
    lc_sender_release(as);
    lc_receiver_release(br);
    nt_close_pair(&p);
}

int main(void)
{
    lc__engine_default(); /* its fds live as long as the process */
    nt_filter_from_env();
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_proxy_process_forwards_requests_and_replies, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_proxy_process_over_tcp_both_ways, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_passed_fds_past_the_in_flight_limit, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_dial_when_session_cannot_start, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_peer_killed_mid_frame, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_peer_killed_mid_message, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_peer_killed_while_flooding, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_exit_with_live_sessions, lc_test_setup, lc_test_teardown),
        cmocka_unit_test_setup_teardown(test_forked_child_starts_afresh, lc_test_setup, lc_test_teardown),
    };
    return cmocka_run_group_tests_name("net/session_proc", tests, NULL, NULL);
}
