/*
 * bench_rt_cpu.c - what one request/reply round trip costs in CPU, with no
 * waiting in it: one thread plays both ends of a session (a dialed and an
 * accepted session of this process), so every lc_send finds the carrier idle
 * and writes at once, and every lc_recv finds its bytes already there. The
 * figure is libchan's own work per round trip (two sends, two receives, the
 * packing and unpacking), next to a raw 8-byte ping-pong on a connected pair
 * of the same kind (listen, connect, accept) done by the same thread (two
 * write(2), two read(2)).
 *
 * bench_session's round-trip ratios compare p50 latencies between two
 * processes on this 2-core VM, where the raw baseline's p50 moves between
 * about 2.7 and 4.2 us from run to run while libchan adds a near-constant
 * microsecond: this is that microsecond, measured without the scheduler.
 * The raw turns run in this process beside the sessions' engine threads, so
 * both figures pay what a syscall on an fd costs in a process with more than
 * one thread (the kernel takes a reference on the file each time): a scratch
 * raw ping-pong here ran ~150-200 ns slower per round trip (4 syscalls) with
 * one idle thread beside it, 3 alternating pairs. bench_session's raw
 * servers are single-threaded processes, so that part of its ratios is what
 * any library with an I/O thread pays, not framing or queueing.
 *
 * Modes, each in turns interleaved with the raw ping-pong (best turn kept,
 * for both): reused (one reply channel for every request) and fresh (a reply
 * Sender from lc_pipe in every request, answered with lc_send_last).
 * Printed: wall ns per round trip (= CPU: nothing waits), user ns per round
 * trip (getrusage: the kernel counts it in ticks here, a few ms either way
 * per turn, so read it at the default count), and libchan's extra over raw.
 *
 * Usage: bench_rt_cpu [round trips per turn [unix|tcp]]   (default 100000, both)
 */
#include <libchan.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_MS 10000
#define TURNS 5

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t user_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru); /* (all threads: the engine's are asleep) */
    return (int64_t)ru.ru_utime.tv_sec * 1000000000 + (int64_t)ru.ru_utime.tv_usec * 1000;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_rt_cpu: %s failed: %d (%s)\n", what, rc, rc < 0 ? lc_strerror(rc) : "");
    exit(1);
}

/* A connected pair of the transport's kind, made as sessions make theirs
 * (listen, connect, accept: a socketpair costs less per syscall here), for
 * the raw ping-pong. */
static void raw_pair(bool tcp, int fds[2])
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (tcp) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *a;
    } else {
        struct sockaddr_un *a = (struct sockaddr_un *)&ss;
        a->sun_family = AF_UNIX;
        snprintf(a->sun_path, sizeof a->sun_path, "/tmp/lc-bench-rt-cpu-raw-%d.sock", (int)getpid());
        unlink(a->sun_path);
        len = sizeof *a;
    }
    int l = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&ss, len) != 0 || listen(l, 1) != 0 ||
        getsockname(l, (struct sockaddr *)&ss, &len) != 0)
        die("raw listen", 0);
    fds[0] = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fds[0] < 0 || connect(fds[0], (struct sockaddr *)&ss, len) != 0)
        die("raw connect", 0);
    fds[1] = accept(l, NULL, NULL);
    if (fds[1] < 0)
        die("raw accept", 0);
    close(l);
    if (tcp) {
        int one = 1; /* as a session's carrier */
        setsockopt(fds[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(fds[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    } else {
        unlink(((struct sockaddr_un *)&ss)->sun_path);
    }
}

typedef struct turn {
    double wall, user; /* ns per round trip */
} turn;

static turn raw_turn(const int fds[2], long n)
{
    uint8_t b[8] = { 0 };
    int64_t u0 = user_ns(), t0 = now_ns();
    for (long i = 0; i < n; i++) {
        b[0] = (uint8_t)i;
        if (write(fds[0], b, 8) != 8 || read(fds[1], b, 8) != 8 || write(fds[1], b, 8) != 8 ||
            read(fds[0], b, 8) != 8)
            die("raw ping-pong", 0);
    }
    return (turn){ (double)(now_ns() - t0) / (double)n, (double)(user_ns() - u0) / (double)n };
}

/* The two ends: the client's request Sender and reused reply Receiver, the
 * server's request Receiver and reused reply Sender. */
typedef struct ends {
    lc_listener *l;
    lc_session *cs, *ss;
    lc_sender *req, *rep_s;
    lc_receiver *req_r, *rep_r;
} ends;

/* A channel from session `from` to session `to`, its first message taken. */
static void open_channel(lc_session *from, lc_session *to, lc_sender **tx, lc_receiver **rx, const char *what)
{
    lc_msg *m;
    int rc;
    if ((rc = lc_session_sender(from, tx)) != 0 ||
        (rc = lc_send(*tx, lc_pack("{s:I}", "Value", (int64_t)-1), TIMEOUT_MS)) != 0 ||
        (rc = lc_session_receiver(to, rx, TIMEOUT_MS)) != 0 || (rc = lc_recv(*rx, &m, TIMEOUT_MS)) != 0)
        die(what, rc);
    lc_msg_free(m);
}

static void ends_open(ends *e, bool tcp)
{
    char url[128];
    if (tcp)
        snprintf(url, sizeof url, "tcp://127.0.0.1:0");
    else
        snprintf(url, sizeof url, "unix:///tmp/lc-bench-rt-cpu-%d.sock", (int)getpid());
    lc_error err;
    int rc;
    if ((rc = lc_listen(url, NULL, &e->l, &err)) != 0)
        die(err.text, rc);
    if ((rc = lc_listener_url(e->l, url, sizeof url)) != 0) /* (tcp: the port) */
        die("lc_listener_url", rc);
    if ((rc = lc_dial(url, NULL, &e->cs, &err)) != 0)
        die(err.text, rc);
    if ((rc = lc_accept(e->l, &e->ss, TIMEOUT_MS)) != 0)
        die("lc_accept", rc);
    open_channel(e->cs, e->ss, &e->req, &e->req_r, "opening the request channel");
    open_channel(e->ss, e->cs, &e->rep_s, &e->rep_r, "opening the reply channel");
}

static void ends_close(ends *e)
{
    lc_close(e->req);
    lc_close(e->rep_s);
    lc_sender_release(e->req);
    lc_sender_release(e->rep_s);
    lc_receiver_release(e->req_r);
    lc_receiver_release(e->rep_r);
    lc_session_free(e->cs);
    lc_session_free(e->ss);
    lc_listener_close(e->l);
}

/* n round trips as bench_session's client and server make them */
static turn lc_turn(ends *e, bool fresh, long n)
{
    int64_t u0 = user_ns(), t0 = now_ns();
    for (long i = 0; i < n; i++) {
        lc_receiver *rr = e->rep_r;
        lc_sender *rs = NULL;
        lc_msg *m;
        int rc;
        if (fresh) {
            if ((rc = lc_pipe(&rr, &rs, 1)) != 0)
                die("lc_pipe", rc);
            m = lc_pack("{s:I, s:S}", "Value", (int64_t)i, "Ret", rs);
        } else {
            m = lc_pack("{s:I}", "Value", (int64_t)i);
        }
        if ((rc = lc_send(e->req, m, TIMEOUT_MS)) != 0)
            die("lc_send request", rc);
        if ((rc = lc_recv(e->req_r, &m, TIMEOUT_MS)) != 0) /* the server's side */
            die("lc_recv request", rc);
        int64_t v;
        lc_sender *ret = NULL;
        rc = fresh ? lc_unpack(m, "{s:I, s:S}", "Value", &v, "Ret", &ret) : lc_unpack(m, "{s:I}", "Value", &v);
        lc_msg_free(m);
        if (rc != 0)
            die("lc_unpack request", rc);
        m = lc_pack("{s:I}", "Value", v);
        rc = fresh ? lc_send_last(ret, m, TIMEOUT_MS) : lc_send(e->rep_s, m, TIMEOUT_MS);
        if (rc != 0)
            die("lc_send reply", rc);
        if (fresh)
            lc_sender_release(ret);
        if ((rc = lc_recv(rr, &m, TIMEOUT_MS)) != 0) /* the client's again */
            die("lc_recv reply", rc);
        if (lc_unpack(m, "{s:I}", "Value", &v) != 0 || v != i)
            die("the reply", LC_EPROTO);
        lc_msg_free(m);
        if (fresh)
            lc_receiver_release(rr);
    }
    return (turn){ (double)(now_ns() - t0) / (double)n, (double)(user_ns() - u0) / (double)n };
}

static void keep_best(turn *best, turn t)
{
    if (best->wall == 0 || t.wall < best->wall)
        *best = t;
}

static void bench(bool tcp, long n)
{
    int fds[2];
    raw_pair(tcp, fds);
    ends e;
    ends_open(&e, tcp);
    turn raw = { 0 }, reused = { 0 }, fresh = { 0 };
    lc_turn(&e, false, n / 10); /* settle */
    lc_turn(&e, true, n / 10);
    for (int t = 0; t < TURNS; t++) {
        keep_best(&raw, raw_turn(fds, n));
        keep_best(&reused, lc_turn(&e, false, n));
        keep_best(&fresh, lc_turn(&e, true, n));
    }
    ends_close(&e);
    close(fds[0]);
    close(fds[1]);
    printf("[%s] one thread, both ends, %ld round trips a turn, best of %d turns\n", tcp ? "tcp" : "unix", n, TURNS);
    printf("                               ns/round trip   user ns   libchan's extra over raw\n");
    printf("    raw 8 B ping-pong           %8.0f       %6.0f\n", raw.wall, raw.user);
    printf("    libchan, reused reply chan  %8.0f       %6.0f   %6.0f ns (%.2fx raw)\n", reused.wall, reused.user,
           reused.wall - raw.wall, reused.wall / raw.wall);
    printf("    libchan, fresh, send_last   %8.0f       %6.0f   %6.0f ns (%.2fx raw)\n", fresh.wall, fresh.user,
           fresh.wall - raw.wall, fresh.wall / raw.wall);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    const char *only = argc > 2 ? argv[2] : NULL;
    if (n < 10)
        n = 10;
    if (only == NULL || strcmp(only, "unix") == 0)
        bench(false, n);
    if (only == NULL || strcmp(only, "tcp") == 0)
        bench(true, n);
    return 0;
}
