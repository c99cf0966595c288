/*
 * rexec_client.c - runs a command on rexec_server (or `lchan serve --exec`),
 * as in docker/libchan's rexec example: the request carries the command, three
 * byte streams and the channel the exit status comes back on.
 *
 * Usage: rexec_client URL CMD [ARGS...]
 * Our stdin goes to the command; its stdout and stderr come back to ours as
 * they are written; we exit with its status.
 */
#include <libchan.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Copies one fd to another until EOF, then closes both (but not our own
 * stdout and stderr). */
struct copy {
    int from, to;
    pthread_t t;
};

static void *copy_main(void *arg)
{
    struct copy *c = arg;
    char buf[16384];
    ssize_t n;
    while ((n = read(c->from, buf, sizeof buf)) > 0)
        if (write(c->to, buf, (size_t)n) != n)
            break;
    close(c->from);
    if (c->to > 2)
        close(c->to); /* the end of our stdin: EOF for the remote command */
    return NULL;
}

/* 0, or pthread_create's error (then nothing runs and nothing is closed). */
static int start_copy(struct copy *c, int from, int to)
{
    c->from = from;
    c->to = to;
    return pthread_create(&c->t, NULL, copy_main, c);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: rexec_client URL CMD [ARGS...]\n");
        return 2;
    }
    lc_session *s;
    lc_error e;
    if (lc_dial(argv[1], NULL, &s, &e) != 0) {
        fprintf(stderr, "rexec_client: %s\n", e.text);
        return 1;
    }
    /* The streams are pipes: the session reads the first one's read end and
     * writes into the others' write ends; we feed and drain the other ends. */
    int in[2], out[2], err[2];
    if (pipe(in) != 0 || pipe(out) != 0 || pipe(err) != 0)
        return 1;
    lc_receiver *status_r;
    lc_sender *status_s;
    if (lc_pipe(&status_r, &status_s, 1) != 0)
        return 1;

    lc_msg *req = lc_msg_new();
    lc_value *cmd = lc_new_map(req), *args = lc_new_array(req);
    for (int i = 3; i < argc; i++)
        lc_array_append(req, args, lc_new_string(req, argv[i]));
    lc_map_set(req, cmd, "Cmd", lc_new_string(req, argv[2]));
    lc_map_set(req, cmd, "Args", args);
    lc_map_set(req, cmd, "Stdin", lc_new_stream(req, in[0], LC_STREAM_READ));    /* they read */
    lc_map_set(req, cmd, "Stdout", lc_new_stream(req, out[1], LC_STREAM_WRITE)); /* they write */
    lc_map_set(req, cmd, "Stderr", lc_new_stream(req, err[1], LC_STREAM_WRITE));
    lc_map_set(req, cmd, "StatusChan", lc_new_sender(req, status_s));
    lc_msg_set_root(req, cmd);

    lc_sender *chan;
    int rc;
    if ((rc = lc_session_sender(s, &chan)) != 0 || (rc = lc_send(chan, req, 5000)) != 0) {
        fprintf(stderr, "rexec_client: send: %s\n", lc_strerror(rc));
        return 1;
    }
    lc_close(chan);
    lc_sender_release(chan);

    static struct copy cin; /* static: its thread may outlive main's frame */
    struct copy cout, cerr;
    if ((rc = start_copy(&cin, 0, in[1])) != 0 || (rc = start_copy(&cout, out[0], 1)) != 0 ||
        (rc = start_copy(&cerr, err[0], 2)) != 0) {
        /* without its copies the command's streams would never end: give up
         * (the session goes with the process, and with it the command's
         * streams, which then end for it too) */
        fprintf(stderr, "rexec_client: cannot start a thread: %s\n", strerror(rc));
        return 1;
    }
    pthread_detach(cin.t); /* not joined: our stdin may never end */

    /* The status comes when the command has exited; its last output may still
     * be on the way, so also wait for the end of Stdout and Stderr. */
    lc_msg *ans = NULL;
    int status = 255;
    if (lc_recv(status_r, &ans, -1) == 0 && lc_unpack(ans, "{s:i}", "Status", &status) != 0)
        status = 255;
    lc_msg_free(ans);
    pthread_join(cout.t, NULL);
    pthread_join(cerr.t, NULL);
    lc_receiver_release(status_r);
    lc_session_close(s, 5000);
    lc_session_free(s);
    return status;
}
