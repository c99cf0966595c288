/*
 * bench_session.c - sessions between two processes, over unix sockets and
 * TCP (127.0.0.1), each figure printed next to raw-socket baselines measured
 * in the same run, with the ratio:
 *   - one-way msgs/s of SimpleStruct {"Value": i} (lc_pack "{s:I}" per
 *     message, lc_close at the end; the server lc_recv's and lc_unpack's each
 *     one until LC_EOF) vs a raw socket carrying the very same msgpack bytes,
 *     (a) one write() per message and (b) writes batched in 64 KiB buffers;
 *   - request/reply round trip p50/p99 vs a raw 8-byte write/read ping-pong,
 *     blocking and spin-then-poll (libchan's own wait policy; the ratio for
 *     the target uses the better raw p50, as each is bimodal with CPU
 *     placement here): (a) one reused reply channel (the server opens it
 *     once with lc_session_sender), (b) a fresh reply Sender from lc_pipe in
 *     every request, which the server answers on and closes (lc_send, then
 *     lc_close: two frames, two writes), (c) the same answered with
 *     lc_send_last (the reply and the end in one frame, one write); and a
 *     third raw baseline, spinning, whose server makes a second 8-byte
 *     write after each answer, as lc_close adds its FIN: on this VM a write
 *     that lands while the peer's read is in the kernel delays that read,
 *     raw or not (the fresh-reply figure closed by lc_close is printed
 *     against it too); all seven are open at once and measured in 4 turns
 *     of 5000 round trips (each turn after 1000 more to settle),
 *     interleaved, so that a slow phase of the machine falls on the
 *     baselines and on libchan alike;
 *   - CPU ns per one-way message of each process (getrusage, all threads):
 *     on 2 cores the one-way rate is bounded by it;
 *   - bulk byte-stream MB/s (256 MiB at 3 s, scaled with seconds) from the
 *     client to the server through a pipe sent as {"Data": F} with
 *     LC_STREAM_READ: over unix the fd itself is passed (checked on the
 *     server: a FIFO with the inode sent), against a raw pipe between the two
 *     processes; over TCP a sub-stream of DATA frames, against one raw TCP
 *     connection (and the same with a socketpair instead of the pipe, which
 *     the session reads faster, and with a regular file already written);
 *     the raw unix socket is printed too; over
 *     TCP also a raw relay: the same path (socketpair, relay thread, TCP,
 *     relay thread, socketpair) with plain read/write and no framing, what
 *     a byte stream copied through user space can reach at best, and the
 *     same relay reading a pipe (the baseline of a stream read from a
 *     pipe: the pipe hop costs as much as it does under the library); and a raw
 *     pipe between the processes, grown to 256 KiB as the pump grows the
 *     pipe it reads: a pipe's own speed, the first hop of a stream read from
 *     a pipe (its ends in two processes, so on two CPUs when pinned, where
 *     the pump's pipe has both ends on one). Median of
 *     BULK_REPS interleaved runs each. The TCP bulk figures are measured
 *     twice: as the kernel places the threads, and with each process pinned
 *     to its own CPU (client on the first allowed, server on the second, as
 *     iperf3 -A; see bench_bulk for why).
 * The targets of the issue are printed next to the figures. Nothing is
 * asserted.
 *
 * Usage: bench_session [seconds [unix|tcp [oneway|lc-oneway|rt|lc-rt-fresh|lc-rt-fresh-last|lc-rt-fresh-crowd|lc-rt-reused|bulk|lc-bulk|lc-bulk-sp|lc-bulk-file|raw-relay|raw-relay-pipe]]]
 *        seconds: per one-way figure, default 3; the round-trip counts scale
 *        with it (20000 at 3 s). The filters run one part, for profiling.
 *        LC_BENCH_PIN=1 in the environment: the bulk figures pinned only
 *        (with a filter too).
 * Every figure runs against its own server process: fork + exec of this
 * program with the hidden arguments `--server TEST URL FD` (exec: the library's
 * engine thread does not survive a fork). The server writes the URL it
 * listens on (tcp port 0 resolved) and its results as text lines on pipe FD.
 * Timestamps of both processes are CLOCK_MONOTONIC, one clock machine-wide,
 * so one-way rates are N / (server's last receive - client's first send).
 */
#include "libchan.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double g_seconds = 3.0;
static long g_rounds = 20000;   /* measured round trips per latency figure */
enum { WARMUP = 1000, BATCH = 65536, TIMEOUT_MS = 20000 };

/* the targets */
#define TARGET_ONEWAY 8e6   /* msgs/s, unix and tcp (ZeroMQ: about 5.9M here) */
#define TARGET_REUSED 1.3   /* p50 / raw ping-pong p50 */
#define TARGET_FRESH 1.6
#define TARGET_BULK_TCP 0.6 /* byte stream MB/s / raw TCP MB/s */
#define TARGET_BULK_FD 0.9  /* fd-passed stream / raw pipe: "equal", within noise */

/* Pinned bulk figures (bench_bulk): the client's threads on one CPU, the
 * server's (it pins itself before its engine thread starts) on another. */
#define PIN_ENV_SERVER_CPU "LC_BENCH_SERVER_CPU"

typedef struct pinning {
    cpu_set_t orig; /* the process's mask before */
    int client_cpu, server_cpu;
} pinning;

static cpu_set_t one_cpu(int cpu)
{
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return one;
}

/* Every thread of this process (the library's engine thread too) on `set`. */
static void set_all_threads(const cpu_set_t *set)
{
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.')
            sched_setaffinity(atoi(e->d_name), sizeof *set, set);
    closedir(d);
}

/* False (nothing changed) when fewer than 2 CPUs are allowed. */
static bool pin_begin(pinning *p)
{
    if (sched_getaffinity(0, sizeof p->orig, &p->orig) != 0 || CPU_COUNT(&p->orig) < 2)
        return false;
    p->client_cpu = p->server_cpu = -1;
    for (int c = 0; c < CPU_SETSIZE && p->server_cpu < 0; c++)
        if (CPU_ISSET(c, &p->orig)) {
            if (p->client_cpu < 0)
                p->client_cpu = c;
            else
                p->server_cpu = c;
        }
    cpu_set_t one = one_cpu(p->client_cpu);
    set_all_threads(&one);
    char v[16];
    snprintf(v, sizeof v, "%d", p->server_cpu);
    setenv(PIN_ENV_SERVER_CPU, v, 1);
    return true;
}

static void pin_end(pinning *p)
{
    unsetenv(PIN_ENV_SERVER_CPU);
    set_all_threads(&p->orig);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* CPU time of this process, every thread, user + system. */
static int64_t cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 +
           ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

__attribute__((noreturn)) static void die(const char *what, int code)
{
    fprintf(stderr, "bench_session[%d]: %s: %s\n", (int)getpid(), what,
            code < 0 ? lc_strerror(code) : strerror(errno));
    exit(1);
}

/* {"Value": v} as msgpack, exactly as the codec writes it (checked at start):
 * 8 bytes for v < 128, up to 16. */
static size_t enc_simple(uint8_t *p, uint64_t v)
{
    static const uint8_t head[7] = { 0x81, 0xa5, 'V', 'a', 'l', 'u', 'e' };
    memcpy(p, head, 7);
    if (v < 128) {
        p[7] = (uint8_t)v;
        return 8;
    }
    int nb = v < 256 ? 1 : v < 65536 ? 2 : v <= 0xffffffffu ? 4 : 8;
    p[7] = nb == 1 ? 0xcc : nb == 2 ? 0xcd : nb == 4 ? 0xce : 0xcf;
    for (int i = 0; i < nb; i++)
        p[8 + i] = (uint8_t)(v >> (8 * (nb - 1 - i)));
    return 8 + (size_t)nb;
}

static void check_raw_encoding(void)
{
    static const uint64_t vs[] = { 0, 5, 127, 128, 255, 256, 65535, 65536, 1u << 31, 1ull << 40 };
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) {
        lc_msg *m = lc_pack("{s:I}", "Value", (int64_t)vs[i]);
        uint8_t *lib;
        size_t n;
        uint8_t mine[16];
        size_t k = enc_simple(mine, vs[i]);
        if (m == NULL || lc_msgpack_encode(m, &lib, &n) != 0) {
            fprintf(stderr, "bench_session: cannot encode {\"Value\": %" PRIu64 "}\n", vs[i]);
            exit(1);
        }
        if (n != k || memcmp(lib, mine, n) != 0)
            printf("note: raw payload for %" PRIu64 " differs from the codec's (%zu vs %zu bytes)\n", vs[i], k, n);
        free(lib);
        lc_msg_free(m);
    }
}

/*
 * How fast this machine runs user-space code right now: ns to build and free
 * one {"Value": i} in-process (no I/O, no thread). The host behind this VM
 * changes speed from session to session (bench_spdy's inflate: 48 ns one day,
 * 111 the next), which moves the one-way rates and the ratios whose libchan
 * side is mostly user space: compare figures of two runs only at a similar
 * value here.
 */
static double user_space_reference_ns(void)
{
    double best = 0;
    for (int round = 0; round < 5; round++) {
        enum { N = 200000 };
        int64_t t0 = now_ns();
        for (int i = 0; i < N; i++)
            lc_msg_free(lc_pack("{s:I}", "Value", (int64_t)i));
        double ns = (double)(now_ns() - t0) / N;
        if (round == 0 || ns < best)
            best = ns;
    }
    return best;
}

/* ---- raw sockets ------------------------------------------------------------- */

static int parse_tcp(const char *url, struct sockaddr_in *sa)
{
    const char *hp = url + strlen("tcp://");
    const char *colon = strrchr(hp, ':');
    if (colon == NULL)
        return -1;
    char host[64];
    size_t hl = (size_t)(colon - hp);
    if (hl >= sizeof host)
        return -1;
    memcpy(host, hp, hl);
    host[hl] = 0;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static bool is_unix(const char *url)
{
    return strncmp(url, "unix://", 7) == 0;
}

/* Listens on url (unix path or tcp host:port, port 0 allowed); the URL really
 * bound goes to bound. */
static int raw_listen(const char *url, char *bound, size_t blen)
{
    int fd;
    if (is_unix(url)) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", url + 7);
        unlink(sa.sun_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 4) != 0)
            die("raw listen unix", 0);
        snprintf(bound, blen, "%s", url);
    } else {
        struct sockaddr_in sa;
        if (parse_tcp(url, &sa) != 0)
            die("bad tcp url", LC_EINVAL);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 4) != 0)
            die("raw listen tcp", 0);
        socklen_t sl = sizeof sa;
        getsockname(fd, (struct sockaddr *)&sa, &sl);
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
        snprintf(bound, blen, "tcp://%s:%d", ip, ntohs(sa.sin_port));
    }
    return fd;
}

/* TCP_NODELAY as the library's tcp transport sets it. */
static void raw_nodelay(int fd, const char *url)
{
    int one = 1;
    if (!is_unix(url))
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int raw_accept(int lfd, const char *url)
{
    struct pollfd p = { lfd, POLLIN, 0 };
    if (poll(&p, 1, TIMEOUT_MS) != 1)
        die("raw accept timed out", LC_ETIMEDOUT);
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        die("raw accept", 0);
    raw_nodelay(fd, url);
    close(lfd);
    if (is_unix(url))
        unlink(url + 7);
    return fd;
}

static int raw_dial(const char *url)
{
    int fd;
    if (is_unix(url)) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", url + 7);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
            die("raw connect unix", 0);
    } else {
        struct sockaddr_in sa;
        if (parse_tcp(url, &sa) != 0)
            die("bad tcp url", LC_EINVAL);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
            die("raw connect tcp", 0);
    }
    raw_nodelay(fd, url);
    return fd;
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("raw write", 0);
        p += w;
        n -= (size_t)w;
    }
}

/* Spin-then-block, the policy of libchan's channel waits (LC_SPIN_NS, 10 us
 * in src/core/chan.c): nonblocking reads for up to 10 us, then poll(). */
#define RAW_SPIN_NS 10000

static bool read_all_spin(int fd, uint8_t *p, size_t n)
{
    int64_t spin_until = 0;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EINTR))
            return false;
        int64_t t = now_ns();
        if (spin_until == 0)
            spin_until = t + RAW_SPIN_NS;
        if (t >= spin_until) {
            struct pollfd pf = { fd, POLLIN, 0 };
            poll(&pf, 1, -1);
        }
    }
    return true;
}

static bool read_all(int fd, uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        p += r;
        n -= (size_t)r;
    }
    return true;
}

/* ---- the server process -------------------------------------------------------- */

static int g_report = -1; /* the pipe to the client */

static void report(const char *line)
{
    if (write(g_report, line, strlen(line)) < 0)
        exit(1);
}

/* Reads fd to EOF in 64 KiB read()s (blocking, or poll() when it is
 * nonblocking); returns the bytes read, with the times of the first and the
 * last read. */
static uint64_t drain_fd(int fd, int64_t *first, int64_t *last)
{
    static uint8_t buf[BATCH];
    uint64_t bytes = 0;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EAGAIN) {
            struct pollfd p = { fd, POLLIN, 0 };
            if (poll(&p, 1, TIMEOUT_MS) != 1)
                break;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        *last = now_ns();
        if (bytes == 0)
            *first = *last;
        bytes += (uint64_t)r;
    }
    return bytes;
}

/* A raw server's start: listens on url, reports where, accepts one. */
static int raw_serve_one(const char *url)
{
    char bound[256], line[320];
    int lfd = raw_listen(url, bound, sizeof bound);
    snprintf(line, sizeof line, "URL %s\n", bound);
    report(line);
    return raw_accept(lfd, url);
}

static void srv_raw_oneway(const char *url)
{
    char line[320];
    int fd = raw_serve_one(url);
    int64_t cpu0 = cpu_ns();
    int64_t first = 0, last = 0;
    uint64_t bytes = drain_fd(fd, &first, &last);
    snprintf(line, sizeof line, "RES %" PRIu64 " %" PRId64 " %" PRId64 " %" PRId64 "\n", bytes, first, last,
             cpu_ns() - cpu0);
    report(line);
    close(fd);
}

/* The raw relay: what a byte stream's path is without framing or a
 * library. Each process has an application thread and a relay thread
 * between a socketpair and the connection, copying 64 KiB read()s with
 * blocking write()s. */
typedef struct relay {
    int from, to; /* to: a socket, shut down for writing at EOF */
} relay;

static void *relay_fn(void *x)
{
    relay *r = x;
    static _Thread_local uint8_t buf[BATCH];
    for (;;) {
        ssize_t n = read(r->from, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        write_all(r->to, buf, (size_t)n);
    }
    shutdown(r->to, SHUT_WR);
    return NULL;
}

static void srv_raw_relay(const char *url)
{
    char line[320];
    int fd = raw_serve_one(url);
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0)
        die("socketpair", 0);
    int64_t cpu0 = cpu_ns();
    relay r = { fd, sp[1] };
    pthread_t t;
    if (pthread_create(&t, NULL, relay_fn, &r) != 0)
        die("pthread_create", 0);
    int64_t first = 0, last = 0;
    uint64_t bytes = drain_fd(sp[0], &first, &last);
    pthread_join(t, NULL);
    snprintf(line, sizeof line, "RES %" PRIu64 " %" PRId64 " %" PRId64 " %" PRId64 "\n", bytes, first, last,
             cpu_ns() - cpu0);
    report(line);
    close(sp[0]);
    close(sp[1]);
    close(fd);
}

/* end: after each answer, a second write of 8 bytes (what lc_close adds to
 * a reply: its FIN, a frame of its own) */
static void srv_raw_pingpong(const char *url, bool spin, bool end)
{
    char line[320];
    int fd = raw_serve_one(url);
    if (spin)
        fcntl(fd, F_SETFL, O_NONBLOCK);
    uint8_t b[8];
    long n = 0;
    while (spin ? read_all_spin(fd, b, sizeof b) : read_all(fd, b, sizeof b)) {
        write_all(fd, b, sizeof b);
        if (end)
            write_all(fd, (const uint8_t[8]){ 0, 0, 0, 1, 1, 0, 0, 0 }, 8); /* a FIN on stream 1 */
        n++;
    }
    snprintf(line, sizeof line, "RES %ld\n", n);
    report(line);
    close(fd);
}

/* Listens with the library, reports the URL, accepts one session. */
static lc_session *srv_session(const char *url)
{
    lc_listener *l;
    lc_error err = { 0 };
    int rc = lc_listen(url, NULL, &l, &err);
    if (rc != 0)
        die(err.text[0] ? err.text : "lc_listen", rc);
    char bound[256], line[320];
    if ((rc = lc_listener_url(l, bound, sizeof bound)) != 0)
        die("lc_listener_url", rc);
    snprintf(line, sizeof line, "URL %s\n", bound);
    report(line);
    lc_session *s;
    if ((rc = lc_accept(l, &s, TIMEOUT_MS)) != 0)
        die("lc_accept", rc);
    lc_listener_close(l); /* removes the unix socket file */
    return s;
}

static void srv_done(lc_session *s)
{
    /* the client closes first; whatever we still owe goes out, then we end */
    lc_session_close(s, 2000);
    lc_session_free(s);
}

static void srv_lc_oneway(const char *url)
{
    lc_session *s = srv_session(url);
    lc_receiver *r;
    int rc = lc_session_receiver(s, &r, TIMEOUT_MS);
    if (rc != 0)
        die("lc_session_receiver", rc);
    int64_t count = 0, bad = 0, first = 0, cpu0 = cpu_ns();
    lc_msg *m;
    while ((rc = lc_recv(r, &m, TIMEOUT_MS)) == 0) {
        if (count == 0)
            first = now_ns();
        int64_t v;
        if (lc_unpack(m, "{s:I}", "Value", &v) != 0 || v != count)
            bad++;
        lc_msg_free(m);
        count++;
    }
    /* LC_EOF comes right behind the last message: the client's lc_close
     * follows its last lc_send at once */
    int64_t last = now_ns();
    char line[200];
    snprintf(line, sizeof line, "RES %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 " %d %" PRId64 "\n", count, first,
             last, bad, rc == LC_EOF ? 0 : rc, cpu_ns() - cpu0);
    report(line);
    lc_receiver_release(r);
    srv_done(s);
}

/* The reply channel of a round trip: one reused, or a fresh one in each
 * request that the server closes after its reply, apart or with it. */
typedef enum { RT_REUSED, RT_FRESH, RT_FRESH_LAST, RT_FRESH_CROWD } rt_mode;

static const struct {
    const char *test;  /* the server's test name, and the filter argument */
    const char *label; /* in the profiling line */
} rt_modes[] = {
    [RT_REUSED] = { "lc-rt-reused", "reused-reply" },
    [RT_FRESH] = { "lc-rt-fresh", "fresh-reply" },
    [RT_FRESH_LAST] = { "lc-rt-fresh-last", "fresh-reply (lc_send_last)" },
    [RT_FRESH_CROWD] = { "lc-rt-fresh-crowd", "fresh-reply beside many open channels" },
};

static const char *rt_test_name(rt_mode mode)
{
    return rt_modes[mode].test;
}

static void srv_lc_rt(const char *url, rt_mode mode)
{
    bool fresh = mode != RT_REUSED;
    lc_session *s = srv_session(url);
    lc_receiver *req;
    int rc = lc_session_receiver(s, &req, TIMEOUT_MS);
    if (rc != 0)
        die("lc_session_receiver", rc);
    lc_sender *rep = NULL;
    if (!fresh && (rc = lc_session_sender(s, &rep)) != 0) /* the one reply channel */
        die("lc_session_sender", rc);
    long handled = 0, bad = 0;
    lc_msg *m;
    while ((rc = lc_recv(req, &m, TIMEOUT_MS)) == 0) {
        int64_t v;
        lc_sender *ret = NULL;
        if (fresh)
            rc = lc_unpack(m, "{s:I, s:S}", "Value", &v, "Ret", &ret);
        else
            rc = lc_unpack(m, "{s:I}", "Value", &v);
        lc_msg_free(m);
        if (rc != 0) {
            bad++;
            continue;
        }
        lc_msg *out = lc_pack("{s:I}", "Value", v);
        rc = mode == RT_FRESH_LAST ? lc_send_last(ret, out, TIMEOUT_MS) : lc_send(fresh ? ret : rep, out, TIMEOUT_MS);
        if (rc != 0) {
            lc_msg_free(out);
            bad++;
        }
        if (fresh) {
            if (mode == RT_FRESH)
                lc_close(ret);
            lc_sender_release(ret);
        }
        handled++;
    }
    if (rep) {
        lc_close(rep);
        lc_sender_release(rep);
    }
    char line[200];
    snprintf(line, sizeof line, "RES %ld %ld %d\n", handled, bad, rc == LC_EOF ? 0 : rc);
    report(line);
    lc_receiver_release(req);
    srv_done(s);
}

/* Bulk bytes through a pipe the client created before starting us, inherited
 * as fd N (url "fd://N"): the raw baseline of a passed pipe. */
static void srv_raw_pipe(const char *url)
{
    char line[320];
    snprintf(line, sizeof line, "URL %s\n", url);
    report(line);
    int fd = atoi(url + strlen("fd://"));
    int64_t cpu0 = cpu_ns(), first = 0, last = 0;
    uint64_t bytes = drain_fd(fd, &first, &last);
    snprintf(line, sizeof line, "RES %" PRIu64 " %" PRId64 " %" PRId64 " %" PRId64 "\n", bytes, first, last,
             cpu_ns() - cpu0);
    report(line);
    close(fd);
}

/* Bulk bytes through a byte stream: we open a channel and send {"Ready": 1}
 * first (once the client has received it, it has read our SETTINGS, so on
 * unix it may pass fds), then receive {"Data": F, "Ino": U, "Dev": U} and
 * read the fd to EOF. Reports the bytes, the read window, our CPU, what the
 * fd is (fifo: the client's pipe itself, sock: the end of a socketpair the
 * session pumps), whether it is the very file the client sent (inode and
 * device), the stream's mode and whether the fd came nonblocking. */
static void srv_lc_bulk(const char *url)
{
    lc_session *s = srv_session(url);
    lc_sender *ready;
    int rc = lc_session_sender(s, &ready);
    if (rc != 0)
        die("lc_session_sender", rc);
    lc_msg *m = lc_pack("{s:i}", "Ready", 1);
    if (m == NULL || (rc = lc_send(ready, m, TIMEOUT_MS)) != 0)
        die("lc_send ready", rc);
    lc_receiver *r;
    if ((rc = lc_session_receiver(s, &r, TIMEOUT_MS)) != 0)
        die("lc_session_receiver", rc);
    if ((rc = lc_recv(r, &m, TIMEOUT_MS)) != 0)
        die("lc_recv bulk request", rc);
    lc_value *dv = lc_map_get(lc_msg_root(m), "Data");
    int mode = dv != NULL && lc_value_type(dv) == LC_STREAM ? (int)lc_value_stream_mode(dv) : -1;
    int fd = -1;
    uint64_t ino = 0, dev = 0;
    if ((rc = lc_unpack(m, "{s:F, s:U, s:U}", "Data", &fd, "Ino", &ino, "Dev", &dev)) != 0)
        die("lc_unpack bulk request", rc);
    lc_msg_free(m);
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("fstat stream fd", 0);
    const char *kind = S_ISFIFO(st.st_mode) ? "fifo" : S_ISSOCK(st.st_mode) ? "sock" : "other";
    int same = (uint64_t)st.st_ino == ino && (uint64_t)st.st_dev == dev;
    int fl = fcntl(fd, F_GETFL);
    int nonblock = fl >= 0 && (fl & O_NONBLOCK) != 0;
    if (nonblock) /* read it as the raw baselines do: blocking */
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    int64_t cpu0 = cpu_ns(), first = 0, last = 0;
    uint64_t bytes = drain_fd(fd, &first, &last);
    int64_t cpu = cpu_ns() - cpu0;
    close(fd);
    char line[320];
    snprintf(line, sizeof line, "RES %" PRIu64 " %" PRId64 " %" PRId64 " %" PRId64 " %s %d %d %d\n", bytes, first,
             last, cpu, kind, same, mode, nonblock);
    report(line);
    /* the client closes its channel once it has our result */
    if ((rc = lc_recv(r, &m, TIMEOUT_MS)) == 0)
        lc_msg_free(m);
    lc_receiver_release(r);
    lc_close(ready);
    lc_sender_release(ready);
    srv_done(s);
}

static int server_main(const char *test, const char *url, int fd)
{
    g_report = fd;
    const char *cpu = getenv(PIN_ENV_SERVER_CPU);
    if (cpu != NULL) {
        /* before anything starts a thread: the engine's inherits it */
        cpu_set_t one = one_cpu(atoi(cpu));
        if (sched_setaffinity(0, sizeof one, &one) != 0)
            die("sched_setaffinity (server)", 0);
    }
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(test, "raw-oneway") == 0)
        srv_raw_oneway(url);
    else if (strcmp(test, "raw-pingpong") == 0)
        srv_raw_pingpong(url, false, false);
    else if (strcmp(test, "raw-pingpong-spin") == 0)
        srv_raw_pingpong(url, true, false);
    else if (strcmp(test, "raw-pingpong-spin-end") == 0)
        srv_raw_pingpong(url, true, true);
    else if (strcmp(test, "lc-oneway") == 0)
        srv_lc_oneway(url);
    else if (strcmp(test, rt_test_name(RT_REUSED)) == 0)
        srv_lc_rt(url, RT_REUSED);
    else if (strcmp(test, rt_test_name(RT_FRESH)) == 0)
        srv_lc_rt(url, RT_FRESH);
    else if (strcmp(test, rt_test_name(RT_FRESH_LAST)) == 0)
        srv_lc_rt(url, RT_FRESH_LAST);
    else if (strcmp(test, rt_test_name(RT_FRESH_CROWD)) == 0)
        srv_lc_rt(url, RT_FRESH_CROWD); /* (it never accepts the crowd's channels) */
    else if (strcmp(test, "raw-pipe") == 0)
        srv_raw_pipe(url);
    else if (strcmp(test, "raw-relay") == 0)
        srv_raw_relay(url);
    else if (strcmp(test, "lc-bulk") == 0)
        srv_lc_bulk(url);
    else
        return 2;
    close(fd);
    return 0;
}

/* ---- the client: spawning and talking to a server ------------------------------ */

typedef struct server {
    pid_t pid;
    int fd;          /* read end of its report pipe */
    char url[256];   /* where it listens */
    char path[128];  /* unix socket file, removed at the end whatever happens */
} server;

static int g_seq;

/* Reads one line from the server (without the newline); false on timeout/EOF. */
static bool read_line(server *sv, char *buf, size_t len)
{
    size_t n = 0;
    while (n + 1 < len) {
        struct pollfd p = { sv->fd, POLLIN, 0 };
        if (poll(&p, 1, TIMEOUT_MS) != 1)
            return false;
        char c;
        ssize_t r = read(sv->fd, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r != 1)
            return false;
        if (c == '\n')
            break;
        buf[n++] = c;
    }
    buf[n] = 0;
    return true;
}

/* transport "unix" or "tcp"; or pass_fd >= 0: the server inherits that fd
 * (its URL is "fd://N") */
static void server_start_fd(server *sv, const char *test, const char *transport, int pass_fd)
{
    memset(sv, 0, sizeof *sv);
    char url[256];
    if (pass_fd >= 0) {
        snprintf(url, sizeof url, "fd://%d", pass_fd);
    } else if (strcmp(transport, "unix") == 0) {
        snprintf(sv->path, sizeof sv->path, "/tmp/lc-bench-%d-%d.sock", (int)getpid(), g_seq++);
        snprintf(url, sizeof url, "unix://%s", sv->path);
    } else {
        snprintf(url, sizeof url, "tcp://127.0.0.1:0");
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        die("pipe", 0);
    char fdarg[16];
    snprintf(fdarg, sizeof fdarg, "%d", p[1]);
    pid_t pid = fork();
    if (pid < 0)
        die("fork", 0);
    if (pid == 0) {
        /* async-signal-safe calls only until exec: the parent has threads */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        fcntl(p[1], F_SETFD, 0);
        if (pass_fd >= 0)
            fcntl(pass_fd, F_SETFD, 0);
        char *argv[] = { "bench_session", "--server", (char *)test, url, fdarg, NULL };
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(p[1]);
    sv->pid = pid;
    sv->fd = p[0];
    char line[320];
    if (!read_line(sv, line, sizeof line) || strncmp(line, "URL ", 4) != 0) {
        fprintf(stderr, "bench_session: server %s did not start\n", test);
        exit(1);
    }
    if (strlen(line + 4) >= sizeof sv->url) {
        fprintf(stderr, "bench_session: server URL too long\n");
        exit(1);
    }
    memcpy(sv->url, line + 4, strlen(line + 4) + 1);
}

static void server_start(server *sv, const char *test, const char *transport)
{
    server_start_fd(sv, test, transport, -1);
}

/* Waits for the server's exit (killing it after a grace period): no zombie,
 * no socket file left. */
static void server_end(server *sv)
{
    int status = 0;
    int64_t deadline = now_ns() + 10 * 1000000000ll;
    for (;;) {
        pid_t r = waitpid(sv->pid, &status, WNOHANG);
        if (r == sv->pid)
            break;
        if (r < 0 && errno != EINTR)
            break;
        if (now_ns() > deadline) {
            fprintf(stderr, "bench_session: server %d does not exit, killing it\n", (int)sv->pid);
            kill(sv->pid, SIGKILL);
            waitpid(sv->pid, &status, 0);
            break;
        }
        usleep(1000);
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
        fprintf(stderr, "bench_session: server exited with status %d\n", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        fprintf(stderr, "bench_session: server killed by signal %d\n", WTERMSIG(status));
    close(sv->fd);
    if (sv->path[0])
        unlink(sv->path);
}

static void expect_result(server *sv, char *line, size_t len)
{
    if (!read_line(sv, line, len) || strncmp(line, "RES ", 4) != 0) {
        fprintf(stderr, "bench_session: no result from the server\n");
        exit(1);
    }
}

static lc_session *client_session(const char *url)
{
    lc_session *s;
    lc_error err = { 0 };
    int rc = lc_dial(url, NULL, &s, &err);
    if (rc != 0)
        die(err.text[0] ? err.text : "lc_dial", rc);
    return s;
}

static void client_done(lc_session *s)
{
    lc_session_close(s, 2000);
    lc_session_free(s);
}

/* ---- one-way -------------------------------------------------------------------- */

typedef struct oneway {
    double rate;        /* msgs / (server's last receive - our first send) */
    double srv_rate;    /* msgs over the server's own receive window */
    double avg_bytes;   /* payload bytes per message */
    double cli_cpu, srv_cpu; /* CPU ns per message, all threads of each process */
    bool ok;            /* everything arrived, in order */
} oneway;

/* batch = false: one write() per message; true: 64 KiB buffers. */
static oneway raw_oneway(const char *transport, bool batch)
{
    server sv;
    server_start(&sv, "raw-oneway", transport);
    int fd = raw_dial(sv.url);
    static uint8_t buf[BATCH];
    size_t used = 0;
    uint64_t i = 0, bytes = 0;
    int64_t cpu0 = cpu_ns();
    int64_t t0 = now_ns(), stop = t0 + (int64_t)(g_seconds * 1e9);
    do {
        for (int k = 0; k < 1024; k++, i++) {
            if (batch) {
                if (used + 16 > sizeof buf) {
                    write_all(fd, buf, used);
                    used = 0;
                }
                size_t n = enc_simple(buf + used, i);
                used += n;
                bytes += n;
            } else {
                uint8_t b[16];
                size_t n = enc_simple(b, i);
                write_all(fd, b, n);
                bytes += n;
            }
        }
    } while (now_ns() < stop);
    if (used)
        write_all(fd, buf, used);
    shutdown(fd, SHUT_WR);
    char line[320];
    expect_result(&sv, line, sizeof line);
    int64_t cpu = cpu_ns() - cpu0;
    uint64_t got;
    int64_t first, last, scpu;
    oneway o = { 0 };
    if (sscanf(line + 4, "%" SCNu64 " %" SCNd64 " %" SCNd64 " %" SCNd64, &got, &first, &last, &scpu) == 4) {
        o.cli_cpu = (double)cpu / (double)i;
        o.srv_cpu = (double)scpu / (double)i;
        o.ok = got == bytes;
        o.rate = (double)i / ((double)(last - t0) * 1e-9);
        o.srv_rate = (double)i / ((double)(last - first) * 1e-9);
        o.avg_bytes = (double)bytes / (double)i;
    }
    close(fd);
    server_end(&sv);
    return o;
}

static oneway lc_oneway(const char *transport)
{
    server sv;
    server_start(&sv, "lc-oneway", transport);
    lc_session *s = client_session(sv.url);
    lc_sender *snd;
    int rc = lc_session_sender(s, &snd);
    if (rc != 0)
        die("lc_session_sender", rc);
    int64_t i = 0;
    double bytes = 0;
    int64_t cpu0 = cpu_ns();
    int64_t t0 = now_ns(), stop = t0 + (int64_t)(g_seconds * 1e9);
    do {
        for (int k = 0; k < 1024; k++, i++) {
            lc_msg *m = lc_pack("{s:I}", "Value", i);
            if (m == NULL || (rc = lc_send(snd, m, TIMEOUT_MS)) != 0)
                die("lc_send", rc);
        }
        uint8_t tmp[16];
        bytes += 1024.0 * (double)enc_simple(tmp, (uint64_t)i - 1); /* close enough per block */
    } while (now_ns() < stop);
    if ((rc = lc_close(snd)) != 0)
        die("lc_close", rc);
    char line[320];
    expect_result(&sv, line, sizeof line);
    int64_t cpu = cpu_ns() - cpu0;
    int64_t got, first, last, bad, scpu;
    int err;
    oneway o = { 0 };
    if (sscanf(line + 4, "%" SCNd64 " %" SCNd64 " %" SCNd64 " %" SCNd64 " %d %" SCNd64, &got, &first, &last, &bad,
               &err, &scpu) == 6) {
        o.cli_cpu = (double)cpu / (double)i;
        o.srv_cpu = (double)scpu / (double)i;
        o.ok = got == i && bad == 0 && err == 0;
        if (!o.ok)
            fprintf(stderr, "bench_session: lc one-way: sent %" PRId64 ", server got %" PRId64
                            " (%" PRId64 " out of order), end %s\n",
                    i, got, bad, err ? lc_strerror(err) : "EOF");
        o.rate = (double)i / ((double)(last - t0) * 1e-9);
        o.srv_rate = (double)i / ((double)(last - first) * 1e-9);
        o.avg_bytes = bytes / (double)i;
    }
    lc_sender_release(snd);
    client_done(s);
    server_end(&sv);
    return o;
}

/* ---- round trips ------------------------------------------------------------------ */

typedef struct lat {
    double p50, p99, mean; /* microseconds */
    bool ok;
} lat;

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static lat summarize(int64_t *ns, long n)
{
    lat l = { 0 };
    qsort(ns, (size_t)n, sizeof *ns, cmp_i64);
    double sum = 0;
    for (long k = 0; k < n; k++)
        sum += (double)ns[k];
    l.p50 = (double)ns[n / 2] / 1e3;
    l.p99 = (double)ns[(long)((double)(n - 1) * 0.99)] / 1e3;
    l.mean = sum / (double)n / 1e3;
    return l;
}

/*
 * One round-trip figure: a raw ping-pong (blocking, or spin 10 us then
 * poll on both sides) or libchan in one rt_mode, against its own server.
 * All of them are open at once and measured in turns (rt_chunk), so that
 * the raw baselines and libchan see the same phases of this shared machine:
 * measured one after the other, a slow phase during one figure moved the
 * ratios by 0.2-0.4x between runs.
 */
typedef struct rt_fig {
    bool lc, spin;
    bool end; /* raw, spin: the server writes 8 more bytes after each answer */
    rt_mode mode;
    server sv;
    int fd;              /* raw */
    lc_session *s;       /* libchan */
    lc_sender *req;
    lc_receiver *rep;    /* the reused reply channel */
    lc_sender **crowd;   /* RT_FRESH_CROWD: channels open beside the requests */
    int64_t *ns;
    long measured, sent; /* rounds kept; rounds done (warm-ups too) */
    bool ok;
} rt_fig;

static void rt_rounds(rt_fig *f, long warm, long count);

/* open channels beside the requests in RT_FRESH_CROWD */
enum { CROWD = 10000 };

static void rt_open(rt_fig *f, const char *transport)
{
    f->ns = malloc((size_t)g_rounds * sizeof *f->ns);
    f->ok = f->ns != NULL;
    if (!f->lc) {
        server_start(&f->sv, f->end ? "raw-pingpong-spin-end" : f->spin ? "raw-pingpong-spin" : "raw-pingpong",
                     transport);
        f->fd = raw_dial(f->sv.url);
        if (f->spin)
            fcntl(f->fd, F_SETFL, O_NONBLOCK); /* 8-byte writes never hit a full buffer here */
        return;
    }
    server_start(&f->sv, rt_test_name(f->mode), transport);
    f->s = client_session(f->sv.url);
    int rc = lc_session_sender(f->s, &f->req);
    if (rc != 0)
        die("lc_session_sender", rc);
    if (f->mode == RT_REUSED && (rc = lc_session_receiver(f->s, &f->rep, TIMEOUT_MS)) != 0)
        die("lc_session_receiver", rc); /* the server's reply channel */
    if (f->mode == RT_FRESH_CROWD) {
        rt_rounds(f, 1, 0); /* the request channel is the server's first */
        f->crowd = calloc(CROWD, sizeof *f->crowd);
        for (int i = 0; i < CROWD; i++)
            if (f->crowd == NULL || (rc = lc_session_sender(f->s, &f->crowd[i])) != 0 ||
                (rc = lc_send(f->crowd[i], lc_pack("{s:i}", "Idle", i), TIMEOUT_MS)) != 0)
                die("a crowd channel", rc);
    }
}

/* `warm` rounds not kept, then `count` kept. */
static void rt_rounds(rt_fig *f, long warm, long count)
{
    bool fresh = f->mode != RT_REUSED; /* (the client does the same for both fresh modes) */
    for (long k = -warm; k < count && f->ok; k++, f->sent++) {
        int64_t t0, t1;
        if (!f->lc) {
            uint8_t b[16], back[16];
            enc_simple(b, (uint64_t)(f->sent & 127)); /* 8 bytes */
            /* end: the 8 bytes written after the last answer come first (as
             * libchan's client reads a FIN that came after the reply it took
             * while it waits for the next one) */
            size_t skip = f->end && f->sent > 0 ? 8 : 0;
            t0 = now_ns();
            write_all(f->fd, b, 8);
            f->ok = (f->spin ? read_all_spin(f->fd, back, skip + 8) : read_all(f->fd, back, 8)) &&
                    memcmp(b, back + skip, 8) == 0;
            t1 = now_ns();
        } else {
            int64_t i = f->sent;
            int rc;
            t0 = now_ns();
            lc_receiver *rr = f->rep;
            lc_msg *m;
            if (fresh) {
                lc_sender *rs;
                if ((rc = lc_pipe(&rr, &rs, 1)) != 0)
                    die("lc_pipe", rc);
                m = lc_pack("{s:I, s:S}", "Value", i, "Ret", rs);
            } else {
                m = lc_pack("{s:I}", "Value", i);
            }
            if (m == NULL || (rc = lc_send(f->req, m, TIMEOUT_MS)) != 0)
                die("lc_send", rc);
            lc_msg *r;
            if ((rc = lc_recv(rr, &r, TIMEOUT_MS)) != 0)
                die("lc_recv reply", rc);
            t1 = now_ns();
            int64_t v;
            f->ok = lc_unpack(r, "{s:I}", "Value", &v) == 0 && v == i;
            lc_msg_free(r);
            if (fresh)
                lc_receiver_release(rr); /* not waiting for the server's close of Ret */
        }
        if (k >= 0 && f->measured < g_rounds)
            f->ns[f->measured++] = t1 - t0;
    }
}

static lat rt_close(rt_fig *f)
{
    char line[320];
    long handled = 0, bad = 0;
    int err = 0;
    if (!f->lc) {
        shutdown(f->fd, SHUT_WR);
        expect_result(&f->sv, line, sizeof line);
        handled = atol(line + 4);
        close(f->fd);
    } else {
        for (int i = 0; f->crowd != NULL && i < CROWD; i++)
            lc_sender_release(f->crowd[i]); /* (ends it) */
        free(f->crowd);
        lc_close(f->req);
        expect_result(&f->sv, line, sizeof line);
        sscanf(line + 4, "%ld %ld %d", &handled, &bad, &err);
        lc_sender_release(f->req);
        lc_receiver_release(f->rep);
        client_done(f->s);
    }
    server_end(&f->sv);
    lat l = { 0 };
    if (f->measured > 0)
        l = summarize(f->ns, f->measured);
    l.ok = f->ok && f->measured == g_rounds && handled == f->sent && bad == 0 && err == 0;
    free(f->ns);
    return l;
}

static uint64_t g_bulk_bytes = 256ull << 20;

typedef struct bulk {
    double mbps;             /* 10^6 bytes per second */
    double cli_cpu, srv_cpu; /* CPU us per MiB, all threads of each process */
    bool ok;                 /* every byte arrived */
    char kind[8];            /* lc: what the server got: fifo, sock, other */
    bool same;               /* lc: the very file we sent (inode, device) */
    int mode;                /* lc: the stream's mode as received */
    bool nonblock;           /* lc: the fd came O_NONBLOCK */
} bulk;

static uint8_t g_chunk[BATCH];

static void write_bulk(int fd)
{
    for (uint64_t sent = 0; sent < g_bulk_bytes; sent += sizeof g_chunk)
        write_all(fd, g_chunk, sizeof g_chunk);
}

/* "RES bytes first last cpu ..." into b; the rest of the line is returned. */
static const char *bulk_result(server *sv, bulk *b, int64_t t0, int64_t cpu0, char *line, size_t len)
{
    expect_result(sv, line, len);
    int64_t cpu = cpu_ns() - cpu0;
    uint64_t got;
    int64_t first, last, scpu;
    int used = 0;
    if (sscanf(line + 4, "%" SCNu64 " %" SCNd64 " %" SCNd64 " %" SCNd64 "%n", &got, &first, &last, &scpu, &used) <
        4) {
        fprintf(stderr, "bench_session: bad bulk result: %s\n", line);
        exit(1);
    }
    double mib = (double)g_bulk_bytes / (1 << 20);
    b->ok = got == g_bulk_bytes;
    if (!b->ok)
        fprintf(stderr, "bench_session: bulk: sent %" PRIu64 " bytes, server got %" PRIu64 "\n", g_bulk_bytes, got);
    b->mbps = (double)got / ((double)(last - t0) * 1e-9) / 1e6;
    b->cli_cpu = (double)cpu / 1e3 / mib;
    b->srv_cpu = (double)scpu / 1e3 / mib;
    return line + 4 + used;
}

/* One raw unix or TCP connection (the raw-oneway server). */
static bulk raw_bulk(const char *transport)
{
    server sv;
    server_start(&sv, "raw-oneway", transport);
    int fd = raw_dial(sv.url);
    int64_t cpu0 = cpu_ns(), t0 = now_ns();
    write_bulk(fd);
    shutdown(fd, SHUT_WR);
    bulk b = { 0 };
    char line[320];
    bulk_result(&sv, &b, t0, cpu0, line, sizeof line);
    close(fd);
    server_end(&sv);
    return b;
}

/* The capacity a byte stream's pump gives the pipe it reads (bytes.c
 * PIPE_GROW_SIZE); F_SETPIPE_SZ is refused past the user's limit, which
 * leaves the default (said below). */
#define GROWN_PIPE (256 << 10)

/* A pipe between the two processes: what a passed pipe end is. grown: with
 * GROWN_PIPE of capacity: the pipe hop of a stream read from a pipe. */
static bulk raw_pipe_bulk(bool grown)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        die("pipe", 0);
    if (grown)
        fcntl(p[1], F_SETPIPE_SZ, GROWN_PIPE);
    server sv;
    server_start_fd(&sv, "raw-pipe", "pipe", p[0]);
    close(p[0]);
    int64_t cpu0 = cpu_ns(), t0 = now_ns();
    write_bulk(p[1]);
    close(p[1]);
    bulk b = { 0 };
    char line[320];
    bulk_result(&sv, &b, t0, cpu0, line, sizeof line);
    server_end(&sv);
    return b;
}

/* The raw relay (srv_raw_relay): the application writes into a socketpair,
 * or into a pipe of GROWN_PIPE, and a relay thread copies it onto the
 * connection. */
static bulk raw_relay_bulk(const char *transport, bool from_pipe)
{
    server sv;
    server_start(&sv, "raw-relay", transport);
    int fd = raw_dial(sv.url);
    int sp[2];
    if (from_pipe ? pipe2(sp, O_CLOEXEC) != 0 : socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0)
        die("pipe / socketpair", 0);
    if (from_pipe)
        fcntl(sp[0], F_SETPIPE_SZ, GROWN_PIPE);
    int64_t cpu0 = cpu_ns(), t0 = now_ns();
    relay r = { sp[0], fd };
    pthread_t t;
    if (pthread_create(&t, NULL, relay_fn, &r) != 0)
        die("pthread_create", 0);
    write_bulk(sp[1]);
    close(sp[1]); /* the relay's EOF */
    pthread_join(t, NULL);
    bulk b = { 0 };
    char line[320];
    bulk_result(&sv, &b, t0, cpu0, line, sizeof line);
    close(sp[0]);
    close(fd);
    server_end(&sv);
    return b;
}

/* What the client's byte stream reads from. */
typedef enum { SRC_PIPE, SRC_SOCKPAIR, SRC_FILE } bulk_src;

/* A regular file of g_bulk_bytes, unlinked, its offset at 0 (written before
 * the clock starts: the figure is the stream's, from the page cache). */
static int bulk_file(void)
{
    const char *dir = getenv("TMPDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/lc-bench-bulk-XXXXXX", dir != NULL && dir[0] != '\0' ? dir : "/tmp");
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0)
        die("mkostemp", 0);
    unlink(path);
    write_bulk(fd);
    if (lseek(fd, 0, SEEK_SET) != 0)
        die("lseek", 0);
    return fd;
}

static bulk lc_bulk(const char *transport, bulk_src src)
{
    bool sockpair = src == SRC_SOCKPAIR;
    server sv;
    server_start(&sv, "lc-bulk", transport);
    lc_session *s = client_session(sv.url);
    lc_receiver *ready;
    int rc = lc_session_receiver(s, &ready, TIMEOUT_MS);
    lc_msg *m;
    if (rc != 0 || (rc = lc_recv(ready, &m, TIMEOUT_MS)) != 0) /* the server's SETTINGS were read */
        die("lc_recv ready", rc);
    lc_msg_free(m);
    lc_sender *snd;
    if ((rc = lc_session_sender(s, &snd)) != 0)
        die("lc_session_sender", rc);
    int p[2] = { -1, -1 };
    if (src == SRC_FILE)
        p[0] = bulk_file();
    else if (sockpair ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) != 0 : pipe2(p, O_CLOEXEC) != 0)
        die("pipe / socketpair", 0);
    struct stat st;
    if (fstat(p[0], &st) != 0)
        die("fstat", 0);
    m = lc_msg_new();
    lc_value *map = lc_new_map(m);
    if (lc_map_set(m, map, "Data", lc_new_stream(m, p[0], LC_STREAM_READ)) != 0 || /* the server reads */
        lc_map_set(m, map, "Ino", lc_new_uint(m, (uint64_t)st.st_ino)) != 0 ||
        lc_map_set(m, map, "Dev", lc_new_uint(m, (uint64_t)st.st_dev)) != 0 || lc_msg_set_root(m, map) != 0)
        die("building the bulk request", LC_ENOMEM);
    int64_t cpu0 = cpu_ns(), t0 = now_ns();
    if ((rc = lc_send(snd, m, TIMEOUT_MS)) != 0)
        die("lc_send stream", rc);
    if (src != SRC_FILE) {
        write_bulk(p[1]);
        close(p[1]); /* EOF: FIN on the sub-stream, or the passed fd's EOF */
    }
    bulk b = { 0 };
    char line[320];
    const char *rest = bulk_result(&sv, &b, t0, cpu0, line, sizeof line);
    int same = 0, mode = -1, nonblock = 0;
    if (sscanf(rest, "%7s %d %d %d", b.kind, &same, &mode, &nonblock) != 4)
        snprintf(b.kind, sizeof b.kind, "?");
    b.same = same != 0;
    b.mode = mode;
    b.nonblock = nonblock != 0;
    lc_close(snd);
    lc_sender_release(snd);
    lc_receiver_release(ready);
    client_done(s);
    server_end(&sv);
    return b;
}

static const char *verdict(bool met);

/* What the server's fd says about how the stream travelled. */
static const char *bulk_method(const bulk *b, bool sockpair, bool *passed)
{
    *passed = strcmp(b->kind, sockpair ? "sock" : "fifo") == 0 && b->same;
    if (*passed)
        return sockpair ? "fd passed (SCM_RIGHTS: the server's fd is our socket, same inode)"
                        : "fd passed (SCM_RIGHTS: the server's fd is our pipe, a FIFO, same inode)";
    if (strcmp(b->kind, "sock") == 0 && !b->same)
        return "sub-stream (DATA frames; the server's fd is a socketpair end of its session)";
    return "UNEXPECTED (the server's fd is neither ours nor a socketpair end)";
}

static const char *g_only; /* one part only (the filter argument), for profiles */

/* Each bulk figure is measured BULK_REPS times, interleaved (raw, lc, raw,
 * lc, ...): a 256 MiB transfer lasts 0.1 to 0.5 s here, short enough for one
 * descheduling to show; the median is the figure, min-max printed. */
enum { BULK_REPS = 9 }; /* interleaved; pipes between processes vary 2-3x from run to run here (5 gave a passed pipe, the very same pipe, 0.84-1.13x its own raw figure) */

typedef struct bulk_set {
    bulk run[BULK_REPS];
    double med, min, max; /* MB/s */
    bulk *mid;            /* the median run (its CPU figures are printed) */
    bool ok;
} bulk_set;

static void bulk_summarize(bulk_set *b)
{
    int idx[BULK_REPS];
    for (int i = 0; i < BULK_REPS; i++)
        idx[i] = i;
    for (int i = 1; i < BULK_REPS; i++) /* insertion sort by MB/s */
        for (int j = i; j > 0 && b->run[idx[j]].mbps < b->run[idx[j - 1]].mbps; j--) {
            int t = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = t;
        }
    b->mid = &b->run[idx[BULK_REPS / 2]];
    b->med = b->mid->mbps;
    b->min = b->run[idx[0]].mbps;
    b->max = b->run[idx[BULK_REPS - 1]].mbps;
    b->ok = true;
    for (int i = 0; i < BULK_REPS; i++)
        b->ok = b->ok && b->run[i].ok;
}

static void bulk_line(const char *name, const bulk_set *b, const char *extra)
{
    printf("    %-31s %6.0f  %5.0f-%-5.0f  %5.0f + %5.0f%s%s\n", name, b->med, b->min, b->max, b->mid->cli_cpu,
           b->mid->srv_cpu, b->ok ? "" : "  (BYTES LOST)", extra);
}

/* How every run of an lc set travelled: the same method each time, or say so. */
static const char *bulk_set_method(const bulk_set *b, bool sockpair, bool *all_passed, bool *mode_ok)
{
    const char *m0 = NULL;
    *all_passed = true;
    *mode_ok = true;
    for (int i = 0; i < BULK_REPS; i++) {
        bool passed;
        const char *m = bulk_method(&b->run[i], sockpair, &passed);
        *all_passed = *all_passed && passed;
        *mode_ok = *mode_ok && b->run[i].mode == LC_STREAM_READ;
        if (m0 != NULL && strcmp(m, m0) != 0)
            return "NOT THE SAME IN EVERY RUN";
        m0 = m;
    }
    return m0;
}

/* pinned: each process on its own CPU (pin_begin), as iperf3 -A or netperf
 * -T: on 2 cores the kernel otherwise places the four busy threads (each
 * side's application and relay or engine thread) differently from run to run,
 * and a byte stream's copies cost about twice as much when its two threads
 * run on different cores (bench_session tcp lc-bulk-sp: 2100-4500 MB/s
 * unpinned, 4065-4533 pinned). The baselines are pinned the same way. */
static void bench_bulk(const char *transport, bool pinned)
{
    bool ux = strcmp(transport, "unix") == 0;
    pinning pin;
    if (pinned && !pin_begin(&pin))
        return; /* one CPU: the unpinned figures are all there is */
    if (g_only != NULL && (strncmp(g_only, "lc-bulk", 7) == 0 || strncmp(g_only, "raw-relay", 9) == 0)) {
        /* one of them alone, for profiles */
        bool sp = strcmp(g_only, "lc-bulk-sp") == 0, rl = strcmp(g_only, "raw-relay") == 0,
             rlp = strcmp(g_only, "raw-relay-pipe") == 0, fl = strcmp(g_only, "lc-bulk-file") == 0;
        bulk_set one = { 0 };
        for (int i = 0; i < BULK_REPS; i++)
            one.run[i] = rl   ? raw_relay_bulk(transport, false)
                         : rlp ? raw_relay_bulk(transport, true)
                            : lc_bulk(transport, sp ? SRC_SOCKPAIR : fl ? SRC_FILE : SRC_PIPE);
        bulk_summarize(&one);
        bulk_line(rl    ? "raw relay, no framing"
                  : rlp ? "raw relay from a pipe"
                  : sp ? "libchan byte stream, socketpair"
                  : fl ? "libchan byte stream, a file"
                       : "libchan byte stream, a pipe",
                  &one, pinned ? "  (pinned)" : "");
        if (pinned)
            pin_end(&pin);
        return;
    }
    bulk_set raw = { 0 }, pipe_raw = { 0 }, lc = { 0 }, lcsp = { 0 }, lcf = { 0 }, rel = { 0 }, relp = { 0 };
    for (int i = 0; i < BULK_REPS; i++) {
        raw.run[i] = raw_bulk(transport);
        pipe_raw.run[i] = raw_pipe_bulk(!ux);
        if (!ux) {
            rel.run[i] = raw_relay_bulk(transport, false);
            relp.run[i] = raw_relay_bulk(transport, true);
        }
        lc.run[i] = lc_bulk(transport, SRC_PIPE);
        if (!ux) {
            lcsp.run[i] = lc_bulk(transport, SRC_SOCKPAIR);
            lcf.run[i] = lc_bulk(transport, SRC_FILE);
        }
    }
    if (pinned)
        pin_end(&pin);
    bulk_summarize(&raw);
    bulk_summarize(&lc);
    bulk_summarize(&pipe_raw);
    if (!ux) {
        bulk_summarize(&lcsp);
        bulk_summarize(&lcf);
        bulk_summarize(&rel);
        bulk_summarize(&relp);
    }
    printf("  bulk %.0f MiB client -> server, 64 KiB writes/reads, median of %d\n", (double)g_bulk_bytes / (1 << 20),
           BULK_REPS);
    if (pinned)
        printf("  (each process pinned to its own CPU, as iperf3 -A: client on CPU %d, server on CPU %d)\n",
               pin.client_cpu, pin.server_cpu);
    printf("                                      MB/s  (min-max)     CPU us/MiB (client + server, all threads)\n");
    bulk_line(ux ? "raw unix socket" : "raw TCP connection", &raw, "");
    if (ux) {
        bulk_line("raw pipe between the processes", &pipe_raw, "");
    } else {
        bulk_line("raw relay, no framing", &rel, "");
        printf("      (socketpair -> relay thread -> TCP -> relay thread -> socketpair, plain 64 KiB\n"
               "       read/write: the byte stream's path without the library; raw relay/raw TCP = %.2fx)\n",
               rel.med / raw.med);
        bulk_line("raw relay from a pipe", &relp, "");
        printf("      (the same with a pipe of 256 KiB instead of the client's socketpair: a stream\n"
               "       read from a pipe without the library; raw relay from a pipe/raw TCP = %.2fx)\n",
               relp.med / raw.med);
        bulk_line("raw pipe alone, 256 KiB", &pipe_raw, "");
        printf("      (no TCP: a pipe's own speed with its two ends in two processes, as the pump grows\n"
               "       the pipe it reads; raw pipe/raw TCP = %.2fx)\n",
               pipe_raw.med / raw.med);
    }
    bool passed, mode_ok;
    const char *method = bulk_set_method(&lc, false, &passed, &mode_ok);
    bulk_line("libchan byte stream, a pipe", &lc, mode_ok ? "" : "  (MODE NOT LC_STREAM_READ ON ARRIVAL)");
    printf("      travelled as: %s%s\n", method,
           lc.mid->nonblock ? "; the fd came O_NONBLOCK (read blocking here, as the baselines)" : "");
    if (ux) {
        bool met = passed && lc.ok && lc.med >= TARGET_BULK_FD * pipe_raw.med;
        printf("      lc/raw-pipe = %.2fx (target: equal to raw, >= %.1fx allowing for noise: %s%s)"
               "   lc/raw-unix-socket = %.2fx\n",
               lc.med / pipe_raw.med, TARGET_BULK_FD, verdict(met), passed ? "" : ", fd NOT passed",
               lc.med / raw.med);
    } else {
        bool met = lc.ok && lc.med >= TARGET_BULK_TCP * raw.med;
        printf("      lc/raw-tcp = %.2fx (target >= %.1fx: %s)   lc/raw-relay-from-a-pipe = %.2fx   lc/raw-pipe = "
               "%.2fx\n",
               lc.med / raw.med, TARGET_BULK_TCP, verdict(met), lc.med / relp.med, lc.med / pipe_raw.med);
        bool sp_passed, sp_mode_ok;
        const char *sp_method = bulk_set_method(&lcsp, true, &sp_passed, &sp_mode_ok);
        bulk_line("libchan byte stream, socketpair", &lcsp,
                  sp_mode_ok ? "" : "  (MODE NOT LC_STREAM_READ ON ARRIVAL)");
        printf("      travelled as: %s\n", sp_method);
        printf("      lc/raw-tcp = %.2fx (the same target: %s)   lc/raw-relay = %.2fx\n", lcsp.med / raw.med,
               verdict(lcsp.ok && lcsp.med >= TARGET_BULK_TCP * raw.med), lcsp.med / rel.med);
        bool f_passed, f_mode_ok;
        const char *f_method = bulk_set_method(&lcf, true, &f_passed, &f_mode_ok);
        bulk_line("libchan byte stream, a file", &lcf, f_mode_ok ? "" : "  (MODE NOT LC_STREAM_READ ON ARRIVAL)");
        printf("      travelled as: %s\n", f_method);
        printf("      (a regular file of the client's, read from the page cache: no writer in the client)\n"
               "      lc/raw-tcp = %.2fx (the same target: %s)   lc/raw-relay = %.2fx\n",
               lcf.med / raw.med, verdict(lcf.ok && lcf.med >= TARGET_BULK_TCP * raw.med), lcf.med / rel.med);
    }
}

/* ---- main ----------------------------------------------------------------------------- */

static const char *verdict(bool met)
{
    return met ? "met" : "MISSED";
}

static void bench_oneway(const char *transport);
static void bench_rt(const char *transport);

static void bench_transport(const char *transport)
{
    printf("[%s]\n", transport);
    if (g_only == NULL || strncmp(g_only, "oneway", 6) == 0 || strcmp(g_only, "lc-oneway") == 0)
        bench_oneway(transport);
    if (g_only == NULL || strcmp(g_only, "rt") == 0 || strncmp(g_only, "lc-rt-", 6) == 0)
        bench_rt(transport);
    if (g_only == NULL || strcmp(g_only, "bulk") == 0 || strncmp(g_only, "lc-bulk", 7) == 0 ||
        strncmp(g_only, "raw-relay", 9) == 0) {
        const char *pe = getenv("LC_BENCH_PIN");
        bool pin_only = pe != NULL && strcmp(pe, "1") == 0;
        /* over TCP the bulk figures come twice, unpinned and pinned */
        bool tcp_all = strcmp(transport, "tcp") == 0 && (g_only == NULL || strcmp(g_only, "bulk") == 0);
        if (!pin_only)
            bench_bulk(transport, false);
        if (pin_only || tcp_all)
            bench_bulk(transport, true);
    }
    printf("\n");
    fflush(stdout);
}

static void bench_oneway(const char *transport)
{
    if (g_only != NULL && strcmp(g_only, "lc-oneway") == 0) { /* libchan alone, for profiles */
        oneway lc = lc_oneway(transport);
        printf("  libchan one-way %.2f M msgs/s, CPU per msg: client %.0f ns, server %.0f ns%s\n", lc.rate / 1e6,
               lc.cli_cpu, lc.srv_cpu, lc.ok ? "" : "  (NOT ALL RECEIVED)");
        return;
    }
    oneway raw1 = raw_oneway(transport, false);
    oneway rawb = raw_oneway(transport, true);
    oneway lc = lc_oneway(transport);
    printf("  one-way {\"Value\": i}, %.1f B msgpack per message (libchan adds its 8 B SPDY DATA header)\n",
           lc.avg_bytes);
    printf("                                  rate           CPU ns/msg (client + server, all threads)\n");
    printf("    raw socket, write() per msg  %7.2f M msgs/s  %5.0f + %5.0f%s\n", raw1.rate / 1e6, raw1.cli_cpu,
           raw1.srv_cpu, raw1.ok ? "" : "  (BYTES LOST)");
    printf("    raw socket, 64 KiB writes    %7.2f M msgs/s  %5.0f + %5.0f%s\n", rawb.rate / 1e6, rawb.cli_cpu,
           rawb.srv_cpu, rawb.ok ? "" : "  (BYTES LOST)");
    printf("    libchan send -> recv         %7.2f M msgs/s  %5.0f + %5.0f   lc/raw-per-msg = %.2fx"
           "   lc/raw-batched = %.3fx   target >= %.0f M: %s%s\n",
           lc.rate / 1e6, lc.cli_cpu, lc.srv_cpu, lc.rate / raw1.rate, lc.rate / rawb.rate, TARGET_ONEWAY / 1e6,
           verdict(lc.rate >= TARGET_ONEWAY), lc.ok ? "" : "  (NOT ALL RECEIVED)");
    printf("      (libchan over the server's own receive window: %.2f M msgs/s)\n", lc.srv_rate / 1e6);
}

enum { RT_CHUNKS = 4, RT_CHUNK_WARM = 1000 };

static void bench_rt(const char *transport)
{
    if (g_only != NULL && strncmp(g_only, "lc-rt-", 6) == 0) { /* libchan alone, for profiles */
        rt_fig f = { .lc = true, .mode = RT_REUSED };
        for (rt_mode m = RT_REUSED; m <= RT_FRESH_CROWD; m++)
            if (strcmp(g_only, rt_test_name(m)) == 0)
                f.mode = m;
        rt_open(&f, transport);
        rt_rounds(&f, WARMUP, g_rounds);
        lat l = rt_close(&f);
        printf("  libchan %s round trip p50 %.1f us, p99 %.1f us%s\n", rt_modes[f.mode].label, l.p50, l.p99,
               l.ok ? "" : "  (MISMATCH)");
        return;
    }
    enum { RAW, RAWSPIN, RAWEND, REUSED, FRESH, LAST, CROWDED, NFIG };
    rt_fig f[NFIG] = {
        [RAW] = { .lc = false },
        [RAWSPIN] = { .lc = false, .spin = true },
        [RAWEND] = { .lc = false, .spin = true, .end = true },
        [REUSED] = { .lc = true, .mode = RT_REUSED },
        [FRESH] = { .lc = true, .mode = RT_FRESH },
        [LAST] = { .lc = true, .mode = RT_FRESH_LAST },
        [CROWDED] = { .lc = true, .mode = RT_FRESH_CROWD },
    };
    for (int i = 0; i < NFIG; i++) {
        rt_open(&f[i], transport);
        rt_rounds(&f[i], WARMUP, 0);
    }
    /* in turns, each chunk starting with another figure; a few rounds
     * first to wake each pair up again */
    long per = (g_rounds + RT_CHUNKS - 1) / RT_CHUNKS;
    for (int c = 0; c < RT_CHUNKS; c++)
        for (int j = 0; j < NFIG; j++)
            rt_rounds(&f[(c + j) % NFIG], RT_CHUNK_WARM, per);
    lat l[NFIG];
    for (int i = 0; i < NFIG; i++)
        l[i] = rt_close(&f[i]);
    lat raw = l[RAW], rawspin = l[RAWSPIN], rawend = l[RAWEND];
    lat reused = l[REUSED], fresh = l[FRESH], last = l[LAST], crowd = l[CROWDED];
    /* The reference is the better raw p50 of the two: on this VM each one is
     * bimodal with the scheduler's placement (blocking is fast when both
     * processes share a CPU, spinning when they do not). */
    double ref = raw.p50 < rawspin.p50 ? raw.p50 : rawspin.p50;
    printf("  round trip, %ld each (us)          p50      p99     mean   (targets vs the best raw p50, %.1f us)\n",
           g_rounds, ref);
    printf("    (all seven measured in %d turns, interleaved)\n", RT_CHUNKS);
    printf("    raw ping-pong 8 B, blocking  %7.1f  %7.1f  %7.1f%s\n", raw.p50, raw.p99, raw.mean,
           raw.ok ? "" : "  (MISMATCH)");
    printf("    raw, spin 10 us then poll    %7.1f  %7.1f  %7.1f   (libchan's own wait policy)%s\n", rawspin.p50,
           rawspin.p99, rawspin.mean, rawspin.ok ? "" : "  (MISMATCH)");
    printf("      the same, 8 B more after   %7.1f  %7.1f  %7.1f   (a second write after each answer, as lc_close"
           " adds: %.2fx the raw spin)%s\n",
           rawend.p50, rawend.p99, rawend.mean, rawend.p50 / rawspin.p50, rawend.ok ? "" : "  (MISMATCH)");
    printf("    libchan, reused reply chan   %7.1f  %7.1f  %7.1f   lc/best-raw = %.2fx (target <= %.1fx: %s)"
           "   lc/raw-blocking = %.2fx%s\n",
           reused.p50, reused.p99, reused.mean, reused.p50 / ref, TARGET_REUSED,
           verdict(reused.p50 <= TARGET_REUSED * ref), reused.p50 / raw.p50, reused.ok ? "" : "  (MISMATCH)");
    printf("    libchan, fresh reply Sender  %7.1f  %7.1f  %7.1f   lc/best-raw = %.2fx (target <= %.1fx: %s)"
           "   lc/raw-blocking = %.2fx%s\n",
           fresh.p50, fresh.p99, fresh.mean, fresh.p50 / ref, TARGET_FRESH,
           verdict(fresh.p50 <= TARGET_FRESH * ref), fresh.p50 / raw.p50, fresh.ok ? "" : "  (MISMATCH)");
    printf("      (fresh with lc_close against the raw spin with a second write: %.2fx)\n", fresh.p50 / rawend.p50);
    printf("      the same, lc_send_last   %7.1f  %7.1f  %7.1f   lc/best-raw = %.2fx (target <= %.1fx: %s)"
           "   lc/raw-blocking = %.2fx%s\n",
           last.p50, last.p99, last.mean, last.p50 / ref, TARGET_FRESH, verdict(last.p50 <= TARGET_FRESH * ref),
           last.p50 / raw.p50, last.ok ? "" : "  (MISMATCH)");
    char crowd_label[64];
    snprintf(crowd_label, sizeof crowd_label, "      fresh, %d others open", CROWD);
    printf("%-31s%7.1f  %7.1f  %7.1f   lc/fresh = %.2fx (no target: other channels must not slow it)%s\n",
           crowd_label, crowd.p50, crowd.p99, crowd.mean, crowd.p50 / fresh.p50, crowd.ok ? "" : "  (MISMATCH)");
}

/* The machine is shared: say how busy it was. */
static const char *loadavg(void)
{
    static char buf[64] = "?";
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fgets(buf, sizeof buf, f) == NULL)
            snprintf(buf, sizeof buf, "?");
        fclose(f);
        buf[strcspn(buf, "\n")] = 0;
    }
    return buf;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--server") == 0)
        return server_main(argv[2], argv[3], atoi(argv[4]));
    if (argc > 1)
        g_seconds = atof(argv[1]) > 0 ? atof(argv[1]) : 3.0;
    g_rounds = (long)(20000 * g_seconds / 3.0);
    if (g_rounds < 1000)
        g_rounds = 1000;
    g_bulk_bytes = (uint64_t)((double)(256ull << 20) * g_seconds / 3.0) / BATCH * BATCH;
    if (g_bulk_bytes < 16u << 20)
        g_bulk_bytes = 16u << 20;
    memset(g_chunk, 'x', sizeof g_chunk);
    signal(SIGPIPE, SIG_IGN);
    check_raw_encoding();
    printf("sessions between two processes (%.1f s per one-way figure, %ld round trips per latency figure)\n"
           "targets (issue): one-way >= %.0f M msgs/s on unix and tcp (ZeroMQ ~5.9 M here); round-trip p50 vs\n"
           "raw ping-pong p50 <= %.1fx with a reused reply channel, <= %.1fx with a fresh reply Sender;\n"
           "bulk byte stream >= %.1fx raw TCP over tcp, equal to raw once the fd is passed over unix\n"
           "(load average at start: %s)\n"
           "speed of this machine now: lc_pack + lc_msg_free of {\"Value\": i} in-process = %.0f ns (best of 5)\n\n",
           g_seconds, g_rounds, TARGET_ONEWAY / 1e6, TARGET_REUSED, TARGET_FRESH, TARGET_BULK_TCP, loadavg(),
           user_space_reference_ns());
    fflush(stdout);
    /* optional filters, for profiling one case: [unix|tcp] [oneway|lc-oneway|rt|lc-rt-fresh|lc-rt-fresh-last|lc-rt-fresh-crowd|lc-rt-reused|bulk|lc-bulk|lc-bulk-sp|lc-bulk-file|raw-relay|raw-relay-pipe] */
    const char *only_t = argc > 2 ? argv[2] : NULL, *only_s = argc > 3 ? argv[3] : NULL;
    g_only = only_s;
    if (only_t == NULL || strcmp(only_t, "unix") == 0)
        bench_transport("unix");
    if (only_t == NULL || strcmp(only_t, "tcp") == 0)
        bench_transport("tcp");
    return 0;
}
