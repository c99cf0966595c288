/*
 * send.c - `lchan send URL JSON`: one JSON value as one message on a new
 * channel; every reply printed as a line of JSON; streams to stdin/stdout.
 */
#include "lchan.h"

#include <errno.h>
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

/* After SIGINT/SIGTERM: stop the copies (a graceful close reads the streams
 * we send to their end), close the session briefly, exit 128+signal. */
__attribute__((noreturn)) static void stopped(lc_session *s, lx_reqplan *plan, lx_pump *in, lx_pump *out,
                                              lx_pump *errp)
{
    lx_pump_cancel(in);
    lx_pump_cancel(out);
    lx_pump_cancel(errp);
    (void)plan; /* (its fds and receivers go with the process) */
    lx_exit_stopped(s);
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
    lx_pump *in = NULL, *out = NULL, *errp = NULL;
    if (plan.stdin_fd >= 0) {
        in = lx_pump_start(0, plan.stdin_fd, plan.stdio_duplex ? LX_SHUT_TO : LX_CLOSE_TO, "stdin -> stream");
    }
    if (plan.stdout_fd >= 0)
        out = lx_pump_start(plan.stdout_fd, 1, LX_CLOSE_FROM, "stream -> stdout");
    if (plan.stderr_fd >= 0)
        errp = lx_pump_start(plan.stderr_fd, 2, LX_CLOSE_FROM, "stream -> stderr");

    /* Replies, from every reply channel, until each is closed. */
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
        const void *body = lc_msg_body(r, &blen, &ctype);
        char *j = body ? NULL : lx_value_to_json(lc_msg_root(r));
        if (body != NULL)
            printf("{\"$body\": {\"type\": \"%s\", \"bytes\": %zu}}\n", ctype ? ctype : "", blen);
        else
            printf("%s\n", j ? j : "null");
        fflush(stdout);
        free(j);
        lc_msg_free(r);
        got++;
    }
    char why[96];
    if (plan.nreplies > 0 && got == 0 && lc_session_error(s) != 0)
        lx_die(LX_SESSION, "the session to %s ended before any reply came (%s)", url,
               lx_session_why(lc_session_error(s), why, sizeof why));
    if (lost > 0)
        lx_die(LX_SESSION, "the session to %s ended before every reply channel was closed (%s)", url,
               lx_session_why(lc_session_error(s), why, sizeof why));

    int res;
    if (lx_pump_wait(out, -1, &res) != 0)
        stopped(s, &plan, in, out, errp);
    out = NULL;
    if (lx_pump_wait(errp, -1, &res) != 0)
        stopped(s, &plan, in, NULL, errp);
    errp = NULL;
    bool stdin_cut = false;
    if (in != NULL) {
        if (plan.nreplies > 0 || plan.stdout_fd >= 0 || plan.stderr_fd >= 0) {
            lx_pump_cancel(in); /* the other side is done: stop reading our stdin */
        } else {
            /* stdin is the whole point: send all of it. The session reads
             * the pipe on its own thread and nothing says when it has read
             * the last byte, so wait until the pipe is empty. A session
             * that ends meanwhile did not take it all (the peer died or
             * hung up mid-stream): that is not a success. */
            for (;;) {
                int w = lx_pump_wait(in, 100, &res);
                if (w == 0) {
                    stdin_cut = res == LX_PUMP_BROKEN;
                    break;
                }
                if (w != LC_ETIMEDOUT)
                    stopped(s, &plan, in, NULL, NULL);
                if (lc_session_error(s) != 0) { /* no one reads what is left */
                    lx_pump_cancel(in);
                    stdin_cut = true;
                    break;
                }
            }
            int queued = 0;
            for (int k = 0; k < 5000 && !stdin_cut && plan.stdin_peek >= 0 &&
                            ioctl(plan.stdin_peek, FIONREAD, &queued) == 0 && queued > 0; k++) {
                if (lx_stop)
                    stopped(s, &plan, NULL, NULL, NULL);
                if (lc_session_error(s) != 0)
                    stdin_cut = true;
                struct timespec ms = { 0, 1000000 };
                nanosleep(&ms, NULL);
            }
            if (queued > 0)
                stdin_cut = true;
        }
    }
    if (plan.stdin_peek >= 0)
        close(plan.stdin_peek);
    for (int k = 0; k < plan.nreplies; k++)
        lc_receiver_release(plan.replies[k]);
    /* the streams' ends reached the session; a session that ended before we
     * close it cut them (it closes them: the pumps saw EOF) */
    int serr = lc_session_error(s);
    bool streams = plan.stdin_fd >= 0 || plan.stdout_fd >= 0 || plan.stderr_fd >= 0;
    /* everything sent (stdin's bytes included) reaches the carrier before we go */
    rc = lc_session_close(s, 5000);
    lc_session_free(s);
    if (stdin_cut)
        lx_die(LX_SESSION, "the session to %s ended before all of stdin was sent (%s)", url,
               lx_session_why(serr, why, sizeof why));
    if (streams && serr != 0 && serr != LC_ESESSION) /* (not a clean end by the peer) */
        lx_die(LX_SESSION, "the session to %s ended while its streams were open (%s)", url,
               lx_session_why(serr, why, sizeof why));
    if (rc != 0 && rc != LC_ESESSION)
        lx_die(LX_SESSION, "closing the session to %s: %s", url, lc_strerror(rc));
    return LX_OK;
}
