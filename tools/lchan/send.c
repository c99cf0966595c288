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
    lc_sender *chan;
    int rc = lc_session_sender(s, &chan);
    if (rc != 0)
        lx_die(lx_session_exit(rc), "cannot open a channel to %s: %s", url, lc_strerror(rc));
    lx_trace("chan#1: opened");
    lx_trace_msg("chan#1", ">>", m);
    rc = lc_send(chan, m, 10000);
    if (rc != 0) {
        lc_msg_free(m);
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
    int open = plan.nreplies, got = 0;
    bool closed[16] = { false };
    while (open > 0) {
        lc_case cases[16];
        int idx[16], n = 0;
        for (int k = 0; k < plan.nreplies; k++)
            if (!closed[k]) {
                cases[n] = (lc_case){ .op = LC_CASE_RECV, .receiver = plan.replies[k] };
                idx[n++] = k;
            }
        int c = lc_select(cases, (size_t)n, -1);
        if (c < 0)
            lx_die(LX_INTERNAL, "lc_select: %s", lc_strerror(c));
        int k = idx[c];
        char label[24];
        snprintf(label, sizeof label, "reply#%d", k + 1);
        if (cases[c].result != 0) {
            lx_trace("%s: closed by the other side (%s)", label, lc_strerror(cases[c].result));
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
    if (plan.nreplies > 0 && got == 0 && lc_session_error(s) != 0)
        lx_die(LX_SESSION, "the session to %s ended before any reply came (%s)", url,
               lc_strerror(lc_session_error(s)));

    lx_pump_join(out);
    lx_pump_join(errp);
    if (in != NULL) {
        if (plan.nreplies > 0 || out != NULL || errp != NULL) {
            lx_pump_cancel(in); /* the other side is done: stop reading our stdin */
        } else {
            /* stdin is the whole point: send all of it. The session reads
             * the pipe on its own thread and nothing says when it has read
             * the last byte, so wait until the pipe is empty. */
            lx_pump_join(in);
            int queued = 0;
            for (int k = 0; k < 5000 && plan.stdin_peek >= 0 &&
                            ioctl(plan.stdin_peek, FIONREAD, &queued) == 0 && queued > 0; k++) {
                struct timespec ms = { 0, 1000000 };
                nanosleep(&ms, NULL);
            }
        }
    }
    if (plan.stdin_peek >= 0)
        close(plan.stdin_peek);
    for (int k = 0; k < plan.nreplies; k++)
        lc_receiver_release(plan.replies[k]);
    /* everything sent (stdin's bytes included) reaches the carrier before we go */
    rc = lc_session_close(s, 5000);
    lc_session_free(s);
    if (rc != 0 && rc != LC_ESESSION)
        lx_die(LX_SESSION, "closing the session to %s: %s", url, lc_strerror(rc));
    return LX_OK;
}
