/*
 * exec.c - `lchan exec URL -- CMD ARGS...`: the client of docker/libchan's
 * rexec example. The request carries the command, three byte streams and a
 * reply Sender; this process feeds its stdin to the remote command, copies the
 * remote stdout/stderr here as they come, and exits with the remote status.
 */
#include "lchan.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A pipe whose ends are close-on-exec. */
static void make_pipe(int p[2])
{
    if (pipe2(p, O_CLOEXEC) != 0)
        lx_die(LX_INTERNAL, "pipe: %s", strerror(errno));
}

/* How long the peer has to answer the request at all (a frame of any kind:
 * a libchan peer answers the channel at once) before we call it silent. */
#define ANSWER_MS 10000

/* Gives up (a stop signal, or a timeout): stops the copies, closes the
 * session, exits 128+signal or LX_TIMEOUT. */
__attribute__((noreturn)) static void give_up(lc_session *s, lx_pump *pin, lx_pump *pout, lx_pump *perr)
{
    lx_pump_cancel(pin);
    lx_pump_cancel(pout);
    lx_pump_cancel(perr);
    if (lx_stop)
        lx_exit_stopped(s);
    lc_session_free(s); /* (abruptly: the peer is silent or too slow) */
    fflush(stdout);
    _exit(LX_TIMEOUT);
}

int lx_exec(int argc, char **argv)
{
    const char *url = NULL;
    char **cmd = NULL;
    int ncmd = 0;
    long long timeout = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (url != NULL && strcmp(a, "--") == 0) {
            cmd = argv + i + 1;
            ncmd = argc - i - 1;
            break;
        }
        if (a[0] == '-' && a[1] != '\0') {
            if (!lx_common_opt(a, lx_help_exec) &&
                !lx_opt_long(argc, argv, &i, "--timeout", 0, 86400000, &timeout))
                lx_usage("unknown option '%s' (put -- before the command: lchan exec URL -- CMD ...)", a);
        } else if (url == NULL) {
            url = a;
        } else { /* the command starts here; its options are its own */
            cmd = argv + i;
            ncmd = argc - i;
            break;
        }
    }
    if (url == NULL)
        lx_usage("missing URL and command");
    if (ncmd == 0)
        lx_usage("missing command (lchan exec URL -- CMD [ARGS...])");

    int in[2], out[2], err[2];
    make_pipe(in);  /* we write stdin into in[1]; the session reads in[0] */
    make_pipe(out); /* the session writes into out[1]; we copy out[0] to stdout */
    make_pipe(err);
    lc_receiver *status_r;
    lc_sender *status_s;
    int rc = lc_pipe(&status_r, &status_s, 1);
    if (rc != 0)
        lx_die(LX_INTERNAL, "lc_pipe: %s", lc_strerror(rc));

    /* {Cmd, Args, Stdin, Stdout, Stderr, StatusChan}: the Go example's struct */
    lc_msg *m = lc_msg_new();
    lc_value *map = m ? lc_new_map(m) : NULL, *args = m ? lc_new_array(m) : NULL;
    if (map == NULL || args == NULL)
        lx_die(LX_INTERNAL, "out of memory");
    for (int k = 1; k < ncmd; k++)
        lc_array_append(m, args, lc_new_string(m, cmd[k]));
    if (lc_map_set(m, map, "Cmd", lc_new_string(m, cmd[0])) != 0 || lc_map_set(m, map, "Args", args) != 0 ||
        lc_map_set(m, map, "Stdin", lc_new_stream(m, in[0], LC_STREAM_READ)) != 0 ||
        lc_map_set(m, map, "Stdout", lc_new_stream(m, out[1], LC_STREAM_WRITE)) != 0 ||
        lc_map_set(m, map, "Stderr", lc_new_stream(m, err[1], LC_STREAM_WRITE)) != 0 ||
        lc_map_set(m, map, "StatusChan", lc_new_sender(m, status_s)) != 0 || lc_msg_set_root(m, map) != 0)
        lx_die(LX_INTERNAL, "cannot build the request (out of memory?)");

    lx_watch_peer = true; /* to tell a silent peer from a long command */
    lc_session *s = lx_dial(url);
    if (lx_stop) {
        lc_msg_free(m);
        lx_exit_stopped(s);
    }
    lc_sender *chan;
    if ((rc = lc_session_sender(s, &chan)) != 0)
        lx_die(lx_session_exit(rc), "cannot open a channel to %s: %s", url, lc_strerror(rc));
    lx_trace_msg("chan#1", ">>", m);
    if ((rc = lx_stoppable_send(chan, m, 10000)) != 0) {
        lc_msg_free(m);
        if (rc == LX_ESTOPPED)
            lx_exit_stopped(s);
        lx_die(lx_session_exit(rc), "cannot send the command to %s: %s", url, lc_strerror(rc));
    }
    lc_close(chan);
    lc_sender_release(chan);

    lx_pump *pin = lx_pump_start(0, in[1], LX_CLOSE_TO, "stdin -> Stdin");
    lx_pump *pout = lx_pump_start(out[0], 1, LX_CLOSE_FROM, "Stdout -> stdout");
    lx_pump *perr = lx_pump_start(err[0], 2, LX_CLOSE_FROM, "Stderr -> stderr");

    /* The status comes when the command has exited; its output may still be
     * on the way (another sub-stream), so wait for both. The wait is bounded
     * twice: the peer must answer at all within ANSWER_MS (a server that
     * accepts and says nothing is not running our command), and the whole
     * command within --timeout when given. */
    lc_msg *st = NULL;
    int64_t t0 = lx_now_ms();
    bool heard = false;
    for (;;) {
        int64_t wait = -1;
        if (!heard) /* check again soon: frames are counted, not signalled */
            wait = 100;
        if (timeout > 0) {
            int64_t left = t0 + timeout - lx_now_ms();
            wait = left < 0 ? 0 : wait < 0 || left < wait ? left : wait;
        }
        rc = lx_stoppable_recv(status_r, &st, wait);
        if (rc == LX_ESTOPPED)
            give_up(s, pin, pout, perr);
        if (rc != LC_ETIMEDOUT)
            break;
        int64_t took = lx_now_ms() - t0;
        if (timeout > 0 && took >= timeout) {
            lx_warn("exec: no status from %s within %lld ms (--timeout); the command may still be running there",
                    url, timeout);
            give_up(s, pin, pout, perr);
        }
        heard = heard || lx_frames_in() > 0;
        if (!heard && lc_session_error(s) == 0 && took >= ANSWER_MS) {
            lx_warn("exec: %s accepted the session but has not answered the request in %d s "
                    "(is it `lchan serve --exec`?)", url, ANSWER_MS / 1000);
            give_up(s, pin, pout, perr);
        }
    }
    int status = -1;
    if (rc == 0) {
        lx_trace_msg("StatusChan", "<<", st);
        int64_t v;
        if (lc_unpack(st, "{s:I}", "Status", &v) == 0)
            status = v < 0 || v > 255 ? 255 : (int)v;
        lc_msg_free(st);
    }
    if (rc == 0) {
        int res, w = lx_pump_wait(pout, -1, &res);
        if (w == 0) {
            pout = NULL; /* (finished and freed) */
            if ((w = lx_pump_wait(perr, -1, &res)) == 0)
                perr = NULL;
        }
        if (w != 0)
            give_up(s, pin, pout, perr);
    } else {
        /* The session is gone. Over unix the streams may have been passed
         * as fds, still open in an orphaned command: do not wait for them. */
        lx_pump_cancel(pout);
        lx_pump_cancel(perr);
    }
    lx_pump_cancel(pin); /* the command is gone: stop reading our stdin */
    lc_receiver_release(status_r);
    int serr = lc_session_error(s);
    lc_session_close(s, 5000);
    lc_session_free(s);
    if (rc != 0)
        lx_die(LX_SESSION, "%s ended before the command reported its status (%s)", url,
               lc_strerror(serr ? serr : rc));
    if (status < 0)
        lx_die(LX_SESSION, "%s answered without a valid {\"Status\": N} (is it `lchan serve --exec`?)", url);
    lx_trace("remote status %d", status);
    return status;
}
