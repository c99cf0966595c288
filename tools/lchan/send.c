/*
 * send.c - `lchan send URL JSON`: one JSON value as one message on a new
 * channel; every reply printed as a line of JSON; streams to stdin/stdout.
 */
#include "lchan.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static void *watchdog(void *arg)
{
    int64_t ms = *(int64_t *)arg;
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    lx_die(LX_TIMEOUT, "send: no complete answer within %lld ms (--timeout)", (long long)ms);
}

/* With only "@stdin", our end of the stdin pipe stays open after the copy
 * (LX_OWN_TO) until the session has read it empty: see send_all_stdin. */
static bool stdin_kept;

/* After SIGINT/SIGTERM: stop the copies (a graceful close reads the streams
 * we send to their end), close the session briefly, exit 128+signal. Reply
 * lines still held for the end of @stdout are dropped. */
__attribute__((noreturn)) static void stopped(lc_session *s, lx_reqplan *plan, lx_pump *in, lx_pump *out,
                                              lx_pump *errp)
{
    lx_pump_cancel(in);
    lx_pump_cancel(out);
    lx_pump_cancel(errp);
    if (stdin_kept && plan->stdin_fd >= 0)
        close(plan->stdin_fd); /* the stream's EOF: the close need not wait for it */
    lx_exit_stopped(s);
}

/* Reply lines. While an "@stdout" (or "@stdio") stream is copied to stdout,
 * a reply printed at once would land in the middle of its bytes: lines wait
 * here until that stream has ended, then come out in the order they came. */
typedef struct held {
    char **lines;
    size_t n, cap;
} held;

static void print_line(held *h, bool hold, char *line)
{
    if (line == NULL)
        lx_die(LX_INTERNAL, "out of memory");
    if (!hold) {
        printf("%s\n", line);
        fflush(stdout);
        free(line);
        return;
    }
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 8;
        char **l = realloc(h->lines, cap * sizeof *l);
        if (l == NULL)
            lx_die(LX_INTERNAL, "out of memory");
        h->lines = l;
        h->cap = cap;
    }
    h->lines[h->n++] = line;
}

static void print_held(held *h)
{
    for (size_t i = 0; i < h->n; i++) {
        printf("%s\n", h->lines[i]);
        free(h->lines[i]);
    }
    fflush(stdout);
    free(h->lines);
    *h = (held){ NULL, 0, 0 };
}

/* How sending stdin ended, when it is the whole point (send_all_stdin). */
enum { STDIN_ALL, STDIN_CUT_SESSION, STDIN_CUT_READER };

/* With only "@stdin" (no reply channel, no output stream), stdin is the
 * whole point: all of it must reach the session. The copy ends at EOF on
 * stdin; the session reads the pipe on its own thread and nothing says when
 * it has taken the last byte, so watch the pipe until it is empty, for as
 * long as the session is healthy (a slow receiver only makes this longer:
 * --timeout's watchdog bounds it, a stop signal ends it). A session that
 * ends meanwhile did not take it all (the peer died or hung up mid-stream),
 * nor did one that closed its end of the pipe with bytes in it (the
 * receiver stopped reading the stream). */
static int send_all_stdin(lc_session *s, lx_reqplan *plan, lx_pump *in)
{
    int res;
    for (;;) {
        int w = lx_pump_wait(in, 100, &res);
        if (w == 0)
            break;
        if (w != LC_ETIMEDOUT)
            stopped(s, plan, in, NULL, NULL);
        if (lc_session_error(s) != 0) { /* no one reads what is left */
            lx_pump_cancel(in);
            return STDIN_CUT_SESSION;
        }
    }
    if (res == LX_PUMP_BROKEN) /* the pipe's reader went away */
        return lc_session_error(s) != 0 ? STDIN_CUT_SESSION : STDIN_CUT_READER;
    for (int64_t pause = 1;; pause = pause < 64 ? pause * 2 : pause) {
        int queued = 0;
        if (ioctl(plan->stdin_fd, FIONREAD, &queued) != 0 || queued <= 0)
            return STDIN_ALL;
        if (lc_session_error(s) != 0)
            return STDIN_CUT_SESSION;
        struct pollfd pf = { plan->stdin_fd, POLLOUT, 0 };
        if (poll(&pf, 1, 0) > 0 && (pf.revents & POLLERR)) /* no reader: what is queued is lost */
            return STDIN_CUT_READER;
        if (pause == 1)
            lx_trace("stdin -> stream: %d bytes not yet read by the session: waiting", queued);
        if (lx_wait_fds(NULL, 0, pause) == LX_ESTOPPED)
            stopped(s, plan, NULL, NULL, NULL);
    }
}

int lx_send(int argc, char **argv)
{
    const char *pos[2];
    int npos = 0;
    long long timeout = 30000;
    bool opts_done = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!opts_done && strcmp(a, "--") == 0) {
            opts_done = true;
        } else if (!opts_done && a[0] == '-' && a[1] != '\0') {
            if (!lx_common_opt(a, lx_help_send) &&
                !lx_opt_long(argc, argv, &i, "--timeout", 0, 86400000, &timeout))
                lx_usage("unknown option '%s'", a);
        } else if (npos < 2) {
            pos[npos++] = a;
        } else {
            lx_usage("too many arguments (quote the JSON: lchan send URL '{\"A\": 1}')");
        }
    }
    if (npos < 1)
        lx_usage("missing URL and JSON");
    if (npos < 2)
        lx_usage("missing JSON argument");
    const char *url = pos[0];

    /* The JSON first: a typo should not need a server to be reported. */
    lx_reqplan plan;
    char err[512];
    lc_msg *m = lx_json_to_msg(pos[1], &plan, err, sizeof err);
    if (m == NULL)
        lx_die(LX_JSON, "bad JSON: %s", err);

    pthread_t wd;
    int64_t wd_ms = timeout;
    if (timeout > 0 && pthread_create(&wd, NULL, watchdog, &wd_ms) == 0)
        pthread_detach(wd);

    lc_session *s = lx_dial(url);
    if (lx_stop) {
        lc_msg_free(m);
        lx_plan_free(&plan);
        lx_exit_stopped(s);
    }
    lc_sender *chan;
    int rc = lc_session_sender(s, &chan);
    if (rc != 0)
        lx_die(lx_session_exit(rc), "cannot open a channel to %s: %s", url, lc_strerror(rc));
    lx_trace("chan#1: opened");
    lx_trace_msg("chan#1", ">>", m);
    rc = lx_stoppable_send(chan, m, 10000);
    if (rc != 0) {
        lc_msg_free(m);
        if (rc == LX_ESTOPPED) {
            lx_plan_free(&plan);
            lx_exit_stopped(s);
        }
        lx_die(lx_session_exit(rc), "cannot send to %s: %s", url, lc_strerror(rc));
    }
    lc_close(chan); /* one message per channel, as docker/libchan clients do */
    lc_sender_release(chan);
    lx_trace("chan#1: closed (one message sent)");

    /* The streams: our ends of the pipes/socket the message carries. */
    bool stdin_only = plan.nreplies == 0 && plan.stdout_fd < 0 && plan.stderr_fd < 0;
    lx_pump *in = NULL, *out = NULL, *errp = NULL;
    if (plan.stdin_fd >= 0) {
        stdin_kept = stdin_only && !plan.stdio_duplex;
        in = lx_pump_start(0, plan.stdin_fd,
                           plan.stdio_duplex ? LX_SHUT_TO : stdin_kept ? LX_OWN_TO : LX_CLOSE_TO, "stdin -> stream");
    }
    if (plan.stdout_fd >= 0)
        out = lx_pump_start(plan.stdout_fd, 1, LX_CLOSE_FROM, "stream -> stdout");
    if (plan.stderr_fd >= 0)
        errp = lx_pump_start(plan.stderr_fd, 2, LX_CLOSE_FROM, "stream -> stderr");

    /* Replies, from every reply channel, until each is closed. */
    held h = { NULL, 0, 0 };
    int open = plan.nreplies, got = 0, lost = 0;
    bool closed[16] = { false };
    while (open > 0) {
        lc_case cases[16];
        int idx[16], n = 0;
        for (int k = 0; k < plan.nreplies; k++)
            if (!closed[k]) {
                cases[n] = (lc_case){ .op = LC_CASE_RECV, .receiver = plan.replies[k] };
                idx[n++] = k;
            }
        int c = lx_stoppable_select(cases, (size_t)n, -1);
        if (c == LX_ESTOPPED)
            stopped(s, &plan, in, out, errp);
        if (c < 0)
            lx_die(LX_INTERNAL, "lc_select: %s", lc_strerror(c));
        int k = idx[c];
        char label[24];
        snprintf(label, sizeof label, "reply#%d", k + 1);
        if (cases[c].result != 0) {
            lx_trace("%s: closed by the other side (%s)", label, lc_strerror(cases[c].result));
            if (cases[c].result != LC_EOF)
                lost++; /* not closed by the other side: its session ended */
            closed[k] = true;
            open--;
            continue;
        }
        lc_msg *r = cases[c].msg;
        lx_trace_msg(label, "<<", r);
        size_t blen;
        const char *ctype;
        if (lc_msg_body(r, &blen, &ctype) != NULL)
            print_line(&h, out != NULL, lx_body_to_json(ctype, blen));
        else
            print_line(&h, out != NULL, lx_value_to_json(lc_msg_root(r)));
        lc_msg_free(r);
        got++;
    }
    char why[96];
    bool none = plan.nreplies > 0 && got == 0 && lc_session_error(s) != 0;
    if (none || lost > 0) {
        /* The session is gone. Over unix the streams may have been passed as
         * fds, still open in an orphaned command: do not wait for them. */
        lx_pump_cancel(out);
        lx_pump_cancel(errp);
        print_held(&h);
        if (none)
            lx_die(LX_SESSION, "the session to %s ended before any reply came (%s)", url,
                   lx_session_why(lc_session_error(s), why, sizeof why));
        lx_die(LX_SESSION, "the session to %s ended before every reply channel was closed (%s)", url,
               lx_session_why(lc_session_error(s), why, sizeof why));
    }

    int res;
    if (lx_pump_wait(out, -1, &res) != 0)
        stopped(s, &plan, in, out, errp);
    out = NULL;
    print_held(&h); /* stdout's stream has ended: the replies that waited for it */
    if (lx_pump_wait(errp, -1, &res) != 0)
        stopped(s, &plan, in, NULL, errp);
    errp = NULL;
    int cut = STDIN_ALL;
    if (in != NULL) {
        if (!stdin_kept) {
            lx_pump_cancel(in); /* the other side is done: stop reading our stdin */
        } else {
            cut = send_all_stdin(s, &plan, in);
            close(plan.stdin_fd); /* the stream's EOF */
            plan.stdin_fd = -1;
        }
        in = NULL;
    }
    for (int k = 0; k < plan.nreplies; k++)
        lc_receiver_release(plan.replies[k]);
    /* the streams' ends reached the session; a session that ended before we
     * close it cut them (it closes them: the pumps saw EOF) */
    int serr = lc_session_error(s);
    bool streams = plan.stdin_fd >= 0 || plan.stdout_fd >= 0 || plan.stderr_fd >= 0 || stdin_kept;
    /* everything sent (stdin's bytes included) reaches the carrier before we go */
    rc = lc_session_close(s, 5000);
    lc_session_free(s);
    if (cut == STDIN_CUT_SESSION)
        lx_die(LX_SESSION, "the session to %s ended before all of stdin was sent (%s)", url,
               lx_session_why(serr, why, sizeof why));
    if (cut == STDIN_CUT_READER)
        lx_die(LX_SESSION, "the receiver at %s stopped reading the stdin stream before all of stdin was sent", url);
    if (streams && serr != 0 && serr != LC_ESESSION) /* (not a clean end by the peer) */
        lx_die(LX_SESSION, "the session to %s ended while its streams were open (%s)", url,
               lx_session_why(serr, why, sizeof why));
    if (rc != 0 && rc != LC_ESESSION)
        lx_die(LX_SESSION, "closing the session to %s: %s", url, lc_strerror(rc));
    return LX_OK;
}
