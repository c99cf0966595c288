/*
 * util.c - what every lchan subcommand shares: one-line errors and exit codes,
 * tracing (messages rendered with channel ends and streams as symbols), dialing
 * with a helpful error, byte pumps between fds, and SIGINT/SIGTERM handling.
 */
#include "lchan.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

bool lx_trace_on;
bool lx_verbose;
const char *lx_cmd = NULL;

/* ---- errors ------------------------------------------------------------------ */

static void vline(const char *prefix, const char *fmt, va_list ap)
{
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    /* one write, so lines of concurrent threads do not interleave */
    char line[1200];
    int n = snprintf(line, sizeof line, "%s%s\n", prefix, buf);
    if (n > (int)sizeof line - 1)
        n = (int)sizeof line - 1;
    (void)!write(2, line, (size_t)n);
}

void lx_die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline("lchan: ", fmt, ap);
    va_end(ap);
    /* _exit, not exit: we may be leaving with sessions still in use by other
     * threads (a timeout, a lost session), and exit() would run libchan's
     * atexit teardown of its engine under them. */
    fflush(stdout);
    _exit(code);
}

void lx_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline("lchan: ", fmt, ap);
    va_end(ap);
}

static struct timespec t0; /* set by lx_signals_init, early in main */

static double since_start(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9;
}

void lx_trace(const char *fmt, ...)
{
    if (!lx_trace_on)
        return;
    char prefix[48];
    snprintf(prefix, sizeof prefix, "[trace +%.3fs] ", since_start());
    va_list ap;
    va_start(ap, fmt);
    vline(prefix, fmt, ap);
    va_end(ap);
}

void lx_log(const char *fmt, ...)
{
    if (!lx_verbose && !lx_trace_on)
        return;
    va_list ap;
    va_start(ap, fmt);
    vline("lchan serve: ", fmt, ap);
    va_end(ap);
}

const char *lx_errtext(int code, char *buf, size_t len)
{
    snprintf(buf, len, "%s", lc_strerror(code));
    if (code < 0 && code > -1000 && buf[0] && isupper((unsigned char)buf[0]) && !isupper((unsigned char)buf[1]))
        buf[0] = (char)tolower((unsigned char)buf[0]); /* strerror's "Connection refused" */
    return buf;
}

const char *lx_session_why(int code, char *buf, size_t len)
{
    if (code == 0) /* (callers report a failure of their own then) */
        snprintf(buf, len, "no session error");
    else if (code == LC_ESESSION)
        snprintf(buf, len, "closed by the peer");
    else if (code == -EPIPE || code == -ECONNRESET)
        snprintf(buf, len, "the peer went away mid-write");
    else
        lx_errtext(code, buf, len);
    return buf;
}

/* ---- rendering for traces ------------------------------------------------------ */

static void render(FILE *f, const lc_value *v, int depth)
{
    if (depth > 64) {
        fputs("...", f);
        return;
    }
    switch (lc_value_type(v)) {
    case LC_SENDER:
        fputs(lc_value_taken(v) ? "<Sender (taken)>" : "<Sender>", f);
        return;
    case LC_RECEIVER:
        fputs(lc_value_taken(v) ? "<Receiver (taken)>" : "<Receiver>", f);
        return;
    case LC_STREAM: {
        lc_stream_mode md = lc_value_stream_mode(v);
        fprintf(f, "<stream:%s>", md == LC_STREAM_READ ? "read" : md == LC_STREAM_WRITE ? "write" : "duplex");
        return;
    }
    case LC_ARRAY:
        fputc('[', f);
        for (size_t i = 0; i < lc_value_len(v); i++) {
            if (i)
                fputc(',', f);
            render(f, lc_array_get(v, i), depth + 1);
        }
        fputc(']', f);
        return;
    case LC_MAP:
        fputc('{', f);
        for (size_t i = 0; i < lc_value_len(v); i++) {
            if (i)
                fputc(',', f);
            render(f, lc_map_key(v, i), depth + 1);
            fputc(':', f);
            render(f, lc_map_value(v, i), depth + 1);
        }
        fputc('}', f);
        return;
    default: {
        char *s = lx_value_to_json(v);
        fputs(s ? s : "?", f);
        free(s);
        return;
    }
    }
}

char *lx_render(const lc_value *v)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL)
        return NULL;
    render(f, v, 0);
    fclose(f);
    return buf;
}

void lx_trace_msg(const char *where, const char *dir, lc_msg *m)
{
    if (!lx_trace_on)
        return;
    size_t blen;
    const char *ctype;
    if (m != NULL && lc_msg_body(m, &blen, &ctype) != NULL) {
        lx_trace("%s %s <opaque body: %zu bytes of %s>", where, dir, blen, ctype ? ctype : "?");
        return;
    }
    char *s = m ? lx_render(lc_msg_root(m)) : NULL;
    lx_trace("%s %s %s", where, dir, s ? s : "?");
    free(s);
}

/* ---- sessions ---------------------------------------------------------------------- */

bool lx_watch_peer;
static atomic_ulong frames_in;

/* lc_options.trace: the library's line for each SPDY frame, under --trace;
 * with lx_watch_peer, also counts the frames received ("<< ..."). */
static void frame_trace(void *ctx, const char *line)
{
    (void)ctx;
    if (line[0] == '<' && line[1] == '<')
        atomic_fetch_add(&frames_in, 1);
    lx_trace("frame %s", line);
}

void lx_session_options(lc_options *o)
{
    lc_options_default(o);
    /* (not by default: the hook costs a second parse of every frame sent) */
    if (lx_trace_on || lx_watch_peer) {
        o->trace = frame_trace;
        o->trace_ctx = NULL;
    }
}

unsigned long lx_frames_in(void)
{
    return atomic_load(&frames_in);
}

/* lx_dial is in lc_dial: nothing to close or flush yet, and the dial may
 * block for its whole timeout (10 s): a stop signal then exits at once */
static atomic_bool dialing;

lc_session *lx_dial(const char *url)
{
    lc_options o;
    lx_session_options(&o);
    o.dial_timeout_ms = 10000;
    lc_error err = { 0 };
    lc_session *s;
    lx_trace("dial %s", url);
    atomic_store(&dialing, true);
    int rc = lc_dial(url, &o, &s, &err);
    atomic_store(&dialing, false);
    if (rc == 0) {
        lx_trace("dial %s: connected, SPDY/3 session up", url);
        return s;
    }
    char t[128];
    if (rc == LC_EINVAL || rc == LC_ENOTSUP)
        lx_die(LX_URL, "bad URL %s (expected unix:///path or tcp://host:port)",
               err.text[0] ? err.text : url);
    const char *hint = "";
    if (rc == -ECONNREFUSED || rc == -ENOENT)
        hint = " (is `lchan serve` running?)";
    else if (rc == LC_ETIMEDOUT)
        hint = " (no answer within 10 s: is the address right and reachable?)";
    else if (rc == -EAGAIN)
        snprintf(t, sizeof t, "resolving the host name failed for now (try again)");
    lx_die(LX_CONNECT, "cannot connect to %s: %s%s", url, rc == -EAGAIN ? t : lx_errtext(rc, t, sizeof t), hint);
}

int lx_session_exit(int code)
{
    if (code == LC_ETIMEDOUT)
        return LX_TIMEOUT;
    if (code == LC_ESESSION || code == LC_EPROTO || code == LC_ECLOSED || code == LC_EOF ||
        (code < 0 && code > -1000))
        return LX_SESSION;
    return LX_INTERNAL;
}

/* ---- pumps -------------------------------------------------------------------------- */

struct lx_pump {
    pthread_t t;
    int from, to;
    int flags;
    size_t chunk; /* the most one write() to `to` may carry (see pump_write) */
    int stop[2]; /* a pipe: readable when the copy should stop */
    int done[2]; /* a pipe: readable once the copy has ended */
    int result;  /* LX_PUMP_* (set before done is written) */
    char label[48];
    uint64_t bytes;
};

int lx_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) { /* a descriptor someone made non-blocking */
            struct pollfd pf = { fd, POLLOUT, 0 };
            poll(&pf, 1, -1);
            continue;
        }
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Waits until fd is ready for events or the copy is told to stop: 0, or 1
 * for a stop. (An error or hang-up on fd counts as ready: the read or write
 * that follows reports it.) */
static int pump_poll(lx_pump *p, int fd, short events)
{
    for (;;) {
        struct pollfd pf[2] = { { fd, events, 0 }, { p->stop[0], POLLIN, 0 } };
        int pr = poll(pf, 2, -1);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0 || pf[1].revents != 0)
            return 1; /* (poll itself failing: nothing sensible left to wait for) */
        if (pf[0].revents != 0)
            return 0;
    }
}

/* Has the copy been told to stop? */
static bool pump_stopping(lx_pump *p)
{
    struct pollfd pf = { p->stop[0], POLLIN, 0 };
    return poll(&pf, 1, 0) > 0;
}

/* Writes buf to p->to; a stop ends the wait for room. Each write comes after
 * poll() said `to` has room, with the stop pipe watched too. A `to` that is
 * ours is non-blocking (lx_pump_start); one we share (stdout, stderr) stays
 * as it is, and when it is a blocking pipe or socket each write is at most
 * PIPE_BUF bytes. Room does not always mean that write() returns, though:
 * with `2>&1` the Stdout and Stderr copies poll the same pipe, both see the
 * room one piece took, and the second blocks in write(); a terminal (n_tty)
 * blocks whatever poll() said. lx_pump_cancel then interrupts the write with
 * PUMP_WAKE_SIG (a handler without SA_RESTART): EINTR with the stop pipe
 * readable is a stop. 0, -1 (`to` refused it: errno says why) or 1 (stopped). */
static int pump_write(lx_pump *p, const char *buf, size_t n)
{
    while (n > 0) {
        if (pump_poll(p, p->to, POLLOUT) != 0)
            return 1;
        ssize_t w = write(p->to, buf, n < p->chunk ? n : p->chunk);
        if (w < 0 && errno == EINTR && pump_stopping(p))
            return 1;
        if (w < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (w <= 0)
            return -1;
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* A private real-time signal whose only job is to end a copy thread's
 * blocked write() with EINTR (see pump_write, lx_pump_cancel). Its handler
 * does nothing and is installed without SA_RESTART. */
#define PUMP_WAKE_SIG (SIGRTMIN + 1)

static void pump_wake_handler(int sig)
{
    (void)sig;
}

static void pump_wake_init(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = pump_wake_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: the interrupted write() returns EINTR */
    if (sigaction(PUMP_WAKE_SIG, &sa, NULL) != 0)
        lx_die(LX_INTERNAL, "sigaction: %s", strerror(errno));
}

static void *pump_main(void *arg)
{
    lx_pump *p = arg;
    char buf[65536];
    sigset_t wake;
    sigemptyset(&wake);
    sigaddset(&wake, PUMP_WAKE_SIG);
    pthread_sigmask(SIG_UNBLOCK, &wake, NULL); /* (whatever the creator's mask) */
    for (;;) {
        if (pump_poll(p, p->from, POLLIN) != 0) {
            lx_trace("%s: stopped after %" PRIu64 " bytes", p->label, p->bytes);
            p->result = LX_PUMP_STOPPED;
            break;
        }
        ssize_t n = read(p->from, buf, sizeof buf);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            lx_trace("%s: end of stream after %" PRIu64 " bytes%s", p->label, p->bytes,
                     n < 0 ? " (read error)" : "");
            break;
        }
        lx_trace("%s: %zd bytes", p->label, n);
        int w = pump_write(p, buf, (size_t)n);
        if (w > 0) {
            lx_trace("%s: stopped after %" PRIu64 " bytes, with %zd bytes read and not all written", p->label,
                     p->bytes, n);
            p->result = LX_PUMP_STOPPED;
            break;
        }
        if (w < 0) {
            lx_trace("%s: the reader went away (%s)", p->label, strerror(errno));
            p->result = LX_PUMP_BROKEN;
            break;
        }
        p->bytes += (uint64_t)n;
    }
    if (p->flags & LX_SHUT_TO)
        shutdown(p->to, SHUT_WR); /* EOF for the reader; our read side stays */
    if (p->flags & LX_CLOSE_FROM)
        close(p->from);
    if (p->flags & LX_CLOSE_TO)
        close(p->to);
    (void)!write(p->done[1], "x", 1);
    return NULL;
}

lx_pump *lx_pump_start(int from, int to, int flags, const char *label)
{
    static pthread_once_t wake_once = PTHREAD_ONCE_INIT;
    pthread_once(&wake_once, pump_wake_init);
    lx_pump *p = calloc(1, sizeof *p);
    if (p == NULL)
        lx_die(LX_INTERNAL, "out of memory");
    p->from = from;
    p->to = to;
    p->flags = flags;
    p->chunk = SIZE_MAX;
    snprintf(p->label, sizeof p->label, "%s", label);
    /* `to` ours alone: non-blocking, so a stop is seen whatever its reader
     * does. Shared (our stdout, stderr): left as it is, written in pieces
     * that fit once poll() says there is room (see pump_write) */
    int fl = fcntl(to, F_GETFL);
    struct stat st;
    if (fl >= 0 && (flags & (LX_CLOSE_TO | LX_SHUT_TO | LX_OWN_TO)))
        fcntl(to, F_SETFL, fl | O_NONBLOCK);
    else if (fl >= 0 && !(fl & O_NONBLOCK) && fstat(to, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
        p->chunk = PIPE_BUF;
    if (pipe2(p->stop, O_CLOEXEC) != 0 || pipe2(p->done, O_CLOEXEC) != 0 ||
        pthread_create(&p->t, NULL, pump_main, p) != 0)
        lx_die(LX_INTERNAL, "cannot start a copy thread: %s", strerror(errno));
    return p;
}

int lx_pump_join(lx_pump *p)
{
    if (p == NULL)
        return LX_PUMP_EOF;
    pthread_join(p->t, NULL);
    int result = p->result;
    close(p->stop[0]);
    close(p->stop[1]);
    close(p->done[0]);
    close(p->done[1]);
    free(p);
    return result;
}

int lx_pump_wait(lx_pump *p, int64_t timeout_ms, int *result)
{
    if (p == NULL) {
        *result = LX_PUMP_EOF;
        return 0;
    }
    int rc = lx_wait_fds(&p->done[0], 1, timeout_ms);
    if (rc == 0)
        *result = lx_pump_join(p);
    return rc;
}

int lx_pump_cancel(lx_pump *p)
{
    if (p == NULL)
        return LX_PUMP_EOF;
    (void)!write(p->stop[1], "x", 1);
    /* The copy may be inside a write() that no poll() watches (see
     * pump_write): PUMP_WAKE_SIG ends it, again until the copy is done, as
     * one that comes just before the thread enters write() is lost. (p->t is
     * not joined yet, so signalling it stays valid after it has returned.) */
    for (;;) {
        pthread_kill(p->t, PUMP_WAKE_SIG);
        struct pollfd pf = { p->done[0], POLLIN, 0 };
        int r = poll(&pf, 1, 20);
        if (r > 0 || (r < 0 && errno != EINTR))
            break;
    }
    return lx_pump_join(p);
}

/* ---- signals -------------------------------------------------------------------------- */

atomic_int lx_stop;
static int stop_pipe[2] = { -1, -1 };

/* SIGINT and SIGTERM are blocked in every thread and taken by this one with
 * sigwaitinfo, not by an asynchronous handler: under ThreadSanitizer a
 * handler's run could be put off for good (1 in ~30 runs of
 * tool_client_signals, bench still waiting after 5 s), and no thread is
 * interrupted in the middle of anything. */
static void *signal_main(void *arg)
{
    const sigset_t *set = arg;
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(set, &si);
        if (sig < 0)
            continue; /* EINTR */
        atomic_store(&lx_stop, sig);
        if (atomic_load(&dialing))
            _exit(128 + sig); /* (see dialing) */
        (void)!write(stop_pipe[1], "x", 1);
    }
    return NULL;
}

void lx_signals_init(void)
{
    clock_gettime(CLOCK_MONOTONIC, &t0);
    signal(SIGPIPE, SIG_IGN); /* a closed reader is an error from write(), not a death */
    if (pipe2(stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        lx_die(LX_INTERNAL, "pipe: %s", strerror(errno));
    /* before any other thread: they all inherit the mask (children of
     * serve --exec get an empty one back, see spawn in serve.c) */
    static sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, signal_main, &set) != 0)
        lx_die(LX_INTERNAL, "cannot start the signal thread: %s", strerror(errno));
    pthread_detach(t);
}

int lx_stop_fd(void)
{
    return stop_pipe[0];
}

/* ---- waits that a stop signal ends ------------------------------------------------ */

int64_t lx_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int64_t deadline_of(int64_t timeout_ms)
{
    return timeout_ms < 0 ? -1 : lx_now_ms() + timeout_ms;
}

/* ms left until deadline for poll(): -1 for none, 0 once passed */
static int left_of(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - lx_now_ms();
    return left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
}

/* The stop pipe is written by the handler and never read: once a signal has
 * come it stays readable, so every wait below sees it. */
static int wait_until(const int *fds, int n, int64_t deadline)
{
    struct pollfd p[8];
    if (n > 7)
        n = 7;
    for (;;) {
        if (lx_stop)
            return LX_ESTOPPED;
        for (int i = 0; i < n; i++)
            p[i] = (struct pollfd){ fds[i], POLLIN, 0 };
        p[n] = (struct pollfd){ stop_pipe[0], POLLIN, 0 };
        int to = left_of(deadline);
        int r = poll(p, (nfds_t)n + 1, to);
        if (r < 0 && errno != EINTR)
            return -errno;
        if (lx_stop)
            return LX_ESTOPPED;
        for (int i = 0; r > 0 && i < n; i++)
            if (p[i].revents != 0)
                return 0;
        if (r == 0 && to >= 0)
            return LC_ETIMEDOUT;
    }
}

int lx_wait_fds(const int *fds, int n, int64_t timeout_ms)
{
    return wait_until(fds, n, deadline_of(timeout_ms));
}

/* Each of these waits in slices of at most STOP_SLICE_MS, checking lx_stop
 * between them: a stop is seen within a slice, and the fast path is the
 * plain call (no extra syscall per message, which bench would measure). */
#define STOP_SLICE_MS 100

static int64_t slice_of(int64_t deadline)
{
    if (deadline < 0)
        return STOP_SLICE_MS;
    int left = left_of(deadline);
    return left < STOP_SLICE_MS ? left : STOP_SLICE_MS;
}

int lx_stoppable_recv(lc_receiver *r, lc_msg **m, int64_t timeout_ms)
{
    int64_t dl = deadline_of(timeout_ms);
    for (;;) {
        if (lx_stop)
            return LX_ESTOPPED;
        int64_t slice = slice_of(dl);
        int rc = lc_recv(r, m, slice);
        if (rc != LC_ETIMEDOUT || (dl >= 0 && left_of(dl) == 0))
            return rc;
    }
}

int lx_stoppable_send(lc_sender *s, lc_msg *m, int64_t timeout_ms)
{
    int64_t dl = deadline_of(timeout_ms);
    for (;;) {
        if (lx_stop)
            return LX_ESTOPPED;
        int rc = lc_send(s, m, slice_of(dl)); /* (on failure m is still ours) */
        if (rc != LC_ETIMEDOUT || (dl >= 0 && left_of(dl) == 0))
            return rc;
    }
}

int lx_stoppable_select(lc_case *cases, size_t n, int64_t timeout_ms)
{
    int64_t dl = deadline_of(timeout_ms);
    for (;;) {
        if (lx_stop)
            return LX_ESTOPPED;
        int rc = lc_select(cases, n, slice_of(dl));
        if (rc != LC_ETIMEDOUT || (dl >= 0 && left_of(dl) == 0))
            return rc;
    }
}

void lx_exit_stopped(lc_session *s)
{
    int sig = lx_stop;
    lx_trace("stopped by %s: closing the session", sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal");
    if (s != NULL) {
        /* short: the user asked us to go (a silent peer would hold a full close) */
        lc_session_close(s, 500);
        lc_session_free(s);
    }
    fflush(stdout);
    _exit(128 + sig);
}
