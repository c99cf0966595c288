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

int lx_exec(int argc, char **argv)
{
    const char *url = NULL;
    char **cmd = NULL;
    int ncmd = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (url != NULL && strcmp(a, "--") == 0) {
            cmd = argv + i + 1;
            ncmd = argc - i - 1;
            break;
        }
        if (a[0] == '-' && a[1] != '\0') {
            if (!lx_common_opt(a, lx_help_exec))
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

    lc_session *s = lx_dial(url);
    lc_sender *chan;
    if ((rc = lc_session_sender(s, &chan)) != 0)
        lx_die(lx_session_exit(rc), "cannot open a channel to %s: %s", url, lc_strerror(rc));
    lx_trace_msg("chan#1", ">>", m);
    if ((rc = lc_send(chan, m, 10000)) != 0) {
        lc_msg_free(m);
        lx_die(lx_session_exit(rc), "cannot send the command to %s: %s", url, lc_strerror(rc));
    }
    lc_close(chan);
    lc_sender_release(chan);

    lx_pump *pin = lx_pump_start(0, in[1], LX_CLOSE_TO, "stdin -> Stdin");
    lx_pump *pout = lx_pump_start(out[0], 1, LX_CLOSE_FROM, "Stdout -> stdout");
    lx_pump *perr = lx_pump_start(err[0], 2, LX_CLOSE_FROM, "Stderr -> stderr");

    /* The status comes when the command has exited; its output may still be
     * on the way (another sub-stream), so wait for both. */
    lc_msg *st = NULL;
    rc = lc_recv(status_r, &st, -1);
    int status = -1;
    if (rc == 0) {
        lx_trace_msg("StatusChan", "<<", st);
        int64_t v;
        if (lc_unpack(st, "{s:I}", "Status", &v) == 0)
            status = v < 0 || v > 255 ? 255 : (int)v;
        lc_msg_free(st);
    }
    if (rc == 0) {
        lx_pump_join(pout);
        lx_pump_join(perr);
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
